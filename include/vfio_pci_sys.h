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

/** How a pump ended or failed (vfio_pump_result::status). */
enum vfio_pump_status : int {
  VFIO_PUMP_OK = 0,
  /** read(2)/pread(2) on src failed, or the wait for src (poll(2), cancellation). */
  VFIO_PUMP_READ = 1,
  /** write(2)/pwrite(2) on dst failed, or the wait for dst. */
  VFIO_PUMP_WRITE = 2,
  /** verify: the crc32 of the `limit` bytes read is not expect_crc. Nothing was written. */
  VFIO_PUMP_CHECKSUM = 3,
  /**
   * verify: src ended before `limit` bytes. Nothing was written.
   * frame read: src ended inside a chunk header, a payload or the end chunk; nothing of that
   * chunk was written.
   */
  VFIO_PUMP_TRUNCATED = 4,
  /**
   * frame read: a chunk header's length is outside [1, min(frame_max_chunk, buf_len)], or the
   * u32 where the end chunk should start is not 0. Nothing of that chunk was written.
   */
  VFIO_PUMP_BAD_FRAME = 5,
};

/**
 * The chunk framing of a snapshot's chunked section body (docs/snapshot-format.md, "Chunked
 * body"; src/snapshot/format.ts), which a pump can write or read itself so that one call moves a
 * whole DEVICE_STATE section:
 *
 *   chunk*    : [u32 length n, 1..][u32 crc32 of the payload][n bytes of payload]
 *   end chunk : [u32 0][u32 crc32 over the 8-byte headers of all chunks][u64 total payload bytes]
 *
 * All little-endian; CRC-32 is zlib's crc32(). Which lengths are acceptable (the format's
 * 16 MiB) and whether the chunk table matches is the caller's policy.
 */
enum vfio_pump_frame : int {
  /** No framing: copy bytes (the default). */
  VFIO_PUMP_FRAME_NONE = 0,
  /**
   * Save: read src until its end (or `limit` payload bytes, or precopy's "for now"), gather
   * each `frame_chunk` bytes (the last chunk may be shorter; an empty chunk is never emitted)
   * into buf + 8, and write [header][payload] to dst with one write per chunk (looping on short
   * writes). buf_len must be at least frame_chunk + 8.
   */
  VFIO_PUMP_FRAME_WRITE = 1,
  /**
   * Restore: read `frame_chunks` chunks from src; for each, read its header, check its length,
   * read its payload into buf, check its crc32, and only then write the payload to dst. With
   * `frame_final`, then read the 16-byte end chunk, check its first u32 is 0, and return its
   * fields (the caller compares them with table_crc and bytes). The header that follows a
   * payload (the next chunk's, or the end chunk) is read with it when buf has room for both:
   * give buf 16 bytes more than the longest chunk for one read per chunk. Nothing past the last
   * chunk (or the end chunk, with `frame_final`) is read.
   */
  VFIO_PUMP_FRAME_READ = 2,
};

/** Why a successful pump stopped (vfio_pump_result::end). */
enum vfio_pump_end : int {
  /** read(2) returned 0: end of file (for a STOP_COPY data_fd, the end of the device state). */
  VFIO_PUMP_END_EOF = 0,
  /** Exactly `limit` bytes were copied. */
  VFIO_PUMP_END_LIMIT = 1,
  /** precopy: read(2) returned 0 or failed with ENOMSG, PRE_COPY's "no more data for now". */
  VFIO_PUMP_END_FOR_NOW = 2,
};

struct vfio_pump_options {
  /** Copy exactly this many bytes (or fewer at the end of src); < 0: until the end of src. */
  int64_t limit = -1;
  /** >= 0: read src with pread(2) from this offset on (advancing), not read(2). */
  int64_t src_offset = -1;
  /** >= 0: write dst with pwrite(2) from this offset on (advancing), not write(2). */
  int64_t dst_offset = -1;
  /**
   * Read all `limit` bytes (limit <= buf_len) into buf first and write them only when their
   * crc32 is `expect_crc`; otherwise fail with VFIO_PUMP_CHECKSUM (or VFIO_PUMP_TRUNCATED when
   * src ends first) and write nothing.
   */
  bool verify = false;
  uint32_t expect_crc = 0;
  /** A read(2) of 0 and ENOMSG both end the pump with VFIO_PUMP_END_FOR_NOW (uAPI PRE_COPY). */
  bool precopy = false;
  /**
   * -1, or an fd that becomes readable to cancel the pump (an eventfd). With it, every wait
   * on a src or dst that may block indefinitely (anything but a regular file or block device)
   * is a poll(2) on both fds before the syscall, the fd is also checked between chunks, and a
   * pump cancelled that way fails with -ECANCELED. Without it, the pump blocks inside read(2)/write(2) as the fds dictate.
   * It must be opened after src and dst: a src or dst equal to it is taken for a stale
   * number and fails with EBADF.
   */
  int cancel_fd = -1;
  /**
   * A vfio_pump_frame. WRITE: `limit` counts payload bytes (headers not included); verify must
   * be off. READ: `limit`, verify and precopy must be off (-EINVAL otherwise).
   */
  int frame = VFIO_PUMP_FRAME_NONE;
  /** WRITE: payload bytes per chunk, >= 1, with frame_chunk + 8 <= buf_len. */
  uint32_t frame_chunk = 0;
  /** READ: the largest chunk payload accepted (besides buf_len). */
  uint32_t frame_max_chunk = UINT32_MAX;
  /** READ: the number of chunks to move. */
  uint64_t frame_chunks = 0;
  /** READ: after the chunks, read the end chunk (VFIO_PUMP_END_EOF); else stop (VFIO_PUMP_END_LIMIT). */
  bool frame_final = true;
  /** WRITE and READ: the chunk-table crc32 so far; continued over each 8-byte chunk header. */
  uint32_t table_crc = 0;
  /** WRITE: the file's skeleton crc32 so far; continued over each 8-byte chunk header. */
  uint32_t skeleton_crc = 0;
  /**
   * > 0, with dst a regular file written by position (dst_offset >= 0): after every `writeback`
   * bytes written, start the write-back of them with sync_file_range(SYNC_FILE_RANGE_WRITE), so
   * that the disk works while the pump copies, the caller's fsync finds little left, and dirty
   * pages do not pile up. A hint: its failures are ignored (fsync reports write errors).
   */
  uint64_t writeback = 0;
};

struct vfio_pump_result {
  /** Bytes written to dst: all of them on success; on failure, also part of a failing chunk. */
  uint64_t bytes;
  /** Bytes read from src (verify: the bytes buffered before the check or the truncation). */
  uint64_t bytes_read;
  /** zlib crc32 of the bytes read (equal to those written on success). */
  uint32_t crc32;
  /** A vfio_pump_status. */
  int status;
  /** 0, or the positive errno of the failing syscall (EBADMSG / ENODATA for the verify failures). */
  int error;
  /** A vfio_pump_end, when status is VFIO_PUMP_OK. */
  int end;
  // ---- framed pumps (opts->frame != NONE); with framing, `bytes` counts payload bytes:
  //      WRITE: those of the chunks completely written (header and payload), also on failure;
  //      READ: those written to dst, also on failure (part of a chunk may be among them).
  /** Chunks completely written to dst. */
  uint64_t chunks;
  /** WRITE: bytes written to dst for those chunks, headers included (bytes + 8 * chunks). */
  uint64_t written;
  /** The chunk-table crc32, continued from opts->table_crc over the headers of those chunks. */
  uint32_t table_crc;
  /** WRITE: the skeleton crc32, continued from opts->skeleton_crc over the same headers. */
  uint32_t skeleton_crc;
  /** READ with frame_final, on success: the end chunk's chunk-table crc32 and total. */
  uint32_t end_table_crc;
  uint64_t end_total;
  /**
   * READ failures of status TRUNCATED, CHECKSUM, BAD_FRAME (and syscall failures): the src
   * position of the header of the chunk (or end chunk) being handled: opts->src_offset plus
   * the bytes read before it (from 0 when src is read with read(2)); -1 before any framing.
   */
  int64_t chunk_offset;
  /** READ, BAD_FRAME: the length field found (for the end chunk, the u32 that is not 0). */
  uint32_t chunk_length;
  /** READ, CHECKSUM: the crc32 in the header and the one computed over the payload. */
  uint32_t chunk_crc_expected;
  uint32_t chunk_crc_actual;
};

/**
 * Copy from `src` to `dst` through `buf` (`buf_len` bytes, the chunk size); `opts` nullptr
 * means the defaults (read until 0, no limit). EINTR is retried; EAGAIN on either side is
 * waited out with poll(2); short writes are looped on; a write(2) of 0 fails with EIO rather
 * than spin. The crc32 of every chunk is computed right after it is read, while it is in
 * cache.
 *
 * With opts->frame, the section framing above is written or read (vfio_pump_frame).
 *
 * Returns 0 (out->end tells why it stopped) or a negative errno with out->status telling what
 * failed: -errno of a syscall (READ/WRITE), -ECANCELED (cancel_fd), -EBADMSG (CHECKSUM),
 * -ENODATA (TRUNCATED), -EPROTO (BAD_FRAME), -EINVAL for a zero `buf_len`, verify with limit
 * outside [0, buf_len], or framing options that do not fit (see vfio_pump_options).
 * out->bytes is exact in every case.
 */
int vfio_pump(int src, int dst, void* buf, size_t buf_len, const vfio_pump_options* opts, vfio_pump_result* out);

/**
 * Where a walk over a chunked section's headers (docs/snapshot-format.md) stands: the file
 * offset of the next chunk header, the chunks and payload bytes passed, and the running CRC-32s
 * of their headers (the chunk table's, and the skeleton's that the END section checks).
 */
struct vfio_chunk_walk {
  int64_t pos;
  uint64_t count;
  uint64_t total;
  uint32_t table_crc;
  uint32_t skeleton_crc;
};

/**
 * The reader's fast path (src/snapshot/reader.ts, SnapshotReader validation): from `w->pos`,
 * pass over regular chunks — a whole 8-byte header with a length in [1, max_chunk] whose
 * payload ends within `size` — reading only their headers (one pread(2) each) and advancing
 * `*w`. Stops, leaving `w->pos` at that header, at the first one it does not take: the end
 * chunk (length 0), a header that is cut off, out of range or cannot be read (the caller reads
 * it again and says what is wrong), or once `max_headers` were taken or `budget_us`
 * microseconds have passed (the caller calls again). Returns the number of headers taken.
 */
uint64_t vfio_walk_chunks(int fd, vfio_chunk_walk* w, int64_t size, uint32_t max_chunk, uint64_t max_headers, int64_t budget_us);

/** The symbolic name of a positive errno ("EINVAL"), or nullptr when unknown. */
const char* vfio_errno_name(int err);

// Which CRC-32 implementation the pump uses: "isa-l" (built with VFIO_PCI_HAVE_ISAL) or "zlib".
const char* vfio_crc32_implementation();

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
