// Compiled (not run) by `npm run typecheck`: the declarations describe the API as documented.
import browserver, { BCSocket, createServer, request, type CloseInfo, type IncomingRequest } from '../dist/index.js';
import { BCSocket as Direct } from '../dist/bcsocket.js';

const socket: BCSocket = new BCSocket('/channel', { reconnect: true, maxReconnectAttempts: 5, extraHeaders: { 'x-a': 'b' } });
socket.onmessage = (event) => console.log(event.data.anything);
socket.onclose = (reason: string, pending: unknown[], undelivered: unknown[], info: CloseInfo) => {
  if (info.reconnecting) console.log(reason, pending.length + undelivered.length, info.delay);
};
socket.send({ hello: 'world' });
socket.sendMap({ k: 'v', n: 1 });
if (socket.readyState === BCSocket.CLOSED) socket.open();
const other: Direct = socket;
other.close();

socket.sendBinary(new Uint8Array([1, 2, 3]));

const server = createServer(async (req: IncomingRequest, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  const text: string = await req.text();
  const reader = req.body?.getReader();
  if (reader) await reader.cancel();
  await res.write(`${req.method} ${req.url} ${text.length}`);
  res.end();
});
server.onconnect = (hostname) => console.log(hostname.toUpperCase());
server.ondisconnect = (reason, reconnecting) => console.log(reason, reconnecting);
const hostname: Promise<string> = server.listen({ channel: 'http://127.0.0.1:3572/channel', ws: null });
void hostname;
void request({ host: 'x.localhost', path: '/' }).then((r) => r.statusCode + r.body.length);
void browserver.createServer;

// @ts-expect-error: streamed requests have no text body property
createServer((req: IncomingRequest) => req.body.toUpperCase());
// @ts-expect-error: send takes one value
socket.send(1, 2);
// @ts-expect-error: no such transport
new BCSocket('/c', { transport: 'smoke-signals' });
