// Shared helpers for the Node test files: start the `bc_echo` test server.
'use strict';
const { spawn } = require('node:child_process');
const path = require('node:path');

const ECHO_BIN =
  process.env.BC_ECHO_BIN || path.join(__dirname, '..', 'target', 'debug', 'examples', 'bc_echo');

/** Starts the echo server on `addr` (default 127.0.0.1:0); resolves to { origin, base, ws,
 * addr, stop, output }. `stop()` resolves once the process has exited. */
function startServer(env = {}, addr = '127.0.0.1:0') {
  return new Promise((resolve, reject) => {
    const child = spawn(ECHO_BIN, [addr], {
      env: { ...process.env, BC_KEEPALIVE_MS: '1000', ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const exited = new Promise((done) => child.once('exit', done));
    const server = { stop: () => { child.kill(); return exited; }, output: () => out };
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (\S+)/);
      if (m && !server.base) {
        server.origin = `http://${m[1]}`;
        server.base = `${server.origin}/channel`;
        server.ws = `ws://${m[1]}/ws`;
        server.addr = m[1];
        resolve(server);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => { if (!server.base) reject(new Error(`echo server exited with ${code}`)); });
  });
}

async function withServer(env, body) {
  const server = await startServer(env);
  try {
    await body(server.base, server);
  } finally {
    await server.stop();
  }
}

module.exports = { startServer, withServer };
