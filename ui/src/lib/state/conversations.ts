import type { ConversationInfo } from '../api/types';

/** The sidebar's order: pinned first, then the most recently changed (the server's order, kept after local edits). */
export function sortConversations(conversations: readonly ConversationInfo[]): ConversationInfo[] {
  return [...conversations].sort(
    (a, b) => Number(b.pinned) - Number(a.pinned) || b.updated_at - a.updated_at || b.id - a.id,
  );
}

/** The list with `changed` in place of its old row (or added), in order; a trashed row leaves the list. */
export function upsertConversation(
  conversations: readonly ConversationInfo[],
  changed: ConversationInfo,
): ConversationInfo[] {
  const others = conversations.filter((conversation) => conversation.id !== changed.id);
  return sortConversations(changed.deleted_at === null ? [...others, changed] : others);
}

export function withoutConversation(conversations: readonly ConversationInfo[], id: number): ConversationInfo[] {
  return conversations.filter((conversation) => conversation.id !== id);
}

/** A conversation's name on screen: the server titles it from the first message; until then it has none. */
export function conversationTitle(conversation: Pick<ConversationInfo, 'title'>): string {
  return conversation.title.trim() || 'New chat';
}
