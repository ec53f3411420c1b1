"""Kernel scalars shared by the convolution families: a ConvProblem as the parameter list of conv_common.cuh.

Every conv kernel that includes kernels/conv_common.cuh takes, after its tensors, the 22 scalars of
`GPUCONV_CONV_PROBLEM_PARAMS(Index)` in this order:

    N D H W C   K   T R S   Z P Q   stride (d, h, w)   dilation (d, h, w)   pad_before (d, h, w)   groups

each an exact NumPy scalar of the kernel's index type (np.int32 for `int`, np.int64 for `long long`).
`problem_scalars` is the one place that order is written in Python; the kernel side builds a
`ConvProblemSize<Index>` from them.

Non-finite operands (`nonfinite_flag_plan`): DESIGN.md section 2 makes out-of-bounds taps absent -- padding and
the inserted zeros of a strided dgrad never multiply anything. The implicit-GEMM (tiled, tensorop) kernels load
them as zeros and multiply, which is exact unless the operand they meet holds inf or NaN (0 * inf = NaN): w for
fprop and dgrad, dy for wgrad. So every plan that runs such a kernel is

    [conv_nonfinite_flag(operand, n, flag), tiled kernel(..., flag, ...)]

on a 1-element int32 `flag` the caller allocates zeroed (`xp.zeros((1,), np.int32)`: no host synchronisation).
The flag kernel sets it to 1 when some operand element is inf or NaN; the tiled kernel reads it and, when set,
computes its tiles by the analytic kernel's per-output function. Finite operands cost one pass over the operand.
Analytic plans need no flag (the analytic kernels skip absent taps).
"""
from __future__ import annotations

from ..dtypes import FLOAT_DTYPES, ctype
from ..geometry import ConvProblem
from . import LaunchPlan, ceil_div, index_scalar, index_type

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


# ---------------------------------------------------------------------------------------------------------
# non-finite flag (kernels/conv_common.cuh conv_nonfinite_flag)
# ---------------------------------------------------------------------------------------------------------
FLAG_BLOCK = 256
FLAG_MAX_BLOCKS = 1024       # grid-stride beyond this: ~2 waves of 132 SMs x 4 blocks


def flag_expression(dtype, index: str) -> str:
    return f"gpuconv::conv_nonfinite_flag<{ctype(dtype)}, {index}>"


def flag_expressions() -> tuple[str, ...]:
    """Every flag-kernel instantiation (each conv family lists them among its name expressions)."""
    return tuple(flag_expression(dt, index_type(ix)) for dt in FLOAT_DTYPES for ix in (False, True))


def nonfinite_flag_plan(family: str, operand, elements: int, index: str, flag) -> LaunchPlan:
    """The launch that sets flag[0] = 1 when one of operand's `elements` values is inf or NaN."""
    if flag is None:
        raise ValueError("a tiled conv plan needs `nonfinite`: a zeroed 1-element int32 array (the flag its "
                         "conv_nonfinite_flag launch sets when the operand holds inf or NaN)")
    grid = (max(1, min(ceil_div(elements, FLAG_BLOCK), FLAG_MAX_BLOCKS)), 1, 1)
    return LaunchPlan(family, flag_expression(operand.dtype, index), grid, (FLAG_BLOCK, 1, 1), 0,
                      (operand, index_scalar(index == "long long")(elements), flag))
