"""Launch plans for the unpooling family (kernels/unpool.cu): argmax scatter and gather; avg_unpool.

argmax_scatter (max_unpool, max_pool_grad_with_argmax) is deterministic without float atomics. Where the shapes
admit disjoint windows of at most 64 cells that tile the output (`window_strides`: SegNet's 2x2/2 pooling, SAME or
VALID, odd sizes included), it first runs the one-pass window scatter (`argmax_scatter_windows`), which writes
every output cell once and flags an update whose argmax is not in its own window; only then (or without such
windows) the general scatter runs: five grid-stride passes (count, alloc, place, rank, sum; see the comment at the
top of kernels/unpool.cu) over scratch arrays that the kernel backend allocates from `scatter_scratch`. On an H100
the five passes moved 2x2/2 SegNet unpooling at 16-18 % of the device's copy bandwidth (32x360x480x64 float32: 4.4
ms; the window scatter 1.35-1.6 ms, benchmarks/results/2026-11-22_h100_segnet_scatter_ab.md; 1.07-1.23 ms once it
spared the API's range check, 2026-11-23_h100_segnet_scatter_ab.md). argmax_gather
(max_unpool_grad) is one pass; it only copies, so it is instantiated per element size (unsigned char ... unsigned
long long) and bound to same-size views of the arrays; the scatter adds (even a lone update is added to zero, as
the scatter_nd recipe does) and is instantiated per dtype. avg_unpool runs the pooling family's gather kernel
without the divisor (pool_avg_bwd<V, I, false>: the adjoint of sum pooling).

Plans are pure functions of the arrays' shapes and dtypes (plus the views they bind).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES, ctype
from ..geometry import INT32_LIMIT, PoolProblem
from ..kernel_source import KernelFamily, LaunchHint
from . import LaunchPlan, ceil_div, index_scalar, index_type
from . import pool as pool_plans
from .pool import BLOCK, grid_for

VALUE_DTYPES = FLOAT_DTYPES + INT_DTYPES
# Element size -> the unsigned type the copy kernels move (C++ name, NumPy dtype).
BITS = {1: ("unsigned char", np.dtype(np.uint8)), 2: ("unsigned short", np.dtype(np.uint16)),
        4: ("unsigned int", np.dtype(np.uint32)), 8: ("unsigned long long", np.dtype(np.uint64))}
_INDEX_TYPES = (index_type(False), index_type(True))
_ARGMAX_TYPES = tuple(ctype(a) for a in INDEX_DTYPES)


def _expressions() -> tuple[str, ...]:
    """Every instantiation any plan below can name (the compile gate and the emulator build exactly these)."""
    out = []
    for it in _INDEX_TYPES:
        out.append(f"unpool_scatter_alloc<{it}>")
        for at in _ARGMAX_TYPES:
            out.append(f"unpool_scatter_count<{at}, {it}>")
            out.append(f"unpool_scatter_rank<{at}, {it}>")
            out.extend(f"unpool_gather<{BITS[size][0]}, {at}, {it}>" for size in sorted(BITS))
            out.extend(f"unpool_scatter_place<{ctype(dt)}, {at}, {it}>" for dt in VALUE_DTYPES)
            out.extend(f"unpool_scatter_windows<{ctype(dt)}, {at}, {it}>" for dt in VALUE_DTYPES)
        out.extend(f"unpool_scatter_sum<{ctype(dt)}, {it}>" for dt in VALUE_DTYPES)
    return tuple(out)


FAMILY = KernelFamily("unpool", "unpool.cu", _expressions(),
                      launch_hints={e: LaunchHint(block_threads=BLOCK) for e in _expressions()})


def _size(shape) -> int:
    out = 1
    for v in shape:
        out *= int(v)
    return out


def needs_int64(updates_shape, out_shape) -> bool:
    """64-bit indexing when the updates or the scattered/gathered tensor has >= 2^31 elements."""
    return max(_size(updates_shape), _size(out_shape)) >= INT32_LIMIT


def bits_view(a):
    """A same-size unsigned view of a (what the copy kernels are instantiated for)."""
    return a.view(BITS[np.dtype(a.dtype).itemsize][1])


def scatter_scratch(updates_shape, out_shape) -> dict[str, tuple[int, np.dtype, bool]]:
    """Scratch arrays of argmax_scatter: name -> (length, dtype, must be zero-filled).

    count: per output cell; meta: [duplicate cells, bucket slots]; dup_*: per duplicate cell (at most M/2, each
    holds >= 2 updates); bucket, sorted: per update.
    """
    m, o = _size(updates_shape), _size(out_shape)
    it = np.dtype(index_scalar(needs_int64(updates_shape, out_shape)))
    dup = m // 2 + 1
    return {"count": (o, it, True), "meta": (2, it, True), "dup_cells": (dup, it, False),
            "dup_count": (dup, it, False), "dup_start": (dup, it, False), "bucket": (m, it, False),
            "sorted": (m, it, False)}


def _batch_args(updates_shape, out_shape, include_batch: bool, s) -> tuple:
    """(upd_batch, out_batch, out_total, include_batch) as the kernels take them."""
    m, o, n = _size(updates_shape), _size(out_shape), int(updates_shape[0])
    return s(m // n), s(o // n), s(o), np.int32(1 if include_batch else 0)


def _check(expression: str) -> str:
    if expression not in FAMILY.name_expressions:
        raise KeyError(f"{expression} is not declared in the unpool family")
    return expression


def argmax_scatter(values, argmax, out, scratch: dict, include_batch: bool) -> list[LaunchPlan]:
    """The five passes of out[dest(i)] += values[i]; out and scratch['count'/'meta'] must be zero-filled.

    values/argmax: (N, ...) with M cells, out: (N, ...) with O cells, M, O >= 1.
    """
    m = _size(values.shape)
    i64 = needs_int64(values.shape, out.shape)
    s, it = index_scalar(i64), index_type(i64)
    at, vt = ctype(argmax.dtype), ctype(values.dtype)
    batch = _batch_args(values.shape, out.shape, include_batch, s)
    sc = scratch
    grid_m, grid_dup = grid_for(m), grid_for(m // 2 + 1)
    block = (BLOCK, 1, 1)
    return [
        LaunchPlan(FAMILY.name, _check(f"unpool_scatter_count<{at}, {it}>"), grid_m, block, 0,
                   (argmax, sc["count"], sc["meta"], sc["dup_cells"], s(m)) + batch),
        LaunchPlan(FAMILY.name, _check(f"unpool_scatter_alloc<{it}>"), grid_dup, block, 0,
                   (sc["count"], sc["meta"], sc["dup_cells"], sc["dup_count"], sc["dup_start"])),
        LaunchPlan(FAMILY.name, _check(f"unpool_scatter_place<{vt}, {at}, {it}>"), grid_m, block, 0,
                   (values, argmax, sc["count"], sc["dup_start"], sc["bucket"], out, s(m)) + batch),
        LaunchPlan(FAMILY.name, _check(f"unpool_scatter_rank<{at}, {it}>"), grid_m, block, 0,
                   (argmax, sc["count"], sc["meta"], sc["dup_count"], sc["dup_start"], sc["bucket"], sc["sorted"])
                   + batch),
        LaunchPlan(FAMILY.name, _check(f"unpool_scatter_sum<{vt}, {it}>"), grid_dup, block, 0,
                   (values, sc["meta"], sc["dup_cells"], sc["dup_count"], sc["dup_start"], sc["sorted"], out)),
    ]


# Largest window (cells) the window scatter takes: each update's thread writes its window serially, so a huge
# window (one update over 2^29 cells) would be one thread's loop; the general passes spread their zero-fill over
# every thread. 2x2 pooling windows hold 4 cells, 3x3 9, 2x2x2 8.
WINDOW_CELLS_MAX = 64


def window_strides(updates_shape, out_shape) -> tuple[int, int, int] | None:
    """Per spatial axis (D, H, W), the stride s of disjoint windows that tile out, one per pooled cell: window o
    covers [o*s, o*s + s), the last one [(pooled - 1)*s, size), to the end of the axis. None when the shapes
    admit none (an axis with fewer cells than windows, batch or channels differ) or a window would hold more
    than WINDOW_CELLS_MAX cells (then the scatter runs its general passes).

    Shapes are canonical (N, D, H, W, C). Per axis s = ceil(size / pooled) where its windows all start inside
    the axis (pooling with windows no larger than the stride and an output cut at ceil(size / stride): SAME or
    VALID 2x2/2 on even sizes, SAME on odd ones), else floor(size / pooled), the last window taking the cells
    that no pooling window reached (VALID 2x2/2 on odd sizes: SegNet pool4's 45 rows in 22 windows, the last
    rows 42-44). Any such tiling is correct, since the kernel checks each update's argmax against its own window
    (module docstring); a tiling that misses the pooling's windows only costs the fallback: pooling that pads
    before (3x3/3 SAME on 7 cells: windows [-1, 2), [2, 5), ...) or whose windows overlap, and VALID 2x2/2 on 5
    or 7 cells, whose shapes are also those of 3x3/3 SAME pooling (tiles [0, 3), [3, ...), the ones taken).
    """
    if len(updates_shape) != 5 or len(out_shape) != 5 or updates_shape[0] != out_shape[0] \
            or updates_shape[4] != out_shape[4]:
        return None
    strides, cells = [], 1
    for pooled, size in zip(updates_shape[1:4], out_shape[1:4]):
        if pooled < 1 or size < pooled:
            return None
        s = ceil_div(size, pooled)
        if (pooled - 1) * s >= size:                    # the last window would start past the end
            s = size // pooled
        strides.append(s)
        cells *= max(s, size - (pooled - 1) * s)        # the largest window: a full one or the last
    return tuple(strides) if cells <= WINDOW_CELLS_MAX else None


def argmax_scatter_windows(values, argmax, out, misplaced, include_batch: bool) -> LaunchPlan:
    """The one-pass window scatter: writes every cell of out; misplaced (a zeroed 1-element int32 array) becomes
    1 if some update's argmax is outside its window (then out is not the scatter and the caller must run
    `argmax_scatter`). While it stays 0, every argmax was in range too (each window lies inside its batch item).
    window_strides(values.shape, out.shape) must not be None; M >= 1."""
    strides = window_strides(values.shape, out.shape)
    if strides is None:
        raise ValueError(f"no disjoint windows tile {tuple(out.shape)} with {tuple(values.shape)} updates")
    m = _size(values.shape)
    i64 = needs_int64(values.shape, out.shape)
    s, it = index_scalar(i64), index_type(i64)
    expr = _check(f"unpool_scatter_windows<{ctype(values.dtype)}, {ctype(argmax.dtype)}, {it}>")
    dims = tuple(s(v) for v in tuple(values.shape[1:]) + tuple(out.shape[1:4]) + strides)
    return LaunchPlan(FAMILY.name, expr, grid_for(m), (BLOCK, 1, 1), 0,
                      (values, argmax, out, misplaced, s(m)) + dims + (np.int32(1 if include_batch else 0),))


def argmax_gather(grad, argmax, values, invalid, include_batch: bool) -> LaunchPlan:
    """values[i] = grad[dest(i)]: one thread per argmax cell (M >= 1); invalid (a zeroed 1-element int32 array)
    becomes 1 if some argmax is out of range (that value reads 0)."""
    m = _size(argmax.shape)
    i64 = needs_int64(argmax.shape, grad.shape)
    s, it = index_scalar(i64), index_type(i64)
    ut = BITS[np.dtype(grad.dtype).itemsize][0]
    expr = _check(f"unpool_gather<{ut}, {ctype(argmax.dtype)}, {it}>")
    return LaunchPlan(FAMILY.name, expr, grid_for(m), (BLOCK, 1, 1), 0,
                      (bits_view(grad), argmax, bits_view(values), invalid, s(m))
                      + _batch_args(argmax.shape, grad.shape, include_batch, s))


def avg_unpool(p: PoolProblem, updates, out) -> LaunchPlan:
    """out = avg_unpool(updates): each update copied to every in-bounds cell of its window, overlaps add."""
    return pool_plans.avg_pool_grad(p, updates, out, divide=False)
