// Emulator test fixtures with planted bugs that the emulator must expose. NVRTC-clean.

// y[i] = x[(i + 1) % blockDim.x] through shared memory, with the barrier between write and read missing.
__global__ void rotate_missing_sync(const float* x, float* y) {
    __shared__ float tile[256];
    tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    // (a __syncthreads() belongs here)
    y[blockIdx.x * blockDim.x + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// The same with the barrier: correct under every order.
__global__ void rotate_synced(const float* x, float* y) {
    __shared__ float tile[256];
    tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// Threads i >= n return before a barrier the others wait at.
__global__ void early_exit_before_barrier(float* y, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    __syncthreads();
    y[i] = 1.0f;
}

// Writes one element past the dynamic shared memory the launch provides (blockDim.x floats).
__global__ void smem_overrun(const float* x, float* y) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* sm = reinterpret_cast<float*>(smem_raw);
    sm[threadIdx.x + 1] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = sm[threadIdx.x];
}

// Reads one element past the end of x.
__global__ void global_overrun(const float* x, float* y, int n) {
    const int i = threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}

// A warp shuffle whose mask names a lane that has exited.
__global__ void shuffle_after_exit(float* y) {
    if (threadIdx.x == 5) return;
    y[threadIdx.x] = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 1);
}
