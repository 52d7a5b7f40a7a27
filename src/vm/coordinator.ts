/**
 * Driving several passed-through devices through a VM's pause / snapshot / restore / resume the
 * way a VMM must.
 *
 * Peer-to-peer rule (include/uapi/linux/vfio.h "VFIO_MIGRATION_P2P", RUNNING_P2P): a device in
 * RUNNING_P2P no longer initiates DMA or interrupts to peers but still answers them. So with
 * several devices, all must reach RUNNING_P2P before any goes to STOP (or one could be stopped
 * while another still issues P2P transactions to it); on resume all leave STOP for RUNNING_P2P
 * before any is RUNNING. QEMU: hw/vfio/migration.c, vfio_vmstate_change_prepare().
 *
 * Blockers (reported before anything is touched):
 *  - a device without migration support blocks snapshot and migration;
 *  - several migratable devices of which one lacks P2P: the quiesce step cannot be done, so
 *    the devices could see P2P traffic from a peer while stopping. Blocked unless the VMM
 *    passes `allowNonP2P` (QEMU refuses the same unless x-allow-p2p... is set; the "multiple
 *    devices without P2P" migration blocker).
 */
import { EventEmitter } from 'eventemitter3';
import { VfioError } from '../base/errors';
import type { StateChange } from '../kernel/migration';
import type { Progress } from './jobs';
import { SnapshotReader } from '../snapshot/reader';
import { SnapshotWriter, type WriterOptions } from '../snapshot/writer';
import { MigState, migStateName } from '../kernel/uapi/vfio';
import type { VfioPciDevice } from '../model/vfio-pci';

export interface Blocker {
  code: 'EVFIO_NOT_MIGRATABLE' | 'EVFIO_NO_P2P';
  devices: string[];
  message: string;
}

export interface CoordinatorEvents {
  state: (change: StateChange) => void;
  progress: (p: Progress) => void;
  blocker: (b: Blocker) => void;
  /** A whole-VM phase began or ended. */
  phase: (p: { phase: 'pause' | 'snapshot' | 'restore' | 'resume'; done: boolean }) => void;
}

export interface CoordinatorOptions {
  /** Accept several migratable devices without P2P support (devices are stopped one by one). */
  allowNonP2P?: boolean;
}

export class MigrationCoordinator extends EventEmitter<CoordinatorEvents> {
  constructor(
    readonly devices: readonly VfioPciDevice[],
    private readonly opts: CoordinatorOptions = {},
  ) {
    super();
    for (const d of devices) {
      d.on('state', (c) => this.emit('state', c));
      d.on('progress', (p) => this.emit('progress', p));
    }
  }

  /** Whether the P2P quiesce step is used: more than one device and all support P2P. */
  get usesP2P(): boolean {
    return this.devices.length > 1 && this.devices.every((d) => d.migration?.supportsP2P);
  }

  /** What prevents a snapshot or migration now (empty: nothing). */
  blockers(): Blocker[] {
    const out: Blocker[] = [];
    const noMig = this.devices.filter((d) => !d.migration).map((d) => d.id);
    if (noMig.length) out.push({ code: 'EVFIO_NOT_MIGRATABLE', devices: noMig, message: `${noMig.join(', ')} cannot be migrated (no VFIO migration support)` });
    const mig = this.devices.filter((d) => d.migration);
    const noP2P = mig.filter((d) => !d.migration!.supportsP2P).map((d) => d.id);
    if (mig.length > 1 && noP2P.length && !this.opts.allowNonP2P) {
      out.push({ code: 'EVFIO_NO_P2P', devices: noP2P, message: `several migratable devices, and ${noP2P.join(', ')} cannot quiesce peer-to-peer traffic (no VFIO_MIGRATION_P2P); pass allowNonP2P to accept` });
    }
    return out;
  }

  /** Throw the first blocker as a VfioError (kind 'unsupported'), emitting each. */
  assertMigratable(step: string): void {
    const b = this.blockers();
    b.forEach((x) => this.emit('blocker', x));
    if (b.length) throw new VfioError(b.map((x) => x.message).join('; '), { code: b[0].code, kind: 'unsupported', step, device: b[0].devices.join(',') });
  }

  /**
   * Pause every device: all to RUNNING_P2P first (P2P), then all to STOP. When one fails (it
   * recovers itself, see VfioPciDevice.transition()), the devices already quiesced or stopped
   * are brought back to RUNNING too — no half-paused VM, as restore() leaves no half-restored
   * one — and the error is rethrown.
   */
  async pause(): Promise<void> {
    this.assertMigratable('pause');
    this.emit('phase', { phase: 'pause', done: false });
    try {
      if (this.usesP2P) for (const d of this.devices) await d.quiesce();
      for (const d of this.devices) await d.pause();
    } catch (e) {
      await this.undoPause(e);
      throw e;
    }
    this.emit('phase', { phase: 'pause', done: true });
  }

  /** Back to RUNNING after a failed pause, leaving STOP through RUNNING_P2P first on P2P devices. */
  private async undoPause(e: unknown): Promise<void> {
    const stateOf = (d: VfioPciDevice): MigState | undefined => {
      try {
        return d.migration!.getState();
      } catch {
        return undefined;
      }
    };
    const touched = this.devices.filter((d) => stateOf(d) !== MigState.RUNNING);
    const again = async (d: VfioPciDevice, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (re) {
        if (e instanceof VfioError) e.message += `; bringing ${d.id} back to RUNNING failed too: ${(re as Error).message}`;
      }
    };
    if (this.usesP2P) for (const d of touched) await again(d, () => d.transition(MigState.RUNNING_P2P, 'pause:undo', MigState.RUNNING));
    for (const d of touched) await again(d, () => d.resume());
  }

  /** Resume every device: all leave STOP/RESUMING for RUNNING_P2P first (P2P), then all to RUNNING. */
  async resume(): Promise<void> {
    this.emit('phase', { phase: 'resume', done: false });
    if (this.usesP2P) for (const d of this.devices) await d.transition(MigState.RUNNING_P2P, 'resume:p2p', MigState.RUNNING);
    for (const d of this.devices) await d.resume();
    this.emit('phase', { phase: 'resume', done: true });
  }

  /**
   * Save every (paused) device into one snapshot file, device i under index i. The file
   * appears complete or not at all. Devices stay in STOP.
   */
  async snapshot(file: string, opts: WriterOptions = {}): Promise<{ file: string; stateBytes: number[] }> {
    this.assertMigratable('snapshot');
    this.emit('phase', { phase: 'snapshot', done: false });
    const notStopped = this.devices.filter((d) => d.migration!.getState() !== MigState.STOP);
    if (notStopped.length) {
      throw new VfioError(`snapshot needs every device paused; ${notStopped.map((d) => `${d.id} is ${migStateName(d.migration!.getState())}`).join(', ')}`, {
        code: 'EVFIO_NOT_PAUSED', kind: 'protocol', step: 'snapshot',
      });
    }
    const writer = await SnapshotWriter.create(file, opts);
    try {
      const stateBytes: number[] = [];
      for (const [i, d] of this.devices.entries()) stateBytes.push((await d.snapshot(writer, i)).stateBytes);
      await writer.commit();
      this.emit('phase', { phase: 'snapshot', done: true });
      return { file, stateBytes };
    } catch (e) {
      await writer.abort();
      throw e;
    }
  }

  /**
   * Restore device i of `file` into device i (each freshly attached with assignBars: false).
   * Everything is validated before any device is touched: the file, and every device's config
   * and BAR layout. Devices are left in RESUMING; call resume().
   */
  async restore(file: string): Promise<{ stateBytes: number[] }> {
    this.assertMigratable('restore');
    this.emit('phase', { phase: 'restore', done: false });
    const reader = await SnapshotReader.open(file, { binding: this.devices[0]?.device.binding });
    try {
      const entries = reader.devices();
      if (entries.length !== this.devices.length) {
        throw new VfioError(`${file} holds ${entries.length} devices, the VM has ${this.devices.length}`, { code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', step: 'restore' });
      }
      // Validate every device before touching any.
      const checked = this.devices.map((d, i) => d.precheck(reader, entries[i]));
      const stateBytes: number[] = [];
      for (const [i, d] of this.devices.entries()) {
        try {
          stateBytes.push((await d.restore(reader, entries[i], checked[i])).stateBytes);
        } catch (e) {
          // No half-restored VM: the devices already loaded are reset too.
          for (const done of this.devices.slice(0, i)) {
            try {
              await done.abortRestore();
            } catch (re) {
              if (e instanceof VfioError) e.message += `; resetting ${done.id} failed too: ${(re as Error).message}`;
            }
          }
          throw e;
        }
      }
      this.emit('phase', { phase: 'restore', done: true });
      return { stateBytes };
    } finally {
      await reader.close();
    }
  }
}
