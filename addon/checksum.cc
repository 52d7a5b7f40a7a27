// Checksums of the raw layer (include/vfio_pci_sys.h, "Checksums"): CRC-32C (Castagnoli) and
// CRC-32 (IEEE 802.3, zlib's), with the fastest implementation the CPU offers, chosen once at
// load time. Plain C++, no N-API, nothing allocated.
//
// Implementations, best first (vfio_checksum_implementations lists those this CPU has):
//  - "avx512-vpclmulqdq" (x86-64 with AVX-512F and VPCLMULQDQ; both algorithms): the buffer is
//    folded 256 bytes at a time by carry-less multiplication into four 512-bit accumulators
//    (the method of Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ"), then
//    reduced to 16 bytes whose CRC is the buffer's. ~35-50 GiB/s on one core here.
//  - "sse4.2" (CRC-32C; x86-64 with SSE4.2, every x86-64 server CPU since 2008): the crc32
//    instruction on three independent streams of the buffer at once (its latency is 3 cycles,
//    its throughput 1 a cycle), the three CRCs joined by multiplying by x^(8·length) modulo the
//    polynomial, through tables. ~20-23 GiB/s.
//  - "armv8-crc" (CRC-32C; AArch64 with the CRC32 extension): the same three streams with the
//    crc32cx instruction.
//  - "table" (CRC-32C, any CPU): slicing-by-8 tables, ~2-3 GiB/s.
//  - "zlib" (CRC-32, any CPU): zlib's crc32(), which Node exports.
//
// Conventions are zlib's for both: crc(empty) = 0, and passing a previous result as `crc`
// continues it (the pre- and post-inversion are inside).
#include "vfio_pci_sys.h"

#include <cstring>

#include <zlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define VFIO_X86 1
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define VFIO_ARM64 1
#endif

namespace vfio_sys {

namespace {

// Reflected polynomials (bit 31 is the coefficient of x^0).
constexpr uint32_t kPolyCrc32 = 0xEDB88320u;
constexpr uint32_t kPolyCrc32c = 0x82F63B78u;

// ---- arithmetic modulo a polynomial, reflected (bit 31 = x^0, bit 0 = x^31) ----------------

// a * b modulo `poly`.
uint32_t MulMod(uint32_t a, uint32_t b, uint32_t poly) {
  uint32_t p = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) p ^= b;
    b = (b & 1) ? (b >> 1) ^ poly : b >> 1;
  }
  return p;
}

// x^e modulo `poly`.
uint32_t PowMod(uint64_t e, uint32_t poly) {
  uint32_t r = 1u << 31;  // x^0
  uint32_t sq = 1u << 30;  // x^1
  for (; e != 0; e >>= 1) {
    if (e & 1) r = MulMod(r, sq, poly);
    sq = MulMod(sq, sq, poly);
  }
  return r;
}

// ---- tables, computed once ------------------------------------------------------------------

// Slicing-by-8 tables of one polynomial: t[0] is the byte-at-a-time table.
struct Tables {
  uint32_t t[8][256];
};

void FillTables(Tables* tb, uint32_t poly) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
    tb->t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++) {
    for (int s = 1; s < 8; s++) tb->t[s][i] = (tb->t[s - 1][i] >> 8) ^ tb->t[0][tb->t[s - 1][i] & 0xff];
  }
}

// Raw CRC update (no inversions) of `len` bytes, a byte at a time.
inline uint32_t RawBytes(const Tables& tb, uint32_t c, const unsigned char* p, size_t len) {
  while (len--) c = tb.t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

// Raw CRC update, eight bytes at a time.
uint32_t RawSlice8(const Tables& tb, uint32_t c, const unsigned char* p, size_t len) {
  while (len >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;  // little-endian hosts only (every target of this addon)
    c = tb.t[7][lo & 0xff] ^ tb.t[6][(lo >> 8) & 0xff] ^ tb.t[5][(lo >> 16) & 0xff] ^ tb.t[4][lo >> 24] ^
        tb.t[3][hi & 0xff] ^ tb.t[2][(hi >> 8) & 0xff] ^ tb.t[1][(hi >> 16) & 0xff] ^ tb.t[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  return RawBytes(tb, c, p, len);
}

// Multiplication by a fixed x^(8·n) modulo the polynomial as four byte tables: how the
// three-stream implementations join their streams.
struct Shift {
  uint32_t t[4][256];
};

void FillShift(Shift* s, size_t n, uint32_t poly) {
  const uint32_t k = PowMod(8 * static_cast<uint64_t>(n), poly);
  for (int b = 0; b < 4; b++) {
    for (uint32_t i = 0; i < 256; i++) s->t[b][i] = MulMod(i << (8 * b), k, poly);
  }
}

inline uint32_t Shifted(const Shift& s, uint32_t c) {
  return s.t[0][c & 0xff] ^ s.t[1][(c >> 8) & 0xff] ^ s.t[2][(c >> 16) & 0xff] ^ s.t[3][c >> 24];
}

// Stream lengths of the three-stream implementations: long runs in 3 × kLong bytes, what is
// left in 3 × kShort.
constexpr size_t kLong = 4096;
constexpr size_t kShort = 256;

// Folding constants for one polynomial: with 64-bit lanes holding reflected 32-bit constants,
// a carry-less product of a 64-bit lane by x^(d - 33) (high lane) or x^(d + 64 - 33) (low lane)
// modulo P lands, as a 128-bit chunk, on the lane moved d bits further (see FoldAvx512).
struct FoldConstants {
  uint64_t k2048_lo, k2048_hi;  // d = 2048: 256 bytes, the main loop
  uint64_t k128_lo, k128_hi;    // d = 128: one 16-byte lane onto the next
};

void FillFold(FoldConstants* f, uint32_t poly) {
  f->k2048_lo = PowMod(2048 + 64 - 33, poly);
  f->k2048_hi = PowMod(2048 - 33, poly);
  f->k128_lo = PowMod(128 + 64 - 33, poly);
  f->k128_hi = PowMod(128 - 33, poly);
}

struct State {
  Tables crc32c;
  Tables crc32;
  Shift crc32c_long, crc32c_short;
  FoldConstants fold_crc32c, fold_crc32;
  bool sse42 = false;
  bool avx512 = false;  // AVX-512F and VPCLMULQDQ (and PCLMUL, SSE4.1/4.2 they imply)
  bool armcrc = false;

  State() {
    FillTables(&crc32c, kPolyCrc32c);
    FillTables(&crc32, kPolyCrc32);
    FillShift(&crc32c_long, kLong, kPolyCrc32c);
    FillShift(&crc32c_short, kShort, kPolyCrc32c);
    FillFold(&fold_crc32c, kPolyCrc32c);
    FillFold(&fold_crc32, kPolyCrc32);
#if VFIO_X86
    __builtin_cpu_init();
    sse42 = __builtin_cpu_supports("sse4.2");
    avx512 = sse42 && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("vpclmulqdq");
#elif VFIO_ARM64
    armcrc = (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
#endif
  }
};

// Built when the addon loads (before any thread can call in).
const State kState;

// ---- x86-64 ---------------------------------------------------------------------------------

#if VFIO_X86

// Raw CRC-32C with the crc32 instruction on three interleaved streams of `n` bytes each,
// while at least 3·n bytes are left; the rest is left to the caller.
__attribute__((target("sse4.2"))) inline uint64_t Sse42Streams(uint64_t c0, const unsigned char*& p, size_t& len,
                                                               size_t n, const Shift& shift) {
  while (len >= 3 * n) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char* const end = p + n;
    do {
      uint64_t a, b, d;
      std::memcpy(&a, p, 8);
      std::memcpy(&b, p + n, 8);
      std::memcpy(&d, p + 2 * n, 8);
      c0 = _mm_crc32_u64(c0, a);
      c1 = _mm_crc32_u64(c1, b);
      c2 = _mm_crc32_u64(c2, d);
      p += 8;
    } while (p < end);
    // crc(A B C) = crc(A)·x^(16n) + crc(B)·x^(8n) + crc(C), raw and modulo P.
    c0 = Shifted(shift, Shifted(shift, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1)) ^
         static_cast<uint32_t>(c2);
    p += 2 * n;
    len -= 3 * n;
  }
  return c0;
}

__attribute__((target("sse4.2"))) uint32_t RawCrc32cSse42(uint32_t crc, const unsigned char* p, size_t len) {
  uint64_t c = crc;
  c = Sse42Streams(c, p, len, kLong, kState.crc32c_long);
  c = Sse42Streams(c, p, len, kShort, kState.crc32c_short);
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    len -= 8;
  }
  while (len--) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  return static_cast<uint32_t>(c);
}

// Fold the first len - len % 256 bytes (len >= 256) of a raw CRC update from `crc` into 16
// bytes with the same raw CRC from 0: the CRC of a message does not change when its first 32
// bits are XORed with the CRC so far and the CRC restarts from 0, and a 128-bit lane L followed by
// d more bits has the CRC of clmul(L.lo, x^(d+64-33)) ^ clmul(L.hi, x^(d-33)) at the place of
// the later lane (the products, as reflected 128-bit chunks, carry a factor x^33).
__attribute__((target("sse4.2,pclmul,avx512f,vpclmulqdq"))) void FoldAvx512(uint32_t crc, const unsigned char*& p,
                                                                              size_t& len, const FoldConstants& k,
                                                                              unsigned char out[16]) {
  const long long hi = static_cast<long long>(k.k2048_hi), lo = static_cast<long long>(k.k2048_lo);
  const __m512i k2048 = _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo);
  __m512i x0 = _mm512_loadu_si512(p);
  __m512i x1 = _mm512_loadu_si512(p + 64);
  __m512i x2 = _mm512_loadu_si512(p + 128);
  __m512i x3 = _mm512_loadu_si512(p + 192);
  x0 = _mm512_xor_si512(x0, _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(crc))));
  p += 256;
  len -= 256;
  // x := x·x^2048 + next 256 bytes, four 512-bit lanes at a time (0x96: a ^ b ^ c).
#define VFIO_FOLD512(x, off)                                                                                    \
  x = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k2048, 0x00), _mm512_clmulepi64_epi128(x, k2048, 0x11), \
                                _mm512_loadu_si512(p + (off)), 0x96)
  while (len >= 256) {
    VFIO_FOLD512(x0, 0);
    VFIO_FOLD512(x1, 64);
    VFIO_FOLD512(x2, 128);
    VFIO_FOLD512(x3, 192);
    p += 256;
    len -= 256;
  }
#undef VFIO_FOLD512
  // The 16 lanes, in message order, onto one.
  alignas(64) __m128i lanes[16];
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), x0);
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes + 4), x1);
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes + 8), x2);
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes + 12), x3);
  const __m128i k128 = _mm_set_epi64x(static_cast<long long>(k.k128_hi), static_cast<long long>(k.k128_lo));
  __m128i a = lanes[0];
  for (int i = 1; i < 16; i++) {
    a = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k128, 0x00), _mm_clmulepi64_si128(a, k128, 0x11)), lanes[i]);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), a);
}

uint32_t RawCrc32cAvx512(uint32_t crc, const unsigned char* p, size_t len) {
  if (len >= 256) {
    unsigned char folded[16];
    FoldAvx512(crc, p, len, kState.fold_crc32c, folded);
    crc = RawCrc32cSse42(0, folded, 16);
  }
  return RawCrc32cSse42(crc, p, len);
}

uint32_t RawCrc32Avx512(uint32_t crc, const unsigned char* p, size_t len) {
  if (len >= 256) {
    unsigned char folded[16];
    FoldAvx512(crc, p, len, kState.fold_crc32, folded);
    crc = RawBytes(kState.crc32, 0, folded, 16);
  }
  return RawSlice8(kState.crc32, crc, p, len);
}

#endif  // VFIO_X86

// ---- AArch64 --------------------------------------------------------------------------------

#if VFIO_ARM64

__attribute__((target("+crc"))) inline uint32_t ArmStreams(uint32_t c0, const unsigned char*& p, size_t& len, size_t n,
                                                           const Shift& shift) {
  while (len >= 3 * n) {
    uint32_t c1 = 0, c2 = 0;
    const unsigned char* const end = p + n;
    do {
      uint64_t a, b, d;
      std::memcpy(&a, p, 8);
      std::memcpy(&b, p + n, 8);
      std::memcpy(&d, p + 2 * n, 8);
      c0 = __crc32cd(c0, a);
      c1 = __crc32cd(c1, b);
      c2 = __crc32cd(c2, d);
      p += 8;
    } while (p < end);
    c0 = Shifted(shift, Shifted(shift, c0) ^ c1) ^ c2;
    p += 2 * n;
    len -= 3 * n;
  }
  return c0;
}

__attribute__((target("+crc"))) uint32_t RawCrc32cArm(uint32_t c, const unsigned char* p, size_t len) {
  c = ArmStreams(c, p, len, kLong, kState.crc32c_long);
  c = ArmStreams(c, p, len, kShort, kState.crc32c_short);
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __crc32cd(c, v);
    p += 8;
    len -= 8;
  }
  while (len--) c = __crc32cb(c, *p++);
  return c;
}

#endif  // VFIO_ARM64

uint32_t RawCrc32cTable(uint32_t c, const unsigned char* p, size_t len) { return RawSlice8(kState.crc32c, c, p, len); }

// zlib's crc32() takes a uInt length: feed it at most 1 GiB at a time.
uint32_t Crc32Zlib(uint32_t crc, const unsigned char* p, size_t len) {
  uLong c = crc;
  while (len > 0) {
    const size_t n = len > (size_t{1} << 30) ? size_t{1} << 30 : len;
    c = crc32(c, p, static_cast<uInt>(n));
    p += n;
    len -= n;
  }
  return static_cast<uint32_t>(c);
}

// One implementation: its name, and a raw update (no inversions), or, for zlib, a finished one.
struct Impl {
  const char* name;
  uint32_t (*raw)(uint32_t, const unsigned char*, size_t);
  bool available;
};

const Impl kCrc32cImpls[] = {
#if VFIO_X86
    {"avx512-vpclmulqdq", RawCrc32cAvx512, kState.avx512},
    {"sse4.2", RawCrc32cSse42, kState.sse42},
#endif
#if VFIO_ARM64
    {"armv8-crc", RawCrc32cArm, kState.armcrc},
#endif
    {"table", RawCrc32cTable, true},
};

const Impl kCrc32Impls[] = {
#if VFIO_X86
    {"avx512-vpclmulqdq", RawCrc32Avx512, kState.avx512},
#endif
    {"zlib", nullptr, true},  // zlib's crc32, finished (inversions included)
};

template <size_t N>
const Impl* Pick(const Impl (&impls)[N], int index) {
  int seen = 0;
  for (const Impl& i : impls) {
    if (!i.available) continue;
    if (seen++ == index) return &i;
  }
  return nullptr;
}

const Impl* ImplOf(int alg, int index) {
  switch (alg) {
    case VFIO_CHECKSUM_CRC32C:
      return Pick(kCrc32cImpls, index);
    case VFIO_CHECKSUM_CRC32:
      return Pick(kCrc32Impls, index);
    default:
      return nullptr;
  }
}

// The best implementation of each, chosen once.
const Impl* const kBestCrc32c = ImplOf(VFIO_CHECKSUM_CRC32C, 0);
const Impl* const kBestCrc32 = ImplOf(VFIO_CHECKSUM_CRC32, 0);

inline uint32_t Run(const Impl* impl, uint32_t crc, const void* buf, size_t len) {
  const unsigned char* p = static_cast<const unsigned char*>(buf);
  if (impl->raw == nullptr) return Crc32Zlib(crc, p, len);
  return ~impl->raw(~crc, p, len);
}

}  // namespace

uint32_t vfio_checksum(int alg, uint32_t crc, const void* buf, size_t len) {
  return Run(alg == VFIO_CHECKSUM_CRC32 ? kBestCrc32 : kBestCrc32c, crc, buf, len);
}

int vfio_checksum_with(int alg, int index, uint32_t crc, const void* buf, size_t len, uint32_t* out) {
  const Impl* impl = ImplOf(alg, index);
  if (impl == nullptr) return -22;  // -EINVAL: no such algorithm, or no implementation at that index
  *out = Run(impl, crc, buf, len);
  return 0;
}

const char* vfio_checksum_implementation(int alg, int index) {
  const Impl* impl = ImplOf(alg, index);
  return impl ? impl->name : nullptr;
}

}  // namespace vfio_sys
