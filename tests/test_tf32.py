"""Opt-in TF32 / 3xTF32 float32 convolution (gpuconv/precision.py, kernels/conv_common.cuh TensorOpMath).

The setting: default "ieee", the context manager and the environment variable, bad values named. The scope:
a permission that only the float32 tensor-op kernels use (conv_fprop_tensorop: forward; conv_dgrad_tensorop:
backprop_input and transpose; conv_wgrad_tensorop: backprop_filter), so the NumPy backend, the other ops and
dtypes and pre-Ampere GPUs give exactly what "ieee" gives. The kernels, on the emulator (and a GPU when there is
one), against references written here from the definition of TF32 (cvt.rna.tf32.f32: round to 10 explicit
mantissa bits, nearest, ties away from zero):
  * "tf32": within float32 accumulation error of the float64 convolution of the TF32-rounded operands -- a
    bound tight enough that truncating instead of rounding, or rounding one operand only, fails it (checked);
    and measurably different from float32 (TF32 really ran).
  * "3xtf32": within a few 2^-22 of the exact convolution, far closer than TF32.
  * inputs holding inf or NaN, and finite values whose TF32 rounding would overflow, give float32's answers.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gpuconv
from gpuconv import precision as P

from conftest import record_launches, run_on as run, run_oracle as oracle

F32 = np.dtype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# references: TF32 from its definition, in NumPy
# ---------------------------------------------------------------------------------------------------------
def tf32_nearest(a):
    """float32 values rounded to TF32: the 13 low mantissa bits dropped after adding half of their weight to the
    magnitude (nearest, ties away from zero); inf and NaN unchanged."""
    bits = np.asarray(a, np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits.astype(np.uint64) + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return np.where(finite, rounded, bits).view(np.float32)


def tf32_truncated(a):
    return (np.asarray(a, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def conv64(fn, x, w, **kw):
    """The convolution in float64 (exact products, float64 sums) of float32 operands."""
    return oracle(fn, x.astype(np.float64), w.astype(np.float64), **kw)


def magnitude(fn, x, w, **kw):
    """sum |x| |w| per output: the scale every rounding error bound is relative to."""
    return conv64(fn, np.abs(x), np.abs(w), **kw)


ACCUMULATION = 1e-5   # float32 sums over these problems' <= 600 terms, relative to sum |x||w|
TINY = 1e-30
_FLT_MAX = np.finfo(np.float32).max


def excess(got, want, bound, rtol):
    """max over outputs of |got - want| - rtol * bound (<= 0: within the bound)."""
    return float(np.max(np.abs(got.astype(np.float64) - want) - rtol * bound - TINY))


def forward(fn, **kw):
    """(call(x, w), kernel): a forward convolution and the tensor-op kernel that runs it under TF32."""
    return (lambda x, w: fn(x, w, **kw)), "conv_fprop_tensorop<float,"


def dy_shape_of(x_shape, w_shape, nspatial, **kw):
    conv = gpuconv.conv2d if nspatial == 2 else gpuconv.conv3d
    return oracle(conv, np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32), **kw).shape


def backward(x_shape, w_shape, nspatial, **kw):
    """(call(dy, w), kernel, dy shape, w shape): the input gradient (= transposed conv) of a forward convolution."""
    if nspatial == 2:
        call = lambda dy, w: gpuconv.conv2d_backprop_input(x_shape, w, dy, **kw)          # noqa: E731
    else:
        call = lambda dy, w: gpuconv.conv3d_transpose(dy, w, x_shape, **kw)               # noqa: E731
    return call, "conv_dgrad_tensorop<", dy_shape_of(x_shape, w_shape, nspatial, **kw), w_shape


def filter_grad(x_shape, w_shape, nspatial, **kw):
    """(call(x, dy), kernel, x shape, dy shape): the filter gradient of a forward convolution."""
    fn = gpuconv.conv2d_backprop_filter if nspatial == 2 else gpuconv.conv3d_backprop_filter
    return ((lambda x, dy: fn(x, w_shape, dy, **kw)), "conv_wgrad_tensorop<", x_shape,
            dy_shape_of(x_shape, w_shape, nspatial, **kw))


# Problems with partial tiles in m, n and k, strides (several dgrad phases), dilation, padding, groups; each
# (call(a, b), the tensor-op kernel name, a's shape, b's shape).
def _cases():
    return {
        "2d-same": (*forward(gpuconv.conv2d, strides=1, padding="SAME"), (2, 9, 11, 12), (3, 3, 12, 20)),
        "2d-strided-dilated": (*forward(gpuconv.conv2d, strides=[1, 2, 1, 1], dilations=[1, 1, 2, 1],
                                        padding=[[0, 0], [2, 1], [0, 3], [0, 0]]), (1, 13, 10, 8), (3, 2, 8, 132)),
        "2d-grouped": (*forward(gpuconv.conv2d, strides=[1, 1, 2, 1], padding="VALID"), (2, 7, 7, 16), (1, 3, 8, 24)),
        "3d": (*forward(gpuconv.conv3d, strides=[1, 2, 1, 1, 1], padding="SAME"), (1, 4, 5, 6, 8), (2, 3, 3, 8, 12)),
        "dgrad-2d-strided": backward((2, 11, 10, 20), (3, 3, 20, 12), 2, strides=2, padding="SAME"),
        "dgrad-2d-grouped-dilated": backward((1, 12, 9, 32), (3, 2, 16, 18), 2, strides=[1, 1, 2, 1],
                                             padding="VALID", dilations=[1, 2, 1, 1]),
        "transpose-3d": backward((1, 5, 6, 7, 16), (2, 3, 3, 16, 12), 3, strides=[1, 1, 2, 2, 1], padding="SAME"),
        # gemm_k = 2*13*12 = 312 rows: two splits, the workspace and the reduction
        "wgrad-2d-strided-split": filter_grad((2, 25, 24, 16), (3, 3, 16, 20), 2, strides=2, padding="SAME"),
        "wgrad-2d-grouped-dilated": filter_grad((1, 12, 9, 32), (3, 2, 16, 18), 2, strides=[1, 1, 2, 1],
                                                padding="VALID", dilations=[1, 2, 1, 1]),
        "wgrad-3d": filter_grad((1, 5, 6, 7, 8), (2, 3, 3, 8, 12), 3, strides=[1, 1, 2, 2, 1], padding="SAME"),
    }


CASES = _cases()


def data(case, seed=0):
    """(call, a, b, {}) with random operands in [-1, 1): the op is call(a, b)."""
    call, _, a_shape, b_shape = CASES[case]
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, a_shape).astype(np.float32)
    b = rng.uniform(-1, 1, b_shape).astype(np.float32)
    return call, a, b, {}


def ran_tensor_cores(case, launched, passes) -> bool:
    return any(CASES[case][1] in n and n.endswith(f" {passes}>") for n in launched)


def run_with(backend, mode, fn, *args, **kw):
    with gpuconv.float32_precision(mode):
        return run(backend, fn, *args, **kw)


@pytest.fixture
def launched(kernel_backend, monkeypatch):
    """Name expressions the kernel backend launches during the test (in order)."""
    return record_launches(monkeypatch, kernel_backend)


# ---------------------------------------------------------------------------------------------------------
# the setting
# ---------------------------------------------------------------------------------------------------------
def test_default_is_exact_float32(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    assert gpuconv.get_float32_precision() == "ieee"


def test_context_manager_sets_nests_and_restores(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    with gpuconv.float32_precision("TF32") as mode:
        assert mode == "tf32" == gpuconv.get_float32_precision()
        with gpuconv.float32_precision("3xtf32"):
            assert gpuconv.get_float32_precision() == "3xtf32"
        assert gpuconv.get_float32_precision() == "tf32"
    assert gpuconv.get_float32_precision() == "ieee"
    with pytest.raises(RuntimeError), gpuconv.float32_precision("tf32"):
        raise RuntimeError
    assert gpuconv.get_float32_precision() == "ieee"


def test_setting_is_per_thread(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    seen = []
    with gpuconv.float32_precision("tf32"):
        t = threading.Thread(target=lambda: seen.append(gpuconv.get_float32_precision()))
        t.start()
        t.join()
    assert seen == ["ieee"]


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(P.ENV_VAR, " 3xTF32 ")
    assert gpuconv.get_float32_precision() == "3xtf32"
    with gpuconv.float32_precision("ieee"):
        assert gpuconv.get_float32_precision() == "ieee"
    monkeypatch.setenv(P.ENV_VAR, "fp16")
    with pytest.raises(ValueError, match="^GPUCONV_FLOAT32_PRECISION: expected one of 'ieee', 'tf32', '3xtf32', "
                                         "got 'fp16'"):
        gpuconv.get_float32_precision()


@pytest.mark.parametrize("mode,error,message", [
    ("bf16", ValueError, "^mode: expected one of 'ieee', 'tf32', '3xtf32', got 'bf16'"),
    (32, TypeError, "^mode: expected a str, one of 'ieee', 'tf32', '3xtf32', got 32 of type int"),
    (None, TypeError, "^mode: expected a str"),
])
def test_bad_mode_is_named(mode, error, message):
    with pytest.raises(error, match=message):
        with gpuconv.float32_precision(mode):
            pass
    assert gpuconv.get_float32_precision() in P.FLOAT32_PRECISIONS


def test_info_reports_the_precision_and_refuses_a_malformed_one(monkeypatch, capsys):
    from gpuconv.__main__ import main
    monkeypatch.setenv(P.ENV_VAR, "tf32")
    assert gpuconv.info()["float32-precision"] == "tf32"
    assert main(["info"]) == 0 and "float32 precision: tf32" in capsys.readouterr().out
    monkeypatch.setenv(P.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="GPUCONV_FLOAT32_PRECISION"):
        gpuconv.info()
    assert main(["info"]) == 2 and "GPUCONV_FLOAT32_PRECISION: expected one of" in capsys.readouterr().err


def test_effective_precision_needs_sm80():
    assert P.effective_precision("tf32", 75) == "ieee"
    assert P.effective_precision("3xtf32", 70) == "ieee"
    assert P.effective_precision("tf32", 80) == "tf32"
    assert P.effective_precision("3xtf32", 90) == "3xtf32"
    assert P.effective_precision("tf32", None) == "tf32"           # the emulator
    assert P.effective_precision("ieee", 90) == "ieee"


# ---------------------------------------------------------------------------------------------------------
# the references themselves
# ---------------------------------------------------------------------------------------------------------
def test_tf32_reference_rounds_to_nearest_ties_away():
    one = np.float32(1)
    ulp = 2.0**-10                                        # TF32's mantissa step at 1
    cases = {1 + ulp / 2: 1 + ulp, -(1 + ulp / 2): -(1 + ulp),          # ties: away from zero
             1 + ulp / 2 - 2.0**-23: 1, 1 + 3 * ulp / 2: 1 + 2 * ulp,   # below the tie; odd tie rounds up too
             1 + ulp / 2 + 2.0**-23: 1 + ulp}
    for v, want in cases.items():
        assert tf32_nearest(np.float32(v)) == np.float32(want), v
    assert tf32_truncated(np.float32(1 + ulp / 2)) == one
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    got = tf32_nearest(special)
    assert np.array_equal(got[:2], special[:2]) and np.isnan(got[2]) and np.signbit(got[4])
    assert tf32_nearest(np.float32(3.4028235e38)) == np.inf     # why the kernel keeps finite operands finite


# ---------------------------------------------------------------------------------------------------------
# the kernel: accuracy
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_tf32_rounds_both_operands_to_nearest(kernel_backend, launched, case):
    fn, x, w, kw = data(case)
    got = run_with(kernel_backend, "tf32", fn, x, w, **kw)
    assert ran_tensor_cores(case, launched, 1), launched
    assert got.dtype == F32
    bound = magnitude(fn, x, w, **kw)
    want = conv64(fn, tf32_nearest(x), tf32_nearest(w), **kw)
    assert excess(got, want, bound, ACCUMULATION) <= 0
    # the bound tells rounding from truncation, and both operands rounded from one (so the check can fail)
    assert excess(conv64(fn, tf32_truncated(x), tf32_truncated(w), **kw), want, bound, ACCUMULATION) > 0
    assert excess(conv64(fn, x, tf32_nearest(w), **kw), want, bound, ACCUMULATION) > 0
    # and TF32 did run: float32 would sit within ACCUMULATION of the exact result, TF32 does not
    exact = conv64(fn, x, w, **kw)
    assert excess(got, exact, bound, ACCUMULATION) > 0
    assert excess(got, exact, bound, 2 * 2.0**-11 + ACCUMULATION) <= 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_3xtf32_is_float32_accurate(kernel_backend, launched, case):
    fn, x, w, kw = data(case, seed=1)
    got = run_with(kernel_backend, "3xtf32", fn, x, w, **kw)
    assert ran_tensor_cores(case, launched, 3), launched
    bound = magnitude(fn, x, w, **kw)
    exact = conv64(fn, x, w, **kw)
    # split error 2^-22 per operand and the dropped small*small 2^-22: 3 * 2^-22, plus the float32 sums
    assert excess(got, exact, bound, 3 * 2.0**-22 + ACCUMULATION) <= 0
    tf32 = run_with(kernel_backend, "tf32", fn, x, w, **kw)
    err3 = np.max(np.abs(got - exact) / (bound + TINY))
    err1 = np.max(np.abs(tf32 - exact) / (bound + TINY))
    assert err3 < err1 / 20, (err3, err1)


def test_nchw_and_integer_like_values(kernel_backend):
    # small integers and halves are exact in TF32: every mode gives the exact result (sums stay below 2^11)
    rng = np.random.default_rng(5)
    x = (rng.integers(-8, 9, (2, 8, 6, 7)) / 2).astype(np.float32)
    w = (rng.integers(-4, 5, (3, 3, 8, 16)) / 4).astype(np.float32)
    want = oracle(gpuconv.conv2d, x, w, 1, "SAME", data_format="NCHW")
    for mode in P.FLOAT32_PRECISIONS:
        got = run_with(kernel_backend, mode, gpuconv.conv2d, x, w, 1, "SAME", data_format="NCHW")
        assert np.array_equal(got, want), mode


# ---------------------------------------------------------------------------------------------------------
# the kernel: values TF32 cannot carry
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["tf32", "3xtf32"])
@pytest.mark.parametrize("where", ["a", "b"])
@pytest.mark.parametrize("case", ["2d-same", "dgrad-2d-strided", "wgrad-2d-strided-split"])
def test_non_finite_inputs_give_float32_answers(kernel_backend, mode, where, case):
    fn, x, w, kw = data(case, seed=2)      # operands a, b: (x, w) forward, (dy, w) input and (x, dy) filter gradient
    target = x if where == "a" else w
    target.reshape(-1)[[3, 50, 77]] = [np.inf, -np.inf, np.nan]
    want = run_with(kernel_backend, "ieee", fn, x, w, **kw)
    got = run_with(kernel_backend, mode, fn, x, w, **kw)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)])
    assert np.isnan(want).any() and np.isinf(want).any()            # the case means something
    finite = np.isfinite(want)
    bound = magnitude(fn, np.nan_to_num(x, posinf=0, neginf=0, nan=0), np.nan_to_num(w, posinf=0, neginf=0, nan=0),
                      **kw)
    assert excess(got[finite], want[finite].astype(np.float64), bound[finite], 2 * ACCUMULATION) <= 0


@pytest.mark.parametrize("mode", ["tf32", "3xtf32"])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backprop_input", "conv2d_backprop_filter"])
@pytest.mark.parametrize("value", [_FLT_MAX, np.nextafter(_FLT_MAX, np.float32(0))])
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_finite_operands_stay_finite_near_float32_max(kernel_backend, launched, mode, op, value, scale):
    # FLT_MAX and the float below it round to inf in TF32; the kernels truncate them instead, and 3xTF32 its
    # small part too, so the result stays finite. Scale 1: the product itself is that value (3xTF32 gave inf:
    # the rounded small part carried big + small to 2^128).
    a = np.zeros((1, 4, 4, 16), np.float32)
    a[0, 1, 2, :] = value
    w = np.zeros((1, 1, 16, 16), np.float32)
    w[0, 0, 0, :] = scale                                 # channel 0 -> every output channel (dgrad: 0 <- every)
    if op == "conv2d":
        got = run_with(kernel_backend, mode, gpuconv.conv2d, a, w, 1, "VALID")
        cells = got[0, 1, 2, :]
    elif op == "conv2d_backprop_filter":
        dy = np.zeros_like(a)
        dy[0, 1, 2, :] = scale                            # one pixel: dw[c, k] = value * scale for every (c, k)
        got = run_with(kernel_backend, mode, gpuconv.conv2d_backprop_filter, a, w.shape, dy, 1, "VALID")
        cells = got
    else:
        a[0, 1, 2, 1:] = 0                                # one term per dx element: scale * value, no overflow
        got = run_with(kernel_backend, mode, gpuconv.conv2d_backprop_input, a.shape, w, a, 1, "VALID")
        cells = got[0, 1, 2, :1]
    assert any("tensorop" in n for n in launched), launched
    assert np.isfinite(got).all()
    assert np.allclose(cells, scale * np.float64(value), rtol=2.0**-9)
    assert np.count_nonzero(got) == cells.size


# ---------------------------------------------------------------------------------------------------------
# the scope of the permission
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["tf32", "3xtf32"])
def test_numpy_backend_ignores_the_mode(mode):
    fn, x, w, kw = data("2d-strided-dilated")
    want = oracle(fn, x, w, **kw)
    with gpuconv.float32_precision(mode):
        assert np.array_equal(oracle(fn, x, w, **kw), want)


@pytest.mark.parametrize("mode", ["tf32", "3xtf32"])
def test_other_ops_and_dtypes_ignore_the_mode(kernel_backend, mode):
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (2, 6, 7, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 3, 8, 12)).astype(np.float32)
    dy = rng.uniform(-1, 1, (2, 6, 7, 12)).astype(np.float32)
    calls = [
        (gpuconv.avg_pool2d, (x, 3, 2, "SAME")),
        (gpuconv.conv2d_backprop_filter, (x.astype(np.float16), w.shape, dy.astype(np.float16), 1, "SAME")),
        (gpuconv.conv2d, (x.astype(np.float16), w.astype(np.float16), 1, "SAME")),
        (gpuconv.conv2d, (x.astype(np.float64), w.astype(np.float64), 1, "SAME")),
    ]
    for fn, args in calls:
        want = run_with(kernel_backend, "ieee", fn, *args)
        assert np.array_equal(run_with(kernel_backend, mode, fn, *args), want), fn.__name__


@pytest.mark.parametrize("case", ["2d-same", "dgrad-2d-strided", "wgrad-2d-strided-split"])
def test_gpus_before_sm80_compute_exact_float32(kernel_backend, launched, monkeypatch, case):
    from gpuconv import backend as B
    monkeypatch.setattr(B._instance(kernel_backend).executor, "compute_capability", lambda array: 75)
    fn, x, w, kw = data(case)
    want = run_with(kernel_backend, "ieee", fn, x, w, **kw)
    del launched[:]
    assert np.array_equal(run_with(kernel_backend, "tf32", fn, x, w, **kw), want)
    assert not any("tensorop" in n for n in launched), launched


@pytest.mark.parametrize("case,tiled", [("3d", "conv_fprop_tiled<float,"), ("transpose-3d", "conv_dgrad_tiled<float,"),
                                        ("wgrad-3d", "conv_wgrad_tiled<float,")])
def test_plans_are_chosen_from_the_mode_in_force(kernel_backend, launched, case, tiled):
    fn, x, w, kw = data(case)
    for mode, passes in (("ieee", None), ("tf32", 1), ("3xtf32", 3)):
        del launched[:]
        run_with(kernel_backend, mode, fn, x, w, **kw)
        if passes is None:
            assert any(tiled in n for n in launched) and not any("tensorop" in n for n in launched), launched
        else:
            assert ran_tensor_cores(case, launched, passes), (mode, launched)


def test_split_k_filter_gradient_reduces_tensor_core_partials(kernel_backend, launched):
    fn, x, dy, kw = data("wgrad-2d-strided-split")
    run_with(kernel_backend, "tf32", fn, x, dy, **kw)
    kernels = [n for n in launched if "nonfinite_flag" not in n]
    assert len(kernels) == 2 and kernels[0].startswith("conv_wgrad_tensorop<") and \
        kernels[1].startswith("conv_wgrad_reduce<float,"), launched
