"""Pooling, max-pool argmax and unpooling on the CPU, vectorised over windows.

Every op loops over the T*R*S window taps, never over output cells: for a box of output positions and one tap,
the in-bounds outputs read (or write) one strided slice of x (`_window.tap_range`); padding is never
materialised and never selected. Boxes keep every scratch array (masks, tap ids, float32 accumulators for
float16) within _window.SCRATCH_BYTES, except that a float16 gradient box is never smaller than one batch item
(so that every cell is summed in float32 and rounded exactly once).

Windows that tile the rows (stride == window, e.g. 2x2/2) take a fast path (see "Tiled fast path" below).
Problems with few output positions per tap (global pooling, ResNet's 7x7 head) reduce whole windows
instead, one NumPy reduction per group of windows (_whole_windows; _by_windows decides).

Only window taps that touch x for some output are visited (_taps): a huge window on a small input costs the input
and output extents. Threads (_parallel): boxes that write disjoint outputs (every sweep's output boxes; scatters
without overlapping windows or with whole-item accumulators; argmax_scatter / argmax_gather index chunks that
write disjoint outputs, or slices of a large chunk) run on the worker pool, each with per-thread scratch (total
scratch: workers x the per-box budget); scatters whose boxes add into shared cells run in box order. Sweeps and
index chunks under _PARALLEL_MIN output values or indices stay on the calling thread.

Max scan rule (TF's MaxPoolWithArgmax on CPU): row-major over the window, the first in-bounds cell seeds the
maximum and a later cell replaces it only if strictly greater. Processing the taps in row-major order with a
strict `>` and seeding from the first in-bounds cell gives exactly that: ties keep the first cell, a NaN wins
only as the first cell, and a NaN later in the window is never selected. The replacement is a bitwise select
through an all-ones/zero mask of the value's width (compare, then xor/and/xor), which is exact for every dtype
(signed zeros, NaN payloads) and about 3x faster than np.copyto(where=) or np.where (one tap over 2.7M
float32 values: 4.2 ms against 13.7 ms, measured on the CPU box). Max pooling first tries one np.maximum per
tap (_max_by_maximum), which gives the scan's values wherever no NaN and no -0.0 is involved, and scans only the
boxes where one is; argmax and MaxPoolGrad then take each window's first cell equal to its maximum
(_first_max_taps: one comparison and three one-byte ops per tap). ResNet's 3x3/2 SAME stem pooling of
8x112x112x64 post-ReLU floats, one thread on the CPU box: max_pool 5.6-6.3 ms against 15.3, argmax 12.7 against
17.9, MaxPoolGrad 22.6 against 28.1; a 2x2x2 3-D max_pool of 32x64x64x64 floats: 4.3 against 9.5 ms (windows
that tile the input, such as that one since, take the tiled fast path below instead).

Windows of one plane that do not tile the rows take the separable selection of _separable.py for the outputs
whose windows lie inside x (_sweep_boxes: its boxes, then the border's): the maxima of each input row over the
window columns, then of those over the window rows, and the first maximal row's first maximal column. The same
stem pooling, one thread (2026-11-23, per-tap sweep -> separable, best of 7 on a busy box): max_pool 5.9 -> 4.4
ms, argmax 13.4 -> 8.8, MaxPoolGrad 23.5 -> 20.6 (its scatter stays per tap); 3x3/1 over 8x28x28x256: 2.6 ->
1.7, 7.8 -> 5.8, 12.4 -> 11.1; 5x5/1 over 8x28x28x64: 2.5 -> 1.7, 6.7 -> 4.5, 13.5 -> 10.3.
"""
from __future__ import annotations

import functools
import itertools
import math
import threading

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import PoolProblem
from . import _float16_bits, _parallel, _separable, _whole_windows, _window
from ._window import axis_taps, box_shape, boxes, cell_counts, first_cells, interior, tap_slices

# Values per argmax_scatter chunk: small enough that integer sums in float64 stay exact (< 2^52 for
# |v| < 2^31) and the float64 chunk accumulator stays within the scratch budget.
_SCATTER_CHUNK = 2**20

# argmax_scatter / _gather take batch items with at least this many indices one at a time (a chunk's Python
# work is then small against its scatter); smaller items are grouped into chunks.
_ITEM_CHUNK_MIN = 2**16

# Index chunks of at least this many values are split into one piece per worker (argmax_scatter / _gather;
# smaller ones: waking a worker costs more than it saves).
_PIECE_MIN = 2**18
# Values per block of the slab scatter's +0 (64 KiB of float32: a temporary malloc keeps on its heap).
_ZERO_SIGN_BLOCK = 2**14

# Pooling sweeps with fewer output values than this run on the calling thread: waking a worker costs more than
# it saves (2x2 argmax pooling of 2x22x30x512 floats, 169K outputs, on the CPU box: 0.30 ms serial, 0.32-0.55
# ms on 2 workers; 4x22x30x512 floats, 338K outputs: 0.52 ms serial, 0.41 ms on 2 workers).
_PARALLEL_MIN = 2**18


def _pool_boxes(p: PoolProblem, unit: int):
    """Output boxes of a pooling sweep: cache-sized (POOL_BOX_BYTES), never above the scratch budget."""
    return boxes(p.y_shape[:4], unit, min(_window.SCRATCH_BYTES, _window.POOL_BOX_BYTES))


def _sweep_boxes(p: PoolProblem, dtype: np.dtype, unit: int) -> list:
    """Output boxes of a max-selection sweep (max_pool, argmax, max_pool_grad): where _separable applies, its
    boxes of interior windows and cache-sized boxes of the border, else _pool_boxes."""
    if not _separable.applies(p):
        return list(_pool_boxes(p, unit))
    budget = min(_window.SCRATCH_BYTES, _window.POOL_BOX_BYTES)
    return list(_separable.boxes(p, np.dtype(dtype).itemsize, unit, budget)) + \
        list(_border_boxes(p, interior(p), unit))


@functools.lru_cache(maxsize=64)
def _taps(p: PoolProblem) -> tuple:
    """The window taps (t, r, s) that touch x for some output, in row-major order (the scan order). The others
    read only padding and are skipped by every sweep anyway; leaving them out keeps a huge window cheap. Tap
    numbers j (positions in this list) are what the sweeps record; toff maps them to flat offsets."""
    return tuple(itertools.product(*_tap_axes(p)))


def _tap_axes(p: PoolProblem) -> list:
    return [axis_taps(n, k, s, 1, pb, o) for n, k, s, pb, o in
            zip((p.D, p.H, p.W), p.window, p.stride, p.pad_before, (p.Z, p.P, p.Q))]


def _by_windows(p: PoolProblem, op: str) -> bool:
    """Whether whole-window reductions (_whole_windows) replace the tap sweeps for op ("avg", "spread", "max",
    "argmax", "max_grad"): where the sweeps' calls per tap are shared by too few output positions. Averages and
    max values: no more positions than live taps; the selection (argmax, max_grad) at least four taps per position
    (one thread on the CPU box, float32: 8x12x12x64, 6x6/3, 9 positions of 36 taps: argmax 0.30 ms whole, 0.59
    by the sweep; 32x16x16x256, 8x8/2, 25 of 64: 8.7 against 7.9). Max values keep the tiled fast path where it
    applies; "spread" needs windows that do not overlap (each cell then gets one value; max_grad with overlaps
    scatters the selected cells' indices instead)."""
    positions, taps = p.Z * p.P * p.Q, len(_taps(p))
    if op == "spread" and _overlapping(p):
        return False
    if op == "max" and _tiled(p, values_only=True):
        return False
    return (4 if op in ("argmax", "max_grad") else 1) * positions <= taps


def _tap_slices(p: PoolProblem, box, tap):
    """_window.tap_slices for one window tap (offset tap - pad_before): the box's outputs whose cell is in bounds
    and the x slice they read; None when there are none."""
    return tap_slices(box, [t - b for t, b in zip(tap, p.pad_before)], p.stride, (p.D, p.H, p.W))


def _bits(dtype: np.dtype) -> np.dtype:
    """The unsigned integer dtype of dtype's width: masks and bit-exact selects work on these views."""
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def _tap_dtype(p: PoolProblem, dtype: np.dtype) -> np.dtype:
    """Tap numbers are kept in x's width where they fit, so one mask serves values and tap numbers."""
    need = np.min_scalar_type(max(0, math.prod(len(a) for a in _tap_axes(p)) - 1))
    return _bits(dtype) if need.itemsize <= np.dtype(dtype).itemsize else need


def _mask(cmp, a, b, out: np.ndarray) -> np.ndarray:
    """out = all ones where cmp(a, b), else 0 (out unsigned), for the bitwise select below (a bool mask and a
    masked copy, np.copyto(where=), are about 3x slower).

    0 - out, not np.negative(out, out=out): NumPy 2.4's in-place np.negative skips elements of some strided
    views (e.g. a[:, :, 1:2, 0:1] of a (2, 1, 2, 2, 1) array), while binary ufuncs in place are fine.
    """
    cmp(a, b, out=out, casting="unsafe")
    return np.subtract(out.dtype.type(0), out, out=out)


def _select_bits(dst: np.ndarray, src, mask: np.ndarray, tmp: np.ndarray) -> None:
    """dst = src where mask is all ones, else dst unchanged; bit-exact (NaN payloads, signed zeros) for any dtype
    of mask's width. src: an array or a scalar."""
    d = dst.view(mask.dtype)
    s = src.view(mask.dtype) if isinstance(src, np.ndarray) else mask.dtype.type(src)
    np.bitwise_xor(d, s, out=tmp)
    np.bitwise_and(tmp, mask, out=tmp)
    np.bitwise_xor(d, tmp, out=d)


class _Scratch:
    """Box-shaped scratch arrays of a pooling sweep, allocated once per thread for the largest box it sees
    (boxes of one sweep may run on several workers: _parallel)."""

    def __init__(self, dtypes: dict):
        self.dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        self._local = threading.local()

    def get(self, shape) -> dict:
        n = int(np.prod(shape))
        loc = self._local
        if n > getattr(loc, "size", 0):
            loc.size = n
            loc.flat = {k: np.empty(n, dt) for k, dt in self.dtypes.items()}
        return {k: a[:n].reshape(shape) for k, a in loc.flat.items()}

    def unit(self, channels: int) -> int:
        return channels * sum(dt.itemsize for dt in self.dtypes.values())


def _select_scratch(x_dtype, tap_dtype=None) -> _Scratch:
    """Scratch of _select (mask, tmp; with tap_dtype the tap numbers) and, with taps, of _first_max_taps."""
    dts = {"mask": _bits(x_dtype), "tmp": _bits(x_dtype)}
    if tap_dtype is not None:
        dts.update(tap=tap_dtype, first=np.uint8, ne=bool, cand=np.uint8)
        if np.dtype(tap_dtype).itemsize != np.dtype(x_dtype).itemsize:
            dts["tap_mask"] = tap_dtype
            dts["tap_tmp"] = tap_dtype
    return _Scratch(dts)


def _seed(x: np.ndarray, p: PoolProblem, box, y: np.ndarray) -> tuple:
    """y (box-shaped) = each window's first in-bounds cell, the scan's seed. Returns the first tap left to scan
    (0 with padding before: rescanning a window's seed cell changes nothing) and the per-axis first cells (None
    without padding before)."""
    if any(p.pad_before):
        fd = first_cells(box[1].start, box[1].stop, p.stride[0], p.pad_before[0])
        fh = first_cells(box[2].start, box[2].stop, p.stride[1], p.pad_before[1])
        fw = first_cells(box[3].start, box[3].stop, p.stride[2], p.pad_before[2])
        y[...] = x[box[0]][:, fd[:, None, None], fh[None, :, None], fw[None, None, :]]
        return 0, (fd, fh, fw)
    # Without padding before, tap (0, 0, 0) is in bounds for every output and seeds it.
    _, sel = _tap_slices(p, box, (0, 0, 0))
    y[...] = x[sel]
    return 1, None


def _box_cells(p: PoolProblem, box) -> tuple:
    """Slices of x holding every in-bounds cell of the box's windows (and, where stride > window, the cells
    between them)."""
    cells = [box[0]]
    for a, n in enumerate((p.D, p.H, p.W)):
        lo = max(0, box[a + 1].start * p.stride[a] - p.pad_before[a])
        hi = min(n, (box[a + 1].stop - 1) * p.stride[a] - p.pad_before[a] + p.window[a])
        cells.append(slice(lo, max(lo, hi)))
    return tuple(cells)


def _max_by_maximum(x: np.ndarray, p: PoolProblem, box, y: np.ndarray) -> bool:
    """y (box-shaped) = the window maxima by np.maximum over the taps, one pass per tap instead of the scan's
    five (_select's compare, mask and three-op bit select). False where that may differ from the scan, and the
    caller must scan: a NaN among the maxima (np.maximum propagates a NaN from any cell, the scan only from a
    window's first) or a zero maximum where the box's cells hold a -0.0 (np.maximum may return either zero)."""
    first, _ = _seed(x, p, box, y)
    for tap in _taps(p)[first:]:
        found = _tap_slices(p, box, tap)
        if found is not None:
            inner, sel = found
            ys = y[inner]
            np.maximum(ys, x[sel], out=ys)
    return _maxima_exact(x, p, box, y)


def _maxima_exact(x: np.ndarray, p: PoolProblem, box, y: np.ndarray) -> bool:
    """Whether the maxima y of the box's windows, computed by np.maximum, are the scan's: no NaN among them and
    no zero maximum where the box's cells hold a -0.0."""
    if y.dtype.kind != "f":
        return True
    least = np.minimum.reduce(y, axis=None)
    if np.isnan(least):
        return False
    # A least maximum of zero (post-ReLU data) or above settles whether some maximum is zero without a pass.
    zero = least == 0 if least >= 0 else np.equal(y, 0).any()
    return not (zero and _has_negative_zero(x[_box_cells(p, box)]))


def _first_max_taps(x: np.ndarray, p: PoolProblem, box, y: np.ndarray, sc: dict):
    """The scan's selected taps where y holds exact maxima without NaN (_max_by_maximum returned True): each
    window's first in-bounds cell equal to its maximum, as sc["first"] (uint8 positions in _taps(p)), by one
    comparison and three one-byte ops per tap (min over taps of t where x_t == y, else 255) instead of _select's
    seven passes of the value's width. None with more than 254 taps."""
    taps = _taps(p)
    if len(taps) > 254:
        return None
    first = sc["first"]
    first[...] = 255
    for j, tap in enumerate(taps):
        found = _tap_slices(p, box, tap)
        if found is None:
            continue
        inner, sel = found
        ne, cand, f = sc["ne"][inner], sc["cand"][inner], first[inner]
        np.not_equal(x[sel], y[inner], out=ne)
        np.multiply(ne.view(np.uint8), np.uint8(255 - j), out=cand)      # 255 where not equal, else 0
        cand += np.uint8(j)
        np.minimum(f, cand, out=f)
    return first


def _separable_maxima(x: np.ndarray, p: PoolProblem, box, y: np.ndarray):
    """y = the maxima of an interior box of _separable's (its maxima()); the state its selections take, or None
    where the exact scan must redo the box (a NaN, or a -0.0 next to a zero maximum: _maxima_exact)."""
    state = _separable.maxima(x, p, box, y)
    return state if _maxima_exact(x, p, box, y) else None


def _taps_of_box(x: np.ndarray, p: PoolProblem, box, y: np.ndarray, sc: dict) -> np.ndarray:
    """y (box-shaped) = the maxima and the returned array each window's selected tap (positions in _taps(p)):
    np.maximum and first-equal comparisons where no NaN or -0.0 is involved (separably for _separable's
    interior boxes), else the exact scan."""
    if _separable.inside(p, box):
        state = _separable_maxima(x, p, box, y)
        if state is not None:
            return _separable.first_taps(p, state, y, sc["first"])
    elif _max_by_maximum(x, p, box, y):
        first = _first_max_taps(x, p, box, y, sc)
        if first is not None:
            return first
    _select(x, p, box, y, sc, True)
    return sc["tap"]


def _select(x: np.ndarray, p: PoolProblem, box, y: np.ndarray, sc: dict, want_tap: bool) -> None:
    """Max-scan one output box: y (box-shaped) gets the maxima, sc["tap"] (if want_tap) the selected taps."""
    tap_id = sc["tap"] if want_tap else None
    first, seeds = _seed(x, p, box, y)
    if seeds is not None:
        fd, fh, fw = seeds
        if want_tap:
            # Tap number of the seed cell: (fd - (z*s - pb)) etc. row-major over (T, R, S).
            td = fd - (np.arange(box[1].start, box[1].stop) * p.stride[0] - p.pad_before[0])
            th = fh - (np.arange(box[2].start, box[2].stop) * p.stride[1] - p.pad_before[1])
            tw = fw - (np.arange(box[3].start, box[3].stop) * p.stride[2] - p.pad_before[2])
            # As positions in _taps(p) (per axis: the position of the tap among the axis's live taps).
            ad, ah, aw = [np.asarray(a) for a in _tap_axes(p)]
            td, th, tw = np.searchsorted(ad, td), np.searchsorted(ah, th), np.searchsorted(aw, tw)
            seed = (td[:, None, None] * len(ah) + th[None, :, None]) * len(aw) + tw[None, None, :]
            tap_id[...] = seed[None, :, :, :, None]
    elif want_tap:
        tap_id[...] = 0
    for j, tap in enumerate(_taps(p)[first:], start=first):
        found = _tap_slices(p, box, tap)
        if found is None:
            continue
        inner, sel = found
        xs, ys, mask, tmp = x[sel], y[inner], sc["mask"][inner], sc["tmp"][inner]
        _mask(np.greater, xs, ys, mask)          # strictly greater: ties keep the earlier cell, NaN never wins
        _select_bits(ys, xs, mask, tmp)
        if want_tap:
            if "tap_mask" in sc:
                tmask = sc["tap_mask"][inner]
                np.copyto(tmask, mask.view(mask.dtype.str.replace("u", "i")), casting="unsafe")
                _select_bits(tap_id[inner], j, tmask, sc["tap_tmp"][inner])
            else:
                # Taps run in increasing order, so a replacing tap is larger than the current one: max of
                # (j where replaced, else 0) and the current tap is the select in two passes instead of three.
                np.bitwise_and(mask, j, out=tmp)
                np.maximum(tap_id[inner], tmp, out=tap_id[inner])


def max_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    """y[n, o, c] = max over the window's in-bounds cells by the scan rule."""
    y = np.empty(p.y_shape, x.dtype)
    if y.size == 0:
        return y
    if _by_windows(p, "max"):
        _whole_windows.max_pool(x, p, y)
        return y
    if _tiled(p, values_only=True):
        _max_pool_tiled(x, p, y, None, False)
        return y
    scratch = _select_scratch(x.dtype)

    def one(box) -> None:
        if _separable.inside(p, box):
            exact = _separable_maxima(x, p, box, y[box]) is not None
        else:
            exact = _max_by_maximum(x, p, box, y[box])
        if not exact:
            _select(x, p, box, y[box], scratch.get(box_shape(box) + (p.C,)), False)

    _parallel.map_chunks(one, _sweep_boxes(p, x.dtype, scratch.unit(p.C) + p.C * x.itemsize),
                         y.size >= _PARALLEL_MIN)
    return y


def _axis_index(o0: int, o1: int, stride: int, pad_before: int, dtype) -> np.ndarray:
    return (np.arange(o0, o1, dtype=dtype) * stride - pad_before)


def _argmax_box(x: np.ndarray, p: PoolProblem, box, y: np.ndarray, argmax: np.ndarray, sc: dict, toff: np.ndarray,
                include_batch: bool) -> None:
    """Max pooling of one output box (any geometry: _taps_of_box) and the flat indices of its maxima."""
    index_dtype = argmax.dtype
    out = argmax[box]
    separable = _separable.inside(p, box)
    state = _separable_maxima(x, p, box, y[box]) if separable else None
    if state is not None:
        _separable.flat_index(p, state, box, y[box], sc["first"], out)
    else:
        if separable:
            _select(x, p, box, y[box], sc, True)      # a NaN, or a -0.0 next to a zero maximum: the exact scan
            tap_id = sc["tap"]
        else:
            tap_id = _taps_of_box(x, p, box, y[box], sc)
        bd = _axis_index(box[1].start, box[1].stop, p.stride[0], p.pad_before[0], index_dtype)
        bh = _axis_index(box[2].start, box[2].stop, p.stride[1], p.pad_before[1], index_dtype)
        bw = _axis_index(box[3].start, box[3].stop, p.stride[2], p.pad_before[2], index_dtype)
        base = ((bd[:, None, None] * p.H + bh[None, :, None]) * p.W + bw[None, None, :]) * p.C
        if tap_id.dtype == np.uint64:
            tap_id = tap_id.view(np.int64)            # exact (few taps); NumPy 1.x takes no uint64 indices
        np.take(toff, tap_id, out=out, mode="clip")   # "raise" would buffer out
        out += base[..., None]
        out += np.arange(p.C, dtype=index_dtype)
    if include_batch:
        per_batch = p.D * p.H * p.W * p.C
        out += (np.arange(box[0].start, box[0].stop, dtype=index_dtype) * per_batch)[:, None, None, None, None]


# ---------------------------------------------------------------------------------------------------------
# Tiled fast path: windows that tile the rows (stride == window along height and width; one depth tap, or, for
# values only, planes that tile the depth too), the SegNet 2x2/2 case. The generic sweep above makes ~25 passes
# over box-sized arrays per 2x2 window, most of them strided with short (C-long) inner runs. Here, per box of
# output rows (_fast_box):
#   values: m = the window maxima by np.maximum (2x2: max of the two window rows first, over whole contiguous
#           input rows, then of the two window columns). np.maximum agrees with the scan in value wherever no
#           NaN is involved, except that a maximum of +0 and -0 may come out with either sign.
#   check:  one NaN-propagating min-reduction of m: a NaN anywhere in a window makes its maximum NaN, and such
#           a box is redone by the exact sweep; where some maximum is zero and the box's windows hold a -0.0
#           (one integer min-reduction: _has_negative_zero), zero maxima get the bits of their selected cells
#           (below); without a -0.0 they are all +0 already, as on post-ReLU data.
#   index:  without NaN the scan selects the first cell in row-major order that equals the maximum
#           (numerically): its offset from the window origin comes from comparisons with m and a few
#           small-integer ops (_tap_code: one comparison per tap but the last; 2x2: _tap_code_2x2, one
#           comparison of window row 0 with the broadcast maximum and one of column 0's maxima), then int32 adds
#           (_flat_index) and a cast copy into the index output.
#   planes: windows of several planes (max_pool3d, values only: _tiled) take the maximum of their planes first,
#           over whole contiguous rows; a box with a zero maximum next to a -0.0 is then redone exactly.
#   grad:   max_pool_grad takes the same offsets and writes each window row's cells at once: dy (+0) where the
#           offset selects the cell, +0 elsewhere (_scatter_selected).
# Only outputs whose windows lie entirely inside x take this path; the border rows and columns (SAME padding)
# go through the generic sweep. 2x2/2 argmax pooling, float32, single thread on the CPU box: 4x90x120x256
# 6.4 ms (generic sweep 13.6 ms), 4x22x30x512 0.53 ms (1.4 ms); max_pool (values only) about 2.5x faster still.
# ---------------------------------------------------------------------------------------------------------

# Output values per fast box (scratch about 17 bytes per value for float32, 27 for max_pool_grad). Measured on
# the CPU box, 2x2/2 argmax pooling: 2^16..2^18 within noise of each other for 4x90x120x256, 2^18 best for
# 4x22x30x512 (whole batch items per box: fewer NumPy calls), 2^15 10% slower (call overhead).
_FAST_BOX_VALUES = 2**18


def _tiled(p: PoolProblem, values_only: bool = False) -> bool:
    """Whether the tiled fast path applies (per-item indices must fit int32 offsets, and one output position's
    channels a fast box, which keeps its scratch bounded). Windows of several planes (3-D) tile the depth too and
    take it for values only (max_pool3d): their planes are reduced first, and the tap code covers one plane
    (2x2x2 max_pool3d of 2x32x56x56x32 floats, one thread on the CPU box: 3.9 -> 1.9 ms; PyTorch 1.9-2.1 ms)."""
    depth = p.T == 1 or (values_only and p.stride[0] == p.T)
    return (depth and p.stride[1] == p.R and p.stride[2] == p.S and p.T * p.R * p.S > 1
            and p.D * p.H * p.W * p.C < 2**31 and p.C <= _FAST_BOX_VALUES)


def _border_boxes(p: PoolProblem, inner: list, unit: int):
    """Cache-sized boxes covering the outputs outside the interior box (all batch items)."""
    dims = (p.Z, p.P, p.Q)
    fixed = []
    budget = min(_window.SCRATCH_BYTES, _window.POOL_BOX_BYTES)
    for a in range(3):
        lo, hi = inner[a]
        rest = [(0, dims[b]) for b in range(a + 1, 3)]
        for r in ((0, lo), (hi, dims[a])):
            if r[1] <= r[0]:
                continue
            region = [(0, p.N)] + fixed + [r] + rest
            if any(hi_ <= lo_ for lo_, hi_ in region):
                continue
            for sub in boxes([b - a_ for a_, b in region], unit, budget):
                yield tuple(slice(s.start + a_, s.stop + a_) for s, (a_, _) in zip(sub, region))
        fixed.append((lo, hi))


_CACHE = threading.local()


class _FastScratch:
    """Scratch of the fast boxes, carved from this thread's buffer "pool_fast" (_window.thread_buffer: fresh
    multi-MiB scratch on every call made glibc map and fault in new pages each time, 1400 page faults, 2.9 ms
    instead of 0.6 ms per 2x2 argmax pooling of 4x22x30x512 floats on the CPU box); views of the right shape are
    cut per box. Not reentrant within a thread (nothing here calls back into the fast path)."""

    def __init__(self, p: PoolProblem, dtype, values: int, grad: bool = False):
        two = _two_by_two(p)
        wide = 2 if two else p.R                           # stage-1 maxima: 2 (2x2) or R values per output
        code_dt = np.dtype(_code_dtype(p)[0])
        parts = [("cm", dtype, wide * values), ("rel", np.int32, values),
                 ("ne", bool, values)] + ([("code", code_dt, values)] if code_dt != np.int32 else [])
        if two:                                            # _tap_code_2x2's flags of window row 0
            parts += [("row0", bool, 2 * values)]
        if grad:                                           # _scatter_selected: maxima, dy + 0, one row's flags
            parts += [("m", dtype, values), ("dyc", dtype, values), ("flags", bool, p.S * values)]
        if p.T > 1:                                        # _fast_box: the window planes' maximum
            parts += [("planes", dtype, p.R * p.S * values)]
        arrays = _window.thread_buffers("pool_fast", [((n,), dt) for _, dt, n in parts])
        for (name, _, _), a in zip(parts, arrays):
            setattr(self, name, a)
        if code_dt == np.int32:
            self.code = self.rel

    @staticmethod
    def cut(buf: np.ndarray, shape) -> np.ndarray:
        return buf[:math.prod(shape)].reshape(shape)

    @classmethod
    def for_thread(cls, p: PoolProblem, dtype, values: int, grad: bool = False) -> "_FastScratch":
        """This thread's scratch for boxes of up to `values` outputs of p (grad: with max_pool_grad's parts),
        kept for the next call with the same key (carving costs a third of the Python work of a fast box). The
        kept views hold their buffer alive; only one _FastScratch is in use per thread at a time."""
        key = (p, np.dtype(dtype), values, grad)
        kept = getattr(_CACHE, "fast", None)
        if kept is not None and kept[0] == key:
            return kept[1]
        sc = cls(p, dtype, values, grad)
        _CACHE.fast = (key, sc)
        return sc


def _fast_shape(p: PoolProblem, inner: list, nw: int) -> tuple[int, int, int]:
    """(items, rows, columns) of output positions per fast box, about _FAST_BOX_VALUES values: several batch
    items where a whole interior plane fits, else whole interior rows where a row fits. Rows are spread evenly
    over the boxes of a plane. With several workers each worker's share of the interior is split into as few
    equal boxes as the limit allows, one box per worker where a share fits: threads that hand the GIL to each
    other between short NumPy calls lose time (2x2 argmax pooling of 4x22x30x512 floats on the CPU box, 2
    workers: 0.41 ms in 2 boxes, 0.59 ms in 4 boxes, 0.52 ms serial). Box shapes change no result: each window is
    computed on its own. nw: the workers the boxes are for (1 where the sweep runs on the calling thread)."""
    (z0, z1), (p0, p1), (q0, q1) = inner
    # Windows of several planes: half the values, so that the planes' maximum (R*S input values per output) stays
    # in cache too (2x2x2 max_pool3d of 1x16x64x64x64 floats, one thread: 1.10 ms against 1.81 ms).
    limit = _FAST_BOX_VALUES if p.T == 1 else _FAST_BOX_VALUES // 2
    if nw > 1:
        # Each worker's share of the interior in equal boxes of at most _FAST_BOX_VALUES.
        share = max(1, -(-p.N * max(0, z1 - z0) * (p1 - p0) * (q1 - q0) * p.C // nw))
        limit = max(p.C, -(-share // -(-share // limit)))
    cols = max(1, min(q1 - q0, limit // p.C))
    rows = max(1, min(p1 - p0, limit // (cols * p.C)))
    if p1 > p0:
        rows = -(-(p1 - p0) // -(-(p1 - p0) // rows))          # the same number of boxes, rows spread evenly
    items = 1
    if rows == p1 - p0 and cols == q1 - q0:
        # Whole planes: up to twice the values per box (2x2 argmax pooling of 4x22x30x512 floats in one box
        # of 4 items: 0.54 ms instead of 0.63 ms in two boxes; splitting rows gains nothing from larger boxes).
        wide = 2 * _FAST_BOX_VALUES if nw == 1 else limit
        items = max(1, min(p.N, wide // (rows * cols * p.C)))
        items = -(-p.N // -(-p.N // items))                   # items spread evenly too
    return items, rows, cols


def _fast_boxes(p: PoolProblem, inner: list, nw: int):
    """Fast boxes ((n0, n1), z, (p0, p1), (q0, q1)) covering the interior."""
    (z0, z1), (p0, p1), (q0, q1) = inner
    if z1 <= z0 or p1 <= p0 or q1 <= q0:
        return
    items, rows, cols = _fast_shape(p, inner, nw)
    for z in range(z0, z1):
        for n in range(0, p.N, items):
            for a in range(p0, p1, rows):
                for c in range(q0, q1, cols):
                    yield (n, min(n + items, p.N)), z, (a, min(a + rows, p1)), (c, min(c + cols, q1))


def _check(m: np.ndarray, sc: _FastScratch) -> str:
    """"nan" if some maximum is NaN, else "zero" if some maximum is zero, else "ok" (floats: a NaN-propagating
    min-reduction, which also decides when the least maximum is not negative, as on post-ReLU data; otherwise
    a comparison with zero into the byte scratch, lighter than |m| and one reduction)."""
    if m.dtype.kind != "f":
        return "ok"
    least = np.minimum.reduce(m, axis=None)
    if np.isnan(least):
        return "nan"
    if least >= 0:
        return "zero" if least == 0 else "ok"
    return "zero" if np.equal(m, 0, out=sc.cut(sc.ne, m.shape)).any() else "ok"


def _has_negative_zero(v: np.ndarray) -> bool:
    """Whether float array v holds a -0.0: the only float whose bits, read as a signed integer of its width, are
    that integer type's minimum, so one min-reduction without a temporary decides. Without one, no maximum
    np.maximum gives can be -0 and the scan's selected cell of a zero maximum is +0 too: the box needs no zero
    fix (post-ReLU data, where zero maxima are common: SegNet pool3, 4x90x120x256 floats, argmax pooling 15.2 ms
    with the fix, 6.8 ms with this check; values only 14.2 ms and 3.9 ms; CPU box, one thread)."""
    ints = v.view(f"i{v.itemsize}")
    return bool(np.minimum.reduce(ints, axis=None) == np.iinfo(ints.dtype).min)


def _code_dtype(p: PoolProblem) -> tuple[type, int]:
    """(dtype, unit) of _tap_code's tap offsets: uint8 in units of C where the largest offset allows (uint8
    ops on uint8 are 3x cheaper than mixed uint16 x bool ones), else uint16 or int32 in units of 1."""
    top = (p.R - 1) * p.W + p.S - 1
    if top < 2**8:
        return np.uint8, p.C
    return (np.uint16 if top * p.C < 2**16 else np.int32), 1


def _factor(flags: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Boolean flags as a multiplier of code: viewed as uint8 for uint8 codes (uint8 x uint8 ops are cheaper
    than mixed ones), as they are otherwise."""
    return flags.view(np.uint8) if code.dtype == np.uint8 else flags


def _two_by_two(p: PoolProblem) -> bool:
    """Whether the fast path's 2x2 specialisation applies (2x2 windows; the fast path itself has stride 2)."""
    return (p.R, p.S) == (2, 2)


def _tap_code(p: PoolProblem, X: np.ndarray, m: np.ndarray, sc: _FastScratch) -> np.ndarray:
    """The offset of the first tap in row-major order whose value equals the window maximum m (numerically: no
    NaN here), in _code_dtype's dtype and unit, m's shape.

    X: (nb, rows, R, nq, S, C) view of the windows. With n_t = (tap t != m) and tap offsets o_t = (r*W + s)*C
    (increasing), the first equal tap's offset is F_0, F_t = o_t + n_t * (F_{t+1} - o_t), F_{K-1} = o_{K-1}:
    K - 1 comparisons and two small-integer ops per tap, exact in the narrow code dtype (every F_t - o_t lies in
    [0, o_{K-1}]).
    """
    R, S, C = p.R, p.S, p.C
    _, unit = _code_dtype(p)
    taps = [(r, s) for r in range(R) for s in range(S)]
    offs = [(r * p.W + s) * (C // unit) for r, s in taps]
    code = sc.cut(sc.code, m.shape)
    ne = sc.cut(sc.ne, m.shape)
    flag = _factor(ne, code)
    k = len(taps)
    r, s = taps[k - 2]
    np.not_equal(X[:, :, r, :, s], m, out=ne)
    step = offs[k - 1] - offs[k - 2]
    if step == 1 and k > 2:
        # n * 1 + the next difference in one op (unit C).
        np.add(flag, code.dtype.type(offs[k - 2] - offs[k - 3]), out=code, casting="unsafe")
        first = k - 4
        r, s = taps[k - 3]
        np.not_equal(X[:, :, r, :, s], m, out=ne)
        np.multiply(code, flag, out=code)
    else:
        np.multiply(flag, code.dtype.type(step), out=code)
        first = k - 3
    for t in range(first, -1, -1):
        r, s = taps[t]
        np.not_equal(X[:, :, r, :, s], m, out=ne)
        code += code.dtype.type(offs[t + 1] - offs[t])
        np.multiply(code, flag, out=code)
    return code


def _tap_code_2x2(p: PoolProblem, X: np.ndarray, cm: np.ndarray, m: np.ndarray, sc: _FastScratch) -> np.ndarray:
    """_tap_code for 2x2 windows from the column maxima cm (nb, rows, 2, nq, C) (_fast_box): one comparison of
    window row 0 (both columns) with m and one of column 0's maxima with m, instead of three strided tap
    comparisons.

    In row-major order the first tap equal to m is (0,0) if x00 == m, else (0,1) if x01 == m, else (1,0) if column
    0 holds m (then x10 == m), else (1,1): F = n00 * (o01 + n01 * (o10 - o01 + n10 * (o11 - o10))) with the "not"
    flags n00 = (x00 != m), n01 = (x01 != m), n10 = (cm0 != m) and offsets o_rs = (r*W + s)*C. Row 0 is read
    once, contiguously, against m broadcast over the window's two columns; its flags are stored split by column
    like cm, so the steps after it run over contiguous data (SegNet pool3, 4x90x120x256 floats, 1 thread: 6.2
    instead of 6.3-6.4 ms with the row choices X[row 1] > X[row 0] over whole windows and two more comparisons).
    """
    C = p.C
    _, unit = _code_dtype(p)
    o01, o10, o11 = C // unit, p.W * C // unit, (p.W + 1) * C // unit
    nb, rows, nq, _ = m.shape
    code = sc.cut(sc.code, m.shape)
    row0 = sc.cut(sc.row0, (nb, rows, 2, nq, C))
    np.not_equal(X[:, :, 0], m[:, :, :, None, :], out=row0.transpose(0, 1, 3, 2, 4))
    n10 = sc.cut(sc.ne, m.shape)
    np.not_equal(cm[:, :, 0], m, out=n10)
    dt = code.dtype.type
    if o11 - o10 == 1:
        np.add(_factor(n10, code), dt(o10 - o01), out=code, casting="unsafe")
    else:
        np.multiply(_factor(n10, code), dt(o11 - o10), out=code, casting="unsafe")
        code += dt(o10 - o01)
    np.multiply(code, _factor(row0[:, :, 1], code), out=code)      # n01
    code += dt(o01)
    np.multiply(code, _factor(row0[:, :, 0], code), out=code)      # n00
    return code


def _flat_index(p: PoolProblem, code: np.ndarray, sc: _FastScratch, base: np.ndarray, shift: int) -> np.ndarray:
    """rel (int32, code's shape): the flat index within its batch item of the tap at offset `code` (_tap_code)
    from each window's origin base + shift (base broadcasts over the batch axis)."""
    _, unit = _code_dtype(p)
    rel = sc.cut(sc.rel, code.shape)
    if code is not rel:
        np.copyto(rel, code, casting="unsafe")     # a cast copy, then int32 ops: cheaper than a mixed-type multiply
    if unit > 1:
        rel *= np.int32(unit)
    rel += base
    if shift:
        rel += np.int32(shift)
    return rel


def _box_maxima(cells: np.ndarray, p: PoolProblem, m: np.ndarray, sc: _FastScratch, want_index: bool, view):
    """The windows' maxima of a fast box (cells: its input region) into m by np.maximum, on the arrays as given
    (floats, or their unsigned-integer bits: `view` maps each scratch array to the same form). Returns (X, split):
    the (nb, rows, R, nq, S, C) window view and, for 2x2 windows with want_index, the row maxima split by window
    column (None otherwise)."""
    R, S, C = p.R, p.S, p.C
    nb, rows, nq = cells.shape[0], cells.shape[2] // R, cells.shape[3] // S
    plane = cells[:, 0]
    if p.T > 1:
        # Several planes (values only: _tiled): their maximum first, over whole contiguous rows of x. Without a
        # NaN or a -0.0 (checked by the caller) every order of np.maximum gives the scan's bits.
        plane = view(sc.cut(sc.planes, plane.shape))
        np.maximum(cells[:, 0], cells[:, 1], out=plane)
        for t in range(2, p.T):
            np.maximum(plane, cells[:, t], out=plane)
    X = plane.reshape(nb, rows, R, nq, S, C)
    split = None
    if _two_by_two(p):
        # Rows first: the two window rows are whole input rows, read from memory once as long contiguous runs.
        if want_index:
            # Their maximum stored split by window column, split[:, :, s] = (nq, C): the column maxima and
            # _tap_code_2x2's comparisons then run over contiguous data (4x45x60x512 floats: 3.2 ms instead of
            # 3.6 ms with the maxima in x's layout, the column pairs strided and three tap comparisons).
            split = view(sc.cut(sc.cm, (nb, rows, 2, nq, C)))
            np.maximum(X[:, :, 0], X[:, :, 1], out=split.transpose(0, 1, 3, 2, 4))
            np.maximum(split[:, :, 0], split[:, :, 1], out=m)
        else:
            # Values only: the row maxima in x's layout (a contiguous store), then max of column pairs
            # (4x45x60x512 floats: 1.2 ms instead of 1.3 ms with the split layout).
            L = nq * 2 * C
            rm = view(sc.cut(sc.cm, (nb, rows, L)))
            rows2 = X.reshape(nb, rows, 2, L)
            np.maximum(rows2[:, :, 0], rows2[:, :, 1], out=rm)
            pairs = rm.reshape(nb, rows, nq, 2, C)
            np.maximum(pairs[..., 0, :], pairs[..., 1, :], out=m)
    else:
        # Columns first (the taps of each window row), then the window rows.
        cm = view(sc.cut(sc.cm, (nb, rows, R, nq, C))) if S > 1 else X[..., 0, :]
        if S > 1:
            np.maximum(X[..., 0, :], X[..., 1, :], out=cm)
            for s in range(2, S):
                np.maximum(cm, X[..., s, :], out=cm)
        if R == 1:
            np.copyto(m, cm[:, :, 0])
        else:
            np.maximum(cm[:, :, 0], cm[:, :, 1], out=m)
            for r in range(2, R):
                np.maximum(m, cm[:, :, r], out=m)
    return X, split


# Values _sign_free reads (cheap against any call that reaches the fast path).
_SIGN_PROBE = 4096


def _inf_bits(dtype: np.dtype) -> int:
    """+inf's bits as an unsigned integer of float dtype's width: unsigned bits above them are NaNs or carry the
    sign bit."""
    return int(np.array(np.inf, dtype).view(_bits(dtype)))


def _as_is(a: np.ndarray) -> np.ndarray:
    return a


def _sign_free(x: np.ndarray) -> list:
    """A fresh hint for _fast_box's bit-order maxima: [True] where x's first values (of its first row) hold no
    negative value, -0.0 or NaN (as after a ReLU), else [False]; _fast_box turns it off at the first box that
    holds one."""
    if x.dtype.kind != "f":
        return [False]
    head = np.ascontiguousarray(x[0, 0, 0].reshape(-1)[:_SIGN_PROBE]).view(_bits(x.dtype))     # row 0 of item 0
    return [bool(np.maximum.reduce(head, axis=None, initial=0) <= _inf_bits(x.dtype))]


def _fast_box(x: np.ndarray, p: PoolProblem, ns: tuple, z: int, a: int, b: int, q: tuple, m: np.ndarray,
              sc: _FastScratch, want_index: bool, hint: list):
    """Max of the windows of outputs (n0:n1, z, a:b, q0:q1) into m (a view of y, or scratch).

    Returns (status, code): status "nan" (a window holds a NaN, or, with windows of several planes, a zero
    maximum meets a -0.0: m is not valid, redo exactly), "zero" (some maximum is zero: its bits must be taken
    from the selected cell) or "ok"; code (_tap_code: the selected cells' offsets from their window origins) when
    want_index or status is "zero" (None otherwise).

    hint (_sign_free; one list per call, shared by its boxes): while hint[0], the maxima are taken over the
    float bits as unsigned integers first. Where every cell is a non-negative float or +inf (as after a ReLU)
    that order is the values' and no -0.0 exists, so m holds the scan's bits; a cell with the sign bit set (a
    negative value, -0.0) or a NaN is larger than all of those as bits, so one max-reduction of m's bits tells
    (above +inf's bits: the box is redone on the floats and hint[0] turns off). This replaces the NaN/zero check
    of m and the -0.0 pass over the box's input (one thread on the CPU box, post-ReLU floats, SegNet pool3
    4x90x120x256 / pool4 4x44x60x512: argmax 6.5-6.7 -> 5.9-6.1 / 3.0-3.3 -> 2.9 ms, max_pool 3.4-3.5 -> 2.3-2.4 /
    1.4-1.5 -> 1.1 ms; data with negative values unchanged within noise).
    """
    d = z * p.stride[0] - p.pad_before[0]
    h0 = a * p.R - p.pad_before[1]
    w0 = q[0] * p.S - p.pad_before[2]
    cells = x[ns[0]:ns[1], d:d + p.T, h0:h0 + (b - a) * p.R, w0:w0 + (q[1] - q[0]) * p.S]
    status = None
    if hint[0]:
        ux = _bits(x.dtype)
        X, split = _box_maxima(cells.view(ux), p, m.view(ux), sc, want_index, lambda a_: a_.view(ux))
        if np.maximum.reduce(m.view(ux), axis=None) <= _inf_bits(x.dtype):
            status, X, split = "ok", X.view(x.dtype), None if split is None else split.view(x.dtype)
        else:
            hint[0] = False
    if status is None:
        X, split = _box_maxima(cells, p, m, sc, want_index, _as_is)
        status = _check(m, sc)
        if status == "zero":
            if not _has_negative_zero(cells):
                status = "ok"                      # every zero maximum is +0, as its selected cell
            elif p.T > 1:
                return "nan", None                 # the tap code covers one plane: the box is scanned exactly
    if status == "nan" or (status == "ok" and not want_index):
        return status, None
    return status, _tap_code(p, X, m, sc) if split is None else _tap_code_2x2(p, X, split, m, sc)


def _q_base(p: PoolProblem, q: tuple, dtype) -> np.ndarray:
    """(nq, C): flat index of column q's window origin, channel c, without the row term."""
    return ((np.arange(q[0], q[1], dtype=dtype) * p.S - p.pad_before[2]) * p.C)[:, None] + np.arange(p.C, dtype=dtype)


def _fix_zeros(x: np.ndarray, m: np.ndarray, flat: np.ndarray, shift) -> None:
    """m = the selected cells' bits where m == 0 (flat + shift: their indices into x.reshape(-1); shift
    broadcasts over the batch axis)."""
    zm = m == 0
    m[zm] = x.reshape(-1)[(flat + shift)[zm]]


@functools.lru_cache(maxsize=8)
def _tiled_plan(p: PoolProblem, dtype: np.dtype, idx_dt: np.dtype, workers: int, box_values: int) -> tuple:
    """The per-problem setup of _max_pool_tiled, kept for repeated calls (its Python work is a tenth of a small
    pooling call: 4x22x30x512 floats, 2x2 argmax). workers: the workers the box shapes are for. box_values: the
    module's _FAST_BOX_VALUES at the call, which the box shapes follow: part of the cache key, so that no plan
    outlives a change of it (tests change it).
    Arrays are read-only; the largest, the window origins of one fast box, is at most 4 bytes per box value
    (2 MiB), and no scratch buffer is kept here."""
    inner = interior(p)
    items, rows, cols = _fast_shape(p, inner, workers)
    values = items * rows * cols * p.C
    unit = _select_scratch(dtype, _tap_dtype(p, dtype)).unit(p.C) + p.C * dtype.itemsize
    toff = np.array([((t * p.H + r) * p.W + s) * p.C for t, r, s in _taps(p)], idx_dt)
    # Window origins ((d*H + p*R - pad)*W + q*S - pad)*C + c of the first box (rows p0.., columns q0.., d = 0),
    # int32; another box adds a scalar shift.
    (p0, _), (q0, _) = inner[1:]
    hs = (np.arange(p0, p0 + rows, dtype=np.int32) * p.R - p.pad_before[1]) * np.int32(p.W * p.C)
    base = hs[:, None, None] + _q_base(p, (q0, q0 + cols), np.int32)
    toff.flags.writeable = base.flags.writeable = False
    fast_boxes = tuple(_fast_boxes(p, inner, workers))
    border_boxes = tuple(_border_boxes(p, inner, unit))
    return values, toff, p0, q0, base, fast_boxes, border_boxes


def _max_pool_tiled(x: np.ndarray, p: PoolProblem, y: np.ndarray, argmax, include_batch: bool) -> None:
    """y (and argmax, unless None) by the tiled fast path inside, the generic sweep on the border.

    Fast boxes and border boxes are independent chunks (each writes its own outputs) for the worker pool; each
    worker carves its fast-box scratch from its own per-thread buffer."""
    per_batch = p.D * p.H * p.W * p.C
    idx_dt = argmax.dtype if argmax is not None else np.dtype(np.int64)
    parallel = y.size >= _PARALLEL_MIN
    values, toff, p0, q0, base, fast_boxes, border_boxes = _tiled_plan(
        p, x.dtype, idx_dt, _parallel.workers() if parallel else 1, _FAST_BOX_VALUES)
    made: list = []
    hint = _sign_free(x)

    def exact(box) -> dict:
        """Scratch of the exact sweep, made on first use (most calls never need it); its buffers are per thread,
        so workers racing to make it may share whichever object they find."""
        if not made:
            made.append(_select_scratch(x.dtype, _tap_dtype(p, x.dtype)))
        return made[0].get(box_shape(box) + (p.C,))

    def redo(box):
        if argmax is not None:
            _argmax_box(x, p, box, y, argmax, exact(box), toff, include_batch)
        elif not _max_by_maximum(x, p, box, y[box]):
            _select(x, p, box, y[box], exact(box), False)

    def fast(fbox) -> None:
        ns, z, (a, b), q = fbox
        sc = _FastScratch.for_thread(p, x.dtype, values)
        m = y[ns[0]:ns[1], z, a:b, q[0]:q[1]]
        d = z * p.stride[0] - p.pad_before[0]
        shift = ((d * p.H + (a - p0) * p.R) * p.W + (q[0] - q0) * p.S) * p.C
        status, code = _fast_box(x, p, ns, z, a, b, q, m, sc, argmax is not None, hint)
        if status == "nan":
            for n in range(*ns):
                redo((slice(n, n + 1), slice(z, z + 1), slice(a, b), slice(q[0], q[1])))
            return
        if code is None:
            return
        rel = _flat_index(p, code, sc, base[:b - a, :q[1] - q[0]], shift)
        items = None
        if status == "zero" or include_batch:
            items = (np.arange(*ns, dtype=np.int64) * per_batch)[:, None, None, None]
        if argmax is not None:
            out = argmax[ns[0]:ns[1], z, a:b, q[0]:q[1]]
            np.copyto(out, rel, casting="unsafe")           # a cast copy: cheaper than a mixed-type add
            if include_batch:
                out += items.astype(out.dtype)
        if status == "zero":
            _fix_zeros(x, m, rel, items)

    chunks = [(fast, b) for b in fast_boxes] + [(redo, b) for b in border_boxes]
    _parallel.map_chunks(lambda c: c[0](c[1]), chunks, parallel)


def max_pool_argmax(x: np.ndarray, p: PoolProblem, index_dtype, include_batch: bool):
    """Max pooling and the flat index ((d*H + h)*W + w)*C + c (+ n*D*H*W*C with include_batch) of each maximum."""
    index_dtype = np.dtype(index_dtype)
    y = np.empty(p.y_shape, x.dtype)
    argmax = np.empty(p.y_shape, index_dtype)
    if y.size == 0:
        return y, argmax
    if _by_windows(p, "argmax"):
        _whole_windows.max_pool_argmax(x, p, y, argmax, include_batch)
        return y, argmax
    if _tiled(p):
        _max_pool_tiled(x, p, y, argmax, include_batch)
        return y, argmax
    scratch = _select_scratch(x.dtype, _tap_dtype(p, x.dtype))
    # Flat offset of each tap relative to the window origin.
    toff = np.array([((t * p.H + r) * p.W + s) * p.C for t, r, s in _taps(p)], index_dtype)
    _parallel.map_chunks(
        lambda box: _argmax_box(x, p, box, y, argmax, scratch.get(box_shape(box) + (p.C,)), toff, include_batch),
        _sweep_boxes(p, x.dtype, scratch.unit(p.C) + p.C * x.itemsize), y.size >= _PARALLEL_MIN)
    return y, argmax


def _overlapping(p: PoolProblem) -> bool:
    """True when some input cell lies in more than one window (a scatter must then add, not assign): along some
    axis windows are longer than the stride and there are several of them."""
    return any(k > s and o > 1 for k, s, o in zip(p.window, p.stride, (p.Z, p.P, p.Q)))


def _scatter_boxes(p: PoolProblem, dtype: np.dtype, unit: int, select: bool = False):
    """Output boxes for a scatter into dx, and whether dx needs a float32 accumulator (float16 with overlaps).

    With an accumulator a box spans whole batch items, so no input cell is shared by two boxes. select: the
    scatter selects each window's cell first (max_pool_grad: _sweep_boxes' boxes).
    """
    accumulate = _overlapping(p) and accumulator_dtype(dtype) != dtype
    if accumulate:
        per_item = (p.D * p.H * p.W * p.C * 4 + p.Z * p.P * p.Q * unit)
        n_step = max(1, _window.SCRATCH_BYTES // per_item)
        return [(slice(n, min(n + n_step, p.N)), slice(0, p.Z), slice(0, p.P), slice(0, p.Q))
                for n in range(0, p.N, n_step)], True
    return (_sweep_boxes(p, dtype, unit) if select else list(_pool_boxes(p, unit))), False


def _scatter_taps(p: PoolProblem, box, dx: np.ndarray, acc, g: np.ndarray, sc) -> None:
    """Add g's cells to the in-bounds cells of their windows, tap by tap (without overlaps: assign g + 0).

    dx: the full dx (acc is None) or a float32 accumulator for the batch items of box (acc given).
    sc: None (every tap receives g) or the scratch of _select, whose "tap" holds each window's selected tap;
    g then goes to that tap only (as g's bits masked to +0 elsewhere, so a NaN in g reaches its cell only).
    """
    overlap = _overlapping(p)
    for j, tap in enumerate(_taps(p)):
        found = _tap_slices(p, box, tap)
        if found is None:
            continue
        inner, sel = found
        if acc is not None:
            sel = (slice(None),) + sel[1:]
        target = (dx if acc is None else acc)[sel]
        gs = g[inner]
        if sc is not None:
            mask, part = sc["mask"][inner], sc["tmp"][inner]
            _mask(np.equal, sc["tap"][inner], j, mask)
            np.bitwise_and(gs.view(mask.dtype), mask, out=part)
            gs = part.view(g.dtype)
        if overlap:
            target += gs
        else:
            # Each cell gets one value: assigned, plus 0 so that a -0.0 arrives as +0.0, as from TF's sums into
            # zeros (and from overlapping windows and the CUDA kernels); one pass like the copy it replaced, 6-15%
            # slower (max_pool_grad / avg_pool_grad, 2x2/2 on 4x90x120x256 float32, one thread).
            np.add(gs, 0, out=target, casting="same_kind")


def _grad_box(x: np.ndarray, dy: np.ndarray, p: PoolProblem, dx: np.ndarray, box, scratch: _Scratch,
              accumulate: bool) -> None:
    """max_pool_grad of one output box by the generic sweep: each window's selected tap (_taps_of_box), then dy
    scattered to them (_scatter_taps; accumulate: through a float32 accumulator of the box's batch items)."""
    shape = box_shape(box) + (p.C,)
    sc = scratch.get(shape)
    taps = _taps_of_box(x, p, box, np.empty(shape, x.dtype), sc)
    acc = np.zeros((shape[0],) + p.x_shape[1:], np.float32) if accumulate else None
    _scatter_taps(p, box, dx, acc, dy[box], dict(sc, tap=taps))
    if accumulate:
        dx[box[0]] = acc


def _scatter_selected(p: PoolProblem, code: np.ndarray, g: np.ndarray, dx: np.ndarray, ns: tuple, z: int, a: int,
                      q0: int, sc: _FastScratch) -> None:
    """The cells of the windows of outputs (ns, z, a.., q0..) of a tiled problem (each cell in one window) get
    g + 0 at each window's selected cell (code: _tap_code's offsets) and +0 elsewhere, bit for bit what
    _scatter_taps writes (a -0.0 arrives as +0.0, NaN payloads stay). Per window row: one comparison of code with
    the row's tap offsets and one multiply of g's bits by those flags, written as whole contiguous dx rows."""
    R, S, C = p.R, p.S, p.C
    _, unit = _code_dtype(p)
    nb, rows, nq, _ = code.shape
    d = z * p.stride[0] - p.pad_before[0]
    h0, w0 = a * R - p.pad_before[1], q0 * S - p.pad_before[2]
    clean = sc.cut(sc.dyc, code.shape)
    np.add(g, g.dtype.type(0), out=clean)
    bits = clean.view(_bits(g.dtype))[:, :, :, None, :]
    flags = sc.cut(sc.flags, (nb, rows, nq, S, C))
    cells = dx[ns[0]:ns[1], d, h0:h0 + rows * R, w0:w0 + nq * S].reshape(nb, rows, R, nq, S, C)
    for r in range(R):
        offs = np.array([(r * p.W + s) * C // unit for s in range(S)], code.dtype)[:, None]
        np.equal(code[:, :, :, None, :], offs, out=flags)
        np.multiply(bits, flags, out=cells[:, :, r].view(bits.dtype))


def _max_pool_grad_tiled(x: np.ndarray, dy: np.ndarray, p: PoolProblem, dx: np.ndarray, scratch: _Scratch) -> None:
    """max_pool_grad where windows tile the rows: the fast path's tap codes pick each window's cell
    (_fast_box) and _scatter_selected writes dy there; boxes holding a NaN and the border take the generic sweep
    (_grad_box; SegNet pool3, 4x90x120x256 post-ReLU float32, one thread on the CPU box: 12.4 ms against 19.5 ms by the
    exact sweep; pool5, 4x22x30x512: 1.25 against 2.2 ms)."""
    parallel = dy.size >= _PARALLEL_MIN
    values, _, _, _, _, fast_boxes, border_boxes = _tiled_plan(
        p, x.dtype, np.dtype(np.int64), _parallel.workers() if parallel else 1, _FAST_BOX_VALUES)

    hint = _sign_free(x)

    def exact(box) -> None:
        _grad_box(x, dy, p, dx, box, scratch, False)

    def fast(fbox) -> None:
        ns, z, (a, b), q = fbox
        sc = _FastScratch.for_thread(p, x.dtype, values, grad=True)
        m = sc.cut(sc.m, (ns[1] - ns[0], b - a, q[1] - q[0], p.C))
        status, code = _fast_box(x, p, ns, z, a, b, q, m, sc, True, hint)
        if status == "nan":
            for n in range(*ns):
                exact((slice(n, n + 1), slice(z, z + 1), slice(a, b), slice(q[0], q[1])))
            return
        _scatter_selected(p, code, dy[ns[0]:ns[1], z, a:b, q[0]:q[1]], dx, ns, z, a, q[0], sc)

    chunks = [(fast, b) for b in fast_boxes] + [(exact, b) for b in border_boxes]
    _parallel.map_chunks(lambda c: c[0](c[1]), chunks, parallel)


def max_pool_grad(x: np.ndarray, dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    """dx: each window's dy added to the cell the scan rule selects (recomputed from x); overlaps add."""
    dx = np.zeros(p.x_shape, x.dtype)
    if dy.size == 0 or dx.size == 0:
        return dx
    if _by_windows(p, "max_grad"):
        if _overlapping(p):
            # Cells shared by windows: the selected cells' indices, then the repeated-index scatter (float sums
            # per cell in float64, rounded once, as max_pool_grad_with_argmax).
            return argmax_scatter(dy, max_pool_argmax(x, p, np.int64, False)[1], p.x_shape, False)
        _whole_windows.max_pool_grad(x, dy, p, dx)
        return dx
    scratch = _select_scratch(x.dtype, _tap_dtype(p, x.dtype))
    if _tiled(p):
        _max_pool_grad_tiled(x, dy, p, dx, scratch)
        return dx
    box_list, accumulate = _scatter_boxes(p, x.dtype, scratch.unit(p.C) + p.C * x.itemsize, select=True)
    _scatter_map(p, accumulate, lambda box: _grad_box(x, dy, p, dx, box, scratch, accumulate), box_list)
    return dx


def _scatter_map(p: PoolProblem, accumulate: bool, fn, box_list) -> None:
    """Run a scatter's boxes: on the worker pool where boxes write disjoint dx cells (no overlapping windows:
    each cell belongs to one window; or accumulator boxes of whole batch items), else in order on this thread
    (overlapping windows add into shared cells, in box order)."""
    if accumulate or not _overlapping(p):
        _parallel.map_chunks(fn, box_list)
    else:
        for box in box_list:
            fn(box)


def _window_counts(p: PoolProblem, box, dtype) -> np.ndarray:
    """In-bounds cell count of every window of the box, shaped to broadcast against (n, z, p, q, c)."""
    cd = cell_counts(p.D, p.T, p.stride[0], p.pad_before[0], box[1].start, box[1].stop)
    ch = cell_counts(p.H, p.R, p.stride[1], p.pad_before[1], box[2].start, box[2].stop)
    cw = cell_counts(p.W, p.S, p.stride[2], p.pad_before[2], box[3].start, box[3].stop)
    return (cd[:, None, None] * ch[None, :, None] * cw[None, None, :]).astype(dtype)[None, ..., None]


def avg_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    """y = (sum of the window's in-bounds cells) / (their number); padding is never counted."""
    y = np.empty(p.y_shape, x.dtype)
    if y.size == 0:
        return y
    if _by_windows(p, "avg"):
        _whole_windows.avg_pool(x, p, y)
        return y
    acc_dt = accumulator_dtype(x.dtype)
    convert = acc_dt != x.dtype
    taps = _taps(p)

    def one(box) -> None:
        shape = box_shape(box) + (p.C,)
        acc = np.zeros(shape, acc_dt) if convert else y[box]
        if not convert:
            acc[...] = 0
        for tap in taps:
            found = _tap_slices(p, box, tap)
            if found is not None:
                inner, sel = found
                acc[inner] += x[sel]
        acc /= _window_counts(p, box, acc_dt)
        if convert:
            y[box] = acc

    _parallel.map_chunks(one, list(_pool_boxes(p, p.C * acc_dt.itemsize)))   # cache-sized even without scratch
    return y


def _spread(g: np.ndarray, p: PoolProblem, divide: bool) -> np.ndarray:
    """dx: each window's g (divided by its in-bounds count when `divide`) added to its in-bounds cells."""
    dx = np.zeros(p.x_shape, g.dtype)
    if g.size == 0 or dx.size == 0:
        return dx
    if _by_windows(p, "spread"):
        _whole_windows.spread(g, p, dx, divide)
        return dx
    acc_dt = accumulator_dtype(g.dtype)
    box_list, accumulate = _scatter_boxes(p, g.dtype, p.C * acc_dt.itemsize)

    def one(box) -> None:
        gb = g[box]
        if divide:
            gb = np.divide(gb, _window_counts(p, box, acc_dt), dtype=acc_dt)
        acc = np.zeros((box_shape(box)[0],) + p.x_shape[1:], np.float32) if accumulate else None
        _scatter_taps(p, box, dx, acc, gb, None)
        if accumulate:
            dx[box[0]] = acc

    _scatter_map(p, accumulate, one, box_list)
    return dx


def avg_pool_grad(dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    """Gradient of avg_pool: dy / count spread over each window's in-bounds cells; overlaps add."""
    return _spread(dy, p, divide=True)


def avg_unpool(updates: np.ndarray, p: PoolProblem) -> np.ndarray:
    """Each update copied into every in-bounds cell of its window; overlaps add (the adjoint of sum pooling)."""
    return _spread(updates, p, divide=False)


def _index_chunks(argmax: np.ndarray, per_batch_out: int, include_batch: bool) -> tuple[bool, list]:
    """(disjoint, chunks): the flat output indices of argmax by chunks, each chunk a function that makes
    (value slice, base, idx, slab) when it runs (its index array lives only as long as the chunk): flat output
    indices base + idx of the values in the slice.

    Whole-item chunks (disjoint True), where one batch item's indices and a one-byte-per-cell mask of its output
    fit the scratch budget and not include_batch: each indexes the output slab of its own items (disjoint across
    chunks, idx relative to the chunk's slab at base): one item (idx: its argmax, as intp, not to be written) or
    several, as many as let their int64 indices and the mask of the slab fit the scratch budget. Otherwise chunks
    of _SCATTER_CHUNK values with absolute indices (base 0), which may hit cells of other chunks.
    slab: the number of output cells of a whole-items chunk (its indices lie in [0, slab)), else 0.
    """
    n = argmax.shape[0]
    per_item = argmax.size // n
    if not include_batch and per_batch_out + 8 * per_item <= _window.SCRATCH_BYTES:
        # Large items one by one, their indices used as they are (no offset pass into an intp copy: about
        # 0.5 of 5 ms for max_unpool of 4x22x30x512 values on the CPU box); small ones grouped, offset per item.
        items = 1 if per_item >= _ITEM_CHUNK_MIN else max(1, _window.SCRATCH_BYTES // (per_batch_out + 8 * per_item))
        return True, [functools.partial(_item_chunk, argmax, n0, min(n0 + items, n), per_batch_out)
                      for n0 in range(0, n, items)]
    return False, [functools.partial(_value_chunk, argmax, v0, min(v0 + _SCATTER_CHUNK, argmax.size),
                                     per_batch_out, include_batch) for v0 in range(0, argmax.size, _SCATTER_CHUNK)]


def _item_chunk(argmax: np.ndarray, n0: int, n1: int, per_batch_out: int) -> tuple:
    """The whole-item chunk of batch items [n0, n1) (see _index_chunks)."""
    per_item = argmax.size // argmax.shape[0]
    if n1 - n0 == 1:
        idx = argmax[n0].reshape(-1).astype(np.intp, copy=False)
    else:
        idx = np.empty((n1 - n0, per_item), np.intp)
        np.add(argmax[n0:n1].reshape(n1 - n0, -1), (np.arange(n1 - n0) * per_batch_out)[:, None], out=idx)
    return slice(n0 * per_item, n1 * per_item), n0 * per_batch_out, idx.reshape(-1), (n1 - n0) * per_batch_out


def _value_chunk(argmax: np.ndarray, v0: int, v1: int, per_batch_out: int, include_batch: bool) -> tuple:
    """The chunk of flat argmax values [v0, v1), with absolute output indices (see _index_chunks)."""
    per_item = argmax.size // argmax.shape[0]
    idx = argmax.reshape(-1)[v0:v1].astype(np.intp)
    if not include_batch:
        first, last = v0 // per_item, (v1 - 1) // per_item
        if first == last:
            idx += first * per_batch_out
        else:
            idx += (np.arange(v0, v1) // per_item) * per_batch_out
    return slice(v0, v1), 0, idx, 0


def _run_chunks(fn, chunks: list, disjoint: bool, size: int) -> None:
    """fn(*chunk()) for every index chunk: on the workers, one chunk each, where the chunks write disjoint
    outputs, none is large enough to be split into pieces itself (_PIECE_MIN: fn spreads those over the workers)
    and there are at least _PARALLEL_MIN indices (size) in all; else in order on this thread.
    (max_unpool of 4x11x15x512 values, 4 items of 84K indices, on the CPU box: 0.45 ms on 2 workers, 0.66 ms
    serial; max_unpool_grad 0.21 ms against 0.25 ms.)"""
    parallel = disjoint and len(chunks) > 1 and size >= _PARALLEL_MIN and size // len(chunks) < _PIECE_MIN
    _parallel.map_chunks(lambda make: fn(*make()), chunks, parallel)


def _sum_duplicates(idx: np.ndarray, v: np.ndarray, dtype: np.dtype):
    """(unique indices, per-index sums in the integer dtype), exact, wrapping like the dtype (floats:
    _add_float_sums).

    Integers up to 32 bits are summed exactly in float64 (a chunk holds < 2^21 values); int64 is split into
    32-bit halves, each summed exactly, and recombined modulo 2^64.
    """
    lo = int(idx.min())
    span = int(idx.max()) - lo + 1
    local = idx - lo
    if span * 8 > _window.SCRATCH_BYTES:
        order = np.argsort(local, kind="stable")
        local, v = local[order], v[order]
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        uniq = local[starts]

        def seg(w):
            return np.add.reduceat(w, starts)
    else:
        uniq = np.flatnonzero(np.bincount(local, minlength=span))

        def seg(w):
            return np.bincount(local, weights=w, minlength=span)[uniq]
    if dtype.itemsize < 8:
        sums = seg(v.astype(np.float64)).astype(np.int64)
    else:
        v = v.astype(np.int64)
        low = seg((v & 0xFFFFFFFF).astype(np.float64)).astype(np.int64)
        high = seg((v >> 32).astype(np.float64)).astype(np.int64)
        sums = (high << 32) + low
    return uniq + lo, sums.astype(dtype)


# np.add.at runs a fast loop for a 1-D float64 target and index array since NumPy 1.25 (0.3 ms for 200K updates
# on the CPU box, like np.bincount); before, a generic one, 10-20x slower, so older NumPy sums by bincount.
_FAST_ADD_AT = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (1, 25)


def _add_float_sums(target: np.ndarray, idx: np.ndarray, v: np.ndarray, exclusive: bool) -> None:
    """target[i] += (the sum of the v at i in float64, rounded once to target's dtype) for every cell i of idx;
    exclusive: nothing else writes the cells of idx (a slab scatter's target, +0.0 before), so the rounded sums
    are stored instead of added.

    The float64 sums live in windows of at most _window.SCRATCH_BYTES / 16 cells, in this thread's buffer
    "scatter_sums" (kept between calls); the values are read in _SCATTER_CHUNK pieces (a span of several windows
    reads every piece once per window) and added in order, each cell's in index order: by np.add.at (NumPy >=
    1.25; before, its generic loop was 10-20x slower) or by np.bincount over the window, the same sums.
    bincount's window-sized result is a fresh float64 array, which page-faulted where it was first touched
    (max_unpool of 8x28x28x64 values from 3x3/2 windows: 4900 faults per call, 10.0 ms; 2.6 ms with add.at;
    CPU box, one thread), so it is the fallback. Cells of a window that no index names get + 0.0, which changes
    nothing: the output starts at +0.0 and the slab scatter stores v + 0, so no cell holds -0.0.
    """
    lo, hi = int(idx.min()), int(idx.max()) + 1
    width = min(hi - lo, max(1, _window.SCRATCH_BYTES // 16))
    for w0 in range(lo, hi, width):
        w1 = min(w0 + width, hi)
        acc = _window.thread_buffer("scatter_sums", w1 - w0, np.float64)
        acc[...] = 0
        for c0 in range(0, idx.size, _SCATTER_CHUNK):
            part, vals = idx[c0:c0 + _SCATTER_CHUNK], v[c0:c0 + _SCATTER_CHUNK]
            if width < hi - lo:
                keep = (part >= w0) & (part < w1)
                part, vals = part[keep], vals[keep]
            if w0:
                part = part - w0
            if _FAST_ADD_AT:
                weights = _window.thread_buffer("scatter_weights", vals.size, np.float64)
                np.copyto(weights, vals)
                np.add.at(acc, part, weights)
            else:
                acc += np.bincount(part, weights=vals.astype(np.float64), minlength=w1 - w0)
        if exclusive:
            np.copyto(target[w0:w1], acc, casting="unsafe")
        else:
            target[w0:w1] += acc.astype(target.dtype)


def _pieces(n: int) -> list:
    """A chunk's n indices in one piece per worker where n >= _PIECE_MIN, else in one piece (inside a worker:
    one piece, workers() is 1 there)."""
    return _parallel.split(n, _parallel.workers() if n >= _PIECE_MIN else 1)


def argmax_scatter(values: np.ndarray, argmax: np.ndarray, out_shape, include_batch: bool,
                   check_range=None) -> np.ndarray:
    """zeros(out_shape) with each value added at its argmax (per batch item unless include_batch); duplicates add.
    check_range (the API's range check of argmax, raising on a bad index) is called first.

    Deterministic. A chunk whose indices are all distinct (checked with a one-byte mark per output cell) is
    scattered directly, exact for every dtype; in a chunk with repeats, float values are summed per cell in
    float64 and rounded once (_add_float_sums), integers exactly, wrapping like the dtype (_sum_duplicates).
    Chunks are whole batch items (_index_chunks), so float repeats from max pooling, which stay within an item,
    are rounded once per cell; with include_batch, or items past the scratch budget, chunks are _SCATTER_CHUNK
    updates, and repeats of a cell split between two chunks are rounded once per chunk.
    """
    if check_range is not None:
        check_range()
    out_shape = tuple(int(v) for v in out_shape)
    out = np.zeros(out_shape, values.dtype)
    if values.size == 0 or out.size == 0:
        return out
    flat_out = out.reshape(-1)
    flat_v = values.reshape(-1)
    per_batch_out = out.size // out_shape[0]

    def scatter(vs: slice, base: int, idx: np.ndarray, slab: int) -> None:
        v = flat_v[vs]
        target = flat_out[base:]
        lo = int(idx.min()) if not slab else 0
        span = slab or int(idx.max()) - lo + 1
        unique = False
        pieces = _pieces(idx.size)
        if span <= _window.SCRATCH_BYTES:
            seen = np.zeros(span, bool)

            def mark(r):                 # runs now (map_chunks returns when done): no early binding
                # Threads may store True into one byte at once: the same value, whoever wins.
                seen[idx[r[0]:r[1]] - lo if lo else idx[r[0]:r[1]]] = True

            _parallel.map_chunks(mark, pieces)
            unique = int(np.count_nonzero(seen)) == idx.size
        if unique:
            # Distinct cells: the pieces write disjoint cells, in any order.
            def put(r):
                if slab:
                    # No other chunk writes this slab: assign, plus 0 so that a -0.0 arrives as +0.0 (as from a
                    # sum). In blocks whose temporaries malloc reuses: one fresh temporary of the piece paged in
                    # anew on every call (max_unpool of SegNet pool3, 4x45x60x256: 9.3 -> 18.3 ms).
                    # float16 by its bits (_float16_bits.plus_zero: 2.5x faster than NumPy's float16 add).
                    for b in range(r[0], r[1], _ZERO_SIGN_BLOCK):
                        e = min(b + _ZERO_SIGN_BLOCK, r[1])
                        target[idx[b:e]] = _float16_bits.plus_zero(v[b:e])
                else:
                    target[idx[r[0]:r[1]]] += v[r[0]:r[1]]

            _parallel.map_chunks(put, pieces)
            return
        if values.dtype.kind == "f":
            _add_float_sums(target, idx, v, bool(slab))
            return
        for c0 in range(0, idx.size, _SCATTER_CHUNK):
            uniq, sums = _sum_duplicates(idx[c0:c0 + _SCATTER_CHUNK], v[c0:c0 + _SCATTER_CHUNK], values.dtype)
            target[uniq] += sums

    disjoint, chunks = _index_chunks(argmax, per_batch_out, include_batch)
    _run_chunks(scatter, chunks, disjoint, argmax.size)
    return out


def argmax_gather(grad: np.ndarray, argmax: np.ndarray, include_batch: bool, check_range=None) -> np.ndarray:
    """grad's flat cells at argmax (per batch item unless include_batch), shaped like argmax. check_range (the
    API's range check of argmax, raising on a bad index) is called first."""
    if check_range is not None:
        check_range()
    out = np.empty(argmax.shape, grad.dtype)
    if out.size == 0:
        return out
    flat_g = grad.reshape(-1)
    flat_out = out.reshape(-1)
    per_batch = grad.size // grad.shape[0]

    def gather(vs: slice, base: int, idx: np.ndarray, slab: int) -> None:
        dst = flat_out[vs]

        def take(r):
            # mode="clip": the indices are in range (checked by the API layer); "raise" would check again and
            # buffer out (NumPy's np.take documentation).
            np.take(flat_g[base:], idx[r[0]:r[1]], out=dst[r[0]:r[1]], mode="clip")

        _parallel.map_chunks(take, _pieces(idx.size))

    # Every chunk writes its own values and only reads grad: disjoint whatever the chunk kind.
    _run_chunks(gather, _index_chunks(argmax, per_batch, include_batch)[1], True, argmax.size)
    return out
