"""The NumPy backend's depthwise path (numpy_backend/_depthwise.py: one input channel per group) against the
grouped GEMM path it replaces, computed in float64 (`_gemm_path`), which the loop reference and TensorFlow check
elsewhere. Bound: |error| <= 16 eps x the same op on |operands| (float16: rounded once from float32 sums, so half a
float16 ulp more). Every test asserts that the depthwise path ran."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpuconv as gc
from conftest import count_calls
from gpuconv.numpy_backend import _depthwise, _parallel

RNG = np.random.default_rng(23)


@pytest.fixture
def ran(monkeypatch):
    """Counts of depthwise fprop / dgrad / wgrad calls."""
    return count_calls(monkeypatch, _depthwise, ("fprop", "dgrad", "wgrad"))


def _ops(x, w, dy, stride, padding, dilation, fmt=None):
    """fprop, dgrad, wgrad of a 2-D (4-D x) or 3-D (5-D x) convolution."""
    three = x.ndim == 5
    conv, dgrad, wgrad = ((gc.conv3d, gc.conv3d_backprop_input, gc.conv3d_backprop_filter) if three else
                          (gc.conv2d, gc.conv2d_backprop_input, gc.conv2d_backprop_filter))
    fmt = fmt or ("NDHWC" if three else "NHWC")
    if three:
        stride, dilation = _full(stride), _full(dilation)
    return (conv(x, w, stride, padding, data_format=fmt, dilations=dilation),
            dgrad(x.shape, w, dy, stride, padding, data_format=fmt, dilations=dilation),
            wgrad(x, w.shape, dy, stride, padding, data_format=fmt, dilations=dilation))


def _full(v):
    """A conv3d stride or dilation: an int for every spatial axis, or already a full 5-element list."""
    return list(v) if isinstance(v, list) else [1, v, v, v, 1]


def _gemm_path(monkeypatch, *args, **kw):
    """_ops in float64 through the grouped GEMM path (the depthwise path switched off)."""
    with monkeypatch.context() as mp:
        mp.setattr(_depthwise, "applies", lambda p: False)
        return _ops(*(a.astype(np.float64) for a in args[:3]), *args[3:], **kw)


def _check(monkeypatch, got, x, w, dy, stride, padding, dilation, fmt=None):
    want = _gemm_path(monkeypatch, x, w, dy, stride, padding, dilation, fmt)
    scale = _gemm_path(monkeypatch, np.abs(x), np.abs(w), np.abs(dy), stride, padding, dilation, fmt)
    eps = np.finfo(np.float32 if x.dtype == np.float16 else x.dtype).eps
    for name, g, r, s in zip(("fprop", "dgrad", "wgrad"), got, want, scale):
        assert g.dtype == x.dtype and g.shape == r.shape, name
        half_ulp = np.abs(r) * np.finfo(np.float16).eps / 2 if x.dtype == np.float16 else 0
        err = np.abs(g.astype(np.float64) - r)
        assert (err <= 16 * eps * s + half_ulp + 1e-300).all(), (name, float((err / (s + 1e-300)).max() / eps))


def _problem(x_shape, window, multiplier, stride, padding, dilation, dtype):
    x = RNG.standard_normal(x_shape).astype(dtype)
    w = RNG.standard_normal(window + (1, x_shape[-1] * multiplier)).astype(dtype)
    three = x.ndim == 5
    conv = gc.conv3d if three else gc.conv2d
    s = _full(stride) if three else stride
    d = _full(dilation) if three else dilation
    with pytest.MonkeyPatch.context() as mp:              # dy's shape, without counting a depthwise call
        mp.setattr(_depthwise, "applies", lambda p: False)
        y = conv(x, w, s, padding, dilations=d)
    return x, w, RNG.standard_normal(y.shape).astype(dtype)


CASES = [
    # x shape, window, multiplier, stride, padding, dilation
    ((2, 9, 8, 6), (3, 3), 1, 1, "SAME", 1),
    ((1, 7, 10, 4), (3, 3), 3, 1, "VALID", 1),                 # channel multiplier 3
    ((2, 9, 11, 5), (3, 3), 1, 2, "SAME", 1),                  # stride 2: dgrad gathers a strided subset
    ((1, 8, 9, 3), (2, 3), 2, 2, [[0, 0], [1, 0], [0, 2], [0, 0]], 1),
    ((2, 10, 9, 4), (3, 3), 1, 1, "SAME", 2),                  # dilation 2
    ((1, 4, 5, 6, 4), (3, 3, 3), 1, 1, "SAME", 1),             # conv3d
    ((1, 5, 6, 4, 2), (2, 3, 2), 2, 2, "VALID", 1),
    ((2, 9, 8, 5), (3, 3), 4, 1, "SAME", 2),                  # multiplier 4, dilated: dgrad sums 4 products
    ((1, 9, 13, 3), (3, 3), 1, [1, 1, 2, 1], "SAME", 1),       # column stride only: unrolled copy, row taps direct
    ((1, 13, 12, 4), (3, 3), 2, 2, "SAME", 2),                 # stride 2 and dilation 2: dgrad phases step 1
    ((1, 12, 14, 2), (5, 4), 1, 3, [[0, 0], [2, 1], [1, 3], [0, 0]], 2),   # stride 3, dilation 2: phase steps 2
    ((2, 5, 7, 6, 3), (3, 2, 3), 2, [1, 2, 1, 2, 1], "SAME", 1),          # conv3d, strides (2, 1, 2)
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_depthwise_matches_the_grouped_gemm_path(monkeypatch, ran, case, dtype):
    x_shape, window, multiplier, stride, padding, dilation = case
    x, w, dy = _problem(x_shape, window, multiplier, stride, padding, dilation, dtype)
    got = _ops(x, w, dy, stride, padding, dilation)
    assert ran == {"fprop": 1, "dgrad": 1, "wgrad": 1}
    _check(monkeypatch, got, x, w, dy, stride, padding, dilation)


def test_depthwise_nchw_and_not_applied_elsewhere(monkeypatch, ran):
    x, w, dy = _problem((2, 7, 6, 8), (3, 3), 2, 1, "SAME", 1, np.float32)
    xc, dyc = x.transpose(0, 3, 1, 2).copy(), dy.transpose(0, 3, 1, 2).copy()
    _check(monkeypatch, _ops(xc, w, dyc, 1, "SAME", 1, "NCHW"), xc, w, dyc, 1, "SAME", 1, "NCHW")
    assert ran == {"fprop": 1, "dgrad": 1, "wgrad": 1}
    two_per_group = RNG.standard_normal((3, 3, 2, 8)).astype(np.float32)          # groups 4, 2 channels each
    gc.conv2d(x, two_per_group, 1, "SAME")
    gc.conv2d(x, RNG.standard_normal((3, 3, 8, 8)).astype(np.float32), 1, "SAME")   # ungrouped
    assert ran["fprop"] == 1


def _small_boxes(monkeypatch, box_bytes: int = 4096, tile_bytes: int = 3 * 9 * 16 * 4) -> None:
    """Force many boxes, and boxes split along the columns (tile_bytes: 3 columns of a 3x3 filter over 16
    channels)."""
    monkeypatch.setattr(_depthwise, "BOX_BYTES", box_bytes)
    monkeypatch.setattr(_depthwise, "BOX_MIN_BYTES", box_bytes)
    monkeypatch.setattr(_depthwise, "TILE_BYTES", tile_bytes)


@pytest.mark.parametrize("stride", [1, 2])
def test_results_do_not_depend_on_the_worker_count(monkeypatch, ran, stride):
    """Boxes computed on any worker, wgrad's box partials added in box order: the same bits for 1, 2, 3 workers
    (boxes forced small, so there are many)."""
    _small_boxes(monkeypatch)
    monkeypatch.setattr(_depthwise, "_PARALLEL_MIN", 0)
    for multiplier in (1, 3):
        x, w, dy = _problem((3, 12, 10, 16), (3, 3), multiplier, stride, "SAME", 1, np.float32)
        results = []
        try:
            for n in (1, 2, 3):
                _parallel.set_num_threads(n)
                results.append(_ops(x, w, dy, stride, "SAME", 1))
        finally:
            _parallel.set_num_threads(None)
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert a.tobytes() == b.tobytes()
        _check(monkeypatch, results[0], x, w, dy, stride, "SAME", 1)
    assert ran["wgrad"] == 6


def test_box_sizes_do_not_follow_the_worker_count(monkeypatch, ran):
    """With the default box sizing (boxes shrink to share the work between workers), every op's bits are the same
    for 1, 2 and 3 workers: wgrad's boxes, whose partials add in box order, are sized the same for every count
    (a budget that followed the count gave 526 of 576 different dw values on 2x64x64x64, 1 against 2 workers)."""
    monkeypatch.setattr(_depthwise, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(_depthwise, "BOX_MIN_BYTES", 1)
    x, w, dy = _problem((3, 12, 10, 16), (3, 3), 1, 1, "SAME", 1, np.float32)
    results = []
    try:
        for n in (1, 2, 3):
            _parallel.set_num_threads(n)
            results.append(_ops(x, w, dy, 1, "SAME", 1))
    finally:
        _parallel.set_num_threads(None)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    assert ran["wgrad"] == 3


@pytest.mark.parametrize("case", CASES)
def test_box_splits_change_no_output_bit(monkeypatch, ran, case):
    """A box's outputs are whole sums whatever the boxes (fprop, dgrad: the same bits with boxes of one row or
    a few columns as with the default boxes); wgrad's box partials add in another order, within the bound."""
    x_shape, window, multiplier, stride, padding, dilation = case
    x, w, dy = _problem(x_shape, window, multiplier, stride, padding, dilation, np.float32)
    whole = _ops(x, w, dy, stride, padding, dilation)
    with monkeypatch.context() as mp:
        _small_boxes(mp, box_bytes=1, tile_bytes=x_shape[-1] * multiplier * 4 * int(np.prod(window)))
        split = _ops(x, w, dy, stride, padding, dilation)
    assert ran == {"fprop": 2, "dgrad": 2, "wgrad": 2}
    for name, a, b in zip(("fprop", "dgrad"), whole, split):
        assert a.tobytes() == b.tobytes(), name
    _check(monkeypatch, split, x, w, dy, stride, padding, dilation)


def test_non_finite_values_land_where_direct_summation_puts_them(monkeypatch, ran):
    x, w, dy = _problem((1, 6, 7, 4), (3, 3), 1, 1, "SAME", 1, np.float32)
    x[0, 2, 3, 1] = np.inf
    x[0, 5, 0, 2] = np.nan
    dy[0, 1, 1, 3] = -np.inf
    got = _ops(x, w, dy, 1, "SAME", 1)
    want = _gemm_path(monkeypatch, x, w, dy, 1, "SAME", 1)
    for g, r in zip(got, want):
        assert (np.isnan(g) == np.isnan(r)).all() and (np.isposinf(g) == np.isposinf(r)).all()
        assert (np.isneginf(g) == np.isneginf(r)).all()
        finite = np.isfinite(r)
        np.testing.assert_allclose(g[finite], r[finite], rtol=1e-5, atol=1e-5)


def test_filter_taps_meeting_only_padding_have_exactly_zero_gradient(ran):
    """A 1-row input with SAME padding: filter rows 0 and 2 read only padding, their gradient is a sum over
    nothing."""
    x, w, dy = _problem((2, 1, 6, 5), (3, 3), 1, 1, "SAME", 1, np.float32)
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME")
    assert ran["wgrad"] == 1
    assert (dw[[0, 2]] == 0).all() and np.count_nonzero(dw[1]) == 3 * 5


@pytest.mark.parametrize("window,stride,dilation", list(itertools.product([(1, 1), (3, 3)], [1, 3], [1])))
def test_windows_and_strides_without_overlap(monkeypatch, ran, window, stride, dilation):
    x, w, dy = _problem((1, 7, 8, 3), window, 2, stride, "VALID", dilation, np.float32)
    _check(monkeypatch, _ops(x, w, dy, stride, "VALID", dilation), x, w, dy, stride, "VALID", dilation)
