// The raw syscall layer of node-vfio-pci: plain C++, no N-API.
//
// Every function returns >= 0 on success or -errno on failure; none of them touches JS,
// throws, or allocates. addon/binding.cc validates arguments, calls these and turns a
// negative result into a VfioError. Keeping the layer this thin lets the policy (what to
// retry, what a failure means for a device) live in TypeScript.
//
// Rules kept here:
//  - Every fd created is close-on-exec (O_CLOEXEC, EFD_CLOEXEC).
//  - EINTR is retried (except by close(2), see vfio_close, and ioctl(2), which is not
//    restartable in general and is left to the caller).
//  - Nothing here blocks unless the fd itself blocks; the waits that the contract asks for
//    (EAGAIN on a non-blocking stream fd) are done with poll(2).
#ifndef VFIO_PCI_SYS_H
#define VFIO_PCI_SYS_H

#include <cstddef>
#include <cstdint>

namespace vfio_sys {

/** open(2) with O_CLOEXEC added. `mode` is used with O_CREAT/O_TMPFILE. Returns the fd. */
int vfio_open(const char* path, int flags, unsigned mode);

/**
 * close(2). An EINTR from close is reported as success: on Linux the fd is released
 * before the interruption can happen, and retrying could close someone else's new fd.
 */
int vfio_close(int fd);

/** ioctl(2) with a pointer argument. Returns the ioctl's (non-negative) return value. */
int vfio_ioctl_ptr(int fd, unsigned long request, void* arg);

/** ioctl(2) with an integer argument passed by value. */
int vfio_ioctl_int(int fd, unsigned long request, unsigned long arg);

/** One pread(2) of `len` bytes at file offset `offset`. Returns the bytes read (may be short). */
int64_t vfio_pread(int fd, void* buf, size_t len, int64_t offset);

/** One pwrite(2) of `len` bytes at file offset `offset`. Returns the bytes written. */
int64_t vfio_pwrite(int fd, const void* buf, size_t len, int64_t offset);

/** One read(2), EINTR retried. -EAGAIN is returned as is. */
int64_t vfio_read(int fd, void* buf, size_t len);

/** One write(2), EINTR retried. -EAGAIN is returned as is. */
int64_t vfio_write(int fd, const void* buf, size_t len);

/** vfio_read, with EAGAIN (non-blocking fd) waited out by poll(2) for POLLIN. */
int64_t vfio_read_wait(int fd, void* buf, size_t len);

/** vfio_write, with EAGAIN waited out by poll(2) for POLLOUT. May be short. */
int64_t vfio_write_wait(int fd, const void* buf, size_t len);

/** pipe2(2) with O_CLOEXEC added; `flags` may add O_NONBLOCK / O_DIRECT. fds[0] reads. */
int vfio_pipe(int fds[2], int flags);

/** eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK added. Returns the fd. */
int vfio_eventfd(unsigned initval, int flags);

/**
 * Non-blocking read of an eventfd counter into *value: the counter (which the read resets,
 * or decrements by one with EFD_SEMAPHORE), or 0 when it was 0 (EAGAIN). Returns 0 or -errno.
 */
int vfio_eventfd_read(int fd, uint64_t* value);

/** Add `value` to an eventfd counter. -EAGAIN when the counter would overflow. */
int vfio_eventfd_write(int fd, uint64_t value);

/**
 * poll(2) one fd for `events`. Returns the revents (> 0), 0 on timeout, or -errno.
 * `timeout_ms` < 0 waits forever. EINTR is retried with the time that remains.
 */
int vfio_poll(int fd, short events, int timeout_ms);

/** Which side of a pump failed. */
enum vfio_pump_side : int { VFIO_PUMP_OK = 0, VFIO_PUMP_READ = 1, VFIO_PUMP_WRITE = 2 };

struct vfio_pump_result {
  /** Bytes read from src and written to dst (a chunk counts once it is written fully). */
  uint64_t bytes;
  /** zlib crc32 of those bytes. */
  uint32_t crc32;
  /** VFIO_PUMP_OK, or the side whose syscall failed. */
  int side;
  /** 0, or the positive errno of the failing syscall. */
  int error;
};

/**
 * Copy from `src` to `dst` through `buf` (`buf_len` bytes) until read(2) returns 0 or, when
 * `limit` >= 0, exactly `limit` bytes were copied. EINTR is retried; EAGAIN on either side is
 * waited out with poll(2); short writes are looped on. The crc32 of every chunk is computed
 * right after it is read, while it is in cache. Returns 0, or -errno with out->side telling
 * which syscall failed; out->bytes and out->crc32 then cover the chunks written completely
 * before the failure (part of the failing chunk may have reached dst). A zero `buf_len`
 * fails with -EINVAL.
 */
int vfio_pump(int src, int dst, void* buf, size_t buf_len, int64_t limit, vfio_pump_result* out);

/** The symbolic name of a positive errno ("EINVAL"), or nullptr when unknown. */
const char* vfio_errno_name(int err);

}  // namespace vfio_sys

#endif  // VFIO_PCI_SYS_H
