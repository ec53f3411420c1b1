"""Launch plans for the pooling family (kernels/pool.cu): max/avg pooling, argmax, and the pooling gradients.

Every kernel runs one thread per VEC consecutive channels of one element of the tensor it writes (y for the
forward ops, x for the gradients and avg_unpool), the channel index fastest (coalesced in NHWC), in a grid-stride
loop: block = 256 threads, grid = min(ceil(total / VEC / 256), MAX_BLOCKS). Template arguments: the element type,
the index type (`int`, or `long long` when PoolProblem.needs_int64()), for the argmax kernel the argmax type, for
the average gradient whether it divides, and last VEC.

VEC (lanes per thread), chosen by `choose_vec(p, dtype, lanes)`, a pure function: the widest VEC in
`VEC_WIDTHS[dtype.itemsize]` -- 16 then 8 for 1-byte integers (128/64-bit), 4 for 2-byte types (64-bit),
4 for 4-byte types (128-bit), 2 for 8-byte types (128-bit) -- such that

  * C % VEC == 0 (a thread's lanes are channels c..c+VEC-1 of one cell, c % VEC == 0), and
  * VEC <= lanes, where lanes = `vector_lanes(*arrays)` over every array the kernel binds: the widest power of
    two <= 16 for which each array's data pointer (`array.data.ptr` for CuPy, `array.ctypes.data` for NumPy) is
    a multiple of min(16, VEC * its itemsize) bytes. Every per-thread offset is a multiple of VEC elements, so
    an aligned base makes every vector access aligned (the argmax array is checked at its own itemsize);

else VEC = 1, the scalar kernel. Each lane runs the scalar computation (same scan rule, same summation order),
so the choice never changes a result's bits. `force_vec(v)` (tests, benchmarks) makes every plan built inside it
use VEC = v, or raise ValueError saying why v cannot run the problem (`vec_reason`).

Plans are pure functions of the problem and the arrays they bind (their dtype, and their data pointers for the
alignment), so selection is testable without a kernel or a GPU.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Iterator

import numpy as np

from ..dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES, ctype
from ..geometry import PoolProblem
from ..kernel_source import KernelFamily, LaunchHint
from . import LaunchPlan, ceil_div, data_ptr, index_scalar, index_type

BLOCK = 256
# Grid-stride loops make any grid correct; this cap (~30 waves of 2048-thread SMs on a 132-SM H100) bounds the
# launch while keeping enough blocks in flight to saturate memory bandwidth.
MAX_BLOCKS = 32768

MAX_DTYPES = FLOAT_DTYPES + INT_DTYPES
_INDEX_TYPES = (index_type(False), index_type(True))

# Vector widths (lanes per thread) by element size, widest first; VEC = 1 always exists. 64- or 128-bit accesses.
VEC_WIDTHS: dict[int, tuple[int, ...]] = {1: (16, 8), 2: (4,), 4: (4,), 8: (2,)}
MAX_VEC = 16


def vec_widths(dtype) -> tuple[int, ...]:
    """Every VEC instantiated for dtype, widest first, ending with 1."""
    return VEC_WIDTHS[np.dtype(dtype).itemsize] + (1,)


def _expressions() -> tuple[str, ...]:
    """Every instantiation any plan below can name (the compile gate and the emulator build exactly these)."""
    out = []
    for dt, it in itertools.product(MAX_DTYPES, _INDEX_TYPES):
        v = ctype(dt)
        for vec in vec_widths(dt):
            out.append(f"pool_max_fwd<{v}, {it}, {vec}>")
            out.extend(f"pool_max_argmax_fwd<{v}, {it}, {ctype(a)}, {vec}>" for a in INDEX_DTYPES)
            out.append(f"pool_max_bwd<{v}, {it}, {vec}>")
    for dt, it in itertools.product(FLOAT_DTYPES, _INDEX_TYPES):
        v = ctype(dt)
        for vec in vec_widths(dt):
            out.append(f"pool_avg_fwd<{v}, {it}, {vec}>")
            out.extend(f"pool_avg_bwd<{v}, {it}, {div}, {vec}>" for div in ("true", "false"))
    return tuple(out)


# No __launch_bounds__ in pool.cu: with it, ptxas (NVRTC 13.5) capped these kernels' registers and spilled; the
# block size reaches the compile gate's occupancy report through these hints instead.
FAMILY = KernelFamily("pool", "pool.cu", _expressions(),
                      launch_hints={e: LaunchHint(block_threads=BLOCK) for e in _expressions()})


def grid_for(total: int) -> tuple[int, int, int]:
    """1-D grid for a grid-stride loop over `total` elements (total >= 1)."""
    return (max(1, min(ceil_div(total, BLOCK), MAX_BLOCKS)), 1, 1)


# ---------------------------------------------------------------------------------------------------------
# vector width: alignment, the chooser, the forced override
# ---------------------------------------------------------------------------------------------------------
def vector_lanes(*arrays) -> int:
    """The widest VEC (a power of two <= MAX_VEC) for which every array's data pointer is aligned to
    min(16, VEC * itemsize) bytes: the alignment test of every vector access the kernels make."""
    lanes = MAX_VEC
    for a in arrays:
        ptr, size = data_ptr(a), np.dtype(a.dtype).itemsize
        while lanes > 1 and ptr % min(16, lanes * size):
            lanes //= 2
    return lanes


def vec_reason(p: PoolProblem, dtype, lanes: int, vec: int) -> str:
    """'' when VEC = vec can run p on arrays of dtype whose alignment allows `lanes` lanes, else why not."""
    if vec not in vec_widths(dtype):
        return f"VEC = {vec} is not instantiated for {np.dtype(dtype)} (one of {vec_widths(dtype)})"
    if p.C % vec:
        return f"C = {p.C} is not a multiple of VEC = {vec}"
    if vec > lanes:
        return f"an array's data pointer is not aligned for VEC = {vec} (aligned for {lanes} lanes)"
    return ""


def choose_vec(p: PoolProblem, dtype, lanes: int) -> int:
    """The widest VEC in vec_widths(dtype) that runs p with `lanes` = vector_lanes(arrays) (module docstring)."""
    return next(v for v in vec_widths(dtype) if not vec_reason(p, dtype, lanes, v))


_FORCED_VEC: contextvars.ContextVar[int | None] = contextvars.ContextVar("gpuconv_pool_forced_vec", default=None)


@contextlib.contextmanager
def force_vec(vec: int) -> Iterator[None]:
    """Every pooling plan built inside uses VEC = vec, or raises ValueError if vec cannot run it (tests,
    benchmarks). A context variable: other threads and async tasks keep the chooser."""
    if vec not in (1, 2, 4, 8, 16):
        raise ValueError(f"force_vec: VEC must be 1, 2, 4, 8 or 16, got {vec!r}")
    token = _FORCED_VEC.set(vec)
    try:
        yield
    finally:
        _FORCED_VEC.reset(token)


def vec_for(p: PoolProblem, dtype, arrays: tuple) -> int:
    """VEC for a plan binding `arrays`: the forced one (checked) inside force_vec, else choose_vec."""
    lanes = vector_lanes(*arrays)
    forced = _FORCED_VEC.get()
    if forced is None:
        return choose_vec(p, dtype, lanes)
    reason = vec_reason(p, dtype, lanes, forced)
    if reason:
        raise ValueError(f"force_vec({forced}): {reason}")
    return forced


@functools.lru_cache(maxsize=256)
def geometry_args(p: PoolProblem, needs_int64: bool) -> tuple:
    """The 16 geometry parameters every pooling kernel takes, as exact NumPy scalars of the index type (int64 when
    needs_int64; kept per problem and width: building them is a tenth of a call's host time)."""
    s = index_scalar(needs_int64)
    vals = (p.D, p.H, p.W, p.C, p.T, p.R, p.S, p.Z, p.P, p.Q) + tuple(p.stride) + tuple(p.pad_before)
    return tuple(s(v) for v in vals)


def _plan(p: PoolProblem, expression: str, vec: int, total: int, arrays: tuple, extra: tuple = ()) -> LaunchPlan:
    """expression<..., vec>(arrays, total, geometry, extra) over total / vec lane groups."""
    expression = f"{expression}, {vec}>"
    if expression not in FAMILY.name_expressions:
        raise KeyError(f"{expression} is not declared in the pool family")
    int64 = p.needs_int64()
    return LaunchPlan(FAMILY.name, expression, grid_for(total // vec), (BLOCK, 1, 1), 0,
                      arrays + (index_scalar(int64)(total),) + geometry_args(p, int64) + extra)


def max_pool(p: PoolProblem, x, y) -> LaunchPlan:
    """y = max_pool(x): one thread per VEC y elements."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_max_fwd<{ctype(x.dtype)}, {it}", vec_for(p, x.dtype, (x, y)), math.prod(p.y_shape), (x, y))


def max_pool_argmax(p: PoolProblem, x, y, argmax, include_batch: bool) -> LaunchPlan:
    """(y, argmax) = max_pool_with_argmax(x); argmax's dtype (int32/int64) picks the argmax template type."""
    it = index_type(p.needs_int64())
    expr = f"pool_max_argmax_fwd<{ctype(x.dtype)}, {it}, {ctype(argmax.dtype)}"
    return _plan(p, expr, vec_for(p, x.dtype, (x, y, argmax)), math.prod(p.y_shape), (x, y, argmax),
                 (np.int32(1 if include_batch else 0),))


def max_pool_grad(p: PoolProblem, x, dy, dx) -> LaunchPlan:
    """dx = max_pool_grad(x, dy), gather form: one thread per VEC x elements."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_max_bwd<{ctype(x.dtype)}, {it}", vec_for(p, x.dtype, (x, dy, dx)), math.prod(p.x_shape),
                 (x, dy, dx))


def avg_pool(p: PoolProblem, x, y) -> LaunchPlan:
    """y = avg_pool(x): one thread per VEC y elements."""
    it = index_type(p.needs_int64())
    return _plan(p, f"pool_avg_fwd<{ctype(x.dtype)}, {it}", vec_for(p, x.dtype, (x, y)), math.prod(p.y_shape), (x, y))


def avg_pool_grad(p: PoolProblem, dy, dx, divide: bool = True) -> LaunchPlan:
    """dx = avg_pool_grad(dy) (divide=True), or avg_unpool(dy) = the adjoint of sum pooling (divide=False)."""
    it = index_type(p.needs_int64())
    expr = f"pool_avg_bwd<{ctype(dy.dtype)}, {it}, {'true' if divide else 'false'}"
    return _plan(p, expr, vec_for(p, dy.dtype, (dy, dx)), math.prod(p.x_shape), (dy, dx))
