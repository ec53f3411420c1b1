"""Pooling ops on a kernel executor (cuda or emulator): allocate outputs with executor.xp, launch the plans.

Same signatures as gpuconv.numpy_backend.pool, with the executor first. Inputs are canonical (C-contiguous
N,D,H,W,C) and validated by the API layer. Outputs that the kernel writes completely are allocated with
`empty`; empty problems launch nothing and return empty arrays, or zeros where the result has cells.
"""
from __future__ import annotations

import numpy as np

from ..geometry import PoolProblem
from ..plans import pool as plans


def max_pool(executor, x, p: PoolProblem):
    """y[n,z,p,q,c] = the scan-rule maximum of window (z,p,q) (first cell on ties; NaN only as first cell)."""
    y = executor.xp.empty(p.y_shape, x.dtype)
    if y.size:
        executor.launch(plans.max_pool(p, x, y))
    return y


def max_pool_argmax(executor, x, p: PoolProblem, index_dtype, include_batch: bool):
    """(y, argmax), argmax = ((d*H + h)*W + w)*C + c of the selected cell (+ n*D*H*W*C with include_batch)."""
    xp = executor.xp
    y = xp.empty(p.y_shape, x.dtype)
    argmax = xp.empty(p.y_shape, np.dtype(index_dtype))
    if y.size:
        executor.launch(plans.max_pool_argmax(p, x, y, argmax, include_batch))
    return y, argmax


def max_pool_grad(executor, x, dy, p: PoolProblem):
    """dx: each window's dy added at the cell its scan selects in x (gather form, fixed order)."""
    if p.is_empty:
        return executor.xp.zeros(p.x_shape, x.dtype)
    dx = executor.xp.empty(p.x_shape, x.dtype)
    executor.launch(plans.max_pool_grad(p, x, dy, dx))
    return dx


def avg_pool(executor, x, p: PoolProblem):
    """y = mean of each window's in-bounds cells."""
    y = executor.xp.empty(p.y_shape, x.dtype)
    if y.size:
        executor.launch(plans.avg_pool(p, x, y))
    return y


def avg_pool_grad(executor, dy, p: PoolProblem):
    """dx: dy / count(window) added to every in-bounds cell of each window (gather form, fixed order)."""
    if p.is_empty:
        return executor.xp.zeros(p.x_shape, dy.dtype)
    dx = executor.xp.empty(p.x_shape, dy.dtype)
    executor.launch(plans.avg_pool_grad(p, dy, dx, divide=True))
    return dx
