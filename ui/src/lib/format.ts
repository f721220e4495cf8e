// Numbers and times as the transcript shows them. One fixed locale, so a figure reads the same in every window
// and in the browser tests. Counts and sizes as the KV panel writes them, so the transcript and the panel agree.

import type { CacheSource, CompressionMarker, MessageStats } from './api/types';

import { formatBytes, formatInt } from './kv/format';

const LOCALE = 'en-US';
const integer = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 1 });

export function formatMilliseconds(ms: number): string {
  return ms < 1000 ? `${integer.format(ms)} ms` : `${oneDecimal.format(ms / 1000)} s`;
}

export function formatRate(perSecond: number): string {
  return `${oneDecimal.format(perSecond)} tok/s`;
}

/** The transcript's line for a compaction of the KV cache. */
export function describeMarker(marker: CompressionMarker): string {
  return (
    `KV cache compressed at token ${formatInt(marker.tokens_seen_at)}: ` +
    `${formatInt(marker.slots_before)} → ${formatInt(marker.slots_after)} slots, ` +
    `dropped ${formatInt(marker.dropped_separators)} separators + ${formatInt(marker.dropped_other)} other tokens, ` +
    `freed ${formatBytes(marker.bytes_freed)}`
  );
}

export function describeCacheSource(source: CacheSource): string {
  switch (source) {
    case 'fresh':
      return 'fresh cache';
    case 'warm':
      return 'warm cache';
    case 'restored_from_snapshot':
      return 'restored from snapshot';
    case 'replayed':
      return 'replayed';
  }
}

/** `end_of_turn` → "end of turn". */
export function describeStopReason(reason: string): string {
  return reason.replaceAll('_', ' ');
}

/** The stats a reply shows when expanded, as label and value; fields it lacks are left out. */
export function statRows(stats: MessageStats): [string, string][] {
  const rows: [string, string | null][] = [
    ['Time to first token', stats.time_to_first_token_ms === undefined ? null : formatMilliseconds(stats.time_to_first_token_ms)],
    ['Prefill', stats.prefill_tokens_per_s === undefined ? null : formatRate(stats.prefill_tokens_per_s)],
    ['Decode', stats.decode_tokens_per_s === undefined ? null : formatRate(stats.decode_tokens_per_s)],
    ['Tokens in', stats.tokens_in === undefined ? null : formatInt(stats.tokens_in)],
    ['Tokens out', stats.tokens_out === undefined ? null : formatInt(stats.tokens_out)],
    ['Stop reason', stats.stop_reason === undefined ? null : describeStopReason(stats.stop_reason)],
    ['KV slots after', stats.kv_slots === undefined ? null : formatInt(stats.kv_slots)],
    ['KV bytes after', stats.kv_bytes === undefined ? null : formatBytes(stats.kv_bytes)],
    ['Cache', stats.cache_spec ?? null],
  ];
  return rows.filter((row): row is [string, string] => row[1] !== null);
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** "just now", "5 min ago", "3 h ago", "yesterday", then a date. */
export function formatRelativeTime(timestamp: number, now: number): string {
  const elapsed = now - timestamp;
  if (elapsed < MINUTE) return 'just now';
  if (elapsed < HOUR) return `${Math.floor(elapsed / MINUTE)} min ago`;
  if (elapsed < DAY) return `${Math.floor(elapsed / HOUR)} h ago`;
  if (elapsed < 2 * DAY) return 'yesterday';
  const date = new Date(timestamp);
  const sameYear = date.getFullYear() === new Date(now).getFullYear();
  return date.toLocaleDateString(LOCALE, { month: 'short', day: 'numeric', year: sameYear ? undefined : 'numeric' });
}

/** Several compactions in one line: what they dropped and freed together. */
export function describeMarkers(markers: readonly CompressionMarker[]): string {
  const sum = (pick: (marker: CompressionMarker) => number) => markers.reduce((total, marker) => total + pick(marker), 0);
  return (
    `dropped ${formatInt(sum((marker) => marker.dropped_separators))} separators + ` +
    `${formatInt(sum((marker) => marker.dropped_other))} other tokens, ` +
    `freed ${formatBytes(sum((marker) => marker.bytes_freed))}`
  );
}
