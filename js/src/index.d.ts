// browserver-js: BCSocket, and createServer/request over this package's BCSocket.
import { BCSocket } from './bcsocket.js';
import { createServer, request } from './browserver.js';

export { BCSocket, createServer, request };
export type { BCSocketOptions, BCMessageEvent, CloseInfo, ReadyState } from './bcsocket.js';
export type {
  Chunk, Handler, IncomingRequest, ListenOptions, ProxiedResponse, RequestOptions, Server, ServerResponse,
} from './browserver.js';

declare const _default: { BCSocket: typeof BCSocket; createServer: typeof createServer; request: typeof request };
export default _default;
