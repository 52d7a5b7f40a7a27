/**
 * Signals during a job: `snapshot`, `restore`, `migrate`, `incoming` and `demo` (the commands with
 * a `cancel` text, ./command.ts).
 *
 * SIGINT, SIGTERM and SIGHUP no longer kill the process in the middle of a transfer. The first
 * one aborts the job's AbortSignal and the command says what that does to it (its `cancel`
 * text); the library stops the transfer (between pump calls or chunks today, inside a long pump
 * call once the pump can be interrupted) and cleans up:
 *
 *  - snapshot: the temporary file is removed (no snapshot is written) and the devices return to
 *    the state they were in (--leave-stopped too: it applies only to a snapshot that is written);
 *  - restore: every device already in RESUMING is reset (none runs the partial state); before
 *    that, as during --verify, they are left untouched;
 *  - migrate: until every device's state is sent, the destination is told (CANCEL, or sees the
 *    connection end) and resets its devices, and the source devices run on with their state;
 *    after that only the wait for the destination's answer ends — the source devices stay in
 *    STOP, the outcome unknown (EVFIO_OUTCOME_UNKNOWN);
 *  - incoming: waiting for the connection, listening stops and the devices are untouched; during
 *    the load every device is reset and the source is told (CANCEL, or sees the connection
 *    end), so that it runs on;
 *  - demo: the snapshot or restore under way stops, its devices and directory are cleaned up.
 *
 * The job then ends with a cancelled error (ECANCELED) that is printed with where each device was
 * left, and the exit status is 128 + the signal's number: 129 (SIGHUP), 130 (SIGINT), 143
 * (SIGTERM). Further signals change nothing: the cleanup under way finishes (it is what leaves no
 * half-written file and no device in STOP_COPY); a note says so. Only SIGKILL ends it sooner.
 *
 * A signal that arrives after the job's last cancellable step (a snapshot's rename, a restore's
 * or an incoming's last byte of state loaded) lets the job complete; the exit status is still
 * the signal's and the message says the job had completed.
 */

/** Exit status after each handled signal: 128 + its number. */
export const SIGNAL_EXIT_CODES = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 } as const;

export type JobSignal = keyof typeof SIGNAL_EXIT_CODES;

export const JOB_SIGNALS = Object.keys(SIGNAL_EXIT_CODES) as JobSignal[];

/** What a SignalScope needs of `process` (tests pass an EventEmitter). */
export interface SignalSource {
  on(event: JobSignal, fn: () => void): unknown;
  off(event: JobSignal, fn: () => void): unknown;
}

/**
 * The signal handling of one job: an AbortController aborted by the first signal, handlers
 * installed for the job's lifetime only (outside a job the default action applies).
 */
export class SignalScope {
  private readonly controller = new AbortController();
  private readonly handlers = new Map<JobSignal, () => void>();
  /** The first signal received, if any. */
  received?: JobSignal;
  /** Signals received in all. */
  count = 0;

  /**
   * @param onSignal told of every signal (`count` 1 for the first): prints what happens
   */
  constructor(
    private readonly onSignal: (sig: JobSignal, count: number) => void,
    private readonly source: SignalSource = process,
  ) {}

  /** Aborted by the first signal. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The exit status the received signal calls for, or undefined. */
  get exitCode(): number | undefined {
    return this.received ? SIGNAL_EXIT_CODES[this.received] : undefined;
  }

  install(): this {
    for (const sig of JOB_SIGNALS) {
      const fn = (): void => this.deliver(sig);
      this.handlers.set(sig, fn);
      this.source.on(sig, fn);
    }
    return this;
  }

  /**
   * Remove the handlers: the default action applies again. Idempotent. Once a signal was
   * received the handlers stay until the process exits (with that signal's status): a second
   * signal right behind the first must not kill the process on its way out.
   */
  dispose(): void {
    if (this.received) return;
    for (const [sig, fn] of this.handlers) this.source.off(sig, fn);
    this.handlers.clear();
  }

  /** Handle `sig` as if it had arrived. */
  deliver(sig: JobSignal): void {
    this.count++;
    if (!this.received) this.received = sig;
    try {
      this.onSignal(sig, this.count);
    } finally {
      if (this.count === 1) this.controller.abort();
    }
  }
}
