// Realistic sample data for the panel's tests and for looking at it: a small simulation of the engine's caches
// (SEPLLM.md's compression rule, kv_cache.rs's stats()). Not imported by the app.
import type { CompressionMarker, KvStats } from '../api/types';

/** SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x 2 (K and V) x 2 bytes (f16). */
export const BYTES_PER_SLOT = 30 * 3 * 64 * 2 * 2;

export interface SimParams {
  kind: 'sep' | 'streaming' | 'dense';
  a: number;
  s: number;
  w: number;
  c: number;
}

export const DEFAULT_SEP: SimParams = { kind: 'sep', a: 4, s: 256, w: 1024, c: 2048 };
export const STREAMING_512: SimParams = { kind: 'streaming', a: 4, s: 0, w: 508, c: 512 };
export const DENSE_8192: SimParams = { kind: 'dense', a: 0, s: 0, w: 8192, c: 8192 };

export interface Simulation {
  stats: KvStats;
  markers: CompressionMarker[];
  /** The stats after every token, for replaying a stream. */
  steps?: KvStats[];
}

/** Feeds `tokens` tokens one at a time; about 15% are separators (a fixed pseudo-random pattern). */
export function simulate(params: SimParams, tokens: number, keepSteps = false): Simulation {
  const { kind, a, s, c } = params;
  const w = kind === 'streaming' ? c - a : params.w;
  let seed = 12345;
  const isSeparator = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648 < 0.15;
  };
  // Each held slot: its stream position and whether it is a separator.
  let slots: { pos: number; sep: boolean }[] = [];
  let sepBlock = 0;
  let droppedSeparators = 0;
  let droppedOther = 0;
  let compactions = 0;
  let keptSum = 0;
  let slotsSum = 0;
  let peak = 0;
  const markers: CompressionMarker[] = [];
  const steps: KvStats[] = [];

  const stats = (seen: number): KvStats => {
    const held = slots.length;
    const evicts = kind !== 'dense';
    const initialHeld = evicts ? Math.min(a, held) : 0;
    const separatorsHeld = evicts ? Math.min(sepBlock, held - initialHeld) : 0;
    const rest = held - initialHeld - separatorsHeld;
    const localHeld = Math.min(rest, w);
    const oldest = slots[initialHeld];
    return {
      tokens_seen: seen,
      slots_held: held,
      capacity: c,
      initial_held: initialHeld,
      initial_limit: evicts ? a : 0,
      separators_held: separatorsHeld,
      separators_limit: kind === 'sep' ? s : 0,
      past_held: rest - localHeld,
      local_held: localHeld,
      local_limit: w,
      tokens_to_next_compaction: c - held,
      bytes_held: held * BYTES_PER_SLOT,
      bytes_dense: seen * BYTES_PER_SLOT,
      kept_ratio: seen === 0 ? 1 : held / seen,
      kept_ratio_mean: seen === 0 ? 1 : keptSum / seen,
      slots_mean: slotsSum / Math.max(1, seen),
      slots_peak: peak,
      dropped_separators: droppedSeparators,
      dropped_other: droppedOther,
      compactions,
      horizon: oldest ? seen - oldest.pos : 0,
    };
  };

  for (let t = 0; t < tokens; t += 1) {
    if (kind !== 'dense' && slots.length + 1 > c) {
      const before = slots.length;
      const initial = slots.slice(0, a);
      const seps = slots.slice(a, a + sepBlock);
      // StreamingLLM keeps the sinks and room for the incoming token; SepCache the last w.
      const keepRecent = kind === 'streaming' ? c - a - 1 : w;
      const past = slots.slice(a + sepBlock, slots.length - keepRecent);
      const local = slots.slice(slots.length - keepRecent);
      const harvested = kind === 'sep' ? past.filter((slot) => slot.sep) : [];
      let kept = [...seps, ...harvested];
      const overflow = Math.max(0, kept.length - s);
      droppedSeparators += overflow;
      kept = kept.slice(overflow);
      droppedOther += past.length - harvested.length;
      sepBlock = kept.length;
      slots = [...initial, ...kept, ...local];
      compactions += 1;
      markers.push({
        id: compactions,
        conversation_id: 1,
        message_id: 1 + Math.floor(t / 600),
        tokens_seen_at: t,
        slots_before: before,
        slots_after: slots.length,
        dropped_separators: overflow,
        dropped_other: past.length - harvested.length,
        bytes_freed: (before - slots.length) * BYTES_PER_SLOT,
        created_at: 1_700_000_000_000 + t * 40,
      });
    }
    slots.push({ pos: t, sep: isSeparator() });
    keptSum += slots.length / (t + 1);
    slotsSum += slots.length;
    peak = Math.max(peak, slots.length);
    if (keepSteps) steps.push(stats(t + 1));
  }
  return { stats: stats(tokens), markers, steps: keepSteps ? steps : undefined };
}
