import { describe, expect, it } from 'vitest';
import type { ChatEvent, SendResult } from '../api/types';
import { createHttpTransport, type Fetch } from './http';

const encoder = new TextEncoder();

/** A response whose body arrives in the given byte chunks. */
function streamedResponse(chunks: Uint8Array[], init: ResponseInit = {}): Response {
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' }, ...init });
}

/** Splits bytes at the given offsets, wherever they fall (inside a field name, a JSON string, a UTF-8 sequence). */
function splitAt(bytes: Uint8Array, offsets: number[]): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const offset of [...offsets, bytes.length]) {
    chunks.push(bytes.slice(start, offset));
    start = offset;
  }
  return chunks;
}

interface Recorded {
  url: string;
  init: RequestInit;
}

function fakeFetch(answer: () => Response | Promise<Response>): { fetch: Fetch; calls: Recorded[] } {
  const calls: Recorded[] = [];
  return {
    calls,
    fetch: async (url, init) => {
      calls.push({ url, init });
      return answer();
    },
  };
}

const result: SendResult = {
  conversation_id: 1,
  user_message_id: 1,
  message: {
    id: 2,
    parent_id: 1,
    role: 'assistant',
    content: 'Paris — «bien sûr» 🇫🇷',
    status: 'done',
    error: null,
    stats: null,
    created_at: 0,
    updated_at: 0,
    sibling_ids: [2],
    sibling_index: 0,
  },
  cache_source: 'fresh',
  cache_detail: null,
  report: {
    stop_reason: 'end_of_turn',
    prompt_tokens: 26,
    reused_tokens: 0,
    generated_tokens: 7,
    prefill_ms: 1,
    time_to_first_token_ms: 1,
    decode_ms: 1,
    prefill_tokens_per_s: 1,
    decode_tokens_per_s: 1,
    kv: null,
    cache_spec: 'sep:a=4,s=256,w=1024,c=2048',
    cache_evicts: true,
  },
  compressions: [],
  snapshot: null,
};

const events: ChatEvent[] = [
  { type: 'started', conversation_id: 1, user_message_id: 1, assistant_message_id: 2 },
  { type: 'session', source: 'fresh', detail: null },
  { type: 'token', text: 'Paris — «bien' },
  { type: 'token', text: ' sûr» 🇫🇷' },
  { type: 'finished', result },
];

function sse(events: ChatEvent[], end: string): string {
  return events.map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') + ': keep-alive\n\n' + end;
}

describe('the HTTP transport', () => {
  it('posts JSON to /rpc/<method>, with {} when there are no arguments', async () => {
    const { fetch, calls } = fakeFetch(() => Response.json([]));
    const transport = createHttpTransport({ fetch });
    await transport.list_conversations();
    await transport.rename_conversation({ conversation_id: 3, title: 'Trip' });
    expect(calls.map((call) => call.url)).toEqual(['rpc/list_conversations', 'rpc/rename_conversation']);
    expect(calls[0].init.method).toBe('POST');
    expect(new Headers(calls[0].init.headers).get('Content-Type')).toBe('application/json');
    expect(calls[0].init.body).toBe('{}');
    expect(JSON.parse(calls[1].init.body as string)).toEqual({ conversation_id: 3, title: 'Trip' });
  });

  it('reads health with a GET', async () => {
    const { fetch, calls } = fakeFetch(() => Response.json({ status: 'ok', version: '0.1.0', model: null }));
    const health = await createHttpTransport({ fetch }).health();
    expect(health.version).toBe('0.1.0');
    expect(calls[0]).toMatchObject({ url: 'api/health', init: { method: 'GET' } });
  });

  it('streams events and resolves to the result, whatever the chunk boundaries', async () => {
    const bytes = encoder.encode(sse(events, `event: result\ndata: ${JSON.stringify(result)}\n\n`));
    const flag = bytes.indexOf(0xf0); // the first byte of the flag emoji's first code point
    const boundaries = [
      [3], // inside "data:"
      [flag + 1, flag + 2], // inside one UTF-8 sequence
      Array.from({ length: bytes.length - 1 }, (_, index) => index + 1), // one byte at a time
    ];
    for (const offsets of boundaries) {
      const { fetch } = fakeFetch(() => streamedResponse(splitAt(bytes, offsets)));
      const seen: ChatEvent[] = [];
      const answer = await createHttpTransport({ fetch }).send_message(
        { conversation_id: 1, text: 'capital of France?' },
        (event) => seen.push(event),
      );
      expect(seen).toEqual(events);
      expect(answer).toEqual(result);
    }
  });

  it('drops a final event cut off before its blank line, as EventSource does', async () => {
    const bytes = encoder.encode(sse(events.slice(0, 1), `event: result\ndata: ${JSON.stringify(result)}\n`));
    const { fetch } = fakeFetch(() => streamedResponse([bytes]));
    const regenerating = createHttpTransport({ fetch }).regenerate({ conversation_id: 1, message_id: 2 }, () => {});
    await expect(regenerating).rejects.toMatchObject({ code: 'internal' });
  });

  it('rejects with the ApiError of an error event, after the events before it', async () => {
    const error = { code: 'engine', message: 'the engine stopped' };
    const bytes = encoder.encode(sse(events.slice(0, 3), `event: error\ndata: ${JSON.stringify(error)}\n\n`));
    const { fetch } = fakeFetch(() => streamedResponse(splitAt(bytes, [10, 11, 200])));
    const seen: ChatEvent[] = [];
    const sending = createHttpTransport({ fetch }).edit_message(
      { conversation_id: 1, message_id: 1, text: 'again' },
      (event) => seen.push(event),
    );
    await expect(sending).rejects.toEqual(error);
    expect(seen).toHaveLength(3);
  });

  it('rejects when the stream ends without a result', async () => {
    const { fetch } = fakeFetch(() => streamedResponse([encoder.encode(sse(events.slice(0, 2), ''))]));
    const sending = createHttpTransport({ fetch }).send_message({ conversation_id: 1, text: 'x' }, () => {});
    await expect(sending).rejects.toMatchObject({ code: 'internal', message: expect.stringMatching(/ended/) });
  });

  it('rejects with the JSON error of a refused generation (503 busy)', async () => {
    const busy = { code: 'busy', message: 'too many replies are being generated or waiting; try again shortly' };
    const { fetch } = fakeFetch(() => Response.json(busy, { status: 503, headers: { 'Retry-After': '1' } }));
    const seen: ChatEvent[] = [];
    const sending = createHttpTransport({ fetch }).send_message({ conversation_id: 1, text: 'x' }, (event) =>
      seen.push(event),
    );
    await expect(sending).rejects.toEqual(busy);
    expect(seen).toEqual([]);
  });

  it('turns an error answer that is not an ApiError into one, from its status', async () => {
    const { fetch } = fakeFetch(() => new Response('<h1>Not Found</h1>', { status: 404, statusText: 'Not Found' }));
    await expect(createHttpTransport({ fetch }).get_conversation({ conversation_id: 9 })).rejects.toEqual({
      code: 'not_found',
      message: 'the server answered 404 Not Found',
    });
  });

  it('turns a network failure into an internal ApiError with a readable message', async () => {
    const fetch: Fetch = async () => {
      throw new TypeError('Failed to fetch');
    };
    await expect(createHttpTransport({ fetch }).list_trash()).rejects.toEqual({
      code: 'internal',
      message: 'cannot reach the sepchat server (Failed to fetch)',
    });
  });

  it('passes the abort signal on, and reports an abort as cancelled', async () => {
    const controller = new AbortController();
    const fetch: Fetch = (_url, init) =>
      new Promise((_resolve, reject) => {
        init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      });
    const sending = createHttpTransport({ fetch }).send_message(
      { conversation_id: 1, text: 'x' },
      () => {},
      controller.signal,
    );
    controller.abort();
    await expect(sending).rejects.toEqual({ code: 'internal', message: 'the request was cancelled' });
  });
});
