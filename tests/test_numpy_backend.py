"""The NumPy backend against small scalar-loop references written here (sharing no code with gpuconv).

Each reference re-derives output sizes from the explicit-padding formula out = (n + pb + pa - e) // s + 1, so
tests pass explicit (asymmetric) pads through the public API and compare. Also: float16, integer max pooling,
ties and NaN, duplicate-index scatters, include_batch, empty problems, and a bounded-scratch check.
"""
from __future__ import annotations

import itertools
import re
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import gemm_chunks_on_pool

import gpuconv as gc
from gpuconv.numpy_backend import BACKEND
from gpuconv.numpy_backend import _parallel, _window

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------------------
# loop references on canonical 5-D arrays: x (N,D,H,W,C), w (T,R,S,C/G,K), pads ((pb,pa),)*3
# ---------------------------------------------------------------------------------------------------------
def _out(n, k, s, d, pb, pa):
    return (n + pb + pa - ((k - 1) * d + 1)) // s + 1


def ref_conv(x, w, stride, dil, pads):
    N, D, H, W, C = x.shape
    T, R, S, Cg, K = w.shape
    G = C // Cg
    Kg = K // G
    outs = [_out(n, k, s, d, *pd) for n, k, s, d, pd in zip((D, H, W), (T, R, S), stride, dil, pads)]
    y = np.zeros((N, *outs, K), np.float64)
    for n, z, p, q in itertools.product(range(N), *map(range, outs)):
        for t, r, s in itertools.product(range(T), range(R), range(S)):
            i = [o * st + k * dl - pd[0] for o, st, k, dl, pd in zip((z, p, q), stride, (t, r, s), dil, pads)]
            if all(0 <= v < e for v, e in zip(i, (D, H, W))):
                for g in range(G):
                    ci, ko = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
                    y[n, z, p, q, ko] += x[n, i[0], i[1], i[2], ci].astype(np.float64) @ w[t, r, s, :, ko]
    return y


def ref_dgrad(dy, w, x_shape, stride, dil, pads):
    N, D, H, W, C = x_shape
    T, R, S, Cg, K = w.shape
    G = C // Cg
    Kg = K // G
    dx = np.zeros(x_shape, np.float64)
    for n, z, p, q in itertools.product(range(N), *map(range, dy.shape[1:4])):
        for t, r, s in itertools.product(range(T), range(R), range(S)):
            i = [o * st + k * dl - pd[0] for o, st, k, dl, pd in zip((z, p, q), stride, (t, r, s), dil, pads)]
            if all(0 <= v < e for v, e in zip(i, (D, H, W))):
                for g in range(G):
                    ci, ko = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
                    dx[n, i[0], i[1], i[2], ci] += w[t, r, s, :, ko].astype(np.float64) @ dy[n, z, p, q, ko]
    return dx


def ref_wgrad(x, dy, w_shape, stride, dil, pads):
    N, D, H, W, C = x.shape
    T, R, S, Cg, K = w_shape
    G = C // Cg
    Kg = K // G
    dw = np.zeros(w_shape, np.float64)
    for n, z, p, q in itertools.product(range(N), *map(range, dy.shape[1:4])):
        for t, r, s in itertools.product(range(T), range(R), range(S)):
            i = [o * st + k * dl - pd[0] for o, st, k, dl, pd in zip((z, p, q), stride, (t, r, s), dil, pads)]
            if all(0 <= v < e for v, e in zip(i, (D, H, W))):
                for g in range(G):
                    dw[t, r, s, :, g * Kg:(g + 1) * Kg] += np.outer(x[n, i[0], i[1], i[2], g * Cg:(g + 1) * Cg],
                                                                   dy[n, z, p, q, g * Kg:(g + 1) * Kg])
    return dw


def _windows(x_shape, window, stride, pads):
    """Yield (n, (z, p, q), [in-bounds cells (d, h, w) in row-major window order])."""
    N, D, H, W, C = x_shape
    outs = [_out(n, k, s, 1, *pd) for n, k, s, pd in zip((D, H, W), window, stride, pads)]
    for n, z, p, q in itertools.product(range(N), *map(range, outs)):
        cells = []
        for t, r, s in itertools.product(*map(range, window)):
            i = tuple(o * st + k - pd[0] for o, st, k, pd in zip((z, p, q), stride, (t, r, s), pads))
            if all(0 <= v < e for v, e in zip(i, (D, H, W))):
                cells.append(i)
        yield n, (z, p, q), cells, outs


def ref_max_pool(x, window, stride, pads):
    """(y, argmax) by TF's scan: first in-bounds cell seeds, a later cell replaces only if strictly greater."""
    N, D, H, W, C = x.shape
    y = am = None
    for n, o, cells, outs in _windows(x.shape, window, stride, pads):
        if y is None:
            y = np.zeros((N, *outs, C), x.dtype)
            am = np.zeros((N, *outs, C), np.int64)
        for c in range(C):
            best, arg = x[(n, *cells[0], c)], cells[0]
            for cell in cells[1:]:
                if x[(n, *cell, c)] > best:
                    best, arg = x[(n, *cell, c)], cell
            y[(n, *o, c)] = best
            am[(n, *o, c)] = ((arg[0] * H + arg[1]) * W + arg[2]) * C + c
    return y, am


def ref_avg_pool(x, window, stride, pads):
    y = None
    for n, o, cells, outs in _windows(x.shape, window, stride, pads):
        if y is None:
            y = np.zeros((x.shape[0], *outs, x.shape[-1]), np.float64)
        y[(n, *o)] = sum(x[(n, *cell)].astype(np.float64) for cell in cells) / len(cells)
    return y


def ref_spread(g, x_shape, window, stride, pads, divide):
    dx = np.zeros(x_shape, np.float64)
    for n, o, cells, _ in _windows(x_shape, window, stride, pads):
        for cell in cells:
            dx[(n, *cell)] += g[(n, *o)] / (len(cells) if divide else 1)
    return dx


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def rand(shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def tf_pads(pads, nspatial):
    """Canonical (depth, height, width) pads as the API's explicit padding for NHWC / NDHWC."""
    return [[0, 0]] + [list(p) for p in pads[3 - nspatial:]] + [[0, 0]]


def to5(a, nspatial):
    return a.reshape((a.shape[0],) + (1,) * (3 - nspatial) + a.shape[1:])


CONV_CASES = [
    # nspatial, x (user layout), w (user layout), stride, dilation, pads (canonical d, h, w)
    (2, (2, 7, 9, 4), (3, 3, 4, 6), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
    (2, (2, 9, 8, 4), (3, 2, 4, 5), (1, 2, 3), (1, 1, 1), ((0, 0), (2, 0), (0, 1))),
    (2, (1, 10, 11, 6), (3, 3, 2, 6), (1, 2, 1), (1, 2, 2), ((0, 0), (1, 2), (3, 0))),      # groups 3, dilation
    (2, (2, 6, 6, 4), (1, 1, 4, 8), (1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),        # 1x1 GEMM path
    (2, (2, 7, 7, 4), (1, 1, 4, 3), (1, 2, 2), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),        # 1x1 stride 2
    (2, (1, 5, 5, 4), (3, 3, 1, 4), (1, 3, 3), (1, 1, 1), ((0, 0), (0, 2), (1, 0))),        # depthwise, s > k
    (3, (1, 5, 6, 5, 2), (2, 3, 2, 2, 3), (2, 1, 2), (1, 2, 1), ((1, 0), (0, 3), (1, 1))),
    (3, (2, 4, 4, 4, 4), (3, 3, 3, 2, 4), (1, 1, 1), (2, 1, 1), ((2, 2), (1, 1), (0, 0))),  # groups 2, 3-D
    # C/G well below K/G: dgrad by GEMM + col2im
    (2, (2, 9, 8, 2), (3, 3, 2, 7), (1, 2, 2), (1, 1, 2), ((0, 0), (1, 2), (0, 1))),
    (2, (2, 7, 7, 2), (1, 1, 2, 8), (1, 2, 2), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
    (3, (1, 5, 6, 5, 4), (2, 3, 3, 2, 10), (1, 2, 1), (1, 1, 2), ((1, 1), (1, 0), (2, 1))),
    # ... with tap runs whose stretches overlap (filter width > stride): col2im by classes of outputs
    (2, (2, 9, 10, 2), (3, 5, 2, 8), (1, 2, 2), (1, 1, 1), ((0, 0), (1, 2), (2, 1))),
    (2, (1, 6, 7, 3), (2, 4, 3, 8), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 0), (2, 1))),
    # strides beyond the filter extent: dgrad phases without taps (zeros), C/G >= K/G so the phase path runs
    (2, (2, 7, 9, 3), (2, 1, 3, 3), (1, 3, 4), (1, 1, 1), ((0, 0), (1, 0), (0, 2))),
    (3, (1, 5, 4, 6, 2), (1, 2, 1, 2, 2), (3, 1, 5), (1, 2, 1), ((0, 1), (0, 0), (1, 0))),
    # filters larger than the padded input: taps that never meet the input (their filter gradient is zero)
    (2, (1, 4, 5, 2), (9, 11, 2, 3), (1, 1, 1), (1, 1, 1), ((0, 0), (4, 4), (5, 5))),
    (2, (2, 3, 4, 2), (7, 6, 2, 2), (1, 2, 3), (1, 1, 2), ((0, 0), (5, 1), (2, 6))),
]


def _conv_args(case):
    nsp, xs, ws, stride, dil, pads = case
    return nsp, xs, ws, stride[3 - nsp:], dil[3 - nsp:], tf_pads(pads, nsp), (stride, dil, pads)


# ---------------------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["rows", "transposed"])
def column_layout(request, monkeypatch):
    """Run a test with column blocks in row layout (M, taps*C) or transposed (taps*C, M), whatever C is."""
    from gpuconv.numpy_backend import conv as conv_module
    monkeypatch.setattr(conv_module, "_FEW_CHANNELS", 0 if request.param == "rows" else 10**9)
    return request.param


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_ops_match_loops(case, dtype, column_layout):
    nsp, xs, ws, st, dl, pad, (stride, dil, pads) = _conv_args(case)
    x, w = rand(xs, dtype), rand(ws, dtype)
    conv = gc.conv2d if nsp == 2 else gc.conv3d
    y = conv(x, w, st, pad, dilations=dl)
    w5 = w.reshape((1,) * (5 - w.ndim) + w.shape)
    want = ref_conv(to5(x, nsp), w5, stride, dil, pads)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype
    np.testing.assert_allclose(to5(y, nsp), want, rtol=tol, atol=tol)

    dy = rand(y.shape, dtype)
    bpi = gc.conv2d_backprop_input if nsp == 2 else gc.conv3d_backprop_input
    dx = bpi(x.shape, w, dy, st, pad, dilations=dl)
    np.testing.assert_allclose(to5(dx, nsp), ref_dgrad(to5(dy, nsp), w5, to5(x, nsp).shape, stride, dil, pads),
                               rtol=tol, atol=tol)
    bpf = gc.conv2d_backprop_filter if nsp == 2 else gc.conv3d_backprop_filter
    dw = bpf(x, w.shape, dy, st, pad, dilations=dl)
    np.testing.assert_allclose(dw.reshape(w5.shape), ref_wgrad(to5(x, nsp), to5(dy, nsp), w5.shape, stride, dil, pads),
                               rtol=tol, atol=tol)


def test_conv_float16_accumulates_in_float32_and_rounds_once():
    x, w = rand((2, 6, 7, 8), np.float16), rand((3, 3, 8, 5), np.float16)
    y = gc.conv2d(x, w, 1, "SAME")
    want = gc.conv2d(x.astype(np.float32), w.astype(np.float32), 1, "SAME").astype(np.float16)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, want)   # same float32 sums, rounded once
    dy = rand(y.shape, np.float16)
    dx = gc.conv2d_backprop_input(x.shape, w, dy, 1, "SAME")
    np.testing.assert_array_equal(dx, gc.conv2d_backprop_input(x.shape, w.astype(np.float32),
                                                               dy.astype(np.float32), 1, "SAME").astype(np.float16))
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME")
    ref = ref_wgrad(to5(x, 2), to5(dy, 2), (1,) + w.shape, (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (1, 1)))
    assert dw.dtype == np.float16
    np.testing.assert_allclose(dw.astype(np.float64), ref.reshape(w.shape), rtol=2e-3, atol=2e-2)


def test_conv_chunking_matches_unchunked(monkeypatch, column_layout):
    """Boxes split over batch, rows and columns give the same result as one box."""
    for c, k in ((5, 4), (2, 9)):     # gather dgrad, scatter dgrad
        x, w = rand((3, 9, 10, c)), rand((3, 4, c, k))
        dy = rand((3, 5, 5, k))

        def run():
            return [gc.conv2d(x, w, 2, "SAME"), gc.conv2d_backprop_input(x.shape, w, dy, 2, "SAME"),
                    gc.conv2d_backprop_filter(x, w.shape, dy, 2, "SAME")]
        full = run()
        default = _window.SCRATCH_BYTES
        for budget in (4000, 700, 1):
            monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)
            for a, b in zip(run(), full):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            monkeypatch.setattr(_window, "SCRATCH_BYTES", default)


@pytest.mark.parametrize("xs,ws,os", [((0, 5, 5, 3), (3, 3, 3, 4), (0, 5, 5, 4)),
                                      ((2, 5, 5, 3), (3, 3, 3, 0), (2, 5, 5, 0))])
def test_conv_empty(xs, ws, os):
    x, w = np.ones(xs, np.float32), np.ones(ws, np.float32)
    assert gc.conv2d(x, w, 1, "SAME").shape == os
    dy = np.ones(os, np.float32)
    dx = gc.conv2d_backprop_input(xs, w, dy, 1, "SAME")
    assert dx.shape == xs and not dx.any()          # K = 0: x has cells, each gradient a sum over nothing
    dw = gc.conv2d_backprop_filter(x, ws, dy, 1, "SAME")
    assert dw.shape == ws and not dw.any()


def test_reshaped_view_never_copies():
    """conv's column views: a reshape that needs a copy is an error, a possible one is a view of the same memory
    (what setting .shape did before NumPy 2.5 deprecated it)."""
    from gpuconv.numpy_backend.conv import _reshaped_view, _split_channels
    a = np.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    v = _reshaped_view(a[:, 1:], (2, 2, 24))                 # rows of a slice: mergeable
    v[0, 0, 0] = -1
    assert a[0, 1, 0, 0] == -1
    with pytest.raises(ValueError, match="needs a copy"):
        _reshaped_view(a[:, :, ::2], (2, 3, 12))            # every other row: not mergeable
    s = _split_channels(a[..., ::1][:, :, 1:3], 3)           # (2, 3, 2, 6) -> (2, 3, 2, 3, 2)
    assert s.shape == (2, 3, 2, 3, 2) and np.shares_memory(s, a)
    np.testing.assert_array_equal(s.reshape(2, 3, 2, 6), a[:, :, 1:3])


def test_conv_empty_input_with_padding_gives_zeros():
    # W = 0 with explicit padding 2+2 and a 3-wide filter: output width 2 of zeros.
    x, w = np.ones((1, 3, 0, 2), np.float32), np.ones((1, 3, 2, 4), np.float32)
    y = gc.conv2d(x, w, 1, [[0, 0], [0, 0], [2, 2], [0, 0]])
    assert y.shape == (1, 3, 2, 4) and not y.any()


# ---------------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------------
POOL_CASES = [
    # nspatial, x shape, window, stride, pads (canonical)
    (2, (2, 7, 8, 3), (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    (2, (2, 6, 6, 4), (1, 2, 2), (1, 2, 2), ((0, 0), (0, 0), (0, 0))),
    (2, (1, 9, 7, 2), (1, 3, 2), (1, 1, 3), ((0, 0), (2, 0), (0, 1))),
    (3, (2, 5, 6, 5, 2), (2, 3, 2), (2, 1, 2), ((1, 0), (0, 2), (1, 1))),
    # one channel: box slices with unit and strided axes (NumPy's in-place np.negative mishandles some)
    (2, (2, 1, 3, 1), (1, 2, 2), (1, 1, 2), ((0, 0), (1, 1), (0, 1))),
    (2, (3, 4, 5, 1), (1, 3, 3), (1, 2, 1), ((0, 0), (1, 1), (1, 1))),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint16, np.int64])
def test_max_pool_and_grad_match_loops(case, dtype):
    nsp, xs, window, stride, pads = case
    # Few distinct values make many ties, which the scan rule must break toward the first cell.
    x = RNG.integers(-12, 13, size=xs).astype(dtype)
    if np.dtype(dtype).kind == "f":
        x = x / 4 - 0.1
    if dtype == np.uint16:
        x = RNG.integers(0, 4, size=xs).astype(dtype)
    k, s, pad = window[3 - nsp:], stride[3 - nsp:], tf_pads(pads, nsp)
    mp = gc.max_pool2d if nsp == 2 else gc.max_pool3d
    y = mp(x, k, s, pad)
    want_y, want_arg = ref_max_pool(to5(x, nsp), window, stride, pads)
    assert y.dtype == dtype
    np.testing.assert_array_equal(to5(y, nsp), want_y)
    dy = RNG.integers(-5, 6, size=y.shape).astype(dtype)
    mpg = gc.max_pool_grad if nsp == 2 else gc.max_pool3d_grad
    dx = mpg(x, y, dy, k, s, pad)
    want_dx = np.zeros(to5(x, nsp).shape, np.int64)
    for n in range(y.shape[0]):
        np.add.at(want_dx[n].reshape(-1), want_arg[n].reshape(-1), to5(dy, nsp)[n].reshape(-1).astype(np.int64))
    np.testing.assert_array_equal(to5(dx, nsp), want_dx.astype(dtype))
    if nsp == 2:
        for include in (False, True):
            for idt in ("int32", "int64"):
                v, a = gc.max_pool_with_argmax(x, k, s, pad, output_dtype=idt, include_batch_in_index=include)
                offset = (np.arange(x.shape[0]) * x[0].size).reshape(-1, 1, 1, 1) if include else 0
                assert a.dtype == np.dtype(idt)
                np.testing.assert_array_equal(v, want_y[:, 0])
                np.testing.assert_array_equal(a, want_arg[:, 0] + offset)
                g = gc.max_pool_grad_with_argmax(x, dy, a, k, s, pad, include_batch_in_index=include)
                np.testing.assert_array_equal(g, dx)


def test_max_pool_int8_window_with_more_taps_than_int8_holds(monkeypatch):
    """343 taps: tap numbers need 16 bits while the values' masks are 8 bits wide."""
    from gpuconv.numpy_backend import pool as pool_module
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    x = RNG.integers(-2, 3, size=(1, 7, 7, 7, 2)).astype(np.int8)
    y = gc.max_pool3d(x, 7, 3, "SAME")
    want_y, want_arg = ref_max_pool(x, (7, 7, 7), (3, 3, 3), ((3, 3), (3, 3), (3, 3)))
    np.testing.assert_array_equal(y, want_y)
    dy = np.ones(y.shape, np.int8)
    dx = gc.max_pool3d_grad(x, y, dy, 7, 3, "SAME")
    want_dx = np.zeros(x.size, np.int64)
    np.add.at(want_dx, want_arg.reshape(-1), 1)
    np.testing.assert_array_equal(dx.reshape(-1), want_dx)


def test_max_pool_nan_and_ties():
    # TF CPU: [NaN, 1, 3, 2] -> NaN at index 0 (NaN seeds); [1, NaN, 3, 2] -> 3 at index 2; ties -> first.
    x = np.array([np.nan, 1, 3, 2, 1, np.nan, 3, 2, 5, 5, 5, 5], np.float32).reshape(1, 1, 12, 1)
    v, a = gc.max_pool_with_argmax(x, (1, 4), (1, 4), "VALID")
    assert np.isnan(v[0, 0, 0, 0]) and v[0, 0, 1:, 0].tolist() == [3, 5]
    assert a.ravel().tolist() == [0, 6, 8]
    # Padding never selected, even where every real cell is below zero (3x3 of -1..-9, k2 s2 SAME).
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    v, a = gc.max_pool_with_argmax(x, 2, 2, "SAME")
    assert v.ravel().tolist() == [-1, -3, -7, -9] and a.ravel().tolist() == [0, 2, 6, 8]
    # All-equal windows, overlapping (k2 s1): the gradient goes to each window's first cell.
    ones = np.ones((1, 3, 3, 1), np.float32)
    g = gc.max_pool_grad(ones, np.ones((1, 2, 2, 1), np.float32), np.ones((1, 2, 2, 1), np.float32), 2, 1, "VALID")
    assert g[0, :, :, 0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_grad_unpool_match_loops(case, dtype):
    nsp, xs, window, stride, pads = case
    x = rand(xs, dtype)
    k, s, pad = window[3 - nsp:], stride[3 - nsp:], tf_pads(pads, nsp)
    ap = gc.avg_pool2d if nsp == 2 else gc.avg_pool3d
    y = ap(x, k, s, pad)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(to5(y, nsp), ref_avg_pool(to5(x, nsp), window, stride, pads), rtol=tol, atol=tol)
    dy = rand(y.shape, dtype)
    apg = gc.avg_pool_grad if nsp == 2 else gc.avg_pool3d_grad
    dx = apg(x.shape, dy, k, s, pad)
    np.testing.assert_allclose(to5(dx, nsp), ref_spread(to5(dy, nsp), to5(x, nsp).shape, window, stride, pads, True),
                               rtol=tol, atol=tol)
    un = gc.avg_unpool(dy, k, s, pad, x.shape)
    np.testing.assert_allclose(to5(un, nsp), ref_spread(to5(dy, nsp), to5(x, nsp).shape, window, stride, pads, False),
                               rtol=tol, atol=tol)


def test_pool_float16():
    x = rand((2, 7, 7, 3), np.float16)
    y = gc.avg_pool2d(x, 3, 2, "SAME")
    want = ref_avg_pool(to5(x, 2), (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(to5(y, 2), want.astype(np.float32).astype(np.float16))
    dy = rand(y.shape, np.float16)
    dx = gc.avg_pool_grad(x.shape, dy, 3, 2, "SAME")   # overlapping windows: float32 accumulator
    want = ref_spread(to5(dy.astype(np.float32), 2), (2, 1, 7, 7, 3), (1, 3, 3), (1, 2, 2),
                      ((0, 0), (1, 1), (1, 1)), True)
    assert dx.dtype == np.float16
    np.testing.assert_allclose(to5(dx, 2).astype(np.float64), want, rtol=1e-3, atol=1e-3)
    y3 = gc.max_pool2d(x, 3, 1, "SAME")
    g = gc.max_pool_grad(x, y3, np.ones_like(y3), 3, 1, "SAME")
    assert g.dtype == np.float16 and float(g.astype(np.float32).sum()) == y3.size


def test_pool_empty():
    x = np.ones((0, 4, 4, 2), np.float32)
    assert gc.max_pool2d(x, 2, 2, "VALID").shape == (0, 2, 2, 2)
    v, a = gc.max_pool_with_argmax(x, 2, 2, "VALID")
    assert v.shape == a.shape == (0, 2, 2, 2)
    assert gc.avg_pool_grad((0, 4, 4, 2), np.ones((0, 2, 2, 2), np.float32), 2, 2, "VALID").shape == x.shape
    x = np.ones((1, 4, 4, 0), np.int8)
    assert gc.max_pool2d(x, 2, 2, "VALID").shape == (1, 2, 2, 0)


# ---------------------------------------------------------------------------------------------------------
# unpooling: scatter and gather
# ---------------------------------------------------------------------------------------------------------
def test_overlapping_unpool_scratch_stays_near_the_budget():
    """max_unpool of a 3x3/2 argmax (repeated indices: sums in float64 windows) with include_batch_in_index
    (index chunks of 2^20 updates): the float64 windows and each piece's bincount share one scratch budget. With
    windows of the whole budget the call's allocations peaked at 105 MiB beyond its output (now about 59)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 112, 112, 64), dtype=np.float32)
    with gc.use_backend("numpy"):
        v, a = gc.max_pool_with_argmax(x, 3, 2, "SAME", include_batch_in_index=True)
        want = gc.max_unpool(v, a, x.shape, include_batch_in_index=True)
        tracemalloc.start()
        try:
            got = gc.max_unpool(v, a, x.shape, include_batch_in_index=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak - got.nbytes < 2.5 * _window.SCRATCH_BYTES, peak / 2**20
    np.testing.assert_array_equal(got, want)


def test_max_unpool_duplicates_add():
    # 3x3 with the 9 in the centre, k2 s1: all four windows pick the centre; TF's scatter_nd recipe gives 36.
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    x[0, 1, 1, 0] = 9
    x[0, 2, 2, 0] = 0
    v, a = gc.max_pool_with_argmax(x, 2, 1, "VALID")
    assert a.ravel().tolist() == [4, 4, 4, 4]
    out = gc.max_unpool(v, a, x.shape)
    assert out[0, 1, 1, 0] == 36 and out.sum() == 36
    np.testing.assert_array_equal(gc.max_unpool_grad(out, a), np.full(v.shape, 36, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_duplicates_are_summed_exactly_and_rounded_once(dtype):
    # The NumPy backend's documented rule (README "Determinism"): float16/float32 duplicates are summed in
    # float64 and rounded once, so 1 + big - big is exactly 1 (the kernels and TF's CPU kernel add float32 in
    # float32, one by one: big + 1 rounds to big there, and they give 0).
    big = 2.0 ** (25 if dtype == np.float32 else 12)         # 1 is below half an ulp of big in dtype
    assert dtype(big) + dtype(1) == dtype(big)
    updates = np.array([1, big, -big], dtype).reshape(1, 1, 3, 1)
    argmax = np.zeros(updates.shape, np.int64)
    want = np.zeros((1, 1, 3, 1), dtype)
    want[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(gc.max_unpool(updates, argmax, (1, 1, 3, 1)), want)
    np.testing.assert_array_equal(gc.max_pool_grad_with_argmax(np.zeros_like(updates), updates, argmax, 1, 1,
                                                               "VALID"), want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32,
                                   np.int64])
@pytest.mark.parametrize("include", [False, True])
def test_argmax_scatter_gather_match_loops(dtype, include):
    N, H, W, C = 3, 4, 5, 2
    per = H * W * C
    shape = (N, 3, 3, C)
    if np.dtype(dtype).kind == "f":
        vals = rand(shape, dtype)
    else:
        info = np.iinfo(dtype)
        vals = RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    # Few distinct targets -> many duplicates, in and across batch items when include_batch.
    am = RNG.integers(0, 5, size=shape) * 7 % (N * per if include else per)
    am = am.astype(np.int64)
    out = BACKEND.argmax_scatter(to5(vals, 2), to5(am, 2), (N, 1, H, W, C), include)
    want = np.zeros(N * per, np.float64 if np.dtype(dtype).kind == "f" else object)
    for n, j in itertools.product(range(N), range(vals[0].size)):
        tgt = am[n].flat[j] + (0 if include else n * per)
        want[tgt] += vals[n].flat[j].item() if np.dtype(dtype).kind != "f" else float(vals[n].flat[j])
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(out.reshape(-1).astype(np.float64), want, rtol=2e-3 if dtype == np.float16 else 1e-6)
    else:
        bits = 8 * np.dtype(dtype).itemsize
        wrapped = [int(v) % (1 << bits) for v in want]
        got = [int(v) % (1 << bits) for v in out.reshape(-1)]
        assert got == wrapped
    assert out.dtype == dtype
    grad = rand((N, 1, H, W, C)).astype(dtype) if np.dtype(dtype).kind == "f" else \
        RNG.integers(-9, 9, size=(N, 1, H, W, C)).astype(dtype)
    got = BACKEND.argmax_gather(grad, to5(am, 2), include)
    flat = grad.reshape(-1)
    offs = 0 if include else (np.arange(N) * per).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(got.reshape(shape), flat[am + offs])


def test_argmax_scatter_int64_wraps_exactly():
    big = np.iinfo(np.int64).max
    vals = np.array([big, big, 3, -big], np.int64).reshape(1, 1, 1, 4, 1)
    am = np.zeros((1, 1, 1, 4, 1), np.int64)
    out = BACKEND.argmax_scatter(vals, am, (1, 1, 1, 2, 1), False)
    assert int(out.reshape(-1)[0]) == (big + big + 3 - big + 2**63) % 2**64 - 2**63


@pytest.mark.parametrize("budget", [32 * 2**20, 300, 20])
@pytest.mark.parametrize("item_min", [2**16, 1])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("fast_add_at", [True, False])
def test_argmax_scatter_chunks(monkeypatch, threads, budget, item_min, index_dtype, workers, fast_add_at):
    """Chunked scatter equals a one-shot np.add.at: whole-item chunks (large budget; items grouped with offsets,
    or one at a time with their own indices, item_min 1), value chunks split within and across batch items with
    a mark array (300 bytes) or sorting (20 bytes) to find repeats; with 3 workers, whole chunks run on the
    workers (disjoint: whole-item chunks of the scatter, every chunk of the gather). argmax is left as it was.
    fast_add_at: float repeats summed by np.add.at into a kept buffer (NumPy >= 1.25) or by np.bincount."""
    from gpuconv.numpy_backend import pool as P
    threads(workers)
    monkeypatch.setattr(P, "_FAST_ADD_AT", fast_add_at)
    monkeypatch.setattr(P, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(P, "_PIECE_MIN", 2**40)
    monkeypatch.setattr(P, "_SCATTER_CHUNK", 7)
    monkeypatch.setattr(P, "_ITEM_CHUNK_MIN", item_min)
    monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)
    vals = rand((3, 1, 4, 4, 2), np.float64)
    am = RNG.integers(0, 20, size=vals.shape).astype(index_dtype)
    before = am.copy()
    for include in (False, True):
        out = BACKEND.argmax_scatter(vals, am, (3, 1, 5, 4, 2), include)
        want = np.zeros(3 * 40)
        idx = am.reshape(3, -1).astype(np.int64) + (0 if include else np.arange(3)[:, None] * 40)
        np.add.at(want, idx.reshape(-1), vals.reshape(-1))
        np.testing.assert_allclose(out.reshape(-1), want, rtol=1e-12)
        got = BACKEND.argmax_gather(out, am, include)
        np.testing.assert_array_equal(got.reshape(-1), out.reshape(-1)[idx.reshape(-1)])
        np.testing.assert_array_equal(am, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("budget", [32 * 2**20, 200])
@pytest.mark.parametrize("fast_add_at", [True, False])
def test_argmax_scatter_float_repeats_rounded_once_per_item(monkeypatch, threads, dtype, budget, fast_add_at):
    """Float repeats of a cell are summed in float64 and rounded once per cell however many pieces of
    _SCATTER_CHUNK updates and windows of cells (budget 200 bytes: 25-cell windows over a 40-cell item, whole-item
    chunks still) they are spread over: 1 + 2^11 - 2^11 per cell is 1 (rounded per piece, 2^11 + 1 would round
    to 2^11 in float16 and the 1 would be lost; in float32 with 2^25). Against np.add.at in float64, rounded
    once. Mutant: rounding the sums per piece (what the backend did before, for items of > 2^20 updates)."""
    from gpuconv.numpy_backend import pool as P
    threads(1)
    monkeypatch.setattr(P, "_FAST_ADD_AT", fast_add_at)
    monkeypatch.setattr(P, "_SCATTER_CHUNK", 4)
    monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)
    big = 2.0**25 if dtype == np.float32 else 2.0**11
    n_items, per_item, cells = 2, 10, 40
    vals = np.zeros((n_items, 1, 1, per_item, 1))
    am = np.zeros(vals.shape, np.int64)
    for item in range(n_items):
        for j, cell in enumerate((3, 31, 17)):            # three cells, in both windows of the small budget
            # 1 first, the cancelling pair in later pieces (indices 0-3 are piece 0; 4-7 piece 1; 8-9 piece 2)
            for slot, value in ((j, 1.0), (4 + j, big), (8 + j % 2 if j < 2 else 7, -big)):
                vals[item, 0, 0, slot, 0], am[item, 0, 0, slot, 0] = value, cell
    vals = vals.astype(dtype)
    out = BACKEND.argmax_scatter(vals, am, (n_items, 1, 1, cells, 1), False)
    want = np.zeros(n_items * cells)
    np.add.at(want, (am.reshape(n_items, -1) + np.arange(n_items)[:, None] * cells).reshape(-1),
              vals.reshape(-1).astype(np.float64))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.reshape(-1), want.astype(dtype))
    assert out.reshape(n_items, cells)[:, [3, 31, 17]].tolist() == [[1.0] * 3] * n_items


# ---------------------------------------------------------------------------------------------------------
# bounded scratch
# ---------------------------------------------------------------------------------------------------------
def _peak_extra(fn, *args):
    """Peak bytes traced during fn(*args) minus the bytes of its result (inputs exist before tracing)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    outs = out if isinstance(out, tuple) else (out,)
    return peak - sum(o.nbytes for o in outs)


def test_thread_buffers_are_kept_per_thread_up_to_the_scratch_budget(monkeypatch):
    """_window.thread_buffer: one kept buffer per thread and name (dtypes share its bytes, a larger request grows
    it), and requests above SCRATCH_BYTES get fresh arrays that are not kept."""
    from concurrent.futures import ThreadPoolExecutor
    a = _window.thread_buffer("test-kept", 1000, np.float32)
    b = _window.thread_buffer("test-kept", 10, np.float64)
    assert a.dtype == np.float32 and a.size == 1000 and b.dtype == np.float64 and b.size == 10
    assert np.shares_memory(a, b)
    with ThreadPoolExecutor(1) as ex:                                     # another thread: its own buffer
        assert not np.shares_memory(a, ex.submit(_window.thread_buffer, "test-kept", 1000, np.float32).result())
    grown = _window.thread_buffer("test-kept", 2000, np.float32)
    assert grown.size == 2000 and np.shares_memory(grown, _window.thread_buffer("test-kept", 10, np.float32))
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 4096)
    big = _window.thread_buffer("test-kept", 1025, np.float32)
    assert big.size == 1025 and not np.shares_memory(big, _window.thread_buffer("test-kept", 1025, np.float32))
    assert np.shares_memory(grown, _window.thread_buffer("test-kept", 1024, np.float32))    # still kept


@pytest.fixture
def threads():
    """Set the NumPy backend's worker count for one test: threads(n)."""
    yield _parallel.set_num_threads
    _parallel.set_num_threads(None)


def test_set_num_threads_during_a_call(monkeypatch, threads):
    """set_num_threads from another thread while a call hands its chunks to the pool: the call finishes on the
    pool it started with, right (it got "cannot schedule new futures after shutdown", and pool threads already
    given a filter-gradient chunk waited forever, so the interpreter hung at exit). The other thread's call runs
    once the chunks are handed over (it waits for the pool lock, here for up to 0.2 s per submit)."""
    from concurrent.futures import ThreadPoolExecutor
    threads(4)
    gemm_chunks_on_pool(monkeypatch, lambda: True)                       # wgrad's chunks go to the pool,
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 2**16)                 # several of them
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 24, 24, 16)).astype(np.float32)
    dy = rng.standard_normal((8, 24, 24, 16)).astype(np.float32)
    with gc.use_backend("numpy"):
        threads(1)
        want = gc.conv2d_backprop_filter(x, (3, 3, 16, 16), dy, 1, "SAME")
        threads(4)
        real_submit = ThreadPoolExecutor.submit
        togglers = []

        def submit(self, *args, **kwargs):
            future = real_submit(self, *args, **kwargs)
            t = threading.Thread(target=_parallel.set_num_threads, args=(4,))
            t.start()
            t.join(0.2)
            togglers.append(t)
            return future
        monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
        got = gc.conv2d_backprop_filter(x, (3, 3, 16, 16), dy, 1, "SAME")
        monkeypatch.setattr(ThreadPoolExecutor, "submit", real_submit)
    for t in togglers:
        t.join(10)
        assert not t.is_alive()
    assert len(togglers) == 3                                            # 3 pool threads for 4 workers
    np.testing.assert_array_equal(got, want)


def _forked_child_pool(conn, x, dy) -> None:
    """In a forked child: a pooled filter gradient, and the names of the threads that ran 8 short chunks."""
    import time
    with gc.use_backend("numpy"):
        got = gc.conv2d_backprop_filter(x, (3, 3, 16, 16), dy, 1, "SAME")
    names = set()
    _parallel.map_chunks(lambda i: (names.add(threading.current_thread().name), time.sleep(0.05)), range(8))
    conn.send((got, sorted(names)))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_pool_and_locks(monkeypatch, threads):
    """A child forked while the pool exists (multiprocessing's "fork", e.g. data-loader workers) and while another
    thread of the parent held the pool's lock and the backend registry's computes the same result on a pool of
    its own: it hung on the copied held locks, and without them ran every chunk on its calling thread (the
    copied pool has no threads)."""
    import multiprocessing
    import warnings

    from gpuconv import backend
    threads(3)
    gemm_chunks_on_pool(monkeypatch, lambda: True)
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 2**16)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 24, 24, 16)).astype(np.float32)
    dy = rng.standard_normal((8, 24, 24, 16)).astype(np.float32)
    with gc.use_backend("numpy"):
        want = gc.conv2d_backprop_filter(x, (3, 3, 16, 16), dy, 1, "SAME")    # the parent's pool exists now
    assert _parallel._pool is not None
    held, release = threading.Event(), threading.Event()

    def holder():
        with _parallel._lock, backend._lock:
            held.set()
            release.wait(30)
    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # Python 3.12+: fork() of a threaded process
        child = ctx.Process(target=_forked_child_pool, args=(child_end, x, dy))
        child.start()
    try:
        assert parent_end.poll(60), "the forked child hung"
        got, names = parent_end.recv()
    finally:
        release.set()
        t.join(10)
        child.join(10)
        if child.is_alive():
            child.kill()
    np.testing.assert_array_equal(got, want)
    assert any(n.startswith("gpuconv-numpy") for n in names), names    # the child's own pool ran chunks


@pytest.mark.parametrize("workers", [1, 2])
def test_scratch_is_bounded(monkeypatch, threads, workers):
    """With a 4 MiB budget, a layer whose full im2col buffer is 72 MiB stays within it (+ filter copies), per
    worker: total scratch = workers x budget."""
    from gpuconv.geometry import conv_problem, pool_problem
    threads(workers)
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 4 * 2**20)
    gemm_chunks_on_pool(monkeypatch, lambda: _parallel.workers() > 1)
    x = np.ones((8, 64, 64, 64), np.float32).reshape(8, 1, 64, 64, 64)
    w = np.ones((1, 3, 3, 64, 64), np.float32)
    p = conv_problem(x.shape, w.shape, (1, 1, 1), (1, 1, 1), "SAME")
    full_im2col = p.N * p.P * p.Q * 9 * 64 * 4
    assert full_im2col > 16 * _window.SCRATCH_BYTES
    limit = workers * (_window.SCRATCH_BYTES + 4 * w.nbytes + 2**20)      # the serial bound, per worker
    dy = np.ones(p.y_shape, np.float32)
    assert _peak_extra(BACKEND.conv_fprop, x, w, p) < limit
    assert _peak_extra(BACKEND.conv_dgrad, dy, w, p) < limit
    assert _peak_extra(BACKEND.conv_wgrad, x, dy, p) < limit
    pp = pool_problem(x.shape, (1, 3, 3), (1, 1, 1), "SAME")
    assert _peak_extra(BACKEND.max_pool_argmax, x, pp, np.dtype(np.int64), False) < limit
    assert _peak_extra(BACKEND.avg_pool_grad, dy, pp) < limit
    pp = pool_problem(x.shape, (1, 2, 2), (1, 2, 2), "VALID")
    v, a = BACKEND.max_pool_argmax(x, pp, np.dtype(np.int64), False)
    assert _peak_extra(BACKEND.argmax_scatter, v, a, x.shape, False) < limit
    assert _peak_extra(BACKEND.argmax_gather, x, a, False) < limit


# ---------------------------------------------------------------------------------------------------------
# tiled max-pool fast path (windows that tile the rows) against the generic sweep
# ---------------------------------------------------------------------------------------------------------
TILED_CASES = [
    # x (canonical N, D, H, W, C), window, stride, padding
    ((3, 1, 6, 8, 5), (1, 2, 2), (1, 2, 2), "VALID"),
    ((2, 1, 7, 9, 3), (1, 2, 2), (1, 2, 2), "SAME"),          # border row and column by the generic sweep
    ((2, 1, 9, 7, 2), (1, 3, 3), (1, 3, 3), "SAME"),          # width padded before: interior from q = 1
    ((2, 3, 6, 6, 2), (1, 3, 2), (2, 3, 2), "VALID"),         # 3-D, one depth tap, depth stride 2
    ((2, 1, 4, 300, 1), (1, 2, 2), (1, 2, 2), "VALID"),       # offsets past uint8: uint16 codes
    ((1, 1, 4, 300, 300), (1, 2, 2), (1, 2, 2), "VALID"),     # offsets past uint16: int32 codes
    ((2, 1, 5, 6, 3), (1, 1, 3), (1, 1, 3), "VALID"),         # one window row
    ((2, 1, 6, 5, 3), (1, 3, 1), (1, 3, 1), "VALID"),         # one window column
]


def _generic_max_pool(monkeypatch, x, p, index_dtype, include):
    from gpuconv.numpy_backend import pool as pool_module
    with monkeypatch.context() as mp:
        mp.setattr(pool_module, "_tiled", lambda p, values_only=False: False)
        return pool_module.max_pool_argmax(x, p, index_dtype, include), pool_module.max_pool(x, p)


@pytest.mark.parametrize("case", TILED_CASES)
@pytest.mark.parametrize("data", ["ties", "nan", "zeros", "relu", "relu_one_negative_zero", "int16"])
def test_tiled_max_pool_matches_generic_sweep(monkeypatch, case, data):
    """Bit for bit (NaN payloads, signed zeros), with small fast boxes so that boxes split rows and columns.
    "relu": zero maxima, all +0 (no box needs the zero fix); "relu_one_negative_zero": the same with one -0.0
    seeding a window whose other cells are +0 or negative, so that one box must fix its zero maxima."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    xs, window, stride, pad = case
    rng = np.random.default_rng(7)
    x = _pool_input(xs, data, rng, nan_share=0.05, negative_share=0.5)
    p = pool_problem(x.shape, window, stride, pad)
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    if data == "relu_one_negative_zero":
        # The last interior window: its first cell -0.0, then a +0 (max of -0.0 and +0 may give either sign).
        n, z = xs[0] - 1, (p.Z - 1) * p.stride[0]
        h, w = (p.P - 2) * p.stride[1] - p.pad_before[1], (p.Q - 2) * p.stride[2] - p.pad_before[2]
        assert h >= 0 and w >= 0
        win = x[n, z, h:h + window[1], w:w + window[2], 0]
        win[...] = -1
        win.flat[0], win.flat[-1] = -0.0, 0.0
        assert np.signbit(x).any() and not np.signbit(x[x == 0]).sum() > 1
    assert pool_module._tiled(p)
    for values in (7, 10**6):
        monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", values)
        for idt, include in ((np.dtype(np.int64), False), (np.dtype(np.int32), True)):
            (want_y, want_a), want_m = _generic_max_pool(monkeypatch, x, p, idt, include)
            y, a = BACKEND.max_pool_argmax(x, p, idt, include)
            assert y.tobytes() == want_y.tobytes()
            np.testing.assert_array_equal(a, want_a)
            assert BACKEND.max_pool(x, p).tobytes() == want_m.tobytes()
        dy = _grad_with_specials(p.y_shape, x.dtype, rng)
        with monkeypatch.context() as mp:
            mp.setattr(pool_module, "_tiled", lambda p, values_only=False: False)
            want_dx = pool_module.max_pool_grad(x, dy, p)
        with monkeypatch.context() as mp:
            calls = _spy(mp, pool_module, "_scatter_selected")
            assert BACKEND.max_pool_grad(x, dy, p).tobytes() == want_dx.tobytes()
        assert calls or data == "nan" or not pool_module._tiled(p)   # the fast path scattered (NaN: maybe redone)


TILED_DEPTH_CASES = [
    # windows of several planes that tile the depth too: the values-only fast path (max_pool3d)
    ((2, 4, 6, 8, 5), (2, 2, 2), (2, 2, 2), "VALID"),
    ((2, 5, 7, 9, 3), (2, 2, 2), (2, 2, 2), "SAME"),          # a border plane, row and column by the sweep
    ((1, 6, 6, 6, 2), (3, 3, 3), (3, 3, 3), "VALID"),         # three planes
    ((2, 4, 5, 6, 3), (2, 1, 1), (2, 1, 1), "VALID"),         # planes only
]


@pytest.mark.parametrize("case", TILED_DEPTH_CASES)
@pytest.mark.parametrize("data", ["ties", "nan", "zeros", "relu", "relu_one_negative_zero", "int16"])
def test_tiled_max_pool3d_matches_generic_sweep(monkeypatch, case, data):
    """max_pool3d by the fast path (the window planes' maximum, then the tiled rows) against the generic sweep,
    bit for bit, with fast boxes of every size; the fast boxes run. A box where a NaN or a zero maximum next to
    a -0.0 could make np.maximum differ from the scan is scanned exactly ("relu_one_negative_zero": one window
    whose first cell is -0.0 and last +0, the others negative)."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    xs, window, stride, pad = case
    rng = np.random.default_rng(8)
    x = _pool_input(xs, data, rng, nan_share=0.05, negative_share=0.5)
    p = pool_problem(x.shape, window, stride, pad)
    if data == "relu_one_negative_zero":
        x[0, :window[0], :window[1], :window[2], 0] = -1
        x[0, 0, 0, 0, 0], x[0, window[0] - 1, window[1] - 1, window[2] - 1, 0] = -0.0, 0.0
    assert pool_module._tiled(p, values_only=True) and not pool_module._tiled(p)
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    with monkeypatch.context() as mp:
        mp.setattr(pool_module, "_tiled", lambda p, values_only=False: False)
        want = pool_module.max_pool(x, p)
    if data == "relu_one_negative_zero":
        assert np.signbit(want[0, 0, 0, 0, 0]) and want[0, 0, 0, 0, 0] == 0       # the scan keeps the first zero
    for values in (7, 10**6):
        monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", values)
        with monkeypatch.context() as mp:
            calls = _spy(mp, pool_module, "_fast_box")
            assert BACKEND.max_pool(x, p).tobytes() == want.tobytes()
        assert calls


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.uint8, np.int64])
@pytest.mark.parametrize("case", [TILED_CASES[0], TILED_CASES[2], TILED_CASES[3]])
def test_tiled_max_pool_grad_matches_generic_sweep_for_every_width(monkeypatch, dtype, case):
    """max_pool_grad's fast scatter (bit masks of the value's width) against the exact sweep, bit for bit."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    xs, window, stride, pad = case
    rng = np.random.default_rng(11)
    x = rng.integers(0 if dtype == np.uint8 else -3, 4, size=xs).astype(dtype)      # many ties
    p = pool_problem(x.shape, window, stride, pad)
    dy = _grad_with_specials(p.y_shape, x.dtype, rng) if x.dtype.kind == "f" else \
        rng.integers(0, 100, size=p.y_shape).astype(dtype)
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", 8)
    with monkeypatch.context() as mp:
        mp.setattr(pool_module, "_tiled", lambda p, values_only=False: False)
        want = pool_module.max_pool_grad(x, dy, p)
    assert pool_module._tiled(p)
    assert BACKEND.max_pool_grad(x, dy, p).tobytes() == want.tobytes()


def _pool_input(xs, data: str, rng, nan_share: float, negative_share: float) -> np.ndarray:
    """Pooling test data: halves in [-1.5, 1] with many ties ("ties"), with NaNs ("nan"), zeros of both signs as
    frequent maxima ("zeros": negative_share of the cells sign-flipped), post-ReLU ("relu...": zeros all +0), or
    small integers ("int16", "int8")."""
    if data.startswith("int"):
        info = np.iinfo(data)
        return rng.integers(max(info.min, -2), min(info.max, 3), size=xs).astype(data)
    x = (rng.integers(-3, 3, size=xs) / 2).astype(np.float32)
    if data == "nan":
        x[rng.random(xs) < nan_share] = np.nan
    elif data == "zeros":
        x = np.where(rng.random(xs) < 0.5, np.float32(0.0), np.minimum(x, 0)).astype(np.float32)
        x[rng.random(xs) < negative_share] *= -1
    elif data.startswith("relu"):
        x = np.maximum(x, np.float32(0))
    return x


def _spy(monkeypatch, module, name: str) -> list:
    """Patch module.name to record each of its results (it still runs) in the returned list."""
    results, real = [], getattr(module, name)

    def spy(*args):
        results.append(real(*args))
        return results[-1]

    monkeypatch.setattr(module, name, spy)
    return results


def _grad_with_specials(shape, dtype, rng) -> np.ndarray:
    """A gradient with -0.0 (arrives as +0.0) and, for floats, a NaN with a payload and infinities."""
    g = (rng.integers(-4, 5, size=shape) / 2).astype(dtype)
    flat = g.reshape(-1)
    flat[rng.random(flat.size) < 0.2] = 0
    if g.dtype.kind == "f":
        flat[rng.random(flat.size) < 0.2] *= -1                     # -0.0 among them
        flat[:3] = [np.inf, -np.inf, np.nan]
        if g.dtype == np.float32:
            flat[2:3].view(np.uint32)[0] = 0x7FC00ABC               # a quiet NaN with a payload
    return g


@pytest.mark.parametrize("xs, window, stride, pad", [
    ((2, 1, 9, 11, 3), (1, 3, 3), (1, 2, 2), "SAME"),        # overlapping, padded before and after (ResNet stem)
    ((2, 1, 7, 7, 2), (1, 3, 3), (1, 1, 1), "SAME"),
    ((2, 4, 6, 6, 2), (2, 2, 2), (2, 2, 2), "VALID"),        # 3-D 2x2x2: not the tiled path (depth taps)
    ((1, 3, 8, 9, 2), (2, 3, 2), (1, 2, 3), [[1, 0], [2, 1], [1, 1]]),   # explicit padding
])
@pytest.mark.parametrize("data", ["ties", "nan", "zeros", "relu", "int8"])
def test_max_pool_by_np_maximum_matches_the_scan(monkeypatch, xs, window, stride, pad, data):
    """The np.maximum sweep (_max_by_maximum) and, for argmax and MaxPoolGrad, the first-equal taps
    (_first_max_taps) against the exact scan, bit for bit: boxes with a NaN (np.maximum propagates any) or with a
    -0.0 and a zero maximum are rescanned, the rest keep np.maximum's result; small boxes, so that some boxes hold
    a NaN or a -0.0 and others do not."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    rng = np.random.default_rng(13)
    x = _pool_input(xs, data, rng, nan_share=0.03, negative_share=0.1)
    p = pool_problem(x.shape, window, stride, pad)
    assert not pool_module._tiled(p)
    monkeypatch.setattr(_window, "POOL_BOX_BYTES", 200)
    dy = _grad_with_specials(p.y_shape, x.dtype, rng) if data != "int8" else \
        rng.integers(-128, 128, size=p.y_shape).astype(np.int8)

    def every_op():
        return [BACKEND.max_pool(x, p), *BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), True),
                BACKEND.max_pool_grad(x, dy, p)]

    kept = _spy(monkeypatch, pool_module, "_max_by_maximum")
    firsts = _spy(monkeypatch, pool_module, "_first_max_taps")
    got = every_op()
    assert (firsts or data == "nan") and all(f is not None for f in firsts)   # argmax and grad took them
    monkeypatch.setattr(pool_module, "_max_by_maximum", lambda *a: False)      # the scan everywhere
    for a, b in zip(got, every_op()):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert len(kept) > 3 and all(kept) == (data not in ("nan", "zeros"))     # NaN / -0.0: some boxes rescanned


def test_windows_of_more_than_254_taps_take_the_scans_taps(monkeypatch):
    """_first_max_taps keeps tap positions in uint8: a 16x16 window (256 taps) leaves argmax and MaxPoolGrad to
    the scan's taps, with the same results as the scan everywhere."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    rng = np.random.default_rng(17)
    x = rng.integers(-2, 3, size=(2, 1, 18, 17, 3)).astype(np.float32)         # ties
    p = pool_problem(x.shape, (1, 16, 16), (1, 1, 1), "VALID")
    dy = rng.standard_normal(p.y_shape).astype(np.float32)
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    firsts = _spy(monkeypatch, pool_module, "_first_max_taps")
    got = [*BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), False), BACKEND.max_pool_grad(x, dy, p)]
    assert firsts and all(f is None for f in firsts)
    monkeypatch.setattr(pool_module, "_max_by_maximum", lambda *a: False)
    for a, b in zip(got, [*BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), False),
                          BACKEND.max_pool_grad(x, dy, p)]):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_zero_maxima_are_fixed_only_where_a_negative_zero_exists(monkeypatch, dtype):
    """Post-ReLU data (zero maxima, no -0.0) skips the fast path's zero fix in every box; a -0.0 makes its box
    (only its box) take it, and the results stay the generic sweep's bit for bit."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    x = np.maximum(np.random.default_rng(3).standard_normal((2, 1, 8, 8, 4)), 0).astype(dtype)
    p = pool_problem(x.shape, (1, 2, 2), (1, 2, 2), "VALID")
    monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", 16)       # one output row of one item per box
    fixes = _spy(monkeypatch, pool_module, "_fix_zeros")
    for values_only in (False, True):
        for negative_zero in (False, True):
            xx = x.copy()
            if negative_zero:
                xx[1, 0, 4:6, 2:4, 3] = [[-0.0, -1], [0, -1]]               # item 1, output row 2
            fixes.clear()
            got = BACKEND.max_pool(xx, p) if values_only else BACKEND.max_pool_argmax(xx, p, np.dtype(np.int64),
                                                                                     False)
            assert len(fixes) == (1 if negative_zero else 0)
            (want_y, want_a), want_m = _generic_max_pool(monkeypatch, xx, p, np.dtype(np.int64), False)
            if values_only:
                assert got.tobytes() == want_m.tobytes()
            else:
                assert got[0].tobytes() == want_y.tobytes()
                np.testing.assert_array_equal(got[1], want_a)
            assert np.signbit(got if values_only else got[0]).any() == negative_zero


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("late", ["negative_zero", "negative", "nan", "inf"])
def test_bit_order_maxima_give_way_where_a_later_box_holds_a_sign_or_nan(monkeypatch, dtype, late):
    """Post-ReLU data start the fast boxes on the maxima of the float bits as unsigned integers (_sign_free's
    probe reads 8 values here); a later box holding a -0.0 that the scan selects, a negative value or a NaN
    (bits above +inf's) is redone on the floats and the rest of the call stays there, while +inf keeps the bit
    path. Every op bit for bit the generic sweep's."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    x = np.maximum(np.random.default_rng(5).standard_normal((2, 1, 8, 8, 4)), 0).astype(dtype)
    x[x > 1.5] = 0                                                      # more zero windows
    special = {"negative_zero": -0.0, "negative": -1.0, "nan": np.nan, "inf": np.inf}[late]
    x[1, 0, 4:6, 2:4, 3] = [[special, 0], [0, 0]]                      # item 1, output row 2: a later box
    p = pool_problem(x.shape, (1, 2, 2), (1, 2, 2), "VALID")
    dy = _grad_with_specials(p.y_shape, x.dtype, np.random.default_rng(6))
    monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", 16)           # one output row of one item per box
    monkeypatch.setattr(pool_module, "_SIGN_PROBE", 8)
    maxima = _spy(monkeypatch, pool_module, "_box_maxima")
    got = []
    for op in (lambda: BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), False), lambda: [BACKEND.max_pool(x, p)],
               lambda: [BACKEND.max_pool_grad(x, dy, p)]):
        maxima.clear()
        got += op()
        kinds = "".join(X.dtype.kind for X, _ in maxima)                # per box: "u" bits, "f" floats
        # 8 boxes (2 items x 4 rows); box 6 (item 1, row 2) holds the special value: redone on the floats, and
        # box 7 runs there too.
        assert kinds == ("u" * 8 if late == "inf" else "u" * 7 + "f" * 2), kinds
    (want_y, want_a), want_m = _generic_max_pool(monkeypatch, x, p, np.dtype(np.int64), False)
    with monkeypatch.context() as mp:
        mp.setattr(pool_module, "_tiled", lambda p, values_only=False: False)
        want_dx = pool_module.max_pool_grad(x, dy, p)
    for g_, w_ in zip(got, [want_y, want_a, want_m, want_dx]):
        assert g_.dtype == w_.dtype and g_.tobytes() == w_.tobytes()
    if late == "negative_zero":
        assert np.signbit(got[0][1, 0, 2, 1, 3]) and np.signbit(got[2][1, 0, 2, 1, 3])   # the scan's first cell


@pytest.mark.parametrize("xs, pad", [((4, 1, 22, 30, 512), "VALID"), ((3, 1, 30, 44, 512), "VALID"),
                                     ((4, 1, 90, 120, 256), "VALID"), ((2, 1, 7, 9, 3), "SAME")])
@pytest.mark.parametrize("nw", [1, 2, 3, 8])
def test_fast_boxes_tile_the_interior_in_few_boxes_per_worker(xs, pad, nw):
    """The fast boxes cover the interior once; serial boxes hold at most twice _FAST_BOX_VALUES values (whole
    planes), boxes for several workers at most _FAST_BOX_VALUES and a worker's share: one box per worker where a
    share fits (SegNet's pool5 at N=4 on 2 workers: 2 boxes, not 4)."""
    from gpuconv.geometry import pool_problem
    from gpuconv.numpy_backend import pool as pool_module
    p = pool_problem(xs, (1, 2, 2), (1, 2, 2), pad)
    inner = pool_module.interior(p)
    covered = np.zeros((p.N, p.Z, p.P, p.Q), np.int64)
    sizes = []
    for (n0, n1), z, (a, b), (q0, q1) in pool_module._fast_boxes(p, inner, nw):
        covered[n0:n1, z, a:b, q0:q1] += 1
        sizes.append((n1 - n0) * (b - a) * (q1 - q0) * p.C)
    (z0, z1), (p0, p1), (q0, q1) = inner
    want = np.zeros_like(covered)
    want[:, z0:z1, p0:p1, q0:q1] = 1
    np.testing.assert_array_equal(covered, want)
    total = sum(sizes)
    if nw == 1:
        assert max(sizes) <= 2 * pool_module._FAST_BOX_VALUES
        assert len(sizes) == 1 or total > 2 * pool_module._FAST_BOX_VALUES
    else:
        assert max(sizes) <= min(pool_module._FAST_BOX_VALUES, -(-total // nw))
    if nw == 2 and xs == (4, 1, 22, 30, 512):
        assert len(sizes) == 2


# ---------------------------------------------------------------------------------------------------------
# worker pool: results independent of the thread count, concurrent callers, bounded cost of huge windows
# ---------------------------------------------------------------------------------------------------------
def _all_ops(rng):
    """Every canonical op on a few problems (small scratch budgets make many boxes), as a list of arrays."""
    from gpuconv.geometry import conv_problem, pool_problem
    outs = []
    for xs, ws, stride, pad, dt in [((3, 1, 9, 10, 5), (1, 3, 4, 5, 6), (1, 2, 2), "SAME", np.float32),
                                    ((2, 1, 8, 8, 2), (1, 3, 3, 2, 9), (1, 1, 1), "SAME", np.float32),  # col2im
                                    ((2, 1, 7, 6, 4), (1, 3, 3, 2, 6), (1, 1, 1), "VALID", np.float16),  # groups
                                    ((2, 1, 12, 12, 20), (1, 3, 3, 20, 8), (1, 1, 1), "SAME", np.float64),
                                    ((2, 1, 6, 7, 8), (1, 1, 1, 8, 5), (1, 1, 1), "VALID", np.float32),  # plain GEMMs
                                    ((2, 1, 8, 8, 6), (1, 1, 1, 6, 4), (1, 2, 2), "SAME", np.float32)]:
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        p = conv_problem(x.shape, w.shape, stride, (1, 1, 1), pad)
        dy = rng.standard_normal(p.y_shape).astype(dt)
        outs += [BACKEND.conv_fprop(x, w, p), BACKEND.conv_dgrad(dy, w, p), BACKEND.conv_wgrad(x, dy, p)]
    for xs, win, stride, pad in [((3, 1, 13, 11, 6), (1, 3, 3), (1, 2, 2), "SAME"),
                                 ((3, 1, 12, 16, 6), (1, 2, 2), (1, 2, 2), "SAME"),   # tiled
                                 ((2, 1, 9, 9, 3), (1, 2, 2), (1, 1, 1), "VALID")]:
        x = np.round(rng.standard_normal(xs)).astype(np.float32)
        x[rng.random(xs) < 0.02] = np.nan
        p = pool_problem(x.shape, win, stride, pad)
        y, a = BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), False)
        dy = rng.standard_normal(p.y_shape).astype(np.float32)
        outs += [y, a, BACKEND.max_pool(x, p), BACKEND.max_pool_grad(x, dy, p), BACKEND.avg_pool(x, p),
                 BACKEND.avg_pool_grad(dy, p), BACKEND.avg_unpool(dy, p),
                 BACKEND.argmax_scatter(dy, a, p.x_shape, False), BACKEND.argmax_gather(x, a, False)]
    return outs


@pytest.mark.parametrize("piece_min", [16, 2**40])
@pytest.mark.parametrize("budget", [3000, 32 * 2**20])
def test_results_do_not_depend_on_thread_count(monkeypatch, threads, budget, piece_min):
    """Bit for bit the same with 1, 2 and 3 workers (each output element is computed by one worker, wgrad's
    partial sums are added in box order). piece_min: argmax_scatter / _gather split each index chunk into
    pieces (16), or run whole chunks on the workers (2**40: no chunk is split)."""
    from gpuconv.numpy_backend import pool as pool_module
    monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)
    monkeypatch.setattr(pool_module, "_FAST_BOX_VALUES", 50 if budget < 2**20 else 2**18)
    monkeypatch.setattr(pool_module, "_PIECE_MIN", piece_min)
    monkeypatch.setattr(pool_module, "_PARALLEL_MIN", 0)
    gemm_chunks_on_pool(monkeypatch, lambda: _parallel.workers() > 1)    # whatever BLAS's threads
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(_all_ops(np.random.default_rng(5)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_ieee_specials_give_no_floating_point_warnings(monkeypatch, threads, workers):
    """inf - inf inside a GEMM, NaN, and float16 sums past 65504 give their IEEE results (NaN, inf) without a
    NumPy warning, on the calling thread and on the pool's threads (which run in the caller's context:
    test_chunks_run_in_the_callers_context)."""
    import warnings

    from gpuconv.numpy_backend import pool as pool_module
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 3000)
    monkeypatch.setattr(pool_module, "_PIECE_MIN", 16)
    monkeypatch.setattr(pool_module, "_PARALLEL_MIN", 0)
    gemm_chunks_on_pool(monkeypatch, lambda: _parallel.workers() > 1)
    threads(workers)
    outs = {}
    for dtype, special in ((np.float32, None), (np.float16, 6e4)):
        x = np.abs(RNG.standard_normal((2, 8, 8, 4))).astype(dtype)
        w = np.abs(RNG.standard_normal((3, 3, 4, 4))).astype(dtype)
        dy = np.abs(RNG.standard_normal((2, 8, 8, 4))).astype(dtype)
        if special is None:
            x[0, 2, 2, 1], x[0, 2, 3, 1], x[1, 5, 5, 0] = np.inf, -np.inf, np.nan
            dy[1, 4, 4, 2], dy[1, 4, 5, 2] = np.inf, -np.inf
        else:
            x[...], dy[...] = dtype(special), dtype(special)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            v, a = gc.max_pool_with_argmax(x, 2, 2, "VALID")
            outs[dtype] = [gc.conv2d(x, w, 1, "SAME"), gc.conv2d_backprop_input(x.shape, w, dy, 1, "SAME"),
                           gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME"), gc.avg_pool2d(x, 2, 1, "VALID"),
                           gc.max_unpool(np.concatenate([v, v], 2), np.concatenate([a, a], 2), x.shape)]
    assert all(np.isnan(o).any() for o in outs[np.float32][:4])               # inf - inf, NaN
    conv16, unpool16 = outs[np.float16][:3], outs[np.float16][4]
    assert all(np.isinf(o).any() for o in conv16 + [unpool16])                # sums past float16's range


@pytest.mark.parametrize("workers", [1, 2])
def test_one_by_one_gemms_are_split_for_the_pool(monkeypatch, threads, workers):
    """A 1x1 stride-1 conv reads x as it is (no columns to budget); its GEMMs are still split, into the same
    chunks whatever the worker count, so that a pool with a single-threaded BLAS has work for every worker."""
    from gpuconv.geometry import conv_problem
    threads(workers)
    counts = []
    real_map, real_sum = _parallel.map_chunks, _parallel.sum_in_order
    monkeypatch.setattr(_parallel, "map_chunks", lambda fn, items, parallel=True: (
        counts.append(len(items)), real_map(fn, items, parallel))[1])
    monkeypatch.setattr(_parallel, "sum_in_order", lambda partial, items, totals, parallel: (
        counts.append(len(items)), real_sum(partial, items, totals, parallel))[1])
    x = RNG.standard_normal((8, 1, 32, 32, 128)).astype(np.float32)        # 8192 positions
    w = RNG.standard_normal((1, 1, 1, 128, 64)).astype(np.float32)
    p = conv_problem(x.shape, w.shape, (1, 1, 1), (1, 1, 1), "VALID")
    dy = RNG.standard_normal(p.y_shape).astype(np.float32)
    y, dx, dw = BACKEND.conv_fprop(x, w, p), BACKEND.conv_dgrad(dy, w, p), BACKEND.conv_wgrad(x, dy, p)
    assert counts == [2, 2, 2]                                             # boxes of 4096 positions
    xm, dym = x.reshape(-1, 128).astype(np.float64), dy.reshape(-1, 64).astype(np.float64)
    np.testing.assert_allclose(y.reshape(-1, 64), xm @ w.reshape(128, 64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.reshape(-1, 128), dym @ w.reshape(128, 64).T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw.reshape(128, 64), xm.T @ dym, rtol=1e-4, atol=1e-3)


def test_calls_from_several_threads_share_the_pool(monkeypatch, threads):
    """8 user threads calling at once through a 2-worker pool: no deadlock, same bits as serial calls."""
    import concurrent.futures
    from gpuconv.numpy_backend import pool as pool_module
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 3000)
    monkeypatch.setattr(pool_module, "_PARALLEL_MIN", 0)
    gemm_chunks_on_pool(monkeypatch, lambda: _parallel.workers() > 1)
    threads(1)
    want = _all_ops(np.random.default_rng(9))
    threads(2)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda _: _all_ops(np.random.default_rng(9)), range(8)))
    for outs in got:
        for a, b in zip(want, outs):
            assert a.tobytes() == b.tobytes()


def test_errors_in_chunks_reach_the_caller(threads):
    threads(2)

    def fn(i):
        if i == 3:
            raise ValueError("chunk 3")
        return i

    with pytest.raises(ValueError, match="chunk 3"):
        _parallel.map_chunks(fn, range(8))
    seen = []
    with pytest.raises(ValueError, match="chunk 3"):
        _parallel.map_ordered(fn, range(8), seen.append)
    assert seen == [0, 1, 2][:len(seen)]                              # combined in order, none after chunk 3
    assert _parallel.map_chunks(lambda i: None, range(4)) is None     # the pool still works


@pytest.mark.parametrize("combine", [False, True])
@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failing_chunk_stops_the_call(threads, combine, error):
    """Once a chunk raises, no further chunk starts: a Ctrl-C (KeyboardInterrupt) during a parallel op was kept
    until every remaining chunk had run (all 39 others here). Chunk 0 fails at once, while the other worker is
    about one 20 ms chunk in (a loose bound: a loaded machine may delay the failing thread)."""
    import time
    threads(2)
    ran = []

    def fn(i):
        if i == 0:
            raise error("stop")
        ran.append(i)
        time.sleep(0.02)
        return i

    with pytest.raises(error, match="stop"):
        if combine:
            _parallel.map_ordered(fn, range(40), lambda r: None)
        else:
            _parallel.map_chunks(fn, range(40))
    assert len(ran) < 20, ran
    assert _parallel.map_chunks(lambda i: None, range(4)) is None     # the pool still works


def test_a_chunk_taken_but_not_yet_started_still_runs(monkeypatch, threads):
    """A pool thread descheduled between taking a chunk and starting it must still run it when the calling thread
    meanwhile finds nothing left to take and finishes: map_chunks stopped the call then, and the taken chunk was
    silently skipped (its output part never written). The pause is a 20 ms sleep in the pool thread's check of
    the stop flag just before it starts a chunk (found by a fuzz run's repro, 2026-11-23)."""
    import sys
    import time
    import types

    class SlowEvent(threading.Event):
        def is_set(self):
            if threading.current_thread() is not threading.main_thread() and sys._getframe(1).f_code.co_name == "run":
                time.sleep(0.02)
            return super().is_set()

    shim = types.SimpleNamespace(**{k: getattr(threading, k) for k in dir(threading) if not k.startswith("__")})
    shim.Event = SlowEvent
    monkeypatch.setattr(_parallel, "threading", shim)
    threads(2)
    for _ in range(10):
        ran = []
        lock = threading.Lock()

        def fn(i):
            with lock:
                ran.append(i)
            time.sleep(0.003)

        _parallel.map_chunks(fn, list(range(4)), True)
        assert sorted(ran) == [0, 1, 2, 3]


@pytest.mark.parametrize("combine", [False, True])
def test_chunks_run_in_the_callers_context(threads, combine):
    """Pool threads see the caller's np.errstate (a context variable): a barrier makes two threads run the two
    chunks at once, so one of them is surely a pool thread."""
    import threading
    threads(2)
    barrier = threading.Barrier(2, timeout=30)
    seen = {}

    def fn(i):
        barrier.wait()
        seen[i] = (threading.get_ident(), np.geterr()["invalid"])
        return i

    with np.errstate(invalid="ignore"):
        if combine:
            _parallel.map_ordered(fn, range(2), lambda r: None)
        else:
            _parallel.map_chunks(fn, range(2))
    assert len({ident for ident, _ in seen.values()}) == 2
    assert [mode for _, mode in seen.values()] == ["ignore", "ignore"]


def test_huge_window_on_tiny_input_costs_the_input_not_the_window():
    """A 2^28 window (or a 2^28 dilation) on a 1x1 input: only taps that can touch the input are visited, and
    no buffer spans the receptive field (this used to reach 6 GiB and MemoryError). Measured on a second run,
    so that lazy imports and per-thread buffers of the first one (this test alone in a process) do not count."""
    x = np.full((1, 1, 1, 1), 3, np.float32)
    w = np.arange(1, 10, dtype=np.float32).reshape(3, 3, 1, 1)
    big = 2**28

    def run() -> None:
        assert gc.max_pool2d(x, big, 1, "SAME").ravel().tolist() == [3.0]
        assert gc.max_pool2d(x, big, big, "SAME").ravel().tolist() == [3.0]
        assert gc.avg_pool2d(x, big, 1, "SAME").ravel().tolist() == [3.0]
        v, a = gc.max_pool_with_argmax(x, big, 1, "SAME")
        assert v.ravel().tolist() == [3.0] and a.ravel().tolist() == [0]
        assert gc.max_unpool(v, a, x.shape).ravel().tolist() == [3.0]
        assert gc.max_pool_grad(x, v, x, big, 1, "SAME").ravel().tolist() == [3.0]
        assert gc.avg_pool_grad(x.shape, x, big, 1, "SAME").ravel().tolist() == [3.0]
        assert gc.avg_unpool(x, big, 1, "SAME", x.shape).ravel().tolist() == [3.0]
        x2 = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
        y2 = gc.max_pool2d(x2, [1, big, 3, 1], 1, "SAME")
        np.testing.assert_array_equal(y2, gc.max_pool2d(x2, [1, 5, 3, 1], 1, "SAME"))
        # Conv: only the centre tap of a hugely dilated 3x3 filter reads the input.
        assert gc.conv2d(x, w, 1, "SAME", dilations=big).ravel().tolist() == [15.0]
        assert gc.conv2d_backprop_input(x.shape, w, x, 1, "SAME", dilations=big).ravel().tolist() == [15.0]
        dw = gc.conv2d_backprop_filter(x, w.shape, x, 1, "SAME", dilations=big)
        assert dw.ravel().tolist() == [0, 0, 0, 0, 9, 0, 0, 0, 0]

    run()
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5", "100000", "2_0", "\u0662", "+2"])
def test_malformed_thread_count_is_a_value_error(monkeypatch, threads, value):
    """GPUCONV_NUM_THREADS and set_num_threads take an integer in [1, MAX_THREADS]; anything else is refused,
    never clamped or ignored (a typo must not silently become the CPU count or 100000 threads)."""
    monkeypatch.setenv("GPUCONV_NUM_THREADS", value)
    threads(None)
    with pytest.raises(ValueError, match=f"GPUCONV_NUM_THREADS: expected .* got {re.escape(repr(value))}"):
        _parallel.num_threads()
    monkeypatch.setenv("GPUCONV_NUM_THREADS", " 3 ")
    threads(None)
    assert _parallel.num_threads() == 3
    for bad in (0, -1, 2.0, True, "x", _parallel.MAX_THREADS + 1):
        with pytest.raises(ValueError, match="num_threads"):
            threads(bad)
    threads(_parallel.MAX_THREADS)
    assert _parallel.num_threads() == _parallel.MAX_THREADS


def test_malformed_winograd_setting_is_a_value_error(monkeypatch):
    x = RNG.standard_normal((1, 6, 6, 32)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    monkeypatch.setenv("GPUCONV_WINOGRAD", "off")
    with pytest.raises(ValueError, match="GPUCONV_WINOGRAD: expected 0 .* got 'off'"):
        gc.conv2d(x, w, 1, "SAME")
    monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
    direct = gc.conv2d(x, w, 1, "SAME")
    monkeypatch.setenv("GPUCONV_WINOGRAD", "")
    np.testing.assert_allclose(gc.conv2d(x, w, 1, "SAME"), direct, rtol=1e-4, atol=1e-4)


def test_axis_taps_are_exactly_the_taps_that_meet_the_input():
    """_window.axis_taps (pooling's visited taps, conv's non-zero filter-gradient taps) against brute force."""
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n, k, s, d, pb, o = (int(v) for v in rng.integers((0, 1, 1, 1, 0, 0), (8, 12, 5, 5, 12, 8)))
        want = tuple(t for t in range(k) if any(0 <= q * s + t * d - pb < n for q in range(o)))
        assert _window.axis_taps(n, k, s, d, pb, o) == want, (n, k, s, d, pb, o)


def test_huge_filter_gradient_costs_its_output_not_the_taps():
    """filter_sizes of 1001 x 1001 on a 1x1 input: dw (4 MB) is zero except the one tap that meets the input,
    and the gather visits only that tap (it used to build million-entry tap lists and a 1001^2-tap column)."""
    x = np.full((1, 1, 1, 1), 3, np.float32)
    gc.conv2d_backprop_filter(x, (3, 3, 1, 1), x, 1, "SAME")      # lazy imports outside the measurement
    tracemalloc.start()
    try:
        dw = gc.conv2d_backprop_filter(x, (1001, 1001, 1, 1), x, 1, "SAME")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dw.shape == (1001, 1001, 1, 1) and dw[500, 500, 0, 0] == 9 and np.count_nonzero(dw) == 1
    assert peak - dw.nbytes < 2**20


def _fake_blas(monkeypatch, threads: int, settable: bool = True) -> list:
    """A fake BLAS thread count for _parallel.gemm_workers: [current count, calls of the setter...]."""
    state = [threads]

    def setter(n):
        state[0] = n
        state.append(n)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: state[0])
    monkeypatch.setattr(_parallel, "_blas_setter", lambda: setter if settable else None)
    return state


@pytest.mark.parametrize("transforms", [False, True])
def test_gemm_workers_keeps_blas_threads_for_direct_chunks_and_few_chunks(monkeypatch, threads, transforms):
    threads(2)
    blas = _fake_blas(monkeypatch, 2)
    with _parallel.gemm_workers(3, transforms) as parallel:      # fewer than 2 per worker: in order
        assert parallel is False and blas[0] == 2
    with _parallel.gemm_workers(8, transforms) as parallel:
        assert parallel is transforms and blas[0] == (1 if transforms else 2)
    assert blas == ([2, 1, 2] if transforms else [2])              # set to 1, then back to 2
    threads(1)
    with _parallel.gemm_workers(8, transforms) as parallel:      # one worker: nothing to spread
        assert parallel is False
    assert len(blas) == (3 if transforms else 1)


def test_gemm_workers_with_a_single_threaded_or_unknown_blas(monkeypatch, threads):
    threads(2)
    blas = _fake_blas(monkeypatch, 1)
    for transforms in (False, True):
        with _parallel.gemm_workers(2, transforms) as parallel:  # BLAS on one thread already: any chunk count
            assert parallel is True
        with _parallel.gemm_workers(1, transforms) as parallel:
            assert parallel is False
    assert blas == [1]                                             # never set
    blas = _fake_blas(monkeypatch, 2, settable=False)              # not numpy's OpenBLAS: keep its threads
    with _parallel.gemm_workers(8, True) as parallel:
        assert parallel is False
    blas = _fake_blas(monkeypatch, 0)                              # thread count unknown
    with _parallel.gemm_workers(8, True) as parallel:
        assert parallel is False
    assert blas == [0]


def test_gemm_workers_restores_blas_threads_after_the_last_of_overlapping_calls_and_after_errors(monkeypatch,
                                                                                                   threads):
    threads(2)
    blas = _fake_blas(monkeypatch, 4)
    outer = _parallel.gemm_workers(8, True)
    assert outer.__enter__() is True and blas[0] == 1
    with _parallel.gemm_workers(8, True) as parallel:            # another call meanwhile: still limited
        assert parallel is True and blas[0] == 1
    with _parallel.gemm_workers(8, False) as parallel:           # direct chunks: in order, BLAS left as it is
        assert parallel is False and blas[0] == 1
    assert blas[0] == 1                                            # the first call still runs
    outer.__exit__(None, None, None)
    assert blas == [4, 1, 4]
    with pytest.raises(ZeroDivisionError):
        with _parallel.gemm_workers(8, True):
            1 / 0
    assert blas == [4, 1, 4, 1, 4] and _parallel._blas_limit["depth"] == 0


def test_gemm_workers_on_numpys_openblas_and_winograd_results_unchanged(monkeypatch, threads):
    """With numpy's bundled OpenBLAS: its thread count reads 1 inside and its own value after; a Winograd conv
    that runs its chunks that way gives the serial result bit for bit."""
    from gpuconv.numpy_backend import _winograd
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", 2**18)                  # several chunks
    setter, before = _parallel._blas_setter(), _parallel.blas_threads()
    if setter is None or before < 1:
        pytest.skip("numpy's BLAS is not its bundled OpenBLAS")
    try:
        setter(2)
        threads(2)
        with _parallel.gemm_workers(8, True) as parallel:
            assert parallel is True and _parallel.blas_threads() == 1
        assert _parallel.blas_threads() == 2
        rng = np.random.default_rng(3)
        x = rng.standard_normal((4, 32, 32, 32)).astype(np.float32)
        w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
        seen = []
        real = _parallel.gemm_workers

        def spy(chunks, transforms=False):
            seen.append((chunks, transforms))
            return real(chunks, transforms)
        _parallel.gemm_workers = spy
        try:
            both = gc.conv2d(x, w, 1, "SAME")
        finally:
            _parallel.gemm_workers = real
        assert any(t and c >= 4 for c, t in seen)                 # a Winograd call with chunks for 2 workers
        assert _parallel.blas_threads() == 2
        threads(1)
        setter(1)
        assert np.array_equal(both.view(np.uint32), gc.conv2d(x, w, 1, "SAME").view(np.uint32))
    finally:
        setter(before)


def _forked_child_blas(conn) -> None:
    conn.send((_parallel.blas_threads(), _parallel._blas_limit["depth"]))
    conn.close()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_child_forked_while_blas_is_held_at_one_thread_gets_its_count_back(threads):
    import multiprocessing
    import warnings
    setter, before = _parallel._blas_setter(), _parallel.blas_threads()
    if setter is None or before < 1:
        pytest.skip("numpy's BLAS is not its bundled OpenBLAS")
    try:
        setter(2)
        threads(2)
        with _parallel.gemm_workers(8, True):
            assert _parallel.blas_threads() == 1
            ctx = multiprocessing.get_context("fork")
            parent_end, child_end = ctx.Pipe(duplex=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)      # Python 3.12+: fork() with threads
                child = ctx.Process(target=_forked_child_blas, args=(child_end,))
                child.start()
            assert parent_end.poll(60), "the forked child hung"
            got = parent_end.recv()
            child.join(10)
            assert _parallel.blas_threads() == 1                       # the parent's call still holds it
        assert got == (2, 0) and _parallel.blas_threads() == 2
    finally:
        setter(before)


def test_concurrent_winograd_calls_share_the_blas_limit_and_restore_it(monkeypatch, threads):
    """Calls from several threads at once, each holding numpy's OpenBLAS at one thread for its chunks: every
    result is the serial one bit for bit, and the count is back at its value once all have returned."""
    from concurrent.futures import ThreadPoolExecutor

    from gpuconv.numpy_backend import _winograd
    setter, before = _parallel._blas_setter(), _parallel.blas_threads()
    if setter is None or before < 1:
        pytest.skip("numpy's BLAS is not its bundled OpenBLAS")
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", 2**18)                  # several chunks per call
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((4, 32, 32, 32)).astype(np.float32) for _ in range(4)]
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    try:
        setter(1)
        threads(1)
        want = [gc.conv2d(x, w, 1, "SAME") for x in xs]
        setter(3)
        threads(2)
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda x: gc.conv2d(x, w, 1, "SAME"), xs * 3))
        assert _parallel.blas_threads() == 3 and _parallel._blas_limit["depth"] == 0
        for i, g in enumerate(got):
            assert np.array_equal(g.view(np.uint32), want[i % 4].view(np.uint32))
    finally:
        setter(before)
