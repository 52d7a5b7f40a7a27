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

/**
 * Fault in now the pages of `len` bytes at `buf` that lie wholly inside it, for writing
 * (madvise(2) MADV_POPULATE_WRITE, Linux 5.14; where the kernel refuses it, one write of each
 * page's own first byte back into it): one syscall instead of a page fault per page in the middle
 * of a transfer. The bytes are unchanged. Always returns 0.
 */
int vfio_populate(void* buf, size_t len);

// ---- Checksums (addon/checksum.cc) -----------------------------------------------------------

/** Checksum algorithms. The numbers are what files and streams record (src/kernel/pump/checksum.ts). */
enum vfio_checksum_alg : int {
  /** CRC-32, IEEE 802.3 polynomial, as zlib's crc32() computes it. */
  VFIO_CHECKSUM_CRC32 = 1,
  /** CRC-32C, the Castagnoli polynomial (iSCSI, SCTP, ext4, btrfs), with zlib's conventions. */
  VFIO_CHECKSUM_CRC32C = 2,
};

/**
 * The checksum `alg` of `len` bytes at `buf`, continued from `crc` (0 to start, or the result
 * over the bytes before), with the fastest implementation this CPU has. An unknown `alg` is
 * taken as CRC-32C. Never fails; any length.
 */
uint32_t vfio_checksum(int alg, uint32_t crc, const void* buf, size_t len);

/**
 * The same with implementation number `index` of `alg` (0 is the one vfio_checksum uses; see
 * vfio_checksum_implementation), into *out: 0, or -EINVAL when there is no such one. For tests
 * that hold every implementation this CPU has to the same results.
 */
int vfio_checksum_with(int alg, int index, uint32_t crc, const void* buf, size_t len, uint32_t* out);

/**
 * The name of implementation number `index` of `alg` on this CPU, best first ("avx512-vpclmulqdq",
 * "sse4.2", "armv8-crc", "table", "zlib"), or nullptr past the last one.
 */
const char* vfio_checksum_implementation(int alg, int index);

// ---- Pump ----------------------------------------------------------------------------------------

/** What a pump does (vfio_pump_options::mode). */
enum vfio_pump_mode : int {
  /** Copy bytes from src to dst. */
  VFIO_PUMP_COPY = 0,
  /**
   * Read src and write its bytes as checksummed records:
   *   record = [prefix: prefix_len bytes][u32 LE payload length n][u32 LE checksum of the payload][n bytes]
   * each record_size payload bytes (the last one may be shorter; never an empty one), one
   * write per record (looping on short writes).
   */
  VFIO_PUMP_WRITE_RECORDS = 1,
  /**
   * Read records from src, check each payload's checksum, and write only the payloads to dst,
   * each once checked. Stops before a header whose prefix is not `prefix` or whose length is 0
   * (handing it back: vfio_pump_result::stop_header), after `records` records, or at the end of
   * src on a record boundary.
   */
  VFIO_PUMP_READ_RECORDS = 2,
};

/** How a pump ended or failed (vfio_pump_result::status). */
enum vfio_pump_status : int {
  VFIO_PUMP_OK = 0,
  /** read(2)/pread(2)/recv(2) on src failed, or the wait for src (poll(2), cancellation, idle timeout). */
  VFIO_PUMP_READ = 1,
  /** write(2)/pwrite(2)/send(2) on dst failed, or the wait for dst. */
  VFIO_PUMP_WRITE = 2,
  /** A checksum mismatch: copy with verify (nothing written), or a record's payload (none of it written). */
  VFIO_PUMP_CHECKSUM = 3,
  /** src ended before `limit` bytes (copy with verify; nothing written), or inside a record's header or payload. */
  VFIO_PUMP_TRUNCATED = 4,
  /** read records: a length over min(max_record, buffer room). Nothing of that record was written. */
  VFIO_PUMP_BAD_LENGTH = 5,
};

/** Why a successful pump stopped (vfio_pump_result::end). */
enum vfio_pump_end : int {
  /** src ended (read(2) returned 0); read records: at a record boundary. */
  VFIO_PUMP_END_EOF = 0,
  /** Exactly `limit` bytes (write records: payload bytes) were copied. */
  VFIO_PUMP_END_LIMIT = 1,
  /** precopy: read(2) returned 0 or failed with ENOMSG, PRE_COPY's "no more data for now". */
  VFIO_PUMP_END_FOR_NOW = 2,
  /** read records: `records` records were moved; nothing after them was read (or used). */
  VFIO_PUMP_END_COUNT = 3,
  /** read records: a header with another prefix or a length of 0 was read: stop_header holds it. */
  VFIO_PUMP_END_HEADER = 4,
};

/** Largest record prefix, and most running header checksums a pump keeps. */
constexpr unsigned VFIO_PUMP_MAX_PREFIX = 8;
constexpr unsigned VFIO_PUMP_MAX_SEEDS = 4;

struct vfio_pump_options {
  int mode = VFIO_PUMP_COPY;
  /** A vfio_checksum_alg: of the copy, and of each record. */
  int checksum = VFIO_CHECKSUM_CRC32C;
  /** Copy this many bytes (write records: payload bytes) at most; < 0: until the end of src. Not with READ_RECORDS. */
  int64_t limit = -1;
  /** >= 0: read src with pread(2) from this offset on (advancing), not read(2). */
  int64_t src_offset = -1;
  /** >= 0: write dst with pwrite(2) from this offset on (advancing), not write(2). */
  int64_t dst_offset = -1;
  /**
   * > 0, with dst a regular file written by position (dst_offset >= 0): after every `writeback`
   * bytes written, start the write-back of them with sync_file_range(SYNC_FILE_RANGE_WRITE), so
   * that the disk works while the pump copies, the caller's fsync finds little left, and dirty
   * pages do not pile up. A hint: its failures are ignored (fsync reports write errors).
   */
  uint64_t writeback = 0;
  /**
   * COPY: read all `limit` bytes (limit <= the buffer) first and write them only when their
   * checksum is `expect`; otherwise fail with VFIO_PUMP_CHECKSUM (or VFIO_PUMP_TRUNCATED when
   * src ends first) and write nothing.
   */
  bool verify = false;
  uint32_t expect = 0;
  /** COPY, WRITE_RECORDS: a read(2) of 0 and ENOMSG both end with VFIO_PUMP_END_FOR_NOW (uAPI PRE_COPY). */
  bool precopy = false;
  /**
   * With a second buffer: 1 reads (and checksums) into one buffer on a second thread while this
   * one writes the other; 0 uses the first buffer only; < 0 (default) overlaps when the calling
   * thread may run on more than one CPU (sched_getaffinity(2)): on one CPU the two threads only
   * take turns, and their hand-offs cost more than they save.
   */
  int overlap = -1;
  /** Records: the prefix written in front of every header, or expected there. */
  unsigned prefix_len = 0;
  unsigned char prefix[VFIO_PUMP_MAX_PREFIX] = {};
  /** WRITE_RECORDS: payload bytes per record, >= 1; a buffer holds prefix_len + 8 + record_size. */
  uint32_t record_size = 0;
  /** READ_RECORDS: the largest payload accepted (besides the buffer's room). */
  uint32_t max_record = UINT32_MAX;
  /** READ_RECORDS: stop after this many records (< 0: no limit). */
  int64_t records = -1;
  /**
   * READ_RECORDS: the first record's header, already read from src by the caller (it read the
   * header to learn what comes next); 0: read it from src. Else it is prefix_len + 8 bytes and
   * is taken as if read (bytes_read counts it, a header of another prefix ends the pump at once);
   * record offsets are src's (that record's is src_offset, where its payload starts). Not with
   * records == 0.
   */
  unsigned first_header_len = 0;
  unsigned char first_header[VFIO_PUMP_MAX_PREFIX + 8] = {};
  /**
   * Records: running checksums (`checksum` algorithm) over the headers (prefix, length and
   * checksum: prefix_len + 8 bytes) of the records written or read, each continued from its seed.
   */
  unsigned seeds = 0;
  uint32_t seed[VFIO_PUMP_MAX_SEEDS] = {};
  /**
   * -1, or an fd that becomes readable to cancel the pump (an eventfd). With it, every wait on a
   * src or dst that may block indefinitely (anything but a regular file or block device) is a
   * poll(2) on both fds: after EAGAIN on a socket (MSG_DONTWAIT) or an O_NONBLOCK pipe or fd,
   * before the syscall on an fd whose calls may sleep (a blocking data_fd or tty). The fd is
   * also checked between chunks unless an end polls before every call, and a pump cancelled
   * that way fails with -ECANCELED. It must be opened after src and dst: a src or dst
   * equal to it is taken for a stale number and fails with EBADF.
   */
  int cancel_fd = -1;
  /** >= 0 (with cancel_fd): a wait for src or dst that sees no readiness for this long fails with -ETIMEDOUT. */
  int idle_timeout_ms = -1;
};

struct vfio_pump_result {
  /** Bytes written to dst (records: payload bytes), exact on failure too (part of a record only after a failed write). */
  uint64_t bytes;
  /** Bytes taken from src (read records: up to the end of the last record written; not a handed-back header). */
  uint64_t bytes_read;
  /** Bytes written to dst, record headers included. */
  uint64_t written;
  /** Records completely written. */
  uint64_t records;
  /** COPY: the checksum of the bytes read (equal to those written on success). */
  uint32_t checksum;
  /** The running header checksums, continued from opts->seed over the headers of `records` records. */
  uint32_t header_sums[VFIO_PUMP_MAX_SEEDS];
  /** A vfio_pump_status. */
  int status;
  /** 0, or the positive errno of the failing syscall (EBADMSG / ENODATA / EPROTO for the format failures). */
  int error;
  /** A vfio_pump_end, when status is VFIO_PUMP_OK. */
  int end;
  /** READ_RECORDS, end HEADER: the header read (prefix_len + 8 bytes). */
  unsigned char stop_header[VFIO_PUMP_MAX_PREFIX + 8];
  /**
   * READ_RECORDS failures: the src position of the header of the record being handled
   * (opts->src_offset plus what was read before it; from 0 with read(2)); -1 otherwise.
   */
  int64_t record_offset;
  /** BAD_LENGTH: the length found. CHECKSUM (records): the length, and the checksums in the header and computed. */
  uint32_t record_length;
  uint32_t record_expected;
  uint32_t record_actual;
};

/**
 * Move bytes from `src` to `dst` (opts->mode), through `buf` (`buf_len` bytes, not 0) or, with
 * `buf2` (`buf2_len` bytes), through two buffers: src is then read (and checksummed) on a second
 * thread into one buffer while the other is written to dst, so that a pump costs about the
 * longer of the two sides rather than their sum, on a machine with a core free. `opts` nullptr
 * means the defaults (copy until the end of src). EINTR is retried; EAGAIN on either side is
 * waited out with poll(2); short writes are looped on; a write of 0 fails with EIO rather than
 * spin. Sockets are read and written with recv(2)/send(2) (MSG_NOSIGNAL always: a closed peer
 * is EPIPE, never SIGPIPE; MSG_DONTWAIT with a cancel_fd); a FIFO without O_NONBLOCK is reopened (through
 * /proc/self/fd) with O_NONBLOCK for the pump, so that no write blocks inside the kernel where
 * cancellation and the idle timeout cannot reach it. A record source is never read past what
 * the pump uses unless it is read by position (a socket's next bytes belong to the caller).
 *
 * Returns 0 (out->end tells why it stopped) or a negative errno with out->status telling what
 * failed: -errno of a syscall (READ/WRITE), -ECANCELED (cancel_fd), -ETIMEDOUT (idle timeout),
 * -EBADMSG (CHECKSUM), -ENODATA (TRUNCATED), -EPROTO (BAD_LENGTH), -EINVAL for options that do
 * not fit together or in the buffers. out->bytes is exact in every case.
 */
int vfio_pump(int src, int dst, void* buf, size_t buf_len, void* buf2, size_t buf2_len, const vfio_pump_options* opts,
              vfio_pump_result* out);

/**
 * Where a walk over record headers stands (vfio_walk_records): the file offset of the next
 * header, the records and payload bytes passed, and the running header checksums.
 */
struct vfio_record_walk {
  int64_t pos;
  uint64_t count;
  uint64_t total;
  unsigned seeds;
  uint32_t sum[VFIO_PUMP_MAX_SEEDS];
};

/**
 * A fast pass over a file's records (the snapshot reader's validation): from `w->pos`, pass over
 * records — a whole header with `prefix`, a length in [1, max_record], a payload that ends
 * within `size` — reading only their headers (one pread(2) each) and advancing `*w` (the
 * header checksums with algorithm `alg`). Stops, leaving `w->pos` at that header, at the first
 * one it does not take (a length of 0, another prefix, a header cut off, out of range or
 * unreadable: the caller reads it again and judges), or once `max_headers` were taken or
 * `budget_us` microseconds have passed (the caller calls again). Returns the headers taken.
 */
uint64_t vfio_walk_records(int fd, vfio_record_walk* w, int64_t size, const unsigned char* prefix, unsigned prefix_len,
                           uint32_t max_record, int alg, uint64_t max_headers, int64_t budget_us);

/** The symbolic name of a positive errno ("EINVAL"), or nullptr when unknown. */
const char* vfio_errno_name(int err);

// ---- sockets (the live-migration transport, src/live/) ----------------------------------------
//
// Sockets the library owns: created close-on-exec and non-blocking, driven through read(2) /
// write(2) and waited on with poll(2), never also read by libuv. Socket addresses are passed as
// the raw bytes of a struct sockaddr_* (src/kernel/uapi/socket.ts builds them); `len` is their
// size in bytes.

/** socket(2) with SOCK_CLOEXEC | SOCK_NONBLOCK added to `type`. Returns the fd. */
int vfio_socket(int domain, int type, int protocol);

/** bind(2). */
int vfio_bind(int fd, const void* addr, uint32_t len);

/** listen(2). */
int vfio_listen(int fd, int backlog);

/**
 * accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK; EINTR retried. Returns the new fd; -EAGAIN
 * when no connection is pending (the listening socket is non-blocking). `addr`/`len` may be
 * null; otherwise *len is the room in `addr` on entry and the address size on return.
 */
int vfio_accept(int fd, void* addr, uint32_t* len);

/**
 * connect(2) on a non-blocking socket: 0 when connected at once, 1 when the connection is in
 * progress (EINPROGRESS, and EINTR, after which Linux also goes on connecting in the
 * background): the caller waits for POLLOUT and reads SO_ERROR. -errno otherwise (AF_UNIX:
 * -EAGAIN when the listener's backlog is full).
 */
int vfio_connect(int fd, const void* addr, uint32_t len);

/** getsockopt(2): *len is the room in `val` on entry and the option's size on return. */
int vfio_getsockopt(int fd, int level, int name, void* val, uint32_t* len);

/** setsockopt(2). */
int vfio_setsockopt(int fd, int level, int name, const void* val, uint32_t len);

/**
 * One recv(2) of up to `len` bytes with MSG_DONTWAIT, EINTR retried: never sleeps, whatever the
 * socket's own mode. The bytes received (0: the peer's orderly end), -EAGAIN when none are
 * there now, or -errno.
 */
int64_t vfio_recv_now(int fd, void* buf, size_t len);

/**
 * One send(2) of up to `len` bytes with MSG_DONTWAIT | MSG_NOSIGNAL (never SIGPIPE), EINTR
 * retried: never sleeps. The bytes sent (may be short), -EAGAIN when the socket buffer is full,
 * or -errno (-EPIPE once the peer is gone).
 */
int64_t vfio_send_now(int fd, const void* buf, size_t len);

/** shutdown(2): how is SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2). */
int vfio_shutdown(int fd, int how);

/** getsockname(2) / getpeername(2): *len as in vfio_accept. */
int vfio_getsockname(int fd, void* addr, uint32_t* len);
int vfio_getpeername(int fd, void* addr, uint32_t* len);

/**
 * vfio_write_wait that cannot raise SIGPIPE in the calling thread: a write(2) to a socket or
 * pipe whose reader is gone sends the writing thread a SIGPIPE, which kills the process when
 * its disposition is the default (Node ignores SIGPIPE at start-up, but removing the last
 * process.on('SIGPIPE') listener puts the default back). SIGPIPE is blocked around the write
 * and, when the write failed with EPIPE, the SIGPIPE it raised is taken off the thread's pending
 * set (sigtimedwait(2) with a zero timeout) unless one was already pending before; then the
 * thread's mask is restored. Returns what vfio_write_wait returns: -EPIPE reaches the caller.
 */
int64_t vfio_write_wait_nosigpipe(int fd, const void* buf, size_t len);

}  // namespace vfio_sys

#endif  // VFIO_PCI_SYS_H
