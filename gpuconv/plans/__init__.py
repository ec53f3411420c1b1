"""Launch plans: per op, which kernel, template arguments, grid, block, shared memory and argument list.

A plan is built by a pure function of the problem (plus the arrays to bind); the CUDA executor and the emulator
executor both run the same plans, so what the emulator tests is the GPU path itself.

The parts that depend on the problem alone (the conv choosers and supports(), the kernels' scalar arguments)
are memoised per problem and dtype (functools.lru_cache), so that a repeated call's host time goes to binding
its arrays; test overrides are applied after them, never cached, and the scalar arguments are kept per index
width, which tests force on small problems. `python benchmarks/host_overhead.py` measures that host time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch, in CuPy's calling convention."""

    family: str                     # KernelFamily.name, e.g. "pool"
    name_expression: str            # e.g. "pool_max_fwd<float, int, 1>" (must be in the family's list)
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int                 # dynamic shared memory in bytes
    args: tuple[Any, ...]           # arrays and exact NumPy scalars, in kernel parameter order

    def __post_init__(self):
        for i, a in enumerate(self.args):
            if isinstance(a, (bool, int, float, complex)):
                raise TypeError(f"LaunchPlan {self.name_expression}: argument {i} is a Python {type(a).__name__}; "
                                "pass an exact NumPy scalar (np.int32, np.int64, np.float32, ...)")
        if min(self.grid) < 1 or min(self.block) < 1:
            raise ValueError(f"LaunchPlan {self.name_expression}: empty grid {self.grid} or block {self.block}")


def data_ptr(array) -> int:
    """The address of an array's first element: `array.ctypes.data` (NumPy) or `array.data.ptr` (CuPy)."""
    if isinstance(array, np.ndarray):
        return int(array.ctypes.data)
    return int(array.data.ptr)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def index_type(needs_int64: bool) -> str:
    """C++ index type name for kernels templated on their index width."""
    return "long long" if needs_int64 else "int"


def index_scalar(needs_int64: bool):
    """The NumPy scalar type matching index_type."""
    return np.int64 if needs_int64 else np.int32
