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
    return __half2float(candidate) > __half2float(current);
}

}  // namespace gpuconv

// ---- grid-stride loops, pooling-window geometry, index-width atomics (appended by the pooling family) -----
namespace gpuconv {

// First index of this thread in a grid-stride loop over [0, total).
template <typename I> __device__ __forceinline__ I grid_first() {
    return static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x);
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
