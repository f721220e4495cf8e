// The slots-held-over-tokens-seen series the panel's chart draws, rebuilt from the conversation's compression
// markers and the current stats. Pure; tested in history.test.ts.
import type { CompressionMarker, KvStats } from '../api/types';
import { niceTicks, type Ticks } from './format';

export interface Point {
  /** Tokens seen. */
  x: number;
  /** Slots held. */
  y: number;
}

/**
 * Between compactions a cache grows by one slot per token, so its history is exact from the markers alone:
 * (0, 0), then for each compaction (tokens_seen_at, slots_before) and straight down to (tokens_seen_at,
 * slots_after), then the current (tokens_seen, slots_held).
 *
 * Markers are sorted by tokens_seen_at (then id), so their order does not matter. Stats older than the last
 * marker (a readout that arrived before a compression event) are left out rather than drawn backwards.
 * Consecutive duplicate points are dropped. Without markers (a dense cache, or no compaction yet) the series is
 * one straight line.
 */
export function slotHistory(markers: readonly CompressionMarker[], stats: KvStats | null): Point[] {
  const sorted = uniqueMarkers(markers).sort((a, b) => a.tokens_seen_at - b.tokens_seen_at || a.id - b.id);
  const points: Point[] = [{ x: 0, y: 0 }];
  for (const marker of sorted) {
    points.push({ x: marker.tokens_seen_at, y: marker.slots_before });
    points.push({ x: marker.tokens_seen_at, y: marker.slots_after });
  }
  const lastX = sorted.length > 0 ? sorted[sorted.length - 1].tokens_seen_at : 0;
  if (stats && stats.tokens_seen >= lastX) {
    points.push({ x: stats.tokens_seen, y: stats.slots_held });
  }
  return dedupe(points);
}

/**
 * The same compaction delivered twice (a live event and then the stored conversation) counts once: by id, and by
 * its numbers (two real compactions at one token count cannot both start from the same slots_before).
 */
function uniqueMarkers(markers: readonly CompressionMarker[]): CompressionMarker[] {
  const ids = new Set<number>();
  const shapes = new Set<string>();
  const out: CompressionMarker[] = [];
  for (const marker of markers) {
    const shape = `${marker.tokens_seen_at}:${marker.slots_before}:${marker.slots_after}`;
    if (ids.has(marker.id) || shapes.has(shape)) continue;
    ids.add(marker.id);
    shapes.add(shape);
    out.push(marker);
  }
  return out;
}

function dedupe(points: Point[]): Point[] {
  const out: Point[] = [];
  for (const point of points) {
    const last = out[out.length - 1];
    if (last && last.x === point.x && last.y === point.y) continue;
    out.push(point);
  }
  return out;
}

/** The dense cache's line (slots = tokens seen) from 0 to `tokensSeen`, stopped where it leaves a chart `yTop` high. */
export function denseLine(tokensSeen: number, yTop: number): Point[] {
  const end = Math.max(0, Math.min(tokensSeen, yTop));
  return [
    { x: 0, y: 0 },
    { x: end, y: end },
  ];
}

/**
 * Thins a series for drawing without changing what it looks like: points are bucketed into `columns` columns of
 * x (0..xTop), and each column keeps its first, lowest, highest and last point, in series order. A StreamingLLM
 * cache compacts on every step, which would otherwise mean two points per token.
 */
export function simplify(points: readonly Point[], xTop: number, columns: number): Point[] {
  if (points.length <= 4 * columns || !(xTop > 0) || columns < 1) return [...points];
  const out: Point[] = [];
  let bucket: { index: number; points: Point[] } | null = null;
  const emit = () => {
    if (!bucket) return;
    const group = bucket.points;
    let low = group[0];
    let high = group[0];
    for (const point of group) {
      if (point.y < low.y) low = point;
      if (point.y > high.y) high = point;
    }
    const keep = new Set([group[0], low, high, group[group.length - 1]]);
    for (const point of group) if (keep.has(point)) out.push(point);
  };
  for (const point of points) {
    const index = Math.min(columns - 1, Math.floor((point.x / xTop) * columns));
    if (!bucket || bucket.index !== index) {
      emit();
      bucket = { index, points: [] };
    }
    bucket.points.push(point);
  }
  emit();
  return out;
}

export interface ChartScale {
  x: Ticks;
  y: Ticks;
  /** Whether the capacity line falls inside the chart. */
  showCapacity: boolean;
}

/**
 * The chart's axes. x runs to the last token seen (at least 100). y always fits the series; for an evicting cache
 * it also fits the capacity, so the saw-tooth is seen against its ceiling. A dense cache's capacity is usually far
 * above anything held (8192 for 500 tokens), so there y fits capacity only once the x axis reaches it.
 */
export function chartScale(series: readonly Point[], capacity: number, evicts: boolean): ChartScale {
  let maxX = 0;
  let maxY = 0;
  for (const point of series) {
    maxX = Math.max(maxX, point.x);
    maxY = Math.max(maxY, point.y);
  }
  const x = niceTicks(Math.max(maxX, 100), 5);
  const wanted = evicts || capacity <= x.top ? Math.max(maxY, capacity) : maxY;
  const y = niceTicks(Math.max(wanted, 10), 5);
  return { x, y, showCapacity: capacity > 0 && capacity <= y.top };
}

/** Maps data points into a plot box and writes them as an SVG `points` attribute ("x,y x,y"). */
export function toSvgPoints(
  points: readonly Point[],
  box: { left: number; top: number; width: number; height: number },
  xTop: number,
  yTop: number,
): string {
  return points
    .map((point) => {
      const px = box.left + (xTop > 0 ? (point.x / xTop) * box.width : 0);
      const py = box.top + box.height - (yTop > 0 ? (point.y / yTop) * box.height : 0);
      return `${round2(px)},${round2(py)}`;
    })
    .join(' ');
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
