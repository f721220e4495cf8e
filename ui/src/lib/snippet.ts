import { SNIPPET_MATCH_END, SNIPPET_MATCH_START } from './api/types';

/** A run of a search snippet's text; `match` runs are the searched terms. */
export interface SnippetPart {
  text: string;
  match: boolean;
}

/**
 * A snippet (raw text with matches between U+0002 and U+0003) as parts to render as text, the matches inside
 * `<mark>`: the text itself is never markup. A stray end marker is dropped; a match still open at the end ends there.
 */
export function snippetParts(snippet: string): SnippetPart[] {
  const parts: SnippetPart[] = [];
  let match = false;
  let text = '';
  const flush = () => {
    if (text) parts.push({ text, match });
    text = '';
  };
  for (const character of snippet) {
    if (character === SNIPPET_MATCH_START || character === SNIPPET_MATCH_END) {
      flush();
      match = character === SNIPPET_MATCH_START;
    } else {
      text += character;
    }
  }
  flush();
  return parts;
}
