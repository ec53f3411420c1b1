"""float16 pooling in float32: pool.py's ops on float32 copies of a few (batch item, channel) planes at a time.

NumPy has no vectorised float16 arithmetic, so pool.py's sweeps ran 7-15x slower on float16 than on float32 (one
thread on the CPU box, 8x112x112x64, 3x3/2 SAME: max_pool 54 ms against 5.7, argmax 89 against 12.8,
max_pool_grad 151 against 22, avg_pool 71 against 6.1). Widening is exact and changes no result: max pooling
selects and returns the same cells (float16 -> float32 -> float16 round-trips every bit pattern, NaN payloads
included); averages, the average's divisions and overlapping gradient sums were float32 already and are rounded
to float16 once, as before (the order of overlapping sums may differ, within that rounding).

The copies (inputs and outputs of one piece) stay within _window.SCRATCH_BYTES: pieces are whole batch items, or
channel ranges of one item where an item is larger; one (item, channel) plane at least. Pooling treats every
(item, channel) plane on its own, so each piece is the same op on a smaller problem; argmax indices are mapped
back to the full channel count and batch.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..geometry import PoolProblem
from . import _window
from . import pool as _pool


def _pieces(p: PoolProblem, values_per_plane: int) -> list[tuple[slice, slice]]:
    """(items, channels) pieces whose float32 copies, values_per_plane per (item, channel), fit the budget."""
    return list(_window.boxes((p.N, p.C), 4 * values_per_plane, _window.SCRATCH_BYTES))


def _piece(p: PoolProblem, n: slice, c: slice) -> PoolProblem:
    return dataclasses.replace(p, N=n.stop - n.start, C=c.stop - c.start)


@functools.lru_cache(maxsize=1)
def _float32_of_every_float16() -> np.ndarray:
    """The float32 value of each float16 bit pattern (256 KiB)."""
    return np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _wide(a: np.ndarray, n: slice, c: slice) -> np.ndarray:
    """a[n, ..., c] in float32 by table lookup: NumPy's float16 cast branches per value and costs 4.5 ns per
    value on post-ReLU data (half zeros; 1.2 ns on data of one sign), the lookup 1.4 ns on any data."""
    part = a[n, :, :, :, c]
    return np.take(_float32_of_every_float16(), part.view(np.uint16), out=np.empty(part.shape, np.float32))


def _planes(p: PoolProblem) -> tuple[int, int]:
    """Values per (item, channel) plane of x and of y."""
    return p.D * p.H * p.W, p.Z * p.P * p.Q


def _in_pieces(op, arrays: tuple, p: PoolProblem, out_shape: tuple, plane_values: int) -> np.ndarray:
    """op(*arrays, p), for float16 as op(*float32 pieces, piece problem) per piece, cast back into one array
    (plane_values: float32 values per (item, channel) plane of the piece's copies)."""
    if arrays[0].dtype != np.float16 or p.is_empty:
        return op(*arrays, p)
    out = np.empty(out_shape, np.float16)
    for n, c in _pieces(p, plane_values):
        out[n, :, :, :, c] = op(*(_wide(a, n, c) for a in arrays), _piece(p, n, c))
    return out


def max_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.max_pool, (x,), p, p.y_shape, xs + ys)


def max_pool_argmax(x: np.ndarray, p: PoolProblem, index_dtype, include_batch: bool):
    if x.dtype != np.float16 or p.is_empty:
        return _pool.max_pool_argmax(x, p, index_dtype, include_batch)
    y = np.empty(p.y_shape, x.dtype)
    argmax = np.empty(p.y_shape, index_dtype)
    xs, ys = _planes(p)
    for n, c in _pieces(p, xs + 3 * ys):                     # y in float32, indices in int64
        q = _piece(p, n, c)
        y[n, :, :, :, c], a = _pool.max_pool_argmax(_wide(x, n, c), q, np.dtype(np.int64), False)
        if q.C != p.C:
            cell, ch = np.divmod(a, q.C)
            a = cell * p.C + (ch + c.start)
        if include_batch:
            a += np.arange(n.start, n.stop, dtype=np.int64).reshape(-1, 1, 1, 1, 1) * (xs * p.C)
        argmax[n, :, :, :, c] = a
    return y, argmax


def max_pool_grad(x: np.ndarray, dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.max_pool_grad, (x, dy), p, p.x_shape, 2 * xs + ys)


def avg_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.avg_pool, (x,), p, p.y_shape, xs + ys)


def avg_pool_grad(dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.avg_pool_grad, (dy,), p, p.x_shape, xs + ys)


def avg_unpool(updates: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.avg_unpool, (updates,), p, p.x_shape, xs + ys)
