/**
 * The device-spec grammar of the simulated device (what `SimBinding.open(path)` accepts):
 *
 * ```
 * spec   := "sim" [ ":" SIZE ] { ":" KEY "=" VALUE } [ "#" NAME ]
 * SIZE   := DIGITS [ "B" | "K" | "KiB" | "M" | "MiB" | "G" | "GiB" | "T" | "TiB" ]   (binary units, case-insensitive)
 * NAME   := [A-Za-z0-9_.-]+
 * KEY    := "seed"      VALUE: decimal or 0x-hex u64                  (default: the device's serial)
 *         | "mig"       VALUE: "off" | a number | names joined by "+": stop_copy, p2p, pre_copy
 *         | "precopy"   VALUE: SIZE, the initial data: the blocks holding the first SIZE data bytes
 *                              are served in PRE_COPY first, the others in STOP_COPY
 *         | "block"     VALUE: SIZE, a power of two from 8 to 1GiB: bytes per block of the device
 *                              data, the unit the device rewrites and re-sends (default 4KiB, more
 *                              above 4GiB so that there are at most 2^20 blocks)
 *         | "churn"     VALUE: SIZE [ "/s" ], bytes per second the running device rewrites, in
 *                              whole blocks picked at random (default 0)
 *         | "infov2"    VALUE: "on" (the kernel has PRECOPY_INFOv2: feature 12 opts in, and
 *                              PRECOPY_INFO then reports REINIT) | "off" (default: ENOTTY, as 6.12)
 *         | "end"       VALUE: "zero" (mtty: read() returns 0) | "enomsg" (uAPI wording)
 *         | "maxread"   VALUE: SIZE, the most one read() on a data_fd returns
 *         | "maxwrite"  VALUE: SIZE, the most one write() on a data_fd accepts (short writes)
 *         | "vsc"       VALUE: 0..255, the vendor-specific capability's body revision
 *         | "vsclen"    VALUE: 8..80, the vendor-specific capability's length byte (default 16)
 *         | "devid"     VALUE: decimal or 0x-hex u16, the PCI device id (default 0x5f10)
 *         | "master"    VALUE: "required" (doorbells wedge while COMMAND.MASTER is clear, as real
 *                              DMA engines do) | "ignored" (default: doorbells always complete)
 *         | "dirty"     VALUE: "on" (default: DMA logging) | "off" (no DMA logging: the
 *                              DMA_LOGGING features answer ENOTTY)
 *         | "dirtyranges" VALUE: 1..256, the ranges the device's tracker holds; START with more
 *                              combines them, smallest gaps first (default 256)
 *         | "dirtypage" VALUE: SIZE, a power of two from 4KiB to 1GiB: the page size the driver
 *                              logs at whatever START asks (default: START's, clamped)
 *         | "dirtyfail" VALUE: N, every N-th DMA_LOGGING_REPORT fails with EIO (default 0: none)
 *         | "msixalloc" VALUE: "static" (default: MSI-X is VFIO_IRQ_INFO_NORESIZE, the vectors
 *                              enabled first are all there are) | "dynamic" (kernel 6.5+ on a
 *                              platform that allocates MSI-X vectors one by one: no NORESIZE)
 * ```
 *
 * Examples: `sim`, `sim:4096`, `sim:1MiB:seed=7`, `sim:1GiB#big`, `sim#dst`, `sim:64KiB:mig=stop_copy+p2p`,
 * `sim:master=required#dst` (a destination that needs PCI_COMMAND back), `sim:devid=0x5f11` (another
 * device), `sim:vsc=2` (same device, other host driver), `sim:vsclen=20` (another VSC layout),
 * `sim:dirty=off` (a device for IOMMU dirty tracking or the all-dirty policy),
 * `sim:dirtypage=64KiB:dirtyranges=2:dirtyfail=3` (a coarse, small tracker that fails now and then),
 * `sim:1GiB:churn=64MiB/s:precopy=1GiB` (a live device whose whole state is precopy data, for a
 * live-migration demo), `sim:64KiB:block=512:infov2=on`.
 * A spec with a NAME names a device in the binding's registry: opening it again reaches the same
 * device. Without a NAME every open creates a fresh device.
 */
import { VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY } from '../kernel/uapi/vfio';
import { VSC_LENGTH_MAX, VSC_LENGTH_MIN } from './config';

/** What a spec says; fields left out are `undefined` (the device's defaults apply). */
export interface ParsedSimSpec {
  /** The spec text as given. */
  spec: string;
  name?: string;
  /** Device state size in bytes (the data part of the migration stream). */
  size?: number;
  seed?: bigint;
  /** `false` for `mig=off`. */
  migration?: boolean;
  migrationFlags?: number;
  precopyBytes?: number;
  blockSize?: number;
  /** Bytes per second. */
  churn?: number;
  precopyInfoV2?: boolean;
  precopyEnd?: 'zero' | 'enomsg';
  maxRead?: number;
  maxWrite?: number;
  vscRevision?: number;
  vscLength?: number;
  deviceId?: number;
  busMaster?: 'required' | 'ignored';
  dmaLogging?: boolean;
  dmaLoggingMaxRanges?: number;
  dmaLoggingPageSize?: number;
  dmaLoggingFailEvery?: number;
  msixAlloc?: 'static' | 'dynamic';
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1024 ** 4,
};

/** True when `path` is served by the simulated device: `sim`, `sim:...` or `sim#...`. */
export function isSimPath(path: string): boolean {
  return path === 'sim' || path.startsWith('sim:') || path.startsWith('sim#');
}

/**
 * Parse a byte size: `4096`, `64KiB`, `1MiB`, `1GiB`, `2g` (binary units). Returns `undefined`
 * for anything else, and for values beyond Number.MAX_SAFE_INTEGER.
 */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*([a-zA-Z]*)$/.exec(text.trim());
  if (!m) return undefined;
  const unit = UNITS[m[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const n = Number(m[1]) * unit;
  return Number.isSafeInteger(n) ? n : undefined;
}

/** `65536` → `64KiB`, `1073741824` → `1GiB`, `100` → `100`. */
export function formatSize(n: number): string {
  for (const [unit, mul] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (n >= mul && n % mul === 0) return `${n / mul}${unit}`;
  }
  return String(n);
}

/** Parse `mig=` values: `off`, `7`, `stop_copy+p2p+pre_copy` (names case-insensitive, `-` for `_`). */
function parseMig(v: string): { migration: boolean; flags?: number } | undefined {
  const t = v.trim().toLowerCase().replace(/-/g, '_');
  if (t === 'off' || t === 'none' || t === 'no') return { migration: false };
  if (/^(0x[0-9a-f]+|\d+)$/.test(t)) return { migration: true, flags: Number(t) };
  let flags = 0;
  for (const part of t.split('+')) {
    if (part === 'stop_copy') flags |= VFIO_MIGRATION_STOP_COPY;
    else if (part === 'p2p') flags |= VFIO_MIGRATION_P2P;
    else if (part === 'pre_copy' || part === 'precopy') flags |= VFIO_MIGRATION_PRE_COPY;
    else return undefined;
  }
  return { migration: true, flags };
}

/**
 * Parse a sim device spec (grammar in the module comment). Returns a description of the first
 * problem as a string when the spec is malformed; callers turn that into an error.
 */
export function parseSimSpec(spec: string): ParsedSimSpec | string {
  if (!isSimPath(spec)) return `not a sim spec: ${JSON.stringify(spec)}`;
  const out: ParsedSimSpec = { spec };
  let body = spec;
  const hash = body.indexOf('#');
  if (hash >= 0) {
    const name = body.slice(hash + 1);
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) return `bad device name ${JSON.stringify(name)} (letters, digits, _ . - only)`;
    out.name = name;
    body = body.slice(0, hash);
  }
  if (body === 'sim') return out;
  if (!body.startsWith('sim:')) return `bad sim spec ${JSON.stringify(spec)}`;
  const parts = body.slice(4).split(':');
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const eq = part.indexOf('=');
    if (eq < 0) {
      if (i !== 0) return `size must come first in ${JSON.stringify(spec)}`;
      const size = parseSize(part);
      if (size === undefined) return `bad size ${JSON.stringify(part)} (examples: 4096, 64KiB, 1MiB, 1GiB)`;
      out.size = size;
      continue;
    }
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    switch (key) {
      case 'seed': {
        if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(value)) return `bad seed ${JSON.stringify(value)}`;
        const seed = BigInt(value);
        if (seed >= 1n << 64n) return `seed ${value} does not fit in 64 bits`;
        out.seed = seed;
        break;
      }
      case 'mig': {
        const m = parseMig(value);
        if (!m) return `bad mig value ${JSON.stringify(value)} (off, a number, or stop_copy+p2p+pre_copy)`;
        out.migration = m.migration;
        if (m.flags !== undefined) out.migrationFlags = m.flags;
        break;
      }
      case 'precopy':
      case 'maxread':
      case 'maxwrite': {
        const n = parseSize(value);
        if (n === undefined) return `bad ${key} size ${JSON.stringify(value)}`;
        if (key === 'precopy') out.precopyBytes = n;
        else if (key === 'maxread') out.maxRead = n;
        else out.maxWrite = n;
        break;
      }
      case 'block': {
        const n = parseSize(value);
        if (n === undefined || n < 8 || n > 2 ** 30 || (n & (n - 1)) !== 0) return `bad block ${JSON.stringify(value)} (a power of two from 8 to 1GiB)`;
        out.blockSize = n;
        break;
      }
      case 'churn': {
        const n = parseSize(value.replace(/\/s$/i, ''));
        if (n === undefined) return `bad churn ${JSON.stringify(value)} (bytes per second: 0, 1MiB, 64MiB/s)`;
        out.churn = n;
        break;
      }
      case 'infov2':
        if (value !== 'on' && value !== 'off') return `bad infov2 ${JSON.stringify(value)} (on or off)`;
        out.precopyInfoV2 = value === 'on';
        break;
      case 'end':
        if (value !== 'zero' && value !== 'enomsg') return `bad end ${JSON.stringify(value)} (zero or enomsg)`;
        out.precopyEnd = value;
        break;
      case 'vsc': {
        const n = Number(value);
        if (!Number.isInteger(n) || n < 0 || n > 255) return `bad vsc revision ${JSON.stringify(value)} (0..255)`;
        out.vscRevision = n;
        break;
      }
      case 'vsclen': {
        const n = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(n >= VSC_LENGTH_MIN && n <= VSC_LENGTH_MAX)) return `bad vsclen ${JSON.stringify(value)} (${VSC_LENGTH_MIN}..${VSC_LENGTH_MAX})`;
        out.vscLength = n;
        break;
      }
      case 'devid': {
        const n = /^(0x[0-9a-fA-F]+|\d+)$/.test(value) ? Number(value) : NaN;
        if (!(n >= 0 && n <= 0xffff)) return `bad devid ${JSON.stringify(value)} (a 16-bit number, e.g. 0x5f11)`;
        out.deviceId = n;
        break;
      }
      case 'master':
        if (value !== 'required' && value !== 'ignored') return `bad master ${JSON.stringify(value)} (required or ignored)`;
        out.busMaster = value;
        break;
      case 'dirty':
        if (value !== 'on' && value !== 'off') return `bad dirty ${JSON.stringify(value)} (on or off)`;
        out.dmaLogging = value === 'on';
        break;
      case 'dirtyranges': {
        const n = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(n >= 1 && n <= 256)) return `bad dirtyranges ${JSON.stringify(value)} (1..256)`;
        out.dmaLoggingMaxRanges = n;
        break;
      }
      case 'dirtypage': {
        const n = parseSize(value);
        if (n === undefined || n < 4096 || n > 2 ** 30 || (n & (n - 1)) !== 0) return `bad dirtypage ${JSON.stringify(value)} (a power of two from 4KiB to 1GiB)`;
        out.dmaLoggingPageSize = n;
        break;
      }
      case 'dirtyfail': {
        const n = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!Number.isSafeInteger(n)) return `bad dirtyfail ${JSON.stringify(value)} (N: every N-th report fails; 0: none)`;
        out.dmaLoggingFailEvery = n;
        break;
      }
      case 'msixalloc':
        if (value !== 'static' && value !== 'dynamic') return `bad msixalloc ${JSON.stringify(value)} (static or dynamic)`;
        out.msixAlloc = value;
        break;
      default:
        return `unknown sim spec key ${JSON.stringify(key)} (seed, mig, precopy, block, churn, infov2, end, maxread, maxwrite, vsc, vsclen, devid, master, dirty, dirtyranges, dirtypage, dirtyfail, msixalloc)`;
    }
  }
  return out;
}
