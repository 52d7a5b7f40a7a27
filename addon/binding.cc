// N-API glue of node-vfio-pci: validate, convert, call addon/sys.cc, throw.
//
// Built with NAPI_CPP_EXCEPTIONS: argument errors are thrown as C++ Napi::Error objects and
// surface in JS as TypeError (wrong type) or RangeError (out of range), with Node's codes
// ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE. Syscall failures become instances of the error class
// JS handed over with setErrorClass() (VfioError), built as
//   new VfioError(message, { code: 'EINVAL', errno: 22, syscall: 'ioctl' })
// (better-sqlite3's pattern). Before setErrorClass() they are plain Errors with the same fields.
//
// State is per environment (main thread and each worker_thread get their own, through
// napi_set_instance_data, freed when the environment is torn down), so the addon is
// context-aware and loads in worker_threads. No native objects are wrapped, so there is
// nothing to type-tag: every fd is a plain integer owned by TypeScript.
#include <napi.h>

#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "vfio_pci_sys.h"

namespace {

using namespace vfio_sys;

// ---- per-environment state -------------------------------------------------------------

struct AddonData {
  Napi::FunctionReference error_class;
};

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// ---- errors ------------------------------------------------------------------------------

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message) {
  Napi::Error e = Napi::TypeError::New(env, message);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  throw e;
}

[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message) {
  Napi::Error e = Napi::RangeError::New(env, message);
  e.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  throw e;
}

std::string ErrnoCode(int err) {
  const char* name = vfio_errno_name(err);
  return name ? std::string(name) : "E" + std::to_string(err);
}

// The error object of a failed syscall. `err` is positive. The message has the shape of
// VfioError.fromErrno(): "<syscall> failed[ (<path>)]: <CODE>".
Napi::Value SysError(Napi::Env env, int err, const char* syscall, const std::string* path = nullptr) {
  const std::string code = ErrnoCode(err);
  std::string message = std::string(syscall) + " failed";
  if (path) message += " (" + *path + ")";
  message += ": " + code;

  Napi::Object init = Napi::Object::New(env);
  init.Set("code", Napi::String::New(env, code));
  init.Set("errno", Napi::Number::New(env, err));
  init.Set("syscall", Napi::String::New(env, syscall));
  if (path) init.Set("path", Napi::String::New(env, *path));

  AddonData* data = Data(env);
  if (data && !data->error_class.IsEmpty()) {
    return data->error_class.New({Napi::String::New(env, message), init});
  }
  Napi::Error e = Napi::Error::New(env, message);
  Napi::Object obj = e.Value();
  obj.Set("code", init.Get("code"));
  obj.Set("errno", init.Get("errno"));
  obj.Set("syscall", init.Get("syscall"));
  if (path) obj.Set("path", init.Get("path"));
  return obj;
}

// A refusal that is not a syscall failure, e.g. a snapshot chunk whose checksum is wrong:
//   new VfioError(message, { code: 'EVFIO_CHECKSUM', kind: 'format' })
Napi::Value FormatError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Object init = Napi::Object::New(env);
  init.Set("code", Napi::String::New(env, code));
  init.Set("kind", Napi::String::New(env, "format"));

  AddonData* data = Data(env);
  if (data && !data->error_class.IsEmpty()) {
    return data->error_class.New({Napi::String::New(env, message), init});
  }
  Napi::Error e = Napi::Error::New(env, message);
  Napi::Object obj = e.Value();
  obj.Set("code", init.Get("code"));
  obj.Set("kind", init.Get("kind"));
  return obj;
}

[[noreturn]] void ThrowSysError(Napi::Env env, int err, const char* syscall, const std::string* path = nullptr) {
  throw Napi::Error(env, SysError(env, err, syscall, path));
}

// ---- argument conversion -----------------------------------------------------------------

constexpr double kMaxSafeInteger = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

std::string ArgName(const char* fn, const char* name) { return std::string(fn) + ": \"" + name + "\""; }

// An integer Number in [min, max]; TypeError when not a number, RangeError otherwise.
int64_t IntValue(Napi::Env env, const Napi::Value& v, const char* fn, const char* name, double min, double max) {
  if (!v.IsNumber()) ThrowTypeError(env, ArgName(fn, name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d) ThrowRangeError(env, ArgName(fn, name) + " must be an integer");
  if (d < min || d > max) {
    ThrowRangeError(env, ArgName(fn, name) + " is out of range [" + std::to_string(static_cast<int64_t>(min)) + ", " +
                             std::to_string(static_cast<int64_t>(max)) + "]");
  }
  return static_cast<int64_t>(d);
}

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double min, double max) {
  return IntValue(info.Env(), info[i], fn, name, min, max);
}

int64_t OptIntArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double min, double max,
                  int64_t dflt) {
  return info[i].IsUndefined() ? dflt : IntArg(info, i, fn, name, min, max);
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name = "fd") {
  return static_cast<int>(IntArg(info, i, fn, name, 0, INT_MAX));
}

struct BufArg {
  Napi::Object object;  // the Buffer (or other ArrayBufferView) itself, to pin it
  uint8_t* data;
  size_t length;
};

BufArg BufferArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name = "buffer") {
  Napi::Value v = info[i];
  if (!v.IsBuffer()) ThrowTypeError(info.Env(), ArgName(fn, name) + " must be a Buffer");
  Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
  return BufArg{b, b.Data(), b.Length()};
}

// The (offset, length) window of a Buffer: offset defaults to 0, length to what is left.
// Both must lie inside the Buffer.
void Window(const Napi::CallbackInfo& info, size_t i_off, size_t i_len, const char* fn, const BufArg& buf,
            size_t* off, size_t* len) {
  const double size = static_cast<double>(buf.length);
  *off = static_cast<size_t>(OptIntArg(info, i_off, fn, "offset", 0, size, 0));
  *len = static_cast<size_t>(
      OptIntArg(info, i_len, fn, "length", 0, size - static_cast<double>(*off), static_cast<int64_t>(buf.length - *off)));
}

// ---- synchronous calls -------------------------------------------------------------------

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) ThrowTypeError(env, "setErrorClass: \"errorClass\" must be a constructor");
  Data(env)->error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

// open(path, flags, mode = 0o666) -> fd
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowTypeError(env, "open: \"path\" must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.find('\0') != std::string::npos) ThrowTypeError(env, "open: \"path\" must not contain NUL bytes");
  int flags = static_cast<int>(IntArg(info, 1, "open", "flags", 0, INT_MAX));
  unsigned mode = static_cast<unsigned>(OptIntArg(info, 2, "open", "mode", 0, 07777, 0666));
  int fd = vfio_open(path.c_str(), flags, mode);
  if (fd < 0) ThrowSysError(env, -fd, "open", &path);
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "close");
  int r = vfio_close(fd);
  if (r < 0) ThrowSysError(env, -r, "close");
  return env.Undefined();
}

// The third argument of ioctl/ioctlAsync: a Buffer passed by pointer (non-empty), a number passed
// by value (a signed or unsigned integer that fits in an unsigned long), or nothing (0).
struct IoctlArgument {
  uint8_t* ptr = nullptr;
  unsigned long value = 0;
  Napi::Object buffer;  // set for a Buffer argument, to pin it in async calls
};

IoctlArgument IoctlArg(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  Napi::Value arg = info[2];
  IoctlArgument a;
  if (arg.IsUndefined()) return a;
  if (arg.IsBuffer()) {
    Napi::Buffer<uint8_t> b = arg.As<Napi::Buffer<uint8_t>>();
    if (b.Length() == 0) ThrowRangeError(env, std::string(fn) + ": \"arg\" Buffer must not be empty");
    a.ptr = b.Data();
    a.buffer = b;
    return a;
  }
  if (arg.IsNumber()) {
    a.value = static_cast<unsigned long>(IntArg(info, 2, fn, "arg", -kMaxSafeInteger, kMaxSafeInteger));
    return a;
  }
  ThrowTypeError(env, std::string(fn) + ": \"arg\" must be a Buffer, a number or undefined");
}

// ioctl(fd, request, arg?: Buffer | number) -> the ioctl's return value
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "ioctl");
  unsigned long request = static_cast<unsigned long>(IntArg(info, 1, "ioctl", "request", 0, 4294967295.0));
  IoctlArgument a = IoctlArg(info, "ioctl");
  int r = a.ptr ? vfio_ioctl_ptr(fd, request, a.ptr) : vfio_ioctl_int(fd, request, a.value);
  if (r < 0) ThrowSysError(env, -r, "ioctl");
  return Napi::Number::New(env, r);
}

// pread(fd, buffer, position, length = buffer.length) / pwrite(...): one call, may be short.
template <bool kWrite>
Napi::Value PreadPwrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = kWrite ? "pwrite" : "pread";
  int fd = FdArg(info, 0, fn);
  BufArg buf = BufferArg(info, 1, fn);
  int64_t position = IntArg(info, 2, fn, "position", 0, kMaxSafeInteger);
  size_t len = static_cast<size_t>(
      OptIntArg(info, 3, fn, "length", 0, static_cast<double>(buf.length), static_cast<int64_t>(buf.length)));
  int64_t n = kWrite ? vfio_pwrite(fd, buf.data, len, position) : vfio_pread(fd, buf.data, len, position);
  if (n < 0) ThrowSysError(env, static_cast<int>(-n), fn);
  return Napi::Number::New(env, static_cast<double>(n));
}

// walkChunks(fd, walk, size, maxChunk, maxHeaders, budgetUs) -> the walk advanced, with `taken`:
// vfio_walk_chunks; walk is { pos, count, total, tableCrc, skeletonCrc }. Never fails on the
// file's content or a read error: it stops at that header, for the caller to read and judge.
Napi::Value WalkChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "walkChunks";
  int fd = FdArg(info, 0, fn);
  if (info[1].Type() != napi_object) ThrowTypeError(env, "walkChunks: \"walk\" must be an object");
  Napi::Object in = info[1].As<Napi::Object>();
  vfio_chunk_walk w;
  w.pos = IntValue(env, in.Get("pos"), fn, "walk.pos", 0, kMaxSafeInteger);
  w.count = static_cast<uint64_t>(IntValue(env, in.Get("count"), fn, "walk.count", 0, kMaxSafeInteger));
  w.total = static_cast<uint64_t>(IntValue(env, in.Get("total"), fn, "walk.total", 0, kMaxSafeInteger));
  w.table_crc = static_cast<uint32_t>(IntValue(env, in.Get("tableCrc"), fn, "walk.tableCrc", 0, 4294967295.0));
  w.skeleton_crc = static_cast<uint32_t>(IntValue(env, in.Get("skeletonCrc"), fn, "walk.skeletonCrc", 0, 4294967295.0));
  int64_t size = IntArg(info, 2, fn, "size", 0, kMaxSafeInteger);
  uint32_t max_chunk = static_cast<uint32_t>(IntArg(info, 3, fn, "maxChunk", 1, 4294967295.0));
  uint64_t max_headers = static_cast<uint64_t>(IntArg(info, 4, fn, "maxHeaders", 0, kMaxSafeInteger));
  int64_t budget_us = OptIntArg(info, 5, fn, "budgetUs", -1, kMaxSafeInteger, -1);
  // Totals stay below 2^53: a walk only passes chunks that end within `size`.
  uint64_t taken = vfio_walk_chunks(fd, &w, size, max_chunk, max_headers, budget_us);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pos", Napi::Number::New(env, static_cast<double>(w.pos)));
  out.Set("count", Napi::Number::New(env, static_cast<double>(w.count)));
  out.Set("total", Napi::Number::New(env, static_cast<double>(w.total)));
  out.Set("tableCrc", Napi::Number::New(env, w.table_crc));
  out.Set("skeletonCrc", Napi::Number::New(env, w.skeleton_crc));
  out.Set("taken", Napi::Number::New(env, static_cast<double>(taken)));
  return out;
}

// pipe(flags = 0) -> [readFd, writeFd]
Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int flags = static_cast<int>(OptIntArg(info, 0, "pipe", "flags", 0, INT_MAX, 0));
  int fds[2];
  int r = vfio_pipe(fds, flags);
  if (r < 0) ThrowSysError(env, -r, "pipe2");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(uint32_t{0}, Napi::Number::New(env, fds[0]));
  a.Set(uint32_t{1}, Napi::Number::New(env, fds[1]));
  return a;
}

// eventfd(initval, flags = 0) -> fd
Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned initval = static_cast<unsigned>(IntArg(info, 0, "eventfd", "initval", 0, 4294967295.0));
  int flags = static_cast<int>(OptIntArg(info, 1, "eventfd", "flags", 0, INT_MAX, 0));
  int fd = vfio_eventfd(initval, flags);
  if (fd < 0) ThrowSysError(env, -fd, "eventfd");
  return Napi::Number::New(env, fd);
}

// eventfdRead(fd) -> bigint (0n when the counter was 0)
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "eventfdRead");
  uint64_t v = 0;
  int r = vfio_eventfd_read(fd, &v);
  if (r < 0) ThrowSysError(env, -r, "read");
  return Napi::BigInt::New(env, v);
}

// eventfdWrite(fd, value: bigint)
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "eventfdWrite");
  if (!info[1].IsBigInt()) ThrowTypeError(env, "eventfdWrite: \"value\" must be a bigint");
  bool lossless = false;
  uint64_t v = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowRangeError(env, "eventfdWrite: \"value\" is out of range [0, 2^64 - 1]");
  int r = vfio_eventfd_write(fd, v);
  if (r < 0) ThrowSysError(env, -r, "write");
  return env.Undefined();
}

// ---- asynchronous calls ------------------------------------------------------------------
//
// Each runs one short blocking call on the libuv thread pool and settles a promise. The
// Buffer the call reads or writes is referenced by the worker until the promise settles.

class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  // Keep `buf` alive until the promise has settled (the worker is deleted after OnOK).
  void Pin(const Napi::Object& buf) { pinned_ = Napi::Persistent(buf); }

  virtual Napi::Value Result(Napi::Env env) = 0;

  // Runs on the JS thread (inside a handle scope opened by node-addon-api). No exception may
  // leave it: when a worker_thread is terminated while the work ran, the environment can no
  // longer run JS, every call below fails, and nobody is waiting for the promise any more;
  // an escaping exception would abort the process.
  void OnOK() override {
    Napi::Env env = Env();
    try {
      if (error_) {
        deferred_.Reject(SysError(env, error_, syscall_));
      } else {
        deferred_.Resolve(Result(env));
      }
    } catch (const Napi::Error& e) {
      // Building the value threw (e.g. the error class's constructor): reject with that.
      RejectQuietly(e);
    }
  }

  // Never used: Execute reports through error_, so that the rejection is a VfioError.
  void OnError(const Napi::Error& e) override { RejectQuietly(e); }

 private:
  void RejectQuietly(const Napi::Error& e) {
    try {
      deferred_.Reject(e.Value());
    } catch (const Napi::Error&) {
      // The environment is being torn down.
    }
  }

 protected:
  int error_ = 0;             // positive errno of the failed syscall
  const char* syscall_ = "";  // its name

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference pinned_;
};

// read(fd, buffer, offset?, length?) / write(...): one call, EINTR retried, EAGAIN waited out.
template <bool kWrite>
class IoWorker : public PromiseWorker {
 public:
  IoWorker(Napi::Env env, int fd, const BufArg& buf, size_t off, size_t len)
      : PromiseWorker(env, kWrite ? "vfio:write" : "vfio:read"), fd_(fd), data_(buf.data + off), len_(len) {
    Pin(buf.object);
  }

 protected:
  void Execute() override {
    int64_t n = kWrite ? vfio_write_wait_nosigpipe(fd_, data_, len_) : vfio_read_wait(fd_, data_, len_);
    if (n < 0) {
      error_ = static_cast<int>(-n);
      syscall_ = kWrite ? "write" : "read";
    } else {
      result_ = n;
    }
  }
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(result_)); }

 private:
  int fd_;
  uint8_t* data_;
  size_t len_;
  int64_t result_ = 0;
};

template <bool kWrite>
Napi::Value ReadWrite(const Napi::CallbackInfo& info) {
  const char* fn = kWrite ? "write" : "read";
  int fd = FdArg(info, 0, fn);
  BufArg buf = BufferArg(info, 1, fn);
  size_t off, len;
  Window(info, 2, 3, fn, buf, &off, &len);
  return (new IoWorker<kWrite>(info.Env(), fd, buf, off, len))->Start();
}

// ioctlAsync(fd, request, arg?: Buffer | number) -> Promise<number>: for ioctls that can take
// long (VFIO_DEVICE_RESET, MIG_DEVICE_STATE SET: drivers save/load device state inside it,
// DMA map: pins pages). The Buffer is pinned until the promise settles.
class IoctlWorker : public PromiseWorker {
 public:
  IoctlWorker(Napi::Env env, int fd, unsigned long request, uint8_t* ptr, unsigned long value)
      : PromiseWorker(env, "vfio:ioctl"), fd_(fd), request_(request), ptr_(ptr), value_(value) {}
  void PinArg(const Napi::Object& buf) { Pin(buf); }

 protected:
  void Execute() override {
    int r = ptr_ ? vfio_ioctl_ptr(fd_, request_, ptr_) : vfio_ioctl_int(fd_, request_, value_);
    if (r < 0) {
      error_ = -r;
      syscall_ = "ioctl";
    } else {
      result_ = r;
    }
  }
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, result_); }

 private:
  int fd_;
  unsigned long request_;
  uint8_t* ptr_;
  unsigned long value_;
  int result_ = 0;
};

// bufferAddress(buffer) -> BigInt: the address of a Buffer's memory, for DMA mapping guest RAM
// (VFIO_IOMMU_MAP_DMA / IOMMU_IOAS_MAP take a user virtual address). The caller keeps the
// Buffer alive, and its memory in place, for as long as the mapping exists.
Napi::Value BufferAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer()) ThrowTypeError(env, "bufferAddress: \"buffer\" must be a Buffer");
  Napi::Buffer<uint8_t> b = info[0].As<Napi::Buffer<uint8_t>>();
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(b.Data())));
}

Napi::Value IoctlAsync(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0, "ioctlAsync");
  unsigned long request = static_cast<unsigned long>(IntArg(info, 1, "ioctlAsync", "request", 0, 4294967295.0));
  IoctlArgument a = IoctlArg(info, "ioctlAsync");
  IoctlWorker* w = new IoctlWorker(info.Env(), fd, request, a.ptr, a.value);
  if (a.ptr) w->PinArg(a.buffer);
  return w->Start();
}

class PollWorker : public PromiseWorker {
 public:
  PollWorker(Napi::Env env, int fd, short events, int timeout)
      : PromiseWorker(env, "vfio:poll"), fd_(fd), events_(events), timeout_(timeout) {}

 protected:
  void Execute() override {
    int r = vfio_poll(fd_, events_, timeout_);
    if (r < 0) {
      error_ = -r;
      syscall_ = "poll";
    } else {
      revents_ = r;
    }
  }
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, revents_); }

 private:
  int fd_;
  short events_;
  int timeout_;
  int revents_ = 0;
};

// poll(fd, events, timeoutMs) -> revents, 0 on timeout. timeoutMs < 0 waits forever.
Napi::Value Poll(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0, "poll");
  short events = static_cast<short>(IntArg(info, 1, "poll", "events", 0, 0x7fff));
  int64_t t = IntArg(info, 2, "poll", "timeoutMs", -kMaxSafeInteger, kMaxSafeInteger);
  int timeout = t < 0 ? -1 : (t > INT_MAX ? INT_MAX : static_cast<int>(t));
  return (new PollWorker(info.Env(), fd, events, timeout))->Start();
}

// ---- pump: one dedicated thread per call ---------------------------------------------------
//
// A pump can wait for a long time (a data_fd that produces slowly, a pipe nobody writes to
// yet), so it does not run on the libuv pool, whose few threads (4 by default) also serve fs,
// dns and zlib: a handful of pending pumps would starve them. Each call gets its own
// std::thread and settles its promise through a ThreadSafeFunction (node-pty's exit thread,
// node-usb's event thread).
//
// Lifetime of a PumpJob: created on the JS thread, deleted by the ThreadSafeFunction's
// finalizer. N-API calls that finalizer on the JS thread either after the thread has released
// the function and the result was delivered (normal path), or while the environment is torn
// down (worker_thread terminated, process exiting) with the pump still running. The finalizer
// cancels the pump (every indefinite wait in vfio_pump is a poll(2) that includes the job's
// cancel eventfd), joins the thread, and only then drops the reference that pins the Buffer:
// the thread never touches the Buffer's memory after V8 may free it. A result that was
// queued when the environment went away is dropped (the delivery sees a null env).

class PumpJob;
void PumpDeliver(Napi::Env env, Napi::Function callback, PumpJob* job, PumpJob* data);
void PumpFinalize(Napi::Env env, PumpJob* job, PumpJob* context);
using PumpTsfn = Napi::TypedThreadSafeFunction<PumpJob, PumpJob, PumpDeliver>;

class PumpJob {
 public:
  // Validated arguments in; the promise out. Throws (synchronously) only when the eventfd or
  // the ThreadSafeFunction cannot be created.
  static Napi::Promise Start(Napi::Env env, int src, int dst, const BufArg& buf, const vfio_pump_options& opts) {
    int cancel_fd = vfio_eventfd(0, 0);
    if (cancel_fd < 0) ThrowSysError(env, -cancel_fd, "eventfd");
    PumpJob* job = new PumpJob(env, src, dst, buf, opts, cancel_fd);
    Napi::Promise promise = job->deferred_.Promise();
    try {
      job->tsfn_ = PumpTsfn::New(env, "vfio:pump", 0, 1, job, PumpFinalize, job);
    } catch (...) {
      delete job;
      throw;
    }
    if (int err = job->Launch()) {
      // No thread: reject now. Releasing the only thread slot lets N-API finalize (delete) the job.
      job->Settle(false, [&] { return job->Failure(env, err, "pthread_create"); });
      job->tsfn_.Release();
    }
    return promise;
  }

  // JS thread: build the result or the error and settle the promise; unpin the Buffer.
  void Deliver(Napi::Env env) {
    if (rc_ == 0) {
      Settle(true, [&] { return ResultObject(env); });
    } else {
      Settle(false, [&] { return ErrorObject(env); });
    }
  }

  // Any thread: wake the pump out of its waits. A no-op once the pump has returned.
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancel_fd_ >= 0) vfio_eventfd_write(cancel_fd_, 1);
  }

  // JS thread, from the finalizer: wait for the thread (cancelled first, so not for long).
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  ~PumpJob() {
    if (cancel_fd_ >= 0) vfio_close(cancel_fd_);
  }

 private:
  PumpJob(Napi::Env env, int src, int dst, const BufArg& buf, const vfio_pump_options& opts, int cancel_fd)
      : src_(src),
        dst_(dst),
        data_(buf.data),
        len_(buf.length),
        opts_(opts),
        cancel_fd_(cancel_fd),
        deferred_(Napi::Promise::Deferred::New(env)),
        pinned_(Napi::Persistent(buf.object)) {
    opts_.cancel_fd = cancel_fd;
  }

  // Start the thread with the asynchronous signals blocked (it inherits the mask), so that
  // process-directed signals go to Node's threads and never interrupt the pump. 0 or errno.
  int Launch() {
    sigset_t all, saved;
    sigfillset(&all);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&all, sig);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    int err = 0;
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::system_error& e) {
      err = e.code().value() > 0 ? e.code().value() : EAGAIN;
    }
    pthread_sigmask(SIG_SETMASK, &saved, nullptr);
    return err;
  }

  // The pump thread. After Release (or a napi_closing answer) nothing here touches the job:
  // the finalizer may delete it as soon as it has joined this thread.
  void Run() {
    pthread_setname_np(pthread_self(), "vfio-pump");
    rc_ = vfio_pump(src_, dst_, data_, len_, &opts_, &result_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      vfio_close(cancel_fd_);  // before the promise settles: no fd outlives the call
      cancel_fd_ = -1;
    }
    // napi_closing: the environment is going away and has already dropped this thread's slot.
    if (tsfn_.BlockingCall(this) != napi_closing) tsfn_.Release();
  }

  Napi::Value ResultObject(Napi::Env env) {
    static const char* const kEnds[] = {"eof", "limit", "for-now"};
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    o.Set("crc32", Napi::Number::New(env, result_.crc32));
    o.Set("end", Napi::String::New(env, kEnds[result_.end >= 0 && result_.end <= 2 ? result_.end : 0]));
    if (opts_.frame == VFIO_PUMP_FRAME_WRITE) {
      o.Set("chunks", Napi::Number::New(env, static_cast<double>(result_.chunks)));
      o.Set("written", Napi::Number::New(env, static_cast<double>(result_.written)));
      o.Set("tableCrc", Napi::Number::New(env, result_.table_crc));
      o.Set("skeletonCrc", Napi::Number::New(env, result_.skeleton_crc));
    } else if (opts_.frame == VFIO_PUMP_FRAME_READ) {
      o.Set("chunks", Napi::Number::New(env, static_cast<double>(result_.chunks)));
      o.Set("tableCrc", Napi::Number::New(env, result_.table_crc));
      if (opts_.frame_final) {
        o.Set("endTableCrc", Napi::Number::New(env, result_.end_table_crc));
        o.Set("endTotal", Napi::Number::New(env, static_cast<double>(result_.end_total)));
      }
    }
    return o;
  }

  Napi::Value ErrorObject(Napi::Env env) {
    if (opts_.frame == VFIO_PUMP_FRAME_READ) return FramedReadError(env);
    char message[160];
    switch (result_.status) {
      case VFIO_PUMP_CHECKSUM:
        std::snprintf(message, sizeof message,
                      "pump: CRC-32 mismatch over %lld bytes: expected 0x%08x, got 0x%08x; nothing was written",
                      static_cast<long long>(opts_.limit), static_cast<unsigned>(opts_.expect_crc),
                      static_cast<unsigned>(result_.crc32));
        return WithBytesDone(env, FormatError(env, "EVFIO_CHECKSUM", message));
      case VFIO_PUMP_TRUNCATED:
        std::snprintf(message, sizeof message, "pump: the source ended after %llu of %lld bytes; nothing was written",
                      static_cast<unsigned long long>(result_.bytes_read), static_cast<long long>(opts_.limit));
        return WithBytesDone(env, FormatError(env, "EVFIO_SNAPSHOT_TRUNCATED", message));
      case VFIO_PUMP_WRITE:
        return Failure(env, result_.error, opts_.dst_offset >= 0 ? "pwrite" : "write");
      default:
        return Failure(env, result_.error, opts_.src_offset >= 0 ? "pread" : "read");
    }
  }

  // A framed read's rejection: the format refusals with their own codes (the same messages as
  // runPump in src/binding/koffi.ts), and every rejection with `chunkOffset`, the file offset of
  // the chunk (or end chunk) being handled.
  Napi::Value FramedReadError(Napi::Env env) {
    char message[256];
    const long long at = static_cast<long long>(result_.chunk_offset);
    const bool at_end = result_.chunks == opts_.frame_chunks;
    Napi::Value error;
    switch (result_.status) {
      case VFIO_PUMP_CHECKSUM:
        std::snprintf(message, sizeof message,
                      "pump: CRC-32 mismatch in the chunk at offset %lld (%u bytes): expected 0x%08x, got 0x%08x; "
                      "nothing of it was written",
                      at, static_cast<unsigned>(result_.chunk_length), static_cast<unsigned>(result_.chunk_crc_expected),
                      static_cast<unsigned>(result_.chunk_crc_actual));
        error = FormatError(env, "EVFIO_SNAPSHOT_CHECKSUM", message);
        break;
      case VFIO_PUMP_TRUNCATED:
        std::snprintf(message, sizeof message, "pump: the source ends inside the %s at offset %lld",
                      at_end ? "end chunk" : "chunk", at);
        error = FormatError(env, "EVFIO_SNAPSHOT_TRUNCATED", message);
        break;
      case VFIO_PUMP_BAD_FRAME:
        if (at_end) {
          std::snprintf(message, sizeof message,
                        "pump: no end chunk at offset %lld after %llu chunks (a chunk of %u bytes starts there)", at,
                        static_cast<unsigned long long>(result_.chunks), static_cast<unsigned>(result_.chunk_length));
        } else {
          std::snprintf(message, sizeof message, "pump: the chunk at offset %lld claims %u bytes, outside [1, %llu]", at,
                        static_cast<unsigned>(result_.chunk_length),
                        static_cast<unsigned long long>(opts_.frame_max_chunk < len_ ? opts_.frame_max_chunk : len_));
        }
        error = FormatError(env, "EVFIO_BAD_SNAPSHOT", message);
        if (error.IsObject()) error.As<Napi::Object>().Set("chunkLength", Napi::Number::New(env, result_.chunk_length));
        break;
      case VFIO_PUMP_WRITE:
        error = SysError(env, result_.error, opts_.dst_offset >= 0 ? "pwrite" : "write");
        break;
      default:
        error = SysError(env, result_.error, opts_.src_offset >= 0 ? "pread" : "read");
        break;
    }
    if (result_.chunk_offset >= 0 && error.IsObject()) {
      error.As<Napi::Object>().Set("chunkOffset", Napi::Number::New(env, static_cast<double>(result_.chunk_offset)));
    }
    return WithBytesDone(env, error);
  }

  Napi::Value Failure(Napi::Env env, int err, const char* syscall) {
    return WithBytesDone(env, SysError(env, err, syscall));
  }

  // Every pump error says how many bytes reached dst before it.
  Napi::Value WithBytesDone(Napi::Env env, Napi::Value error) {
    if (error.IsObject()) {
      error.As<Napi::Object>().Set("bytesDone", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    }
    return error;
  }

  // Settle the promise with what `build` returns; if building throws (the error class's
  // constructor), reject with that. Never throws: when the environment can no longer run JS
  // (a worker being terminated) settling fails and nobody is waiting for the promise any more.
  template <typename Build>
  void Settle(bool resolve, Build build) {
    try {
      Napi::Value value = build();
      if (resolve) {
        deferred_.Resolve(value);
      } else {
        deferred_.Reject(value);
      }
    } catch (const Napi::Error& e) {
      try {
        deferred_.Reject(e.Value());
      } catch (const Napi::Error&) {
      }
    }
    pinned_.Reset();
  }

  // Set on the JS thread before the thread starts, read-only afterwards.
  const int src_;
  const int dst_;
  uint8_t* const data_;
  const size_t len_;
  vfio_pump_options opts_;
  PumpTsfn tsfn_;
  std::thread thread_;
  // Written by the thread, read on the JS thread after the ThreadSafeFunction handed the job
  // over (its queue's mutex orders the two).
  int rc_ = 0;
  vfio_pump_result result_{};
  // The cancel eventfd; -1 once the pump returned and the thread closed it.
  std::mutex mu_;
  int cancel_fd_;
  // JS thread only.
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference pinned_;
};

void PumpDeliver(Napi::Env env, Napi::Function /*callback*/, PumpJob* job, PumpJob* /*data*/) {
  // A null env: the environment is being torn down and the finalizer owns (or already freed)
  // the job. Drop the result without touching it.
  if (env == nullptr) return;
  job->Deliver(env);
}

void PumpFinalize(Napi::Env /*env*/, PumpJob* job, PumpJob* /*context*/) {
  job->Cancel();
  job->Join();
  delete job;
}

// options.frame of pump (after the other options): the section framing of
// docs/snapshot-format.md, written ('write') or read ('read'); see vfio_pump_frame. Checked in
// this order, with these messages, by the koffi binding too (frameArg in src/binding/koffi.ts).
void FrameArg(Napi::Env env, const Napi::Value& v, const BufArg& buf, vfio_pump_options* o) {
  if (v.Type() != napi_object) ThrowTypeError(env, "pump: \"frame\" must be an object");
  Napi::Object f = v.As<Napi::Object>();
  Napi::Value mode = f.Get("mode");
  const std::string m = mode.IsString() ? mode.As<Napi::String>().Utf8Value() : std::string();
  auto crc = [&](const char* key, const char* name) -> uint32_t {
    Napi::Value c = f.Get(key);
    return c.IsUndefined() ? 0 : static_cast<uint32_t>(IntValue(env, c, "pump", name, 0, 4294967295.0));
  };
  if (m == "write") {
    o->frame = VFIO_PUMP_FRAME_WRITE;
    o->frame_chunk = static_cast<uint32_t>(IntValue(env, f.Get("chunk"), "pump", "frame.chunk", 1, 1073741824.0));
    o->table_crc = crc("tableCrc", "frame.tableCrc");
    o->skeleton_crc = crc("skeletonCrc", "frame.skeletonCrc");
    if (o->verify) ThrowRangeError(env, "pump: \"expectCrc\" cannot be used with \"frame\"");
    if (static_cast<uint64_t>(o->frame_chunk) + 8 > buf.length) {
      ThrowRangeError(env, "pump: \"frame.chunk\" needs a buffer of at least frame.chunk + 8 bytes (it has " +
                               std::to_string(buf.length) + ")");
    }
  } else if (m == "read") {
    o->frame = VFIO_PUMP_FRAME_READ;
    o->frame_chunks = static_cast<uint64_t>(IntValue(env, f.Get("chunks"), "pump", "frame.chunks", 0, kMaxSafeInteger));
    Napi::Value max_chunk = f.Get("maxChunk");
    if (!max_chunk.IsUndefined()) {
      o->frame_max_chunk = static_cast<uint32_t>(IntValue(env, max_chunk, "pump", "frame.maxChunk", 1, 4294967295.0));
    }
    o->table_crc = crc("tableCrc", "frame.tableCrc");
    Napi::Value final_chunk = f.Get("final");
    if (!final_chunk.IsUndefined()) {
      if (!final_chunk.IsBoolean()) ThrowTypeError(env, "pump: \"frame.final\" must be a boolean");
      o->frame_final = final_chunk.As<Napi::Boolean>().Value();
    }
    if (o->verify || o->limit >= 0 || o->precopy) {
      ThrowRangeError(env, "pump: \"limit\", \"expectCrc\" and \"precopy\" cannot be used with frame mode 'read'");
    }
  } else {
    ThrowTypeError(env, "pump: \"frame.mode\" must be 'read' or 'write'");
  }
}

// The optional 4th argument of pump: undefined, an options object, or (the older form) a
// number that is the limit, -1 meaning none. Checked in this order, with these messages, by
// the koffi binding too (pumpArgs in src/binding/koffi.ts).
vfio_pump_options PumpOptionsArg(const Napi::CallbackInfo& info, size_t i, const BufArg& buf) {
  Napi::Env env = info.Env();
  vfio_pump_options o;
  Napi::Value v = info[i];
  if (v.IsUndefined()) return o;
  if (v.IsNumber()) {
    o.limit = IntValue(env, v, "pump", "limit", -1, kMaxSafeInteger);
    return o;
  }
  if (v.Type() != napi_object) ThrowTypeError(env, "pump: \"options\" must be an object");
  Napi::Object obj = v.As<Napi::Object>();
  Napi::Value limit = obj.Get("limit");
  Napi::Value src_offset = obj.Get("srcOffset");
  Napi::Value dst_offset = obj.Get("dstOffset");
  Napi::Value expect_crc = obj.Get("expectCrc");
  Napi::Value precopy = obj.Get("precopy");
  if (!limit.IsUndefined()) o.limit = IntValue(env, limit, "pump", "limit", 0, kMaxSafeInteger);
  if (!src_offset.IsUndefined()) o.src_offset = IntValue(env, src_offset, "pump", "srcOffset", 0, kMaxSafeInteger);
  if (!dst_offset.IsUndefined()) o.dst_offset = IntValue(env, dst_offset, "pump", "dstOffset", 0, kMaxSafeInteger);
  if (!expect_crc.IsUndefined()) {
    o.expect_crc = static_cast<uint32_t>(IntValue(env, expect_crc, "pump", "expectCrc", 0, 4294967295.0));
    o.verify = true;
  }
  if (!precopy.IsUndefined()) {
    if (!precopy.IsBoolean()) ThrowTypeError(env, "pump: \"precopy\" must be a boolean");
    o.precopy = precopy.As<Napi::Boolean>().Value();
  }
  Napi::Value writeback = obj.Get("writeback");
  if (!writeback.IsUndefined()) o.writeback = static_cast<uint64_t>(IntValue(env, writeback, "pump", "writeback", 0, kMaxSafeInteger));
  if (o.verify && (o.limit < 0 || static_cast<uint64_t>(o.limit) > buf.length)) {
    ThrowRangeError(env, "pump: \"expectCrc\" needs \"limit\", at most the buffer length (" +
                             std::to_string(buf.length) + ")");
  }
  Napi::Value frame = obj.Get("frame");
  if (!frame.IsUndefined()) FrameArg(env, frame, buf, &o);
  return o;
}

// pump(srcFd, dstFd, buffer, options?) -> { bytes, crc32, end } (and, framed, the fields of
// ResultObject); see native.d.ts.
Napi::Value Pump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src = FdArg(info, 0, "pump", "srcFd");
  int dst = FdArg(info, 1, "pump", "dstFd");
  BufArg buf = BufferArg(info, 2, "pump");
  if (buf.length == 0) ThrowRangeError(env, "pump: \"buffer\" must not be empty");
  vfio_pump_options opts = PumpOptionsArg(info, 3, buf);
  return PumpJob::Start(env, src, dst, buf, opts);
}

// ---- module ------------------------------------------------------------------------------

// The socket calls (defined at the end of this file).
void RegisterSocketCalls(Napi::Env env, Napi::Object exports);

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());  // deleted by node-addon-api when env is torn down
  RegisterSocketCalls(env, exports);

  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl, "ioctl"));
  exports.Set("ioctlAsync", Napi::Function::New(env, IoctlAsync, "ioctlAsync"));
  exports.Set("bufferAddress", Napi::Function::New(env, BufferAddress, "bufferAddress"));
  exports.Set("crc32Implementation", Napi::String::New(env, vfio_crc32_implementation()));
  exports.Set("pread", Napi::Function::New(env, PreadPwrite<false>, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, PreadPwrite<true>, "pwrite"));
  exports.Set("walkChunks", Napi::Function::New(env, WalkChunks, "walkChunks"));
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("read", Napi::Function::New(env, ReadWrite<false>, "read"));
  exports.Set("write", Napi::Function::New(env, ReadWrite<true>, "write"));
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
  exports.Set("pump", Napi::Function::New(env, Pump, "pump"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vfio_pci, Init)

// ---- sockets --------------------------------------------------------------------------------
//
// The socket calls of the Binding contract (src/kernel/binding/types.ts): synchronous, since
// none of them waits (the sockets are non-blocking; callers wait with poll). A socket address is
// a Buffer holding a struct sockaddr_* (src/kernel/uapi/socket.ts).

namespace {

// sizeof(struct sockaddr_storage): the largest socket address.
constexpr size_t kSockaddrMax = 128;

// A socket address argument: a Buffer of 2 (the family alone: AF_UNIX autobind) to 128 bytes.
BufArg SockaddrArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  BufArg a = BufferArg(info, i, fn, "addr");
  if (a.length < 2 || a.length > kSockaddrMax) {
    ThrowRangeError(info.Env(), ArgName(fn, "addr") + " must be 2 to 128 bytes (a struct sockaddr)");
  }
  return a;
}

// socket(domain, type, protocol = 0) -> fd, with SOCK_CLOEXEC | SOCK_NONBLOCK added.
Napi::Value Socket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int domain = static_cast<int>(IntArg(info, 0, "socket", "domain", 0, INT_MAX));
  int type = static_cast<int>(IntArg(info, 1, "socket", "type", 0, INT_MAX));
  int protocol = static_cast<int>(OptIntArg(info, 2, "socket", "protocol", 0, INT_MAX, 0));
  int fd = vfio_socket(domain, type, protocol);
  if (fd < 0) ThrowSysError(env, -fd, "socket");
  return Napi::Number::New(env, fd);
}

// bind(fd, addr)
Napi::Value Bind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "bind");
  BufArg addr = SockaddrArg(info, 1, "bind");
  int r = vfio_bind(fd, addr.data, static_cast<uint32_t>(addr.length));
  if (r < 0) ThrowSysError(env, -r, "bind");
  return env.Undefined();
}

// listen(fd, backlog)
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "listen");
  int backlog = static_cast<int>(IntArg(info, 1, "listen", "backlog", 0, INT_MAX));
  int r = vfio_listen(fd, backlog);
  if (r < 0) ThrowSysError(env, -r, "listen");
  return env.Undefined();
}

// accept(fd) -> fd (EAGAIN thrown when none is pending)
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "accept");
  int conn = vfio_accept(fd, nullptr, nullptr);
  if (conn < 0) ThrowSysError(env, -conn, "accept4");
  return Napi::Number::New(env, conn);
}

// connect(fd, addr) -> true when connected, false when in progress
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "connect");
  BufArg addr = SockaddrArg(info, 1, "connect");
  int r = vfio_connect(fd, addr.data, static_cast<uint32_t>(addr.length));
  if (r < 0) ThrowSysError(env, -r, "connect");
  return Napi::Boolean::New(env, r == 0);
}

// getsockopt(fd, level, name) -> the int value; getsockopt(fd, level, name, buffer) -> the length
// the kernel wrote into the (non-empty) buffer.
Napi::Value Getsockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "getsockopt";
  int fd = FdArg(info, 0, fn);
  int level = static_cast<int>(IntArg(info, 1, fn, "level", 0, INT_MAX));
  int name = static_cast<int>(IntArg(info, 2, fn, "name", 0, INT_MAX));
  if (info[3].IsUndefined()) {
    int value = 0;
    uint32_t len = sizeof value;
    int r = vfio_getsockopt(fd, level, name, &value, &len);
    if (r < 0) ThrowSysError(env, -r, "getsockopt");
    return Napi::Number::New(env, value);
  }
  BufArg buf = BufferArg(info, 3, fn);
  if (buf.length == 0 || buf.length > UINT32_MAX) ThrowRangeError(env, ArgName(fn, "buffer") + " must not be empty");
  uint32_t len = static_cast<uint32_t>(buf.length);
  int r = vfio_getsockopt(fd, level, name, buf.data, &len);
  if (r < 0) ThrowSysError(env, -r, "getsockopt");
  return Napi::Number::New(env, len);
}

// setsockopt(fd, level, name, value: number (an int) | Buffer (non-empty))
Napi::Value Setsockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "setsockopt";
  int fd = FdArg(info, 0, fn);
  int level = static_cast<int>(IntArg(info, 1, fn, "level", 0, INT_MAX));
  int name = static_cast<int>(IntArg(info, 2, fn, "name", 0, INT_MAX));
  int r;
  if (info[3].IsNumber()) {
    int value = static_cast<int>(IntArg(info, 3, fn, "value", INT_MIN, INT_MAX));
    r = vfio_setsockopt(fd, level, name, &value, sizeof value);
  } else if (info[3].IsBuffer()) {
    BufArg buf = BufferArg(info, 3, fn, "value");
    if (buf.length == 0 || buf.length > UINT32_MAX) ThrowRangeError(env, ArgName(fn, "value") + " Buffer must not be empty");
    r = vfio_setsockopt(fd, level, name, buf.data, static_cast<uint32_t>(buf.length));
  } else {
    ThrowTypeError(env, ArgName(fn, "value") + " must be a number or a Buffer");
  }
  if (r < 0) ThrowSysError(env, -r, "setsockopt");
  return env.Undefined();
}

// shutdown(fd, how): SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "shutdown");
  int how = static_cast<int>(IntArg(info, 1, "shutdown", "how", 0, 2));
  int r = vfio_shutdown(fd, how);
  if (r < 0) ThrowSysError(env, -r, "shutdown");
  return env.Undefined();
}

// getsockname(fd) / getpeername(fd) -> Buffer: the address, as long as the kernel says it is.
template <bool kPeer>
Napi::Value SockName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = kPeer ? "getpeername" : "getsockname";
  int fd = FdArg(info, 0, fn);
  unsigned char addr[kSockaddrMax] = {};
  uint32_t len = sizeof addr;
  int r = kPeer ? vfio_getpeername(fd, addr, &len) : vfio_getsockname(fd, addr, &len);
  if (r < 0) ThrowSysError(env, -r, fn);
  return Napi::Buffer<uint8_t>::Copy(env, addr, len < sizeof addr ? len : sizeof addr);
}

void RegisterSocketCalls(Napi::Env env, Napi::Object exports) {
  exports.Set("socket", Napi::Function::New(env, Socket, "socket"));
  exports.Set("bind", Napi::Function::New(env, Bind, "bind"));
  exports.Set("listen", Napi::Function::New(env, Listen, "listen"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("connect", Napi::Function::New(env, Connect, "connect"));
  exports.Set("getsockopt", Napi::Function::New(env, Getsockopt, "getsockopt"));
  exports.Set("setsockopt", Napi::Function::New(env, Setsockopt, "setsockopt"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("getsockname", Napi::Function::New(env, SockName<false>, "getsockname"));
  exports.Set("getpeername", Napi::Function::New(env, SockName<true>, "getpeername"));
}

}  // namespace
