"""Launch plans, executors and LaunchPlan itself at the exact edges of their documented limits.

A mutation check of gpuconv/plans, gpuconv/kernel_backend and gpuconv/executors found decisions that no other
test reached: every limit was tested only far past it (70000 groups, 2^33 elements), never at the limit itself, so
`>` could become `>=` (a valid launch refused, or a forced configuration raising) or a limit could move by one
(an invalid launch accepted: a 32-bit index or a grid past CUDA's limits); and a few guards were never triggered
at all (a config_for that must raise, a float parameter given an integer, a pointer misaligned to its own
element size). Each test here pins one documented rule on both sides of its boundary.

Expected values come from the rules as the docstrings and README state them (2^31 - 1 for int, 65535 for grid
y and z, 2^31 - 1 blocks for grid x, 256 threads per block, 2^31 - 1024 pixels per image for dgrad, ...), written
out here, never from the code under test. The plans are pure functions of problem sizes, so huge problems are
ConvProblem records and zero-stride views: nothing large is allocated and no kernel runs.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.executors import emulator as E
from gpuconv.geometry import ConvProblem, conv_problem, pool_problem
from gpuconv.plans import LaunchPlan
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_fprop as F
from gpuconv.plans import conv_wgrad as WG
from gpuconv.plans import pool as P

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
INT_MAX = 2**31 - 1          # the largest C++ int
GRID_X = 2**31 - 1           # CUDA's gridDim.x limit
GRID_YZ = 65535              # CUDA's gridDim.y / gridDim.z limit
THREADS = 256                # threads per block of every analytic conv kernel


def cp(**kw) -> ConvProblem:
    """A ConvProblem record of the given fields, every other extent 1, stride and dilation 1, no padding (only
    its fields are read: nothing is allocated)."""
    base = dict(N=1, D=1, H=1, W=1, C=1, K=1, T=1, R=1, S=1, Z=1, P=1, Q=1, stride=(1, 1, 1),
                dilation=(1, 1, 1), pad_before=(0, 0, 0), pad_after=(0, 0, 0), groups=1)
    base.update(kw)
    return ConvProblem(**base)


class FakeArray:
    """Stands in for an array in conv plan arguments (the dgrad / wgrad plans read only .dtype)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


# ---------------------------------------------------------------------------------------------------------
# every conv configuration: each extent, stride, dilation and pad must fit in a C++ int (<= 2^31 - 1)
# ---------------------------------------------------------------------------------------------------------
def test_an_extent_of_exactly_int_max_fits_and_one_more_does_not():
    cfg = F.FpropConfig("analytic", "int")
    assert F.supports(cfg, cp(pad_before=(0, 0, INT_MAX)), F32) is None
    reason = F.supports(cfg, cp(pad_before=(0, 0, INT_MAX + 1)), F32)
    assert reason is not None and "does not fit in a C++ int" in reason
    ok, why = DG.supports(DG.DgradConfig("analytic", None, "int"), cp(stride=(1, INT_MAX + 1, 1)))
    assert not ok and "does not fit in a C++ int" in why


# ---------------------------------------------------------------------------------------------------------
# fprop: gemm_k in int, groups on grid y, tiles on grid x, vector width divides C/G and K/G
# ---------------------------------------------------------------------------------------------------------
def test_fprop_tiled_gemm_k_up_to_int_max():
    cfg = F.FpropConfig("tiled", "long long", "128x128", 1)
    assert F.supports(cfg, cp(C=INT_MAX, K=8), F32) is None                 # gemm_k = C*T*R*S = 2^31 - 1
    reason = F.supports(cfg, cp(C=2**30, R=2, K=8), F32)                   # gemm_k = 2^31
    assert reason is not None and "gemm_k" in reason


def test_fprop_tiled_runs_exactly_65535_groups():
    cfg = F.FpropConfig("tiled", "int", "64x64", 1)
    assert F.supports(cfg, cp(C=GRID_YZ, K=8 * GRID_YZ, groups=GRID_YZ), F32) is None
    reason = F.supports(cfg, cp(C=GRID_YZ + 1, K=8 * (GRID_YZ + 1), groups=GRID_YZ + 1), F32)
    assert reason is not None and "groups exceed" in reason


def test_fprop_tiled_grid_x_up_to_its_limit():
    # gemm_m = N*Q = 128 * (2^31 - 1) rows in 128-row tiles, gemm_n = 8 in one tile: exactly 2^31 - 1 blocks
    cfg = F.FpropConfig("tiled", "long long", "128x128", 1)
    assert F.supports(cfg, cp(N=GRID_X, Q=128, K=8), F32) is None
    assert F.tiled_grid(cp(N=GRID_X, Q=128, K=8), "128x128") == (GRID_X, 1, 1)
    reason = F.supports(cfg, cp(N=GRID_X, Q=129, K=8), F32)                # one more row: 2^31 blocks
    assert reason is not None and "more than" in reason


@pytest.mark.parametrize("C,K", [(3, 4), (4, 3)])
def test_fprop_float64_vector_pairs_need_even_channels_per_group(C, K):
    # rule 4: V = 2 for float64 only when C/G and K/G are multiples of 2 (a pair never straddles a tap or group)
    p = cp(C=C, K=K)
    reason = F.supports(F.FpropConfig("tiled", "int", "64x64", 2), p, F64)
    assert reason is not None and "divisible by 2" in reason
    assert F.supports(F.FpropConfig("tiled", "int", "64x64", 2), cp(C=4, K=6), F64) is None


def test_fprop_override_tiled_keeps_the_choosers_tile():
    # override_config: variant="tiled" without a tile takes the chooser's tile when the chooser picked tiled
    p = conv_problem((32, 1, 28, 28, 128), (1, 3, 3, 128, 128), (1, 1, 1), (1, 1, 1), "SAME")
    chosen = F.choose_fprop_config(p, F32)
    assert chosen.variant == "tiled" and chosen.tile == "128x128"          # 196 blocks of 128x128 >= 132
    x, w, y = (np.zeros(s, F32) for s in (p.x_shape, p.w_shape, p.y_shape))
    with F.override_config(variant="tiled"):
        assert F.select_config(p, F32, x, w, y).tile == "128x128"
    with F.override_config(vector=1):
        assert F.select_config(p, F32, x, w, y) == F.FpropConfig("tiled", "int", "128x128", 1)


def test_fprop_override_tiled_on_an_analytic_choice_takes_64x64():
    # ... and 64x64 when the chooser picked analytic (K/G = 4 < 8), for a dtype that has larger tiles too
    p = conv_problem((2, 1, 6, 6, 8), (1, 3, 3, 8, 4), (1, 1, 1), (1, 1, 1), "SAME")
    x, w, y = (np.zeros(s, F32) for s in (p.x_shape, p.w_shape, p.y_shape))
    assert F.select_config(p, F32, x, w, y).variant == "analytic"
    with F.override_config(variant="tiled"):
        assert F.select_config(p, F32, x, w, y).tile == "64x64"
    # ... or the only tile the dtype instantiates for the index type: float32 with 64-bit indices has 128x128
    with F.override_config(variant="tiled", index="long long"):
        cfg = F.select_config(p, F32, x, w, y)
    assert cfg == F.FpropConfig("tiled", "long long", "128x128", 1)
    assert F.supports(cfg, p, F32) is None


# ---------------------------------------------------------------------------------------------------------
# dgrad: pixels per image below 2^31 - 1024, grid limits at their values, the analytic fallback, exact grid
# ---------------------------------------------------------------------------------------------------------
def test_dgrad_image_pixels_stay_below_2_31_minus_1024():
    tiled = DG.DgradConfig("tiled", "64x64", "long long")
    ok, why = DG.supports(tiled, cp(W=2**31 - 1025, C=16, K=4, Q=2**31 - 1025))
    assert ok, why
    for d, w in [(1, 2**31 - 1024), (2, 2**30 - 512)]:                     # D*H*W = 2^31 - 1024
        ok, why = DG.supports(tiled, cp(D=d, W=w, C=16, K=4, Z=d, Q=w))
        assert not ok and "2^31 - 1024" in why
    # the analytic kernel splits pixels in 64 bits (its long long instantiation): any image size
    ok, why = DG.supports(DG.DgradConfig("analytic", None, "long long"), cp(D=4, W=2**30 + 2, C=16, K=4, Z=4,
                                                                           Q=2**30 + 2))
    assert ok, why


def test_problems_past_every_variant_are_a_value_error_not_a_launch():
    # The choosers fall back to analytic without asking it; config_for asks and refuses with its reason.
    dgrad = cp(N=GRID_X, C=THREADS + 1)              # K/G = 1: analytic; dx past 2^31 - 1 blocks of 256 threads
    assert not DG.supports(DG.choose_dgrad_config(dgrad, F32), dgrad)[0]
    with pytest.raises(ValueError, match="conv_dgrad configuration .* cannot run this problem: dx needs more"):
        DG.config_for(dgrad, F32)
    wgrad = cp(C=2**30, R=2)                                               # T*R*S*C/G = 2^31 filter rows
    assert not WG.supports(WG.choose_wgrad_config(wgrad, F32), wgrad)[0]
    with pytest.raises(ValueError, match="conv_wgrad configuration .* cannot run this problem: T.R.S.C/G >= 2"):
        WG.config_for(wgrad, F32)


def test_dgrad_tiled_runs_exactly_65535_groups_and_65535_phases():
    tiled = DG.DgradConfig("tiled", "64x64", "int")
    assert DG.supports(tiled, cp(C=16 * GRID_YZ, K=4 * GRID_YZ, groups=GRID_YZ))[0]
    ok, why = DG.supports(tiled, cp(C=16 * (GRID_YZ + 1), K=4 * (GRID_YZ + 1), groups=GRID_YZ + 1))
    assert not ok and "groups" in why
    assert DG.supports(tiled, cp(C=16, K=4, stride=(15, 17, 257)))[0]     # 15*17*257 = 65535 phases
    ok, why = DG.supports(tiled, cp(C=16, K=4, stride=(16, 64, 64)))       # 65536
    assert not ok and "stride phases" in why


def test_dgrad_tiled_grid_x_up_to_its_limit():
    # phase rows N*W = 64 * (2^31 - 1) in 64-row tiles, C/G = 16 in one 64-wide tile: 2^31 - 1 blocks
    tiled = DG.DgradConfig("tiled", "64x64", "long long")
    assert DG.tiled_grid(cp(N=GRID_X, W=64, C=16, K=4, Q=64), "64x64") == (GRID_X, 1, 1)
    assert DG.supports(tiled, cp(N=GRID_X, W=64, C=16, K=4, Q=64))[0]
    ok, why = DG.supports(tiled, cp(N=GRID_X, W=65, C=16, K=4, Q=65))
    assert not ok and "tiles exceed" in why


def test_dgrad_falls_back_to_analytic_when_the_tiled_grid_cannot_launch():
    # C/G = 16 and K/G = 4 would run tiled, but 65536 stride phases exceed grid z: the analytic kernel runs
    p = cp(C=16, K=4, stride=(16, 64, 64))
    cfg = DG.choose_dgrad_config(p, F32)
    assert cfg == DG.DgradConfig("analytic", None, "int")
    (plan,) = DG.dgrad_plans(cfg, p, FakeArray(F32), FakeArray(F32), FakeArray(F32))
    assert plan.name_expression == "conv_dgrad_analytic<float, int>"


def test_dgrad_analytic_grid_is_exactly_one_thread_per_dx_element():
    analytic = DG.DgradConfig("analytic", None, "long long")
    small = cp(N=3, D=2, H=5, W=7, C=11, K=4)                              # 2310 elements: 10 blocks of 256
    (plan,) = DG.dgrad_plans(analytic, small, FakeArray(F32), FakeArray(F32), FakeArray(F32))
    assert plan.grid == (-(-3 * 2 * 5 * 7 * 11 // THREADS), 1, 1) == (10, 1, 1)
    edge = cp(N=GRID_X, C=THREADS, K=4)                                    # exactly 2^31 - 1 blocks
    assert DG.supports(analytic, edge)[0]
    (plan,) = DG.dgrad_plans(analytic, edge, FakeArray(F32), FakeArray(F32), FakeArray(F32))
    assert plan.grid == (GRID_X, 1, 1)
    ok, why = DG.supports(analytic, cp(N=GRID_X, C=THREADS + 1, K=4))
    assert not ok and "blocks" in why


# ---------------------------------------------------------------------------------------------------------
# wgrad: filter rows in int, the int-indexed split-K workspace, the analytic grid, forced configs checked
# ---------------------------------------------------------------------------------------------------------
def test_wgrad_filter_rows_stay_below_2_31():
    analytic = WG.WgradConfig("analytic", None, 1, "long long")
    ok, why = WG.supports(analytic, cp(C=INT_MAX))                         # T*R*S*C/G = 2^31 - 1
    assert ok, why
    ok, why = WG.supports(analytic, cp(C=2**30, R=2))                      # 2^31
    assert not ok and "2^31" in why


def test_wgrad_int_indexed_workspace_stays_below_2_31_elements():
    # dw = C*K = 2^27 elements (int indices suffice for every tensor); gemm_k = P*Q = 2048 rows = 256 k-tiles
    p = cp(C=2**14, K=2**13, P=32, Q=64, H=32, W=64)
    assert not p.needs_int64()
    assert WG.normalise_splits(p, 16) == 16 and WG.normalise_splits(p, 15) == 15
    ok, why = WG.supports(WG.WgradConfig("tiled", "128x128", 15, "int"), p)   # 15 * 2^27 < 2^31
    assert ok, why
    ok, why = WG.supports(WG.WgradConfig("tiled", "128x128", 16, "int"), p)   # 16 * 2^27 = 2^31
    assert not ok and "workspace" in why
    ok, why = WG.supports(WG.WgradConfig("tiled", "128x128", 16, "long long"), p)
    assert ok, why


def test_wgrad_analytic_grid_rounds_up():
    analytic = WG.WgradConfig("analytic", None, 1, "long long")
    assert WG.supports(analytic, cp(C=INT_MAX, K=THREADS))[0]              # dw = 256 * (2^31 - 1): fits
    # dw = 257 * 2139127680 = 256 * (2^31 - 1) + 128: ceil(dw / 256) = 2^31 blocks, one too many
    ok, why = WG.supports(analytic, cp(C=2139127680, K=257))
    assert not ok and "blocks" in why


def test_wgrad_forced_config_that_cannot_run_is_a_value_error():
    p = conv_problem((1, 1, 6, 6, 16), (1, 3, 3, 16, 8), (1, 2, 2), (1, 1, 1), "SAME")
    with WG.forced_config(variant="tiled", tile="128x128"), pytest.raises(ValueError, match="not instantiated"):
        WG.config_for(p, F64)                                              # float64 has only 64x64


# ---------------------------------------------------------------------------------------------------------
# pooling: a pointer misaligned to its own element size still gets the scalar kernel (VEC = 1)
# ---------------------------------------------------------------------------------------------------------
def _misaligned(shape, dtype, offset):
    dtype = np.dtype(dtype)
    buf = np.zeros(256, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = np.broadcast_to(buf[start:start + dtype.itemsize].view(dtype).reshape(()), shape)
    assert P.data_ptr(out) % 64 == offset
    return out


@pytest.mark.parametrize("dtype,offset", [(np.float32, 2), (np.float64, 4), (np.int16, 1)])
def test_pointer_misaligned_to_its_itemsize_gets_one_lane(dtype, offset):
    x = _misaligned((2, 1, 4, 4, 8), dtype, offset)
    assert P.vector_lanes(x) == 1
    p = pool_problem((2, 1, 4, 4, 8), (1, 2, 2), (1, 2, 2), "VALID")
    y = np.zeros(p.y_shape, dtype)
    assert P.max_pool(p, x, y).name_expression.endswith(", 1>")


# ---------------------------------------------------------------------------------------------------------
# LaunchPlan and the emulator executor refuse what CUDA would refuse, and accept CUDA's limits themselves
# ---------------------------------------------------------------------------------------------------------
def test_launch_plan_refuses_empty_grids_and_python_scalars():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="empty grid"):
        LaunchPlan("pool", "k", (0, 1, 1), (256, 1, 1), 0, (x,))
    with pytest.raises(ValueError, match="empty grid"):
        LaunchPlan("pool", "k", (1, 1, 1), (256, 0, 1), 0, (x,))
    with pytest.raises(TypeError, match="argument 1 is a Python int"):
        LaunchPlan("pool", "k", (1, 1, 1), (256, 1, 1), 0, (x, 4))


class _Reached(Exception):
    """Raised instead of building: the launch got past its geometry check."""


@pytest.fixture
def emulator_without_build(monkeypatch):
    def no_build(*args, **kwargs):
        raise _Reached
    monkeypatch.setattr(E, "_build", no_build)
    return E.EmulatorExecutor()


POOL_KERNEL = "pool_max_fwd<float, int, 1>"


@pytest.mark.parametrize("grid,block", [((GRID_X, GRID_YZ, GRID_YZ), (256, 1, 1)), ((1, 1, 1), (1024, 1, 1)),
                                        ((1, 1, 1), (16, 1, 64)), ((1, 1, 1), (1, 1024, 1))])
def test_emulator_accepts_cuda_limits_exactly(emulator_without_build, grid, block):
    with pytest.raises(_Reached):
        emulator_without_build.launch(LaunchPlan("pool", POOL_KERNEL, grid, block, 0, ()))


@pytest.mark.parametrize("grid,block", [((2**31, 1, 1), (256, 1, 1)), ((1, 65536, 1), (256, 1, 1)),
                                        ((1, 1, 65536), (256, 1, 1)), ((1, 1, 1), (1025, 1, 1)),
                                        ((1, 1, 1), (32, 33, 1)), ((1, 1, 1), (1, 1, 65))])
def test_emulator_refuses_geometry_past_cuda_limits(emulator_without_build, grid, block):
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        emulator_without_build.launch(LaunchPlan("pool", POOL_KERNEL, grid, block, 0, ()))


def test_emulator_float_parameter_refuses_an_integer_scalar():
    sig = E.KernelSignature(0, (4, 4), "fi")
    E._pack_args("k", sig, (np.float32(1.5), np.int32(3)))
    with pytest.raises(TypeError, match="argument 0 is a 4-byte floating-point parameter; got int32"):
        E._pack_args("k", sig, (np.int32(1), np.int32(3)))


def test_emulator_workers_up_to_1024():
    assert E.EmulatorExecutor(workers=1024).workers == 1024
    with pytest.raises(ValueError, match="workers"):
        E.EmulatorExecutor(workers=1025)
