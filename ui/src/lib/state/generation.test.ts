import { describe, expect, it } from 'vitest';
import type { ChatEvent } from '../api/types';
import { panelInputs, siblingTarget, markersByMessage } from './branch';
import {
  applyChatEvent,
  PENDING_REPLY_ID,
  PENDING_USER_ID,
  startGeneration,
  transcriptOf,
  viewAfterLostReply,
} from './generation';
import { kvStats, markerRow, messageRow, viewOf } from './fixtures';

function run(events: ChatEvent[], turn = { kind: 'send' as const, text: 'hi' }) {
  return events.reduce(applyChatEvent, startGeneration(1, turn));
}

describe('applyChatEvent', () => {
  it('appends token texts in order and moves from waiting to prefill to streaming', () => {
    let generation = startGeneration(1, { kind: 'send', text: 'hi' });
    expect(generation.phase).toBe('waiting');
    generation = applyChatEvent(generation, { type: 'prefill', done: 10, total: 40 });
    expect(generation).toMatchObject({ phase: 'prefill', prefill: { done: 10, total: 40 } });
    generation = applyChatEvent(generation, { type: 'token', text: 'Hel' });
    generation = applyChatEvent(generation, { type: 'token', text: 'lo' });
    expect(generation).toMatchObject({ phase: 'streaming', text: 'Hello' });
  });

  it('keeps ids, cache source, the latest readout and every compression', () => {
    const generation = run([
      { type: 'started', conversation_id: 1, user_message_id: 7, assistant_message_id: 8 },
      { type: 'session', source: 'restored_from_snapshot', detail: 'snapshot 1-6' },
      { type: 'kv', stats: kvStats(10) },
      { type: 'compression', marker: markerRow(1, 8) },
      { type: 'kv', stats: kvStats(20) },
      { type: 'compression', marker: markerRow(2, 8) },
    ]);
    expect(generation).toMatchObject({
      userMessageId: 7,
      assistantMessageId: 8,
      cacheSource: 'restored_from_snapshot',
      cacheDetail: 'snapshot 1-6',
    });
    expect(generation.kv?.slots_held).toBe(20);
    expect(generation.markers.map((marker) => marker.id)).toEqual([1, 2]);
  });

  it('stays stopping once Stop was asked for, while the last tokens arrive', () => {
    const stopping = { ...run([{ type: 'token', text: 'a' }]), phase: 'stopping' as const };
    expect(applyChatEvent(stopping, { type: 'token', text: 'b' })).toMatchObject({ phase: 'stopping', text: 'ab' });
  });

  it('does not change the state it was given', () => {
    const before = startGeneration(1, { kind: 'send', text: 'hi' });
    applyChatEvent(before, { type: 'token', text: 'x' });
    expect(before.text).toBe('');
  });
});

describe('transcriptOf', () => {
  it('shows the branch as it is when nothing generates here', () => {
    const view = viewOf(4, [markerRow(1, 2)]);
    expect(transcriptOf(view, null)).toEqual({ messages: view.branch, markers: view.markers, streamingId: null });
    const elsewhere = { ...startGeneration(2, { kind: 'send' as const, text: 'x' }) };
    expect(transcriptOf(view, elsewhere).streamingId).toBeNull();
  });

  it('adds the sent message and the streaming reply after the branch', () => {
    const generation = applyChatEvent(startGeneration(1, { kind: 'send', text: 'next question' }), {
      type: 'token',
      text: 'Partial',
    });
    const transcript = transcriptOf(viewOf(2), generation);
    expect(transcript.messages.map((message) => [message.id, message.role, message.content])).toEqual([
      [1, 'user', 'message 1'],
      [2, 'assistant', 'message 2'],
      [PENDING_USER_ID, 'user', 'next question'],
      [PENDING_REPLY_ID, 'assistant', 'Partial'],
    ]);
    expect(transcript.streamingId).toBe(PENDING_REPLY_ID);
    expect(transcript.messages.at(-1)?.status).toBe('streaming');
  });

  it('uses the server ids once started', () => {
    const generation = run([{ type: 'started', conversation_id: 1, user_message_id: 3, assistant_message_id: 4 }]);
    const ids = transcriptOf(viewOf(2), generation).messages.map((message) => message.id);
    expect(ids).toEqual([1, 2, 3, 4]);
  });

  it('replaces a regenerated reply, and its markers, with the new one', () => {
    const view = viewOf(4, [markerRow(1, 2), markerRow(2, 4)]);
    const generation = applyChatEvent(startGeneration(1, { kind: 'regenerate', messageId: 4 }), {
      type: 'compression',
      marker: markerRow(3, 9),
    });
    const transcript = transcriptOf(view, generation);
    expect(transcript.messages.map((message) => message.id)).toEqual([1, 2, 3, PENDING_REPLY_ID]);
    expect(transcript.markers.map((marker) => marker.id)).toEqual([1, 3]);
  });

  it('answers a user message left without a reply in place', () => {
    const transcript = transcriptOf(viewOf(3), startGeneration(1, { kind: 'regenerate', messageId: 3 }));
    expect(transcript.messages.map((message) => message.id)).toEqual([1, 2, 3, PENDING_REPLY_ID]);
  });

  it('shows an edited message as a new version where the old one was, dropping what followed', () => {
    const transcript = transcriptOf(viewOf(4), startGeneration(1, { kind: 'edit', messageId: 3, text: 'better' }));
    expect(transcript.messages.map((message) => [message.id, message.content])).toEqual([
      [1, 'message 1'],
      [2, 'message 2'],
      [PENDING_USER_ID, 'better'],
      [PENDING_REPLY_ID, ''],
    ]);
  });
});

describe('viewAfterLostReply', () => {
  it('keeps what streamed, with the reply marked as failed', () => {
    const generation = run([
      { type: 'started', conversation_id: 1, user_message_id: 3, assistant_message_id: 4 },
      { type: 'token', text: 'Half a repl' },
      { type: 'compression', marker: markerRow(7, 4) },
    ]);
    const view = viewAfterLostReply(viewOf(2), generation, 'cannot reach the sepchat server');
    expect(view.branch.map((message) => [message.id, message.status, message.content])).toEqual([
      [1, 'done', 'message 1'],
      [2, 'done', 'message 2'],
      [3, 'done', 'hi'],
      [4, 'error', 'Half a repl'],
    ]);
    expect(view.branch[3].error).toBe('cannot reach the sepchat server');
    expect(view.markers.map((marker) => marker.id)).toEqual([7]);
  });
});

describe('siblings and markers', () => {
  it('finds the sibling before and after, and none past either end', () => {
    const middle = messageRow(5, { sibling_ids: [2, 5, 9], sibling_index: 1 });
    expect(siblingTarget(middle, -1)).toBe(2);
    expect(siblingTarget(middle, 1)).toBe(9);
    const first = messageRow(2, { sibling_ids: [2, 5, 9], sibling_index: 0 });
    expect(siblingTarget(first, -1)).toBeNull();
    const last = messageRow(9, { sibling_ids: [2, 5, 9], sibling_index: 2 });
    expect(siblingTarget(last, 1)).toBeNull();
  });

  it('groups markers by their message, in order', () => {
    const grouped = markersByMessage([markerRow(1, 2), markerRow(2, 4), markerRow(3, 2)]);
    expect(grouped.get(2)?.map((marker) => marker.id)).toEqual([1, 3]);
    expect(grouped.get(4)?.map((marker) => marker.id)).toEqual([2]);
    expect(grouped.has(1)).toBe(false);
  });
});

describe('panelInputs', () => {
  const withKv = (id: number, slots: number) =>
    messageRow(id, { stats: { kv: kvStats(slots), cache_spec: 'sep:a=4,s=256,w=1024,c=2048' } });

  it('shows the last reply of the branch when idle, and null for an old reply without a readout', () => {
    const view = { ...viewOf(0), branch: [messageRow(1), withKv(2, 30), messageRow(3), withKv(4, 60)] };
    const idle = panelInputs(transcriptOf(view, null), null);
    expect(idle).toMatchObject({ live: false, cacheSpec: 'sep:a=4,s=256,w=1024,c=2048' });
    expect(idle.stats?.slots_held).toBe(60);
    const old = { ...view, branch: [messageRow(1), withKv(2, 30), messageRow(3), messageRow(4)] };
    expect(panelInputs(transcriptOf(old, null), null).stats).toBeNull();
  });

  it('is live with the streamed readout, and the previous one until the first arrives on a warm cache', () => {
    const view = { ...viewOf(0), branch: [messageRow(1), withKv(2, 30)] };
    const warm = run([{ type: 'session', source: 'warm', detail: null }], { kind: 'send', text: 'more' });
    expect(panelInputs(transcriptOf(view, warm), warm)).toMatchObject({ live: true, stats: { slots_held: 30 } });
    const streamed = applyChatEvent(warm, { type: 'kv', stats: kvStats(45) });
    expect(panelInputs(transcriptOf(view, streamed), streamed).stats?.slots_held).toBe(45);
  });

  it('shows nothing from before while a replayed cache is rebuilt', () => {
    const view = { ...viewOf(0), branch: [messageRow(1), withKv(2, 30)] };
    const replay = run([{ type: 'session', source: 'replayed', detail: 'no snapshot' }], { kind: 'send', text: 'x' });
    expect(panelInputs(transcriptOf(view, replay), replay)).toMatchObject({ live: true, stats: null, cacheSpec: null });
  });
});
