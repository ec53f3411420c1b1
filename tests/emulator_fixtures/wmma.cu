// Emulator test fixtures: the WMMA subset of kernels/conv_common.cuh (the emulator's model of nvcuda::wmma).
// One warp computes y = a @ b for 16x16 half matrices: operands staged in shared memory, one mma_sync, the
// float tile stored to shared memory and copied out by all lanes. On the GPU a fragment is spread over the
// warp's lanes, so the copy-out must wait for every lane's share of the store (__syncwarp).
// The TF32 subset: y = a @ b for a 16x8 and an 8x16 float matrix on 16x16x8 tf32 fragments, with or without
// __float_to_tf32 on every fragment element, and __float_to_tf32 itself.
#include "conv_common.cuh"
#ifndef GPUCONV_EMULATOR
#include <mma.h>
#endif

template <bool kSynced>
__device__ void tile_product(const __half* a, const __half* b, float* y) {
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(32) __half sa[256];
    __shared__ __align__(32) __half sb[256];
    __shared__ __align__(32) float tile[256];
    const int lane = threadIdx.x;
    for (int e = lane; e < 256; e += 32) {
        sa[e] = a[e];
        sb[e] = b[e];
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, sb, 16);
    wmma::fill_fragment(acc, 0.0f);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
    if (kSynced) __syncwarp();
    for (int e = lane; e < 256; e += 32) y[e] = tile[e];
}

__global__ void wmma_synced(const __half* a, const __half* b, float* y) { tile_product<true>(a, b, y); }

// The same without the __syncwarp between the store and the copy-out.
__global__ void wmma_missing_syncwarp(const __half* a, const __half* b, float* y) { tile_product<false>(a, b, y); }

// TF32: kRound puts every fragment element through __float_to_tf32 first, as a kernel must; without it the
// tensor cores (and the model) read only each float's TF32 bits.
template <bool kRound>
__device__ void tf32_tile_product(const float* a, const float* b, float* y) {
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(32) float sa[128];
    __shared__ __align__(32) float sb[128];
    __shared__ __align__(32) float tile[256];
    const int lane = threadIdx.x;
    for (int e = lane; e < 128; e += 32) {
        sa[e] = a[e];
        sb[e] = b[e];
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::load_matrix_sync(fa, sa, 8);
    wmma::load_matrix_sync(fb, sb, 16);
    if (kRound) {
        for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
        for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
    }
    wmma::fill_fragment(acc, 0.0f);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) y[e] = tile[e];
}

__global__ void wmma_tf32_rounded(const float* a, const float* b, float* y) { tf32_tile_product<true>(a, b, y); }
__global__ void wmma_tf32_raw(const float* a, const float* b, float* y) { tf32_tile_product<false>(a, b, y); }

// y[i] = __float_to_tf32(x[i]) for i < n (one warp).
__global__ void float_to_tf32(const float* x, float* y, int n) {
    for (int i = threadIdx.x; i < n; i += 32) y[i] = nvcuda::wmma::__float_to_tf32(x[i]);
}
