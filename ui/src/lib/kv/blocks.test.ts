import { describe, expect, test } from 'vitest';
import { cacheBlocks, cacheKind, parseCacheSpec } from './blocks';
import { DEFAULT_SEP, DENSE_8192, STREAMING_512, simulate } from './fixtures';

describe('parseCacheSpec', () => {
  test('the three spec forms', () => {
    expect(parseCacheSpec('sep:a=4,s=256,w=1024,c=2048')).toEqual({
      kind: 'sep',
      params: { a: 4, s: 256, w: 1024, c: 2048 },
    });
    expect(parseCacheSpec('streaming:a=4,c=512')).toEqual({ kind: 'streaming', params: { a: 4, c: 512 } });
    expect(parseCacheSpec('dense:c=8192')).toEqual({ kind: 'dense', params: { c: 8192 } });
    expect(parseCacheSpec('dense')).toEqual({ kind: 'dense', params: {} });
  });
  test('anything else is null', () => {
    expect(parseCacheSpec(null)).toBeNull();
    expect(parseCacheSpec('')).toBeNull();
    expect(parseCacheSpec('default')).toBeNull();
    expect(parseCacheSpec('sep:a=four')).toBeNull();
  });
});

describe('cacheKind', () => {
  test('from the spec first, else from the limits in the stats', () => {
    const sep = simulate(DEFAULT_SEP, 3000).stats;
    const streaming = simulate(STREAMING_512, 3000).stats;
    const dense = simulate(DENSE_8192, 300).stats;
    expect(cacheKind('dense:c=8192', sep)).toBe('dense');
    expect(cacheKind(null, sep)).toBe('sep');
    expect(cacheKind('default', streaming)).toBe('streaming');
    expect(cacheKind(null, dense)).toBe('dense');
  });
});

describe('cacheBlocks', () => {
  test('SepCache: four blocks whose held slots add up to slots_held', () => {
    const { stats } = simulate(DEFAULT_SEP, 12_000);
    const blocks = cacheBlocks(stats, 'sep');
    expect(blocks.map((b) => b.key)).toEqual(['initial', 'separators', 'past', 'local']);
    expect(blocks.reduce((sum, b) => sum + b.held, 0)).toBe(stats.slots_held);
    expect(blocks[0]).toMatchObject({ held: 4, limit: 4 });
    expect(blocks[1]).toMatchObject({ held: 256, limit: 256 });
    expect(blocks[2].limit).toBe(2048 - 4 - 256 - 1024);
    expect(blocks[3]).toMatchObject({ held: 1024, limit: 1024 });
  });
  test('before the first compression the past window may hold more than c - a - s - w', () => {
    const { stats } = simulate(DEFAULT_SEP, 2000);
    const past = cacheBlocks(stats, 'sep').find((b) => b.key === 'past');
    expect(past?.held).toBe(2000 - 4 - 1024);
    expect(past?.limit).toBeGreaterThanOrEqual(past?.held ?? Infinity);
  });
  test('StreamingLLM: only initial and the recent window', () => {
    const { stats } = simulate(STREAMING_512, 3000);
    const blocks = cacheBlocks(stats, 'streaming');
    expect(blocks.map((b) => b.key)).toEqual(['initial', 'local']);
    expect(blocks.reduce((sum, b) => sum + b.held, 0)).toBe(stats.slots_held);
  });
  test('dense: one block of every token against capacity', () => {
    const { stats } = simulate(DENSE_8192, 300);
    const blocks = cacheBlocks(stats, 'dense');
    expect(blocks).toHaveLength(1);
    expect(blocks[0]).toMatchObject({ held: 300, limit: 8192 });
  });
});
