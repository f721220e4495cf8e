import { describe, expect, it } from 'vitest';
import { describeMarker, describeMarkers, formatMilliseconds, formatRelativeTime, statRows } from './format';
import { markerRow } from './state/fixtures';

describe('transcript formatting', () => {
  it('describes a compression marker in one line', () => {
    expect(describeMarker(markerRow(1, 2))).toBe(
      'KV cache compressed at token 1,234: 512 → 300 slots, dropped 12 separators + 200 other tokens, freed 1.2 MB',
    );
  });

  it('sums several markers', () => {
    expect(describeMarkers([markerRow(1, 2), markerRow(2, 2)])).toBe(
      'dropped 24 separators + 400 other tokens, freed 2.4 MB',
    );
  });

  it('lists the stats a reply has, and only those', () => {
    expect(
      statRows({
        time_to_first_token_ms: 416.9,
        prefill_tokens_per_s: 62.54,
        decode_tokens_per_s: 26.08,
        tokens_in: 26,
        tokens_out: 7,
        stop_reason: 'end_of_turn',
        kv_slots: 33,
        kv_bytes: 760320,
      }),
    ).toEqual([
      ['Time to first token', '417 ms'],
      ['Prefill', '62.5 tok/s'],
      ['Decode', '26.1 tok/s'],
      ['Tokens in', '26'],
      ['Tokens out', '7'],
      ['Stop reason', 'end of turn'],
      ['KV slots after', '33'],
      ['KV bytes after', '760.3 kB'],
    ]);
    expect(statRows({ stop_reason: 'cancelled', cache_spec: 'dense:c=8192' })).toEqual([
      ['Stop reason', 'cancelled'],
      ['Cache', 'dense:c=8192'],
    ]);
  });

  it('writes durations and ages for people', () => {
    expect(formatMilliseconds(2500)).toBe('2.5 s');
    const now = Date.UTC(2026, 10, 30, 12);
    expect(formatRelativeTime(now - 10_000, now)).toBe('just now');
    expect(formatRelativeTime(now - 5 * 60_000, now)).toBe('5 min ago');
    expect(formatRelativeTime(now - 3 * 3_600_000, now)).toBe('3 h ago');
    expect(formatRelativeTime(now - 30 * 3_600_000, now)).toBe('yesterday');
    expect(formatRelativeTime(Date.UTC(2026, 2, 3, 12), now)).toBe('Mar 3');
    expect(formatRelativeTime(Date.UTC(2024, 2, 3, 12), now)).toBe('Mar 3, 2024');
  });
});
