// Emulator test fixtures: warp-level operations. One launch of warp_ops fills out[k * T + t] for every thread t
// (T = threads in the grid) with the k-th operation's result; the test recomputes each from CUDA's definitions.
#define WARP_OPS 13

__global__ void warp_ops(const int* x, int* out, int width, unsigned delta) {
    const int T = gridDim.x * blockDim.x;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    const unsigned full = 0xffffffffu;
    const int v = x[t];
    out[0 * T + t] = __shfl_sync(full, v, (lane * 7 + 3) % 37, width);
    out[1 * T + t] = __shfl_up_sync(full, v, delta, width);
    out[2 * T + t] = __shfl_down_sync(full, v, delta, width);
    out[3 * T + t] = __shfl_xor_sync(full, v, (int)delta, width);
    out[4 * T + t] = (int)__ballot_sync(full, v & 1);
    out[5 * T + t] = __any_sync(full, v > 90);
    out[6 * T + t] = __all_sync(full, v >= 0);
    out[7 * T + t] = __reduce_add_sync(full, v);
    out[8 * T + t] = (int)__activemask();
    out[9 * T + t] = (int)__match_any_sync(full, v % 4);
    // a float butterfly reduction: every lane ends with the warp's sum
    float s = (float)v;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(full, s, off);
    out[10 * T + t] = (int)s;
    // exchange through shared memory ordered by __syncwarp
    __shared__ int stage[64];
    stage[threadIdx.x] = v;
    __syncwarp();
    out[11 * T + t] = stage[(threadIdx.x & ~31) + (lane + 1) % 32];
    // half-warp shuffle: lanes 0..15 only; lane 15 reads lane 16, which is not in the mask (undefined on the GPU,
    // the emulator's poison pattern)
    out[12 * T + t] = 0;
    if (lane < 16) out[12 * T + t] = __shfl_down_sync(0x0000ffffu, v, 1);
}

// A warp shuffle that waits for lanes that are at a block barrier: a deadlock on the GPU.
__global__ void shuffle_across_barrier(int* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    }
    __syncthreads();
}

// Lanes of one warp reach warp operations with different masks.
__global__ void mismatched_masks(int* out) {
    const unsigned mask = threadIdx.x == 0 ? 0xffffffffu : 0x0000ffffu;
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(mask, (int)threadIdx.x, 1);
}
