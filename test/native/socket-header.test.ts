/**
 * src/kernel/uapi/socket.ts against this machine's C headers: a generated C program prints the
 * constants and struct layouts (sizeof / offsetof) and the bytes of sample socket addresses
 * built the C way (inet_pton, htons, strcpy into sun_path), and the values are compared with our
 * constants and encoders here; the decoder must read the C bytes back. CC picks the compiler.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import * as S from '../../src/kernel/uapi/socket';
import { NO_CC_REASON, findCompiler } from '../helpers/cc';
import { useTempDir } from '../helpers/temp-dir';
import { describeUnless } from '../helpers/skip';

const CC = findCompiler();

const CONSTANTS = [
  'AF_UNIX', 'AF_INET', 'AF_INET6', 'SOCK_STREAM', 'SOCK_DGRAM', 'SOL_SOCKET', 'IPPROTO_TCP', 'IPPROTO_IPV6',
  'SO_REUSEADDR', 'SO_TYPE', 'SO_ERROR', 'SO_SNDBUF', 'SO_RCVBUF', 'SO_KEEPALIVE', 'SO_LINGER', 'SO_PEERCRED', 'SO_ACCEPTCONN', 'SO_DOMAIN',
  'TCP_NODELAY', 'TCP_KEEPIDLE', 'TCP_KEEPINTVL', 'TCP_KEEPCNT', 'TCP_USER_TIMEOUT', 'IPV6_V6ONLY', 'SHUT_RD', 'SHUT_WR', 'SHUT_RDWR',
  'FIONBIO', 'FIOCLEX',
] as const;

/** Sample addresses: [name, C statements filling `struct sockaddr_* a` and `socklen_t len`, our address]. */
const SAMPLES: Array<[string, string, S.SockAddr]> = [
  [
    'in',
    'struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET; a.sin_port = htons(4660); inet_pton(AF_INET, "192.168.1.20", &a.sin_addr); socklen_t len = sizeof a;',
    { family: 'ipv4', address: '192.168.1.20', port: 4660 },
  ],
  [
    'in6',
    'struct sockaddr_in6 a; memset(&a, 0, sizeof a); a.sin6_family = AF_INET6; a.sin6_port = htons(65001); a.sin6_flowinfo = htonl(0x12345); a.sin6_scope_id = 7; inet_pton(AF_INET6, "2001:db8::8:800:200c:417a", &a.sin6_addr); socklen_t len = sizeof a;',
    { family: 'ipv6', address: '2001:db8::8:800:200c:417a', port: 65001, flowinfo: 0x12345, scopeId: 7 },
  ],
  [
    'in6mapped',
    'struct sockaddr_in6 a; memset(&a, 0, sizeof a); a.sin6_family = AF_INET6; a.sin6_port = htons(1); inet_pton(AF_INET6, "::ffff:127.0.0.1", &a.sin6_addr); socklen_t len = sizeof a;',
    { family: 'ipv6', address: '::ffff:127.0.0.1', port: 1 },
  ],
  [
    'un',
    'struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX; strcpy(a.sun_path, "/run/vfio/mig.sock"); socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(a.sun_path) + 1;',
    { family: 'unix', path: '/run/vfio/mig.sock' },
  ],
  [
    'unabstract',
    'struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX; memcpy(a.sun_path + 1, "vfio-mig", 8); socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + 8;',
    { family: 'unix', abstract: 'vfio-mig' },
  ],
];

function program(): string {
  const lines = [
    '#define _GNU_SOURCE',
    '#include <arpa/inet.h>',
    '#include <netinet/in.h>',
    '#include <netinet/tcp.h>',
    '#include <stddef.h>',
    '#include <stdio.h>',
    '#include <string.h>',
    '#include <sys/ioctl.h>',
    '#include <sys/socket.h>',
    '#include <sys/un.h>',
    'static void hex(const char* name, const void* p, size_t n) { printf("bytes %s ", name); for (size_t i = 0; i < n; i++) printf("%02x", ((const unsigned char*)p)[i]); printf("\\n"); }',
    'int main(void) {',
    ...CONSTANTS.map((c) => `  printf("const ${c} %ld\\n", (long)(${c}));`),
    '  printf("size sockaddr_in %zu\\n", sizeof(struct sockaddr_in));',
    '  printf("size sockaddr_in6 %zu\\n", sizeof(struct sockaddr_in6));',
    '  printf("size sockaddr_un %zu\\n", sizeof(struct sockaddr_un));',
    '  printf("size sun_path %zu\\n", sizeof(((struct sockaddr_un*)0)->sun_path));',
    '  printf("size sockaddr_storage %zu\\n", sizeof(struct sockaddr_storage));',
    '  printf("size ucred %zu\\n", sizeof(struct ucred));',
    '  printf("size linger %zu\\n", sizeof(struct linger));',
    '  printf("offset sun_path %zu\\n", offsetof(struct sockaddr_un, sun_path));',
    '  printf("offset ucred.uid %zu\\n", offsetof(struct ucred, uid));',
    '  printf("offset ucred.gid %zu\\n", offsetof(struct ucred, gid));',
    '  printf("offset linger.l_linger %zu\\n", offsetof(struct linger, l_linger));',
    ...SAMPLES.map(([name, fill]) => `  { ${fill} hex("${name}", &a, len); }`),
    '  { struct ucred c = { .pid = 4242, .uid = 1000, .gid = 100 }; hex("ucred", &c, sizeof c); }',
    '  { struct linger l = { .l_onoff = 1, .l_linger = 0 }; hex("linger", &l, sizeof l); }',
    '  return 0;',
    '}',
  ];
  return lines.join('\n') + '\n';
}

describeUnless(CC ? undefined : NO_CC_REASON, 'socket uAPI against the C headers', () => {
  const dir = useTempDir('socket-header');
  const out = new Map<string, string>();

  beforeAll(() => {
    const src = dir.file('probe.c');
    const exe = dir.file('probe');
    fs.writeFileSync(src, program());
    const cc = spawnSync(CC!, ['-std=gnu11', '-Wall', '-o', exe, src], { encoding: 'utf8', timeout: 60_000 });
    if (cc.error || cc.status !== 0) throw new Error(`${CC} failed to compile ${src}:\n${cc.error ?? ''}${cc.stderr}`);
    const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 60_000 });
    if (run.status !== 0) throw new Error(`probe failed: ${run.stderr}`);
    for (const line of run.stdout.trim().split('\n')) {
      const [kind, name, value] = line.split(' ');
      out.set(`${kind} ${name}`, value);
    }
  });

  it('constants', () => {
    for (const c of CONSTANTS) expect([c, S[c]]).toEqual([c, Number(out.get(`const ${c}`))]);
  });

  it('struct sizes and offsets', () => {
    const want: Array<[string, number]> = [
      ['size sockaddr_in', S.SIZEOF_SOCKADDR_IN],
      ['size sockaddr_in6', S.SIZEOF_SOCKADDR_IN6],
      ['size sockaddr_un', S.SIZEOF_SOCKADDR_UN],
      ['size sun_path', S.UNIX_PATH_MAX],
      ['size sockaddr_storage', S.SIZEOF_SOCKADDR_STORAGE],
      ['size ucred', S.SIZEOF_UCRED],
      ['size linger', S.SIZEOF_LINGER],
      ['offset sun_path', S.OFFSETOF_SUN_PATH],
      ['offset ucred.uid', 4],
      ['offset ucred.gid', 8],
      ['offset linger.l_linger', 4],
    ];
    for (const [key, ours] of want) expect([key, ours]).toEqual([key, Number(out.get(key))]);
  });

  it.each(SAMPLES.map(([name, , addr]) => [name, addr] as const))('sockaddr %s: our bytes are C\'s, and decode back', (name, addr) => {
    const c = Buffer.from(out.get(`bytes ${name}`)!, 'hex');
    expect(S.encodeSockaddr(addr).toString('hex')).toBe(c.toString('hex'));
    expect(S.decodeSockaddr(c)).toEqual(addr);
  });

  it('struct ucred and struct linger', () => {
    expect(S.decodeUcred(Buffer.from(out.get('bytes ucred')!, 'hex'))).toEqual({ pid: 4242, uid: 1000, gid: 100 });
    expect(S.encodeLinger(true, 0).toString('hex')).toBe(out.get('bytes linger'));
  });
});
