// Types of bcsocket.js: node-browserchannel's BCSocket API over BrowserChannel or browserver's
// WebSocket session mode.

/** Options of a BCSocket; every one is optional. */
export interface BCSocketOptions {
  /** Reconnect (a new session) after a session ends, unless the server stopped it. Default false. */
  reconnect?: boolean;
  /** The first reconnect delay in ms; doubles per failed attempt. Default 3000. */
  reconnectTime?: number;
  /** The largest reconnect delay in ms. Default 30000. */
  maxReconnectTime?: number;
  /** Consecutive failed attempts before giving up. Default Infinity. */
  maxReconnectAttempts?: number;
  /** Sent as `CVER`; the server's `Session::app_version`. */
  appVersion?: string | number | null;
  /** Report a failed request at once instead of retrying it. Default false. */
  failFast?: boolean;
  /** Send credentials and use the server's host prefix. Default false. */
  crossDomainXhr?: boolean;
  /** Add a random session-affinity token to every request. Default true. */
  affinity?: boolean | null;
  /** The affinity token's query parameter. Default 'a'. */
  affinityParam?: string;
  /** Extra query parameters on every request. */
  extraParams?: Record<string, string | number | boolean>;
  /** Extra headers on every BrowserChannel request (a browser cannot put headers on a WebSocket). */
  extraHeaders?: Record<string, string>;
  /** An earlier socket whose session this one replaces (`OSID`/`OAID`). */
  prev?: BCSocket;
  /** Default 'auto' when `wsUrl` is set, else 'browserchannel'. */
  transport?: 'auto' | 'browserchannel' | 'websocket';
  /** The WebSocket endpoint, e.g. 'ws://host:3572/ws'. */
  wsUrl?: string | null;
  /** How long a dropped WebSocket session is resumed, in ms. Default 25000. */
  resumeTimeout?: number;
}

/** What `onclose` is told besides the reason. */
export interface CloseInfo {
  /** 0: closed; 2: request failed; 6: unknown session; 7: stopped by the server; … */
  code: number;
  /** Whether a reconnect follows (then `readyState` is CONNECTING). */
  reconnecting: boolean;
  /** The delay before that reconnect, in ms. */
  delay?: number;
}

/** A message from the server: `data` is the JSON value (a map arrives as an object). */
export interface BCMessageEvent<T = any> {
  type: 'message';
  data: T;
}

export type ReadyState = 0 | 1 | 2 | 3;

export declare class BCSocket {
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  constructor(url: string, options?: BCSocketOptions);

  /** The BrowserChannel base URL, without a trailing slash. */
  readonly url: string;
  readonly options: Required<Pick<BCSocketOptions, 'reconnect' | 'reconnectTime' | 'maxReconnectTime' | 'maxReconnectAttempts' | 'transport'>> & BCSocketOptions;
  /** CONNECTING (also while a reconnect is pending), OPEN, CLOSING or CLOSED. */
  readonly readyState: ReadyState;

  onconnecting: ((this: BCSocket) => void) | null;
  onopen: ((this: BCSocket) => void) | null;
  onmessage: ((this: BCSocket, event: BCMessageEvent) => void) | null;
  onerror: ((this: BCSocket, message: string, code: number) => void) | null;
  /**
   * Once per session (or failed attempt). `pending`: sent, not acknowledged (the server may or
   * may not have them); `undelivered`: never sent. Neither is resent in a new session.
   */
  onclose:
    | ((this: BCSocket, reason: string, pending: unknown[], undelivered: unknown[], info: CloseInfo) => void)
    | null;

  /** Sends a JSON value (a string travels as `_S`). Throws once the socket is closed. */
  send(value: unknown): void;
  /** Sends a map of strings; the server receives a map. Throws once the socket is closed. */
  sendMap(map: Record<string, string | number | boolean>): void;
  /** Sends bytes: a binary message over WebSocket; over BrowserChannel a map whose `f` is
   * the bytes in base64. Binary messages from the server arrive as `Uint8Array`. */
  sendBinary(bytes: Uint8Array | ArrayBuffer): void;
  /** Connects a closed socket again (a new session); throws unless CLOSED. */
  open(): void;
  /** Closes the session; no reconnect follows. */
  close(): void;
}

export default BCSocket;
