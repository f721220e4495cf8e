// The stores against a fake transport: what the UI does with the server's answers. A `.svelte.test.ts` file so
// the stores' runes are compiled.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ChatEvent, ConversationView, Health, ModelInfo, SearchHit, SendResult } from '../api/types';
import type { ChatEventHandler, Notice, SearchArgs, Transport } from '../transport/types';
import { Chat } from './chat.svelte';
import { conversationRow, messageRow, viewOf } from './fixtures';
import { Library } from './library.svelte';
import { Models } from './models.svelte';
import { Search } from './search.svelte';
import { Toasts } from './toasts.svelte';

/** A transport whose methods are the given fakes; any other call fails the test. */
function fakeTransport(methods: Partial<Transport>): Transport {
  return new Proxy(methods as Transport, {
    get(target, name: string) {
      const method = target[name as keyof Transport];
      if (!method) throw new Error(`unexpected call: ${name}`);
      return method;
    },
  });
}

function resultFor(view: ConversationView, status: 'done' | 'stopped' = 'done'): SendResult {
  const reply = view.branch.at(-1)!;
  return {
    conversation_id: view.conversation.id,
    user_message_id: reply.parent_id!,
    message: { ...reply, status },
    cache_source: 'fresh',
    cache_detail: null,
    report: {
      stop_reason: status === 'done' ? 'end_of_turn' : 'cancelled',
      prompt_tokens: 10,
      reused_tokens: 0,
      generated_tokens: 2,
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
}

/** A generation the test drives: it sends events, then ends it. */
function controllableGeneration() {
  let onEvent: ChatEventHandler = () => {};
  let finish: (result: SendResult) => void = () => {};
  let fail: (error: unknown) => void = () => {};
  const call = vi.fn(
    (_request: unknown, handler: ChatEventHandler) =>
      new Promise<SendResult>((resolve, reject) => {
        onEvent = handler;
        finish = resolve;
        fail = reject;
      }),
  );
  return {
    call,
    emit: (event: ChatEvent) => onEvent(event),
    finish: (result: SendResult) => finish(result),
    fail: (error: unknown) => fail(error),
  };
}

const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

describe('Chat', () => {
  it('creates the conversation on the first message, streams the reply, then shows it as stored', async () => {
    const stored = viewOf(2);
    const created = conversationRow(1, { title: '' });
    const generation = controllableGeneration();
    const transport = fakeTransport({
      create_conversation: vi.fn(async () => created),
      send_message: generation.call,
      get_conversation: vi.fn(async () => stored),
      list_conversations: vi.fn(async () => [stored.conversation]),
    });
    const toasts = new Toasts();
    const library = new Library(transport, toasts);
    const chat = new Chat(transport, toasts, library);

    chat.composerText = 'Hello there';
    const sending = chat.send();
    await flush();
    expect(transport.create_conversation).toHaveBeenCalledWith({});
    expect(generation.call.mock.calls[0][0]).toEqual({ conversation_id: 1, text: 'Hello there' });
    expect(chat.composerText).toBe('');
    expect(library.conversations.map((conversation) => conversation.id)).toEqual([1]);

    generation.emit({ type: 'started', conversation_id: 1, user_message_id: 1, assistant_message_id: 2 });
    generation.emit({ type: 'token', text: 'Hi' });
    generation.emit({ type: 'token', text: '!' });
    expect(chat.generatingHere).toBe(true);
    expect(chat.transcript?.messages.map((message) => [message.id, message.content])).toEqual([
      [1, 'Hello there'],
      [2, 'Hi!'],
    ]);
    expect(chat.transcript?.streamingId).toBe(2);

    generation.finish(resultFor(stored));
    await sending;
    expect(chat.generation).toBeNull();
    expect(chat.view).toEqual(stored);
    expect(chat.transcript?.streamingId).toBeNull();
    expect(chat.cacheOrigin).toEqual({ conversationId: 1, source: 'fresh', detail: null });
    // The title the server gave it comes with the refreshed list.
    expect(transport.list_conversations).toHaveBeenCalled();
    expect(library.conversations[0].title).toBe('Conversation 1');
  });

  it('puts a refused message back in the composer and says why', async () => {
    const view = viewOf(2);
    const transport = fakeTransport({
      get_conversation: vi.fn(async () => view),
      send_message: vi.fn(async () => {
        throw { code: 'busy', message: 'too many replies are being generated or waiting; try again shortly' };
      }),
      list_conversations: vi.fn(async () => [view.conversation]),
    });
    const toasts = new Toasts();
    const chat = new Chat(transport, toasts, new Library(transport, toasts));
    await chat.open(1);
    chat.composerText = 'Are you there?';
    await chat.send();
    expect(chat.generation).toBeNull();
    expect(chat.composerText).toBe('Are you there?');
    expect(toasts.items.map((toast) => [toast.kind, toast.message])).toEqual([
      ['error', 'Not sent: too many replies are being generated or waiting; try again shortly'],
    ]);
  });

  it('sends nothing while empty or while a reply is generating', async () => {
    const generation = controllableGeneration();
    const view = viewOf(2);
    const transport = fakeTransport({
      get_conversation: vi.fn(async () => view),
      send_message: generation.call,
      stop: vi.fn(async () => true),
      list_conversations: vi.fn(async () => []),
    });
    const toasts = new Toasts();
    const chat = new Chat(transport, toasts, new Library(transport, toasts));
    await chat.open(1);
    chat.composerText = '   ';
    await chat.send();
    expect(generation.call).not.toHaveBeenCalled();

    chat.composerText = 'first';
    const first = chat.send();
    chat.composerText = 'second';
    await chat.send();
    await flush();
    expect(generation.call).toHaveBeenCalledTimes(1);
    expect(chat.composerText).toBe('second');

    // Stop tells the server, once; the reply then ends as stopped.
    await chat.stop();
    await chat.stop();
    expect(transport.stop).toHaveBeenCalledExactlyOnceWith({ conversation_id: 1 });
    expect(chat.generation?.phase).toBe('stopping');
    generation.finish(resultFor(view, 'stopped'));
    await first;
    expect(chat.generation).toBeNull();
  });

  it('moves to a sibling through switch_branch and shows the view it answers', async () => {
    const view = viewOf(2);
    const reply = messageRow(2, { sibling_ids: [2, 4, 6], sibling_index: 1 });
    const other = { ...view, branch: [view.branch[0], messageRow(6, { sibling_ids: [2, 4, 6], sibling_index: 2 })] };
    const transport = fakeTransport({
      get_conversation: vi.fn(async () => view),
      switch_branch: vi.fn(async () => other),
    });
    const toasts = new Toasts();
    const chat = new Chat(transport, toasts, new Library(transport, toasts));
    await chat.open(1);
    await chat.showSibling(reply, 1);
    expect(transport.switch_branch).toHaveBeenCalledWith({ conversation_id: 1, message_id: 6 });
    expect(chat.view).toEqual(other);
    await chat.showSibling(other.branch[1], 1);
    expect(transport.switch_branch).toHaveBeenCalledTimes(1);
  });

  it('opens a search hit on its own branch when it is not on the one shown', async () => {
    const view = viewOf(4);
    const branched = { ...view, branch: [...view.branch.slice(0, 2), messageRow(9)] };
    const transport = fakeTransport({
      get_conversation: vi.fn(async () => view),
      switch_branch: vi.fn(async () => branched),
    });
    const toasts = new Toasts();
    const chat = new Chat(transport, toasts, new Library(transport, toasts));
    await chat.openHit({ conversation_id: 1, message_id: 3, conversation_title: 't', snippet: '' });
    expect(transport.switch_branch).not.toHaveBeenCalled();
    expect(chat.focusMessageId).toBe(3);
    await chat.openHit({ conversation_id: 1, message_id: 9, conversation_title: 't', snippet: '' });
    expect(transport.switch_branch).toHaveBeenCalledWith({ conversation_id: 1, message_id: 9 });
    expect(chat.view).toEqual(branched);
    expect(chat.focusMessageId).toBe(9);
  });

  it('applies only the settings that changed, and reports a refused one by itself', async () => {
    const view = viewOf(2);
    const transport = fakeTransport({
      get_conversation: vi.fn(async () => view),
      set_system_prompt: vi.fn(async () => ({ ...view.conversation, system_prompt: '' })),
      set_cache_profile: vi.fn(async () => {
        throw { code: 'invalid_input', message: 'cache spec `sep:zz`: `zz` is not key=value' };
      }),
    });
    const toasts = new Toasts();
    const chat = new Chat(transport, toasts, new Library(transport, toasts));
    await chat.open(1);
    const errors = await chat.saveSettings({ system_prompt: '', sampling: {}, cache_profile: 'sep:zz' });
    expect(errors).toEqual({ cache_profile: 'cache spec `sep:zz`: `zz` is not key=value' });
    expect(transport.set_system_prompt).toHaveBeenCalledWith({ conversation_id: 1, system_prompt: '' });
    expect(chat.view?.conversation.system_prompt).toBe('');
  });
});

describe('Library', () => {
  it('trashes at once and undoes from the toast', async () => {
    const rows = [conversationRow(2), conversationRow(1)];
    const transport = fakeTransport({
      list_conversations: vi.fn(async () => rows),
      delete_conversation: vi.fn(async () => conversationRow(2, { deleted_at: 5 })),
      restore_conversation: vi.fn(async () => conversationRow(2)),
    });
    const toasts = new Toasts();
    const library = new Library(transport, toasts);
    const removed: number[] = [];
    library.onRemoved = (id) => removed.push(id);
    await library.refresh();
    await library.trashConversation(2);
    expect(library.conversations.map((conversation) => conversation.id)).toEqual([1]);
    expect(removed).toEqual([2]);
    const toast = toasts.items[0];
    expect(toast.message).toBe('Moved “Conversation 2” to the trash');
    toast.action?.run();
    await flush();
    expect(transport.restore_conversation).toHaveBeenCalledWith({ conversation_id: 2 });
    expect(library.conversations.map((conversation) => conversation.id)).toEqual([2, 1]);
  });
});

describe('Models', () => {
  const model: ModelInfo = {
    path: '/models/default.gguf',
    file_name: 'default.gguf',
    sha256: 'ab',
    device: 'cpu',
    context_length: 8192,
    weights_bytes: 1,
    has_chat_template: true,
  };

  // The desktop shell loads the default model while the window starts: the load may finish before the window has
  // subscribed to its notice, or while the window's `health` question is on its way.
  it('asks health only once subscribed to notices', async () => {
    let subscribed = false;
    const transport = fakeTransport({
      onNotice: vi.fn(async () => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        subscribed = true;
      }),
      health: vi.fn(async (): Promise<Health> => {
        expect(subscribed).toBe(true);
        return { status: 'ok', version: '0.1.0', model };
      }),
    });
    const models = new Models(transport, new Toasts());
    await models.start();
    expect(models.info).toEqual(model);
    expect(models.known).toBe(true);
  });

  it('keeps a model loaded while an older health answer was on its way', async () => {
    let notify: (notice: Notice) => void = () => {};
    let answer: (health: Health) => void = () => {};
    const transport = fakeTransport({
      onNotice: vi.fn(async (handler: (notice: Notice) => void) => {
        notify = handler;
      }),
      health: vi.fn(() => new Promise<Health>((resolve) => (answer = resolve))),
    });
    const models = new Models(transport, new Toasts());
    const started = models.start();
    await flush();
    notify({ kind: 'model_loaded', model });
    answer({ status: 'ok', version: '0.1.0', model: null });
    await started;
    expect(models.info).toEqual(model);
    expect(models.serverVersion).toBe('0.1.0');
  });
});

describe('Search', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('asks once typing pauses, and shows only the latest answer', async () => {
    const answers: Record<string, (hits: SearchHit[]) => void> = {};
    const transport = fakeTransport({
      search: vi.fn(({ query }: SearchArgs) => new Promise<SearchHit[]>((resolve) => (answers[query] = resolve))),
    });
    const search = new Search(transport);
    search.setQuery('c');
    search.setQuery('ca');
    vi.advanceTimersByTime(199);
    expect(transport.search).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(transport.search).toHaveBeenCalledExactlyOnceWith({ query: 'ca' });
    search.setQuery('cap');
    vi.advanceTimersByTime(200);
    const hit: SearchHit = { conversation_id: 1, message_id: null, conversation_title: 'Capital', snippet: '\u0002Cap\u0003ital' };
    answers.cap([hit]);
    await vi.runAllTimersAsync();
    answers.ca([{ ...hit, conversation_id: 99 }]);
    await vi.runAllTimersAsync();
    expect(search.hits).toEqual([hit]);
    expect(search.pending).toBe(false);
    search.setQuery('  ');
    expect(search.hits).toEqual([]);
    expect(search.active).toBe(false);
  });
});
