"""Pooling by whole windows: one NumPy reduction over all the cells of a group of windows, not calls per tap.

pool.py's sweeps visit the window taps one at a time, a few NumPy calls per tap over a box of outputs. That pays
where many outputs share each call; global pooling has one output position and a tap per input cell, and there
the call overhead was everything (8x56x56x64 float32 with a 56x56 window, one thread on the CPU box: avg_pool
16.6 ms, max_pool 15.7, max_pool_with_argmax 49.7, max_pool_grad 76.6, avg_pool_grad 16.8; here 0.41, 0.68, 1.35,
1.5, 0.30 ms; PyTorch 0.11-0.23). Where a problem has few output positions for its taps (pool.py decides,
_by_windows), the ops here view the windows of a group of outputs as trailing axes (n, z, p, q, c, t, r, s) of
x, a strided view without a copy, and reduce over those axes:

- groups: the interior outputs (windows entirely inside x) as one view; each border output (padding) as its
  own clipped window.
- chunks: sub-boxes of a group's (n, z, p, q, c) of at most _CHUNK_BYTES of scratch (the selection's compare
  and candidate arrays, float16's float32 copy); they write disjoint outputs and run on the worker pool.
- avg_pool: add.reduce from 0 (float16: on a float32 copy), divided by the window's cell count.
- max_pool: fmax.reduce (integers, and chunks holding a NaN: maximum.reduce, the windows holding a NaN redone
  without their NaN cells); either may return either sign of zero, so a chunk where some window's first cell is
  NaN or some maximum is zero takes its values from the selected cells instead.
- selection (argmax, max_pool_grad): pool.py's scan rule, exactly: where a window's first cell is NaN, that cell
  (nothing is greater than NaN); else the first cell in row-major order equal to the maximum of its non-NaN
  cells, signed zeros equal.
- gradients, only where windows do not overlap (each cell receives at most one value): dy + 0 at the selected
  cell, g / count + 0 over the whole window (+ 0: a -0.0 arrives as +0.0, as from pool.py's sweeps). With
  overlaps pool.py scatters the selected cells' indices instead (max_pool_grad) or keeps the sweep (spread).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import accumulator_dtype
from ..geometry import PoolProblem
from . import _parallel, _window

# Scratch per chunk (bytes): the selection's compare and candidate arrays or float16's float32 copy. 4 MiB keeps
# them in cache-sized pieces, as pool.py's boxes (_window.POOL_BOX_BYTES).
_CHUNK_BYTES = _window.POOL_BOX_BYTES

# Chunked sweeps over fewer window cells than this stay on the calling thread (waking a worker costs more).
_PARALLEL_MIN_CELLS = 2**18


@dataclass(frozen=True)
class _Group:
    """Outputs [out[a].start, out[a].stop) per axis whose windows have `cells` cells per axis (clipped for a
    border output); the first output's window starts at input `origin` (per axis), the next ones a stride on."""
    out: tuple
    origin: tuple
    cells: tuple

    @property
    def taps(self) -> int:
        return math.prod(self.cells)

    def dims(self, p: PoolProblem) -> tuple:
        """(N, z, p, q, C): the extent of the group's outputs."""
        return (p.N,) + tuple(o.stop - o.start for o in self.out) + (p.C,)

    def windows(self, a: np.ndarray, p: PoolProblem) -> np.ndarray:
        """The group's windows of a (x's layout) as a view (N, z, p, q, C, t, r, s)."""
        sn, sd, sh, sw, sc = a.strides
        base = a[:, self.origin[0]:, self.origin[1]:, self.origin[2]:, :]
        shape = self.dims(p) + self.cells
        strides = (sn, sd * p.stride[0], sh * p.stride[1], sw * p.stride[2], sc, sd, sh, sw)
        return as_strided(base, shape, strides, writeable=a.flags.writeable)


def _groups(p: PoolProblem) -> list[_Group]:
    """The interior outputs as one group, every border output as its own."""
    inner = _window.interior(p)
    out = []
    if all(hi > lo for lo, hi in inner):
        out.append(_Group(tuple(slice(lo, hi) for lo, hi in inner),
                          tuple(lo * s - pb for (lo, _), s, pb in zip(inner, p.stride, p.pad_before)),
                          p.window))
    axes = list(zip((p.D, p.H, p.W), p.window, p.stride, p.pad_before, (p.Z, p.P, p.Q)))
    firsts = [_window.first_cells(0, o, s, pb) for _, _, s, pb, o in axes]
    counts = [_window.cell_counts(n, k, s, pb, 0, o) for n, k, s, pb, o in axes]
    for pos in itertools.product(range(p.Z), range(p.P), range(p.Q)):
        if all(lo <= o < hi for o, (lo, hi) in zip(pos, inner)):
            continue
        out.append(_Group(tuple(slice(o, o + 1) for o in pos), tuple(int(f[o]) for f, o in zip(firsts, pos)),
                          tuple(int(c[o]) for c, o in zip(counts, pos))))
    return out


def _run(p: PoolProblem, cell_bytes: int, fn) -> None:
    """fn(group, box) for every chunk: boxes over each group's (n, z, p, q, c) of at most _CHUNK_BYTES at
    cell_bytes per window cell (one window at least); on the worker pool when the problem is large enough."""
    groups = _groups(p)
    chunks = [(g, box) for g in groups for box in _window.boxes(g.dims(p), g.taps * cell_bytes, _CHUNK_BYTES)]
    cells = sum(math.prod(g.dims(p)) * g.taps for g in groups)
    _parallel.map_chunks(lambda c: fn(*c), chunks, cells >= _PARALLEL_MIN_CELLS)


def _out_box(g: _Group, box: tuple) -> tuple:
    """The output cells (n, z, p, q, c) of a chunk."""
    n, z, y, q, c = box
    return (n,) + tuple(slice(o.start + b.start, o.start + b.stop) for o, b in zip(g.out, (z, y, q))) + (c,)


def _as_wide(v: np.ndarray) -> np.ndarray:
    """float16 windows as a float32 copy (NumPy's float16 arithmetic is slow; widening is exact), else v."""
    return v.astype(np.float32) if v.dtype == np.float16 else v


def _maxima(v: np.ndarray) -> np.ndarray:
    """Per window the maximum of its non-NaN cells (NaN where all are NaN); either sign of a zero maximum.

    np.fmax.reduce where the chunk holds no NaN (one NaN-propagating min-reduction of all its cells decides),
    else np.maximum.reduce, whose result is NaN exactly where a window holds a NaN, and those windows redone with
    their NaN cells as -inf. np.fmax skips quiet NaNs only: a signaling NaN (quiet bit clear) makes it return
    NaN, as IEEE maxNum does, and a later cell then replaced that NaN (fmax.reduce of [1, sNaN, 0.5] was 0.5 on
    the CPU box, NumPy 2.4); np.maximum.reduce took twice fmax's time (global 56x56 max pooling of 8x56x56x64
    floats: 1.5 against 0.76 ms; with the check 1.0 ms)."""
    if v.dtype.kind != "f":
        return np.maximum.reduce(v, axis=(5, 6, 7))
    if not np.isnan(np.minimum.reduce(v, axis=None)):
        return np.fmax.reduce(v, axis=(5, 6, 7))
    m = np.maximum.reduce(v, axis=(5, 6, 7))
    nan = np.isnan(m)
    if nan.any():
        w = v[nan]                                      # (windows, t, r, s), a copy of the few NaN windows
        missing = np.isnan(w)
        redone = np.maximum.reduce(np.where(missing, v.dtype.type(-np.inf), w), axis=(1, 2, 3))
        m[nan] = np.where(missing.all(axis=(1, 2, 3)), m[nan], redone)
    return m


def _selected(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per window the scan rule's cell as its row-major position in the window (v: wide windows, m: _maxima)."""
    taps = math.prod(v.shape[5:])
    eq = v == m[..., None, None, None]
    if taps < 2**8:
        # (taps - position) where equal, else 0: the largest is the first equal cell (one-byte multiply and
        # max-reduce; 7x7 windows of 8x2048 channels: 0.1 ms against 0.4 for the masked reduce below).
        rank = (taps - np.arange(taps)).astype(np.uint8).reshape(v.shape[5:])
        first = taps - np.maximum.reduce(np.multiply(eq.view(np.uint8), rank), axis=(5, 6, 7)).astype(np.int64)
    else:
        # The least position among the equal cells, a masked reduce without a candidate array (56x56 windows of
        # 8x64 channels: 0.3 ms against 0.5 for the multiply above in two-byte codes).
        code = np.uint16 if taps < 2**16 else np.int64
        positions = np.broadcast_to(np.arange(taps, dtype=code).reshape(v.shape[5:]), v.shape)
        first = np.minimum.reduce(positions, axis=(5, 6, 7), where=eq, initial=taps).astype(np.int64)
    if v.dtype.kind == "f":
        first[np.isnan(v[..., 0, 0, 0])] = 0           # a NaN first cell: nothing replaces it
    return first


def _flat_index(p: PoolProblem, g: _Group, box: tuple, first: np.ndarray, include_batch: bool) -> np.ndarray:
    """int64 flat index ((d*H + h)*W + w)*C + c (+ n*D*H*W*C with include_batch) of each window's cell `first`."""
    t, rest = np.divmod(first, g.cells[1] * g.cells[2])
    r, s = np.divmod(rest, g.cells[2])
    n, z, y, q, c = box
    shape = (1, 1, 1, 1, 1)

    def axis(a: int, rng: slice) -> np.ndarray:
        cells = g.origin[a] + np.arange(rng.start, rng.stop, dtype=np.int64) * p.stride[a]
        return cells.reshape(shape[:a + 1] + (-1,) + shape[a + 2:])

    d, h, w = t + axis(0, z), r + axis(1, y), s + axis(2, q)
    flat = ((d * p.H + h) * p.W + w) * p.C + np.arange(c.start, c.stop, dtype=np.int64)
    if include_batch:
        flat += np.arange(n.start, n.stop, dtype=np.int64).reshape(-1, 1, 1, 1, 1) * (p.D * p.H * p.W * p.C)
    return flat


def _selected_values(x: np.ndarray, p: PoolProblem, g: _Group, box: tuple, v: np.ndarray,
                     m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, batch-inclusive flat indices) of the scan rule's cells of a chunk's windows."""
    flat = _flat_index(p, g, box, _selected(v, m), True)
    return x.reshape(-1)[flat], flat


def avg_pool(x: np.ndarray, p: PoolProblem, y: np.ndarray) -> None:
    acc = accumulator_dtype(x.dtype)

    def chunk(grp: _Group, box: tuple) -> None:
        v = _as_wide(grp.windows(x, p)[box])
        total = np.add.reduce(v, axis=(5, 6, 7), dtype=acc, initial=0)
        total /= acc.type(grp.taps)
        y[_out_box(grp, box)] = total

    _run(p, 4 if x.dtype == np.float16 else x.itemsize, chunk)


def max_pool(x: np.ndarray, p: PoolProblem, y: np.ndarray) -> None:
    def chunk(grp: _Group, box: tuple) -> None:
        v = _as_wide(grp.windows(x, p)[box])
        m = _maxima(v)
        if v.dtype.kind == "f" and (np.isnan(v[..., 0, 0, 0]).any() or not m.all()):
            m, _ = _selected_values(x, p, grp, box, v, m)
        y[_out_box(grp, box)] = m

    _run(p, 4 if x.dtype == np.float16 else x.itemsize, chunk)


def _selection_bytes(dtype: np.dtype) -> int:
    """Scratch per window cell of the selection: the comparison, the candidate codes, float16's copy."""
    return 1 + 1 + (4 if dtype == np.float16 else 0)


def max_pool_argmax(x: np.ndarray, p: PoolProblem, y: np.ndarray, argmax: np.ndarray, include_batch: bool) -> None:
    def chunk(grp: _Group, box: tuple) -> None:
        v = _as_wide(grp.windows(x, p)[box])
        out = _out_box(grp, box)
        values, flat = _selected_values(x, p, grp, box, v, _maxima(v))
        y[out] = values
        if not include_batch:
            flat -= np.arange(box[0].start, box[0].stop).reshape(-1, 1, 1, 1, 1) * (p.D * p.H * p.W * p.C)
        argmax[out] = flat

    _run(p, _selection_bytes(x.dtype), chunk)


def max_pool_grad(x: np.ndarray, dy: np.ndarray, p: PoolProblem, dx: np.ndarray) -> None:
    """dx (zeros, windows not overlapping): dy + 0 at each window's selected cell."""
    def chunk(grp: _Group, box: tuple) -> None:
        v = _as_wide(grp.windows(x, p)[box])
        flat = _flat_index(p, grp, box, _selected(v, _maxima(v)), True)
        dx.reshape(-1)[flat] = dy[_out_box(grp, box)] + dy.dtype.type(0)

    _run(p, _selection_bytes(x.dtype), chunk)


def spread(g: np.ndarray, p: PoolProblem, dx: np.ndarray, divide: bool) -> None:
    """dx (zeros, windows not overlapping): each window's g (/ its cell count when `divide`) + 0 over its cells."""
    acc = accumulator_dtype(g.dtype)

    def chunk(grp: _Group, box: tuple) -> None:
        val = g[_out_box(grp, box)]
        val = np.divide(val, acc.type(grp.taps), dtype=acc) if divide else val
        grp.windows(dx, p)[box] = (val + val.dtype.type(0))[..., None, None, None]

    _run(p, g.itemsize, chunk)
