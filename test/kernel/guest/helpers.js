// Shared helpers of the guest tests: the compiled library, the mtty devices, UART registers.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '../../..');
const lib = (p) => require(path.join(ROOT, 'dist/src', p));

/** The mdev UUIDs run.sh created (4 with -n 4). */
const MDEVS = (process.env.MDEV_UUIDS || '').split(/\s+/).filter(Boolean);

/** mtty UART registers (8250-style), one I/O BAR of 8 bytes per port. */
const UART = { TX: 0, IER: 1, FCR: 2, LCR: 3, MCR: 4, LSR: 5, SCR: 7 };

function regW(dev, bar, reg, v) {
  dev.writeRegion(bar, reg, Buffer.of(v));
}
function regR(dev, bar, reg) {
  return dev.readRegion(bar, reg, 1)[0];
}
/** Number of UART ports (BARs with a non-zero size among 0..1). */
function ports(dev) {
  return [0, 1].filter((i) => dev.region(i).size > 0).length;
}
/** Program each port: FIFO on, LCR/IER/MCR/SCR values derived from seed, and loopback bytes. */
function programUart(dev, seed, text) {
  for (let b = 0; b < ports(dev); b++) {
    regW(dev, b, UART.FCR, 0xc7);
    regW(dev, b, UART.LCR, 0x03 + b);
    regW(dev, b, UART.IER, 0x05);
    regW(dev, b, UART.MCR, 0x0b);
    regW(dev, b, UART.SCR, (seed + b) & 0xff);
    for (const c of Buffer.from(`${text}${b}`)) regW(dev, b, UART.TX, c);
  }
}
/** Non-destructive register view: IER LCR MCR LSR SCR per port. */
function uartRegs(dev) {
  const out = [];
  for (let b = 0; b < ports(dev); b++) out.push(['IER', 'LCR', 'MCR', 'LSR', 'SCR'].map((r) => regR(dev, b, UART[r])));
  return out;
}
/** Pop the loopback FIFO of each port (destructive): n bytes per port. */
function drainFifo(dev, n) {
  const out = [];
  for (let b = 0; b < ports(dev); b++) {
    const bytes = [];
    for (let i = 0; i < n; i++) bytes.push(regR(dev, b, UART.TX));
    out.push(Buffer.from(bytes).toString('latin1'));
  }
  return out;
}

/** Run the CLI in a separate process. */
function cli(...args) {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/vfio-pci.js'), ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Open /proc/self/fd entries. */
function openFds() {
  return fs.readdirSync('/proc/self/fd').length;
}

/**
 * A new mtty mdev, never opened before (mtty keeps per-mdev state such as the device info
 * across opens), of `type` ('mtty-1' or 'mtty-2'; default the run's type). Returns its UUID and
 * a remover. mtty has 24 ports in all (MAX_MTTYS), 8 of them taken by run.sh's four mtty-2.
 */
function freshMdev(type = process.env.MDEV_TYPE || 'mtty-2') {
  const uuid = fs.readFileSync('/proc/sys/kernel/random/uuid', 'utf8').trim();
  fs.writeFileSync(`/sys/class/mdev_bus/mtty/mdev_supported_types/${type}/create`, uuid);
  return { uuid, remove: () => fs.writeFileSync(`/sys/bus/mdev/devices/${uuid}/remove`, '1') };
}

/**
 * The guest boots with its loopback interface down (binding 127.0.0.1 fails with
 * EADDRNOTAVAIL): bring it up with busybox's ip applet, as a host's init would.
 */
function loopbackUp() {
  const r = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip link set lo up: ${r.error?.message ?? r.stderr}`);
}

/**
 * `node ...args` in a child process (asynchronous), with `env` added to this one's. Collects
 * its output; waitOut/waitErr(re) resolve with the match once stdout/stderr matches `re`, and
 * reject when the child exits first or after `ms` (default 60 s), with what it printed.
 */
function spawnNode(args, env = {}) {
  const proc = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const text = { out: '', err: '' };
  const waiters = new Set();
  const poke = () => waiters.forEach((w) => w());
  proc.stdout.on('data', (d) => ((text.out += d), poke()));
  proc.stderr.on('data', (d) => ((text.err += d), poke()));
  let exited;
  const exit = new Promise((resolve) => proc.on('close', (code, signal) => resolve((exited = { code, signal }))));
  const wait = (which, re, ms = 60_000) =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => done(new Error(`no match for ${re} after ${ms} ms`)), ms);
      const done = (err, m) => {
        clearTimeout(t);
        waiters.delete(check);
        if (err) reject(new Error(`node ${args.join(' ')}: ${err.message}\nstdout:\n${text.out}\nstderr:\n${text.err}`));
        else resolve(m);
      };
      const check = () => {
        const m = re.exec(text[which]);
        if (m) done(undefined, m);
        else if (exited) done(new Error(`exited (${exited.code ?? exited.signal}) before a match for ${re}`));
      };
      waiters.add(check);
      void exit.then(check);
      check();
    });
  return {
    proc, exit,
    out: () => text.out,
    err: () => text.err,
    waitOut: (re, ms) => wait('out', re, ms),
    waitErr: (re, ms) => wait('err', re, ms),
    /** SIGKILL it if it still runs, and wait for it. */
    async stop() {
      if (exited === undefined) proc.kill('SIGKILL');
      await exit;
    },
  };
}

module.exports = { loopbackUp, spawnNode, freshMdev, ROOT, lib, MDEVS, UART, regW, regR, ports, programUart, uartRegs, drainFifo, cli, openFds };
