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
//
// It speaks the proxy's extended message form over BCSocket (WebSocket session mode when the
// server offers it, else BrowserChannel), and reconnects with backoff when the connection is
// lost (a new connection may get a new hostname: `onconnect` tells). A handler may answer
// at once, later, or return a promise; a handler that throws or whose promise rejects answers
// 500 at once.
//
// listen(options): channel ('/channel'), ws (this page's /ws), reconnect (true),
// reconnectTime (1000 ms), maxReconnectTime (30000 ms), BCSocket (the class to use; loaded
// from `${channel}/bcsocket.js` by default).

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

class Connection {
  constructor(options, events) {
    const here = globalThis.location;
    const ws = here ? `${here.protocol === 'https:' ? 'wss' : 'ws'}://${here.host}/ws` : null;
    this.options = { channel: '/channel', ws, reconnect: true, reconnectTime: 1000, maxReconnectTime: 30000, ...options };
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
        wsUrl: this.options.ws, extraParams: { brow: 2 }, reconnect, reconnectTime, maxReconnectTime,
      });
      this.socket = socket;
      socket.onmessage = (e) => {
        let m = e.data;
        if (typeof m === 'string') {
          try { m = JSON.parse(m); } catch { return; }
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

  serve(m) {
    const headers = {};
    for (const [k, v] of m.headers || []) headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    const bodyBytes = fromBase64(m.body);
    const req = { method: m.request.method, url: m.request.target, headers, body: decoder.decode(bodyBytes), bodyBytes };
    const chunks = [];
    const res = {
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
    try {
      const result = this.handler(req, res);
      if (result && typeof result.then === 'function') result.then(undefined, failed);
    } catch (e) {
      failed(e);
    }
  }

  request({ method = 'GET', host, path = '/', headers = {}, body }) {
    if (!this.socket || this.socket.readyState !== 1) return Promise.reject(new Error('not connected'));
    const id = `b${this.nextId++}`;
    const list = Object.entries({ host, ...headers }).map(([k, v]) => [k.toLowerCase(), String(v)]);
    return new Promise((resolve, reject) => {
      this.pending.set(id, (m) => {
        if (!m) return reject(new Error('connection closed'));
        const bytes = fromBase64(m.body);
        const out = {};
        for (const [k, v] of m.headers || []) out[k] = out[k] === undefined ? v : `${out[k]}, ${v}`;
        resolve({ statusCode: m.response.status, headers: out, body: decoder.decode(bytes), bodyBytes: bytes });
      });
      this.send({
        brow: 2, id, request: { method, target: path }, headers: list, body: toBase64(bytesOf(body)),
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
