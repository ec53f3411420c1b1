"""Depthwise convolution on the CPU (one input channel per group: groups = C, K = C x multiplier m): per box of
outputs, one np.einsum over every window tap.

Per group the GEMMs of conv.py's gather path are taps x 1 by 1 x m: far too thin for BLAS. A multiply and an add
per tap over a box (this module until 2026-11-23) are two memory-bound NumPy passes per tap with C-long inner
loops. Here a box is one einsum call (sum-of-products loops: a multiply-add per tap and value, no product
array) over a strided window view (_window_view) of a copy of the box's input cells:
    fprop  y[o, c*m + j]    = sum over taps of x[o*s + tap*d - pb, c] * w[tap, c*m + j]
    wgrad  dw[tap, c*m + j] = sum over o of x[o*s + tap*d - pb, c] * dy[o, c*m + j]
    dgrad  dx[i, c]         = sum over taps and j of dy[o, c*m + j] * w[tap, c*m + j], o*s + tap*d - pb = i:
           per stride phase of dx (i = phase + s*a) a stride-1 correlation of dy with that phase's taps, flipped
A row's output columns and channels form one axis (q*C + c, w tiled along the columns), so the inner loops run
whole rows however few the channels; with a column stride above 1 the copy unrolls the column taps (one strided
copy per tap) so that those runs stay contiguous. The copy holds zeros where a window reads padding (for dgrad:
a dy cell out of range), which are multiplied: conv.py has already sent problems whose operand meeting them is
not finite (w for fprop and dgrad, dy's border outputs for wgrad) to _nonfinite.py, so a zero only ever
multiplies a finite value and adds an exact zero. Boxes are independent (worker pool); wgrad adds its box
partials in box order (_parallel.sum_in_order) over a partition that does not depend on the worker count, so no
result depends on the thread count.

Measured on the CPU box (one thread, float32, N = 8, 3x3 SAME; fprop / dgrad / wgrad ms, per-tap passes -> here;
benchmarks/numpy_depthwise.py, results/cpu_depthwise.md): 112x112x32 14.1 / 13.9 / 17.3 -> 4.4 / 4.6 / 4.4
(PyTorch's oneDNN 1.1 / 1.8 / 1.6); 112x112x64 stride 2 7.5 / 12.0 / 9.4 -> 4.9 / 5.3 / 5.8; 7x7x1024 0.92 / 0.95 /
0.80 -> 0.57 / 0.61 / 0.69; 112x112x8 8.8 / 8.9 / 14.1 -> 1.2 / 1.2 / 1.7; 56x56x128 with m = 2 25 / 22 / 21 ->
9.3 / 9.3 / 9.5 (PyTorch 11 / 14 / 15).
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from . import _parallel
from ._window import box_shape, boxes, ceil_div, dgrad_phases, phases_cover, thread_buffer

# Problems with fewer output values than this stay on the calling thread (waking a worker costs more than small
# boxes save).
_PARALLEL_MIN = 2**18

# Box budget: the gathered input cells and the box's outputs. Each box costs an einsum set-up and a dozen small
# NumPy calls, so large boxes pay: measured on the CPU box (one thread; fprop / wgrad / dgrad ms) 8x56x56x128
# 1 MiB 4.9 / 5.4 / 4.9, 8 MiB 4.0 / 3.9 / 4.0, 32 MiB 5.1 / 4.3 / 5.0; stride 2, 8x112x112x64: 6.1 / 6.7 / 6.2,
# 4.8 / 4.9 / 5.5, 7.0 / 7.0 / 5.6. With several workers boxes shrink (to BOX_MIN_BYTES) so that each worker
# gets about three; wgrad's always as for _WGRAD_SHARE workers where the problem is large enough for the pool
# (one thread: 8x14x14x512 1.2 -> 1.45 ms, 8x28x28x256 2.4 -> 2.6, larger layers unchanged).
BOX_BYTES = 8 * 2**20
BOX_MIN_BYTES = 2**20

# wgrad's boxes are sized for this many workers whatever the pool's size (see wgrad).
_WGRAD_SHARE = 2

# Bound on one box's tiled filter (taps x columns x C values, all multipliers): boxes are split along the columns
# to stay within it. A column of a 3x3 filter over 1024 float32 channels is 36 KiB, so 28 columns fit; no
# MobileNet layer is split (the widest, 112 columns x 32 channels, tiles to 126 KiB).
TILE_BYTES = 2**20


def applies(p: ConvProblem) -> bool:
    """One input channel per group (TF's depthwise convolution, with any channel multiplier), several groups."""
    return p.groups > 1 and p.group_c == 1


class _Axis(NamedTuple):
    """One spatial axis of a correlation out[o] = sum over t < taps of src[o*stride + lo + t*dil] * w[t]."""
    stride: int
    lo: int
    dil: int
    taps: int

    def extent(self, count: int) -> int:
        """Source cells that `count` consecutive outputs read."""
        return (count - 1) * self.stride + (self.taps - 1) * self.dil + 1


def _rows(a: np.ndarray) -> np.ndarray:
    """a (..., q, c) with each q's c values contiguous and q stepping by whole runs, as (..., q*c): a view."""
    assert a.strides[-1] == a.itemsize and a.strides[-2] == a.shape[-1] * a.itemsize, a.strides
    return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))


def _gather(src: np.ndarray, batch: slice, starts, steps, out: np.ndarray) -> None:
    """out[:, i, j, l] = src[batch, starts[0] + i*steps[0], starts[1] + j*steps[1], starts[2] + l*steps[2]]
    where that cell exists, else 0 (out: (nb, count_d, count_h, count_w, C))."""
    inside, sel = [], []
    for axis, (start, step) in enumerate(zip(starts, steps)):
        count, n = out.shape[1 + axis], src.shape[1 + axis]
        lo, hi = min(count, max(0, ceil_div(-start, step))), max(0, min(count, ceil_div(n - start, step)))
        if hi <= lo:
            out[...] = 0
            return
        inside.append((lo, hi))
        sel.append(slice(start + lo * step, start + (hi - 1) * step + 1, step))
    np.copyto(out[(slice(None),) + tuple(slice(lo, hi) for lo, hi in inside)], src[(batch,) + tuple(sel)],
              casting="unsafe")
    for axis, (lo, hi) in enumerate(inside):
        head = (slice(None),) * (1 + axis)
        out[head + (slice(0, lo),)] = 0
        out[head + (slice(hi, None),)] = 0


def _window_view(sources: list, batch: slice, origin, counts, axes, acc: np.dtype) -> np.ndarray:
    """V (J, nb, z, p, q*C, T, R, S), read-only: V[j, n, z, p, q*C + c, t, r, s] = sources[j][batch][n,
    (origin + o)*stride + lo + tap*dil per axis, c] (0 outside the source) for the box of `counts` outputs from
    `origin`, gathered into this thread's buffer "depthwise" in dtype acc. Column stride 1: one copy of the
    cells, the column taps step through it; else one strided copy per column tap (W-unrolled)."""
    nb = batch.stop - batch.start
    C = sources[0].shape[-1]
    ad, ah, aw = axes
    ext_d, ext_h = ad.extent(counts[0]), ah.extent(counts[1])
    starts = [o * a.stride + a.lo for o, a in zip(origin, axes)]
    nq = counts[2]
    unrolled = aw.stride > 1
    cols = nq * aw.taps if unrolled else aw.extent(nq)
    shape = (len(sources), nb, ext_d, ext_h, cols * C)
    buf = thread_buffer("depthwise", int(np.prod(shape)), acc).reshape(shape)
    for j, src in enumerate(sources):
        if not unrolled:
            _gather(src, batch, starts, (1, 1, 1), buf[j].reshape(nb, ext_d, ext_h, cols, C))
            continue
        for s in range(aw.taps):
            part = buf[j, ..., s * nq * C:(s + 1) * nq * C].reshape(nb, ext_d, ext_h, nq, C)
            _gather(src, batch, (starts[0], starts[1], starts[2] + s * aw.dil), (1, 1, aw.stride), part)
    st, it = buf.strides, buf.itemsize
    tap_w = nq * C * it if unrolled else aw.dil * C * it
    return as_strided(buf, (len(sources), nb, counts[0], counts[1], nq * C, ad.taps, ah.taps, aw.taps),
                      (st[0], st[1], ad.stride * st[2], ah.stride * st[3], it, ad.dil * st[2], ah.dil * st[3], tap_w),
                      writeable=False)


def _share(parallel: bool) -> int:
    """Workers that fprop's and dgrad's boxes are sized for (their outputs do not depend on the partition)."""
    return _parallel.workers() if parallel else 1


def _boxes(dims, unit: int, C: int, taps: int, it: int, share: int) -> list:
    """Boxes of output positions (batch, z, p, q slices) of about BOX_BYTES at `unit` bytes per position (less
    where the work is to be shared by `share` workers, see BOX_BYTES), split along the columns so that a tiled
    filter (taps x columns x C values) stays within TILE_BYTES."""
    budget = BOX_BYTES
    if share > 1:
        budget = max(BOX_MIN_BYTES, min(budget, math.prod(dims) * unit // (3 * share)))
    cap = max(1, TILE_BYTES // (taps * C * it))
    out = []
    for box in boxes(dims, unit, budget):
        q = box[3]
        out.extend(box[:3] + (slice(a, min(a + cap, q.stop)),) for a in range(q.start, q.stop, cap))
    return out


def _tiles(wk: np.ndarray, widths) -> dict:
    """{nq: wk (J, T, R, S, C) repeated along nq columns as (J, T, R, S, nq*C)} for the box widths."""
    return {nq: np.ascontiguousarray(np.broadcast_to(wk[..., None, :], wk.shape[:4] + (nq, wk.shape[-1])))
            .reshape(wk.shape[:4] + (nq * wk.shape[-1],)) for nq in set(widths)}


def _filter(w: np.ndarray, p: ConvProblem, acc: np.dtype) -> np.ndarray:
    """w (T, R, S, 1, C*m) as (m, T, R, S, C) in dtype acc: w[tap, c*m + j] at [j, tap, c]."""
    return np.ascontiguousarray(np.moveaxis(w.reshape(p.T, p.R, p.S, p.C, p.group_k), -1, 0), dtype=acc)


def _over_x(p: ConvProblem, acc: np.dtype) -> tuple[list, int]:
    """fprop's and wgrad's window geometry over x (per axis: stride, -pad_before, dilation, filter taps) and the
    bytes per output position of a box: its K outputs and the x cells gathered for it (W-unrolled: S copies)."""
    axes = [_Axis(s, -pb, d, k) for s, pb, d, k in zip(p.stride, p.pad_before, p.dilation, (p.T, p.R, p.S))]
    gathered = p.C * p.stride[0] * p.stride[1] * (p.S if p.stride[2] > 1 else 1)
    return axes, acc.itemsize * (p.K + gathered)


def _bounds(box) -> tuple[slice, tuple, tuple]:
    """A box's batch slice, the first output of each spatial axis and its output counts."""
    return box[0], tuple(b.start for b in box[1:]), box_shape(box)[1:]


def fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y (N, Z, P, Q, K) of a depthwise problem: per box and multiplier one einsum into y's channels c*m + j."""
    acc = accumulator_dtype(x.dtype)
    m, C = p.group_k, p.C
    axes, unit = _over_x(p, acc)
    y = np.empty(p.y_shape, x.dtype)
    parallel = y.size >= _PARALLEL_MIN
    chunks = _boxes(p.y_shape[:4], unit, C, p.T * p.R * p.S * m, acc.itemsize, _share(parallel))
    tiles = _tiles(_filter(w, p, acc), [b[3].stop - b[3].start for b in chunks])
    direct = acc == y.dtype and m == 1

    def one(box) -> None:
        batch, origin, counts = _bounds(box)
        view = _window_view([x], batch, origin, counts, axes, acc)[0]
        rows = _rows(y[box])                 # (nb, z, p, q*K): output channel c*m + j of column q at q*K + c*m + j
        if direct:
            np.einsum("nzpktrs,trsk->nzpk", view, tiles[counts[2]][0], out=rows)
            return
        # einsum's loops for strided operands are 3-5x slower than a contiguous sum and a strided copy.
        total = thread_buffer("depthwise_sum", int(np.prod(view.shape[:4])), acc).reshape(view.shape[:4])
        for j in range(m):
            np.einsum("nzpktrs,trsk->nzpk", view, tiles[counts[2]][j], out=total)
            rows[..., j::m] = total

    _parallel.map_chunks(one, chunks, parallel)
    return y


def wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw (T, R, S, 1, K) of a depthwise problem: per dy box and multiplier one einsum of the window view with
    dy's channel c*m + j into (taps, q*C), summed over the columns; box partials added in box order."""
    acc = accumulator_dtype(x.dtype)
    m, C = p.group_k, p.C
    axes, unit = _over_x(p, acc)
    parallel = dy.size >= _PARALLEL_MIN
    # The box partition sets the order of the partials' float sums: it follows the problem, never the worker
    # count (a fixed share of _WGRAD_SHARE where the problem is large enough for the pool), so that no bit of dw
    # depends on GPUCONV_NUM_THREADS.
    chunks = _boxes(p.y_shape[:4], unit, C, p.T * p.R * p.S, acc.itemsize, _WGRAD_SHARE if parallel else 1)
    dw = np.zeros((m, p.T, p.R, p.S, C), acc)

    def partial(box, bufs: list) -> None:
        part = bufs[0]
        batch, origin, counts = _bounds(box)
        view = _window_view([x], batch, origin, counts, axes, acc)[0]
        rows = _rows(dy[box])
        for j in range(m):
            g = rows
            if m > 1 or dy.dtype != acc:
                # A contiguous operand of view's dtype: einsum's loops for strided or mixed ones are 3-5x slower.
                g = thread_buffer("depthwise_sum", int(np.prod(view.shape[:4])), acc).reshape(view.shape[:4])
                np.copyto(g, rows[..., j::m], casting="unsafe")
            per_column = np.einsum("nzpktrs,nzpk->trsk", view, g)
            np.sum(per_column.reshape(p.T, p.R, p.S, counts[2], C), axis=3, out=part[j])

    _parallel.sum_in_order(partial, chunks, [dw], parallel)
    return np.moveaxis(dw, 0, -1).reshape(p.w_shape).astype(x.dtype)


def _phase_axes(p: ConvProblem) -> list[dict]:
    """dgrad per spatial axis: {phase: (_Axis over dy, taps)} for the dx phases i = phase + s*a that some tap
    reaches (_window.dgrad_phases). A phase's taps, in decreasing k, read increasing dy rows at a constant step
    (lcm(s, d) / s), so each phase is a stride-1 correlation over dy with the taps flipped."""
    out = []
    for per_phase in dgrad_phases(p):
        axis = {}
        for phase, taps in per_phase.items():
            step = taps[1][1] - taps[0][1] if len(taps) > 1 else 1
            axis[phase] = (_Axis(1, taps[0][1], step, len(taps)), [tap for tap, _ in taps])
        out.append(axis)
    return out


def dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dx (N, D, H, W, C) of a depthwise problem: per stride phase of dx and box of its cells one einsum over the
    phase's taps and the multipliers (dy's channels c*m + j gathered as planes j)."""
    acc = accumulator_dtype(dy.dtype)
    m, C = p.group_k, p.C
    wk = _filter(w, p, acc)
    dx = np.empty(p.x_shape, dy.dtype)
    per_axis = _phase_axes(p)
    if not phases_cover(p, per_axis):
        dx[...] = 0                                              # phases no tap reaches
    planes = [dy[..., j::m] for j in range(m)]
    direct = acc == dx.dtype and p.stride[2] == 1
    parallel = dx.size >= _PARALLEL_MIN
    unit = acc.itemsize * C * (1 + m)                            # a dx position's sum and its dy cells gathered
    work = []
    for combo in itertools.product(*(ph.items() for ph in per_axis)):
        phase = tuple(ph for ph, _ in combo)
        axes = [axis for _, (axis, _) in combo]
        taps = [ks for _, (_, ks) in combo]
        grid = dx[(slice(None),) + tuple(slice(ph, None, s) for ph, s in zip(phase, p.stride))]
        sub = wk[np.ix_(range(m), *taps)]                        # (m, taps per axis..., C), flipped order
        ntaps = sub.shape[1] * sub.shape[2] * sub.shape[3]
        chunks = _boxes(grid.shape[:4], unit, C, ntaps * m, acc.itemsize, _share(parallel))
        tiles = _tiles(sub, [b[3].stop - b[3].start for b in chunks])
        work.extend((grid, axes, tiles, box) for box in chunks)

    def one(item) -> None:
        grid, axes, tiles, box = item
        batch, origin, counts = _bounds(box)
        view = _window_view(planes, batch, origin, counts, axes, acc)
        if direct:
            np.einsum("jnzpktrs,jtrsk->nzpk", view, tiles[counts[2]], out=_rows(grid[box]))
        else:
            summed = thread_buffer("depthwise_sum", int(np.prod(view.shape[1:5])), acc).reshape(view.shape[1:5])
            np.einsum("jnzpktrs,jtrsk->nzpk", view, tiles[counts[2]], out=summed)
            grid[box] = summed.reshape(summed.shape[:3] + (counts[2], C))

    _parallel.map_chunks(one, work, parallel)
    return dx
