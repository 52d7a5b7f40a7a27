// The raw syscall layer (see include/vfio_pci_sys.h): >= 0 or -errno, no N-API.
#include "vfio_pci_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstring>

// Node's bundled zlib (or the shared one it links) exports crc32; the header is in Node's
// include dir, so no library is linked here: the symbol resolves against the node binary.
#include <zlib.h>
// With Intel ISA-L (Debian: libisal-dev) the build defines VFIO_PCI_HAVE_ISAL and checksums with
// its crc32_gzip_refl(): the same CRC-32 as zlib's crc32() (reflected IEEE polynomial, same
// chaining), with PCLMULQDQ/AVX-512 folding: ~40 GiB/s on one core here against ~3 GiB/s for
// Node's table-driven zlib. Results are identical, so the snapshot format does not change.
#ifdef VFIO_PCI_HAVE_ISAL
#include <isa-l/crc.h>
#endif

namespace vfio_sys {

namespace {

// One read/write never asks for more than this: read(2) caps at 0x7ffff000 anyway, and
// zlib's crc32() takes a uInt length.
constexpr size_t kMaxIo = size_t{1} << 30;

inline size_t CapIo(size_t len) { return len > kMaxIo ? kMaxIo : len; }

// CRC-32 of `len` bytes continuing from `crc` (0 to start), zlib's definition.
inline uLong Crc32(uLong crc, const unsigned char* p, size_t len) {
#ifdef VFIO_PCI_HAVE_ISAL
  return crc32_gzip_refl(static_cast<uint32_t>(crc), p, static_cast<uint64_t>(len));
#else
  return crc32(crc, p, static_cast<uInt>(len));
#endif
}

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t NowMs() { return NowNs() / 1000000; }

inline bool WouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

}  // namespace

int vfio_open(const char* path, int flags, unsigned mode) {
  for (;;) {
    int fd = ::open(path, flags | O_CLOEXEC, static_cast<mode_t>(mode));
    if (fd >= 0) return fd;
    if (errno != EINTR) return -errno;
  }
}

int vfio_close(int fd) {
  if (::close(fd) == 0) return 0;
  // Linux releases the fd before anything can interrupt close(); EINTR means "closed".
  return errno == EINTR ? 0 : -errno;
}

int vfio_ioctl_ptr(int fd, unsigned long request, void* arg) {
  int r = ::ioctl(fd, request, arg);
  return r < 0 ? -errno : r;
}

int vfio_ioctl_int(int fd, unsigned long request, unsigned long arg) {
  int r = ::ioctl(fd, request, arg);
  return r < 0 ? -errno : r;
}

int64_t vfio_pread(int fd, void* buf, size_t len, int64_t offset) {
  for (;;) {
    ssize_t n = ::pread(fd, buf, CapIo(len), static_cast<off_t>(offset));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int64_t vfio_pwrite(int fd, const void* buf, size_t len, int64_t offset) {
  for (;;) {
    ssize_t n = ::pwrite(fd, buf, CapIo(len), static_cast<off_t>(offset));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int64_t vfio_read(int fd, void* buf, size_t len) {
  for (;;) {
    ssize_t n = ::read(fd, buf, CapIo(len));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int64_t vfio_write(int fd, const void* buf, size_t len) {
  for (;;) {
    ssize_t n = ::write(fd, buf, CapIo(len));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int64_t vfio_read_wait(int fd, void* buf, size_t len) {
  for (;;) {
    int64_t n = vfio_read(fd, buf, len);
    if (n >= 0 || !WouldBlock(static_cast<int>(-n))) return n;
    // POLLHUP/POLLERR/POLLNVAL also end the wait; the next read reports them.
    int p = vfio_poll(fd, POLLIN, -1);
    if (p < 0) return p;
  }
}

int64_t vfio_write_wait(int fd, const void* buf, size_t len) {
  for (;;) {
    int64_t n = vfio_write(fd, buf, len);
    if (n >= 0 || !WouldBlock(static_cast<int>(-n))) return n;
    int p = vfio_poll(fd, POLLOUT, -1);
    if (p < 0) return p;
  }
}

int vfio_pipe(int fds[2], int flags) {
  return ::pipe2(fds, flags | O_CLOEXEC) == 0 ? 0 : -errno;
}

int vfio_eventfd(unsigned initval, int flags) {
  int fd = ::eventfd(initval, flags | EFD_CLOEXEC | EFD_NONBLOCK);
  return fd >= 0 ? fd : -errno;
}

int vfio_eventfd_read(int fd, uint64_t* value) {
  uint64_t v = 0;
  int64_t n = vfio_read(fd, &v, sizeof v);
  if (n < 0) {
    if (WouldBlock(static_cast<int>(-n))) {
      *value = 0;
      return 0;
    }
    return static_cast<int>(n);
  }
  if (n != sizeof v) return -EIO;  // an eventfd read is all 8 bytes or an error
  *value = v;
  return 0;
}

int vfio_eventfd_write(int fd, uint64_t value) {
  int64_t n = vfio_write(fd, &value, sizeof value);
  if (n < 0) return static_cast<int>(n);
  return n == sizeof value ? 0 : -EIO;
}

int vfio_poll(int fd, short events, int timeout_ms) {
  const int64_t deadline = timeout_ms > 0 ? NowMs() + timeout_ms : -1;  // 0: one look, no clock
  int wait = timeout_ms < 0 ? -1 : timeout_ms;
  for (;;) {
    struct pollfd p;
    p.fd = fd;
    p.events = events;
    p.revents = 0;
    int r = ::poll(&p, 1, wait);
    if (r > 0) return p.revents;
    if (r == 0) return 0;
    if (errno != EINTR) return -errno;
    if (deadline >= 0) {
      int64_t left = deadline - NowMs();
      wait = left > 0 ? static_cast<int>(left > INT_MAX ? INT_MAX : left) : 0;
    }
  }
}

namespace {

// One end of a pump: the fd, its file position when pread/pwrite are used (< 0: read/write),
// the poll(2) event it waits for, and whether to poll before every call (see `cancel_fd`).
struct PumpEnd {
  int fd;
  int64_t pos;
  short events;
  bool prewait;
  // Write side: start write-back every `writeback` bytes (0: never), from `flushed` on.
  uint64_t writeback = 0;
  int64_t flushed = 0;
};

// After a write at e.pos: start the write-back of the bytes written since the last one, once
// there are e.writeback of them (vfio_pump_options::writeback). Failures are ignored.
void MaybeWriteback(PumpEnd& e) {
  if (e.writeback == 0 || e.pos - e.flushed < static_cast<int64_t>(e.writeback)) return;
  (void)::sync_file_range(e.fd, e.flushed, e.pos - e.flushed, SYNC_FILE_RANGE_WRITE);
  e.flushed = e.pos;
}

// The fd's file type (st_mode & S_IFMT), or 0 when fstat(2) fails: the pump's own calls then
// report the bad fd.
mode_t FileType(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 ? (st.st_mode & S_IFMT) : 0;
}

// Regular files and block devices never wait indefinitely (no poll needed to stay
// cancellable); pipes, sockets, ttys and data_fds may.
bool MayWaitIndefinitely(mode_t type) { return type != S_IFREG && type != S_IFBLK; }

// Wait until `e.fd` is ready (or reports POLLHUP/POLLERR/POLLNVAL: the next call tells what
// happened) or `cancel_fd` is readable. Returns > 0, -ECANCELED, or -errno of poll(2).
int WaitReady(const PumpEnd& e, int cancel_fd) {
  struct pollfd p[2];
  p[0].fd = e.fd;
  p[0].events = e.events;
  p[0].revents = 0;
  p[1].fd = cancel_fd;
  p[1].events = POLLIN;
  p[1].revents = 0;
  const nfds_t n = cancel_fd >= 0 ? 2 : 1;
  for (;;) {
    int r = ::poll(p, n, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 2 && p[1].revents != 0) return -ECANCELED;
    if (p[0].revents != 0) return p[0].revents;
  }
}

// True once `cancel_fd` (>= 0) is readable (or invalid). One poll(2) that does not wait.
bool Cancelled(int cancel_fd) { return vfio_poll(cancel_fd, POLLIN, 0) > 0; }

// One read(2)/pread(2) of up to `len` bytes: EINTR retried, EAGAIN waited out. n >= 0 or -errno.
int64_t PumpRead(PumpEnd& e, unsigned char* buf, size_t len, int cancel_fd) {
  for (;;) {
    if (e.prewait) {
      int p = WaitReady(e, cancel_fd);
      if (p < 0) return p;
    }
    ssize_t n = e.pos >= 0 ? ::pread(e.fd, buf, len, static_cast<off_t>(e.pos)) : ::read(e.fd, buf, len);
    if (n >= 0) {
      if (e.pos >= 0) e.pos += n;
      return n;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (!WouldBlock(err)) return -err;
    if (!e.prewait) {
      int p = WaitReady(e, cancel_fd);
      if (p < 0) return p;
    }
  }
}

// Write all `len` bytes with write(2)/pwrite(2): EINTR retried, EAGAIN waited out, short
// writes looped on. Every byte written is added to *written. 0 or -errno.
int PumpWriteAll(PumpEnd& e, const unsigned char* buf, size_t len, int cancel_fd, uint64_t* written) {
  size_t done = 0;
  while (done < len) {
    if (e.prewait) {
      int p = WaitReady(e, cancel_fd);
      if (p < 0) return p;
    }
    const size_t want = CapIo(len - done);
    ssize_t w = e.pos >= 0 ? ::pwrite(e.fd, buf + done, want, static_cast<off_t>(e.pos)) : ::write(e.fd, buf + done, want);
    if (w < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (!WouldBlock(err)) return -err;
      if (!e.prewait) {
        int p = WaitReady(e, cancel_fd);
        if (p < 0) return p;
      }
      continue;
    }
    if (w == 0) return -EIO;  // no progress and no error: give up rather than spin
    done += static_cast<size_t>(w);
    *written += static_cast<uint64_t>(w);
    if (e.pos >= 0) e.pos += w;
  }
  MaybeWriteback(e);
  return 0;
}

// Read up to `len` bytes, stopping early only at the end of src (a read of 0). The bytes read,
// or -errno (a failure after some bytes were read loses the count: the pump fails either way).
int64_t PumpReadFull(PumpEnd& e, unsigned char* buf, size_t len, int cancel_fd) {
  size_t got = 0;
  while (got < len) {
    int64_t n = PumpRead(e, buf + got, CapIo(len - got), cancel_fd);
    if (n < 0) return n;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(got);
}

// Chunk framing (vfio_pump_frame): little-endian fields, whatever the host.
constexpr size_t kChunkHeader = 8;
constexpr size_t kEndChunk = 16;

inline void PutLe32(unsigned char* p, uint32_t v) {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
  p[2] = static_cast<unsigned char>(v >> 16);
  p[3] = static_cast<unsigned char>(v >> 24);
}

inline uint32_t GetLe32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

inline uint64_t GetLe64(const unsigned char* p) {
  return static_cast<uint64_t>(GetLe32(p)) | static_cast<uint64_t>(GetLe32(p + 4)) << 32;
}

// The crc32 of A followed by B from crc32(A), crc32(B) and B's length, in O(log length): a
// framed pump checksums each chunk once and still returns the crc32 of all the payload. zlib.h
// only declares crc32_combine64 when large-file offsets are on (node-gyp builds with
// _FILE_OFFSET_BITS=64); Node exports both.
inline uLong CrcCombine(uLong a, uLong b, size_t len_b) {
#ifdef Z_WANT64
  return crc32_combine64(a, b, static_cast<z_off_t>(len_b));
#else
  return crc32_combine(a, b, static_cast<z_off_t>(len_b));
#endif
}

}  // namespace

int vfio_pump(int src, int dst, void* buf, size_t buf_len, const vfio_pump_options* opts, vfio_pump_result* out) {
  static const vfio_pump_options kDefaults{};
  const vfio_pump_options& o = opts ? *opts : kDefaults;
  unsigned char* const bytes = static_cast<unsigned char*>(buf);
  const size_t chunk = CapIo(buf_len);
  const bool cancellable = o.cancel_fd >= 0;
  PumpEnd in{src, o.src_offset, POLLIN, false};
  PumpEnd to{dst, o.dst_offset, POLLOUT, false};
  uLong crc = crc32(0L, Z_NULL, 0);

  out->bytes = 0;
  out->bytes_read = 0;
  out->crc32 = 0;
  out->status = VFIO_PUMP_OK;
  out->error = 0;
  out->end = VFIO_PUMP_END_EOF;
  out->chunks = 0;
  out->written = 0;
  out->table_crc = o.table_crc;
  out->skeleton_crc = o.skeleton_crc;
  out->end_table_crc = 0;
  out->end_total = 0;
  out->chunk_offset = -1;
  out->chunk_length = 0;
  out->chunk_crc_expected = 0;
  out->chunk_crc_actual = 0;

  auto fail = [&](int status, int err) {
    out->crc32 = static_cast<uint32_t>(crc);
    out->status = status;
    out->error = err;
    return -err;
  };
  auto finish = [&](int end) {
    out->crc32 = static_cast<uint32_t>(crc);
    out->end = end;
    return 0;
  };
  // A read that found no data: 'for now' (precopy) or the end of src.
  auto ended = [&](int64_t n) { return n == 0 || (o.precopy && n == -ENOMSG); };

  if (chunk == 0) return fail(VFIO_PUMP_READ, EINVAL);
  if (o.verify && (o.limit < 0 || static_cast<uint64_t>(o.limit) > buf_len)) return fail(VFIO_PUMP_READ, EINVAL);
  switch (o.frame) {
    case VFIO_PUMP_FRAME_NONE:
      break;
    case VFIO_PUMP_FRAME_WRITE:
      if (o.verify || o.frame_chunk == 0 || o.frame_chunk > kMaxIo || buf_len < kChunkHeader ||
          buf_len - kChunkHeader < o.frame_chunk) {
        return fail(VFIO_PUMP_READ, EINVAL);
      }
      break;
    case VFIO_PUMP_FRAME_READ:
      if (o.verify || o.precopy || o.limit >= 0 || o.frame_max_chunk == 0) return fail(VFIO_PUMP_READ, EINVAL);
      break;
    default:
      return fail(VFIO_PUMP_READ, EINVAL);
  }
  const mode_t dst_type = cancellable || o.writeback > 0 ? FileType(dst) : 0;
  if (cancellable) {
    // cancel_fd was opened after the caller got its fds, so it can only share a number with
    // one that was not open at that time: that fd is bad, whatever now lives at its number.
    if (src == o.cancel_fd) return fail(VFIO_PUMP_READ, EBADF);
    if (dst == o.cancel_fd) return fail(VFIO_PUMP_WRITE, EBADF);
    in.prewait = MayWaitIndefinitely(FileType(src));
    to.prewait = MayWaitIndefinitely(dst_type);
  }
  if (o.writeback > 0 && to.pos >= 0 && dst_type == S_IFREG) {
    to.writeback = o.writeback;
    to.flushed = to.pos;
  }
  // Cancellation is seen within one chunk: an end that may wait polls cancel_fd before each of
  // its calls (WaitReady); when neither does (file to file), each chunk starts with a check.
  const bool poll_cancel = cancellable && !in.prewait && !to.prewait;

  if (o.verify) {
    // Buffer the whole chunk, check it, and only then let it reach dst.
    const uint64_t want = static_cast<uint64_t>(o.limit);
    while (out->bytes_read < want) {
      const size_t len = CapIo(static_cast<size_t>(want - out->bytes_read));
      int64_t n = PumpRead(in, bytes + out->bytes_read, len, o.cancel_fd);
      if (ended(n)) return fail(VFIO_PUMP_TRUNCATED, ENODATA);
      if (n < 0) return fail(VFIO_PUMP_READ, static_cast<int>(-n));
      crc = Crc32(crc, bytes + out->bytes_read, static_cast<size_t>(n));
      out->bytes_read += static_cast<uint64_t>(n);
    }
    if (static_cast<uint32_t>(crc) != o.expect_crc) return fail(VFIO_PUMP_CHECKSUM, EBADMSG);
    int w = PumpWriteAll(to, bytes, static_cast<size_t>(want), o.cancel_fd, &out->bytes);
    if (w < 0) return fail(VFIO_PUMP_WRITE, -w);
    return finish(VFIO_PUMP_END_LIMIT);
  }

  if (o.frame == VFIO_PUMP_FRAME_WRITE) {
    // Each chunk is gathered at buf + 8 and goes out with its header in front, in one write
    // (pwrite at the running offset): the header and the payload land together.
    unsigned char* const payload = bytes + kChunkHeader;
    for (;;) {
      if (poll_cancel && Cancelled(o.cancel_fd)) return fail(VFIO_PUMP_READ, ECANCELED);
      size_t want = o.frame_chunk;
      if (o.limit >= 0) {
        const uint64_t left = static_cast<uint64_t>(o.limit) - out->bytes_read;
        if (left == 0) return finish(VFIO_PUMP_END_LIMIT);
        if (left < want) want = static_cast<size_t>(left);
      }
      size_t got = 0;
      bool at_end = false;
      uLong chunk_crc = crc32(0L, Z_NULL, 0);
      while (got < want) {
        int64_t n = PumpRead(in, payload + got, want - got, o.cancel_fd);
        if (ended(n)) {
          at_end = true;
          break;
        }
        if (n < 0) return fail(VFIO_PUMP_READ, static_cast<int>(-n));
        // Checksummed right after the kernel wrote it into buf, while it is in cache.
        chunk_crc = Crc32(chunk_crc, payload + got, static_cast<size_t>(n));
        got += static_cast<size_t>(n);
        out->bytes_read += static_cast<uint64_t>(n);
      }
      if (got > 0) {  // never an empty chunk: a length of 0 marks the end chunk
        PutLe32(bytes, static_cast<uint32_t>(got));
        PutLe32(bytes + 4, static_cast<uint32_t>(chunk_crc));
        uint64_t sent = 0;
        int w = PumpWriteAll(to, bytes, kChunkHeader + got, o.cancel_fd, &sent);
        if (w < 0) return fail(VFIO_PUMP_WRITE, -w);
        crc = CrcCombine(crc, chunk_crc, got);
        out->bytes += got;
        out->written += kChunkHeader + got;
        out->chunks++;
        out->table_crc = static_cast<uint32_t>(Crc32(out->table_crc, bytes, kChunkHeader));
        out->skeleton_crc = static_cast<uint32_t>(Crc32(out->skeleton_crc, bytes, kChunkHeader));
      }
      if (at_end) return finish(o.precopy ? VFIO_PUMP_END_FOR_NOW : VFIO_PUMP_END_EOF);
    }
  }

  if (o.frame == VFIO_PUMP_FRAME_READ) {
    // Each payload is read whole into buf and checked before any of it reaches dst. When buf has
    // room, the next chunk's header (or the end chunk) is read with the payload, in one pread:
    // one syscall per chunk instead of two.
    const uint64_t cap = o.frame_max_chunk < buf_len ? o.frame_max_chunk : buf_len;
    const int64_t base = o.src_offset >= 0 ? o.src_offset : 0;
    unsigned char head[kEndChunk];
    bool have_head = false;  // head holds the header that follows, read with the last payload
    // Read exactly `len` bytes into `to_buf`, or fail (TRUNCATED at the end of src).
    auto read_exact = [&](unsigned char* to_buf, size_t len) -> int {
      int64_t n = PumpReadFull(in, to_buf, len, o.cancel_fd);
      if (n < 0) return fail(VFIO_PUMP_READ, static_cast<int>(-n));
      out->bytes_read += static_cast<uint64_t>(n);
      return static_cast<size_t>(n) < len ? fail(VFIO_PUMP_TRUNCATED, ENODATA) : 0;
    };
    uint64_t at = 0;  // offset of the current chunk header from base
    for (uint64_t i = 0; i < o.frame_chunks; i++) {
      if (poll_cancel && Cancelled(o.cancel_fd)) return fail(VFIO_PUMP_READ, ECANCELED);
      out->chunk_offset = base + static_cast<int64_t>(at);
      if (!have_head) {
        if (int r = read_exact(head, kChunkHeader)) return r;
      }
      const uint32_t len = GetLe32(head);
      const uint32_t want_crc = GetLe32(head + 4);
      if (len == 0 || len > cap) {
        out->chunk_length = len;
        return fail(VFIO_PUMP_BAD_FRAME, EPROTO);
      }
      const size_t next = i + 1 < o.frame_chunks ? kChunkHeader : (o.frame_final ? kEndChunk : 0);
      const size_t ahead = next > 0 && len + next <= buf_len ? next : 0;
      const int64_t n = PumpReadFull(in, bytes, len + ahead, o.cancel_fd);
      if (n < 0) return fail(VFIO_PUMP_READ, static_cast<int>(-n));
      out->bytes_read += static_cast<uint64_t>(n);
      if (static_cast<uint64_t>(n) < len) return fail(VFIO_PUMP_TRUNCATED, ENODATA);
      // src ends inside the header that follows: this chunk is whole and goes out; the failure
      // is that header's, as if it had been read on its own.
      const bool cut = static_cast<size_t>(n) < len + ahead;
      have_head = ahead > 0 && !cut;
      const uint32_t got_crc = static_cast<uint32_t>(Crc32(0, bytes, len));
      if (got_crc != want_crc) {
        out->chunk_length = len;
        out->chunk_crc_expected = want_crc;
        out->chunk_crc_actual = got_crc;
        return fail(VFIO_PUMP_CHECKSUM, EBADMSG);
      }
      int w = PumpWriteAll(to, bytes, len, o.cancel_fd, &out->bytes);
      if (w < 0) return fail(VFIO_PUMP_WRITE, -w);
      crc = CrcCombine(crc, got_crc, len);
      out->chunks++;
      out->table_crc = static_cast<uint32_t>(Crc32(out->table_crc, head, kChunkHeader));
      at += kChunkHeader + len;
      if (have_head) std::memcpy(head, bytes + len, next);  // the header read ahead is next
      if (cut) {
        out->chunk_offset = base + static_cast<int64_t>(at);
        return fail(VFIO_PUMP_TRUNCATED, ENODATA);
      }
    }
    if (!o.frame_final) {
      out->chunk_offset = -1;
      return finish(VFIO_PUMP_END_LIMIT);
    }
    out->chunk_offset = base + static_cast<int64_t>(at);
    if (!have_head) {
      if (int r = read_exact(head, kEndChunk)) return r;
    }
    if (GetLe32(head) != 0) {
      out->chunk_length = GetLe32(head);
      return fail(VFIO_PUMP_BAD_FRAME, EPROTO);
    }
    out->end_table_crc = GetLe32(head + 4);
    out->end_total = GetLe64(head + 8);
    out->chunk_offset = -1;
    return finish(VFIO_PUMP_END_EOF);
  }

  for (;;) {
    if (poll_cancel && Cancelled(o.cancel_fd)) return fail(VFIO_PUMP_READ, ECANCELED);
    size_t want = chunk;
    if (o.limit >= 0) {
      const uint64_t left = static_cast<uint64_t>(o.limit) - out->bytes_read;
      if (left == 0) return finish(VFIO_PUMP_END_LIMIT);
      if (left < want) want = static_cast<size_t>(left);
    }
    int64_t n = PumpRead(in, bytes, want, o.cancel_fd);
    if (ended(n)) return finish(o.precopy ? VFIO_PUMP_END_FOR_NOW : VFIO_PUMP_END_EOF);
    if (n < 0) return fail(VFIO_PUMP_READ, static_cast<int>(-n));
    // The chunk was just written into buf by the kernel: checksum it while it is in cache.
    crc = Crc32(crc, bytes, static_cast<size_t>(n));
    out->bytes_read += static_cast<uint64_t>(n);
    int w = PumpWriteAll(to, bytes, static_cast<size_t>(n), o.cancel_fd, &out->bytes);
    if (w < 0) return fail(VFIO_PUMP_WRITE, -w);
  }
}

uint64_t vfio_walk_chunks(int fd, vfio_chunk_walk* w, int64_t size, uint32_t max_chunk, uint64_t max_headers, int64_t budget_us) {
  const int64_t deadline_ns = budget_us >= 0 ? NowNs() + budget_us * 1000 : -1;
  uint64_t taken = 0;
  unsigned char head[kChunkHeader];
  while (taken < max_headers) {
    if (w->pos < 0 || size - w->pos < static_cast<int64_t>(kChunkHeader)) break;
    if (vfio_pread(fd, head, kChunkHeader, w->pos) != static_cast<int64_t>(kChunkHeader)) break;
    const uint32_t len = GetLe32(head);
    if (len == 0 || len > max_chunk || size - w->pos - static_cast<int64_t>(kChunkHeader) < static_cast<int64_t>(len)) break;
    w->table_crc = static_cast<uint32_t>(Crc32(w->table_crc, head, kChunkHeader));
    w->skeleton_crc = static_cast<uint32_t>(Crc32(w->skeleton_crc, head, kChunkHeader));
    w->total += len;
    w->count++;
    w->pos += static_cast<int64_t>(kChunkHeader) + len;
    taken++;
    // The clock is read every 16 headers: a header costs ~1 us from the page cache.
    if (deadline_ns >= 0 && taken % 16 == 0 && NowNs() >= deadline_ns) break;
  }
  return taken;
}

const char* vfio_crc32_implementation() {
#ifdef VFIO_PCI_HAVE_ISAL
  return "isa-l";
#else
  return "zlib";
#endif
}

const char* vfio_errno_name(int err) {
  switch (err) {
#define VFIO_ERRNO_CASE(name) \
  case name:                  \
    return #name;
    // Linux asm-generic/errno-base.h and errno.h, canonical names only (EAGAIN, not
    // EWOULDBLOCK; EDEADLK, not EDEADLOCK; EOPNOTSUPP, not ENOTSUP).
    VFIO_ERRNO_CASE(EPERM)
    VFIO_ERRNO_CASE(ENOENT)
    VFIO_ERRNO_CASE(ESRCH)
    VFIO_ERRNO_CASE(EINTR)
    VFIO_ERRNO_CASE(EIO)
    VFIO_ERRNO_CASE(ENXIO)
    VFIO_ERRNO_CASE(E2BIG)
    VFIO_ERRNO_CASE(ENOEXEC)
    VFIO_ERRNO_CASE(EBADF)
    VFIO_ERRNO_CASE(ECHILD)
    VFIO_ERRNO_CASE(EAGAIN)
    VFIO_ERRNO_CASE(ENOMEM)
    VFIO_ERRNO_CASE(EACCES)
    VFIO_ERRNO_CASE(EFAULT)
    VFIO_ERRNO_CASE(ENOTBLK)
    VFIO_ERRNO_CASE(EBUSY)
    VFIO_ERRNO_CASE(EEXIST)
    VFIO_ERRNO_CASE(EXDEV)
    VFIO_ERRNO_CASE(ENODEV)
    VFIO_ERRNO_CASE(ENOTDIR)
    VFIO_ERRNO_CASE(EISDIR)
    VFIO_ERRNO_CASE(EINVAL)
    VFIO_ERRNO_CASE(ENFILE)
    VFIO_ERRNO_CASE(EMFILE)
    VFIO_ERRNO_CASE(ENOTTY)
    VFIO_ERRNO_CASE(ETXTBSY)
    VFIO_ERRNO_CASE(EFBIG)
    VFIO_ERRNO_CASE(ENOSPC)
    VFIO_ERRNO_CASE(ESPIPE)
    VFIO_ERRNO_CASE(EROFS)
    VFIO_ERRNO_CASE(EMLINK)
    VFIO_ERRNO_CASE(EPIPE)
    VFIO_ERRNO_CASE(EDOM)
    VFIO_ERRNO_CASE(ERANGE)
    VFIO_ERRNO_CASE(EDEADLK)
    VFIO_ERRNO_CASE(ENAMETOOLONG)
    VFIO_ERRNO_CASE(ENOLCK)
    VFIO_ERRNO_CASE(ENOSYS)
    VFIO_ERRNO_CASE(ENOTEMPTY)
    VFIO_ERRNO_CASE(ELOOP)
    VFIO_ERRNO_CASE(ENOMSG)
    VFIO_ERRNO_CASE(EIDRM)
    VFIO_ERRNO_CASE(ECHRNG)
    VFIO_ERRNO_CASE(EL2NSYNC)
    VFIO_ERRNO_CASE(EL3HLT)
    VFIO_ERRNO_CASE(EL3RST)
    VFIO_ERRNO_CASE(ELNRNG)
    VFIO_ERRNO_CASE(EUNATCH)
    VFIO_ERRNO_CASE(ENOCSI)
    VFIO_ERRNO_CASE(EL2HLT)
    VFIO_ERRNO_CASE(EBADE)
    VFIO_ERRNO_CASE(EBADR)
    VFIO_ERRNO_CASE(EXFULL)
    VFIO_ERRNO_CASE(ENOANO)
    VFIO_ERRNO_CASE(EBADRQC)
    VFIO_ERRNO_CASE(EBADSLT)
    VFIO_ERRNO_CASE(EBFONT)
    VFIO_ERRNO_CASE(ENOSTR)
    VFIO_ERRNO_CASE(ENODATA)
    VFIO_ERRNO_CASE(ETIME)
    VFIO_ERRNO_CASE(ENOSR)
    VFIO_ERRNO_CASE(ENONET)
    VFIO_ERRNO_CASE(ENOPKG)
    VFIO_ERRNO_CASE(EREMOTE)
    VFIO_ERRNO_CASE(ENOLINK)
    VFIO_ERRNO_CASE(EADV)
    VFIO_ERRNO_CASE(ESRMNT)
    VFIO_ERRNO_CASE(ECOMM)
    VFIO_ERRNO_CASE(EPROTO)
    VFIO_ERRNO_CASE(EMULTIHOP)
    VFIO_ERRNO_CASE(EDOTDOT)
    VFIO_ERRNO_CASE(EBADMSG)
    VFIO_ERRNO_CASE(EOVERFLOW)
    VFIO_ERRNO_CASE(ENOTUNIQ)
    VFIO_ERRNO_CASE(EBADFD)
    VFIO_ERRNO_CASE(EREMCHG)
    VFIO_ERRNO_CASE(ELIBACC)
    VFIO_ERRNO_CASE(ELIBBAD)
    VFIO_ERRNO_CASE(ELIBSCN)
    VFIO_ERRNO_CASE(ELIBMAX)
    VFIO_ERRNO_CASE(ELIBEXEC)
    VFIO_ERRNO_CASE(EILSEQ)
    VFIO_ERRNO_CASE(ERESTART)
    VFIO_ERRNO_CASE(ESTRPIPE)
    VFIO_ERRNO_CASE(EUSERS)
    VFIO_ERRNO_CASE(ENOTSOCK)
    VFIO_ERRNO_CASE(EDESTADDRREQ)
    VFIO_ERRNO_CASE(EMSGSIZE)
    VFIO_ERRNO_CASE(EPROTOTYPE)
    VFIO_ERRNO_CASE(ENOPROTOOPT)
    VFIO_ERRNO_CASE(EPROTONOSUPPORT)
    VFIO_ERRNO_CASE(ESOCKTNOSUPPORT)
    VFIO_ERRNO_CASE(EOPNOTSUPP)
    VFIO_ERRNO_CASE(EPFNOSUPPORT)
    VFIO_ERRNO_CASE(EAFNOSUPPORT)
    VFIO_ERRNO_CASE(EADDRINUSE)
    VFIO_ERRNO_CASE(EADDRNOTAVAIL)
    VFIO_ERRNO_CASE(ENETDOWN)
    VFIO_ERRNO_CASE(ENETUNREACH)
    VFIO_ERRNO_CASE(ENETRESET)
    VFIO_ERRNO_CASE(ECONNABORTED)
    VFIO_ERRNO_CASE(ECONNRESET)
    VFIO_ERRNO_CASE(ENOBUFS)
    VFIO_ERRNO_CASE(EISCONN)
    VFIO_ERRNO_CASE(ENOTCONN)
    VFIO_ERRNO_CASE(ESHUTDOWN)
    VFIO_ERRNO_CASE(ETOOMANYREFS)
    VFIO_ERRNO_CASE(ETIMEDOUT)
    VFIO_ERRNO_CASE(ECONNREFUSED)
    VFIO_ERRNO_CASE(EHOSTDOWN)
    VFIO_ERRNO_CASE(EHOSTUNREACH)
    VFIO_ERRNO_CASE(EALREADY)
    VFIO_ERRNO_CASE(EINPROGRESS)
    VFIO_ERRNO_CASE(ESTALE)
    VFIO_ERRNO_CASE(EUCLEAN)
    VFIO_ERRNO_CASE(ENOTNAM)
    VFIO_ERRNO_CASE(ENAVAIL)
    VFIO_ERRNO_CASE(EISNAM)
    VFIO_ERRNO_CASE(EREMOTEIO)
    VFIO_ERRNO_CASE(EDQUOT)
    VFIO_ERRNO_CASE(ENOMEDIUM)
    VFIO_ERRNO_CASE(EMEDIUMTYPE)
    VFIO_ERRNO_CASE(ECANCELED)
    VFIO_ERRNO_CASE(ENOKEY)
    VFIO_ERRNO_CASE(EKEYEXPIRED)
    VFIO_ERRNO_CASE(EKEYREVOKED)
    VFIO_ERRNO_CASE(EKEYREJECTED)
    VFIO_ERRNO_CASE(EOWNERDEAD)
    VFIO_ERRNO_CASE(ENOTRECOVERABLE)
    VFIO_ERRNO_CASE(ERFKILL)
    VFIO_ERRNO_CASE(EHWPOISON)
#undef VFIO_ERRNO_CASE
    default:
      return nullptr;
  }
}

}  // namespace vfio_sys

// ---- sockets ------------------------------------------------------------------------------------

namespace vfio_sys {

int vfio_socket(int domain, int type, int protocol) {
  int fd = ::socket(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
  return fd >= 0 ? fd : -errno;
}

int vfio_bind(int fd, const void* addr, uint32_t len) {
  return ::bind(fd, static_cast<const struct sockaddr*>(addr), static_cast<socklen_t>(len)) == 0 ? 0 : -errno;
}

int vfio_listen(int fd, int backlog) { return ::listen(fd, backlog) == 0 ? 0 : -errno; }

int vfio_accept(int fd, void* addr, uint32_t* len) {
  for (;;) {
    socklen_t l = len ? static_cast<socklen_t>(*len) : 0;
    int conn = ::accept4(fd, static_cast<struct sockaddr*>(addr), len ? &l : nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (conn >= 0) {
      if (len) *len = static_cast<uint32_t>(l);
      return conn;
    }
    if (errno != EINTR) return -errno;
  }
}

int vfio_connect(int fd, const void* addr, uint32_t len) {
  if (::connect(fd, static_cast<const struct sockaddr*>(addr), static_cast<socklen_t>(len)) == 0) return 0;
  // A connect(2) that is interrupted goes on asynchronously (POSIX): retrying it would answer
  // EALREADY. Either way the caller waits for POLLOUT and reads SO_ERROR.
  return errno == EINPROGRESS || errno == EINTR ? 1 : -errno;
}

int vfio_getsockopt(int fd, int level, int name, void* val, uint32_t* len) {
  socklen_t l = static_cast<socklen_t>(*len);
  if (::getsockopt(fd, level, name, val, &l) != 0) return -errno;
  *len = static_cast<uint32_t>(l);
  return 0;
}

int vfio_setsockopt(int fd, int level, int name, const void* val, uint32_t len) {
  return ::setsockopt(fd, level, name, val, static_cast<socklen_t>(len)) == 0 ? 0 : -errno;
}

int vfio_shutdown(int fd, int how) { return ::shutdown(fd, how) == 0 ? 0 : -errno; }

int vfio_getsockname(int fd, void* addr, uint32_t* len) {
  socklen_t l = static_cast<socklen_t>(*len);
  if (::getsockname(fd, static_cast<struct sockaddr*>(addr), &l) != 0) return -errno;
  *len = static_cast<uint32_t>(l);
  return 0;
}

int vfio_getpeername(int fd, void* addr, uint32_t* len) {
  socklen_t l = static_cast<socklen_t>(*len);
  if (::getpeername(fd, static_cast<struct sockaddr*>(addr), &l) != 0) return -errno;
  *len = static_cast<uint32_t>(l);
  return 0;
}

int64_t vfio_write_wait_nosigpipe(int fd, const void* buf, size_t len) {
  sigset_t sigpipe, saved, pending;
  sigemptyset(&sigpipe);
  sigaddset(&sigpipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &sigpipe, &saved);
  // A SIGPIPE pending before the write (for the thread or the process) is not ours to take.
  sigemptyset(&pending);
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
  const int64_t n = vfio_write_wait(fd, buf, len);
  if (n == -EPIPE && !was_pending) {
    const struct timespec zero = {0, 0};
    while (sigtimedwait(&sigpipe, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  if (sigismember(&saved, SIGPIPE) != 1) pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  return n;
}

}  // namespace vfio_sys
