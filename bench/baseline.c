/*
 * The C side of `npm run bench` (bench/run.ts compiles it with `cc -O2`).
 *
 *   baseline produce N [--pipe-size B]
 *       Write N bytes of the bench pattern to stdout as fast as it can: the device's producer
 *       feeding the data_fd pipe of a STOP_COPY session.
 *   baseline consume N [--check] [--pipe-size B]
 *       Read stdin to EOF; exit 0 when exactly N bytes arrived (and, with --check, when they are
 *       the pattern), 1 otherwise: the device taking a RESUMING stream.
 *   baseline copy BUFSIZE IN OUT [--fsync] [--gate FD]
 *       The baseline: a plain read(2)/write(2) loop through one malloc'd buffer of BUFSIZE bytes.
 *       IN / OUT are paths or "-" (stdin / stdout); OUT is created or truncated. --fsync:
 *       fsync(OUT) before closing it. --gate FD: read one byte from FD before starting (lets the
 *       runner start the clock after this process exists). No checksum, no format.
 *       Prints one JSON line on stderr: bytes copied, VmRSS at start and VmHWM at the end (KiB).
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
#include <sys/stat.h>
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

static int copy(size_t bufsize, const char *in_path, const char *out_path, int do_fsync, int gate) {
  long rss_start = status_kib("VmRSS:");
  int in = strcmp(in_path, "-") == 0 ? 0 : open(in_path, O_RDONLY | O_CLOEXEC);
  if (in < 0) die(in_path);
  int out = strcmp(out_path, "-") == 0 ? 1 : open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) die(out_path);
  unsigned char *buf = malloc(bufsize);
  if (!buf) die("malloc");
  if (gate >= 0) {
    char c;
    ssize_t r;
    do r = read(gate, &c, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1) die("copy: gate");
  }
  unsigned long long total = 0;
  for (;;) {
    ssize_t r = read(in, buf, bufsize);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("copy: read");
    }
    if (r == 0) break;
    if (write_all(out, buf, (size_t)r) != (size_t)r) die("copy: write");
    total += (unsigned long long)r;
  }
  if (do_fsync && fsync(out) != 0) die("copy: fsync");
  if (out != 1 && close(out) != 0) die("copy: close");
  if (out == 1) close(1); /* the reader sees EOF now, not at exit */
  fprintf(stderr, "{\"bytes\":%llu,\"rssStartKiB\":%ld,\"hwmKiB\":%ld}\n", total, rss_start, status_kib("VmHWM:"));
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
    int do_fsync = 0, gate = -1;
    for (int i = 5; i < argc; i++) {
      if (strcmp(argv[i], "--fsync") == 0) do_fsync = 1;
      else if (strcmp(argv[i], "--gate") == 0 && i + 1 < argc) gate = (int)parse_size(argv[++i]);
      else goto usage;
    }
    size_t bufsize = (size_t)parse_size(argv[2]);
    if (bufsize == 0) goto usage;
    return copy(bufsize, argv[3], argv[4], do_fsync, gate);
  }
usage:
  fprintf(stderr,
          "usage: baseline produce N [--pipe-size B]\n"
          "       baseline consume N [--check] [--pipe-size B]\n"
          "       baseline copy BUFSIZE IN OUT [--fsync] [--gate FD]\n");
  return 2;
}
