// Emulator test fixtures: barrier-free element-wise kernels (also used to measure emulated threads/second).
#include "common.cuh"

// y[i] = a * x[i] + y[i] for i < n (grid-stride loop).
template <typename T>
__global__ void axpy(const T* __restrict__ x, T* __restrict__ y, T a, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = a * x[i] + y[i];
}

// y[i] = float(x[i]) * s in float32, stored as T (exercises __half conversions through common.cuh).
template <typename T>
__global__ void scale_accum(const T* __restrict__ x, T* __restrict__ y, float s, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = gpuconv::from_accum<T>(gpuconv::to_accum(x[i]) * s);
}

// 128-bit loads and stores: y4[i] = x4[i] * 2 for i < n4, through float4 (x and y must be 16-byte aligned).
__global__ void double_float4(const float* __restrict__ x, float* __restrict__ y, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
    v.x *= 2.0f; v.y *= 2.0f; v.z *= 2.0f; v.w *= 2.0f;
    reinterpret_cast<float4*>(y)[i] = v;
}

// out[0] += x, out[1] = max, out[2] = min, out[3] = some x (exchange), over x[0..n) with atomics.
template <typename T>
__global__ void atomic_mix(const T* __restrict__ x, T* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(out + 0, x[i]);
    atomicMax(out + 1, x[i]);
    atomicMin(out + 2, x[i]);
    atomicExch(out + 3, x[i]);
}

// out[0] += x[i] through an atomicCAS loop.
template <typename T>
__global__ void cas_sum(const T* __restrict__ x, T* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T old = out[0], assumed;
    do {
        assumed = old;
        old = atomicCAS(out, assumed, assumed + x[i]);
    } while (old != assumed);
}

// Round trips through __half and __nv_bfloat16 (round to nearest even) and __hadd/__hmul/__hmax.
__global__ void round_trip_16(const float* x, float* h, float* b, float* hops, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half hx = __float2half_rn(x[i]);
    h[i] = __half2float(hx);
    b[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
    const __half one = __float2half(1.0f);
    hops[3 * i + 0] = __half2float(__hadd(hx, one));
    hops[3 * i + 1] = __half2float(__hmul(hx, hx));
    hops[3 * i + 2] = __half2float(__hmax(hx, one));
}

// Every thread writes its coordinates: out[g * 12 + k], g = the global linear thread id in CUDA's x-fastest order.
__global__ void thread_coords(int* out) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
    o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

// printf from device code (goes to the process's stdout under the emulator).
__global__ void hello(int n) {
    if ((int)threadIdx.x < n) printf("hello from thread %d of block %d\n", (int)threadIdx.x, (int)blockIdx.x);
}
