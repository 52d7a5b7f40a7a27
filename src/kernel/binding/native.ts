/// <reference path="./native.d.ts" />
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { VfioError } from '../../base/errors';
import type { Binding } from './types';

/**
 * The `Binding` contract through the vfio_pci N-API addon (addon/binding.cc over addon/sys.cc).
 * The addon validates arguments and throws TypeError/RangeError itself, so every method here
 * is a straight pass-through; syscall errors are VfioErrors because the addon is handed the
 * class when it is loaded.
 */

/** Where the addon is looked for, relative to the package root: node-gyp's output first, then cmake-js's. */
export const NATIVE_ADDON_FILES: readonly string[] = ['build/Release/vfio_pci.node', 'build-cmake/Release/vfio_pci.node'];

/** The package root: the nearest directory above this file that holds binding.gyp. */
export function packageRoot(from: string = __dirname): string {
  // The package's own package.json, found upwards from this file: in the source tree (src/),
  // the build (dist/src/), an installed copy, or a copy with only dist/, build/ and
  // package.json (the kernel tier's guest).
  for (let dir = from; ; dir = dirname(dir)) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'node-vfio-pci') return dir;
      } catch {
        /* not ours, keep looking */
      }
    }
    if (dirname(dir) === dir) throw new Error(`vfio_pci: no node-vfio-pci package.json above ${from}`);
  }
}

/** The addon files that exist, in the order they are tried (absolute paths). */
export function nativeAddonCandidates(root: string = packageRoot()): string[] {
  return NATIVE_ADDON_FILES.map((f) => join(root, f)).filter((f) => existsSync(f));
}

const nodeRequire = createRequire(__filename);

function loadAddon(file?: string): { addon: VfioPciNative.Addon; file: string } {
  const candidates = file !== undefined ? [file] : nativeAddonCandidates();
  if (candidates.length === 0) {
    throw new Error(`vfio_pci addon not built (looked for ${NATIVE_ADDON_FILES.join(', ')}); run npm run build:addon`);
  }
  let firstError: unknown;
  for (const f of candidates) {
    try {
      const addon = nodeRequire(f) as VfioPciNative.Addon;
      // Per environment and idempotent: the last module instance to load wins, which is the
      // VfioError class its callers import.
      addon.setErrorClass(VfioError as unknown as VfioPciNative.ErrorClass);
      return { addon, file: f };
    } catch (e) {
      firstError ??= e;
    }
  }
  throw firstError;
}

/** The default addon, loaded once: the module and its file, or the reason it did not load. */
let defaultAddon: { addon: VfioPciNative.Addon; file: string } | { error: unknown } | undefined;

function loadDefaultAddon(): { addon: VfioPciNative.Addon; file: string } {
  defaultAddon ??= (() => {
    try {
      return loadAddon();
    } catch (error) {
      return { error };
    }
  })();
  if ('error' in defaultAddon) throw defaultAddon.error;
  return defaultAddon;
}

/**
 * The addon from its default place (NATIVE_ADDON_FILES), loaded on first use, or undefined when
 * it cannot load. For the modules of the kernel layer that use its format-neutral primitives
 * beside the `Binding` contract: the native pump (src/kernel/pump/native.ts) and checksums
 * (src/kernel/pump/checksum.ts).
 */
export function nativeAddon(): VfioPciNative.Addon | undefined {
  try {
    return loadDefaultAddon().addon;
  } catch {
    return undefined;
  }
}

/** The native implementation of the `Binding` contract. */
export class NativeBinding implements Binding {
  readonly name = 'native' as const;
  /** The .node file that was loaded (absolute path). */
  readonly file: string;
  /**
   * The addon module itself, for the kernel layer's modules that use its primitives beyond the
   * syscall contract (the native pump: src/kernel/pump); nothing above the kernel layer uses it.
   */
  readonly addon: VfioPciNative.Addon;

  /**
   * Load the addon: `file` if given, else the first of NATIVE_ADDON_FILES that loads (once per
   * process). Throws (a plain Error from require) when none can be loaded.
   */
  constructor(file?: string) {
    const { addon, file: loaded } = file !== undefined ? loadAddon(file) : loadDefaultAddon();
    this.addon = addon;
    this.file = loaded;
  }

  open(path: string, flags: number, mode?: number): number {
    return this.addon.open(path, flags, mode);
  }
  close(fd: number): void {
    this.addon.close(fd);
  }
  ioctl(fd: number, request: number, arg?: Buffer | number): number {
    return this.addon.ioctl(fd, request, arg);
  }

  ioctlAsync(fd: number, request: number, arg?: Buffer | number): Promise<number> {
    return this.addon.ioctlAsync(fd, request, arg);
  }

  bufferAddress(buf: Buffer): bigint {
    return this.addon.bufferAddress(buf);
  }
  pread(fd: number, buf: Buffer, offset: number, length?: number): number {
    return this.addon.pread(fd, buf, offset, length);
  }
  pwrite(fd: number, buf: Buffer, offset: number, length?: number): number {
    return this.addon.pwrite(fd, buf, offset, length);
  }
  read(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    return this.addon.read(fd, buf, offset, length);
  }
  write(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    return this.addon.write(fd, buf, offset, length);
  }
  pipe(flags?: number): [number, number] {
    return this.addon.pipe(flags);
  }
  eventfd(initval: number, flags?: number): number {
    return this.addon.eventfd(initval, flags);
  }
  eventfdRead(fd: number): bigint {
    return this.addon.eventfdRead(fd);
  }
  eventfdWrite(fd: number, value: bigint): void {
    this.addon.eventfdWrite(fd, value);
  }
  poll(fd: number, events: number, timeoutMs: number): Promise<number> {
    return this.addon.poll(fd, events, timeoutMs);
  }
  // ---- sockets ----
  socket(domain: number, type: number, protocol?: number): number {
    return this.addon.socket(domain, type, protocol);
  }
  bind(fd: number, addr: Buffer): void {
    this.addon.bind(fd, addr);
  }
  listen(fd: number, backlog: number): void {
    this.addon.listen(fd, backlog);
  }
  accept(fd: number): number {
    return this.addon.accept(fd);
  }
  connect(fd: number, addr: Buffer): boolean {
    return this.addon.connect(fd, addr);
  }
  getsockopt(fd: number, level: number, name: number, buf?: Buffer): number {
    return this.addon.getsockopt(fd, level, name, buf);
  }
  setsockopt(fd: number, level: number, name: number, value: number | Buffer): void {
    this.addon.setsockopt(fd, level, name, value);
  }
  shutdown(fd: number, how: number): void {
    this.addon.shutdown(fd, how);
  }
  getsockname(fd: number): Buffer {
    return this.addon.getsockname(fd);
  }
  getpeername(fd: number): Buffer {
    return this.addon.getpeername(fd);
  }
  recvNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    return this.addon.recvNow(fd, buf, offset, length);
  }
  sendNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    return this.addon.sendNow(fd, buf, offset, length);
  }
}
