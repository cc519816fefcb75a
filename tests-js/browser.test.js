// Our browser client (bcsocket.js, served by the server at /channel/bcsocket.js) in real
// headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), against the
// `bc_echo` test server.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { withServer, launchChromium } = require('./support');

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
});

/** Opens the server's page, loads bcsocket.js from it, and runs `scenario` in the page. */
async function inPage(server, scenario, arg) {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  try {
    await page.goto(server.origin + '/');
    const result = await page.evaluate(scenario, arg);
    return { result, requests };
  } finally {
    await page.close();
  }
}

/** In the page: exchanges `n` messages through a BCSocket and reports what happened. */
async function exchange({ n, options }) {
  const { BCSocket } = await import('/channel/bcsocket.js');
  const s = new BCSocket('/channel', options);
  const events = [];
  const received = [];
  const pad = 'p'.repeat(40);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out with ${received.length} messages`)), 30000);
    s.onopen = () => {
      events.push('open');
      for (let i = 0; i < n; i++) s.send({ i, pad, unicode: '⚗☗ 😀' });
    };
    s.onmessage = (e) => {
      received.push(e.data.i);
      if (received.length === n) {
        clearTimeout(timer);
        resolve();
      }
    };
    s.onerror = (m, code) => events.push(`error ${code} ${m}`);
    s.onclose = (r) => events.push(`close ${r}`);
  });
  s.close();
  return { events, received, readyState: s.readyState };
}

async function stopped({ options }) {
  const { BCSocket } = await import('/channel/bcsocket.js');
  const s = new BCSocket('/channel', options);
  const events = [];
  await new Promise((resolve) => {
    s.onopen = () => {
      events.push('open');
      s.send('before stop');
      s.send('stop');
    };
    s.onmessage = (e) => events.push(`message ${e.data}`);
    s.onerror = (m, code) => events.push(`error ${code} ${m}`);
    s.onclose = (r) => {
      events.push(`close ${r}`);
      setTimeout(resolve, 700); // a reconnect would have started by now
    };
  });
  return { events, readyState: s.readyState };
}

test('chromium: BrowserChannel over fetch exchanges 1000 messages in order across back-channel reopenings', async () => {
  await withServer({}, async (_, server) => {
    const { result, requests } = await inPage(server, exchange, { n: 1000, options: {} });
    assert.deepEqual(result.received, [...Array(1000).keys()]);
    assert.deepEqual(result.events, ['open', 'close Closed']);
    const backChannels = requests.filter((u) => u.includes('RID=rpc'));
    // 1000 echoes of ~90 bytes exceed the 10 KiB per-response limit, so the server ended at
    // least one back channel (how many depends on how echoes were batched) and the client
    // reopened it without losing or repeating anything.
    assert.ok(backChannels.length >= 2, `back channels opened: ${backChannels.length}`);
    assert.ok(requests.some((u) => u.includes('TYPE=terminate')), 'close sent terminate');
  });
});

test('chromium: the BrowserChannel client sees stop and does not reconnect', async () => {
  await withServer({}, async (_, server) => {
    const { result, requests } = await inPage(server, stopped, { options: { reconnect: true, reconnectTime: 100 } });
    assert.deepEqual(result.events, ['open', 'message before stop', 'error 7 Stopped by server', 'close Stopped by server']);
    assert.equal(result.readyState, 3);
    assert.equal(requests.filter((u) => u.includes('MODE=init')).length, 1, 'no second connection');
  });
});

test('chromium: WebSocket session mode exchanges 1000 messages in order and sees stop', async () => {
  await withServer({}, async (_, server) => {
    const options = { wsUrl: server.ws, transport: 'websocket' };
    const { result, requests } = await inPage(server, exchange, { n: 1000, options });
    assert.deepEqual(result.received, [...Array(1000).keys()]);
    assert.ok(!requests.some((u) => u.includes('/channel/bind')), 'no BrowserChannel traffic');
    const stop = await inPage(server, stopped, { options: { ...options, reconnect: true, reconnectTime: 100 } });
    assert.deepEqual(stop.result.events, ['open', 'message before stop', 'error 7 Stopped by server', 'close Stopped by server']);
  });
});

test('chromium: auto falls back to BrowserChannel when the WebSocket endpoint is missing', async () => {
  await withServer({}, async (_, server) => {
    const options = { wsUrl: server.ws.replace('/ws', '/no-such-ws') };
    const { result, requests } = await inPage(server, exchange, { n: 50, options });
    assert.deepEqual(result.received, [...Array(50).keys()]);
    assert.ok(requests.some((u) => u.includes('/channel/bind')));
  });
});

test('chromium: a plain WebSocket (no library) gets one frame per message and nothing else', async () => {
  await withServer({}, async (_, server) => {
    const { result } = await inPage(server, async (url) => {
      const ws = new WebSocket(url);
      const got = [];
      await new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error('timed out')), 10000);
        ws.onopen = () => ['a', 'b', 'c'].forEach((m) => ws.send(m));
        ws.onmessage = (e) => {
          got.push(e.data);
          if (got.length === 3) resolve();
        };
      });
      ws.close();
      return got;
    }, server.ws);
    assert.deepEqual(result, ['a', 'b', 'c']);
  });
});
