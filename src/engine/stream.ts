/**
 * The device-state stream: where the engine (./engine.ts) writes the devices of a VM when it
 * saves them, and where it reads them from when it loads them. Two implementations:
 *  - the snapshot file (src/snapshot/file-stream.ts): sections in a file, written and read
 *    device after device;
 *  - the live stream (src/live): frames on a connection to another process, the destination
 *    loading them as they arrive.
 * The engine decides the order and drives the devices' migration states; a stream only moves
 * records and bytes. What goes through it, in order: the devices' records (identity, migration
 * flags, config space: what a destination pairs and checks them by), each device's VFIO state
 * (the bytes of its data_fd: PRE_COPY rounds, then STOP_COPY to the end), then each device's
 * model state ("config last": the guest may change it until the device stops).
 */
import type { Binding } from '../kernel/binding/types';
import type { DeviceRecord } from '../model/migratable';

/** Progress of one device's state transfer. */
export interface Progress {
  /** The device's id (`nic0`). */
  device: string;
  phase: 'save' | 'load';
  /** Bytes of its VFIO state moved so far. */
  bytes: number;
  /** Expected total, when known: VFIO_DEVICE_FEATURE_MIG_DATA_SIZE on save, the stream's total on load. */
  expected?: number;
}

/** A data_fd and how to reach it. */
export interface DataFdTarget {
  binding: Binding;
  fd: number;
  /** The device's id, for errors. */
  device: string;
  /** Transfer buffer size in bytes (default: the stream's, 1 MiB). */
  bufferSize?: number;
}

/** Options of StateSink.writeState. */
export interface WriteStateOptions {
  /**
   * The data_fd is a PRE_COPY session: read() == 0 or ENOMSG mean "nothing more for now"
   * (uAPI vfio.h "PRE_COPY"; mtty returns 0), not the end of the state.
   */
  precopy?: boolean;
  /** Bytes of this device's state written so far, after each piece (cumulative over calls). */
  onProgress?: (bytes: number) => void;
  /** Abort the transfer (the pump stops, the call rejects). */
  signal?: AbortSignal;
}

/** Where a save goes. Calls come from the engine in the order of the file comment. */
export interface StateSink {
  /** For messages: the file path, the peer's address. */
  readonly name: string;
  /**
   * The devices, before any state, index i = the engine's device i. A file writes their DEVICE
   * and CONFIG sections; a live stream sends them to the destination and waits for its verdict,
   * so that an incompatible destination is refused here, before any device has stopped.
   */
  begin(records: readonly DeviceRecord[]): Promise<void>;
  /**
   * Move device `index`'s state from its data_fd: to the end of the state (STOP_COPY: read()
   * == 0), or with `precopy` to PRE_COPY's temporary end. Several calls for one device continue
   * its one saving session. Resolves with the bytes this call moved and why it stopped.
   */
  writeState(index: number, from: DataFdTarget, opts?: WriteStateOptions): Promise<{ bytes: number; end: 'eof' | 'for-now' }>;
  /** Device `index`'s state is complete. */
  endState(index: number): Promise<void>;
  /**
   * Live streams: all of device `index`'s initial precopy data has been written (its
   * VFIO_MIG_GET_PRECOPY_INFO `initial_bytes` read 0 after its data was sent). The destination
   * acknowledges the switchover once it has loaded every device's (QEMU switchover-ack).
   */
  initialSent?(index: number): Promise<void>;
  /** Live streams: device `index` reported new initial data (PRECOPY_INFOv2 REINIT). */
  reinit?(index: number): Promise<void>;
  /** Device `index`'s model state (after every device's state). */
  writeModel(index: number, body: Buffer): Promise<void>;
  /**
   * Nothing more will be written. A file is complete but not yet committed (its owner commits);
   * a live stream sends its end (with `summary`) and waits for the destination's report.
   */
  finish(summary?: SaveSummary): Promise<void>;
  /** Give up: nothing of this save may be used (a file's temporary is removed; a peer is told). Never throws. */
  abort(reason: unknown): Promise<void>;
}

/** What a live save moved and cost, for the stream's end (a live destination reports it too). */
export interface SaveSummary {
  /** Device downtime of the switchover, ms. */
  downtimeMs?: number;
  /** Precopy rounds. */
  iterations?: number;
  /** State bytes sent in precopy, and in the switchover. */
  precopyBytes?: number;
  stopCopyBytes?: number;
}

/** A device as a stream holds it. */
export interface SavedDevice {
  /** The stream's index of the device. */
  index: number;
  record: DeviceRecord;
  /**
   * The model state when the stream has it before the load (a file): undefined when the saved
   * device has none; a live stream sends it at the end (`modelLater`).
   */
  model?: Buffer;
  /** True when the model state arrives only with load() (a live stream). */
  modelLater?: boolean;
  /** Expected bytes of VFIO state, when the stream knows (a file). */
  stateBytes?: number;
}

/** What the engine gives a source to load into. */
export interface LoadTargets {
  /** Device `index`'s RESUMING data_fd. */
  target(index: number): DataFdTarget;
  /** Bytes of device `index`'s state written so far. */
  progress(index: number, bytes: number): void;
}

/** Where a load comes from. */
export interface StateSource {
  readonly name: string;
  /** The saved devices (a file: validated already; a live stream: from its handshake). */
  devices(): readonly SavedDevice[];
  /**
   * Every device passed its checks and is in RESUMING (a live stream answers the source's
   * handshake with its acceptance here). Called once, before load().
   */
  ready?(): Promise<void>;
  /**
   * The load failed or was refused (before or after ready()): a live stream tells its source,
   * which then resumes its devices. Never throws.
   */
  abort?(reason: unknown): Promise<void>;
  /**
   * Write every device's state into its target as the stream delivers it, each piece's checksum
   * checked before it reaches the device. Resolves, at the end of the stream, with each device's
   * model state (by index; undefined: none) and the bytes loaded.
   */
  load(targets: LoadTargets, opts?: { signal?: AbortSignal }): Promise<Map<number, { model?: Buffer; bytes: number }>>;
}
