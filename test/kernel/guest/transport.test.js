// The live-migration transport's sockets on the guest's kernel: loopback TCP and unix sockets
// between two processes, the TCP options the channels set (TCP_USER_TIMEOUT bounds the pump),
// a second peer refused, and the data_fd of a real device pumped straight into a socket.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const os = require('node:os');
const fs = require('node:fs');
const { spawn } = require('node:child_process');
const { lib, MDEVS, programUart, openFds, loopbackUp } = require('./helpers');

const { listen, connect } = lib('live');
const { NativeBinding } = lib('kernel/binding/native');
const S = lib('kernel/uapi/socket');
const { openDevice } = lib('kernel/open');
const { Migration } = lib('kernel/migration');
const { MigState } = lib('kernel/uapi/vfio');
const { pumpFor, NativePump } = lib('kernel/pump');

const ROOT = path.resolve(__dirname, '../../..');
const binding = new NativeBinding();

// The guest boots with its loopback interface down (127.0.0.1 is EADDRNOTAVAIL).
test.before(loopbackUp);

/** A second process that connects to `uri`, writes `text`, reads 3 bytes, prints them and exits. */
function peerProcess(uri, text) {
  const script = `
    const { connect } = require(${JSON.stringify(path.join(ROOT, 'dist/src/live'))});
    (async () => {
      const ch = await connect(${JSON.stringify(uri)});
      await ch.writeAll(Buffer.from(${JSON.stringify(text)}));
      process.stdout.write((await ch.readExactly(3)).toString());
      await ch.close();
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, out })));
}

for (const uri of ['tcp:127.0.0.1:0', `unix:${path.join(os.tmpdir(), `vfio-transport-${process.pid}.sock`)}`]) {
  test(`transport between two processes over ${uri.split(':')[0]}: exchange, options, a second peer refused, no fd left`, async () => {
    const before = openFds();
    const l = await listen(uri, { binding, idleTimeoutMs: 7000 });
    const peer = peerProcess(l.uri, 'hello from the source');
    const ch = await l.accept({ timeoutMs: 20_000 });
    assert.equal((await ch.readExactly(21)).toString(), 'hello from the source');
    if (l.address.family === 'ipv4') {
      assert.equal(binding.getsockopt(ch.fd, S.IPPROTO_TCP, S.TCP_USER_TIMEOUT), 7000);
      assert.notEqual(binding.getsockopt(ch.fd, S.IPPROTO_TCP, S.TCP_NODELAY), 0);
      assert.equal(binding.getsockopt(ch.fd, S.SOL_SOCKET, S.SO_KEEPALIVE), 1);
    }
    await ch.writeAll(Buffer.from('ack'));
    assert.deepEqual(await peer, { code: 0, out: 'ack' });
    const second = await peerProcess(l.uri, 'me too');
    assert.notEqual(second.code, 0);
    assert.equal(l.refused.length, 1);
    await ch.close();
    await l.close();
    if (l.address.family === 'unix') assert.equal(fs.existsSync(l.address.path), false);
    assert.equal(openFds(), before);
  });
}

test('transport: a PRE_COPY data_fd of mtty pumped straight into a socket; the peer reads the 24 initial bytes', async () => {
  const dev = openDevice(MDEVS[0]);
  const l = await listen('tcp:127.0.0.1:0', { binding });
  try {
    programUart(dev, 0x21, 'xport');
    const [dst, src] = await Promise.all([l.accept(), connect(l.uri, { binding })]);
    const m = Migration.require(dev);
    const sess = await m.setState(MigState.PRE_COPY);
    const moved = await src.lend('write', (fd) => {
      const pump = pumpFor(binding, [sess.fd, fd]);
      assert.ok(pump instanceof NativePump, 'the addon pump serves a real data_fd and socket');
      return pump.copy(sess.fd, fd, Buffer.alloc(4096), { precopy: true });
    });
    assert.equal(moved.end, 'for-now');
    assert.equal(moved.bytes, 24);
    const got = await dst.readExactly(24, { what: 'PRE_COPY initial data' });
    assert.equal(got.length, 24);
    await m.setState(MigState.RUNNING);
    assert.equal(m.getState(), MigState.RUNNING);
    await Promise.all([src.close(), dst.close()]);
  } finally {
    await l.close();
    dev.close();
  }
});
