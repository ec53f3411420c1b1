"""The NumPy backend's Winograd F(2x2, 3x3) path (numpy_backend/_winograd.py) against the direct path.

Reference: the same op in float64, which never takes the Winograd path (it is checked against the loop reference
and TensorFlow elsewhere). Bound on random normal data: float32 rounding of the transforms and of the sums,
|error| <= 16 eps x the same op on |operands| (a wrong transform gives errors of the order of the values
themselves). On values spread over many decades only the normwise bound holds (`_normwise_scales`).
Every test asserts that the Winograd path ran (a spy on _winograd.correlate / wgrad), so none passes vacuously.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import gemm_chunks_on_pool

import gpuconv as gc
from gpuconv.geometry import conv_problem
from gpuconv.numpy_backend import _parallel, _winograd

RNG = np.random.default_rng(11)
EPS = np.finfo(np.float32).eps


def _count(monkeypatch, module, fprop_names: tuple, wgrad_name: str) -> dict:
    """Spy on a Winograd module: counts of fprop-like calls that succeeded (True) and wgrads that returned dw."""
    calls = {name: 0 for name in fprop_names + (wgrad_name,)}

    def counted(name, fn, ok):
        def run(*args):
            result = fn(*args)
            calls[name] += ok(result)
            return result
        return run

    for name in fprop_names:
        monkeypatch.setattr(module, name, counted(name, getattr(module, name), bool))
    monkeypatch.setattr(module, wgrad_name, counted(wgrad_name, getattr(module, wgrad_name),
                                                    lambda dw: dw is not None))
    return calls


@pytest.fixture
def spy(monkeypatch):
    """Counts of stride-1 Winograd correlations (fprop, dgrad) and wgrads that ran to the end."""
    return _count(monkeypatch, _winograd, ("correlate",), "wgrad")


def _ops(x, w, dy, padding, fmt=None):
    """fprop, dgrad, wgrad of one stride-1 convolution: 2-D for a 4-D x, 3-D for a 5-D one."""
    three = x.ndim == 5
    conv, dgrad, wgrad = ((gc.conv3d, gc.conv3d_backprop_input, gc.conv3d_backprop_filter) if three else
                          (gc.conv2d, gc.conv2d_backprop_input, gc.conv2d_backprop_filter))
    fmt = fmt or ("NDHWC" if three else "NHWC")
    return (conv(x, w, 1, padding, data_format=fmt), dgrad(x.shape, w, dy, 1, padding, data_format=fmt),
            wgrad(x, w.shape, dy, 1, padding, data_format=fmt))


def _check_close(got, x, w, dy, padding, fmt=None):
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    want = _ops(x64, w64, dy64, padding, fmt)
    scale = _ops(np.abs(x64), np.abs(w64), np.abs(dy64), padding, fmt)
    for name, g, r, s in zip(("fprop", "dgrad", "wgrad"), got, want, scale):
        assert g.dtype == np.float32 and g.shape == r.shape, name
        err = np.abs(g - r)
        assert (err <= 16 * EPS * s + 1e-30).all(), (name, float((err / (s + 1e-30)).max() / EPS))


CASES = [
    # (N, H, W, C, K), padding
    ((2, 8, 10, 32, 40), "SAME"),
    ((1, 10, 12, 32, 32), "VALID"),
    ((3, 16, 6, 48, 33), "SAME"),
    ((2, 9, 4, 32, 32), [[0, 0], [2, 1], [0, 2], [0, 0]]),     # odd H, asymmetric explicit padding
    ((1, 5, 5, 32, 32), [[0, 0], [3, 0], [0, 3], [0, 0]]),     # pad 3: dgrad reads dy with a negative pad
    ((2, 6, 8, 32, 64), [[0, 0], [0, 0], [1, 1], [0, 0]]),
]


def _random_problem(shape, padding, stride: int):
    """Random float32 x (N, H, W, C) and w (3, 3, C, K), and the canonical problem of their 2-D convolution."""
    N, H, W, C, K = shape
    x, w = RNG.standard_normal((N, H, W, C), np.float32), RNG.standard_normal((3, 3, C, K), np.float32)
    p = conv_problem((N, 1, H, W, C), (1, 3, 3, C, K), (1, stride, stride), (1, 1, 1),
                     padding if isinstance(padding, str) else [(0, 0)] + [tuple(v) for v in padding[1:3]])
    return x, w, p


def _per_worker_count(monkeypatch, fn) -> list:
    """fn() with 1, 2 and 3 workers, its chunks on the pool whatever BLAS's threads."""
    gemm_chunks_on_pool(monkeypatch, lambda: _parallel.workers() > 1)
    results = []
    try:
        for n in (1, 2, 3):
            _parallel.set_num_threads(n)
            results.append(fn())
    finally:
        _parallel.set_num_threads(None)
    return results


@pytest.mark.parametrize("shape,padding", CASES)
def test_winograd_matches_direct(spy, shape, padding):
    x, w, p = _random_problem(shape, padding, 1)
    assert _winograd.applies(p, np.float32)
    dy = RNG.standard_normal((p.N, p.P, p.Q, p.K), np.float32)
    got = _ops(x, w, dy, padding)
    assert spy == {"correlate": 2, "wgrad": 1}
    _check_close(got, x, w, dy, padding)


def test_winograd_nchw_and_conv3d_depth_one_filter(spy):
    x, w = RNG.standard_normal((2, 32, 8, 6), np.float32), RNG.standard_normal((3, 3, 32, 32), np.float32)
    dy = RNG.standard_normal((2, 32, 8, 6), np.float32)
    _check_close(_ops(x, w, dy, "SAME", "NCHW"), x, w, dy, "SAME", "NCHW")
    assert spy == {"correlate": 2, "wgrad": 1}
    # conv3d with a 1x3x3 filter: depth slices are items of the 2-D correlation.
    x3, w3 = RNG.standard_normal((2, 3, 6, 8, 32), np.float32), RNG.standard_normal((1, 3, 3, 32, 32), np.float32)
    got = gc.conv3d(x3, w3, 1, "SAME")
    want = gc.conv3d(x3.astype(np.float64), w3.astype(np.float64), 1, "SAME")
    scale = gc.conv3d(np.abs(x3).astype(np.float64), np.abs(w3).astype(np.float64), 1, "SAME")
    assert (np.abs(got - want) <= 16 * EPS * scale).all()
    assert spy["correlate"] == 3


def test_small_chunks_and_threads(spy, monkeypatch):
    """Chunks of a few tile rows (budget forced down) give the same values within rounding, and the result does
    not depend on the worker count (bit for bit)."""
    x, w = RNG.standard_normal((3, 20, 14, 32), np.float32), RNG.standard_normal((3, 3, 32, 48), np.float32)
    dy = RNG.standard_normal((3, 20, 14, 48), np.float32)
    whole = _ops(x, w, dy, "SAME")
    p = conv_problem((3, 1, 20, 14, 32), (1, 3, 3, 32, 48), (1, 1, 1), (1, 1, 1), "SAME")
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", _winograd._chunk_bytes(1, 3, 7, 48, 48, True))
    assert len(_winograd._chunks(3, 10, 7, lambda nb, rb: _winograd._chunk_bytes(nb, rb, 7, 32, 48, False))) > 3
    results = _per_worker_count(monkeypatch, lambda: _ops(x, w, dy, "SAME"))
    assert spy == {"correlate": 8, "wgrad": 4}
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    _check_close(results[0], x, w, dy, "SAME")
    for a, b in zip(whole, results[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert _winograd.applies(p, np.float32)


def test_not_applied_outside_its_conditions(monkeypatch):
    def prob(x=(2, 1, 8, 8, 32), w=(1, 3, 3, 32, 32), stride=1, dilation=1, padding="SAME"):
        return conv_problem(x, w, (stride,) * 3, (dilation,) * 3, padding)
    assert _winograd.applies(prob(), np.float32)
    assert not _winograd.applies(prob(), np.float64)
    assert not _winograd.applies(prob(), np.float16)
    assert not _winograd.applies(prob(stride=2), np.float32)
    assert not _winograd.applies(prob(dilation=2), np.float32)
    assert not _winograd.applies(prob(w=(1, 5, 5, 32, 32)), np.float32)
    assert _winograd.applies(prob(w=(3, 3, 3, 32, 32)), np.float32)                   # depth taps: summed directly
    assert not _winograd.applies(conv_problem((2, 6, 8, 8, 32), (3, 3, 3, 32, 32), (1, 1, 1), (2, 1, 1), "SAME"),
                                 np.float32)                                          # depth dilation
    assert not _winograd.applies(prob(w=(3, 3, 3, 32, 32), stride=2), np.float32)
    assert not _winograd.applies(prob(w=(1, 3, 3, 16, 32)), np.float32)               # grouped (C = 32)
    assert not _winograd.applies(prob(x=(2, 1, 8, 8, 16), w=(1, 3, 3, 16, 32)), np.float32)   # few channels
    assert not _winograd.applies(prob(x=(2, 1, 5, 5, 32)), np.float32)                # 5x5: too much waste
    assert _winograd.applies(prob(x=(2, 1, 7, 7, 32)), np.float32)                    # 7x7: 0.58 of direct's work
    big = (1, 3, 3, 512, 512)                                                         # U: 16 MiB
    assert not _winograd.applies(prob(x=(1, 1, 8, 8, 512), w=big), np.float32)        # 16 tiles
    assert _winograd.applies(prob(x=(2, 1, 8, 8, 512), w=big), np.float32)            # 32 tiles
    assert _winograd.applies(prob(x=(1, 1, 8, 8, 256), w=(1, 3, 3, 256, 256)), np.float32)    # U: 4 MiB
    monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
    assert not _winograd.applies(prob(), np.float32)
    monkeypatch.delenv("GPUCONV_WINOGRAD")
    from gpuconv.numpy_backend import _window
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 2**16)                              # one tile row too big
    assert not _winograd.applies(prob(x=(1, 1, 8, 600, 32)), np.float32)


def test_non_finite_inputs_give_the_direct_results(spy, monkeypatch):
    """An inf that direct summation keeps in its outputs meets another inf inside a Winograd tile (inf - inf):
    such calls are redone directly, so infs and NaNs land exactly where the direct path puts them."""
    x = np.abs(RNG.standard_normal((2, 8, 8, 32), np.float32))
    w = np.abs(RNG.standard_normal((3, 3, 32, 32), np.float32))
    dy = RNG.standard_normal((2, 8, 8, 32), np.float32)
    x[0, 3, 3, 5] = np.inf
    x[1, 6, 2, 0] = np.nan
    dy[1, 0, 0, 3] = -np.inf
    got = _same_bits_as_direct(monkeypatch, spy, {"correlate": 0, "wgrad": 0}, x, w, dy)
    assert np.isinf(got[0]).any() and np.isnan(got[0]).any()


def _same_bits_as_direct(monkeypatch, spy, gave_up: dict, x, w, dy) -> tuple:
    """_ops(x, w, dy, "SAME") with Winograd allowed (the spy shows it gave up: gave_up) and with it off: the same
    bits, and no NumPy warning on either path (IEEE results)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _ops(x, w, dy, "SAME")
        assert spy == gave_up
        monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
        want = _ops(x, w, dy, "SAME")
    for g, r in zip(got, want):
        assert g.tobytes() == r.tobytes()
    return got


def test_overflow_inside_the_transforms_falls_back(spy):
    """Values near float32's limit overflow in B^T d B (sums of two cells) but not in direct products with a
    small filter: the call is redone directly and stays finite, with no warning from the abandoned pass."""
    big = np.float32(2.5e38)
    x = np.where(RNG.random((1, 6, 6, 32)) < 0.5, big, -big).astype(np.float32)
    w = (RNG.standard_normal((3, 3, 32, 32)) * 1e-6).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = gc.conv2d(x, w, 1, "VALID")
    assert spy["correlate"] == 0
    assert np.isfinite(y).all()
    want = gc.conv2d(x.astype(np.float64), w.astype(np.float64), 1, "VALID")
    scale = gc.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), 1, "VALID")
    assert (np.abs(y - want) <= 16 * EPS * scale).all()


@pytest.mark.tf
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_winograd_matches_tensorflow(spy, padding):
    """TensorFlow's CPU kernels as an independent oracle on Winograd-sized layers (fprop, both gradients)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    x = RNG.uniform(-1, 1, (2, 12, 10, 48)).astype(np.float32)
    w = RNG.uniform(-1, 1, (3, 3, 48, 64)).astype(np.float32)
    y = gc.conv2d(x, w, 1, padding)
    dy = RNG.uniform(-1, 1, y.shape).astype(np.float32)
    got = (y, gc.conv2d_backprop_input(x.shape, w, dy, 1, padding),
           gc.conv2d_backprop_filter(x, w.shape, dy, 1, padding))
    assert spy == {"correlate": 2, "wgrad": 1}
    want = (tf.nn.conv2d(x, w, 1, padding).numpy(),
            tf.compat.v1.nn.conv2d_backprop_input(x.shape, w, dy, [1, 1, 1, 1], padding).numpy(),
            tf.compat.v1.nn.conv2d_backprop_filter(x, w.shape, dy, [1, 1, 1, 1], padding).numpy())
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# filters with depth taps (conv3d 3x3x3): correlate_depth and the depth wgrad
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def spy3(monkeypatch):
    return _count(monkeypatch, _winograd, ("correlate_depth",), "wgrad")


DEPTH_CASES = [
    # x (N, D, H, W, C), w (T, 3, 3, C, K), padding
    ((2, 5, 8, 10, 32), (3, 3, 3, 32, 40), "SAME"),
    ((1, 6, 10, 8, 32), (3, 3, 3, 32, 32), "VALID"),
    ((2, 6, 9, 6, 40), (2, 3, 3, 40, 32), [[0, 0], [1, 0], [2, 1], [0, 2], [0, 0]]),   # even T, asymmetric
    ((1, 4, 6, 8, 32), (3, 3, 3, 32, 32), [[0, 0], [2, 2], [1, 1], [1, 1], [0, 0]]),   # depth pad 2: dgrad pad 0
    ((1, 1, 8, 8, 32), (3, 3, 3, 32, 32), "SAME"),        # one plane: two depth taps meet only padding
]


def _depth_problem(xs, ws, padding):
    x, w = RNG.standard_normal(xs, np.float32), RNG.standard_normal(ws, np.float32)
    p = conv_problem(xs, ws, (1, 1, 1), (1, 1, 1),
                     padding if isinstance(padding, str) else [tuple(v) for v in padding[1:4]])
    return x, w, RNG.standard_normal(p.y_shape, np.float32), p


@pytest.mark.parametrize("xs,ws,padding", DEPTH_CASES)
def test_depth_taps_match_direct(spy3, xs, ws, padding):
    """Each output plane's depth taps in one GEMM per tile component (fprop, dgrad) and one GEMM per depth tap
    (wgrad), within the same bound as the 2-D path; a tap that meets only padding has an exactly zero gradient."""
    x, w, dy, p = _depth_problem(xs, ws, padding)
    assert _winograd.applies(p, np.float32)
    got = _ops(x, w, dy, padding)
    assert spy3 == {"correlate_depth": 2, "wgrad": 1}
    _check_close(got, x, w, dy, padding)
    if xs[1] == 1:
        assert (got[2][[0, 2]] == 0).all() and np.count_nonzero(got[2][1]) == 9 * 32 * 32


def test_depth_taps_ncdhw_chunks_and_threads(spy3, monkeypatch):
    """NCDHW, and chunks of one plane and a few tile rows (budget forced down): within the bound, and the same
    bits for 1, 2 and 3 workers."""
    x, w, dy, p = _depth_problem((2, 4, 12, 10, 32), (3, 3, 3, 32, 48), "SAME")
    to_ncdhw = (0, 4, 1, 2, 3)
    xc, dyc = x.transpose(to_ncdhw).copy(), dy.transpose(to_ncdhw).copy()
    _check_close(_ops(xc, w, dyc, "SAME", "NCDHW"), xc, w, dyc, "SAME", "NCDHW")
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", _winograd._depth_chunk_bytes(1, 2, 5, 3, 48, 48, False))
    size = lambda nd, rb: _winograd._depth_chunk_bytes(nd, rb, 5, 3, 32, 48, False)      # noqa: E731
    chunks = _winograd._depth_chunks(2, 4, 6, 5, size)
    assert len(chunks) > 8 and all(d1 - d0 == 1 for _, (d0, d1), _ in chunks)
    results = _per_worker_count(monkeypatch, lambda: _ops(x, w, dy, "SAME"))
    assert spy3 == {"correlate_depth": 2 + 6, "wgrad": 1 + 3}
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    _check_close(results[0], x, w, dy, "SAME")


def test_depth_taps_non_finite_give_the_direct_results(spy3, monkeypatch):
    x, w, dy, p = _depth_problem((1, 4, 6, 6, 32), (3, 3, 3, 32, 32), "SAME")
    x[0, 1, 2, 3, 4] = np.inf
    dy[0, 2, 1, 1, 0] = np.nan
    got = _same_bits_as_direct(monkeypatch, spy3, {"correlate_depth": 0, "wgrad": 0}, x, w, dy)
    assert np.isinf(got[0]).any() and np.isnan(got[1]).any()


# ---------------------------------------------------------------------------------------------------------
# stride 2 (fprop and wgrad): numpy_backend/_winograd_s2.py
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def spy_s2(monkeypatch):
    from gpuconv.numpy_backend import _winograd_s2
    return _count(monkeypatch, _winograd_s2, ("fprop", "dgrad"), "wgrad")


def _bounded(got, want, scale):
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got - want)
    assert (err <= 16 * EPS * scale + 1e-30).all(), float((err / (scale + 1e-30)).max() / EPS)


def _check_s2(x, w, padding, got, dy=None, dw=None):
    """got = stride-2 fprop (and dw = its filter gradient for dy) within the bound of the float64 results."""
    x64, w64, ax, aw = x.astype(np.float64), w.astype(np.float64), np.abs(x).astype(np.float64), np.abs(w)
    _bounded(got, gc.conv2d(x64, w64, 2, padding), gc.conv2d(ax, aw.astype(np.float64), 2, padding))
    if dw is not None:
        dy64, ady = dy.astype(np.float64), np.abs(dy).astype(np.float64)
        _bounded(dw, gc.conv2d_backprop_filter(x64, w.shape, dy64, 2, padding),
                 gc.conv2d_backprop_filter(ax, w.shape, ady, 2, padding))


S2_CASES = [
    ((2, 12, 12, 32, 40), "SAME"),
    ((1, 13, 9, 32, 32), "VALID"),                           # 6 x 4 outputs, asymmetric SAME-like reads
    ((1, 12, 54, 32, 32), "SAME"),                            # 6 x 27: a partial last tile column
    ((2, 12, 12, 48, 32), [[0, 0], [1, 1], [0, 1], [0, 0]]),  # explicit, asymmetric
    ((2, 11, 11, 32, 32), [[0, 0], [1, 2], [2, 1], [0, 0]]),
]


@pytest.mark.parametrize("shape,padding", S2_CASES)
def test_stride2_winograd_matches_direct(spy_s2, shape, padding):
    from gpuconv.numpy_backend import _winograd_s2
    x, w, p = _random_problem(shape, padding, 2)
    assert _winograd_s2.applies(p, np.float32)
    y = gc.conv2d(x, w, 2, padding)
    dy = RNG.standard_normal(y.shape, np.float32)
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 2, padding)
    assert spy_s2 == {"fprop": 1, "dgrad": 0, "wgrad": 1}
    _check_s2(x, w, padding, y, dy, dw)


def test_stride2_conditions_chunks_threads_and_nonfinite(spy_s2, monkeypatch):
    from gpuconv.numpy_backend import _winograd_s2

    def prob(x=(2, 1, 16, 16, 32), w=(1, 3, 3, 32, 32), stride=(1, 2, 2)):
        return conv_problem(x, w, stride, (1, 1, 1), "SAME")
    assert _winograd_s2.applies(prob(), np.float32)
    assert not _winograd_s2.applies(prob(), np.float64)
    assert not _winograd_s2.applies(prob(stride=(1, 1, 1)), np.float32)
    assert not _winograd_s2.applies(prob(stride=(1, 2, 1)), np.float32)
    assert not _winograd_s2.applies(prob(x=(2, 1, 14, 14, 32)), np.float32)     # 7 x 7 outputs: no gain
    assert not _winograd_s2.applies(prob(x=(2, 1, 16, 16, 16), w=(1, 3, 3, 16, 32)), np.float32)
    big = (1, 3, 3, 256, 256)                                                      # U: 6.25 MiB
    assert not _winograd_s2.applies(prob(x=(2, 1, 16, 16, 256), w=big), np.float32)      # 32 tiles
    assert _winograd_s2.applies(prob(x=(4, 1, 16, 16, 256), w=big), np.float32)          # 64 tiles
    assert _winograd_s2.applies_dgrad(prob(x=(1, 1, 16, 16, 256), w=big), np.float32)    # dgrad gains anyway
    monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
    assert not _winograd_s2.applies(prob(), np.float32)
    monkeypatch.delenv("GPUCONV_WINOGRAD")

    x, w = RNG.standard_normal((3, 24, 20, 32), np.float32), RNG.standard_normal((3, 3, 32, 40), np.float32)
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", _winograd_s2._chunk_bytes(1, 2, 5, 32, 40))
    dy = RNG.standard_normal((3, 12, 10, 40), np.float32)
    results = _per_worker_count(
        monkeypatch, lambda: (gc.conv2d(x, w, 2, "SAME"), gc.conv2d_backprop_filter(x, w.shape, dy, 2, "SAME")))
    assert spy_s2 == {"fprop": 3, "dgrad": 0, "wgrad": 3}
    for y, dw in results[1:]:
        assert y.tobytes() == results[0][0].tobytes() and dw.tobytes() == results[0][1].tobytes()
    _check_s2(x, w, "SAME", results[0][0], dy, results[0][1])

    xs = np.abs(x)
    xs[0, 5, 5, 3] = np.inf
    xs[1, 9, 2, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = (gc.conv2d(xs, np.abs(w), 2, "SAME"), gc.conv2d_backprop_filter(xs, w.shape, dy, 2, "SAME"))
        monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
        want = (gc.conv2d(xs, np.abs(w), 2, "SAME"), gc.conv2d_backprop_filter(xs, w.shape, dy, 2, "SAME"))
    assert spy_s2 == {"fprop": 3, "dgrad": 0, "wgrad": 3}      # the non-finite calls went direct
    for g, r in zip(got, want):
        assert g.tobytes() == r.tobytes()
    assert np.isinf(got[0]).any() and np.isnan(got[0]).any() and np.isnan(got[1]).any()


def test_stride2_nchw_and_conv3d_depth_one_filter(spy_s2):
    """NCHW inputs and conv3d with a 1x3x3 filter, strides (1, 2, 2), fprop and dgrad: depth slices are items."""
    x, w = RNG.standard_normal((2, 32, 12, 8), np.float32), RNG.standard_normal((3, 3, 32, 32), np.float32)
    y = gc.conv2d(x, w, 2, "SAME", data_format="NCHW")
    want = gc.conv2d(x.astype(np.float64), w.astype(np.float64), 2, "SAME", data_format="NCHW")
    scale = gc.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), 2, "SAME", data_format="NCHW")
    _bounded(y, want, scale)
    x3, w3 = RNG.standard_normal((2, 3, 12, 8, 32), np.float32), RNG.standard_normal((1, 3, 3, 32, 32), np.float32)
    y3 = gc.conv3d(x3, w3, [1, 1, 2, 2, 1], "SAME")
    want3 = gc.conv3d(x3.astype(np.float64), w3.astype(np.float64), [1, 1, 2, 2, 1], "SAME")
    scale3 = gc.conv3d(np.abs(x3).astype(np.float64), np.abs(w3).astype(np.float64), [1, 1, 2, 2, 1], "SAME")
    _bounded(y3, want3, scale3)
    assert spy_s2["fprop"] == 2
    # dgrad: conv3d_backprop_input (depth slices as items) and conv2d_transpose on NCHW.
    dy3 = RNG.standard_normal(y3.shape, np.float32)
    _bounded(gc.conv3d_backprop_input(x3.shape, w3, dy3, [1, 1, 2, 2, 1], "SAME"),
             gc.conv3d_backprop_input(x3.shape, w3.astype(np.float64), dy3.astype(np.float64), [1, 1, 2, 2, 1], "SAME"),
             gc.conv3d_backprop_input(x3.shape, np.abs(w3).astype(np.float64), np.abs(dy3).astype(np.float64),
                                      [1, 1, 2, 2, 1], "SAME"))
    dy = RNG.standard_normal(y.shape, np.float32)

    def transpose(a, f):
        return gc.conv2d_transpose(a, f, x.shape, 2, "SAME", data_format="NCHW")
    _bounded(transpose(dy, w), transpose(dy.astype(np.float64), w.astype(np.float64)),
             transpose(np.abs(dy).astype(np.float64), np.abs(w).astype(np.float64)))
    assert spy_s2["dgrad"] == 2


def _dgrad_s2(x_shape, w, dy, padding):
    return gc.conv2d_backprop_input(x_shape, w, dy, 2, padding)


def _check_dgrad_s2(x_shape, w, dy, padding, got):
    _bounded(got, _dgrad_s2(x_shape, w.astype(np.float64), dy.astype(np.float64), padding),
             _dgrad_s2(x_shape, np.abs(w).astype(np.float64), np.abs(dy).astype(np.float64), padding))


DGRAD_S2_CASES = [
    ((2, 16, 16, 32, 40), "SAME"),                            # pad_before 0, whole 4x4 blocks
    ((1, 13, 11, 32, 32), "SAME"),                            # odd sizes: pad_before 1, partial blocks
    ((2, 13, 9, 40, 32), "VALID"),                            # a dx row and column no dy reaches the last tap of
    ((2, 12, 14, 32, 48), [[0, 0], [1, 1], [0, 2], [0, 0]]),  # explicit: pad_before 1 rows, 0 columns
]


@pytest.mark.parametrize("shape,padding", DGRAD_S2_CASES)
def test_stride2_dgrad_matches_direct(spy_s2, monkeypatch, shape, padding):
    """The polyphase dgrad within the float64 bound; small shapes whose partial blocks would not pay (the work
    ratio) are let through to test the edges, and the real ResNet-like shape takes the path unforced."""
    from gpuconv.numpy_backend import _winograd_s2
    x, w, p = _random_problem(shape, padding, 2)
    monkeypatch.setattr(_winograd_s2, "MAX_WORK_RATIO", 10.0)
    assert _winograd_s2.applies_dgrad(p, np.float32)
    dy = RNG.standard_normal(p.y_shape[:1] + p.y_shape[2:], np.float32)
    _check_dgrad_s2(x.shape, w, dy, padding, _dgrad_s2(x.shape, w, dy, padding))
    assert spy_s2["dgrad"] == 1


def test_stride2_dgrad_conditions_chunks_threads_and_nonfinite(spy_s2, monkeypatch):
    from gpuconv.numpy_backend import _winograd_s2

    def prob(x=(2, 1, 16, 16, 32), w=(1, 3, 3, 32, 32), stride=(1, 2, 2), padding="SAME"):
        return conv_problem(x, w, stride, (1, 1, 1), padding)
    assert _winograd_s2.applies_dgrad(prob(), np.float32)
    assert not _winograd_s2.applies_dgrad(prob(), np.float64)
    assert not _winograd_s2.applies_dgrad(prob(stride=(1, 1, 1)), np.float32)
    assert not _winograd_s2.applies_dgrad(prob(x=(2, 1, 14, 14, 32)), np.float32)     # 7 x 7 dy: no gain
    assert not _winograd_s2.applies_dgrad(prob(x=(2, 1, 16, 16, 16), w=(1, 3, 3, 16, 32)), np.float32)
    assert not _winograd_s2.applies_dgrad(prob(padding=[(0, 0), (2, 0), (0, 0)]), np.float32)   # pad_before 2
    monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
    assert not _winograd_s2.applies_dgrad(prob(), np.float32)
    monkeypatch.delenv("GPUCONV_WINOGRAD")

    x_shape, w = (3, 24, 20, 32), RNG.standard_normal((3, 3, 32, 40), np.float32)
    dy = RNG.standard_normal((3, 12, 10, 40), np.float32)
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", _winograd_s2._dgrad_chunk_bytes(1, 2, 5, 32, 40))
    results = _per_worker_count(monkeypatch, lambda: _dgrad_s2(x_shape, w, dy, "SAME"))
    assert spy_s2["dgrad"] == 3
    assert all(r.tobytes() == results[0].tobytes() for r in results[1:])
    _check_dgrad_s2(x_shape, w, dy, "SAME", results[0])

    dys = np.abs(dy)
    dys[0, 5, 5, 3] = np.inf
    dys[1, 9, 2, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _dgrad_s2(x_shape, np.abs(w), dys, "SAME")
        monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
        want = _dgrad_s2(x_shape, np.abs(w), dys, "SAME")
    assert spy_s2["dgrad"] == 3                                 # the non-finite call went direct
    assert got.tobytes() == want.tobytes()
    assert np.isinf(got).any() and np.isnan(got).any()


@pytest.mark.tf
def test_stride2_dgrad_against_tensorflow(spy_s2):
    """TensorFlow's CPU Conv2DBackpropInput as an independent oracle, SAME with even and odd sizes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    for x_shape in ((2, 16, 12, 32), (1, 24, 19, 32)):           # pad_before 0; 0 and 1
        w = RNG.uniform(-1, 1, (3, 3, 32, 48)).astype(np.float32)
        dy = RNG.uniform(-1, 1, (x_shape[0], -(-x_shape[1] // 2), -(-x_shape[2] // 2), 48)).astype(np.float32)
        got = _dgrad_s2(x_shape, w, dy, "SAME")
        want = tf.compat.v1.nn.conv2d_backprop_input(x_shape, w, dy, [1, 2, 2, 1], "SAME").numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert spy_s2["dgrad"] == 2


# ---------------------------------------------------------------------------------------------------------
# The error bound on data whose magnitudes vary by orders of magnitude inside a window
# ---------------------------------------------------------------------------------------------------------
def _spread(shape, decades):
    """Standard normal values times 10^u, u uniform in [-decades, decades] per value: windows mix tiny and huge."""
    return (RNG.standard_normal(shape) * 10.0 ** RNG.uniform(-decades, decades, shape)).astype(np.float32)


def _normwise_scales(x, w, dy, stride, padding):
    """The bounds Winograd keeps (README "Precision"): fprop and dgrad per output, sum over input channels of
    (sum of |operand| over the output's window) x (sum of |w| over the filter's taps), i.e. the op on |operand|
    with every tap of w replaced by its (c, k) tap sum; wgrad per filter value, the sum over the filter's taps of
    the same op on absolute values. Direct summation keeps the smaller per-product bound (the op on |operands|)."""
    x64, dy64 = np.abs(x).astype(np.float64), np.abs(dy).astype(np.float64)
    tap_sums = np.broadcast_to(np.abs(w).astype(np.float64).sum(axis=(0, 1), keepdims=True), w.shape)
    fprop = gc.conv2d(x64, np.ascontiguousarray(tap_sums), stride, padding)
    dgrad = gc.conv2d_backprop_input(x.shape, np.ascontiguousarray(tap_sums), dy64, stride, padding)
    wgrad = gc.conv2d_backprop_filter(x64, w.shape, dy64, stride, padding).sum(axis=(0, 1), keepdims=True)
    return fprop, dgrad, wgrad


@pytest.mark.parametrize("stride,shape,padding", [
    (1, (2, 8, 10, 32, 40), "SAME"), (1, (1, 8, 6, 32, 32), [[0, 0], [2, 0], [1, 1], [0, 0]]),
    (2, (2, 16, 16, 32, 40), "SAME"), (2, (1, 13, 17, 32, 32), "VALID")])
def test_spread_magnitudes_stay_within_the_normwise_bound(spy, spy_s2, monkeypatch, stride, shape, padding):
    """Values spread over 8 decades (the per-product bound of direct summation fails here by factors of 1e3 to
    1e8, measured): every Winograd variant stays within 16 eps of the normwise bound."""
    from gpuconv.numpy_backend import _winograd_s2
    monkeypatch.setattr(_winograd_s2, "MAX_WORK_RATIO", 10.0)        # small dgrad shapes take the path too
    N, H, W, C, K = shape
    x, w = _spread((N, H, W, C), 4), _spread((3, 3, C, K), 4)
    p = conv_problem((N, 1, H, W, C), (1, 3, 3, C, K), (1, stride, stride), (1, 1, 1),
                     padding if isinstance(padding, str) else [(0, 0)] + [tuple(v) for v in padding[1:3]])
    dy = _spread((N, p.P, p.Q, K), 4)
    got = _ops_strided(x, w, dy, stride, padding)
    ran = {1: (spy, {"correlate": 2, "wgrad": 1}), 2: (spy_s2, {"fprop": 1, "dgrad": 1, "wgrad": 1})}[stride]
    assert ran[0] == ran[1]
    want = _ops_strided(x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64), stride, padding)
    for name, g, r, s in zip(("fprop", "dgrad", "wgrad"), got, want, _normwise_scales(x, w, dy, stride, padding)):
        err = np.abs(g - r)
        assert (err <= 16 * EPS * s).all(), (name, float((err / s).max() / EPS))


def _ops_strided(x, w, dy, stride, padding):
    return (gc.conv2d(x, w, stride, padding), gc.conv2d_backprop_input(x.shape, w, dy, stride, padding),
            gc.conv2d_backprop_filter(x, w.shape, dy, stride, padding))


@pytest.mark.parametrize("stride,x_shape,padding", [
    (1, (1, 4, 2, 32), [[0, 0], [0, 0], [2, 0], [0, 0]]),    # column 0 of the filter meets only padding
    (1, (2, 2, 7, 32), [[0, 0], [0, 2], [1, 0], [0, 0]]),    # filter row 2 reads only the padding below
])
def test_wgrad_taps_meeting_only_padding_are_exact_zeros(spy, stride, x_shape, padding):
    """A filter tap that never meets the input has the gradient 0 exactly (a sum over nothing), as on the direct
    path; Winograd's adjoint would give it rounding noise from the other taps (1.8e-7 in the first case)."""
    x = RNG.uniform(-1, 1, x_shape).astype(np.float32)
    p = conv_problem((x_shape[0], 1) + x_shape[1:], (1, 3, 3, 32, 32), (1, stride, stride), (1, 1, 1),
                     [(0, 0)] + [tuple(v) for v in padding[1:3]])
    dy = RNG.uniform(-1, 1, (p.N, p.P, p.Q, p.K)).astype(np.float32)
    dw = gc.conv2d_backprop_filter(x, (3, 3, 32, 32), dy, stride, padding)
    assert spy["wgrad"] == 1
    # The taps that meet the input, by brute force over the outputs (not the backend's own _active_taps, which
    # decides which taps it zeroes): tap t of an axis of size n, pads (pb, pa) is active iff some output o reads
    # o * stride + t - pb inside [0, n).
    active = []
    for n, (pb, pa) in zip(x_shape[1:3], padding[1:3]):
        outs = (n + pb + pa - 3) // stride + 1
        active.append([t for t in range(3) if any(0 <= o * stride + t - pb < n for o in range(outs))])
    keep = np.zeros((3, 3), bool)
    keep[np.ix_(active[0], active[1])] = True
    assert not keep.all()
    assert (dw[~keep] == 0).all() and np.count_nonzero(dw[keep]) == keep.sum() * 32 * 32


@pytest.mark.parametrize("stride,x_shape,channels", [
    (1, (2, 8, 8), 512),          # U: 16 x 512 x 512 floats, 16 MiB (32 tiles: enough for so large a filter)
    (2, (4, 16, 16), 256),        # stride 2 (fprop, dgrad, wgrad): 25 x 256 x 256 floats, 6.25 MiB (64 tiles)
])
def test_filter_sized_scratch_is_kept_between_calls(spy, spy_s2, monkeypatch, stride, x_shape, channels):
    """The transformed filter U (wgrad: dU and the serial sum's spare partial) lives in per-thread buffers kept
    between calls, built with no temporary array: fresh multi-MiB arrays page-faulted on every call (N=1
    14x14x512 fprop: 19 ms, 7.4 ms without). NumPy reports its allocations to tracemalloc, so after a warm-up
    call a call's traced peak is its result and little else (a fresh U alone is 6-16 MiB)."""
    import tracemalloc
    gemm_chunks_on_pool(monkeypatch, lambda: False)     # a serial sum, whatever BLAS's threads
    x = RNG.standard_normal(x_shape + (channels,)).astype(np.float32)
    w = (RNG.standard_normal((3, 3, channels, channels)) / 30).astype(np.float32)
    dy = RNG.standard_normal((x_shape[0], 8, 8, channels)).astype(np.float32)
    first = _ops_strided(x, w, dy, stride, "SAME")
    for op, want in zip((lambda: gc.conv2d(x, w, stride, "SAME"),
                         lambda: gc.conv2d_backprop_input(x.shape, w, dy, stride, "SAME"),
                         lambda: gc.conv2d_backprop_filter(x, w.shape, dy, stride, "SAME")), first):
        tracemalloc.start()
        try:
            out = op()
            extra = tracemalloc.get_traced_memory()[1] - out.nbytes
        finally:
            tracemalloc.stop()
        assert extra < 2**20, extra
        np.testing.assert_array_equal(out, want)             # the kept buffers' old contents change nothing
    calls = spy if stride == 1 else spy_s2
    assert list(calls.values()) == ([4, 2] if stride == 1 else [2, 2, 2])


def test_filter_buffers_above_the_scratch_budget_are_made_per_call(spy, spy_s2, monkeypatch):
    """A transformed filter larger than _window.SCRATCH_BYTES is a fresh array per call (not kept): the results
    are those of the kept-buffer runs on both Winograd paths and all three ops (to rounding: the chunks, and so
    the GEMMs' shapes and wgrad's partial sums, follow the budget too)."""
    from gpuconv.numpy_backend import _window
    x = RNG.standard_normal((2, 16, 16, 128)).astype(np.float32)
    w = (RNG.standard_normal((3, 3, 128, 128)) / 30).astype(np.float32)
    for stride in (1, 2):
        dy = RNG.standard_normal((2, 16 // stride, 16 // stride, 128)).astype(np.float32)
        kept = _ops_strided(x, w, dy, stride, "SAME")
        with monkeypatch.context() as m:
            m.setattr(_window, "SCRATCH_BYTES", 2**20)       # U: 1 MiB (stride 1), 1.6 MiB (stride 2)
            made = []
            real = np.empty
            m.setattr(_window.np, "empty", lambda *a, **k: made.append(a[0]) or real(*a, **k))
            fresh = _ops_strided(x, w, dy, stride, "SAME")
        assert any(n >= 16 * 128 * 128 for n in made if isinstance(n, int))        # U made per call
        for a, b in zip(fresh, kept):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert list(spy.values()) == [4, 2] and list(spy_s2.values()) == [2, 2, 2]
