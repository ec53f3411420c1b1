// Compile-gate fixture: well-behaved kernels (tests/test_compile_gate.py, tests/test_cuda_executor.py).
#include "common.cuh"

// y[i] = a * x[i] + y[i], staged through a static shared tile so the gate has static smem to report.
template <typename T, int TILE>
__global__ void __launch_bounds__(TILE) gate_axpy(const T* __restrict__ x, T* __restrict__ y, float a, int n) {
    __shared__ float tile[TILE];
    const int i = blockIdx.x * TILE + threadIdx.x;
    tile[threadIdx.x] = i < n ? gpuconv::to_accum(x[i]) : 0.0f;
    __syncthreads();
    if (i < n) y[i] = gpuconv::from_accum<T>(a * tile[threadIdx.x] + gpuconv::to_accum(y[i]));
}

// y[i] = x[n - 1 - i] within each block, through dynamic shared memory (no __launch_bounds__).
template <typename T>
__global__ void gate_reverse_block(const T* __restrict__ x, T* __restrict__ y, int n) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* buf = reinterpret_cast<T*>(smem_raw);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    const int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (j < n) y[j] = buf[threadIdx.x];
}
