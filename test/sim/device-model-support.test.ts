/**
 * The simulated-device behaviour the device-model tests (test/unit/device-model*.test.ts) rely
 * on (issue 3), seen through the Binding only: the bus-mastering rule (`master=required`), PCI_COMMAND outside the migration
 * stream and cleared by reset, and the options that make a destination differ (`devid=`,
 * `vsclen=`, `vsc=`).
 */
import { describe, expect, it } from 'vitest';
import { BAR0, CAP_OFFSETS, PCI, SIM_DEVICE_ID, SimBinding, VNDR_CAP_LENGTH, parseSimSpec } from '../../src/sim';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { MigState } from '../../src/kernel/uapi/vfio';
import { rejection, thrown } from '../helpers/errors';
import { enterState, readU32, writeU16, writeU32 } from '../helpers/uapi';

const { RUNNING, STOP, RESUMING } = MigState;
const O_RDWR = 2;
const BAR = v.VFIO_PCI_BAR0_REGION_INDEX * 2 ** 40;
const CFG = v.VFIO_PCI_CONFIG_REGION_INDEX * 2 ** 40;

function command(b: SimBinding, fd: number): number {
  return readU32(b, fd, CFG + PCI.COMMAND) & 0xffff;
}

/** A virtual eventfd wired to MSI-X vector 0. */
function armVector0(b: SimBinding, fd: number): number {
  const efd = b.eventfd(0);
  b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet({
    flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd],
  }));
  return efd;
}

async function migrate(b: SimBinding, src: number, dst: number): Promise<void> {
  enterState(b, src, STOP);
  const out = enterState(b, src, MigState.STOP_COPY);
  const inp = enterState(b, dst, RESUMING);
  const buf = Buffer.alloc(1 << 16);
  for (;;) {
    const n = await b.read(out, buf);
    if (n === 0) break;
    for (let o = 0; o < n; ) o += await b.write(inp, buf, o, n - o);
  }
  b.close(out);
  b.close(inp);
  enterState(b, dst, STOP);
}

describe('spec keys master=, devid=, vsclen=', () => {
  it('parse', () => {
    expect(parseSimSpec('sim:4096:master=required:devid=0x5f11:vsclen=20:vsc=3#d')).toEqual({
      spec: 'sim:4096:master=required:devid=0x5f11:vsclen=20:vsc=3#d', name: 'd', size: 4096, busMaster: 'required', deviceId: 0x5f11, vscLength: 20, vscRevision: 3,
    });
    expect(parseSimSpec('sim:master=ignored:devid=24337')).toMatchObject({ busMaster: 'ignored', deviceId: 24337 });
    for (const bad of ['sim:master=yes', 'sim:devid=0x10000', 'sim:devid=-1', 'sim:devid=abc', 'sim:vsclen=7', 'sim:vsclen=81', 'sim:vsclen=0x10']) {
      expect(typeof parseSimSpec(bad), bad).toBe('string');
    }
  });

  it('reach the device; bad option values are RangeErrors; a named device reopened with another value is EEXIST', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096:master=required:devid=0x5f11:vsclen=20#d', O_RDWR);
    expect(b.device('d').options).toMatchObject({ busMaster: 'required', deviceId: 0x5f11, vscLength: 20 });
    expect(() => b.createDevice('x', { vscLength: 4 })).toThrow(RangeError);
    expect(() => b.createDevice('y', { deviceId: 0x1_0000 })).toThrow(RangeError);
    expect(() => b.createDevice('z', { busMaster: 'sometimes' as 'required' })).toThrow(RangeError);
    expect(thrown(() => b.open('sim:4096:devid=0x5f10#d', O_RDWR)).code).toBe('EEXIST');
    b.close(fd);
  });

  it('devid changes config dword 0 and the stream header: a stream of another device id is refused (EFAULT)', async () => {
    const b = new SimBinding();
    const a = b.open('sim:4096', O_RDWR);
    const c = b.open('sim:4096:devid=0x5f11', O_RDWR);
    expect(readU32(b, a, CFG) >>> 16).toBe(SIM_DEVICE_ID);
    expect(readU32(b, c, CFG) >>> 16).toBe(0x5f11);
    expect(b.device(c).pciId).toBe(0x5f11_1234);
    expect((await rejection(migrate(b, a, c))).code).toBe('EFAULT');
    expect(b.device(c).session()?.problem).toMatch(/stream is for PCI id 5f101234, device is 5f111234/);
  });

  it('vsclen sets the Vendor Specific length byte; the body keeps its layout; vsc sets the body revision', () => {
    const b = new SimBinding();
    const fd = b.open('sim:vsclen=24:vsc=9', O_RDWR);
    const cap = Buffer.alloc(24);
    b.pread(fd, cap, CFG + CAP_OFFSETS.VNDR);
    expect([cap[0], cap[1], cap[2]]).toEqual([PCI.CAP_ID_VNDR, 0, 24]);
    expect(cap.toString('latin1', 3, 6)).toBe('SIM');
    expect([cap[6], cap[7]]).toEqual([1, 9]);
    expect(cap.subarray(8).every((x) => x === 0)).toBe(true);
    const dflt = b.open('sim', O_RDWR);
    expect(readU32(b, dflt, CFG + CAP_OFFSETS.VNDR) >>> 16 & 0xff).toBe(VNDR_CAP_LENGTH);
  });
});

describe('bus mastering (master=required)', () => {
  it('a doorbell without COMMAND.MASTER wedges the queue: no interrupt, IRQ_COUNT stays, QUEUE_PENDING counts; MASTER later does not unstick it', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096:master=required', O_RDWR);
    const efd = armVector0(b, fd);
    expect(command(b, fd)).toBe(0);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(readU32(b, fd, BAR + BAR0.QUEUE_PENDING)).toBe(1);
    expect(readU32(b, fd, BAR + BAR0.IRQ_COUNT)).toBe(0);
    expect(b.eventfdRead(efd)).toBe(0n);
    writeU16(b, fd, CFG + PCI.COMMAND, 0x0006);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(readU32(b, fd, BAR + BAR0.QUEUE_PENDING)).toBe(2);
    expect(b.eventfdRead(efd)).toBe(0n);
    expect(b.device(fd).queuePending).toBe(2);
    writeU32(b, fd, BAR + BAR0.QUEUE_PENDING, 0); // read-only
    expect(readU32(b, fd, BAR + BAR0.QUEUE_PENDING)).toBe(2);
  });

  it('with MASTER set the doorbell completes; VFIO_DEVICE_RESET clears COMMAND and the wedged queue', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096:master=required', O_RDWR);
    const efd = armVector0(b, fd);
    writeU16(b, fd, CFG + PCI.COMMAND, 0x0006);
    expect(command(b, fd)).toBe(0x0006);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.eventfdRead(efd)).toBe(1n);
    expect(readU32(b, fd, BAR + BAR0.IRQ_COUNT)).toBe(1);

    writeU16(b, fd, CFG + PCI.COMMAND, 0x0002);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.device(fd).queuePending).toBe(1);
    b.ioctl(fd, v.VFIO_DEVICE_RESET);
    expect(command(b, fd)).toBe(0);
    expect(b.device(fd).queuePending).toBe(0);
    writeU16(b, fd, CFG + PCI.COMMAND, 0x0006);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.eventfdRead(efd)).toBe(1n); // the wiring survives the reset in the sim
    expect(readU32(b, fd, BAR + BAR0.QUEUE_PENDING)).toBe(0);
  });

  it('a function level reset (PCIe Device Control) clears them too', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096:master=required', O_RDWR);
    writeU16(b, fd, CFG + PCI.COMMAND, 0x0002);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.device(fd).queuePending).toBe(1);
    writeU16(b, fd, CFG + CAP_OFFSETS.EXP + 8, 0x8000);
    expect(command(b, fd)).toBe(0);
    expect(b.device(fd).queuePending).toBe(0);
  });

  it('default (master=ignored): doorbells complete whatever COMMAND holds, as before', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096', O_RDWR);
    const efd = armVector0(b, fd);
    expect(command(b, fd)).toBe(0);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.eventfdRead(efd)).toBe(1n);
    expect(readU32(b, fd, BAR + BAR0.QUEUE_PENDING)).toBe(0);
  });

  it('PCI_COMMAND is not in the migration stream: a migrated destination starts with COMMAND 0 and wedges until it is written', async () => {
    const b = new SimBinding();
    const src = b.open('sim:4096:master=required', O_RDWR);
    const dst = b.open('sim:4096:master=required', O_RDWR);
    writeU16(b, src, CFG + PCI.COMMAND, 0x0006);
    writeU32(b, src, BAR + BAR0.CONTROL, 0xabcd);
    await migrate(b, src, dst);
    expect(b.device(dst).state).toBe(STOP);
    expect(readU32(b, dst, BAR + BAR0.CONTROL)).toBe(0xabcd);
    expect(command(b, dst)).toBe(0);
    enterState(b, dst, RUNNING);
    const efd = armVector0(b, dst);
    writeU32(b, dst, BAR + BAR0.DOORBELL, 0);
    expect(b.eventfdRead(efd)).toBe(0n);
    expect(b.device(dst).queuePending).toBe(1);
  });

  it('a stopped device ignores doorbells (nothing queued)', () => {
    const b = new SimBinding();
    const fd = b.open('sim:4096:master=required', O_RDWR);
    enterState(b, fd, STOP);
    writeU32(b, fd, BAR + BAR0.DOORBELL, 0);
    expect(b.device(fd).queuePending).toBe(0);
  });
});
