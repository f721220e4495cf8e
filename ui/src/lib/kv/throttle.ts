// A leading-and-trailing throttle for redraws: the first value after a quiet spell is applied at once, later ones
// at most once per interval, and the latest value always lands. Pure (timers only); tested in throttle.test.ts.

export interface Throttle<T> {
  /** Offers a value; it is applied now, or at the end of the current interval (only the latest one counts). */
  push(value: T): void;
  /** Applies a value now, dropping any pending one (e.g. a conversation switch to "no stats"). */
  now(value: T): void;
  /** Applies the pending value, if any, now. */
  flush(): void;
  /** Drops the pending value and its timer (unmount). */
  cancel(): void;
}

export function createThrottle<T>(apply: (value: T) => void, intervalMs: number): Throttle<T> {
  let lastApplied = -Infinity;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let pending: { value: T } | null = null;

  const run = (value: T) => {
    lastApplied = Date.now();
    apply(value);
  };
  const clear = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  const fire = () => {
    timer = null;
    if (pending) {
      const { value } = pending;
      pending = null;
      run(value);
    }
  };

  return {
    push(value) {
      const wait = lastApplied + intervalMs - Date.now();
      if (timer === null && wait <= 0) {
        run(value);
        return;
      }
      pending = { value };
      if (timer === null) timer = setTimeout(fire, Math.max(0, wait));
    },
    now(value) {
      clear();
      pending = null;
      run(value);
    },
    flush() {
      clear();
      fire();
    },
    cancel() {
      clear();
      pending = null;
    },
  };
}
