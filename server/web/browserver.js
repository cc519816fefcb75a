// browserver.js: turn this page into an HTTP server behind a browserver proxy, with the
// Node-style API of the original browserver-client:
//
//   import { createServer, request } from '/browserver.js';
//   const server = createServer((req, res) => {
//     res.writeHead(200, { 'content-type': 'text/plain' });
//     res.end(`hello from ${server.hostname}: ${req.method} ${req.url}`);
//   });
//   server.onconnect = (hostname) => console.log(`serving at ${hostname}`);
//   server.ondisconnect = (reason) => console.log(`disconnected (${reason}), reconnecting`);
//   await server.listen();                       // resolves to the hostname
//   const r = await request({ host: 'other-id.localhost:3572', path: '/x' });  // client → client
//   const s = await request({ url: 'https://api.example.com/v1?q=1' });  // egress, over TLS
//
// Requests stream both ways (the proxy's flow-controlled streams): `req.body` is a
// ReadableStream of the visitor's body as it arrives (`await req.text()`, `req.bytes()`,
// `req.arrayBuffer()` read it whole), and `res.write(chunk)` sends as the page produces —
// server-sent events, large downloads — each write a promise that resolves once the proxy
// has room for it (await it to go at the visitor's pace; ignoring it queues in the page).
// Headers go with the first write or `end`.
//
// It runs over BCSocket (WebSocket session mode when the server offers it, else
// BrowserChannel), and reconnects with backoff when the connection is lost (a new connection
// may get a new hostname: `onconnect` tells). A handler may answer at once, later, or
// return a promise; a handler that throws or whose promise rejects answers 500 at once.
//
// listen(options): channel ('/channel'), ws (this page's /ws), reconnect (true),
// reconnectTime (1000 ms), maxReconnectTime (30000 ms), BCSocket (the class to use; loaded
// from `${channel}/bcsocket.js` by default), streams (true; false: the whole-message form,
// where `req.body` is the body as text and `req.bodyBytes` its bytes).

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text || '');
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function bytesOf(chunk) {
  if (chunk === undefined || chunk === null) return new Uint8Array(0);
  if (chunk instanceof Uint8Array) return chunk;
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  return encoder.encode(String(chunk));
}

let active = null; // the connection `request` uses

/** A message's [name, value] header list as an object; repeated headers joined with ', '. */
function headerObject(list) {
  const out = {};
  for (const [k, v] of list || []) out[k] = out[k] === undefined ? v : `${out[k]}, ${v}`;
  return out;
}

/** What both forms of answer share: status, headers, `setHeader`, `writeHead`. */
function responseHead() {
  return {
    statusCode: 200,
    headers: [],
    finished: false,
    setHeader(name, value) {
      this.headers = this.headers.filter(([k]) => k !== name.toLowerCase());
      for (const v of [].concat(value)) this.headers.push([name.toLowerCase(), String(v)]);
    },
    writeHead(status, headers = {}) {
      this.statusCode = status;
      for (const [k, v] of Object.entries(headers)) this.setHeader(k, v);
      return this;
    },
  };
}

/** Runs `handler`; `failed(error)` when it throws or its promise rejects. */
function run(handler, req, res, failed) {
  try {
    const result = handler(req, res);
    if (result && typeof result.then === 'function') result.then(undefined, failed);
  } catch (e) {
    failed(e);
  }
}

// Stream frames (browserver_core::stream): type, flags, stream id (u32), payload. The windows
// are the server's defaults: both sides assume the same.
const T_HEAD = 1, T_DATA = 2, T_RESET = 3, T_CREDIT = 4;
const STREAM_WINDOW = 512 * 1024, CONNECTION_WINDOW = 2 * 1024 * 1024, MAX_FRAME = 32 * 1024;

function frame(type, flags, id, payload = new Uint8Array(0)) {
  const f = new Uint8Array(6 + payload.length);
  const v = new DataView(f.buffer);
  f[0] = type;
  f[1] = flags;
  v.setUint32(2, id);
  f.set(payload, 6);
  return f;
}

function u32(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/** The page's side of the streams: requests the proxy opens, answers the page writes. */
class Streams {
  constructor(send) {
    this.send = send; // (frame bytes) => void
    this.streams = new Map();
    this.connSend = CONNECTION_WINDOW; // credit the proxy granted for the session
    this.connGrant = 0; // consumed, not yet granted back
    this.turn = 0;
  }

  /** A frame from the proxy; `open(id, head, end)` is told of each new request. */
  frame(bytes, open) {
    if (bytes.length < 6) return;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const [type, flags, id] = [bytes[0], bytes[1], v.getUint32(2)];
    const payload = bytes.subarray(6);
    const end = (flags & 1) === 1;
    const s = this.streams.get(id);
    if (type === T_HEAD && !s && id % 2 === 0) {
      const stream = { id, sendWindow: STREAM_WINDOW, out: [], grant: 0, buffered: [], ended: end, waiting: null, reset: false, headSent: false };
      this.streams.set(id, stream);
      open(stream, JSON.parse(decoder.decode(payload)), end);
    } else if (type === T_DATA) {
      if (!s || s.ended) return this.consumed(null, payload.length); // dropped: the credit comes back
      if (s.discard) {
        if (end) { s.ended = true; this.streams.delete(id); }
        return this.consumed(s, payload.length);
      }
      if (payload.length) s.buffered.push(payload.slice());
      if (end) s.ended = true;
      this.wake(s);
    } else if (type === T_RESET && s) {
      s.reset = true;
      // Bytes received and never to be read: the session's credit comes back.
      for (const c of s.buffered.splice(0)) this.consumed(null, c.length);
      this.wake(s);
      for (const w of s.out) w.done(false);
      this.streams.delete(id);
    } else if (type === T_CREDIT && payload.length === 4) {
      const n = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
      if (id === 0) this.connSend += n;
      else if (s) s.sendWindow += n;
      this.pump();
    }
  }

  wake(s) {
    if (s.waiting) { const w = s.waiting; s.waiting = null; w(); }
  }

  /** The page read `n` bytes of stream `s`: credit back, in batches of half a window. */
  consumed(s, n) {
    this.connGrant += n;
    if (this.connGrant >= CONNECTION_WINDOW / 2) {
      this.send(frame(T_CREDIT, 0, 0, u32(this.connGrant)));
      this.connGrant = 0;
    }
    if (s && !s.ended) {
      s.grant += n;
      if (s.grant >= STREAM_WINDOW / 2) {
        this.send(frame(T_CREDIT, 0, s.id, u32(s.grant)));
        s.grant = 0;
      }
    }
  }

  /** The request body as a ReadableStream: a chunk is handed over when the page reads it,
   * and only then is its credit returned. */
  body(s) {
    return s.body = new ReadableStream({
      pull: async (controller) => {
        while (!s.buffered.length && !s.ended && !s.reset) await new Promise((r) => { s.waiting = r; });
        if (s.buffered.length) {
          const chunk = s.buffered.shift();
          controller.enqueue(chunk);
          this.consumed(s, chunk.length);
        } else if (s.reset) {
          controller.error(new Error('the request was abandoned'));
        } else {
          controller.close();
        }
      },
      cancel: () => { s.ended = true; for (const c of s.buffered.splice(0)) this.consumed(null, c.length); },
    }, { highWaterMark: 0 });
  }

  respond(s, head, end) {
    s.headSent = true;
    this.send(frame(T_HEAD, end ? 1 : 0, s.id, encoder.encode(JSON.stringify(head))));
    if (end) this.finished(s);
  }

  /** Queues a chunk (`last`: the end of the answer); resolves once it went out. */
  write(s, bytes, last) {
    if (s.reset || !this.streams.has(s.id)) return Promise.resolve(false);
    return new Promise((done) => {
      s.out.push({ bytes, at: 0, last, done });
      this.pump();
    });
  }

  /** Sends data while the windows allow, a frame of each stream in turn. */
  pump() {
    for (;;) {
      const ready = [...this.streams.values()].filter((s) => s.out.length && s.sendWindow > 0);
      if (!ready.length || this.connSend <= 0) return;
      const s = ready[this.turn++ % ready.length];
      const w = s.out[0];
      const n = Math.min(MAX_FRAME, s.sendWindow, this.connSend, w.bytes.length - w.at);
      const piece = w.bytes.subarray(w.at, w.at + n);
      w.at += n;
      const done = w.at >= w.bytes.length;
      this.send(frame(T_DATA, done && w.last ? 1 : 0, s.id, piece));
      s.sendWindow -= n;
      this.connSend -= n;
      if (done) {
        s.out.shift();
        w.done(true);
        if (w.last) this.finished(s);
      }
    }
  }

  finished(s) {
    s.sent = true;
    if (s.ended) return this.streams.delete(s.id);
    if (!s.body || !s.body.locked) {
      // Answered without reading the request's body: the rest is dropped as it comes.
      s.discard = true;
      for (const c of s.buffered.splice(0)) this.consumed(s, c.length);
    }
  }

  reset(s) {
    if (!this.streams.has(s.id)) return;
    this.send(frame(T_RESET, 0, s.id, new Uint8Array([1])));
    this.streams.delete(s.id);
  }

  /** The session ended: every stream is over. */
  close() {
    for (const s of this.streams.values()) { s.reset = true; this.wake(s); for (const w of s.out) w.done(false); }
    this.streams.clear();
  }
}

class Connection {
  constructor(options, events) {
    const here = globalThis.location;
    const ws = here ? `${here.protocol === 'https:' ? 'wss' : 'ws'}://${here.host}/ws` : null;
    this.options = { channel: '/channel', ws, reconnect: true, reconnectTime: 1000, maxReconnectTime: 30000, streams: true, ...options };
    this.events = events; // { connected(hostname, id), disconnected(reason, reconnecting) }
    this.pending = new Map();
    this.nextId = 1;
    this.handler = null;
  }

  async open() {
    const BCSocket = this.options.BCSocket || (await import(`${this.options.channel}/bcsocket.js`)).BCSocket;
    return new Promise((resolve, reject) => {
      const { reconnect, reconnectTime, maxReconnectTime } = this.options;
      const socket = new BCSocket(this.options.channel, {
        wsUrl: this.options.ws, extraParams: { brow: this.options.streams ? 3 : 2 }, reconnect, reconnectTime, maxReconnectTime,
      });
      this.socket = socket;
      this.streams = new Streams((f) => { try { socket.sendBinary(f); } catch { /* closed */ } });
      socket.onmessage = (e) => {
        let m = e.data;
        if (m instanceof Uint8Array) return this.streams.frame(m, (s, head, end) => this.serveStream(s, head, end));
        if (typeof m === 'string') {
          try { m = JSON.parse(m); } catch { return; }
        }
        if (m && typeof m.f === 'string') {
          // A stream frame over BrowserChannel (base64).
          return this.streams.frame(fromBase64(m.f), (s, head, end) => this.serveStream(s, head, end));
        }
        if (m && m.hello) {
          this.id = m.hello.id;
          this.hostname = m.hello.hostname;
          this.events.connected(this.hostname, this.id);
          resolve(this.hostname);
        } else if (m && m.request) {
          this.serve(m);
        } else if (m && m.response && this.pending.has(m.id)) {
          this.pending.get(m.id)(m);
          this.pending.delete(m.id);
        }
      };
      socket.onclose = (reason, _pending, _undelivered, info = {}) => {
        // Requests this page sent are lost with the session; so are the answers it owed.
        for (const done of this.pending.values()) done(null);
        this.pending.clear();
        // Streams do not survive their session.
        this.streams.close();
        this.streams = new Streams((f) => { try { socket.sendBinary(f); } catch { /* closed */ } });
        this.events.disconnected(reason, Boolean(info.reconnecting));
        if (!this.hostname && !info.reconnecting) reject(new Error(`connection closed: ${reason}`));
      };
    });
  }

  /** Sends a message if the session is still there (an answer to a request of a session
   * that ended has no one to go to). */
  send(message) {
    try {
      this.socket.send(JSON.stringify(message));
    } catch {
      // Closed: the proxy already answered the visitor 502/504.
    }
  }

  /** A request the proxy opened as a stream: the body streams in, the answer streams out. */
  serveStream(s, m, end) {
    const headers = headerObject(m.headers);
    const body = end ? null : this.streams.body(s);
    const whole = async () => {
      if (!body) return new Uint8Array(0);
      const parts = [];
      for (const reader = body.getReader(); ;) {
        const { value, done } = await reader.read();
        if (done) break;
        parts.push(value);
      }
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) { out.set(p, at); at += p.length; }
      return out;
    };
    const req = {
      method: m.request.method, url: m.request.target, headers, body,
      bytes: whole,
      arrayBuffer: async () => (await whole()).buffer,
      text: async () => decoder.decode(await whole()),
    };
    const streams = this.streams;
    const head = () => ({ brow: 2, response: { status: res.statusCode, reason: '' }, headers: res.headers, body: '' });
    const res = {
      ...responseHead(),
      /** Sends a chunk now (the headers first, if not yet); resolves when it went out. */
      write(chunk) {
        if (res.finished) return Promise.resolve(false);
        if (!s.headSent) streams.respond(s, head(), false);
        return streams.write(s, bytesOf(chunk), false);
      },
      end(chunk) {
        if (res.finished) return Promise.resolve(false);
        res.finished = true;
        const bytes = chunk === undefined ? new Uint8Array(0) : bytesOf(chunk);
        if (!s.headSent) {
          if (!bytes.length) return Promise.resolve(streams.respond(s, head(), true));
          streams.respond(s, head(), false);
        }
        return streams.write(s, bytes, true);
      },
    };
    const failed = (e) => {
      if (res.finished) return;
      if (s.headSent) return streams.reset(s); // too late for a 500: the answer is cut off
      res.headers = [];
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`handler error: ${e}`);
    };
    run(this.handler, req, res, failed);
  }

  serve(m) {
    const headers = headerObject(m.headers);
    const bodyBytes = fromBase64(m.body);
    const req = { method: m.request.method, url: m.request.target, headers, body: decoder.decode(bodyBytes), bodyBytes };
    const chunks = [];
    const res = {
      ...responseHead(),
      write(chunk) {
        if (!res.finished) chunks.push(bytesOf(chunk));
      },
      end: (chunk) => {
        if (res.finished) return;
        res.finished = true;
        if (chunk !== undefined) chunks.push(bytesOf(chunk));
        const size = chunks.reduce((n, c) => n + c.length, 0);
        const body = new Uint8Array(size);
        let at = 0;
        for (const c of chunks) { body.set(c, at); at += c.length; }
        this.send({
          brow: 2, id: m.id, response: { status: res.statusCode, reason: '' }, headers: res.headers, body: toBase64(body),
        });
      },
    };
    const failed = (e) => {
      if (res.finished) return;
      chunks.length = 0;
      res.headers = [];
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`handler error: ${e}`);
    };
    run(this.handler, req, res, failed);
  }

  request({ method = 'GET', url, host, path = '/', headers = {}, body }) {
    if (!this.socket || this.socket.readyState !== 1) return Promise.reject(new Error('not connected'));
    let target = path;
    if (url !== undefined) {
      // An https:// URL travels whole (the proxy speaks TLS to it); http:// as host and path.
      const u = new URL(url);
      if (u.protocol !== 'https:' && u.protocol !== 'http:') return Promise.reject(new Error(`unsupported URL ${url}`));
      host = u.host;
      target = u.protocol === 'https:' ? u.href : `${u.pathname}${u.search}`;
    }
    const id = `b${this.nextId++}`;
    const list = Object.entries({ host, ...headers }).map(([k, v]) => [k.toLowerCase(), String(v)]);
    return new Promise((resolve, reject) => {
      this.pending.set(id, (m) => {
        if (!m) return reject(new Error('connection closed'));
        const bytes = fromBase64(m.body);
        resolve({ statusCode: m.response.status, headers: headerObject(m.headers), body: decoder.decode(bytes), bodyBytes: bytes });
      });
      this.send({
        brow: 2, id, request: { method, target }, headers: list, body: toBase64(bytesOf(body)),
      });
    });
  }

  close() {
    if (this.socket) this.socket.close();
  }
}

/** A server: `listen(options)` connects to the proxy and resolves to this page's hostname.
 * `onconnect(hostname)` and `ondisconnect(reason, reconnecting)` follow the connection;
 * `connected` says whether it is up now. */
export function createServer(handler) {
  const server = {
    hostname: null,
    id: null,
    connected: false,
    onconnect: null,
    ondisconnect: null,
    async listen(options = {}) {
      const conn = new Connection(options, {
        connected(hostname, id) {
          server.hostname = hostname;
          server.id = id;
          server.connected = true;
          if (typeof server.onconnect === 'function') server.onconnect(hostname);
        },
        disconnected(reason, reconnecting) {
          server.connected = false;
          if (typeof server.ondisconnect === 'function') server.ondisconnect(reason, reconnecting);
        },
      });
      conn.handler = (req, res) => server.handler(req, res);
      server.connection = conn;
      active = conn;
      return conn.open();
    },
    handler,
    close() {
      if (server.connection) server.connection.close();
    },
  };
  return server;
}

/** Sends a request through the proxy (to another client by hostname, or through egress). */
export function request(options) {
  if (!active) return Promise.reject(new Error('call createServer(...).listen() first'));
  return active.request(options);
}

export default { createServer, request };
