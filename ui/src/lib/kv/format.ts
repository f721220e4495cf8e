// Pure formatting helpers for the KV-cache panel. No DOM, no Svelte: tested in format.test.ts.

const EM_DASH = '\u2014';

/**
 * Bytes in decimal (SI) units: 1 kB = 1000 B, 1 MB = 1000 kB, and so on, with one decimal above bytes
 * ("4.7 MB", "276.5 MB", "512 B"). Decimal everywhere in the panel so "of ... dense" and the saving add up the
 * way people read them (the engine's docs quote KiB/MiB; 22.5 KiB = 23.04 kB).
 */
export const BYTE_BASE = 1000;
const BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'] as const;

export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return EM_DASH;
  const sign = bytes < 0 ? '-' : '';
  let value = Math.abs(bytes);
  if (value < BYTE_BASE) return `${sign}${Math.round(value)} B`;
  let unit = 0;
  while (unit < BYTE_UNITS.length - 1 && value >= BYTE_BASE) {
    value /= BYTE_BASE;
    unit += 1;
  }
  // 999.96 kB rounds to "1000.0 kB": carry into the next unit instead.
  if (Number(value.toFixed(1)) >= BYTE_BASE && unit < BYTE_UNITS.length - 1) {
    value /= BYTE_BASE;
    unit += 1;
  }
  return `${sign}${value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

/** An integer with comma thousands separators ("12,000"), rounded; the same in every locale. */
export function formatInt(n: number): string {
  if (!Number.isFinite(n)) return EM_DASH;
  const rounded = Math.round(n);
  const digits = String(Math.abs(rounded));
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return rounded < 0 ? `-${grouped}` : grouped;
}

/**
 * A fraction (0.781) as a percentage: whole percents from 10% up ("78%"), one decimal below ("7.5%", "0.3%"),
 * exactly "0%" for zero.
 */
export function formatPercent(fraction: number): string {
  if (!Number.isFinite(fraction)) return EM_DASH;
  const percent = fraction * 100;
  if (percent === 0) return '0%';
  const oneDecimal = Number(percent.toFixed(1));
  if (Math.abs(oneDecimal) < 10) return `${trimZero(percent.toFixed(1))}%`;
  return `${Math.round(percent)}%`;
}

/**
 * The share of a dense cache's bytes that is not held, in [0, 1]: 0 while nothing has been evicted (SEPLLM.md:
 * savings are 0% until T first exceeds c) or when there is nothing to compare with.
 */
export function savedFraction(bytesHeld: number, bytesDense: number): number {
  if (!(bytesDense > 0) || !Number.isFinite(bytesHeld)) return 0;
  return Math.min(1, Math.max(0, 1 - bytesHeld / bytesDense));
}

/** The saving as whole percents, rounded down so it is never overstated ("78%"; 99.97% is "99%"). */
export function formatSaving(bytesHeld: number, bytesDense: number): string {
  return `${Math.floor(savedFraction(bytesHeld, bytesDense) * 100 + 1e-9)}%`;
}

/** How many times smaller than dense ("8.5×"), one decimal; "1.0×" when nothing is saved, a dash with nothing held. */
export function formatFactor(dense: number, held: number): string {
  if (!(held > 0) || !(dense >= 0)) return EM_DASH;
  return `${(dense / held).toFixed(1)}\u00d7`;
}

/** A ratio in [0, 1] such as the kept ratio L/T, as a percentage (see formatPercent). */
export function formatRatio(ratio: number): string {
  return formatPercent(ratio);
}

/** A compact axis label: 0, 250, 500, 1k, 1.5k, 12.5k, 1M. */
export function formatTick(n: number): string {
  if (!Number.isFinite(n)) return EM_DASH;
  const abs = Math.abs(n);
  if (abs >= 1e6) return `${trimZero(stripFloat(n / 1e6))}M`;
  if (abs >= 1e3) return `${trimZero(stripFloat(n / 1e3))}k`;
  return trimZero(stripFloat(n));
}

export interface Ticks {
  /** Evenly spaced values from 0 to `top`, both included. */
  ticks: number[];
  /** The axis end: the smallest multiple of the step that is >= the data maximum. */
  top: number;
  step: number;
}

/**
 * Round axis ticks from 0 to at least `max`, at most `maxIntervals` intervals, with a step of 1, 2, 2.5 or 5 times
 * a power of ten (integers only: the axes count tokens and slots). A non-positive max gives 0..1.
 */
export function niceTicks(max: number, maxIntervals = 4): Ticks {
  const intervals = Math.max(1, Math.floor(maxIntervals));
  if (!(max > 0) || !Number.isFinite(max)) return { ticks: [0, 1], top: 1, step: 1 };
  const raw = max / intervals;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  let step = 10 * magnitude;
  for (const factor of [1, 2, 2.5, 5, 10]) {
    const candidate = factor * magnitude;
    if (candidate >= raw - 1e-9 * raw) {
      step = candidate;
      break;
    }
  }
  step = Math.max(1, step);
  if (!Number.isInteger(step)) step = Math.ceil(step);
  const count = Math.max(1, Math.ceil(max / step - 1e-9));
  const ticks: number[] = [];
  for (let i = 0; i <= count; i += 1) ticks.push(i * step);
  return { ticks, top: count * step, step };
}

function stripFloat(n: number): string {
  // At most one decimal, avoiding 0.30000000000000004-style noise.
  return String(Math.round(n * 10) / 10);
}

function trimZero(text: string): string {
  return text.includes('.') ? text.replace(/\.?0+$/, '') : text;
}
