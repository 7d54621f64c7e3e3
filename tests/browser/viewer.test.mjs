// The log viewer in a real browser: Debian's headless chromium, driven by puppeteer-core (which
// downloads no browser), against the real `butler logs web` over a real store that real
// `butler run` / `butler stream` / `butler serve` processes write.
//
// Run by `make test-browser`: BUTLER_BIN names the butler to test, CHROMIUM the browser, and
// SCREENSHOT the PNG to write of the page following a live stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const BUTLER = process.env.BUTLER_BIN || path.resolve('../../target/debug/butler');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT || path.resolve('../../target/browser/viewer.png');
const WAIT = { timeout: 10000 };

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'butler-browser-'));
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BUTLER_') && !k.startsWith('LOGDOG_')));
env.BUTLER_HOME = home;
const children = [];

function butler(args, opts = {}) {
  const r = spawnSync(BUTLER, args, { env, encoding: 'utf8', ...opts });
  assert.equal(r.status, 0, `butler ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

// Starts a long-running butler and resolves with its first stdout line.
async function start(args) {
  const child = spawn(BUTLER, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines = readline.createInterface({ input: child.stdout });
  const [line] = await once(lines, 'line');
  return { child, line: line.trim() };
}

// The stream-server handshake, as LUCI's clients send it.
function handshake(json) {
  const body = Buffer.from(JSON.stringify(json));
  const len = [];
  let n = body.length;
  while (n >= 0x80) { len.push((n & 0x7f) | 0x80); n >>= 7; }
  len.push(n);
  return Buffer.concat([Buffer.from('BTLR1\x1e', 'latin1'), Buffer.from(len), body]);
}

async function openStream(address, json) {
  const sock = net.connect(address.replace(/^unix:/, ''));
  await once(sock, 'connect');
  sock.write(handshake(json));
  return sock;
}

const rowTexts = (page) => page.$$eval('#rows .row:not([hidden]) .t', (els) => els.map((e) => e.textContent));
const hasRow = (page, text) => page.waitForFunction(
  (t) => [...document.querySelectorAll('#rows .row .t')].some((e) => e.textContent === t), WAIT, text);
const streamButton = (p) => `.stream[data-path="${p}"]`;

test('the log viewer in a headless browser', async (t) => {
  // A finished build log and a binary blob, written before the viewer starts.
  butler(['--prefix', 'demo/build', 'run', '--stdout', 'name=stdout', '--', 'sh', '-c',
    'echo "compiling butler v0.1.0"; echo "warning: unused variable: x"; echo "finished in 1.2s"']);
  const blob = path.join(home, 'blob.bin');
  fs.writeFileSync(blob, Buffer.from([0, 1, 2, 0x41, 0x42, 0xff]));
  butler(['--prefix', 'demo/blob', 'stream', '--source', blob, '--stream', 'name=blob,type=binary']);

  const web = await start(['logs', 'web', '--poll-interval', '50ms']);
  assert.match(web.line, /^http:\/\/127\.0\.0\.1:\d+\/[0-9a-f]{48}\/$/);
  const noToken = await fetch(new URL('/', web.line));
  assert.equal(noToken.status, 403, 'no page without the token');

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'butler-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    defaultViewport: { width: 1280, height: 760 },
  });
  t.after(async () => {
    await browser.close();
    for (const c of children) c.kill('SIGTERM');
    // Temp folders are this test's to remove: nothing else cleans the system's temp folder.
    for (const dir of [profile, home]) fs.rmSync(dir, { recursive: true, force: true });
  });
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  await page.goto(web.line);

  await t.test('lists streams by prefix, newest first, with state, type and size', async () => {
    await page.waitForSelector(streamButton('demo/build/+/stdout'), WAIT);
    const groups = await page.$$eval('.group-head', (els) => els.map((e) => e.textContent));
    assert.deepEqual(groups, ['demo/blob', 'demo/build']);
    const info = await page.$eval(streamButton('demo/build/+/stdout'), (b) => b.querySelector('.info').textContent);
    assert.match(info, /closed/);
    assert.match(info, /text/);
    assert.match(info, /69 B/);
  });

  await t.test('picking a stream shows its text, and the filter narrows it', async () => {
    await page.click(streamButton('demo/build/+/stdout'));
    await hasRow(page, 'warning: unused variable: x');
    assert.deepEqual(await rowTexts(page), ['compiling butler v0.1.0', 'warning: unused variable: x', 'finished in 1.2s']);
    assert.match(await page.$eval('#stream-meta', (e) => e.textContent), /closed/);
    await page.type('#line-filter', 'WARNING');
    await page.waitForFunction(() => document.querySelectorAll('#rows .row:not([hidden])').length === 1, WAIT);
    assert.deepEqual(await rowTexts(page), ['warning: unused variable: x']);
    assert.match(await page.$eval('#line-count', (e) => e.textContent), /1 of 3 lines loaded match/);
    await page.$eval('#line-filter', (e) => { e.value = ''; e.dispatchEvent(new Event('input')); });
  });

  await t.test('a binary stream shows a hex and size summary', async () => {
    await page.click(streamButton('demo/blob/+/blob'));
    await page.waitForFunction(() => document.querySelector('#rows .row .t')?.textContent.startsWith('00 01 02 41 42 ff'), WAIT);
    assert.match(await page.$eval('#rows .row .t', (e) => e.textContent), /\.\.\.AB\./);
    assert.match(await page.$eval('#stream-meta', (e) => e.textContent), /binary · closed · 1 entry · 6 B/);
  });

  await t.test('a stream that starts while the page is open appears and is followed live', async () => {
    const serve = await start(['--prefix', 'live/game', 'serve']);
    const sock = await openStream(serve.line, { name: 'console' });
    await page.waitForSelector(streamButton('live/game/+/console'), WAIT);
    const groups = await page.$$eval('.group-head', (els) => els.map((e) => e.textContent));
    assert.equal(groups[0], 'live/game', 'the newest prefix comes first');
    assert.match(await page.$eval(streamButton('live/game/+/console'), (b) => b.textContent), /open/);
    await page.click(streamButton('live/game/+/console'));
    sock.write('player joined\n');
    await hasRow(page, 'player joined');
    assert.match(await page.$eval('#stream-meta', (e) => e.textContent), /open, following live/);

    // Enough lines to scroll: the view stays at the bottom while the person has not scrolled up.
    let lines = '';
    for (let i = 1; i <= 120; i++) lines += `tick ${i}\n`;
    sock.write(lines);
    await hasRow(page, 'tick 120');
    const atBottom = () => page.$eval('#lines', (b) => b.scrollTop + b.clientHeight >= b.scrollHeight - 8);
    assert.ok(await atBottom(), 'follows the end');

    // Scrolled up: new lines arrive, the view stays put, and a button offers the end.
    await page.$eval('#lines', (b) => { b.scrollTop = 0; b.dispatchEvent(new Event('scroll')); });
    sock.write('level 2 loaded\n');
    await hasRow(page, 'level 2 loaded');
    assert.equal(await page.$eval('#lines', (b) => b.scrollTop), 0, 'the view stays where the person scrolled');
    assert.equal(await page.$eval('#jump', (b) => b.hidden), false);
    await page.click('#jump');
    assert.ok(await atBottom());

    // A line written in two pieces shows as one line.
    sock.write('half a li');
    await hasRow(page, 'half a li');
    sock.write('ne\n');
    await hasRow(page, 'half a line');
    await page.screenshot({ path: SCREENSHOT });

    sock.end();
    await page.waitForFunction(() => /· closed ·/.test(document.querySelector('#stream-meta').textContent), WAIT);
    await page.waitForFunction((s) => /closed/.test(document.querySelector(s).textContent), WAIT, streamButton('live/game/+/console'));
    const texts = await rowTexts(page);
    assert.equal(texts.length, 123, 'every line once');
    assert.equal(texts[texts.length - 1], 'half a line');
    serve.child.kill('SIGTERM');
  });

  await t.test('a long stream loads in pages, never all at once', async () => {
    // 10,000 lines of 100 bytes: about 1 MB, twice what one page carries.
    const script = `awk 'BEGIN { pad = sprintf("%90s", ""); gsub(/ /, "x", pad); for (i = 0; i < 10000; i++) printf "row %05d %s\\n", i, pad }'`;
    butler(['--prefix', 'demo/long', 'run', '--stdout', 'name=out', '--', 'sh', '-c', script]);
    await page.waitForSelector(streamButton('demo/long/+/out'), WAIT);
    await page.click(streamButton('demo/long/+/out'));
    await page.waitForFunction(() => [...document.querySelectorAll('#rows .row .t')].some((e) => e.textContent.startsWith('row 09999 ')), WAIT);
    const first = (await rowTexts(page)).length;
    assert.ok(first < 10000, `the first page holds part of the stream (${first} lines)`);
    assert.equal(await page.$eval('#earlier', (b) => b.hidden), false, 'earlier pages can be loaded');
    let pages = 1;
    while (!(await page.$eval('#earlier', (b) => b.hidden))) {
      const before = (await rowTexts(page)).length;
      await page.click('#earlier');
      await page.waitForFunction((n) => document.querySelectorAll('#rows .row').length > n, WAIT, before);
      pages++;
    }
    const all = await rowTexts(page);
    assert.ok(pages >= 2, `${pages} pages`);
    assert.equal(all.length, 10000, 'every line once, none split across pages');
    all.forEach((text, i) => assert.ok(text.startsWith(`row ${String(i).padStart(5, '0')} x`), `line ${i}: ${text.slice(0, 20)}`));
  });

  assert.deepEqual(problems, [], 'no script errors in the page');
});
