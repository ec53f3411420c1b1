"""The NumPy backend: the CPU fallback and the oracle every kernel is tested against.

Canonical ops (all arrays C-contiguous, channels-last 5-D, validated by the API layer):
    conv_fprop(x, w, p: ConvProblem) -> y                  y: p.y_shape
    conv_dgrad(dy, w, p) -> dx                             dx: p.x_shape
    conv_wgrad(x, dy, p) -> dw                             dw: p.w_shape
    max_pool(x, p: PoolProblem) -> y
    max_pool_argmax(x, p, index_dtype, include_batch) -> (y, argmax)
    max_pool_grad(x, dy, p) -> dx                          selection recomputed from x by the scan rule
    avg_pool(x, p) -> y
    avg_pool_grad(dy, p) -> dx
    avg_unpool(updates, p) -> out                          out: p.x_shape
    argmax_scatter(values, argmax, out_shape, include_batch, check_range=None) -> out
                                                           zeros(out_shape) + values at argmax; calls
                                                           check_range() (the API's range check of argmax)
                                                           unless its own pass showed every index in range
    argmax_gather(grad, argmax, include_batch, check_range=None) -> values
                                                           grad's flat cells at argmax; check_range as above
Output dtype = input dtype; float16 accumulates in float32 (pooling runs on float32 copies, max pooling and its
gradient on int16 keys ordered as the values where no NaN or -0.0 is involved: _pool_float16) or better
(argmax_scatter's repeated indices: float64 sums, rounded once).

IEEE arithmetic is the contract (NaN and inf propagate, float16 results overflow to inf, as in TensorFlow), so
the ops run under np.errstate(all="ignore"): no floating-point warnings from inside a GEMM or a cast, on the
calling thread or the worker pool's (which runs in the caller's context).
"""
from __future__ import annotations

import numpy as np

from . import _pool_float16
from . import conv as _conv
from . import pool as _pool


def _ieee(fn):
    return staticmethod(np.errstate(all="ignore")(fn))


class NumpyBackend:
    name = "numpy"
    xp = np
    conv_fprop = _ieee(_conv.conv_fprop)
    conv_dgrad = _ieee(_conv.conv_dgrad)
    conv_wgrad = _ieee(_conv.conv_wgrad)
    max_pool = _ieee(_pool_float16.max_pool)
    max_pool_argmax = _ieee(_pool_float16.max_pool_argmax)
    max_pool_grad = _ieee(_pool_float16.max_pool_grad)
    avg_pool = _ieee(_pool_float16.avg_pool)
    avg_pool_grad = _ieee(_pool_float16.avg_pool_grad)
    avg_unpool = _ieee(_pool_float16.avg_unpool)
    argmax_scatter = _ieee(_pool.argmax_scatter)
    argmax_gather = _ieee(_pool.argmax_gather)


BACKEND = NumpyBackend()
