// The request inspector (/_browserver/inspect) in headless Chromium: a demo tab is the
// client, requests are sent to it, and the inspector — behind --admin-token — lists the
// client, its requests live, and their headers on click. A screenshot is written to
// target/inspector.png (checked to be a PNG).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { startBrowserver, get, launchChromium } = require('./support');

const TOKEN = 'inspector-test-admin-token-0123456789';
let browser;
let server;

before(async () => {
  server = await startBrowserver('127.0.0.1:0', ['--admin-token', TOKEN]);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.stop();
});

function post(port, host, urlPath, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: urlPath, method: 'POST', headers: { host, 'content-type': 'text/plain' } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function getWithHeader(port, host, urlPath, headers) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath, headers: { host, ...headers } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      })
      .on('error', reject);
  });
}

test('chromium: the inspector lists the client, its requests live, and their headers', async () => {
  const tab = await browser.newPage();
  await tab.goto(`http://${server.addr}/`);
  const link = tab.locator('#hostname[data-hostname]');
  await link.waitFor({ timeout: 15000 });
  const hostname = await link.getAttribute('data-hostname');
  const id = hostname.split('.')[0];
  const host = `${hostname}:${server.port}`;

  // A header value that would be markup if the page inserted it as HTML.
  const markup = '<img src=x onerror=alert(1)>';
  assert.equal(await getWithHeader(server.port, host, '/first?x=1', { 'x-probe': 'hello-inspector', 'x-markup': markup }), 200);
  assert.equal(await post(server.port, host, '/second', 'a body of 21 bytes...'), 200);
  assert.equal((await get(server.port, host, '/a%20path')).status, 200);

  const inspector = await browser.newPage();
  const dialogs = [];
  inspector.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await inspector.goto(`http://${server.addr}/_browserver/inspect#token=${TOKEN}`);
  assert.equal(new URL(inspector.url()).hash, '', 'the token leaves the address bar');
  const client = inspector.locator(`li[data-client="${id}"]`);
  await client.waitFor({ timeout: 15000 });
  await client.click();
  const rows = inspector.locator('tr.request');
  await rows.nth(2).waitFor({ timeout: 15000 });
  const text = await inspector.textContent('#requests');
  assert.match(text, /\/first\?x=1/);
  assert.match(text, /POST/);
  assert.match(text, /21 B/, 'the POST body size');

  // Live: a request sent now appears without a reload.
  assert.equal(await get(server.port, host, '/third').then((r) => r.status), 200);
  await inspector.locator('tr.request', { hasText: '/third' }).waitFor({ timeout: 15000 });

  // Headers on click.
  await inspector.locator('tr.request', { hasText: '/first?x=1' }).click();
  const details = inspector.locator('#details');
  await details.waitFor({ state: 'visible', timeout: 5000 });
  const shown = await details.textContent();
  assert.match(shown, /x-probe/);
  assert.match(shown, /hello-inspector/);
  assert.match(shown, /Response headers/);
  assert.ok(shown.includes(markup), 'the markup is shown as text');
  assert.equal(await inspector.locator('#details img').count(), 0, 'values are text, never markup');

  const shot = path.join(__dirname, '..', 'target', 'inspector.png');
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await inspector.screenshot({ path: shot, fullPage: true });
  const png = fs.readFileSync(shot);
  assert.ok(png.length > 2000, `a real screenshot (${png.length} bytes)`);
  assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');
  assert.deepEqual(dialogs, [], 'no script from the data ran');

  await inspector.close();
  await tab.close();
});

test('chromium: without the admin token the inspector shows nothing but a token form', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://${server.addr}/_browserver/inspect`);
  await page.locator('#login').waitFor({ state: 'visible', timeout: 15000 });
  assert.equal(await page.locator('li[data-client]').count(), 0);
  const api = await get(server.port, server.addr, '/_browserver/api/requests?client=x');
  assert.equal(api.status, 401);
  // A wrong token is refused too, and the right one opens it.
  await page.fill('#token', 'wrong');
  await page.click('#login button');
  await page.waitForFunction(() => document.getElementById('state').textContent.includes('wrong admin token'));
  await page.fill('#token', TOKEN);
  await page.click('#login button');
  await page.locator('#login').waitFor({ state: 'hidden', timeout: 15000 });
  await context.close();
});
