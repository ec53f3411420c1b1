// gpuconv device helpers shared by every kernel family: dtype traits and the max-pool scan rule.
// NVRTC-clean: no <cstdint>/<cmath>. Under the emulator (g++), GPUCONV_EMULATOR is defined and the
// compatibility header provides __half, the CUDA built-ins and the intrinsics used here.
#pragma once
#ifndef GPUCONV_EMULATOR
#include <cuda_fp16.h>
#endif

namespace gpuconv {

// ---- accumulation type: float16 accumulates in float32, everything else in itself -------------------------
template <typename T> struct Accum { typedef T type; };
template <> struct Accum<__half> { typedef float type; };

template <typename T> __device__ __forceinline__ typename Accum<T>::type to_accum(T v) { return v; }
template <> __device__ __forceinline__ float to_accum<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_accum(typename Accum<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_accum<__half>(float v) { return __float2half_rn(v); }

// ---- the max-pool scan rule -------------------------------------------------------------------------------
// The first in-bounds cell seeds the maximum; a later cell replaces it only if strictly greater. A NaN
// compares false, so it wins only as the first cell, and ties go to the first cell (TF's CPU rule).
template <typename T> __device__ __forceinline__ bool replaces(T candidate, T current) {
    return to_accum(candidate) > to_accum(current);
}

}  // namespace gpuconv
