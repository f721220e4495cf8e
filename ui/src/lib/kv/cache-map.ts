// The A/B switch's choices and the token map's segments: pure, tested in cache-map.test.ts.
import type { CacheMap, CacheMapSegment, TokenState } from '../api/types';

/**
 * `live`: the engine's own readout. `current`: the conversation's own cache setting, simulated on its history (equal
 * to the live readout when the session was fed turn by turn). The others: the profiles a user can switch to.
 */
export type AbChoice = 'live' | 'current' | 'dense' | 'streaming' | 'low' | 'default' | 'high';

export interface AbOption {
  choice: AbChoice;
  label: string;
  title: string;
}

/** The segmented control's buttons, in order. */
export const AB_OPTIONS: readonly AbOption[] = [
  { choice: 'live', label: 'Live', title: "The engine's own readout of this conversation's cache" },
  { choice: 'current', label: 'Current', title: "This conversation's cache setting, simulated on its history" },
  { choice: 'dense', label: 'Dense', title: 'Keep every token (bounded by the trained context)' },
  { choice: 'streaming', label: 'Streaming', title: 'StreamingLLM: 4 sinks and the most recent tokens, 2048 slots' },
  { choice: 'low', label: 'Low', title: 'SepLLM low-memory profile: a=4, s=128, w=256, c=512' },
  { choice: 'default', label: 'Default', title: 'SepLLM default profile: a=4, s=256, w=1024, c=2048' },
  { choice: 'high', label: 'High', title: 'SepLLM high-quality profile: a=4, s=512, w=2048, c=4096' },
];

/**
 * The `cache` argument of `cache_map` for a choice: `null` asks for the conversation's own setting (also what the
 * token map shows when the panel shows the live readout); the rest are spec strings the engine parses.
 */
export function simulatedSpec(choice: AbChoice): string | null {
  return choice === 'live' || choice === 'current' ? null : choice;
}

/**
 * The profile "Use for this conversation" would store, or null when the choice is already the conversation's
 * (`live`, `current`, or the same profile by name).
 */
export function profileToApply(choice: AbChoice, conversationProfile: string | null): string | null {
  const spec = simulatedSpec(choice);
  if (spec === null) return null;
  const current = (conversationProfile ?? 'default').trim();
  return spec === current ? null : spec;
}

/** The token map's segments by message id; an empty map when there is nothing to show. */
export function segmentsByMessage(map: CacheMap | null): Map<number, CacheMapSegment[]> {
  const byMessage = new Map<number, CacheMapSegment[]>();
  for (const message of map?.messages ?? []) byMessage.set(message.message_id, message.segments);
  return byMessage;
}

/** The legend, in slot order, then what is gone. */
export const TOKEN_STATES: readonly { state: TokenState; label: string; hint: string }[] = [
  { state: 'initial', label: 'Initial', hint: 'Kept forever: the first tokens and the system turn' },
  { state: 'separator', label: 'Separator', hint: 'A separator kept for the text around it that was evicted' },
  { state: 'past', label: 'Past window', hint: 'Held until the next compression' },
  { state: 'local', label: 'Local window', hint: 'The most recent tokens, always kept' },
  { state: 'evicted', label: 'Evicted', hint: 'No longer in the cache: the model cannot attend to it' },
  { state: 'unseen', label: 'Not fed', hint: 'Never fed to the cache (no reply yet, or whitespace the template trims)' },
];

/** Characters of text per state over the whole branch: what the legend counts. */
export function charactersByState(map: CacheMap | null): Record<TokenState, number> {
  const counts: Record<TokenState, number> = { initial: 0, separator: 0, past: 0, local: 0, evicted: 0, unseen: 0 };
  for (const message of map?.messages ?? []) {
    for (const segment of message.segments) counts[segment.state] += [...segment.text].length;
  }
  return counts;
}
