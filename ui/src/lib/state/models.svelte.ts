import type { ModelInfo } from '../api/types';
import { loadRecentModels, rememberModelPath, saveRecentModels } from '../recent-models';
import { toApiError } from '../transport/errors';
import type { Transport } from '../transport/types';
import type { Toasts } from './toasts.svelte';

/** The loaded model, the server's version, and the model files used recently (remembered in this browser). */
export class Models {
  info = $state<ModelInfo | null>(null);
  serverVersion = $state<string | null>(null);
  /** `false` until the server first answered: "no model" is only shown once it is known. */
  known = $state(false);
  loading = $state(false);
  error = $state<string | null>(null);
  recent = $state<string[]>([]);
  /** Model notices seen so far: a `health` answer sent before the latest one is older news. */
  private modelNotices = 0;

  constructor(
    private readonly transport: Transport,
    private readonly toasts: Toasts,
  ) {}

  async start(): Promise<void> {
    this.recent = loadRecentModels(localStorage);
    // The desktop shell loads the default model in the background after the window opens, so the first answer
    // below may say "no model" a moment before this notice says otherwise. Asking only once subscribed: a load that
    // finished in between would otherwise be neither in the answer nor in a notice.
    await this.transport.onNotice((notice) => {
      if (notice.kind === 'model_loaded' || notice.kind === 'model_error') this.modelNotices += 1;
      if (notice.kind === 'model_loaded') {
        this.info = notice.model;
        this.error = null;
        this.remember(notice.model.path);
      } else if (notice.kind === 'model_error') {
        this.error = notice.error.message;
        this.toasts.error(notice.error.message);
      }
    });
    try {
      const noticesBefore = this.modelNotices;
      const health = await this.transport.health();
      this.serverVersion = health.version;
      // A notice that arrived while the answer was on its way (the load finishing) is newer than the answer.
      if (this.modelNotices === noticesBefore) {
        this.info = health.model;
        if (health.model) this.remember(health.model.path);
      }
    } catch (error) {
      this.toasts.error(toApiError(error).message);
    } finally {
      this.known = true;
    }
  }

  /** Loads a model file (an empty path: the default model); a bad file leaves the current model loaded. */
  async load(path: string): Promise<boolean> {
    this.loading = true;
    this.error = null;
    try {
      const info = await this.transport.load_model({ path: path.trim() || null });
      this.info = info;
      this.remember(info.path);
      this.toasts.show(`Loaded ${info.file_name} on ${info.device}`);
      return true;
    } catch (error) {
      this.error = toApiError(error).message;
      return false;
    } finally {
      this.loading = false;
    }
  }

  private remember(path: string): void {
    this.recent = rememberModelPath(this.recent, path);
    saveRecentModels(localStorage, this.recent);
  }
}
