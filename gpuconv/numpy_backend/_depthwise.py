"""Depthwise convolution on the CPU (one input channel per group: groups = C, K = C x multiplier), tap by tap.

Per group the GEMMs of conv.py's gather path are taps x 1 by 1 x multiplier: far too thin for BLAS (8x56x56x128,
3x3, groups 128, float32, one thread on the CPU box: 29.5 ms per fprop against PyTorch's 1.2 ms). Here every
window tap is one broadcast multiply and one add over a box of outputs (_box_list), in the accumulator dtype
(float32 for float16); y's and dy's channel k = c*m + j (channel c's m multiplier outputs side by side) is
handled as [j, c] wherever a NumPy call would otherwise run m-long inner loops (_by_multiplier):
    fprop  y[o, c*m + j]    = sum over taps of x[o*s + tap*d - pb, c] * w[tap, c*m + j]
    dgrad  dx[i, c]         = sum over taps and j of dy[o, c*m + j] * w[tap, c*m + j], o*s + tap*d - pb = i
    wgrad  dw[tap, c*m + j] = sum over o of x[o*s + tap*d - pb, c] * dy[o, c*m + j]
fprop gathers per y box, dgrad per dx box: a dx box reads, per tap, the dy cells whose window puts the tap on
it, a strided subset of the box (`tap_range` solved for o), so boxes are independent (worker pool, any stride and
dilation, no scatter). wgrad sums per-box partials in box order (_parallel.sum_in_order), so results do not
depend on the thread count. Padding is never materialised and never multiplied. Measured on the CPU box (one
thread, float32, 3x3 SAME, N=8; fprop / dgrad / wgrad ms, per-group GEMMs -> here): 56x56x128 29.5/29.8/31.4 ->
9.5/9.7/9.8 (PyTorch's fprop 1.1-1.4 ms), 112x112x32 23.5/23.7/23.7 -> 16.6/16.8/18.0, 7x7x960 2.9/2.8/2.6 ->
1.0/0.9/0.8; with multiplier 2, 56x56x128 -> 256, 178/317/69 ms with the multiplier as the trailing axis ->
26/22/21 (PyTorch 11-20/14/16). Each tap's multiply and add are memory-bound passes; no NumPy call fuses them.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from . import _parallel, _window
from ._window import box_shape, boxes, tap_range, tap_slices


# Problems with fewer output values than this stay on the calling thread (as pool.py's sweeps, which make as
# few passes per tap: waking a worker costs more than small boxes save).
_PARALLEL_MIN = 2**18


def applies(p: ConvProblem) -> bool:
    """One input channel per group (TF's depthwise convolution, with any channel multiplier), several groups."""
    return p.groups > 1 and p.group_c == 1


def _offsets(p: ConvProblem) -> list:
    """Per window tap, row-major over (T, R, S) as w's taps, its input offsets (ConvProblem.tap_offset)."""
    return [p.tap_offset(tap) for tap in itertools.product(range(p.T), range(p.R), range(p.S))]


def _filter(w: np.ndarray, p: ConvProblem, acc: np.dtype) -> np.ndarray:
    """w (T, R, S, 1, K) as (taps, C, m) in the accumulator dtype: output channel k = c*m + j at [tap, c, j]."""
    return np.ascontiguousarray(w.reshape(p.T * p.R * p.S, p.C, p.group_k), dtype=acc)


def _by_multiplier(a: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y-shaped a (N, Z, P, Q, K) viewed as (N, Z, P, Q, m, C): output channel k = c*m + j at [..., j, c]."""
    return a.reshape(a.shape[:4] + (p.C, p.group_k)).swapaxes(-1, -2)


def _box_list(dims, values_per_position: int, acc: np.dtype) -> list:
    """Boxes of positions holding values_per_position accumulator values each (a sum and a product: 2 x K), in
    the pooling sweeps' budget: smaller, cache-resident boxes measured slower (8x56x56x128 3x3 fprop, one
    thread: 13.4 ms in 256 KiB boxes, 11.1 in 512 KiB, 9.3 in 4 MiB; per tap and box the Python work costs more
    than the cache misses it saves)."""
    unit = values_per_position * acc.itemsize
    return list(boxes(dims, unit, min(_window.SCRATCH_BYTES, _window.POOL_BOX_BYTES)))


def fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y (N, Z, P, Q, K) of a depthwise problem, summed per box in a (positions, m, C) accumulator (x's cells
    broadcast over the multipliers: C-long inner loops) and stored into y's (C, m) order once."""
    acc = accumulator_dtype(x.dtype)
    m = p.group_k
    wm = np.ascontiguousarray(_filter(w, p, acc).transpose(0, 2, 1))      # (taps, m, C): the accumulators' order
    offsets = _offsets(p)
    y = np.empty(p.y_shape, x.dtype)
    ym = _by_multiplier(y, p)
    direct = m == 1 and acc == x.dtype                 # sums straight into y

    def one(box) -> None:
        shape = box_shape(box) + (m, p.C)
        total = ym[box] if direct else np.empty(shape, acc)
        total[...] = 0
        prod = np.empty(shape, acc)
        for t, off in enumerate(offsets):
            found = tap_slices(box, off, p.stride, (p.D, p.H, p.W))
            if found is not None:
                inner, sel = found
                np.multiply(x[sel][..., None, :], wm[t], out=prod[inner], dtype=acc)
                total[inner] += prod[inner]
        if not direct:
            out = ym[box]
            for j in range(m):               # per multiplier: C-long inner loops (one transposing copy: m-long)
                out[..., j, :] = total[..., j, :]

    _parallel.map_chunks(one, _box_list(p.y_shape[:4], 2 * p.K, acc), y.size >= _PARALLEL_MIN)
    return y


def dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dx (N, D, H, W, C) of a depthwise problem, gathered per dx box (see the module docstring). Per tap, a
    cell's m products are summed in multiplier order, then added to its total."""
    acc = accumulator_dtype(dy.dtype)
    wt, m = _filter(w, p, acc), p.group_k                                  # (taps, C, m): dy's channel order
    offsets = _offsets(p)
    dx = np.empty(p.x_shape, dy.dtype)
    dy6 = dy.reshape(p.y_shape[:4] + (p.C, m))

    def one(box) -> None:
        shape = box_shape(box) + (p.C,)
        total = dx[box] if acc == dx.dtype else np.empty(shape, acc)
        total[...] = 0
        # Products in dy's (C, m) order (one C*m-long inner loop), then summed over m by strided adds (C-long
        # inner loops; a reduction over the trailing axis of length m would run m values per inner loop).
        prod = np.empty(box_shape(box) + (p.C, m), acc)
        summed = np.empty(shape, acc) if m > 1 else prod[..., 0]
        for t, off in enumerate(offsets):
            # The dy cells o whose tap t lands in the box (o*s + off in [start, stop)), and where it lands.
            rng = [tap_range(0, o, s, f, b.start, b.stop)
                   for o, s, f, b in zip(p.y_shape[1:4], p.stride, off, box[1:])]
            if any(hi <= lo for lo, hi, _ in rng):
                continue
            src = dy6[(box[0],) + tuple(slice(lo, hi) for lo, hi, _ in rng)]
            dst = (slice(None),) + tuple(slice(i0 - b.start, i0 - b.start + (hi - lo - 1) * s + 1, s)
                                         for (lo, hi, i0), s, b in zip(rng, p.stride, box[1:]))
            np.multiply(src, wt[t], out=prod[dst], dtype=acc)
            if m > 1:
                products = prod[dst]
                np.add(products[..., 0], products[..., 1], out=summed[dst])
                for j in range(2, m):
                    summed[dst] += products[..., j]
            total[dst] += summed[dst]
        if total.dtype != dx.dtype:
            dx[box] = total

    per_position = 2 * p.C if m == 1 else (m + 2) * p.C
    _parallel.map_chunks(one, _box_list(p.x_shape[:4], per_position, acc), dx.size >= _PARALLEL_MIN)
    return dx


def wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw (T, R, S, 1, K) of a depthwise problem: per dy box and tap the products' sum over the box's positions,
    box partials added in box order."""
    acc = accumulator_dtype(x.dtype)
    m = p.group_k
    offsets = _offsets(p)
    dym = _by_multiplier(dy, p)
    dw = np.zeros((len(offsets), m, p.C), acc)

    def partial(box, bufs: list) -> None:
        part = bufs[0]
        part[...] = 0
        # (positions, m, C) in memory (one transposing copy per box when m > 1): the products then run C-long
        # inner loops over contiguous operands (8x56x56x128, m = 2: 33 -> 20 ms against the strided view).
        g = dym[box] if m == 1 else np.ascontiguousarray(dym[box])
        prod = np.empty(box_shape(box) + (m, p.C), acc)
        for t, off in enumerate(offsets):
            found = tap_slices(box, off, p.stride, (p.D, p.H, p.W))
            if found is not None:
                inner, sel = found
                np.multiply(x[sel][..., None, :], g[inner], out=prod[inner], dtype=acc)   # float16: exact products
                np.sum(prod[inner], axis=(0, 1, 2, 3), out=part[t])

    _parallel.sum_in_order(partial, _box_list(p.y_shape[:4], 2 * p.K, acc), [dw], dy.size >= _PARALLEL_MIN)
    return np.ascontiguousarray(dw.transpose(0, 2, 1)).reshape(p.w_shape).astype(x.dtype, copy=False)
