"""float16 pooling: pool.py's ops on int16 keys (max pooling without NaN or -0.0: _keys) or on float32 copies of
a few (batch item, channel) planes at a time.

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

import numpy as np

from ..geometry import PoolProblem
from . import _float16_bits, _window
from . import pool as _pool


def _pieces(p: PoolProblem, values_per_plane: int) -> list[tuple[slice, slice]]:
    """(items, channels) pieces whose float32 copies, values_per_plane per (item, channel), fit the budget."""
    return list(_window.boxes((p.N, p.C), 4 * values_per_plane, _window.SCRATCH_BYTES))


def _piece(p: PoolProblem, n: slice, c: slice) -> PoolProblem:
    return dataclasses.replace(p, N=n.stop - n.start, C=c.stop - c.start)


def _wide(a: np.ndarray, n: slice, c: slice, slot: int = 0) -> np.ndarray:
    """a[n, ..., c] in float32 (_float16_bits.widen: a table lookup) in this thread's buffer "f16_wide{slot}",
    kept between calls: a fresh copy page-faulted on every call (avg_pool of 4x90x120x256, 2x2/2, one thread on the
    CPU box: 37 -> 30 ms). The copy is valid until the next use of that buffer on this thread; an op given two
    copies gets slots 0 and 1."""
    part = a[n, :, :, :, c]
    buf = _window.thread_buffer(f"f16_wide{slot}", part.size, np.float32).reshape(part.shape)
    return _float16_bits.widen(part, out=buf)


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
        out[n, :, :, :, c] = op(*(_wide(a, n, c, slot) for slot, a in enumerate(arrays)), _piece(p, n, c))
    return out


def _keys(a: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(int16 keys in the order of a's float16 values, whether they differ from a's bits), or (None, False)
    where a holds a NaN or a -0.0, whose order is not the scan's (a NaN wins only as a window's first cell; -0.0
    ties with +0.0, the first of them wins).

    The key of bits b is b ^ ((b >> 15) & 0x7FFF): non-negative values keep their bits (larger value, larger
    bits), negative ones flip their magnitude bits (bits 0x8000 | m -> -1 - m), so larger keys are larger values
    and equal keys equal values; infinities and subnormals included. Max pooling on the keys (pool.py's integer
    path: np.maximum over int16, exact, no NaN or zero checks) then selects what the scan selects. Data without a
    negative value, as after a ReLU, are their own keys (a contiguous view). Checks: an int16 max-reduction (a
    +NaN's bits lie above +inf's), an int16 min-reduction (-0.0's bits are the int16 minimum; non-negative data
    stop here), a uint16 max-reduction (a -NaN's bits lie above -inf's)."""
    b = a.view(np.int16)
    if int(np.maximum.reduce(b, axis=None)) > 0x7C00:
        return None, False
    low = int(np.minimum.reduce(b, axis=None))
    if low >= 0:
        return np.ascontiguousarray(b), False
    if low == -0x8000 or int(np.maximum.reduce(a.view(np.uint16), axis=None)) > 0xFC00:
        return None, False
    keys = np.right_shift(b, 15)
    keys &= 0x7FFF
    keys ^= b
    return keys, True


def _values(keys: np.ndarray, flipped: bool) -> np.ndarray:
    """The float16 values of _keys' keys (the map is its own inverse), in place."""
    if flipped:
        t = np.right_shift(keys, 15)
        t &= 0x7FFF
        keys ^= t
    return keys.view(np.float16)


def _maxima(op, x: np.ndarray, n: slice, c: slice, q: PoolProblem, *args):
    """op (pool.max_pool or pool.max_pool_argmax) on the piece x[n, ..., c] of problem q: on its int16 keys
    (_keys) where they exist, else on its float32 copy; the maxima come back in float16 or float32 (which the
    caller's store into float16 casts exactly), with the indices for argmax. One thread on the CPU box, float32
    copies -> keys: 8x112x112x64, 3x3/2 SAME, max_pool 22 -> 3.2 ms post-ReLU (no flip) and 21 -> 5.2 ms on
    normal data, argmax 29 -> 11 and 27 -> 12 ms; SegNet pool3 (4x90x120x256, 2x2/2) max_pool 27 -> 2.4 ms,
    argmax 29 -> 6.3 ms post-ReLU (float32 data: 3.9 and 6.8 ms)."""
    keys, flipped = _keys(x[n, :, :, :, c])
    if keys is None:
        return op(_wide(x, n, c), q, *args)
    out = op(keys, q, *args)
    return (_values(out[0], flipped), out[1]) if isinstance(out, tuple) else _values(out, flipped)


def max_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    if x.dtype != np.float16 or p.is_empty:
        return _pool.max_pool(x, p)
    y = np.empty(p.y_shape, np.float16)
    xs, ys = _planes(p)
    for n, c in _pieces(p, xs + ys):
        y[n, :, :, :, c] = _maxima(_pool.max_pool, x, n, c, _piece(p, n, c))
    return y


def max_pool_argmax(x: np.ndarray, p: PoolProblem, index_dtype, include_batch: bool):
    if x.dtype != np.float16 or p.is_empty:
        return _pool.max_pool_argmax(x, p, index_dtype, include_batch)
    y = np.empty(p.y_shape, x.dtype)
    argmax = np.empty(p.y_shape, index_dtype)
    xs, ys = _planes(p)
    for n, c in _pieces(p, xs + 3 * ys):                     # y in float32, indices in int64
        q = _piece(p, n, c)
        y[n, :, :, :, c], a = _maxima(_pool.max_pool_argmax, x, n, c, q, np.dtype(np.int64), False)
        if q.C != p.C:
            cell, ch = np.divmod(a, q.C)
            a = cell * p.C + (ch + c.start)
        if include_batch:
            a += np.arange(n.start, n.stop, dtype=np.int64).reshape(-1, 1, 1, 1, 1) * (xs * p.C)
        argmax[n, :, :, :, c] = a
    return y, argmax


def max_pool_grad(x: np.ndarray, dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    """Per piece, the cells _maxima's selection picks get dy. Windows that do not overlap: pool.py's max_pool_grad
    on x's int16 keys with dy + 0 as int16 bits (each cell gets one value, assigned: the bits pass through), or on
    float32 copies where x has no keys. Overlapping windows: the argmax of the keys (or copies), then
    argmax_scatter, which sums a cell's values in float64 and rounds once to float16 (the float32 sweep's sums
    were float32, rounded once: the same result except where a float32 sum of float16 values is inexact).
    One thread on the CPU box, post-ReLU data, against float32 copies throughout: SegNet pool3 (4x90x120x256,
    2x2/2) 86 -> 8.6 ms, pool5 (4x22x30x512) 8.4 -> 0.72, 8x112x112x64 3x3/2 SAME 57 -> 35, 8x28x28x256 3x3/1
    SAME 20.5 -> 15.6 (float32 data: 11-13, 1.2, 20-21 and 11 ms). Overlapping windows spend most of it in
    NumPy's float64 -> float16 cast of the sums (3.3 ns per output cell)."""
    if x.dtype != np.float16 or p.is_empty:
        return _pool.max_pool_grad(x, dy, p)
    dx = np.empty(p.x_shape, np.float16)
    xs, ys = _planes(p)
    overlapping = _pool._overlapping(p)
    for n, c in _pieces(p, 2 * xs + 3 * ys):                 # x: a float32 copy, or keys and dx; int64 indices
        q = _piece(p, n, c)
        g = dy[n, :, :, :, c]
        if overlapping:
            _, argmax = _maxima(_pool.max_pool_argmax, x, n, c, q, np.dtype(np.int64), False)
            dx[n, :, :, :, c] = _pool.argmax_scatter(g, argmax, q.x_shape, False)
            continue
        keys, _ = _keys(x[n, :, :, :, c])
        if keys is None:
            dx[n, :, :, :, c] = _pool.max_pool_grad(_wide(x, n, c), _wide(dy, n, c, 1), q)
        else:
            bits = _float16_bits.plus_zero(g).view(np.int16)
            dx[n, :, :, :, c] = _pool.max_pool_grad(keys, bits, q).view(np.float16)
    return dx


def avg_pool(x: np.ndarray, p: PoolProblem) -> np.ndarray:
    xs, ys = _planes(p)
    return _in_pieces(_pool.avg_pool, (x,), p, p.y_shape, xs + ys)


def _spread(op, g: np.ndarray, p: PoolProblem, divide: bool) -> np.ndarray:
    """op (pool.avg_pool_grad or pool.avg_unpool: g, divided by the window's in-bounds count when `divide`,
    spread over its cells). Where windows do not overlap each cell gets its window's one value: that value is
    made once per window, in float16 (g + 0 by its bits; divided: the float32 quotient + 0, rounded), and pool.py's
    avg_unpool copies its bits (int16) into the cells, instead of a float32 spread cast to float16 cell by cell
    (x of 4x90x120x256, 2x2/2, one thread on the CPU box: avg_pool_grad 31 -> 12 ms, avg_unpool 31 -> 3.3 ms;
    float32: 6.1-6.5). Overlapping windows add, on float32 pieces."""
    xs, ys = _planes(p)
    if g.dtype != np.float16 or p.is_empty or _pool._overlapping(p):
        return _in_pieces(op, (g,), p, p.x_shape, xs + ys)
    if divide:
        value = np.empty(p.y_shape, np.float16)
        counts = _pool._window_counts(p, (slice(0, 1), slice(0, p.Z), slice(0, p.P), slice(0, p.Q)), np.float32)
        for (n,) in _window.boxes((p.N,), 4 * ys * p.C):                    # float32 quotients of whole items
            part = g[n]
            quotient = _window.thread_buffer("f16_wide0", part.size, np.float32).reshape(part.shape)
            _float16_bits.widen(part, out=quotient)
            quotient /= counts
            quotient += np.float32(0)
            value[n] = quotient
    else:
        value = _float16_bits.plus_zero(g)
    return _pool.avg_unpool(value.view(np.int16), p).view(np.float16)


def avg_pool_grad(dy: np.ndarray, p: PoolProblem) -> np.ndarray:
    return _spread(_pool.avg_pool_grad, dy, p, True)


def avg_unpool(updates: np.ndarray, p: PoolProblem) -> np.ndarray:
    return _spread(_pool.avg_unpool, updates, p, False)
