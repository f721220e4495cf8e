// The token map's rendering (hostile text stays text) and the A/B switch's state against a fake transport.
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { CacheMap, ConversationInfo } from '../api/types';
import type { CacheMapArgs, Transport } from '../transport/types';
import { conversationRow, kvStats } from '../state/fixtures';
import { CacheMapState } from './cache-map.svelte';
import KvPanel from './KvPanel.svelte';
import TokenMapText from './TokenMapText.svelte';

const clientEntry = new URL('../../../node_modules/svelte/src/index-client.js', import.meta.url).pathname;
const { mount, unmount, flushSync } = (await import(/* @vite-ignore */ clientEntry)) as typeof import('svelte');

let mounted: ReturnType<typeof mount> | null = null;
afterEach(() => {
  if (mounted) unmount(mounted);
  mounted = null;
  document.body.innerHTML = '';
});

function mapFor(args: CacheMapArgs): CacheMap {
  const dense = args.cache === 'dense';
  return {
    conversation_id: args.conversation_id,
    cache_spec: dense ? 'dense:c=8192' : 'sep:a=4,s=16,w=32,c=64',
    stats: { ...kvStats(40), compactions: dense ? 0 : 3, tokens_seen: 100, bytes_dense: 100 * 23040, bytes_held: dense ? 100 * 23040 : 40 * 23040 },
    messages: [{ message_id: 1, segments: [{ text: 'hi', state: dense ? 'local' : 'evicted' }] }],
    exact: true,
  };
}

function fakeTransport() {
  const cache_map = vi.fn(async (args: CacheMapArgs) => mapFor(args));
  const set_cache_profile = vi.fn(
    async (args: { conversation_id: number; cache_profile: string | null }): Promise<ConversationInfo> => ({
      ...conversationRow(args.conversation_id),
      cache_profile: args.cache_profile,
    }),
  );
  return { transport: { cache_map, set_cache_profile } as unknown as Transport, cache_map, set_cache_profile };
}

const inputs = { conversationId: 1, cacheProfile: null, generating: false, branchKey: '1:done,2:done' };

describe('TokenMapText', () => {
  it('renders every segment as text in a span with its state, never as HTML', () => {
    const hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>';
    const segments = [
      { text: hostile, state: 'evicted' as const },
      { text: ' & <b>kept</b>\n', state: 'local' as const },
    ];
    mounted = mount(TokenMapText, { target: document.body, props: { segments } });
    flushSync();
    const spans = [...document.querySelectorAll('[data-testid="token-map"] span')];
    expect(spans.map((span) => span.getAttribute('data-state'))).toEqual(['evicted', 'local']);
    expect(spans.map((span) => span.textContent).join('')).toBe(hostile + ' & <b>kept</b>\n');
    expect(document.querySelector('img, script, b')).toBeNull();
    expect((window as unknown as { pwned?: number }).pwned).toBeUndefined();
  });
});

describe('CacheMapState', () => {
  it('fetches nothing until the map or a simulation is wanted, then once per branch', async () => {
    const { transport, cache_map } = fakeTransport();
    const state = new CacheMapState(transport);
    state.follow(inputs);
    expect(cache_map).not.toHaveBeenCalled();
    state.setTokenMap(true);
    await vi.waitFor(() => expect(state.map).not.toBeNull());
    expect(cache_map).toHaveBeenCalledWith({ conversation_id: 1, cache: null });
    expect(state.segments.get(1)?.[0].state).toBe('evicted');
    // The same inputs again: no new request; a reply streaming: none either; its stored branch: one.
    state.follow({ ...inputs });
    state.follow({ ...inputs, generating: true, branchKey: '1:done,2:done,3:done' });
    expect(cache_map).toHaveBeenCalledTimes(1);
    state.follow({ ...inputs, branchKey: '1:done,2:done,3:done,4:done' });
    await vi.waitFor(() => expect(cache_map).toHaveBeenCalledTimes(2));
  });

  it('switches to a profile, shows its simulation and applies it to the conversation', async () => {
    const { transport, cache_map, set_cache_profile } = fakeTransport();
    const state = new CacheMapState(transport);
    const applied = vi.fn();
    state.onApplied = applied;
    state.follow(inputs);
    expect(state.simulated).toBeNull();
    state.select('dense');
    await vi.waitFor(() => expect(state.simulated?.cache_spec).toBe('dense:c=8192'));
    expect(cache_map).toHaveBeenLastCalledWith({ conversation_id: 1, cache: 'dense' });
    expect(state.applicable).toBe('dense');
    await state.apply();
    expect(set_cache_profile).toHaveBeenCalledWith({ conversation_id: 1, cache_profile: 'dense' });
    expect(applied).toHaveBeenCalledOnce();
    expect(state.choice).toBe('current');
    expect(state.applicable).toBeNull();
    // Another conversation starts on the live readout.
    state.follow({ ...inputs, conversationId: 2 });
    expect(state.choice).toBe('live');
    expect(state.simulated).toBeNull();
  });

  it('shows a simulated readout in the panel, labelled, with the switch and the apply button', async () => {
    const { transport } = fakeTransport();
    const state = new CacheMapState(transport);
    state.follow(inputs);
    mounted = mount(KvPanel, {
      target: document.body,
      props: { stats: { ...kvStats(30), compactions: 2 }, markers: [], live: false, cacheSpec: 'sep:a=4,s=16,w=32,c=64', cacheMap: state },
    });
    flushSync();
    const hook = (id: string) => document.querySelector(`[data-testid="${id}"]`);
    expect(hook('kv-compressions')?.textContent).toBe('2');
    expect(hook('kv-simulated')).toBeNull();
    const dense = document.querySelector<HTMLButtonElement>('[data-testid="kv-ab-switch"] button[data-profile="dense"]');
    dense?.click();
    await vi.waitFor(() => {
      flushSync();
      expect(hook('kv-compressions')?.textContent).toBe('0');
    });
    expect(hook('kv-simulated')?.textContent).toContain('Simulated on this history');
    expect(hook('kv-bytes-held')?.textContent).toBe(hook('kv-bytes-dense')?.textContent);
    expect(dense?.getAttribute('aria-pressed')).toBe('true');
    expect(hook('kv-ab-apply')).not.toBeNull();
    expect(hook('kv-spec')?.textContent).toBe('dense:c=8192');
    (hook('kv-token-map-toggle') as HTMLButtonElement).click();
    flushSync();
    expect(hook('kv-token-map-toggle')?.getAttribute('aria-pressed')).toBe('true');
    expect(document.querySelectorAll('[data-testid="kv-token-map-legend"] [data-state]').length).toBe(5);
  });
});
