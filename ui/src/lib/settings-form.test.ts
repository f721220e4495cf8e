import { describe, expect, it } from 'vitest';
import {
  cacheChoice,
  cacheProfileValue,
  parseSamplingDraft,
  samplingDraft,
  sameSampling,
  systemPromptMode,
  systemPromptValue,
} from './settings-form';

describe('the settings form', () => {
  it('tells the app default, a custom prompt and no prompt apart, both ways', () => {
    expect(systemPromptMode(null)).toBe('default');
    expect(systemPromptMode('')).toBe('none');
    expect(systemPromptMode('Be brief.')).toBe('custom');
    expect(systemPromptValue('default', 'ignored')).toBeNull();
    expect(systemPromptValue('none', 'ignored')).toBe('');
    expect(systemPromptValue('custom', 'Be brief.')).toBe('Be brief.');
    expect(systemPromptValue('custom', '   ')).toBeNull();
  });

  it('leaves empty sampling fields out and parses the rest', () => {
    const draft = { ...samplingDraft({}), temperature: ' 0.7 ', max_tokens: '256', seed: '' };
    expect(parseSamplingDraft(draft)).toEqual({ sampling: { temperature: 0.7, max_tokens: 256 }, errors: {} });
  });

  it('refuses text and fractions where whole numbers go', () => {
    const draft = { ...samplingDraft({}), top_p: 'abc', top_k: '4.5', seed: '-1' };
    const parsed = parseSamplingDraft(draft);
    expect(Object.keys(parsed.errors).sort()).toEqual(['seed', 'top_k', 'top_p']);
    expect(parsed.sampling).toEqual({});
  });

  it('round-trips stored sampling through the form', () => {
    const stored = { temperature: 0.2, top_k: 40, seed: 7 };
    const parsed = parseSamplingDraft(samplingDraft(stored)).sampling;
    expect(parsed).toEqual(stored);
    expect(sameSampling(parsed, stored)).toBe(true);
    expect(sameSampling(parsed, { ...stored, seed: 8 })).toBe(false);
  });

  it('maps cache profiles to the select and spec field, and back', () => {
    expect(cacheChoice(null)).toEqual({ preset: 'default', spec: '' });
    expect(cacheChoice('dense')).toEqual({ preset: 'dense', spec: '' });
    expect(cacheChoice('sep:a=4,s=64,w=256,c=512')).toEqual({ preset: 'custom', spec: 'sep:a=4,s=64,w=256,c=512' });
    expect(cacheProfileValue({ preset: 'default', spec: 'x' })).toBeNull();
    expect(cacheProfileValue({ preset: 'low', spec: '' })).toBe('low');
    expect(cacheProfileValue({ preset: 'custom', spec: ' sep:a=4,c=512 ' })).toBe('sep:a=4,c=512');
    expect(cacheProfileValue({ preset: 'custom', spec: '' })).toBeNull();
  });
});
