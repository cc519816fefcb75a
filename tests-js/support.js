// Shared helpers for the Node test files: the `bc_echo` test server, the `browserver` binary,
// headless Chromium, plain HTTP GETs.
'use strict';
const { spawn } = require('node:child_process');
const http = require('node:http');
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

const BROWSERVER_BIN =
  process.env.BROWSERVER_BIN || path.join(__dirname, '..', 'target', 'debug', 'browserver');

/** Starts `browserver` on `addr` (default 127.0.0.1:0); resolves to { addr, port, stop }.
 * `stop()` resolves once the process has exited. */
function startBrowserver(addr = '127.0.0.1:0', args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(BROWSERVER_BIN, ['--listen', addr, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' },
    });
    const exited = new Promise((done) => child.once('exit', done));
    let out = '';
    let up = false;
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (\S+)/);
      if (m && !up) {
        up = true;
        resolve({ addr: m[1], port: Number(m[1].split(':')[1]), stop: () => { child.kill(); return exited; } });
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => { if (!up) reject(new Error(`browserver exited with ${code}`)); });
  });
}

/** A GET to 127.0.0.1:`port` with this `Host`; resolves to { status, body, ms }. */
function get(port, host, urlPath) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    http
      .get({ host: '127.0.0.1', port, path: urlPath, headers: { host } }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body, ms: Date.now() - started }));
      })
      .on('error', reject);
  });
}

/** Debian's Chromium, headless, as every browser test runs it. */
function launchChromium() {
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

module.exports = { startServer, withServer, startBrowserver, get, launchChromium };
