"""Finite-difference gradient checks in float64 for every differentiable op.

For an op f and a random cotangent g, L = <f(inputs), g>; the analytic gradient of L with respect to each
input (given by the op's gradient op, tf-semantics.md section 6) must equal the central difference of L, one
coordinate at a time (tiny shapes). The backprop ops are linear, so this checks their adjoints too. Max pooling
uses tie-free inputs (a permutation, cells at least 1 apart) so a small step never changes the selection.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
import loop_reference as R

EPS = 1e-6
TOL = 1e-6


def numeric_grad(loss, arr):
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + EPS
        up = loss()
        arr[idx] = old - EPS
        down = loss()
        arr[idx] = old
        grad[idx] = (up - down) / (2 * EPS)
    return grad


def check(f, inputs: dict, grads: dict, rng):
    """f(**inputs) -> array; grads[name](g) -> analytic dL/d inputs[name] for L = <f, g>."""
    y = f(**inputs)
    g = rng.uniform(-1, 1, y.shape)
    for name, analytic in grads.items():
        arr = inputs[name]
        num = numeric_grad(lambda: float(np.vdot(f(**inputs), g)), arr)
        got = analytic(g)
        assert got.shape == arr.shape, (name, got.shape, arr.shape)
        np.testing.assert_allclose(got, num, rtol=TOL, atol=TOL, err_msg=f"d/d{name}")


def _u(rng, shape):
    return rng.uniform(-1, 1, shape)


CONV_CASES = [
    # nsp, x shape (user layout), w shape, strides, padding, data_format, dilations
    (2, (1, 5, 4, 2), (3, 2, 2, 3), 2, "SAME", "NHWC", 1),
    (2, (1, 2, 6, 5), (2, 2, 1, 4), (1, 2), [(1, 0), (0, 2)], "NCHW", (2, 1)),      # groups 2, NCHW
    (2, (2, 5, 5, 1), (2, 3, 1, 2), 1, "VALID", "NHWC", 2),
    (3, (1, 3, 4, 3, 2), (2, 2, 2, 2, 2), (1, 2, 1), "SAME", "NDHWC", (1, 1, 2)),
    (3, (1, 2, 3, 3, 4), (1, 2, 2, 2, 2), 2, "VALID", "NCDHW", 1),
]
CONV_IDS = [f"{c[0]}d-{c[5]}-{c[4] if isinstance(c[4], str) else 'explicit'}" for c in CONV_CASES]


def _conv_ops(nsp):
    if nsp == 2:
        return (gpuconv.conv2d, gpuconv.conv2d_backprop_input, gpuconv.conv2d_backprop_filter,
                gpuconv.conv2d_transpose)
    return (gpuconv.conv3d, gpuconv.conv3d_backprop_input, gpuconv.conv3d_backprop_filter,
            gpuconv.conv3d_transpose)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_fprop(case):
    nsp, xs, ws, s, p, fmt, d = case
    conv, dgrad, wgrad, _ = _conv_ops(nsp)
    rng = np.random.default_rng(1)
    x, w = _u(rng, xs), _u(rng, ws)
    kw = dict(data_format=fmt, dilations=d)
    check(lambda x, w: conv(x, w, s, p, **kw), {"x": x, "w": w},
          {"x": lambda g: dgrad(x.shape, w, g, s, p, **kw), "w": lambda g: wgrad(x, w.shape, g, s, p, **kw)}, rng)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_transpose(case):
    """y = conv_transpose(u, w, O): dL/du = conv(g, w), dL/dw = backprop_filter(input=g, out_backprop=u)."""
    nsp, xs, ws, s, p, fmt, d = case
    conv, _, wgrad, tconv = _conv_ops(nsp)
    rng = np.random.default_rng(2)
    w = _u(rng, ws)
    u = _u(rng, conv(_u(rng, xs), w, s, p, data_format=fmt, dilations=d).shape)
    kw = dict(data_format=fmt, dilations=d)
    check(lambda u, w: tconv(u, w, xs, s, p, **kw), {"u": u, "w": w},
          {"u": lambda g: conv(g, w, s, p, **kw), "w": lambda g: wgrad(g, w.shape, u, s, p, **kw)}, rng)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_backprop_input_is_linear_with_adjoints(case):
    """dx = backprop_input(dy, w): dL/d(dy) = conv(g, w); dL/dw = backprop_filter(input=g, out_backprop=dy)."""
    nsp, xs, ws, s, p, fmt, d = case
    conv, dgrad, wgrad, _ = _conv_ops(nsp)
    rng = np.random.default_rng(3)
    w = _u(rng, ws)
    dy = _u(rng, conv(_u(rng, xs), w, s, p, data_format=fmt, dilations=d).shape)
    kw = dict(data_format=fmt, dilations=d)
    check(lambda dy, w: dgrad(xs, w, dy, s, p, **kw), {"dy": dy, "w": w},
          {"dy": lambda g: conv(g, w, s, p, **kw), "w": lambda g: wgrad(g, w.shape, dy, s, p, **kw)}, rng)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_backprop_filter_is_linear_with_adjoints(case):
    """dw = backprop_filter(x, dy): dL/dx = backprop_input(g, dy); dL/d(dy) = conv(x, g)."""
    nsp, xs, ws, s, p, fmt, d = case
    conv, dgrad, wgrad, _ = _conv_ops(nsp)
    rng = np.random.default_rng(4)
    x = _u(rng, xs)
    dy = _u(rng, conv(x, _u(rng, ws), s, p, data_format=fmt, dilations=d).shape)
    kw = dict(data_format=fmt, dilations=d)
    check(lambda x, dy: wgrad(x, ws, dy, s, p, **kw), {"x": x, "dy": dy},
          {"x": lambda g: dgrad(x.shape, g, dy, s, p, **kw), "dy": lambda g: conv(x, g, s, p, **kw)}, rng)


POOL_CASES = [
    # nsp, x (user layout), ksize, strides, padding, data_format
    (2, (1, 5, 5, 2), 3, 2, "SAME", "NHWC"),
    (2, (2, 2, 4, 5), (2, 3), (1, 2), [(1, 0), (0, 2)], "NCHW"),
    (2, (1, 4, 6, 1), 2, 1, "VALID", "NHWC"),
    (3, (1, 3, 4, 3, 2), 2, (1, 2, 2), "SAME", "NDHWC"),
    (3, (1, 2, 3, 4, 3), (2, 2, 3), 1, [(0, 1), (1, 0), (1, 1)], "NCDHW"),
]
POOL_IDS = [f"{c[0]}d-{c[5]}-{c[4] if isinstance(c[4], str) else 'explicit'}" for c in POOL_CASES]


def _pool_ops(nsp):
    if nsp == 2:
        return gpuconv.avg_pool2d, gpuconv.avg_pool_grad, gpuconv.max_pool2d, gpuconv.max_pool_grad
    return gpuconv.avg_pool3d, gpuconv.avg_pool3d_grad, gpuconv.max_pool3d, gpuconv.max_pool3d_grad


def _tie_free(rng, shape):
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_avg_pool_and_its_gradient(case):
    nsp, xs, k, s, p, fmt = case
    avg, avg_grad, _, _ = _pool_ops(nsp)
    rng = np.random.default_rng(5)
    x = _u(rng, xs)
    check(lambda x: avg(x, k, s, p, fmt), {"x": x}, {"x": lambda g: avg_grad(xs, g, k, s, p, fmt)}, rng)
    dy = _u(rng, avg(x, k, s, p, fmt).shape)            # avg_pool_grad is linear in dy; its adjoint is avg_pool
    check(lambda dy: avg_grad(xs, dy, k, s, p, fmt), {"dy": dy}, {"dy": lambda g: avg(g, k, s, p, fmt)}, rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool_tie_free(case):
    nsp, xs, k, s, p, fmt = case
    _, _, maxp, maxg = _pool_ops(nsp)
    rng = np.random.default_rng(6)
    x = _tie_free(rng, xs)
    y = maxp(x, k, s, p, fmt)
    check(lambda x: maxp(x, k, s, p, fmt), {"x": x}, {"x": lambda g: maxg(x, y, g, k, s, p, fmt)}, rng)


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[5] == "NHWC"], ids=lambda c: f"{c[1]}")
def test_max_pool_with_argmax_and_unpool(case, include_batch):
    """values of max_pool_with_argmax: gradient = max_pool_grad_with_argmax; max_unpool (linear in updates):
    gradient = max_unpool_grad; max_pool_grad_with_argmax (linear in grad): gradient = max_unpool_grad."""
    nsp, xs, k, s, p, fmt = case
    rng = np.random.default_rng(7)
    x = _tie_free(rng, xs)
    _, am = gpuconv.max_pool_with_argmax(x, k, s, p, include_batch_in_index=include_batch)
    kw = dict(include_batch_in_index=include_batch)
    check(lambda x: gpuconv.max_pool_with_argmax(x, k, s, p, **kw)[0], {"x": x},
          {"x": lambda g: gpuconv.max_pool_grad_with_argmax(x, g, am, k, s, p, **kw)}, rng)
    u = _u(rng, am.shape)
    check(lambda u: gpuconv.max_unpool(u, am, xs, **kw), {"u": u},
          {"u": lambda g: gpuconv.max_unpool_grad(g, am, **kw)}, rng)
    check(lambda u: gpuconv.max_pool_grad_with_argmax(x, u, am, k, s, p, **kw), {"u": u},
          {"u": lambda g: gpuconv.max_unpool_grad(g, am, **kw)}, rng)
    # max_unpool_grad is linear in grad; its adjoint is max_unpool (duplicates: random indices)
    am_rand = rng.integers(0, np.prod(xs[1:]) * (xs[0] if include_batch else 1), size=am.shape)
    gr = _u(rng, xs)
    check(lambda gr: gpuconv.max_unpool_grad(gr, am_rand, **kw), {"gr": gr},
          {"gr": lambda g: gpuconv.max_unpool(g, am_rand, xs, **kw)}, rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_avg_unpool(case):
    """avg_unpool is linear in updates; its gradient is sum pooling (the loop reference's, in the user layout)."""
    nsp, xs, k, s, p, fmt = case
    avg, _, _, _ = _pool_ops(nsp)
    rng = np.random.default_rng(8)
    u = _u(rng, avg(_u(rng, xs), k, s, p, fmt).shape)
    cl = fmt in ("NHWC", "NDHWC")
    ks = (k,) * nsp if isinstance(k, int) else k
    ss = (s,) * nsp if isinstance(s, int) else s

    def sum_pool(g):
        g_cl = g if cl else np.moveaxis(g, 1, -1)
        r = R.sum_pool(g_cl, ks, ss, p if isinstance(p, str) else [tuple(a) for a in p])
        return r if cl else np.moveaxis(r, -1, 1)
    check(lambda u: gpuconv.avg_unpool(u, k, s, p, xs, data_format=fmt), {"u": u}, {"u": sum_pool}, rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool_grad_is_linear_in_grad(case):
    """max_pool_grad(x, y, dy) is linear in dy; its adjoint is the gather at the selected cells
    (max_unpool_grad with the reference's argmax, channels-last)."""
    nsp, xs, k, s, p, fmt = case
    _, _, maxp, maxg = _pool_ops(nsp)
    rng = np.random.default_rng(9)
    x = _tie_free(rng, xs)
    y = maxp(x, k, s, p, fmt)
    cl = fmt in ("NHWC", "NDHWC")
    ks = (k,) * nsp if isinstance(k, int) else k
    ss = (s,) * nsp if isinstance(s, int) else s
    x_cl = x if cl else np.moveaxis(x, 1, -1)
    _, am = R.max_pool_with_argmax(x_cl, ks, ss, p if isinstance(p, str) else [tuple(a) for a in p])

    def gather(g):
        g_cl = np.ascontiguousarray(g if cl else np.moveaxis(g, 1, -1))
        r = gpuconv.max_unpool_grad(g_cl, am)
        return r if cl else np.moveaxis(r, -1, 1)
    dy = _u(rng, y.shape)
    check(lambda dy: maxg(x, y, dy, k, s, p, fmt), {"dy": dy}, {"dy": gather}, rng)
