"""Unpooling ops on a kernel executor (cuda or emulator): argmax scatter/gather and avg_unpool.

Same signatures as gpuconv.numpy_backend.pool's argmax_scatter / argmax_gather / avg_unpool, with the executor
first. argmax_scatter is deterministic (no float atomics): see kernels/unpool.cu for its window fast path and its
five general passes.
"""
from __future__ import annotations

import numpy as np

from ..geometry import PoolProblem
from ..plans import unpool as plans


def argmax_scatter(executor, values, argmax, out_shape, include_batch: bool, check_range=None):
    """zeros(out_shape) with values[i] added at argmax[i]; duplicates add in increasing update order.

    Where disjoint windows tile the output (plans.window_strides), the one-pass window scatter runs first and
    one flag comes back from the device (a synchronisation); it stands unless an argmax left its window. Then
    every index was in range and `check_range` (the API's range check, raising on a bad index) is not called:
    it would read argmax once more and synchronise once more. Otherwise it is called before the general passes.
    """
    xp = executor.xp
    shape = tuple(int(v) for v in out_shape)
    windows = values.size and 0 not in shape and plans.window_strides(values.shape, shape) is not None
    if windows:
        out = xp.empty(shape, values.dtype)
        misplaced = xp.zeros(1, np.int32)
        executor.launch(plans.argmax_scatter_windows(values, argmax, out, misplaced, include_batch))
        if not int(misplaced[0]):
            return out
    if check_range is not None:
        check_range()
    if values.size == 0 or 0 in shape:
        return xp.zeros(shape, values.dtype)
    if windows:
        out.fill(0)
    else:
        out = xp.zeros(shape, values.dtype)
    scratch = {name: (xp.zeros if zero else xp.empty)(n, dtype)
               for name, (n, dtype, zero) in plans.scatter_scratch(values.shape, out.shape).items()}
    for plan in plans.argmax_scatter(values, argmax, out, scratch, include_batch):
        executor.launch(plan)
    return out


def argmax_gather(executor, grad, argmax, include_batch: bool, check_range=None):
    """values[i] = grad's cell at argmax[i] (per batch unless include_batch); argmax's shape, grad's dtype.

    The gather flags an out-of-range index; `check_range` (the API's range check, raising on a bad index) is called
    only then, after one flag comes back from the device (a synchronisation, made only when check_range is given):
    the check's own pass over argmax is spared.
    """
    xp = executor.xp
    if argmax.size == 0 or grad.size == 0:
        if check_range is not None:
            check_range()
        return xp.zeros(argmax.shape, grad.dtype)
    values = xp.empty(argmax.shape, grad.dtype)
    invalid = xp.zeros(1, np.int32)
    executor.launch(plans.argmax_gather(grad, argmax, values, invalid, include_batch))
    if check_range is not None and int(invalid[0]):
        check_range()
    return values


def avg_unpool(executor, updates, p: PoolProblem):
    """out (x_shape): each update copied to every in-bounds cell of its window; overlaps add."""
    if p.is_empty:
        return executor.xp.zeros(p.x_shape, updates.dtype)
    out = executor.xp.empty(p.x_shape, updates.dtype)
    executor.launch(plans.avg_unpool(p, updates, out))
    return out
