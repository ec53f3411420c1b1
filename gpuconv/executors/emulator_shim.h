// gpuconv emulator: the CUDA device API for g++, so that the unmodified kernels/*.cu run on the CPU.
//
// Included first by the translation unit that gpuconv/executors/emulator.py generates for a kernel family:
//     #define GPUCONV_EMULATOR 1 / #include "emulator_shim.h" / #include "<family>.cu" / kernel table /
//     #include "emulator_runtime.h"
// Model (docs/emulator.md): every CUDA thread is a fiber; a block's fibers run cooperatively on one OS thread and
// switch only at __syncthreads, warp operations (shuffles, votes, __syncwarp) and exit. Shared memory is
// thread_local storage (one block per OS thread at a time), poisoned with 0xFF bytes at every block start.
//   __shared__ T x[N];          -> thread_local T x[N];        (static shared memory, per OS thread = per block)
//   extern __shared__ T x[];    -> extern thread_local T x[];  (the build defines every such symbol as an alias
//                                                               of one dynamic shared memory buffer)
// Needs g++ >= 9 with -std=c++17 -fno-extern-tls-init. Standard headers are included before the CUDA qualifier
// macros are defined (libstdc++ uses names such as __noinline__ itself).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <time.h>
#include <type_traits>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// =============================================================================================================
// Vector types (CUDA's sizes and alignments) and make_* helpers
// =============================================================================================================
#define GPUCONV_EMU_VEC1(T, N, A) struct __attribute__((aligned(A))) N##1 { T x; }; \
    inline N##1 make_##N##1(T x) { return N##1{x}; }
#define GPUCONV_EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define GPUCONV_EMU_VEC3(T, N) struct N##3 { T x, y, z; }; \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define GPUCONV_EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define GPUCONV_EMU_VECS(T, N, A1, A2, A4) GPUCONV_EMU_VEC1(T, N, A1) GPUCONV_EMU_VEC2(T, N, A2) \
    GPUCONV_EMU_VEC3(T, N) GPUCONV_EMU_VEC4(T, N, A4)
GPUCONV_EMU_VECS(signed char, char, 1, 2, 4)
GPUCONV_EMU_VECS(unsigned char, uchar, 1, 2, 4)
GPUCONV_EMU_VECS(short, short, 2, 4, 8)
GPUCONV_EMU_VECS(unsigned short, ushort, 2, 4, 8)
GPUCONV_EMU_VECS(int, int, 4, 8, 16)
GPUCONV_EMU_VECS(unsigned int, uint, 4, 8, 16)
GPUCONV_EMU_VECS(long, long, 8, 16, 16)
GPUCONV_EMU_VECS(unsigned long, ulong, 8, 16, 16)
GPUCONV_EMU_VECS(long long, longlong, 8, 16, 16)
GPUCONV_EMU_VECS(unsigned long long, ulonglong, 8, 16, 16)
GPUCONV_EMU_VECS(float, float, 4, 8, 16)
GPUCONV_EMU_VECS(double, double, 8, 16, 16)
#undef GPUCONV_EMU_VEC1
#undef GPUCONV_EMU_VEC2
#undef GPUCONV_EMU_VEC3
#undef GPUCONV_EMU_VEC4
#undef GPUCONV_EMU_VECS

// =============================================================================================================
// Runtime state seen by the device API (the scheduler that drives it is in emulator_runtime.h)
// =============================================================================================================
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

namespace gpuconv_emu {

enum class State : unsigned char { NotStarted, Ready, Running, AtBlockBarrier, AtWarpOp, Done };
enum class WarpOp : unsigned char {
    Sync, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All,
    ReduceAddU, ReduceMinU, ReduceMaxU, ReduceMinI, ReduceMaxI, ReduceAnd, ReduceOr, ReduceXor, MatchAny, MatchAll
};

struct Stack;

// One CUDA thread.
struct Fiber {
    void* sp = nullptr;                 // saved stack pointer while suspended
    Stack* stack = nullptr;             // owned while started and not finished
    void* asan_fake_stack = nullptr;
    uint3 tid{0, 0, 0};
    unsigned linear = 0;                // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    State state = State::NotStarted;
    const char* wait_what = "";         // the barrier or warp operation it waits at (for error messages)
    const char* wait_file = "";
    int wait_line = 0;
    // operands and result of the barrier or warp operation it waits at
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    int lane_arg = 0;
    int width = 32;
    int value_size = 0;
    unsigned long long value = 0;
    unsigned long long result = 0;
};

// The block being run by this OS thread; the scheduler fills it (emulator_runtime.h).
struct Block {
    Fiber* cur = nullptr;
    Fiber* fibers = nullptr;
    unsigned nthreads = 0;
    uint3 block_idx{0, 0, 0};
    dim3 block_dim;
    dim3 grid_dim;
    const char* kernel = "";
    unsigned* warp_arrived = nullptr;   // per warp: bit set of lanes waiting at a warp operation
};

// The only thread_local of the runtime (its name contains "gpuconv_emu": the build excludes it from the
// static shared-memory ranges that are poisoned at block start).
extern thread_local Block* tls_block;

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void suspend(State state, const char* what, const char* file, int line);
unsigned long long warp_op(WarpOp op, unsigned mask, unsigned long long value, int value_size, int lane_arg,
                           int width, const char* what, const char* file, int line);
unsigned block_barrier(int pred, const char* what, const char* file, int line);

inline const uint3& thread_idx() { return tls_block->cur->tid; }

}  // namespace gpuconv_emu

// =============================================================================================================
// Qualifiers and built-in variables
// =============================================================================================================
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __device_builtin__
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __maxnreg__(n)

#define threadIdx (::gpuconv_emu::thread_idx())
#define blockIdx (static_cast<const uint3&>(::gpuconv_emu::tls_block->block_idx))
#define blockDim (static_cast<const dim3&>(::gpuconv_emu::tls_block->block_dim))
#define gridDim (static_cast<const dim3&>(::gpuconv_emu::tls_block->grid_dim))
constexpr int warpSize = 32;


// =============================================================================================================
// Bit casts, conversions, integer intrinsics
// =============================================================================================================
namespace gpuconv_emu {
template <class To, class From> inline To bit_cast(const From& v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast size mismatch");
    To r;
    std::memcpy(&r, &v, sizeof(To));
    return r;
}
}  // namespace gpuconv_emu

inline float __int_as_float(int v) { return gpuconv_emu::bit_cast<float>(v); }
inline int __float_as_int(float v) { return gpuconv_emu::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return gpuconv_emu::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return gpuconv_emu::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return gpuconv_emu::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return gpuconv_emu::bit_cast<long long>(v); }
inline int __double2hiint(double v) { return int(gpuconv_emu::bit_cast<unsigned long long>(v) >> 32); }
inline int __double2loint(double v) { return int(gpuconv_emu::bit_cast<unsigned long long>(v)); }
inline double __hiloint2double(int hi, int lo) {
    return gpuconv_emu::bit_cast<double>((static_cast<unsigned long long>(unsigned(hi)) << 32) | unsigned(lo));
}

// float -> integer with an explicit rounding mode; NaN gives 0 and out-of-range values saturate (as on the GPU)
namespace gpuconv_emu {
template <class I, class F> inline I sat_convert(F v) {
    if (v != v) return 0;
    if (v <= static_cast<F>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (v >= static_cast<F>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return static_cast<I>(v);
}
}  // namespace gpuconv_emu
#define GPUCONV_EMU_F2I(NAME, F, I) \
    inline I NAME##_rn(F v) { return gpuconv_emu::sat_convert<I>(std::nearbyint(v)); } \
    inline I NAME##_rz(F v) { return gpuconv_emu::sat_convert<I>(std::trunc(v)); } \
    inline I NAME##_rd(F v) { return gpuconv_emu::sat_convert<I>(std::floor(v)); } \
    inline I NAME##_ru(F v) { return gpuconv_emu::sat_convert<I>(std::ceil(v)); }
GPUCONV_EMU_F2I(__float2int, float, int)
GPUCONV_EMU_F2I(__float2uint, float, unsigned)
GPUCONV_EMU_F2I(__float2ll, float, long long)
GPUCONV_EMU_F2I(__float2ull, float, unsigned long long)
GPUCONV_EMU_F2I(__double2int, double, int)
GPUCONV_EMU_F2I(__double2uint, double, unsigned)
GPUCONV_EMU_F2I(__double2ll, double, long long)
GPUCONV_EMU_F2I(__double2ull, double, unsigned long long)
#undef GPUCONV_EMU_F2I
inline float __int2float_rn(int v) { return static_cast<float>(v); }
inline float __uint2float_rn(unsigned v) { return static_cast<float>(v); }
inline float __ll2float_rn(long long v) { return static_cast<float>(v); }
inline float __ull2float_rn(unsigned long long v) { return static_cast<float>(v); }
inline double __int2double_rn(int v) { return static_cast<double>(v); }
inline double __ll2double_rn(long long v) { return static_cast<double>(v); }
inline float __double2float_rn(double v) { return static_cast<float>(v); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline unsigned __brev(unsigned v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(v);
}
inline int __mul24(int a, int b) {   // low 32 bits of the product of the sign-extended low 24 bits
    const int a24 = static_cast<int>(static_cast<unsigned>(a) << 8) >> 8, b24 = static_cast<int>(static_cast<unsigned>(b) << 8) >> 8;
    return static_cast<int>(static_cast<unsigned>(static_cast<long long>(a24) * b24));
}
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) {
    return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// min/max overloads in the global namespace, as CUDA provides them (mixed arguments promote)
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
    else return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a < b ? b : a; }

// =============================================================================================================
// Single-precision intrinsics (IEEE results: the GPU's approximate __expf etc. are modelled as exact)
// =============================================================================================================
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmaf_rz(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __saturatef(float a) { return a != a ? 0.0f : (a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a)); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float rcbrtf(float a) { return 1.0f / std::cbrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __exp10f(float a) { return std::pow(10.0f, a); }
inline float __logf(float a) { return std::log(a); }
inline float __log2f(float a) { return std::log2(a); }
inline float __log10f(float a) { return std::log10(a); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float a) { return std::sin(a); }
inline float __cosf(float a) { return std::cos(a); }
inline float __tanf(float a) { return std::tan(a); }
inline void __sincosf(float a, float* s, float* c) { *s = std::sin(a); *c = std::cos(a); }

// =============================================================================================================
// __half and __nv_bfloat16 (storage types; arithmetic goes through float, rounding to nearest even)
// =============================================================================================================
namespace gpuconv_emu {
inline unsigned short float_to_half_bits(float f) {
    const unsigned x = bit_cast<unsigned>(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    unsigned ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u)                                   // inf or NaN (NaN stays quiet NaN)
        return static_cast<unsigned short>(sign | (ax > 0x7F800000u ? 0x7E00u | ((ax >> 13) & 0x3FFu) : 0x7C00u));
    if (ax >= 0x477FF000u) return static_cast<unsigned short>(sign | 0x7C00u);   // rounds to infinity
    if (ax < 0x38800000u) {                                  // half subnormal or zero: units of 2^-24
        const float scaled = bit_cast<float>(ax) * 16777216.0f;
        return static_cast<unsigned short>(sign | static_cast<unsigned>(std::nearbyint(scaled)));
    }
    ax += 0xC8000FFFu + ((ax >> 13) & 1u);                   // rebias exponent, round to nearest even
    return static_cast<unsigned short>(sign | (ax >> 13));
}
inline float half_bits_to_float(unsigned short h) {
    const unsigned sign = static_cast<unsigned>(h & 0x8000u) << 16;
    const unsigned e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) return bit_cast<float>(sign) + (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-08f;
    if (e == 31) return bit_cast<float>(sign | 0x7F800000u | (m << 13));
    return bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
inline unsigned short float_to_bf16_bits(float f) {
    const unsigned x = bit_cast<unsigned>(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<unsigned short>((x >> 16) | 0x40u);
    return static_cast<unsigned short>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(unsigned short b) { return bit_cast<float>(static_cast<unsigned>(b) << 16); }
}  // namespace gpuconv_emu

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

#define GPUCONV_EMU_FLOAT16(T, RAW, TO_BITS, TO_FLOAT) \
struct __attribute__((aligned(2))) T { \
    unsigned short __x; \
    T() = default; \
    constexpr T(RAW r) : __x(r.x) {} \
    T(float f) : __x(gpuconv_emu::TO_BITS(f)) {} \
    T(double d) : __x(gpuconv_emu::TO_BITS(static_cast<float>(d))) {} \
    T(int v) : T(static_cast<float>(v)) {} \
    T(unsigned v) : T(static_cast<float>(v)) {} \
    T(long v) : T(static_cast<float>(v)) {} \
    T(unsigned long v) : T(static_cast<float>(v)) {} \
    T(long long v) : T(static_cast<float>(v)) {} \
    T(unsigned long long v) : T(static_cast<float>(v)) {} \
    operator float() const { return gpuconv_emu::TO_FLOAT(__x); } \
    operator RAW() const { return RAW{__x}; } \
    T& operator+=(const T& o) { return *this = T(float(*this) + float(o)); } \
    T& operator-=(const T& o) { return *this = T(float(*this) - float(o)); } \
    T& operator*=(const T& o) { return *this = T(float(*this) * float(o)); } \
    T& operator/=(const T& o) { return *this = T(float(*this) / float(o)); } \
}; \
inline T operator+(const T& a, const T& b) { return T(float(a) + float(b)); } \
inline T operator-(const T& a, const T& b) { return T(float(a) - float(b)); } \
inline T operator*(const T& a, const T& b) { return T(float(a) * float(b)); } \
inline T operator/(const T& a, const T& b) { return T(float(a) / float(b)); } \
inline T operator-(const T& a) { T r = a; r.__x ^= 0x8000u; return r; } \
inline T operator+(const T& a) { return a; } \
inline bool operator==(const T& a, const T& b) { return float(a) == float(b); } \
inline bool operator!=(const T& a, const T& b) { return float(a) != float(b); } \
inline bool operator<(const T& a, const T& b) { return float(a) < float(b); } \
inline bool operator<=(const T& a, const T& b) { return float(a) <= float(b); } \
inline bool operator>(const T& a, const T& b) { return float(a) > float(b); } \
inline bool operator>=(const T& a, const T& b) { return float(a) >= float(b); }
GPUCONV_EMU_FLOAT16(__half, __half_raw, float_to_half_bits, half_bits_to_float)
GPUCONV_EMU_FLOAT16(__nv_bfloat16, __nv_bfloat16_raw, float_to_bf16_bits, bf16_bits_to_float)
#undef GPUCONV_EMU_FLOAT16
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

struct __attribute__((aligned(4))) __half2 { __half x, y; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half2 half2;

inline float __half2float(__half h) { return float(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline __half __int2half_rn(int v) { return __half(static_cast<float>(v)); }
inline int __half2int_rz(__half h) { return __float2int_rz(float(h)); }
inline int __half2int_rn(__half h) { return __float2int_rn(float(h)); }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short v) { return __half(__half_raw{static_cast<unsigned short>(v)}); }
inline __half __ushort_as_half(unsigned short v) { return __half(__half_raw{v}); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __habs(__half a) { a.__x &= 0x7FFFu; return a; }
inline __half __hfma(__half a, __half b, __half c) {
    return __half(static_cast<double>(float(a)) * float(b) + float(c));   // exact product, one rounding
}
inline __half __hmax(__half a, __half b) { return __half(std::fmax(float(a), float(b))); }
inline __half __hmin(__half a, __half b) { return __half(std::fmin(float(a), float(b))); }
inline bool __hisnan(__half a) { return (a.__x & 0x7FFFu) > 0x7C00u; }
inline __half __hmax_nan(__half a, __half b) { return __hisnan(a) ? a : (__hisnan(b) ? b : __hmax(a, b)); }
inline __half __hmin_nan(__half a, __half b) { return __hisnan(a) ? a : (__hisnan(b) ? b : __hmin(a, b)); }
inline int __hisinf(__half a) { return (a.__x & 0x7FFFu) == 0x7C00u ? ((a.__x & 0x8000u) ? -1 : 1) : 0; }
inline bool __heq(__half a, __half b) { return a == b; }
inline bool __hne(__half a, __half b) { return a != b; }
inline bool __hlt(__half a, __half b) { return a < b; }
inline bool __hle(__half a, __half b) { return a <= b; }
inline bool __hgt(__half a, __half b) { return a > b; }
inline bool __hge(__half a, __half b) { return a >= b; }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __half2half2(__half a) { return __half2{a, a}; }
inline __half2 __float2half2_rn(float f) { return __half2{__half(f), __half(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{a.x + b.x, a.y + b.y}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{a.x - b.x, a.y - b.y}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{a.x * b.x, a.y * b.y}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2{__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
inline __half2 __hmin2(__half2 a, __half2 b) { return __half2{__hmin(a.x, b.x), __hmin(a.y, b.y)}; }

inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16(__nv_bfloat16_raw{v}); }
inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7FFFu) > 0x7F80u; }
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(std::fmax(float(a), float(b))); }
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(std::fmin(float(a), float(b))); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }

// =============================================================================================================
// Memory access hints and fences (plain accesses on the CPU)
// =============================================================================================================
// A misaligned vector access faults on the GPU ("misaligned address"); here it is an error at the call.
#define GPUCONV_EMU_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()
namespace gpuconv_emu {
template <class T> inline void check_aligned(const T* p, const char* what, const char* file, int line) {
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
        fail("misaligned address %p in %s (%s:%d): the %zu-byte type needs %zu-byte alignment",
             static_cast<const void*>(p), what, file, line, sizeof(T), alignof(T));
}
}  // namespace gpuconv_emu
#define GPUCONV_EMU_LOAD(NAME) template <class T> inline T NAME(const T* p, GPUCONV_EMU_SITE) { \
    gpuconv_emu::check_aligned(p, #NAME, file, line); return *p; }
#define GPUCONV_EMU_STORE(NAME) template <class T> inline void NAME(T* p, T v, GPUCONV_EMU_SITE) { \
    gpuconv_emu::check_aligned(p, #NAME, file, line); *p = v; }
GPUCONV_EMU_LOAD(__ldg)
GPUCONV_EMU_LOAD(__ldca)
GPUCONV_EMU_LOAD(__ldcg)
GPUCONV_EMU_LOAD(__ldcs)
GPUCONV_EMU_LOAD(__ldlu)
GPUCONV_EMU_LOAD(__ldcv)
GPUCONV_EMU_STORE(__stwb)
GPUCONV_EMU_STORE(__stcg)
GPUCONV_EMU_STORE(__stcs)
GPUCONV_EMU_STORE(__stwt)
#undef GPUCONV_EMU_LOAD
#undef GPUCONV_EMU_STORE
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) {}
inline long long clock64() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<long long>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}
[[noreturn]] inline void __trap() { gpuconv_emu::fail("__trap() called"); }
inline void __brkpt() { __builtin_trap(); }

// =============================================================================================================
// Block barriers: each switches to the next fiber
// =============================================================================================================
inline void __syncthreads(GPUCONV_EMU_SITE) { gpuconv_emu::block_barrier(1, "__syncthreads", file, line); }
inline int __syncthreads_count(int pred, GPUCONV_EMU_SITE) {
    return static_cast<int>(gpuconv_emu::block_barrier(pred, "__syncthreads_count", file, line));
}
inline int __syncthreads_and(int pred, GPUCONV_EMU_SITE) {
    return gpuconv_emu::block_barrier(pred, "__syncthreads_and", file, line) == gpuconv_emu::tls_block->nthreads;
}
inline int __syncthreads_or(int pred, GPUCONV_EMU_SITE) {
    return gpuconv_emu::block_barrier(pred, "__syncthreads_or", file, line) != 0;
}

// =============================================================================================================
// Warp operations: warps are 32 consecutive linear thread ids; every lane named in the mask must reach a warp
// operation with the same mask; the last lane to arrive computes every lane's result (emulator_runtime.h).
// =============================================================================================================
namespace gpuconv_emu {
template <class T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp operations take values of <= 8 bytes");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <class T> inline T shuffle(WarpOp op, unsigned mask, T v, int arg, int width, const char* what,
                                    const char* file, int line) {
    return from_bits<T>(warp_op(op, mask, to_bits(v), sizeof(T), arg, width, what, file, line));
}
}  // namespace gpuconv_emu

inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, GPUCONV_EMU_SITE) {
    gpuconv_emu::warp_op(gpuconv_emu::WarpOp::Sync, mask, 0, 0, 0, 32, "__syncwarp", file, line);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, GPUCONV_EMU_SITE) {
    return gpuconv_emu::shuffle(gpuconv_emu::WarpOp::ShflIdx, mask, v, src_lane, width, "__shfl_sync", file, line);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, GPUCONV_EMU_SITE) {
    return gpuconv_emu::shuffle(gpuconv_emu::WarpOp::ShflUp, mask, v, int(delta), width, "__shfl_up_sync", file, line);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, GPUCONV_EMU_SITE) {
    return gpuconv_emu::shuffle(gpuconv_emu::WarpOp::ShflDown, mask, v, int(delta), width, "__shfl_down_sync", file,
                                line);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, GPUCONV_EMU_SITE) {
    return gpuconv_emu::shuffle(gpuconv_emu::WarpOp::ShflXor, mask, v, lane_mask, width, "__shfl_xor_sync", file,
                                line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, GPUCONV_EMU_SITE) {
    return unsigned(gpuconv_emu::warp_op(gpuconv_emu::WarpOp::Ballot, mask, pred != 0, 4, 0, 32, "__ballot_sync",
                                         file, line));
}
inline int __any_sync(unsigned mask, int pred, GPUCONV_EMU_SITE) {
    return int(gpuconv_emu::warp_op(gpuconv_emu::WarpOp::Any, mask, pred != 0, 4, 0, 32, "__any_sync", file, line));
}
inline int __all_sync(unsigned mask, int pred, GPUCONV_EMU_SITE) {
    return int(gpuconv_emu::warp_op(gpuconv_emu::WarpOp::All, mask, pred != 0, 4, 0, 32, "__all_sync", file, line));
}
#define GPUCONV_EMU_REDUCE(NAME, T, OP) \
    inline T NAME(unsigned mask, T v, GPUCONV_EMU_SITE) { \
        return gpuconv_emu::shuffle(gpuconv_emu::WarpOp::OP, mask, v, 0, 32, #NAME, file, line); }
GPUCONV_EMU_REDUCE(__reduce_add_sync, unsigned, ReduceAddU)
GPUCONV_EMU_REDUCE(__reduce_add_sync, int, ReduceAddU)
GPUCONV_EMU_REDUCE(__reduce_min_sync, unsigned, ReduceMinU)
GPUCONV_EMU_REDUCE(__reduce_min_sync, int, ReduceMinI)
GPUCONV_EMU_REDUCE(__reduce_max_sync, unsigned, ReduceMaxU)
GPUCONV_EMU_REDUCE(__reduce_max_sync, int, ReduceMaxI)
GPUCONV_EMU_REDUCE(__reduce_and_sync, unsigned, ReduceAnd)
GPUCONV_EMU_REDUCE(__reduce_or_sync, unsigned, ReduceOr)
GPUCONV_EMU_REDUCE(__reduce_xor_sync, unsigned, ReduceXor)
#undef GPUCONV_EMU_REDUCE
template <class T> inline unsigned __match_any_sync(unsigned mask, T v, GPUCONV_EMU_SITE) {
    return unsigned(gpuconv_emu::warp_op(gpuconv_emu::WarpOp::MatchAny, mask, gpuconv_emu::to_bits(v), sizeof(T), 0, 32,
                                         "__match_any_sync", file, line));
}
template <class T> inline unsigned __match_all_sync(unsigned mask, T v, int* pred, GPUCONV_EMU_SITE) {
    const unsigned r = unsigned(gpuconv_emu::warp_op(gpuconv_emu::WarpOp::MatchAll, mask, gpuconv_emu::to_bits(v),
                                                     sizeof(T), 0, 32, "__match_all_sync", file, line));
    *pred = r != 0;
    return r;
}
// Lanes of the calling warp that have not exited (the emulator does not model divergence within a warp).
unsigned __activemask();

// =============================================================================================================
// Atomics (relaxed, lock-free where the CPU has it; float/double/half through compare-and-swap)
// =============================================================================================================
namespace gpuconv_emu {
template <class T, class F> inline T atomic_update(T* p, F f) {
    using Bits = std::conditional_t<sizeof(T) == 2, unsigned short,
                 std::conditional_t<sizeof(T) == 4, unsigned, unsigned long long>>;
    static_assert(sizeof(T) == sizeof(Bits), "atomics on 2-, 4- and 8-byte types");
    Bits* q = reinterpret_cast<Bits*>(p);
    Bits old = __atomic_load_n(q, __ATOMIC_RELAXED);
    for (;;) {
        const T updated = f(bit_cast<T>(old));
        if (__atomic_compare_exchange_n(q, &old, bit_cast<Bits>(updated), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return bit_cast<T>(old);
    }
}
template <class T> using if_integral = std::enable_if_t<std::is_integral_v<T>, T>;
template <class T> using if_float = std::enable_if_t<std::is_floating_point_v<T> || std::is_same_v<T, __half>
                                                     || std::is_same_v<T, __nv_bfloat16>, T>;
}  // namespace gpuconv_emu

template <class T> inline gpuconv_emu::if_integral<T> atomicAdd(T* p, T v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <class T> inline gpuconv_emu::if_float<T> atomicAdd(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T old) { return T(old + v); });
}
template <class T> inline gpuconv_emu::if_integral<T> atomicSub(T* p, T v) {
    return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED);
}
template <class T> inline T atomicExch(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T) { return v; });
}
template <class T> inline gpuconv_emu::if_integral<T> atomicMax(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T old) { return old < v ? v : old; });
}
template <class T> inline gpuconv_emu::if_integral<T> atomicMin(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T old) { return v < old ? v : old; });
}
// Floating-point max/min (not in every CUDA version): a value replaces the stored one only if strictly
// greater / smaller, so a NaN argument never replaces and a stored NaN is never replaced.
template <class T> inline gpuconv_emu::if_float<T> atomicMax(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T old) { return v > old ? v : old; });
}
template <class T> inline gpuconv_emu::if_float<T> atomicMin(T* p, T v) {
    return gpuconv_emu::atomic_update(p, [v](T old) { return v < old ? v : old; });
}
template <class T> inline T atomicCAS(T* p, T compare, T v) {
    T expected = compare;
    __atomic_compare_exchange(p, &expected, &v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
template <class T> inline gpuconv_emu::if_integral<T> atomicAnd(T* p, T v) {
    return __atomic_fetch_and(p, v, __ATOMIC_RELAXED);
}
template <class T> inline gpuconv_emu::if_integral<T> atomicOr(T* p, T v) {
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
template <class T> inline gpuconv_emu::if_integral<T> atomicXor(T* p, T v) {
    return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED);
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    return gpuconv_emu::atomic_update(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    return gpuconv_emu::atomic_update(p, [limit](unsigned old) { return (old == 0u || old > limit) ? limit : old - 1u; });
}
#define GPUCONV_EMU_SCOPED_ATOMIC(NAME) \
    template <class... A> inline auto NAME##_block(A... a) { return NAME(a...); } \
    template <class... A> inline auto NAME##_system(A... a) { return NAME(a...); }
GPUCONV_EMU_SCOPED_ATOMIC(atomicAdd)
GPUCONV_EMU_SCOPED_ATOMIC(atomicSub)
GPUCONV_EMU_SCOPED_ATOMIC(atomicExch)
GPUCONV_EMU_SCOPED_ATOMIC(atomicMax)
GPUCONV_EMU_SCOPED_ATOMIC(atomicMin)
GPUCONV_EMU_SCOPED_ATOMIC(atomicCAS)
GPUCONV_EMU_SCOPED_ATOMIC(atomicAnd)
GPUCONV_EMU_SCOPED_ATOMIC(atomicOr)
GPUCONV_EMU_SCOPED_ATOMIC(atomicXor)
#undef GPUCONV_EMU_SCOPED_ATOMIC
#undef GPUCONV_EMU_SITE

// =============================================================================================================
// Kernel table: the generated translation unit lists one entry per name expression after the kernels, e.g.
//     GPUCONV_EMU_KERNELS_BEGIN
//     GPUCONV_EMU_KERNEL("max_pool_fwd<float, int>", max_pool_fwd<float, int>)
//     GPUCONV_EMU_KERNELS_END
// Each entry records the parameter sizes and kinds ('p' pointer, 'i' integer, 'f' floating point, 'o' other)
// so that Python checks every argument, and an invoker that unpacks CuPy-style `void** args`.
// =============================================================================================================
namespace gpuconv_emu {
using Invoker = void (*)(void (*)(), void**);
struct KernelInfo {
    const char* name;
    void (*fn)();
    Invoker invoke;
    int nargs;
    const int* sizes;
    const char* kinds;
};
template <class T> constexpr char kind_of() {
    return std::is_pointer_v<T> ? 'p' : std::is_integral_v<T> ? 'i' : std::is_floating_point_v<T> ? 'f' : 'o';
}
template <class... A> struct Signature {
    static constexpr int sizes[] = {static_cast<int>(sizeof(A))..., 0};
    static constexpr char kinds[] = {kind_of<A>()..., '\0'};
    template <std::size_t... I> static void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
        (void)args;
        f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
    static void invoke(void (*fn)(), void** args) {
        call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
    }
};
template <class... A> KernelInfo kernel_info(const char* name, void (*f)(A...)) {
    return KernelInfo{name, reinterpret_cast<void (*)()>(f), &Signature<A...>::invoke, static_cast<int>(sizeof...(A)),
                      Signature<A...>::sizes, Signature<A...>::kinds};
}
}  // namespace gpuconv_emu

extern const gpuconv_emu::KernelInfo gpuconv_emu_kernels[];
extern const int gpuconv_emu_kernel_total;
#define GPUCONV_EMU_KERNELS_BEGIN const gpuconv_emu::KernelInfo gpuconv_emu_kernels[] = {
#define GPUCONV_EMU_KERNEL(name, ...) ::gpuconv_emu::kernel_info(name, &__VA_ARGS__),
#define GPUCONV_EMU_KERNELS_END }; \
    const int gpuconv_emu_kernel_total = static_cast<int>(sizeof(gpuconv_emu_kernels) / sizeof(gpuconv_emu_kernels[0]));
