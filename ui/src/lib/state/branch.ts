import type { CompressionMarker, KvStats, MessageInfo } from '../api/types';
import type { Generation, Transcript } from './generation';

/** The sibling one step before (-1) or after (+1) this message, if there is one. */
export function siblingTarget(message: MessageInfo, step: -1 | 1): number | null {
  return message.sibling_ids[message.sibling_index + step] ?? null;
}

/** Markers by the message they happened during, in order. */
export function markersByMessage(markers: readonly CompressionMarker[]): Map<number, CompressionMarker[]> {
  const byMessage = new Map<number, CompressionMarker[]>();
  for (const marker of markers) {
    const list = byMessage.get(marker.message_id) ?? [];
    list.push(marker);
    byMessage.set(marker.message_id, list);
  }
  return byMessage;
}

/** What the KV panel is given. */
export interface PanelInputs {
  stats: KvStats | null;
  markers: CompressionMarker[];
  live: boolean;
  cacheSpec: string | null;
}

/**
 * While a reply streams: its live readout. Until the first arrives, the cache as the previous reply left it, when
 * the reply continues that cache (warm or restored); a fresh or replayed cache starts over, so nothing is shown.
 * Otherwise: the readout stored with the branch's last reply (older replies have none).
 */
export function panelInputs(transcript: Transcript, generation: Generation | null): PanelInputs {
  const live = transcript.streamingId !== null;
  const previous = [...transcript.messages]
    .reverse()
    .find((message) => message.role === 'assistant' && message.id !== transcript.streamingId);
  const stored = previous?.stats ?? null;
  const source = live ? (generation?.cacheSource ?? null) : null;
  const startsOver = source === 'fresh' || source === 'replayed';
  const carried = startsOver ? null : stored;
  return {
    stats: (live ? generation?.kv : null) ?? carried?.kv ?? null,
    markers: transcript.markers,
    live,
    cacheSpec: carried?.cache_spec ?? null,
  };
}
