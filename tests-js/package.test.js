// The npm package (js/) as a user gets it: `npm pack`, installed into a fresh project, then
// imported in Node (BCSocket against the echo server; createServer as a host behind a real
// browserver) and in headless Chromium (as an ES module and as a script tag).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer, startBrowserver, get, launchChromium } = require('./support');

const JS = path.join(__dirname, '..', 'js');
let work;
let installed; // the package as installed: <project>/node_modules/browserver-js
let browser;

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'browserver-js-'));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: JS, encoding: 'utf8' });
  const tarball = path.join(work, packed.trim().split('\n').pop());
  const project = path.join(work, 'project');
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'user', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball], { cwd: project });
  installed = path.join(project, 'node_modules', 'browserver-js');
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** Runs `source` as an ES module inside the user's project; resolves to its stdout. */
function runInProject(source, args = [], onLine = () => {}) {
  const file = path.join(installed, '..', '..', `check-${Date.now()}.mjs`);
  fs.writeFileSync(file, source);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      for (const line of String(d).split('\n').filter(Boolean)) onLine(line, child);
    });
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}: ${out}`))));
  });
}

test('the packed package holds what package.json promises', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  for (const target of Object.values(pkg.exports)) {
    for (const file of typeof target === 'string' ? [target] : Object.values(target)) {
      assert.ok(fs.existsSync(path.join(installed, file)), `${file} is in the package`);
    }
  }
  for (const file of ['README.md', 'LICENSE-MIT', 'LICENSE-APACHE']) {
    assert.ok(fs.existsSync(path.join(installed, file)), file);
  }
});

test('node: the package imports and its BCSocket exchanges messages over BrowserChannel', async () => {
  const server = await startServer({});
  try {
    const out = await runInProject(`
      import { BCSocket } from 'browserver-js';
      import { BCSocket as Same } from 'browserver-js/bcsocket';
      if (Same !== BCSocket) throw new Error('two BCSockets');
      const s = new BCSocket(process.argv[2]);
      const got = [];
      s.onopen = () => { s.send({ n: 1 }); s.sendMap({ k: 'v' }); s.send('text'); };
      s.onmessage = (e) => {
        got.push(e.data);
        if (got.length === 3) { s.close(); console.log(JSON.stringify(got)); }
      };
      setTimeout(() => { console.error('timed out', got); process.exit(1); }, 10000).unref();
    `, [server.base]);
    assert.deepEqual(JSON.parse(out), [{ n: 1 }, { k: 'v' }, 'text']);
  } finally {
    await server.stop();
  }
});



test('node: createServer makes a Node program an HTTP server behind browserver', async () => {
  const proxy = await startBrowserver();
  try {
    let answered;
    const served = new Promise((resolve) => { answered = resolve; });
    const run = runInProject(`
      import { createServer } from 'browserver-js';
      const server = createServer(async (req, res) => {
        res.writeHead(201, { 'content-type': 'text/plain' });
        res.end('from node: ' + req.method + ' ' + req.url);
      });
      const hostname = await server.listen({ channel: process.argv[2], ws: null });
      console.log('hostname ' + hostname);
      setTimeout(() => { server.close(); process.exit(0); }, 3000);
    `, [`http://${proxy.addr}/channel`], async (line) => {
      const m = line.match(/^hostname (\S+)/);
      if (m) answered(await get(proxy.port, m[1], '/x?y=1'));
    });
    const response = await served;
    assert.deepEqual([response.status, response.body], [201, 'from node: GET /x?y=1']);
    await run;
  } finally {
    proxy.stop();
  }
});

/** In Chromium: the package's files served under /pkg/ of the echo server's origin. */
async function pageWithPackage(server) {
  const page = await browser.newPage();
  await page.route(`${server.origin}/pkg/**`, (route) => {
    const file = path.join(installed, new URL(route.request().url()).pathname.slice('/pkg/'.length));
    route.fulfill({ path: file, contentType: 'text/javascript' });
  });
  await page.goto(`${server.origin}/`);
  return page;
}


test('chromium: the package imports as an ES module and as a script tag', async () => {
  const server = await startServer({});
  const page = await pageWithPackage(server);
  try {
    const viaModule = await page.evaluate(async (ws) => {
      const { BCSocket, createServer } = await import('/pkg/dist/index.js');
      if (typeof createServer !== 'function') throw new Error('no createServer');
      const s = new BCSocket('/channel', { wsUrl: ws });
      return new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error('timed out')), 10000);
        s.onopen = () => s.send({ from: 'module' });
        s.onmessage = (e) => { s.close(); resolve(e.data); };
      });
    }, server.ws);
    assert.deepEqual(viaModule, { from: 'module' });

    await page.addScriptTag({ url: '/pkg/dist/browserver.global.js' });
    const viaScript = await page.evaluate(async () => {
      if (window.browserver.BCSocket !== window.BCSocket) throw new Error('two globals disagree');
      const s = new window.BCSocket('/channel');
      return new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error('timed out')), 10000);
        s.onopen = () => s.send({ from: 'script tag' });
        s.onmessage = (e) => { s.close(); resolve(e.data); };
      });
    });
    assert.deepEqual(viaScript, { from: 'script tag' });
  } finally {
    await page.close();
    await server.stop();
  }
});

test('the type declarations compile against a usage file (tsc --strict)', () => {
  execFileSync(path.join(JS, 'node_modules', '.bin', 'tsc'), ['-p', path.join(JS, 'test', 'tsconfig.json')], { stdio: 'inherit' });
});
