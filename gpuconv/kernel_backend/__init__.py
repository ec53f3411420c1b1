"""The CUDA-kernel backend: canonical ops built from launch plans and run by an executor (cuda or emulator).

Same method names and signatures as the NumPy backend (gpuconv/numpy_backend/__init__.py). Each op module
(conv_fprop, conv_dgrad, conv_wgrad, pool, unpool) exposes functions `op(executor, ...)` that allocate outputs
with executor.xp, build plans with gpuconv.plans.* and launch them.
"""
from __future__ import annotations

import importlib


class KernelBackend:
    """Canonical ops on one executor; xp is the executor's array module."""

    def __init__(self, executor):
        self.executor = executor
        self.xp = executor.xp
        self.name = executor.name

    def _op(self, module: str, fn: str):
        return getattr(importlib.import_module(f"{__name__}.{module}"), fn)

    def conv_fprop(self, x, w, p):
        return self._op("conv_fprop", "conv_fprop")(self.executor, x, w, p)

    def conv_dgrad(self, dy, w, p):
        return self._op("conv_dgrad", "conv_dgrad")(self.executor, dy, w, p)

    def conv_wgrad(self, x, dy, p):
        return self._op("conv_wgrad", "conv_wgrad")(self.executor, x, dy, p)

    def max_pool(self, x, p):
        return self._op("pool", "max_pool")(self.executor, x, p)

    def max_pool_argmax(self, x, p, index_dtype, include_batch):
        return self._op("pool", "max_pool_argmax")(self.executor, x, p, index_dtype, include_batch)

    def max_pool_grad(self, x, dy, p):
        return self._op("pool", "max_pool_grad")(self.executor, x, dy, p)

    def avg_pool(self, x, p):
        return self._op("pool", "avg_pool")(self.executor, x, p)

    def avg_pool_grad(self, dy, p):
        return self._op("pool", "avg_pool_grad")(self.executor, dy, p)

    def avg_unpool(self, updates, p):
        return self._op("unpool", "avg_unpool")(self.executor, updates, p)

    def argmax_scatter(self, values, argmax, out_shape, include_batch, check_range=None):
        return self._op("unpool", "argmax_scatter")(self.executor, values, argmax, out_shape, include_batch,
                                                     check_range)

    def argmax_gather(self, grad, argmax, include_batch, check_range=None):
        return self._op("unpool", "argmax_gather")(self.executor, grad, argmax, include_batch, check_range)
