// The cache kind and its blocks, derived from a cache spec and a KvStats. Pure; tested in blocks.test.ts.
import type { KvStats } from '../api/types';

export type CacheKind = 'sep' | 'streaming' | 'dense';

export interface CacheSpec {
  kind: CacheKind;
  /** The spec's numbers by key (`a`, `s`, `w`, `c`). */
  params: Record<string, number>;
}

/**
 * Parses a full cache spec as the engine writes it (`sep:a=4,s=256,w=1024,c=2048`, `streaming:a=4,c=512`,
 * `dense:c=8192`, or a bare `dense`). Anything else (a profile name such as `default`, a typo) gives null.
 */
export function parseCacheSpec(spec: string | null | undefined): CacheSpec | null {
  if (!spec) return null;
  const match = /^\s*(sep|streaming|dense)\s*(?::(.*))?$/i.exec(spec);
  if (!match) return null;
  const kind = match[1].toLowerCase() as CacheKind;
  const params: Record<string, number> = {};
  const rest = (match[2] ?? '').trim();
  if (rest !== '') {
    for (const part of rest.split(',')) {
      const pair = /^\s*([a-z_]+)\s*=\s*(\d+)\s*$/i.exec(part);
      if (!pair) return null;
      params[pair[1].toLowerCase()] = Number(pair[2]);
    }
  }
  return { kind, params };
}

/** The cache kind: from the spec when it parses, otherwise read off the stats' limits (see kv_cache.rs's stats()). */
export function cacheKind(spec: string | null | undefined, stats: KvStats | null): CacheKind {
  const parsed = parseCacheSpec(spec);
  if (parsed) return parsed.kind;
  if (!stats) return 'sep';
  if (stats.separators_limit > 0) return 'sep';
  if (stats.initial_limit === 0) return 'dense';
  return 'streaming';
}

export const KIND_LABEL: Record<CacheKind, string> = {
  sep: 'SepLLM',
  streaming: 'StreamingLLM',
  dense: 'Dense',
};

export type BlockKey = 'initial' | 'separators' | 'past' | 'local';

export interface Block {
  key: BlockKey;
  label: string;
  held: number;
  /** The block's limit; for the past window (no limit of its own) the room the other blocks leave it. */
  limit: number;
  /** One sentence for the segment's and legend's title. */
  hint: string;
}

/**
 * The blocks that exist for this cache, in slot order. Dense has one (every token); StreamingLLM has initial and
 * local; SepCache all four. The past window has no limit of its own: it can grow into what capacity leaves after
 * the initial block, the separators held and the local window, and a compression empties it.
 */
export function cacheBlocks(stats: KvStats, kind: CacheKind): Block[] {
  if (kind === 'dense') {
    const held = stats.initial_held + stats.separators_held + stats.past_held + stats.local_held;
    return [
      {
        key: 'local',
        label: 'All tokens',
        held,
        limit: stats.capacity,
        hint: 'A dense cache keeps every token until it is full',
      },
    ];
  }
  const blocks: Block[] = [];
  if (stats.initial_limit > 0 || stats.initial_held > 0) {
    blocks.push({
      key: 'initial',
      label: 'Initial',
      held: stats.initial_held,
      limit: stats.initial_limit,
      hint: 'The first tokens (attention sinks and the system turn), kept forever',
    });
  }
  if (kind === 'sep' || stats.separators_limit > 0 || stats.separators_held > 0) {
    blocks.push({
      key: 'separators',
      label: 'Separators',
      held: stats.separators_held,
      limit: stats.separators_limit,
      hint: 'Separator tokens harvested from evicted text; the oldest go first when full',
    });
  }
  if (kind === 'sep' || stats.past_held > 0) {
    const room = stats.capacity - stats.initial_limit - stats.separators_held - stats.local_limit;
    blocks.push({
      key: 'past',
      label: 'Past window',
      held: stats.past_held,
      limit: Math.max(stats.past_held, room, 0),
      hint: 'Tokens that left the local window since the last compression; the next one keeps only their separators',
    });
  }
  blocks.push({
    key: 'local',
    label: kind === 'streaming' ? 'Recent window' : 'Local window',
    held: stats.local_held,
    limit: stats.local_limit,
    hint: 'The most recent tokens, always kept',
  });
  return blocks;
}
