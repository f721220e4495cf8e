// Renders the panel in jsdom. A `.svelte.test.ts` file so its props can be `$state` and change under the panel.
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import type { CompressionMarker, KvStats } from '../api/types';
import KvPanel from './KvPanel.svelte';
import { DEFAULT_SEP, DENSE_8192, STREAMING_512, simulate } from './fixtures';
import { formatBytes, formatSaving } from './format';

// Vitest resolves `svelte` to its server build here (vite.config.ts sets no `browser` condition for tests), where
// mount() throws; load the client entry, the same module the compiled component uses.
const clientEntry = new URL('../../../node_modules/svelte/src/index-client.js', import.meta.url).pathname;
const { mount, unmount, flushSync } = (await import(/* @vite-ignore */ clientEntry)) as typeof import('svelte');

interface PanelProps {
  stats: KvStats | null;
  markers: CompressionMarker[];
  live: boolean;
  cacheSpec: string | null;
}

let mounted: ReturnType<typeof mount> | null = null;

function render(initial: PanelProps) {
  const props = $state<PanelProps>(initial);
  mounted = mount(KvPanel, { target: document.body, props });
  flushSync();
  const panel = document.querySelector<HTMLElement>('[data-testid="kv-panel"]');
  if (!panel) throw new Error('no kv-panel');
  return { props, panel };
}

function hook(panel: HTMLElement, id: string): string {
  const element = panel.querySelector(`[data-testid="${id}"]`);
  if (!element) throw new Error(`no ${id}`);
  return element.textContent ?? '';
}

afterEach(() => {
  if (mounted) unmount(mounted);
  mounted = null;
  document.body.innerHTML = '';
});

describe('KvPanel', () => {
  test('empty state without stats', () => {
    const { panel } = render({ stats: null, markers: [], live: false, cacheSpec: null });
    expect(panel.getAttribute('aria-label')).toBeTruthy();
    expect(panel.textContent).toContain('No KV cache yet: send a message');
    expect(panel.querySelector('[data-testid="kv-tokens-seen"]')).toBeNull();
  });

  test('a long SepLLM conversation: plain-integer hooks, human forms, blocks, chart', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 12_000);
    const spec = 'sep:a=4,s=256,w=1024,c=2048';
    const { panel } = render({ stats, markers, live: false, cacheSpec: spec });

    expect(hook(panel, 'kv-tokens-seen')).toBe('12000');
    expect(hook(panel, 'kv-slots-held')).toBe(String(stats.slots_held));
    expect(hook(panel, 'kv-bytes-held')).toBe(String(stats.bytes_held));
    expect(hook(panel, 'kv-bytes-dense')).toBe('276480000');
    expect(hook(panel, 'kv-compressions')).toBe(String(markers.length));
    for (const id of ['kv-tokens-seen', 'kv-slots-held', 'kv-bytes-held', 'kv-bytes-dense', 'kv-compressions']) {
      expect(hook(panel, id)).toMatch(/^\d+$/);
    }

    expect(hook(panel, 'kv-spec')).toBe(spec);
    expect(hook(panel, 'kv-kind')).toBe('SepLLM');
    expect(hook(panel, 'kv-saving')).toBe(formatSaving(stats.bytes_held, stats.bytes_dense));
    expect(panel.textContent).toContain(`${formatBytes(stats.bytes_held)} of 276.5 MB dense`);
    expect(panel.textContent).toContain('12,000 tokens seen');

    const segments = [...panel.querySelectorAll('[data-testid="kv-bar"] rect[data-block]')];
    expect(segments.map((s) => s.getAttribute('data-block'))).toEqual(['initial', 'separators', 'past', 'local']);
    for (const segment of segments) expect(segment.querySelector('title')?.textContent).toMatch(/of .* slots/);
    const widths = segments.map((s) => Number(s.getAttribute('width')));
    expect(widths.reduce((a, b) => a + b, 0)).toBeCloseTo((stats.slots_held / 2048) * 1000, 5);
    // 4 initial slots of 2048 would be 2 units of 1000 wide: drawn at the 6-unit minimum instead.
    expect(widths[0]).toBe(6);

    const chart = panel.querySelector('svg[data-testid="kv-chart"]');
    expect(chart?.querySelector('title')?.textContent).toBe('Slots held vs tokens seen');
    expect(chart?.getAttribute('aria-labelledby')?.split(' ')).toHaveLength(2);
    const held = chart?.querySelector('polyline.held')?.getAttribute('points')?.split(' ') ?? [];
    expect(held).toHaveLength(2 + 2 * markers.length);
    expect(chart?.querySelector('line.capacity')).not.toBeNull();
    const ticks = [...(chart?.querySelectorAll('text.tick') ?? [])].map((t) => t.textContent);
    expect(ticks).toContain('2.5k');
    expect(ticks).toContain('12.5k');
  });

  test('no style attributes anywhere (the CSP refuses them)', () => {
    for (const [params, tokens, spec] of [
      [DEFAULT_SEP, 12_000, 'sep:a=4,s=256,w=1024,c=2048'],
      [STREAMING_512, 3000, 'streaming:a=4,c=512'],
      [DENSE_8192, 700, 'dense:c=8192'],
    ] as const) {
      const { stats, markers } = simulate(params, tokens);
      const { panel } = render({ stats, markers, live: true, cacheSpec: spec });
      expect(panel.querySelectorAll('[style]')).toHaveLength(0);
      unmount(mounted!);
      mounted = null;
    }
  });

  test('StreamingLLM and dense show only the blocks they have', () => {
    const streaming = simulate(STREAMING_512, 3000);
    let { panel } = render({ ...streaming, live: false, cacheSpec: 'streaming:a=4,c=512' });
    const keys = () => [...panel.querySelectorAll('.legend li')].map((li) => li.getAttribute('data-block'));
    expect(keys()).toEqual(['initial', 'local']);
    unmount(mounted!);

    const dense = simulate(DENSE_8192, 700);
    ({ panel } = render({ ...dense, live: false, cacheSpec: 'dense:c=8192' }));
    expect(keys()).toEqual(['local']);
    expect(hook(panel, 'kv-saving')).toBe('0%');
    expect(hook(panel, 'kv-compressions')).toBe('0');
    // Far below its capacity, the dense chart fits its data and leaves the capacity line out.
    expect(panel.querySelector('line.capacity')).toBeNull();
    expect(panel.querySelector('polyline.held')?.getAttribute('points')?.split(' ')).toHaveLength(2);
  });

  test('markers in any order draw the same line', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 6000);
    const { panel, props } = render({ stats, markers, live: false, cacheSpec: null });
    const points = () => panel.querySelector('polyline.held')?.getAttribute('points');
    const before = points();
    props.markers = [...markers].reverse();
    flushSync();
    expect(points()).toBe(before);
  });

  test('the live badge shows while a reply streams', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 500);
    const { panel, props } = render({ stats, markers, live: true, cacheSpec: null });
    expect(panel.textContent).toContain('live');
    props.live = false;
    flushSync();
    expect(panel.querySelector('.live-badge')).toBeNull();
  });

  test('going back to no stats shows the empty state at once', () => {
    const { stats, markers } = simulate(DEFAULT_SEP, 500);
    const { panel, props } = render({ stats, markers, live: false, cacheSpec: null });
    props.stats = null;
    props.markers = [];
    flushSync();
    expect(panel.textContent).toContain('No KV cache yet');
  });
});

describe('KvPanel redraws', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(5_000_000);
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  test('readouts arriving every millisecond redraw about ten times a second, ending on the latest', () => {
    const { steps } = simulate(DEFAULT_SEP, 3000, true);
    if (!steps) throw new Error('no steps');
    const { panel, props } = render({ stats: steps[0], markers: [], live: true, cacheSpec: null });
    const shown: string[] = [hook(panel, 'kv-tokens-seen')];
    for (let i = 1; i < 1000; i += 1) {
      props.stats = steps[i];
      flushSync();
      vi.advanceTimersByTime(1);
      flushSync();
      const now = hook(panel, 'kv-tokens-seen');
      if (now !== shown[shown.length - 1]) shown.push(now);
    }
    // One second of readouts: the first at once, then one per 100 ms.
    expect(shown.length).toBeGreaterThanOrEqual(9);
    expect(shown.length).toBeLessThanOrEqual(12);
    vi.advanceTimersByTime(150);
    flushSync();
    expect(hook(panel, 'kv-tokens-seen')).toBe('1000');
  });

  test('the final readout lands at once when the reply ends', () => {
    const { steps } = simulate(DEFAULT_SEP, 100, true);
    if (!steps) throw new Error('no steps');
    const { panel, props } = render({ stats: steps[0], markers: [], live: true, cacheSpec: null });
    props.stats = steps[50];
    flushSync();
    expect(hook(panel, 'kv-tokens-seen')).toBe('1');
    props.stats = steps[99];
    props.live = false;
    flushSync();
    expect(hook(panel, 'kv-tokens-seen')).toBe('100');
  });
});
