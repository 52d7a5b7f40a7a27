/**
 * vfio_pump as a C++ caller of include/vfio_pci_sys.h meets it, without the N-API layer: a small
 * program compiled here against addon/sys.cc and addon/checksum.cc. The Node binding always
 * passes a cancel eventfd; these cases hold the header's promises for the calls that pass none.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { skippedBecause } from '../helpers/skip';
import { useTempDir } from '../helpers/temp-dir';

const root = path.resolve(__dirname, '../..');
const CXX = [process.env.CXX, 'c++', 'g++', 'clang++'].find((c) => c && spawnSync(c, ['--version']).status === 0);

// zlib.h from Node's own headers (as the addon builds take it); crc32() is defined below, so no
// libz is linked: these cases run CRC-32C, which never calls it.
const NODE_INCLUDE = path.resolve(process.execPath, '../../include/node');

const PROGRAM = `
#include "vfio_pci_sys.h"
#include <zlib.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstdio>
extern "C" uLong crc32(uLong crc, const Bytef*, uInt) { return crc; }
int main() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 3;
  close(sv[1]);  // the peer is gone: the first send fails
  int src = open("/dev/zero", O_RDONLY | O_CLOEXEC);
  if (src < 0) return 4;
  static unsigned char buf[65536];
  vfio_sys::vfio_pump_options o;  // no cancel_fd: no waits
  o.limit = 1 << 20;
  vfio_sys::vfio_pump_result r;
  int rc = vfio_sys::vfio_pump(src, sv[0], buf, sizeof buf, nullptr, 0, &o, &r);
  std::printf("rc=%d status=%d error=%d bytes=%llu\\n", rc, r.status, r.error, static_cast<unsigned long long>(r.bytes));
  return 0;
}
`;

describe('vfio_pump from C++ (no cancel fd)', () => {
  const tmp = useTempDir('vfio-pump-c');
  const reason = !CXX
    ? 'no C++ compiler found ($CXX, c++, g++, clang++)'
    : !fs.existsSync(path.join(NODE_INCLUDE, 'zlib.h'))
      ? `no zlib.h in Node's headers (${NODE_INCLUDE})`
      : undefined;

  it.skipIf(reason !== undefined)(`a socket whose peer closed is EPIPE from send(2) with MSG_NOSIGNAL, never SIGPIPE${skippedBecause(reason)}`, () => {
    const src = path.join(tmp.path, 'pump.cc');
    const exe = path.join(tmp.path, 'pump');
    fs.writeFileSync(src, PROGRAM);
    const cc = spawnSync(CXX!, ['-std=c++17', '-O1', '-pthread', `-I${path.join(root, 'include')}`, `-I${NODE_INCLUDE}`, src, path.join(root, 'addon/sys.cc'), path.join(root, 'addon/checksum.cc'), '-o', exe], {
      encoding: 'utf8',
    });
    expect(cc.status, cc.stderr).toBe(0);
    const run = spawnSync(exe, { encoding: 'utf8' });
    // Killed by SIGPIPE would be signal 'SIGPIPE' and no output.
    expect(run.signal).toBeNull();
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe('rc=-32 status=2 error=32 bytes=0');
  }, 120_000);
});
