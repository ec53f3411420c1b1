// gpuconv conv wgrad: the filter gradient of a convolution (= conv*_backprop_filter).
//
// Canonical layout (docs/internals.md): x (N,D,H,W,C), dy (N,Z,P,Q,K), dw (T,R,S,C/G,K); 2-D is depth 1.
//
//   dw[t,r,s,c,k] = sum_{n,z,p,q} x[n, z*str_d + t*dil_d - pad_d, p*str_h + r*dil_h - pad_h,
//                                      q*str_w + s*dil_w - pad_w, g*Cg + c] * dy[n,z,p,q,k],   g = k / Kg
//   (x is zero outside its extent).
//
// Kernels:
//   conv_wgrad_analytic  one thread per dw element looping over N*Z*P*Q in order; always correct.
//   conv_wgrad_tiled     implicit GEMM per group: gemm_m = Kg, gemm_n = Cg*T*R*S, gemm_k = N*Z*P*Q, with
//                        split-K over gemm_k (blockIdx.z). With one split it writes dw directly; with more,
//                        each split writes an Acc partial tile to a workspace [splits, T*R*S*Cg, K] and
//   conv_wgrad_reduce    sums the splits in split order (deterministic) and converts to the output dtype.
//   conv_wgrad_tensorop  conv_wgrad_tiled on tensor cores: float16 (WMMA 16x16x16, k-tiles of 16), and float32
//                        when the caller opts in to TF32 or 3xTF32 (gpuconv.float32_precision; its flag then
//                        covers x as well); same splits and reduction.
// The tiled kernel loads x cells of padding as zeros and multiplies them by dy; it takes a flag that
// conv_nonfinite_flag (conv_common.cuh) sets when dy holds inf or NaN, and then computes each split's partial
// with wgrad_element, the analytic kernel's sum restricted to the split's range (absent taps never multiply).
#include "conv_common.cuh"

namespace gpuconv {
namespace wgrad {

// The tiled kernel's block shape (conv_common.cuh): 16 x 16 threads, k-tiles of kTileK gemm_k rows (dy
// pixels), padded shared rows.
using simt16x16::kThreads;
using simt16x16::kTileK;
using simt16x16::kSmemPad;
using simt16x16::min_blocks;

// ---------------------------------------------------------------------------------------------------------
// conv_wgrad_analytic
// ---------------------------------------------------------------------------------------------------------
// One dw element dw[t, r, s, c, k] (xc = g*Cg + c, the x channel), summed over the dy pixels
// kk = ((n*Z + z)*P + p)*Q + q in [kk_begin, kk_end) in row-major order: a fixed summation order. The pixels
// are walked row by row ((n, z, p) carried, no division after the start); a pixel whose x cell lies outside x
// is skipped: absent, never multiplied. Shared by conv_wgrad_analytic (the whole range) and the non-finite
// fallback of conv_wgrad_tiled (its split's range).
template <typename Element, typename Idx>
__device__ __forceinline__ typename Accum<Element>::type wgrad_element(const Element* __restrict__ x,
                                                                       const Element* __restrict__ dy,
                                                                       const ConvProblemSize<Idx>& pr, int t,
                                                                       int r, int s, int xc, int k,
                                                                       Idx kk_begin, Idx kk_end) {
    typedef typename Accum<Element>::type Acc;
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    Acc acc = Acc(0);
    if (kk_begin >= kk_end) return acc;
    Idx rest = kk_begin;
    int q0 = (int)(rest % Q); rest /= Q;
    int p = (int)(rest % P); rest /= P;
    int z = (int)(rest % Z);
    int n = (int)(rest / Z);
    for (Idx kk = kk_begin; kk < kk_end;) {
        const Idx left = kk_end - kk;
        const int q1 = left < (Idx)(Q - q0) ? q0 + (int)left : Q;
        const int x_d = z * sd + t * dil_d - pd;
        const int x_h = p * sh + r * dil_h - ph;
        if (x_d >= 0 && x_d < D && x_h >= 0 && x_h < H) {
            const Element* x_row = x + (((Idx)n * D + x_d) * H + x_h) * W * C + xc;
            const Element* dy_row = dy + ((((Idx)n * Z + z) * P + p) * Q) * K + k;
            for (int q = q0; q < q1; ++q) {
                const int x_w = q * sw + s * dil_w - pw;
                if (x_w < 0 || x_w >= W) continue;
                acc = mac(to_accum(x_row[(Idx)x_w * C]), to_accum(dy_row[(Idx)q * K]), acc);
            }
        }
        kk += q1 - q0;
        q0 = 0;
        if (++p == P) {
            p = 0;
            if (++z == Z) { z = 0; ++n; }
        }
    }
    return acc;
}

// dw[i] for i = (((t*R + r)*S + s)*Cg + c)*K + k, one thread per element (grid: ceil(T*R*S*Cg*K / 256)
// blocks, no grid-stride loop); the sum over all N*Z*P*Q dy pixels is wgrad_element's. k is the fastest thread
// index, so dy reads of a warp are contiguous and x reads are broadcasts.
template <typename Element, typename Idx>
__device__ __forceinline__ void wgrad_analytic(const Element* __restrict__ x, const Element* __restrict__ dy,
                                               Element* __restrict__ dw, const ConvProblemSize<Idx>& pr) {
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    const Idx total = (Idx)T * R * S * Cg * K;
    Idx i;
    if (!element_of_thread(total, i)) return;
    // One division in Idx, the rest in int (T*R*S*Cg < 2^31: plans check it).
    const Idx row = i / K;
    const int k = (int)(i - row * K);
    int rest = (int)row;
    const int c = rest % Cg; rest /= Cg;
    const int s = rest % S; rest /= S;
    const int r = rest % R;
    const int t = rest / R;
    const int xc = (k / Kg) * Cg + c;
    dw[i] = from_accum<Element>(wgrad_element(x, dy, pr, t, r, s, xc, k, (Idx)0, (Idx)N * Z * P * Q));
}

// Launch bounds: 8 blocks of 256 threads per SM (<= 32 registers, what it needs).
template <typename Element, typename Idx>
__global__ void __launch_bounds__(256, 8)
conv_wgrad_analytic(const Element* __restrict__ x, const Element* __restrict__ dy, Element* __restrict__ dw,
                    GPUCONV_CONV_PROBLEM_PARAMS(Idx)) {
    wgrad_analytic<Element, Idx>(x, dy, dw, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS));
}

// ---------------------------------------------------------------------------------------------------------
// conv_wgrad_tiled
// ---------------------------------------------------------------------------------------------------------
// Problem size -> tile iterators -> main loop -> epilogue, per CTA:
//   blockIdx.z = split (gemm_k range [split*k_per_split, min(+k_per_split, gemm_k)); k_per_split % 8 == 0, so
//                a split's last k-tile of 16 rows (half on tensor cores) may be partial: rows past it load zeros)
//   blockIdx.y = group g
//   blockIdx.x = tile_m * n_tiles + tile_n
// GEMM of one group (gemm_m = Kg, gemm_n = Cg*T*R*S, gemm_k = N*Z*P*Q):
//   A[kk, m] = dy[kk*K + g*Kg + m]                    kk = ((n*Z + z)*P + p)*Q + q  (dy's own pixel order)
//   B[kk, col] = x[n, z*sd + t*dil_d - pd, p*sh + r*dil_h - ph, q*sw + s*dil_w - pw, g*Cg + c],
//                col = tap*Cg + c,  tap = (t*R + r)*S + s
//   out[split][col*K + g*Kg + m] = sum_{kk in split} A[kk, m] * B[kk, col]   (= dw's own element order)
// Both operands are contiguous along m / col, so kThreads / BK consecutive threads load one gemm_k row of 64..128
// consecutive elements.
// Each thread's gemm_n columns are fixed for the whole main loop (tap offsets computed once); its gemm_k row
// advances by BK per k-tile with an incremental (n, z, p, q) carry, no division in the loop.
// Passes = 0: SIMT multiply-adds (SimtThreadTile). Passes = 1 / 3 (conv_wgrad_tensorop): the same tiles multiplied
// on tensor cores (TensorOpMath: half, or float as TF32 / 3xTF32; simt16x16::BackpropStage, TensorOpWarpTile).
template <typename Element, typename Out, typename Idx, int BM, int BN, int TM, int TN, int Passes = 0>
__device__ __forceinline__ void wgrad_tiled(const Element* __restrict__ x, const Element* __restrict__ dy,
                                            Out* __restrict__ out, const int* __restrict__ nonfinite,
                                            const ConvProblemSize<Idx>& pr, int n_tiles, Idx k_per_split) {
    typedef typename Accum<Element>::type Acc;
    typedef SimtThreadTile<BM, BN, TM, TN> ThreadTile;
    typedef simt16x16::BackpropStage<Element, Passes> Stage;
    typedef typename Stage::Smem Smem;
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    static_assert(BM / TM == 16 && BN / TN == 16, "16 x 16 threads per CTA");
    constexpr int BK = Stage::kBK, kStrideA = BM + Stage::kPad, kStrideB = BN + Stage::kPad;
    constexpr int kThreadsPerRow = kThreads / BK;             // threads loading one gemm_k row: 32 (BK 8), 16 (BK 16)
    constexpr int kElemsA = BM / kThreadsPerRow;              // consecutive m each thread loads per k-tile
    constexpr int kElemsB = BN / kThreadsPerRow;              // consecutive columns each thread loads
    static_assert(kElemsA * kThreadsPerRow == BM && kElemsB * kThreadsPerRow == BN, "whole rows per thread group");

    // 32-byte alignment: WMMA fragment pointers (the tensor-op path) must be 256-bit aligned.
    __shared__ __align__(32) Smem As[2][BK][kStrideA];
    __shared__ __align__(32) Smem Bs[2][BK][kStrideB];

    // ---- problem size of this CTA's (split, group) ------------------------------------------------------
    const int g = blockIdx.y;
    const int tile_m = blockIdx.x / n_tiles, tile_n = blockIdx.x % n_tiles;
    const int taps = T * R * S;
    const int gemm_n = Cg * taps;
    const Idx gemm_k = (Idx)N * Z * P * Q;
    const Idx k_begin = (Idx)blockIdx.z * k_per_split;
    const Idx k_end = k_begin + k_per_split < gemm_k ? k_begin + k_per_split : gemm_k;
    const int k_tiles = k_begin < k_end ? (int)((k_end - k_begin + BK - 1) / BK) : 0;
    const int m0 = tile_m * BM, n0 = tile_n * BN;
    Out* out_split = out + (Idx)blockIdx.z * ((Idx)gemm_n * K);  // dw, or this split's workspace slice
    if (*nonfinite) {
        // dy (or, on tensor cores, x) holds inf or NaN: a padding cell of x must not multiply dy, nor TF32 split
        // an inf. This split's partial (or, with one split, dw itself) by the analytic formula over the split's
        // gemm_k range, the same partial/reduce structure as the GEMM path; consecutive threads on consecutive k
        // (block-uniform; no barrier here).
        for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
            const int m = m0 + e % BM, col = n0 + e / BM;
            if (m >= Kg || col >= gemm_n) continue;
            const int tap = col / Cg, c = col - tap * Cg;
            const int s = tap % S, r = (tap / S) % R, t = tap / (S * R);
            out_split[(Idx)col * K + (Idx)g * Kg + m] =
                from_accum<Out>(wgrad_element(x, dy, pr, t, r, s, g * Cg + c, g * Kg + m, k_begin, k_end));
        }
        return;
    }

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;

    // ---- tile iterators ---------------------------------------------------------------------------------
    // Row: the thread's gemm_k row within a k-tile (kThreadsPerRow threads per row); pixel (pn, pz, pp, pq).
    const int row = tid / kThreadsPerRow;
    const int a_m = (tid % kThreadsPerRow) * kElemsA;        // A columns a_m .. a_m + kElemsA - 1 of the tile
    const int b_col = (tid % kThreadsPerRow) * kElemsB;      // B columns
    Idx kk = k_begin + row;
    int pn = 0, pz = 0, pp = 0, pq = 0;
    {
        Idx rest = kk;
        pq = (int)(rest % Q); rest /= Q;
        pp = (int)(rest % P); rest /= P;
        pz = (int)(rest % Z);
        pn = (int)(rest / Z);
    }
    auto row_advance = [&]() {                               // kk += BK with carry through (n, z, p, q)
        kk += BK;
        pq += BK;
        while (pq >= Q) {
            pq -= Q;
            if (++pp == P) { pp = 0; if (++pz == Z) { pz = 0; ++pn; } }
        }
    };
    // Columns of B: tap offsets and x channel, fixed for the whole main loop.
    int col_dz[kElemsB], col_dh[kElemsB], col_dw[kElemsB], col_c[kElemsB];
    bool col_valid[kElemsB];
#pragma unroll
    for (int e = 0; e < kElemsB; ++e) {
        const int col = n0 + b_col + e;
        col_valid[e] = col < gemm_n;
        const int tap = col_valid[e] ? col / Cg : 0;
        const int c = col_valid[e] ? col - tap * Cg : 0;
        const int s = tap % S, r = (tap / S) % R, t = tap / (S * R);
        col_dz[e] = t * dil_d - pd;
        col_dh[e] = r * dil_h - ph;
        col_dw[e] = s * dil_w - pw;
        col_c[e] = g * Cg + c;
    }
    const Idx a_col_base = (Idx)g * Kg + m0 + a_m;

    Smem a_reg[kElemsA], b_reg[kElemsB];
    auto load_tile = [&]() {
        const bool row_valid = kk < k_end;
#pragma unroll
        for (int e = 0; e < kElemsA; ++e) {
            const bool ok = row_valid && m0 + a_m + e < Kg;
            a_reg[e] = ok ? SmemCast<Smem>::apply(dy[kk * K + a_col_base + e]) : zero_element<Smem>();
        }
        const int zb = pz * sd, hb = pp * sh, wb = pq * sw;
#pragma unroll
        for (int e = 0; e < kElemsB; ++e) {
            const int xd = zb + col_dz[e], xh = hb + col_dh[e], xw = wb + col_dw[e];
            const bool ok = row_valid && col_valid[e] && xd >= 0 && xd < D && xh >= 0 && xh < H &&
                            xw >= 0 && xw < W;
            b_reg[e] = ok ? SmemCast<Smem>::apply(x[((((Idx)pn * D + xd) * H + xh) * W + xw) * C + col_c[e]])
                          : zero_element<Smem>();
        }
    };
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int e = 0; e < kElemsA; ++e) As[buf][row][a_m + e] = a_reg[e];
#pragma unroll
        for (int e = 0; e < kElemsB; ++e) Bs[buf][row][b_col + e] = b_reg[e];
    };

    if constexpr (Passes == 0) {
        Acc acc[TM][TN];
        ThreadTile::clear(acc);

        // ---- main loop: global -> registers (next tile) while the current tile is multiplied from smem -
        if (k_tiles > 0) {  // no k-tile (an empty split): the accumulators stay zero
            pipelined_main_loop(
                k_tiles, load_tile, [&]() { row_advance(); load_tile(); }, store_tile,
                [&](int stage) {
                    ThreadTile::template mma_stage<BK, kStrideA, kStrideB>(acc, &As[stage][0][0], &Bs[stage][0][0],
                                                                           ty, tx);
                });
        }

        // ---- epilogue: registers -> out (dw, or this split's workspace slice; zeros for an empty split) -
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + ThreadTile::col(j, tx);
            if (col >= gemm_n) continue;
            Out* out_col = out_split + (Idx)col * K + (Idx)g * Kg;
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const int m = m0 + ThreadTile::row(i, ty);
                if (m < Kg) out_col[m] = from_accum<Out>(acc[i][j]);
            }
        }
    } else {
        simt16x16::TensorOpWarpTile<Element, Passes, BM, BN> warp_tile(tid);

        // ---- main loop: as above, each stage multiplied on tensor cores ----------------------------------
        if (k_tiles > 0) {
            pipelined_main_loop(
                k_tiles, load_tile, [&]() { row_advance(); load_tile(); }, store_tile,
                [&](int stage) { warp_tile.stage(&As[stage][0][0], &Bs[stage][0][0]); });
        }

        // ---- epilogue: fragments -> out, consecutive lanes on consecutive m (dw's contiguous axis) -------
        warp_tile.template epilogue<true>([&](int row, int col, float v) {
            if (m0 + row < Kg && n0 + col < gemm_n)
                out_split[(Idx)(n0 + col) * K + (Idx)g * Kg + m0 + row] = from_accum<Out>(v);
        });
    }
}

template <typename Element, typename Out, typename Idx, int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__(kThreads, min_blocks(TM * TN, sizeof(typename Accum<Element>::type)))
conv_wgrad_tiled(const Element* __restrict__ x, const Element* __restrict__ dy, Out* __restrict__ out,
                 const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Idx), int n_tiles,
                 Idx k_per_split) {
    wgrad_tiled<Element, Out, Idx, BM, BN, TM, TN>(x, dy, out, nonfinite,
                                                   ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS), n_tiles,
                                                   k_per_split);
}

// The tiled kernel on tensor cores (Element __half with Passes 1; float for the caller's TF32 (1) or 3xTF32 (3)),
// writing dw (Out = Element, one split) or the float workspace (Out = float); launch bounds:
// simt16x16::tensorop_min_blocks. The float instantiations trap below sm_80 (plans choose them only on sm_80+).
template <typename Element, typename Out, typename Idx, int BM, int BN, int Passes>
__global__ void __launch_bounds__(kThreads, simt16x16::tensorop_min_blocks(BM, BN, Passes))
conv_wgrad_tensorop(const Element* __restrict__ x, const Element* __restrict__ dy, Out* __restrict__ out,
                    const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Idx), int n_tiles,
                    Idx k_per_split) {
    if constexpr (!TensorOpMath<Element, Passes>::kAvailable) {
        __trap();
    } else {
        wgrad_tiled<Element, Out, Idx, BM, BN, BM / 16, BN / 16, Passes>(
            x, dy, out, nonfinite, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS), n_tiles, k_per_split);
    }
}

// ---------------------------------------------------------------------------------------------------------
// conv_wgrad_reduce
// ---------------------------------------------------------------------------------------------------------
// dw[i] = sum_{split = 0 .. splits-1} ws[split*size + i], summed in split order (deterministic), converted
// once to the output dtype. One thread per element, grid-stride; reads of a warp are contiguous per split.
// Launch bounds: 8 blocks of 256 threads per SM (<= 32 registers, what it needs).
template <typename Element, typename Idx>
__global__ void __launch_bounds__(256, 8)
conv_wgrad_reduce(const typename Accum<Element>::type* __restrict__ ws, Element* __restrict__ dw, Idx size,
                  int splits) {
    typedef typename Accum<Element>::type Acc;
    for (Idx i = grid_first<Idx>(); i < size; i = grid_step(i, size)) {
        Acc sum = Acc(0);
        for (int s = 0; s < splits; ++s) sum += ws[(Idx)s * size + i];
        dw[i] = from_accum<Element>(sum);
    }
}

}  // namespace wgrad
}  // namespace gpuconv

using gpuconv::wgrad::conv_wgrad_analytic;
using gpuconv::wgrad::conv_wgrad_reduce;
using gpuconv::wgrad::conv_wgrad_tiled;
using gpuconv::wgrad::conv_wgrad_tensorop;
