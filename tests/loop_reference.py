"""A deliberately naive scalar-loop oracle for every gpuconv op.

Imports NOTHING from gpuconv: output sizes, the SAME split and the legal transposed shapes are re-derived here
from TF's rule (tensorflow/core/framework/kernel_shape_util.cc, DESIGN.md section 2), so a bug in
gpuconv.geometry cannot hide in both places.

Layout: channels-last with any number of spatial dimensions (1, 2 or 3):
    x  (N, *spatial, C)      w  (*window, C // G, K)      y  (N, *out_spatial, K)
Pooling: x (N, *spatial, C) -> y (N, *out_spatial, C). Conversions from NCHW etc. are the tests' job.

`padding` is "SAME", "VALID" or a sequence of (before, after) pairs, one per spatial dimension.
`strides`, `dilations`, `ksize`: one int per spatial dimension (or a single int for all).

Everything is a Python loop over output cells and taps, one scalar at a time, accumulated in float64 (floats)
or int64 (integers) and cast to the input dtype once at the end. Use tiny shapes.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "axis_size", "out_sizes", "transposed_range",
    "conv_fprop", "conv_backprop_input", "conv_backprop_filter", "conv_transpose",
    "max_pool", "avg_pool", "max_pool_with_argmax", "max_pool_grad", "max_pool_grad_with_argmax",
    "avg_pool_grad", "max_unpool", "max_unpool_grad", "avg_unpool", "sum_pool",
]


# ---------------------------------------------------------------------------------------------------------
# geometry, re-derived
# ---------------------------------------------------------------------------------------------------------
def _c_div(a: int, b: int) -> int:
    """C++ integer division (truncation toward zero), b > 0."""
    return int(a / b) if abs(a) < 2**52 else (abs(a) // b) * (1 if a >= 0 else -1)


def axis_size(n: int, k: int, s: int, d: int, padding) -> tuple[int, int, int]:
    """(out, pad_before, pad_after) for one axis; ValueError when out < 0 (TF: 'would be negative')."""
    eff = (k - 1) * d + 1
    if padding == "VALID":
        pb = pa = 0
        out = _c_div(n - eff + s, s)
    elif padding == "SAME":
        out = -(-n // s)                                   # ceil(n / s)
        total = max(0, (out - 1) * s + eff - n)
        pb = total // 2                                    # the odd cell goes to the end
        pa = total - pb
    else:
        pb, pa = padding
        out = _c_div(n + pb + pa - eff + s, s)
    if out < 0:
        raise ValueError(f"Computed output size would be negative: {out} "
                         f"[input_size: {n}, effective_filter_size: {eff}, stride: {s}]")
    return out, pb, pa


def _per_axis(v, nsp: int):
    if isinstance(v, int):
        return (v,) * nsp
    v = tuple(v)
    if len(v) == 1:
        return v * nsp
    assert len(v) == nsp, (v, nsp)
    return v


def _pads(padding, nsp: int):
    if isinstance(padding, str):
        return (padding.upper(),) * nsp
    pads = tuple(tuple(p) for p in padding)
    assert len(pads) == nsp, (padding, nsp)
    return pads


def out_sizes(spatial, window, strides, dilations, padding):
    """Per axis (out, pb, pa)."""
    nsp = len(spatial)
    return [axis_size(n, k, s, d, p) for n, k, s, d, p in
            zip(spatial, _per_axis(window, nsp), _per_axis(strides, nsp), _per_axis(dilations, nsp),
                _pads(padding, nsp))]


def transposed_range(i: int, k: int, s: int, d: int, padding) -> tuple[int, int]:
    """All O (inclusive min/max) with forward size i, found by brute force over O (no closed formula)."""
    legal = [o for o in range(0, (i + 1) * s + (k - 1) * d + 2) if _forward_size_or_none(o, k, s, d, padding) == i]
    if not legal:
        return (1, 0)
    assert legal == list(range(legal[0], legal[-1] + 1)), legal
    return legal[0], legal[-1]


def _forward_size_or_none(o, k, s, d, padding):
    try:
        return axis_size(o, k, s, d, padding)[0]
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _acc(dtype) -> np.dtype:
    return np.dtype(np.int64) if np.issubdtype(np.dtype(dtype), np.integer) else np.dtype(np.float64)


def _cast(a: np.ndarray, dtype) -> np.ndarray:
    return a.astype(dtype)


def _val(a, idx):
    v = a[idx]
    return int(v) if np.issubdtype(a.dtype, np.integer) else float(v)


def _ranges(shape):
    return itertools.product(*(range(int(n)) for n in shape))


def _conv_geometry(x_shape, w_shape, strides, padding, dilations):
    nsp = len(x_shape) - 2
    window = tuple(w_shape[:nsp])
    cg, K = w_shape[nsp], w_shape[nsp + 1]
    C = x_shape[-1]
    if cg <= 0 or C % cg:
        raise ValueError(f"input channels {C} not a multiple of filter in-channels {cg}")
    G = C // cg
    if K % G:
        raise ValueError(f"out channels {K} not divisible by groups {G}")
    geo = out_sizes(x_shape[1:-1], window, strides, dilations, padding)
    return nsp, window, cg, K, G, geo


def _taps_in(o, t, geo, strides, dilations):
    """Input coordinate of output o, tap t (may be out of bounds)."""
    return tuple(oo * s + tt * d - g[1] for oo, tt, s, d, g in zip(o, t, strides, dilations, geo))


def _inside(i, spatial) -> bool:
    return all(0 <= a < n for a, n in zip(i, spatial))


# ---------------------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------------------
def conv_fprop(x, w, strides, padding, dilations=1):
    """y[n,o,co] = sum_{t,ci} x[n, o*s + t*d - pb, g*Cg + ci] * w[t, ci, co], g = co // (K/G)."""
    x, w = np.asarray(x), np.asarray(w)
    nsp, window, cg, K, G, geo = _conv_geometry(x.shape, w.shape, strides, padding, dilations)
    strides, dilations = _per_axis(strides, nsp), _per_axis(dilations, nsp)
    N, spatial = x.shape[0], x.shape[1:-1]
    out_sp = tuple(g[0] for g in geo)
    y = np.zeros((N,) + out_sp + (K,), _acc(x.dtype))
    kg = K // G
    for n in range(N):
        for o in _ranges(out_sp):
            for co in range(K):
                g = co // kg
                acc = 0.0
                for t in _ranges(window):
                    i = _taps_in(o, t, geo, strides, dilations)
                    if not _inside(i, spatial):
                        continue
                    for ci in range(cg):
                        acc += _val(x, (n,) + i + (g * cg + ci,)) * _val(w, t + (ci, co))
                y[(n,) + o + (co,)] = acc
    return _cast(y, x.dtype)


def conv_backprop_input(x_shape, w, dy, strides, padding, dilations=1):
    """Gather form: dx[n,i,ci] = sum dy[n,o,co] * w[t,ci,co] over taps with o = (i + pb - t*d) / s integral."""
    w, dy = np.asarray(w), np.asarray(dy)
    x_shape = tuple(int(v) for v in x_shape)
    nsp, window, cg, K, G, geo = _conv_geometry(x_shape, w.shape, strides, padding, dilations)
    strides, dilations = _per_axis(strides, nsp), _per_axis(dilations, nsp)
    out_sp = tuple(g[0] for g in geo)
    if tuple(dy.shape) != (x_shape[0],) + out_sp + (K,):
        raise ValueError(f"out_backprop shape {dy.shape} != forward output {(x_shape[0],) + out_sp + (K,)}")
    dx = np.zeros(x_shape, _acc(dy.dtype))
    kg = K // G
    for n in range(x_shape[0]):
        for i in _ranges(x_shape[1:-1]):
            for c in range(x_shape[-1]):
                g, ci = divmod(c, cg)
                acc = 0.0
                for t in _ranges(window):
                    o = []
                    for ii, tt, s, d, gg, P in zip(i, t, strides, dilations, geo, out_sp):
                        num = ii + gg[1] - tt * d
                        if num % s or not 0 <= num // s < P:
                            break
                        o.append(num // s)
                    else:
                        for co in range(g * kg, (g + 1) * kg):
                            acc += _val(dy, (n,) + tuple(o) + (co,)) * _val(w, t + (ci, co))
                dx[(n,) + i + (c,)] = acc
    return _cast(dx, dy.dtype)


def conv_backprop_filter(x, w_shape, dy, strides, padding, dilations=1):
    """dw[t,ci,co] = sum_{n,o} x[n, o*s + t*d - pb, g*Cg + ci] * dy[n,o,co]."""
    x, dy = np.asarray(x), np.asarray(dy)
    w_shape = tuple(int(v) for v in w_shape)
    nsp, window, cg, K, G, geo = _conv_geometry(x.shape, w_shape, strides, padding, dilations)
    strides, dilations = _per_axis(strides, nsp), _per_axis(dilations, nsp)
    out_sp = tuple(g[0] for g in geo)
    if tuple(dy.shape) != (x.shape[0],) + out_sp + (K,):
        raise ValueError(f"out_backprop shape {dy.shape} != forward output {(x.shape[0],) + out_sp + (K,)}")
    spatial = x.shape[1:-1]
    dw = np.zeros(w_shape, _acc(x.dtype))
    kg = K // G
    for t in _ranges(window):
        for ci in range(cg):
            for co in range(K):
                g = co // kg
                acc = 0.0
                for n in range(x.shape[0]):
                    for o in _ranges(out_sp):
                        i = _taps_in(o, t, geo, strides, dilations)
                        if _inside(i, spatial):
                            acc += _val(x, (n,) + i + (g * cg + ci,)) * _val(dy, (n,) + o + (co,))
                dw[t + (ci, co)] = acc
    return _cast(dw, x.dtype)


def conv_transpose(x, w, output_shape, strides, padding, dilations=1):
    """Scatter form, written independently of conv_backprop_input: build the un-cropped result of length
    L = (I-1)*s + eff per axis, full[i*s + t*d] += x[i] * w[t] (w is (*window, out, in)), then
    out[o] = full[o + pb] for o in [0, O) with pb the forward pad_before of O (zeros past L).
    output_shape: (N, *O, Cout). ValueError unless the forward conv of O gives x's size.
    """
    x, w = np.asarray(x), np.asarray(w)
    output_shape = tuple(int(v) for v in output_shape)
    nsp = x.ndim - 2
    strides, dilations = _per_axis(strides, nsp), _per_axis(dilations, nsp)
    window = tuple(w.shape[:nsp])
    cg, K = w.shape[nsp], w.shape[nsp + 1]                 # forward in-channels per group, forward out
    Cout = output_shape[-1]
    if x.shape[-1] != K or Cout % cg:
        raise ValueError("channel mismatch")
    G = Cout // cg
    if K % G:
        raise ValueError("groups do not divide the transposed input's channels")
    kg = K // G
    geo = out_sizes(output_shape[1:-1], window, strides, dilations, padding)
    for ax, g in enumerate(geo):
        if g[0] != x.shape[1 + ax]:
            raise ValueError(f"output_shape axis {ax}: forward size {g[0]} != input size {x.shape[1 + ax]}")
    eff = [(k - 1) * d + 1 for k, d in zip(window, dilations)]
    full_sp = tuple((i - 1) * s + e if i > 0 else 0 for i, s, e in zip(x.shape[1:-1], strides, eff))
    full = np.zeros((x.shape[0],) + full_sp + (Cout,), np.float64)
    for n in range(x.shape[0]):
        for i in _ranges(x.shape[1:-1]):
            for co in range(K):                             # transposed input channel = forward out channel
                g = co // kg
                v = _val(x, (n,) + i + (co,))
                for t in _ranges(window):
                    pos = tuple(ii * s + tt * d for ii, tt, s, d in zip(i, t, strides, dilations))
                    for ci in range(cg):
                        full[(n,) + pos + (g * cg + ci,)] += v * _val(w, t + (ci, co))
    out = np.zeros(output_shape, np.float64)
    for n in range(output_shape[0]):
        for o in _ranges(output_shape[1:-1]):
            src = tuple(oo + g[1] for oo, g in zip(o, geo))
            if all(a < L for a, L in zip(src, full_sp)):
                for c in range(Cout):
                    out[(n,) + o + (c,)] = full[(n,) + src + (c,)]
    return out.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------------
def _pool_geometry(spatial, ksize, strides, padding):
    nsp = len(spatial)
    ksize, strides = _per_axis(ksize, nsp), _per_axis(strides, nsp)
    geo = out_sizes(spatial, ksize, strides, 1, padding)
    return ksize, strides, geo


def _window_cells(o, ksize, strides, geo, spatial):
    """In-bounds input coordinates of window o, row-major (depth, then height, then width)."""
    start = [oo * s - g[1] for oo, s, g in zip(o, strides, geo)]
    cells = []
    for t in _ranges(ksize):
        i = tuple(a + b for a, b in zip(start, t))
        if _inside(i, spatial):
            cells.append(i)
    return cells


def _scan_max(x, n, cells, c):
    """TF's scan: the first in-bounds cell seeds, a later cell replaces only if strictly greater."""
    best_cell = cells[0]
    best = x[(n,) + best_cell + (c,)]
    for i in cells[1:]:
        v = x[(n,) + i + (c,)]
        if v > best:                       # NaN never replaces; a NaN seed is never replaced
            best, best_cell = v, i
    return best, best_cell


def _flat(n, i, c, shape, include_batch):
    """Flat index of x[n, *i, c] within one batch element ((y*W + x)*C + c), + n*H*W*C with include_batch."""
    idx = 0
    for a, size in zip(i, shape[1:-1]):
        idx = idx * size + a
    idx = idx * shape[-1] + c
    if include_batch:
        idx += n * math.prod(shape[1:])
    return idx


def max_pool_with_argmax(x, ksize, strides, padding, include_batch=False, index_dtype=np.int64):
    """(y, argmax): y by the scan rule; argmax = flat index of the selected cell (TF's formula)."""
    x = np.asarray(x)
    spatial = x.shape[1:-1]
    ksize, strides, geo = _pool_geometry(spatial, ksize, strides, padding)
    out_sp = tuple(g[0] for g in geo)
    y = np.zeros((x.shape[0],) + out_sp + (x.shape[-1],), x.dtype)
    am = np.zeros(y.shape, index_dtype)
    for n in range(x.shape[0]):
        for o in _ranges(out_sp):
            cells = _window_cells(o, ksize, strides, geo, spatial)
            if not cells:
                raise ValueError("a pooling window holds no input cell")
            for c in range(x.shape[-1]):
                best, cell = _scan_max(x, n, cells, c)
                y[(n,) + o + (c,)] = best
                am[(n,) + o + (c,)] = _flat(n, cell, c, x.shape, include_batch)
    return y, am


def max_pool(x, ksize, strides, padding):
    return max_pool_with_argmax(x, ksize, strides, padding)[0]


def _sum_or_avg_pool(x, ksize, strides, padding, average):
    x = np.asarray(x)
    spatial = x.shape[1:-1]
    ksize, strides, geo = _pool_geometry(spatial, ksize, strides, padding)
    out_sp = tuple(g[0] for g in geo)
    y = np.zeros((x.shape[0],) + out_sp + (x.shape[-1],), np.float64)
    for n in range(x.shape[0]):
        for o in _ranges(out_sp):
            cells = _window_cells(o, ksize, strides, geo, spatial)
            for c in range(x.shape[-1]):
                s = 0.0
                for i in cells:
                    s += float(x[(n,) + i + (c,)])
                y[(n,) + o + (c,)] = s / len(cells) if average else s
    return y.astype(x.dtype)


def avg_pool(x, ksize, strides, padding):
    """Mean over the in-bounds cells of each window (padding never counted)."""
    return _sum_or_avg_pool(x, ksize, strides, padding, True)


def sum_pool(x, ksize, strides, padding):
    """Sum over the in-bounds cells of each window (the adjoint of avg_unpool)."""
    return _sum_or_avg_pool(x, ksize, strides, padding, False)


def max_pool_grad(x, dy, ksize, strides, padding):
    """dx: each window's dy added to its selected cell (scan rule re-run on x); overlaps add."""
    x, dy = np.asarray(x), np.asarray(dy)
    spatial = x.shape[1:-1]
    ksize, strides, geo = _pool_geometry(spatial, ksize, strides, padding)
    out_sp = tuple(g[0] for g in geo)
    assert tuple(dy.shape) == (x.shape[0],) + out_sp + (x.shape[-1],), (dy.shape, out_sp)
    dx = np.zeros(x.shape, _acc(dy.dtype))
    for n in range(x.shape[0]):
        for o in _ranges(out_sp):
            cells = _window_cells(o, ksize, strides, geo, spatial)
            for c in range(x.shape[-1]):
                _, cell = _scan_max(x, n, cells, c)
                dx[(n,) + cell + (c,)] += _val(dy, (n,) + o + (c,))
    return _cast(dx, dy.dtype)


def _unflat(idx, n, shape, include_batch):
    """Inverse of _flat by repeated division (TF's recipe: y = idx // (W*C), x = idx // C % W, c = idx % C)."""
    if include_batch:
        n, idx = divmod(idx, math.prod(shape[1:]))
    c = idx % shape[-1]
    rest = idx // shape[-1]
    coords = []
    for size in reversed(shape[1:-1]):
        coords.append(rest % size)
        rest //= size
    assert rest == 0, "index out of range"
    return (n,) + tuple(reversed(coords)) + (c,)


def max_pool_grad_with_argmax(x_shape, dy, argmax, include_batch=False):
    """dx (x_shape) with dy[o] added at argmax[o]; duplicates add."""
    return max_unpool(dy, argmax, x_shape, include_batch)


def max_unpool(updates, argmax, output_shape, include_batch=False):
    """TF's scatter_nd recipe: zeros(output_shape), updates[b,...,c] added at the decoded argmax."""
    updates, argmax = np.asarray(updates), np.asarray(argmax)
    output_shape = tuple(int(v) for v in output_shape)
    out = np.zeros(output_shape, _acc(updates.dtype))
    for pos in _ranges(updates.shape):
        target = _unflat(int(argmax[pos]), pos[0], output_shape, include_batch)
        out[target] += _val(updates, pos)
    return _cast(out, updates.dtype)


def max_unpool_grad(grad, argmax, include_batch=False):
    """d_updates[p] = grad[decoded argmax[p]] (a gather; argmax's shape)."""
    grad, argmax = np.asarray(grad), np.asarray(argmax)
    out = np.zeros(argmax.shape, grad.dtype)
    for pos in _ranges(argmax.shape):
        out[pos] = grad[_unflat(int(argmax[pos]), pos[0], grad.shape, include_batch)]
    return out


def avg_pool_grad(x_shape, dy, ksize, strides, padding):
    """dx: dy[o] / count(o) added to every in-bounds cell of window o; overlaps add."""
    dy = np.asarray(dy)
    x_shape = tuple(int(v) for v in x_shape)
    spatial = x_shape[1:-1]
    ksize, strides, geo = _pool_geometry(spatial, ksize, strides, padding)
    out_sp = tuple(g[0] for g in geo)
    assert tuple(dy.shape) == (x_shape[0],) + out_sp + (x_shape[-1],), (dy.shape, out_sp)
    dx = np.zeros(x_shape, np.float64)
    for n in range(x_shape[0]):
        for o in _ranges(out_sp):
            cells = _window_cells(o, ksize, strides, geo, spatial)
            for c in range(x_shape[-1]):
                share = float(dy[(n,) + o + (c,)]) / len(cells)
                for i in cells:
                    dx[(n,) + i + (c,)] += share
    return dx.astype(dy.dtype)


def avg_unpool(updates, x_shape, ksize, strides, padding):
    """Each update copied into every in-bounds cell of its window (no division); overlaps add."""
    updates = np.asarray(updates)
    x_shape = tuple(int(v) for v in x_shape)
    spatial = x_shape[1:-1]
    ksize, strides, geo = _pool_geometry(spatial, ksize, strides, padding)
    out_sp = tuple(g[0] for g in geo)
    assert tuple(updates.shape) == (x_shape[0],) + out_sp + (x_shape[-1],), (updates.shape, out_sp)
    out = np.zeros(x_shape, np.float64)
    for n in range(x_shape[0]):
        for o in _ranges(out_sp):
            for i in _window_cells(o, ksize, strides, geo, spatial):
                for c in range(x_shape[-1]):
                    out[(n,) + i + (c,)] += float(updates[(n,) + o + (c,)])
    return out.astype(updates.dtype)
