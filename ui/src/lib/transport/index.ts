import { createHttpTransport } from './http';
import { createTauriTransport, insideTauri } from './tauri';
import type { Transport } from './types';

export type { Transport } from './types';

/**
 * The transport this window uses, chosen once at start: the Tauri commands inside the desktop window, the local
 * server's HTTP API in a browser. The same bundle serves both.
 */
function pickTransport(): Transport {
  return insideTauri() ? createTauriTransport() : createHttpTransport();
}

export const transport: Transport = pickTransport();
