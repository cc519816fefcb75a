// Interop: our Rust BrowserChannel server against two clients nobody here wrote:
//  - the Closure Library's goog.net.BrowserChannel (npm google-closure-library@20230802.0.0),
//    run unmodified in Node;
//  - node-browserchannel's BCSocket for Node (npm browserchannel@2.1.0).
// The server is the `bc_echo` example (BC_ECHO_BIN), started per scenario on 127.0.0.1:0.
// With INTEROP_CLUSTER=l4 or l7, the scenarios that need no server-side control run instead
// against three `browserver echo` nodes sharing a Redis, behind a round-robin front without
// stickiness (each connection, or each request, to the next node): docs/scale-out.md.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');

global.XMLHttpRequest = require('browserchannel/XMLHttpRequest').XMLHttpRequest;
// Closure sends `terminate` (and its network test) through an image: a plain GET.
global.Image = class {
  set src(url) {
    http
      .get(url, (res) => {
        res.resume();
        res.on('end', () => this.onload && this.onload());
      })
      .on('error', () => this.onerror && this.onerror());
  }
};
require('google-closure-library');
goog.require('goog.net.BrowserChannel');
const { BCSocket } = require('browserchannel');

const support = require('./support');

const CLUSTER = process.env.INTEROP_CLUSTER;
/** The scenario's server: bc_echo, or an echo cluster behind the front. */
function withServer(env, body) {
  if (!CLUSTER) return support.withServer(env, body);
  const args = env.BC_KEEPALIVE_MS ? ['--keepalive-interval', `${env.BC_KEEPALIVE_MS}ms`] : [];
  return support.withCluster(CLUSTER, body, args);
}
/** Scenarios that drive bc_echo's control strings or read its output. */
const needsBcEcho = { skip: CLUSTER ? 'drives bc_echo itself' : false };

function deadline(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms).unref());
}

/** A Closure BrowserChannel with promise helpers. Sends values as {JSON: …} maps. */
function closure(base, { appVersion = null, oldSid, oldAid } = {}) {
  const ch = new goog.net.BrowserChannel(appVersion);
  ch.setFailFast(true);
  const h = new goog.net.BrowserChannel.Handler();
  const c = { ch, received: [], errors: [], waiters: [], opened: false, closed: false };
  const wake = () => c.waiters.splice(0).forEach((w) => w());
  h.channelOpened = () => { c.opened = true; wake(); };
  h.channelHandleArray = (_, a) => { c.received.push(a); wake(); };
  h.channelError = (_, e) => { c.errors.push(e); wake(); };
  h.channelClosed = () => { c.closed = true; wake(); };
  ch.setHandler(h);
  c.until = (cond, ms, what) =>
    Promise.race([
      new Promise((resolve) => {
        const check = () => (cond() ? resolve() : c.waiters.push(check));
        check();
      }),
      deadline(ms, what),
    ]);
  c.send = (v) => ch.sendMap({ JSON: JSON.stringify(v) });
  ch.connect(base + '/test', base + '/bind', null, oldSid, oldAid);
  return c;
}

/** A BCSocket with promise helpers. */
function bcsocket(base, options = {}) {
  const s = new BCSocket(base, { reconnect: false, testImageUri: null, ...options });
  const c = { s, received: [], errors: [], opens: 0, closes: [], waiters: [] };
  const wake = () => c.waiters.splice(0).forEach((w) => w());
  s.onopen = () => { c.opens++; wake(); };
  s.onmessage = (m) => { c.received.push(m.data); wake(); };
  s.onerror = (e, code) => { c.errors.push([e, code]); wake(); };
  s.onclose = (reason) => { c.closes.push(reason); wake(); };
  c.until = (cond, ms, what) =>
    Promise.race([
      new Promise((resolve) => {
        const check = () => (cond() ? resolve() : c.waiters.push(check));
        check();
      }),
      deadline(ms, what),
    ]);
  return c;
}

const STRINGS = ['hi', '', '    ', '\n', '\t', '⚗☗⚑☯', '\u2028 \u2029', Array(1000).fill('x').join(','), '(◔ ◡ ◔)'];
const VALUES = [null, 1.5, 'hi', {}, [1, 2, 3], '⚗☗⚑☯', { nested: { emoji: '😀', text: 'ü' } }];
const LARGE = 'L'.repeat(200 * 1024);

// ---------- Closure Library client ----------

test('closure: opens and exchanges 1000 messages each way in order', async () => {
  await withServer({}, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    for (let i = 0; i < 1000; i++) c.send({ i });
    await c.until(() => c.received.length >= 1000, 30000, '1000 echoes');
    assert.deepEqual(c.received.map((m) => m.i), [...Array(1000).keys()]);
    assert.deepEqual(c.errors, []);
    c.ch.disconnect();
  });
});

test('closure: unicode, odd strings, JSON values and a 200 KiB message round-trip exactly', async () => {
  await withServer({}, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    // Closure cannot receive a bare null (spec §6.2: it throws and skips the rest of the
    // chunk), so null travels inside an array here.
    const sent = [...STRINGS, ...VALUES.map((v) => (v === null ? [null] : v)), LARGE];
    for (const v of sent) c.send(v);
    await c.until(() => c.received.length >= sent.length, 20000, 'echoes');
    assert.deepEqual(c.received, sent);
    c.ch.disconnect();
  });
});

test('closure: numbers round-trip exactly as the Closure client writes them', async () => {
  await withServer({}, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    // Doubles at the edges of their shortest round-trip forms, and integers past 2^53.
    const sent = [
      [0.1, 0.30000000000000004, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, -0, 2 ** 53 + 2],
      { big: 123456789012345680000, small: -1.5e-300, third: 1 / 3 },
    ];
    for (const v of sent) c.send(v);
    await c.until(() => c.received.length >= sent.length, 10000, 'echoes');
    // The same text as Closure's own JSON gives for them: the same values.
    assert.deepEqual(c.received.map((v) => JSON.stringify(v)), sent.map((v) => JSON.stringify(v)));
    c.ch.disconnect();
  });
});

test('closure: server close ends the channel with UNKNOWN_SESSION_ID, and a reconnect gets a new session', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    const sid = c.ch.getSessionId();
    c.send('close');
    await c.until(() => c.closed, 20000, 'closed');
    assert.ok(
      c.errors.includes(goog.net.BrowserChannel.Error.UNKNOWN_SESSION_ID) ||
        c.errors.includes(goog.net.BrowserChannel.Error.REQUEST_FAILED),
      `errors: ${c.errors}`,
    );
    const again = closure(base, { oldSid: sid, oldAid: c.ch.getLastArrayId() });
    await again.until(() => again.opened, 10000, 'reopen');
    assert.notEqual(again.ch.getSessionId(), sid);
    again.send('after reconnect');
    await again.until(() => again.received.length === 1, 10000, 'echo');
    assert.equal(again.received[0], 'after reconnect');
    again.ch.disconnect();
  });
});

test('closure: server stop is reported as STOP', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    c.send('one');
    c.send('stop');
    await c.until(() => c.closed, 10000, 'closed');
    assert.equal(c.errors[0], goog.net.BrowserChannel.Error.STOP);
    assert.deepEqual(c.received, ['one']);
  });
});

test('closure: app version reaches the server', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = closure(base, { appVersion: '321' });
    await c.until(() => c.opened, 10000, 'open');
    c.send('appVersion');
    await c.until(() => c.received.length === 1, 10000, 'answer');
    assert.deepEqual(c.received[0], { appVersion: '321' });
    c.ch.disconnect();
  });
});

test('closure: a session survives idle keep-alives', async () => {
  await withServer({ BC_KEEPALIVE_MS: '300' }, async (base) => {
    const c = closure(base);
    await c.until(() => c.opened, 10000, 'open');
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(c.ch.getLastArrayId() >= 3, `noops received: last id ${c.ch.getLastArrayId()}`);
    c.send('still here');
    await c.until(() => c.received.length === 1, 10000, 'echo');
    assert.deepEqual(c.errors, []);
    c.ch.disconnect();
  });
});

// ---------- node-browserchannel's BCSocket ----------

test('bcsocket: opens and exchanges 1000 messages each way in order, sent before and after open', async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base);
    for (let i = 0; i < 500; i++) c.s.send({ i });
    await c.until(() => c.opens === 1, 10000, 'open');
    for (let i = 500; i < 1000; i++) c.s.send({ i });
    await c.until(() => c.received.length >= 1000, 30000, '1000 echoes');
    assert.deepEqual(c.received.map((m) => m.i), [...Array(1000).keys()]);
    c.s.close();
    await c.until(() => c.closes.length === 1, 5000, 'close');
    assert.deepEqual(c.errors, []);
  });
});

test('bcsocket: strings, unicode, JSON values and a 200 KiB message round-trip exactly', async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base);
    await c.until(() => c.opens === 1, 10000, 'open');
    const sent = [...STRINGS, ...VALUES.filter((v) => v !== null), LARGE];
    for (const v of sent) c.s.send(v);
    await c.until(() => c.received.length >= sent.length, 20000, 'echoes');
    assert.deepEqual(c.received, sent);
    c.s.close();
  });
});

test('bcsocket: server stop gives "Stopped by server" and no reconnect', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base, { reconnect: true, reconnectTime: 100 });
    await c.until(() => c.opens === 1, 10000, 'open');
    c.s.send('stop');
    await c.until(() => c.closes.length === 1, 10000, 'close');
    assert.deepEqual(c.errors[0], ['Stopped by server', 7]);
    assert.equal(c.closes[0], 'Stopped by server');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(c.opens, 1, 'no reconnect after stop');
  });
});

test('bcsocket: server close makes a reconnecting socket open a new session', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base, { reconnect: true, reconnectTime: 100 });
    await c.until(() => c.opens === 1, 10000, 'open');
    c.s.send('close');
    await c.until(() => c.opens === 2, 20000, 'reopen');
    c.s.send('after reconnect');
    await c.until(() => c.received.includes('after reconnect'), 10000, 'echo');
    c.s.close();
  });
});

test('bcsocket: stop on connect arrives with the session and prevents reconnects', needsBcEcho, async () => {
  await withServer({ BC_STOP_ON_CONNECT: '1' }, async (base) => {
    const c = bcsocket(base, { reconnect: true, reconnectTime: 100 });
    await c.until(() => c.closes.length === 1, 10000, 'close');
    // `c` and `stop` travel in the creation response, so the socket opens, then stops.
    assert.deepEqual(c.errors[0], ['Stopped by server', 7]);
    assert.equal(c.closes[0], 'Stopped by server');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(c.opens, 1, 'no reconnect after stop');
  });
});

test('bcsocket: close on connect fails the open with "Request failed"', needsBcEcho, async () => {
  await withServer({ BC_CLOSE_ON_CONNECT: '1' }, async (base) => {
    const c = bcsocket(base);
    await c.until(() => c.closes.length === 1, 10000, 'close');
    assert.deepEqual(c.errors[0], ['Request failed', 2]);
    assert.equal(c.opens, 0);
  });
});

test('bcsocket: app version, extra params, affinity token and extra headers reach the server (items 40-42)', needsBcEcho, async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base, { appVersion: 321, extraParams: { foo: 'bar' }, extraHeaders: { 'x-style': 'Fabulous' } });
    await c.until(() => c.opens === 1, 10000, 'open');
    c.s.send('appVersion');
    c.s.send('query');
    c.s.send('headers');
    await c.until(() => c.received.length === 3, 10000, 'answers');
    assert.equal(c.received[0].appVersion, '321');
    assert.equal(c.received[1].query.foo, 'bar');
    assert.ok(c.received[1].query.a, 'the session-affinity token `a`');
    assert.equal(c.received[2].headers['x-style'], 'Fabulous');
    c.s.close();
  });
  await withServer({}, async (base) => {
    const c = bcsocket(base, { affinity: null });
    await c.until(() => c.opens === 1, 10000, 'open');
    c.s.send('query');
    await c.until(() => c.received.length === 1, 10000, 'answer');
    assert.equal(c.received[0].query.a, undefined, 'no affinity token when disabled');
    c.s.close();
  });
});

test('bcsocket: a burst of 5000 messages is delivered in order (item 58)', async () => {
  await withServer({}, async (base) => {
    const c = bcsocket(base);
    await c.until(() => c.opens === 1, 10000, 'open');
    for (let i = 0; i < 5000; i++) c.s.send(i);
    await c.until(() => c.received.length >= 5000, 60000, '5000 echoes');
    assert.deepEqual(c.received, [...Array(5000).keys()]);
    c.s.close();
  });
});

test('bcsocket: a socket created with prev ghosts the old session (item 106)', async () => {
  await withServer({}, async (base) => {
    const a = bcsocket(base);
    await a.until(() => a.opens === 1, 10000, 'open a');
    const b = bcsocket(base, { prev: a.s });
    await b.until(() => b.opens === 1, 10000, 'open b');
    await a.until(() => a.closes.length === 1, 10000, 'a closes');
    b.s.send('still works');
    await b.until(() => b.received.length === 1, 10000, 'echo');
    b.s.close();
  });
});

test('bcsocket: reconnect with failFast against a server that refuses every session (item 107)', needsBcEcho, async () => {
  await withServer({ BC_CLOSE_ON_CONNECT: '1' }, async (base) => {
    const c = bcsocket(base, { reconnect: true, failFast: true, reconnectTime: 300 });
    await c.until(() => c.closes.length >= 2, 10000, 'two closes');
    assert.equal(c.opens, 0);
    c.s.close();
    const closes = c.closes.length;
    await new Promise((r) => setTimeout(r, 700));
    assert.ok(c.closes.length <= closes + 1, 'close() stops the reconnects');
  });
});

test('bcsocket: client close sends terminate; the server closes Disconnected after every earlier map (item 109)', needsBcEcho, async () => {
  await withServer({}, async (base, server) => {
    const c = bcsocket(base);
    await c.until(() => c.opens === 1, 10000, 'open');
    for (let i = 0; i < 50; i++) c.s.send(i);
    // Closure's disconnect() drops maps it has not sent yet (it reports them as undelivered);
    // terminate's RID ordering behind in-flight POSTs is item 83 in the Rust suite.
    await c.until(() => c.received.length === 50, 10000, 'echoes');
    c.s.close();
    const t0 = Date.now();
    while (!/closed \S+ Disconnected/.test(server.output()) && Date.now() - t0 < 10000) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(server.output(), /closed \S+ Disconnected after 50 messages/);
  });
});
