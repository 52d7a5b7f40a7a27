// Device DMA logging against the real kernel, on mtty: its logging ops are no-ops (6.12), so every
// verdict here is the VFIO core's own (drivers/vfio/vfio_main.c,
// vfio_ioctl_device_feature_logging_start / _report): the raw calls bypass the library's checks
// to get the kernel's answer, and the library's prediction (checkLoggingRanges) and refusal are
// checked against it. Also: mdevs have no HWPT, so IOMMU dirty tracking is refused there, by the
// library first and by the kernel too.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { lib, freshMdev, openFds } = require('./helpers');

const { openDevice } = lib('kernel/open');
const { resolveDevice } = lib('kernel/resolve');
const { DirtyBitmap, DmaLogging, checkLoggingRanges, loggingRanges, getHwInfo, allocHwpt } = lib('kernel/dirty');
const { startRaw, reportRaw, stopRaw } = lib('kernel/dirty/logging');
const { MigState } = lib('kernel/uapi/vfio');
const s = lib('kernel/uapi/structs');
const v = lib('kernel/uapi/vfio');

const P = 4096n;
const G = 1n << 30n;
const range = (iova, length) => ({ iova, length });

/** The errno name a raw call fails with, 'OK' when it succeeds. */
async function kernelSays(p) {
  try {
    await p;
    return 'OK';
  } catch (e) {
    assert.equal(e.kind, 'syscall', `a kernel error, not ${e.code}: ${e.message}`);
    return e.code;
  }
}

/** Run `fn(dev)` on a fresh mtty mdev opened through iommufd; close and remove it after. */
async function withMtty(fn, opts = { iommu: 'iommufd' }) {
  const m = freshMdev();
  const dev = openDevice(m.uuid, opts);
  try {
    await fn(dev, m.uuid);
  } finally {
    dev.close();
    m.remove();
  }
}

test('mtty has DMA logging: PROBE | SET of DMA_LOGGING_START answers 0', async () => {
  await withMtty(async (dev) => {
    assert.equal(DmaLogging.of(dev).probe(), true);
  });
});

test('START rules: the kernel core answers EINVAL / E2BIG / EOVERFLOW; the library predicts each and refuses first', async () => {
  const cases = [
    ['no range', [], 'EINVAL'],
    ['misaligned iova', [range(G + 512n, P)], 'EINVAL'],
    ['misaligned length', [range(G, P + 1n)], 'EINVAL'],
    ['overlapping ranges', [range(0n, 4n * P), range(2n * P, 4n * P)], 'EINVAL'],
    ['a later range containing an earlier one', [range(G, P), range(0n, 2n * G)], 'EINVAL'],
    ['iova + length overflowing 64 bits', [range((1n << 64n) - P, P)], 'EOVERFLOW'],
    ['257 ranges', Array.from({ length: 257 }, (_, i) => range(BigInt(i) * 2n * P, P)), 'E2BIG'],
    ['256 ranges', Array.from({ length: 256 }, (_, i) => range(BigInt(i) * 2n * P, P)), 'OK'],
    ['touching ranges, out of order', [range(2n * P, P), range(P, P)], 'OK'],
  ];
  await withMtty(async (dev) => {
    const logging = DmaLogging.of(dev);
    for (const [what, ranges, want] of cases) {
      const got = await kernelSays(startRaw(dev, ranges, P));
      assert.equal(got, want, `${what}: the kernel`);
      if (got === 'OK') await stopRaw(dev);
      assert.equal(checkLoggingRanges(ranges, P)?.errno ?? 'OK', got, `${what}: the library's prediction`);
      if (got !== 'OK') {
        await assert.rejects(logging.start(ranges), (e) => e.code === 'EVFIO_DIRTY_RANGES' && e.kind === 'usage' && e.message.includes(got), what);
        assert.equal(logging.active, undefined);
      }
    }
  });
});

test('REPORT rules: page size below 4 KiB or not a power of two is EINVAL, the overflow EOVERFLOW; the library refuses first', async () => {
  await withMtty(async (dev) => {
    const logging = DmaLogging.of(dev);
    await logging.start([range(0n, 64n * P)]);
    const bits = () => Buffer.alloc(64);
    for (const [ps, want] of [[2048n, 'EINVAL'], [12288n, 'EINVAL'], [0n, 'EINVAL'], [4096n, 'OK'], [8192n, 'OK'], [1n << 21n, 'OK']]) {
      assert.equal(await kernelSays(reportRaw(dev, 0n, 64n * P, ps, bits())), want, `page size ${ps}`);
    }
    assert.equal(await kernelSays(reportRaw(dev, (1n << 64n) - P, P, P, bits())), 'EOVERFLOW');
    for (const pageSize of [2048, 12288]) {
      await assert.rejects(logging.report({ iova: 0n, length: 64n * P, pageSize }), (e) => e.code === 'EVFIO_DIRTY_PAGE_SIZE' && e.kind === 'usage');
    }
    await logging.stop();
  });
});

test('START / REPORT / STOP through the library succeed; mtty logs nothing, and the kernel only sets bits', async () => {
  await withMtty(async (dev) => {
    const logging = DmaLogging.of(dev);
    const regions = [
      { iova: 0n, length: 640n * 1024n },
      { iova: 1n << 20n, length: 2n * G },
      { iova: 4n * G, length: 2n * G },
      { iova: 64n * G, length: 1n << 28n, deviceMemory: true },
    ];
    const ranges = loggingRanges(regions, { pageSize: 4096 });
    assert.equal(ranges.length, 3, 'collapsed to three ranges');
    const st = await logging.start(ranges);
    assert.equal(st.pageSize, 4096, 'mtty keeps the page size it was given (copied back)');
    // The kernel only sets bits: a bitmap full of stale bits comes back unchanged from a raw
    // REPORT, which is why the library zeroes it first.
    const stale = Buffer.alloc(8, 0xaa);
    await reportRaw(dev, 0n, 64n * P, P, stale);
    assert.deepEqual(stale, Buffer.alloc(8, 0xaa));
    const dirtyBefore = new DirtyBitmap(0n, 64n * P, 4096).fill();
    const r = await logging.report(dirtyBefore);
    assert.equal(r.bitmap, dirtyBefore);
    assert.equal(r.bitmap.count(), 0, 'all clear');
    const all = await logging.reportAll({ pageSize: 1 << 21 });
    assert.equal(all.length, 3);
    assert.ok(all.every((x) => x.bitmap.isClean() && x.error === undefined));
    await assert.rejects(logging.report({ iova: 3n * G, length: P, pageSize: 4096 }), (e) => e.code === 'EVFIO_DIRTY_UNTRACKED');
    await logging.stop();
    assert.equal(logging.active, undefined);
    // mtty answers a second START and a STOP without START with 0 (mlx5 would refuse the former).
    assert.equal(await kernelSays(startRaw(dev, [range(0n, P)], P)), 'OK');
    assert.equal(await kernelSays(startRaw(dev, [range(0n, P)], P)), 'OK');
    assert.equal(await kernelSays(stopRaw(dev)), 'OK');
    assert.equal(await kernelSays(stopRaw(dev)), 'OK');
  });
});

test('START / REPORT / STOP while the device is in PRE_COPY, then back to RUNNING', async () => {
  await withMtty(async (dev) => {
    const set = (state) => {
      const b = s.encodeMigStateSet(state);
      dev.ioctl(v.VFIO_DEVICE_FEATURE, b);
      const { dataFd } = s.decodeMigState(b);
      if (dataFd >= 0) dev.binding.close(dataFd);
    };
    const logging = DmaLogging.of(dev);
    await logging.start([range(0n, G)]);
    set(MigState.PRE_COPY);
    const r = await logging.report({ iova: 0n, length: G, pageSize: 4096 });
    assert.equal(r.bitmap.pages, Number(G / P));
    assert.equal(r.bitmap.count(), 0);
    set(MigState.RUNNING);
    await logging.stop();
  });
});

test('the DMA logging feature is per open device: the legacy path has it too', async () => {
  await withMtty(
    async (dev) => {
      assert.equal(dev.iommu.kind, 'legacy');
      const logging = DmaLogging.of(dev);
      await logging.start([range(0n, 16n * P)]);
      assert.equal((await logging.report({ iova: 0n, length: 16n * P, pageSize: 4096 })).bitmap.count(), 0);
      await logging.stop();
    },
    { iommu: 'legacy' },
  );
});

test('mdevs have no HWPT: IOMMU dirty tracking is refused by the library (EVFIO_NO_HWPT) and by the kernel (ENOENT)', async () => {
  const m = freshMdev();
  try {
    assert.equal(resolveDevice(m.uuid).mdev, true);
    const before = openFds();
    for (const iommu of ['iommufd', 'legacy']) {
      assert.throws(
        () => openDevice(m.uuid, { iommu, iommuDirtyTracking: 'on' }),
        (e) => e.code === 'EVFIO_NO_HWPT' && e.kind === 'unsupported' && /DMA logging/.test(e.message),
        iommu,
      );
    }
    assert.equal(openFds(), before, 'nothing left open');
    // 'auto' opens it the usual way: no HWPT, no tracker; its DMA logging is the way.
    const auto = openDevice(m.uuid, { iommu: 'iommufd', iommuDirtyTracking: 'auto' });
    try {
      assert.equal(auto.iommu.dirty, undefined);
      assert.equal(auto.iommu.hwptId, undefined);
      assert.equal(DmaLogging.of(auto).probe(), true);
      // The kernel agrees: the mdev's dev_id is an access object, not a device with an IOMMU.
      const ifd = { binding: auto.binding, fd: auto.iommu.iommufd, label: m.uuid };
      assert.throws(() => getHwInfo(ifd, auto.iommu.devid), (e) => e.code === 'ENOENT' && e.op === 'IOMMU_GET_HW_INFO');
      assert.throws(() => allocHwpt(ifd, { devId: auto.iommu.devid, ioasId: auto.iommu.ioasId, dirtyTracking: true }), (e) => e.code === 'ENOENT');
    } finally {
      auto.close();
    }
  } finally {
    m.remove();
  }
});
