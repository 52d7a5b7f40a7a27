/**
 * An open VFIO device: the device fd, its IOMMU context, and typed access to what the kernel
 * exposes on it (vfio.h "VFIO_DEVICE_GET_INFO", "GET_REGION_INFO", "GET_IRQ_INFO", "SET_IRQS",
 * "RESET", "VFIO_DEVICE_FEATURE"). Built on two primitives, region read and region write, like
 * Cloud Hypervisor's `trait Vfio`; everything else is a helper on top.
 *
 * Region data is little-endian (PCI); region offsets come from GET_REGION_INFO (vfio-pci puts
 * region N at N << 40).
 */
import type { Binding } from './binding/types';
import { VfioError } from '../base/errors';
import * as s from './uapi/structs';
import * as v from './uapi/vfio';
import type { IommuContext } from './iommu';
import { ioctl, ioctlAsync } from './ioctl';
import { probeMigration, type Migration } from './migration';

export class VfioDevice {
  private fdValue: number;
  private readonly regionCache = new Map<number, s.RegionInfo>();
  private readonly irqCache = new Map<number, s.IrqInfo>();
  private infoCache?: s.DeviceInfo;
  /** undefined: not probed yet; null: not migratable. */
  private mig?: Migration | null;

  /**
   * @param name  how the device is named in errors and snapshots (PCI address, UUID, `sim:...`)
   * @param fd    the device fd; owned by this object from now on
   */
  constructor(
    readonly binding: Binding,
    readonly name: string,
    fd: number,
    readonly iommu: IommuContext,
  ) {
    this.fdValue = fd;
  }

  /** The device fd; throws EVFIO_CLOSED after close(). */
  get fd(): number {
    if (this.fdValue < 0) throw new VfioError(`device ${this.name} is closed`, { code: 'EVFIO_CLOSED', kind: 'usage', device: this.name });
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  /**
   * The device's one migration object (VFIO_DEVICE_FEATURE_MIGRATION GET, asked once per open
   * device), or `null` when the device is not migratable (the kernel answers ENOTTY). Every
   * migration state change, session and reset of this device goes through it.
   */
  get migration(): Migration | null {
    if (this.mig === undefined) this.mig = probeMigration(this);
    return this.mig;
  }

  /** ioctl on the device fd with errors annotated with this device and `op`. */
  ioctl(request: number, arg?: Buffer | number, op?: string): number {
    return ioctl(this.binding, this.fd, request, arg, { device: this.name, op });
  }

  /** ioctl on the device fd off the JS thread (long requests: reset, state SETs, DMA map). */
  ioctlAsync(request: number, arg?: Buffer | number, op?: string): Promise<number> {
    return ioctlAsync(this.binding, this.fd, request, arg, { device: this.name, op });
  }

  /** VFIO_DEVICE_GET_INFO (cached: it does not change while the device is open). */
  info(): s.DeviceInfo {
    if (!this.infoCache) {
      const b = s.encodeDeviceInfoQuery();
      this.ioctl(v.VFIO_DEVICE_GET_INFO, b);
      this.infoCache = s.decodeDeviceInfo(b);
    }
    return this.infoCache;
  }

  /** VFIO_DEVICE_GET_REGION_INFO for one index (cached). Throws EINVAL for an index the device lacks. */
  region(index: number): s.RegionInfo {
    return this.query(this.regionCache, index, v.VFIO_DEVICE_GET_REGION_INFO, s.encodeRegionInfoQuery, s.decodeRegionInfo);
  }

  /** Size of region `index` in bytes, 0 when the device lacks it (the kernel answers EINVAL). */
  regionSize(index: number): number {
    try {
      return this.region(index).size;
    } catch (e) {
      if (e instanceof VfioError && e.code === 'EINVAL') return 0;
      throw e;
    }
  }

  /** Every region the device reports, indexes 0 .. num_regions-1 (vfio-pci: BAR0-5, ROM, CONFIG, VGA). */
  regions(): s.RegionInfo[] {
    const out: s.RegionInfo[] = [];
    for (let i = 0; i < this.info().numRegions; i++) {
      try {
        out.push(this.region(i));
      } catch (e) {
        // vfio-pci answers EINVAL for the VGA region of a non-VGA device: it is absent.
        if (!(e instanceof VfioError && e.code === 'EINVAL')) throw e;
      }
    }
    return out;
  }

  /** VFIO_DEVICE_GET_IRQ_INFO for one index (cached like region(): fixed for an open device). */
  irq(index: number): s.IrqInfo {
    return this.query(this.irqCache, index, v.VFIO_DEVICE_GET_IRQ_INFO, s.encodeIrqInfoQuery, s.decodeIrqInfo);
  }

  /** A GET_*_INFO query for `index`, asked once: later calls answer from `cache`. */
  private query<T>(cache: Map<number, T>, index: number, request: number, encode: (i: number) => Buffer, decode: (b: Buffer) => T): T {
    let r = cache.get(index);
    if (r === undefined) {
      // GET_INFO first, always: mtty (Linux 6.12) answers GET_IRQ_INFO with EINVAL until
      // GET_DEVICE_INFO has been called once on the fd (it checks the index against the
      // num_irqs that call records). QEMU and Cloud Hypervisor also read device info first.
      this.info();
      const b = encode(index);
      this.ioctl(request, b);
      r = decode(b);
      cache.set(index, r);
    }
    return r;
  }

  /**
   * Every IRQ index the device reports (vfio-pci: INTX, MSI, MSIX, ERR, REQ). An index the
   * driver answers with EINVAL is absent and left out (mtty has only INTX and MSI, and answers
   * EINVAL for ERR and REQ although num_irqs is 5: seen on Linux 6.12).
   */
  irqs(): s.IrqInfo[] {
    const out: s.IrqInfo[] = [];
    for (let i = 0; i < this.info().numIrqs; i++) {
      try {
        out.push(this.irq(i));
      } catch (e) {
        if (!(e instanceof VfioError && e.code === 'EINVAL')) throw e;
      }
    }
    return out;
  }

  /**
   * Read `length` bytes at `offset` inside region `index` (one pread per call, looped on short
   * reads). Throws ERANGE-like `EVFIO_REGION_RANGE` for an access past the region's end.
   */
  readRegion(index: number, offset: number, length: number): Buffer {
    const r = this.checkRange(index, offset, length, v.VFIO_REGION_INFO_FLAG_READ);
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = this.regionIo('pread', buf.subarray(done), r.offset + offset + done);
      if (n === 0) break;
      done += n;
    }
    return done === length ? buf : buf.subarray(0, done);
  }

  /** Write `data` at `offset` inside region `index`, looping on short writes. */
  writeRegion(index: number, offset: number, data: Buffer): void {
    const r = this.checkRange(index, offset, data.length, v.VFIO_REGION_INFO_FLAG_WRITE);
    let done = 0;
    while (done < data.length) {
      const n = this.regionIo('pwrite', data.subarray(done), r.offset + offset + done);
      if (n === 0) throw new VfioError(`pwrite returned 0 in region ${index} at ${offset + done}`, { code: 'EIO', errno: 5, syscall: 'pwrite', device: this.name });
      done += n;
    }
  }

  /** Read PCI config space (region VFIO_PCI_CONFIG_REGION_INDEX). */
  readConfig(offset: number, length: number): Buffer {
    return this.readRegion(v.VFIO_PCI_CONFIG_REGION_INDEX, offset, length);
  }

  /**
   * The whole config space as the device exposes it: the config region's bytes, at most 4096
   * (256 for conventional PCI, 4096 for PCIe; mtty reports 255).
   */
  configSpace(): Buffer {
    return this.readConfig(0, Math.min(this.regionSize(v.VFIO_PCI_CONFIG_REGION_INDEX), 4096));
  }

  /** Write PCI config space. */
  writeConfig(offset: number, data: Buffer): void {
    this.writeRegion(v.VFIO_PCI_CONFIG_REGION_INDEX, offset, data);
  }

  /**
   * VFIO_DEVICE_SET_IRQS (vfio.h): `flags` DATA_* | ACTION_*, vectors `start .. start+count-1`
   * of IRQ `index`; `eventfds` for DATA_EVENTFD (-1 de-assigns one vector). Disable an index
   * with `{ flags: DATA_NONE | ACTION_TRIGGER, count: 0 }`.
   */
  setIrqs(set: s.IrqSet): void {
    this.ioctl(v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet(set));
  }

  /**
   * VFIO_DEVICE_RESET. The device returns to RUNNING and any migration session ends (vfio.h
   * "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE": "a reset ... returns the device to RUNNING"); the
   * device's `migration` object is told, closes the session's data_fd and forgets its cached
   * state (also when the reset fails: the state is then read again). A function-level reset
   * takes ~100 ms in hardware: it runs off the JS thread.
   */
  async reset(): Promise<void> {
    try {
      await this.ioctlAsync(v.VFIO_DEVICE_RESET, undefined);
    } finally {
      this.mig?.noteReset();
    }
  }

  /**
   * VFIO_DEVICE_FEATURE: `op` on `feature` with a payload of `payloadSize` bytes (copied from
   * `payload` when given). Returns the payload part of the buffer after the call.
   */
  feature(feature: number, op: s.FeatureOp, payloadSize: number, payload?: Buffer): Buffer {
    const b = s.encodeFeature(feature, op, payloadSize, payload);
    this.ioctl(v.VFIO_DEVICE_FEATURE, b, `${v.FEATURE_NAMES.get(feature) ?? `feature ${feature}`} (${op.toUpperCase()})`);
    return b.subarray(s.SIZEOF_DEVICE_FEATURE);
  }

  /**
   * Close the migration session's data_fd, the device fd, then its IOMMU context (group,
   * container or iommufd), in that order. Idempotent.
   */
  close(): void {
    if (this.fdValue >= 0) {
      const fd = this.fdValue;
      try {
        this.mig?.dispose();
      } finally {
        this.fdValue = -1;
      }
      try {
        this.binding.close(fd);
      } finally {
        this.iommu.close();
      }
    }
  }

  private checkRange(index: number, offset: number, length: number, need: number): s.RegionInfo {
    const r = this.region(index);
    if (offset < 0 || length < 0 || offset + length > r.size) {
      throw new VfioError(`access of ${length} bytes at ${offset} is outside region ${index} (${r.size} bytes)`, {
        code: 'EVFIO_REGION_RANGE', kind: 'usage', device: this.name,
      });
    }
    if (!(r.flags & need)) {
      throw new VfioError(`region ${index} is not ${need === v.VFIO_REGION_INFO_FLAG_READ ? 'readable' : 'writable'}`, {
        code: 'EVFIO_REGION_ACCESS', kind: 'usage', device: this.name,
      });
    }
    return r;
  }

  private regionIo(kind: 'pread' | 'pwrite', buf: Buffer, fileOffset: number): number {
    try {
      return kind === 'pread' ? this.binding.pread(this.fd, buf, fileOffset) : this.binding.pwrite(this.fd, buf, fileOffset);
    } catch (e) {
      throw e instanceof VfioError ? e.annotate({ device: this.name }) : e;
    }
  }
}
