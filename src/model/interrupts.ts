/**
 * Wiring the guest's interrupt configuration to the device: the emulated MSI capability, the
 * emulated MSI-X table and INTx, turned into VFIO_DEVICE_SET_IRQS calls with the host's
 * eventfds (include/uapi/linux/vfio.h "VFIO_DEVICE_SET_IRQS"; the QEMU equivalents are
 * hw/vfio/pci.c vfio_msi_enable(), vfio_msix_enable(), vfio_intx_enable()).
 *
 * Rules kept:
 *  - at most one of INTx, MSI and MSI-X is armed at a time (vfio-pci refuses to switch index
 *    without disabling the other first, EINVAL); an index is disabled with DATA_NONE |
 *    ACTION_TRIGGER and count 0. A disable the kernel refuses changes nothing here either.
 *  - INTx gets a trigger eventfd (ACTION_TRIGGER) and a resample eventfd (ACTION_UNMASK), so the
 *    VMM's EOI unmasks the line.
 *  - MSI and MSI-X: the first SET_IRQS of the index enables a range of vectors [0, n) and gives
 *    each its trigger. After that only the vector that changed is touched: SET_IRQS with
 *    start = that vector, count 1 (QEMU vfio_msix_vector_do_use(), vfio_msix_vector_release()).
 *    The range is never re-issued shorter: the kernel keeps a trigger on every vector that a
 *    SET_IRQS leaves out.
 *  - MSI-X masking (PCI spec, MSI-X "Per-vector Masking"; QEMU vfio_msix_vector_release() and
 *    vfio_msi_interrupt()): a vector that is masked — its vector control mask bit, or the
 *    function mask, Message Control bit 14 — keeps a trigger in the kernel, an eventfd of this
 *    model's own (its "park"), and its host route is released. An interrupt the device raises
 *    while the vector is masked is therefore kept: it sets the vector's PBA bit (posted by
 *    `collectPending()`, which the MSI-X table calls before the guest reads the PBA and before
 *    it is serialised), and when the guest unmasks the vector it is delivered to the new host
 *    route and the bit is cleared (QEMU msix_handle_mask_update()).
 *  - Growing the MSI-X range, when the guest unmasks a vector past it: on an index flagged
 *    VFIO_IRQ_INFO_NORESIZE (kernels before 6.5, or no dynamic MSI-X on the platform) the kernel
 *    refuses a trigger for a vector it has not allocated (vfio_msi_set_vector_signal(): EINVAL),
 *    so the index is disabled and enabled again with the larger range, every vector with its
 *    trigger (QEMU vfio_msix_vector_do_use(), `msix->noresize`); interrupts raised between the
 *    two calls are lost, as with QEMU. Without NORESIZE the one vector is set and the kernel
 *    allocates it (vfio_msi_alloc_irq()); the vectors between that were never unmasked stay
 *    without a trigger. MSI is always NORESIZE: a new Multiple Message Enable while MSI is on
 *    disables and enables the index again.
 *  - MSI masking: a vector masked with the capability's mask bits has no trigger (fd -1).
 * `rearm()` re-issues everything from the shadow: the kernel keeps no interrupt set-up across a
 * migration (a destination device starts with nothing armed) nor across VFIO_DEVICE_RESET.
 */
import type { VfioDevice } from '../kernel/device';
import type { InterruptRouter, MsiMessage } from './host/types';
import type { ConfigSpace } from './pci/config-space';
import type { MsixTable } from './pci/msix-table';
import * as v from '../kernel/uapi/vfio';
import { logger } from '../base/log';

const log = logger('irq');

export type IrqMode = 'none' | 'intx' | 'msi' | 'msix';

export class InterruptWiring {
  private mode: IrqMode = 'none';
  /** The trigger the kernel holds for each vector of the enabled range (its length); -1 for none. INTx: [trigger]. */
  private kernel: number[] = [];
  /** Host routes held, vector → the router's eventfd, until releaseMsi(). */
  private readonly routes = new Map<number, number>();
  /** MSI-X: this model's own eventfd per vector that was masked in the enabled range (module comment). */
  private readonly parks = new Map<number, number>();
  /** The last change could not be carried out: the kernel's set-up may differ from the shadow (the next config write tries again). */
  stale = false;

  constructor(
    private readonly dev: VfioDevice,
    private readonly router: InterruptRouter,
    private readonly id: string,
    private readonly config: () => ConfigSpace,
    private readonly msixTable: () => MsixTable | undefined,
  ) {}

  /** What is armed now: the index and the size of its enabled range. */
  get armed(): { mode: IrqMode; vectors: number } {
    return { mode: this.mode, vectors: this.kernel.length };
  }

  /**
   * Bring the device's interrupt set-up in line with the shadow: MSI-X if enabled, else MSI if
   * enabled, else INTx when the device has a pin and COMMAND.INTX_DISABLE is clear. Throws the
   * first failure (a VfioError of SET_IRQS, or the router's error) after trying every vector.
   */
  sync(): void {
    this.tracked(() => {
      const cfg = this.config();
      if (cfg.msix()?.enabled) this.armMsix();
      else if (cfg.msi()?.enabled) this.armMsi();
      else if (this.hasIntx(cfg)) this.armIntx();
      else this.disarm();
    });
  }

  /**
   * Forget what the kernel had (after a reset or on a fresh destination) and arm again from the
   * shadow. Interrupts parked on masked vectors before the reset are dropped with the parks.
   */
  rearm(): void {
    this.mode = 'none';
    this.kernel = [];
    this.closeParks();
    this.sync();
  }

  /**
   * Disable whatever index is armed and release the host routes. Interrupts that fired on
   * masked MSI-X vectors are posted to the PBA first. When the kernel refuses the disable,
   * nothing changed there: the wiring stays as it was and the error is thrown.
   */
  disarm(): void {
    if (this.mode === 'none') return;
    this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_NONE | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: this.indexOf(this.mode), start: 0, count: 0 });
    if (this.mode === 'intx') this.router.releaseIntx(this.id);
    if (this.mode === 'msix') this.collectPending();
    log('%s: %s disabled', this.id, this.mode);
    this.forget();
  }

  /** MSI-X table entry `vector` changed (mask, address or data): MsixTable's listener. */
  msixVectorChanged(vector: number): void {
    const table = this.msixTable();
    if (!table) return;
    if (this.mode !== 'msix') {
      // Not armed although the guest enabled MSI-X (an earlier failure): try it all again.
      if (this.config().msix()?.enabled) this.sync();
      return;
    }
    this.tracked(() => this.updateMsix(table, [vector]));
  }

  /**
   * Post the interrupts that fired on masked MSI-X vectors since the last call to `table`'s PBA
   * (MsixTable.syncPending calls this before the PBA is read or serialised). Only the table in
   * use now is touched.
   */
  collectPending(table = this.msixTable()): void {
    if (this.mode !== 'msix' || !table || table !== this.msixTable()) return;
    for (const [i, park] of this.parks) {
      if (this.kernel[i] === park && this.dev.binding.eventfdRead(park) > 0n) {
        table.setPending(i, true);
        log('%s: MSI-X vector %d fired while masked: pending', this.id, i);
      }
    }
  }

  // ------------------------------------------------------------------ MSI-X

  private armMsix(): void {
    const table = this.msixTable();
    if (!table) return;
    if (this.mode === 'msix') {
      this.updateMsix(table, Array.from({ length: table.size }, (_, i) => i));
      return;
    }
    this.switchTo('msix');
    const fm = this.functionMask();
    let n = 1;
    for (let i = 0; i < table.size; i++) if (!this.masked(table, i, fm)) n = i + 1;
    this.enableMsix(table, n);
  }

  /** One SET_IRQS over [0, n): the live vectors get their host route, the masked ones their park. */
  private enableMsix(table: MsixTable, n: number): void {
    const fm = this.functionMask();
    const fds: number[] = [];
    try {
      for (let i = 0; i < n; i++) fds.push(this.masked(table, i, fm) ? this.park(i) : this.route(i, table.vector(i)));
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: n, eventfds: fds });
    } catch (e) {
      // The kernel armed nothing (a failed enable disables the index again): nor do we.
      this.forget();
      throw e;
    }
    this.mode = 'msix';
    this.kernel = fds;
    for (let i = 0; i < n; i++) {
      if (fds[i] === this.parks.get(i)) this.releaseRoute(i);
      else this.deliverPending(table, i);
    }
    log('%s: MSI-X enabled, %d vectors (%d live)', this.id, n, fds.filter((fd, i) => fd !== this.parks.get(i)).length);
  }

  /** Bring `vectors` in line with the table; grow the range first when one of them is live past it. */
  private updateMsix(table: MsixTable, vectors: readonly number[]): void {
    const fm = this.functionMask();
    const noResize = this.noResize();
    let want = this.kernel.length;
    for (const i of vectors) if (i >= want && !this.masked(table, i, fm)) want = i + 1;
    if (want > this.kernel.length && noResize) {
      this.regrowMsix(table, want);
      return;
    }
    let failure: unknown;
    for (const i of vectors) {
      try {
        this.updateVector(table, i, fm, noResize);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure !== undefined) throw failure;
  }

  private updateVector(table: MsixTable, i: number, fm: boolean, noResize: boolean): void {
    const masked = this.masked(table, i, fm);
    if (i >= this.kernel.length) {
      if (masked) return; // not enabled in the kernel: nothing can fire there
      while (this.kernel.length <= i) this.kernel.push(-1); // no NORESIZE: the kernel allocates it
    }
    const cur = this.kernel[i];
    // A masked vector keeps a trigger (its park), except one never armed on a dynamic index.
    const want = masked ? (cur === -1 && !noResize ? -1 : this.park(i)) : this.route(i, table.vector(i));
    if (want !== cur) this.setVector(v.VFIO_PCI_MSIX_IRQ_INDEX, i, want);
    if (masked) this.releaseRoute(i);
    else this.deliverPending(table, i);
  }

  /** NORESIZE: disable MSI-X and enable it again over [0, n) (module comment). */
  private regrowMsix(table: MsixTable, n: number): void {
    this.collectPending(table);
    this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_NONE | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 0 });
    log('%s: MSI-X disabled to grow from %d to %d vectors (NORESIZE)', this.id, this.kernel.length, n);
    this.kernel = [];
    this.enableMsix(table, n);
  }

  /** A vector was unmasked: an interrupt that fired while it was masked reaches the guest now, once. */
  private deliverPending(table: MsixTable, i: number): void {
    const park = this.parks.get(i);
    const fired = park !== undefined && this.dev.binding.eventfdRead(park) > 0n;
    if (!fired && !table.isPending(i)) return;
    table.setPending(i, false);
    this.dev.binding.eventfdWrite(this.routes.get(i)!, 1n);
    log('%s: MSI-X vector %d unmasked: pending interrupt delivered', this.id, i);
  }

  private functionMask(): boolean {
    return this.config().msix()?.functionMask ?? false;
  }

  private masked(table: MsixTable, i: number, functionMask: boolean): boolean {
    return functionMask || table.vector(i).masked;
  }

  private park(i: number): number {
    let fd = this.parks.get(i);
    if (fd === undefined) {
      fd = this.dev.binding.eventfd(0);
      this.parks.set(i, fd);
    }
    return fd;
  }

  private closeParks(): void {
    for (const fd of this.parks.values()) this.dev.binding.close(fd);
    this.parks.clear();
  }

  /** Whether the MSI-X index is NORESIZE; when GET_IRQ_INFO fails, assume it is (the safe way). */
  private noResize(): boolean {
    try {
      return (this.dev.irq(v.VFIO_PCI_MSIX_IRQ_INDEX).flags & v.VFIO_IRQ_INFO_NORESIZE) !== 0;
    } catch {
      return true;
    }
  }

  // ------------------------------------------------------------------ MSI

  private armMsi(): void {
    const msi = this.config().msi()!;
    // MSI is NORESIZE: another vector count means enabling the index again.
    if (this.mode === 'msi' && msi.vectors.length !== this.kernel.length) this.disarm();
    if (this.mode === 'msi') {
      let failure: unknown;
      for (const vec of msi.vectors) {
        try {
          const want = vec.masked ? -1 : this.route(vec.vector, vec);
          if (want !== this.kernel[vec.vector]) this.setVector(v.VFIO_PCI_MSI_IRQ_INDEX, vec.vector, want);
          if (vec.masked) this.releaseRoute(vec.vector);
        } catch (e) {
          failure ??= e;
        }
      }
      if (failure !== undefined) throw failure;
      return;
    }
    this.switchTo('msi');
    const fds: number[] = [];
    try {
      for (const vec of msi.vectors) fds.push(vec.masked ? -1 : this.route(vec.vector, vec));
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSI_IRQ_INDEX, start: 0, count: fds.length, eventfds: fds });
    } catch (e) {
      this.forget();
      throw e;
    }
    this.mode = 'msi';
    this.kernel = fds;
    log('%s: MSI enabled, %d vectors', this.id, fds.length);
  }

  // ------------------------------------------------------------------ INTx

  private hasIntx(cfg: ConfigSpace): boolean {
    const pin = cfg.read(0x3d, 1);
    return pin !== 0 && (cfg.command & 0x400) === 0 && this.irqCount(v.VFIO_PCI_INTX_IRQ_INDEX) > 0;
  }

  private armIntx(): void {
    if (this.mode === 'intx') return;
    this.switchTo('intx');
    const { trigger, resample } = this.router.intxRoute(this.id, this.config().read(0x3d, 1));
    const index = v.VFIO_PCI_INTX_IRQ_INDEX;
    try {
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 1, eventfds: [trigger] });
    } catch (e) {
      this.router.releaseIntx(this.id);
      throw e;
    }
    try {
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_UNMASK, index, start: 0, count: 1, eventfds: [resample] });
    } catch (e) {
      // Drivers without INTx masking (mdev samples) refuse the unmask eventfd; the line then
      // needs no unmask and the trigger alone is enough.
      log('%s: INTx resample not supported: %o', this.id, e);
    }
    this.mode = 'intx';
    this.kernel = [trigger];
    log('%s: INTx armed', this.id);
  }

  // ------------------------------------------------------------------ common

  /** Run a change; `stale` says whether it failed (the next config write tries again). */
  private tracked(change: () => void): void {
    this.stale = true;
    change();
    this.stale = false;
  }

  /** SET_IRQS for one vector. On failure the kernel left it without a trigger (vfio_msi_set_block()'s rollback). */
  private setVector(index: number, i: number, fd: number): void {
    try {
      this.dev.setIrqs({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index, start: i, count: 1, eventfds: [fd] });
      this.kernel[i] = fd;
    } catch (e) {
      this.kernel[i] = -1;
      throw e;
    }
  }

  /** The host route of a vector, with the message the guest programmed now (the router may hand back the same fd). */
  private route(i: number, message: MsiMessage): number {
    const fd = this.router.msiRoute(this.id, i, { address: message.address, data: message.data });
    this.routes.set(i, fd);
    return fd;
  }

  private releaseRoute(i: number): void {
    if (this.routes.delete(i)) this.router.releaseMsi(this.id, i);
  }

  /** Nothing armed: host routes released, parks closed. */
  private forget(): void {
    for (const i of [...this.routes.keys()]) this.releaseRoute(i);
    this.closeParks();
    this.mode = 'none';
    this.kernel = [];
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
}
