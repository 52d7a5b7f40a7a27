/**
 * Socket constants and codecs for the socket calls of the Binding contract (socket, bind,
 * connect, getsockname, getpeername, getsockopt, setsockopt): Linux values from
 * include/linux/socket.h, include/uapi/asm-generic/socket.h, include/uapi/linux/in.h, in6.h,
 * un.h and tcp.h (x86_64, aarch64: the asm-generic socket options). A socket address crosses the
 * binding as the bytes of its struct sockaddr_*; `sa_family` and the other host-endian fields
 * are little-endian here (the library runs on little-endian hosts only), ports and IPv6 flow
 * labels are in network byte order (big-endian), as the kernel wants them. Layouts and values
 * are checked against the C headers by test/native/socket-header.test.ts.
 */
import ipaddr from 'ipaddr.js';

// ---------------------------------------------------------------- constants

/** Address families (linux/socket.h). */
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;

/** Socket types (linux/net.h). The binding adds SOCK_CLOEXEC | SOCK_NONBLOCK itself. */
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;

/** Option levels. */
export const SOL_SOCKET = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_IPV6 = 41;

/** SOL_SOCKET options (asm-generic/socket.h). */
export const SO_REUSEADDR = 2;
export const SO_TYPE = 3;
export const SO_ERROR = 4;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_KEEPALIVE = 9;
export const SO_LINGER = 13;
export const SO_PEERCRED = 17;
export const SO_ACCEPTCONN = 30;
export const SO_DOMAIN = 39;

/** IPPROTO_TCP options (linux/tcp.h). */
export const TCP_NODELAY = 1;
export const TCP_KEEPIDLE = 4;
export const TCP_KEEPINTVL = 5;
export const TCP_KEEPCNT = 6;
/**
 * Milliseconds that sent data may stay unacknowledged (zero-window probes included) before the
 * kernel drops the connection with ETIMEDOUT (tcp(7), Linux 2.6.37).
 */
export const TCP_USER_TIMEOUT = 18;

/** IPPROTO_IPV6 options (linux/in6.h). */
export const IPV6_V6ONLY = 26;

/** Generic ioctls on any fd (asm-generic/ioctls.h): FIONBIO (int by pointer: non-blocking on/off), FIOCLEX (close-on-exec on). */
export const FIONBIO = 0x5421;
export const FIOCLEX = 0x5451;

/** shutdown(2) `how`. */
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;

// ---------------------------------------------------------------- addresses

/** struct sockaddr_in { u16 sin_family; be16 sin_port; be32 sin_addr; u8 sin_zero[8]; } */
export const SIZEOF_SOCKADDR_IN = 16;
/** struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo; u8 addr[16]; u32 scope_id; } */
export const SIZEOF_SOCKADDR_IN6 = 28;
/** struct sockaddr_un { u16 sun_family; char sun_path[108]; } */
export const SIZEOF_SOCKADDR_UN = 110;
/** sizeof(sun_path). */
export const UNIX_PATH_MAX = 108;
/** offsetof(struct sockaddr_un, sun_path): also the size of an unnamed AF_UNIX address. */
export const OFFSETOF_SUN_PATH = 2;
/** sizeof(struct sockaddr_storage): the largest address the binding takes or returns. */
export const SIZEOF_SOCKADDR_STORAGE = 128;

/**
 * A socket address. `unix`: a pathname socket (`path`), an abstract one (`abstract`: its name,
 * without the leading NUL; Linux, unix(7)), or an unnamed one (neither: a socketpair end, or the
 * connecting side of a connection). `other`: a family this codec does not know, decoded only.
 */
export type SockAddr =
  | { family: 'ipv4'; address: string; port: number }
  | { family: 'ipv6'; address: string; port: number; flowinfo?: number; scopeId?: number }
  | { family: 'unix'; path?: string; abstract?: string }
  | { family: 'other'; af: number; bytes: Buffer };

function badAddress(message: string): RangeError {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' });
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw badAddress(`port must be an integer in [0, 65535], got ${port}`);
  return port;
}

/**
 * The bytes of `a`'s struct sockaddr_*, as long as bind(2) / connect(2) should be told: 16 for
 * IPv4, 28 for IPv6; for AF_UNIX the family, the path and its NUL (2 + n + 1), or the family, a
 * NUL and the abstract name (2 + 1 + n: an abstract name is exactly its bytes, no terminator,
 * unix(7)), or the family alone (unnamed: bind(2) then autobinds an abstract name).
 *
 * Throws RangeError for an address that is not a literal of its family (names are resolved
 * above, with dns.lookup), a port outside [0, 65535], a path or name longer than 107 bytes (UTF-8),
 * a path with a NUL byte, or both `path` and `abstract`.
 */
export function encodeSockaddr(a: SockAddr): Buffer {
  switch (a.family) {
    case 'ipv4': {
      if (!ipaddr.IPv4.isValidFourPartDecimal(a.address)) throw badAddress(`not an IPv4 address: ${JSON.stringify(a.address)}`);
      const b = Buffer.alloc(SIZEOF_SOCKADDR_IN);
      b.writeUInt16LE(AF_INET, 0);
      b.writeUInt16BE(checkPort(a.port), 2);
      Buffer.from(ipaddr.IPv4.parse(a.address).toByteArray()).copy(b, 4);
      return b;
    }
    case 'ipv6': {
      if (!ipaddr.IPv6.isValid(a.address)) throw badAddress(`not an IPv6 address: ${JSON.stringify(a.address)}`);
      const ip = ipaddr.IPv6.parse(a.address);
      let scopeId = a.scopeId ?? 0;
      if (ip.zoneId !== undefined) {
        // A numeric zone is the interface index; a named one needs if_nametoindex(3), which is
        // not a syscall: resolve it above (or pass scopeId).
        if (!/^\d+$/.test(ip.zoneId)) throw badAddress(`IPv6 zone ${JSON.stringify(ip.zoneId)}: give the interface index (fe80::1%2)`);
        scopeId = Number(ip.zoneId);
      }
      const flowinfo = a.flowinfo ?? 0;
      if (!Number.isInteger(flowinfo) || flowinfo < 0 || flowinfo > 0xffffffff) throw badAddress(`flowinfo out of range: ${flowinfo}`);
      if (!Number.isInteger(scopeId) || scopeId < 0 || scopeId > 0xffffffff) throw badAddress(`scopeId out of range: ${scopeId}`);
      const b = Buffer.alloc(SIZEOF_SOCKADDR_IN6);
      b.writeUInt16LE(AF_INET6, 0);
      b.writeUInt16BE(checkPort(a.port), 2);
      b.writeUInt32BE(flowinfo, 4);
      Buffer.from(ip.toByteArray()).copy(b, 8);
      b.writeUInt32LE(scopeId, 24);
      return b;
    }
    case 'unix': {
      if (a.path !== undefined && a.abstract !== undefined) throw badAddress('an AF_UNIX address has a path or an abstract name, not both');
      const name = a.path ?? a.abstract;
      if (name === undefined) {
        const b = Buffer.alloc(OFFSETOF_SUN_PATH);
        b.writeUInt16LE(AF_UNIX, 0);
        return b;
      }
      const bytes = Buffer.from(name, 'utf8');
      if (a.path !== undefined) {
        if (bytes.length === 0) throw badAddress('an AF_UNIX path must not be empty');
        if (bytes.includes(0)) throw badAddress('an AF_UNIX path must not contain NUL bytes');
      }
      if (bytes.length > UNIX_PATH_MAX - 1) {
        throw badAddress(`AF_UNIX ${a.path !== undefined ? 'path' : 'abstract name'} is ${bytes.length} bytes, more than ${UNIX_PATH_MAX - 1}`);
      }
      const b = Buffer.alloc(OFFSETOF_SUN_PATH + 1 + bytes.length);
      b.writeUInt16LE(AF_UNIX, 0);
      // A pathname: the bytes then their NUL; an abstract name: a NUL then the bytes.
      bytes.copy(b, a.path !== undefined ? OFFSETOF_SUN_PATH : OFFSETOF_SUN_PATH + 1);
      return b;
    }
    case 'other':
      throw badAddress(`cannot encode an address of family ${a.af}`);
  }
}

/**
 * A struct sockaddr_* as returned by getsockname(2), getpeername(2) (the Buffer is as long as
 * the kernel said). IPv6 addresses come back in RFC 5952 form ('::1', '::ffff:127.0.0.1');
 * `flowinfo` and `scopeId` only when not 0. A pathname is read up to its first NUL. Throws
 * RangeError for a Buffer too short for its family.
 */
export function decodeSockaddr(b: Buffer): SockAddr {
  if (b.length < 2) throw badAddress(`a socket address has at least 2 bytes, got ${b.length}`);
  const af = b.readUInt16LE(0);
  const need = (n: number, what: string): void => {
    if (b.length < n) throw badAddress(`${what} needs ${n} bytes, got ${b.length}`);
  };
  switch (af) {
    case AF_INET:
      need(8, 'sockaddr_in');
      return { family: 'ipv4', address: ipaddr.fromByteArray([...b.subarray(4, 8)]).toString(), port: b.readUInt16BE(2) };
    case AF_INET6: {
      need(SIZEOF_SOCKADDR_IN6, 'sockaddr_in6');
      const ip = ipaddr.fromByteArray([...b.subarray(8, 24)]) as ipaddr.IPv6;
      // RFC 5952 section 5: an IPv4-mapped address keeps its dotted IPv4 part.
      const address = ip.isIPv4MappedAddress() ? `::ffff:${ip.toIPv4Address().toString()}` : ip.toRFC5952String();
      const a: SockAddr = { family: 'ipv6', address, port: b.readUInt16BE(2) };
      const flowinfo = b.readUInt32BE(4);
      const scopeId = b.readUInt32LE(24);
      if (flowinfo) a.flowinfo = flowinfo;
      if (scopeId) a.scopeId = scopeId;
      return a;
    }
    case AF_UNIX: {
      const sun = b.subarray(OFFSETOF_SUN_PATH);
      if (sun.length === 0) return { family: 'unix' };
      if (sun[0] === 0) return { family: 'unix', abstract: sun.subarray(1).toString('utf8') };
      const end = sun.indexOf(0);
      return { family: 'unix', path: sun.subarray(0, end < 0 ? sun.length : end).toString('utf8') };
    }
    default:
      return { family: 'other', af, bytes: Buffer.from(b) };
  }
}

/** A loopback address: 127.0.0.0/8, ::1, or an IPv4-mapped 127.x (::ffff:127.0.0.1). */
export function isLoopbackAddress(address: string): boolean {
  if (!ipaddr.isValid(address)) return false;
  const ip = ipaddr.process(address); // an IPv4-mapped IPv6 address becomes IPv4
  return ip.range() === 'loopback';
}

// ---------------------------------------------------------------- option structs

/** struct ucred { s32 pid; u32 uid; u32 gid; } (SO_PEERCRED: the peer's credentials when it connected). */
export const SIZEOF_UCRED = 12;
export interface Ucred {
  pid: number;
  uid: number;
  gid: number;
}
export function decodeUcred(b: Buffer): Ucred {
  return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
}

/** struct linger { s32 l_onoff; s32 l_linger; } (SO_LINGER; seconds). */
export const SIZEOF_LINGER = 8;
/**
 * SO_LINGER's value. `{ onoff: true, seconds: 0 }` makes close(2) reset the connection (TCP RST)
 * instead of the orderly FIN, dropping unsent data (socket(7)).
 */
export function encodeLinger(onoff: boolean, seconds: number): Buffer {
  const b = Buffer.alloc(SIZEOF_LINGER);
  b.writeInt32LE(onoff ? 1 : 0, 0);
  b.writeInt32LE(seconds, 4);
  return b;
}
