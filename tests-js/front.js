// A round-robin load balancer without stickiness, for the cluster tests: what a user puts in
// front of several browserver nodes, at its least helpful.
//  - L4: each TCP connection goes to the next node (a keep-alive connection stays put).
//  - L7: each HTTP request goes to the next node, on a fresh connection; an upgrade (a
//    WebSocket) goes to the next node and is piped.
// A node that refuses the connection is skipped (the next one is tried), as balancers do.
//
// As a program: node front.js l4|l7 LISTEN_PORT BACKEND_PORT...; prints `listening on ADDR`.
// Loopback only.
'use strict';
const net = require('node:net');
const http = require('node:http');

/** Connects to the next backend that accepts; calls done(err, socket). */
function connectNext(state, done, tried = 0) {
  if (tried >= state.backends.length) return done(new Error('no backend accepts'));
  const port = state.backends[state.next++ % state.backends.length];
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.once('connect', () => { socket.removeAllListeners('error'); done(null, socket, port); });
  socket.once('error', () => connectNext(state, done, tried + 1));
}

function l4(state) {
  return net.createServer((client) => {
    client.pause();
    connectNext(state, (err, upstream) => {
      if (err) return client.destroy();
      state.sockets.add(client).add(upstream);
      const gone = () => { client.destroy(); upstream.destroy(); state.sockets.delete(client); state.sockets.delete(upstream); };
      client.on('error', gone).on('close', gone);
      upstream.on('error', gone).on('close', gone);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  });
}

function l7(state) {
  const server = http.createServer((req, res) => {
    connectNext(state, (err, socket) => {
      if (err) { res.writeHead(502); return res.end('front: no backend'); }
      const upstream = http.request({
        method: req.method,
        path: req.url,
        headers: req.headers,
        createConnection: () => socket,
      }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
        answer.on('error', () => res.destroy());
      });
      upstream.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end('front: backend failed'); } else res.destroy(); });
      res.on('close', () => upstream.destroy());
      req.pipe(upstream);
    });
  });
  server.on('upgrade', (req, client, head) => {
    connectNext(state, (err, upstream) => {
      if (err) return client.destroy();
      state.sockets.add(client).add(upstream);
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(raw + '\r\n');
      if (head.length) upstream.write(head);
      const gone = () => { client.destroy(); upstream.destroy(); state.sockets.delete(client); state.sockets.delete(upstream); };
      client.on('error', gone).on('close', gone);
      upstream.on('error', gone).on('close', gone);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  });
  return server;
}

/** Starts a front; resolves to { port, close, cut } (`cut` drops every piped connection). */
function startFront(kind, backends, port = 0) {
  const state = { backends, next: 0, sockets: new Set() };
  const server = kind === 'l4' ? l4(state) : l7(state);
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        close: () => { for (const s of state.sockets) s.destroy(); server.close(); },
        cut: () => { for (const s of state.sockets) s.destroy(); state.sockets.clear(); },
      });
    });
  });
}

module.exports = { startFront };

if (require.main === module) {
  const [kind, listen, ...ports] = process.argv.slice(2);
  if (!['l4', 'l7'].includes(kind) || !ports.length) {
    console.error('usage: node front.js l4|l7 LISTEN_PORT BACKEND_PORT...');
    process.exit(2);
  }
  startFront(kind, ports.map(Number), Number(listen)).then((f) => {
    console.log(`listening on 127.0.0.1:${f.port}`);
  });
  process.on('SIGTERM', () => process.exit(0));
}
