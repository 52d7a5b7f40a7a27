/**
 * Our uAPI values (src/uapi/vfio.ts, structs.ts, iommufd.ts: Linux 6.12) against the C headers
 * of this machine: a generated C program includes <linux/vfio.h> (and <linux/iommufd.h> when
 * `__has_include` finds it), prints every constant and struct layout the header has, and the
 * values are compared here. The host header may be older than 6.12; what it lacks is listed,
 * not failed. Structs are checked through our codec: encoders must write each field at the C
 * `offsetof`, and decoders must read it from there.
 *
 * UAPI_INCLUDE_DIR=/path/to/linux/usr/include checks against another header install (for
 * example `make headers_install` of a newer kernel) instead of the system's; CC picks the
 * compiler. When the kernel tier's cache holds the 6.12 uAPI headers
 * ($VFIO_KERNEL_CACHE/uapi/include, default ~/.cache/vfio-kernel; built by
 * ../shared/kernel-vfio/build.sh), the whole suite runs a second time against them, so that what
 * an older system header lacks (iommufd.h: HWPT and dirty tracking) is checked too.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import * as iommufd from '../../src/kernel/uapi/iommufd';
import * as structs from '../../src/kernel/uapi/structs';
import * as vfio from '../../src/kernel/uapi/vfio';
import { NO_CC_REASON, findCompiler } from '../helpers/cc';
import { useTempDir } from '../helpers/temp-dir';
import { describeUnless } from '../helpers/skip';

// ------------------------------------------------------------------------------------ compiler

const CC = findCompiler();
if (!CC) console.warn(`uapi-header.test: SKIPPED: ${NO_CC_REASON}`);

// ------------------------------------------------------------------------------------ constants

/**
 * Constants that are enumerators in the headers, not macros: `#ifdef` cannot see them, so each
 * is printed only when a macro introduced in the same kernel release is defined (`null`: in
 * every header this library can meet).
 */
const ENUM_GATES: ReadonlyMap<string, string | null> = new Map<string, string | null>([
  ...['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'].map(
    (r) => [`VFIO_PCI_${r}_REGION_INDEX`, null] as const,
  ),
  ['VFIO_PCI_NUM_REGIONS', null],
  ['VFIO_PCI_INTX_IRQ_INDEX', null],
  ['VFIO_PCI_MSI_IRQ_INDEX', null],
  ['VFIO_PCI_MSIX_IRQ_INDEX', null],
  ['VFIO_PCI_ERR_IRQ_INDEX', null],
  // REQ came in 4.1 and moved NUM_IRQS from 4 to 5; VFIO_DEVICE_IOEVENTFD (4.17) is later.
  ['VFIO_PCI_REQ_IRQ_INDEX', 'VFIO_DEVICE_IOEVENTFD'],
  ['VFIO_PCI_NUM_IRQS', 'VFIO_DEVICE_IOEVENTFD'],
  // enum vfio_device_mig_state: migration v2 (5.18), PRE_COPY states (6.2).
  ...['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P'].map(
    (s) => [`VFIO_DEVICE_STATE_${s}`, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE'] as const,
  ),
  ['VFIO_DEVICE_STATE_PRE_COPY', 'VFIO_MIG_GET_PRECOPY_INFO'],
  ['VFIO_DEVICE_STATE_PRE_COPY_P2P', 'VFIO_MIG_GET_PRECOPY_INFO'],
  // iommufd.h: `enum { IOMMUFD_CMD_BASE = 0x80, ... }`, enum iommufd_ioas_map_flags.
  ['IOMMUFD_CMD_BASE', 'IOMMU_IOAS_MAP'],
  ['IOMMU_IOAS_MAP_FIXED_IOVA', 'IOMMU_IOAS_MAP'],
  ['IOMMU_IOAS_MAP_WRITEABLE', 'IOMMU_IOAS_MAP'],
  ['IOMMU_IOAS_MAP_READABLE', 'IOMMU_IOAS_MAP'],
  // GET_HW_INFO (6.6); HWPT data types, dirty tracking and out_capabilities (6.7).
  ['IOMMU_HW_INFO_TYPE_NONE', 'IOMMU_GET_HW_INFO'],
  ['IOMMU_HWPT_DATA_NONE', 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
  ['IOMMU_HWPT_ALLOC_DIRTY_TRACKING', 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
  ['IOMMU_HW_CAP_DIRTY_TRACKING', 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
  ['IOMMU_HWPT_DIRTY_TRACKING_ENABLE', 'IOMMU_HWPT_SET_DIRTY_TRACKING'],
  ['IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR', 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
]);

/**
 * Macros that must exist when another macro of the same release does: if one is missing while
 * its sibling is there, the name is wrong (or it is an enumerator now) and the check would be
 * silently skipped, so that fails.
 */
const MACRO_SIBLINGS: ReadonlyMap<string, string> = new Map([
  ['VFIO_MIGRATION_PRE_COPY', 'VFIO_MIG_GET_PRECOPY_INFO'],
  ['VFIO_DEVICE_FEATURE_MIG_DATA_SIZE', 'VFIO_MIG_GET_PRECOPY_INFO'],
  ['VFIO_MIG_GET_PRECOPY_INFO', 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE'],
  ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'VFIO_DEVICE_BIND_IOMMUFD'],
  ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'VFIO_DEVICE_BIND_IOMMUFD'],
  ['VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP', 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START'],
  ['VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT', 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START'],
  ['VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP', 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY'],
  ['VFIO_DEVICE_FEATURE_LOW_POWER_EXIT', 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY'],
  ...['DESTROY', 'IOAS_ALLOC', 'IOAS_ALLOW_IOVAS', 'IOAS_COPY', 'IOAS_IOVA_RANGES', 'IOAS_MAP', 'IOAS_UNMAP'].map(
    (c) => [`IOMMU_${c}`, 'IOMMUFD_TYPE'] as const,
  ),
  ['IOMMU_HWPT_ALLOC', 'IOMMU_GET_HW_INFO'],
  ['IOMMU_GET_HW_INFO', 'IOMMU_HWPT_ALLOC'],
  ['IOMMU_HWPT_SET_DIRTY_TRACKING', 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
  ['IOMMU_HWPT_GET_DIRTY_BITMAP', 'IOMMU_HWPT_SET_DIRTY_TRACKING'],
]);

/** Our constants that are not in any uAPI header, with the reason. */
const NOT_UAPI: ReadonlyMap<string, string> = new Map([
  ['VFIO_PCI_OFFSET_SHIFT', 'kernel-private (drivers/vfio/pci/vfio_pci_priv.h)'],
]);

/** Every numeric VFIO_* / IOMMU* export of our uAPI modules, plus enum vfio_device_mig_state. */
function ourConstants(): Map<string, number> {
  const out = new Map<string, number>();
  for (const mod of [vfio, structs, iommufd] as unknown as Array<Record<string, unknown>>) {
    for (const [name, value] of Object.entries(mod)) {
      if (typeof value === 'number' && /^(VFIO|IOMMU|IOMMUFD)_[A-Z0-9_v]+$/.test(name) && !NOT_UAPI.has(name)) {
        out.set(name, value);
      }
    }
  }
  for (const [name, value] of Object.entries(vfio.MigState)) {
    if (typeof value === 'number') out.set(`VFIO_DEVICE_STATE_${name}`, value);
  }
  return out;
}
const CONSTANTS = ourConstants();

type Group = 'ioctl numbers' | 'device states (enum)' | 'PCI indexes (enum)' | 'device features' | 'flags and misc';
function groupOf(name: string, value: number): Group {
  if (value >= 0x3b00 && value <= 0x3bff) return 'ioctl numbers'; // _IO(';', nr)
  if (name.startsWith('VFIO_DEVICE_STATE_')) return 'device states (enum)';
  if (name.startsWith('VFIO_PCI_')) return 'PCI indexes (enum)';
  if (name.startsWith('VFIO_DEVICE_FEATURE_')) return 'device features';
  return 'flags and misc';
}
const GROUPS: readonly Group[] = [
  'ioctl numbers',
  'device features',
  'device states (enum)',
  'PCI indexes (enum)',
  'flags and misc',
];

// ------------------------------------------------------------------------------------ structs

/** Member widths as our codec uses them ('u8' only for raw byte checks, 'flex' for `data[]`). */
type Width = 'u8' | 'u32' | 's32' | 'u64' | 'flex';
/** The header's layout of one struct, as the C program printed it. */
interface Layout {
  size: number;
  members: Map<string, { offset: number; size: number; signed: boolean }>;
  off(member: string): number;
}
/** One field the codec wrote, checked at `base + offsetof` with the width we declare. */
type Check = readonly [member: string, value: number | bigint];
/** A byte-level check: label, byte offset in the buffer (-1: the buffer length), width, value. */
type Raw = [label: string, offset: number, width: Width, value: number | bigint];
interface EncodeCase {
  name: string;
  run(L: Layout, ctx: Layouts): { buf: Buffer; base?: number; checks: Check[]; raw?: Raw[] };
}
interface DecodeCase {
  name: string;
  /** Where the struct starts in the buffer the decoder takes (a feature payload: after the header). */
  base?(ctx: Layouts): number;
  run(buf: Buffer): Record<string, number | bigint>;
  /** Members the decoder returns, as C member → key of `run`'s result (defaults to the same name). */
  fields: Record<string, string>;
  /** Members whose place the decoder reports as a sub-buffer offset rather than a value. */
  tails?: Record<string, (buf: Buffer) => number>;
}
interface StructSpec {
  c: string;
  header: 'vfio.h' | 'iommufd.h';
  /** A macro introduced together with the struct: the struct is compiled only when it is defined. */
  gate: string;
  /** Our size constants for this struct: export name → value. */
  sizes: Record<string, number>;
  /** C members we encode or decode, with the width our codec uses. */
  members: ReadonlyArray<readonly [string, Width]>;
  /** Other header layouts that are compatible (argsz-extensible structs that grew or shrank). */
  variants?: ReadonlyArray<{ size: number; when?: string; note: string }>;
  /** Our OFFSETOF_* constants: export name → member. */
  offsets?: Record<string, string>;
  encode?: EncodeCase[];
  decode?: DecodeCase[];
}
type Layouts = { get(c: string): Layout };

/** Distinctive test values: different in every byte lane and per member, below 2^53. */
const U32 = (i: number) => (0x5a010203 + i * 0x01020304) >>> 0;
const S32 = (i: number) => -1000 - 17 * i;
const U64 = (i: number) => (BigInt(0x1a0000 + i) << 32n) | BigInt((0x2b030507 + i * 0x01010101) >>> 0);

const featureData = (ctx: Layouts) => ctx.get('vfio_device_feature').off('data');

const S = structs;
const I = iommufd;
const STRUCTS: readonly StructSpec[] = [
  {
    c: 'vfio_group_status',
    header: 'vfio.h',
    gate: 'VFIO_GROUP_GET_STATUS',
    sizes: { SIZEOF_GROUP_STATUS: S.SIZEOF_GROUP_STATUS },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
    ],
    encode: [
      {
        name: 'encodeGroupStatusQuery',
        run: (L) => ({ buf: S.encodeGroupStatusQuery(), checks: [['argsz', L.size], ['flags', 0]] }),
      },
    ],
  },
  {
    c: 'vfio_device_info',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_GET_INFO',
    sizes: { SIZEOF_DEVICE_INFO: S.SIZEOF_DEVICE_INFO },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['num_regions', 'u32'],
      ['num_irqs', 'u32'],
      ['cap_offset', 'u32'],
    ],
    variants: [
      {
        size: 20,
        note: 'older header: ends at cap_offset, no trailing `__u32 pad` (this kernel checks argsz >= offsetofend(num_irqs), so our argsz 24 is fine)',
      },
    ],
    encode: [
      {
        name: 'encodeDeviceInfoQuery',
        run: () => ({ buf: S.encodeDeviceInfoQuery(), checks: [['argsz', S.SIZEOF_DEVICE_INFO]] }),
      },
      {
        name: 'encodeDeviceInfo',
        run: () => {
          const buf = Buffer.alloc(S.SIZEOF_DEVICE_INFO);
          S.encodeDeviceInfo(buf, { flags: U32(1), numRegions: U32(2), numIrqs: U32(3), capOffset: U32(4) });
          return { buf, checks: [['flags', U32(1)], ['num_regions', U32(2)], ['num_irqs', U32(3)], ['cap_offset', U32(4)]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodeDeviceInfo',
        run: (b) => ({ ...S.decodeDeviceInfo(b) }),
        fields: { flags: 'flags', num_regions: 'numRegions', num_irqs: 'numIrqs', cap_offset: 'capOffset' },
      },
    ],
  },
  {
    c: 'vfio_region_info',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_GET_REGION_INFO',
    sizes: { SIZEOF_REGION_INFO: S.SIZEOF_REGION_INFO },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['index', 'u32'],
      ['cap_offset', 'u32'],
      ['size', 'u64'],
      ['offset', 'u64'],
    ],
    encode: [
      {
        name: 'encodeRegionInfoQuery',
        run: (L) => ({ buf: S.encodeRegionInfoQuery(7), checks: [['argsz', L.size], ['index', 7]] }),
      },
      {
        name: 'encodeRegionInfo',
        run: () => {
          const buf = Buffer.alloc(S.SIZEOF_REGION_INFO);
          const v = { flags: U32(1), index: U32(2), capOffset: U32(3), size: U64(4), offset: U64(5) };
          S.encodeRegionInfo(buf, { ...v, size: Number(v.size), offset: Number(v.offset) });
          return {
            buf,
            checks: [['flags', v.flags], ['index', v.index], ['cap_offset', v.capOffset], ['size', v.size], ['offset', v.offset]],
          };
        },
      },
    ],
    decode: [
      {
        name: 'decodeRegionInfo',
        run: (b) => ({ ...S.decodeRegionInfo(b) }),
        fields: { flags: 'flags', index: 'index', cap_offset: 'capOffset', size: 'size', offset: 'offset' },
      },
    ],
  },
  {
    c: 'vfio_irq_info',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_GET_IRQ_INFO',
    sizes: { SIZEOF_IRQ_INFO: S.SIZEOF_IRQ_INFO },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['index', 'u32'],
      ['count', 'u32'],
    ],
    encode: [
      {
        name: 'encodeIrqInfoQuery',
        run: (L) => ({ buf: S.encodeIrqInfoQuery(U32(2)), checks: [['argsz', L.size], ['index', U32(2)]] }),
      },
      {
        name: 'encodeIrqInfo',
        run: () => {
          const buf = Buffer.alloc(S.SIZEOF_IRQ_INFO);
          S.encodeIrqInfo(buf, { flags: U32(1), index: U32(2), count: U32(3) });
          return { buf, checks: [['flags', U32(1)], ['index', U32(2)], ['count', U32(3)]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodeIrqInfo',
        run: (b) => ({ ...S.decodeIrqInfo(b) }),
        fields: { flags: 'flags', index: 'index', count: 'count' },
      },
    ],
  },
  {
    c: 'vfio_irq_set',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_SET_IRQS',
    sizes: { SIZEOF_IRQ_SET: S.SIZEOF_IRQ_SET },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['index', 'u32'],
      ['start', 'u32'],
      ['count', 'u32'],
      ['data', 'flex'],
    ],
    encode: [
      {
        name: 'encodeIrqSet (eventfds)',
        run: (L) => {
          const fds = [S32(10), S32(11), -1];
          const buf = S.encodeIrqSet({ flags: U32(1), index: U32(2), start: U32(3), count: 3, eventfds: fds });
          return {
            buf,
            checks: [['argsz', L.size + 12], ['flags', U32(1)], ['index', U32(2)], ['start', U32(3)], ['count', 3]],
            raw: fds.map((fd, i): Raw => [`data[${i}] (s32 eventfd)`, L.off('data') + 4 * i, 's32', fd]),
          };
        },
      },
      {
        name: 'encodeIrqSet (bools)',
        run: (L) => {
          const buf = S.encodeIrqSet({ flags: U32(1), index: 1, start: 0, count: 2, bools: [true, false] });
          return {
            buf,
            checks: [['argsz', L.size + 2], ['count', 2]],
            raw: [
              ['data[0] (u8 bool)', L.off('data'), 'u8', 1],
              ['data[1] (u8 bool)', L.off('data') + 1, 'u8', 0],
            ],
          };
        },
      },
    ],
    decode: [
      {
        name: 'decodeIrqSet',
        run: (b) => {
          const d = S.decodeIrqSet(b);
          return { argsz: d.argsz, flags: d.flags, index: d.index, start: d.start, count: d.count };
        },
        fields: { argsz: 'argsz', flags: 'flags', index: 'index', start: 'start', count: 'count' },
        tails: { data: (b) => S.decodeIrqSet(b).data.byteOffset - b.byteOffset },
      },
    ],
  },
  {
    c: 'vfio_device_feature',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE',
    sizes: { SIZEOF_DEVICE_FEATURE: S.SIZEOF_DEVICE_FEATURE },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['data', 'flex'],
    ],
    encode: [
      {
        name: 'encodeFeature',
        run: (L) => {
          const payload = Buffer.from([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18]);
          const buf = S.encodeFeature(vfio.VFIO_DEVICE_FEATURE_MIGRATION, 'probe-get', 8, payload);
          const flags = vfio.VFIO_DEVICE_FEATURE_PROBE | vfio.VFIO_DEVICE_FEATURE_GET | vfio.VFIO_DEVICE_FEATURE_MIGRATION;
          return {
            buf,
            checks: [['argsz', L.size + 8], ['flags', flags]],
            raw: [['data[0..8] (payload)', L.off('data'), 'u64', payload.readBigUInt64LE(0)]],
          };
        },
      },
    ],
    decode: [
      {
        name: 'decodeFeatureHeader',
        run: (b) => {
          const d = S.decodeFeatureHeader(b);
          return { argsz: d.argsz, flags: d.flags };
        },
        fields: { argsz: 'argsz', flags: 'flags' },
        tails: { data: (b) => S.decodeFeatureHeader(b).payload.byteOffset - b.byteOffset },
      },
    ],
  },
  {
    c: 'vfio_device_feature_migration',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_MIGRATION',
    sizes: { SIZEOF_FEATURE_MIGRATION: S.SIZEOF_FEATURE_MIGRATION },
    members: [['flags', 'u64']],
    encode: [
      {
        name: 'encodeMigrationFlags',
        run: (_L, ctx) => {
          const buf = S.encodeFeature(vfio.VFIO_DEVICE_FEATURE_MIGRATION, 'get', S.SIZEOF_FEATURE_MIGRATION);
          S.encodeMigrationFlags(buf, U32(1));
          return { buf, base: featureData(ctx), checks: [['flags', BigInt(U32(1))]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodeMigrationFlags',
        base: featureData,
        run: (b) => ({ flags: S.decodeMigrationFlags(b) }),
        fields: { flags: 'flags' },
      },
    ],
  },
  {
    c: 'vfio_device_feature_mig_state',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE',
    sizes: { SIZEOF_FEATURE_MIG_STATE: S.SIZEOF_FEATURE_MIG_STATE },
    offsets: { OFFSETOF_MIG_STATE_DATA_FD: 'data_fd' },
    members: [
      ['device_state', 'u32'],
      ['data_fd', 's32'],
    ],
    encode: [
      {
        name: 'encodeMigStateSet',
        run: (L, ctx) => {
          const buf = S.encodeMigStateSet(vfio.MigState.STOP_COPY);
          const hdr = ctx.get('vfio_device_feature');
          return {
            buf,
            base: featureData(ctx),
            checks: [['device_state', vfio.MigState.STOP_COPY], ['data_fd', -1]],
            raw: [
              ['vfio_device_feature.argsz', hdr.off('argsz'), 'u32', hdr.size + L.size],
              [
                'vfio_device_feature.flags',
                hdr.off('flags'),
                'u32',
                vfio.VFIO_DEVICE_FEATURE_SET | vfio.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
              ],
            ],
          };
        },
      },
      {
        name: 'encodeMigState',
        run: (_L, ctx) => {
          const buf = S.encodeFeature(vfio.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 'get', S.SIZEOF_FEATURE_MIG_STATE);
          S.encodeMigState(buf, { deviceState: U32(1), dataFd: S32(2) });
          return { buf, base: featureData(ctx), checks: [['device_state', U32(1)], ['data_fd', S32(2)]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodeMigState',
        base: featureData,
        run: (b) => ({ ...S.decodeMigState(b) }),
        fields: { device_state: 'deviceState', data_fd: 'dataFd' },
      },
    ],
  },
  {
    c: 'vfio_device_feature_mig_data_size',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE',
    sizes: { SIZEOF_FEATURE_MIG_DATA_SIZE: S.SIZEOF_FEATURE_MIG_DATA_SIZE },
    members: [['stop_copy_length', 'u64']],
    encode: [
      {
        name: 'encodeMigDataSize',
        run: (_L, ctx) => {
          const buf = S.encodeFeature(vfio.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 'get', S.SIZEOF_FEATURE_MIG_DATA_SIZE);
          S.encodeMigDataSize(buf, Number(U64(1)));
          return { buf, base: featureData(ctx), checks: [['stop_copy_length', U64(1)]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodeMigDataSize',
        base: featureData,
        run: (b) => ({ stop_copy_length: S.decodeMigDataSize(b) }),
        fields: { stop_copy_length: 'stop_copy_length' },
      },
    ],
  },
  {
    c: 'vfio_device_feature_dma_logging_control',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START',
    sizes: { SIZEOF_DMA_LOGGING_CONTROL: S.SIZEOF_DMA_LOGGING_CONTROL },
    members: [
      ['page_size', 'u64'],
      ['num_ranges', 'u32'],
      ['__reserved', 'u32'],
      ['ranges', 'u64'],
    ],
    encode: [
      {
        name: 'encodeDmaLoggingControl',
        run: () => ({
          buf: S.encodeDmaLoggingControl(U64(1), U32(2), U64(3)),
          checks: [['page_size', U64(1)], ['num_ranges', U32(2)], ['__reserved', 0], ['ranges', U64(3)]],
        }),
      },
    ],
    decode: [
      {
        name: 'decodeDmaLoggingControl',
        run: (b) => ({ ...S.decodeDmaLoggingControl(b) }),
        fields: { page_size: 'pageSize', num_ranges: 'numRanges', ranges: 'rangesAddr' },
      },
    ],
  },
  {
    c: 'vfio_device_feature_dma_logging_range',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START',
    sizes: { SIZEOF_DMA_LOGGING_RANGE: S.SIZEOF_DMA_LOGGING_RANGE, DMA_LOGGING_RANGE_SIZE: vfio.DMA_LOGGING_RANGE_SIZE },
    members: [
      ['iova', 'u64'],
      ['length', 'u64'],
    ],
    encode: [
      {
        name: 'encodeDmaLoggingRanges (2 ranges: the second at sizeof)',
        run: (L) => {
          const buf = S.encodeDmaLoggingRanges([
            { iova: U64(1), length: U64(2) },
            { iova: U64(3), length: U64(4) },
          ]);
          return {
            buf,
            checks: [['iova', U64(1)], ['length', U64(2)]],
            raw: [
              ['[1].iova', L.size + L.off('iova'), 'u64', U64(3)],
              ['[1].length', L.size + L.off('length'), 'u64', U64(4)],
              ['buffer length (2 × sizeof)', -1, 'u32', 2 * L.size],
            ],
          };
        },
      },
    ],
    decode: [
      {
        name: 'decodeDmaLoggingRanges (the first of one)',
        run: (b) => ({ ...S.decodeDmaLoggingRanges(b, 1)[0] }),
        fields: { iova: 'iova', length: 'length' },
      },
    ],
  },
  {
    c: 'vfio_device_feature_dma_logging_report',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT',
    sizes: { SIZEOF_DMA_LOGGING_REPORT: S.SIZEOF_DMA_LOGGING_REPORT },
    members: [
      ['iova', 'u64'],
      ['length', 'u64'],
      ['page_size', 'u64'],
      ['bitmap', 'u64'],
    ],
    encode: [
      {
        name: 'encodeDmaLoggingReport',
        run: () => ({
          buf: S.encodeDmaLoggingReport({ iova: U64(1), length: U64(2), pageSize: U64(3), bitmapAddr: U64(4) }),
          checks: [['iova', U64(1)], ['length', U64(2)], ['page_size', U64(3)], ['bitmap', U64(4)]],
        }),
      },
    ],
    decode: [
      {
        name: 'decodeDmaLoggingReport',
        run: (b) => ({ ...S.decodeDmaLoggingReport(b) }),
        fields: { iova: 'iova', length: 'length', page_size: 'pageSize', bitmap: 'bitmapAddr' },
      },
    ],
  },
  {
    c: 'vfio_precopy_info',
    header: 'vfio.h',
    gate: 'VFIO_MIG_GET_PRECOPY_INFO',
    sizes: { SIZEOF_PRECOPY_INFO: S.SIZEOF_PRECOPY_INFO },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['initial_bytes', 'u64'],
      ['dirty_bytes', 'u64'],
    ],
    encode: [
      {
        name: 'encodePrecopyInfoQuery',
        run: (L) => ({ buf: S.encodePrecopyInfoQuery(), checks: [['argsz', L.size], ['flags', 0]] }),
      },
      {
        name: 'encodePrecopyInfo',
        run: () => {
          const buf = Buffer.alloc(S.SIZEOF_PRECOPY_INFO);
          S.encodePrecopyInfo(buf, { initialBytes: Number(U64(1)), dirtyBytes: Number(U64(2)) });
          return { buf, checks: [['initial_bytes', U64(1)], ['dirty_bytes', U64(2)]] };
        },
      },
    ],
    decode: [
      {
        name: 'decodePrecopyInfo',
        run: (b) => ({ ...S.decodePrecopyInfo(b) }),
        fields: { initial_bytes: 'initialBytes', dirty_bytes: 'dirtyBytes' },
      },
    ],
  },
  {
    c: 'vfio_device_bind_iommufd',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_BIND_IOMMUFD',
    sizes: { SIZEOF_DEVICE_BIND_IOMMUFD: S.SIZEOF_DEVICE_BIND_IOMMUFD },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['iommufd', 's32'],
      ['out_devid', 'u32'],
    ],
    variants: [
      {
        size: 24,
        when: 'VFIO_DEVICE_BIND_FLAG_TOKEN',
        note: 'newer header appends `__aligned_u64 token_uuid_ptr` (optional, flag-gated)',
      },
    ],
    encode: [
      {
        name: 'encodeBindIommufd',
        run: () => ({
          buf: S.encodeBindIommufd(S32(1)),
          checks: [['argsz', S.SIZEOF_DEVICE_BIND_IOMMUFD], ['flags', 0], ['iommufd', S32(1)]],
        }),
      },
    ],
    decode: [{ name: 'decodeBindIommufd', run: (b) => ({ ...S.decodeBindIommufd(b) }), fields: { out_devid: 'devid' } }],
  },
  {
    c: 'vfio_device_attach_iommufd_pt',
    header: 'vfio.h',
    gate: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
    sizes: { SIZEOF_DEVICE_ATTACH_IOMMUFD_PT: S.SIZEOF_DEVICE_ATTACH_IOMMUFD_PT },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['pt_id', 'u32'],
    ],
    variants: [{ size: 16, when: 'VFIO_DEVICE_ATTACH_PASID', note: 'newer header appends `__u32 pasid` (flag-gated)' }],
    encode: [
      {
        name: 'encodeAttachIommufdPt',
        run: () => ({
          buf: S.encodeAttachIommufdPt(U32(1)),
          checks: [['argsz', S.SIZEOF_DEVICE_ATTACH_IOMMUFD_PT], ['flags', 0], ['pt_id', U32(1)]],
        }),
      },
    ],
  },
  {
    c: 'vfio_iommu_type1_dma_map',
    header: 'vfio.h',
    gate: 'VFIO_IOMMU_MAP_DMA',
    sizes: { SIZEOF_IOMMU_TYPE1_DMA_MAP: S.SIZEOF_IOMMU_TYPE1_DMA_MAP },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['vaddr', 'u64'],
      ['iova', 'u64'],
      ['size', 'u64'],
    ],
    encode: [
      {
        name: 'encodeType1DmaMap',
        run: (L) => ({
          buf: S.encodeType1DmaMap(U64(1), U64(2), U64(3), U32(4)),
          checks: [['argsz', L.size], ['flags', U32(4)], ['vaddr', U64(1)], ['iova', U64(2)], ['size', U64(3)]],
        }),
      },
    ],
  },
  {
    c: 'vfio_iommu_type1_dma_unmap',
    header: 'vfio.h',
    gate: 'VFIO_IOMMU_UNMAP_DMA',
    sizes: { SIZEOF_IOMMU_TYPE1_DMA_UNMAP: S.SIZEOF_IOMMU_TYPE1_DMA_UNMAP },
    members: [
      ['argsz', 'u32'],
      ['flags', 'u32'],
      ['iova', 'u64'],
      ['size', 'u64'],
    ],
    encode: [
      {
        name: 'encodeType1DmaUnmap',
        run: (L) => ({
          buf: S.encodeType1DmaUnmap(U64(1), U64(2)),
          checks: [['argsz', L.size], ['flags', 0], ['iova', U64(1)], ['size', U64(2)]],
        }),
      },
    ],
  },
  {
    c: 'iommu_destroy',
    header: 'iommufd.h',
    gate: 'IOMMU_DESTROY',
    sizes: { SIZEOF_IOMMU_DESTROY: I.SIZEOF_IOMMU_DESTROY },
    members: [
      ['size', 'u32'],
      ['id', 'u32'],
    ],
    encode: [
      { name: 'encodeDestroy', run: (L) => ({ buf: I.encodeDestroy(U32(1)), checks: [['size', L.size], ['id', U32(1)]] }) },
    ],
  },
  {
    c: 'iommu_ioas_alloc',
    header: 'iommufd.h',
    gate: 'IOMMU_IOAS_ALLOC',
    sizes: { SIZEOF_IOMMU_IOAS_ALLOC: I.SIZEOF_IOMMU_IOAS_ALLOC },
    members: [
      ['size', 'u32'],
      ['flags', 'u32'],
      ['out_ioas_id', 'u32'],
    ],
    encode: [{ name: 'encodeIoasAlloc', run: (L) => ({ buf: I.encodeIoasAlloc(), checks: [['size', L.size], ['flags', 0]] }) }],
    decode: [{ name: 'decodeIoasAlloc', run: (b) => ({ ...I.decodeIoasAlloc(b) }), fields: { out_ioas_id: 'ioasId' } }],
  },
  {
    c: 'iommu_ioas_map',
    header: 'iommufd.h',
    gate: 'IOMMU_IOAS_MAP',
    sizes: { SIZEOF_IOMMU_IOAS_MAP: I.SIZEOF_IOMMU_IOAS_MAP },
    members: [
      ['size', 'u32'],
      ['flags', 'u32'],
      ['ioas_id', 'u32'],
      ['__reserved', 'u32'],
      ['user_va', 'u64'],
      ['length', 'u64'],
      ['iova', 'u64'],
    ],
    encode: [
      {
        name: 'encodeIoasMap',
        run: (L) => ({
          buf: I.encodeIoasMap(U32(1), U64(2), U64(3), U64(4), U32(5)),
          checks: [
            ['size', L.size],
            ['flags', U32(5)],
            ['ioas_id', U32(1)],
            ['__reserved', 0],
            ['user_va', U64(2)],
            ['length', U64(3)],
            ['iova', U64(4)],
          ],
        }),
      },
    ],
  },
  {
    c: 'iommu_ioas_unmap',
    header: 'iommufd.h',
    gate: 'IOMMU_IOAS_UNMAP',
    sizes: { SIZEOF_IOMMU_IOAS_UNMAP: I.SIZEOF_IOMMU_IOAS_UNMAP },
    members: [
      ['size', 'u32'],
      ['ioas_id', 'u32'],
      ['iova', 'u64'],
      ['length', 'u64'],
    ],
    encode: [
      {
        name: 'encodeIoasUnmap',
        run: (L) => ({
          buf: I.encodeIoasUnmap(U32(1), U64(2), U64(3)),
          checks: [['size', L.size], ['ioas_id', U32(1)], ['iova', U64(2)], ['length', U64(3)]],
        }),
      },
    ],
  },
  {
    c: 'iommu_hw_info',
    header: 'iommufd.h',
    // out_capabilities came with dirty tracking (6.7); the 6.6 struct ends before it.
    gate: 'IOMMU_HWPT_GET_DIRTY_BITMAP',
    sizes: { SIZEOF_IOMMU_HW_INFO: I.SIZEOF_IOMMU_HW_INFO },
    members: [
      ['size', 'u32'],
      ['flags', 'u32'],
      ['dev_id', 'u32'],
      ['data_len', 'u32'],
      ['data_uptr', 'u64'],
      ['out_data_type', 'u32'],
      ['out_max_pasid_log2', 'u8'],
      ['out_capabilities', 'u64'],
    ],
    encode: [
      {
        name: 'encodeHwInfo',
        run: (L) => ({
          buf: I.encodeHwInfo(U32(1)),
          checks: [['size', L.size], ['flags', 0], ['dev_id', U32(1)], ['data_len', 0], ['data_uptr', 0n]],
        }),
      },
    ],
    decode: [
      {
        name: 'decodeHwInfo',
        run: (b) => ({ ...I.decodeHwInfo(b) }),
        fields: { out_data_type: 'dataType', out_max_pasid_log2: 'maxPasidLog2', out_capabilities: 'capabilities' },
      },
    ],
  },
  {
    c: 'iommu_hwpt_alloc',
    header: 'iommufd.h',
    // data_type / data_len / data_uptr came in 6.7 (with dirty tracking); fault_id in 6.11.
    gate: 'IOMMU_HWPT_GET_DIRTY_BITMAP',
    sizes: { SIZEOF_IOMMU_HWPT_ALLOC: I.SIZEOF_IOMMU_HWPT_ALLOC },
    members: [
      ['size', 'u32'],
      ['flags', 'u32'],
      ['dev_id', 'u32'],
      ['pt_id', 'u32'],
      ['out_hwpt_id', 'u32'],
      ['__reserved', 'u32'],
      ['data_type', 'u32'],
      ['data_len', 'u32'],
      ['data_uptr', 'u64'],
    ],
    variants: [
      {
        size: 40,
        note: 'header of 6.7–6.10: ends at data_uptr, no fault_id (we zero it; iommufd takes any size from the base struct up)',
      },
    ],
    encode: [
      {
        name: 'encodeHwptAlloc',
        run: (L) => ({
          buf: I.encodeHwptAlloc({ flags: U32(1), devId: U32(2), ptId: U32(3) }),
          checks: [
            ['size', I.SIZEOF_IOMMU_HWPT_ALLOC],
            ['flags', U32(1)],
            ['dev_id', U32(2)],
            ['pt_id', U32(3)],
            ['__reserved', 0],
            ['data_type', I.IOMMU_HWPT_DATA_NONE],
            ['data_len', 0],
            ['data_uptr', 0n],
          ],
          raw: L.size > 40 ? [['fault_id and __reserved2 (bytes 40..48) zero', 40, 'u64', 0n]] : [],
        }),
      },
    ],
    decode: [{ name: 'decodeHwptAlloc', run: (b) => ({ ...I.decodeHwptAlloc(b) }), fields: { out_hwpt_id: 'hwptId' } }],
  },
  {
    c: 'iommu_hwpt_set_dirty_tracking',
    header: 'iommufd.h',
    gate: 'IOMMU_HWPT_SET_DIRTY_TRACKING',
    sizes: { SIZEOF_IOMMU_HWPT_SET_DIRTY_TRACKING: I.SIZEOF_IOMMU_HWPT_SET_DIRTY_TRACKING },
    members: [
      ['size', 'u32'],
      ['flags', 'u32'],
      ['hwpt_id', 'u32'],
      ['__reserved', 'u32'],
    ],
    encode: [
      {
        name: 'encodeHwptSetDirtyTracking (enable)',
        run: (L) => ({
          buf: I.encodeHwptSetDirtyTracking(U32(1), true),
          checks: [['size', L.size], ['flags', I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE], ['hwpt_id', U32(1)], ['__reserved', 0]],
        }),
      },
      {
        name: 'encodeHwptSetDirtyTracking (disable)',
        run: (L) => ({
          buf: I.encodeHwptSetDirtyTracking(U32(2), false),
          checks: [['size', L.size], ['flags', 0], ['hwpt_id', U32(2)]],
        }),
      },
    ],
  },
  {
    c: 'iommu_hwpt_get_dirty_bitmap',
    header: 'iommufd.h',
    gate: 'IOMMU_HWPT_GET_DIRTY_BITMAP',
    sizes: { SIZEOF_IOMMU_HWPT_GET_DIRTY_BITMAP: I.SIZEOF_IOMMU_HWPT_GET_DIRTY_BITMAP },
    members: [
      ['size', 'u32'],
      ['hwpt_id', 'u32'],
      ['flags', 'u32'],
      ['__reserved', 'u32'],
      ['iova', 'u64'],
      ['length', 'u64'],
      ['page_size', 'u64'],
      ['data', 'u64'],
    ],
    encode: [
      {
        name: 'encodeHwptGetDirtyBitmap',
        run: (L) => ({
          buf: I.encodeHwptGetDirtyBitmap({ hwptId: U32(1), flags: U32(2), iova: U64(3), length: U64(4), pageSize: U64(5), data: U64(6) }),
          checks: [
            ['size', L.size],
            ['hwpt_id', U32(1)],
            ['flags', U32(2)],
            ['__reserved', 0],
            ['iova', U64(3)],
            ['length', U64(4)],
            ['page_size', U64(5)],
            ['data', U64(6)],
          ],
        }),
      },
    ],
  },
];

// ------------------------------------------------------------------------------------ C program

function generateC(): string {
  const L: string[] = [];
  L.push(
    '/* Generated by test/native/uapi-header.test.ts: prints what the system uAPI headers define. */',
    '#include <stddef.h>',
    '#include <stdio.h>',
    '#include <linux/types.h>',
    '#include <linux/vfio.h>',
    '#if defined(__has_include)',
    '# if __has_include(<linux/iommufd.h>)',
    '#  include <linux/iommufd.h>',
    '#  define PROBE_HAVE_IOMMUFD_H 1',
    '# endif',
    '# if __has_include(<linux/version.h>)',
    '#  include <linux/version.h>',
    '# endif',
    '#endif',
    '',
    '/* sizeof and signedness of a member (signed: (T)-1 < 0). */',
    '#define MSIZE(s, m) sizeof(((struct s *)0)->m)',
    '#define MSIGNED(s, m) ((int)((__typeof__(((struct s *)0)->m))-1 < 0))',
    '',
    'int main(void)',
    '{',
    '#ifdef LINUX_VERSION_CODE',
    '\tprintf("V %d\\n", (int)LINUX_VERSION_CODE);',
    '#endif',
    '#ifdef PROBE_HAVE_IOMMUFD_H',
    '\tprintf("H iommufd.h 1\\n");',
    '#else',
    '\tprintf("H iommufd.h 0\\n");',
    '#endif',
  );
  const value = (n: string) => `\tprintf("C ${n} %lld\\n", (long long)(${n}));`;
  for (const name of [...CONSTANTS.keys()].sort()) {
    if (ENUM_GATES.has(name)) {
      const gate = ENUM_GATES.get(name);
      if (gate === null) L.push(value(name));
      else L.push(`#if defined(${gate})`, value(name), '#else', `\tprintf("A ${name} ${gate}\\n");`, '#endif');
    } else {
      const sibling = MACRO_SIBLINGS.get(name);
      L.push(`#if defined(${name})`, value(name));
      if (sibling) L.push(`#elif defined(${sibling})`, `\tprintf("M ${name} ${sibling}\\n");`);
      L.push('#else', `\tprintf("A ${name}\\n");`, '#endif');
    }
  }
  const gates = new Set(STRUCTS.flatMap((s) => (s.variants ?? []).flatMap((v) => (v.when ? [v.when] : []))));
  for (const g of gates) L.push(`#if defined(${g})`, `\tprintf("D ${g}\\n");`, '#endif');
  for (const s of STRUCTS) {
    L.push(`#if defined(${s.gate})`, `\tprintf("S ${s.c} %zu\\n", sizeof(struct ${s.c}));`);
    for (const [m, w] of s.members) {
      if (w === 'flex') L.push(`\tprintf("O ${s.c} ${m} %zu -1 0\\n", offsetof(struct ${s.c}, ${m}));`);
      else
        L.push(
          `\tprintf("O ${s.c} ${m} %zu %zu %d\\n", offsetof(struct ${s.c}, ${m}), MSIZE(${s.c}, ${m}), MSIGNED(${s.c}, ${m}));`,
        );
    }
    L.push('#else', `\tprintf("X ${s.c} ${s.gate}\\n");`, '#endif');
  }
  L.push('\treturn 0;', '}', '');
  return L.join('\n');
}

interface Probe {
  version?: string;
  headers: string[];
  haveIommufdH: boolean;
  values: Map<string, number>;
  absent: Map<string, string>;
  /** Macro missing although a sibling of its release is defined. */
  missing: Map<string, string>;
  defined: Set<string>;
  layouts: Map<string, Layout>;
  /** Struct → the gate macro that was not defined. */
  absentStructs: Map<string, string>;
}

function runProbe(dir: string, includeDir: string | undefined): Probe {
  const src = path.join(dir, 'uapi-probe.c');
  const exe = path.join(dir, 'uapi-probe');
  fs.writeFileSync(src, generateC());
  const inc = includeDir ? ['-isystem', includeDir] : [];
  const cc = spawnSync(CC!, ['-std=gnu11', '-Wall', ...inc, '-o', exe, src], { encoding: 'utf8', timeout: 60_000 });
  if (cc.error || cc.status !== 0) {
    throw new Error(`${CC} failed to compile the header probe (${src}):\n${cc.error ?? ''}${cc.stderr}`);
  }
  // Which header files were used (for the log): the preprocessor's line markers.
  const pp = spawnSync(CC!, ['-std=gnu11', ...inc, '-E', src], { encoding: 'utf8', timeout: 60_000 });
  const headers = [
    ...new Set([...(pp.stdout ?? '').matchAll(/^# \d+ "([^"]*\/linux\/(?:vfio|iommufd)\.h)"/gm)].map((m) => m[1])),
  ];
  const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 60_000 });
  if (run.error || run.status !== 0) throw new Error(`header probe failed: ${run.error ?? ''}${run.stderr}`);

  const p: Probe = {
    headers,
    haveIommufdH: false,
    values: new Map(),
    absent: new Map(),
    missing: new Map(),
    defined: new Set(),
    layouts: new Map(),
    absentStructs: new Map(),
  };
  const layout = (c: string): Layout => {
    let l = p.layouts.get(c);
    if (!l) {
      const members: Layout['members'] = new Map();
      l = {
        size: -1,
        members,
        off(m: string) {
          const e = members.get(m);
          if (!e) throw new Error(`struct ${c} has no member ${m} in the probe output`);
          return e.offset;
        },
      };
      p.layouts.set(c, l);
    }
    return l;
  };
  for (const line of run.stdout.split('\n')) {
    const f = line.trim().split(/\s+/);
    switch (f[0]) {
      case 'V': {
        const v = Number(f[1]);
        p.version = `${v >> 16}.${(v >> 8) & 0xff}.${v & 0xff}`;
        break;
      }
      case 'H':
        p.haveIommufdH = f[2] === '1';
        break;
      case 'C':
        p.values.set(f[1], Number(f[2]));
        break;
      case 'A':
        p.absent.set(f[1], f[2] ? `${f[2]} not defined` : 'not defined');
        break;
      case 'M':
        p.missing.set(f[1], f[2]);
        break;
      case 'D':
        p.defined.add(f[1]);
        break;
      case 'S':
        layout(f[1]).size = Number(f[2]);
        break;
      case 'O':
        layout(f[1]).members.set(f[2], { offset: Number(f[3]), size: Number(f[4]), signed: f[5] === '1' });
        break;
      case 'X':
        p.absentStructs.set(f[1], f[2]);
        break;
    }
  }
  return p;
}

// ------------------------------------------------------------------------------------ helpers

const WIDTH_BYTES: Record<Exclude<Width, 'flex'>, number> = { u8: 1, u32: 4, s32: 4, u64: 8 };
function readAt(b: Buffer, off: number, w: Width): bigint {
  if (w === 'flex') throw new TypeError('flexible array member has no width');
  if (off < 0 || off + WIDTH_BYTES[w] > b.length) throw new RangeError(`offset ${off} (${w}) outside a ${b.length}-byte buffer`);
  if (w === 'u8') return BigInt(b.readUInt8(off));
  if (w === 'u64') return b.readBigUInt64LE(off);
  if (w === 's32') return BigInt(b.readInt32LE(off));
  return BigInt(b.readUInt32LE(off));
}
function writeAt(b: Buffer, off: number, w: Width, v: number | bigint): void {
  if (w === 'u8') b.writeUInt8(Number(v), off);
  else if (w === 'u64') b.writeBigUInt64LE(BigInt(v), off);
  else if (w === 's32') b.writeInt32LE(Number(v), off);
  else b.writeUInt32LE(Number(v), off);
}
const hex = (v: number | bigint) => {
  const n = BigInt(v);
  return n < 0n ? `${n}` : `0x${n.toString(16)}`;
};

// ------------------------------------------------------------------------------------ tests

/** The 6.12 uAPI headers the kernel tier's build exported, when they are there. */
const KERNEL_CACHE_UAPI = path.join(process.env.VFIO_KERNEL_CACHE || path.join(os.homedir(), '.cache/vfio-kernel'), 'uapi/include');
const HEADER_SETS: ReadonlyArray<{ label: string; includeDir?: string }> = [
  { label: process.env.UAPI_INCLUDE_DIR ? `the headers in ${process.env.UAPI_INCLUDE_DIR}` : 'the system headers', includeDir: process.env.UAPI_INCLUDE_DIR },
  ...(!process.env.UAPI_INCLUDE_DIR && fs.existsSync(path.join(KERNEL_CACHE_UAPI, 'linux/iommufd.h'))
    ? [{ label: `the kernel tier's 6.12 headers (${KERNEL_CACHE_UAPI})`, includeDir: KERNEL_CACHE_UAPI }]
    : []),
];
if (HEADER_SETS.length === 1 && !process.env.UAPI_INCLUDE_DIR) {
  console.log(`uapi-header.test: no 6.12 headers at ${KERNEL_CACHE_UAPI}: only the system headers are checked`);
}

for (const headerSet of HEADER_SETS) describeUnless(CC ? undefined : NO_CC_REASON, `uAPI values vs ${headerSet.label}`, () => {
  const dir = useTempDir('uapi-header');
  let probe: Probe;
  const ctx: Layouts = {
    get(c) {
      const l = probe.layouts.get(c);
      if (!l) throw new Error(`struct ${c} is not in the header`);
      return l;
    },
  };

  beforeAll(() => {
    probe = runProbe(dir.path, headerSet.includeDir);
    console.log(
      `uapi-header: ${CC}, headers ${probe.headers.join(', ') || '(unknown)'}` +
        `${probe.version ? ` (linux/version.h ${probe.version})` : ''}; <linux/iommufd.h> ${probe.haveIommufdH ? 'present' : 'ABSENT'}`,
    );
  });

  for (const group of GROUPS) {
    it(`constants: ${group}`, () => {
      const names = [...CONSTANTS.keys()].filter((n) => groupOf(n, CONSTANTS.get(n)!) === group).sort();
      const checked: string[] = [];
      const absent: string[] = [];
      const problems: string[] = [];
      for (const name of names) {
        const ours = CONSTANTS.get(name)!;
        if (probe.missing.has(name)) {
          const sibling = probe.missing.get(name);
          problems.push(`${name}: not defined although ${sibling} (same release) is; wrong name, or an enumerator now`);
        } else if (probe.values.has(name)) {
          const theirs = probe.values.get(name)!;
          checked.push(`${name}=${hex(theirs)}`);
          if (theirs !== ours) problems.push(`${name}: ours ${hex(ours)} (${ours}), header ${hex(theirs)} (${theirs})`);
        } else {
          absent.push(`${name} (${probe.absent.get(name) ?? 'not printed'})`);
        }
      }
      console.log(
        `[${group}] checked ${checked.length}: ${checked.join(' ') || '-'}\n` +
          `[${group}] header lacks ${absent.length}: ${absent.join(', ') || '-'}`,
      );
      expect(names.length, `no constants in group ${group}`).toBeGreaterThan(0);
      expect(problems, `constant mismatches:\n${problems.join('\n')}`).toEqual([]);
    });
  }

  it('constants: derived values (MIG_STATE_COUNT, ALL_MIG_STATES)', () => {
    const p2p = probe.values.get('VFIO_DEVICE_STATE_PRE_COPY_P2P');
    const rp2p = probe.values.get('VFIO_DEVICE_STATE_RUNNING_P2P');
    const last = p2p ?? rp2p;
    if (last === undefined) return;
    // Our count covers the newest state the header knows, and ALL_MIG_STATES lists them in order.
    expect(vfio.MIG_STATE_COUNT, 'MIG_STATE_COUNT vs the last VFIO_DEVICE_STATE_* + 1').toBeGreaterThanOrEqual(last + 1);
    if (p2p !== undefined) expect(vfio.MIG_STATE_COUNT, 'MIG_STATE_COUNT').toBe(p2p + 1);
    expect([...vfio.ALL_MIG_STATES]).toEqual(Array.from({ length: vfio.MIG_STATE_COUNT }, (_, i) => i));
  });

  it('every SIZEOF_* / OFFSETOF_* we export is covered by a struct check', () => {
    const covered = new Set(STRUCTS.flatMap((s) => [...Object.keys(s.sizes), ...Object.keys(s.offsets ?? {})]));
    const exported = [structs, iommufd, vfio].flatMap((m) =>
      Object.entries(m as unknown as Record<string, unknown>)
        .filter(([n, v]) => typeof v === 'number' && /^(SIZEOF|OFFSETOF)_/.test(n))
        .map(([n]) => n),
    );
    const uncovered = exported.filter((n) => !covered.has(n));
    expect(uncovered, `add these to STRUCTS in test/native/uapi-header.test.ts: ${uncovered.join(', ')}`).toEqual([]);
  });

  for (const s of STRUCTS) {
    it(`struct ${s.c} (${s.header}): sizeof, offsetof, and our codec`, (t) => {
      if (!probe.layouts.has(s.c)) {
        const why = `<linux/${s.header}> lacks struct ${s.c} (${probe.absentStructs.get(s.c) ?? s.gate} not defined${
          s.header === 'iommufd.h' && !probe.haveIommufdH ? '; no <linux/iommufd.h>' : ''
        })`;
        console.log(`[struct] SKIP ${why}`);
        t.skip(why);
      }
      const L = probe.layouts.get(s.c)!;
      const problems: string[] = [];
      const notes: string[] = [];

      // sizeof: every size constant of ours, against the header or a known compatible variant.
      let effective = L.size;
      for (const [name, ours] of Object.entries(s.sizes)) {
        if (ours === L.size) continue;
        const v = s.variants?.find((x) => x.size === L.size && (!x.when || probe.defined.has(x.when)));
        if (v) {
          notes.push(`sizeof ${L.size} ≠ our ${name} ${ours}: accepted, ${v.note}${v.when ? ` (${v.when} defined)` : ''}`);
          effective = Math.min(ours, L.size);
        } else {
          problems.push(`sizeof(struct ${s.c}): ours ${name}=${ours}, header ${L.size}`);
        }
      }
      // offsetof and member width.
      for (const [m, w] of s.members) {
        const e = L.members.get(m);
        if (!e) {
          problems.push(`struct ${s.c}.${m}: not printed by the probe`);
          continue;
        }
        if (w !== 'flex' && (e.size !== WIDTH_BYTES[w] || e.signed !== (w === 's32'))) {
          problems.push(
            `struct ${s.c}.${m}: header has a ${e.signed ? 's' : 'u'}${e.size * 8}, our codec uses ${w}`,
          );
        }
      }
      for (const [name, member] of Object.entries(s.offsets ?? {})) {
        const ours = (structs as unknown as Record<string, number>)[name];
        if (ours !== L.off(member)) {
          problems.push(`${name}: ours ${ours}, header offsetof(struct ${s.c}, ${member}) ${L.off(member)}`);
        }
      }

      // Encoders: each field we set must be at the C offsetof, with our width.
      const widthOf = (m: string) => s.members.find(([n]) => n === m)?.[1] ?? 'u32';
      for (const e of s.encode ?? []) {
        const r = e.run(L, ctx);
        const base = r.base ?? 0;
        if (r.buf.length - base < effective) {
          problems.push(`${e.name}: struct area is ${r.buf.length - base} bytes, header sizeof(struct ${s.c}) is ${effective}`);
        }
        const reads: Raw[] = [
          ...r.checks.map(([m, v]): Raw => [`${m} @offsetof ${L.off(m)}`, base + L.off(m), widthOf(m), v]),
          ...(r.raw ?? []),
        ];
        for (const [label, off, w, want] of reads) {
          if (off === -1) {
            if (r.buf.length !== Number(want)) problems.push(`${e.name}: ${label} is ${r.buf.length}, expected ${want}`);
            continue;
          }
          try {
            const got = readAt(r.buf, off, w);
            if (got !== BigInt(want)) {
              problems.push(`${e.name}: struct ${s.c} ${label} (byte ${off}) holds ${hex(got)}, expected ${hex(want)}`);
            }
          } catch (err) {
            problems.push(`${e.name}: struct ${s.c} ${label}: ${(err as Error).message}`);
          }
        }
      }

      // Decoders: fill distinctive values at the C offsets; each must come back under its own name.
      for (const d of s.decode ?? []) {
        const base = d.base?.(ctx) ?? 0;
        const buf = Buffer.alloc(base + Math.max(L.size, effective) + 16);
        const expected = new Map<string, bigint>();
        s.members.forEach(([m, w], i) => {
          if (w === 'flex') return;
          const v = w === 'u64' ? U64(100 + i) : w === 's32' ? S32(100 + i) : w === 'u8' ? 0x40 + i : U32(100 + i);
          writeAt(buf, base + L.off(m), w, v);
          expected.set(m, BigInt(v));
        });
        const got = d.run(buf);
        for (const [m, key] of Object.entries(d.fields)) {
          const g = got[key];
          if (g === undefined || BigInt(g) !== expected.get(m)) {
            const gs = g === undefined ? 'undefined' : hex(g);
            problems.push(
              `${d.name}: ${key} = ${gs}, expected ${hex(expected.get(m)!)} written at offsetof(struct ${s.c}, ${m}) ${L.off(m)}`,
            );
          }
        }
        for (const [m, tail] of Object.entries(d.tails ?? {})) {
          const at = tail(buf) - base;
          if (at !== L.off(m)) {
            problems.push(`${d.name}: ${m} taken from byte ${at}, header offsetof(struct ${s.c}, ${m}) is ${L.off(m)}`);
          }
        }
      }

      const offs = s.members.map(([m]) => `${m}@${L.off(m)}`).join(' ');
      console.log(
        `[struct] ${s.c}: sizeof ${L.size}, ${offs}; encoders ${(s.encode ?? []).map((e) => e.name).join(', ') || '-'}; ` +
          `decoders ${(s.decode ?? []).map((d) => d.name).join(', ') || '-'}${notes.length ? `\n  note: ${notes.join('; ')}` : ''}`,
      );
      expect(problems, `struct ${s.c} mismatches:\n${problems.join('\n')}`).toEqual([]);
    });
  }

  it('checked a sensible minimum (≥ 30 constants, ≥ 8 structs)', () => {
    const constants = [...CONSTANTS.keys()].filter((n) => probe.values.has(n));
    const present = STRUCTS.filter((s) => probe.layouts.has(s.c)).map((s) => s.c);
    const lacking = STRUCTS.filter((s) => !probe.layouts.has(s.c)).map((s) => s.c);
    const absent = [...CONSTANTS.keys()].filter((n) => !probe.values.has(n));
    console.log(
      `uapi-header summary: ${constants.length}/${CONSTANTS.size} constants checked, ${absent.length} absent from the header` +
        ` (${absent.join(', ') || '-'}); ${present.length}/${STRUCTS.length} structs checked, lacking: ${lacking.join(', ') || '-'}` +
        `; not uAPI: ${[...NOT_UAPI].map(([n, why]) => `${n}: ${why}`).join(', ')}`,
    );
    expect(constants.length).toBeGreaterThanOrEqual(30);
    expect(present.length).toBeGreaterThanOrEqual(8);
  });
});
