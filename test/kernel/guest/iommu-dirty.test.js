// IOMMU dirty tracking against the real kernel, on the iommufd selftest mock domain
// (CONFIG_IOMMUFD_TEST; ../shared/kernel-vfio/README.md "IOMMU dirty tracking"): the library's
// HWPT code (src/kernel/dirty/hwpt.ts) with the mock device's idev_id standing in for a VFIO
// device's dev_id. IOMMU_TEST_OP_DIRTY marks IOPTEs dirty as a device's DMA would, and the bits
// come back through the library's DirtyBitmap.
//
// IOMMU_TEST_CMD is test-only kernel interface (drivers/iommu/iommufd/iommufd_test.h), so its
// codec lives here, not in src.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { constants: fsc } = require('node:fs');
const { lib, openFds } = require('./helpers');

const { getDefaultBinding } = lib('kernel/open');
const { DirtyBitmap, HwptDirtyTracker, allocHwpt, destroyObject, getHwInfo, setDirtyTracking } = lib('kernel/dirty');
const { readDirtyBitmapRaw } = lib('kernel/dirty/hwpt');
const io = lib('kernel/uapi/iommufd');
const { ReferenceMemory } = lib('model/host/reference');

// ---- struct iommu_test_cmd (iommufd_test.h, 6.12): u32 size, op, id, __reserved; a union at 16
// (mock_domain: out_stdev_id 16, out_hwpt_id 20, out_idev_id 24; mock_domain_flags adds dev_flags
// 28; mock_domain_replace: pt_id 16; dirty: flags 16, iova 24, length 32, page_size 40, uptr 48,
// out_nr_dirty 56); u32 last at 64; sizeof 72. IOMMU_TEST_CMD = _IO(';', 0x80 + 32).
const IOMMU_TEST_CMD = 0x3ba0;
const SIZEOF_TEST_CMD = 72;
const OP = { MOCK_DOMAIN: 2, MOCK_DOMAIN_REPLACE: 10, MOCK_DOMAIN_FLAGS: 12, DIRTY: 13 };
const MOCK_FLAGS_DEVICE_NO_DIRTY = 1;
const MOCK_APERTURE_START = 1n << 24n;
/** The mock's IOPTE size: PAGE_SIZE / 2. */
const MOCK_IO_PAGE = 2048n;

const P = 4096n;
const NPAGES = 64n;
const LEN = P * NPAGES;
const IOVA = MOCK_APERTURE_START;

function testCmd(b, fd, op, id, fill) {
  const c = Buffer.alloc(SIZEOF_TEST_CMD);
  c.writeUInt32LE(SIZEOF_TEST_CMD, 0);
  c.writeUInt32LE(op, 4);
  c.writeUInt32LE(id, 8);
  if (fill) fill(c);
  b.ioctl(fd, IOMMU_TEST_CMD, c);
  return c;
}

/** A mock device on a fresh IOAS: its ids (idev_id plays a VFIO device's dev_id). */
function mockDevice(b, fd, ioasId, devFlags = 0) {
  const c = devFlags
    ? testCmd(b, fd, OP.MOCK_DOMAIN_FLAGS, ioasId, (x) => x.writeUInt32LE(devFlags, 28))
    : testCmd(b, fd, OP.MOCK_DOMAIN, ioasId);
  return { stdevId: c.readUInt32LE(16), hwptId: c.readUInt32LE(20), idevId: c.readUInt32LE(24) };
}

/** IOMMU_TEST_OP_DIRTY: mark the given 4 KiB pages dirty (both mock IOPTEs of each). Returns out_nr_dirty. */
function markPages(b, fd, hwptId, pages) {
  const bits = Buffer.alloc(Number((LEN / MOCK_IO_PAGE + 63n) / 64n) * 8);
  for (const p of pages) for (const half of [0, 1]) bits[(2 * p + half) >> 3] |= 1 << ((2 * p + half) & 7);
  const c = testCmd(b, fd, OP.DIRTY, hwptId, (x) => {
    x.writeBigUInt64LE(IOVA, 24);
    x.writeBigUInt64LE(LEN, 32);
    x.writeBigUInt64LE(MOCK_IO_PAGE, 40);
    x.writeBigUInt64LE(b.bufferAddress(bits), 48);
  });
  return Number(c.readBigUInt64LE(56));
}

/** /dev/iommu with an IOAS mapping LEN bytes of (page-aligned) memory at IOVA, and a mock device. */
function setup(devFlags = 0) {
  const binding = getDefaultBinding();
  const fd = binding.open('/dev/iommu', fsc.O_RDWR);
  const ioasAlloc = () => {
    const a = io.encodeIoasAlloc();
    binding.ioctl(fd, io.IOMMU_IOAS_ALLOC, a);
    return io.decodeIoasAlloc(a).ioasId;
  };
  const mock = mockDevice(binding, fd, ioasAlloc(), devFlags);
  const ioasId = ioasAlloc();
  const mem = new ReferenceMemory(binding).add(0n, Number(LEN)).buffer;
  const flags = io.IOMMU_IOAS_MAP_FIXED_IOVA | io.IOMMU_IOAS_MAP_READABLE | io.IOMMU_IOAS_MAP_WRITEABLE;
  binding.ioctl(fd, io.IOMMU_IOAS_MAP, io.encodeIoasMap(ioasId, binding.bufferAddress(mem), LEN, IOVA, flags));
  const ifd = { binding, fd, label: 'iommufd-mock' };
  return { binding, fd, ifd, mock, ioasId, mem, close: () => binding.close(fd) };
}

test('GET_HW_INFO on the mock device reports IOMMU_HW_CAP_DIRTY_TRACKING', () => {
  const t = setup();
  try {
    const info = getHwInfo(t.ifd, t.mock.idevId);
    assert.equal(info.dirtyTracking, true);
    assert.equal(info.capabilities & BigInt(io.IOMMU_HW_CAP_DIRTY_TRACKING), 1n);
  } finally {
    t.close();
  }
});

test('a dirty-tracking HWPT: the pages the kernel marks come back through DirtyBitmap, with and without NO_CLEAR', async () => {
  const t = setup();
  try {
    const hwpt = allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: true });
    // The device can be moved onto it, as VFIO_DEVICE_ATTACH_IOMMUFD_PT does for a VFIO device.
    testCmd(t.binding, t.fd, OP.MOCK_DOMAIN_REPLACE, t.mock.stdevId, (c) => c.writeUInt32LE(hwpt, 16));
    const tracker = new HwptDirtyTracker(t.ifd, hwpt);
    await tracker.enable();
    assert.equal(tracker.enabled, true);
    const want = [0, 5, 6, 63];
    assert.equal(markPages(t.binding, t.fd, hwpt, want), 8, 'two mock IOPTEs per 4 KiB page');
    const whole = { iova: IOVA, length: LEN, pageSize: 4096 };

    const first = await tracker.read(whole);
    assert.deepEqual(first.bitmap.toArray(), want);
    assert.deepEqual(
      [...first.bitmap.runs()].map((r) => [r.iova, r.length]),
      [[IOVA, P], [IOVA + 5n * P, 2n * P], [IOVA + 63n * P, P]],
    );
    assert.equal((await tracker.read(whole)).bitmap.count(), 0, 'read-and-clear');

    markPages(t.binding, t.fd, hwpt, want);
    const kept = new DirtyBitmap(IOVA, LEN, 4096).fill(); // stale bits: zeroed before the read
    assert.deepEqual((await tracker.read(kept, { noClear: true })).bitmap.toArray(), want);
    assert.deepEqual((await tracker.read(whole, { noClear: true })).bitmap.toArray(), want, 'NO_CLEAR kept them');
    const cleared = await tracker.read(whole);
    assert.deepEqual(cleared.bitmap.toArray(), want);
    assert.equal((await tracker.read(whole)).bitmap.count(), 0);

    // Merged with a VMM's KVM dirty log of the same range (bit k = page k, little-endian words).
    markPages(t.binding, t.fd, hwpt, [9]);
    const kvmLog = Buffer.alloc(8);
    kvmLog.writeBigUInt64LE(1n << 1n, 0);
    const kvm = new DirtyBitmap(IOVA, LEN, 4096, kvmLog).merge((await tracker.read(whole)).bitmap);
    assert.deepEqual(kvm.toArray(), [1, 9]);

    // A coarser page size: page 5 of 4 KiB is bit 1 at 16 KiB.
    markPages(t.binding, t.fd, hwpt, [5]);
    assert.deepEqual((await tracker.read({ iova: IOVA, length: LEN, pageSize: 16384 })).bitmap.toArray(), [1]);

    await tracker.disable();
    assert.equal(tracker.enabled, false);
    await assert.rejects(tracker.read(whole), (e) => e.code === 'EVFIO_DIRTY_NOT_STARTED');
  } finally {
    t.close();
  }
});

test('a HWPT allocated without the dirty flag refuses SET_DIRTY_TRACKING: EOPNOTSUPP, reported as EVFIO_NO_IOMMU_DIRTY', async () => {
  const t = setup();
  try {
    const plain = allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: false });
    await assert.rejects(setDirtyTracking(t.ifd, plain, true), (e) => {
      assert.equal(e.code, 'EVFIO_NO_IOMMU_DIRTY');
      assert.equal(e.kind, 'unsupported');
      assert.equal(e.errno, 95, 'the kernel errno (EOPNOTSUPP) is kept');
      assert.equal(e.op, 'IOMMU_HWPT_SET_DIRTY_TRACKING');
      assert.match(e.message, /without IOMMU_HWPT_ALLOC_DIRTY_TRACKING/);
      return true;
    });
    await assert.rejects(new HwptDirtyTracker(t.ifd, plain).enable(), (e) => e.code === 'EVFIO_NO_IOMMU_DIRTY');
  } finally {
    t.close();
  }
});

test('the library refuses page size 1000 (and 2048), which 6.12 itself accepts; unaligned ranges are refused too', async () => {
  const t = setup();
  try {
    const hwpt = allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: true });
    const tracker = new HwptDirtyTracker(t.ifd, hwpt);
    await tracker.enable();
    for (const pageSize of [1000, 2048, 0]) {
      await assert.rejects(tracker.read({ iova: IOVA, length: LEN, pageSize }), (e) => e.code === 'EVFIO_DIRTY_PAGE_SIZE' && e.kind === 'usage', `page size ${pageSize}`);
    }
    // The kernel's own answers, asked raw: 1000 divides this iova and length and is accepted.
    const raw = (g) => readDirtyBitmapRaw(t.ifd, hwpt, { flags: 0, ...g }, Buffer.alloc(4096)).then(() => 'OK', (e) => e.code);
    assert.equal(await raw({ iova: IOVA, length: LEN, pageSize: 1000n }), 'OK');
    assert.equal(await raw({ iova: IOVA + 512n, length: LEN - P, pageSize: P }), 'EINVAL');
    assert.equal(await raw({ iova: IOVA, length: LEN, pageSize: 0n }), 'EINVAL');
    assert.equal(await raw({ iova: IOVA, length: LEN, pageSize: P, flags: 2 }), 'EOPNOTSUPP');
    await assert.rejects(tracker.read({ iova: IOVA + 512n, length: LEN - P, pageSize: 4096 }), (e) => e.code === 'EVFIO_DIRTY_RANGES');
    await tracker.disable();
  } finally {
    t.close();
  }
});

test("an IOMMU without dirty tracking: GET_HW_INFO says so, and HWPT_ALLOC with the flag is EOPNOTSUPP", () => {
  const t = setup(MOCK_FLAGS_DEVICE_NO_DIRTY);
  try {
    assert.equal(getHwInfo(t.ifd, t.mock.idevId).dirtyTracking, false);
    assert.throws(() => allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: true }), (e) => e.code === 'EOPNOTSUPP' && e.errno === 95 && e.op === 'IOMMU_HWPT_ALLOC');
    assert.ok(allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: false }) > 0);
  } finally {
    t.close();
  }
});

test("a failed read: 'throw' propagates the kernel's error, 'all-dirty' marks the whole range", async () => {
  const t = setup();
  try {
    const hwpt = allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: true });
    const tracker = new HwptDirtyTracker(t.ifd, hwpt);
    await tracker.enable();
    destroyObject(t.ifd, hwpt); // not attached to anything: the kernel lets it go
    const whole = { iova: IOVA, length: LEN, pageSize: 4096 };
    await assert.rejects(tracker.read(whole), (e) => e.code === 'ENOENT' && e.kind === 'syscall');
    const r = await tracker.read(whole, { onError: 'all-dirty' });
    assert.equal(r.error.code, 'ENOENT');
    assert.equal(r.bitmap.count(), Number(NPAGES));
  } finally {
    t.close();
  }
});

test('no fd is left open across repeated setups', async () => {
  const before = openFds();
  for (let i = 0; i < 5; i++) {
    const t = setup();
    const hwpt = allocHwpt(t.ifd, { devId: t.mock.idevId, ioasId: t.ioasId, dirtyTracking: true });
    const tracker = new HwptDirtyTracker(t.ifd, hwpt);
    await tracker.enable();
    await tracker.read({ iova: IOVA, length: LEN, pageSize: 4096 });
    t.close();
  }
  assert.equal(openFds(), before);
});
