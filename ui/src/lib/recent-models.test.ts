import { describe, expect, it } from 'vitest';
import { loadRecentModels, MAX_RECENT_MODELS, rememberModelPath, saveRecentModels } from './recent-models';
import { parseThemeChoice, resolveTheme } from './theme';

describe('recent models', () => {
  it('keeps the latest first, once, and a bounded number', () => {
    let recent: string[] = [];
    for (let index = 0; index < MAX_RECENT_MODELS + 3; index++) recent = rememberModelPath(recent, `/m/${index}.gguf`);
    expect(recent).toHaveLength(MAX_RECENT_MODELS);
    expect(recent[0]).toBe(`/m/${MAX_RECENT_MODELS + 2}.gguf`);
    expect(rememberModelPath(['/a', '/b', '/c'], '/c')).toEqual(['/c', '/a', '/b']);
  });

  it('survives a reload, and ignores what it did not write', () => {
    saveRecentModels(localStorage, ['/a.gguf']);
    expect(loadRecentModels(localStorage)).toEqual(['/a.gguf']);
    localStorage.setItem('sepchat.recentModels', '{not json');
    expect(loadRecentModels(localStorage)).toEqual([]);
    localStorage.setItem('sepchat.recentModels', '["/ok", 3, null]');
    expect(loadRecentModels(localStorage)).toEqual(['/ok']);
  });
});

describe('theme', () => {
  it('defaults to the system and follows it', () => {
    expect(parseThemeChoice(null)).toBe('system');
    expect(parseThemeChoice('purple')).toBe('system');
    expect(parseThemeChoice('dark')).toBe('dark');
    expect(resolveTheme('system', true)).toBe('dark');
    expect(resolveTheme('system', false)).toBe('light');
    expect(resolveTheme('light', true)).toBe('light');
  });
});
