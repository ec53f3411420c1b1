"""conv_fprop launch plans as pure functions: chooser decisions, supports() reasons, overrides, plan arguments.

No kernel runs here. The family's name expressions, the tile table and the kernel's parameter list are also
checked against each other and against kernels/conv_common.cuh (drift between them would only show at launch).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv.geometry import ConvProblem, conv_problem
from gpuconv.kernel_source import kernel_dir
from gpuconv.plans import conv_fprop as F
from gpuconv.plans.conv_common import PROBLEM_PARAM_NAMES, problem_scalars, problem_values

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def prob2d(N, H, W, C, K, R, S, stride=1, dilation=1, padding="SAME", groups=1) -> ConvProblem:
    return conv_problem((N, 1, H, W, C), (1, R, S, C // groups, K), (1, stride, stride), (1, dilation, dilation),
                        padding if isinstance(padding, str) else ((0, 0),) + tuple(padding))


def huge_problem(**kw) -> ConvProblem:
    """A problem whose output has >= 2^31 elements (never allocated: plans only read shapes)."""
    base = dict(N=64, D=1, H=1024, W=1024, C=64, K=64, T=1, R=1, S=1, Z=1, P=1024, Q=1024, stride=(1, 1, 1),
                dilation=(1, 1, 1), pad_before=(0, 0, 0), pad_after=(0, 0, 0), groups=1)
    base.update(kw)
    return ConvProblem(**base)


def arrays(p: ConvProblem, dtype):
    return (np.zeros(p.x_shape, dtype), np.zeros(p.w_shape, dtype), np.zeros(p.y_shape, dtype))


FLAG = np.zeros(1, np.int32)   # the tiled kernels' non-finite flag (plans/conv_common.py)


def conv_plan(p, dtype, *arrs):
    """The conv launch of plan_fprop (the last one; tiled plans start with the non-finite flag launch)."""
    plans = F.plan_fprop(p, dtype, *arrs, nonfinite=FLAG)
    assert len(plans) == (1 if "analytic" in plans[-1].name_expression else 2)
    return plans[-1]


# ---------------------------------------------------------------------------------------------------------
# the chooser
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_chooser_always_names_an_instantiated_supported_config(dtype):
    problems = [prob2d(1, 5, 5, 3, 5, 3, 3), prob2d(32, 56, 56, 64, 64, 3, 3), prob2d(2, 9, 9, 8, 1, 3, 3),
                prob2d(4, 17, 17, 12, 24, 3, 3, groups=3), prob2d(1, 1, 1, 1, 1, 1, 1), huge_problem(),
                prob2d(8, 28, 28, 128, 128, 3, 3, stride=2), prob2d(3, 7, 9, 5, 9, 2, 3, dilation=2, padding="VALID")]
    for p in problems:
        cfg = F.choose_fprop_config(p, dtype)
        assert F.supports(cfg, p, dtype) is None, (p, cfg)
        assert cfg.name_expression(dtype) in F.FAMILY.name_expressions


def test_resnet_layers_pick_wide_tiles_and_vector_loads():
    # res2 3x3 64->64 at N=32: gemm_n = 64 -> the 128x64 tile, float4 loads.
    assert F.choose_fprop_config(prob2d(32, 56, 56, 64, 64, 3, 3), F32) == F.FpropConfig("tiled", "int", "128x64", 4)
    # res3 3x3 128->128: gemm_n = 128, 196 blocks of 128x128 >= one wave (132 SMs x 1 block) -> 128x128.
    assert F.choose_fprop_config(prob2d(32, 28, 28, 128, 128, 3, 3), F32) == F.FpropConfig("tiled", "int", "128x128", 4)
    # res5 3x3 512->512 at N=32: gemm_m = 1568 -> 13 x 4 = 52 blocks of 128x128 (< 132) and 13 x 8 = 104 of
    # 128x64 (< 264): 64x64.
    assert F.choose_fprop_config(prob2d(32, 7, 7, 512, 512, 3, 3), F32).tile == "64x64"
    # first layer, C = 3: scalar loads.
    assert F.choose_fprop_config(prob2d(32, 224, 224, 3, 64, 7, 7, stride=2), F32).vector == 1


def test_small_problems_pick_the_small_tile():
    assert F.choose_fprop_config(prob2d(1, 8, 8, 16, 256, 3, 3), F32).tile == "64x64"


def test_depthwise_runs_analytic():
    p = prob2d(4, 16, 16, 32, 32, 3, 3, groups=32)          # gemm_n = K/G = 1
    assert F.choose_fprop_config(p, F32) == F.FpropConfig("analytic", "int")
    p = prob2d(4, 16, 16, 32, 64, 3, 3, groups=8)           # gemm_n = 8: tiled, per-group grid
    cfg = F.choose_fprop_config(p, F32)
    assert cfg.variant == "tiled" and F.tiled_grid(p, cfg.tile)[1] == 8


def test_vector_width_needs_channel_multiples_per_group():
    assert F.choose_fprop_config(prob2d(2, 9, 9, 8, 12, 3, 3), F32).vector == 4
    assert F.choose_fprop_config(prob2d(2, 9, 9, 8, 10, 3, 3), F32).vector == 1      # K % 4
    assert F.choose_fprop_config(prob2d(2, 9, 9, 5, 12, 3, 3), F32).vector == 1      # C % 4
    assert F.choose_fprop_config(prob2d(2, 9, 9, 8, 16, 3, 3, groups=4), F32).vector == 1  # C/G = 2
    assert F.choose_fprop_config(prob2d(2, 9, 9, 6, 10, 3, 3), F64).vector == 2      # double: pairs
    assert F.choose_fprop_config(prob2d(2, 9, 9, 8, 12, 3, 3), F32, aligned=False).vector == 1


def test_float16_with_vector_channels_runs_on_tensor_cores():
    cfg = F.choose_fprop_config(prob2d(32, 56, 56, 64, 64, 3, 3), F16)
    assert cfg == F.FpropConfig("tensorop", "int", "128x128", 4)
    assert cfg.name_expression(F16) == "gpuconv::conv_fprop_tensorop<__half, int, 128, 128, 32, 64, 32, 4, 1>"
    assert F.choose_fprop_config(huge_problem(), F16) == F.FpropConfig("tensorop", "long long", "128x128", 4)
    # C = 3: no vector loads, so the SIMT tiled kernel (tensorop would need 240 registers with V = 1)
    assert F.choose_fprop_config(prob2d(32, 224, 224, 3, 64, 7, 7, stride=2), F16).variant == "tiled"
    assert F.choose_fprop_config(prob2d(8, 28, 28, 64, 64, 3, 3), F16, aligned=False).variant == "tiled"
    assert F.choose_fprop_config(prob2d(8, 28, 28, 64, 64, 3, 3), F32).variant == "tiled"


@pytest.mark.parametrize("precision,passes", [("tf32", 1), ("3xtf32", 3)])
def test_float32_runs_on_tensor_cores_only_when_tf32_is_allowed(precision, passes):
    p = prob2d(32, 56, 56, 64, 64, 3, 3)
    assert F.choose_fprop_config(p, F32).variant == "tiled"                     # default precision: "ieee"
    assert F.choose_fprop_config(p, F32, precision="ieee").variant == "tiled"
    cfg = F.choose_fprop_config(p, F32, precision=precision)
    assert cfg == F.FpropConfig("tensorop", "int", "128x128", 4, passes) and F.uses_tf32(cfg, F32)
    assert cfg.name_expression(F32) == f"gpuconv::conv_fprop_tensorop<float, int, 128, 128, 16, 64, 32, 4, {passes}>"
    assert F.choose_fprop_config(huge_problem(), F32, precision=precision) == F.FpropConfig(
        "tensorop", "long long", "128x128", 4, passes)
    # the permission changes nothing where no TF32 kernel applies: scalar channels, misalignment, other dtypes
    scalar = prob2d(32, 224, 224, 3, 64, 7, 7, stride=2)
    assert F.choose_fprop_config(scalar, F32, precision=precision).variant == "tiled"
    assert F.choose_fprop_config(p, F32, aligned=False, precision=precision).variant == "tiled"
    assert F.choose_fprop_config(p, F16, precision=precision) == F.choose_fprop_config(p, F16)
    assert F.choose_fprop_config(p, F64, precision=precision) == F.choose_fprop_config(p, F64)
    assert F.choose_fprop_config(prob2d(4, 16, 16, 32, 32, 3, 3, groups=32), F32, precision=precision).variant == \
        "analytic"


def test_tf32_plans_flag_x_as_well_as_w():
    p = prob2d(2, 12, 12, 8, 16, 3, 3)
    x, w, y = arrays(p, F32)
    flag = np.zeros(1, np.int32)
    plans = F.plan_fprop(p, F32, x, w, y, nonfinite=flag, precision="3xtf32")
    assert [pl.name_expression.split("<")[0] for pl in plans] == ["gpuconv::conv_nonfinite_flag"] * 2 + [
        "gpuconv::conv_fprop_tensorop"]
    assert plans[0].args[0] is w and int(plans[0].args[1]) == w.size and plans[0].args[2] is flag
    assert plans[1].args[0] is x and int(plans[1].args[1]) == x.size and plans[1].args[2] is flag
    # float16 tensor cores and float32 SIMT flag w only (x meets no padding zero and is not split)
    for dtype, precision in ((F16, "3xtf32"), (F32, "ieee")):
        plans = F.plan_fprop(p, dtype, *arrays(p, dtype), nonfinite=flag, precision=precision)
        assert len(plans) == 2 and plans[0].args[0].size == w.size


def test_tensorop_refuses_what_is_not_instantiated():
    p = prob2d(1, 5, 5, 4, 8, 3, 3)
    assert "not instantiated for float64" in F.supports(F.FpropConfig("tensorop", "int", "128x128", 4), p, F64)
    assert "2 tensor-core passes are not instantiated for tensorop in float32 (available: 1, 3)" in F.supports(
        F.FpropConfig("tensorop", "int", "128x128", 4, passes=2), p, F32)
    assert "1 tensor-core passes" not in (F.supports(F.FpropConfig("tiled", "int", "64x64", 4), p, F32) or "")
    assert "passes" in F.supports(F.FpropConfig("tiled", "int", "64x64", 4, passes=3), p, F32)


def test_tensorop_plan_grid_and_block():
    p = prob2d(2, 12, 12, 4, 132, 3, 3)
    with F.override_config(variant="tensorop"):
        plan = conv_plan(p, F16, *arrays(p, F16))
    assert plan.block == (256, 1, 1) and plan.grid == (-(-288 // 128) * 2, 1, 1) and plan.shared_mem == 0
    with F.override_config(variant="tensorop"), pytest.raises(ValueError, match="divisible by 4"):
        F.plan_fprop(prob2d(1, 5, 5, 3, 8, 3, 3), F16, *arrays(prob2d(1, 5, 5, 3, 8, 3, 3), F16))


def test_float64_uses_the_64x64_tile():
    assert F.choose_fprop_config(prob2d(32, 56, 56, 64, 256, 3, 3), F64).tile == "64x64"


def test_64bit_index_when_a_tensor_reaches_2_31_elements():
    p = huge_problem()
    assert p.needs_int64()
    cfg = F.choose_fprop_config(p, F32)
    assert cfg == F.FpropConfig("tiled", "long long", "128x128", 4)
    assert F.choose_fprop_config(p, F64) == F.FpropConfig("tiled", "long long", "64x64", 2)
    assert F.choose_fprop_config(prob2d(1, 5, 5, 3, 5, 3, 3), F32).index == "int"


# ---------------------------------------------------------------------------------------------------------
# supports(): every refusal says why
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,problem,fragment", [
    (F.FpropConfig("tiled", "int", "64x64", 4), prob2d(1, 5, 5, 3, 8, 3, 3), "divisible by 4"),
    (F.FpropConfig("tiled", "int", "64x64", 4), prob2d(1, 5, 5, 8, 6, 3, 3), "K/groups (6)"),
    (F.FpropConfig("tiled", "int", "64x64", 2), prob2d(1, 5, 5, 8, 8, 3, 3), "vector width 2 is not 1 or 4"),
    (F.FpropConfig("tiled", "int", "128x128", 1), huge_problem(), "long long"),
    (F.FpropConfig("analytic", "int"), huge_problem(), "long long"),
    (F.FpropConfig("tiled", "long long", "64x64", 1), prob2d(1, 5, 5, 3, 8, 3, 3), "not instantiated"),
    (F.FpropConfig("tiled", "int", "32x32", 1), prob2d(1, 5, 5, 3, 8, 3, 3), "not instantiated"),
    (F.FpropConfig("winograd", "int"), prob2d(1, 5, 5, 3, 8, 3, 3), "unknown variant"),
    (F.FpropConfig("tensorop", "int", "128x128", 4, passes=3), prob2d(1, 5, 5, 4, 8, 3, 3),
     "3 tensor-core passes are not instantiated for tensorop in float16"),
    (F.FpropConfig("tensorop", "int", "128x128", 1), prob2d(1, 5, 5, 3, 8, 3, 3), "vector width 1 is not 4"),
    (F.FpropConfig("analytic", "int", "64x64", 1), prob2d(1, 5, 5, 3, 8, 3, 3), "no tile"),
    (F.FpropConfig("tiled", "int", "64x64", 1), huge_problem(N=1, C=70000, K=70000, groups=70000, P=1, Q=1,
                                                            H=1, W=1), "groups exceed"),
])
def test_supports_gives_reasons(cfg, problem, fragment):
    dtype = F64 if cfg.vector == 2 and "not 1 or 4" not in fragment else F32
    if cfg.variant == "tensorop" and "float32" not in fragment:
        dtype = F16
    reason = F.supports(cfg, problem, dtype)
    assert reason is not None and fragment in reason, reason


def test_supports_accepts_64bit_index_on_small_problems():
    p = prob2d(1, 5, 5, 3, 8, 3, 3)
    assert F.supports(F.FpropConfig("tiled", "long long", "128x128", 1), p, F32) is None
    assert F.supports(F.FpropConfig("analytic", "long long"), p, F16) is None


# ---------------------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------------------
def test_tiled_plan_grid_block_and_exact_scalars():
    p = prob2d(3, 9, 9, 8, 12, 3, 3, stride=2, dilation=2)
    x, w, y = arrays(p, F32)
    with F.override_config(variant="tiled", tile="64x64"):
        flag_plan, plan = F.plan_fprop(p, F32, x, w, y, nonfinite=FLAG)
    assert flag_plan.name_expression == "gpuconv::conv_nonfinite_flag<float, int>"
    assert flag_plan.args[0] is w and flag_plan.args[2] is FLAG and int(flag_plan.args[1]) == w.size
    gemm_m = 3 * 5 * 5
    assert plan.grid == (-(-gemm_m // 64) * 1, 1, 1) and plan.block == (256, 1, 1) and plan.shared_mem == 0
    assert plan.name_expression == "gpuconv::conv_fprop_tiled<float, int, 64, 64, 8, 4, 4, 4>"
    assert plan.args[:4] == (x, w, y, FLAG)
    scalars = plan.args[4:]
    assert len(scalars) == len(PROBLEM_PARAM_NAMES) == 22
    assert all(type(s) is np.int32 for s in scalars)
    assert [int(s) for s in scalars] == list(problem_values(p))


def test_analytic_plan_grid_folds_rows_over_y_and_z():
    p = prob2d(3, 9, 9, 8, 12, 3, 3)
    x, w, y = arrays(p, F16)
    with F.override_config(variant="analytic", index="long long"):
        (plan,) = F.plan_fprop(p, F16, x, w, y)
    assert plan.name_expression == "gpuconv::conv_fprop_analytic<__half, long long>"
    assert plan.grid == (1, 27, 1)                       # Q*K = 108 <= 256; rows = N*P = 27
    assert all(type(s) is np.int64 for s in plan.args[3:])
    big = huge_problem(N=70000, P=1, Q=1, H=1, W=1, C=1, K=1)
    assert F.analytic_grid(big) == (1, 65535, 2)


def test_grouped_plan_puts_groups_on_grid_y():
    p = prob2d(2, 6, 6, 16, 24, 3, 3, groups=2)
    x, w, y = arrays(p, F32)
    plan = conv_plan(p, F32, x, w, y)
    assert plan.grid[1] == 2 and "64, 64" in plan.name_expression and plan.name_expression.endswith("4>")


def test_misaligned_arrays_fall_back_to_scalar_loads():
    p = prob2d(2, 6, 6, 8, 8, 3, 3)
    x = np.zeros(int(np.prod(p.x_shape)) + 1, np.float32)[1:].reshape(p.x_shape)
    w, y = np.zeros(p.w_shape, np.float32), np.zeros(p.y_shape, np.float32)
    assert not F.arrays_aligned(F32, x, w, y)
    plan = conv_plan(p, F32, x, w, y)
    assert plan.name_expression.endswith(", 1>")
    with F.override_config(vector=4), pytest.raises(ValueError, match="aligned"):
        F.plan_fprop(p, F32, x, w, y, nonfinite=FLAG)


def test_override_that_cannot_run_is_a_value_error_with_the_reason():
    p = prob2d(1, 5, 5, 3, 8, 3, 3)
    with F.override_config(variant="tiled", vector=4), pytest.raises(ValueError, match="divisible by 4"):
        F.plan_fprop(p, F32, *arrays(p, F32))


def test_override_tiled_on_a_problem_the_chooser_sends_to_analytic():
    p = prob2d(2, 6, 6, 4, 4, 3, 3, groups=4)          # gemm_n = 1 -> analytic by default
    assert F.choose_fprop_config(p, F64).variant == "analytic"
    with F.override_config(variant="tiled"):
        plan = conv_plan(p, F64, *arrays(p, F64))
    assert plan.name_expression == "gpuconv::conv_fprop_tiled<double, int, 64, 64, 8, 4, 4, 1>"
    assert plan.grid == (2, 4, 1)                        # gemm_m = 72: two 64-row tiles; 4 groups


def test_override_is_scoped():
    p = prob2d(1, 5, 5, 3, 8, 3, 3)
    with F.override_config(variant="analytic"):
        assert "analytic" in conv_plan(p, F32, *arrays(p, F32)).name_expression
    assert "tiled" in conv_plan(p, F32, *arrays(p, F32)).name_expression


# ---------------------------------------------------------------------------------------------------------
# tables vs kernel source
# ---------------------------------------------------------------------------------------------------------
def test_family_lists_every_instance_once():
    exprs = F.FAMILY.name_expressions
    assert len(exprs) == len(set(exprs))
    expected = sum(2 + 2 * len(F.TILED_INSTANCES[(dt, ix)])                    # + 1: conv_nonfinite_flag
                   + len(F.TENSOROP_INSTANCES.get((dt, ix), ())) * len(F.TENSOROP_PASSES.get(dt, ()))
                   for dt in (F16, F32, F64) for ix in F.INDEX_TYPES)
    assert len(exprs) == expected
    for e in exprs:
        assert F.FAMILY.hint(e).block_threads == 256


@pytest.mark.parametrize("name", list(F.TILES))
def test_tile_shapes_satisfy_the_kernel_static_asserts(name):
    t = F.TILES[name]
    threads_m, threads_n = t.bm // t.tm, t.bn // t.tn
    lanes_n = min(8, threads_n)
    assert t.threads == 256 and t.tm % 4 == 0 and t.tn % 4 == 0 and t.bk == 8
    assert threads_m % (32 // lanes_n) == 0 and t.bm % t.tm == 0 and t.bn % t.tn == 0


def test_problem_scalars_follow_the_kernel_parameter_macro():
    text = (kernel_dir() / "conv_common.cuh").read_text()
    macro = re.search(r"#define GPUCONV_CONV_PROBLEM_PARAMS\(Index\)(.*?)\n\n", text + "\n\n", re.S).group(1)
    names = re.findall(r"Index\s+(\w+)", macro)
    assert tuple(names) == PROBLEM_PARAM_NAMES
    p = prob2d(2, 7, 8, 6, 4, 3, 2, stride=2, dilation=3, padding=((1, 2), (0, 3)), groups=2)
    values = dict(zip(PROBLEM_PARAM_NAMES, (int(v) for v in problem_scalars(p))))
    assert (values["H"], values["W"], values["R"], values["S"], values["groups"]) == (7, 8, 3, 2, 2)
    assert (values["stride_h"], values["dilation_w"], values["pad_h"], values["pad_w"]) == (2, 3, 1, 0)
