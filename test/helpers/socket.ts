/**
 * A connected pair of Unix stream sockets (socketpair(2) through koffi and libc), close-on-exec,
 * blocking: what the pump tests use as a peer until the Binding has socket calls of its own.
 * Close both with fs.closeSync.
 */
import koffi from 'koffi';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;

let socketpair: ((domain: number, type: number, protocol: number, fds: Int32Array) => number) | undefined;

export function socketPair(): [number, number] {
  if (!socketpair) {
    const libc = koffi.load('libc.so.6');
    socketpair = libc.func("int socketpair(int domain, int type, int protocol, _Out_ int *sv)") as unknown as typeof socketpair;
  }
  const fds = new Int32Array(2);
  if (socketpair!(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) !== 0) throw new Error(`socketpair failed: errno ${koffi.errno()}`);
  return [fds[0], fds[1]];
}
