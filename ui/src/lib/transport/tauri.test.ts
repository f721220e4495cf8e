import { describe, expect, it } from 'vitest';
import type { ChatEvent, SendResult } from '../api/types';
import { createTauriTransport, type Invoke } from './tauri';

interface Call {
  command: string;
  args: Record<string, unknown>;
}

function recorder(answer: (call: Call) => unknown) {
  const calls: Call[] = [];
  const invoke: Invoke = async <T>(command: string, args: Record<string, unknown>) => {
    const call = { command, args };
    calls.push(call);
    return answer(call) as T;
  };
  return { calls, invoke };
}

const result = { conversation_id: 3, user_message_id: 7 } as unknown as SendResult;

describe('the Tauri transport', () => {
  it('invokes the command of the same name with the JSON the HTTP transport would POST', async () => {
    const { calls, invoke } = recorder(() => ({ id: 3, title: 'Trip' }));
    const transport = createTauriTransport({ invoke });
    await transport.rename_conversation({ conversation_id: 3, title: 'Trip' });
    await transport.list_conversations();
    expect(calls).toEqual([
      { command: 'rename_conversation', args: { conversation_id: 3, title: 'Trip' } },
      { command: 'list_conversations', args: {} },
    ]);
  });

  it('streams a generation through its channel and resolves with the result', async () => {
    let channel: { onmessage: (event: ChatEvent) => void } | null = null;
    const { calls, invoke } = recorder((call) => {
      const events = call.args.on_event as { onmessage: (event: ChatEvent) => void };
      events.onmessage({ type: 'token', text: 'Hel' });
      events.onmessage({ type: 'token', text: 'lo' });
      return result;
    });
    const transport = createTauriTransport({
      invoke,
      channel: () => (channel = { onmessage: () => undefined }),
    });
    const seen: ChatEvent[] = [];
    const answer = await transport.send_message({ conversation_id: 3, text: 'Hi' }, (event) => seen.push(event));
    expect(answer).toBe(result);
    expect(seen).toEqual([
      { type: 'token', text: 'Hel' },
      { type: 'token', text: 'lo' },
    ]);
    expect(calls[0].command).toBe('send_message');
    expect(calls[0].args).toMatchObject({ conversation_id: 3, text: 'Hi' });
    expect(calls[0].args.on_event).toBe(channel);
  });

  it('asks the App to stop when the caller aborts', async () => {
    let finish: (value: SendResult) => void = () => undefined;
    const { calls, invoke } = recorder((call) =>
      call.command === 'stop' ? true : new Promise<SendResult>((resolve) => (finish = resolve)),
    );
    const transport = createTauriTransport({ invoke, channel: () => ({ onmessage: () => undefined }) });
    const abort = new AbortController();
    const pending = transport.regenerate({ conversation_id: 5, message_id: 9 }, () => undefined, abort.signal);
    abort.abort();
    finish(result);
    await pending;
    expect(calls.map((call) => call.command)).toEqual(['regenerate', 'stop']);
    expect(calls[1].args).toEqual({ conversation_id: 5 });
  });

  it('rejects with the core error as it came, and anything else as an internal ApiError', async () => {
    const failing = createTauriTransport({
      invoke: async () => {
        throw { code: 'not_found', message: 'conversation 4 does not exist' };
      },
    });
    await expect(failing.get_conversation({ conversation_id: 4 })).rejects.toEqual({
      code: 'not_found',
      message: 'conversation 4 does not exist',
    });
    const broken = createTauriTransport({
      invoke: async () => {
        throw 'command get_conversation not found';
      },
    });
    await expect(broken.get_conversation({ conversation_id: 4 })).rejects.toEqual({
      code: 'internal',
      message: 'command get_conversation not found',
    });
  });

  it("turns the shell's events into notices, subscribed to when onNotice resolves", async () => {
    const handlers = new Map<string, (payload: unknown) => void>();
    const transport = createTauriTransport({
      invoke: async () => undefined as never,
      listen: async (event, handler) => {
        // Subscribing takes a round trip to the shell.
        await new Promise((resolve) => setTimeout(resolve, 5));
        handlers.set(event, handler);
      },
    });
    const notices: unknown[] = [];
    await transport.onNotice((notice) => notices.push(notice));
    expect([...handlers.keys()].sort()).toEqual(['conversations-changed', 'model-error', 'model-loaded']);
    handlers.get('model-error')?.({ code: 'model', message: 'the default model is not downloaded' });
    handlers.get('conversations-changed')?.({ method: 'send_message' });
    expect(notices).toEqual([
      { kind: 'model_error', error: { code: 'model', message: 'the default model is not downloaded' } },
      { kind: 'conversations_changed' },
    ]);
  });
});
