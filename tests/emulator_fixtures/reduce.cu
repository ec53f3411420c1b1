// Emulator test fixtures: block- and warp-level reductions, NVRTC-clean.
#include "common.cuh"

// out[blockIdx.x] = sum over x[blockIdx.x*blockDim.x + t] for t < blockDim.x (i < n); also atomically added to total.
// Dynamic shared memory: blockDim.x elements of T.
template <typename T>
__global__ void __launch_bounds__(1024) block_sum(const T* __restrict__ x, T* __restrict__ out, T* total, int n) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sm = reinterpret_cast<T*>(smem_raw);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    sm[threadIdx.x] = i < n ? __ldg(x + i) : T(0);
    __syncthreads();
    for (int s = blockDim.x / 2; s >= 32; s >>= 1) {
        if (threadIdx.x < s) sm[threadIdx.x] += sm[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x < 32) {
        T v = sm[threadIdx.x];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (threadIdx.x == 0) {
            out[blockIdx.x] = v;
            atomicAdd(total, v);
        }
    }
}
