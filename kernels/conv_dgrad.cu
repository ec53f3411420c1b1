// gpuconv conv dgrad: the input gradient of a convolution (= conv*_backprop_input = conv*_transpose).
//
// Canonical layout (docs/internals.md): dy (N,Z,P,Q,K), w (T,R,S,C/G,K), dx (N,D,H,W,C); 2-D is depth 1.
// Gather formulation: every dx element is written exactly once by one thread, summing in a fixed order, so
// results are deterministic and no atomics are used.
//
//   dx[n,d,h,w,c] = sum_{t,r,s} sum_{k in group(c)} dy[n,z,p,q,k] * w[t,r,s,c % Cg,k]
//       where z = (d + pad_d - t*dil_d) / str_d must be an exact integer in [0,Z), and likewise
//       p = (h + pad_h - r*dil_h) / str_h in [0,P), q = (w + pad_w - s*dil_w) / str_w in [0,Q).
//
// Variants:
//   conv_dgrad_analytic  one thread per dx element; recomputes every index; always correct.
//   conv_dgrad_col2im    few channels (where the tiled kernel's channel tiles would be mostly padding): the
//                        second half of a GEMM (a 1x1 conv_fprop, dy x w -> cols per tap) + col2im gather.
//   conv_dgrad_tiled     implicit GEMM per (stride phase, group):
//                          gemm_m = N * Dp*Hp*Wp (dx pixels of the phase), gemm_n = Cg,
//                          gemm_k = taps_of_phase * Kg (padded to BK per tap).
//                        Block tile BM x BN x 8 in shared memory (double-buffered), thread tile TM x TN in
//                        registers, predicated borders and partial tiles. It loads dy cells of absent taps
//                        (out of range) as zeros and multiplies them; so it takes a flag that
//                        conv_nonfinite_flag (conv_common.cuh) sets when w holds inf or NaN, and then computes
//                        its tile with dgrad_element, the analytic kernel's per-element sum.
//   conv_dgrad_tensorop  conv_dgrad_tiled on tensor cores: float16 (WMMA 16x16x16, k-tiles of 16), and float32
//                        when the caller opts in to TF32 or 3xTF32 (gpuconv.float32_precision; its flag then
//                        covers dy as well as w).
#include "conv_common.cuh"

namespace gpuconv {
namespace dgrad {

// The tiled kernel's block shape (conv_common.cuh): 16 x 16 threads, k-tiles of kTileK, padded shared rows.
using simt16x16::kThreads;
using simt16x16::kTileK;
using simt16x16::kSmemPad;
using simt16x16::min_blocks;

// ---------------------------------------------------------------------------------------------------------
// Stride phases
// ---------------------------------------------------------------------------------------------------------
// Along one axis with stride s, dilation l, pad pb: dx coordinate d receives filter tap t iff
// (d + pb - t*l) % s == 0. Group the dx coordinates by a = (d + pb) mod s (the phase): within a phase the
// set of contributing taps is fixed -- t = tap0 + it*tap_step, it < ntaps -- and the dy coordinate of
// dx coordinate d = first + i*s and tap number it is z = i + off0 - it*off_step (exact, no division left).
struct PhaseAxis {
    int first;      // smallest dx coordinate of the phase
    int size;       // dx coordinates in the phase (first, first+s, ...), 0 if none
    int ntaps;      // filter taps that hit the phase (0: the phase's dx is zero)
    int tap0;       // first such tap
    int tap_step;   // step between taps: s / gcd(s, l)
    int off0;       // dy coordinate = i + off0 - it*off_step
    int off_step;   // l / gcd(s, l)
};

__device__ __forceinline__ int gcd_int(int a, int b) {
    while (b != 0) { int t = a % b; a = b; b = t; }
    return a;
}

// phase a in [0, s) along an axis of dx extent n, filter extent k.
__device__ __forceinline__ PhaseAxis make_phase_axis(int a, int n, int k, int s, int l, int pb) {
    PhaseAxis ax;
    int first = (a - pb) % s;
    if (first < 0) first += s;
    ax.first = first;
    ax.size = first < n ? (n - first + s - 1) / s : 0;
    const int g = gcd_int(s, l);
    ax.tap_step = s / g;
    ax.off_step = l / g;
    ax.tap0 = -1;
    const int l_mod = l % s;
    for (int t = 0, rem = 0; t < ax.tap_step && t < k; ++t) {   // rem = t*l mod s, period tap_step
        if (rem == a) { ax.tap0 = t; break; }
        rem += l_mod;
        if (rem >= s) rem -= s;
    }
    if (ax.tap0 < 0) {
        ax.ntaps = 0;
        ax.tap0 = 0;
        ax.off0 = 0;
    } else {
        ax.ntaps = (k - 1 - ax.tap0) / ax.tap_step + 1;
        ax.off0 = (first + pb - ax.tap0 * l) / s;            // exact by construction
    }
    return ax;
}

// One axis of the analytic gather: u = x + pad - tap*dil as u = q*stride + rem (floor division, 0 <= rem < stride),
// stepped to the next tap (u -= dil) without a division: the tap hits dy coordinate q iff rem == 0. Once q < 0
// every later tap misses too.
struct TapWalk {
    int q, rem;                 // current quotient / remainder
    int dq, drem, stride;       // dil = dq*stride + drem (set on the walk's start value, read by step)
    __device__ __forceinline__ TapWalk(int u, int stride_, int dil)
        : q(u / stride_), rem(u % stride_), dq(dil / stride_), drem(dil % stride_), stride(stride_) {}
    __device__ __forceinline__ void step(const TapWalk& start) {
        q -= start.dq;
        rem -= start.drem;
        if (rem < 0) { rem += start.stride; --q; }
    }
};

// ---------------------------------------------------------------------------------------------------------
// conv_dgrad_analytic
// ---------------------------------------------------------------------------------------------------------
// The taps (t, r, s) of dx pixel (x_d, x_h, x_w) that meet dy, in (t, r, s) order: visit(t, r, s, z, p, q) with
// their dy coordinates. A tap whose dy coordinate is off the stride lattice or out of range is absent and not
// visited. Per axis, the dy coordinate numerator u = x + pad - tap*dil is kept as floor quotient and remainder by
// the stride, stepped by -dil per tap: no division inside the tap loops (ptxas outlines divisions there).
template <typename Idx, typename Visit>
__device__ __forceinline__ void for_each_present_tap(const ConvProblemSize<Idx>& pr, int x_d, int x_h, int x_w,
                                                     Visit visit) {
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    const TapWalk wd(x_d + pd, sd, dil_d), wh(x_h + ph, sh, dil_h), ww(x_w + pw, sw, dil_w);
    TapWalk zt = wd;
    for (int t = 0; t < T && zt.q >= 0; ++t, zt.step(wd)) {
        if (zt.rem != 0 || zt.q >= Z) continue;
        TapWalk pr_ = wh;
        for (int r = 0; r < R && pr_.q >= 0; ++r, pr_.step(wh)) {
            if (pr_.rem != 0 || pr_.q >= P) continue;
            TapWalk qs = ww;
            for (int s = 0; s < S && qs.q >= 0; ++s, qs.step(ww)) {
                if (qs.rem != 0 || qs.q >= Q) continue;
                visit(t, r, s, zt.q, pr_.q, qs.q);
            }
        }
    }
}

// The dx element i = (((n*D + d)*H + h)*W + w)*C + c of one thread, split once: the divisions in Idx, before
// anything is live (an image of the long long instantiation may have >= 2^31 pixels; D, H, W and C each fit in
// int: plans check it).
struct DxElement {
    int n, d, h, w, c;
};

template <typename Idx>
__device__ __forceinline__ DxElement dx_element(Idx i, const ConvProblemSize<Idx>& pr) {
    DxElement e;
    const Idx pixel = i / pr.C;
    e.c = (int)(i - pixel * pr.C);
    const Idx image_pixels = (Idx)pr.D * pr.H * pr.W;
    e.n = (int)(pixel / image_pixels);
    Idx rest = pixel - (Idx)e.n * image_pixels;
    e.w = (int)(rest % pr.W); rest /= pr.W;
    e.h = (int)(rest % pr.H);
    e.d = (int)(rest / pr.H);
    return e;
}

// One dx element dx[n, x_d, x_h, x_w, c] (formula at the top of this file): present taps in (t, r, s) order,
// channels k ascending, a fixed summation order; absent taps are never multiplied. Shared by conv_dgrad_analytic
// and conv_dgrad_tiled's non-finite fallback.
template <typename Element, typename Idx>
__device__ __forceinline__ typename Accum<Element>::type dgrad_element(const Element* __restrict__ dy,
                                                                       const Element* __restrict__ w,
                                                                       const ConvProblemSize<Idx>& pr, int n,
                                                                       int x_d, int x_h, int x_w, int c) {
    typedef typename Accum<Element>::type Acc;
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    const int g = c / Cg, cg = c - g * Cg;
    Acc acc = Acc(0);
    for_each_present_tap(pr, x_d, x_h, x_w, [&](int t, int r, int s, int z, int p, int q) {
        const Element* dy_row = dy + ((((Idx)n * Z + z) * P + p) * Q + q) * K + (Idx)g * Kg;
        const Element* w_row = w + ((((Idx)t * R + r) * S + s) * Cg + cg) * K + (Idx)g * Kg;
#pragma unroll 1   // unrolled, ptxas spills around the remainder loop (sm_80/sm_90, NVRTC 13.5)
        for (int k = 0; k < Kg; ++k) acc = mac(to_accum(dy_row[k]), to_accum(w_row[k]), acc);
    });
    return acc;
}

// dx[i], one thread per element (grid: ceil(N*D*H*W*C / 256) blocks; no grid-stride loop, so the Idx divisions
// run once, before the summation loops); the sum is dgrad_element's.
template <typename Element, typename Idx>
__device__ __forceinline__ void dgrad_analytic(const Element* __restrict__ dy, const Element* __restrict__ w,
                                               Element* __restrict__ dx, const ConvProblemSize<Idx>& pr) {
    const Idx total = (Idx)pr.N * pr.D * pr.H * pr.W * pr.C;
    Idx i;
    if (!element_of_thread(total, i)) return;
    const DxElement e = dx_element(i, pr);
    dx[i] = from_accum<Element>(dgrad_element(dy, w, pr, e.n, e.d, e.h, e.w, e.c));
}

// Launch bounds: 4 blocks of 256 threads per SM (<= 64 registers; it needs 39-55; 5 blocks spill with 64-bit
// indices).
template <typename Element, typename Idx>
__global__ void __launch_bounds__(256, 4)
conv_dgrad_analytic(const Element* __restrict__ dy, const Element* __restrict__ w, Element* __restrict__ dx,
                    GPUCONV_CONV_PROBLEM_PARAMS(Idx)) {
    dgrad_analytic<Element, Idx>(dy, w, dx, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS));
}

// ---------------------------------------------------------------------------------------------------------
// conv_dgrad_col2im
// ---------------------------------------------------------------------------------------------------------
// The second half of dgrad as GEMM + col2im, for few input channels (plans/conv_dgrad.py rule 2: the tiled
// kernel's channel tiles would be mostly padding, and the analytic kernel loads a dy and a w value per
// multiply-add). The first half, a 1x1 conv_fprop GEMM, wrote cols[m, tap, c] = sum_k dy[m, k] * w[tap, c, k] for
// every dy pixel m of the batch chunk and every tap (t, r, s); here one thread per dx element adds the cols
// entries of its present taps in (t, r, s) order. Absent taps (padding, off the stride lattice) are never read,
// so an inf or NaN in w reaches only the dx elements whose taps meet dy, as in the analytic kernel. groups == 1.
// ColT: float (float16 and float32 dx; float16 runs its GEMM in float32) or double.
template <typename Element, typename ColT, typename Idx>
__device__ __forceinline__ void dgrad_col2im(const ColT* __restrict__ cols, Element* __restrict__ dx,
                                             const ConvProblemSize<Idx>& pr) {
    typedef typename Accum<Element>::type Acc;
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    const Idx total = (Idx)N * D * H * W * C;
    Idx i;
    if (!element_of_thread(total, i)) return;
    const DxElement e = dx_element(i, pr);
    const int row = T * R * S * C;                                   // cols entries per dy pixel
    Acc acc = Acc(0);
    for_each_present_tap(pr, e.d, e.h, e.w, [&](int t, int r, int s, int z, int p, int q) {
        const Idx m = (((Idx)e.n * Z + z) * P + p) * Q + q;
        acc += to_accum(cols[m * row + ((t * R + r) * S + s) * C + e.c]);
    });
    dx[i] = from_accum<Element>(acc);
}

// Launch bounds: 4 blocks of 256 threads per SM, as conv_dgrad_analytic (the same index walk, no inner k loop).
template <typename Element, typename ColT, typename Idx>
__global__ void __launch_bounds__(256, 4)
conv_dgrad_col2im(const ColT* __restrict__ cols, Element* __restrict__ dx, GPUCONV_CONV_PROBLEM_PARAMS(Idx)) {
    dgrad_col2im<Element, ColT, Idx>(cols, dx, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS));
}

// ---------------------------------------------------------------------------------------------------------
// conv_dgrad_tiled
// ---------------------------------------------------------------------------------------------------------
// Problem size -> tile iterators -> main loop -> epilogue, per CTA:
//   blockIdx.z = stride phase (ad, ah, aw) = (z / (sh*sw), (z / sw) % sh, z % sw)
//   blockIdx.y = group g
//   blockIdx.x = tile_m * n_tiles + tile_n   (n fastest: CTAs sharing a dy tile run together)
// GEMM of one (phase, group):
//   A[m, kk] = dy[n, i + off0_d - it*offs_d, j + off0_h - ir*offs_h, l + off0_w - is*offs_w, g*Kg + k]
//              m = ((n*Dp + i)*Hp + j)*Wp + l,  kk = (tap*ktiles_per_tap)*BK + k, tap = (it*nR + ir)*nS + is
//   B[kk, c] = w[tap0_d + it*step_d, tap0_h + ir*step_h, tap0_w + is*step_w, c, g*Kg + k]
//   dx[n, first_d + i*sd, first_h + j*sh, first_w + l*sw, g*Cg + c] = sum_kk A[m, kk] * B[kk, c]
// Each tap owns ceil(Kg / BK) k-tiles (k >= Kg is predicated to zero), so a k-tile never straddles two taps
// and the dy/w addresses change only when the tap does. No multiply touches an inserted zero of the
// zero-upsampled dy: taps that miss a phase are never iterated.
// Passes = 0: SIMT multiply-adds (SimtThreadTile). Passes = 1 / 3 (conv_dgrad_tensorop): the same tiles multiplied
// on tensor cores (TensorOpMath: half, or float as TF32 / 3xTF32; shared-memory stages of
// simt16x16::BackpropStage; warp tiles, main-loop step and epilogue of simt16x16::TensorOpWarpTile).
template <typename Element, typename Idx, int BM, int BN, int TM, int TN, int Passes = 0>
__device__ __forceinline__ void dgrad_tiled(const Element* __restrict__ dy, const Element* __restrict__ w,
                                            Element* __restrict__ dx, const int* __restrict__ nonfinite,
                                            const ConvProblemSize<Idx>& pr, int n_tiles) {
    typedef typename Accum<Element>::type Acc;
    typedef SimtThreadTile<BM, BN, TM, TN> ThreadTile;
    typedef simt16x16::BackpropStage<Element, Passes> Stage;
    typedef typename Stage::Smem Smem;
    GPUCONV_CONV_PROBLEM_LOCALS(pr);
    static_assert(BM / TM == 16 && BN / TN == 16, "16 x 16 threads per CTA");
    constexpr int BK = Stage::kBK, kStrideA = BM + Stage::kPad, kStrideB = BN + Stage::kPad;
    constexpr int kElemsA = BM * BK / kThreads;              // A elements each thread loads per k-tile
    constexpr int kElemsB = BN * BK / kThreads;
    constexpr int kThreadsPerRowA = BK / kElemsA;
    constexpr int kThreadsPerRowB = BK / kElemsB;

    // 32-byte alignment: WMMA fragment pointers (the tensor-op path) must be 256-bit aligned.
    __shared__ __align__(32) Smem As[2][BK][kStrideA];
    __shared__ __align__(32) Smem Bs[2][BK][kStrideB];

    // ---- problem size of this CTA's (phase, group) ------------------------------------------------------
    const int phase = blockIdx.z;
    const int g = blockIdx.y;
    const int tile_m = blockIdx.x / n_tiles, tile_n = blockIdx.x % n_tiles;
    const PhaseAxis ax_d = make_phase_axis(phase / (sh * sw), D, T, sd, dil_d, pd);
    const PhaseAxis ax_h = make_phase_axis((phase / sw) % sh, H, R, sh, dil_h, ph);
    const PhaseAxis ax_w = make_phase_axis(phase % sw, W, S, sw, dil_w, pw);
    const Idx gemm_m = (Idx)N * ax_d.size * ax_h.size * ax_w.size;
    const Idx m0 = (Idx)tile_m * BM;
    const int n0 = tile_n * BN;
    if (m0 >= gemm_m) return;                               // whole CTA: this phase has fewer rows
    // The CTA's first row, split once into (image, pixel within the image's phase grid); every other row of the
    // tile is an int offset from it (phase_pixels < 2^31: plans check D*H*W < 2^31), so no Idx division is
    // left after this point.
    const int phase_pixels = ax_d.size * ax_h.size * ax_w.size;
    const int cta_n = (int)(m0 / phase_pixels);
    const int cta_pixel = (int)(m0 - (Idx)cta_n * phase_pixels);
    auto locate = [&](int row, int& n, int& i, int& j, int& l) {   // row of the tile -> (n, i, j, l)
        int local = cta_pixel + row;
        n = cta_n + local / phase_pixels;
        local -= (n - cta_n) * phase_pixels;
        l = local % ax_w.size; local /= ax_w.size;
        j = local % ax_h.size;
        i = local / ax_h.size;
    };
    if (*nonfinite) {
        // w holds inf or NaN: an absent tap (dy off the lattice or out of range) must not multiply it. The
        // tile's dx elements by the analytic formula, consecutive threads on consecutive channels
        // (block-uniform branch; no barrier on this path).
        for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
            const int row = e / BN, c = n0 + e % BN;
            if (m0 + row >= gemm_m || c >= Cg) continue;
            int n, ii, j, l;
            locate(row, n, ii, j, l);
            const int x_d = ax_d.first + ii * sd, x_h = ax_h.first + j * sh, x_w = ax_w.first + l * sw;
            dx[((((Idx)n * D + x_d) * H + x_h) * W + x_w) * C + (Idx)g * Cg + c] =
                from_accum<Element>(dgrad_element(dy, w, pr, n, x_d, x_h, x_w, g * Cg + c));
        }
        return;
    }
    const int ktiles_per_tap = (Kg + BK - 1) / BK;
    const int k_tiles = ax_d.ntaps * ax_h.ntaps * ax_w.ntaps * ktiles_per_tap;

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;

    // ---- tile iterators: A (dy gathered per dx pixel), B (w) -------------------------------------------
    // A: thread loads row a_row (a dx pixel of the phase), k = k-tile base + a_k .. + kElemsA - 1.
    const int a_row = tid / kThreadsPerRowA, a_k = (tid % kThreadsPerRowA) * kElemsA;
    const Idx a_m = m0 + a_row;
    const bool a_row_valid = a_m < gemm_m;
    int a_n = 0, a_i = 0, a_j = 0, a_l = 0;
    if (a_row_valid) locate(a_row, a_n, a_i, a_j, a_l);
    const Idx a_base = (Idx)a_n * Z * P * Q * K + (Idx)g * Kg;
    // B: thread loads column b_col (channel c of the group), k = k-tile base + b_k .. + kElemsB - 1.
    const int b_row = tid / kThreadsPerRowB, b_k = (tid % kThreadsPerRowB) * kElemsB;
    const int b_c = n0 + b_row;
    const bool b_col_valid = b_c < Cg;
    const Idx b_base = (Idx)b_c * K + (Idx)g * Kg;

    // Tap state, uniform across the CTA: (it, ir, is) and the k-tile within the tap.
    int it = 0, ir = 0, is = 0, kt_in_tap = 0;
    Idx a_off = 0, b_off = 0;
    bool a_valid = false;
    auto tap_update = [&]() {
        const int z = a_i + ax_d.off0 - it * ax_d.off_step;
        const int p = a_j + ax_h.off0 - ir * ax_h.off_step;
        const int q = a_l + ax_w.off0 - is * ax_w.off_step;
        a_valid = a_row_valid && z >= 0 && z < Z && p >= 0 && p < P && q >= 0 && q < Q;
        a_off = a_base + (((Idx)z * P + p) * Q + q) * K;
        const int t = ax_d.tap0 + it * ax_d.tap_step;
        const int r = ax_h.tap0 + ir * ax_h.tap_step;
        const int s = ax_w.tap0 + is * ax_w.tap_step;
        b_off = b_base + (((Idx)t * R + r) * S + s) * Cg * K;
    };
    auto tap_advance = [&]() {
        if (++kt_in_tap < ktiles_per_tap) return;
        kt_in_tap = 0;
        if (++is == ax_w.ntaps) {
            is = 0;
            if (++ir == ax_h.ntaps) { ir = 0; ++it; }
        }
        tap_update();
    };

    Smem a_reg[kElemsA], b_reg[kElemsB];
    auto load_tile = [&]() {
        const int kbase = kt_in_tap * BK;
#pragma unroll
        for (int e = 0; e < kElemsA; ++e) {
            const int k = kbase + a_k + e;
            a_reg[e] = (a_valid && k < Kg) ? SmemCast<Smem>::apply(dy[a_off + k]) : zero_element<Smem>();
        }
#pragma unroll
        for (int e = 0; e < kElemsB; ++e) {
            const int k = kbase + b_k + e;
            b_reg[e] = (b_col_valid && k < Kg) ? SmemCast<Smem>::apply(w[b_off + k]) : zero_element<Smem>();
        }
    };
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int e = 0; e < kElemsA; ++e) As[buf][a_k + e][a_row] = a_reg[e];
#pragma unroll
        for (int e = 0; e < kElemsB; ++e) Bs[buf][b_k + e][b_row] = b_reg[e];
    };

    // dx[tile row, channel n0 + col] (row < gemm_m - m0, channel < Cg: the epilogues check).
    auto dx_at = [&](int row, int col) -> Element& {
        int n, ii, j, l;
        locate(row, n, ii, j, l);
        const int x_d = ax_d.first + ii * sd, x_h = ax_h.first + j * sh, x_w = ax_w.first + l * sw;
        return dx[((((Idx)n * D + x_d) * H + x_h) * W + x_w) * C + (Idx)g * Cg + n0 + col];
    };

    if constexpr (Passes == 0) {
        Acc acc[TM][TN];
        ThreadTile::clear(acc);

        // ---- main loop: global -> registers (next tile) while the current tile is multiplied from smem -
        if (k_tiles > 0) {  // no k-tile (a tapless phase): the accumulators stay zero
            pipelined_main_loop(
                k_tiles, [&]() { tap_update(); load_tile(); }, [&]() { tap_advance(); load_tile(); }, store_tile,
                [&](int stage) {
                    ThreadTile::template mma_stage<BK, kStrideA, kStrideB>(acc, &As[stage][0][0], &Bs[stage][0][0],
                                                                           ty, tx);
                });
        }

        // ---- epilogue: registers -> dx (every dx element of the tile written once, zeros for tapless phases)
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = ThreadTile::row(i, ty);
            if (m0 + row >= gemm_m) continue;
            Element* dx_row = &dx_at(row, 0);
#pragma unroll
            for (int jj = 0; jj < TN; ++jj) {
                const int col = ThreadTile::col(jj, tx);
                if (n0 + col < Cg) dx_row[col] = from_accum<Element>(acc[i][jj]);
            }
        }
    } else {
        simt16x16::TensorOpWarpTile<Element, Passes, BM, BN> warp_tile(tid);

        // ---- main loop: as above, each stage multiplied on tensor cores ----------------------------------
        if (k_tiles > 0) {
            pipelined_main_loop(
                k_tiles, [&]() { tap_update(); load_tile(); }, [&]() { tap_advance(); load_tile(); }, store_tile,
                [&](int stage) { warp_tile.stage(&As[stage][0][0], &Bs[stage][0][0]); });
        }

        // ---- epilogue: fragments -> dx, consecutive lanes on consecutive channels ------------------------
        warp_tile.template epilogue<false>([&](int row, int col, float v) {
            if (m0 + row < gemm_m && n0 + col < Cg) dx_at(row, col) = from_accum<Element>(v);
        });
    }
}

template <typename Element, typename Idx, int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__(kThreads, min_blocks(TM * TN, sizeof(typename Accum<Element>::type)))
conv_dgrad_tiled(const Element* __restrict__ dy, const Element* __restrict__ w, Element* __restrict__ dx,
                 const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Idx), int n_tiles) {
    dgrad_tiled<Element, Idx, BM, BN, TM, TN>(dy, w, dx, nonfinite, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS),
                                              n_tiles);
}

// The tiled kernel on tensor cores (Element __half with Passes 1; float for the caller's TF32 (1) or 3xTF32 (3));
// launch bounds: simt16x16::tensorop_min_blocks. The float instantiations trap below sm_80 (plans choose them only
// on sm_80+).
template <typename Element, typename Idx, int BM, int BN, int Passes>
__global__ void __launch_bounds__(kThreads, simt16x16::tensorop_min_blocks(BM, BN, Passes))
conv_dgrad_tensorop(const Element* __restrict__ dy, const Element* __restrict__ w, Element* __restrict__ dx,
                    const int* __restrict__ nonfinite, GPUCONV_CONV_PROBLEM_PARAMS(Idx), int n_tiles) {
    if constexpr (!TensorOpMath<Element, Passes>::kAvailable) {
        __trap();
    } else {
        dgrad_tiled<Element, Idx, BM, BN, BM / 16, BN / 16, Passes>(
            dy, w, dx, nonfinite, ConvProblemSize<Idx>(GPUCONV_CONV_PROBLEM_ARGS), n_tiles);
    }
}

}  // namespace dgrad
}  // namespace gpuconv

using gpuconv::dgrad::conv_dgrad_analytic;
using gpuconv::dgrad::conv_dgrad_col2im;
using gpuconv::dgrad::conv_dgrad_tiled;
using gpuconv::dgrad::conv_dgrad_tensorop;
