// The proxy with real browser tabs: the demo page at `/` (browserver.js over BCSocket) turns
// headless Chromium into an HTTP server behind `browserver`.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startBrowserver, get, launchChromium } = require('./support');

let browser;
let server;



before(async () => {
  server = await startBrowserver();
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.stop();
});

async function demoPage() {
  const page = await browser.newPage();
  await page.goto(`http://${server.addr}/`);
  const link = page.locator('#hostname[data-hostname]');
  await link.waitFor({ timeout: 15000 });
  return { page, hostname: await link.getAttribute('data-hostname') };
}

test('chromium: the demo page answers HTTP requests sent to its hostname', async () => {
  const { page, hostname } = await demoPage();
  assert.match(hostname, /^[a-z0-9-]+\.localhost$/);
  const r = await get(server.port, `${hostname}:${server.port}`, '/hello?x=1');
  assert.equal(r.status, 200);
  assert.equal(r.body, `Hello from ${server.addr}'s tab: GET /hello?x=1\n`);
  // A real browser navigation to http://<id>.localhost:PORT/ reaches the tab too.
  const visitor = await browser.newPage();
  const response = await visitor.goto(`http://${hostname}:${server.port}/from-a-browser`);
  assert.equal(response.status(), 200);
  assert.match(await visitor.textContent('body'), /GET \/from-a-browser/);
  assert.match(await page.textContent('#log'), /GET \/from-a-browser/);
  await visitor.close();
  await page.close();
});

test('chromium: a second page calls the first one through the proxy', async () => {
  const first = await demoPage();
  const second = await demoPage();
  const r = await second.page.evaluate(async (host) => {
    const { request } = await import('/browserver.js');
    return request({ host, path: '/from-page-2' });
  }, `${first.hostname}:${server.port}`);
  assert.equal(r.statusCode, 200);
  assert.match(r.body, /GET \/from-page-2/);
  await first.page.close();
  await second.page.close();
});

test('chromium: a closed tab makes its hostname answer 504', async () => {
  const { page, hostname } = await demoPage();
  await page.close();
  let status = 0;
  for (let i = 0; i < 50 && status !== 504; i++) {
    status = (await get(server.port, hostname, '/')).status;
    if (status !== 504) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(status, 504);
});
