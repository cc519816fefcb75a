// Streams with a real browser tab as the server (browserver.js in headless Chromium behind
// the `browserver` binary): a request body read as a ReadableStream, server-sent events that
// arrive as the page writes them, a large answer written with `await res.write(...)`, and the
// same over BrowserChannel (the frames in base64 maps).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { startBrowserver, launchChromium } = require('./support');

let browser;
let server;

before(async () => {
  server = await startBrowserver();
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.stop();
});

/** A tab serving streams; `transport` is BCSocket's ('auto' or 'browserchannel'). */
async function streamingTab(transport) {
  const page = await browser.newPage();
  await page.goto(`http://${server.addr}/browserver.js`);
  const hostname = await page.evaluate(async (transport) => {
    const { createServer } = await import('/browserver.js');
    const { BCSocket } = await import('/channel/bcsocket.js');
    class Chosen extends BCSocket {
      constructor(url, options) { super(url, { ...options, transport }); }
    }
    const s = createServer(async (req, res) => {
      if (req.url === '/count') {
        // Read the body as it arrives: its length and a checksum of every byte.
        let n = 0, sum = 0;
        const reader = req.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          n += value.length;
          for (const b of value) sum = (sum + b) % 65521;
        }
        res.end(JSON.stringify({ n, sum }));
      } else if (req.url === '/events') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        await res.write('data: one\n\n');
        setTimeout(() => res.end('data: two\n\n'), 1500);
      } else if (req.url.startsWith('/big')) {
        const n = Number(new URL(req.url, 'http://x').searchParams.get('n'));
        const chunk = new Uint8Array(65536);
        for (let i = 0; i < chunk.length; i++) chunk[i] = i % 251;
        for (let sent = 0; sent < n; sent += chunk.length) {
          await res.write(chunk.subarray(0, Math.min(chunk.length, n - sent)));
        }
        res.end();
      } else {
        res.end('hello');
      }
    });
    return s.listen({ BCSocket: Chosen });
  }, transport);
  return { page, host: `${hostname}:${server.port}` };
}

/** A request to the proxy with this Host; resolves to { status, headers, chunks: [{ at, data }] }. */
function send(host, method, path, body) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.request({ host: '127.0.0.1', port: server.port, method, path, headers: { host } }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push({ at: Date.now() - started, data: d }));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, chunks }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body) req.end(body); else req.end();
  });
}

for (const transport of ['auto', 'browserchannel']) {
  test(`chromium (${transport}): a 6 MB upload is read by the page as a stream, byte-exact`, async () => {
    const { page, host } = await streamingTab(transport);
    const body = Buffer.alloc(6_000_000);
    let sum = 0;
    for (let i = 0; i < body.length; i++) {
      body[i] = (i * 7) % 256;
      sum = (sum + body[i]) % 65521;
    }
    const r = await send(host, 'POST', '/count', body);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(Buffer.concat(r.chunks.map((c) => c.data)).toString()), { n: body.length, sum });
    await page.close();
  });

  test(`chromium (${transport}): a server-sent event arrives before the page ends the answer`, async () => {
    const { page, host } = await streamingTab(transport);
    const r = await send(host, 'GET', '/events');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/event-stream');
    const text = Buffer.concat(r.chunks.map((c) => c.data)).toString();
    assert.equal(text, 'data: one\n\ndata: two\n\n');
    // The first event came well before the second was written (1.5 s later).
    assert.ok(r.chunks[0].at < 1200, `first event after ${r.chunks[0].at} ms`);
    assert.ok(r.chunks[r.chunks.length - 1].at >= 1400);
    await page.close();
  });

  test(`chromium (${transport}): an 8 MiB answer written at the visitor's pace arrives whole`, async () => {
    const { page, host } = await streamingTab(transport);
    const n = 8 * 1024 * 1024 + 123;
    const r = await send(host, 'GET', `/big?n=${n}`);
    assert.equal(r.status, 200);
    const data = Buffer.concat(r.chunks.map((c) => c.data));
    assert.equal(data.length, n);
    for (let i = 0; i < n; i += 4099) assert.equal(data[i], (i % 65536) % 251, `byte ${i}`);
    await page.close();
  });
}
