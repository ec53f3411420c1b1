"""Launch plans for the conv dgrad family (kernels/conv_dgrad.cu): conv*_backprop_input and conv*_transpose.

dx[n,d,h,w,c] = sum over taps (t,r,s) and channels k of c's group of dy[n,z,p,q,k] * w[t,r,s,c % Cg,k], where
z = (d + pad_d - t*dil_d) / stride_d must be an integer in [0, Z) (likewise p, q). Gather formulation: every dx
element is written once, in a fixed summation order: deterministic, no atomics, no zero-initialisation pass.

Variants (`DgradConfig.variant`):
  * ``analytic`` - `conv_dgrad_analytic`: one thread per dx element (grid ceil(N*D*H*W*C / 256) x 256
    threads); always correct.
  * ``pixels`` - `conv_dgrad_pixels<Element, Index, CT, PT>`: one thread per PT dx pixels of one W stride phase
    x CT channels of one group (tile "CTxPT", `pixel_tile`: 1x8 for C/G = 1, 4x4 up to 4 channels, 8x4 above),
    so a dy value serves CT channels and a w value PT pixels; the analytic sum per element, bit-identical to it.
    Grid ceil(pixel_threads / 256) x 256 threads.
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
  2. When a tile would be mostly padding: C/G < 16 (under 25 % of a 64-wide gemm_n tile) takes ``pixels``
     (the ResNet stem's 3 channels, 3D U-Net's 1; on an H100 the analytic kernel ran their dgrad at 1.5 % of
     the FP32 peak, 0.09-0.13x cuDNN) unless K/G < 4 (depthwise convolutions: nothing for a w value to serve)
     or it cannot run (`supports`: its thread count past the index type or the grid); those and K/G < 4 take
     ``analytic``. ``analytic`` also when the tiled kernel cannot run (`supports` gives the reason: an extent
     beyond int, more than 65535 groups or stride phases, a grid beyond 2^31-1 blocks, an image of >= 2^31 -
     1024 pixels; the analytic variant has only the first and a grid limit of its own). Otherwise ``tiled``.
  3. tile: float64 always 64x64 (register budget). float32/float16: the first of 128x128, 128x64, 64x64 that
     keeps gemm_n utilisation >= 75 % (C/G over the padded tile width) and launches >= TARGET_CTAS CTAs
     (2 waves of 132 SMs, H100 SXM / H200; a fixed SM count, no device query); if none launches that many,
     the usable tile with the most CTAs.
  4. float16 runs ``tensorop`` with the tile of rule 3 (Passes 1), and so does float32 under precision "tf32" /
     "3xtf32" (what the kernel backend passes: the caller's gpuconv.float32_precision, "ieee" on GPUs below
     sm_80) with Passes = TENSOR_CORE_PASSES[precision]; float32 under "ieee" (the default) and float64 run
     ``tiled``.

Launch sequence (`dgrad_plans`):
  * analytic, pixels: [conv_dgrad_analytic] or [conv_dgrad_pixels] (they skip absent taps themselves).
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
from .._args import INT32_MAX
from ..geometry import ConvProblem
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
VARIANTS = ("analytic", "pixels", "tiled", "tensorop")
# The pixels variant's thread tiles: name -> (CT channels, PT pixels), instantiated per dtype and index type.
PIXEL_TILES: dict[str, tuple[int, int]] = {"1x8": (1, 8), "4x4": (4, 4), "8x4": (8, 4)}
FEW_CHANNELS = 16            # C/G below this: gemm_n tiles would be mostly padding (rule 2)


def tiles_for(dtype) -> tuple[str, ...]:
    """Tile names instantiated for a dtype (float64 only 64x64: an 8x8 double tile would not fit 255 registers)."""
    return simt16_tiles_for(TILES, dtype)


@dataclass(frozen=True)
class DgradConfig:
    """A dgrad kernel choice: variant, tile (tiled only) and C++ index type."""

    variant: str                 # "analytic" | "pixels" | "tiled" | "tensorop"
    tile: str | None = None      # a TILES key for "tiled" and "tensorop", a PIXEL_TILES key for "pixels"
    index: str = "int"           # "int" | "long long"
    passes: int = 1              # tensor-core products per product ("tensorop": 1 float16 / TF32, 3 3xTF32)


def analytic_expression(dtype, index: str) -> str:
    return f"conv_dgrad_analytic<{ctype(dtype)}, {index}>"


def pixel_tile(group_c: int) -> str:
    """The pixels variant's tile for C/G channels per group: the first of PIXEL_TILES whose CT holds them, else
    the last (several channel tiles per group); PT makes CT x PT >= 8 accumulators."""
    return next((name for name, (ct, _) in PIXEL_TILES.items() if group_c <= ct), list(PIXEL_TILES)[-1])


def pixels_expression(dtype, index: str, tile: str) -> str:
    ct, pt = PIXEL_TILES[tile]
    return f"conv_dgrad_pixels<{ctype(dtype)}, {index}, {ct}, {pt}>"


def pixel_threads(p: ConvProblem, tile: str) -> int:
    """Threads of conv_dgrad_pixels: N*D*H x channel tiles x stride_w phases x pixel blocks per phase."""
    ct, pt = PIXEL_TILES[tile]
    blocks_per_phase = ceil_div(ceil_div(p.W, p.stride[2]), pt)
    return p.N * p.D * p.H * p.groups * ceil_div(p.group_c, ct) * p.stride[2] * blocks_per_phase


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
    if config.variant == "pixels":
        return pixels_expression(dtype, config.index, config.tile)
    if config.variant == "tensorop":
        return tensorop_expression(dtype, config.index, config.tile, config.passes)
    return tiled_expression(dtype, config.index, config.tile)


def _expressions() -> tuple[str, ...]:
    out = []
    for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES):
        out.append(analytic_expression(dt, ix))
        out.extend(pixels_expression(dt, ix, t) for t in PIXEL_TILES)
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
    if config.variant == "pixels":
        if config.tile not in PIXEL_TILES:
            return False, f"pixel tile {config.tile!r} is not one of {list(PIXEL_TILES)}"
        threads = pixel_threads(p, config.tile)
        if config.index == "int" and threads > INT32_MAX:
            return False, f"{threads} threads of pixel tiles: their index passes int (use 'long long')"
        if ceil_div(threads, BLOCK) > GRID_X_MAX:
            return False, f"{threads} threads of pixel tiles need more than {GRID_X_MAX} blocks of {BLOCK}"
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
        pixels = DgradConfig("pixels", pixel_tile(p.group_c), index)
        return pixels if p.group_k >= 4 and supports(pixels, p, dtype)[0] else DgradConfig("analytic", None, index)
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
        if "tile" not in fields and fields.get("variant", config.variant) != config.variant:
            config = dataclasses.replace(config, tile=None)      # a tile of another variant's kind
        if fields.get("variant") == "pixels" and "tile" not in fields:
            fields = {**fields, "tile": pixel_tile(p.group_c)}
        config = apply_forced(config, fields, tiles_for(dtype)[-1], tile=None)
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
    if config.variant in ("analytic", "pixels"):
        threads = input_elements(p) if config.variant == "analytic" else pixel_threads(p, config.tile)
        return [LaunchPlan(FAMILY.name, config_expression(config, dtype), (ceil_div(threads, BLOCK), 1, 1),
                           (BLOCK, 1, 1), 0, (dy, w, dx) + scalars)]
    n_tiles = ceil_div(p.group_c, TILES[config.tile][1])
    # TF32 rounds and 3xTF32 splits dy: a non-finite dy is computed by formula too (module docstring).
    flagged = [(w, filter_elements(p))] + ([(dy, output_elements(p))] if uses_tf32(config, dtype) else [])
    return flagged_launch(FAMILY.name, flagged, config.index, nonfinite,
                          config_expression(config, dtype), tiled_grid(p, config.tile), BLOCK,
                          (dy, w, dx, nonfinite) + scalars + (np.int32(n_tiles),))
