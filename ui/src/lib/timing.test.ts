import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { debounce, throttle } from './timing';

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe('throttle', () => {
  it('runs at once, then at most once per interval, and always after the last request', () => {
    const run = vi.fn();
    const throttled = throttle(run, 100, () => Date.now());
    throttled.request();
    expect(run).toHaveBeenCalledTimes(1);
    for (let step = 0; step < 25; step++) {
      vi.advanceTimersByTime(10);
      throttled.request();
    }
    // 250 ms of requests every 10 ms: the first at once, then one per 100 ms.
    expect(run).toHaveBeenCalledTimes(3);
    vi.advanceTimersByTime(100);
    expect(run).toHaveBeenCalledTimes(4);
    vi.advanceTimersByTime(1000);
    expect(run).toHaveBeenCalledTimes(4);
  });

  it('flushes a waiting run now, and cancel drops it', () => {
    const run = vi.fn();
    const throttled = throttle(run, 100, () => Date.now());
    throttled.request();
    throttled.request();
    throttled.flush();
    expect(run).toHaveBeenCalledTimes(2);
    vi.advanceTimersByTime(20);
    throttled.request();
    throttled.cancel();
    vi.advanceTimersByTime(500);
    expect(run).toHaveBeenCalledTimes(2);
  });
});

describe('debounce', () => {
  it('runs once with the latest arguments after calls stop', () => {
    const run = vi.fn();
    const debounced = debounce(run, 200);
    debounced('c');
    vi.advanceTimersByTime(150);
    debounced('ca');
    vi.advanceTimersByTime(150);
    debounced('cap');
    expect(run).not.toHaveBeenCalled();
    vi.advanceTimersByTime(200);
    expect(run).toHaveBeenCalledExactlyOnceWith('cap');
    debounced('x');
    debounced.cancel();
    vi.advanceTimersByTime(1000);
    expect(run).toHaveBeenCalledTimes(1);
  });
});
