import { describe, expect, test } from 'vitest';
import {
  formatBytes,
  formatFactor,
  formatInt,
  formatPercent,
  formatSaving,
  formatTick,
  niceTicks,
  savedFraction,
} from './format';
import { BYTES_PER_SLOT } from './fixtures';

describe('formatBytes (decimal, 1000-based)', () => {
  test('bytes below 1 kB are whole bytes', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(999)).toBe('999 B');
  });
  test('one decimal from kB up, 1000-based', () => {
    expect(formatBytes(1000)).toBe('1.0 kB');
    expect(formatBytes(1024)).toBe('1.0 kB');
    expect(formatBytes(BYTES_PER_SLOT)).toBe('23.0 kB');
    expect(formatBytes(4_718_592)).toBe('4.7 MB');
    expect(formatBytes(2048 * BYTES_PER_SLOT)).toBe('47.2 MB');
    expect(formatBytes(12_000 * BYTES_PER_SLOT)).toBe('276.5 MB');
    expect(formatBytes(3_500_000_000)).toBe('3.5 GB');
  });
  test('a value that rounds up to 1000 carries into the next unit', () => {
    expect(formatBytes(999_960)).toBe('1.0 MB');
    expect(formatBytes(999_949)).toBe('999.9 kB');
  });
  test('non-finite input is a dash', () => {
    expect(formatBytes(Number.NaN)).toBe('\u2014');
  });
});

describe('formatInt', () => {
  test('groups thousands with commas and rounds', () => {
    expect(formatInt(0)).toBe('0');
    expect(formatInt(999)).toBe('999');
    expect(formatInt(1000)).toBe('1,000');
    expect(formatInt(12000)).toBe('12,000');
    expect(formatInt(1234567)).toBe('1,234,567');
    expect(formatInt(1665.6)).toBe('1,666');
    expect(formatInt(-4500)).toBe('-4,500');
  });
});

describe('formatPercent', () => {
  test('whole percents from 10% up, one decimal below', () => {
    expect(formatPercent(0)).toBe('0%');
    expect(formatPercent(0.781)).toBe('78%');
    expect(formatPercent(1)).toBe('100%');
    expect(formatPercent(0.075)).toBe('7.5%');
    expect(formatPercent(0.003)).toBe('0.3%');
    expect(formatPercent(0.05)).toBe('5%');
    expect(formatPercent(0.0996)).toBe('10%');
  });
});

describe('savings', () => {
  test('0% until something is evicted, never negative, never above 100%', () => {
    expect(savedFraction(1000, 1000)).toBe(0);
    expect(savedFraction(0, 0)).toBe(0);
    expect(savedFraction(2000, 1000)).toBe(0);
    expect(savedFraction(250, 1000)).toBeCloseTo(0.75);
  });
  test('the saving is rounded down, so it is never overstated', () => {
    expect(formatSaving(1000, 1000)).toBe('0%');
    expect(formatSaving(1_412, 12_000)).toBe('88%');
    expect(formatSaving(3, 10_000)).toBe('99%');
    expect(formatSaving(220, 1000)).toBe('78%');
  });
  test('formatFactor', () => {
    expect(formatFactor(12_000, 1_412)).toBe('8.5\u00d7');
    expect(formatFactor(100, 100)).toBe('1.0\u00d7');
    expect(formatFactor(100, 0)).toBe('\u2014');
  });
});

describe('ticks', () => {
  test('formatTick is compact', () => {
    expect(formatTick(0)).toBe('0');
    expect(formatTick(250)).toBe('250');
    expect(formatTick(1000)).toBe('1k');
    expect(formatTick(1500)).toBe('1.5k');
    expect(formatTick(12_500)).toBe('12.5k');
    expect(formatTick(2_000_000)).toBe('2M');
  });
  test('niceTicks picks 1/2/2.5/5 steps from 0 to at least max', () => {
    expect(niceTicks(2048, 5)).toEqual({ ticks: [0, 500, 1000, 1500, 2000, 2500], top: 2500, step: 500 });
    expect(niceTicks(12_000, 5)).toEqual({
      ticks: [0, 2500, 5000, 7500, 10_000, 12_500],
      top: 12_500,
      step: 2500,
    });
    expect(niceTicks(1000, 5).ticks).toEqual([0, 200, 400, 600, 800, 1000]);
    expect(niceTicks(100, 4).ticks).toEqual([0, 25, 50, 75, 100]);
    expect(niceTicks(3, 5).ticks).toEqual([0, 1, 2, 3]);
  });
  test('niceTicks never exceeds the interval budget and always covers max', () => {
    for (const max of [1, 7, 99, 101, 512, 999, 1001, 2047, 2049, 8192, 33_333, 123_456]) {
      for (const intervals of [3, 4, 5, 6]) {
        const { ticks, top, step } = niceTicks(max, intervals);
        expect(ticks[0]).toBe(0);
        expect(top).toBeGreaterThanOrEqual(max);
        expect(top - step).toBeLessThan(max);
        expect(ticks.length - 1).toBeLessThanOrEqual(intervals);
        expect(Number.isInteger(step)).toBe(true);
      }
    }
  });
  test('a non-positive max gives a unit axis', () => {
    expect(niceTicks(0)).toEqual({ ticks: [0, 1], top: 1, step: 1 });
  });
});
