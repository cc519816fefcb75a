// Socket.IO 4 echo server for benches/compare: every "echo" event goes back to its sender.
// Both Engine.IO transports (WebSocket and HTTP long-polling) on one port, defaults kept.
// Prints `listening on ADDR`.
'use strict';
const http = require('node:http');
const { Server } = require('socket.io');

const server = http.createServer();
const io = new Server(server, { serveClient: false });
io.on('connection', (socket) => {
  socket.on('echo', (message) => socket.emit('echo', message));
});
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
