import { describe, expect, it } from 'vitest';
import { renderMarkdown } from './markdown';

/** The rendered HTML parsed as the browser would, to ask about elements rather than substrings. */
function rendered(source: string): HTMLElement {
  const container = document.createElement('div');
  container.innerHTML = renderMarkdown(source);
  return container;
}

describe('renderMarkdown', () => {
  it('renders ordinary markdown', () => {
    const html = rendered('# Title\n\nSome **bold** and `code`.\n\n- one\n- two');
    expect(html.querySelector('h1')?.textContent).toBe('Title');
    expect(html.querySelector('strong')?.textContent).toBe('bold');
    expect(html.querySelectorAll('li')).toHaveLength(2);
  });

  it('escapes raw HTML instead of rendering it', () => {
    const html = rendered('before <b>bold</b> <script>alert(1)</script>\n\n<div onclick="x()">block</div>');
    expect(html.querySelector('b, script, div')).toBeNull();
    expect(html.textContent).toContain('<script>alert(1)</script>');
    expect(html.textContent).toContain('<div onclick="x()">block</div>');
  });

  it('never makes an image element, from markdown or from HTML', () => {
    const html = rendered('<img src=x onerror=alert(1)>\n\n![a cat](http://evil/x.png)');
    expect(html.querySelector('img')).toBeNull();
    expect(html.querySelector('[onerror]')).toBeNull();
    const image = html.querySelector('.md-image');
    expect(image?.textContent).toContain('[image: a cat]');
    expect(image?.textContent).toContain('http://evil/x.png');
  });

  it('drops javascript: and other non-web links, keeping their text', () => {
    const html = rendered('[x](javascript:alert(1)) [y](vbscript:msgbox) [z](file:///etc/passwd) [w](data:text/html,hi)');
    expect(html.querySelector('a')).toBeNull();
    expect(html.textContent).toContain('[x](javascript:alert(1))');
  });

  it('opens web and mail links outside the app, without a referrer', () => {
    const html = rendered('[site](https://example.com/a?b=1) and mail me@example.com and https://example.net/x');
    const links = [...html.querySelectorAll('a')];
    expect(links.map((link) => link.getAttribute('href'))).toEqual([
      'https://example.com/a?b=1',
      'mailto:me@example.com',
      'https://example.net/x',
    ]);
    for (const link of links) {
      expect(link.getAttribute('target')).toBe('_blank');
      expect(link.getAttribute('rel')).toBe('noopener noreferrer');
    }
  });

  it('highlights fenced code of a known language, with a copy button', () => {
    const html = rendered('```rust\nfn main() { let x = "<b>"; }\n```');
    const block = html.querySelector('.code-block');
    expect(block?.querySelector('button[data-copy-code]')?.textContent).toBe('Copy');
    expect(block?.querySelector('.code-block-language')?.textContent).toBe('rust');
    const code = block?.querySelector('code');
    expect(code?.classList.contains('language-rust')).toBe(true);
    expect(code?.querySelector('.hljs-keyword')?.textContent).toBe('fn');
    expect(code?.textContent).toBe('fn main() { let x = "<b>"; }\n');
    expect(code?.querySelector('b')).toBeNull();
  });

  it('escapes code of an unknown language and a hostile language label', () => {
    const html = rendered('```"><img src=x onerror=alert(1)>\n<i>not italic</i>\n```');
    expect(html.querySelector('img, i')).toBeNull();
    expect(html.querySelector('code')?.textContent).toBe('<i>not italic</i>\n');
    expect(html.querySelector('.code-block-language')?.textContent).toBe('"><img');
  });

  it('gives indented code blocks a copy button too', () => {
    const html = rendered('text\n\n    indented code\n');
    expect(html.querySelector('.code-block button[data-copy-code]')).not.toBeNull();
    expect(html.querySelector('code')?.textContent).toBe('indented code\n');
  });

  it('aligns table cells with classes, never style attributes (the CSP refuses them)', () => {
    const html = rendered('| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |');
    expect(html.querySelector('[style]')).toBeNull();
    expect([...html.querySelectorAll('td')].map((cell) => cell.className)).toEqual([
      'align-left',
      'align-center',
      'align-right',
    ]);
  });
});
