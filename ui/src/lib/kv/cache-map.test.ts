import { describe, expect, it } from 'vitest';
import type { CacheMap } from '../api/types';
import { AB_OPTIONS, charactersByState, profileToApply, segmentsByMessage, simulatedSpec } from './cache-map';
import { kvStats } from '../state/fixtures';

const map: CacheMap = {
  conversation_id: 1,
  cache_spec: 'sep:a=4,s=16,w=32,c=64',
  stats: kvStats(10),
  messages: [
    { message_id: 1, segments: [{ text: 'Hello, ', state: 'evicted' }, { text: 'wörld', state: 'local' }] },
    { message_id: 2, segments: [{ text: '.', state: 'separator' }] },
  ],
  exact: true,
};

describe('the A/B switch', () => {
  it('offers the live readout, the current setting and every profile, in order', () => {
    expect(AB_OPTIONS.map((option) => option.choice)).toEqual([
      'live',
      'current',
      'dense',
      'streaming',
      'low',
      'default',
      'high',
    ]);
  });

  it("asks for the conversation's own setting for live and current, else the profile by name", () => {
    expect(simulatedSpec('live')).toBeNull();
    expect(simulatedSpec('current')).toBeNull();
    expect(simulatedSpec('dense')).toBe('dense');
    expect(simulatedSpec('low')).toBe('low');
  });

  it('applies only a profile the conversation does not use already', () => {
    expect(profileToApply('current', 'low')).toBeNull();
    expect(profileToApply('live', null)).toBeNull();
    expect(profileToApply('default', null)).toBeNull();
    expect(profileToApply('low', 'low')).toBeNull();
    expect(profileToApply('dense', null)).toBe('dense');
    expect(profileToApply('default', 'sep:a=4,s=16,w=32,c=64')).toBe('default');
  });
});

describe('the token map', () => {
  it('indexes segments by message and counts characters per state', () => {
    const byMessage = segmentsByMessage(map);
    expect(byMessage.get(1)?.map((segment) => segment.text).join('')).toBe('Hello, wörld');
    expect(byMessage.get(3)).toBeUndefined();
    expect(segmentsByMessage(null).size).toBe(0);
    const counts = charactersByState(map);
    expect(counts).toMatchObject({ evicted: 7, local: 5, separator: 1, initial: 0, past: 0 });
  });
});
