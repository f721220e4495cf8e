import type { ExportFormat } from './api/types';

const MAX_NAME_LENGTH = 80;

/**
 * A file name for an export: the title with what file systems refuse (or treat specially) replaced, or a dated
 * name for an untitled conversation or the whole history.
 */
export function exportFileName(title: string | null, format: ExportFormat, now: Date): string {
  const cleaned = (title ?? '')
    // Path separators, reserved characters on Windows, and control characters.
    .replace(/[\\/:*?"<>|\u0000-\u001f\u007f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, MAX_NAME_LENGTH)
    // A leading dot hides the file; a trailing dot or space is dropped by Windows.
    .replace(/^[.\s]+|[.\s]+$/g, '');
  const date = now.toISOString().slice(0, 10);
  const stem = cleaned || (title === null ? `sepchat-conversations-${date}` : `sepchat-conversation-${date}`);
  return `${stem}.${format}`;
}

const MIME_TYPES: Record<ExportFormat, string> = {
  md: 'text/markdown;charset=utf-8',
  json: 'application/json;charset=utf-8',
  html: 'text/html;charset=utf-8',
  txt: 'text/plain;charset=utf-8',
};

/** Saves text as a download (a Blob URL: a data: URL would be refused by the page's CSP). */
export function downloadText(text: string, fileName: string, format: ExportFormat): void {
  const url = URL.createObjectURL(new Blob([text], { type: MIME_TYPES[format] }));
  const link = document.createElement('a');
  link.href = url;
  link.download = fileName;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has started from the click; the URL is not needed past this task.
  setTimeout(() => URL.revokeObjectURL(url), 0);
}
