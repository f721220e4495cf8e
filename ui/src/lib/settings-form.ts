// The settings dialog's fields and the values the server takes, both ways. Kept out of the component so the
// rules (empty means "the app's default") are tested.

import type { Sampling } from './api/types';

export type SystemPromptMode = 'default' | 'custom' | 'none';

/** `null` is the app's default prompt, `""` no prompt at all (the server's convention). */
export function systemPromptMode(systemPrompt: string | null): SystemPromptMode {
  if (systemPrompt === null) return 'default';
  return systemPrompt === '' ? 'none' : 'custom';
}

export function systemPromptValue(mode: SystemPromptMode, text: string): string | null {
  if (mode === 'default') return null;
  if (mode === 'none') return '';
  // A custom prompt left empty would silently mean "none": treat it as the default instead.
  return text.trim() ? text : null;
}

export type SamplingKey = keyof Sampling;

export interface SamplingField {
  key: SamplingKey;
  label: string;
  whole: boolean;
  step: string;
  placeholder: string;
}

export const SAMPLING_FIELDS: readonly SamplingField[] = [
  { key: 'temperature', label: 'Temperature', whole: false, step: '0.05', placeholder: 'default' },
  { key: 'top_p', label: 'Top-p', whole: false, step: '0.01', placeholder: 'default' },
  { key: 'top_k', label: 'Top-k', whole: true, step: '1', placeholder: 'default' },
  { key: 'min_p', label: 'Min-p', whole: false, step: '0.01', placeholder: 'default' },
  { key: 'repeat_penalty', label: 'Repeat penalty', whole: false, step: '0.05', placeholder: 'default' },
  { key: 'max_tokens', label: 'Max tokens', whole: true, step: '1', placeholder: 'default' },
  { key: 'seed', label: 'Seed', whole: true, step: '1', placeholder: 'random' },
];

export type SamplingDraft = Record<SamplingKey, string>;

export function samplingDraft(sampling: Sampling): SamplingDraft {
  const draft = {} as SamplingDraft;
  for (const field of SAMPLING_FIELDS) {
    const value = sampling[field.key];
    draft[field.key] = value === undefined ? '' : String(value);
  }
  return draft;
}

export interface ParsedSampling {
  sampling: Sampling;
  errors: Partial<Record<SamplingKey, string>>;
}

/** Empty fields are left out (the app's default); ranges are the server's to check. */
export function parseSamplingDraft(draft: SamplingDraft): ParsedSampling {
  const sampling: Sampling = {};
  const errors: Partial<Record<SamplingKey, string>> = {};
  for (const field of SAMPLING_FIELDS) {
    const text = draft[field.key].trim();
    if (!text) continue;
    const value = Number(text);
    if (!Number.isFinite(value)) errors[field.key] = 'Not a number';
    else if (field.whole && (!Number.isInteger(value) || value < 0)) errors[field.key] = 'A whole number ≥ 0';
    else sampling[field.key] = value;
  }
  return { sampling, errors };
}

/** The profiles the engine names; anything else is a spec such as `sep:a=4,s=64,w=256,c=512`. */
export const CACHE_PRESETS = ['default', 'low', 'high', 'dense', 'streaming'] as const;
export type CachePreset = (typeof CACHE_PRESETS)[number];

export interface CacheChoice {
  preset: CachePreset | 'custom';
  spec: string;
}

export function cacheChoice(cacheProfile: string | null): CacheChoice {
  if (cacheProfile === null) return { preset: 'default', spec: '' };
  const preset = CACHE_PRESETS.find((name) => name === cacheProfile);
  return preset ? { preset, spec: '' } : { preset: 'custom', spec: cacheProfile };
}

/** `null`: the app's default (the `default` choice, or a custom spec left empty). */
export function cacheProfileValue(choice: CacheChoice): string | null {
  if (choice.preset === 'default') return null;
  if (choice.preset === 'custom') return choice.spec.trim() || null;
  return choice.preset;
}

export function sameSampling(a: Sampling, b: Sampling): boolean {
  return SAMPLING_FIELDS.every((field) => a[field.key] === b[field.key]);
}

/** A conversation's settings as the dialog edits them. */
export interface ConversationSettings {
  system_prompt: string | null;
  sampling: Sampling;
  cache_profile: string | null;
}

/** Which part of the dialog an error belongs to (`general`: the conversation could not be created). */
export type SettingsErrors = Partial<Record<keyof ConversationSettings | 'general', string>>;
