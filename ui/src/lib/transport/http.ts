// The Transport over the local server's HTTP API: `POST /rpc/<method>` with a JSON body, answered with JSON, or,
// for the generating methods, with server-sent events over the POST's response (EventSource cannot POST, so the
// stream is read from `response.body` and parsed with eventsource-parser).

import { createParser } from 'eventsource-parser';
import type { ApiError, ChatEvent, SendResult } from '../api/types';
import { codeForStatus, isApiError, toApiError } from './errors';
import type { ChatEventHandler, Transport } from './types';

export type Fetch = (input: string, init: RequestInit) => Promise<Response>;

export interface HttpTransportOptions {
  /** Prefix of every URL; `''` keeps them relative to the page, so they go to the server that served it. */
  baseUrl?: string;
  fetch?: Fetch;
}

export function createHttpTransport(options: HttpTransportOptions = {}): Transport {
  const baseUrl = options.baseUrl ?? '';
  // Bound to the window: calling an unbound `fetch` as a method of another object throws "Illegal invocation".
  const fetchImpl: Fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));

  async function request(path: string, init: RequestInit): Promise<Response> {
    let response: Response;
    try {
      response = await fetchImpl(baseUrl + path, init);
    } catch (thrown) {
      throw networkError(thrown);
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }

  function post(method: string, args: object, signal?: AbortSignal): Promise<Response> {
    return request(`rpc/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' },
      body: JSON.stringify(args),
      signal,
    });
  }

  async function call<T>(method: string, args: object = {}): Promise<T> {
    const response = await post(method, args);
    return readJson<T>(response);
  }

  async function generate(
    method: string,
    args: object,
    onEvent: ChatEventHandler,
    signal?: AbortSignal,
  ): Promise<SendResult> {
    const response = await post(method, args, signal);
    return readEventStream<SendResult>(response, onEvent);
  }

  return {
    health: async () => readJson(await request('api/health', { method: 'GET' })),
    // The server pushes nothing outside a generation's stream.
    onNotice: async () => undefined,
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

function networkError(thrown: unknown): ApiError {
  if (thrown instanceof DOMException && thrown.name === 'AbortError') {
    return { code: 'internal', message: 'the request was cancelled' };
  }
  const detail = toApiError(thrown).message;
  return { code: 'internal', message: `cannot reach the sepchat server (${detail})` };
}

async function readJson<T>(response: Response): Promise<T> {
  let text: string;
  try {
    text = await response.text();
  } catch (thrown) {
    throw networkError(thrown);
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw { code: 'internal', message: 'the server sent an answer that is not JSON' } satisfies ApiError;
  }
}

/** The `ApiError` of a refused request; a body that is not one (a proxy page) still gives a readable error. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  const fallback: ApiError = {
    code: codeForStatus(response.status),
    message: `the server answered ${response.status} ${response.statusText}`.trim(),
  };
  try {
    const body: unknown = JSON.parse(await response.text());
    return isApiError(body) ? { code: body.code, message: body.message } : fallback;
  } catch {
    return fallback;
  }
}

/**
 * Reads a generation's event stream: unnamed events are `ChatEvent`s, `event: result` is the return value,
 * `event: error` an `ApiError`. A stream that ends with neither is an error: the reply's fate is unknown.
 */
export async function readEventStream<T>(response: Response, onEvent: ChatEventHandler): Promise<T> {
  if (!response.body) throw { code: 'internal', message: 'the server sent no event stream' } satisfies ApiError;
  type Outcome = { ok: true; value: T } | { ok: false; error: ApiError };
  let outcome: Outcome | null = null;
  const parser = createParser({
    onEvent(message) {
      if (outcome) return;
      let data: unknown;
      try {
        data = JSON.parse(message.data);
      } catch {
        outcome = { ok: false, error: { code: 'internal', message: 'the server sent an event that is not JSON' } };
        return;
      }
      if (message.event === 'result') outcome = { ok: true, value: data as T };
      else if (message.event === 'error') {
        outcome = { ok: false, error: isApiError(data) ? data : toApiError(data) };
      } else onEvent(data as ChatEvent);
    },
  });
  const reader = response.body.getReader();
  // `stream: true` keeps a character split across two chunks whole.
  const decoder = new TextDecoder();
  try {
    while (!outcome) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (thrown) {
        throw networkError(thrown);
      }
      if (chunk.done) {
        // As in EventSource, an event cut off before its blank line is dropped: its data may be incomplete.
        parser.feed(decoder.decode());
        break;
      }
      parser.feed(decoder.decode(chunk.value, { stream: true }));
    }
  } finally {
    // After the outcome nothing else is expected; releasing the stream lets the connection close.
    reader.cancel().catch(() => undefined);
  }
  const final = outcome as Outcome | null;
  if (!final) throw { code: 'internal', message: 'the reply stream ended before its result' } satisfies ApiError;
  if (!final.ok) throw final.error;
  return final.value;
}
