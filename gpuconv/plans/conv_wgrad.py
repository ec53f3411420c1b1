"""Launch plans for the conv wgrad family (kernels/conv_wgrad.cu): conv*_backprop_filter.

dw[t,r,s,c,k] = sum_{n,z,p,q} x[n, z*stride_d + t*dil_d - pad_d, ..., g*Cg + c] * dy[n,z,p,q,k], g = k // (K/G).

Variants (`WgradConfig.variant`):
  * ``analytic`` - `conv_wgrad_analytic`: one thread per dw element summing over N*Z*P*Q in order (grid
    ceil(dw elements / 256) x 256 threads); always correct.
  * ``tiled`` - `conv_wgrad_tiled`: implicit GEMM per group, gemm_m = K/G, gemm_n = C/G*T*R*S,
    gemm_k = N*Z*P*Q, with split-K: grid x = m-tiles x n-tiles, y = groups, z = splits; each split covers
    k_per_split (a multiple of 8) consecutive gemm_k rows. With one split the kernel writes dw directly in its
    dtype; with more, each split writes its float32 (float64 for float64) partial tile to a workspace
    [splits, T*R*S*C/G, K] (allocated by gpuconv/kernel_backend/conv_wgrad.py with executor.xp) and
    `conv_wgrad_reduce` sums the splits in split order and converts once: deterministic, no atomics.
    Tiles (BM x BN, thread tile TM x TN): 128x128 (8x8), 128x64 (8x4), 64x128 (4x8), 64x64 (4x4).
  * ``tensorop`` - `conv_wgrad_tensorop<Element, Out, Index, BM, BN, Passes>`: the tiled kernel with each stage
    multiplied on tensor cores, same tiles, grid, splits and reduction (8 warps of (BM/2) x (BN/4)): float16 (WMMA
    16x16x16, k-tiles of 16 rows, Passes 1; a split's last k-tile may be half empty, k_per_split being a multiple
    of 8) and float32 as TF32 (Passes 1) or 3xTF32 (3).

Chooser rules (`choose_wgrad_config`, a pure function of the problem, the dtype and the float32 precision):
  1. index type: ``long long`` when some tensor has >= 2^31 elements, else ``int``.
  2. ``tiled`` unless `supports` says it cannot run (an extent beyond int, more than 65535 groups or splits,
     too many tiles); then ``analytic``. Where that cannot run either (T*R*S*C/G >= 2^31, dw past the grid),
     `config_for` raises ValueError with the reason: no launch indexes past its integer type.
  3. tile: float64 always 64x64. Otherwise BM = 128 if K/G > 64 else 64, BN = 128 if C/G*T*R*S > 64 else 64.
  4. split-K: splits = ceil(TARGET_CTAS / (m-tiles * n-tiles * groups)) (TARGET_CTAS = 2 waves of 132 SMs,
     H100 SXM / H200; a fixed SM count, no device query), capped so that every split keeps at least
     MIN_KTILES_PER_SPLIT k-tiles of 8 rows, at MAX_SPLITS, and so that the workspace stays within
     WORKSPACE_LIMIT bytes; then normalised (k_per_split = ceil(k-tiles / splits) * 8, splits =
     ceil(gemm_k / k_per_split)) so no split is empty.
  5. float16 runs ``tensorop`` with the tile and splits of rules 3 and 4 (Passes 1), and so does float32 under
     precision "tf32" / "3xtf32" (what the kernel backend passes: the caller's gpuconv.float32_precision, "ieee"
     on GPUs below sm_80) with Passes = TENSOR_CORE_PASSES[precision]; float32 under "ieee" (the default) and
     float64 run ``tiled``.

Launch sequence (`wgrad_plans`):
  * analytic: [conv_wgrad_analytic] (it skips absent taps itself).
  * tiled: [conv_nonfinite_flag<Element, Index>(dy, N*Z*P*Q*K, nonfinite), conv_wgrad_tiled(x, dy, dw or
    workspace, nonfinite, problem..., n_tiles, k_per_split)] + [conv_wgrad_reduce] when splits > 1. The tiled
    GEMM loads x cells of padding as zeros and multiplies them by dy; when dy holds inf or NaN the flag makes
    every block compute its split's partial by the analytic kernel's per-element sum over the split's gemm_k
    range, so padding never multiplies dy, with the same partial/reduce structure (plans/conv_common.py).
    `nonfinite` is a zeroed 1-element int32 array the caller allocates (kernel_backend/conv_wgrad.py:
    xp.zeros); `needs_nonfinite_flag(config)` says whether a plan takes it.
  * tensorop: the same; for float32 the flag runs over x too (TF32 rounds and 3xTF32 splits x: inf * 0 parts),
    so a non-finite x or dy is computed by formula.

Tests may force fields with `forced_config(variant=..., tile=..., splits=..., passes=...)` (read by `config_for`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

import numpy as np

from ..dtypes import FLOAT_DTYPES, accumulator_dtype, ctype
from ..geometry import ConvProblem
from ..kernel_source import KernelFamily, LaunchHint
from . import LaunchPlan, ceil_div, index_scalar, index_type
from .conv_common import (GRID_X_MAX, GRID_YZ_MAX, INDEX_TYPES, SIMT16_BLOCK, SIMT16_TENSOROP_PASSES, SIMT16_TILE_K,
                          SM_COUNT, ForcedFields, apply_forced, checked_config, config_reason, filter_elements,
                          flag_expressions, flagged_launch, grid_reason, input_elements, output_elements,
                          problem_scalars, simt16_tensorop_passes, simt16_tensorop_reason, simt16_tiles,
                          simt16_tiles_for, tile_grid, uses_tf32)
from .conv_common import needs_nonfinite_flag  # noqa: F401 (re-exported: the kernel backend asks here)

BLOCK = SIMT16_BLOCK
TILE_K = SIMT16_TILE_K            # BK of the tiled kernel (kernels/conv_common.cuh simt16x16::kTileK)
TARGET_CTAS = 2 * SM_COUNT
MIN_KTILES_PER_SPLIT = 16         # >= 128 gemm_k rows per split: the partial tile store stays a small cost
MAX_SPLITS = 256
WORKSPACE_LIMIT = 256 * 2**20     # bytes of split-K partials
MAX_BLOCKS = 32768                # grid cap of the grid-stride reduce kernel

TILES: dict[str, tuple[int, int, int, int]] = simt16_tiles("128x128", "128x64", "64x128", "64x64")
VARIANTS = ("analytic", "tiled", "tensorop")


def tiles_for(dtype) -> tuple[str, ...]:
    return simt16_tiles_for(TILES, dtype)


@dataclass(frozen=True)
class WgradConfig:
    """A wgrad kernel choice: variant, tile and split-K count (tiled and tensorop), C++ index type, tensor-core
    passes (tensorop)."""

    variant: str                 # "analytic" | "tiled" | "tensorop"
    tile: str | None = None
    splits: int = 1
    index: str = "int"
    passes: int = 1              # tensor-core products per product ("tensorop": 1 float16 / TF32, 3 3xTF32)


def _out_ctype(dtype, splits: int) -> str:
    """The tiled kernel's output element: the dtype itself with one split, else the accumulator dtype."""
    return ctype(dtype if splits == 1 else accumulator_dtype(dtype))


def analytic_expression(dtype, index: str) -> str:
    return f"conv_wgrad_analytic<{ctype(dtype)}, {index}>"


def tiled_expression(dtype, index: str, tile: str, splits: int) -> str:
    bm, bn, tm, tn = TILES[tile]
    return f"conv_wgrad_tiled<{ctype(dtype)}, {_out_ctype(dtype, splits)}, {index}, {bm}, {bn}, {tm}, {tn}>"


def tensorop_expression(dtype, index: str, tile: str, splits: int, passes: int) -> str:
    bm, bn, _, _ = TILES[tile]
    return f"conv_wgrad_tensorop<{ctype(dtype)}, {_out_ctype(dtype, splits)}, {index}, {bm}, {bn}, {passes}>"


def config_expression(config: WgradConfig, dtype) -> str:
    """The name expression a configuration's main kernel launches (besides the flag and the reduction)."""
    if config.variant == "analytic":
        return analytic_expression(dtype, config.index)
    if config.variant == "tensorop":
        return tensorop_expression(dtype, config.index, config.tile, config.splits, config.passes)
    return tiled_expression(dtype, config.index, config.tile, config.splits)


def reduce_expression(dtype, index: str) -> str:
    return f"conv_wgrad_reduce<{ctype(dtype)}, {index}>"


def _expressions() -> tuple[str, ...]:
    out = []
    for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES):
        out.append(analytic_expression(dt, ix))
        out.append(reduce_expression(dt, ix))
        # one split writes dw in its dtype, more write accumulator-dtype partials: two Outs where they differ
        split_kinds = (1,) if accumulator_dtype(dt) == dt else (1, 2)
        for t in tiles_for(dt):
            out.extend(tiled_expression(dt, ix, t, s) for s in split_kinds)
            out.extend(tensorop_expression(dt, ix, t, s, n) for s in split_kinds
                       for n in SIMT16_TENSOROP_PASSES.get(dt, ()))
    return tuple(out) + flag_expressions()


FAMILY = KernelFamily("conv_wgrad", "conv_wgrad.cu", _expressions(),
                      launch_hints={e: LaunchHint(block_threads=BLOCK) for e in _expressions()})


# ---------------------------------------------------------------------------------------------------------
# problem sizes of the tiled kernel
# ---------------------------------------------------------------------------------------------------------
def gemm_k_tiles(p: ConvProblem) -> int:
    return ceil_div(p.N * p.Z * p.P * p.Q, TILE_K)


def tile_count(p: ConvProblem, tile: str) -> tuple[int, int]:
    """(m-tiles, n-tiles) of one group."""
    bm, bn, _, _ = TILES[tile]
    m, n, _ = p.gemm_size("wgrad")
    return ceil_div(m, bm), ceil_div(n, bn)


def k_per_split(p: ConvProblem, splits: int) -> int:
    """gemm_k rows per split: a multiple of TILE_K."""
    return ceil_div(gemm_k_tiles(p), max(1, splits)) * TILE_K


def normalise_splits(p: ConvProblem, splits: int) -> int:
    """The split count actually launched for a requested one: every split non-empty."""
    gemm_k = p.N * p.Z * p.P * p.Q
    if gemm_k == 0:
        return 1
    return ceil_div(gemm_k, k_per_split(p, splits))


def dw_elements(p: ConvProblem) -> int:
    return filter_elements(p)


def workspace_elements(config: WgradConfig, p: ConvProblem) -> int:
    """Elements of the accumulator-dtype workspace the plans need (0: none)."""
    if config.variant == "analytic" or config.splits == 1:
        return 0
    return config.splits * dw_elements(p)


def tiled_grid(p: ConvProblem, tile: str, splits: int) -> tuple[int, int, int]:
    bm, bn, _, _ = TILES[tile]
    m, n, _ = p.gemm_size("wgrad")
    return tile_grid(m, n, bm, bn, p.groups, splits)


# ---------------------------------------------------------------------------------------------------------
# supports / choose
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def supports(config: WgradConfig, p: ConvProblem, dtype=np.float32) -> tuple[bool, str]:
    """Whether `config` can run problem `p` in `dtype`, and if not, why."""
    why = config_reason(config, p, dtype, VARIANTS)
    if why:
        return False, why
    if p.T * p.R * p.S * p.group_c >= 2**31:
        return False, "T*R*S*C/G >= 2^31: the kernels index filter rows (gemm_n) in int"
    if np.dtype(dtype) not in FLOAT_DTYPES:
        return False, f"dtype {np.dtype(dtype)} is not a float dtype"
    if config.variant == "analytic":
        if ceil_div(dw_elements(p), BLOCK) > GRID_X_MAX:
            return False, f"dw needs more than {GRID_X_MAX} blocks of {BLOCK} threads"
        return True, ""
    if config.tile not in tiles_for(dtype):
        return False, f"tile {config.tile!r} is not instantiated for {np.dtype(dtype)} (have {tiles_for(dtype)})"
    why = simt16_tensorop_reason(config, dtype) if config.variant == "tensorop" else ""
    if why:
        return False, why
    if config.splits < 1 or config.splits != normalise_splits(p, config.splits):
        return False, (f"splits={config.splits} is not a normalised split count for gemm_k "
                       f"{p.N * p.Z * p.P * p.Q} (normalise_splits gives {normalise_splits(p, config.splits)})")
    why = grid_reason(tiled_grid(p, config.tile, config.splits), "splits")
    if why:
        return False, why
    if config.splits > 1 and config.index == "int" and workspace_elements(config, p) >= 2**31:
        return False, "the split-K workspace has >= 2^31 elements: use 'long long' indices or fewer splits"
    return True, ""


def choose_tile(p: ConvProblem, dtype) -> str:
    """Tile rule 3 of the module docstring."""
    if np.dtype(dtype) == np.float64:
        return "64x64"
    m, n, _ = p.gemm_size("wgrad")
    return f"{128 if m > 64 else 64}x{128 if n > 64 else 64}"


def choose_splits(p: ConvProblem, dtype, tile: str) -> int:
    """Split-K rule 4 of the module docstring."""
    mt, nt = tile_count(p, tile)
    tiles = mt * nt * p.groups
    want = ceil_div(TARGET_CTAS, tiles)
    by_k = max(1, gemm_k_tiles(p) // MIN_KTILES_PER_SPLIT)
    acc_bytes = accumulator_dtype(dtype).itemsize
    by_ws = max(1, WORKSPACE_LIMIT // max(1, dw_elements(p) * acc_bytes))
    splits = max(1, min(want, by_k, MAX_SPLITS, by_ws, GRID_YZ_MAX))
    return normalise_splits(p, splits)


@functools.lru_cache(maxsize=256)
def choose_wgrad_config(p: ConvProblem, dtype, precision: str = "ieee") -> WgradConfig:
    """The wgrad configuration for problem p, dtype and float32 precision (rules in the module docstring); pure."""
    index = index_type(p.needs_int64())
    tile = choose_tile(p, dtype)
    tiled = WgradConfig("tiled", tile, choose_splits(p, dtype, tile), index)
    if not supports(tiled, p, dtype)[0]:
        return WgradConfig("analytic", None, 1, index)
    passes = simt16_tensorop_passes(dtype, precision)
    return tiled if passes is None else dataclasses.replace(tiled, variant="tensorop", passes=passes)


# ---------------------------------------------------------------------------------------------------------
# test override
# ---------------------------------------------------------------------------------------------------------
_forced = ForcedFields("wgrad", WgradConfig)


def forced_config(**fields):
    """Force WgradConfig fields (variant, tile, splits, index, passes) for the calls inside (tests)."""
    return _forced.force(**fields)


def config_for(p: ConvProblem, dtype, precision: str = "ieee") -> WgradConfig:
    """choose_wgrad_config with any forced_config fields applied (a forced split count is normalised);
    ValueError if the result cannot run."""
    config = choose_wgrad_config(p, dtype, precision)
    fields = _forced.get()
    if fields:
        config = apply_forced(config, fields, choose_tile(p, dtype), tile=None, splits=1)
        if config.variant != "analytic":
            config = dataclasses.replace(config, splits=normalise_splits(p, config.splits))
    return checked_config(FAMILY.name, config, supports(config, p, dtype), bool(fields))


# ---------------------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------------------
def wgrad_plans(config: WgradConfig, p: ConvProblem, x, dy, dw, workspace=None, nonfinite=None) -> list[LaunchPlan]:
    """The launches computing dw (every element written); p must not be empty. `workspace` is a 1-D
    accumulator-dtype array of workspace_elements(config, p) elements when config.splits > 1; `nonfinite` a
    zeroed 1-element int32 array, required when needs_nonfinite_flag(config)."""
    dtype = np.dtype(dw.dtype)
    ix64 = config.index == "long long"
    scalars = problem_scalars(p, ix64)
    if config.variant == "analytic":
        grid = (ceil_div(dw_elements(p), BLOCK), 1, 1)
        return [LaunchPlan(FAMILY.name, analytic_expression(dtype, config.index), grid, (BLOCK, 1, 1), 0,
                           (x, dy, dw) + scalars)]
    _, nt = tile_count(p, config.tile)
    kps = index_scalar(ix64)(k_per_split(p, config.splits))
    out = dw if config.splits == 1 else workspace
    if out is None:
        raise ValueError("split-K wgrad needs a workspace of workspace_elements(config, p) elements")
    # TF32 rounds and 3xTF32 splits x: a non-finite x is computed by formula too (module docstring).
    flagged = [(dy, output_elements(p))] + ([(x, input_elements(p))] if uses_tf32(config, dtype) else [])
    plans = flagged_launch(FAMILY.name, flagged, config.index, nonfinite, config_expression(config, dtype),
                           tiled_grid(p, config.tile, config.splits), BLOCK,
                           (x, dy, out, nonfinite) + scalars + (np.int32(nt), kps))
    if config.splits > 1:
        size = dw_elements(p)
        grid = (max(1, min(ceil_div(size, BLOCK), MAX_BLOCKS)), 1, 1)
        plans.append(LaunchPlan(FAMILY.name, reduce_expression(dtype, config.index), grid, (BLOCK, 1, 1), 0,
                                (workspace, dw, index_scalar(ix64)(size), np.int32(config.splits))))
    return plans
