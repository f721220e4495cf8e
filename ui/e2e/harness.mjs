// The browser tests' fixtures: the real `sepchat serve` (real default model, a throwaway data directory) and
// Debian's chromium driven by playwright-core. Every request the page makes is recorded, so a test can check that
// nothing went to another host, and every console error (CSP violations show up there) is collected.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const UI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const OUTPUT_DIR = path.join(UI_DIR, 'test-output');
export const SCREENSHOT_DIR = path.join(OUTPUT_DIR, 'screenshots');

/** The flags DEVELOPERS.md asks for: no sandbox (root in CI), and none of chromium's own network traffic. */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The `sepchat` binary `make test` built: `$SEPCHAT_BIN`, else the debug build in the shared target directory. */
function sepchatBinary() {
  if (process.env.SEPCHAT_BIN) return process.env.SEPCHAT_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(homedir(), '.cache', 'sepchat', 'cargo-target');
  return path.join(target, 'debug', 'sepchat');
}

/**
 * Starts `sepchat serve` on a free loopback port over a new, empty history, serving the built UI (ui/dist).
 * Resolves once it printed its URL (its only stdout line); its stderr goes to test-output/<name>.server.log.
 */
export async function startServer(name) {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const dataDir = mkdtempSync(path.join(tmpdir(), 'sepchat-e2e-'));
  const log = createWriteStream(path.join(OUTPUT_DIR, `${name}.server.log`));
  const child = spawn(sepchatBinary(), ['serve', '--port', '0', '--ui-dir', path.join(UI_DIR, 'dist')], {
    env: { ...process.env, SEPCHAT_DATA_DIR: dataDir, RUST_LOG: process.env.RUST_LOG ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(log);
  const url = await new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => reject(new Error('sepchat serve printed no URL within 120 s')), 120_000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const line = stdout.split('\n').find((candidate) => candidate.startsWith('http://'));
      if (line) {
        clearTimeout(timer);
        resolve(line.trim());
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sepchat serve exited with ${code} before printing its URL (see ${name}.server.log)`));
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  return {
    url,
    dataDir,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGINT');
        const timeout = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timeout);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Chromium on `baseUrl`. `foreign` collects every request to another origin (`blob:` URLs of this origin are the
 * page's own downloads), `problems` every console error and uncaught exception.
 */
export async function openBrowser(baseUrl, { width = 1440, height = 900 } = {}) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width, height } });
  const origin = new URL(baseUrl).origin;
  const foreign = [];
  const problems = [];
  context.on('request', (request) => {
    if (new URL(request.url()).origin !== origin) foreign.push(request.url());
  });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  await page.goto(baseUrl);
  return { browser, context, page, foreign, problems };
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** The integer a KV panel hook shows (its whole text is a plain integer). */
export async function kvNumber(page, testId) {
  const text = (await page.getByTestId(testId).textContent())?.trim() ?? '';
  if (!/^\d+$/.test(text)) throw new Error(`${testId} shows ${JSON.stringify(text)}, not a plain integer`);
  return Number(text);
}

/** Polls `probe` until it returns a truthy value (returned) or `timeoutMs` passes (throws with `what`). */
export async function waitFor(what, probe, { timeoutMs = 60_000, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
