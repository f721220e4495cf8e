/** Ctrl+key, or Cmd+key on a Mac (either is accepted anywhere: a Mac keyboard on Linux sends Meta). */
export function isModShortcut(event: KeyboardEvent, key: string): boolean {
  return (event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey && event.key.toLowerCase() === key;
}

/** How the modifier is written for this platform, for hints ("Ctrl K", "⌘K"). */
export function modifierLabel(platform: string = navigator.userAgent): string {
  return /Mac|iPhone|iPad/.test(platform) ? '⌘' : 'Ctrl ';
}
