/**
 * Interrupt wiring of the simulated device: VFIO_DEVICE_GET_IRQ_INFO and VFIO_DEVICE_SET_IRQS as
 * vfio-pci implements them (drivers/vfio/pci/vfio_pci_intrs.c and
 * vfio_set_irqs_validate_and_prepare() in drivers/vfio/vfio_main.c), with eventfds as triggers.
 *
 * Rules kept, in the kernel's order:
 *  - header: argsz >= 20, index < 5, count < U32_MAX - start, no unknown flag bits, exactly one
 *    DATA_* type, start < the index's count and start + count <= it, argsz - 20 >= count * the
 *    data element size (u8 for BOOL, s32 for EVENTFD) — all EINVAL; a buffer shorter than what
 *    argsz promises is EFAULT;
 *  - an action the index lacks (MASK/UNMASK on MSI/MSI-X, anything but TRIGGER on ERR/REQ, two
 *    actions at once) is ENOTTY;
 *  - INTx, MSI and MSI-X are exclusive: enabling one while another is enabled is EINVAL;
 *    DATA_NONE | TRIGGER with count 0 disables the enabled one; on an index that is not enabled
 *    that request is EINVAL;
 *  - the first DATA_EVENTFD | TRIGGER on MSI/MSI-X enables (allocates) `start + count` vectors.
 *    Later calls go vector by vector (vfio_msi_set_block(), vfio_msi_set_vector_signal() of
 *    6.5+): each vector first loses its trigger, then fd -1 (any negative) leaves it so, while an
 *    fd needs the vector allocated — one beyond those enabled is EINVAL on an index flagged
 *    VFIO_IRQ_INFO_NORESIZE (MSI always; MSI-X unless the device allocates dynamically, which
 *    then allocates it: vfio_msi_alloc_irq()) — and a usable eventfd (EBADF: not open, EINVAL:
 *    not an eventfd). A failure leaves every vector of the call up to the failing one without a
 *    trigger (earlier ones set by the same call included) and, if the call enabled the index,
 *    disables it again;
 *  - DATA_NONE / DATA_BOOL with TRIGGER fire the armed eventfds of the range, skipping vectors
 *    without one (loopback test);
 *  - INTx is automasked: an interrupt masks the line until UNMASK; one raised while masked is
 *    kept pending and delivered on unmask. MASK with DATA_EVENTFD is ENOTTY.
 *  - ERR and REQ take one eventfd each (start 0, count <= 1); DATA_NONE with count 0 releases it,
 *    EINVAL when none is armed.
 */
import {
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../kernel/uapi/vfio';
import { SIZEOF_IRQ_SET, decodeIrqSet, type IrqInfo } from '../kernel/uapi/structs';
import { E, raise } from './errno';

const U32_MAX = 0xffffffff;
const OP = 'VFIO_DEVICE_SET_IRQS';

/** What the IRQ model needs from the binding. */
export interface IrqHost {
  /** 0 when `fd` is an eventfd usable as a trigger, else the errno eventfd_ctx_fdget() gives (EBADF, EINVAL). */
  checkEventfd(fd: number): number;
  /** Add 1 to the eventfd's counter; false when it could not be signalled. */
  signal(fd: number): boolean;
}

/** Which of INTx / MSI / MSI-X is enabled (vfio-pci's `irq_type`). */
export type IrqMode = 'none' | 'intx' | 'msi' | 'msix';

/** A read-only view of the wiring, for tests. */
export interface IrqSnapshot {
  mode: IrqMode;
  /** The trigger eventfd per enabled vector (null: not assigned). INTx has one. */
  vectors: Array<number | null>;
  intxMasked: boolean;
  intxPending: boolean;
  /** The eventfd that unmasks INTx when signalled (stored; the sim does not watch it). */
  intxUnmaskFd: number | null;
  err: number | null;
  req: number | null;
  /** Interrupts delivered to an eventfd since the device was created (loopback triggers included). */
  delivered: number;
}

export class IrqModel {
  private mode: IrqMode = 'none';
  private vectors: Array<number | null> = [];
  private intxMasked = false;
  private intxPending = false;
  private intxUnmaskFd: number | null = null;
  private err: number | null = null;
  private req: number | null = null;
  private delivered = 0;

  private readonly msixDynamic: boolean;

  /**
   * `counts[index]`: vectors of INTX, MSI, MSIX, ERR, REQ. `msixDynamic`: MSI-X vectors beyond
   * those enabled are allocated when a trigger is set (`vdev->has_dyn_msix`); default false.
   */
  constructor(
    private readonly host: IrqHost,
    private readonly counts: readonly number[],
    opts: { msixDynamic?: boolean } = {},
  ) {
    this.msixDynamic = opts.msixDynamic ?? false;
  }

  /** GET_IRQ_INFO's answer for a valid index (vfio_pci_ioctl_get_irq_info()). */
  info(index: number): IrqInfo {
    let flags = VFIO_IRQ_INFO_EVENTFD;
    if (index === VFIO_PCI_INTX_IRQ_INDEX) flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
    else if (index !== VFIO_PCI_MSIX_IRQ_INDEX || !this.msixDynamic) flags |= VFIO_IRQ_INFO_NORESIZE;
    return { index, flags, count: this.counts[index] ?? 0 };
  }

  snapshot(): IrqSnapshot {
    return {
      mode: this.mode,
      vectors: [...this.vectors],
      intxMasked: this.intxMasked,
      intxPending: this.intxPending,
      intxUnmaskFd: this.intxUnmaskFd,
      err: this.err,
      req: this.req,
      delivered: this.delivered,
    };
  }

  /** Drop every trigger (device release: vfio_pci_core_disable() sets DATA_NONE | TRIGGER on all). */
  disableAll(): void {
    this.mode = 'none';
    this.vectors = [];
    this.intxMasked = false;
    this.intxPending = false;
    this.intxUnmaskFd = null;
    this.err = null;
    this.req = null;
  }

  /** VFIO_DEVICE_SET_IRQS with the whole struct in `b`. Throws Errno. */
  setIrqs(b: Buffer): void {
    if (b.length < SIZEOF_IRQ_SET) raise(E.EFAULT, OP);
    const h = decodeIrqSet(b);
    const max = h.index < VFIO_PCI_NUM_IRQS ? this.counts[h.index] : 0;
    if (
      h.argsz < SIZEOF_IRQ_SET ||
      h.index >= VFIO_PCI_NUM_IRQS ||
      h.count >= U32_MAX - h.start ||
      h.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK)
    ) {
      raise(E.EINVAL, OP);
    }
    if (h.start >= max || h.start + h.count > max) raise(E.EINVAL, OP);
    let elem: number;
    switch (h.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
      case VFIO_IRQ_SET_DATA_NONE:
        elem = 0;
        break;
      case VFIO_IRQ_SET_DATA_BOOL:
        elem = 1;
        break;
      case VFIO_IRQ_SET_DATA_EVENTFD:
        elem = 4;
        break;
      default:
        raise(E.EINVAL, OP);
    }
    if (elem && h.argsz - SIZEOF_IRQ_SET < h.count * elem) raise(E.EINVAL, OP);
    if (b.length < SIZEOF_IRQ_SET + h.count * elem) raise(E.EFAULT, OP);
    const data = b.subarray(SIZEOF_IRQ_SET, SIZEOF_IRQ_SET + h.count * elem);
    const fds = elem === 4 ? Array.from({ length: h.count }, (_, i) => data.readInt32LE(4 * i)) : [];
    const bools = elem === 1 ? Array.from(data, (v) => v !== 0) : [];

    const action = h.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    const dataType = h.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    switch (h.index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_MASK) return this.intxMask(h.start, h.count, dataType, bools);
        if (action === VFIO_IRQ_SET_ACTION_UNMASK) return this.intxUnmask(h.start, h.count, dataType, bools, fds);
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.intxTrigger(h.start, h.count, dataType, bools, fds);
        break;
      case VFIO_PCI_MSI_IRQ_INDEX:
      case VFIO_PCI_MSIX_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.msiTrigger(h.index, h.start, h.count, dataType, bools, fds);
        break;
      case VFIO_PCI_ERR_IRQ_INDEX:
      case VFIO_PCI_REQ_IRQ_INDEX:
        if (action === VFIO_IRQ_SET_ACTION_TRIGGER) return this.singleTrigger(h.index, h.start, h.count, dataType, bools, fds);
        break;
    }
    raise(E.ENOTTY, OP);
  }

  /**
   * The device raises vector `vector` of whichever of INTx / MSI / MSI-X is enabled (INTx ignores
   * the vector). Returns true when an eventfd was signalled.
   */
  raise(vector: number): boolean {
    if (this.mode === 'intx') {
      if (this.intxMasked) {
        this.intxPending = true;
        return false;
      }
      this.intxMasked = true; // automasked until UNMASK
      return this.fire(this.vectors[0]);
    }
    if (this.mode === 'msi' || this.mode === 'msix') return this.fire(this.vectors[vector]);
    return false;
  }

  /** The device reports an error (AER) on the ERR eventfd. */
  raiseErr(): boolean {
    return this.fire(this.err);
  }

  /** The host asks for the device back (REQ eventfd). */
  raiseReq(): boolean {
    return this.fire(this.req);
  }

  private fire(fd: number | null | undefined): boolean {
    if (fd === null || fd === undefined) return false;
    const ok = this.host.signal(fd);
    if (ok) this.delivered++;
    return ok;
  }

  private checkFd(fd: number): void {
    const errno = this.host.checkEventfd(fd);
    if (errno) raise(errno, OP);
  }

  // ---- INTx (vfio_pci_set_intx_mask/unmask/trigger)

  private intxMask(start: number, count: number, dataType: number, bools: boolean[]): void {
    if (this.mode !== 'intx' || start !== 0 || count !== 1) raise(E.EINVAL, OP);
    if (dataType === VFIO_IRQ_SET_DATA_NONE) this.intxMasked = true;
    else if (dataType === VFIO_IRQ_SET_DATA_BOOL) {
      if (bools[0]) this.intxMasked = true;
    } else raise(E.ENOTTY, OP);
  }

  private intxUnmask(start: number, count: number, dataType: number, bools: boolean[], fds: number[]): void {
    if (this.mode !== 'intx' || start !== 0 || count !== 1) raise(E.EINVAL, OP);
    if (dataType === VFIO_IRQ_SET_DATA_NONE) this.unmaskIntx();
    else if (dataType === VFIO_IRQ_SET_DATA_BOOL) {
      if (bools[0]) this.unmaskIntx();
    } else if (fds[0] >= 0) {
      this.checkFd(fds[0]);
      this.intxUnmaskFd = fds[0];
    } else {
      this.intxUnmaskFd = null;
    }
  }

  private unmaskIntx(): void {
    this.intxMasked = false;
    if (this.intxPending) {
      this.intxPending = false;
      this.raise(0);
    }
  }

  private intxTrigger(start: number, count: number, dataType: number, bools: boolean[], fds: number[]): void {
    const isIntx = this.mode === 'intx';
    if (isIntx && count === 0 && dataType === VFIO_IRQ_SET_DATA_NONE) {
      this.disableIntx();
      return;
    }
    if (!(isIntx || this.mode === 'none') || start !== 0 || count !== 1) raise(E.EINVAL, OP);
    if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
      const fd = fds[0];
      if (fd >= 0) this.checkFd(fd);
      if (!isIntx) {
        this.mode = 'intx';
        this.intxMasked = false;
        this.intxPending = false;
      }
      this.vectors = [fd >= 0 ? fd : null];
      return;
    }
    if (!isIntx) raise(E.EINVAL, OP);
    // Loopback: fire the trigger as the interrupt handler would, without automasking.
    if (dataType === VFIO_IRQ_SET_DATA_NONE || bools[0]) this.fire(this.vectors[0]);
  }

  private disableIntx(): void {
    this.mode = 'none';
    this.vectors = [];
    this.intxMasked = false;
    this.intxPending = false;
    this.intxUnmaskFd = null;
  }

  // ---- MSI / MSI-X (vfio_pci_set_msi_trigger)

  private msiTrigger(index: number, start: number, count: number, dataType: number, bools: boolean[], fds: number[]): void {
    const want: IrqMode = index === VFIO_PCI_MSIX_IRQ_INDEX ? 'msix' : 'msi';
    const isThis = this.mode === want;
    if (isThis && count === 0 && dataType === VFIO_IRQ_SET_DATA_NONE) {
      this.mode = 'none';
      this.vectors = [];
      return;
    }
    if (!(isThis || this.mode === 'none')) raise(E.EINVAL, OP);
    const dynamic = want === 'msix' && this.msixDynamic;
    if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
      if (isThis) {
        this.setBlock(start, count, fds, dynamic);
        return;
      }
      this.mode = want;
      this.vectors = new Array<number | null>(start + count).fill(null);
      try {
        this.setBlock(start, count, fds, dynamic);
      } catch (e) {
        this.mode = 'none';
        this.vectors = [];
        throw e;
      }
      return;
    }
    if (!isThis) raise(E.EINVAL, OP);
    for (let i = start; i < start + count; i++) {
      if (dataType === VFIO_IRQ_SET_DATA_NONE || bools[i - start]) this.fire(this.vectors[i]);
    }
  }

  /**
   * vfio_msi_set_block() with vfio_msi_set_vector_signal() (module comment): vector by vector;
   * `this.vectors.length` is the allocated range. On failure, every vector from `start` to the
   * failing one is left without a trigger.
   */
  private setBlock(start: number, count: number, fds: number[], dynamic: boolean): void {
    let j = start;
    try {
      for (let i = 0; i < count; i++, j++) {
        const fd = fds[i];
        if (j < this.vectors.length) this.vectors[j] = null;
        if (fd < 0) continue;
        if (j >= this.vectors.length) {
          if (!dynamic) raise(E.EINVAL, OP); // pci_irq_vector(): not allocated
          while (this.vectors.length <= j) this.vectors.push(null); // pci_msix_alloc_irq_at()
        }
        this.checkFd(fd);
        this.vectors[j] = fd;
      }
    } catch (e) {
      for (let k = start; k <= j && k < this.vectors.length; k++) this.vectors[k] = null;
      throw e;
    }
  }

  // ---- ERR / REQ (vfio_pci_set_ctx_trigger_single)

  private singleTrigger(index: number, start: number, count: number, dataType: number, bools: boolean[], fds: number[]): void {
    if (start !== 0 || count > 1) raise(E.EINVAL, OP);
    const isErr = index === VFIO_PCI_ERR_IRQ_INDEX;
    const cur = isErr ? this.err : this.req;
    const set = (fd: number | null): void => {
      if (isErr) this.err = fd;
      else this.req = fd;
    };
    if (dataType === VFIO_IRQ_SET_DATA_NONE) {
      if (cur === null) raise(E.EINVAL, OP);
      if (count) this.fire(cur);
      else set(null);
      return;
    }
    if (dataType === VFIO_IRQ_SET_DATA_BOOL) {
      if (!count) raise(E.EINVAL, OP);
      if (bools[0]) this.fire(cur);
      return;
    }
    if (!count) raise(E.EINVAL, OP);
    const fd = fds[0];
    if (fd === -1) set(null);
    else if (fd >= 0) {
      this.checkFd(fd);
      set(fd);
    }
  }
}
