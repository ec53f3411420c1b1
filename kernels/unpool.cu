// gpuconv unpooling kernels: the argmax scatter (max_unpool, max_pool_grad_with_argmax) and the argmax gather
// (max_unpool_grad). avg_unpool is the adjoint of sum pooling and lives in pool.cu (pool_avg_bwd<V, I, false>).
//
// An update i (a cell of `values`/`argmax`, M cells, N batches) targets the cell of `out` (O cells)
//   dest(i) = argmax[i]                               with include_batch (a flat index into out)
//   dest(i) = (i / (M/N)) * (O/N) + argmax[i]         without (an index into update i's own batch)
// The API layer rejects indices outside [0, limit); these kernels still never touch memory outside out: an
// update with a bad index is skipped by the scatter and gathers 0.
//
// Window scatter (the fast path, one pass; unpool_scatter_windows). When the plan finds disjoint windows that tile
// `out` (plans/unpool.py window_strides: stride s per axis, window o covering cells [o*s, o*s + s), the last one
// to the end of the axis, as 2x2/2 pooling gives), each update i is expected at a cell of its own window (same
// batch item and channel). Its thread writes every in-bounds cell of that window: 0 + values[i] at dest(i), 0
// elsewhere, so every cell of out is written exactly once, coalesced across channels, with no zero-fill and no
// scratch. If dest(i) is not in i's window (argmax from overlapping pooling, or anything else), the thread sets
// *misplaced and the caller (kernel_backend/unpool.py) zero-fills out and runs the five passes below, which are
// right for any argmax. Correct when *misplaced stays 0: then each cell is the destination of at most the one
// update whose window holds it, which wrote it; every other cell gets 0. And then every argmax was in range, so
// the caller skips the API's range check (a pass over argmax and a synchronisation).
//
// Deterministic scatter (no float atomics; duplicate indices must add in a fixed order). Five passes, each a
// grid-stride loop; integer atomics only (their results do not depend on thread order, except where noted,
// and nothing that reaches `out` depends on those):
//   1 count  count[d] = number of updates at d; the update that makes count[d] == 2 appends d to the list of
//            duplicate cells (list order is thread-order dependent; only the list's contents matter).
//   2 alloc  each duplicate cell j gets a bucket of dup_count[j] slots in `bucket` (bucket position is
//            thread-order dependent); count[d] := -(j + 1) so that pass 3 can find the bucket from d.
//   3 place  count[d] == 1: the only update at d stores 0 + its value (the sole writer of out[d]);
//            count[d] < 0: the update claims a slot of its cell's bucket (slot order is thread-order dependent).
//   4 rank   each bucket entry i counts the entries of its bucket smaller than i (its rank r) and writes itself
//            to sorted[base + r]: the bucket sorted by update index, whatever order pass 3 filled it in.
//   5 sum    each duplicate cell sums its updates in increasing update index: out[d] = ((0 + v_i0) + v_i1) + ...
//            in the accumulation type, the order np.add.at uses.
// out is zero-filled before pass 1; cells no update targets keep 0. Work: O(M) for passes 1-3; passes 4-5 cost
// O(b) per entry of a bucket of b duplicates (O(b^2) per bucket): b <= ceil(k/s)^2 for argmax produced by max
// pooling; adversarial argmax with huge buckets is slow but still exact and deterministic.
// Passes 2, 4 and 5 loop over device-side counts (meta[0] duplicate cells, meta[1] bucket slots), so no count
// ever travels back to the host: no synchronisation.
//
// U: an unsigned type of the element's size (the gather moves bits; the plan passes same-size views).
// V: the element type (passes 3 and 5 add). A: the argmax type. I: the index type (int, or long long when M or O
// reaches 2^31).
#include "common.cuh"

namespace gpuconv {

// ---- the destination of one update ------------------------------------------------------------------------
// False when argmax[i] is outside [0, limit): limit = O with include_batch, O/N without.
template <typename A, typename I>
__device__ __forceinline__ bool argmax_dest(const A* __restrict__ argmax, I i, I upd_batch, I out_batch,
                                            I out_total, int include_batch, I& dest) {
    const long long a = static_cast<long long>(argmax[i]);
    const long long limit = include_batch ? static_cast<long long>(out_total) : static_cast<long long>(out_batch);
    if (a < 0 || a >= limit) return false;
    dest = static_cast<I>(a) + (include_batch ? I(0) : (i / upd_batch) * out_batch);
    return true;
}

}  // namespace gpuconv

// ============================================================================================================
// window scatter: the one-pass fast path (top of file)
// ============================================================================================================
// updates/argmax: (N, Z, P, Q, C), total = M cells; out: (N, D, H, W, C); window z of the depth axis is
// [z*sd, z*sd + sd), the last (z = Z - 1) [z*sd, D) (likewise h, w). *misplaced is 0 on entry.
template <typename V, typename A, typename I>
__global__ void
unpool_scatter_windows(const V* __restrict__ values, const A* __restrict__ argmax, V* __restrict__ out,
                       int* __restrict__ misplaced, I total, I Z, I P, I Q, I C, I D, I H, I W, I sd, I sh, I sw,
                       int include_batch) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    const V zero = from_accum<V>(Acc(0));
    const I out_batch = D * H * W * C;
    const I upd_batch = Z * P * Q * C;
    const I out_total = (total / upd_batch) * out_batch;
    for (I i = grid_first<I>(); i < total; i = grid_step(i, total)) {
        I r = i / C;
        const I c = i - r * C;
        const I q = r % Q;
        r /= Q;
        const I p = r % P;
        r /= P;
        const I z = r % Z;
        const I base = (r / Z) * out_batch;                      // first cell of the update's batch item
        // an index out of range is in no window: dest -1
        I in_range_dest;
        const long long dest = argmax_dest(argmax, i, upd_batch, out_batch, out_total, include_batch, in_range_dest)
                                   ? static_cast<long long>(in_range_dest) : -1LL;
        const V v = from_accum<V>(Acc(0) + to_accum(values[i]));
        const I d0 = z * sd, h0 = p * sh, w0 = q * sw;
        const I d1 = z == Z - 1 ? D : d0 + sd;
        const I h1 = p == P - 1 ? H : h0 + sh;
        const I w1 = q == Q - 1 ? W : w0 + sw;
        bool found = false;
        for (I d = d0; d < d1; ++d) {
            for (I h = h0; h < h1; ++h) {
                const I row = base + (d * H + h) * W * C + c;       // cell (d, h, 0, c); every x stays < O
                for (I w = w0; w < w1; ++w) {
                    const I x = row + w * C;
                    const bool hit = static_cast<long long>(x) == dest;
                    found = found || hit;
                    out[x] = hit ? v : zero;
                }
            }
        }
        if (!found) *misplaced = 1;                              // every writer stores the same 1
    }
}

// ============================================================================================================
// scatter: out[dest(i)] += values[i], deterministic (passes 1-5 above)
// ============================================================================================================
// Pass 1. count[dest(i)] += 1 for every update i; dup_cells[meta[0]++] = d when count[d] reaches 2.
// count and meta are zero on entry. total = M.
template <typename A, typename I>
__global__ void
unpool_scatter_count(const A* __restrict__ argmax, I* __restrict__ count, I* __restrict__ meta,
                     I* __restrict__ dup_cells, I total, I upd_batch, I out_batch, I out_total, int include_batch) {
    using namespace gpuconv;
    for (I i = grid_first<I>(); i < total; i = grid_step(i, total)) {
        I d;
        if (!argmax_dest(argmax, i, upd_batch, out_batch, out_total, include_batch, d)) continue;
        if (atomic_add_index(&count[d], I(1)) == I(1)) {
            dup_cells[atomic_add_index(&meta[0], I(1))] = d;
        }
    }
}

// Pass 2. For duplicate cell j < meta[0] at d = dup_cells[j]: dup_count[j] = count[d],
// dup_start[j] = first slot of a fresh bucket of count[d] slots (meta[1] += count[d]), count[d] = -(j + 1).
template <typename I>
__global__ void
unpool_scatter_alloc(I* __restrict__ count, I* __restrict__ meta, const I* __restrict__ dup_cells,
                     I* __restrict__ dup_count, I* __restrict__ dup_start) {
    using namespace gpuconv;
    const I cells = meta[0];
    for (I j = grid_first<I>(); j < cells; j = grid_step(j, cells)) {
        const I d = dup_cells[j];
        const I b = count[d];
        dup_count[j] = b;
        dup_start[j] = atomic_add_index(&meta[1], b);
        count[d] = -(j + I(1));
    }
}

// Pass 3. count[d] == 1: out[d] = 0 + values[i] (the only update at d; adding to zero as the scatter does, so
// -0.0 becomes +0.0). count[d] = -(j + 1): bucket[dup_start[j]++] = i. Afterwards dup_start[j] is one past the
// end of bucket j. total = M.
template <typename V, typename A, typename I>
__global__ void
unpool_scatter_place(const V* __restrict__ values, const A* __restrict__ argmax, const I* __restrict__ count,
                     I* __restrict__ dup_start, I* __restrict__ bucket, V* __restrict__ out, I total,
                     I upd_batch, I out_batch, I out_total, int include_batch) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    for (I i = grid_first<I>(); i < total; i = grid_step(i, total)) {
        I d;
        if (!argmax_dest(argmax, i, upd_batch, out_batch, out_total, include_batch, d)) continue;
        const I c = count[d];
        if (c == I(1)) {
            out[d] = from_accum<V>(Acc(0) + to_accum(values[i]));
        } else {
            bucket[atomic_add_index(&dup_start[-c - I(1)], I(1))] = i;
        }
    }
}

// Pass 4. For bucket slot k < meta[1] holding update i (cell d, bucket j = -count[d] - 1 of b entries starting
// at base = dup_start[j] - b): sorted[base + #{entries of bucket j below i}] = i.
template <typename A, typename I>
__global__ void
unpool_scatter_rank(const A* __restrict__ argmax, const I* __restrict__ count, const I* __restrict__ meta,
                    const I* __restrict__ dup_count, const I* __restrict__ dup_start, const I* __restrict__ bucket,
                    I* __restrict__ sorted, I upd_batch, I out_batch, I out_total, int include_batch) {
    using namespace gpuconv;
    const I slots = meta[1];
    for (I k = grid_first<I>(); k < slots; k = grid_step(k, slots)) {
        const I i = bucket[k];
        I d;
        argmax_dest(argmax, i, upd_batch, out_batch, out_total, include_batch, d);  // valid: i was placed
        const I j = -count[d] - I(1);
        const I b = dup_count[j];
        const I base = dup_start[j] - b;
        I rank = 0;
        for (I e = base; e < base + b; ++e) rank += bucket[e] < i ? I(1) : I(0);
        sorted[base + rank] = i;
    }
}

// Pass 5. For duplicate cell j < meta[0] at d: out[d] = sum of values[sorted[base .. base + b)] in that
// (increasing update index) order, accumulated in Accum<V>.
template <typename V, typename I>
__global__ void
unpool_scatter_sum(const V* __restrict__ values, const I* __restrict__ meta, const I* __restrict__ dup_cells,
                   const I* __restrict__ dup_count, const I* __restrict__ dup_start, const I* __restrict__ sorted,
                   V* __restrict__ out) {
    using namespace gpuconv;
    typedef typename Accum<V>::type Acc;
    const I cells = meta[0];
    for (I j = grid_first<I>(); j < cells; j = grid_step(j, cells)) {
        const I b = dup_count[j];
        const I base = dup_start[j] - b;
        Acc acc = Acc(0);
        for (I e = base; e < base + b; ++e) acc += to_accum(values[sorted[e]]);
        out[dup_cells[j]] = from_accum<V>(acc);
    }
}

// ============================================================================================================
// gather
// ============================================================================================================
// values[i] = grad[dest(i)] for every update i (0 where argmax[i] is out of range, which sets *invalid: the caller
// then runs the API's range check, which raises; while *invalid stays 0 every index was in range and the check's
// own pass over argmax is spared). total = M; grad has O cells. *invalid is 0 on entry.
template <typename U, typename A, typename I>
__global__ void
unpool_gather(const U* __restrict__ grad, const A* __restrict__ argmax, U* __restrict__ values,
              int* __restrict__ invalid, I total, I upd_batch, I grad_batch, I grad_total, int include_batch) {
    using namespace gpuconv;
    for (I i = grid_first<I>(); i < total; i = grid_step(i, total)) {
        I d;
        const bool in_range = argmax_dest(argmax, i, upd_batch, grad_batch, grad_total, include_batch, d);
        values[i] = in_range ? grad[d] : U(0);
        if (!in_range) *invalid = 1;                             // every writer stores the same 1
    }
}
