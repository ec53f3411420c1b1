// gpuconv conv_fprop family: forward convolution (TF's conv2d / conv3d) on canonical channels-last tensors.
//
//   y[n,z,p,q,k] = sum_{t,r,s,c} x[n, z*sd + t*dd - pd, p*sh + r*dh - ph, q*sw + s*dw - pw, g*Cg + c]
//                                * w[t, r, s, c, k]              g = k / Kg, zero outside x
//
// Two variants, both templated on the element type (float, double, __half with float accumulation) and the
// index type (int, or long long when some tensor has >= 2^31 elements):
//   conv_fprop_analytic   one thread per output element; always correct, any problem.
//   conv_fprop_tiled      implicit GEMM (no im2col buffer): block tile in shared memory, per-thread register
//                         tile, double-buffered global -> register -> shared loads, predicated borders and
//                         partial tiles, optional vector loads along the channels.
//   conv_fprop_tensorop   the same implicit GEMM on tensor cores (WMMA, float accumulation): float16, and
//                         float32 as TF32 or 3xTF32 when the caller opts in (gpuconv.float32_precision).
// tiled and tensorop take a flag set by conv_nonfinite_flag (conv_common.cuh) over w (TF32: over x too): when
// it holds inf or NaN they compute their tiles with the analytic kernel's fprop_output instead, so a padding tap
// never multiplies (0 * inf would be NaN; DESIGN.md §2: out-of-bounds taps are absent).
// analytic and tiled sum the GEMM-k terms in the same order (filter tap (t, r, s) outer, channel c inner)
// with one fused multiply-add per term, so on finite inputs they give bit-identical results; tensorop sums
// in the tensor cores' order (float accumulators: float16 within float rounding of the others; TF32 and 3xTF32
// within their operand rounding, see TensorOpMath).
// Launch plans: gpuconv/plans/conv_fprop.py.
#include "conv_common.cuh"

namespace gpuconv {

// =========================================================================================================
// conv_fprop_analytic
// =========================================================================================================
// One output element: y[n, z, p, q, k] = fprop_output(prob, x, w, o, k) with o the corner of its input
// window (fprop_window_origin). Taps whose cell lies outside x are skipped: absent, never multiplied.
//   y[n,z,p,q,k] = sum_{t,r,s} [cell in x] sum_{c < Cg} x[n, d, h, w, g*Cg + c] * w[t, r, s, c, k]
//   d = z*sd - pd + t*dd, h = p*sh - ph + r*dh, w = q*sw - pw + s*dw, g = k / Kg.
// Shared by conv_fprop_analytic and the non-finite fallback of conv_fprop_tiled / conv_fprop_tensorop.
template <typename Element, typename Index>
__device__ __forceinline__ typename Accum<Element>::type fprop_output(const ConvProblemSize<Index>& prob,
                                                                      const Element* __restrict__ x,
                                                                      const Element* __restrict__ w,
                                                                      const WindowOrigin& o, int k) {
    typedef typename Accum<Element>::type Acc;
    const int g = k / prob.group_k;
    const Element* x_image = x + Index(o.n) * prob.x_image_stride() + Index(g) * prob.group_c;
    const Index filter_tap_stride = Index(prob.group_c) * prob.K;  // w elements per filter tap

    // ---- filter taps, then channels ----------------------------------------------------------------------
    Acc acc = Acc(0);
    for (int t = 0; t < prob.T; ++t) {
        const int d = o.d + t * prob.dilation_d;
        for (int r = 0; r < prob.R; ++r) {
            const int h = o.h + r * prob.dilation_h;
            for (int s = 0; s < prob.S; ++s) {
                const int wc = o.w + s * prob.dilation_w;
                if (!in_bounds(prob, d, h, wc)) continue;
                const Element* xp = x_image + ((Index(d) * prob.H + h) * prob.W + wc) * prob.C;
                const Element* wp = w + Index((t * prob.R + r) * prob.S + s) * filter_tap_stride + k;
                for (int c = 0; c < prob.group_c; ++c)
                    acc = mac(to_accum(__ldg(xp + c)), to_accum(__ldg(wp + Index(c) * prob.K)), acc);
            }
        }
    }
    return acc;
}

// One thread per output element y[n, z, p, q, k]. Output row = (n*Z + z)*P + p, one per block row:
// row = blockIdx.z * gridDim.y + blockIdx.y (< N*Z*P); element j = q*K + k of the row = blockIdx.x * 256 +
// threadIdx.x (< Q*K). Every index division is 32-bit (a 64-bit division is a called subroutine); only the
// offsets use Index. The min-blocks hint 4 (<= 64 registers) matters: without one, NVRTC 13.5's ptxas
// targeted 32 registers on sm_80 and spilled. The sum is fprop_output's.
// Consecutive threads take consecutive k: coalesced filter reads and output writes; the input cell is a
// warp-wide broadcast.
template <typename Element, typename Index>
__global__ void __launch_bounds__(256, 4) conv_fprop_analytic(const Element* __restrict__ x,
                                                           const Element* __restrict__ w,
                                                           Element* __restrict__ y,
                                                           GPUCONV_CONV_PROBLEM_PARAMS(Index)) {
    const ConvProblemSize<Index> prob(GPUCONV_CONV_PROBLEM_ARGS);

    // ---- setup: output coordinates and window origin ---------------------------------------------------
    // Compared unsigned, then narrowed: the grid's last rows and elements can pass INT_MAX (row < 65535^2,
    // j < Q*K + 256), where an int would wrap negative and pass the bounds test. N*Z*P and Q*K fit in int.
    const unsigned row_u = blockIdx.z * gridDim.y + blockIdx.y;
    const unsigned j_u = blockIdx.x * blockDim.x + threadIdx.x;
    if (row_u >= unsigned(prob.N * prob.Z * prob.P) || j_u >= unsigned(prob.Q * prob.K)) return;
    const int row = int(row_u), j = int(j_u);
    const int k = j % prob.K, q = j / prob.K;
    const int pp = row % prob.P, z = (row / prob.P) % prob.Z, n = row / (prob.P * prob.Z);
    WindowOrigin o;
    o.n = n;
    o.d = z * prob.stride_d - prob.pad_d;
    o.h = pp * prob.stride_h - prob.pad_h;
    o.w = q * prob.stride_w - prob.pad_w;

    // ---- sum and epilogue ------------------------------------------------------------------------------
    y[Index(row) * (Index(prob.Q) * prob.K) + j] = from_accum<Element>(fprop_output(prob, x, w, o, k));
}

// Non-finite fallback of the implicit-GEMM kernels (conv_common.cuh): the BM x BN block tile (m0, n0) of
// group g computed element by element with fprop_output, consecutive threads on consecutive output channels.
template <typename Element, typename Index, int BM, int BN, int kThreads>
__device__ __forceinline__ void fprop_tile_by_formula(const ConvProblemSize<Index>& prob,
                                                      const Element* __restrict__ x,
                                                      const Element* __restrict__ w, Element* __restrict__ y,
                                                      Index m0, int n0, int g) {
    const Index gemm_m = prob.fprop_gemm_m();
    const int gemm_n = prob.fprop_gemm_n();
    for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
        const Index m = m0 + e / BN;
        const int n = n0 + e % BN;
        if (m >= gemm_m || n >= gemm_n) continue;
        const int k = g * gemm_n + n;
        y[m * prob.K + k] = from_accum<Element>(fprop_output(prob, x, w, fprop_window_origin(prob, m), k));
    }
}

// =========================================================================================================
// conv_fprop_tiled: tile iterators
// =========================================================================================================

// Activation (gemm A) tile iterator: the BM x BK slice of the implicit im2col matrix
//   A[m][kk] = x[n, d0 + t*dd, h0 + r*dh, w0 + s*dw, g*Cg + c],   kk = ((t*R + r)*S + s)*Cg + c
// loaded V channels at a time. Each thread owns fixed tile rows (its output pixels, decomposed once here)
// and one fixed column kcol; per k-tile it only advances its (t, r, s, c) by BK, without divisions.
// Rows past gemm_m carry kInvalidCoord, columns past gemm_k have t >= T: both load zeros.
template <typename Element, typename Index, int BM, int BK, int V, int kThreads>
struct FpropActivationTileIterator {
    static constexpr int kThreadsPerRow = BK / V;
    static constexpr int kRowsPerPass = kThreads / kThreadsPerRow;
    static constexpr int kIterations = (BM + kRowsPerPass - 1) / kRowsPerPass;
    static_assert(BK % V == 0 && kThreads % kThreadsPerRow == 0, "activation tile does not divide");

    int row_d[kIterations], row_h[kIterations], row_w[kIterations];
    Index row_offset[kIterations];  // image n, channel g*Cg: n*D*H*W*C + g*Cg (an offset: 1 register for int)
    const Element* x;
    int c, s, r, t;                       // this thread's column kk = k0 + kcol, decomposed
    int kcol;

    __device__ __forceinline__ FpropActivationTileIterator(const ConvProblemSize<Index>& p, const Element* x,
                                                          Index m0, int g, int tid)
        : x(x) {
        kcol = (tid % kThreadsPerRow) * V;
        const Index gemm_m = p.fprop_gemm_m();
#pragma unroll
        for (int i = 0; i < kIterations; ++i) {
            const int row = tid / kThreadsPerRow + i * kRowsPerPass;
            const Index m = m0 + row;
            row_offset[i] = 0;
            row_d[i] = row_h[i] = row_w[i] = kInvalidCoord;
            if (row < BM && m < gemm_m) {
                const WindowOrigin o = fprop_window_origin(p, m);
                row_d[i] = o.d;
                row_h[i] = o.h;
                row_w[i] = o.w;
                row_offset[i] = Index(o.n) * p.x_image_stride() + Index(g) * p.group_c;
            }
        }
        c = kcol;
        s = r = t = 0;
        normalize(p);
    }

    // Carry channel overflow into the filter tap (several taps per step when Cg < BK).
    __device__ __forceinline__ void normalize(const ConvProblemSize<Index>& p) {
        while (c >= p.group_c) {
            c -= p.group_c;
            if (++s == p.S) {
                s = 0;
                if (++r == p.R) {
                    r = 0;
                    ++t;
                }
            }
        }
    }

    __device__ __forceinline__ void advance(const ConvProblemSize<Index>& p) {
        c += BK;
        normalize(p);
    }

    // Global -> registers, zero fill for padding, rows past gemm_m and columns past gemm_k.
    __device__ __forceinline__ void load(const ConvProblemSize<Index>& p, Element (&frag)[kIterations][V]) const {
        const int dd = t * p.dilation_d, dh = r * p.dilation_h, dw = s * p.dilation_w;
#pragma unroll
        for (int i = 0; i < kIterations; ++i) {
            const int d = row_d[i] + dd, h = row_h[i] + dh, w = row_w[i] + dw;
            if (t < p.T && in_bounds(p, d, h, w)) {
                Vec<Element, V>::load(x + row_offset[i] + ((Index(d) * p.H + h) * p.W + w) * p.C + c, frag[i]);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) frag[i][v] = zero_element<Element>();
            }
        }
    }

    // Registers -> shared memory: tile element (m, kk) at smem[m*kStrideM + kk*kStrideK], either k-major
    // (kStrideM = 1: smem[kk][m], SIMT tiles, a transposing store) or row-major (kStrideK = 1: smem[m][kk],
    // tensor-op tiles).
    template <int kStrideM, int kStrideK, typename S>
    __device__ __forceinline__ void store(S* smem, const Element (&frag)[kIterations][V], int tid) const {
#pragma unroll
        for (int i = 0; i < kIterations; ++i) {
            const int row = tid / kThreadsPerRow + i * kRowsPerPass;
            if (row < BM) {
#pragma unroll
                for (int v = 0; v < V; ++v)
                    smem[row * kStrideM + (kcol + v) * kStrideK] = SmemCast<S>::apply(frag[i][v]);
            }
        }
    }
};

// Filter (gemm B) tile iterator: the BK x BN slice of B[kk][n] = w[kk*K + g*Kg + n] (w's rows are already in
// gemm-k order), loaded V output channels at a time; rows past gemm_k and columns past Kg load zeros.
template <typename Element, typename Index, int BN, int BK, int V, int kThreads>
struct FpropFilterTileIterator {
    static constexpr int kThreadsPerRow = BN / V;
    static constexpr int kRowsPerPass = kThreads / kThreadsPerRow;
    static constexpr int kIterations = (BK + kRowsPerPass - 1) / kRowsPerPass;
    static_assert(BN % V == 0 && kThreads % kThreadsPerRow == 0, "filter tile does not divide");

    const Element* ptr;  // w[(k0 + krow)*K + g*Kg + n0 + ncol]
    int krow, ncol, k_next;
    bool col_valid;

    __device__ __forceinline__ FpropFilterTileIterator(const ConvProblemSize<Index>& p, const Element* w, int n0,
                                                      int g, int tid) {
        krow = tid / kThreadsPerRow;
        ncol = (tid % kThreadsPerRow) * V;
        k_next = krow;
        col_valid = n0 + ncol < p.group_k;  // V divides Kg on the vector path: all V or none
        ptr = w + Index(krow) * p.K + Index(g) * p.group_k + n0 + ncol;
    }

    __device__ __forceinline__ void advance(const ConvProblemSize<Index>& p) {
        ptr += Index(BK) * p.K;
        k_next += BK;
    }

    __device__ __forceinline__ void load(const ConvProblemSize<Index>& p, Element (&frag)[kIterations][V]) const {
        const int gemm_k = p.fprop_gemm_k();
#pragma unroll
        for (int i = 0; i < kIterations; ++i) {
            const int row = krow + i * kRowsPerPass;
            if (row < BK && col_valid && k_next + i * kRowsPerPass < gemm_k) {
                Vec<Element, V>::load(ptr + Index(i * kRowsPerPass) * p.K, frag[i]);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) frag[i][v] = zero_element<Element>();
            }
        }
    }

    // Registers -> shared memory smem[kk][n] (row stride kStride).
    template <int kStride, typename S>
    __device__ __forceinline__ void store(S* smem, const Element (&frag)[kIterations][V]) const {
#pragma unroll
        for (int i = 0; i < kIterations; ++i) {
            const int row = krow + i * kRowsPerPass;
            if (row < BK) {
#pragma unroll
                for (int v = 0; v < V; ++v) smem[row * kStride + ncol + v] = SmemCast<S>::apply(frag[i][v]);
            }
        }
    }
};

// The block tile of one block of the fprop implicit GEMM: group g = blockIdx.y; blockIdx.x = tile_m * tiles_n +
// tile_n (consecutive blocks share an activation tile, so it is read from DRAM once and from L2 by the others).
template <typename Index, int BM, int BN>
struct FpropBlockTile {
    Index m0;  // first GEMM row (output pixel)
    int n0;    // first GEMM column (output channel of the group)
    int g;

    __device__ __forceinline__ explicit FpropBlockTile(const ConvProblemSize<Index>& p) {
        const int tiles_n = (p.fprop_gemm_n() + BN - 1) / BN;
        m0 = Index(blockIdx.x / tiles_n) * BM;
        n0 = int(blockIdx.x % tiles_n) * BN;
        g = blockIdx.y;
    }
};

// The global -> registers -> shared path of both operands, for pipelined_main_loop (conv_common.cuh): the two
// tile iterators and the register fragments a k-tile travels through. The SIMT and tensor-op kernels differ
// only in the shared layout of A (kStrideAM, kStrideAK of FpropActivationTileIterator::store).
template <typename Element, typename Index, int BM, int BN, int BK, int V, int kThreads>
struct FpropTileLoader {
    typedef FpropActivationTileIterator<Element, Index, BM, BK, V, kThreads> IteratorA;
    typedef FpropFilterTileIterator<Element, Index, BN, BK, V, kThreads> IteratorB;

    IteratorA iter_a;
    IteratorB iter_b;
    Element frag_a[IteratorA::kIterations][V];
    Element frag_b[IteratorB::kIterations][V];

    __device__ __forceinline__ FpropTileLoader(const ConvProblemSize<Index>& p, const Element* x, const Element* w,
                                               const FpropBlockTile<Index, BM, BN>& block, int tid)
        : iter_a(p, x, block.m0, block.g, tid), iter_b(p, w, block.n0, block.g, tid) {}

    // k-tile 0, global -> registers.
    __device__ __forceinline__ void load(const ConvProblemSize<Index>& p) {
        iter_a.load(p, frag_a);
        iter_b.load(p, frag_b);
    }

    // The next k-tile, global -> registers.
    __device__ __forceinline__ void advance_and_load(const ConvProblemSize<Index>& p) {
        iter_a.advance(p);
        iter_b.advance(p);
        iter_a.load(p, frag_a);
        iter_b.load(p, frag_b);
    }

    // Registers -> one shared-memory stage: A at sa[m*kStrideAM + kk*kStrideAK], B at sb[kk*kStrideB + n].
    template <int kStrideAM, int kStrideAK, int kStrideB, typename S>
    __device__ __forceinline__ void store(S* sa, S* sb, int tid) const {
        iter_a.template store<kStrideAM, kStrideAK>(sa, frag_a, tid);
        iter_b.template store<kStrideB>(sb, frag_b);
    }
};

// =========================================================================================================
// conv_fprop_tiled
// =========================================================================================================
// Implicit GEMM of group g = blockIdx.y:  Y[m][n] = sum_kk A[m][kk] * B[kk][n]
//   gemm_m = N*Z*P*Q, gemm_n = Kg, gemm_k = T*R*S*Cg;  y[m*K + g*Kg + n] = Y[m][n]
// Block tile BM x BN, k-tile BK; blockIdx.x = tile_m * tiles_n + tile_n (consecutive blocks share an
// activation tile, so it is read from DRAM once and from L2 by the others). (BM/TM) x (BN/TN) threads, each
// owning a TM x TN register tile made of 4 x 4 sub-tiles spread BM/(TM/4) rows and BN/(TN/4) columns apart,
// so every shared-memory fragment read is one 128-bit access, broadcast or conflict free across the warp
// (lanes arranged 4 x 8 along m x n). Shared memory holds two stages of A (k-major, rows padded by 4 to
// keep the transposing stores conflict free) and B. V = 4 (float, half) or 2 (double) loads V channels of
// x and V output channels of w per instruction and stores y V at a time; it needs Cg % V == 0,
// Kg % V == 0 and V-element aligned tensors. V = 1 runs any problem.
// Launch bounds: an 8 x 8 thread tile (64 accumulators) needs ~140-170 registers -> 1 block per SM (8 warps,
// latency hidden by the 64 independent FMAs per k step, as in CUTLASS's SIMT 128x128_8x2); smaller thread
// tiles ask for 2 blocks per SM (<= 128 registers).
template <typename Element, typename Index, int BM, int BN, int BK, int TM, int TN, int V>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (TM * TN >= 64 ? 1 : 2))
    conv_fprop_tiled(const Element* __restrict__ x, const Element* __restrict__ w, Element* __restrict__ y,
                     const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Index)) {
    typedef typename Accum<Element>::type Acc;
    typedef SimtThreadTile<BM, BN, TM, TN> ThreadTile;
    constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN, kThreads = kThreadsM * kThreadsN;
    constexpr int kLanesN = kThreadsN < 8 ? kThreadsN : 8, kLanesM = 32 / kLanesN;
    constexpr int kWarpsN = kThreadsN / kLanesN;
    constexpr int kStrideA = BM + 4, kStrideB = BN;
    static_assert(kThreads % 32 == 0 && kThreadsM % kLanesM == 0, "warp layout does not divide the tile");

    __shared__ __align__(16) Acc smem_a[2][BK * kStrideA];
    __shared__ __align__(16) Acc smem_b[2][BK * kStrideB];

    // ---- setup: tile coordinates, thread layout, iterators ---------------------------------------------
    const ConvProblemSize<Index> prob(GPUCONV_CONV_PROBLEM_ARGS);
    const int tid = threadIdx.x;
    const FpropBlockTile<Index, BM, BN> block(prob);
    if (*nonfinite) {  // w holds inf or NaN: padding must not multiply it (block-uniform; no barrier below)
        fprop_tile_by_formula<Element, Index, BM, BN, kThreads>(prob, x, w, y, block.m0, block.n0, block.g);
        return;
    }
    const int warp = tid / 32, lane = tid % 32;
    const int ty = (warp / kWarpsN) * kLanesM + lane / kLanesN;  // thread row in [0, kThreadsM)
    const int tx = (warp % kWarpsN) * kLanesN + lane % kLanesN;  // thread column in [0, kThreadsN)

    FpropTileLoader<Element, Index, BM, BN, BK, V, kThreads> loader(prob, x, w, block, tid);
    Acc acc[TM][TN];
    ThreadTile::clear(acc);

    // ---- main loop: compute stage kt % 2 while k-tile kt + 1 travels global -> registers -> the other stage
    pipelined_main_loop(
        (prob.fprop_gemm_k() + BK - 1) / BK, [&]() { loader.load(prob); },
        [&]() { loader.advance_and_load(prob); },
        [&](int stage) { loader.template store<1, kStrideA, kStrideB>(smem_a[stage], smem_b[stage], tid); },
        [&](int stage) {
            ThreadTile::template mma_stage<BK, kStrideA, kStrideB>(acc, smem_a[stage], smem_b[stage], ty, tx);
        });

    // ---- epilogue: bounds-checked stores of the register tile, 4 output channels at a time ------------
    const Index gemm_m = prob.fprop_gemm_m();
    const int gemm_n = prob.fprop_gemm_n();
    Element* y_group = y + Index(block.g) * gemm_n;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const Index m = block.m0 + ThreadTile::row(i, ty);
        if (m >= gemm_m) continue;
        Element* y_row = y_group + m * prob.K;
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
            const int n = block.n0 + ThreadTile::col(j, tx);
            if (V > 1 && n + 3 < gemm_n) {
#pragma unroll
                for (int v = 0; v < 4; v += V) Vec<Element, V>::store(y_row + n + v, &acc[i][j + v]);
            } else {
#pragma unroll
                for (int v = 0; v < 4; ++v)
                    if (n + v < gemm_n) y_row[n + v] = from_accum<Element>(acc[i][j + v]);
            }
        }
    }
}

// =========================================================================================================
// conv_fprop_tensorop (float16; float32 as TF32 or 3xTF32, opt-in; TensorOpMath: conv_common.cuh)
// =========================================================================================================
// The implicit GEMM of conv_fprop_tiled on tensor cores (float accumulators):  Y[m][n] = sum_kk A[m][kk] *
// B[kk][n],  y[m*K + g*Kg + n] = Element(Y[m][n]),  group g = blockIdx.y, blockIdx.x = tile_m * tiles_n +
// tile_n. Block tile BM x BN x BK, (BM/WM) x (BN/WN) warps, each owning a WM x WN warp tile of (WM/16) x
// (WN/16) accumulator fragments. Shared memory: two stages of A row-major [BM][BK + pad] and B row-major
// [BK][BN + pad] in Element, pad = 16 bytes (skews rows across banks and keeps every fragment pointer 256-bit
// aligned), filled through registers by the same tile iterators as the SIMT kernel (V = 4: 64-bit half or
// 128-bit float loads along channels); the epilogue stages each accumulator fragment through a per-warp
// 16 x 16 float tile and writes it with bounds checks. Static shared memory stays under 48 KiB: half BK = 32
// (46080 bytes), float BK = 16 (45568 bytes).
template <typename Element, typename Index, int BM, int BN, int BK, int WM, int WN, int V, int Passes>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32, 1)
    conv_fprop_tensorop(const Element* __restrict__ x, const Element* __restrict__ w, Element* __restrict__ y,
                        const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Index)) {
    typedef TensorOpMath<Element, Passes> Math;
    if constexpr (!Math::kAvailable) {
        __trap();  // TF32 on a GPU below sm_80: plans never choose it there
    } else {
        namespace wmma = nvcuda::wmma;
        constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN, kThreads = kWarpsM * kWarpsN * 32;
        constexpr int kFragsM = WM / 16, kFragsN = WN / 16;
        constexpr int kPad = 16 / int(sizeof(Element));
        constexpr int kStrideA = BK + kPad, kStrideB = BN + kPad;
        static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % Math::kK == 0, "WMMA tiles are 16 x 16 x kK");
        static_assert((16 * kStrideA * sizeof(Element)) % 32 == 0 && (16 * kStrideB * sizeof(Element)) % 32 == 0,
                      "fragment rows must stay 256-bit aligned");

        typedef wmma::fragment<wmma::accumulator, 16, 16, Math::kK, float> FragmentC;

        __shared__ __align__(128) Element smem_a[2][BM * kStrideA];
        __shared__ __align__(128) Element smem_b[2][BK * kStrideB];
        __shared__ __align__(128) float smem_c[kWarpsM * kWarpsN][16 * 16];

        // ---- setup ------------------------------------------------------------------------------------
        const ConvProblemSize<Index> prob(GPUCONV_CONV_PROBLEM_ARGS);
        const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
        const FpropBlockTile<Index, BM, BN> block(prob);
        if (*nonfinite) {  // an operand holds inf or NaN: compute by formula (block-uniform; no barrier below)
            fprop_tile_by_formula<Element, Index, BM, BN, kThreads>(prob, x, w, y, block.m0, block.n0, block.g);
            return;
        }
        const int warp_m = (warp / kWarpsN) * WM, warp_n = (warp % kWarpsN) * WN;

        FpropTileLoader<Element, Index, BM, BN, BK, V, kThreads> loader(prob, x, w, block, tid);
        FragmentC acc[kFragsM][kFragsN];
#pragma unroll
        for (int i = 0; i < kFragsM; ++i)
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

        // ---- main loop: tensor-core steps on stage kt % 2 while k-tile kt + 1 is loaded ---------------
        pipelined_main_loop(
            (prob.fprop_gemm_k() + BK - 1) / BK, [&]() { loader.load(prob); },
            [&]() { loader.advance_and_load(prob); },
            [&](int stage) { loader.template store<kStrideA, 1, kStrideB>(smem_a[stage], smem_b[stage], tid); },
            [&](int stage) {
                tensorop_stage<Math, wmma::row_major, BK, kFragsM, kFragsN, kStrideA, kStrideB>(
                    acc, smem_a[stage] + warp_m * kStrideA, smem_b[stage] + warp_n);
            });

        // ---- epilogue: fragment -> per-warp float tile -> bounds-checked stores ------------------------
        const Index gemm_m = prob.fprop_gemm_m();
        const int gemm_n = prob.fprop_gemm_n();
        Element* y_group = y + Index(block.g) * gemm_n;
        float* tile = smem_c[warp];
#pragma unroll
        for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) {
                wmma::store_matrix_sync(tile, acc[i][j], 16, wmma::mem_row_major);
                __syncwarp();
#pragma unroll
                for (int e = lane; e < 256; e += 32) {
                    const Index m = block.m0 + warp_m + 16 * i + e / 16;
                    const int n = block.n0 + warp_n + 16 * j + e % 16;
                    if (m < gemm_m && n < gemm_n) y_group[m * prob.K + n] = from_accum<Element>(tile[e]);
                }
                __syncwarp();
            }
        }
    }
}

}  // namespace gpuconv
