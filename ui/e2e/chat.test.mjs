// The web UI in a real browser (Debian's chromium) against the real `sepchat serve` with the real default model and
// a small SepCache, so the cache compresses within one reply. The tests run in order and share one conversation
// history, like a user's session: each step starts from what the previous one left.

import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { kvNumber, openBrowser, OUTPUT_DIR, screenshot, startServer, waitFor } from './harness.mjs';

/** Small enough that one reply compresses it (the default system turn alone is ~20 tokens). */
const SMALL_CACHE = 'sep:a=4,s=16,w=32,c=64';
const STORY_PROMPT = 'Tell me a long story about a lighthouse keeper named Oleander and her cat.';
const REPLY_TIMEOUT = 180_000;

let server;
let browser;
let page;
let foreign;
let problems;

before(async () => {
  server = await startServer('chat');
  ({ browser, page, foreign, problems } = await openBrowser(server.url));
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const assistantMessages = () => page.getByTestId('message-assistant');
const userMessages = () => page.getByTestId('message-user');
const lastAssistant = () => assistantMessages().last();

/** Waits until no reply is generating: the stop button is gone and the last reply has a final status. */
async function waitForReplyEnd() {
  await page.getByTestId('stop').waitFor({ state: 'detached', timeout: REPLY_TIMEOUT });
  return waitFor('a final status on the last reply', async () => {
    const status = await lastAssistant().getAttribute('data-status');
    return status && status !== 'streaming' ? status : null;
  });
}

async function send(text) {
  const composer = page.getByTestId('composer');
  await composer.fill(text);
  // Enter sends (Shift+Enter would be a newline): the keyboard path users take.
  await composer.press('Enter');
}

test('the page loads from its own server with a model and without errors', async () => {
  await page.getByTestId('composer').waitFor();
  await page.getByTestId('kv-panel').waitFor();
  assert.equal(await page.getByTestId('send').isDisabled(), true, 'send is disabled while the composer is empty');
  assert.deepEqual(problems, [], 'console errors on load');
});

test('settings choose a small cache and greedy sampling for a new chat', async () => {
  await page.getByTestId('settings').click();
  const dialog = page.getByTestId('settings-dialog');
  await dialog.waitFor();
  await dialog.getByTestId('cache-profile').selectOption('custom');
  await dialog.getByTestId('cache-profile-spec').fill(SMALL_CACHE);
  await dialog.getByTestId('sampling-temperature').fill('0');
  await dialog.getByTestId('sampling-max_tokens').fill('160');
  await dialog.getByTestId('settings-save').click();
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await page.getByTestId('conversation-item').count(), 1, 'saving started a conversation');
});

test('a reply streams in while the KV panel counts tokens, and the small cache compresses', async () => {
  await send(STORY_PROMPT);
  await userMessages().first().waitFor();
  assert.equal((await userMessages().first().textContent())?.includes('Oleander'), true);

  // Sample the reply and the panel while the stop button shows: the text must grow in several steps (streaming,
  // not one final paint) and tokens seen must rise while it does.
  await page.getByTestId('stop').waitFor({ timeout: REPLY_TIMEOUT });
  const lengths = [];
  const tokensSeen = [];
  let streamingShot = null;
  while ((await page.getByTestId('stop').count()) > 0) {
    const text = (await assistantMessages().last().textContent().catch(() => '')) ?? '';
    lengths.push(text.trim().length);
    const seen = await kvNumber(page, 'kv-tokens-seen').catch(() => null);
    if (seen !== null) tokensSeen.push(seen);
    if (!streamingShot && text.trim().length > 80) streamingShot = await screenshot(page, 'streaming-reply');
    await page.waitForTimeout(100);
  }
  const status = await waitForReplyEnd();
  assert.equal(status, 'done');
  const growing = new Set(lengths.filter((length) => length > 0));
  assert.ok(growing.size >= 3, `the reply appeared in ${growing.size} steps, not streamed: ${lengths}`);
  assert.ok(streamingShot, 'no screenshot of the reply while streaming (it never passed 80 characters)');
  assert.ok(
    tokensSeen.some((seen, index) => index > 0 && seen > tokensSeen[index - 1]),
    `kv-tokens-seen never grew while streaming: ${tokensSeen}`,
  );

  const seen = await kvNumber(page, 'kv-tokens-seen');
  const held = await kvNumber(page, 'kv-slots-held');
  const bytesHeld = await kvNumber(page, 'kv-bytes-held');
  const bytesDense = await kvNumber(page, 'kv-bytes-dense');
  const compressions = await kvNumber(page, 'kv-compressions');
  assert.ok(seen > 64, `tokens seen ${seen}`);
  assert.ok(held <= 64, `a 64-slot cache holds ${held} slots`);
  assert.ok(compressions > 0, `no compression with a 64-slot cache after ${seen} tokens`);
  assert.ok(bytesHeld > 0 && bytesHeld < bytesDense, `bytes held ${bytesHeld}, dense ${bytesDense}`);
  assert.ok((await page.getByTestId('compression-marker').count()) > 0, 'no compression marker in the transcript');
  await screenshot(page, 'chat-with-kv-panel');
});

test('the token map shades the text by what the cache holds, and the A/B switch simulates other settings', async () => {
  const live = {
    seen: await kvNumber(page, 'kv-tokens-seen'),
    held: await kvNumber(page, 'kv-slots-held'),
    compressions: await kvNumber(page, 'kv-compressions'),
  };
  const abButton = (profile) => page.getByTestId('kv-ab-switch').locator(`button[data-profile="${profile}"]`);
  const specShown = (prefix) =>
    waitFor(`the ${prefix} simulation`, async () =>
      ((await page.getByTestId('kv-spec').textContent().catch(() => '')) ?? '').startsWith(prefix),
    );

  // The conversation's own setting, simulated on its history, must give the numbers the engine reported.
  await abButton('current').click();
  await page.getByTestId('kv-simulated').waitFor();
  await specShown('sep:a=4,s=16,w=32,c=64');
  const simulated = {
    seen: await kvNumber(page, 'kv-tokens-seen'),
    held: await kvNumber(page, 'kv-slots-held'),
    compressions: await kvNumber(page, 'kv-compressions'),
  };
  assert.deepEqual(simulated, live, 'the simulation of the live setting differs from the live readout');

  // The token map: evicted text, harvested separators and the local window, each a span of its own.
  await page.getByTestId('kv-token-map-toggle').click();
  const spans = (state) => page.locator(`[data-testid="token-map"] span[data-state="${state}"]`);
  await spans('evicted').first().waitFor();
  for (const state of ['evicted', 'separator', 'local']) {
    assert.ok((await spans(state).count()) > 0, `no ${state} span in the token map`);
  }
  const reply = (await lastAssistant().locator('[data-testid="token-map"]').textContent()) ?? '';
  assert.match(reply, /\S/, 'the token map shows the reply text');
  await screenshot(page, 'token-map');

  // Dense on the same history: nothing compressed, every byte a dense cache needs.
  await abButton('dense').click();
  await specShown('dense');
  assert.equal(await kvNumber(page, 'kv-compressions'), 0);
  assert.equal(await kvNumber(page, 'kv-bytes-held'), await kvNumber(page, 'kv-bytes-dense'));
  assert.equal(await kvNumber(page, 'kv-tokens-seen'), live.seen);
  assert.equal(await spans('evicted').count(), 0, 'a dense cache evicts nothing');
  assert.ok(await page.getByTestId('kv-ab-apply').isVisible(), 'no way to use the simulated profile');

  // Back to the live readout and plain Markdown.
  await abButton('live').click();
  await page.getByTestId('kv-token-map-toggle').click();
  await waitFor('the token map gone', async () => (await page.getByTestId('token-map').count()) === 0);
  assert.equal(await page.getByTestId('kv-simulated').count(), 0);
  assert.equal(await kvNumber(page, 'kv-compressions'), live.compressions);
});

test('stop keeps the partial reply, marked stopped', async () => {
  await send('Now write a very long essay about the history of the oceans, with many details.');
  await waitFor('some reply text', async () => ((await lastAssistant().textContent()) ?? '').trim().length > 10, {
    timeoutMs: REPLY_TIMEOUT,
  });
  await page.getByTestId('stop').click();
  assert.equal(await waitForReplyEnd(), 'stopped');
  const partial = (await lastAssistant().textContent())?.trim() ?? '';
  assert.ok(partial.length > 0, 'the stopped reply lost its text');
});

test('regenerate adds a sibling reply, and the arrows move between them', async () => {
  const stoppedText = (await lastAssistant().locator('.content').first().textContent()) ?? '';
  await lastAssistant().getByTestId('regenerate').click();
  assert.equal(await waitForReplyEnd(), 'done');
  const previous = lastAssistant().getByTestId('sibling-prev');
  await previous.waitFor();
  assert.match((await lastAssistant().textContent()) ?? '', /2\s*\/\s*2/, 'the new reply is sibling 2 of 2');
  await previous.click();
  await waitFor('the first sibling on screen', async () => (await lastAssistant().getAttribute('data-status')) === 'stopped');
  assert.match((await lastAssistant().textContent()) ?? '', /1\s*\/\s*2/);
  assert.equal((await lastAssistant().locator('.content').first().textContent()) ?? '', stoppedText);
  await lastAssistant().getByTestId('sibling-next').click();
  await waitFor('the regenerated sibling back on screen', async () => (await lastAssistant().getAttribute('data-status')) === 'done');
});

test('search finds the message and jumps to it', async () => {
  await page.getByTestId('search').fill('Oleander');
  const hit = page.getByTestId('search-hit').first();
  await hit.waitFor({ timeout: 10_000 });
  assert.match((await hit.textContent()) ?? '', /Oleander/);
  await hit.click();
  const message = userMessages().filter({ hasText: 'Oleander' }).first();
  await message.waitFor();
  assert.ok(await message.isVisible());
  await page.getByTestId('search').fill('');
});

test('export downloads the conversation as Markdown', async () => {
  await page.getByTestId('export').click();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-md').click()]);
  assert.match(download.suggestedFilename(), /\.md$/);
  const file = path.join(OUTPUT_DIR, 'downloads', download.suggestedFilename());
  await download.saveAs(file);
  const text = await readFile(file, 'utf8');
  assert.match(text, /Oleander/, 'the export holds the conversation');
  assert.match(text, /^---\n/, 'Markdown exports start with front matter');
});

const HOSTILE_MESSAGE =
  '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script> [link](javascript:window.__xss=3) ![t](http://evil.example/t.png)';

async function assertNothingRan(scope) {
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'hostile markup ran');
  assert.equal(await scope.locator('img, script, iframe, object').count(), 0, 'hostile markup became elements');
  for (const href of await scope.locator('a').evaluateAll((links) => links.map((link) => link.getAttribute('href')))) {
    assert.ok(!/^\s*javascript:/i.test(href ?? ''), `a javascript: link was rendered: ${href}`);
  }
}

test('a hostile message typed by the user renders as text and runs nothing', async () => {
  await page.getByTestId('new-chat').click();
  await send(HOSTILE_MESSAGE);
  await page.getByTestId('stop').waitFor({ timeout: REPLY_TIMEOUT });
  await page.getByTestId('stop').click();
  await waitForReplyEnd();
  const message = userMessages().last();
  assert.match((await message.textContent()) ?? '', /<img src=x onerror=/, 'the markup is shown as typed');
  await assertNothingRan(page.getByTestId('message-user'));
  await assertNothingRan(page.getByTestId('message-assistant'));
});

test('hostile markdown produced by a scripted engine renders as text and runs nothing', async () => {
  // The engine cannot be made to write this, so the reply's stream is scripted: the browser gets it from the
  // send_message route, and the stored view it reloads afterwards gets the same reply appended.
  const current = page.locator('[data-testid="conversation-item"]:has([aria-current="page"])');
  const conversationId = Number(await current.getAttribute('data-conversation-id'));
  assert.ok(Number.isInteger(conversationId) && conversationId > 0, `no current conversation on screen`);
  const now = Date.now();
  const scriptedReply = [
    'Here is <b>bold</b> <img src=x onerror="window.__xss = 4"> and <script>window.__xss = 5</script>',
    '',
    '[click me](javascript:window.__xss=6) ![pixel](http://evil.example/pixel.png)',
    '',
    '```html',
    '<script>window.__xss = 7</script>',
    '```',
  ].join('\n');
  const user = message(900001, null, 'user', 'scripted question', 'done', now);
  const reply = message(900002, 900001, 'assistant', scriptedReply, 'done', now);
  const events = [
    { type: 'started', conversation_id: conversationId, user_message_id: 900001, assistant_message_id: 900002 },
    { type: 'session', source: 'warm', detail: null },
    ...scriptedReply.match(/[\s\S]{1,7}/g).map((text) => ({ type: 'token', text })),
  ];
  const result = {
    conversation_id: conversationId,
    user_message_id: 900001,
    message: reply,
    cache_source: 'warm',
    cache_detail: null,
    report: null,
    compressions: [],
    snapshot: null,
  };
  events.push({ type: 'finished', result });
  const body =
    events.map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') +
    `event: result\ndata: ${JSON.stringify(result)}\n\n`;
  await page.route('**/rpc/send_message', (route) =>
    route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body }),
  );
  await page.route('**/rpc/get_conversation', async (route) => {
    const response = await route.fetch();
    const stored = await response.json();
    stored.branch.push(user, reply);
    await route.fulfill({ response, json: stored });
  });
  try {
    await send('scripted question');
    await waitFor('the scripted reply', async () =>
      ((await lastAssistant().textContent()) ?? '').includes('click me'),
    );
    await page.waitForTimeout(500);
    const shown = lastAssistant();
    assert.match((await shown.textContent()) ?? '', /<img src=x onerror=/, 'raw HTML is shown as text');
    assert.match((await shown.textContent()) ?? '', /<script>window.__xss = 7<\/script>/, 'code stays code');
    await assertNothingRan(page.getByTestId('message-assistant'));
  } finally {
    await page.unroute('**/rpc/send_message');
    await page.unroute('**/rpc/get_conversation');
  }
});

function message(id, parentId, role, content, status, now) {
  return {
    id,
    parent_id: parentId,
    role,
    content,
    status,
    error: null,
    stats: null,
    created_at: now,
    updated_at: now,
    sibling_ids: [id],
    sibling_index: 0,
  };
}

test('a hostile reply in an imported file renders as text and runs nothing', async () => {
  // The real path end to end: the UI's JSON export of a stored conversation, a reply edited to carry markup, then
  // the UI's import, which stores it and opens it.
  await page.getByTestId('conversation-item').filter({ hasText: 'long story' }).first().getByRole('button').first().click();
  await lastAssistant().waitFor();
  await page.getByTestId('export').click();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-json').click()]);
  const exported = path.join(OUTPUT_DIR, 'downloads', `exported-${download.suggestedFilename()}`);
  await download.saveAs(exported);
  const document = JSON.parse(await readFile(exported, 'utf8'));
  const entry = document.conversations[0];
  entry.conversation.title = 'Imported hostile reply';
  const reply = entry.messages.find((message) => message.role === 'assistant');
  reply.content = 'Imported <img src=x onerror="window.__xss = 8"> <script>window.__xss = 9</script> [x](javascript:window.__xss=10)';
  const hostile = path.join(OUTPUT_DIR, 'downloads', 'hostile-import.json');
  await writeFile(hostile, JSON.stringify(document));
  await page.getByTestId('import').setInputFiles(hostile);
  await page.getByTestId('conversation-item').filter({ hasText: 'Imported hostile reply' }).waitFor();
  const shown = assistantMessages().filter({ hasText: 'Imported' }).first();
  await waitFor('the imported reply on screen', async () => (await shown.count()) > 0);
  assert.match((await shown.textContent()) ?? '', /<img src=x onerror=/, 'the imported markup is shown as text');
  await assertNothingRan(page.getByTestId('message-assistant'));
});

test('the page made no request to any other host and logged no errors', async () => {
  assert.deepEqual(foreign, [], 'requests to other hosts');
  assert.deepEqual(problems, [], 'console errors (CSP violations are reported here)');
});
