// bcsocket.js: a dependency-free browser client for browserver, with node-browserchannel's
// WebSocket-like BCSocket API. It speaks BrowserChannel v8 (fetch with streaming responses)
// and, when given a WebSocket URL, browserver's WebSocket session mode
// ("browserver.session.v1"), falling back to BrowserChannel if the WebSocket fails.
//
//   import { BCSocket } from '/channel/bcsocket.js';
//   const s = new BCSocket('/channel', { reconnect: true });
//   s.onopen = () => s.send({ hello: 'world' });
//   s.onmessage = (e) => console.log(e.data);
//   s.onclose = (reason, pending, undelivered) => { /* resend what matters */ };
//
// Options: reconnect (false), reconnectTime (3000 ms: the first reconnect delay, doubling per
// failed attempt up to maxReconnectTime, 30000 ms, each delay drawn from its upper half at
// random), maxReconnectAttempts (Infinity: consecutive failed attempts before giving up),
// appVersion, failFast, crossDomainXhr (send credentials; use the server's host prefix),
// affinity (true) / affinityParam ('a'), extraParams ({}), extraHeaders ({}: on every
// BrowserChannel request; a browser cannot put headers on a WebSocket), prev (an earlier
// BCSocket whose session this one replaces), transport ('auto' | 'browserchannel' |
// 'websocket'; default 'auto' when wsUrl is set, else 'browserchannel'), wsUrl (the WebSocket
// endpoint, e.g. 'ws://host:3572/ws'), resumeTimeout (25000 ms: how long a dropped WebSocket
// session is resumed before the session counts as lost; keep it under the server's session
// timeout, 30 s by default).
//
// Delivery: within one session every message arrives once, in order (a dropped WebSocket is
// resumed without loss or duplicates). When a session ends, `onclose(reason, pending,
// undelivered, info)` hands back what it did not deliver: `pending` were sent and not
// acknowledged (the server may or may not have them), `undelivered` were never sent. They are
// not resent in a new session; resend what matters. `info` is { code, reconnecting, delay }.

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const ERRORS = {
  2: 'Request failed', 5: 'No data from server', 6: 'Unknown session ID', 7: 'Stopped by server',
  10: 'Got bad data from the server', 11: 'Got a bad response from the server',
};
const SUBPROTOCOL = 'browserver.session.v1';
const PADDING_WINDOW = 1000; // maps per POST
const RESUME_FIRST_DELAY = 100; // ms
const RESUME_MAX_DELAY = 2000; // ms
const RESUME_WITHIN = 25000; // ms: the server keeps a connectionless session 30 s by default

/** A queued item as WebSocket session-mode text: JSON (a map as a JSON object). */
function itemText(item) {
  return JSON.stringify('map' in item ? item.map : item.value);
}

function base64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** A queued item as a WebSocket session-mode frame: kind and payload bytes. */
function itemFrame(item) {
  return 'binary' in item ? ['B', item.binary] : ['T', new TextEncoder().encode(itemText(item))];
}

function zx() {
  return Math.floor(Math.random() * 2147483648).toString(36) + Math.floor(Math.random() * 2147483648).toString(36);
}

function query(params) {
  return Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
}

class Failure extends Error {
  constructor(code, detail) {
    super(detail || ERRORS[code]);
    this.code = code;
  }
}

/** Splits complete length-prefixed chunks off the front of `buf` (lengths in UTF-16 units). */
function splitChunks(state) {
  const out = [];
  for (;;) {
    const nl = state.buf.indexOf('\n');
    if (nl < 0) return out;
    const len = Number(state.buf.slice(0, nl));
    if (!Number.isInteger(len) || len < 0) throw new Failure(10);
    if (state.buf.length < nl + 1 + len) return out;
    out.push(state.buf.substr(nl + 1, len));
    state.buf = state.buf.slice(nl + 1 + len);
  }
}

export class BCSocket {
  constructor(url, options = {}) {
    this.url = url.replace(/\/$/, '');
    this.options = {
      reconnect: false, reconnectTime: 3000, maxReconnectTime: 30000, maxReconnectAttempts: Infinity,
      appVersion: null, failFast: false, crossDomainXhr: false, affinity: true, affinityParam: 'a',
      extraParams: {}, extraHeaders: {}, wsUrl: null, resumeTimeout: RESUME_WITHIN, ...options,
    };
    this.options.transport = this.options.transport || (this.options.wsUrl ? 'auto' : 'browserchannel');
    this.readyState = CONNECTING;
    this.onopen = this.onmessage = this.onclose = this.onerror = this.onconnecting = null;
    this._queue = []; // items ({ value } or { map }) not yet acknowledged, in order
    this._affinity = this.options.affinity ? zx() : null;
    this._prev = options.prev ? options.prev._previous() : null;
    this._closedByUser = false;
    this._wsFailed = false;
    this._attempts = 0; // failed attempts since the last open
    this._startTimer = setTimeout(() => this._connect(), 0);
  }

  /** Sends a value (strings as `_S`, anything else as JSON). Allowed before open and while
   * a reconnect is pending; throws once the socket is closed. */
  send(value) {
    this._enqueue({ value });
  }

  /** Sends bytes (a Uint8Array): a binary message over WebSocket; over BrowserChannel, which
   * carries text only, a map whose `f` is the bytes in base64 (browserver's stream frames). */
  sendBinary(bytes) {
    this._enqueue({ binary: new Uint8Array(bytes) });
  }

  /** Sends a map of string values as one BrowserChannel map (the server receives a map, as
   * with node-browserchannel's sendMap); over WebSocket it travels as a JSON object. */
  sendMap(map) {
    if (map === null || typeof map !== 'object') throw new TypeError('sendMap takes an object');
    const copy = {};
    for (const [k, v] of Object.entries(map)) copy[k] = String(v);
    this._enqueue({ map: copy });
  }

  _enqueue(item) {
    if (this.readyState === CLOSING || this.readyState === CLOSED) {
      throw new Error('BCSocket is closed (call open() to connect again)');
    }
    this._queue.push(item);
    if (this._channel) this._channel.flush();
  }

  /** Connects a closed socket again (a new session). */
  open() {
    if (this.readyState !== CLOSED) throw new Error('Already open');
    this._closedByUser = false;
    this._attempts = 0;
    this._connect();
  }

  /** Closes the session; no reconnect follows. */
  close() {
    if (this.readyState === CLOSED || this._closedByUser) return;
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._startTimer);
    if (this._channel) {
      this.readyState = CLOSING;
      this._channel.close();
    } else if (this._waiting) {
      // Between sessions: onclose was already called for the last one.
      this._waiting = false;
      this.readyState = CLOSED;
    } else {
      this._finish('Closed', { code: 0, reconnecting: false }, this._drain([]));
    }
  }

  _previous() {
    const ch = this._channel || this._lastChannel;
    return ch && ch.sid ? { sid: ch.sid, aid: ch.lastArrayId } : null;
  }

  _params() {
    const p = { ...this.options.extraParams };
    if (this._affinity) p[this.options.affinityParam] = this._affinity;
    if (this._prev) {
      p.OSID = this._prev.sid;
      p.OAID = this._prev.aid;
    }
    return p;
  }

  _emit(name, ...args) {
    const f = this[name];
    if (typeof f === 'function') {
      try { f.apply(this, args); } catch (e) { setTimeout(() => { throw e; }, 0); }
    }
  }

  _connect() {
    if (this._closedByUser) return;
    this._waiting = false;
    this.readyState = CONNECTING;
    this._emit('onconnecting');
    const useWs = this.options.transport === 'websocket' ||
      (this.options.transport === 'auto' && this.options.wsUrl && !this._wsFailed);
    this._channel = useWs ? new WsChannel(this) : new BrowserChannel(this);
    this._channel.start();
  }

  // Called by a channel.
  _opened() {
    this.readyState = OPEN;
    this._attempts = 0;
    this._emit('onopen');
  }

  _message(data) {
    if (this.readyState === OPEN) this._emit('onmessage', { type: 'message', data });
  }

  /** What the ended session did not deliver, as the application gave it: `pending` items
   * were sent and not acknowledged; the rest of the queue was never sent. */
  _drain(pending) {
    const plain = (item) => ('binary' in item ? item.binary : 'map' in item ? item.map : item.value);
    return { pending: pending.map(plain), undelivered: this._queue.splice(0).map(plain) };
  }

  _ended(failure) {
    const ch = this._channel;
    this._lastChannel = ch;
    this._channel = null;
    if (ch && ch.sid) this._prev = { sid: ch.sid, aid: ch.lastArrayId };
    if (failure && failure.websocketUnavailable && this.options.transport === 'auto' && !this._closedByUser) {
      // No session was opened: what was queued goes with the BrowserChannel session.
      this._wsFailed = true;
      return this._connect();
    }
    const lost = this._drain(ch ? ch.takeUnacknowledged() : []);
    if (this._closedByUser) return this._finish('Closed', { code: 0, reconnecting: false }, lost);
    const code = failure ? failure.code : 0;
    const reason = failure ? ERRORS[code] || failure.message : 'Closed';
    if (failure) this._emit('onerror', reason, code);
    const stopped = code === 7;
    const reconnecting = this.options.reconnect && !stopped && this._attempts < this.options.maxReconnectAttempts;
    let delay = 0;
    if (reconnecting) {
      delay = this._reconnectDelay(code);
      this._attempts++;
      this._waiting = true;
      // Set before onclose, so that onclose may cancel it with close().
      this._reconnectTimer = setTimeout(() => this._connect(), delay);
    }
    this._finish(reason, { code, reconnecting, delay }, lost);
  }

  /** Exponential backoff with jitter: the first delay is `reconnectTime`, doubling up to
   * `maxReconnectTime`; each drawn at random from the upper half. An unknown session (it
   * timed out on the server) reconnects at once the first time. */
  _reconnectDelay(code) {
    if (code === 6 && this._attempts === 0) return 0;
    const { reconnectTime, maxReconnectTime } = this.options;
    const ceiling = Math.min(maxReconnectTime, reconnectTime * 2 ** Math.min(this._attempts, 30));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  _finish(reason, info, lost) {
    this.readyState = info.reconnecting ? CONNECTING : CLOSED;
    this._emit('onclose', reason, lost.pending, lost.undelivered, info);
  }
}
BCSocket.CONNECTING = CONNECTING;
BCSocket.OPEN = OPEN;
BCSocket.CLOSING = CLOSING;
BCSocket.CLOSED = CLOSED;
BCSocket.prototype.CONNECTING = CONNECTING;
BCSocket.prototype.OPEN = OPEN;
BCSocket.prototype.CLOSING = CLOSING;
BCSocket.prototype.CLOSED = CLOSED;

/** BrowserChannel v8 over fetch. */
class BrowserChannel {
  constructor(socket) {
    this.socket = socket;
    this.sid = null;
    this.resumeToken = null;
    this.lastArrayId = -1;
    this.rid = Math.floor(Math.random() * 100000);
    this.nextMapId = 0;
    this.inFlight = null; // { rid, values } of the POST in flight (values: the queue's first items)
    this.retries = 0;
    this.backRetries = 0;
    this.closed = false;
    this.aborts = new Set();
    this.base = socket.url;
    this.credentials = socket.options.crossDomainXhr ? 'include' : 'same-origin';
  }

  url(path, params, host) {
    return `${host || this.base}/${path}?${query({ ...this.socket._params(), VER: 8, ...params, zx: zx() })}`;
  }

  async fetch(url, init = {}) {
    const abort = new AbortController();
    this.aborts.add(abort);
    const headers = { ...this.socket.options.extraHeaders, ...init.headers };
    try {
      return await fetch(url, { ...init, headers, signal: abort.signal, credentials: this.credentials, cache: 'no-store' });
    } finally {
      this.aborts.delete(abort);
    }
  }

  async start() {
    try {
      const phase1 = await this.fetch(this.url('test', { MODE: 'init', t: 1 }));
      if (phase1.status !== 200) throw new Failure(2);
      const [prefix] = JSON.parse(await phase1.text());
      if (prefix && this.socket.options.crossDomainXhr) {
        const u = new URL(this.base, location.href);
        u.hostname = `${prefix}.${u.hostname}`;
        this.backBase = u.toString().replace(/\/$/, '');
      }
      this.streaming = await this.probe();
      await this.open();
    } catch (e) {
      this.fail(e);
    }
  }

  /** Phase 2: does `11111` arrive alone (streaming works) or buffered with `2`? */
  async probe() {
    const res = await this.fetch(this.url('test', { TYPE: 'xmlhttp', t: 1 }, this.backBase));
    if (res.status !== 200) throw new Failure(2);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      text += decoder.decode(value, { stream: true });
      if (text === '11111') {
        reader.cancel().catch(() => {});
        return true;
      }
      if (text.length > 5) {
        while (!(await reader.read()).done);
        return false;
      }
    }
  }

  mapsBody(items) {
    const params = { count: items.length };
    if (items.length) params.ofs = this.nextMapId;
    items.forEach((item, i) => {
      if ('binary' in item) {
        params[`req${i}_f`] = base64(item.binary);
      } else if ('map' in item) {
        for (const [k, v] of Object.entries(item.map)) params[`req${i}_${k}`] = v;
      } else if (typeof item.value === 'string') {
        params[`req${i}__S`] = item.value;
      } else {
        params[`req${i}_JSON`] = JSON.stringify(item.value);
      }
    });
    return query(params);
  }

  /** The queue's items sent and not acknowledged (taken out of the queue). */
  takeUnacknowledged() {
    const n = this.inFlight ? this.inFlight.values.length : 0;
    this.inFlight = null;
    return this.socket._queue.splice(0, n);
  }

  async post(params, values) {
    const res = await this.fetch(this.url('bind', params), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: this.mapsBody(values),
    });
    const text = await res.text();
    if (res.status === 400 && text.indexOf('Unknown SID') > 0) throw new Failure(6);
    if (res.status !== 200) throw new Failure(2, `Request failed (HTTP ${res.status})`);
    if (!text) throw new Failure(5);
    return text;
  }

  async open() {
    const values = this.socket._queue.slice(0, PADDING_WINDOW);
    const rid = this.rid++;
    this.inFlight = { rid, values };
    const text = await this.post({ RID: rid, CVER: this.socket.options.appVersion, t: 1 }, values);
    if (this.closed) return;
    const state = { buf: text };
    const arrays = [];
    for (const chunk of splitChunks(state)) arrays.push(...JSON.parse(chunk));
    if (!arrays.length || arrays[0][1][0] !== 'c') throw new Failure(10);
    this.sid = arrays[0][1][1];
    this.socket._queue.splice(0, values.length);
    this.inFlight = null;
    this.nextMapId += values.length;
    this.socket._opened();
    this.handleArrays(arrays);
    if (!this.closed) {
      this.backChannel();
      this.flush();
    }
  }

  handleArrays(arrays) {
    for (const [id, data] of arrays) {
      if (id <= this.lastArrayId) continue;
      this.lastArrayId = id;
      if (Array.isArray(data) && data[0] === 'stop') return this.fail(new Failure(7));
      if (Array.isArray(data) && (data[0] === 'noop' || data[0] === 'c')) continue;
      this.socket._message(data);
      if (this.closed) return;
    }
  }

  async backChannel() {
    while (!this.closed) {
      try {
        const url = this.url('bind', {
          RID: 'rpc', SID: this.sid, CI: this.streaming ? 0 : 1, AID: this.lastArrayId, TYPE: 'xmlhttp', t: this.backRetries + 1,
        }, this.backBase);
        const res = await this.fetch(url);
        if (res.status !== 200) {
          const text = await res.text();
          throw new Failure(res.status === 400 && text.indexOf('Unknown SID') > 0 ? 6 : 2);
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        const state = { buf: '' };
        let gotData = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          state.buf += decoder.decode(value, { stream: true });
          for (const chunk of splitChunks(state)) {
            gotData = true;
            this.backRetries = 0;
            this.handleArrays(JSON.parse(chunk));
            if (this.closed) return;
          }
        }
        if (!gotData) throw new Failure(5);
      } catch (e) {
        if (this.closed) return;
        const failure = e instanceof Failure ? e : new Failure(2, String(e));
        if (failure.code === 6 || failure.code === 7 || this.socket.options.failFast || this.backRetries >= 3) {
          return this.fail(failure);
        }
        this.backRetries++;
        await new Promise((r) => setTimeout(r, this.backRetries === 1 ? 0 : 1000 * this.backRetries));
      }
    }
  }

  /** Sends queued values: one POST at a time, retried under the same RID. */
  async flush() {
    if (this.inFlight || this.closed || !this.sid || !this.socket._queue.length) return;
    const values = this.socket._queue.slice(0, PADDING_WINDOW);
    this.inFlight = { rid: this.rid++, values };
    while (!this.closed) {
      try {
        const text = await this.post({ SID: this.sid, RID: this.inFlight.rid, AID: this.lastArrayId, t: this.retries + 1 }, values);
        // Ended meanwhile: the queue is no longer this channel's.
        if (this.closed) return;
        const state = { buf: text };
        const answer = JSON.parse(splitChunks(state)[0] || 'null');
        if (!Array.isArray(answer) || answer.length !== 3) throw new Failure(11);
        this.retries = 0;
        this.socket._queue.splice(0, values.length);
        this.nextMapId += values.length;
        this.inFlight = null;
        return this.flush();
      } catch (e) {
        const failure = e instanceof Failure ? e : new Failure(2, String(e));
        if (this.closed) return;
        if (failure.code !== 2 && failure.code !== 5 || this.socket.options.failFast || this.retries >= 2 || e.name === 'AbortError') {
          return this.fail(failure);
        }
        this.retries++;
        await new Promise((r) => setTimeout(r, this.retries === 1 ? 0 : 1000 * this.retries));
      }
    }
  }

  close() {
    if (this.closed) return;
    if (this.sid) {
      const init = { keepalive: true, credentials: this.credentials, headers: { ...this.socket.options.extraHeaders } };
      fetch(this.url('bind', { SID: this.sid, RID: this.rid++, TYPE: 'terminate' }), init).catch(() => {});
    }
    this.stop(null);
  }

  fail(e) {
    this.stop(e instanceof Failure ? e : new Failure(2, String(e)));
  }

  stop(failure) {
    if (this.closed) return;
    this.closed = true;
    for (const a of this.aborts) a.abort();
    this.socket._ended(failure);
  }
}

/** browserver's WebSocket session mode: sequenced binary frames, acks, resumption. */
class WsChannel {
  constructor(socket) {
    this.socket = socket;
    this.sid = null;
    this.resumeToken = null;
    this.lastArrayId = -1; // highest server position received in order
    this.nextSeq = 0; // next outgoing sequence number
    this.sent = []; // [{ seq, item }] not yet acknowledged
    this.closed = false;
    this.opened = false;
    this.lostAt = null; // when the connection dropped, while resuming
    this.resumeDelay = RESUME_FIRST_DELAY;
  }

  /** The items sent and not acknowledged. */
  takeUnacknowledged() {
    const pending = this.sent.map((m) => m.item);
    this.sent = [];
    return pending;
  }

  /** The connection dropped: resume the session, 100 ms then doubling to 2 s, for as long as
   * the server keeps a session without a connection (option resumeTimeout). */
  resume() {
    const now = Date.now();
    if (this.lostAt === null) this.lostAt = now;
    if (now - this.lostAt > this.socket.options.resumeTimeout) return this.fail(new Failure(2, 'Connection lost'));
    const delay = this.resumeDelay;
    this.resumeDelay = Math.min(RESUME_MAX_DELAY, delay * 2);
    setTimeout(() => !this.closed && this.start(true), delay);
  }

  start(resume) {
    let url = this.socket.options.wsUrl;
    const params = { ...this.socket.options.extraParams };
    if (resume) {
      params.resume = this.resumeToken || this.sid;
      if (this.lastArrayId >= 0) params.ack = this.lastArrayId;
    }
    const q = query(params);
    if (q) url += (url.includes('?') ? '&' : '?') + q;
    let ws;
    try {
      ws = new WebSocket(url, SUBPROTOCOL);
    } catch (e) {
      return this.fail(Object.assign(new Failure(2, String(e)), { websocketUnavailable: !this.opened }));
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.helloSeen = false;
    ws.onmessage = (e) => this.frame(new Uint8Array(e.data));
    ws.onclose = (e) => {
      if (this.ws !== ws || this.closed) return;
      if (e.code === 4001) return this.fail(new Failure(7));
      if (e.code === 4000) return this.fail(new Failure(6));
      if (!this.helloSeen && !this.opened) {
        return this.fail(Object.assign(new Failure(2, 'WebSocket unavailable'), { websocketUnavailable: true }));
      }
      // Dropped: resume the session.
      this.resume();
    };
  }

  frame(bytes) {
    const kind = String.fromCharCode(bytes[0]);
    if (kind === 'H') {
      const hello = JSON.parse(new TextDecoder().decode(bytes.subarray(1)));
      this.helloSeen = true;
      if (this.sid && !hello.resumed) return this.fail(new Failure(6));
      this.sid = hello.sid;
      // The secret that resumes this session; only this connection was given it.
      if (hello.token) this.resumeToken = hello.token;
      this.lostAt = null;
      this.resumeDelay = RESUME_FIRST_DELAY;
      if (hello.ack !== null) this.acknowledged(hello.ack);
      for (const m of this.sent) this.write(m.seq, m.item); // resend
      return this.flush();
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const seq = Number(view.getBigUint64(1));
    const payload = bytes.subarray(9);
    if (kind === 'A') return this.acknowledged(seq);
    if (seq !== this.lastArrayId + 1) return; // a duplicate after resumption
    this.lastArrayId = seq;
    if (kind === 'O') {
      this.opened = true;
      this.socket._opened();
    } else if (kind === 'S') {
      return this.fail(new Failure(7));
    } else if (kind === 'B') {
      this.socket._message(payload.slice());
    } else if (kind === 'T') {
      const text = new TextDecoder().decode(payload);
      let value;
      try { value = JSON.parse(text); } catch { value = text; }
      this.socket._message(value);
    }
    const ack = new Uint8Array(9);
    ack[0] = 65; // 'A'
    new DataView(ack.buffer).setBigUint64(1, BigInt(seq));
    if (this.ws.readyState === 1) this.ws.send(ack);
  }

  acknowledged(upto) {
    while (this.sent.length && this.sent[0].seq <= upto) this.sent.shift();
  }

  write(seq, item) {
    const [kind, body] = itemFrame(item);
    const frame = new Uint8Array(9 + body.length);
    frame[0] = kind.charCodeAt(0);
    new DataView(frame.buffer).setBigUint64(1, BigInt(seq));
    frame.set(body, 9);
    if (this.ws && this.ws.readyState === 1) this.ws.send(frame);
  }

  flush() {
    if (!this.helloSeen) return;
    for (const item of this.socket._queue.splice(0)) {
      const seq = this.nextSeq++;
      this.sent.push({ seq, item });
      this.write(seq, item);
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.ws) this.ws.close(1000);
    this.socket._ended(null);
  }

  fail(failure) {
    if (this.closed) return;
    this.closed = true;
    if (this.ws && this.ws.readyState <= 1) this.ws.close();
    this.socket._ended(failure);
  }
}

export default BCSocket;
