"""Launch plans for the pooling family (kernels/pool.cu): max/avg pooling, argmax, and the pooling gradients.

Every kernel runs one thread per element of the tensor it writes (y for the forward ops, x for the gradients and
avg_unpool), the channel index fastest (coalesced in NHWC), in a grid-stride loop: block = 256 threads,
grid = min(ceil(total / 256), MAX_BLOCKS). Template arguments: the element type, the index type (`int`, or
`long long` when PoolProblem.needs_int64()), and for the argmax kernel the argmax type. Plans are pure functions
of the problem and the arrays they bind (only the arrays' `dtype` is read), so selection is testable without a
kernel or a GPU.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES, ctype
from ..geometry import PoolProblem
from ..kernel_source import KernelFamily, LaunchHint
from . import LaunchPlan, ceil_div, index_scalar, index_type

BLOCK = 256
# Grid-stride loops make any grid correct; this cap (~30 waves of 2048-thread SMs on a 132-SM H100) bounds the
# launch while keeping enough blocks in flight to saturate memory bandwidth.
MAX_BLOCKS = 32768

MAX_DTYPES = FLOAT_DTYPES + INT_DTYPES
_INDEX_TYPES = (index_type(False), index_type(True))


def _expressions() -> tuple[str, ...]:
    """Every instantiation any plan below can name (the compile gate and the emulator build exactly these)."""
    out = []
    for dt, it in itertools.product(MAX_DTYPES, _INDEX_TYPES):
        v = ctype(dt)
        out.append(f"pool_max_fwd<{v}, {it}>")
        out.extend(f"pool_max_argmax_fwd<{v}, {it}, {ctype(a)}>" for a in INDEX_DTYPES)
        out.append(f"pool_max_bwd<{v}, {it}>")
    for dt, it in itertools.product(FLOAT_DTYPES, _INDEX_TYPES):
        v = ctype(dt)
        out.append(f"pool_avg_fwd<{v}, {it}>")
        out.extend(f"pool_avg_bwd<{v}, {it}, {div}>" for div in ("true", "false"))
    return tuple(out)


# No __launch_bounds__ in pool.cu: with it, ptxas (NVRTC 13.5) capped these kernels' registers and spilled; the
# block size reaches the compile gate's occupancy report through these hints instead.
FAMILY = KernelFamily("pool", "pool.cu", _expressions(),
                      launch_hints={e: LaunchHint(block_threads=BLOCK) for e in _expressions()})


def grid_for(total: int) -> tuple[int, int, int]:
    """1-D grid for a grid-stride loop over `total` elements (total >= 1)."""
    return (max(1, min(ceil_div(total, BLOCK), MAX_BLOCKS)), 1, 1)


def geometry_args(p: PoolProblem) -> tuple:
    """The 16 geometry parameters every pooling kernel takes, as exact NumPy scalars of the index type."""
    s = index_scalar(p.needs_int64())
    vals = (p.D, p.H, p.W, p.C, p.T, p.R, p.S, p.Z, p.P, p.Q) + tuple(p.stride) + tuple(p.pad_before)
    return tuple(s(v) for v in vals)


def _plan(p: PoolProblem, expression: str, total: int, arrays: tuple, extra: tuple = ()) -> LaunchPlan:
    if expression not in FAMILY.name_expressions:
        raise KeyError(f"{expression} is not declared in the pool family")
    s = index_scalar(p.needs_int64())
    return LaunchPlan(FAMILY.name, expression, grid_for(total), (BLOCK, 1, 1), 0,
                      arrays + (s(total),) + geometry_args(p) + extra)


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=object))


def max_pool(p: PoolProblem, x, y) -> LaunchPlan:
    """y = max_pool(x): one thread per y element."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_max_fwd<{ctype(x.dtype)}, {it}>", _prod(p.y_shape), (x, y))


def max_pool_argmax(p: PoolProblem, x, y, argmax, include_batch: bool) -> LaunchPlan:
    """(y, argmax) = max_pool_with_argmax(x); argmax's dtype (int32/int64) picks the argmax template type."""
    it = index_type(p.needs_int64())
    expr = f"pool_max_argmax_fwd<{ctype(x.dtype)}, {it}, {ctype(argmax.dtype)}>"
    return _plan(p, expr, _prod(p.y_shape), (x, y, argmax), (np.int32(1 if include_batch else 0),))


def max_pool_grad(p: PoolProblem, x, dy, dx) -> LaunchPlan:
    """dx = max_pool_grad(x, dy), gather form: one thread per x element."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_max_bwd<{ctype(x.dtype)}, {it}>", _prod(p.x_shape), (x, dy, dx))


def avg_pool(p: PoolProblem, x, y) -> LaunchPlan:
    """y = avg_pool(x): one thread per y element."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_avg_fwd<{ctype(x.dtype)}, {it}>", _prod(p.y_shape), (x, y))


def avg_pool_grad(p: PoolProblem, dy, dx, divide: bool = True) -> LaunchPlan:
    """dx = avg_pool_grad(dy) (divide=True), or avg_unpool(dy) = the adjoint of sum pooling (divide=False)."""
    it = index_type(p.needs_int64())
    expr = f"pool_avg_bwd<{ctype(dy.dtype)}, {it}, {'true' if divide else 'false'}>"
    return _plan(p, expr, _prod(p.x_shape), (dy, dx))
