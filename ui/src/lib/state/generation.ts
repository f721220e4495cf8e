// A reply in progress, as a value: each event of the stream gives the next state (`applyChatEvent`), and the
// transcript on screen is the branch as it was before the turn plus what the turn has produced so far.

import type {
  CacheSource,
  ChatEvent,
  CompressionMarker,
  ConversationView,
  KvStats,
  MessageInfo,
  SendResult,
} from '../api/types';

/** What the user asked for. */
export type Turn =
  | { kind: 'send'; text: string }
  /** `messageId`: the reply to redo, or a user message left without one. */
  | { kind: 'regenerate'; messageId: number }
  | { kind: 'edit'; messageId: number; text: string };

export type GenerationPhase = 'waiting' | 'prefill' | 'streaming' | 'stopping';

export interface Generation {
  conversationId: number;
  turn: Turn;
  phase: GenerationPhase;
  /** Known once the server sends `started`. */
  userMessageId: number | null;
  assistantMessageId: number | null;
  text: string;
  cacheSource: CacheSource | null;
  cacheDetail: string | null;
  prefill: { done: number; total: number } | null;
  kv: KvStats | null;
  markers: CompressionMarker[];
  result: SendResult | null;
}

export function startGeneration(conversationId: number, turn: Turn): Generation {
  return {
    conversationId,
    turn,
    phase: 'waiting',
    userMessageId: null,
    assistantMessageId: null,
    text: '',
    cacheSource: null,
    cacheDetail: null,
    prefill: null,
    kv: null,
    markers: [],
    result: null,
  };
}

export function applyChatEvent(generation: Generation, event: ChatEvent): Generation {
  switch (event.type) {
    case 'started':
      return {
        ...generation,
        userMessageId: event.user_message_id,
        assistantMessageId: event.assistant_message_id,
      };
    case 'session':
      return { ...generation, cacheSource: event.source, cacheDetail: event.detail };
    case 'prefill':
      return {
        ...generation,
        phase: generation.phase === 'stopping' ? 'stopping' : 'prefill',
        prefill: { done: event.done, total: event.total },
      };
    case 'token':
      return {
        ...generation,
        phase: generation.phase === 'stopping' ? 'stopping' : 'streaming',
        text: generation.text + event.text,
      };
    case 'kv':
      return { ...generation, kv: event.stats };
    case 'compression':
      return { ...generation, markers: [...generation.markers, event.marker] };
    case 'finished':
      return { ...generation, result: event.result };
  }
}

/** Ids for messages the server has not named yet (real ids are positive). */
export const PENDING_USER_ID = -1;
export const PENDING_REPLY_ID = -2;

function pendingMessage(
  id: number,
  parentId: number | null,
  role: 'user' | 'assistant',
  content: string,
): MessageInfo {
  return {
    id,
    parent_id: parentId,
    role,
    content,
    status: role === 'user' ? 'done' : 'streaming',
    error: null,
    stats: null,
    created_at: 0,
    updated_at: 0,
    sibling_ids: [],
    sibling_index: 0,
  };
}

/** How much of the branch stays on screen during the turn: all of it for a send, the part above the redone or
 * edited message otherwise (for a regenerated reply, up to its user message). */
function keptBranch(branch: readonly MessageInfo[], turn: Turn): MessageInfo[] {
  if (turn.kind === 'send') return [...branch];
  const index = branch.findIndex((message) => message.id === turn.messageId);
  if (index < 0) return [...branch];
  if (turn.kind === 'edit') return branch.slice(0, index);
  return branch.slice(0, branch[index].role === 'assistant' ? index : index + 1);
}

export interface Transcript {
  messages: MessageInfo[];
  markers: CompressionMarker[];
  /** The reply being written, when it is on screen. */
  streamingId: number | null;
}

/** What the chat column shows: the view's branch, or, while this conversation generates, the turn's state. */
export function transcriptOf(view: ConversationView, generation: Generation | null): Transcript {
  if (!generation || generation.conversationId !== view.conversation.id) {
    return { messages: view.branch, markers: view.markers, streamingId: null };
  }
  const messages = keptBranch(view.branch, generation.turn);
  const kept = new Set(messages.map((message) => message.id));
  const turn = generation.turn;
  if (turn.kind !== 'regenerate') {
    const parentId = messages.at(-1)?.id ?? null;
    messages.push(pendingMessage(generation.userMessageId ?? PENDING_USER_ID, parentId, 'user', turn.text));
  }
  const replyId = generation.assistantMessageId ?? PENDING_REPLY_ID;
  messages.push(pendingMessage(replyId, messages.at(-1)?.id ?? null, 'assistant', generation.text));
  return {
    messages,
    markers: [...view.markers.filter((marker) => kept.has(marker.message_id)), ...generation.markers],
    streamingId: replyId,
  };
}

/**
 * The conversation as last streamed, for when the server cannot say how it was stored (it went away): the reply
 * keeps its text and shows the error, rather than vanishing from the screen.
 */
export function viewAfterLostReply(view: ConversationView, generation: Generation, error: string): ConversationView {
  const transcript = transcriptOf(view, generation);
  const branch = transcript.messages.map((message) =>
    message.id === transcript.streamingId ? { ...message, status: 'error' as const, error } : message,
  );
  return { ...view, branch, markers: transcript.markers };
}
