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

(float32 on tensor cores flags the other GEMM operand as well: x for fprop and wgrad, dy for dgrad)

on a 1-element int32 `flag` the caller allocates zeroed (`xp.zeros((1,), np.int32)`: no host synchronisation).
The flag kernel sets it to 1 when some operand element is inf or NaN; the tiled kernel reads it and, when set,
computes its tiles by the analytic kernel's per-output function. Finite operands cost one pass over the operand.
Analytic plans need no flag (the analytic kernels skip absent taps).

Also shared by the conv plan modules: grid limits and the grid of a tiled kernel (`tile_grid`, `grid_reason`),
the first checks of a configuration (`config_reason`), the backprop kernels' 16 x 16-thread tiles
(`SIMT16_TILES`) and their tensor-op variants (`simt16_tensorop_passes`, `simt16_tensorop_reason`),
forced-configuration context managers (`ForcedFields`, `apply_forced`), the [flag, tiled kernel] launch pair
(`flagged_launch`) and whether a configuration runs TF32 (`uses_tf32`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Iterator

import numpy as np

from ..dtypes import FLOAT_DTYPES, ctype
from ..geometry import ConvProblem
from ..precision import TENSOR_CORE_PASSES
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
    """The 22 problem parameters as exact NumPy scalars of the index type (int64 when needs_int64, by default
    when p.needs_int64())."""
    return _problem_scalars(p, p.needs_int64() if needs_int64 is None else bool(needs_int64))


@functools.lru_cache(maxsize=256)
def _problem_scalars(p: ConvProblem, needs_int64: bool) -> tuple:
    """problem_scalars, built once per problem and index width."""
    scalar = index_scalar(needs_int64)
    return tuple(scalar(v) for v in problem_values(p))


@functools.lru_cache(maxsize=256)
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


# ---------------------------------------------------------------------------------------------------------
# limits and device assumptions every conv chooser shares
# ---------------------------------------------------------------------------------------------------------
INDEX_TYPES: tuple[str, ...] = (index_type(False), index_type(True))
SM_COUNT = 132               # H100 SXM / H200: the choosers' fixed device assumption (no device query)
GRID_X_MAX = INT32_MAX
GRID_YZ_MAX = 65535


def filter_elements(p: ConvProblem) -> int:
    """Elements of w (and dw): T*R*S*C/G*K."""
    return p.T * p.R * p.S * p.group_c * p.K


def input_elements(p: ConvProblem) -> int:
    """Elements of x (and dx): N*D*H*W*C."""
    return p.N * p.D * p.H * p.W * p.C


def output_elements(p: ConvProblem) -> int:
    """Elements of y (and dy): N*Z*P*Q*K."""
    return p.N * p.Z * p.P * p.Q * p.K


def tile_grid(gemm_m: int, gemm_n: int, bm: int, bn: int, groups: int, z: int = 1) -> tuple[int, int, int]:
    """Grid of a tiled conv kernel: x = m-tiles * n-tiles (blockIdx.x = tile_m * tiles_n + tile_n), y = groups,
    z = the family's third axis (1, stride phases or splits)."""
    return ceil_div(gemm_m, bm) * ceil_div(gemm_n, bn), groups, z


def grid_reason(grid: tuple[int, int, int], z_what: str) -> str:
    """'' when a tiled grid fits CUDA's limits, else why not (`z_what` names what runs along z)."""
    gx, gy, gz = grid
    if gy > GRID_YZ_MAX:
        return f"{gy} groups exceed the grid's y limit {GRID_YZ_MAX}"
    if gz > GRID_YZ_MAX:
        return f"{gz} {z_what} exceed the grid's z limit {GRID_YZ_MAX}"
    if gx > GRID_X_MAX:
        return f"{gx} tiles exceed the grid's x limit {GRID_X_MAX}"
    return ""


def config_reason(config, p: ConvProblem, dtype, variants: tuple[str, ...]) -> str:
    """'' when config's variant, index type and dtype can run p at all, else why not (the checks every
    fprop / dgrad / wgrad configuration starts with)."""
    if config.variant not in variants:
        return f"unknown variant {config.variant!r} (one of {variants})"
    if config.index not in INDEX_TYPES:
        return f"unknown index type {config.index!r}"
    if config.index == "int" and p.needs_int64():
        return "a tensor has >= 2^31 elements: 32-bit indices would overflow (use 'long long')"
    if not extents_fit_int(p):
        return "an extent, stride, dilation or pad does not fit in a C++ int"
    return ""


# ---------------------------------------------------------------------------------------------------------
# the 16 x 16-thread SIMT tiles of the backprop kernels (kernels/conv_common.cuh namespace simt16x16)
# ---------------------------------------------------------------------------------------------------------
SIMT16_BLOCK = 256           # kThreads
SIMT16_TILE_K = 8            # kTileK: gemm_k rows of one shared-memory stage
# name -> (BM, BN, TM, TN), TM = BM/16, TN = BN/16; each family instantiates a subset, in this order.
SIMT16_TILES: dict[str, tuple[int, int, int, int]] = {
    "128x128": (128, 128, 8, 8),
    "128x64": (128, 64, 8, 4),
    "64x128": (64, 128, 4, 8),
    "64x64": (64, 64, 4, 4),
}


def simt16_tiles(*names: str) -> dict[str, tuple[int, int, int, int]]:
    """The SIMT16_TILES entries a family instantiates."""
    return {n: SIMT16_TILES[n] for n in names}


def simt16_tiles_for(tiles, dtype) -> tuple[str, ...]:
    """Tile names instantiated for a dtype: float64 only 64x64 (an 8x8 double tile would not fit 255 registers)."""
    return ("64x64",) if np.dtype(dtype) == np.float64 else tuple(tiles)


# Their tensor-op variants (conv_dgrad_tensorop, conv_wgrad_tensorop: simt16x16::TensorOpWarpTile) and the
# tensor-core passes per product instantiated per dtype: float16 always (1: products exact in float), float32 as
# TF32 (1) or 3xTF32 (3) when the caller's float32 precision allows it.
SIMT16_TENSOROP_PASSES: dict[np.dtype, tuple[int, ...]] = {
    np.dtype(np.float16): (1,), np.dtype(np.float32): tuple(sorted(set(TENSOR_CORE_PASSES.values())))}


def simt16_tensorop_passes(dtype, precision: str) -> int | None:
    """The Passes a backprop chooser runs its tensorop variant with for `dtype` under float32 `precision` (None:
    the SIMT kernel): float16 1, float32 TENSOR_CORE_PASSES[precision] ("ieee": None), float64 None."""
    if np.dtype(dtype) == np.float16:
        return 1
    return TENSOR_CORE_PASSES.get(precision) if np.dtype(dtype) == np.float32 else None


def simt16_tensorop_reason(config, dtype) -> str:
    """'' when a backprop tensorop configuration is instantiated for `dtype`, else why not."""
    passes = SIMT16_TENSOROP_PASSES.get(np.dtype(dtype))
    if passes is None:
        return f"the tensorop variant is float16 or float32 only, not {np.dtype(dtype)}"
    if config.passes not in passes:
        return f"{config.passes} tensor-core passes are not instantiated for {np.dtype(dtype)} (have {passes})"
    return ""


def uses_tf32(config, dtype) -> bool:
    """Whether a conv configuration (any family) multiplies float32 on tensor cores, TF32 or 3xTF32: its operands
    are rounded or split, so its plan flags both GEMM operands."""
    return config.variant == "tensorop" and np.dtype(dtype) == np.float32


# ---------------------------------------------------------------------------------------------------------
# forced configurations (tests, benchmarks): a context manager per family, read by its config_for
# ---------------------------------------------------------------------------------------------------------
class ForcedFields:
    """Configuration fields forced for the calls inside `force(...)`; a context variable, so threads and async
    tasks see only their own."""

    def __init__(self, family: str, config_type):
        self._var: contextvars.ContextVar[dict | None] = contextvars.ContextVar(f"gpuconv_{family}_forced",
                                                                               default=None)
        self._config_type = config_type

    @contextlib.contextmanager
    def force(self, **fields) -> Iterator[None]:
        unknown = set(fields) - {f.name for f in dataclasses.fields(self._config_type)}
        if unknown:
            raise TypeError(f"unknown {self._config_type.__name__} fields {sorted(unknown)}")
        token = self._var.set(fields)
        try:
            yield
        finally:
            self._var.reset(token)

    def get(self) -> dict | None:
        """The forced fields now in effect (None: none)."""
        return self._var.get()


def apply_forced(config, fields: dict, default_tile: str, untiled: tuple[str, ...] = ("analytic",),
                 **analytic_fields):
    """config with forced `fields` applied: a forced tiled variant without a tile takes `default_tile` when
    config has none; a result of an `untiled` variant takes `analytic_fields` (its tile-only fields reset)."""
    if fields.get("variant") in ("tiled", "tensorop") and "tile" not in fields and config.tile is None:
        fields = {**fields, "tile": default_tile}
    config = dataclasses.replace(config, **fields)
    if config.variant in untiled:
        config = dataclasses.replace(config, **analytic_fields)
    return config


def checked_config(family: str, config, supported: tuple[bool, str], forced: bool):
    """config, or the ValueError that says why it cannot run (`supported` is the family's supports() answer):
    a forced field, or a problem past every variant's limits (the chooser falls back to the analytic variant
    without asking it)."""
    ok, why = supported
    if not ok:
        raise ValueError(f"{'forced ' if forced else ''}{family} configuration {config} cannot run this problem: "
                         f"{why}")
    return config


# ---------------------------------------------------------------------------------------------------------
# launches
# ---------------------------------------------------------------------------------------------------------
def flagged_launch(family: str, operands: list[tuple[object, int]], index: str, nonfinite, expression: str,
                   grid: tuple[int, int, int], block: int, args: tuple) -> list[LaunchPlan]:
    """[conv_nonfinite_flag over each (operand, elements) of `operands`, all setting the one flag; the tiled
    kernel `expression`(args)] (module docstring)."""
    return ([nonfinite_flag_plan(family, operand, elements, index, nonfinite) for operand, elements in operands]
            + [LaunchPlan(family, expression, grid, (block, 1, 1), 0, args)])


def needs_nonfinite_flag(config) -> bool:
    """Whether a conv configuration's plan takes the non-finite flag (every implicit-GEMM variant)."""
    return config.variant != "analytic"
