"""Benchmark cases: a named layer x an op x a dtype x a batch, with its geometry and work counts.

Conv ops (ConvLayer): fprop, dgrad, wgrad, transpose (conv*_transpose: the same arithmetic as dgrad, through
the transposed-conv entry point). Pool ops (PoolLayer): pool (max pooling), pool_argmax
(max_pool_with_argmax), unpool (max_unpool), pool_grad (max_pool_grad_with_argmax), avg_pool, avg_unpool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import ConvProblem, PoolProblem, conv_problem, pool_problem
from . import metrics
from .layers import LAYER_SETS, ConvLayer, PoolLayer

CONV_OPS = ("fprop", "dgrad", "wgrad", "transpose")
POOL_OPS = ("pool", "pool_argmax", "unpool", "pool_grad", "avg_pool", "avg_unpool")
ALL_OPS = CONV_OPS + POOL_OPS
DTYPES = ("float32", "float16", "float64")


@dataclass
class Case:
    """One benchmark problem. Shapes are user-facing (NHWC / NDHWC, TF filter layout)."""

    layer_set: str
    layer: ConvLayer | PoolLayer
    op: str
    dtype: str
    batch: int
    problem: ConvProblem | PoolProblem = field(init=False)

    def __post_init__(self):
        x5 = _canonical(self.x_shape)
        if self.kind == "conv":
            w5 = (1,) * (3 - self.nspatial) + tuple(self.layer.filter_shape)
            self.problem = conv_problem(x5, w5, _triple(self.layer.strides, self.nspatial, 1), (1, 1, 1),
                                        self.layer.padding)
        else:
            self.problem = pool_problem(x5, _triple(self.layer.ksize, self.nspatial, 1),
                                        _triple(self.layer.strides, self.nspatial, 1), self.layer.padding)

    @property
    def kind(self) -> str:
        return "conv" if isinstance(self.layer, ConvLayer) else "pool"

    @property
    def nspatial(self) -> int:
        return len(self.layer.input_shape) - 1

    @property
    def name(self) -> str:
        return f"{self.layer.name} {self.op} {self.dtype} N={self.batch}"

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.layer.with_batch(self.batch)

    @property
    def y_shape(self) -> tuple[int, ...]:
        p = self.problem
        y5 = p.y_shape
        return (y5[0],) + tuple(y5[4 - self.nspatial:4]) + (y5[4],)

    @property
    def w_shape(self) -> tuple[int, ...] | None:
        return tuple(self.layer.filter_shape) if self.kind == "conv" else None

    @property
    def flops(self) -> int:
        return self.problem.flops("fprop") if self.kind == "conv" else 0

    @property
    def bytes(self) -> int:
        if self.kind == "conv":
            return metrics.conv_bytes(self.problem, self.dtype)
        return metrics.pool_bytes(self.op, self.problem, self.dtype)

    def describe(self) -> dict[str, Any]:
        d = {"layer_set": self.layer_set, "layer": self.layer.name, "op": self.op, "dtype": self.dtype,
             "batch": self.batch, "kind": self.kind, "x_shape": list(self.x_shape), "y_shape": list(self.y_shape),
             "strides": self.layer.strides, "padding": self.layer.padding, "flops": self.flops,
             "bytes": self.bytes}
        if self.kind == "conv":
            d["w_shape"] = list(self.w_shape)
        else:
            d["ksize"] = self.layer.ksize
            d["tensor_bytes"] = self.tensor_bytes
            d["large_tensor"] = self.tensor_bytes >= metrics.LARGE_TENSOR_BYTES
        return d

    @property
    def tensor_bytes(self) -> int | None:
        """Pooling: bytes of the full-resolution tensor (what the >= 64 MiB pooling target is stated for)."""
        if self.kind != "pool":
            return None
        return metrics.pool_tensor_bytes(self.problem, self.dtype)

    def host_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Uniform[-1, 1] inputs of the case's dtype, tie-free enough for pooling (continuous values)."""
        rng = np.random.default_rng(seed)

        def u(shape):
            return rng.uniform(-1, 1, shape).astype(self.dtype)

        if self.kind == "conv":
            return {"x": u(self.x_shape), "w": u(self.w_shape), "dy": u(self.y_shape)}
        return {"x": u(self.x_shape), "dy": u(self.y_shape)}


def _triple(v: int, nspatial: int, fill: int) -> tuple[int, int, int]:
    return (fill,) * (3 - nspatial) + (int(v),) * nspatial


def _canonical(shape) -> tuple[int, ...]:
    n, c = shape[0], shape[-1]
    spatial = tuple(shape[1:-1])
    return (n,) + (1,) * (3 - len(spatial)) + spatial + (c,)


def build_cases(layer_sets: list[str], ops: list[str], dtypes: list[str], batch: int,
                match: str | None = None, batch3d: int | None = None) -> list[Case]:
    """Every (layer, op, dtype) that applies: conv ops on conv layers, pool ops on pool layers.

    batch for 2-D layers, batch3d (default: batch) for 3-D ones; match: keep only layers whose name
    contains this substring.
    """
    cases = []
    for set_name in layer_sets:
        for layer in LAYER_SETS[set_name]:
            if match and match not in layer.name:
                continue
            wanted = CONV_OPS if isinstance(layer, ConvLayer) else POOL_OPS
            for op in ops:
                if op not in wanted:
                    continue
                n = batch if len(layer.input_shape) == 3 or batch3d is None else batch3d
                for dtype in dtypes:
                    cases.append(Case(set_name, layer, op, dtype, n))
    return cases
