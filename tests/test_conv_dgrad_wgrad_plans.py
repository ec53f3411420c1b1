"""dgrad / wgrad launch plans as pure functions: chooser decisions, supports() reasons, grids and arguments.

No kernel runs here: these tests pin the dispatch rules documented in gpuconv/plans/conv_dgrad.py and
conv_wgrad.py (index width, analytic fallbacks, tile choice, split-K count) and check that every plan names an
instantiation its family declares, with exact NumPy scalars in kernel parameter order.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpuconv.bench.layers import RESNET50_3X3
from gpuconv.dtypes import ctype
from gpuconv.geometry import ConvProblem, conv_problem
from gpuconv.plans import ceil_div
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_wgrad as WG
from gpuconv.plans.conv_common import PROBLEM_PARAM_NAMES, SIMT16_TENSOROP_PASSES

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def problem(x, w, stride=(1, 1, 1), dilation=(1, 1, 1), padding="SAME") -> ConvProblem:
    return conv_problem(x, w, stride, dilation, padding)


def resnet(layer, n=32) -> ConvProblem:
    return problem((1,) + layer.with_batch(n), (1,) + layer.filter_shape, (1, layer.strides, layer.strides),
                   padding=layer.padding)


class FakeArray:
    """Stands in for an array in plan arguments (plans read only .dtype)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


SMALL = problem((1, 1, 6, 6, 16), (1, 3, 3, 16, 8), (1, 2, 2))
HUGE = ConvProblem(N=64, D=1, H=4096, W=4096, C=4, K=4, T=1, R=3, S=3, Z=1, P=4096, Q=4096, stride=(1, 1, 1),
                   dilation=(1, 1, 1), pad_before=(0, 1, 1), pad_after=(0, 1, 1), groups=1)


# ---------------------------------------------------------------------------------------------------------
# dgrad chooser
# ---------------------------------------------------------------------------------------------------------
def test_dgrad_index_type_follows_needs_int64():
    assert DG.choose_dgrad_config(SMALL, F32).index == "int"
    assert HUGE.needs_int64()
    assert DG.choose_dgrad_config(HUGE, F32) == DG.DgradConfig("col2im", None, "long long")  # C/G = 4 < 16


def test_dgrad_few_channels_take_col2im_and_depthwise_analytic():
    depthwise = problem((2, 1, 8, 8, 32), (1, 3, 3, 1, 32))
    assert depthwise.groups == 32
    assert DG.choose_dgrad_config(depthwise, F32).variant == "analytic"        # C/G = 1, K/G = 1
    multiplier4 = problem((2, 1, 8, 8, 8), (1, 3, 3, 1, 32))                   # depthwise, channel multiplier 4
    assert DG.choose_dgrad_config(multiplier4, F32).variant == "analytic"      # groups 8: no single GEMM
    assert "groups == 1" in DG.supports(DG.DgradConfig("col2im"), multiplier4)[1]
    for c in (1, 3, 8, 15):
        for dt in (F16, F32, F64):
            got = DG.choose_dgrad_config(problem((2, 1, 8, 8, c), (1, 3, 3, c, 64)), dt)
            assert got == DG.DgradConfig("col2im", None, "int"), (c, dt)
            cols = "double" if dt == F64 else "float"
            assert DG.config_expression(got, dt) == f"conv_dgrad_col2im<{ctype(dt)}, {cols}, int>"
    assert DG.choose_dgrad_config(problem((2, 1, 8, 8, 3), (1, 3, 3, 3, 3)), F32).variant == "analytic"  # K 3
    assert DG.choose_dgrad_config(problem((2, 1, 8, 8, 64), (1, 3, 3, 64, 2)), F32).variant == "analytic"
    assert DG.choose_dgrad_config(problem((2, 1, 8, 8, 16), (1, 3, 3, 16, 4)), F32).variant == "tiled"


def test_dgrad_col2im_gemm_chunks_and_weights():
    # the ResNet-50 stem at N = 32: cols of 112 x 112 dy pixels x 147 entries, 7.4 MB per image in float32
    p = problem((32, 1, 224, 224, 3), (1, 7, 7, 3, 64), (1, 2, 2))
    assert DG.col2im_row(p) == 7 * 7 * 3
    per_image = 112 * 112 * 147 * 4
    assert DG.col2im_images(p, F32) == DG.COL2IM_SCRATCH_BYTES // per_image == 9
    assert DG.col2im_images(p, F16) == 9 and DG.col2im_images(p, F64) == 4     # float16 runs its GEMM in float32
    g = DG.col2im_gemm_problem(p, 8)   # any chunk size
    assert (g.x_shape, g.w_shape, g.y_shape) == ((8, 1, 112, 112, 64), (1, 1, 1, 64, 147), (8, 1, 112, 112, 147))
    assert DG.col2im_images(problem((1, 1, 8, 8, 3), (1, 3, 3, 3, 8)), F32) == 1       # never more than N
    huge_image = problem((2, 1, 2048, 2048, 4), (1, 3, 3, 4, 8))                       # 604 MB of cols per image
    assert DG.col2im_images(huge_image, F32) == 1
    w = np.arange(2 * 3 * 4 * 3 * 5, dtype=np.float16).reshape(2, 3, 4, 3, 5)          # (T, R, S, C, K)
    wc = DG.col2im_weights(w, np)
    assert wc.shape == (1, 1, 1, 5, 2 * 3 * 4 * 3) and wc.dtype == F32 and wc.flags.c_contiguous
    for t, r, s_, c, k in itertools.product(range(2), range(3), range(4), range(3), range(5)):
        assert wc[0, 0, 0, k, ((t * 3 + r) * 4 + s_) * 3 + c] == w[t, r, s_, c, k]
    # cols past 2^31 entries for one image: analytic
    wide = ConvProblem(N=1, D=1, H=1, W=2**27, C=15, K=8, T=1, R=1, S=2, Z=1, P=1, Q=2**27, stride=(1, 1, 1),
                       dilation=(1, 1, 1), pad_before=(0, 0, 0), pad_after=(0, 0, 1), groups=1)
    ok, why = DG.supports(DG.DgradConfig("col2im", None, "long long"), wide)
    assert not ok and "2^31" in why
    assert DG.choose_dgrad_config(wide, F32).variant == "analytic"


def test_dgrad_col2im_plan_covers_its_chunk():
    p = problem((5, 2, 6, 7, 3), (2, 3, 3, 3, 8), (1, 2, 1))
    config = DG.DgradConfig("col2im", None, "int")
    cols, dx = FakeArray(F32), FakeArray(F16)
    plan = DG.col2im_plan(config, p, 2, cols, dx)
    assert plan.name_expression == "conv_dgrad_col2im<__half, float, int>" in DG.FAMILY.name_expressions
    assert plan.args[:2] == (cols, dx) and plan.block == (256, 1, 1)
    scalars = plan.args[2:]
    assert int(scalars[PROBLEM_PARAM_NAMES.index("N")]) == 2 and all(type(v) is np.int32 for v in scalars)
    assert plan.grid == (ceil_div(2 * 2 * 6 * 7 * 3, 256), 1, 1)
    with pytest.raises(ValueError, match="col2im"):
        DG.dgrad_plans(config, p, dx, dx, dx)


@pytest.mark.parametrize("precision,passes", [("tf32", 1), ("3xtf32", 3)])
def test_dgrad_float32_runs_on_tensor_cores_only_when_tf32_is_allowed(precision, passes):
    for layer in RESNET50_3X3:
        p = resnet(layer)
        tiled = DG.choose_dgrad_config(p, F32)
        assert tiled == DG.choose_dgrad_config(p, F32, "ieee") and tiled.variant == "tiled"
        c = DG.choose_dgrad_config(p, F32, precision)
        assert c == DG.DgradConfig("tensorop", tiled.tile, "int", passes)          # the same tile rule
        assert DG.config_expression(c, F32) == f"conv_dgrad_tensorop<float, int, {DG.TILES[c.tile][0]}, " \
                                               f"{DG.TILES[c.tile][1]}, {passes}>"
        for dt in (F16, F64):                                                  # the mode is float32's only
            assert DG.choose_dgrad_config(p, dt, precision) == DG.choose_dgrad_config(p, dt)
    assert DG.choose_dgrad_config(problem((2, 1, 8, 8, 8), (1, 3, 3, 8, 64)), F32, precision).variant == "col2im"


def test_dgrad_float16_always_runs_on_tensor_cores():
    for layer in RESNET50_3X3:
        p = resnet(layer)
        c = DG.choose_dgrad_config(p, F16)
        assert c == DG.DgradConfig("tensorop", DG.choose_tile(p, F16), "int", 1)
        assert DG.config_expression(c, F16) == f"conv_dgrad_tensorop<__half, int, {DG.TILES[c.tile][0]}, " \
                                               f"{DG.TILES[c.tile][1]}, 1>"
    # where the tiled kernel would not run, neither does the tensor-op one
    assert DG.choose_dgrad_config(problem((2, 1, 8, 8, 8), (1, 3, 3, 8, 64)), F16).variant == "col2im"
    assert DG.choose_dgrad_config(resnet(RESNET50_3X3[0]), F64).variant == "tiled"


def test_dgrad_tensorop_refusals_say_why():
    p = problem((2, 1, 8, 8, 16), (1, 3, 3, 16, 8))
    assert DG.supports(DG.DgradConfig("tensorop", "64x64", "int", 1), p, F32) == (True, "")
    assert DG.supports(DG.DgradConfig("tensorop", "64x64", "int", 1), p, F16) == (True, "")
    ok, why = DG.supports(DG.DgradConfig("tensorop", "64x64", "int", 1), p, F64)
    assert not ok and "float16 or float32 only, not float64" in why
    ok, why = DG.supports(DG.DgradConfig("tensorop", "64x64", "int", 2), p, F32)
    assert not ok and "2 tensor-core passes are not instantiated for float32" in why
    ok, why = DG.supports(DG.DgradConfig("tensorop", "64x64", "int", 3), p, F16)
    assert not ok and "3 tensor-core passes are not instantiated for float16" in why


def test_dgrad_tf32_plans_flag_dy_as_well_as_w():
    p = problem((2, 1, 8, 8, 16), (1, 3, 3, 16, 8), (1, 2, 2))
    dy, w, dx = FakeArray(F32), FakeArray(F32), FakeArray(F32)
    flag = np.zeros(1, np.int32)
    plans = DG.dgrad_plans(DG.DgradConfig("tensorop", "64x64", "int", 3), p, dy, w, dx, flag)
    assert [pl.name_expression for pl in plans] == ["gpuconv::conv_nonfinite_flag<float, int>"] * 2 + [
        "conv_dgrad_tensorop<float, int, 64, 64, 3>"]
    assert plans[0].args[0] is w and plans[1].args[0] is dy and int(plans[1].args[1]) == p.N * p.Z * p.P * p.Q * p.K
    assert plans[2].grid == DG.tiled_grid(p, "64x64")
    assert len(DG.dgrad_plans(DG.DgradConfig("tiled", "64x64", "int"), p, dy, w, dx, flag)) == 2
    # float16 products are exact: its tensor-op plan flags w only, as the SIMT one does
    half = [FakeArray(F16)] * 3
    plans = DG.dgrad_plans(DG.DgradConfig("tensorop", "64x64", "int", 1), p, *half, flag)
    assert [pl.name_expression for pl in plans] == ["gpuconv::conv_nonfinite_flag<__half, int>",
                                                    "conv_dgrad_tensorop<__half, int, 64, 64, 1>"]


def test_dgrad_float64_uses_the_64x64_tile():
    for layer in RESNET50_3X3:
        assert DG.choose_dgrad_config(resnet(layer), F64) == DG.DgradConfig("tiled", "64x64", "int")


@pytest.mark.parametrize("layer", RESNET50_3X3, ids=[layer.name for layer in RESNET50_3X3])
def test_dgrad_resnet_layers_are_tiled_and_fill_the_gpu(layer):
    p = resnet(layer)
    c = DG.choose_dgrad_config(p, F32)
    assert c.variant == "tiled" and c.index == "int"
    assert DG.gemm_n_utilisation(p, c.tile) >= DG.MIN_N_UTILISATION
    usable = [t for t in DG.TILES if DG.gemm_n_utilisation(p, t) >= DG.MIN_N_UTILISATION]
    if any(DG.tiled_ctas(p, t) >= DG.TARGET_CTAS for t in usable):
        assert DG.tiled_ctas(p, c.tile) >= DG.TARGET_CTAS
        # ... and no larger usable tile would also have filled the GPU
        bigger = usable[:usable.index(c.tile)]
        assert all(DG.tiled_ctas(p, t) < DG.TARGET_CTAS for t in bigger)
    else:
        assert DG.tiled_ctas(p, c.tile) == max(DG.tiled_ctas(p, t) for t in usable)


def test_dgrad_expected_tiles_for_resnet():
    by_name = {layer.name: DG.choose_dgrad_config(resnet(layer), F32).tile for layer in RESNET50_3X3}
    assert by_name["res2_3x3_64"] == "128x64"          # C = 64: a 128-wide tile would be half padding
    assert by_name["res3_3x3_128s2"] == "128x128"      # 4 phases x 196 m-tiles: plenty of CTAs
    assert by_name["res5_3x3_512"] == "64x64"          # 1568 rows: the smallest tile, most CTAs


def test_dgrad_stride_phase_grid():
    p = problem((2, 5, 9, 10, 20), (3, 3, 3, 20, 12), (2, 3, 1))
    gx, gy, gz = DG.tiled_grid(p, "64x64")
    assert gz == 2 * 3 * 1 == DG.phase_count(p)
    assert DG.phase_rows(p) == 2 * 3 * 3 * 10                # N * ceil(D/2) * ceil(H/3) * ceil(W/1)
    assert gx == ceil_div(DG.phase_rows(p), 64) * ceil_div(20, 64) and gy == 1


def test_dgrad_supports_reasons():
    ok, why = DG.supports(DG.DgradConfig("tiled", "64x64", "int"), HUGE)
    assert not ok and "2^31" in why
    assert DG.supports(DG.DgradConfig("tiled", "64x64", "long long"), HUGE)[0]
    many_groups = problem((1, 1, 2, 2, 70000), (1, 1, 1, 1, 70000))
    ok, why = DG.supports(DG.DgradConfig("tiled", "64x64", "int"), many_groups)
    assert not ok and "groups" in why
    assert DG.supports(DG.DgradConfig("analytic", None, "int"), many_groups)[0]
    assert DG.choose_dgrad_config(many_groups, F32).variant == "analytic"
    ok, why = DG.supports(DG.DgradConfig("tiled", "128x128", "int"), SMALL, F64)
    assert not ok and "not instantiated" in why
    assert not DG.supports(DG.DgradConfig("fast", None, "int"), SMALL)[0]


def test_dgrad_forced_config():
    assert DG.config_for(SMALL, F32) == DG.choose_dgrad_config(SMALL, F32)
    with DG.forced_config(variant="analytic"):
        assert DG.config_for(SMALL, F32) == DG.DgradConfig("analytic", None, "int")
    with DG.forced_config(variant="tiled", tile="128x128", index="long long"):
        assert DG.config_for(SMALL, F32) == DG.DgradConfig("tiled", "128x128", "long long")
    with DG.forced_config(variant="tiled", tile="128x128"), pytest.raises(ValueError, match="not instantiated"):
        DG.config_for(SMALL, F64)
    with pytest.raises(TypeError, match="splits"):
        with DG.forced_config(splits=2):
            pass
    assert DG.config_for(SMALL, F32) == DG.choose_dgrad_config(SMALL, F32)   # override gone


# ---------------------------------------------------------------------------------------------------------
# wgrad chooser
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", RESNET50_3X3, ids=[layer.name for layer in RESNET50_3X3])
def test_wgrad_resnet_split_k_fills_the_gpu(layer):
    p = resnet(layer)
    c = WG.choose_wgrad_config(p, F32)
    assert c.variant == "tiled" and c.index == "int"
    gx, gy, gz = WG.tiled_grid(p, c.tile, c.splits)
    assert gz == c.splits and gx * gy * gz >= WG.TARGET_CTAS
    # normalised: every split non-empty, each at least MIN_KTILES_PER_SPLIT k-tiles
    gemm_k = p.gemm_size("wgrad")[2]
    kps = WG.k_per_split(p, c.splits)
    assert kps % WG.TILE_K == 0 and (c.splits - 1) * kps < gemm_k <= c.splits * kps
    assert c.splits == 1 or kps >= WG.MIN_KTILES_PER_SPLIT * WG.TILE_K
    assert WG.workspace_elements(c, p) * 4 <= WG.WORKSPACE_LIMIT


def test_wgrad_tile_rule():
    assert WG.choose_tile(resnet(RESNET50_3X3[0]), F32) == "64x128"           # K = 64, C*R*S = 576
    assert WG.choose_tile(resnet(RESNET50_3X3[-1]), F32) == "128x128"
    assert WG.choose_tile(problem((1, 1, 4, 4, 3), (1, 1, 1, 3, 200)), F16) == "128x64"   # gemm_n = 3
    assert WG.choose_tile(resnet(RESNET50_3X3[-1]), F64) == "64x64"


def test_wgrad_small_gemm_k_is_not_split():
    c = WG.choose_wgrad_config(SMALL, F32)           # gemm_k = 9 rows; K = 8, gemm_n = 16*9 = 144
    assert c == WG.WgradConfig("tiled", "64x128", 1, "int")
    assert WG.workspace_elements(c, SMALL) == 0


def test_wgrad_splits_capped_by_workspace():
    # dw of 3x3x1024x1024 float32 = 37.7 MB: at most 7 splits fit WORKSPACE_LIMIT (256 MiB).
    p = problem((64, 1, 8, 8, 1024), (1, 3, 3, 1024, 1024))
    c = WG.choose_wgrad_config(p, F32)
    assert WG.workspace_elements(c, p) * 4 <= WG.WORKSPACE_LIMIT


def test_wgrad_normalise_splits():
    p = problem((1, 1, 10, 10, 8), (1, 3, 3, 8, 8))          # gemm_k = 100 rows = 13 k-tiles
    assert WG.normalise_splits(p, 1) == 1
    assert WG.normalise_splits(p, 13) == 13
    assert WG.normalise_splits(p, 12) == 7                     # 2 k-tiles per split -> 7 splits
    assert WG.normalise_splits(p, 500) == 13
    with WG.forced_config(variant="tiled", tile="64x64", splits=12):
        assert WG.config_for(p, F32).splits == 7
    ok, why = WG.supports(WG.WgradConfig("tiled", "64x64", 12, "int"), p)
    assert not ok and "normalised" in why


@pytest.mark.parametrize("precision,passes", [("tf32", 1), ("3xtf32", 3)])
def test_wgrad_float32_runs_on_tensor_cores_only_when_tf32_is_allowed(precision, passes):
    for layer in RESNET50_3X3:
        p = resnet(layer)
        tiled = WG.choose_wgrad_config(p, F32)
        assert tiled == WG.choose_wgrad_config(p, F32, "ieee") and tiled.variant == "tiled"
        c = WG.choose_wgrad_config(p, F32, precision)
        # the same tile and split-K rules, so the same grid and workspace
        assert c == WG.WgradConfig("tensorop", tiled.tile, tiled.splits, "int", passes)
        assert WG.workspace_elements(c, p) == WG.workspace_elements(tiled, p)
        bm, bn, _, _ = WG.TILES[c.tile]
        assert WG.config_expression(c, F32) == f"conv_wgrad_tensorop<float, float, int, {bm}, {bn}, {passes}>"
        for dt in (F16, F64):                                                  # the mode is float32's only
            assert WG.choose_wgrad_config(p, dt, precision) == WG.choose_wgrad_config(p, dt)
    assert WG.choose_wgrad_config(HUGE, F32, precision) == WG.WgradConfig("tensorop", "64x64", 256, "long long",
                                                                          passes)


def test_wgrad_float16_always_runs_on_tensor_cores():
    for layer in RESNET50_3X3:
        p = resnet(layer)
        c = WG.choose_wgrad_config(p, F16)
        assert c == WG.WgradConfig("tensorop", WG.choose_tile(p, F16), WG.choose_splits(p, F16, c.tile), "int", 1)
        bm, bn, _, _ = WG.TILES[c.tile]
        out = "__half" if c.splits == 1 else "float"                 # dw itself, or float partials
        assert WG.config_expression(c, F16) == f"conv_wgrad_tensorop<__half, {out}, int, {bm}, {bn}, 1>"
    assert WG.choose_wgrad_config(resnet(RESNET50_3X3[0]), F64).variant == "tiled"


def test_wgrad_tensorop_refusals_say_why():
    assert WG.supports(WG.WgradConfig("tensorop", "64x128", 1, "int", 3), SMALL, F32) == (True, "")
    assert WG.supports(WG.WgradConfig("tensorop", "64x128", 1, "int", 1), SMALL, F16) == (True, "")
    ok, why = WG.supports(WG.WgradConfig("tensorop", "64x128", 1, "int", 2), SMALL, F32)
    assert not ok and "2 tensor-core passes are not instantiated for float32" in why
    ok, why = WG.supports(WG.WgradConfig("tensorop", "64x128", 1, "int", 3), SMALL, F16)
    assert not ok and "3 tensor-core passes are not instantiated for float16" in why
    ok, why = WG.supports(WG.WgradConfig("tensorop", "64x64", 1, "int", 1), SMALL, F64)
    assert not ok and "float16 or float32 only, not float64" in why


def test_wgrad_tf32_plans_flag_x_as_well_as_dy():
    p = problem((4, 1, 16, 16, 8), (1, 3, 3, 8, 8))
    c = WG.WgradConfig("tensorop", "64x64", WG.normalise_splits(p, 4), "int", 1)
    assert c.splits > 1
    x, dy, dw, ws = FakeArray(F32), FakeArray(F32), FakeArray(F32), FakeArray(F32)
    flag = np.zeros(1, np.int32)
    plans = WG.wgrad_plans(c, p, x, dy, dw, ws, flag)
    assert [pl.name_expression for pl in plans] == ["gpuconv::conv_nonfinite_flag<float, int>"] * 2 + [
        "conv_wgrad_tensorop<float, float, int, 64, 64, 1>", "conv_wgrad_reduce<float, int>"]
    assert plans[0].args[0] is dy and plans[1].args[0] is x and int(plans[1].args[1]) == p.N * p.D * p.H * p.W * p.C
    assert plans[2].args[2] is ws and plans[2].grid == WG.tiled_grid(p, "64x64", c.splits)
    assert int(plans[2].args[-1]) == WG.k_per_split(p, c.splits)
    assert len(WG.wgrad_plans(WG.WgradConfig("tiled", "64x64", c.splits, "int"), p, x, dy, dw, ws, flag)) == 3
    with WG.forced_config(variant="tensorop", passes=3):
        assert WG.config_for(p, F32) == WG.WgradConfig("tensorop", WG.choose_tile(p, F32),
                                                       WG.choose_wgrad_config(p, F32).splits, "int", 3)


def test_wgrad_forced_analytic_and_int64():
    with WG.forced_config(variant="analytic"):
        assert WG.config_for(SMALL, F32) == WG.WgradConfig("analytic", None, 1, "int")
    assert WG.choose_wgrad_config(HUGE, F32).index == "long long"
    ok, why = WG.supports(WG.WgradConfig("tiled", "64x64", 1, "int"), HUGE)
    assert not ok and "2^31" in why


# ---------------------------------------------------------------------------------------------------------
# plans: expressions declared, argument lists, multi-launch
# ---------------------------------------------------------------------------------------------------------
PROBLEMS = [SMALL, problem((2, 3, 5, 4, 6), (2, 2, 3, 3, 4), (2, 1, 2), (1, 2, 1), "VALID"),
            problem((1, 1, 9, 9, 8), (1, 1, 1, 4, 6), (1, 3, 3))]


@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_every_dgrad_plan_names_a_declared_expression(dtype):
    for p, index in itertools.product(PROBLEMS, ("int", "long long")):
        configs = [DG.DgradConfig("analytic", None, index)]
        configs += [DG.DgradConfig("tiled", t, index) for t in DG.tiles_for(dtype)]
        configs += [DG.DgradConfig("tensorop", t, index, n) for t in DG.tiles_for(dtype)
                    for n in SIMT16_TENSOROP_PASSES.get(dtype, ())]
        for c in configs:
            arrs = [FakeArray(dtype)] * 3
            flag = FakeArray(np.int32)
            plans = DG.dgrad_plans(c, p, *arrs, flag)
            # the non-finite flag over w (float32 tensorop: and dy), then the GEMM
            flags = 0 if c.variant == "analytic" else 2 if c.variant == "tensorop" and dtype == F32 else 1
            assert len(plans) == flags + 1
            if flags:
                assert all(pl.name_expression in DG.FAMILY.name_expressions for pl in plans[:flags])
                assert plans[0].args[0] is arrs[1] and all(pl.args[2] is flag for pl in plans[:flags])
                assert plans[-1].args[3] is flag
            plan = plans[-1]
            assert plan.name_expression in DG.FAMILY.name_expressions
            assert plan.block == (256, 1, 1) and plan.shared_mem == 0
            first = 3 if c.variant == "analytic" else 4
            scalars = plan.args[first:first + len(PROBLEM_PARAM_NAMES)]
            want = np.int64 if index == "long long" else np.int32
            assert all(type(s) is want for s in scalars)
            assert int(scalars[PROBLEM_PARAM_NAMES.index("groups")]) == p.groups
            if c.variant != "analytic":
                assert plan.grid == DG.tiled_grid(p, c.tile)
                assert len(plan.args) == 4 + len(PROBLEM_PARAM_NAMES) + 1
            else:
                assert plan.grid[0] * 256 >= p.N * p.D * p.H * p.W * p.C


@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_every_wgrad_plan_names_a_declared_expression(dtype):
    acc = np.dtype(np.float64) if dtype == F64 else np.dtype(np.float32)
    for p, index in itertools.product(PROBLEMS, ("int", "long long")):
        configs = [WG.WgradConfig("analytic", None, 1, index)]
        for t in WG.tiles_for(dtype):
            configs += [WG.WgradConfig("tiled", t, s, index) for s in {1, WG.normalise_splits(p, 3)}]
            configs += [WG.WgradConfig("tensorop", t, s, index, n) for s in {1, WG.normalise_splits(p, 3)}
                        for n in SIMT16_TENSOROP_PASSES.get(dtype, ())]
        for c in configs:
            ws = FakeArray(acc) if WG.workspace_elements(c, p) else None
            dy, flag = FakeArray(dtype), FakeArray(np.int32)
            plans = WG.wgrad_plans(c, p, FakeArray(dtype), dy, FakeArray(dtype), ws, flag)
            assert all(pl.name_expression in WG.FAMILY.name_expressions for pl in plans)
            if c.variant != "analytic":                  # the non-finite flag over dy first (float32 tensorop: x too)
                flags = 2 if c.variant == "tensorop" and dtype == F32 else 1
                flag_plans, plans = plans[:flags], plans[flags:]
                assert all(f.name_expression.startswith("gpuconv::conv_nonfinite_flag<") for f in flag_plans)
                assert flag_plans[0].args[0] is dy and plans[0].args[3] is flag
                assert all(f.args[2] is flag for f in flag_plans)
            if c.variant != "analytic" and c.splits > 1:
                tiled, red = plans
                assert tiled.args[2] is ws and tiled.grid[2] == c.splits
                assert red.name_expression.startswith("conv_wgrad_reduce<") and red.args[0] is ws
                assert int(red.args[2]) == WG.dw_elements(p) and int(red.args[3]) == c.splits
                assert f", {'double' if dtype == F64 else 'float'}, " in tiled.name_expression   # partials
            else:
                assert len(plans) == 1


def test_wgrad_split_plan_requires_workspace():
    p = problem((4, 1, 16, 16, 8), (1, 3, 3, 8, 8))
    c = WG.WgradConfig("tiled", "64x64", WG.normalise_splits(p, 4), "int")
    assert c.splits > 1
    with pytest.raises(ValueError, match="workspace"):
        WG.wgrad_plans(c, p, FakeArray(F32), FakeArray(F32), FakeArray(F32), None)


def test_families_declared():
    assert DG.FAMILY.name == "conv_dgrad" and DG.FAMILY.file == "conv_dgrad.cu"
    assert WG.FAMILY.name == "conv_wgrad" and WG.FAMILY.file == "conv_wgrad.cu"
    assert len(set(DG.FAMILY.name_expressions)) == len(DG.FAMILY.name_expressions)
    assert len(set(WG.FAMILY.name_expressions)) == len(WG.FAMILY.name_expressions)
    # float16 split-K writes float partials: its own instantiation; float32's is shared by both paths
    assert "conv_wgrad_tiled<__half, float, int, 64, 64, 4, 4>" in WG.FAMILY.name_expressions
    assert "conv_wgrad_tiled<__half, __half, int, 64, 64, 4, 4>" in WG.FAMILY.name_expressions
    assert "conv_wgrad_tiled<float, float, int, 128, 128, 8, 8>" in WG.FAMILY.name_expressions
