// gpuconv pooling kernels: max pooling (with and without argmax), average pooling, and their gradients.
//
// Canonical layout (docs/internals.md): x (N, D, H, W, C) -> y (N, Z, P, Q, C), window (T, R, S), stride
// (sd, sh, sw), pad_before (pd, ph, pw); 2-D problems have D = Z = T = 1. Window (z, p, q) covers input cells
// d in [z*sd - pd, z*sd - pd + T), h in [p*sh - ph, ...+R), w in [q*sw - pw, ...+S); cells outside x are padding
// and never take part. Every window holds at least one input cell (geometry.pool_problem guarantees it).
//
// Layout of the work: one thread per VEC consecutive channels of one output element of the kernel (y for
// forward kernels, x for gradients), the channel index fastest, so consecutive threads read and write
// consecutive addresses in NHWC (coalesced); grid-stride loops over the total / VEC lane groups. VEC = 1 is one
// element per thread with scalar accesses; VEC > 1 (the plan checks C % VEC == 0 and that every array is aligned
// to min(16, VEC * element size) bytes) moves each thread's lanes with 64/128-bit accesses (load_lanes /
// store_lanes, common.cuh) and runs the scalar computation once per lane: same scan rule, same summation order
// per element, so every VEC gives the same bits. I is the index type (int, or long long when a tensor has
// >= 2^31 elements), chosen by the launch plan. Sums accumulate in Accum<V> (float for __half) in a fixed
// order: no atomics, bit-identical results run to run. Gradients are gathers: each input cell loops over the
// <= ceil(k/s) windows per axis that cover it.
//
// Kernel parameters, shared by every kernel after its arrays and `total` (the number of elements written, a
// multiple of VEC):
//   D, H, W, C, T, R, S, Z, P, Q, sd, sh, sw, pd, ph, pw   (all of type I)
#include "common.cuh"

namespace gpuconv {

// ---- problem geometry -------------------------------------------------------------------------------------
template <typename I> struct PoolGeom {
    I D, H, W, C, T, R, S, Z, P, Q, sd, sh, sw, pd, ph, pw;
};

#define GPUCONV_POOL_PARAMS I D, I H, I W, I C, I T, I R, I S, I Z, I P, I Q, I sd, I sh, I sw, I pd, I ph, I pw
#define GPUCONV_POOL_GEOM {D, H, W, C, T, R, S, Z, P, Q, sd, sh, sw, pd, ph, pw}

// Position of a flat index into a channels-last 5-D tensor (n, a, b, e, c) of extents (., A, B, E, C).
template <typename I> struct Pos5 { I n, a, b, e, c; };

template <typename I> __device__ __forceinline__ Pos5<I> unflatten5(I i, I A, I B, I E, I C) {
    Pos5<I> r;
    r.c = i % C;  i /= C;
    r.e = i % E;  i /= E;
    r.b = i % B;  i /= B;
    r.a = i % A;
    r.n = i / A;
    return r;
}

// In-bounds cells of window (z, p, q): [d0, d1) x [h0, h1) x [w0, w1).
template <typename I> struct Span3 { I d0, d1, h0, h1, w0, w1; };

template <typename I> __device__ __forceinline__ Span3<I> window_cells(const PoolGeom<I>& g, I z, I p, I q) {
    Span3<I> s;
    window_span(z, g.T, g.sd, g.pd, g.D, s.d0, s.d1);
    window_span(p, g.R, g.sh, g.ph, g.H, s.h0, s.h1);
    window_span(q, g.S, g.sw, g.pw, g.W, s.w0, s.w1);
    return s;
}

template <typename I> __device__ __forceinline__ I cell_count(const Span3<I>& s) {
    return (s.d1 - s.d0) * (s.h1 - s.h0) * (s.w1 - s.w0);
}

// ---- the max-pool scan ------------------------------------------------------------------------------------
// Scans the in-bounds cells of one window row-major (d, then h, then w) in the VEC channel planes xc + k,
// k < VEC (xc = x + n*DHWC + c), each lane on its own: the first cell seeds, a later cell replaces only if
// strictly greater (gpuconv::replaces: ties -> first cell, a NaN wins only as the first cell). Gives each
// lane's selected cell's offset ((d*H + h)*W + w)*C from xc and its value. The forward kernels and the
// gradient share this function, so they cannot disagree on a selection.
template <int VEC, typename V, typename I>
__device__ __forceinline__ void max_scan(const V* __restrict__ xc, const PoolGeom<I>& g, const Span3<I>& s,
                                         V (&best)[VEC], I (&best_off)[VEC]) {
    const I first = ((s.d0 * g.H + s.h0) * g.W + s.w0) * g.C;
    load_lanes<VEC>(xc + first, best);
#pragma unroll
    for (int k = 0; k < VEC; ++k) best_off[k] = first;
    for (I d = s.d0; d < s.d1; ++d) {
        for (I h = s.h0; h < s.h1; ++h) {
            I off = ((d * g.H + h) * g.W + s.w0) * g.C;
            for (I w = s.w0; w < s.w1; ++w, off += g.C) {
                V v[VEC];
                load_lanes<VEC>(xc + off, v);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    if (replaces(v[k], best[k])) {
                        best[k] = v[k];
                        best_off[k] = off;
                    }
                }
            }
        }
    }
}

}  // namespace gpuconv

// ============================================================================================================
// max pooling
// ============================================================================================================
// y[n,z,p,q,c] = x[n,d*,h*,w*,c], (d*,h*,w*) = max_scan over the in-bounds cells of window (z,p,q).
// One thread per VEC consecutive y elements; total = N*Z*P*Q*C.
template <typename V, typename I, int VEC>
__global__ void
pool_max_fwd(const V* __restrict__ x, V* __restrict__ y, I total, GPUCONV_POOL_PARAMS) {
    using namespace gpuconv;
    const PoolGeom<I> g = GPUCONV_POOL_GEOM;
    const I x_batch = g.D * g.H * g.W * g.C;
    const I groups = total / VEC;
    for (I j = grid_first<I>(); j < groups; j = grid_step(j, groups)) {
        // ---- setup: output position (first of VEC channels), window, channel planes
        const I i = j * VEC;
        const Pos5<I> o = unflatten5(i, g.Z, g.P, g.Q, g.C);
        const Span3<I> s = window_cells(g, o.a, o.b, o.e);
        // ---- main loop + epilogue
        V best[VEC];
        I off[VEC];
        max_scan<VEC>(x + o.n * x_batch + o.c, g, s, best, off);
        store_lanes<VEC>(y + i, best);
    }
}

// As pool_max_fwd, plus argmax[n,z,p,q,c] = ((d*·H + h*)·W + w*)·C + c  (+ n·D·H·W·C when include_batch),
// TF's max_pool_with_argmax index ((y*W + x)*C + c for 2-D). A is the argmax type (int or long long); the API
// checked that the largest index fits in it.
template <typename V, typename I, typename A, int VEC>
__global__ void
pool_max_argmax_fwd(const V* __restrict__ x, V* __restrict__ y, A* __restrict__ argmax, I total,
                    GPUCONV_POOL_PARAMS, int include_batch) {
    using namespace gpuconv;
    const PoolGeom<I> g = GPUCONV_POOL_GEOM;
    const I x_batch = g.D * g.H * g.W * g.C;
    const I groups = total / VEC;
    for (I j = grid_first<I>(); j < groups; j = grid_step(j, groups)) {
        // ---- setup
        const I i = j * VEC;
        const Pos5<I> o = unflatten5(i, g.Z, g.P, g.Q, g.C);
        const Span3<I> s = window_cells(g, o.a, o.b, o.e);
        const I batch_off = o.n * x_batch;
        // ---- main loop
        V best[VEC];
        I off[VEC];
        max_scan<VEC>(x + batch_off + o.c, g, s, best, off);
        // ---- epilogue: the index in 64 bits only where the plan chose 64-bit indexing; lane k is channel c + k
        store_lanes<VEC>(y + i, best);
        const I base = o.c + (include_batch ? batch_off : I(0));
        A index[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) index[k] = static_cast<A>(off[k] + base + I(k));
        store_lanes<VEC>(argmax + i, index);
    }
}

// ---- shared by the gather gradients: the windows covering an input cell, and the lane epilogue ------------------
namespace gpuconv {
// Calls visit(z, p, q) for every window (z,p,q) that covers input cell c, in increasing (z,p,q) order.
template <typename I, typename Visit>
__device__ __forceinline__ void for_each_covering_window(const PoolGeom<I>& g, const Pos5<I>& c, Visit visit) {
    I z0, z1, p0, p1, q0, q1;
    covering_windows(c.a, g.T, g.sd, g.pd, g.Z, z0, z1);
    covering_windows(c.b, g.R, g.sh, g.ph, g.P, p0, p1);
    covering_windows(c.e, g.S, g.sw, g.pw, g.Q, q0, q1);
    for (I z = z0; z < z1; ++z)
        for (I p = p0; p < p1; ++p)
            for (I q = q0; q < q1; ++q) visit(z, p, q);
}

// Rounds VEC accumulators to V once and stores them as one lane group.
template <int VEC, typename V, typename Acc>
__device__ __forceinline__ void store_accumulated(V* dst, const Acc (&acc)[VEC]) {
    V out[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = from_accum<V>(acc[k]);
    store_lanes<VEC>(dst, out);
}
}  // namespace gpuconv

// dx[n,d,h,w,c] = sum, over the windows (z,p,q) covering (d,h,w) in increasing (z,p,q) order, of dy[n,z,p,q,c]
//                 for those windows whose max_scan selects (d,h,w)   (selection recomputed from x).
// One thread per VEC consecutive x elements; total = N*D*H*W*C. Gather form: no atomics, no memset, a fixed
// summation order per element.
template <typename V, typename I, int VEC>
__global__ void
pool_max_bwd(const V* __restrict__ x, const V* __restrict__ dy, V* __restrict__ dx, I total, GPUCONV_POOL_PARAMS) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    const PoolGeom<I> g = GPUCONV_POOL_GEOM;
    const I x_batch = g.D * g.H * g.W * g.C;
    const I y_batch = g.Z * g.P * g.Q * g.C;
    const I groups = total / VEC;
    for (I j = grid_first<I>(); j < groups; j = grid_step(j, groups)) {
        // ---- setup: this cell (first of VEC channels), its offset in its channel plane, the covering windows
        const I i = j * VEC;
        const Pos5<I> c = unflatten5(i, g.D, g.H, g.W, g.C);
        const I own_off = ((c.a * g.H + c.b) * g.W + c.e) * g.C;
        const V* xc = x + c.n * x_batch + c.c;
        const V* dyc = dy + c.n * y_batch + c.c;
        // ---- main loop: re-run each covering window's scan; read dy only where some lane's scan selects this cell
        Acc acc[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] = Acc(0);
        for_each_covering_window(g, c, [&](I z, I p, I q) {
            V best[VEC];
            I off[VEC];
            max_scan<VEC>(xc, g, window_cells(g, z, p, q), best, off);
            bool any = false;
#pragma unroll
            for (int k = 0; k < VEC; ++k) any = any || off[k] == own_off;
            if (any) {
                V v[VEC];
                load_lanes<VEC>(dyc + ((z * g.P + p) * g.Q + q) * g.C, v);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    if (off[k] == own_off) acc[k] += to_accum(v[k]);
                }
            }
        });
        // ---- epilogue
        store_accumulated<VEC>(dx + i, acc);
    }
}

// ============================================================================================================
// average pooling
// ============================================================================================================
// y[n,z,p,q,c] = (sum of x[n,d,h,w,c] over the in-bounds cells of window (z,p,q), row-major) / count(z,p,q),
// count = number of in-bounds cells (padding never counted). Accumulates in Accum<V>, per lane.
template <typename V, typename I, int VEC>
__global__ void
pool_avg_fwd(const V* __restrict__ x, V* __restrict__ y, I total, GPUCONV_POOL_PARAMS) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    const PoolGeom<I> g = GPUCONV_POOL_GEOM;
    const I x_batch = g.D * g.H * g.W * g.C;
    const I groups = total / VEC;
    for (I j = grid_first<I>(); j < groups; j = grid_step(j, groups)) {
        // ---- setup
        const I i = j * VEC;
        const Pos5<I> o = unflatten5(i, g.Z, g.P, g.Q, g.C);
        const Span3<I> s = window_cells(g, o.a, o.b, o.e);
        const V* xc = x + o.n * x_batch + o.c;
        // ---- main loop
        Acc acc[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] = Acc(0);
        for (I d = s.d0; d < s.d1; ++d) {
            for (I h = s.h0; h < s.h1; ++h) {
                I off = ((d * g.H + h) * g.W + s.w0) * g.C;
                for (I w = s.w0; w < s.w1; ++w, off += g.C) {
                    V v[VEC];
                    load_lanes<VEC>(xc + off, v);
#pragma unroll
                    for (int k = 0; k < VEC; ++k) acc[k] += to_accum(v[k]);
                }
            }
        }
        // ---- epilogue
        const Acc count = static_cast<Acc>(cell_count(s));
        V out[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) out[k] = from_accum<V>(acc[k] / count);
        store_lanes<VEC>(y + i, out);
    }
}

// Divide = true (avg_pool_grad):
//   dx[n,d,h,w,c] = sum over windows o = (z,p,q) covering (d,h,w), increasing order, of dy[n,o,c] / count(o)
// Divide = false (avg_unpool, the adjoint of sum pooling):
//   dx[n,d,h,w,c] = sum over the same windows of dy[n,o,c]
// One thread per VEC consecutive x elements; total = N*D*H*W*C. Gather form: no atomics, a fixed summation
// order per element.
template <typename V, typename I, bool Divide, int VEC>
__global__ void
pool_avg_bwd(const V* __restrict__ dy, V* __restrict__ dx, I total, GPUCONV_POOL_PARAMS) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    const PoolGeom<I> g = GPUCONV_POOL_GEOM;
    const I y_batch = g.Z * g.P * g.Q * g.C;
    const I groups = total / VEC;
    for (I j = grid_first<I>(); j < groups; j = grid_step(j, groups)) {
        // ---- setup
        const I i = j * VEC;
        const Pos5<I> c = unflatten5(i, g.D, g.H, g.W, g.C);
        const V* dyc = dy + c.n * y_batch + c.c;
        // ---- main loop
        Acc acc[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] = Acc(0);
        for_each_covering_window(g, c, [&](I z, I p, I q) {
            V v[VEC];
            load_lanes<VEC>(dyc + ((z * g.P + p) * g.Q + q) * g.C, v);
            if (Divide) {
                const Acc count = static_cast<Acc>(cell_count(window_cells(g, z, p, q)));
#pragma unroll
                for (int k = 0; k < VEC; ++k) acc[k] += to_accum(v[k]) / count;
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) acc[k] += to_accum(v[k]);
            }
        });
        // ---- epilogue
        store_accumulated<VEC>(dx + i, acc);
    }
}

#undef GPUCONV_POOL_PARAMS
#undef GPUCONV_POOL_GEOM
