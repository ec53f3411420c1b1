"""Kernel scalars shared by the convolution families: a ConvProblem as the parameter list of conv_common.cuh.

Every conv kernel that includes kernels/conv_common.cuh takes, after its tensors, the 22 scalars of
`GPUCONV_CONV_PROBLEM_PARAMS(Index)` in this order:

    N D H W C   K   T R S   Z P Q   stride (d, h, w)   dilation (d, h, w)   pad_before (d, h, w)   groups

each an exact NumPy scalar of the kernel's index type (np.int32 for `int`, np.int64 for `long long`).
`problem_scalars` is the one place that order is written in Python; the kernel side builds a
`ConvProblemSize<Index>` from them.
"""
from __future__ import annotations

from ..geometry import ConvProblem
from . import index_scalar

# Parameter names in kernel order (documentation and tests; the C++ macro spells the same list).
PROBLEM_PARAM_NAMES: tuple[str, ...] = (
    "N", "D", "H", "W", "C", "K", "T", "R", "S", "Z", "P", "Q",
    "stride_d", "stride_h", "stride_w", "dilation_d", "dilation_h", "dilation_w",
    "pad_d", "pad_h", "pad_w", "groups",
)

INT32_MAX = 2**31 - 1


def problem_values(p: ConvProblem) -> tuple[int, ...]:
    """The 22 problem parameters as Python ints, in kernel order."""
    return (p.N, p.D, p.H, p.W, p.C, p.K, p.T, p.R, p.S, p.Z, p.P, p.Q,
            *p.stride, *p.dilation, *p.pad_before, p.groups)


def problem_scalars(p: ConvProblem, needs_int64: bool | None = None) -> tuple:
    """The 22 problem parameters as exact NumPy scalars of the index type (int64 when p.needs_int64())."""
    scalar = index_scalar(p.needs_int64() if needs_int64 is None else needs_int64)
    return tuple(scalar(v) for v in problem_values(p))


def extents_fit_int(p: ConvProblem) -> bool:
    """True when every single parameter fits in a C++ int (kernels keep extents, strides and pads in int)."""
    return all(abs(v) <= INT32_MAX for v in problem_values(p))
