// gpuconv device helpers shared by every kernel family: dtype traits and the max-pool scan rule.
// NVRTC-clean: no <cstdint>/<cmath>. Under the emulator (g++), GPUCONV_EMULATOR is defined and the
// compatibility header provides __half, the CUDA built-ins and the intrinsics used here.
#pragma once
#ifndef GPUCONV_EMULATOR
#include <cuda_fp16.h>
#endif

namespace gpuconv {

// ---- accumulation type: float16 accumulates in float32, everything else in itself -------------------------
// Signed integers sum in the unsigned type of the same width: overflow then wraps modulo 2^bits, as NumPy's
// integer sums do, instead of being undefined behaviour (the cast back is modular on every CUDA compiler).
template <typename T> struct Accum { typedef T type; };
template <> struct Accum<__half> { typedef float type; };
template <> struct Accum<signed char> { typedef unsigned char type; };
template <> struct Accum<short> { typedef unsigned short type; };
template <> struct Accum<int> { typedef unsigned int type; };
template <> struct Accum<long long> { typedef unsigned long long type; };

template <typename T> __device__ __forceinline__ typename Accum<T>::type to_accum(T v) { return v; }
template <> __device__ __forceinline__ float to_accum<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_accum(typename Accum<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_accum<__half>(float v) { return __float2half_rn(v); }

// ---- the max-pool scan rule -------------------------------------------------------------------------------
// The first in-bounds cell seeds the maximum; a later cell replaces it only if strictly greater. A NaN
// compares false, so it wins only as the first cell, and ties go to the first cell (TF's CPU rule).
template <typename T> __device__ __forceinline__ bool replaces(T candidate, T current) {
    return candidate > current;
}
template <> __device__ __forceinline__ bool replaces<__half>(__half candidate, __half current) {
    return __half2float(candidate) > __half2float(current);     // a float16 subnormal is a normal float32
}

// float32 compares as integers: CuPy compiles every module with -ftz=true, appended after the caller's options
// (cupy/cuda/compiler.py), under which a float '>' (setp.gt.ftz.f32) takes every subnormal for zero, so a
// larger subnormal would not replace a smaller one. Integer compares never flush. The key of a non-NaN float
// orders like its value: the bits for x >= 0, the magnitude bits flipped for x < 0, and -0 shares +0's key 0.
__device__ __forceinline__ int ordered_key(int bits) {
    return bits >= 0 ? bits : (bits == int(0x80000000u) ? 0 : bits ^ 0x7fffffff);
}
template <> __device__ __forceinline__ bool replaces<float>(float candidate, float current) {
    const int a = __float_as_int(candidate), b = __float_as_int(current);
    const bool nan = (a & 0x7fffffff) > 0x7f800000 || (b & 0x7fffffff) > 0x7f800000;   // NaN compares false
    return !nan && ordered_key(a) > ordered_key(b);
}

}  // namespace gpuconv

// ---- grid-stride loops, pooling-window geometry, index-width atomics (appended by the pooling family) -----
namespace gpuconv {

// First index of this thread in a grid-stride loop over [0, total).
template <typename I> __device__ __forceinline__ I grid_first() {
    return static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x);
}

// i = this thread's element of a one-thread-per-element launch, false past `total`. The global thread id is
// formed and compared in 64 bits before it is narrowed to I: in 32 bits blockIdx.x * blockDim.x + threadIdx.x
// is unsigned and passes INT_MAX on the last block of a grid for total in [2^31 - 255, 2^31 - 1], where a
// narrowing to int turns it negative and it passes an `i >= total` test.
template <typename I> __device__ __forceinline__ bool element_of_thread(I total, I& i) {
    const unsigned long long id = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (id >= static_cast<unsigned long long>(total)) return false;
    i = static_cast<I>(id);
    return true;
}

// Next index of a grid-stride loop, or `total` when the step would pass it. Never overflows I, so a 32-bit
// loop is safe for any total < 2^31 (i + stride could exceed INT_MAX near the end of a large tensor).
template <typename I> __device__ __forceinline__ I grid_step(I i, I total) {
    const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
    return total - i > stride ? i + stride : total;
}

// In-bounds part [lo, hi) of pooling window o along one axis of n cells: the window covers
// [o*s - pb, o*s - pb + k).
template <typename I> __device__ __forceinline__ void window_span(I o, I k, I s, I pb, I n, I& lo, I& hi) {
    const I start = o * s - pb;
    lo = start < 0 ? I(0) : start;
    hi = start + k < n ? start + k : n;
}

// Windows [lo, hi) of the `out` windows along one axis that cover input cell i (0 <= i, 0 <= pb):
// o*s - pb <= i < o*s - pb + k, i.e. ceil((i + pb - k + 1) / s) <= o <= floor((i + pb) / s). At most ceil(k/s).
template <typename I> __device__ __forceinline__ void covering_windows(I i, I k, I s, I pb, I out, I& lo, I& hi) {
    const I first = i + pb - k + 1;
    lo = first <= 0 ? I(0) : (first + s - 1) / s;
    const I last = (i + pb) / s + 1;
    hi = last < out ? last : out;
}

// Integer atomic add on a 32- or 64-bit signed index (returns the old value). Integer atomics commute, so
// results built from them are deterministic; float atomics are never used for sums.
__device__ __forceinline__ int atomic_add_index(int* p, int v) { return atomicAdd(p, v); }
__device__ __forceinline__ long long atomic_add_index(long long* p, long long v) {
    return static_cast<long long>(atomicAdd(reinterpret_cast<unsigned long long*>(p),
                                            static_cast<unsigned long long>(v)));
}

}  // namespace gpuconv

// ---- lane vectors: VEC consecutive elements moved as 64/128-bit accesses (appended by the pooling family) ---
// load_lanes / store_lanes move VEC consecutive elements of one tensor. VEC = 1 is a plain scalar access.
// VEC > 1 needs VEC * sizeof(T) to be a multiple of 4 bytes and p aligned to min(16, VEC * sizeof(T)) bytes:
// the bytes move as 16-byte (uint4), 8-byte (uint2) or 4-byte chunks, loads through the read-only path (__ldg;
// the emulator faults a misaligned __ldg / __stwb like the GPU does). Lanes are unpacked from the 32-bit words
// by shifts and bit casts (little-endian, as on the GPU and x86): exact for every dtype, no type punning.
namespace gpuconv {

// An element's bits as the unsigned integer of its width, and back.
template <typename T> struct LaneBits;
template <> struct LaneBits<float> {
    typedef unsigned int U;
    static __device__ __forceinline__ U to(float v) { return __float_as_uint(v); }
    static __device__ __forceinline__ float from(U u) { return __uint_as_float(u); }
};
template <> struct LaneBits<double> {
    typedef unsigned long long U;
    static __device__ __forceinline__ U to(double v) { return static_cast<U>(__double_as_longlong(v)); }
    static __device__ __forceinline__ double from(U u) { return __longlong_as_double(static_cast<long long>(u)); }
};
template <> struct LaneBits<__half> {
    typedef unsigned short U;
    static __device__ __forceinline__ U to(__half v) { return __half_as_ushort(v); }
    static __device__ __forceinline__ __half from(U u) { return __ushort_as_half(u); }
};
// Integers: the conversions between a signed type and its unsigned twin are modular (bits unchanged).
template <typename T, typename Unsigned> struct IntLaneBits {
    typedef Unsigned U;
    static __device__ __forceinline__ U to(T v) { return static_cast<U>(v); }
    static __device__ __forceinline__ T from(U u) { return static_cast<T>(u); }
};
template <> struct LaneBits<signed char> : IntLaneBits<signed char, unsigned char> {};
template <> struct LaneBits<unsigned char> : IntLaneBits<unsigned char, unsigned char> {};
template <> struct LaneBits<short> : IntLaneBits<short, unsigned short> {};
template <> struct LaneBits<unsigned short> : IntLaneBits<unsigned short, unsigned short> {};
template <> struct LaneBits<int> : IntLaneBits<int, unsigned int> {};
template <> struct LaneBits<long long> : IntLaneBits<long long, unsigned long long> {};

// NW 32-bit words at p (aligned to min(16, 4*NW) bytes): 16 bytes per __ldg where possible.
template <int NW> __device__ __forceinline__ void ldg_words(const unsigned int* p, unsigned int (&w)[NW]) {
    if constexpr (NW % 4 == 0) {
#pragma unroll
        for (int k = 0; k < NW; k += 4) {
            const uint4 t = __ldg(reinterpret_cast<const uint4*>(p + k));
            w[k] = t.x; w[k + 1] = t.y; w[k + 2] = t.z; w[k + 3] = t.w;
        }
    } else if constexpr (NW == 2) {
        const uint2 t = __ldg(reinterpret_cast<const uint2*>(p));
        w[0] = t.x; w[1] = t.y;
    } else {
        static_assert(NW == 1, "lane vectors are 4, 8 or a multiple of 16 bytes");
        w[0] = __ldg(p);
    }
}

template <int NW> __device__ __forceinline__ void stwb_words(unsigned int* p, const unsigned int (&w)[NW]) {
    if constexpr (NW % 4 == 0) {
#pragma unroll
        for (int k = 0; k < NW; k += 4) {
            __stwb(reinterpret_cast<uint4*>(p + k), make_uint4(w[k], w[k + 1], w[k + 2], w[k + 3]));
        }
    } else if constexpr (NW == 2) {
        __stwb(reinterpret_cast<uint2*>(p), make_uint2(w[0], w[1]));
    } else {
        static_assert(NW == 1, "lane vectors are 4, 8 or a multiple of 16 bytes");
        __stwb(p, w[0]);
    }
}

// v[k] = p[k], k < VEC.
template <int VEC, typename T> __device__ __forceinline__ void load_lanes(const T* p, T (&v)[VEC]) {
    if constexpr (VEC == 1) {
        v[0] = *p;
    } else {
        static_assert(VEC * sizeof(T) % 4 == 0, "lane vectors are whole 32-bit words");
        typedef typename LaneBits<T>::U U;
        constexpr int NW = VEC * sizeof(T) / 4;
        unsigned int w[NW];
        ldg_words<NW>(reinterpret_cast<const unsigned int*>(p), w);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            U u;
            if constexpr (sizeof(T) == 8) {
                u = static_cast<U>(w[2 * k]) | (static_cast<U>(w[2 * k + 1]) << 32);
            } else if constexpr (sizeof(T) == 4) {
                u = static_cast<U>(w[k]);
            } else {
                constexpr int per_word = 4 / sizeof(T);
                u = static_cast<U>(w[k / per_word] >> (8 * sizeof(T) * (k % per_word)));
            }
            v[k] = LaneBits<T>::from(u);
        }
    }
}

// p[k] = v[k], k < VEC.
template <int VEC, typename T> __device__ __forceinline__ void store_lanes(T* p, const T (&v)[VEC]) {
    if constexpr (VEC == 1) {
        *p = v[0];
    } else {
        static_assert(VEC * sizeof(T) % 4 == 0, "lane vectors are whole 32-bit words");
        constexpr int NW = VEC * sizeof(T) / 4;
        unsigned int w[NW];
#pragma unroll
        for (int k = 0; k < NW; ++k) w[k] = 0u;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const auto u = LaneBits<T>::to(v[k]);
            if constexpr (sizeof(T) == 8) {
                w[2 * k] = static_cast<unsigned int>(u);
                w[2 * k + 1] = static_cast<unsigned int>(static_cast<unsigned long long>(u) >> 32);
            } else if constexpr (sizeof(T) == 4) {
                w[k] = static_cast<unsigned int>(u);
            } else {
                constexpr int per_word = 4 / sizeof(T);
                w[k / per_word] |= static_cast<unsigned int>(u) << (8 * sizeof(T) * (k % per_word));
            }
        }
        stwb_words<NW>(reinterpret_cast<unsigned int*>(p), w);
    }
}

}  // namespace gpuconv
