// The raw syscall layer (see include/vfio_pci_sys.h): >= 0 or -errno, no N-API.
#include "vfio_pci_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstring>

// Node's bundled zlib (or the shared one it links) exports crc32; the header is in Node's
// include dir, so no library is linked here: the symbol resolves against the node binary.
#include <zlib.h>

namespace vfio_sys {

namespace {

// One read/write never asks for more than this: read(2) caps at 0x7ffff000 anyway, and
// zlib's crc32() takes a uInt length.
constexpr size_t kMaxIo = size_t{1} << 30;

inline size_t CapIo(size_t len) { return len > kMaxIo ? kMaxIo : len; }

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

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
  const int64_t deadline = timeout_ms < 0 ? -1 : NowMs() + timeout_ms;
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

int vfio_pump(int src, int dst, void* buf, size_t buf_len, int64_t limit, vfio_pump_result* out) {
  unsigned char* const bytes = static_cast<unsigned char*>(buf);
  const size_t chunk = CapIo(buf_len);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t total = 0;
  out->side = VFIO_PUMP_OK;
  out->error = 0;

  auto finish = [&](int side, int err) {
    out->bytes = total;
    out->crc32 = static_cast<uint32_t>(crc);
    out->side = side;
    out->error = err;
    return err ? -err : 0;
  };

  if (chunk == 0) return finish(VFIO_PUMP_READ, EINVAL);

  while (limit < 0 || total < static_cast<uint64_t>(limit)) {
    size_t want = chunk;
    if (limit >= 0 && static_cast<uint64_t>(limit) - total < want) {
      want = static_cast<size_t>(static_cast<uint64_t>(limit) - total);
    }

    ssize_t n = ::read(src, bytes, want);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (WouldBlock(err)) {
        int p = vfio_poll(src, POLLIN, -1);
        if (p < 0) return finish(VFIO_PUMP_READ, -p);
        continue;
      }
      return finish(VFIO_PUMP_READ, err);
    }
    if (n == 0) break;  // end of file: for a data_fd, the end of the device state

    // The chunk was just written into buf by the kernel: checksum it while it is in cache.
    // It counts (bytes and crc) once it has been written out completely.
    const uLong chunk_crc = crc32(crc, bytes, static_cast<uInt>(n));

    size_t done = 0;
    while (done < static_cast<size_t>(n)) {
      ssize_t w = ::write(dst, bytes + done, static_cast<size_t>(n) - done);
      if (w < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (WouldBlock(err)) {
          int p = vfio_poll(dst, POLLOUT, -1);
          if (p < 0) return finish(VFIO_PUMP_WRITE, -p);
          continue;
        }
        return finish(VFIO_PUMP_WRITE, err);
      }
      // No progress and no error: give up rather than spin.
      if (w == 0) return finish(VFIO_PUMP_WRITE, EIO);
      done += static_cast<size_t>(w);
    }
    crc = chunk_crc;
    total += static_cast<uint64_t>(n);
  }
  return finish(VFIO_PUMP_OK, 0);
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
