import { describe, expect, it } from 'vitest';
import { snippetParts } from './snippet';

describe('snippetParts', () => {
  it('splits a snippet into plain text and matches', () => {
    expect(snippetParts('What is the \u0002capital\u0003 of \u0002France\u0003?')).toEqual([
      { text: 'What is the ', match: false },
      { text: 'capital', match: true },
      { text: ' of ', match: false },
      { text: 'France', match: true },
      { text: '?', match: false },
    ]);
  });

  it('keeps markup in the text as text, to be escaped when shown', () => {
    const parts = snippetParts('<img src=x onerror=alert(1)> \u0002<b>bold</b>\u0003');
    expect(parts).toEqual([
      { text: '<img src=x onerror=alert(1)> ', match: false },
      { text: '<b>bold</b>', match: true },
    ]);
  });

  it('renders as escaped text with <mark> around matches only', () => {
    // What the search results component does with the parts: text nodes and <mark> elements.
    const container = document.createElement('span');
    for (const part of snippetParts('a <script>x</script> \u0002hit\u0003')) {
      const node = part.match ? document.createElement('mark') : document.createElement('span');
      node.textContent = part.text;
      container.append(node);
    }
    expect(container.querySelector('script')).toBeNull();
    expect(container.innerHTML).toBe('<span>a &lt;script&gt;x&lt;/script&gt; </span><mark>hit</mark>');
  });

  it('ends a match left open at the end, and drops a stray end marker', () => {
    expect(snippetParts('x \u0002open')).toEqual([
      { text: 'x ', match: false },
      { text: 'open', match: true },
    ]);
    expect(snippetParts('a\u0003b')).toEqual([
      { text: 'a', match: false },
      { text: 'b', match: false },
    ]);
    expect(snippetParts('')).toEqual([]);
  });
});
