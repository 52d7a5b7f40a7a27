/**
 * Wiring the guest's interrupt configuration to the device: the emulated MSI capability, the
 * emulated MSI-X table and INTx, turned into VFIO_DEVICE_SET_IRQS calls with the host's
 * eventfds (include/uapi/linux/vfio.h "VFIO_DEVICE_SET_IRQS"; the QEMU equivalents are
 * hw/vfio/pci.c vfio_msi_enable(), vfio_msix_enable(), vfio_intx_enable()).
 *
 * Rules kept:
 *  - at most one of INTx, MSI and MSI-X is armed at a time (vfio-pci refuses to switch index
 *    without disabling the other first, EINVAL);
 *  - an index is disabled with DATA_NONE | ACTION_TRIGGER and count 0;
 *  - a masked or unprogrammed vector is de-assigned with fd -1;
 *  - INTx gets a trigger eventfd (ACTION_TRIGGER) and a resample eventfd (ACTION_UNMASK), so the
 *    VMM's EOI unmasks the line.
 *  - MSI-X vectors are enabled by the first SET_IRQS of the index; on an index flagged
 *    VFIO_IRQ_INFO_NORESIZE (no dynamic MSI-X allocation: kernels before 6.5, or devices that
 *    cannot) a later SET_IRQS may not go past them (vfio_msi_set_block(): EINVAL), so growing
 *    the count disables the index and enables it again with the larger count (QEMU
 *    vfio_msix_vector_do_use(), `msix->noresize`).
 * `rearm()` re-issues everything from the shadow: the kernel keeps no interrupt set-up across a
 * migration (a destination device starts with nothing armed) nor across VFIO_DEVICE_RESET.
 */
import type { VfioDevice } from '../kernel/device';
import type { InterruptRouter } from './host/types';
import type { ConfigSpace } from './pci/config-space';
import type { MsixTable } from './pci/msix-table';
import * as v from '../kernel/uapi/vfio';
import { logger } from '../base/log';

const log = logger('irq');

export type IrqMode = 'none' | 'intx' | 'msi' | 'msix';

export class InterruptWiring {
  private mode: IrqMode = 'none';
  private armedVectors = 0;
  /** The last sync() failed: the kernel's set-up may differ from the shadow (the next config write tries again). */
  stale = false;

  constructor(
    private readonly dev: VfioDevice,
    private readonly router: InterruptRouter,
    private readonly id: string,
    private readonly config: () => ConfigSpace,
    private readonly msixTable: () => MsixTable | undefined,
  ) {}

  /** What is armed now. */
  get armed(): { mode: IrqMode; vectors: number } {
    return { mode: this.mode, vectors: this.armedVectors };
  }

  /**
   * Bring the device's interrupt set-up in line with the shadow: MSI-X if enabled, else MSI if
   * enabled, else INTx when the device has a pin and COMMAND.INTX_DISABLE is clear.
   */
  sync(): void {
    const cfg = this.config();
    const msix = cfg.msix();
    const msi = cfg.msi();
    this.stale = true;
    if (msix?.enabled) this.armMsix();
    else if (msi?.enabled) this.armMsi();
    else if (this.hasIntx(cfg)) this.armIntx();
    else this.disarm();
    this.stale = false;
  }

  /** Forget what the kernel had (after a reset or on a fresh destination) and arm again from the shadow. */
  rearm(): void {
    this.mode = 'none';
    this.armedVectors = 0;
    this.sync();
  }

  /**
   * Disable whatever index is armed and release the host routes. When the kernel refuses the
   * disable, nothing changed there: the wiring stays as it was (and armed) and the error is thrown.
   */
  disarm(): void {
    if (this.mode === 'none') return;
    const index = this.indexOf(this.mode);
    this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_NONE | v.VFIO_IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 0 });
    if (this.mode === 'intx') this.router.releaseIntx(this.id);
    else for (let i = 0; i < this.armedVectors; i++) this.router.releaseMsi(this.id, i);
    log('%s: %s disabled', this.id, this.mode);
    this.mode = 'none';
    this.armedVectors = 0;
  }

  /** A single MSI-X vector changed (mask, address or data): re-arm MSI-X if the guest enabled it. */
  msixVectorChanged(): void {
    if (this.config().msix()?.enabled) this.sync();
  }

  private hasIntx(cfg: ConfigSpace): boolean {
    const pin = cfg.read(0x3d, 1);
    return pin !== 0 && (cfg.command & 0x400) === 0 && this.irqCount(v.VFIO_PCI_INTX_IRQ_INDEX) > 0;
  }

  /** Whether the MSI-X index is NORESIZE; when GET_IRQ_INFO fails, assume it is (the safe way). */
  private noResize(): boolean {
    try {
      return (this.dev.irq(v.VFIO_PCI_MSIX_IRQ_INDEX).flags & v.VFIO_IRQ_INFO_NORESIZE) !== 0;
    } catch {
      return true;
    }
  }

  private irqCount(index: number): number {
    try {
      return this.dev.irq(index).count;
    } catch {
      return 0;
    }
  }

  private indexOf(mode: IrqMode): number {
    return mode === 'intx' ? v.VFIO_PCI_INTX_IRQ_INDEX : mode === 'msi' ? v.VFIO_PCI_MSI_IRQ_INDEX : v.VFIO_PCI_MSIX_IRQ_INDEX;
  }

  private switchTo(mode: IrqMode): void {
    if (this.mode !== mode) this.disarm();
  }

  private armMsi(): void {
    const msi = this.config().msi()!;
    this.switchTo('msi');
    const fds = msi.vectors.map((vec) => (vec.masked ? -1 : this.router.msiRoute(this.id, vec.vector, { address: vec.address, data: vec.data })));
    this.dev.setIrqs({
      flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSI_IRQ_INDEX, start: 0, count: fds.length, eventfds: fds,
    });
    for (let i = fds.length; i < this.armedVectors; i++) this.router.releaseMsi(this.id, i);
    this.mode = 'msi';
    this.armedVectors = fds.length;
    log('%s: MSI armed, %d vectors', this.id, fds.length);
  }

  private armMsix(): void {
    const cfg = this.config();
    const state = cfg.msix()!;
    const table = this.msixTable();
    if (!table) return;
    this.switchTo('msix');
    const vectors = table.vectors();
    // Arm up to the last usable vector; masked (or function-masked) vectors get -1.
    let count = 0;
    vectors.forEach((vec, i) => {
      if (!vec.masked && !state.functionMask) count = i + 1;
    });
    count = Math.max(count, 1);
    const fds = vectors.slice(0, count).map((vec) =>
      vec.masked || state.functionMask ? -1 : this.router.msiRoute(this.id, vec.index, { address: vec.address, data: vec.data }),
    );
    if (this.mode === 'msix' && fds.length > this.armedVectors && this.noResize()) {
      // More vectors than the kernel enabled: disable and enable again (module comment). The
      // host routes of the vectors already armed are kept: msiRoute() gave the same fds above.
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_NONE | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 0 });
      log('%s: MSI-X disabled to grow from %d to %d vectors (NORESIZE)', this.id, this.armedVectors, fds.length);
    }
    this.dev.setIrqs({
      flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: fds.length, eventfds: fds,
    });
    for (let i = fds.length; i < this.armedVectors; i++) this.router.releaseMsi(this.id, i);
    this.mode = 'msix';
    this.armedVectors = fds.length;
    log('%s: MSI-X armed, %d vectors (%d live)', this.id, fds.length, fds.filter((f) => f >= 0).length);
  }

  private armIntx(): void {
    if (this.mode === 'intx') return;
    this.switchTo('intx');
    const { trigger, resample } = this.router.intxRoute(this.id, this.config().read(0x3d, 1));
    const index = v.VFIO_PCI_INTX_IRQ_INDEX;
    this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 1, eventfds: [trigger] });
    try {
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_UNMASK, index, start: 0, count: 1, eventfds: [resample] });
    } catch (e) {
      // Drivers without INTx masking (mdev samples) refuse the unmask eventfd; the line then
      // needs no unmask and the trigger alone is enough.
      log('%s: INTx resample not supported: %o', this.id, e);
    }
    this.mode = 'intx';
    this.armedVectors = 1;
    log('%s: INTx armed', this.id);
  }
}
