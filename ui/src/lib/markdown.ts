// The only path from model or user text to HTML. markdown-it with raw HTML off escapes every tag in the source;
// the rules below add what a chat transcript needs and take away what could reach out of the app: images are
// never loaded (their alt text and address are shown instead), links open outside the app and only with
// http, https or mailto addresses, and nothing carries a style attribute (the CSP refuses them).

import MarkdownIt from 'markdown-it';
import { highlightCode } from './highlight';

const md = new MarkdownIt({ html: false, linkify: true, typographer: false });

const escapeHtml = md.utils.escapeHtml;

// markdown-it's own check (no javascript:, vbscript:, file:, most data:) stays first; on top of it, only web
// and mail links. A refused link is left as its plain text.
const defaultValidateLink = md.validateLink.bind(md);
const ALLOWED_SCHEME = /^(https?|mailto):/i;
md.validateLink = (url: string) => defaultValidateLink(url) && ALLOWED_SCHEME.test(url.trim());

md.renderer.rules.link_open = (tokens, index, options, _env, self) => {
  const token = tokens[index];
  token.attrSet('target', '_blank');
  token.attrSet('rel', 'noopener noreferrer');
  return self.renderToken(tokens, index, options);
};

md.renderer.rules.image = (tokens, index, options, env, self) => {
  const token = tokens[index];
  const alt = self.renderInlineAsText(token.children ?? [], options, env);
  const source = String(token.attrGet('src') ?? '');
  return (
    `<span class="md-image" title="Images are not loaded">` +
    `<span class="md-image-alt">${escapeHtml(alt ? `[image: ${alt}]` : '[image]')}</span> ` +
    `<span class="md-image-url">${escapeHtml(source)}</span></span>`
  );
};

// Aligned table cells come out as `style="text-align:…"`, which the page's CSP refuses (and the browser reports):
// the alignment becomes a class instead.
for (const rule of ['th_open', 'td_open']) {
  md.renderer.rules[rule] = (tokens, index, options, _env, self) => {
    const token = tokens[index];
    const alignment = /text-align:(left|center|right)/.exec(String(token.attrGet('style') ?? ''));
    token.attrs = (token.attrs ?? []).filter(([name]) => name !== 'style');
    if (alignment) token.attrJoin('class', `align-${alignment[1]}`);
    return self.renderToken(tokens, index, options);
  };
}

/** A code block with its language and a copy button (handled by `handleCopyClick`, one listener per transcript). */
function codeBlock(code: string, info: string): string {
  const language = info.trim().split(/\s+/)[0] ?? '';
  const highlighted = highlightCode(code, language);
  const languageClass = highlighted === null ? '' : ` language-${escapeHtml(language)}`;
  return (
    `<div class="code-block">` +
    `<div class="code-block-bar"><span class="code-block-language">${escapeHtml(language || 'text')}</span>` +
    `<button type="button" class="code-copy" data-copy-code aria-label="Copy code">Copy</button></div>` +
    `<pre><code class="hljs${languageClass}">${highlighted ?? escapeHtml(code)}</code></pre>` +
    `</div>\n`
  );
}

md.renderer.rules.fence = (tokens, index) => codeBlock(tokens[index].content, tokens[index].info);
md.renderer.rules.code_block = (tokens, index) => codeBlock(tokens[index].content, '');

/** Markdown source as safe HTML, ready for `{@html}`. */
export function renderMarkdown(source: string): string {
  return md.render(source);
}
