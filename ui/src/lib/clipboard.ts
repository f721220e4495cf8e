/** Copies text; `false` when neither the clipboard API nor the old `execCommand` fallback could. */
export async function copyText(text: string): Promise<boolean> {
  try {
    // Missing outside a secure context (the app's 127.0.0.1 page is one; other hosts may not be).
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // Refused (no permission, the page not focused): try the fallback.
  }
  const field = document.createElement('textarea');
  field.value = text;
  field.setAttribute('readonly', '');
  field.className = 'visually-hidden';
  document.body.append(field);
  field.select();
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  } finally {
    field.remove();
  }
}

const COPIED_LABEL_MS = 1500;

/**
 * The one click listener for every code block's copy button in a rendered container (the HTML comes from
 * `renderMarkdown`, so buttons cannot carry their own handlers).
 */
export async function handleCopyClick(event: MouseEvent): Promise<void> {
  const target = event.target;
  if (!(target instanceof Element)) return;
  const button = target.closest<HTMLButtonElement>('button[data-copy-code]');
  const code = button?.closest('.code-block')?.querySelector('code');
  if (!button || !code) return;
  const copied = await copyText(code.textContent ?? '');
  button.textContent = copied ? 'Copied' : 'Copy failed';
  setTimeout(() => {
    button.textContent = 'Copy';
  }, COPIED_LABEL_MS);
}
