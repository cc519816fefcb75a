// TLS with real browser tabs. The demo page served over HTTPS (--tls-cert) connects over WSS
// and shows an https:// address that reaches it. Egress over HTTPS from a tab:
// `request({ url: 'https://…' })` in browserver.js, the proxy performing it over TLS against a
// local HTTPS server whose CA it was given (--egress-ca), under the address policy
// (--egress-allow for loopback).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { startBrowserver, launchChromium } = require('./support');

let dir;
let target;
let browser;

/** A throwaway CA and a certificate for localhost signed by it (openssl). */
function makeCertificates() {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'browserver-egress-'));
  const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=browserver test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=localhost']);
  fs.writeFileSync(path.join(dir, 'leaf.ext'),
    'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run(['x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'leaf.pem', '-days', '1', '-extfile', 'leaf.ext']);
}

before(async () => {
  makeCertificates();
  target = https.createServer(
    { key: fs.readFileSync(path.join(dir, 'leaf.key')), cert: fs.readFileSync(path.join(dir, 'leaf.pem')) },
    (req, res) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(`secure ${req.method} ${req.url}`); },
  );
  await new Promise((resolve) => target.listen(0, '127.0.0.1', resolve));
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (target) target.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function tabOf(server) {
  const page = await browser.newPage();
  await page.goto(`http://${server.addr}/`);
  await page.locator('#hostname[data-hostname]').waitFor({ timeout: 15000 });
  return page;
}

const fetchFrom = (page, url) => page.evaluate(async (u) => {
  const { request } = await import('/browserver.js');
  const r = await request({ url: u });
  return { status: r.statusCode, body: r.body };
}, url);

test('chromium: the demo page over https connects over wss and links to an https address that reaches it', async () => {
  const server = await startBrowserver('127.0.0.1:0', [
    '--tls-cert', path.join(dir, 'leaf.pem'), '--tls-key', path.join(dir, 'leaf.key'),
  ]);
  // The certificate names localhost, not the clients' names: this browser accepts it as is.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    await page.goto(`https://localhost:${server.port}/`);
    const link = page.locator('#hostname[data-hostname]');
    await link.waitFor({ timeout: 15000 });
    const address = await link.textContent();
    assert.match(address, new RegExp(`^https://[a-z0-9]+\\.localhost:${server.port}/$`));
    const visitor = await context.newPage();
    const response = await visitor.goto(`${address}over-tls`);
    assert.equal(response.status(), 200);
    assert.match(await visitor.textContent('body'), /GET \/over-tls/);
  } finally {
    await context.close();
    server.stop();
  }
});

test('chromium: a tab sends an https request out through the proxy, which verifies the target', async () => {
  const port = target.address().port;
  const url = `https://localhost:${port}/over-tls?q=1`;
  const trusting = await startBrowserver('127.0.0.1:0', [
    '--egress-allow', `localhost:${port}`, '--egress-ca', path.join(dir, 'ca.pem'),
  ]);
  const untrusting = await startBrowserver('127.0.0.1:0', ['--egress-allow', `localhost:${port}`]);
  try {
    const page = await tabOf(trusting);
    assert.deepEqual(await fetchFrom(page, url), { status: 200, body: 'secure GET /over-tls?q=1' });
    const other = await tabOf(untrusting);
    const refused = await fetchFrom(other, url);
    assert.equal(refused.status, 502);
    assert.match(refused.body, /TLS/);
    await page.close();
    await other.close();
  } finally {
    trusting.stop();
    untrusting.stop();
  }
});
