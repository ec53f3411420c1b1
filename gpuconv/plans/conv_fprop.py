"""Launch plans for the conv_fprop family (kernels/conv_fprop.cu): forward convolution, analytic and tiled.

Implicit GEMM of one group g (ConvProblem.gemm_size("fprop")):
    gemm_m = N*Z*P*Q (output pixels)   gemm_n = K/G (output channels)   gemm_k = T*R*S*C/G (taps x channels)

Variants
--------
analytic   `conv_fprop_analytic<Element, Index>`: one thread per output element, 256 threads per block,
           grid (ceil(Q*K / 256), rows folded over y and z) with rows = N*Z*P output rows. Runs every problem
           the tiled variant runs, and more.
tiled      `conv_fprop_tiled<Element, Index, BM, BN, BK, TM, TN, V>`: block tile BM x BN of (gemm_m, gemm_n),
           k-tile BK, a TM x TN register tile per thread ((BM/TM)*(BN/TN) = 256 threads), two shared-memory
           stages, V-wide loads of x and w along the channels. Grid (tiles_m * tiles_n, G, 1).

tensorop   `conv_fprop_tensorop<Element, Index, BM, BN, BK, WM, WN, V, Passes>`: the tiled GEMM on tensor cores
           (WMMA, float accumulators), block tile 128x128, 8 warps of 64x32 warp tiles, V = 4. float16: WMMA
           16x16x16, BK = 32, Passes = 1. float32 (only when the caller allows TF32, gpuconv/precision.py):
           WMMA 16x16x8 on TF32 operands, BK = 16, Passes = 1 ("tf32") or 3 ("3xtf32"). Grid as tiled.

Tiles (BM x BN x BK, thread tile TM x TN):
    128x128x8 / 8x8    float32, float16 (int and long long index)
    128x64x8  / 8x4    float32, float16 (int index)
    64x64x8   / 4x4    float32, float16 (int index); float64 (int and long long index)

Chooser rules (`choose_fprop_config(p, dtype)`, a pure function of the problem and dtype)
----------------------------------------------------------------------------------------
1. Index type: `long long` when some tensor has >= 2^31 elements (p.needs_int64()), else `int`.
2. Variant: analytic when gemm_n = K/G < 8 (depthwise-like: the narrowest tile, 64 columns, would waste
   more than 7/8 of its multiply-adds) or when the tiled variant cannot run (grid limits); else tiled.
3. Tile (tiled variant): float64 -> 64x64 (8-byte accumulators: a 4x4 thread tile keeps 128 registers or
   fewer). float32 / float16 with a 64-bit index -> 128x128 (only huge problems need it). Otherwise the first
   of 128x128 (only when gemm_n > 64), 128x64, 64x64 whose grid fills one wave of a 132-SM H100/H200
   (WAVE_SMS x BLOCKS_PER_SM[tile] blocks: 1 per SM for 128x128, whose 8x8 thread tile needs > 128
   registers, 2 for the others) -- a large tile's operand reuse is worth nothing while SMs idle; when none
   does, 64x64.
4. Vector width V: 4 for float32 / float16 (128-bit / 64-bit loads), 2 for float64 (128-bit) when
   C/G % V == 0 and K/G % V == 0 (so every vector lies inside one filter tap and one group) and x, w, y are
   aligned to V elements; else 1 (any channel count, e.g. C = 3).
5. float16 with V = 4 (rule 4) runs tensorop instead of tiled (tensor cores; float accumulation either way).
   With V = 1 tensorop would hold 16 activation rows per thread (240 registers), so those run tiled.
6. float32 with V = 4 runs tensorop with Passes = TENSOR_CORE_PASSES[precision] when `precision` (the float32
   precision the kernel backend passes: the caller's mode, "ieee" on GPUs below sm_80) is "tf32" or "3xtf32";
   under "ieee" (the default) float32 never runs tensorop.

Launch sequence (`plan_fprop`)
------------------------------
analytic             [conv_fprop_analytic]  (skips padding taps itself)
tiled / tensorop     [conv_nonfinite_flag<Element, Index>(w, T*R*S*C/G*K, nonfinite),
                      conv_fprop_tiled / conv_fprop_tensorop(x, w, y, nonfinite, problem...)]
float32 tensorop     [conv_nonfinite_flag(w, ...), conv_nonfinite_flag(x, N*D*H*W*C, nonfinite), conv_fprop_tensorop]
The tiled GEMMs multiply padding as zeros; when w holds inf or NaN the flag makes every block compute its
tile by the analytic formula instead, so padding never multiplies w (plans/conv_common.py). TF32 flags x too:
splitting an infinite activation for 3xTF32 would multiply inf by a zero part (NaN), and rounding would change
what inf meets, so non-finite inputs are computed exactly. `nonfinite` is a zeroed 1-element int32 array the
caller allocates (kernel_backend/conv_fprop.py: xp.zeros).

`supports(config, p, dtype)` returns None or the reason a configuration cannot run a problem.
`select_config(p, dtype, x, w, y, precision)` is the chooser plus any active override (what plan_fprop runs when
given no config); `needs_nonfinite_flag(config)` says whether its plan takes the flag.
`plan_fprop(p, dtype, x, w, y, config=None, nonfinite=None, precision="ieee")` builds the launches;
`override_config(...)` forces fields of the chosen configuration for the calls inside it (tests use it to run the
tiled variant on tiny problems).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..dtypes import FLOAT_DTYPES, ctype
from ..geometry import ConvProblem
from ..kernel_source import KernelFamily, LaunchHint
from ..precision import TENSOR_CORE_PASSES
from . import LaunchPlan, ceil_div, data_ptr, index_type
from .conv_common import (GRID_YZ_MAX, INDEX_TYPES, INT32_MAX, SM_COUNT, ForcedFields, config_reason,
                          filter_elements, flag_expressions, flagged_launch, input_elements, problem_scalars,
                          tile_grid, uses_tf32)
from .conv_common import needs_nonfinite_flag  # noqa: F401 (re-exported: the kernel backend asks here)

ANALYTIC_BLOCK = 256
WAVE_SMS = SM_COUNT          # SMs of an H100 SXM / H200: the machine a tile's grid should fill
# Resident blocks per SM of each tile (registers limit them; compile gate, sm_80 and sm_90).
BLOCKS_PER_SM = {"128x128": 1, "128x64": 2, "64x64": 2}
MIN_TILED_GEMM_N = 8
MAX_GRID_Y = GRID_YZ_MAX     # groups run along gridDim.y


@dataclass(frozen=True)
class TileShape:
    """Block tile BM x BN x BK and per-thread register tile TM x TN of the tiled kernel."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def name(self) -> str:
        return f"{self.bm}x{self.bn}"

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


TILES: dict[str, TileShape] = {
    "128x128": TileShape(128, 128, 8, 8, 8),
    "128x64": TileShape(128, 64, 8, 8, 4),
    "64x64": TileShape(64, 64, 8, 4, 4),
}

F16, F32, F64 = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Tiles instantiated per (dtype, index type): every name expression a plan can produce comes from this table.
TILED_INSTANCES: dict[tuple[np.dtype, str], tuple[str, ...]] = {
    (F32, "int"): ("128x128", "128x64", "64x64"),
    (F16, "int"): ("128x128", "128x64", "64x64"),
    (F64, "int"): ("64x64",),
    (F32, "long long"): ("128x128",),
    (F16, "long long"): ("128x128",),
    (F64, "long long"): ("64x64",),
}

# Tensor-op tiles per dtype: (BM, BN, BK, WM, WN) -- block tile and warp tile; vector width 4 only. BK keeps
# two stages of A and B plus the epilogue tile under 48 KiB of static shared memory (kernels/conv_fprop.cu).
TENSOROP_TILES: dict[np.dtype, dict[str, tuple[int, int, int, int, int]]] = {
    F16: {"128x128": (128, 128, 32, 64, 32)},
    F32: {"128x128": (128, 128, 16, 64, 32)},
}
TENSOROP_INSTANCES: dict[tuple[np.dtype, str], tuple[str, ...]] = {
    (F16, "int"): ("128x128",), (F16, "long long"): ("128x128",),
    (F32, "int"): ("128x128",), (F32, "long long"): ("128x128",),
}
# Tensor-core passes per product instantiated per dtype (float32: TF32 and 3xTF32).
TENSOROP_PASSES: dict[np.dtype, tuple[int, ...]] = {F16: (1,), F32: tuple(sorted(set(TENSOR_CORE_PASSES.values())))}
TENSOROP_VECTOR = 4

# Vector width of the fast path per dtype (elements per load along C and K).
VECTOR_WIDTH: dict[np.dtype, int] = {F16: 4, F32: 4, F64: 2}


@dataclass(frozen=True)
class FpropConfig:
    """One way to run fprop: variant, tile (tiled only), vector width V and index type."""

    variant: str                  # "analytic" | "tiled" | "tensorop"
    index: str = "int"            # "int" | "long long"
    tile: Optional[str] = None    # key of TILES (tiled) or TENSOROP_TILES[dtype] (tensorop)
    vector: int = 1               # elements per load along the channels (tiled, tensorop)
    passes: int = 1               # tensor-core products per product (tensorop: 3 = float32 3xTF32)

    def name_expression(self, dtype) -> str:
        dtype = np.dtype(dtype)
        el = ctype(dtype)
        if self.variant == "analytic":
            return f"gpuconv::conv_fprop_analytic<{el}, {self.index}>"
        if self.variant == "tensorop":
            bm, bn, bk, wm, wn = TENSOROP_TILES[dtype][self.tile]
            return (f"gpuconv::conv_fprop_tensorop<{el}, {self.index}, {bm}, {bn}, {bk}, {wm}, {wn}, {self.vector}, "
                    f"{self.passes}>")
        t = TILES[self.tile]
        return (f"gpuconv::conv_fprop_tiled<{el}, {self.index}, {t.bm}, {t.bn}, {t.bk}, {t.tm}, {t.tn}, "
                f"{self.vector}>")


def _all_configs() -> list[tuple[np.dtype, FpropConfig]]:
    out = []
    for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES):
        out.append((dt, FpropConfig("analytic", ix)))
        for tile in TILED_INSTANCES[(dt, ix)]:
            for v in (1, VECTOR_WIDTH[dt]):
                out.append((dt, FpropConfig("tiled", ix, tile, v)))
        for tile in TENSOROP_INSTANCES.get((dt, ix), ()):
            for passes in TENSOROP_PASSES[dt]:
                out.append((dt, FpropConfig("tensorop", ix, tile, TENSOROP_VECTOR, passes)))
    return out


def tensorop_threads(dtype, tile: str) -> int:
    bm, bn, _, wm, wn = TENSOROP_TILES[np.dtype(dtype)][tile]
    return (bm // wm) * (bn // wn) * 32


def _hints() -> dict[str, LaunchHint]:
    hints = {e: LaunchHint(block_threads=256, max_dynamic_smem=0) for e in flag_expressions()}
    for dt, cfg in _all_configs():
        threads = (ANALYTIC_BLOCK if cfg.variant == "analytic" else TILES[cfg.tile].threads if cfg.variant == "tiled"
                   else tensorop_threads(dt, cfg.tile))
        hints[cfg.name_expression(dt)] = LaunchHint(block_threads=threads, max_dynamic_smem=0)
    return hints


FAMILY = KernelFamily("conv_fprop", "conv_fprop.cu",
                      tuple(cfg.name_expression(dt) for dt, cfg in _all_configs()) + flag_expressions(), _hints())


# ---------------------------------------------------------------------------------------------------------
# support checks and the chooser (pure functions of the problem)
# ---------------------------------------------------------------------------------------------------------
def tiled_grid(p: ConvProblem, tile: str, variant: str = "tiled", dtype=None) -> tuple[int, int, int]:
    """Grid of the tiled and tensorop kernels: (tiles_m * tiles_n, groups, 1) (tensorop: `dtype` picks the tile)."""
    bm, bn = (TILES[tile].bm, TILES[tile].bn) if variant == "tiled" else TENSOROP_TILES[np.dtype(dtype)][tile][:2]
    gemm_m, gemm_n, _ = p.gemm_size("fprop")
    return tile_grid(gemm_m, gemm_n, bm, bn, p.groups)


def analytic_grid(p: ConvProblem) -> tuple[int, int, int]:
    """Grid of the analytic kernel: x over the Q*K elements of an output row, (y, z) over the N*Z*P rows."""
    rows = p.N * p.Z * p.P
    grid_y = max(1, min(rows, MAX_GRID_Y))
    return (ceil_div(p.Q * p.K, ANALYTIC_BLOCK), grid_y, ceil_div(rows, grid_y))


@functools.lru_cache(maxsize=512)
def supports(config: FpropConfig, p: ConvProblem, dtype) -> Optional[str]:
    """None when `config` can run problem `p` in `dtype`, else the reason it cannot (a sentence)."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not float16, float32 or float64"
    reason = config_reason(config, p, dtype, ("analytic", "tiled", "tensorop"))
    if reason:
        return reason
    gemm_m, gemm_n, gemm_k = p.gemm_size("fprop")
    if config.variant == "analytic":
        if config.tile is not None or config.vector != 1:
            return "the analytic variant takes no tile and vector width 1"
        if p.N * p.Z * p.P > INT32_MAX or p.Q * p.K > INT32_MAX:
            return "the analytic kernel needs N*Z*P and Q*K below 2^31 (it indexes rows and row elements in int)"
        if analytic_grid(p)[2] > MAX_GRID_Y:
            return f"N*Z*P = {p.N * p.Z * p.P} output rows exceed the analytic grid ({MAX_GRID_Y}^2 rows)"
        return None
    table = TILED_INSTANCES if config.variant == "tiled" else TENSOROP_INSTANCES
    available = table.get((dtype, config.index), ())
    if config.tile not in available:
        return (f"{config.variant} tile {config.tile!r} is not instantiated for {dtype} with index "
                f"{config.index!r} (available: {', '.join(available) or 'none'})")
    passes = (1,) if config.variant == "tiled" else TENSOROP_PASSES[dtype]
    if config.passes not in passes:
        return (f"{config.passes} tensor-core passes are not instantiated for {config.variant} in {dtype} "
                f"(available: {', '.join(map(str, passes))})")
    v = config.vector
    widths = (1, VECTOR_WIDTH[dtype]) if config.variant == "tiled" else (TENSOROP_VECTOR,)
    if v not in widths:
        return f"vector width {v} is not {' or '.join(map(str, widths))} for {config.variant} in {dtype}"
    if v > 1 and (p.group_c % v or p.group_k % v):
        return f"vector width {v} needs C/groups ({p.group_c}) and K/groups ({p.group_k}) divisible by {v}"
    if gemm_k > INT32_MAX:
        return f"gemm_k = {gemm_k} does not fit in int"
    if p.groups > MAX_GRID_Y:
        return f"{p.groups} groups exceed gridDim.y's limit {MAX_GRID_Y}"
    if tiled_grid(p, config.tile, config.variant, dtype)[0] > INT32_MAX:
        return f"the tiled grid needs more than {INT32_MAX} blocks"
    return None


@functools.lru_cache(maxsize=256)
def choose_fprop_config(p: ConvProblem, dtype, aligned: bool = True, precision: str = "ieee") -> FpropConfig:
    """The configuration the rules in the module docstring pick for problem `p` in `dtype`.

    `aligned`: whether x, w and y start on a vector boundary (plan_fprop reads it from the arrays).
    `precision`: the float32 precision the kernel may use ("ieee", "tf32", "3xtf32"; rule 6).
    """
    dtype = np.dtype(dtype)
    index = index_type(p.needs_int64())
    analytic = FpropConfig("analytic", index)
    _, gemm_n, _ = p.gemm_size("fprop")
    if gemm_n < MIN_TILED_GEMM_N:
        return analytic
    v = VECTOR_WIDTH[dtype]
    vector = v if aligned and p.group_c % v == 0 and p.group_k % v == 0 else 1
    available = TILED_INSTANCES[(dtype, index)]
    if len(available) == 1:
        tile = available[0]
    else:
        candidates = (["128x128"] if gemm_n > 64 else []) + ["128x64", "64x64"]
        tile = next((t for t in candidates
                     if tiled_grid(p, t)[0] * p.groups >= WAVE_SMS * BLOCKS_PER_SM[t]), "64x64")
    passes = {F16: 1, F32: TENSOR_CORE_PASSES.get(precision)}.get(dtype)
    if passes is not None and vector == TENSOROP_VECTOR:
        tensorop = FpropConfig("tensorop", index, "128x128", vector, passes)
        if supports(tensorop, p, dtype) is None:
            return tensorop
    tiled = FpropConfig("tiled", index, tile, vector)
    return tiled if supports(tiled, p, dtype) is None else analytic


# ---------------------------------------------------------------------------------------------------------
# overrides (tests, benchmarks)
# ---------------------------------------------------------------------------------------------------------
_override = ForcedFields("fprop", FpropConfig)


def override_config(variant: Optional[str] = None, tile: Optional[str] = None,
                    vector: Optional[int] = None, index: Optional[str] = None, passes: Optional[int] = None):
    """Force fields of the fprop configuration for the calls inside (unset fields keep the chooser's value).

    variant="analytic" clears tile and vector; variant="tensorop" defaults to tile 128x128, vector 4 and the
    chooser's passes (1 unless it chose 3xTF32);
    variant="tiled" without a tile takes the chooser's tile when the chooser picked tiled, else 64x64 (or the
    dtype's only tile). A forced configuration that
    cannot run the problem is a ValueError carrying supports()'s reason.
    """
    return _override.force(**{k: v for k, v in dict(variant=variant, tile=tile, vector=vector, index=index,
                                                     passes=passes).items() if v is not None})


def _apply_override(cfg: FpropConfig, p: ConvProblem, dtype) -> FpropConfig:
    fields = _override.get()
    if not fields:
        return cfg
    fields = dict(fields)
    variant = fields.pop("variant", cfg.variant)
    index = fields.get("index", cfg.index)
    if variant == "analytic":
        return FpropConfig("analytic", index)
    if variant == "tensorop":
        return FpropConfig("tensorop", index, fields.get("tile", "128x128"), fields.get("vector", TENSOROP_VECTOR),
                           fields.get("passes", cfg.passes))
    same = cfg.variant == variant
    tile = fields.get("tile", cfg.tile if same else None)
    vector = fields.get("vector", cfg.vector if cfg.variant != "analytic" else 1)
    if tile is None:
        available = TILED_INSTANCES.get((np.dtype(dtype), index), ("64x64",))
        tile = "64x64" if "64x64" in available else available[0]
    return FpropConfig(variant, index, tile, vector)


# ---------------------------------------------------------------------------------------------------------
# launch plans
# ---------------------------------------------------------------------------------------------------------
def arrays_aligned(dtype, *arrays) -> bool:
    """True when every array starts on a boundary of VECTOR_WIDTH[dtype] elements."""
    nbytes = VECTOR_WIDTH[np.dtype(dtype)] * np.dtype(dtype).itemsize
    return all(data_ptr(a) % nbytes == 0 for a in arrays)


def select_config(p: ConvProblem, dtype, x, w, y, precision: str = "ieee") -> FpropConfig:
    """choose_fprop_config for these arrays' alignment and `precision`, then any active override_config."""
    dtype = np.dtype(dtype)
    return _apply_override(choose_fprop_config(p, dtype, arrays_aligned(dtype, x, w, y), precision), p, dtype)


def plan_fprop(p: ConvProblem, dtype, x, w, y, config: Optional[FpropConfig] = None,
               nonfinite=None, precision: str = "ieee") -> list[LaunchPlan]:
    """The launches that compute y = conv(x, w) for a non-empty problem (module docstring: launch sequence).

    config: None -> select_config(..., precision). A configuration that cannot run the problem raises
    ValueError with supports()'s reason; a vector width > 1 with misaligned arrays too. nonfinite: a zeroed
    1-element int32 array, required when needs_nonfinite_flag(config).
    """
    dtype = np.dtype(dtype)
    aligned = arrays_aligned(dtype, x, w, y)
    if config is None:
        config = select_config(p, dtype, x, w, y, precision)
    reason = supports(config, p, dtype)
    if reason is None and config.vector > 1 and not aligned:
        reason = f"vector width {config.vector} needs x, w and y aligned to {config.vector} elements"
    if reason is not None:
        raise ValueError(f"conv_fprop configuration {config} cannot run this problem: {reason}")
    expression = config.name_expression(dtype)
    if expression not in FAMILY.name_expressions:  # guards the tables above against drift
        raise AssertionError(f"{expression} is not in the conv_fprop family's name expressions")
    scalars = problem_scalars(p, config.index == "long long")
    if config.variant == "analytic":
        return [LaunchPlan(FAMILY.name, expression, analytic_grid(p), (ANALYTIC_BLOCK, 1, 1), 0,
                           (x, w, y) + scalars)]
    threads = TILES[config.tile].threads if config.variant == "tiled" else tensorop_threads(dtype, config.tile)
    # TF32 rounds what x meets and 3xTF32 splits x: non-finite x is computed by formula too (module docstring).
    flagged = [(w, filter_elements(p))] + ([(x, input_elements(p))] if uses_tf32(config, dtype) else [])
    return flagged_launch(FAMILY.name, flagged, config.index, nonfinite, expression,
                          tiled_grid(p, config.tile, config.variant, dtype), threads, (x, w, y, nonfinite) + scalars)
