// Builds dist/ from the sources the Rust crates serve (one copy of each client):
//   ../transport-bc/js/bcsocket.js  (served by the BrowserChannel endpoint at <base>/bcsocket.js)
//   ../server/web/browserver.js     (served by the browserver server at /browserver.js)
// plus src/index.js (the package entry) and the hand-written type declarations in src/, and a
// script-tag build (dist/browserver.global.js: globals `browserver` and `BCSocket`) by esbuild.
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
const copies = [
  ['../transport-bc/js/bcsocket.js', 'bcsocket.js'],
  ['../server/web/browserver.js', 'browserver.js'],
  ['src/index.js', 'index.js'],
  ['src/global.js', 'global.js'],
  ['src/index.d.ts', 'index.d.ts'],
  ['src/bcsocket.d.ts', 'bcsocket.d.ts'],
  ['src/browserver.d.ts', 'browserver.d.ts'],
  ['../LICENSE-MIT', '../LICENSE-MIT'],
  ['../LICENSE-APACHE', '../LICENSE-APACHE'],
];
for (const [from, to] of copies) copyFileSync(join(here, from), join(dist, to));
await build({
  entryPoints: [join(dist, 'global.js')],
  outfile: join(dist, 'browserver.global.js'),
  bundle: true,
  format: 'iife',
  globalName: 'browserver',
  target: 'es2020',
  logLevel: 'warning',
});
rmSync(join(dist, 'global.js'));
