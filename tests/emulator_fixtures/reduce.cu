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

// out[3*b + 0..2] = __syncthreads_count / _and / _or of (x[t] > 0) over block b (threads of the block index x by
// threadIdx.x).
__global__ void barrier_votes(const int* x, int* out) {
    const int pred = x[blockIdx.x * blockDim.x + threadIdx.x] > 0;
    const int count = __syncthreads_count(pred);
    const int all = __syncthreads_and(pred);
    const int any = __syncthreads_or(pred);
    if (threadIdx.x == 0) {
        out[3 * blockIdx.x + 0] = count;
        out[3 * blockIdx.x + 1] = all;
        out[3 * blockIdx.x + 2] = any;
    }
}

// Each block reads static and dynamic shared memory before writing it (out_* = what it found), then dirties it.
// Under the emulator every block must find the poison pattern (0xFF bytes), never a previous block's values.
__global__ void read_uninitialized(int* out_static, float* out_dynamic) {
    __shared__ int tile[64];
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* dyn = reinterpret_cast<float*>(smem_raw);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out_static[i] = tile[threadIdx.x];
    out_dynamic[i] = dyn[threadIdx.x];
    __syncthreads();
    tile[threadIdx.x] = i;
    dyn[threadIdx.x] = 1.0f;
}

// ticket[0][t], ticket[1][t]: the order in which threads ran before and after a barrier (one block).
__global__ void arrival_order(int* ticket, int* counter) {
    ticket[threadIdx.x] = atomicAdd(counter, 1);
    __syncthreads();
    ticket[blockDim.x + threadIdx.x] = atomicAdd(counter, 1);
}
