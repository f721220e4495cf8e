// The Transport inside the desktop window: each method is the Tauri command of the same name (src-tauri), invoked
// with exactly the JSON arguments the HTTP transport POSTs. The generating commands take one more argument,
// `on_event`, a Tauri channel that gets every `ChatEvent` in order; the command resolves with the method's result.

import { Channel, invoke, isTauri } from '@tauri-apps/api/core';
import { listen } from '@tauri-apps/api/event';
import type { ApiError, ChatEvent, ModelInfo, SendResult } from '../api/types';
import { toApiError } from './errors';
import type { ChatEventHandler, Notice, Transport } from './types';

/** The page runs inside the Tauri window (its IPC bridge is present), not in a browser. */
export function insideTauri(): boolean {
  return isTauri();
}

export type Invoke = <T>(command: string, args: Record<string, unknown>) => Promise<T>;

export interface TauriTransportOptions {
  /** Tests pass their own; the window uses @tauri-apps/api's. */
  invoke?: Invoke;
  /** Makes the channel a generating command streams into. */
  channel?: () => { onmessage: (event: ChatEvent) => void };
  /** Subscribes to one of the shell's events (src-tauri/src/events.rs). */
  listen?: Listen;
}

/** Resolves once the subscription is in place. */
export type Listen = (event: string, handler: (payload: unknown) => void) => Promise<void>;

/** The shell's event names and the notice each one is. */
const NOTICES: Record<string, (payload: unknown) => Notice> = {
  'model-loaded': (payload) => ({ kind: 'model_loaded', model: payload as ModelInfo }),
  'model-error': (payload) => ({ kind: 'model_error', error: toApiError(payload as ApiError) }),
  'conversations-changed': () => ({ kind: 'conversations_changed' }),
};

const tauriListen: Listen = async (event, handler) => {
  // The subscription lives as long as the window; a failure to subscribe only loses notices, which the UI's own
  // refreshes cover.
  await listen(event, (message) => handler(message.payload)).catch(() => undefined);
};

export function createTauriTransport(options: TauriTransportOptions = {}): Transport {
  const invokeImpl: Invoke = options.invoke ?? ((command, args) => invoke(command, args));
  const makeChannel = options.channel ?? (() => new Channel<ChatEvent>());
  const listenImpl = options.listen ?? tauriListen;

  async function call<T>(command: string, args: object = {}): Promise<T> {
    try {
      return await invokeImpl<T>(command, { ...args });
    } catch (thrown) {
      // The commands reject with the core's `{code, message}`; anything else (a missing command, a bridge failure)
      // becomes an `internal` ApiError like a network failure over HTTP.
      throw toApiError(thrown);
    }
  }

  /**
   * A generating command. Aborting `signal` (the user left, or Stop could not be sent) asks the App to stop the
   * conversation's generation: unlike an HTTP stream there is no connection whose closing would do it.
   */
  async function generate(
    command: string,
    args: { conversation_id: number },
    onEvent: ChatEventHandler,
    signal?: AbortSignal,
  ): Promise<SendResult> {
    const channel = makeChannel();
    channel.onmessage = (event) => onEvent(event);
    const stopOnAbort = () => {
      void call('stop', { conversation_id: args.conversation_id }).catch(() => undefined);
    };
    signal?.addEventListener('abort', stopOnAbort, { once: true });
    try {
      return await call<SendResult>(command, { ...args, on_event: channel });
    } finally {
      signal?.removeEventListener('abort', stopOnAbort);
    }
  }

  return {
    health: () => call('health'),
    onNotice: async (handler) => {
      await Promise.all(
        Object.entries(NOTICES).map(([event, toNotice]) => listenImpl(event, (payload) => handler(toNotice(payload)))),
      );
    },
    load_model: (request) => call('load_model', request),
    model_info: () => call('model_info'),
    create_conversation: (request) => call('create_conversation', request),
    list_conversations: () => call('list_conversations'),
    list_trash: () => call('list_trash'),
    get_conversation: (args) => call('get_conversation', args),
    rename_conversation: (args) => call('rename_conversation', args),
    pin_conversation: (args) => call('pin_conversation', args),
    delete_conversation: (args) => call('delete_conversation', args),
    restore_conversation: (args) => call('restore_conversation', args),
    purge_conversation: async (args) => {
      await call<null>('purge_conversation', args);
    },
    empty_trash: () => call('empty_trash'),
    search: (args) => call('search', args),
    set_system_prompt: (args) => call('set_system_prompt', args),
    set_sampling: (args) => call('set_sampling', args),
    set_cache_profile: (args) => call('set_cache_profile', args),
    cache_map: (args) => call('cache_map', args),
    send_message: (request, onEvent, signal) => generate('send_message', request, onEvent, signal),
    regenerate: (request, onEvent, signal) => generate('regenerate', request, onEvent, signal),
    edit_message: (request, onEvent, signal) => generate('edit_message', request, onEvent, signal),
    stop: (args) => call('stop', args),
    is_generating: (args) => call('is_generating', args),
    switch_branch: (args) => call('switch_branch', args),
    render_export: (args) => call('render_export', args),
    import_document: (args) => call('import_document', args),
  };
}
