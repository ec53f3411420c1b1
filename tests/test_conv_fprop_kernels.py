"""conv_fprop kernels (analytic and tiled) against the NumPy backend, on every kernel backend.

Each case goes through the public API (conv2d / conv3d) on the kernel backend and on the NumPy backend; the
tiled variant is forced onto tiny problems with plans.conv_fprop.override_config, so partial tiles occur in
every GEMM dimension (gemm_m = N*Z*P*Q, gemm_n = K/G, gemm_k = T*R*S*C/G). Error bound: |y - y_ref| <=
rtol * (|x| conv |w|) + atol, i.e. relative to the sum of absolute terms, not to a result that may cancel.
Shapes are tiny: the emulator runs every CUDA thread as a fiber (one 256-thread block per tile).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import resolve
from gpuconv.geometry import conv_problem
from gpuconv.numpy_backend import BACKEND as NUMPY
from gpuconv.plans import conv_fprop as F

from conftest import to_backend, to_numpy

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
# rtol relative to sum |x*w|; float16 rounds the float32 sum once to half (2^-11 relative) and its inputs are
# half, so the bound is a half ulp of the largest possible result plus float32 accumulation error.
RTOL = {F16: 2e-3, F32: 1e-5, F64: 1e-12}
ATOL = {F16: 1e-4, F32: 1e-6, F64: 1e-13}


def inputs(x_shape, w_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    w = rng.uniform(-1, 1, w_shape).astype(dtype)
    return x, w


def run(backend, fn, x, w, **kw):
    with gpuconv.use_backend(backend):
        return to_numpy(fn(to_backend(backend, x), to_backend(backend, w), **kw))


def check_close(y, x, w, fn, dtype, **kw):
    with gpuconv.use_backend("numpy"):
        ref = fn(x, w, **kw)
        bound = fn(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), **kw)
    assert y.dtype == dtype and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref.astype(np.float64))
    tol = RTOL[dtype] * bound + ATOL[dtype]
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else None
    assert np.all(err <= tol), f"max excess at {worst}: got {y[worst]}, want {ref[worst]} (bound {bound[worst]})"


# (name, fn, x_shape, w_shape, kwargs): conv2d shapes are NHWC / (R, S, C/G, K), conv3d NDHWC / (T, R, S, C/G, K).
CASES = [
    # C = 3 (scalar loads); gemm_m 60, gemm_n 5, gemm_k 27 = 3 full k-tiles + 3: partial in all three
    ("c3_same", gpuconv.conv2d, (2, 5, 6, 3), (3, 3, 3, 5), dict(strides=1, padding="SAME")),
    # C = 1, stride 2, VALID
    ("c1_s2_valid", gpuconv.conv2d, (1, 7, 9, 1), (2, 2, 1, 8), dict(strides=2, padding="VALID")),
    # C = 5, strides (1, 3), dilations (2, 1), explicit asymmetric padding
    ("c5_explicit", gpuconv.conv2d, (2, 8, 10, 5), (3, 2, 5, 9),
     dict(strides=[1, 3], padding=[[0, 0], [1, 0], [2, 1], [0, 0]], dilations=[2, 1])),
    # C = 8, K = 12: vector path; stride 2, dilation 2, SAME; gemm_m 75 > 64: two m-tiles
    ("c8_vec_s2_d2", gpuconv.conv2d, (3, 9, 9, 8), (3, 3, 8, 12), dict(strides=2, padding="SAME", dilations=2)),
    # stride 3, 1x1 filter, K = 70 (two n-tiles of 64), C = 4 (vector on C, not on K -> scalar)
    ("k70_1x1_s3", gpuconv.conv2d, (2, 10, 8, 4), (1, 1, 4, 70), dict(strides=3, padding="SAME")),
    # groups: G = 4, C/G = 2, K/G = 3 (scalar) and G = 2, C/G = 8, K/G = 12 (vector)
    ("groups4", gpuconv.conv2d, (2, 6, 5, 8), (3, 3, 2, 12), dict(strides=1, padding="SAME")),
    ("groups2_vec", gpuconv.conv2d, (1, 6, 7, 16), (2, 3, 8, 24), dict(strides=[2, 1], padding="VALID")),
    # 3-D: stride (2, 1, 1), SAME, vector path
    ("conv3d_vec", gpuconv.conv3d, (1, 4, 5, 4, 4), (2, 3, 3, 4, 8), dict(strides=[1, 2, 1, 1, 1], padding="SAME")),
    # 3-D: C = 3, dilation 2 in depth, explicit padding
    ("conv3d_c3", gpuconv.conv3d, (2, 5, 4, 3, 3), (2, 2, 2, 3, 5),
     dict(strides=1, padding=[[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dilations=[1, 2, 1, 1, 1])),
]
CASE_IDS = [c[0] for c in CASES]

CONFIGS = {
    "analytic": dict(variant="analytic"),
    "tiled64": dict(variant="tiled", tile="64x64"),
}


@contextlib.contextmanager
def forced(**fields):
    with F.override_config(**fields):
        yield


def check_forced(backend, case, dtype, seed, **fields):
    """A CASES entry run with the plan fields forced, checked against the NumPy backend."""
    _, fn, xs, ws, kw = case
    x, w = inputs(xs, ws, dtype, seed=seed)
    with forced(**fields):
        y = run(backend, fn, x, w, **kw)
    check_close(y, x, w, fn, dtype, **kw)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fprop_float32_matches_numpy(kernel_backend, case, config):
    check_forced(kernel_backend, case, F32, len(case[2]) + case[2][-1], **CONFIGS[config])


@pytest.mark.parametrize("tile", ["128x128", "128x64"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]], ids=["c3_same", "c8_vec_s2_d2", "groups2_vec"])
def test_fprop_large_tiles(kernel_backend, case, tile):
    check_forced(kernel_backend, case, F32, 3, variant="tiled", tile=tile)


@pytest.mark.parametrize("dtype", [F16, F64])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[7]],
                         ids=["c3_same", "c8_vec_s2_d2", "groups4", "conv3d_vec"])
def test_fprop_float16_float64(kernel_backend, case, config, dtype):
    check_forced(kernel_backend, case, dtype, 7, **CONFIGS[config])


def test_fprop_float16_vector_path_with_128_tile(kernel_backend):
    check_forced(kernel_backend, CASES[3], F16, 11, variant="tiled", tile="128x128", vector=4)


@pytest.mark.parametrize("index", ["int", "long long"])
@pytest.mark.parametrize("case", [CASES[3], CASES[6], CASES[7]], ids=["c8_vec_s2_d2", "groups2_vec", "conv3d_vec"])
def test_fprop_float16_tensorop(kernel_backend, case, index):
    # Tensor cores (WMMA; in the emulator, conv_common.cuh's model of the WMMA API) with float accumulation.
    check_forced(kernel_backend, case, F16, 41, variant="tensorop", index=index)


def test_fprop_float16_tensorop_refuses_scalar_channels(kernel_backend):
    _, fn, xs, ws, kw = CASES[4]                      # K = 70: no 4-wide loads along K
    x, w = inputs(xs, ws, F16)
    with forced(variant="tensorop"), pytest.raises(ValueError, match="divisible by 4"):
        run(kernel_backend, fn, x, w, **kw)


def test_fprop_float16_tensorop_several_block_tiles(kernel_backend):
    # gemm_m = 2*12*12 = 288 -> three 128-row tiles; gemm_n = 132 -> two 128-column tiles; gemm_k = 36.
    x, w = inputs((2, 12, 12, 4), (3, 3, 4, 132), F16, seed=43)
    p = conv_problem((2, 1, 12, 12, 4), (1, 3, 3, 4, 132), (1, 1, 1), (1, 1, 1), "SAME")
    assert F.choose_fprop_config(p, F16).variant == "tensorop"
    y = run(kernel_backend, gpuconv.conv2d, x, w, strides=1, padding="SAME")   # the chooser picks tensorop
    check_close(y, x, w, gpuconv.conv2d, F16, strides=1, padding="SAME")


@pytest.mark.parametrize("fields", [dict(variant="analytic", index="long long"),
                                    dict(variant="tiled", tile="128x128", index="long long")],
                         ids=["analytic", "tiled"])
def test_fprop_64bit_index_instantiations(kernel_backend, fields):
    check_forced(kernel_backend, CASES[2], F32, 5, **fields)


def test_fprop_several_tiles_in_m_and_n(kernel_backend):
    # gemm_m = 2*9*9 = 162 -> three 64-row tiles; gemm_n = 70 -> two 64-column tiles; gemm_k = 18.
    x, w = inputs((2, 9, 9, 2), (3, 3, 2, 70), F32, seed=13)
    with forced(variant="tiled", tile="64x64"):
        y = run(kernel_backend, gpuconv.conv2d, x, w, strides=1, padding="SAME")
    check_close(y, x, w, gpuconv.conv2d, F32, strides=1, padding="SAME")


def test_fprop_chooser_default_path(kernel_backend):
    # No override: whatever the chooser picks must be right (here tiled 64x64 with vector loads).
    x, w = inputs((1, 6, 6, 8), (3, 3, 8, 16), F32, seed=17)
    p = conv_problem((1, 1, 6, 6, 8), (1, 3, 3, 8, 16), (1, 1, 1), (1, 1, 1), "SAME")
    assert F.choose_fprop_config(p, F32) == F.FpropConfig("tiled", "int", "64x64", 4)
    y = run(kernel_backend, gpuconv.conv2d, x, w, strides=1, padding="SAME")
    check_close(y, x, w, gpuconv.conv2d, F32, strides=1, padding="SAME")


def test_fprop_depthwise_default_is_analytic(kernel_backend):
    p = conv_problem((2, 1, 5, 5, 6), (1, 3, 3, 1, 6), (1, 2, 2), (1, 1, 1), "SAME")
    assert F.choose_fprop_config(p, F32).variant == "analytic"
    x, w = inputs((2, 5, 5, 6), (3, 3, 1, 6), F32, seed=19)
    y = run(kernel_backend, gpuconv.conv2d, x, w, strides=2, padding="SAME")
    check_close(y, x, w, gpuconv.conv2d, F32, strides=2, padding="SAME")


def test_fprop_nchw_edge(kernel_backend):
    x, w = inputs((2, 8, 9, 9), (3, 3, 8, 12), F32, seed=23)   # NCHW
    kw = dict(strides=2, padding="SAME", data_format="NCHW")
    with forced(variant="tiled"):
        y = run(kernel_backend, gpuconv.conv2d, x, w, **kw)
    check_close(y, x, w, gpuconv.conv2d, F32, **kw)


def test_fprop_analytic_rows_beyond_grid_y(kernel_backend):
    # N*Z*P = 65537 output rows fold into a (65535, 2) grid: the last 65533 blocks of grid z = 1 are past the last
    # row and must exit (the kernel's row bound test; no other test has more than 65535 rows). 1x1 filter, K = 1;
    # y is the head of a NaN-filled buffer as long as the grid's rows, so a write past the last row shows.
    from gpuconv import backend as B
    rows = 65537
    x = np.random.default_rng(47).uniform(-1, 1, (1, 1, rows, 1, 1)).astype(F32)
    w = np.full((1, 1, 1, 1, 1), 2.0, F32)
    p = conv_problem(x.shape, w.shape, (1, 1, 1), (1, 1, 1), "VALID")
    assert F.choose_fprop_config(p, F32).variant == "analytic" and F.analytic_grid(p) == (1, 65535, 2)
    buf = to_backend(kernel_backend, np.full(65535 * 2, np.nan, F32))
    y = buf[:rows].reshape(p.y_shape)
    for plan in F.plan_fprop(p, F32, to_backend(kernel_backend, x), to_backend(kernel_backend, w), y):
        B._instance(kernel_backend).executor.launch(plan)
    out = to_numpy(buf)
    assert np.array_equal(out[:rows], 2 * x.reshape(-1)) and np.isnan(out[rows:]).all()


def test_fprop_empty_results(kernel_backend):
    x, w = inputs((2, 2, 2, 3), (3, 3, 3, 4), F32)
    y = run(kernel_backend, gpuconv.conv2d, x, w, strides=1, padding="VALID")
    assert y.shape == (2, 0, 0, 4)
    x0, w0 = inputs((0, 5, 5, 3), (3, 3, 3, 4), F32)
    y0 = run(kernel_backend, gpuconv.conv2d, x0, w0, strides=1, padding="SAME")
    assert y0.shape == (0, 5, 5, 4)


def test_fprop_variants_agree_bitwise_and_repeat_bitwise(kernel_backend):
    # Both variants sum gemm_k in the same order (tap outer, channel inner) with one fused multiply-add per
    # term, and a zero operand leaves the sum unchanged: on finite inputs they agree to the bit. Each also
    # repeats to the bit (no atomics, no order-dependent reduction).
    _, fn, xs, ws, kw = CASES[3]
    x, w = inputs(xs, ws, F32, seed=29)
    outs = {}
    for name, fields in [("analytic", dict(variant="analytic")), ("tiled64", dict(variant="tiled", tile="64x64")),
                         ("tiled128", dict(variant="tiled", tile="128x128", vector=1))]:
        with forced(**fields):
            first = run(kernel_backend, fn, x, w, **kw)
            second = run(kernel_backend, fn, x, w, **kw)
        assert np.array_equal(first.view(np.uint32), second.view(np.uint32)), name
        outs[name] = first
    assert np.array_equal(outs["analytic"].view(np.uint32), outs["tiled64"].view(np.uint32))
    assert np.array_equal(outs["analytic"].view(np.uint32), outs["tiled128"].view(np.uint32))


def test_fprop_misaligned_input_takes_scalar_loads(kernel_backend):
    # A C-contiguous view that starts one element into its buffer: the plan must not use 16-byte loads.
    xs, ws = (1, 6, 6, 8), (1, 3, 3, 8, 8)
    x, w = inputs(xs, ws, F32, seed=31)
    p = conv_problem((1, 1) + xs[1:], ws, (1, 1, 1), (1, 1, 1), "SAME")
    buf = to_backend(kernel_backend, np.zeros(x.size + 1, np.float32))
    xv = buf[1:].reshape((1, 1) + xs[1:])
    xv[...] = to_backend(kernel_backend, x.reshape(xv.shape))
    wb = to_backend(kernel_backend, w)
    assert not F.arrays_aligned(F32, xv, wb, wb)
    with gpuconv.use_backend(kernel_backend):
        y = to_numpy(resolve({"input": xv, "filters": wb}).conv_fprop(xv, wb, p))
    ref = NUMPY.conv_fprop(x.reshape(xv.shape), w, p)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# thread orders (emulator only): a missing barrier or a race shows up as order-dependent results
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.emulator
@pytest.mark.parametrize("order", ["reverse", "shuffle"])
@pytest.mark.parametrize("fields", [dict(variant="tiled", tile="64x64"), dict(variant="tiled", tile="128x128"),
                                    dict(variant="analytic")], ids=["tiled64", "tiled128", "analytic"])
def test_fprop_emulator_thread_orders(order, fields):
    from gpuconv.executors.emulator import EmulatorExecutor
    from gpuconv.kernel_backend import KernelBackend
    backend = KernelBackend(EmulatorExecutor(order=order, seed=3))
    xs, ws = (2, 1, 7, 6, 8), (1, 3, 3, 8, 12)
    x, w = inputs(xs, ws, F32, seed=37)
    p = conv_problem(xs, ws, (1, 2, 1), (1, 1, 2), "SAME")
    with forced(**fields):
        y = backend.conv_fprop(x, w, p)
    ref = NUMPY.conv_fprop(x, w, p)
    bound = NUMPY.conv_fprop(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), p)
    assert np.all(np.abs(y - ref) <= 1e-5 * bound + 1e-6)
