// Our browser clients against servers that die and come back, in headless Chromium:
// bcsocket.js over both transports (backoff, nothing lost silently, nothing twice), its
// node-browserchannel API (open, sendMap, extraHeaders, send after close), and the demo
// page's browserver.js (reconnects, shows its state, answers 500 for a rejected handler).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, startBrowserver, get, launchChromium } = require('./support');

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
});

/** Waits until `predicate` (run in the page) holds. */
function until(page, predicate, arg, timeout = 30000) {
  return page.waitForFunction(predicate, arg, { timeout, polling: 50 });
}

/** In the page: a BCSocket whose every event is recorded on `window.t`. */
async function watched(options) {
  const { BCSocket } = await import('/channel/bcsocket.js');
  const t = { connecting: [], opens: 0, received: [], closes: [], errors: [] };
  const s = new BCSocket('/channel', options);
  s.onconnecting = () => t.connecting.push(performance.now());
  s.onopen = () => t.opens++;
  s.onmessage = (e) => t.received.push(e.data);
  s.onerror = (message, code) => t.errors.push([message, code]);
  s.onclose = (reason, pending, undelivered, info) => t.closes.push({ reason, pending, undelivered, info, readyState: s.readyState });
  window.t = t;
  window.s = s;
}

async function survivesARestart(transport) {
  let server = await startServer({});
  const page = await browser.newPage();
  try {
    await page.goto(`${server.origin}/`);
    const options = {
      reconnect: true, reconnectTime: 200, maxReconnectTime: 1600, failFast: true,
      transport, wsUrl: server.ws, resumeTimeout: 500,
    };
    await page.evaluate(watched, options);
    await until(page, () => window.t.opens === 1);
    await page.evaluate(() => { for (let i = 0; i < 50; i++) window.s.send(i); });
    await until(page, () => window.t.received.length === 50);

    await server.stop();
    // Sent while the server is gone: each is echoed (it got through first) or handed back.
    await page.evaluate(() => { for (let i = 50; i < 60; i++) window.s.send(i); });
    await until(page, () => window.t.connecting.length >= 5, null, 20000);
    server = await startServer({}, server.addr);
    await until(page, () => window.t.opens === 2, null, 20000);
    await page.evaluate(() => { for (let i = 100; i < 110; i++) window.s.send(i); });
    await until(page, () => window.t.received.includes(109));
    const t = await page.evaluate(() => window.t);

    // Nothing twice, in order; nothing lost silently.
    assert.deepEqual(t.received, [...t.received].sort((a, b) => a - b));
    assert.equal(new Set(t.received).size, t.received.length, 'no duplicates');
    for (let i = 0; i < 50; i++) assert.ok(t.received.includes(i), `message ${i}`);
    for (let i = 100; i < 110; i++) assert.ok(t.received.includes(i), `message ${i}`);
    const handedBack = t.closes.flatMap((c) => [...c.pending, ...c.undelivered]);
    for (let i = 50; i < 60; i++) {
      assert.ok(t.received.includes(i) || handedBack.includes(i), `message ${i} neither echoed nor handed back`);
    }
    // Every close while the server was away says a reconnect follows, and readyState agrees.
    assert.ok(t.closes.length >= 4, `closes: ${t.closes.length}`);
    for (const c of t.closes) {
      assert.equal(c.info.reconnecting, true);
      assert.equal(c.readyState, 0, 'CONNECTING while a reconnect is pending');
    }
    // Backoff: the delays double (200, 400, 800, 1600 ms ceilings, each from its upper half).
    const delays = t.closes.slice(0, 4).map((c) => c.info.delay);
    const ceilings = [200, 400, 800, 1600];
    delays.forEach((d, i) => {
      assert.ok(d >= ceilings[i] / 2 && d <= ceilings[i], `delay ${i}: ${d} ms for ceiling ${ceilings[i]}`);
    });
    const gaps = t.connecting.slice(1).map((at, i) => at - t.connecting[i]);
    assert.ok(gaps[3] > gaps[1], `observed gaps grow: ${gaps.map(Math.round)}`);

    // close(): CLOSED, no more reconnects, send throws; open() starts a new session.
    const after = await page.evaluate(async () => {
      window.s.close();
      let threw = false;
      try { window.s.send('late'); } catch { threw = true; }
      const state = window.s.readyState;
      window.s.open();
      return { threw, state };
    });
    assert.deepEqual(after, { threw: true, state: 3 });
    await until(page, () => window.t.opens === 3);
  } finally {
    await page.close();
    await server.stop();
  }
}

test('chromium: a BrowserChannel BCSocket survives a server restart with backoff, losing nothing silently', async () => {
  await survivesARestart('browserchannel');
});

test('chromium: a WebSocket BCSocket survives a server restart with backoff, losing nothing silently', async () => {
  await survivesARestart('websocket');
});

test('chromium: sendMap, extraHeaders and a reconnect limit', async () => {
  const server = await startServer({});
  const page = await browser.newPage();
  try {
    await page.goto(`${server.origin}/`);
    await page.evaluate(watched, { extraHeaders: { 'x-style': 'Fabulous' }, reconnect: true, reconnectTime: 100, maxReconnectAttempts: 2, failFast: true });
    await until(page, () => window.t.opens === 1);
    await page.evaluate(() => {
      window.s.sendMap({ colour: 'red', n: 3 });
      window.s.send('headers');
    });
    await until(page, () => window.t.received.length === 2);
    const received = await page.evaluate(() => window.t.received);
    assert.deepEqual(received[0], { colour: 'red', n: '3' }, 'a map arrives as a map');
    assert.equal(received[1].headers['x-style'], 'Fabulous');

    // The server goes away for good: two reconnect attempts, then CLOSED.
    await server.stop();
    await until(page, () => window.t.closes.some((c) => !c.info.reconnecting), null, 20000);
    const t = await page.evaluate(() => ({ ...window.t, state: window.s.readyState }));
    assert.equal(t.state, 3);
    assert.equal(t.closes.length, 3, 'the lost session and two failed attempts');
    assert.deepEqual(t.closes.map((c) => c.info.reconnecting), [true, true, false]);
  } finally {
    await page.close();
    await server.stop();
  }
});

// ---------- the demo page (browserver.js) ----------



test('chromium: the demo page reconnects after a restart, shows it, and answers 500 for a rejected handler', async () => {
  let server = await startBrowserver();
  const page = await browser.newPage();
  try {
    await page.goto(`http://${server.addr}/`);
    await until(page, () => document.getElementById('status').dataset.state === 'connected');
    const first = await page.getAttribute('#hostname', 'data-hostname');
    assert.equal((await get(server.port, first, '/a')).status, 200);

    // A handler whose promise rejects answers 500 at once, not after the request timeout.
    await page.evaluate(() => {
      const code = document.getElementById('code');
      code.value = 'async (req, res) => { await new Promise((r) => setTimeout(r, 10)); throw new Error("nope"); }';
      code.dispatchEvent(new Event('input'));
    });
    const failed = await get(server.port, first, '/fails');
    assert.equal(failed.status, 500);
    assert.match(failed.body, /nope/);
    assert.ok(failed.ms < 5000, `answered in ${failed.ms} ms`);

    await server.stop();
    await until(page, () => document.getElementById('status').dataset.state === 'disconnected', null, 20000);
    assert.match(await page.textContent('#status'), /reconnecting/);
    server = await startBrowserver(server.addr);
    await until(page, () => document.getElementById('status').dataset.state === 'connected', null, 30000);
    const second = await page.getAttribute('#hostname', 'data-hostname');
    const again = await get(server.port, second, '/b');
    assert.equal(again.status, 500, 'the page still serves, with its current handler');
  } finally {
    await page.close();
    await server.stop();
  }
});
