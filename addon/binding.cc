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

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

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

[[noreturn]] void ThrowSysError(Napi::Env env, int err, const char* syscall, const std::string* path = nullptr) {
  throw Napi::Error(env, SysError(env, err, syscall, path));
}

// ---- argument conversion -----------------------------------------------------------------

constexpr double kMaxSafeInteger = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

std::string ArgName(const char* fn, const char* name) { return std::string(fn) + ": \"" + name + "\""; }

// An integer Number in [min, max]; TypeError when not a number, RangeError otherwise.
int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double min, double max) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowTypeError(env, ArgName(fn, name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d) ThrowRangeError(env, ArgName(fn, name) + " must be an integer");
  if (d < min || d > max) {
    ThrowRangeError(env, ArgName(fn, name) + " is out of range [" + std::to_string(static_cast<int64_t>(min)) + ", " +
                             std::to_string(static_cast<int64_t>(max)) + "]");
  }
  return static_cast<int64_t>(d);
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

// ioctl(fd, request, arg?: Buffer | number) -> the ioctl's return value
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "ioctl");
  unsigned long request = static_cast<unsigned long>(IntArg(info, 1, "ioctl", "request", 0, 4294967295.0));
  Napi::Value arg = info[2];
  int r;
  if (arg.IsUndefined()) {
    r = vfio_ioctl_int(fd, request, 0);
  } else if (arg.IsBuffer()) {
    Napi::Buffer<uint8_t> b = arg.As<Napi::Buffer<uint8_t>>();
    if (b.Length() == 0) ThrowRangeError(env, "ioctl: \"arg\" Buffer must not be empty");
    r = vfio_ioctl_ptr(fd, request, b.Data());
  } else if (arg.IsNumber()) {
    // By value: a signed or unsigned integer that fits in an unsigned long.
    int64_t v = IntArg(info, 2, "ioctl", "arg", -kMaxSafeInteger, kMaxSafeInteger);
    r = vfio_ioctl_int(fd, request, static_cast<unsigned long>(v));
  } else {
    ThrowTypeError(env, "ioctl: \"arg\" must be a Buffer, a number or undefined");
  }
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
    int64_t n = kWrite ? vfio_write_wait(fd_, data_, len_) : vfio_read_wait(fd_, data_, len_);
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

class PumpWorker : public PromiseWorker {
 public:
  PumpWorker(Napi::Env env, int src, int dst, const BufArg& buf, int64_t limit)
      : PromiseWorker(env, "vfio:pump"), src_(src), dst_(dst), data_(buf.data), len_(buf.length), limit_(limit) {
    Pin(buf.object);
  }

 protected:
  void Execute() override {
    int r = vfio_pump(src_, dst_, data_, len_, limit_, &result_);
    if (r < 0) {
      error_ = -r;
      syscall_ = result_.side == VFIO_PUMP_WRITE ? "write" : "read";
    }
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    o.Set("crc32", Napi::Number::New(env, result_.crc32));
    return o;
  }

 private:
  int src_;
  int dst_;
  uint8_t* data_;
  size_t len_;
  int64_t limit_;
  vfio_pump_result result_{};
};

// pump(srcFd, dstFd, buffer, limit = -1) -> { bytes, crc32 }
Napi::Value Pump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src = FdArg(info, 0, "pump", "srcFd");
  int dst = FdArg(info, 1, "pump", "dstFd");
  BufArg buf = BufferArg(info, 2, "pump");
  if (buf.length == 0) ThrowRangeError(env, "pump: \"buffer\" must not be empty");
  int64_t limit = OptIntArg(info, 3, "pump", "limit", -1, kMaxSafeInteger, -1);
  return (new PumpWorker(env, src, dst, buf, limit))->Start();
}

// ---- module ------------------------------------------------------------------------------

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());  // deleted by node-addon-api when env is torn down

  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl, "ioctl"));
  exports.Set("pread", Napi::Function::New(env, PreadPwrite<false>, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, PreadPwrite<true>, "pwrite"));
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
