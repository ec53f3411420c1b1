"""Launch plans for the conv dgrad family (kernels/conv_dgrad.cu): conv*_backprop_input and conv*_transpose.

dx[n,d,h,w,c] = sum over taps (t,r,s) and channels k of c's group of dy[n,z,p,q,k] * w[t,r,s,c % Cg,k], where
z = (d + pad_d - t*dil_d) / stride_d must be an integer in [0, Z) (likewise p, q). Gather formulation: every dx
element is written once, in a fixed summation order: deterministic, no atomics, no zero-initialisation pass.

Variants (`DgradConfig.variant`):
  * ``analytic`` - `conv_dgrad_analytic`: one thread per dx element (grid ceil(N*D*H*W*C / 256) x 256
    threads); always correct.
  * ``col2im`` - GEMM + col2im, per batch chunk of `col2im_images` images (cols at most COL2IM_SCRATCH_BYTES, one
    image at least): a 1x1 conv_fprop of dy with w as a (K, T*R*S*C) matrix gives cols[m, tap, c] = sum_k dy[m, k]
    * w[tap, c, k] for every dy pixel m (float16 in float32), then `conv_dgrad_col2im<Element, ColT, Index>`, one
    thread per dx element, adds the cols entries of its present taps in (t, r, s) order. groups == 1 only.
  * ``tiled`` - `conv_dgrad_tiled`: implicit GEMM per (stride phase, group) in ONE launch:
    gemm_m = N * ceil(D/sd)*ceil(H/sh)*ceil(W/sw) (dx pixels of the phase), gemm_n = C/G,
    gemm_k = taps of the phase x ceil((K/G) / BK) * BK (BK = 8; 16 for float16 on tensor cores). A stride phase
    is the set of dx pixels with equal (d + pad_d) mod stride_d (per axis); only the ~T/sd x R/sh x S/sw taps
    that hit a phase are iterated, so no multiply touches an inserted zero of the zero-upsampled dy. Grid:
    x = m-tiles x n-tiles (n fastest), y = groups, z = stride_d*stride_h*stride_w phases; 256 threads; static
    shared memory (double-buffered BM x 8 and 8 x BN tiles). Tiles (BM x BN, thread tile TM x TN): 128x128
    (8x8), 128x64 (8x4), 64x64 (4x4).
  * ``tensorop`` - `conv_dgrad_tensorop<Element, Index, BM, BN, Passes>`: the tiled kernel with each stage
    multiplied on tensor cores, same tiles and grid (8 warps of (BM/2) x (BN/4)): float16 (WMMA 16x16x16, k-tiles
    of 16 halves, Passes 1) and float32 as TF32 (Passes 1) or 3xTF32 (3).

Chooser rules (`choose_dgrad_config`, a pure function of the problem and the dtype):
  1. index type: ``long long`` when some tensor has >= 2^31 elements (ConvProblem.needs_int64()), else ``int``.
  2. C/G < 16 (under 25 % of a 64-wide gemm_n tile): ``col2im`` where groups == 1, K >= 4 and one image's cols
     stay under 2^31 elements, else ``analytic`` (the ResNet stem's 3 channels, 3D U-Net's 1: on an H100 the
     analytic kernel ran their dgrad at 1.5 % of the FP32 peak, 0.09-0.13x cuDNN). K/G < 4 (under half of each
     8-deep gemm_k step, e.g. depthwise convolutions): ``analytic``. ``analytic`` also when the tiled kernel
     cannot run (`supports` gives the reason: an extent beyond int, more than 65535 groups or stride phases, a
     grid beyond 2^31-1 blocks, an image of >= 2^31 - 1024 pixels; the analytic variant has only the first and
     a grid limit of its own). Otherwise ``tiled``.
  3. tile: float64 always 64x64 (register budget). float32/float16: the first of 128x128, 128x64, 64x64 that
     keeps gemm_n utilisation >= 75 % (C/G over the padded tile width) and launches >= TARGET_CTAS CTAs
     (2 waves of 132 SMs, H100 SXM / H200; a fixed SM count, no device query); if none launches that many,
     the usable tile with the most CTAs.
  4. float16 runs ``tensorop`` with the tile of rule 3 (Passes 1), and so does float32 under precision "tf32" /
     "3xtf32" (what the kernel backend passes: the caller's gpuconv.float32_precision, "ieee" on GPUs below
     sm_80) with Passes = TENSOR_CORE_PASSES[precision]; float32 under "ieee" (the default) and float64 run
     ``tiled``.

Launch sequence (`dgrad_plans`):
  * analytic: [conv_dgrad_analytic] (it skips absent taps itself).
  * col2im: per batch chunk, the conv_fprop plans of `col2im_gemm_problem`, then [`col2im_plan`]; the kernel
    backend runs them (kernel_backend/conv_dgrad.py), `dgrad_plans` refuses the variant.
  * tiled: [conv_nonfinite_flag<Element, Index>(w, T*R*S*C/G*K, nonfinite), conv_dgrad_tiled(dy, w, dx,
    nonfinite, problem..., n_tiles)]. The tiled GEMM loads dy cells of absent taps (out of range) as zeros and
    multiplies them by w; when w holds inf or NaN the flag makes every block compute its tile by the analytic
    kernel's per-element sum, so absent taps never multiply (plans/conv_common.py). `nonfinite` is a zeroed
    1-element int32 array the caller allocates (kernel_backend/conv_dgrad.py: xp.zeros);
    `needs_nonfinite_flag(config)` says whether a plan takes it.
  * tensorop: the same; for float32 the flag runs over dy too (TF32 rounds and 3xTF32 splits dy: inf * 0 parts),
    so a non-finite dy or w is computed by formula.

Tests may force a configuration with `forced_config(variant=..., tile=...)` (a context manager read by
`config_for`, which the kernel backend calls); the chooser itself stays pure.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

import numpy as np

from ..dtypes import FLOAT_DTYPES, ctype
from ..geometry import INT32_LIMIT, ConvProblem, conv_problem
from ..kernel_source import KernelFamily, LaunchHint
from . import LaunchPlan, ceil_div, index_type
from .conv_common import (GRID_X_MAX, INDEX_TYPES, SIMT16_BLOCK, SIMT16_TENSOROP_PASSES, SIMT16_TILE_K, SM_COUNT,
                          ForcedFields, apply_forced, checked_config, config_reason, filter_elements,
                          flag_expressions, flagged_launch, grid_reason, input_elements, output_elements,
                          problem_scalars, simt16_tensorop_passes, simt16_tensorop_reason, simt16_tiles,
                          simt16_tiles_for, tile_grid, uses_tf32)
from .conv_common import needs_nonfinite_flag  # noqa: F401 (re-exported: the kernel backend asks here)

BLOCK = SIMT16_BLOCK         # threads of every dgrad kernel
TILE_K = SIMT16_TILE_K       # BK of the tiled kernel (kernels/conv_common.cuh simt16x16::kTileK)
TARGET_CTAS = 2 * SM_COUNT   # aim for at least two waves of CTAs
MIN_N_UTILISATION = 0.75     # C/G over the gemm_n extent the tiles cover
INT_LIMIT = 2**31 - 1024     # per-image pixel counts stay below this (int arithmetic plus a tile of slack)

# name -> (BM, BN, TM, TN); every configuration runs 16 x 16 threads.
TILES: dict[str, tuple[int, int, int, int]] = simt16_tiles("128x128", "128x64", "64x64")
VARIANTS = ("analytic", "col2im", "tiled", "tensorop")
FEW_CHANNELS = 16            # C/G below this: gemm_n tiles would be mostly padding (rule 2)
COL2IM_SCRATCH_BYTES = 64 * 2**20   # cols of one batch chunk of the col2im variant (one image at least)


def tiles_for(dtype) -> tuple[str, ...]:
    """Tile names instantiated for a dtype (float64 only 64x64: an 8x8 double tile would not fit 255 registers)."""
    return simt16_tiles_for(TILES, dtype)


@dataclass(frozen=True)
class DgradConfig:
    """A dgrad kernel choice: variant, tile (tiled only) and C++ index type."""

    variant: str                 # "analytic" | "col2im" | "tiled" | "tensorop"
    tile: str | None = None      # a TILES key for "tiled" and "tensorop"
    index: str = "int"           # "int" | "long long"
    passes: int = 1              # tensor-core products per product ("tensorop": 1 float16 / TF32, 3 3xTF32)


def analytic_expression(dtype, index: str) -> str:
    return f"conv_dgrad_analytic<{ctype(dtype)}, {index}>"


def col2im_dtype(dtype) -> np.dtype:
    """The dtype of the col2im variant's GEMM and cols: float64 for float64, else float32 (float16 included)."""
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def col2im_expression(dtype, index: str) -> str:
    return f"conv_dgrad_col2im<{ctype(dtype)}, {ctype(col2im_dtype(dtype))}, {index}>"


def col2im_row(p: ConvProblem) -> int:
    """cols entries per dy pixel: T*R*S*C (groups == 1)."""
    return p.T * p.R * p.S * p.C


def col2im_images(p: ConvProblem, dtype) -> int:
    """Images per batch chunk of the col2im variant: as many as keep cols within COL2IM_SCRATCH_BYTES, one at least."""
    per_image = p.Z * p.P * p.Q * col2im_row(p) * col2im_dtype(dtype).itemsize
    return max(1, min(p.N, COL2IM_SCRATCH_BYTES // max(1, per_image)))


def col2im_gemm_problem(p: ConvProblem, images: int) -> ConvProblem:
    """The chunk's GEMM as a 1x1 convolution: dy (images, Z, P, Q, K) by w as (1, 1, 1, K, T*R*S*C) -> cols."""
    return conv_problem((images, p.Z, p.P, p.Q, p.K), (1, 1, 1, p.K, col2im_row(p)), (1, 1, 1), (1, 1, 1), "VALID")


def col2im_weights(w, xp):
    """w (T, R, S, C, K) as the GEMM's 1x1 filter (1, 1, 1, K, T*R*S*C) in col2im_dtype: w'[k, tap*C + c] =
    w[tap, c, k] (a copy)."""
    t, r, s, c, k = w.shape
    return xp.ascontiguousarray(w.reshape(t * r * s * c, k).T, dtype=col2im_dtype(w.dtype)).reshape(1, 1, 1, k,
                                                                                                   t * r * s * c)


def tiled_expression(dtype, index: str, tile: str) -> str:
    bm, bn, tm, tn = TILES[tile]
    return f"conv_dgrad_tiled<{ctype(dtype)}, {index}, {bm}, {bn}, {tm}, {tn}>"


def tensorop_expression(dtype, index: str, tile: str, passes: int) -> str:
    bm, bn, _, _ = TILES[tile]
    return f"conv_dgrad_tensorop<{ctype(dtype)}, {index}, {bm}, {bn}, {passes}>"


def config_expression(config: DgradConfig, dtype) -> str:
    """The name expression a configuration launches (besides the flag)."""
    if config.variant == "analytic":
        return analytic_expression(dtype, config.index)
    if config.variant == "col2im":
        return col2im_expression(dtype, config.index)
    if config.variant == "tensorop":
        return tensorop_expression(dtype, config.index, config.tile, config.passes)
    return tiled_expression(dtype, config.index, config.tile)


def _expressions() -> tuple[str, ...]:
    out = []
    for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES):
        out.append(analytic_expression(dt, ix))
        out.append(col2im_expression(dt, ix))
        out.extend(tiled_expression(dt, ix, t) for t in tiles_for(dt))
        out.extend(tensorop_expression(dt, ix, t, n) for t in tiles_for(dt) for n in SIMT16_TENSOROP_PASSES.get(dt, ()))
    return tuple(out) + flag_expressions()


FAMILY = KernelFamily("conv_dgrad", "conv_dgrad.cu", _expressions(),
                      launch_hints={e: LaunchHint(block_threads=BLOCK) for e in _expressions()})


# ---------------------------------------------------------------------------------------------------------
# problem sizes of the tiled kernel
# ---------------------------------------------------------------------------------------------------------
def phase_count(p: ConvProblem) -> int:
    """Stride phases: one implicit GEMM per phase (blockIdx.z)."""
    return p.stride[0] * p.stride[1] * p.stride[2]


def phase_rows(p: ConvProblem) -> int:
    """gemm_m of the largest phase: N * ceil(D/sd) * ceil(H/sh) * ceil(W/sw)."""
    return p.N * ceil_div(p.D, p.stride[0]) * ceil_div(p.H, p.stride[1]) * ceil_div(p.W, p.stride[2])


def tiled_grid(p: ConvProblem, tile: str) -> tuple[int, int, int]:
    """(m-tiles x n-tiles, groups, phases) of conv_dgrad_tiled."""
    bm, bn, _, _ = TILES[tile]
    return tile_grid(phase_rows(p), p.group_c, bm, bn, p.groups, phase_count(p))


def tiled_ctas(p: ConvProblem, tile: str) -> int:
    gx, gy, gz = tiled_grid(p, tile)
    return gx * gy * gz


def gemm_n_utilisation(p: ConvProblem, tile: str) -> float:
    """C/G over the gemm_n extent the tiles cover (1.0: no padded columns)."""
    bn = TILES[tile][1]
    return p.group_c / (ceil_div(p.group_c, bn) * bn)


# ---------------------------------------------------------------------------------------------------------
# supports / choose
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def supports(config: DgradConfig, p: ConvProblem, dtype=np.float32) -> tuple[bool, str]:
    """Whether `config` can run problem `p` in `dtype`, and if not, why (CUTLASS's can_implement)."""
    why = config_reason(config, p, dtype, VARIANTS)
    if why:
        return False, why
    if np.dtype(dtype) not in FLOAT_DTYPES:
        return False, f"dtype {np.dtype(dtype)} is not a float dtype"
    if config.variant == "analytic":
        if ceil_div(input_elements(p), BLOCK) > GRID_X_MAX:
            return False, f"dx needs more than {GRID_X_MAX} blocks of {BLOCK} threads"
        return True, ""
    if config.variant == "col2im":
        if p.groups != 1:
            return False, f"the col2im variant needs groups == 1, not {p.groups}"
        if p.Z * p.P * p.Q * col2im_row(p) >= INT32_LIMIT:
            return False, "one image's cols (dy pixels x T*R*S*C) would pass 2^31 elements"
        if ceil_div(input_elements(p), BLOCK) > GRID_X_MAX:
            return False, f"dx needs more than {GRID_X_MAX} blocks of {BLOCK} threads"
        return True, ""
    if p.D * p.H * p.W >= INT_LIMIT:
        return False, "an image has >= 2^31 - 1024 pixels: the tiled kernel indexes pixels within an image in int"
    if config.tile not in tiles_for(dtype):
        return False, f"tile {config.tile!r} is not instantiated for {np.dtype(dtype)} (have {tiles_for(dtype)})"
    why = (simt16_tensorop_reason(config, dtype) if config.variant == "tensorop" else "") or \
        grid_reason(tiled_grid(p, config.tile), "stride phases")
    return not why, why


def choose_tile(p: ConvProblem, dtype) -> str:
    """Tile rule 3 of the module docstring."""
    names = tiles_for(dtype)
    usable = [t for t in names if gemm_n_utilisation(p, t) >= MIN_N_UTILISATION] or [names[-1]]
    for t in usable:
        if tiled_ctas(p, t) >= TARGET_CTAS:
            return t
    return max(usable, key=lambda t: (tiled_ctas(p, t), -usable.index(t)))


@functools.lru_cache(maxsize=256)
def choose_dgrad_config(p: ConvProblem, dtype, precision: str = "ieee") -> DgradConfig:
    """The dgrad configuration for problem p, dtype and float32 precision (rules in the module docstring); pure."""
    index = index_type(p.needs_int64())
    if p.group_c < FEW_CHANNELS:
        col2im = DgradConfig("col2im", None, index)
        return col2im if p.group_k >= 4 and supports(col2im, p, dtype)[0] else DgradConfig("analytic", None, index)
    if p.group_k < 4:
        return DgradConfig("analytic", None, index)
    tiled = DgradConfig("tiled", choose_tile(p, dtype), index)
    if not supports(tiled, p, dtype)[0]:
        return DgradConfig("analytic", None, index)
    passes = simt16_tensorop_passes(dtype, precision)
    return tiled if passes is None else DgradConfig("tensorop", tiled.tile, index, passes)


# ---------------------------------------------------------------------------------------------------------
# test override
# ---------------------------------------------------------------------------------------------------------
_forced = ForcedFields("dgrad", DgradConfig)


def forced_config(**fields):
    """Force DgradConfig fields (variant, tile, index, passes) for the calls inside (tests: tiled on tiny
    problems)."""
    return _forced.force(**fields)


def config_for(p: ConvProblem, dtype, precision: str = "ieee") -> DgradConfig:
    """choose_dgrad_config, with any forced_config fields applied; ValueError if the result cannot run (a forced
    field, or a problem past the analytic variant's limits too: an extent beyond int, dx past the grid)."""
    config = choose_dgrad_config(p, dtype, precision)
    fields = _forced.get()
    if fields:
        config = apply_forced(config, fields, tiles_for(dtype)[-1], ("analytic", "col2im"), tile=None)
    return checked_config(FAMILY.name, config, supports(config, p, dtype), bool(fields))


# ---------------------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------------------
def dgrad_plans(config: DgradConfig, p: ConvProblem, dy, w, dx, nonfinite=None) -> list[LaunchPlan]:
    """The launches computing dx (every element written) from dy and w; p must not be empty. `nonfinite`: a
    zeroed 1-element int32 array, required when needs_nonfinite_flag(config)."""
    dtype = np.dtype(dx.dtype)
    ix64 = config.index == "long long"
    scalars = problem_scalars(p, ix64)
    if config.variant == "col2im":
        raise ValueError("the col2im variant runs a conv_fprop GEMM per batch chunk first: kernel_backend.conv_dgrad "
                         "launches it and then col2im_plan")
    if config.variant == "analytic":
        grid = (ceil_div(input_elements(p), BLOCK), 1, 1)
        return [LaunchPlan(FAMILY.name, analytic_expression(dtype, config.index), grid, (BLOCK, 1, 1), 0,
                           (dy, w, dx) + scalars)]
    n_tiles = ceil_div(p.group_c, TILES[config.tile][1])
    # TF32 rounds and 3xTF32 splits dy: a non-finite dy is computed by formula too (module docstring).
    flagged = [(w, filter_elements(p))] + ([(dy, output_elements(p))] if uses_tf32(config, dtype) else [])
    return flagged_launch(FAMILY.name, flagged, config.index, nonfinite,
                          config_expression(config, dtype), tiled_grid(p, config.tile), BLOCK,
                          (dy, w, dx, nonfinite) + scalars + (np.int32(n_tiles),))


def col2im_plan(config: DgradConfig, p: ConvProblem, images: int, cols, dx) -> LaunchPlan:
    """conv_dgrad_col2im over a batch chunk of `images` images: dx (images, D, H, W, C), a view of the whole dx,
    from the chunk's cols (images * Z*P*Q, T*R*S*C), the output of the conv_fprop of col2im_gemm_problem."""
    chunk = dataclasses.replace(p, N=images)
    grid = (ceil_div(input_elements(chunk), BLOCK), 1, 1)
    return LaunchPlan(FAMILY.name, col2im_expression(dx.dtype, config.index), grid, (BLOCK, 1, 1), 0,
                      (cols, dx) + problem_scalars(chunk, config.index == "long long"))
