/**
 * ioctlAsync: the contract's off-thread ioctl (VFIO_DEVICE_RESET, MIG_DEVICE_STATE SET, DMA map),
 * on every binding: same results and errors as ioctl, the Buffer argument written by the kernel.
 */
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding } from '../../src/sim';
import type { Binding } from '../../src/kernel/binding/types';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const FIONREAD = 0x541b;
const TCGETS = 0x5401;

const bindings: Array<[string, () => Binding]> = [
  ['native', () => new NativeBinding()],
  ['koffi', () => new KoffiBinding()],
  ['sim', () => new SimBinding(new NativeBinding())],
];

const tmp = useTempDir('ioctl-async');

for (const [name, make] of bindings) {
  describe(`${name}: ioctlAsync`, () => {
    it('returns what the kernel wrote into the Buffer (FIONREAD on a pipe)', async () => {
      const b = make();
      const [r, w] = b.pipe();
      try {
        fs.writeSync(w, Buffer.alloc(123, 1));
        const arg = Buffer.alloc(4);
        expect(await b.ioctlAsync(r, FIONREAD, arg)).toBe(0);
        expect(arg.readInt32LE(0)).toBe(123);
      } finally {
        b.close(r);
        b.close(w);
      }
    });

    it('rejects with a VfioError carrying code, errno and syscall (ENOTTY on a regular file)', async () => {
      const b = make();
      const file = tmp.file(name);
      fs.writeFileSync(file, 'x');
      const fd = b.open(file, fs.constants.O_RDONLY);
      try {
        expect(await rejection(b.ioctlAsync(fd, TCGETS, Buffer.alloc(64)))).toMatchObject({ code: 'ENOTTY', errno: 25, syscall: 'ioctl' });
      } finally {
        b.close(fd);
      }
    });
  });
}

describe('sim: ioctlAsync reaches the simulated device', () => {
  it('VFIO_DEVICE_RESET and a MIG_DEVICE_STATE SET through ioctlAsync behave as through ioctl', async () => {
    const b = new SimBinding(new NativeBinding());
    const fd = b.open('sim:4KiB#ioctl-async', fs.constants.O_RDWR);
    try {
      const set = s.encodeMigStateSet(v.MigState.STOP);
      expect(await b.ioctlAsync(fd, v.VFIO_DEVICE_FEATURE, set)).toBe(0);
      expect(b.device('ioctl-async')!.state).toBe(v.MigState.STOP);
      expect(await b.ioctlAsync(fd, v.VFIO_DEVICE_RESET)).toBe(0);
      expect(b.device('ioctl-async')!.state).toBe(v.MigState.RUNNING);
      const bad = s.encodeMigStateSet(v.MigState.ERROR);
      await expect(b.ioctlAsync(fd, v.VFIO_DEVICE_FEATURE, bad)).rejects.toMatchObject({ code: 'EINVAL' });
    } finally {
      b.close(fd);
    }
  });
});
