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
      stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: process.env.SERVER_LOG || 'warn' },
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

/** A free loopback port (bound and released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = require('node:net').createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** A throwaway redis-server on a free loopback port; resolves to { url, port, stop }. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((done) => child.once('exit', done));
  await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => { out += d; if (/Ready to accept connections/.test(out)) resolve(); });
    child.on('error', (e) => reject(new Error(`redis-server: ${e.message} (scripts/test installs it)`)));
    child.on('exit', (code) => reject(new Error(`redis-server exited with ${code}`)));
  });
  child.stdout.resume();
  return { url: `redis://127.0.0.1:${port}`, port, stop: () => { child.kill(); return exited; } };
}

/** Redis, three `browserver` nodes (`args`: e.g. ['echo']) sharing it, and a round-robin
 * front (`kind`: 'l4' or 'l7'); resolves to { origin, base, ws, nodes, front, redis, stop }. */
async function startCluster(kind, args = []) {
  const { startFront } = require('./front');
  const redis = await startRedis();
  const nodes = [];
  try {
    for (const id of ['n1', 'n2', 'n3']) {
      nodes.push(await startBrowserver('127.0.0.1:0', ['--redis', redis.url, '--node-id', id, '--cluster-ttl', '3s', ...args]));
    }
  } catch (e) {
    await Promise.all(nodes.map((n) => n.stop()));
    await redis.stop();
    throw e;
  }
  const front = await startFront(kind, nodes.map((n) => n.port));
  const origin = `http://127.0.0.1:${front.port}`;
  return {
    origin, base: `${origin}/channel`, ws: `ws://127.0.0.1:${front.port}/ws`, nodes, front, redis,
    stop: async () => { front.close(); await Promise.all(nodes.map((n) => n.stop())); await redis.stop(); },
  };
}

/** Like withServer, on an echo cluster behind a round-robin front (INTEROP_CLUSTER=l4|l7). */
async function withCluster(kind, body, args = []) {
  const cluster = await startCluster(kind, ['echo', ...args]);
  try {
    await body(cluster.base, cluster);
  } finally {
    await cluster.stop();
  }
}

module.exports = { startServer, withServer, startBrowserver, get, launchChromium, startRedis, startCluster, withCluster };
