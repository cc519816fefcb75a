// node-browserchannel's own server (npm browserchannel@2.1.0) as an echo server for
// benches/compare: every message goes back to its session. Defaults kept (base /channel).
// Prints `listening on ADDR`.
'use strict';
const http = require('node:http');
const browserChannel = require('browserchannel').server;

const middleware = browserChannel({ base: '/channel' }, (session) => {
  session.on('message', (data) => session.send(data));
});
const server = http.createServer((req, res) =>
  middleware(req, res, () => {
    res.writeHead(404);
    res.end('Not found');
  }),
);
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
