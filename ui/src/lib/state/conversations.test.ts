import { describe, expect, it } from 'vitest';
import { conversationTitle, sortConversations, upsertConversation, withoutConversation } from './conversations';
import { conversationRow } from './fixtures';

const ids = (list: { id: number }[]) => list.map((conversation) => conversation.id);

describe('the conversation list', () => {
  it('puts pinned conversations first, then the most recently changed', () => {
    const list = sortConversations([
      conversationRow(1, { updated_at: 500 }),
      conversationRow(2, { updated_at: 900 }),
      conversationRow(3, { updated_at: 100, pinned: true }),
      conversationRow(4, { updated_at: 700, pinned: true }),
    ]);
    expect(ids(list)).toEqual([4, 3, 2, 1]);
  });

  it('moves a changed row to its new place, and adds a new one', () => {
    const list = sortConversations([conversationRow(1), conversationRow(2), conversationRow(3)]);
    expect(ids(list)).toEqual([3, 2, 1]);
    expect(ids(upsertConversation(list, conversationRow(1, { updated_at: 9999 })))).toEqual([1, 3, 2]);
    expect(ids(upsertConversation(list, conversationRow(2, { pinned: true })))).toEqual([2, 3, 1]);
    expect(ids(upsertConversation(list, conversationRow(7, { updated_at: 50 })))).toEqual([3, 2, 1, 7]);
  });

  it('drops a row that comes back trashed, or is removed', () => {
    const list = [conversationRow(2), conversationRow(1)];
    expect(ids(upsertConversation(list, conversationRow(2, { deleted_at: 5 })))).toEqual([1]);
    expect(ids(withoutConversation(list, 1))).toEqual([2]);
  });

  it('names an untitled conversation', () => {
    expect(conversationTitle({ title: '  ' })).toBe('New chat');
    expect(conversationTitle({ title: 'Trip' })).toBe('Trip');
  });
});
