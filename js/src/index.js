// browserver-js: BCSocket, and createServer/request whose connection uses this package's
// BCSocket (nothing is loaded from the server).
import { BCSocket } from './bcsocket.js';
import { createServer as createServerWith, request } from './browserver.js';

export { BCSocket, request };

/** A page (or program) as an HTTP server behind a browserver proxy; see browserver.d.ts. */
export function createServer(handler) {
  const server = createServerWith(handler);
  const listen = server.listen;
  server.listen = (options = {}) => listen.call(server, { BCSocket, ...options });
  return server;
}

export default { BCSocket, createServer, request };
