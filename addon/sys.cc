// The raw syscall layer (see include/vfio_pci_sys.h): >= 0 or -errno, no N-API.
#include "vfio_pci_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>

namespace vfio_sys {

namespace {

// One read/write never asks for more than this: read(2) caps at 0x7ffff000 anyway.
constexpr size_t kMaxIo = size_t{1} << 30;

inline size_t CapIo(size_t len) { return len > kMaxIo ? kMaxIo : len; }

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

int vfio_populate(void* buf, size_t len) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = (reinterpret_cast<uintptr_t>(buf) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(buf) + len) & ~(page - 1);
  if (end <= start) return 0;
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  if (::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE) == 0) return 0;
  // An older kernel (EINVAL), or a mapping madvise will not populate: touch each page (its first
  // byte, written back unchanged).
  for (uintptr_t p = start; p < end; p += page) {
    volatile unsigned char* b = reinterpret_cast<volatile unsigned char*>(p);
    *b = *b;
  }
  return 0;
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

// ---- the two ends of a pump ------------------------------------------------------------------

// What a wait may be interrupted by: the caller's cancel fd, the pump's own stop fd (the other
// stage of a two-buffer pump failed), and how long it may see no readiness.
struct Waits {
  int cancel_fd = -1;
  int stop_fd = -1;
  int idle_ms = -1;
};

// One end of a pump: the fd, its file position when pread/pwrite are used (< 0: read/write),
// the poll(2) event it waits for, and whether to poll before every call (see `cancel_fd`).
struct PumpEnd {
  int fd;
  int64_t pos;
  short events;
  // Poll before every call (the call itself may sleep). Otherwise the call is made at once and
  // poll(2) (with the cancel and stop fds) follows EAGAIN only: one syscall per read or write
  // while the stream is busy.
  bool prewait = false;
  // A socket (not read by position): recv(2)/send(2) (send: MSG_NOSIGNAL, never SIGPIPE).
  bool socket = false;
  // A socket with waits: MSG_DONTWAIT, so that no call sleeps beyond their reach.
  bool dontwait = false;
  // The fd the pump opened for itself (a FIFO reopened with O_NONBLOCK), closed at the end; -1.
  int own = -1;
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
// report the bad fd. (A data_fd is an anonymous inode: 0 too.)
mode_t FileType(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 ? (st.st_mode & S_IFMT) : 0;
}

// Regular files and block devices never wait indefinitely (no poll needed to stay
// cancellable); pipes, sockets, ttys and data_fds may.
bool MayWaitIndefinitely(mode_t type) { return type != S_IFREG && type != S_IFBLK; }

// Set up one end for the waits (cancel fd, idle timeout), when it may wait indefinitely:
// sockets are recv'd / sent with MSG_DONTWAIT; a FIFO in blocking mode is reopened with
// O_NONBLOCK through /proc/self/fd (a new open file description of the same pipe: the caller's
// fd and its flags are untouched), so that a write larger than the room in the pipe returns
// short instead of sleeping in the kernel beyond the reach of the waits. Such ends, and fds
// already in O_NONBLOCK, poll only after EAGAIN; any other (a blocking tty, a data_fd, or a
// FIFO when the reopen fails) polls before every call (`prewait`).
void PrepareEnd(PumpEnd& e, mode_t type, bool waits, bool write_side) {
  e.socket = e.pos < 0 && type == S_IFSOCK;  // with or without the waits
  if (!waits || !MayWaitIndefinitely(type)) return;
  e.dontwait = e.socket;
  if (e.socket) return;
  const int fl = e.pos >= 0 ? -1 : ::fcntl(e.fd, F_GETFL);  // pread/pwrite: ESPIPE from the call
  if (fl >= 0 && (fl & O_NONBLOCK)) return;
  e.prewait = true;
  if (fl < 0 || type != S_IFIFO) return;
  // Only for the access the fd itself has: a read end given as dst must still fail (EBADF).
  const int acc = fl & O_ACCMODE;
  if (acc != O_RDWR && acc != (write_side ? O_WRONLY : O_RDONLY)) return;
  char path[48];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", e.fd);
  const int fd = ::open(path, (write_side ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;
  e.own = fd;
  e.fd = fd;
  e.prewait = false;
}

// Wait until `e.fd` is ready (or reports POLLHUP/POLLERR/POLLNVAL: the next call tells what
// happened). Returns > 0, -ECANCELED (cancel or stop fd), -ETIMEDOUT (idle), or -errno of poll(2).
int WaitReady(const PumpEnd& e, const Waits& w) {
  struct pollfd p[3];
  nfds_t n = 0;
  p[n++] = {e.fd, e.events, 0};
  const nfds_t i_cancel = n;
  if (w.cancel_fd >= 0) p[n++] = {w.cancel_fd, POLLIN, 0};
  const nfds_t i_stop = n;
  if (w.stop_fd >= 0) p[n++] = {w.stop_fd, POLLIN, 0};
  const int64_t deadline = w.idle_ms >= 0 ? NowMs() + w.idle_ms : -1;
  int wait = w.idle_ms;
  for (;;) {
    int r = ::poll(p, n, wait);
    if (r < 0) {
      if (errno != EINTR) return -errno;
    } else if (r == 0) {
      return -ETIMEDOUT;
    } else {
      if (w.cancel_fd >= 0 && p[i_cancel].revents != 0) return -ECANCELED;
      if (w.stop_fd >= 0 && p[i_stop].revents != 0) return -ECANCELED;
      if (p[0].revents != 0) return p[0].revents;
    }
    if (deadline >= 0) {
      const int64_t left = deadline - NowMs();
      if (left <= 0) return -ETIMEDOUT;
      wait = static_cast<int>(left > INT_MAX ? INT_MAX : left);
    }
  }
}

// True once `cancel_fd` (>= 0) is readable (or invalid). One poll(2) that does not wait.
bool Cancelled(int cancel_fd) { return vfio_poll(cancel_fd, POLLIN, 0) > 0; }

// One read(2)/pread(2)/recv(2) of up to `len` bytes: EINTR retried, EAGAIN waited out. n >= 0 or -errno.
int64_t PumpRead(PumpEnd& e, unsigned char* buf, size_t len, const Waits& w) {
  for (;;) {
    if (e.prewait) {
      int p = WaitReady(e, w);
      if (p < 0) return p;
    }
    ssize_t n;
    if (e.pos >= 0) {
      n = ::pread(e.fd, buf, len, static_cast<off_t>(e.pos));
    } else if (e.socket) {
      n = ::recv(e.fd, buf, len, e.dontwait ? MSG_DONTWAIT : 0);
    } else {
      n = ::read(e.fd, buf, len);
    }
    if (n >= 0) {
      if (e.pos >= 0) e.pos += n;
      return n;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (!WouldBlock(err)) return -err;
    if (!e.prewait) {
      int p = WaitReady(e, w);
      if (p < 0) return p;
    }
  }
}

// Write all `len` bytes with write(2)/pwrite(2)/send(2): EINTR retried, EAGAIN waited out,
// short writes looped on. Every byte written is added to *written. 0 or -errno.
int PumpWriteAll(PumpEnd& e, const unsigned char* buf, size_t len, const Waits& w, uint64_t* written) {
  size_t done = 0;
  while (done < len) {
    if (e.prewait) {
      int p = WaitReady(e, w);
      if (p < 0) return p;
    }
    const size_t want = CapIo(len - done);
    ssize_t n;
    if (e.pos >= 0) {
      n = ::pwrite(e.fd, buf + done, want, static_cast<off_t>(e.pos));
    } else if (e.socket) {
      n = ::send(e.fd, buf + done, want, MSG_NOSIGNAL | (e.dontwait ? MSG_DONTWAIT : 0));
    } else {
      n = ::write(e.fd, buf + done, want);
    }
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (!WouldBlock(err)) return -err;
      if (!e.prewait) {
        int p = WaitReady(e, w);
        if (p < 0) return p;
      }
      continue;
    }
    if (n == 0) return -EIO;  // no progress and no error: give up rather than spin
    done += static_cast<size_t>(n);
    *written += static_cast<uint64_t>(n);
    if (e.pos >= 0) e.pos += n;
  }
  MaybeWriteback(e);
  return 0;
}

// Read up to `len` bytes, stopping early only at the end of src (a read of 0). The bytes read,
// or -errno (a failure after some bytes were read loses the count: the pump fails either way).
int64_t PumpReadFull(PumpEnd& e, unsigned char* buf, size_t len, const Waits& w) {
  size_t got = 0;
  while (got < len) {
    int64_t n = PumpRead(e, buf + got, CapIo(len - got), w);
    if (n < 0) return n;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(got);
}

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

// ---- the two stages: produce (read src into a buffer) and consume (write it to dst) -----------

// What one produce step hands the writing stage: bytes to write, what they were (payload bytes,
// a record header), and, on the last one, how the pump ends (after those bytes are written).
struct Segment {
  const unsigned char* data = nullptr;
  size_t len = 0;
  uint64_t payload = 0;
  bool record = false;
  unsigned char header[VFIO_PUMP_MAX_PREFIX + 8];
  bool last = false;
  int status = VFIO_PUMP_OK;
  int error = 0;
  int end = VFIO_PUMP_END_EOF;
  unsigned char stop_header[VFIO_PUMP_MAX_PREFIX + 8];
  int64_t record_offset = -1;
  uint32_t record_length = 0;
  uint32_t record_expected = 0;
  uint32_t record_actual = 0;
};

// The reading stage's state: only its thread touches it.
struct Producer {
  const vfio_pump_options& o;
  PumpEnd in;
  Waits waits;
  bool poll_cancel;       // check cancel_fd before each step (neither end prewaits)
  size_t header_len;      // records: prefix_len + 8
  uint64_t taken = 0;     // bytes read from src (records read: of accepted records)
  uint32_t crc = 0;       // COPY: checksum of everything read
  bool done = false;      // a last segment was produced
  // READ_RECORDS
  uint64_t produced = 0;
  bool have_head = false;  // head holds the next header, read ahead with the last payload
  bool eof_next = false;   // the read-ahead found the end of src right after the last payload
  size_t head_have = 0;    // a stream: bytes of the next header read with the last payload (< header_len)
  unsigned char head[VFIO_PUMP_MAX_PREFIX + 8];

  Producer(const vfio_pump_options& opts, int src) : o(opts), in{src, opts.src_offset, POLLIN} {}

  bool Ended(int64_t n) const { return n == 0 || (o.precopy && n == -ENOMSG); }

  void Last(Segment* s, int status, int error, int end = VFIO_PUMP_END_EOF) {
    s->last = true;
    s->status = status;
    s->error = error;
    s->end = end;
    done = true;
  }

  // One step into `buf` (`len` bytes).
  void Produce(unsigned char* buf, size_t len, Segment* s) {
    *s = Segment{};
    if (poll_cancel && Cancelled(o.cancel_fd)) return Last(s, VFIO_PUMP_READ, ECANCELED);
    switch (o.mode) {
      case VFIO_PUMP_WRITE_RECORDS:
        return WriteRecord(buf, s);
      case VFIO_PUMP_READ_RECORDS:
        return ReadRecord(buf, len, s);
      default:
        return o.verify ? Verify(buf, s) : Copy(buf, len, s);
    }
  }

  void Copy(unsigned char* buf, size_t len, Segment* s) {
    size_t want = CapIo(len);
    if (o.limit >= 0) {
      const uint64_t left = static_cast<uint64_t>(o.limit) - taken;
      if (left == 0) return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_LIMIT);
      if (left < want) want = static_cast<size_t>(left);
    }
    const int64_t n = PumpRead(in, buf, want, waits);
    if (Ended(n)) return Last(s, VFIO_PUMP_OK, 0, o.precopy ? VFIO_PUMP_END_FOR_NOW : VFIO_PUMP_END_EOF);
    if (n < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-n));
    // Checksummed right after the kernel wrote it into buf, while it is in cache.
    crc = vfio_checksum(o.checksum, crc, buf, static_cast<size_t>(n));
    taken += static_cast<uint64_t>(n);
    s->data = buf;
    s->len = static_cast<size_t>(n);
    s->payload = s->len;
  }

  // Buffer the whole `limit` bytes, check them, and only then let them reach dst.
  void Verify(unsigned char* buf, Segment* s) {
    const uint64_t want = static_cast<uint64_t>(o.limit);
    while (taken < want) {
      const int64_t n = PumpRead(in, buf + taken, CapIo(static_cast<size_t>(want - taken)), waits);
      if (Ended(n)) return Last(s, VFIO_PUMP_TRUNCATED, ENODATA);
      if (n < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-n));
      crc = vfio_checksum(o.checksum, crc, buf + taken, static_cast<size_t>(n));
      taken += static_cast<uint64_t>(n);
    }
    if (crc != o.expect) return Last(s, VFIO_PUMP_CHECKSUM, EBADMSG);
    s->data = buf;
    s->len = static_cast<size_t>(want);
    s->payload = want;
    Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_LIMIT);
  }

  // Gather up to record_size payload bytes at buf + header_len, then put the header in front:
  // header and payload go out in one write.
  void WriteRecord(unsigned char* buf, Segment* s) {
    size_t want = o.record_size;
    if (o.limit >= 0) {
      const uint64_t left = static_cast<uint64_t>(o.limit) - taken;
      if (left == 0) return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_LIMIT);
      if (left < want) want = static_cast<size_t>(left);
    }
    unsigned char* const payload = buf + header_len;
    size_t got = 0;
    bool at_end = false;
    uint32_t sum = 0;
    while (got < want) {
      const int64_t n = PumpRead(in, payload + got, want - got, waits);
      if (Ended(n)) {
        at_end = true;
        break;
      }
      if (n < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-n));
      sum = vfio_checksum(o.checksum, sum, payload + got, static_cast<size_t>(n));
      got += static_cast<size_t>(n);
      taken += static_cast<uint64_t>(n);
    }
    if (got > 0) {  // never an empty record: a length of 0 is a terminator
      std::memcpy(buf, o.prefix, o.prefix_len);
      PutLe32(buf + o.prefix_len, static_cast<uint32_t>(got));
      PutLe32(buf + o.prefix_len + 4, sum);
      s->data = buf;
      s->len = header_len + got;
      s->payload = got;
      s->record = true;
      std::memcpy(s->header, buf, header_len);
    }
    if (at_end) Last(s, VFIO_PUMP_OK, 0, o.precopy ? VFIO_PUMP_END_FOR_NOW : VFIO_PUMP_END_EOF);
  }

  // One record: its header (unless read ahead), its payload into buf (with, when src is read by
  // position and buf has room, the next header in the same read), its checksum; the payload is
  // handed on only when the checksum matches.
  void ReadRecord(unsigned char* buf, size_t len, Segment* s) {
    // Offsets are src's. `taken` also counts a header the caller handed in (first_header), which
    // is not in src: that record's offset is where src starts.
    const uint64_t start = o.src_offset >= 0 ? static_cast<uint64_t>(o.src_offset) : 0;
    auto at = [&](uint64_t t) { return static_cast<int64_t>(start + (t > o.first_header_len ? t - o.first_header_len : 0)); };
    const int64_t here = at(taken);
    if (o.records >= 0 && produced == static_cast<uint64_t>(o.records)) return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_COUNT);
    if (eof_next) return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_EOF);
    s->record_offset = here;
    if (!have_head) {
      // A stream read ahead part of this header with the last payload (head_have bytes).
      const int64_t n = PumpReadFull(in, head + head_have, header_len - head_have, waits);
      if (n < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-n));
      if (n == 0 && head_have == 0) {
        s->record_offset = -1;
        return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_EOF);
      }
      if (head_have + static_cast<size_t>(n) < header_len) return Last(s, VFIO_PUMP_TRUNCATED, ENODATA);
      head_have = 0;
    }
    have_head = false;
    const uint32_t n = GetLe32(head + o.prefix_len);
    if (n == 0 || std::memcmp(head, o.prefix, o.prefix_len) != 0) {
      std::memcpy(s->stop_header, head, header_len);
      s->record_offset = -1;
      return Last(s, VFIO_PUMP_OK, 0, VFIO_PUMP_END_HEADER);
    }
    const uint64_t cap = o.max_record < len ? o.max_record : len;
    if (n > cap) {
      s->record_length = n;
      return Last(s, VFIO_PUMP_BAD_LENGTH, EPROTO);
    }
    const bool more = o.records < 0 || produced + 1 < static_cast<uint64_t>(o.records);
    if (in.socket) return ReadStreamRecord(buf, len, n, more, s);
    const size_t ahead = in.pos >= 0 && more && n + header_len <= len ? header_len : 0;
    const int64_t got = PumpReadFull(in, buf, n + ahead, waits);
    if (got < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-got));
    if (static_cast<uint64_t>(got) < n) return Last(s, VFIO_PUMP_TRUNCATED, ENODATA);
    if (!Accept(buf, n, vfio_checksum(o.checksum, 0, buf, n), s)) return;
    const size_t extra = static_cast<size_t>(got) - n;
    if (ahead > 0 && extra == ahead) {
      std::memcpy(head, buf + n, header_len);
      have_head = true;
    } else if (ahead > 0 && extra == 0) {
      eof_next = true;  // src ends right after this record
    } else if (ahead > 0) {
      // src ends inside the header that follows: this record is whole and goes out; the
      // failure is that header's, as if it had been read on its own.
      s->record_offset = at(taken);
      Last(s, VFIO_PUMP_TRUNCATED, ENODATA);
    }
  }

  // The record whose header is in `head` and whose `n` payload bytes (checksum `sum`) are in buf:
  // handed on as the segment when the checksum is the header's; otherwise the pump ends with
  // VFIO_PUMP_CHECKSUM and false is returned.
  bool Accept(unsigned char* buf, uint32_t n, uint32_t sum, Segment* s) {
    const uint32_t want_sum = GetLe32(head + o.prefix_len + 4);
    if (sum != want_sum) {
      s->record_length = n;
      s->record_expected = want_sum;
      s->record_actual = sum;
      Last(s, VFIO_PUMP_CHECKSUM, EBADMSG);
      return false;
    }
    s->data = buf;
    s->len = n;
    s->payload = n;
    s->record = true;
    std::memcpy(s->header, head, header_len);
    s->record_offset = -1;
    produced++;
    taken += header_len + n;
    return true;
  }

  // ReadRecord's payload from a stream socket: each piece is checksummed as it lands (while it
  // is in cache), and the last read may also take (part of) the next header, which a stream
  // delivers with the payload: one recv(2) fewer per record. Nothing past that header is read,
  // so a frame that is not DATA stays whole for the caller (END_HEADER).
  void ReadStreamRecord(unsigned char* buf, size_t len, uint32_t n, bool more, Segment* s) {
    const size_t room = more && n + header_len <= len ? n + header_len : n;
    size_t got = 0;
    uint32_t sum = 0;
    while (got < n) {
      const int64_t r = PumpRead(in, buf + got, CapIo(room - got), waits);
      if (r < 0) return Last(s, VFIO_PUMP_READ, static_cast<int>(-r));
      if (r == 0) return Last(s, VFIO_PUMP_TRUNCATED, ENODATA);
      const size_t payload = static_cast<size_t>(r) < n - got ? static_cast<size_t>(r) : n - got;
      sum = vfio_checksum(o.checksum, sum, buf + got, payload);
      got += static_cast<size_t>(r);
    }
    if (!Accept(buf, n, sum, s)) return;
    head_have = got - n;
    if (head_have > 0) std::memcpy(head, buf + n, head_have);
    if (head_have == header_len) {
      have_head = true;
      head_have = 0;
    }
  }
};

// The writing stage: only the calling thread touches it (and `out`).
struct Consumer {
  const vfio_pump_options& o;
  PumpEnd to;
  Waits waits;
  size_t header_len;
  vfio_pump_result* out;

  // Write a segment's bytes and account for them. 0 or -errno of the write.
  int Write(const Segment& s) {
    if (s.len > 0) {
      const uint64_t before = out->written;
      int w = PumpWriteAll(to, s.data, s.len, waits, &out->written);
      if (o.mode != VFIO_PUMP_WRITE_RECORDS) out->bytes += out->written - before;
      if (w < 0) return w;
      if (s.record) {
        if (o.mode == VFIO_PUMP_WRITE_RECORDS) out->bytes += s.payload;
        out->records++;
        for (unsigned i = 0; i < o.seeds; i++) out->header_sums[i] = vfio_checksum(o.checksum, out->header_sums[i], s.header, header_len);
      }
    }
    return 0;
  }

  // The end a last segment carries, into `out`. Returns what vfio_pump returns.
  int Finish(const Segment& s) {
    out->status = s.status;
    out->error = s.error;
    out->end = s.end;
    out->record_offset = s.record_offset;
    out->record_length = s.record_length;
    out->record_expected = s.record_expected;
    out->record_actual = s.record_actual;
    if (s.status == VFIO_PUMP_OK && s.end == VFIO_PUMP_END_HEADER) std::memcpy(out->stop_header, s.stop_header, header_len);
    return s.status == VFIO_PUMP_OK ? 0 : -s.error;
  }
};

// Whether the calling thread may run on more than one CPU (its affinity mask; a second thread
// inherits it). False when the mask cannot be read.
bool SeveralCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return ::sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 1;
}

// The two-buffer pump: a reading thread produces into the buffers in turn while this thread
// writes what it produced, in order. Returns what vfio_pump returns, or 1 when the reading
// thread could not be started (the caller then pumps with one buffer).
int RunTwoStage(Producer& pr, Consumer& co, unsigned char* bufs[2], size_t lens[2]) {
  struct Slot {
    Segment seg;
    bool full = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  Slot slots[2];
  bool stop = false;
  const int stop_fd = vfio_eventfd(0, 0);
  if (stop_fd < 0) return 1;
  pr.waits.stop_fd = stop_fd;
  std::thread reader;
  try {
    reader = std::thread([&] {
      for (int i = 0;; i ^= 1) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return !slots[i].full || stop; });
          if (stop) return;
        }
        Segment seg;
        pr.Produce(bufs[i], lens[i], &seg);
        {
          std::lock_guard<std::mutex> lock(mu);
          slots[i].seg = seg;
          slots[i].full = true;
        }
        cv.notify_all();
        if (seg.last) return;
      }
    });
  } catch (const std::system_error&) {
    vfio_close(stop_fd);
    pr.waits.stop_fd = -1;
    return 1;
  }
  int rc = 0;
  for (int i = 0;; i ^= 1) {
    Segment seg;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return slots[i].full; });
      seg = slots[i].seg;
    }
    const int w = co.Write(seg);
    {
      std::lock_guard<std::mutex> lock(mu);
      slots[i].full = false;
      if (w < 0) stop = true;
    }
    cv.notify_all();
    if (w < 0) {
      vfio_eventfd_write(stop_fd, 1);  // out of a wait for src
      co.out->status = VFIO_PUMP_WRITE;
      co.out->error = -w;
      rc = w;
      break;
    }
    if (seg.last) {
      rc = co.Finish(seg);
      break;
    }
  }
  reader.join();
  vfio_close(stop_fd);
  return rc;
}

}  // namespace

int vfio_pump(int src, int dst, void* buf, size_t buf_len, void* buf2, size_t buf2_len, const vfio_pump_options* opts,
              vfio_pump_result* out) {
  static const vfio_pump_options kDefaults{};
  const vfio_pump_options& o = opts ? *opts : kDefaults;
  std::memset(out, 0, sizeof *out);
  out->record_offset = -1;
  for (unsigned i = 0; i < VFIO_PUMP_MAX_SEEDS; i++) out->header_sums[i] = i < o.seeds ? o.seed[i] : 0;
  auto invalid = [&](int status) {
    out->status = status;
    out->error = EINVAL;
    return -EINVAL;
  };

  const size_t header_len = o.prefix_len + 8;
  size_t room = buf_len;  // what each buffer holds
  if (buf2 != nullptr && buf2_len < room) room = buf2_len;
  if (buf == nullptr || buf_len == 0 || (buf2 != nullptr && buf2_len == 0)) return invalid(VFIO_PUMP_READ);
  if (o.prefix_len > VFIO_PUMP_MAX_PREFIX || o.seeds > VFIO_PUMP_MAX_SEEDS) return invalid(VFIO_PUMP_READ);
  switch (o.mode) {
    case VFIO_PUMP_COPY:
      if (o.verify && (o.limit < 0 || static_cast<uint64_t>(o.limit) > buf_len)) return invalid(VFIO_PUMP_READ);
      break;
    case VFIO_PUMP_WRITE_RECORDS:
      if (o.verify || o.record_size == 0 || o.record_size > kMaxIo || room < header_len ||
          room - header_len < o.record_size) {
        return invalid(VFIO_PUMP_READ);
      }
      break;
    case VFIO_PUMP_READ_RECORDS:
      if (o.verify || o.precopy || o.limit >= 0 || o.max_record == 0) return invalid(VFIO_PUMP_READ);
      break;
    default:
      return invalid(VFIO_PUMP_READ);
  }

  if (o.first_header_len != 0 && (o.mode != VFIO_PUMP_READ_RECORDS || o.first_header_len != header_len || o.records == 0)) {
    return invalid(VFIO_PUMP_READ);
  }

  Producer pr(o, src);
  Consumer co{o, PumpEnd{dst, o.dst_offset, POLLOUT}, Waits{}, header_len, out};
  pr.header_len = header_len;
  if (o.first_header_len != 0) {
    std::memcpy(pr.head, o.first_header, header_len);
    pr.have_head = true;
  }
  const bool waits = o.cancel_fd >= 0;
  if (waits) {
    // cancel_fd was opened after the caller got its fds, so it can only share a number with
    // one that was not open at that time: that fd is bad, whatever now lives at its number.
    if (src == o.cancel_fd) {
      out->status = VFIO_PUMP_READ;
      out->error = EBADF;
      return -EBADF;
    }
    if (dst == o.cancel_fd) {
      out->status = VFIO_PUMP_WRITE;
      out->error = EBADF;
      return -EBADF;
    }
  }
  const mode_t dst_type = FileType(dst);
  PrepareEnd(pr.in, FileType(src), waits, false);
  // PRE_COPY's "no more data for now" comes from read(2) (0 or ENOMSG), at once, and a driver's
  // poll need not report it (mlx5 signals new data only): read without polling first.
  if (o.precopy) pr.in.prewait = false;
  PrepareEnd(co.to, dst_type, waits, true);
  pr.waits = Waits{o.cancel_fd, -1, waits ? o.idle_timeout_ms : -1};
  co.waits = pr.waits;
  if (o.writeback > 0 && co.to.pos >= 0 && dst_type == S_IFREG) {
    co.to.writeback = o.writeback;
    co.to.flushed = co.to.pos;
  }
  // Cancellation is seen within one step: a `prewait` end polls cancel_fd before each of its
  // calls, any other end whenever a call would block (WaitReady); when neither end prewaits
  // (file to file, socket to file, socket to socket), each step starts with a check.
  pr.poll_cancel = waits && !pr.in.prewait && !co.to.prewait;

  int rc = 1;
  if (buf2 != nullptr && !o.verify && (o.overlap > 0 || (o.overlap < 0 && SeveralCpus()))) {
    unsigned char* bufs[2] = {static_cast<unsigned char*>(buf), static_cast<unsigned char*>(buf2)};
    size_t lens[2] = {buf_len, buf2_len};
    rc = RunTwoStage(pr, co, bufs, lens);
  }
  if (rc == 1) {
    // One buffer: read, then write, in turn.
    unsigned char* const b = static_cast<unsigned char*>(buf);
    for (;;) {
      Segment seg;
      pr.Produce(b, buf_len, &seg);
      const int w = co.Write(seg);
      if (w < 0) {
        out->status = VFIO_PUMP_WRITE;
        out->error = -w;
        rc = w;
        break;
      }
      if (seg.last) {
        rc = co.Finish(seg);
        break;
      }
    }
  }
  out->bytes_read = pr.taken;
  out->checksum = pr.crc;
  if (pr.in.own >= 0) vfio_close(pr.in.own);
  if (co.to.own >= 0) vfio_close(co.to.own);
  return rc;
}

uint64_t vfio_walk_records(int fd, vfio_record_walk* w, int64_t size, const unsigned char* prefix, unsigned prefix_len,
                           uint32_t max_record, int alg, uint64_t max_headers, int64_t budget_us) {
  const int64_t deadline_ns = budget_us >= 0 ? NowNs() + budget_us * 1000 : -1;
  const int64_t header_len = static_cast<int64_t>(prefix_len) + 8;
  uint64_t taken = 0;
  unsigned char head[VFIO_PUMP_MAX_PREFIX + 8];
  if (prefix_len > VFIO_PUMP_MAX_PREFIX || w->seeds > VFIO_PUMP_MAX_SEEDS) return 0;
  while (taken < max_headers) {
    if (w->pos < 0 || size - w->pos < header_len) break;
    if (vfio_pread(fd, head, static_cast<size_t>(header_len), w->pos) != header_len) break;
    if (std::memcmp(head, prefix, prefix_len) != 0) break;
    const uint32_t len = GetLe32(head + prefix_len);
    if (len == 0 || len > max_record || size - w->pos - header_len < static_cast<int64_t>(len)) break;
    for (unsigned i = 0; i < w->seeds; i++) w->sum[i] = vfio_checksum(alg, w->sum[i], head, static_cast<size_t>(header_len));
    w->total += len;
    w->count++;
    w->pos += header_len + len;
    taken++;
    // The clock is read every 16 headers: a header costs ~1 us from the page cache.
    if (deadline_ns >= 0 && taken % 16 == 0 && NowNs() >= deadline_ns) break;
  }
  return taken;
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

int64_t vfio_recv_now(int fd, void* buf, size_t len) {
  for (;;) {
    ssize_t n = ::recv(fd, buf, CapIo(len), MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int64_t vfio_send_now(int fd, const void* buf, size_t len) {
  for (;;) {
    ssize_t n = ::send(fd, buf, CapIo(len), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
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
