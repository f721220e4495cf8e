import { createHttpTransport } from './http';
import type { Transport } from './types';

export type { Transport } from './types';

/**
 * The transport this window uses, chosen once at start. Only HTTP exists now; the Tauri shell will add its own
 * (commands and channels) here, picked when the page runs inside Tauri.
 */
function pickTransport(): Transport {
  return createHttpTransport();
}

export const transport: Transport = pickTransport();
