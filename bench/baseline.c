/*
 * The C side of `npm run bench` (bench/run.ts compiles it with `cc -O2`).
 *
 *   baseline produce N [--pipe-size B]
 *       Write N bytes of the bench pattern to stdout as fast as it can: the device's producer
 *       feeding the data_fd pipe of a STOP_COPY session.
 *   baseline consume N [--check] [--pipe-size B]
 *       Read stdin to EOF; exit 0 when exactly N bytes arrived (and, with --check, when they are
 *       the pattern), 1 otherwise: the device taking a RESUMING stream.
 *   baseline copy BUFSIZE IN OUT [--fsync] [--gate FD] [--ready FD]
 *       The baseline: a plain read(2)/write(2) loop through one malloc'd buffer of BUFSIZE bytes.
 *       IN / OUT are paths or "-" (stdin / stdout); OUT is created or truncated. --fsync:
 *       fsync(OUT) before closing it. --gate FD: read one byte from FD before starting (lets the
 *       runner start the clock after this process exists). No checksum, no format.
 *       IN / OUT may also be a stream socket, for the live-migration baseline (a read() → send()
 *       loop, and a recv() → write() loop on the other end):
 *         tcp:HOST:PORT / unix:PATH            connect(2) to it (after the gate);
 *         listen:tcp:HOST:PORT / listen:unix:PATH
 *                                              bind(2) and listen(2) at start (port 0: the kernel
 *                                              picks one), accept(2) one connection after the gate.
 *       --ready FD: once listening, write the bound address ("tcp:127.0.0.1:PORT" or
 *       "unix:PATH") and a newline to FD and close it. A socket is read with recv(2) and written
 *       with send(2) (MSG_NOSIGNAL); a TCP socket gets TCP_NODELAY, as the library's do
 *       (src/live/socket.ts tuneTcp); buffer sizes are the kernel's defaults on both sides.
 *       Prints one JSON line on stderr: bytes copied, VmRSS at start and VmHWM at the end (KiB),
 *       and the CPU time of the copy loop (getrusage(2), from after the gate / accept), in µs.
 *
 * --pipe-size B: F_SETPIPE_SZ on the pipe end (stdout for produce, stdin for consume) when it is
 * a pipe; the size the kernel granted is what counts (it rounds up, and caps unprivileged
 * callers at /proc/sys/fs/pipe-max-size). 0 leaves the pipe as it is.
 *
 * The pattern is a table of PATTERN_LEN bytes of splitmix64 output repeated; PATTERN_LEN is not
 * a multiple of any power of two, so a lost, repeated or reordered block of any aligned size
 * shows up in --check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PATTERN_LEN ((1u << 20) + 24u)
#define IO_MAX (1u << 20)

static unsigned char *pattern;

static void die(const char *what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(2);
}

static unsigned long long parse_size(const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end) {
    fprintf(stderr, "baseline: bad number %s\n", s);
    exit(2);
  }
  return v;
}

static void make_pattern(void) {
  pattern = malloc(PATTERN_LEN + 8);
  if (!pattern) die("malloc");
  uint64_t x = 0x5eed0f5eedULL;
  for (size_t i = 0; i < PATTERN_LEN; i += 8) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    memcpy(pattern + i, &z, 8);
  }
}

static void set_pipe_size(int fd, long size) {
  struct stat st;
  if (size <= 0 || fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) return;
  if (fcntl(fd, F_SETPIPE_SZ, (int)size) < 0) fprintf(stderr, "baseline: F_SETPIPE_SZ %ld: %s (pipe left as it is)\n", size, strerror(errno));
}

/* "VmRSS:" or "VmHWM:" of /proc/self/status, in KiB; -1 when unknown. */
static long status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "re");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, kl) == 0) {
      v = strtol(line + kl, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

static size_t write_all(int fd, const unsigned char *p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = write(fd, p + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return done;
    }
    done += (size_t)w;
  }
  return done;
}

static int produce(unsigned long long n, long pipe_size) {
  set_pipe_size(1, pipe_size);
  make_pattern();
  unsigned long long pos = 0;
  while (pos < n) {
    size_t off = (size_t)(pos % PATTERN_LEN);
    size_t len = PATTERN_LEN - off;
    if (len > IO_MAX) len = IO_MAX;
    if (len > n - pos) len = (size_t)(n - pos);
    ssize_t w = write(1, pattern + off, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("produce: write");
    }
    pos += (unsigned long long)w;
  }
  return 0;
}

static int consume(unsigned long long n, int check, long pipe_size) {
  set_pipe_size(0, pipe_size);
  if (check) make_pattern();
  unsigned char *buf = malloc(IO_MAX);
  if (!buf) die("malloc");
  unsigned long long pos = 0;
  long long bad = -1;
  for (;;) {
    ssize_t r = read(0, buf, IO_MAX);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("consume: read");
    }
    if (r == 0) break;
    if (check && bad < 0) {
      for (size_t i = 0; i < (size_t)r;) {
        size_t off = (size_t)((pos + i) % PATTERN_LEN);
        size_t len = PATTERN_LEN - off;
        if (len > (size_t)r - i) len = (size_t)r - i;
        if (memcmp(buf + i, pattern + off, len) != 0) {
          for (size_t j = 0; j < len; j++) {
            if (buf[i + j] != pattern[off + j]) {
              bad = (long long)(pos + i + j);
              break;
            }
          }
          break;
        }
        i += len;
      }
    }
    pos += (unsigned long long)r;
  }
  if (pos != n) {
    fprintf(stderr, "baseline: consume: got %llu bytes, expected %llu\n", pos, n);
    return 1;
  }
  if (bad >= 0) {
    fprintf(stderr, "baseline: consume: data differs from the pattern at byte %lld\n", bad);
    return 1;
  }
  return 0;
}

/* A socket endpoint of `copy`: its address, and whether to listen on it. */
struct endpoint {
  int is_socket;
  int listen;
  struct sockaddr_storage addr;
  socklen_t addr_len;
};

/* Parse "tcp:HOST:PORT", "unix:PATH", with an optional "listen:" in front (HOST: a numeric IPv4
 * address). 0 when `spec` is not a socket; exits on a malformed one. */
static int parse_endpoint(const char *spec, struct endpoint *e) {
  memset(e, 0, sizeof *e);
  if (strncmp(spec, "listen:", 7) == 0) {
    e->listen = 1;
    spec += 7;
  }
  if (strncmp(spec, "unix:", 5) == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)&e->addr;
    if (strlen(spec + 5) >= sizeof un->sun_path) goto bad;
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, spec + 5);
    e->addr_len = sizeof *un;
  } else if (strncmp(spec, "tcp:", 4) == 0) {
    struct sockaddr_in *in = (struct sockaddr_in *)&e->addr;
    char host[64];
    const char *colon = strrchr(spec + 4, ':');
    if (!colon || (size_t)(colon - (spec + 4)) >= sizeof host) goto bad;
    memcpy(host, spec + 4, (size_t)(colon - (spec + 4)));
    host[colon - (spec + 4)] = 0;
    in->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) goto bad;
    in->sin_port = htons((uint16_t)parse_size(colon + 1));
    e->addr_len = sizeof *in;
  } else {
    if (e->listen) goto bad;
    return 0;
  }
  e->is_socket = 1;
  return 1;
bad:
  fprintf(stderr, "baseline: bad socket address %s\n", spec);
  exit(2);
}

static void tune(int fd, const struct endpoint *e) {
  int one = 1;
  if (e->addr.ss_family == AF_INET && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("setsockopt TCP_NODELAY");
}

/* socket(2) + bind(2) + listen(2); with `ready` >= 0, the bound address to it. The listening fd. */
static int listen_on(struct endpoint *e, int ready) {
  int fd = socket(e->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  if (e->addr.ss_family == AF_INET) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (e->addr.ss_family == AF_UNIX) unlink(((struct sockaddr_un *)&e->addr)->sun_path);
  if (bind(fd, (struct sockaddr *)&e->addr, e->addr_len) != 0) die("bind");
  if (listen(fd, 1) != 0) die("listen");
  if (ready >= 0) {
    char line[160];
    if (e->addr.ss_family == AF_INET) {
      struct sockaddr_in got;
      socklen_t len = sizeof got;
      if (getsockname(fd, (struct sockaddr *)&got, &len) != 0) die("getsockname");
      char host[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &got.sin_addr, host, sizeof host);
      snprintf(line, sizeof line, "tcp:%s:%u\n", host, (unsigned)ntohs(got.sin_port));
    } else {
      snprintf(line, sizeof line, "unix:%s\n", ((struct sockaddr_un *)&e->addr)->sun_path);
    }
    if (write_all(ready, (const unsigned char *)line, strlen(line)) != strlen(line)) die("ready");
    close(ready);
  }
  return fd;
}

static int accept_one(int lfd, const struct endpoint *e) {
  int fd;
  do fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) die("accept");
  close(lfd);
  if (e->addr.ss_family == AF_UNIX) unlink(((const struct sockaddr_un *)&e->addr)->sun_path);
  tune(fd, e);
  return fd;
}

static int connect_to(const struct endpoint *e) {
  int fd = socket(e->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int r;
  do r = connect(fd, (const struct sockaddr *)&e->addr, e->addr_len);
  while (r != 0 && errno == EINTR);
  if (r != 0) die("connect");
  tune(fd, e);
  return fd;
}

static long long cpu_us(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
  return (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static int copy(size_t bufsize, const char *in_path, const char *out_path, int do_fsync, int gate, int ready) {
  long rss_start = status_kib("VmRSS:");
  struct endpoint ein, eout;
  int in_sock = parse_endpoint(in_path, &ein), out_sock = parse_endpoint(out_path, &eout);
  int in = -1, out = -1, lin = -1, lout = -1;
  if (in_sock && ein.listen) lin = listen_on(&ein, ready);
  else if (!in_sock) in = strcmp(in_path, "-") == 0 ? 0 : open(in_path, O_RDONLY | O_CLOEXEC);
  if (!in_sock && in < 0) die(in_path);
  if (out_sock && eout.listen) lout = listen_on(&eout, lin >= 0 ? -1 : ready);
  else if (!out_sock) out = strcmp(out_path, "-") == 0 ? 1 : open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!out_sock && out < 0) die(out_path);
  unsigned char *buf = malloc(bufsize);
  if (!buf) die("malloc");
  if (gate >= 0) {
    char c;
    ssize_t r;
    do r = read(gate, &c, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1) die("copy: gate");
  }
  if (in_sock) in = ein.listen ? accept_one(lin, &ein) : connect_to(&ein);
  if (out_sock) out = eout.listen ? accept_one(lout, &eout) : connect_to(&eout);
  long long cpu0 = cpu_us();
  unsigned long long total = 0;
  for (;;) {
    ssize_t r = in_sock ? recv(in, buf, bufsize, 0) : read(in, buf, bufsize);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("copy: read");
    }
    if (r == 0) break;
    if (out_sock) {
      size_t done = 0;
      while (done < (size_t)r) {
        ssize_t w = send(out, buf + done, (size_t)r - done, MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EINTR) continue;
          die("copy: send");
        }
        done += (size_t)w;
      }
    } else if (write_all(out, buf, (size_t)r) != (size_t)r) {
      die("copy: write");
    }
    total += (unsigned long long)r;
  }
  if (do_fsync && fsync(out) != 0) die("copy: fsync");
  if (out != 1 && close(out) != 0) die("copy: close");
  if (out == 1) close(1); /* the reader sees EOF now, not at exit */
  fprintf(stderr, "{\"bytes\":%llu,\"rssStartKiB\":%ld,\"hwmKiB\":%ld,\"cpuUs\":%lld}\n", total, rss_start, status_kib("VmHWM:"), cpu_us() - cpu0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "produce") == 0) {
    long pipe_size = 0;
    for (int i = 3; i < argc; i++) {
      if (strcmp(argv[i], "--pipe-size") == 0 && i + 1 < argc) pipe_size = (long)parse_size(argv[++i]);
      else goto usage;
    }
    return produce(parse_size(argv[2]), pipe_size);
  }
  if (argc >= 3 && strcmp(argv[1], "consume") == 0) {
    int check = 0;
    long pipe_size = 0;
    for (int i = 3; i < argc; i++) {
      if (strcmp(argv[i], "--check") == 0) check = 1;
      else if (strcmp(argv[i], "--pipe-size") == 0 && i + 1 < argc) pipe_size = (long)parse_size(argv[++i]);
      else goto usage;
    }
    return consume(parse_size(argv[2]), check, pipe_size);
  }
  if (argc >= 5 && strcmp(argv[1], "copy") == 0) {
    int do_fsync = 0, gate = -1, ready = -1;
    for (int i = 5; i < argc; i++) {
      if (strcmp(argv[i], "--fsync") == 0) do_fsync = 1;
      else if (strcmp(argv[i], "--gate") == 0 && i + 1 < argc) gate = (int)parse_size(argv[++i]);
      else if (strcmp(argv[i], "--ready") == 0 && i + 1 < argc) ready = (int)parse_size(argv[++i]);
      else goto usage;
    }
    size_t bufsize = (size_t)parse_size(argv[2]);
    if (bufsize == 0) goto usage;
    return copy(bufsize, argv[3], argv[4], do_fsync, gate, ready);
  }
usage:
  fprintf(stderr,
          "usage: baseline produce N [--pipe-size B]\n"
          "       baseline consume N [--check] [--pipe-size B]\n"
          "       baseline copy BUFSIZE IN OUT [--fsync] [--gate FD] [--ready FD]\n"
          "       (IN/OUT: PATH, -, tcp:HOST:PORT, unix:PATH, listen:tcp:HOST:PORT, listen:unix:PATH)\n");
  return 2;
}
