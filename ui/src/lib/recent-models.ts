const STORAGE_KEY = 'sepchat.recentModels';
export const MAX_RECENT_MODELS = 8;

/** The list with `path` first, once, and at most `MAX_RECENT_MODELS` long. */
export function rememberModelPath(recent: readonly string[], path: string): string[] {
  return [path, ...recent.filter((known) => known !== path)].slice(0, MAX_RECENT_MODELS);
}

export function loadRecentModels(storage: Storage): string[] {
  try {
    const stored: unknown = JSON.parse(storage.getItem(STORAGE_KEY) ?? '[]');
    return Array.isArray(stored) ? stored.filter((path): path is string => typeof path === 'string') : [];
  } catch {
    return [];
  }
}

export function saveRecentModels(storage: Storage, recent: readonly string[]): void {
  storage.setItem(STORAGE_KEY, JSON.stringify(recent));
}
