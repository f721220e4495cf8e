import { describe, expect, it } from 'vitest';
import { exportFileName } from './download';

const now = new Date(Date.UTC(2026, 10, 30, 9));

describe('exportFileName', () => {
  it('names the file after the title, with the format as extension', () => {
    expect(exportFileName('Trip to Paris', 'md', now)).toBe('Trip to Paris.md');
    expect(exportFileName('Trip to Paris', 'html', now)).toBe('Trip to Paris.html');
  });

  it('replaces what file systems refuse, and never makes a hidden or path-like name', () => {
    expect(exportFileName('a/b\\c:d*e?f"g<h>i|j', 'txt', now)).toBe('a b c d e f g h i j.txt');
    expect(exportFileName('../../etc/passwd', 'json', now)).toBe('etc passwd.json');
    expect(exportFileName('line\nbreak\ttab', 'md', now)).toBe('line break tab.md');
    expect(exportFileName('trailing. ', 'md', now)).toBe('trailing.md');
  });

  it('shortens a long title', () => {
    expect(exportFileName('x'.repeat(300), 'md', now)).toBe(`${'x'.repeat(80)}.md`);
  });

  it('dates the name of an untitled conversation and of the whole history', () => {
    expect(exportFileName('???', 'md', now)).toBe('sepchat-conversation-2026-11-30.md');
    expect(exportFileName(null, 'json', now)).toBe('sepchat-conversations-2026-11-30.json');
  });
});
