#!/usr/bin/env node
// Real-kernel tier: runs test/kernel/guest/*.test.js with node's test runner inside a Linux 6.12
// guest (../shared/kernel-vfio: QEMU TCG, mtty mdevs with VFIO migration v2), against real
// /dev/vfio devices, using the compiled library (dist/), the addon (build/Release) and the
// runtime dependencies staged into the guest's /project.
//
// Usage: node test/kernel/run.js [--filter NAME] [-v]
// Under CI=true a missing harness is a failure, never a skip.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '../..');
const HARNESS = process.env.VFIO_KERNEL_HARNESS || path.resolve(ROOT, '../shared/kernel-vfio');
const args = process.argv.slice(2);
const verbose = args.includes('-v');
const filterAt = args.indexOf('--filter');
const filter = filterAt >= 0 ? args[filterAt + 1] : undefined;

function fail(msg) {
  console.error(`test:kernel: ${msg}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

if (!fs.existsSync(path.join(HARNESS, 'run.sh'))) {
  if (process.env.CI === 'true') fail(`no kernel harness at ${HARNESS} (required under CI=true)`);
  console.log(`test:kernel: SKIPPED: no kernel harness at ${HARNESS}`);
  process.exit(0);
}
for (const need of ['dist/src/index.js', 'build/Release/vfio_pci.node']) {
  if (!fs.existsSync(path.join(ROOT, need))) fail(`${need} is missing: run npm install / npm run build first`);
}

// ---- stage /project: dist, bin, addon build, package.json, guest tests, runtime deps
const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-kernel-stage-'));
const copy = (rel, filterFn) => fs.cpSync(path.join(ROOT, rel), path.join(stage, rel), { recursive: true, filter: filterFn });
copy('dist', (src) => !src.endsWith('.map') && !src.includes(`${path.sep}bench${path.sep}`));
copy('bin');
copy('package.json');
copy('build/Release/vfio_pci.node');
if (fs.existsSync(path.join(ROOT, 'build-cmake/Release/vfio_pci.node'))) copy('build-cmake/Release/vfio_pci.node');
copy('test/kernel/guest');

// Runtime dependencies, recursively, from package.json "dependencies". koffi ships prebuilt
// binaries for every platform: only this one's goes in.
const seen = new Set();
function stageDep(name, fromDir) {
  // Node's lookup, by hand: require.resolve(`${name}/package.json`) fails for a package whose
  // "exports" omits it (commander).
  let dir;
  for (let at = fromDir; !dir; at = path.dirname(at)) {
    const d = path.join(at, 'node_modules', name);
    if (fs.existsSync(path.join(d, 'package.json'))) dir = d;
    else if (path.dirname(at) === at) throw new Error(`runtime dependency ${name} not found from ${fromDir}`);
  }
  const pkgJson = path.join(dir, 'package.json');
  if (seen.has(dir)) return;
  seen.add(dir);
  const rel = path.relative(ROOT, dir);
  const plat = `${process.platform}_${process.arch}`;
  fs.cpSync(dir, path.join(stage, rel), {
    recursive: true,
    filter: (src) => {
      const m = /[\\/]build[\\/]koffi[\\/]([^\\/]+)/.exec(src);
      return !m || m[1] === plat;
    },
  });
  const pj = JSON.parse(fs.readFileSync(pkgJson, 'utf8'));
  for (const dep of Object.keys(pj.dependencies || {})) stageDep(dep, dir);
}
for (const dep of Object.keys(require(path.join(ROOT, 'package.json')).dependencies || {})) {
  if (dep === 'node-addon-api') continue; // headers only
  stageDep(dep, ROOT);
}

// Shared libraries the addon needs beyond node's own (none today; kept for a toolchain that adds one):
// the guest has only node's libraries, so they go to /project/lib and LD_LIBRARY_PATH.
const libsOf = (file) => {
  const r = spawnSync('ldd', [file], { encoding: 'utf8' });
  return new Set((r.stdout || '').split('\n').map((l) => /=> (\/\S+)/.exec(l)?.[1]).filter(Boolean));
};
const nodeLibs = libsOf(process.execPath);
const extraLibs = [...libsOf(path.join(ROOT, 'build/Release/vfio_pci.node'))].filter((l) => !nodeLibs.has(l));
if (extraLibs.length) {
  fs.mkdirSync(path.join(stage, 'lib'), { recursive: true });
  for (const l of extraLibs) fs.copyFileSync(l, path.join(stage, 'lib', path.basename(l)));
  console.log(`test:kernel: staged for the addon: ${extraLibs.map((l) => path.basename(l)).join(', ')}`);
}

const guestArgs = ['--test', '--test-reporter=tap'];
if (filter) guestArgs.push(`--test-name-pattern=${filter}`);
guestArgs.push(...fs.readdirSync(path.join(stage, 'test/kernel/guest')).filter((f) => f.endsWith('.test.js')).sort().map((f) => `test/kernel/guest/${f}`));

const runArgs = ['-n', '4', '-m', '1G', '-T', '900', '-d', stage, 'env', 'LD_LIBRARY_PATH=/project/lib', 'node', ...guestArgs];
console.log(`test:kernel: booting the guest (${HARNESS}/run.sh ${runArgs.slice(0, 6).join(' ')} ...)`);
const t0 = Date.now();
const res = spawnSync(path.join(HARNESS, 'run.sh'), runArgs, { encoding: 'utf8', maxBuffer: 256 << 20 });
fs.rmSync(stage, { recursive: true, force: true });
const outText = `${res.stdout || ''}`;
if (verbose || res.status !== 0) process.stdout.write(outText);
else {
  // Print the TAP test lines (ok / not ok) so CI logs show what ran.
  for (const line of outText.split('\n')) if (/^\s*(not )?ok \d+ /.test(line) || /^# (pass|fail|tests)/.test(line)) console.log(line);
}
if (res.stderr && (verbose || res.status !== 0)) process.stderr.write(res.stderr);

const num = (re) => {
  const m = re.exec(outText);
  return m ? Number(m[1]) : undefined;
};
const passed = num(/^# pass (\d+)/m);
const failed = num(/^# fail (\d+)/m);
console.log(`test:kernel: guest exited ${res.status} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
if (passed === undefined || failed === undefined) fail(`the guest printed no test summary (exit ${res.status}); console log: ~/.cache/vfio-kernel/last-console.log`);
if (passed === 0) fail('no kernel test ran');
// A test that skips itself (not one the --filter left out) asserts nothing: it fails the tier.
const selfSkipped = outText.split('\n').filter((l) => /^\s*ok \d+ .*# SKIP/.test(l) && !/# SKIP test name does not match pattern/.test(l));
for (const l of selfSkipped) console.log(`test:kernel: a test skipped itself: ${l.trim()}`);
console.log(`kernel: ${passed} passed, ${failed} failed${selfSkipped.length ? `, ${selfSkipped.length} skipped themselves` : ''}`);
process.exit(res.status === 0 && failed === 0 && selfSkipped.length === 0 ? 0 : 1);
