/** This process's file descriptors as the kernel sees them (/proc/self): for leak and flag checks. */
import * as fs from 'node:fs';

/** O_CLOEXEC as /proc/self/fdinfo shows it (octal 02000000; fs.constants has no O_CLOEXEC). */
export const O_CLOEXEC = 0o2000000;

/** Number of fds open in this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Whether `fd` is open in this process. */
export function isOpen(fd: number): boolean {
  return fs.existsSync(`/proc/self/fd/${fd}`);
}

/** Open flags of `fd`, from /proc/self/fdinfo. */
export function fdFlags(fd: number): number {
  const m = /^flags:\s*([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no flags in /proc/self/fdinfo/${fd}`);
  return parseInt(m[1], 8);
}
