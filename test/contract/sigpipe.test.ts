/**
 * A write to a peer that is gone fails with EPIPE and never kills the process with SIGPIPE
 * (src/kernel/binding/types.ts, "sockets"), also when the process's SIGPIPE disposition is the
 * default: Node ignores SIGPIPE at start-up, but removing the last process.on('SIGPIPE')
 * listener puts SIG_DFL back (libuv's signal watcher restores the default), after which a bare
 * write(2) to a closed socket terminates the process. This file does exactly that first; it runs
 * in its own fork (vitest.config.ts: pool 'forks'), so a failure here shows as a killed worker.
 *
 * Covered: the async write of every binding (on a libuv pool thread) to a socket whose peer
 * closed; the native addon's write to a pipe without a reader; and the native pump, which
 * writes from a thread of its own. Nothing is left pending either: a SIGPIPE that stayed pending
 * on a pool thread would fire the day something unblocks it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { beforeAll, describe, expect, it } from 'vitest';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { pumpFor } from '../../src/kernel/pump';
import { NativeBinding } from '../../src/kernel/binding/native';
import { POLLIN, type Binding } from '../../src/kernel/binding/types';
import { AF_UNIX, SOCK_STREAM, encodeSockaddr } from '../../src/kernel/uapi/socket';
import { SimBinding } from '../../src/sim';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const SIGPIPE_BIT = 1n << BigInt(os.constants.signals.SIGPIPE - 1);

/** A signal mask line of /proc/<...>/status ('SigIgn', 'SigCgt', 'SigPnd', 'ShdPnd'), as a bigint. */
function mask(status: string, field: string): bigint {
  const m = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(status);
  if (!m) throw new Error(`no ${field} in status`);
  return BigInt(`0x${m[1]}`);
}

/** How this process treats SIGPIPE. */
function disposition(): 'ignored' | 'caught' | 'default' {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  if (mask(status, 'SigIgn') & SIGPIPE_BIT) return 'ignored';
  if (mask(status, 'SigCgt') & SIGPIPE_BIT) return 'caught';
  return 'default';
}

/** Threads of this process with a SIGPIPE pending, and whether the process has one. */
function pendingSigpipes(): string[] {
  const out: string[] = [];
  if (mask(fs.readFileSync('/proc/self/status', 'utf8'), 'ShdPnd') & SIGPIPE_BIT) out.push('process');
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const status = fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      if (mask(status, 'SigPnd') & SIGPIPE_BIT) out.push(`thread ${tid} (${/^Name:\s*(.*)$/m.exec(status)?.[1]})`);
    } catch {
      /* the thread exited */
    }
  }
  return out;
}

const dir = useTempDir('vfio-sigpipe');
beforeAll(() => {
  const listener = (): void => undefined;
  process.on('SIGPIPE', listener);
  process.off('SIGPIPE', listener);
  // The precondition that makes these tests mean something.
  expect(disposition()).toBe('default');
});

/** A connected AF_UNIX pair through the binding, the accepting end already closed. */
async function deadPeer(b: Binding, name: string): Promise<number> {
  const addr = encodeSockaddr({ family: 'unix', path: dir.file(name) });
  const lfd = b.socket(AF_UNIX, SOCK_STREAM);
  b.bind(lfd, addr);
  b.listen(lfd, 1);
  const client = b.socket(AF_UNIX, SOCK_STREAM);
  expect(b.connect(client, addr)).toBe(true);
  await b.poll(lfd, POLLIN, 5000);
  b.close(b.accept(lfd));
  b.close(lfd);
  return client;
}

async function expectEpipe(p: Promise<unknown>): Promise<void> {
  expect((await rejection(p)).code).toBe('EPIPE');
}

const bindings: Array<[string, () => Binding]> = [
  ['native', () => new NativeBinding()],
  ['koffi', () => new KoffiBinding()],
  ['sim', () => new SimBinding(new NativeBinding())],
];

describe.each(bindings)('SIGPIPE with the default disposition: %s', (name, create) => {
  it('write(2) to a socket whose peer closed rejects EPIPE; the process lives and nothing is left pending', async () => {
    const b = create();
    const fd = await deadPeer(b, `${name}-write`);
    try {
      for (let i = 0; i < 20; i++) await expectEpipe(b.write(fd, Buffer.alloc(4096, i)));
    } finally {
      b.close(fd);
    }
    expect(disposition()).toBe('default');
    expect(pendingSigpipes()).toEqual([]);
  });
});

describe('SIGPIPE with the default disposition: native addon, other writers', () => {
  it('write(2) to a pipe without a reader rejects EPIPE', async () => {
    const b = new NativeBinding();
    const [r, w] = b.pipe();
    b.close(r);
    try {
      await expectEpipe(b.write(w, Buffer.from('x')));
    } finally {
      b.close(w);
    }
    expect(pendingSigpipes()).toEqual([]);
  });

  const native = new NativeBinding();
  it(
    'the native pump, writing from its own thread into a socket whose peer closed, rejects EPIPE',
    async () => {
      const fd = await deadPeer(native, 'pump');
      const [r, w] = native.pipe();
      try {
        await native.write(w, Buffer.alloc(64 * 1024, 1));
        native.close(w);
        const pump = pumpFor(native, [r, fd]);
        expect(pump.name).toBe('native');
        const e = await rejection(pump.copy(r, fd, Buffer.alloc(4096)));
        expect(e.code).toBe('EPIPE');
        expect(e.syscall).toBe('write');
      } finally {
        native.close(r);
        native.close(fd);
      }
      expect(disposition()).toBe('default');
    },
  );
});
