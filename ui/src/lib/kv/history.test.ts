import { describe, expect, test } from 'vitest';
import type { CompressionMarker, KvStats } from '../api/types';
import { chartScale, denseLine, simplify, slotHistory, toSvgPoints } from './history';
import { DEFAULT_SEP, DENSE_8192, STREAMING_512, simulate } from './fixtures';

function marker(id: number, at: number, before: number, after: number): CompressionMarker {
  return {
    id,
    conversation_id: 1,
    message_id: 1,
    tokens_seen_at: at,
    slots_before: before,
    slots_after: after,
    dropped_separators: 0,
    dropped_other: before - after,
    bytes_freed: 0,
    created_at: 0,
  };
}

function statsAt(tokens: number, slots: number): KvStats {
  return { ...simulate(DEFAULT_SEP, 0).stats, tokens_seen: tokens, slots_held: slots };
}

describe('slotHistory', () => {
  test('no markers: one straight line from the origin', () => {
    expect(slotHistory([], statsAt(500, 500))).toEqual([
      { x: 0, y: 0 },
      { x: 500, y: 500 },
    ]);
  });

  test('no stats and no markers: just the origin', () => {
    expect(slotHistory([], null)).toEqual([{ x: 0, y: 0 }]);
  });

  test('each marker is a rise to slots_before and a drop to slots_after', () => {
    const markers = [marker(1, 2048, 2048, 1181), marker(2, 2915, 2048, 1284)];
    expect(slotHistory(markers, statsAt(3000, 1369))).toEqual([
      { x: 0, y: 0 },
      { x: 2048, y: 2048 },
      { x: 2048, y: 1181 },
      { x: 2915, y: 2048 },
      { x: 2915, y: 1284 },
      { x: 3000, y: 1369 },
    ]);
  });

  test('markers out of order are sorted by tokens_seen_at', () => {
    const inOrder = [marker(1, 2048, 2048, 1181), marker(2, 2915, 2048, 1284), marker(3, 3679, 2048, 1284)];
    const shuffled = [inOrder[2], inOrder[0], inOrder[1]];
    expect(slotHistory(shuffled, statsAt(4000, 1605))).toEqual(slotHistory(inOrder, statsAt(4000, 1605)));
    expect(shuffled[0].id).toBe(3);
  });

  test('duplicate points are dropped', () => {
    const markers = [marker(1, 2048, 2048, 1181), marker(1, 2048, 2048, 1181)];
    const series = slotHistory(markers, statsAt(2048, 1181));
    expect(series).toEqual([
      { x: 0, y: 0 },
      { x: 2048, y: 2048 },
      { x: 2048, y: 1181 },
    ]);
  });

  test('the same marker under another id (or the same id with other numbers) counts once', () => {
    const first = marker(1, 2048, 2048, 1181);
    const again = { ...first, id: 7 };
    const sameId = { ...marker(1, 2915, 2048, 1284) };
    expect(slotHistory([first, again, sameId], null)).toEqual([
      { x: 0, y: 0 },
      { x: 2048, y: 2048 },
      { x: 2048, y: 1181 },
    ]);
  });

  test('stats older than the last marker are left out', () => {
    const markers = [marker(1, 2048, 2048, 1181)];
    const series = slotHistory(markers, statsAt(2040, 2040));
    expect(series[series.length - 1]).toEqual({ x: 2048, y: 1181 });
    expect(series.every((point, i) => i === 0 || point.x >= series[i - 1].x)).toBe(true);
  });

  test('stats at the very token of the last marker still draw the slots held after it', () => {
    const markers = [marker(1, 2048, 2048, 1181)];
    expect(slotHistory(markers, statsAt(2048, 1182)).slice(-1)).toEqual([{ x: 2048, y: 1182 }]);
  });

  test('a simulated 12,000-token conversation: monotone x, a saw-tooth between a+s+w and c', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 12_000);
    expect(markers.length).toBeGreaterThanOrEqual(12);
    expect(markers.length).toBeLessThanOrEqual(15);
    const series = slotHistory(markers, stats);
    expect(series.length).toBe(2 + 2 * markers.length);
    expect(series[series.length - 1]).toEqual({ x: 12_000, y: stats.slots_held });
    for (let i = 1; i < series.length; i += 1) expect(series[i].x).toBeGreaterThanOrEqual(series[i - 1].x);
    expect(Math.max(...series.map((p) => p.y))).toBe(2048);
    // Growth between compactions is one slot per token: every rising segment has slope 1.
    for (let i = 1; i < series.length; i += 1) {
      const dx = series[i].x - series[i - 1].x;
      if (dx > 0) expect(series[i].y - series[i - 1].y).toBe(dx);
    }
  });

  test('a dense cache never compresses: a straight line', () => {
    const { stats, markers } = simulate(DENSE_8192, 700);
    expect(markers).toEqual([]);
    expect(slotHistory(markers, stats)).toEqual([
      { x: 0, y: 0 },
      { x: 700, y: 700 },
    ]);
  });
});

describe('simplify', () => {
  test('short series are left alone', () => {
    const points = [{ x: 0, y: 0 }, { x: 10, y: 10 }, { x: 10, y: 5 }];
    expect(simplify(points, 10, 100)).toEqual(points);
  });
  test('a StreamingLLM conversation (a compaction every step) keeps its shape in few points', () => {
    const { stats, markers } = simulate(STREAMING_512, 6000);
    expect(markers.length).toBe(6000 - 512);
    const series = slotHistory(markers, stats);
    const thin = simplify(series, 6000, 500);
    expect(thin.length).toBeLessThanOrEqual(4 * 500);
    expect(thin.length).toBeLessThan(series.length / 4);
    expect(thin[0]).toEqual(series[0]);
    expect(thin[thin.length - 1]).toEqual(series[series.length - 1]);
    expect(Math.max(...thin.map((p) => p.y))).toBe(Math.max(...series.map((p) => p.y)));
    expect(Math.min(...thin.slice(1).map((p) => p.y))).toBe(Math.min(...series.slice(1).map((p) => p.y)));
    for (let i = 1; i < thin.length; i += 1) expect(thin[i].x).toBeGreaterThanOrEqual(thin[i - 1].x);
  });
  test('each column keeps its first, lowest, highest and last point in order', () => {
    const points = [
      { x: 0, y: 5 },
      { x: 1, y: 9 },
      { x: 2, y: 1 },
      { x: 3, y: 4 },
      { x: 4, y: 6 },
      { x: 50, y: 2 },
      { x: 60, y: 3 },
      { x: 70, y: 8 },
      { x: 80, y: 7 },
    ];
    // One column (4 points at most) for 0..40, one for 50..99.
    expect(simplify(points, 100, 2)).toEqual([
      { x: 0, y: 5 },
      { x: 1, y: 9 },
      { x: 2, y: 1 },
      { x: 4, y: 6 },
      { x: 50, y: 2 },
      { x: 70, y: 8 },
      { x: 80, y: 7 },
    ]);
  });
});

describe('denseLine', () => {
  test('slots = tokens seen, clipped at the chart top', () => {
    expect(denseLine(500, 2500)).toEqual([
      { x: 0, y: 0 },
      { x: 500, y: 500 },
    ]);
    expect(denseLine(12_000, 2500)).toEqual([
      { x: 0, y: 0 },
      { x: 2500, y: 2500 },
    ]);
  });
});

describe('chartScale', () => {
  test('an evicting cache fits its capacity even early on', () => {
    const scale = chartScale([{ x: 0, y: 0 }, { x: 300, y: 300 }], 2048, true);
    expect(scale.y.top).toBe(2500);
    expect(scale.x.top).toBe(300);
    expect(scale.showCapacity).toBe(true);
  });
  test('a dense cache far below its capacity fits its data, not the capacity', () => {
    const scale = chartScale([{ x: 0, y: 0 }, { x: 500, y: 500 }], 8192, false);
    expect(scale.y.top).toBe(500);
    expect(scale.showCapacity).toBe(false);
  });
  test('a long conversation: x to the last token, y to capacity', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 12_000);
    const scale = chartScale(slotHistory(markers, stats), stats.capacity, true);
    expect(scale.x.top).toBe(12_500);
    expect(scale.y.top).toBe(2500);
  });
});

describe('toSvgPoints', () => {
  test('maps data to the box with y pointing down', () => {
    const box = { left: 10, top: 5, width: 100, height: 50 };
    expect(toSvgPoints([{ x: 0, y: 0 }, { x: 50, y: 100 }, { x: 100, y: 50 }], box, 100, 100)).toBe(
      '10,55 60,5 110,30',
    );
  });
});
