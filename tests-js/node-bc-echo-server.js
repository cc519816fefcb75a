// node-browserchannel's own server (npm browserchannel@2.1.0) as an echo server, for the
// reverse interop tests of the Rust client (client/tests/reverse_interop.rs).
// Prints `listening on ADDR`, and `closed ID REASON` when a session ends. The messages
// "stop" and "close" make the server stop / close the session.
'use strict';
const http = require('node:http');
const browserChannel = require('browserchannel').server;

const middleware = browserChannel({ base: '/channel' }, (session) => {
  session.on('message', (data) => {
    if (data === 'stop') session.stop(() => session.close());
    else if (data === 'close') session.close();
    else session.send(data);
  });
  session.on('close', (reason) => console.log(`closed ${session.id} ${reason}`));
});

const server = http.createServer((req, res) =>
  middleware(req, res, () => {
    res.writeHead(404);
    res.end('Not found');
  }),
);
server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
