import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { createThrottle } from './throttle';

describe('createThrottle', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(1_000_000);
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  test('applies the first value at once', () => {
    const applied: number[] = [];
    const gate = createThrottle<number>((v) => applied.push(v), 100);
    gate.push(1);
    expect(applied).toEqual([1]);
  });

  test('a burst applies at most once per interval and ends on the latest value', () => {
    const applied: number[] = [];
    const gate = createThrottle<number>((v) => applied.push(v), 100);
    // 1000 readouts in one second, one every millisecond.
    for (let i = 1; i <= 1000; i += 1) {
      gate.push(i);
      vi.advanceTimersByTime(1);
    }
    vi.advanceTimersByTime(200);
    expect(applied.length).toBeGreaterThanOrEqual(9);
    expect(applied.length).toBeLessThanOrEqual(11);
    expect(applied[0]).toBe(1);
    expect(applied[applied.length - 1]).toBe(1000);
    // Strictly increasing: only newer values replace older ones.
    for (let i = 1; i < applied.length; i += 1) expect(applied[i]).toBeGreaterThan(applied[i - 1]);
  });

  test('the trailing value lands one interval after the last applied one', () => {
    const applied: number[] = [];
    const gate = createThrottle<number>((v) => applied.push(v), 100);
    gate.push(1);
    vi.advanceTimersByTime(10);
    gate.push(2);
    gate.push(3);
    expect(applied).toEqual([1]);
    vi.advanceTimersByTime(89);
    expect(applied).toEqual([1]);
    vi.advanceTimersByTime(1);
    expect(applied).toEqual([1, 3]);
  });

  test('after a quiet spell the next value is applied at once', () => {
    const applied: number[] = [];
    const gate = createThrottle<number>((v) => applied.push(v), 100);
    gate.push(1);
    vi.advanceTimersByTime(500);
    gate.push(2);
    expect(applied).toEqual([1, 2]);
  });

  test('now() applies at once and drops the pending value; flush() and cancel()', () => {
    const applied: (number | null)[] = [];
    const gate = createThrottle<number | null>((v) => applied.push(v), 100);
    gate.push(1);
    gate.push(2);
    gate.now(null);
    vi.advanceTimersByTime(500);
    expect(applied).toEqual([1, null]);

    vi.advanceTimersByTime(500);
    gate.push(3);
    gate.push(4);
    gate.flush();
    expect(applied).toEqual([1, null, 3, 4]);
    gate.flush();
    expect(applied).toEqual([1, null, 3, 4]);

    gate.push(5);
    gate.cancel();
    vi.advanceTimersByTime(500);
    expect(applied).toEqual([1, null, 3, 4]);
  });
});
