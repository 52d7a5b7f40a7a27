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
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

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

// The checksum algorithm named by a string argument ('crc32c' or 'crc32').
int ChecksumArg(Napi::Env env, const Napi::Value& v, const char* fn, const char* name) {
  if (!v.IsString()) ThrowTypeError(env, ArgName(fn, name) + " must be 'crc32c' or 'crc32'");
  const std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "crc32c") return VFIO_CHECKSUM_CRC32C;
  if (s == "crc32") return VFIO_CHECKSUM_CRC32;
  ThrowRangeError(env, ArgName(fn, name) + " must be 'crc32c' or 'crc32'");
}

// A record prefix: a Buffer of at most VFIO_PUMP_MAX_PREFIX bytes, copied into `out`.
unsigned PrefixArg(Napi::Env env, const Napi::Value& v, const char* fn, const char* name, unsigned char* out) {
  if (!v.IsBuffer()) ThrowTypeError(env, ArgName(fn, name) + " must be a Buffer");
  Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
  if (b.Length() > VFIO_PUMP_MAX_PREFIX) ThrowRangeError(env, ArgName(fn, name) + " is longer than 8 bytes");
  std::memcpy(out, b.Data(), b.Length());
  return static_cast<unsigned>(b.Length());
}

// An array of at most VFIO_PUMP_MAX_SEEDS checksums (u32), copied into `out`.
unsigned SeedsArg(Napi::Env env, const Napi::Value& v, const char* fn, const char* name, uint32_t* out) {
  if (!v.IsArray()) ThrowTypeError(env, ArgName(fn, name) + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > VFIO_PUMP_MAX_SEEDS) ThrowRangeError(env, ArgName(fn, name) + " has more than 4 entries");
  for (uint32_t i = 0; i < a.Length(); i++) out[i] = static_cast<uint32_t>(IntValue(env, a.Get(i), fn, name, 0, 4294967295.0));
  return a.Length();
}

Napi::Array SumsValue(Napi::Env env, const uint32_t* sums, unsigned n) {
  Napi::Array a = Napi::Array::New(env, n);
  for (unsigned i = 0; i < n; i++) a.Set(i, Napi::Number::New(env, sums[i]));
  return a;
}

// walkRecords(fd, walk, size, options) -> the walk advanced, with `taken`: vfio_walk_records.
// walk is { pos, count, total, sums: number[] }; options { prefix: Buffer, maxRecord, checksum,
// maxHeaders, budgetUs }. Never fails on the file's content or a read error: it stops at that
// header, for the caller to read and judge.
Napi::Value WalkRecords(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "walkRecords";
  int fd = FdArg(info, 0, fn);
  if (info[1].Type() != napi_object) ThrowTypeError(env, "walkRecords: \"walk\" must be an object");
  Napi::Object in = info[1].As<Napi::Object>();
  vfio_record_walk w{};
  w.pos = IntValue(env, in.Get("pos"), fn, "walk.pos", 0, kMaxSafeInteger);
  w.count = static_cast<uint64_t>(IntValue(env, in.Get("count"), fn, "walk.count", 0, kMaxSafeInteger));
  w.total = static_cast<uint64_t>(IntValue(env, in.Get("total"), fn, "walk.total", 0, kMaxSafeInteger));
  w.seeds = SeedsArg(env, in.Get("sums"), fn, "walk.sums", w.sum);
  int64_t size = IntArg(info, 2, fn, "size", 0, kMaxSafeInteger);
  if (info[3].Type() != napi_object) ThrowTypeError(env, "walkRecords: \"options\" must be an object");
  Napi::Object o = info[3].As<Napi::Object>();
  unsigned char prefix[VFIO_PUMP_MAX_PREFIX];
  unsigned prefix_len = PrefixArg(env, o.Get("prefix"), fn, "options.prefix", prefix);
  uint32_t max_record = static_cast<uint32_t>(IntValue(env, o.Get("maxRecord"), fn, "options.maxRecord", 1, 4294967295.0));
  int alg = ChecksumArg(env, o.Get("checksum"), fn, "options.checksum");
  uint64_t max_headers = static_cast<uint64_t>(IntValue(env, o.Get("maxHeaders"), fn, "options.maxHeaders", 0, kMaxSafeInteger));
  Napi::Value budget = o.Get("budgetUs");
  int64_t budget_us = budget.IsUndefined() ? -1 : IntValue(env, budget, fn, "options.budgetUs", -1, kMaxSafeInteger);
  // Totals stay below 2^53: a walk only passes records that end within `size`.
  uint64_t taken = vfio_walk_records(fd, &w, size, prefix, prefix_len, max_record, alg, max_headers, budget_us);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pos", Napi::Number::New(env, static_cast<double>(w.pos)));
  out.Set("count", Napi::Number::New(env, static_cast<double>(w.count)));
  out.Set("total", Napi::Number::New(env, static_cast<double>(w.total)));
  out.Set("sums", SumsValue(env, w.sum, w.seeds));
  out.Set("taken", Napi::Number::New(env, static_cast<double>(taken)));
  return out;
}

// checksum(algorithm, buffer, seed = 0, implementation = 0) -> u32: vfio_checksum(_with), on
// the JS thread (a buffer of 1 MiB takes ~20-50 µs).
Napi::Value Checksum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "checksum";
  int alg = ChecksumArg(env, info[0], fn, "algorithm");
  BufArg buf = BufferArg(info, 1, fn);
  uint32_t seed = static_cast<uint32_t>(OptIntArg(info, 2, fn, "seed", 0, 4294967295.0, 0));
  int impl = static_cast<int>(OptIntArg(info, 3, fn, "implementation", 0, 15, 0));
  uint32_t out = 0;
  if (vfio_checksum_with(alg, impl, seed, buf.data, buf.length, &out) < 0) {
    ThrowRangeError(env, "checksum: \"implementation\" is not one this CPU has");
  }
  return Napi::Number::New(env, out);
}

// { crc32c: [...], crc32: [...] }: the implementations this CPU has, best (the one used) first.
Napi::Value ChecksumImplementations(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  for (auto [name, alg] : {std::pair<const char*, int>{"crc32c", VFIO_CHECKSUM_CRC32C}, {"crc32", VFIO_CHECKSUM_CRC32}}) {
    Napi::Array a = Napi::Array::New(env);
    for (int i = 0;; i++) {
      const char* impl = vfio_checksum_implementation(alg, i);
      if (!impl) break;
      a.Set(static_cast<uint32_t>(i), Napi::String::New(env, impl));
    }
    o.Set(name, a);
  }
  o.Freeze();
  return o;
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

// populate(buffer) -> Promise<void>: fault its pages in (vfio_populate) on the thread pool, so
// that page zeroing stays off the JS thread; the bytes are unchanged.
class PopulateWorker : public PromiseWorker {
 public:
  PopulateWorker(Napi::Env env, const BufArg& buf) : PromiseWorker(env, "vfio:populate"), data_(buf.data), len_(buf.length) {
    Pin(buf.object);
  }

 protected:
  void Execute() override { vfio_populate(data_, len_); }
  Napi::Value Result(Napi::Env env) override { return env.Undefined(); }

 private:
  uint8_t* data_;
  size_t len_;
};

Napi::Value Populate(const Napi::CallbackInfo& info) {
  BufArg buf = BufferArg(info, 0, "populate");
  return (new PopulateWorker(info.Env(), buf))->Start();
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
// A pump can wait for a long time (a data_fd that produces slowly, a socket whose peer is
// slow), so it does not run on the libuv pool, whose few threads (4 by default) also serve fs,
// dns and zlib: a handful of pending pumps would starve them. Each call gets its own
// std::thread (and, with two buffers, vfio_pump starts a second one that reads while the first
// writes) and settles its promise through a ThreadSafeFunction (node-pty's exit thread,
// node-usb's event thread).
//
// Lifetime of a PumpJob: created on the JS thread, deleted by the ThreadSafeFunction's
// finalizer. N-API calls that finalizer on the JS thread either after the thread has released
// the function and the result was delivered (normal path), or while the environment is torn
// down (worker_thread terminated, process exiting) with the pump still running. The finalizer
// cancels the pump (every indefinite wait in vfio_pump is a poll(2) that includes the job's
// cancel eventfd), joins the thread, and only then drops the references that pin the Buffers:
// the thread never touches their memory after V8 may free it. A result that was queued when
// the environment went away is dropped (the delivery sees a null env).
//
// The cancel eventfd is shared with the `cancel` function handed to JS (an AbortSignal's
// listener calls it): whichever outlives the other, it is written only while the pump runs.

class PumpJob;
void PumpDeliver(Napi::Env env, Napi::Function callback, PumpJob* job, PumpJob* data);
void PumpFinalize(Napi::Env env, PumpJob* job, PumpJob* context);
using PumpTsfn = Napi::TypedThreadSafeFunction<PumpJob, PumpJob, PumpDeliver>;

// The job's cancel eventfd, -1 once the pump has returned and closed it.
struct CancelState {
  std::mutex mu;
  int fd = -1;

  void Signal() {
    std::lock_guard<std::mutex> lock(mu);
    if (fd >= 0) vfio_eventfd_write(fd, 1);
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu);
    if (fd >= 0) vfio_close(fd);
    fd = -1;
  }
};

class PumpJob {
 public:
  // Validated arguments in; { promise, cancel } out. Throws (synchronously) only when the
  // eventfd or the ThreadSafeFunction cannot be created.
  static Napi::Object Start(Napi::Env env, int src, int dst, const BufArg* bufs, int nbufs, const vfio_pump_options& opts) {
    int cancel_fd = vfio_eventfd(0, 0);
    if (cancel_fd < 0) ThrowSysError(env, -cancel_fd, "eventfd");
    PumpJob* job = new PumpJob(env, src, dst, bufs, nbufs, opts, cancel_fd);
    Napi::Promise promise = job->deferred_.Promise();
    std::shared_ptr<CancelState> state = job->cancel_;
    Napi::Function cancel = Napi::Function::New(
        env,
        [state](const Napi::CallbackInfo& info) -> Napi::Value {
          state->Signal();
          return info.Env().Undefined();
        },
        "cancel");
    try {
      job->tsfn_ = PumpTsfn::New(env, "vfio:pump", 0, 1, job, PumpFinalize, job);
    } catch (...) {
      delete job;
      throw;
    }
    if (int err = job->Launch()) {
      // No thread: reject now. Releasing the only thread slot lets N-API finalize (delete) the job.
      job->Settle(false, [&] { return job->WithBytesDone(env, SysError(env, err, "pthread_create")); });
      job->tsfn_.Release();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("promise", promise);
    out.Set("cancel", cancel);
    return out;
  }

  // JS thread: build the result or the error and settle the promise; unpin the Buffers.
  void Deliver(Napi::Env env) {
    if (rc_ == 0) {
      Settle(true, [&] { return ResultObject(env); });
    } else {
      Settle(false, [&] { return ErrorObject(env); });
    }
  }

  // Any thread: wake the pump out of its waits. A no-op once the pump has returned.
  void Cancel() { cancel_->Signal(); }

  // JS thread, from the finalizer: wait for the thread (cancelled first, so not for long).
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  ~PumpJob() { cancel_->Close(); }

 private:
  PumpJob(Napi::Env env, int src, int dst, const BufArg* bufs, int nbufs, const vfio_pump_options& opts, int cancel_fd)
      : src_(src),
        dst_(dst),
        data_{bufs[0].data, nbufs > 1 ? bufs[1].data : nullptr},
        len_{bufs[0].length, nbufs > 1 ? bufs[1].length : 0},
        opts_(opts),
        cancel_(std::make_shared<CancelState>()),
        deferred_(Napi::Promise::Deferred::New(env)) {
    cancel_->fd = cancel_fd;
    opts_.cancel_fd = cancel_fd;
    for (int i = 0; i < nbufs; i++) pinned_[i] = Napi::Persistent(bufs[i].object);
  }

  // Start the thread with the asynchronous signals blocked (it inherits the mask, and so does
  // the reading thread vfio_pump may start), so that process-directed signals go to Node's
  // threads and never interrupt the pump. 0 or errno.
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
    rc_ = vfio_pump(src_, dst_, data_[0], len_[0], data_[1], len_[1], &opts_, &result_);
    cancel_->Close();  // before the promise settles: no fd outlives the call
    // napi_closing: the environment is going away and has already dropped this thread's slot.
    if (tsfn_.BlockingCall(this) != napi_closing) tsfn_.Release();
  }

  Napi::Value ResultObject(Napi::Env env) {
    static const char* const kEnds[] = {"eof", "limit", "for-now", "count", "header"};
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    o.Set("read", Napi::Number::New(env, static_cast<double>(result_.bytes_read)));
    o.Set("written", Napi::Number::New(env, static_cast<double>(result_.written)));
    o.Set("records", Napi::Number::New(env, static_cast<double>(result_.records)));
    o.Set("checksum", Napi::Number::New(env, result_.checksum));
    o.Set("headerChecksums", SumsValue(env, result_.header_sums, opts_.seeds));
    o.Set("end", Napi::String::New(env, kEnds[result_.end >= 0 && result_.end <= 4 ? result_.end : 0]));
    if (result_.end == VFIO_PUMP_END_HEADER) {
      o.Set("header", Napi::Buffer<uint8_t>::Copy(env, result_.stop_header, opts_.prefix_len + 8));
    }
    return o;
  }

  // The format refusals (the same messages as the JS pump, src/kernel/pump/js.ts), and every
  // rejection with `bytesDone`; records ones with `recordOffset` (and `recordLength`).
  Napi::Value ErrorObject(Napi::Env env) {
    char message[256];
    const bool records = opts_.mode == VFIO_PUMP_READ_RECORDS;
    const long long at = static_cast<long long>(result_.record_offset);
    Napi::Value error;
    switch (result_.status) {
      case VFIO_PUMP_CHECKSUM:
        if (records) {
          std::snprintf(message, sizeof message,
                        "pump: checksum mismatch in the record at offset %lld (%u bytes): expected 0x%08x, got 0x%08x; "
                        "nothing of it was written",
                        at, static_cast<unsigned>(result_.record_length), static_cast<unsigned>(result_.record_expected),
                        static_cast<unsigned>(result_.record_actual));
        } else {
          std::snprintf(message, sizeof message,
                        "pump: checksum mismatch over %lld bytes: expected 0x%08x, got 0x%08x; nothing was written",
                        static_cast<long long>(opts_.limit), static_cast<unsigned>(opts_.expect),
                        static_cast<unsigned>(result_.checksum));
        }
        error = FormatError(env, "EVFIO_CHECKSUM", message);
        break;
      case VFIO_PUMP_TRUNCATED:
        if (records) {
          std::snprintf(message, sizeof message, "pump: the source ends inside the record at offset %lld", at);
        } else {
          std::snprintf(message, sizeof message, "pump: the source ended after %llu of %lld bytes; nothing was written",
                        static_cast<unsigned long long>(result_.bytes_read), static_cast<long long>(opts_.limit));
        }
        error = FormatError(env, "EVFIO_TRUNCATED", message);
        break;
      case VFIO_PUMP_BAD_LENGTH: {
        const uint64_t room = len_[1] > 0 && len_[1] < len_[0] ? len_[1] : len_[0];
        std::snprintf(message, sizeof message, "pump: the record at offset %lld claims %u bytes, outside [1, %llu]", at,
                      static_cast<unsigned>(result_.record_length),
                      static_cast<unsigned long long>(opts_.max_record < room ? opts_.max_record : room));
        error = FormatError(env, "EVFIO_RECORD_LENGTH", message);
        if (error.IsObject()) error.As<Napi::Object>().Set("recordLength", Napi::Number::New(env, result_.record_length));
        break;
      }
      case VFIO_PUMP_WRITE:
        error = SysError(env, result_.error, opts_.dst_offset >= 0 ? "pwrite" : "write");
        break;
      default:
        error = SysError(env, result_.error, opts_.src_offset >= 0 ? "pread" : "read");
        break;
    }
    if (records && result_.record_offset >= 0 && error.IsObject()) {
      error.As<Napi::Object>().Set("recordOffset", Napi::Number::New(env, static_cast<double>(result_.record_offset)));
    }
    return WithBytesDone(env, error);
  }

  // Every pump error says how many bytes reached dst before it: bytesDone (payload, by mode)
  // and bytesWritten (every byte written to dst, exact).
  Napi::Value WithBytesDone(Napi::Env env, Napi::Value error) {
    if (error.IsObject()) {
      error.As<Napi::Object>().Set("bytesDone", Napi::Number::New(env, static_cast<double>(result_.bytes)));
      error.As<Napi::Object>().Set("bytesWritten", Napi::Number::New(env, static_cast<double>(result_.written)));
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
    pinned_[0].Reset();
    pinned_[1].Reset();
  }

  // Set on the JS thread before the thread starts, read-only afterwards.
  const int src_;
  const int dst_;
  void* const data_[2];
  const size_t len_[2];
  vfio_pump_options opts_;
  const std::shared_ptr<CancelState> cancel_;
  PumpTsfn tsfn_;
  std::thread thread_;
  // Written by the thread, read on the JS thread after the ThreadSafeFunction handed the job
  // over (its queue's mutex orders the two).
  int rc_ = 0;
  vfio_pump_result result_{};
  // JS thread only.
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference pinned_[2];
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

// The options of pump: an object with `mode`, already normalized and checked by
// src/kernel/pump/args.ts (these checks keep the addon safe from anything else).
vfio_pump_options PumpOptionsArg(Napi::Env env, const Napi::Value& v) {
  const char* fn = "pump";
  if (v.Type() != napi_object) ThrowTypeError(env, "pump: \"options\" must be an object");
  Napi::Object obj = v.As<Napi::Object>();
  vfio_pump_options o;
  Napi::Value mode = obj.Get("mode");
  const std::string m = mode.IsString() ? mode.As<Napi::String>().Utf8Value() : std::string();
  if (m == "copy") {
    o.mode = VFIO_PUMP_COPY;
  } else if (m == "write-records") {
    o.mode = VFIO_PUMP_WRITE_RECORDS;
  } else if (m == "read-records") {
    o.mode = VFIO_PUMP_READ_RECORDS;
  } else {
    ThrowTypeError(env, "pump: \"mode\" must be 'copy', 'write-records' or 'read-records'");
  }
  auto opt = [&](const char* key) { return obj.Get(key); };
  auto has = [&](const char* key) { return !obj.Get(key).IsUndefined(); };
  if (has("checksum")) o.checksum = ChecksumArg(env, opt("checksum"), fn, "checksum");
  if (has("limit")) o.limit = IntValue(env, opt("limit"), fn, "limit", 0, kMaxSafeInteger);
  if (has("srcOffset")) o.src_offset = IntValue(env, opt("srcOffset"), fn, "srcOffset", 0, kMaxSafeInteger);
  if (has("dstOffset")) o.dst_offset = IntValue(env, opt("dstOffset"), fn, "dstOffset", 0, kMaxSafeInteger);
  if (has("writeback")) o.writeback = static_cast<uint64_t>(IntValue(env, opt("writeback"), fn, "writeback", 0, kMaxSafeInteger));
  if (has("expectChecksum")) {
    o.expect = static_cast<uint32_t>(IntValue(env, opt("expectChecksum"), fn, "expectChecksum", 0, 4294967295.0));
    o.verify = true;
  }
  if (has("precopy")) {
    if (!opt("precopy").IsBoolean()) ThrowTypeError(env, "pump: \"precopy\" must be a boolean");
    o.precopy = opt("precopy").As<Napi::Boolean>().Value();
  }
  if (has("overlap")) {
    if (!opt("overlap").IsBoolean()) ThrowTypeError(env, "pump: \"overlap\" must be a boolean");
    o.overlap = opt("overlap").As<Napi::Boolean>().Value() ? 1 : 0;
  }
  if (has("prefix")) o.prefix_len = PrefixArg(env, opt("prefix"), fn, "prefix", o.prefix);
  if (has("recordSize")) o.record_size = static_cast<uint32_t>(IntValue(env, opt("recordSize"), fn, "recordSize", 1, 1073741824.0));
  if (has("maxRecord")) o.max_record = static_cast<uint32_t>(IntValue(env, opt("maxRecord"), fn, "maxRecord", 1, 4294967295.0));
  if (has("records")) o.records = IntValue(env, opt("records"), fn, "records", 0, kMaxSafeInteger);
  if (has("firstHeader")) {
    const Napi::Value v = opt("firstHeader");
    if (!v.IsBuffer()) ThrowTypeError(env, ArgName(fn, "firstHeader") + " must be a Buffer");
    Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
    if (b.Length() == 0 || b.Length() > sizeof o.first_header) ThrowRangeError(env, ArgName(fn, "firstHeader") + " must hold 1 to 16 bytes");
    std::memcpy(o.first_header, b.Data(), b.Length());
    o.first_header_len = static_cast<unsigned>(b.Length());
  }
  if (has("headerChecksums")) o.seeds = SeedsArg(env, opt("headerChecksums"), fn, "headerChecksums", o.seed);
  if (has("idleTimeoutMs")) o.idle_timeout_ms = static_cast<int>(IntValue(env, opt("idleTimeoutMs"), fn, "idleTimeoutMs", 0, INT_MAX));
  return o;
}

// pump(srcFd, dstFd, buffers: Buffer | Buffer[1..2], options) -> { promise, cancel }: see
// native.d.ts. Options that do not fit together or in the buffers reject (EINVAL from
// vfio_pump) rather than throw: src/kernel/pump/args.ts refuses them first.
Napi::Value Pump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src = FdArg(info, 0, "pump", "srcFd");
  int dst = FdArg(info, 1, "pump", "dstFd");
  BufArg bufs[2];
  int nbufs = 0;
  if (info[2].IsArray()) {
    Napi::Array a = info[2].As<Napi::Array>();
    if (a.Length() < 1 || a.Length() > 2) ThrowRangeError(env, "pump: \"buffers\" must hold 1 or 2 Buffers");
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value b = a.Get(i);
      if (!b.IsBuffer()) ThrowTypeError(env, "pump: \"buffers\" must hold Buffers");
      Napi::Buffer<uint8_t> buf = b.As<Napi::Buffer<uint8_t>>();
      bufs[nbufs++] = BufArg{buf, buf.Data(), buf.Length()};
    }
  } else {
    bufs[nbufs++] = BufferArg(info, 2, "pump");
  }
  for (int i = 0; i < nbufs; i++) {
    if (bufs[i].length == 0) ThrowRangeError(env, "pump: \"buffer\" must not be empty");
  }
  if (nbufs == 2 && bufs[0].data == bufs[1].data) ThrowRangeError(env, "pump: the two buffers must be different");
  vfio_pump_options opts = PumpOptionsArg(env, info[3]);
  return PumpJob::Start(env, src, dst, bufs, nbufs, opts);
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
  exports.Set("checksum", Napi::Function::New(env, Checksum, "checksum"));
  exports.Set("checksumImplementations", ChecksumImplementations(env));
  exports.Set("pread", Napi::Function::New(env, PreadPwrite<false>, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, PreadPwrite<true>, "pwrite"));
  exports.Set("walkRecords", Napi::Function::New(env, WalkRecords, "walkRecords"));
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("populate", Napi::Function::New(env, Populate, "populate"));
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

// recvNow(fd, buffer, offset?, length?) / sendNow(...) -> bytes, or -1 when the socket has
// nothing to give (recv) or no room (send) now: one recv(2) / send(2) with MSG_DONTWAIT on the
// calling thread, which never sleeps (send: MSG_NOSIGNAL too).
template <bool kSend>
Napi::Value SocketNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = kSend ? "sendNow" : "recvNow";
  int fd = FdArg(info, 0, fn);
  BufArg buf = BufferArg(info, 1, fn);
  size_t off, len;
  Window(info, 2, 3, fn, buf, &off, &len);
  int64_t n = kSend ? vfio_send_now(fd, buf.data + off, len) : vfio_recv_now(fd, buf.data + off, len);
  if (n == -EAGAIN || n == -EWOULDBLOCK) return Napi::Number::New(env, -1);
  if (n < 0) ThrowSysError(env, static_cast<int>(-n), kSend ? "send" : "recv");
  return Napi::Number::New(env, static_cast<double>(n));
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
  exports.Set("recvNow", Napi::Function::New(env, SocketNow<false>, "recvNow"));
  exports.Set("sendNow", Napi::Function::New(env, SocketNow<true>, "sendNow"));
  exports.Set("getsockname", Napi::Function::New(env, SockName<false>, "getsockname"));
  exports.Set("getpeername", Napi::Function::New(env, SockName<true>, "getpeername"));
}

}  // namespace
