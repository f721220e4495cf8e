import type { CacheSource, ConversationInfo, ConversationView, MessageInfo, SearchHit, SendResult } from '../api/types';
import { sameSampling, type ConversationSettings, type SettingsErrors } from '../settings-form';
import { toApiError } from '../transport/errors';
import type { ChatEventHandler, Transport } from '../transport/types';
import { siblingTarget } from './branch';
import {
  applyChatEvent,
  startGeneration,
  transcriptOf,
  viewAfterLostReply,
  type Generation,
  type Transcript,
  type Turn,
} from './generation';
import type { Library } from './library.svelte';
import type { Toasts } from './toasts.svelte';

/** Where the cache of the conversation's latest reply came from (the server says so per reply). */
export interface CacheOrigin {
  conversationId: number;
  source: CacheSource;
  detail: string | null;
}

/** The conversation on screen and the reply being generated (one at a time: the engine runs one anyway). */
export class Chat {
  view = $state<ConversationView | null>(null);
  generation = $state<Generation | null>(null);
  /** The composer's text: kept here so a refused message can be put back. */
  composerText = $state('');
  /** A message to scroll to and highlight (a search hit), until the transcript has done so. */
  focusMessageId = $state<number | null>(null);
  cacheOrigin = $state<CacheOrigin | null>(null);
  loading = $state(false);

  readonly transcript: Transcript | null = $derived(this.view ? transcriptOf(this.view, this.generation) : null);
  readonly currentId: number | null = $derived(this.view?.conversation.id ?? null);
  readonly generatingHere: boolean = $derived(
    this.generation !== null && this.generation.conversationId === this.currentId,
  );

  /** Only the latest `open` may set the view: a slow answer for a conversation left since must not. */
  private openRequest = 0;
  private abort: AbortController | null = null;
  /** A send is creating its conversation (no generation yet). */
  private creating = false;

  constructor(
    private readonly transport: Transport,
    private readonly toasts: Toasts,
    private readonly library: Library,
  ) {}

  async open(conversationId: number, focusMessageId: number | null = null): Promise<void> {
    const request = ++this.openRequest;
    this.loading = true;
    try {
      let view = await this.transport.get_conversation({ conversation_id: conversationId });
      if (focusMessageId !== null && !view.branch.some((message) => message.id === focusMessageId)) {
        // The hit is on another branch: show that branch.
        view = await this.transport.switch_branch({ conversation_id: conversationId, message_id: focusMessageId });
      }
      if (request !== this.openRequest) return;
      this.view = view;
      this.focusMessageId = focusMessageId;
    } catch (error) {
      if (request === this.openRequest) this.toasts.error(toApiError(error).message);
    } finally {
      if (request === this.openRequest) this.loading = false;
    }
  }

  openHit(hit: SearchHit): Promise<void> {
    return this.open(hit.conversation_id, hit.message_id);
  }

  /** An empty chat; the conversation is created when its first message is sent. */
  newChat(): void {
    this.openRequest++;
    this.loading = false;
    this.view = null;
    this.focusMessageId = null;
  }

  /** Closes the conversation if it is the one on screen (it was trashed or deleted). */
  closeIfOpen(conversationId: number): void {
    if (this.currentId === conversationId) this.newChat();
  }

  /** The conversation's row changed (settings): show and list the new one. */
  conversationChanged(conversation: ConversationInfo): void {
    if (this.view && this.view.conversation.id === conversation.id) this.view = { ...this.view, conversation };
    this.library.upsert(conversation);
  }

  /** The conversation on screen, created first when this is a new chat. */
  async ensureConversation(): Promise<ConversationInfo | null> {
    if (this.view) return this.view.conversation;
    try {
      const conversation = await this.transport.create_conversation({});
      this.view = { conversation, branch: [], markers: [] };
      this.library.upsert(conversation);
      return conversation;
    } catch (error) {
      this.toasts.error(`Cannot start a conversation: ${toApiError(error).message}`);
      return null;
    }
  }

  /**
   * Applies what changed; each setting on its own, so one the server refuses (an invalid cache spec) does not
   * undo the others. A new chat is created with them.
   */
  async saveSettings(settings: ConversationSettings): Promise<SettingsErrors> {
    if (!this.view) {
      try {
        const conversation = await this.transport.create_conversation(settings);
        this.view = { conversation, branch: [], markers: [] };
        this.library.upsert(conversation);
        return {};
      } catch (error) {
        return { general: toApiError(error).message };
      }
    }
    const conversationId = this.view.conversation.id;
    const current = this.view.conversation;
    const errors: SettingsErrors = {};
    const apply = async (key: keyof ConversationSettings, change: () => Promise<ConversationInfo>) => {
      try {
        this.conversationChanged(await change());
      } catch (error) {
        errors[key] = toApiError(error).message;
      }
    };
    if (settings.system_prompt !== current.system_prompt) {
      await apply('system_prompt', () =>
        this.transport.set_system_prompt({ conversation_id: conversationId, system_prompt: settings.system_prompt }),
      );
    }
    if (!sameSampling(settings.sampling, current.sampling)) {
      await apply('sampling', () =>
        this.transport.set_sampling({ conversation_id: conversationId, sampling: settings.sampling }),
      );
    }
    if (settings.cache_profile !== current.cache_profile) {
      await apply('cache_profile', () =>
        this.transport.set_cache_profile({ conversation_id: conversationId, cache_profile: settings.cache_profile }),
      );
    }
    return errors;
  }

  async send(): Promise<void> {
    const text = this.composerText;
    if (!text.trim() || this.generation || this.creating) return;
    this.composerText = '';
    // Set before the first await: a second Enter meanwhile must not send (or create) twice.
    this.creating = true;
    const conversation = await this.ensureConversation().finally(() => (this.creating = false));
    if (!conversation) {
      this.composerText = text;
      return;
    }
    await this.run(conversation.id, { kind: 'send', text }, (onEvent, signal) =>
      this.transport.send_message({ conversation_id: conversation.id, text }, onEvent, signal),
    );
  }

  async regenerate(messageId: number): Promise<void> {
    const conversationId = this.currentId;
    if (conversationId === null || this.generation) return;
    await this.run(conversationId, { kind: 'regenerate', messageId }, (onEvent, signal) =>
      this.transport.regenerate({ conversation_id: conversationId, message_id: messageId }, onEvent, signal),
    );
  }

  async edit(messageId: number, text: string): Promise<void> {
    const conversationId = this.currentId;
    if (conversationId === null || this.generation || !text.trim()) return;
    await this.run(conversationId, { kind: 'edit', messageId, text }, (onEvent, signal) =>
      this.transport.edit_message({ conversation_id: conversationId, message_id: messageId, text }, onEvent, signal),
    );
  }

  /** Stops the reply in progress; it ends `stopped` with the text it has. */
  async stop(): Promise<void> {
    const generation = this.generation;
    if (!generation || generation.phase === 'stopping') return;
    this.generation = { ...generation, phase: 'stopping' };
    try {
      await this.transport.stop({ conversation_id: generation.conversationId });
    } catch {
      // The server could not be told; closing the stream stops the generation as well.
      this.abort?.abort();
    }
  }

  async showSibling(message: MessageInfo, step: -1 | 1): Promise<void> {
    const target = siblingTarget(message, step);
    const conversationId = this.currentId;
    if (target === null || conversationId === null || this.generation) return;
    try {
      this.view = await this.transport.switch_branch({ conversation_id: conversationId, message_id: target });
    } catch (error) {
      this.toasts.error(toApiError(error).message);
    }
  }

  private async run(
    conversationId: number,
    turn: Turn,
    call: (onEvent: ChatEventHandler, signal: AbortSignal) => Promise<SendResult>,
  ): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    this.generation = startGeneration(conversationId, turn);
    const onEvent: ChatEventHandler = (event) => {
      if (this.generation) this.generation = applyChatEvent(this.generation, event);
    };
    let failure: string | null = null;
    try {
      const result = await call(onEvent, abort.signal);
      this.cacheOrigin = { conversationId, source: result.cache_source, detail: result.cache_detail };
      if (result.message.status === 'error') {
        this.toasts.error(`The reply failed: ${result.message.error ?? 'unknown error'}`);
      }
    } catch (thrown) {
      failure = toApiError(thrown).message;
      const refused = this.generation?.userMessageId === null;
      if (refused && turn.kind === 'send' && !this.composerText) this.composerText = turn.text;
      this.toasts.error(refused ? `Not sent: ${failure}` : `The reply failed: ${failure}`);
    } finally {
      this.abort = null;
      await this.settle(conversationId, failure);
    }
  }

  /** Ends the turn: the branch as stored replaces the streamed one, in the same update (no flicker, no message
   * shown twice); if the server cannot be asked, the streamed text stays on screen with the error. */
  private async settle(conversationId: number, failure: string | null): Promise<void> {
    const stored = await this.storedView(conversationId);
    const generation = this.generation;
    if (this.currentId === conversationId && this.view) {
      if (stored) this.view = stored;
      else if (generation?.assistantMessageId != null) {
        this.view = viewAfterLostReply(this.view, generation, failure ?? 'the reply could not be read back');
      }
    }
    this.generation = null;
    // The server titles a new conversation from its first message, and the list is ordered by activity (unless
    // the server is gone, when asking would only fail again).
    if (failure === null || stored) await this.library.refresh();
  }

  /** The conversation as stored, when it is still the one on screen (`null` also when the server cannot say). */
  private async storedView(conversationId: number): Promise<ConversationView | null> {
    if (this.currentId !== conversationId) return null;
    try {
      return await this.transport.get_conversation({ conversation_id: conversationId });
    } catch {
      return null;
    }
  }
}
