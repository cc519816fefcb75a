// Types of browserver.js: a page (or program) as an HTTP server behind a browserver proxy.
import type { BCSocket } from './bcsocket.js';

/** A request for this client's hostname, streamed (the default). */
export interface IncomingRequest {
  method: string;
  /** The request target: path and query. */
  url: string;
  /** Header names in lower case; repeated headers joined with ', '. */
  headers: Record<string, string>;
  /** The body as it arrives (`null`: the request has none). Its credit goes back to the
   * proxy as the page reads it: an unread body stalls the visitor's upload. */
  body: ReadableStream<Uint8Array> | null;
  /** The whole body. */
  bytes(): Promise<Uint8Array>;
  arrayBuffer(): Promise<ArrayBuffer>;
  text(): Promise<string>;
}

/** A request in the whole-message form (`listen({ streams: false })`). */
export interface WholeRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
  /** The body as UTF-8 text. */
  body: string;
  bodyBytes: Uint8Array;
}

export type Chunk = string | Uint8Array | ArrayBuffer;

/** The answer being written (Node's `http.ServerResponse`, in part). */
export interface ServerResponse {
  statusCode: number;
  /** [name, value] pairs, names in lower case. */
  headers: [string, string][];
  /** Set once `end()` was called. */
  readonly finished: boolean;
  setHeader(name: string, value: string | number | Array<string | number>): void;
  writeHead(status: number, headers?: Record<string, string | number | Array<string | number>>): ServerResponse;
  /** Sends a chunk (the headers first, if not yet sent); resolves `true` once it went out
   * (the proxy had room: await it to go at the visitor's pace), `false` if the visitor went
   * away. */
  write(chunk: Chunk): Promise<boolean> | void;
  /** Ends the answer, with a last chunk. */
  end(chunk?: Chunk): Promise<boolean> | void;
}

/** Answers each request; may answer later. Throwing, or a rejected promise, answers 500
 * (or cuts the answer off, once it started). With `streams: false`, `req` is a
 * {@link WholeRequest}. */
export type Handler = (req: IncomingRequest, res: ServerResponse) => void | Promise<unknown>;

export interface ListenOptions {
  /** The BrowserChannel base. Default '/channel' (an absolute URL outside a page). */
  channel?: string;
  /** The WebSocket URL. Default: this page's `/ws`. */
  ws?: string | null;
  /** Reconnect after the connection is lost. Default true. */
  reconnect?: boolean;
  /** The first reconnect delay in ms (doubling). Default 1000. */
  reconnectTime?: number;
  /** The largest reconnect delay in ms. Default 30000. */
  maxReconnectTime?: number;
  /** The BCSocket class to use. Default: the server's `<channel>/bcsocket.js` (the package entry passes its own). */
  BCSocket?: typeof BCSocket;
  /** Streams (default true); false: the whole-message form of earlier versions. */
  streams?: boolean;
}

export interface Server {
  /** `<name>.<domain>` once connected; a reconnect may change it. */
  hostname: string | null;
  id: string | null;
  connected: boolean;
  onconnect: ((hostname: string) => void) | null;
  ondisconnect: ((reason: string, reconnecting: boolean) => void) | null;
  handler: Handler;
  /** Connects; resolves to the hostname once the proxy gave one. */
  listen(options?: ListenOptions): Promise<string>;
  close(): void;
}

export declare function createServer(handler: Handler): Server;

export interface RequestOptions {
  method?: string;
  /** The whole target instead of `host` and `path`: `https://…` goes out over TLS (the
   * proxy's egress), `http://…` as `host` and `path`. */
  url?: string;
  /** Another client's hostname, or a server egress may reach (without `url`). */
  host?: string;
  path?: string;
  headers?: Record<string, string | number>;
  body?: Chunk;
}

export interface ProxiedResponse {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
  bodyBytes: Uint8Array;
}

/** Sends a request through the proxy, over the connection of the last `listen()`. */
export declare function request(options: RequestOptions): Promise<ProxiedResponse>;

declare const _default: { createServer: typeof createServer; request: typeof request };
export default _default;
