"""Every public op against the scalar-loop reference over the opspecs samples, written once, run per backend.

Backends: "numpy" here. Kernel tests reuse the same cases with their backend, e.g.

    from opspecs import SPECS, cases, check_sample
    @pytest.mark.emulator
    @pytest.mark.parametrize("name,sample", cases())
    def test_emulator_vs_reference(name, sample):
        check_sample(SPECS[name], sample, backend="emulator")

(or `api_backend_params()` below, which adds the marks).
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from opspecs import SPECS, cases, check_sample, run_sample, samples_of

BACKENDS = ["numpy"]


def api_backend_params(names=("numpy",)):
    """pytest params for backends, with the emulator/gpu marks that conftest uses to skip or require them."""
    marks = {"emulator": [pytest.mark.emulator], "cuda": [pytest.mark.gpu], "numpy": []}
    return [pytest.param(n, marks=marks[n], id=n) for n in names]


@pytest.mark.parametrize("backend", api_backend_params(BACKENDS))
@pytest.mark.parametrize("name,sample", cases())
def test_op_matches_loop_reference(backend, name, sample):
    check_sample(SPECS[name], sample, backend)


def test_every_public_op_has_a_spec():
    ops = set(gpuconv.__all__) - {"use_backend", "get_backend", "float32_precision", "get_float32_precision",
                                     "info"}
    assert ops == set(SPECS), ops ^ set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_samples_cover_the_op(name):
    """Each op's samples hold float16/32/64 tensors, and an integer tensor where the op accepts integers."""
    first = [next(a for a in s.args if isinstance(a, np.ndarray) and a.ndim >= 4) for s in samples_of(name)]
    dtypes = {np.dtype(a.dtype) for a in first}     # the op's main tensor (never the argmax)
    assert {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)} <= dtypes, dtypes
    if any(np.dtype(d).kind in "iu" for d in SPECS[name].dtypes):
        assert any(d.kind in "iu" for d in dtypes), dtypes


@pytest.mark.parametrize("name", sorted(SPECS))
def test_result_is_a_new_array_and_inputs_are_unmodified(name):
    """Inputs are never modified; the result does not alias an input."""
    for sample in samples_of(name)[:3]:
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in sample.args]
        out = run_sample(SPECS[name], sample)
        outs = out if isinstance(out, tuple) else (out,)
        for a, b in zip(sample.args, before):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
                for o in outs:
                    assert not np.shares_memory(a, o)


def test_channels_first_results_are_views_of_channels_last_arrays():
    """The README's layout note: an NCHW / NCDHW result is the transposed view of a C-contiguous channels-last
    array (so np.ascontiguousarray copies it), an NHWC one is C-contiguous itself."""
    x = np.ones((1, 3, 6, 5), np.float32)
    w = np.ones((3, 3, 3, 4), np.float32)
    y = gpuconv.conv2d(x, w, 1, "SAME", data_format="NCHW")
    assert y.shape == (1, 4, 6, 5) and not y.flags.c_contiguous and y.transpose(0, 2, 3, 1).flags.c_contiguous
    y3 = gpuconv.max_pool3d(np.ones((1, 2, 4, 4, 4), np.float32), 2, 2, "VALID", data_format="NCDHW")
    assert y3.shape == (1, 2, 2, 2, 2) and y3.transpose(0, 2, 3, 4, 1).flags.c_contiguous
    assert gpuconv.conv2d(x.transpose(0, 2, 3, 1), w, 1, "SAME").flags.c_contiguous


def test_float16_accumulates_in_float32():
    # 4096 ones summed in float16 would stop at 2048; accumulated in float32 the result is exact.
    x = np.ones((1, 1, 4096, 1), np.float16)
    w = np.ones((1, 4096, 1, 1), np.float16)
    y = gpuconv.conv2d(x, w, 1, "VALID")
    assert y.dtype == np.float16 and float(y[0, 0, 0, 0]) == 4096.0
    dw = gpuconv.conv2d_backprop_filter(x, (1, 1, 1, 1), np.ones((1, 1, 4096, 1), np.float16), 1, "VALID")
    assert float(dw.ravel()[0]) == 4096.0
    a = gpuconv.avg_pool2d(np.full((1, 64, 64, 1), 1.0, np.float16) * np.float16(0.1), 64, 64, "VALID")
    assert abs(float(a.ravel()[0]) - 0.1) < 1e-3


def test_deterministic_run_to_run():
    for name in ("conv2d_backprop_filter", "max_unpool", "avg_pool_grad"):
        s = samples_of(name)[0]
        a, b = run_sample(SPECS[name], s), run_sample(SPECS[name], s)
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (2, 6, 6, 4)).astype(np.float32)[:, ::2, :, 1:]   # strided view
    w = rng.uniform(-1, 1, (2, 2, 3, 2)).astype(np.float32)
    xc = np.ascontiguousarray(x)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, 1, "SAME"), gpuconv.conv2d(xc, w, 1, "SAME"))
    np.testing.assert_array_equal(gpuconv.max_pool2d(x, 2, 1, "SAME"), gpuconv.max_pool2d(xc, 2, 1, "SAME"))
