import { parseThemeChoice, resolveTheme, THEME_STORAGE_KEY, type Theme, type ThemeChoice } from '../theme';

/** The theme: the user's choice (stored), and the system's preference for `system`, applied to `<html data-theme>`. */
export class ThemeState {
  choice = $state<ThemeChoice>('system');
  private systemDark = $state(false);
  readonly theme: Theme = $derived(resolveTheme(this.choice, this.systemDark));

  start(): void {
    this.choice = parseThemeChoice(localStorage.getItem(THEME_STORAGE_KEY));
    const query = matchMedia('(prefers-color-scheme: dark)');
    this.systemDark = query.matches;
    query.addEventListener('change', (event) => {
      this.systemDark = event.matches;
      this.apply();
    });
    this.apply();
  }

  set(choice: ThemeChoice): void {
    this.choice = choice;
    localStorage.setItem(THEME_STORAGE_KEY, choice);
    this.apply();
  }

  private apply(): void {
    document.documentElement.dataset.theme = this.theme;
  }
}
