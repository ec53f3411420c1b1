"""conv dgrad and wgrad kernels (analytic and tiled) against the NumPy backend, on every kernel backend.

Each case goes through the public API (conv*_backprop_input / conv*_transpose for dgrad, conv*_backprop_filter
for wgrad) on the kernel backend and on the NumPy backend. The tiled variants are forced onto tiny problems
with plans.conv_dgrad.forced_config / plans.conv_wgrad.forced_config, so partial tiles occur in every GEMM
dimension (dgrad: gemm_m = N*ceil(D/sd)*ceil(H/sh)*ceil(W/sw) per stride phase, gemm_n = C/G,
gemm_k = taps x K/G; wgrad: gemm_m = K/G, gemm_n = C/G*T*R*S, gemm_k = N*Z*P*Q). Error bound:
|got - ref| <= rtol * (the same op on |inputs| in float64) + atol, i.e. relative to the sum of absolute terms.
Shapes are tiny: the emulator runs every CUDA thread as a fiber.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import canonical_filters, to_canonical
from gpuconv.geometry import conv_problem, transposed_output_range
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_wgrad as WG

from conftest import to_backend, to_numpy

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
RTOL = {F16: 2e-3, F32: 1e-5, F64: 1e-12}
ATOL = {F16: 1e-4, F32: 1e-6, F64: 1e-13}


def uniform(shape, dtype, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def forward_shape(xs, ws, kw):
    """dy's shape: the forward conv of an x of shape xs with filters ws (NumPy backend)."""
    fn = gpuconv.conv2d if len(xs) == 4 else gpuconv.conv3d
    with gpuconv.use_backend("numpy"):
        return fn(np.zeros(xs, np.float32), np.zeros(ws, np.float32), **kw).shape


def dgrad(xs, w, dy, **kw):
    fn = gpuconv.conv2d_backprop_input if w.ndim == 4 else gpuconv.conv3d_backprop_input
    return fn(xs, w, dy, **kw)


def wgrad(x, ws, dy, **kw):
    fn = gpuconv.conv2d_backprop_filter if x.ndim == 4 else gpuconv.conv3d_backprop_filter
    return fn(x, ws, dy, **kw)


def run_dgrad(backend, xs, w, dy, **kw):
    with gpuconv.use_backend(backend):
        return to_numpy(dgrad(xs, to_backend(backend, w), to_backend(backend, dy), **kw))


def run_wgrad(backend, x, ws, dy, **kw):
    with gpuconv.use_backend(backend):
        return to_numpy(wgrad(to_backend(backend, x), ws, to_backend(backend, dy), **kw))


def assert_close(got, ref, bound, dtype):
    assert got.dtype == dtype and got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    tol = RTOL[dtype] * bound + ATOL[dtype]
    if err.size:
        worst = np.unravel_index(np.argmax(err - tol), err.shape)
        assert np.all(err <= tol), f"max excess at {worst}: got {got[worst]}, want {ref[worst]}"


def check_dgrad(backend, xs, ws, kw, dtype, seed=0):
    w = uniform(ws, dtype, seed)
    dy = uniform(forward_shape(xs, ws, kw), dtype, seed + 1)
    got = run_dgrad(backend, xs, w, dy, **kw)
    with gpuconv.use_backend("numpy"):
        ref = dgrad(xs, w, dy, **kw)
        bound = dgrad(xs, np.abs(w).astype(np.float64), np.abs(dy).astype(np.float64), **kw)
    assert_close(got, ref, bound, dtype)
    return got


def check_wgrad(backend, xs, ws, kw, dtype, seed=0):
    x = uniform(xs, dtype, seed)
    dy = uniform(forward_shape(xs, ws, kw), dtype, seed + 1)
    got = run_wgrad(backend, x, ws, dy, **kw)
    with gpuconv.use_backend("numpy"):
        ref = wgrad(x, ws, dy, **kw)
        bound = wgrad(np.abs(x).astype(np.float64), ws, np.abs(dy).astype(np.float64), **kw)
    assert_close(got, ref, bound, dtype)
    return got


# (name, x_shape, w_shape, kwargs): 2-D NHWC / (R, S, C/G, K), 3-D NDHWC / (T, R, S, C/G, K).
CASES = [
    # C = 3, K = 5, SAME: dgrad gemm_n 3, gemm_k 9 taps x 8 (K/G = 5 padded); wgrad gemm_m 5, gemm_n 27
    ("c3_k5_same", (2, 5, 6, 3), (3, 3, 3, 5), dict(strides=1, padding="SAME")),
    # C = K = 1, stride 2, VALID
    ("c1_k1_s2_valid", (1, 7, 9, 1), (2, 2, 1, 1), dict(strides=2, padding="VALID")),
    # C = 5, K = 3, strides (1, 3), dilations (2, 1), explicit asymmetric padding
    ("c5_k3_explicit", (2, 8, 10, 5), (3, 2, 5, 3),
     dict(strides=[1, 3], padding=[[0, 0], [1, 0], [2, 1], [0, 0]], dilations=[2, 1])),
    # stride 3 on sizes 10 and 8 (not divisible): three phases per axis, one tap each
    ("s3_odd_sizes", (1, 10, 8, 4), (3, 3, 4, 6), dict(strides=3, padding="SAME")),
    # 1x1 filter, stride 2: three of the four stride phases have no tap (dx = 0 there)
    ("s2_1x1_tapless_phases", (2, 7, 7, 3), (1, 1, 3, 4), dict(strides=2, padding="VALID")),
    # stride 2, dilation 2 (gcd(stride, dilation) = 2: phases 1 get no tap), 75 rows per phase: 2 m-tiles of 64
    ("s2_d2_two_mtiles", (3, 9, 9, 8), (3, 3, 8, 12), dict(strides=2, padding="SAME", dilations=2)),
    # stride 2, dilation 3 (taps 0 and 2 hit one phase, tap 1 the other)
    ("s2_d3", (1, 9, 8, 2), (3, 3, 2, 4), dict(strides=2, padding="SAME", dilations=3)),
    # groups: G = 4 (C/G = 2, K/G = 3) and G = 2 (C/G = 8, K/G = 12), strides (2, 1)
    ("groups4", (2, 6, 5, 8), (3, 3, 2, 12), dict(strides=1, padding="SAME")),
    ("groups2_s21", (1, 6, 7, 16), (2, 3, 8, 24), dict(strides=[2, 1], padding="VALID")),
    # C = 70: two 64-wide dgrad n-tiles; wgrad gemm_n = 280
    ("c70", (1, 4, 5, 70), (2, 2, 70, 3), dict(strides=1, padding="SAME")),
    # K = 70: dgrad 9 k-tiles per tap; wgrad two 64-row m-tiles
    ("k70_s2", (2, 5, 4, 4), (1, 2, 4, 70), dict(strides=2, padding="SAME")),
    # 3-D: strides (2, 1, 2), SAME
    ("conv3d_s212", (1, 4, 5, 4, 4), (2, 3, 3, 4, 8), dict(strides=[1, 2, 1, 2, 1], padding="SAME")),
    # 3-D: C = 3, dilation 2 in depth, explicit padding, stride 2 in depth
    ("conv3d_c3_explicit", (2, 5, 4, 3, 3), (2, 2, 2, 3, 5),
     dict(strides=[1, 2, 1, 1, 1], padding=[[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dilations=[1, 2, 1, 1, 1])),
]
CASE_IDS = [c[0] for c in CASES]
SUBSET = [CASES[i] for i in (0, 2, 5, 7, 11)]
SUBSET_IDS = [c[0] for c in SUBSET]

DGRAD_CONFIGS = {
    "analytic": dict(variant="analytic"),
    "tiled64x64": dict(variant="tiled", tile="64x64"),
    "tiled128x64": dict(variant="tiled", tile="128x64"),
}
WGRAD_CONFIGS = {
    "analytic": dict(variant="analytic"),
    "tiled64x64_split1": dict(variant="tiled", tile="64x64", splits=1),
    "tiled64x64_split3": dict(variant="tiled", tile="64x64", splits=3),
    "tiled64x128_split2": dict(variant="tiled", tile="64x128", splits=2),
}


# float16 on tensor cores (what the choosers pick for float16): every case, several tiles, split-K
DGRAD_F16_TENSOROP = {"tensorop64x64": dict(variant="tensorop", tile="64x64", passes=1),
                      "tensorop128x64": dict(variant="tensorop", tile="128x64", passes=1)}
WGRAD_F16_TENSOROP = {"tensorop64x64_split1": dict(variant="tensorop", tile="64x64", splits=1, passes=1),
                      "tensorop64x64_split3": dict(variant="tensorop", tile="64x64", splits=3, passes=1),
                      "tensorop64x128_split2": dict(variant="tensorop", tile="64x128", splits=2, passes=1)}


def _every_case(*tables) -> list:
    """(dtype, configuration) parameters from (dtype, {name: configuration}) tables, named after them."""
    return [pytest.param(dtype, config, id=name if dtype == F32 else f"{name}-{dtype.name}")
            for dtype, configs in tables for name, config in configs.items()]


# ---------------------------------------------------------------------------------------------------------
# every case x every configuration: float32 on every variant, float16 on tensor cores
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,config", _every_case((F32, DGRAD_CONFIGS), (F16, DGRAD_F16_TENSOROP)))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_dgrad_matches_numpy(kernel_backend, case, dtype, config):
    _, xs, ws, kw = case
    with DG.forced_config(**config):
        check_dgrad(kernel_backend, xs, ws, kw, dtype, seed=len(xs) + ws[-1])


@pytest.mark.parametrize("dtype,config", _every_case((F32, WGRAD_CONFIGS), (F16, WGRAD_F16_TENSOROP)))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_wgrad_matches_numpy(kernel_backend, case, dtype, config):
    _, xs, ws, kw = case
    with WG.forced_config(**config):
        check_wgrad(kernel_backend, xs, ws, kw, dtype, seed=len(xs) + ws[-1])


@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[9]], ids=["c3_k5_same", "s2_d2", "c70"])
def test_large_tiles(kernel_backend, case):
    _, xs, ws, kw = case
    with DG.forced_config(variant="tiled", tile="128x128"):
        check_dgrad(kernel_backend, xs, ws, kw, F32, seed=3)
    for tile in ("128x128", "128x64"):
        with WG.forced_config(variant="tiled", tile=tile, splits=2):
            check_wgrad(kernel_backend, xs, ws, kw, F32, seed=3)


# ---------------------------------------------------------------------------------------------------------
# float16 / float64
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F16, F64])
@pytest.mark.parametrize("config", ["analytic", "tiled64x64"])
@pytest.mark.parametrize("case", SUBSET, ids=SUBSET_IDS)
def test_dgrad_float16_float64(kernel_backend, case, config, dtype):
    _, xs, ws, kw = case
    with DG.forced_config(**DGRAD_CONFIGS[config]):
        check_dgrad(kernel_backend, xs, ws, kw, dtype, seed=7)


@pytest.mark.parametrize("dtype", [F16, F64])
@pytest.mark.parametrize("config", ["analytic", "tiled64x64_split1", "tiled64x64_split3"])
@pytest.mark.parametrize("case", SUBSET, ids=SUBSET_IDS)
def test_wgrad_float16_float64(kernel_backend, case, config, dtype):
    _, xs, ws, kw = case
    with WG.forced_config(**WGRAD_CONFIGS[config]):
        check_wgrad(kernel_backend, xs, ws, kw, dtype, seed=7)


def test_float16_default_path_runs_on_tensor_cores(kernel_backend, monkeypatch):
    from conftest import record_launches
    launched = record_launches(monkeypatch, kernel_backend)
    xs, ws, kw = (2, 9, 9, 24), (3, 3, 24, 20), dict(strides=2, padding="SAME")   # wgrad gemm_k 50: one split
    check_dgrad(kernel_backend, xs, ws, kw, F16, seed=29)
    check_wgrad(kernel_backend, xs, ws, kw, F16, seed=29)
    kernels = [n for n in launched if "nonfinite_flag" not in n]
    assert kernels == ["conv_dgrad_tensorop<__half, int, 64, 64, 1>",
                       "conv_wgrad_tensorop<__half, __half, int, 64, 128, 1>"], launched   # gemm_n = 216


# ---------------------------------------------------------------------------------------------------------
# transposed convolution: every legal output_shape
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["analytic", "tiled"])
@pytest.mark.parametrize("stride,padding", [(2, "SAME"), (3, "SAME"), (2, "VALID"), (3, "VALID")])
def test_conv2d_transpose_every_legal_output_shape(kernel_backend, stride, padding, variant):
    n, i_h, i_w, k_in, c_out = 2, 3, 4, 5, 17        # transposed input (N, 3, 4, 5) -> output channels 17
    w = uniform((3, 2, c_out, k_in), F32, 11)        # (kh, kw, out, in)
    x = uniform((n, i_h, i_w, k_in), F32, 12)
    lo_h, hi_h = transposed_output_range(i_h, 3, stride, 1, padding)
    lo_w, hi_w = transposed_output_range(i_w, 2, stride, 1, padding)
    for o_h in range(lo_h, hi_h + 1):
        for o_w in range(lo_w, hi_w + 1):
            shape = (n, o_h, o_w, c_out)
            with DG.forced_config(variant=variant), gpuconv.use_backend(kernel_backend):
                got = to_numpy(gpuconv.conv2d_transpose(to_backend(kernel_backend, x), to_backend(kernel_backend, w),
                                                        shape, stride, padding))
            with gpuconv.use_backend("numpy"):
                ref = gpuconv.conv2d_transpose(x, w, shape, stride, padding)
                bound = gpuconv.conv2d_transpose(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                                                 shape, stride, padding)
            assert_close(got, ref, bound, F32)


def test_conv3d_transpose(kernel_backend):
    x = uniform((1, 2, 3, 2, 4), F32, 13)
    w = uniform((2, 3, 2, 18, 4), F32, 14)
    shape = (1, 4, 6, 3, 18)
    with DG.forced_config(variant="tiled"), gpuconv.use_backend(kernel_backend):
        got = to_numpy(gpuconv.conv3d_transpose(to_backend(kernel_backend, x), to_backend(kernel_backend, w),
                                                shape, 2, "SAME"))
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv3d_transpose(x, w, shape, 2, "SAME")
        bound = gpuconv.conv3d_transpose(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), shape, 2,
                                         "SAME")
    assert_close(got, ref, bound, F32)


# ---------------------------------------------------------------------------------------------------------
# index width, defaults, empty problems
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["analytic", "tiled"])
def test_64bit_index_instantiations(kernel_backend, variant):
    _, xs, ws, kw = CASES[2]
    with DG.forced_config(variant=variant, index="long long"):
        check_dgrad(kernel_backend, xs, ws, kw, F32, seed=5)
    fields = dict(variant=variant, index="long long") | (dict(splits=2) if variant == "tiled" else {})
    with WG.forced_config(**fields):
        check_wgrad(kernel_backend, xs, ws, kw, F32, seed=5)


def test_chooser_default_path(kernel_backend):
    # No override: whatever the choosers pick must be right (dgrad tiled 64x64, wgrad tiled with split-K).
    xs, ws, kw = (1, 6, 6, 16), (3, 3, 16, 8), dict(strides=2, padding="SAME")
    p = conv_problem((1,) + xs, (1,) + ws, (1, 2, 2), (1, 1, 1), "SAME")
    assert DG.choose_dgrad_config(p, F32) == DG.DgradConfig("tiled", "64x64", "int")
    wc = WG.choose_wgrad_config(p, F32)
    assert wc.variant == "tiled" and wc.splits == 1       # gemm_k = 9 rows: too few to split
    check_dgrad(kernel_backend, xs, ws, kw, F32, seed=17)
    check_wgrad(kernel_backend, xs, ws, kw, F32, seed=17)


def test_depthwise_default_is_analytic_dgrad(kernel_backend):
    p = conv_problem((2, 1, 5, 5, 6), (1, 3, 3, 1, 6), (1, 2, 2), (1, 1, 1), "SAME")
    assert DG.choose_dgrad_config(p, F32).variant == "analytic"          # C/G = 1: the chooser's fallback
    check_dgrad(kernel_backend, (2, 5, 5, 6), (3, 3, 1, 6), dict(strides=2, padding="SAME"), F32, seed=19)
    check_wgrad(kernel_backend, (2, 5, 5, 6), (3, 3, 1, 6), dict(strides=2, padding="SAME"), F32, seed=19)


def test_nchw_edge(kernel_backend):
    w = uniform((3, 3, 8, 12), F32, 23)
    dy = uniform((2, 12, 5, 5), F32, 24)                  # NCHW
    kw = dict(strides=2, padding="SAME", data_format="NCHW")
    with DG.forced_config(variant="tiled"):
        got = run_dgrad(kernel_backend, (2, 8, 9, 9), w, dy, **kw)
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv2d_backprop_input((2, 8, 9, 9), w, dy, **kw)
        bound = gpuconv.conv2d_backprop_input((2, 8, 9, 9), np.abs(w).astype(np.float64),
                                              np.abs(dy).astype(np.float64), **kw)
    assert_close(got, ref, bound, F32)


def test_empty_problems(kernel_backend):
    # dy with no pixels: dx is all zeros (not uninitialised); dw is all zeros.
    w = uniform((3, 3, 2, 4), F32, 1)
    dy = np.zeros((2, 0, 3, 4), F32)
    got = run_dgrad(kernel_backend, (2, 0, 5, 2), w, dy, strides=2, padding="SAME")
    assert got.shape == (2, 0, 5, 2)
    # a non-empty x whose forward output is empty (VALID, 3x3 filter on 2x2): dx has cells, all of them zero
    for variant in ("analytic", "col2im", "tiled"):
        with DG.forced_config(variant=variant):
            got = run_dgrad(kernel_backend, (2, 2, 2, 2), w, np.zeros((2, 0, 0, 4), F32), strides=1,
                            padding="VALID")
        assert got.shape == (2, 2, 2, 2) and not got.any(), variant
    x = uniform((0, 5, 5, 2), F32, 2)
    got_w = run_wgrad(kernel_backend, x, (3, 3, 2, 4), np.zeros((0, 5, 5, 4), F32), strides=1, padding="SAME")
    assert got_w.shape == (3, 3, 2, 4) and not got_w.any()


# ---------------------------------------------------------------------------------------------------------
# determinism and summation order
# ---------------------------------------------------------------------------------------------------------
def test_dgrad_variants_agree_bitwise_and_repeat_bitwise(kernel_backend):
    # Both dgrad variants sum taps in (t, r, s) order with channels inner and one fused multiply-add per term;
    # the tiled kernel's padded terms are 0 * w, which leaves the sum unchanged: on finite inputs they agree to
    # the bit. Each repeats to the bit (no atomics).
    _, xs, ws, kw = CASES[5]
    w = uniform(ws, F32, 29)
    dy = uniform(forward_shape(xs, ws, kw), F32, 30)
    outs = {}
    for name, fields in DGRAD_CONFIGS.items():
        with DG.forced_config(**fields):
            first = run_dgrad(kernel_backend, xs, w, dy, **kw)
            second = run_dgrad(kernel_backend, xs, w, dy, **kw)
        assert np.array_equal(first.view(np.uint32), second.view(np.uint32)), name
        outs[name] = first
    for name in DGRAD_CONFIGS:
        assert np.array_equal(outs["analytic"].view(np.uint32), outs[name].view(np.uint32)), name


UNGROUPED = [c for c in CASES if c[1][-1] == c[2][-2]]          # C/G == C: the col2im variant's cases


@pytest.mark.parametrize("dtype", [F16, F32, F64])
@pytest.mark.parametrize("case", UNGROUPED, ids=[c[0] for c in UNGROUPED])
def test_dgrad_col2im_matches_numpy(kernel_backend, case, dtype):
    # GEMM (a 1x1 conv_fprop) + col2im gather, forced on every ungrouped case (the chooser takes it for C < 16)
    _, xs, ws, kw = case
    with DG.forced_config(variant="col2im"):
        check_dgrad(kernel_backend, xs, ws, kw, dtype, seed=len(xs) + ws[-1])


def test_dgrad_col2im_batch_chunks_give_the_one_chunk_bits(kernel_backend, monkeypatch):
    # chunks are independent: the same GEMM rows and the same gathers, so one image per chunk gives the bits of
    # the whole batch in one chunk; the chunk's dx view starts at its first image
    _, xs, ws, kw = CASES[5]
    xs = (5,) + xs[1:]
    w = uniform(ws, F32, 35)
    dy = uniform(forward_shape(xs, ws, kw), F32, 36)
    with DG.forced_config(variant="col2im"):
        whole = run_dgrad(kernel_backend, xs, w, dy, **kw)
        monkeypatch.setattr(DG, "COL2IM_SCRATCH_BYTES", 1)
        p = conv_problem((5, 1) + xs[1:], (1,) + ws, (1, 2, 2), (1, 2, 2), "SAME")
        assert DG.col2im_images(p, F32) == 1                 # one image per chunk: 5 chunks
        chunked = run_dgrad(kernel_backend, xs, w, dy, **kw)
    assert chunked.tobytes() == whole.tobytes()


def test_wgrad_split_reduction_is_deterministic(kernel_backend):
    # One split sums gemm_k in the analytic kernel's (n, z, p, q) order: bitwise equal. More splits change the
    # order (partials, then a fixed-order reduction) but repeat to the bit.
    _, xs, ws, kw = CASES[5]
    x = uniform(xs, F32, 31)
    dy = uniform(forward_shape(xs, ws, kw), F32, 32)
    outs = {}
    for name, fields in WGRAD_CONFIGS.items():
        with WG.forced_config(**fields):
            first = run_wgrad(kernel_backend, x, ws, dy, **kw)
            second = run_wgrad(kernel_backend, x, ws, dy, **kw)
        assert np.array_equal(first.view(np.uint32), second.view(np.uint32)), name
        outs[name] = first
    assert np.array_equal(outs["analytic"].view(np.uint32), outs["tiled64x64_split1"].view(np.uint32))


@pytest.mark.emulator
@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_thread_orders(order):
    # The same kernels under other fiber orders (a missing barrier or a shared-memory race shows up here).
    from gpuconv.executors.emulator import EmulatorExecutor
    from gpuconv.kernel_backend.conv_dgrad import conv_dgrad
    from gpuconv.kernel_backend.conv_wgrad import conv_wgrad
    from gpuconv.numpy_backend import BACKEND as NUMPY

    ex = EmulatorExecutor(order=order, seed=5)
    _, xs, ws, kw = CASES[9]                                    # c70: two n-tiles, partial everything
    x5 = to_canonical(uniform(xs, F32, 41), np, 2, True)
    w5 = canonical_filters(uniform(ws, F32, 42), np, 2)
    p = conv_problem(x5.shape, w5.shape, (1, 1, 1), (1, 1, 1), "SAME")
    dy5 = uniform(p.y_shape, F32, 43)
    with DG.forced_config(variant="tiled", tile="64x64"):
        dx = conv_dgrad(ex, dy5, w5, p)
    with WG.forced_config(variant="tiled", tile="64x64", splits=2):
        dw = conv_wgrad(ex, x5, dy5, p)
    np.testing.assert_allclose(dx, NUMPY.conv_dgrad(dy5, w5, p), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, NUMPY.conv_wgrad(x5, dy5, p), rtol=1e-5, atol=1e-5)
