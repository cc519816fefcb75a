// The script-tag build: `browserver.BCSocket`, `browserver.createServer`,
// `browserver.request`, and `BCSocket` as a global as node-browserchannel's script defines it.
import { BCSocket, createServer, request } from './index.js';

globalThis.BCSocket = BCSocket;
export { BCSocket, createServer, request };
