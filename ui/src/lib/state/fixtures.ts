// Rows as the server sends them, for the state tests.

import type { CompressionMarker, ConversationInfo, ConversationView, KvStats, MessageInfo } from '../api/types';

export function conversationRow(id: number, changes: Partial<ConversationInfo> = {}): ConversationInfo {
  return {
    id,
    title: `Conversation ${id}`,
    system_prompt: null,
    sampling: {},
    cache_profile: null,
    model_path: null,
    model_sha256: null,
    pinned: false,
    active_leaf_id: null,
    created_at: 1000 * id,
    updated_at: 1000 * id,
    deleted_at: null,
    ...changes,
  };
}

export function messageRow(id: number, changes: Partial<MessageInfo> = {}): MessageInfo {
  return {
    id,
    parent_id: id > 1 ? id - 1 : null,
    role: id % 2 === 1 ? 'user' : 'assistant',
    content: `message ${id}`,
    status: 'done',
    error: null,
    stats: null,
    created_at: id,
    updated_at: id,
    sibling_ids: [id],
    sibling_index: 0,
    ...changes,
  };
}

export function markerRow(id: number, messageId: number): CompressionMarker {
  return {
    id,
    conversation_id: 1,
    message_id: messageId,
    tokens_seen_at: 1234,
    slots_before: 512,
    slots_after: 300,
    dropped_separators: 12,
    dropped_other: 200,
    bytes_freed: 1_200_000,
    created_at: 0,
  };
}

/** A conversation of alternating user and assistant messages 1..count. */
export function viewOf(count: number, markers: CompressionMarker[] = []): ConversationView {
  const branch = Array.from({ length: count }, (_, index) => messageRow(index + 1));
  return { conversation: conversationRow(1, { active_leaf_id: count || null }), branch, markers };
}

export function kvStats(slots: number): KvStats {
  return {
    tokens_seen: slots,
    slots_held: slots,
    capacity: 2048,
    initial_held: 4,
    initial_limit: 4,
    separators_held: 0,
    separators_limit: 256,
    past_held: 0,
    local_held: slots - 4,
    local_limit: 1024,
    tokens_to_next_compaction: 2048 - slots,
    bytes_held: slots * 1000,
    bytes_dense: slots * 1000,
    kept_ratio: 1,
    kept_ratio_mean: 1,
    slots_mean: slots / 2,
    slots_peak: slots,
    dropped_separators: 0,
    dropped_other: 0,
    compactions: 0,
    horizon: slots,
  };
}
