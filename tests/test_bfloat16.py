"""bfloat16 (ml_dtypes' NumPy dtype): every op on every float sample of tests/opspecs.py, in bfloat16.

The contract (gpuconv/_bfloat16.py): the op runs as float32 on exactly widened copies and its floating results
are rounded to bfloat16 once. Checked three ways: bit for bit against that recipe (the wiring: dtypes, layouts,
tuples, argmax untouched); against the float64 loop reference on the same values (within half a bfloat16 ulp
plus float32's own error; bit for bit where the op only selects); and for special values (NaN, +-0, inf,
subnormals) through max pooling and unpooling. TensorFlow's bfloat16 kernels are compared in test_tf_parity.py.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from opspecs import SPECS, Sample, expected, run_sample, samples_of

BF16 = np.dtype(ml_dtypes.bfloat16)
# The result rounded to bfloat16 (8 significant bits): within 2^-9 of the exact value relative to it; float32's
# own error on sums of a few dozen terms in [-1, 1] stays far below the absolute part.
RTOL, ATOL = 2.0**-8, 1e-5


def _is_float_tensor(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _mapped(sample: Sample, conv, desc: str) -> Sample:
    return Sample(tuple(map(conv, sample.args)), {k: conv(v) for k, v in sample.kwargs.items()}, desc,
                  sample.exact)


def _to_bf16(sample: Sample) -> Sample | None:
    """The sample with every float tensor rounded to bfloat16; None when it has none (integer dtypes)."""
    if not any(_is_float_tensor(a) for a in (*sample.args, *sample.kwargs.values())):
        return None
    return _mapped(sample, lambda a: a.astype(np.float32).astype(BF16) if _is_float_tensor(a) else a,
                   sample.desc + "-bf16")


def _widened(sample: Sample, dtype) -> Sample:
    """The sample with its bfloat16 tensors converted (exactly) to dtype."""
    return _mapped(sample, lambda a: a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype == BF16 else a,
                   sample.desc)


def _bf16_cases() -> list:
    out = []
    for name in SPECS:
        for i, s in enumerate(samples_of(name)):
            b = _to_bf16(s)
            if b is not None:
                out.append(pytest.param(name, b, id=f"{name}-{i}-{s.desc}"))
    return out


CASES = _bf16_cases()


def _outputs(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype == BF16 else a


@pytest.mark.parametrize("name,sample", CASES)
def test_bfloat16_is_the_float32_op_rounded_once(name, sample):
    spec = SPECS[name]
    got = _outputs(run_sample(spec, sample))
    f32 = _outputs(run_sample(spec, _widened(sample, np.float32)))
    assert len(got) == len(f32)
    for g, w in zip(got, f32):
        want = w.astype(BF16) if w.dtype.kind == "f" else w
        assert g.dtype == want.dtype and g.shape == want.shape
        np.testing.assert_array_equal(_bits(g), _bits(want))


@pytest.mark.parametrize("name,sample", CASES)
def test_bfloat16_against_the_float64_loop_reference(name, sample):
    spec = SPECS[name]
    got = _outputs(run_sample(spec, sample))
    want = _outputs(expected(spec, _widened(sample, np.float64)))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if w.dtype.kind != "f":
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
            continue
        assert g.dtype == BF16
        if sample.exact:                       # selection only: the bfloat16 values themselves, bit for bit
            np.testing.assert_array_equal(_bits(g), _bits(w.astype(BF16)))
        else:
            np.testing.assert_allclose(g.astype(np.float64), w, rtol=RTOL, atol=ATOL, equal_nan=True)


SPECIAL = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-40, -1e-40, 3.0e38, -1.0, 2.0**-133, 1.0, 0.5],
                   np.float32).astype(BF16)


def test_special_values_pass_max_pooling_and_unpooling_bit_for_bit():
    """NaN, both zeros, infinities and bfloat16 subnormals are selected as their own bits and scattered as
    0 + value (the windows are 2x1 over a shuffled tiling of SPECIAL: the scan rule meets many kinds of pair)."""
    rng = np.random.default_rng(5)
    x = rng.permutation(np.tile(SPECIAL, 8)).reshape(2, 8, 3, 2)
    y, am = gpuconv.max_pool_with_argmax(x, (2, 1), (2, 1), "VALID")
    flat = x.reshape(2, -1)
    picked = np.stack([flat[n][am[n].ravel()] for n in range(2)]).reshape(y.shape)
    np.testing.assert_array_equal(_bits(y), _bits(picked))
    np.testing.assert_array_equal(_bits(gpuconv.max_pool2d(x, (2, 1), (2, 1), "VALID")), _bits(y))
    back = gpuconv.max_unpool(y, am, x.shape)
    assert back.dtype == BF16
    added = (np.float32(0) + y.astype(np.float32)).astype(BF16)     # updates are added to zeros: -0 gives +0
    np.testing.assert_array_equal(_bits(gpuconv.max_unpool_grad(back, am)), _bits(added))


def test_rounding_is_to_nearest_even_once():
    """1x1 convs summing exactly representable float32 values: 1 + 3 * 2^-9 rounds up to 1 + 2^-7 (rounding
    each partial sum to bfloat16 would give 1: every 2^-9 is below half an ulp), and the ties 1 + 2^-8 and
    1 + 3 * 2^-8 go to the even neighbours 1 and 1 + 2^-6."""
    rows = [[1.0, 2.0**-9, 2.0**-9, 2.0**-9], [1.0, 2.0**-8, 0.0, 0.0], [1.0 + 2.0**-7, 2.0**-8, 0.0, 0.0]]
    x = np.array(rows, np.float32).astype(BF16).reshape(3, 1, 1, 4)
    w = np.ones((1, 1, 4, 1), BF16)
    y = gpuconv.conv2d(x, w, 1, "VALID").astype(np.float64).ravel()
    assert y.tolist() == [1.0 + 2.0**-7, 1.0, 1.0 + 2.0**-6]


def test_bfloat16_range_is_kept():
    """bfloat16 has float32's exponent range: values near 2^100 and 2^-100 (far outside float16's) keep it through
    the widening, a conv of them is the float64 result within bfloat16 rounding."""
    rng = np.random.default_rng(7)
    x = (rng.uniform(-1, 1, (1, 4, 4, 3)) * 2.0**100).astype(np.float32).astype(BF16)
    w = (rng.uniform(-1, 1, (2, 2, 3, 2)) * 2.0**-100).astype(np.float32).astype(BF16)
    want = gpuconv.conv2d(x.astype(np.float64), w.astype(np.float64), 1, "VALID")
    np.testing.assert_allclose(gpuconv.conv2d(x, w, 1, "VALID").astype(np.float64), want, rtol=RTOL, atol=ATOL)


def test_bfloat16_inputs_are_left_alone_and_results_are_new_arrays():
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (2, 5, 5, 3)).astype(np.float32).astype(BF16)
    w = rng.uniform(-1, 1, (3, 3, 3, 4)).astype(np.float32).astype(BF16)
    x0, w0 = x.copy(), w.copy()
    y = gpuconv.conv2d(x, w, 1, "SAME", data_format="NHWC")
    np.testing.assert_array_equal(_bits(x), _bits(x0))
    np.testing.assert_array_equal(_bits(w), _bits(w0))
    assert not np.shares_memory(y, x) and not np.shares_memory(y, w)
    nchw = gpuconv.conv2d(x.transpose(0, 3, 1, 2), w, 1, "SAME", data_format="NCHW")
    assert nchw.dtype == BF16
    np.testing.assert_array_equal(_bits(nchw.transpose(0, 2, 3, 1)), _bits(y))


def test_bfloat16_errors_name_the_argument():
    x = np.zeros((1, 4, 4, 2), BF16)
    with pytest.raises(TypeError, match=r"input, filters: expected one dtype .* input: bfloat16, filters: float32"):
        gpuconv.conv2d(x, np.zeros((1, 1, 2, 2), np.float32), 1, "SAME")
    with pytest.raises(TypeError, match=r"argmax: expected dtype in \(int32, int64\), got dtype bfloat16"):
        gpuconv.max_unpool(np.zeros((1, 2, 2, 2), BF16), np.zeros((1, 2, 2, 2), BF16), (1, 4, 4, 2))
    with pytest.raises(TypeError, match=r"input: expected dtype in \(float16, bfloat16, float32, float64\), "
                                        r"got dtype uint32"):
        gpuconv.avg_pool2d(np.zeros((1, 4, 4, 2), np.uint32), 2, 2, "VALID")
    swapped = x.astype(BF16.newbyteorder(">"))
    with pytest.raises(TypeError, match=r"input: expected dtype in \(.*bfloat16.*\) in native byte order"):
        gpuconv.max_pool2d(swapped, 2, 2, "VALID")


@pytest.mark.parametrize("name", ["conv2d", "conv2d_backprop_filter", "conv3d_transpose", "max_pool_with_argmax",
                                  "avg_pool2d", "max_unpool"])
def test_bfloat16_on_the_kernels_is_their_float32_result_rounded(name, kernel_backend):
    """The CUDA kernels see float32 only: a kernel backend's bfloat16 result is its own float32 result rounded
    (on a GPU: CuPy's bfloat16 arrays, cast on the device)."""
    spec = SPECS[name]
    for s in samples_of(name)[:3]:
        b = _to_bf16(s)
        if b is None:
            continue
        got = _outputs(run_sample(spec, b, kernel_backend))
        f32 = _outputs(run_sample(spec, _widened(b, np.float32), kernel_backend))
        for g, w in zip(got, f32):
            want = w.astype(BF16) if w.dtype.kind == "f" else w
            assert g.dtype == want.dtype
            np.testing.assert_array_equal(_bits(g), _bits(want))


def test_nan_payloads_survive_the_exact_ops():
    """Max pooling, argmax values and the gather gradient return their input cells' bits, NaN payloads
    included, as for float16 and float32 (ml_dtypes' narrowing cast alone returned the canonical 0x7fc0 for
    every NaN: found by a fuzz run)."""
    bits = np.array([0x7FCB, 0x3F80, 0x7F81, 0xFFC5], np.uint16)     # payload qNaN, 1.0, sNaN, negative qNaN
    x = bits.view(ml_dtypes.bfloat16).reshape(1, 2, 2, 1)
    y = gpuconv.max_pool2d(x, 1, 1, "VALID")                           # 1x1 windows: the input itself
    np.testing.assert_array_equal(y.view(np.uint16).ravel(), bits)
    v, a = gpuconv.max_pool_with_argmax(x[:, :1], (1, 2), (1, 2), "VALID")   # [NaN, 1.0]: the first cell
    assert v.view(np.uint16).ravel().tolist() == [0x7FCB] and a.ravel().tolist() == [0]
    g = gpuconv.max_unpool_grad(x, np.array([0, 2], np.int64).reshape(1, 1, 2, 1))
    assert g.view(np.uint16).ravel().tolist() == [0x7FCB, 0x7F81]


def test_a_nan_with_its_payload_in_the_lower_half_stays_a_nan():
    """A float32 NaN whose payload bits all lie in the lower 16 (as arithmetic may make) narrows to a quiet
    NaN of its sign, not to the infinity its upper half reads as; ordinary values are rounded as before."""
    from gpuconv._bfloat16 import _narrow
    wide = np.array([0x7F800001, 0xFF800003, 0x3F808000, 0x7F800000], np.uint32).view(np.float32)
    got = _narrow(wide, np.dtype(ml_dtypes.bfloat16)).view(np.uint16)
    # 0x3F808000 is 1 + 2^-8, halfway between 1.0 (0x3F80) and the next bfloat16: ties to even, 0x3F80.
    assert got.tolist() == [0x7FC0, 0xFFC0, 0x3F80, 0x7F80]
