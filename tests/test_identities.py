"""Seed 000's gradient identities and adjointness, over strides, paddings (SAME/VALID/explicit) and dilations.

d_x four ways: the autodiff-style formula (a NumPy scatter written here), conv2d_backprop_input, conv2d_transpose,
and conv2d of the zero-inserted, padded d_out with the 180-degree-rotated, in/out-swapped filter (identity A of
tf-semantics.md section 6). d_w three ways: the formula, conv2d_backprop_filter, and conv2d of x (channels as
batch) with d_out as the filter, stride and dilation swapping roles (identity B).
Adjointness: <conv(x,w), dy> = <x, dgrad(dy)> = <w, wgrad(x,dy)>, and the pooling/unpooling pairs.
Pads are derived with the loop reference's own geometry (not gpuconv.geometry).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpuconv
import loop_reference as R

# (H, W, kh, kw, strides, dilations, padding)
CONFIGS = [
    (5, 5, 3, 3, (1, 1), (1, 1), "VALID"),
    (6, 7, 3, 2, (2, 2), (1, 1), "SAME"),
    (7, 6, 2, 3, (2, 3), (1, 1), "VALID"),
    (7, 7, 3, 3, (1, 1), (2, 2), "SAME"),
    (8, 7, 3, 2, (2, 1), (2, 3), "SAME"),
    (9, 8, 2, 2, (3, 2), (2, 1), "VALID"),
    (6, 6, 3, 3, (2, 2), (1, 2), ((1, 2), (0, 1))),
    (5, 7, 2, 3, (1, 2), (2, 1), ((2, 0), (1, 1))),
    (4, 4, 4, 4, (1, 1), (1, 1), "SAME"),                      # pads 1/2: the odd cell at the end
    (6, 5, 1, 1, (2, 2), (1, 1), "SAME"),
]
IDS = [f"{h}x{w}k{kh}{kw}s{s[0]}{s[1]}d{d[0]}{d[1]}-{p if isinstance(p, str) else 'explicit'}"
       for h, w, kh, kw, s, d, p in CONFIGS]


def _geo(cfg):
    H, W, kh, kw, s, d, p = cfg
    return R.out_sizes((H, W), (kh, kw), s, d, p)


def _problem(cfg, rng, N=2, C=3, K=4):
    H, W, kh, kw, s, d, p = cfg
    (OH, pt, _), (OW, pl, _) = _geo(cfg)
    x = rng.uniform(-1, 1, (N, H, W, C))
    w = rng.uniform(-1, 1, (kh, kw, C, K))
    dy = rng.uniform(-1, 1, (N, OH, OW, K))
    return x, w, dy


def _padding_arg(p):
    return p if isinstance(p, str) else [list(a) for a in p]


def _formula_grads(cfg, x, w, dy):
    """Autodiff-style d_x and d_w of L = sum(conv(x, w) * dy), straight from the forward formula:
    y[n,o] += x[n, o*s + t*d - pad] . w[t]  =>  d_x[n, o*s + t*d - pad] += w[t] @ dy[n,o],  d_w[t] += x^T dy."""
    H, W, kh, kw, (sh, sw), (dh, dw_), _ = cfg
    (OH, pt, _), (OW, pl, _) = _geo(cfg)
    d_x, d_w = np.zeros_like(x), np.zeros_like(w)
    for oh, ow, a, b in itertools.product(range(OH), range(OW), range(kh), range(kw)):
        ih, iw = oh * sh + a * dh - pt, ow * sw + b * dw_ - pl
        if 0 <= ih < H and 0 <= iw < W:
            d_x[:, ih, iw, :] += dy[:, oh, ow, :] @ w[a, b].T
            d_w[a, b] += x[:, ih, iw, :].T @ dy[:, oh, ow, :]
    return d_x, d_w


def _identity_a(cfg, w, dy):
    """d_x = conv(stride 1, dilation d)(Z, w'), Z = dy with s-1 zeros inserted, padded eff-1-pad before and
    H + eff - 1 - len - (eff-1-pad) after (negative = crop); w' = rot180(w) with in/out swapped."""
    H, W, kh, kw, s, d, _ = cfg
    geo = _geo(cfg)
    N, OH, OW, K = dy.shape
    z = np.zeros((N, (OH - 1) * s[0] + 1, (OW - 1) * s[1] + 1, K))
    z[:, ::s[0], ::s[1], :] = dy
    for ax, (n, k, dd, g) in enumerate(zip((H, W), (kh, kw), d, geo)):
        eff = (k - 1) * dd + 1
        before = eff - 1 - g[1]
        after = n + eff - 1 - z.shape[1 + ax] - before
        widths = [(0, 0)] * 4
        widths[1 + ax] = (max(before, 0), max(after, 0))
        z = np.pad(z, widths)
        sl = [slice(None)] * 4
        sl[1 + ax] = slice(max(-before, 0), z.shape[1 + ax] - max(-after, 0))
        z = z[tuple(sl)]
    w_rot = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    return gpuconv.conv2d(np.ascontiguousarray(z), w_rot, 1, "VALID", dilations=list(d))


def _identity_b(cfg, x, dy):
    """d_w = conv(x^T (channels as batch), dy^T (as filter [OH,OW,N,K]), stride d, dilation s, pads of the
    forward), cropped to the filter size, back to [kh,kw,C,K]."""
    H, W, kh, kw, s, d, _ = cfg
    geo = _geo(cfg)
    xt = np.ascontiguousarray(x.transpose(3, 1, 2, 0))
    dyt = np.ascontiguousarray(dy.transpose(1, 2, 0, 3))
    pads = [(geo[0][1], geo[0][2]), (geo[1][1], geo[1][2])]
    out = gpuconv.conv2d(xt, dyt, list(d), pads, dilations=list(s))
    return np.ascontiguousarray(out[:, :kh, :kw, :].transpose(1, 2, 0, 3))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_dx_four_ways(cfg):
    rng = np.random.default_rng(11)
    x, w, dy = _problem(cfg, rng)
    s, d, p = cfg[4], cfg[5], _padding_arg(cfg[6])
    d_x, _ = _formula_grads(cfg, x, w, dy)
    ways = {
        "backprop_input": gpuconv.conv2d_backprop_input(x.shape, w, dy, list(s), p, dilations=list(d)),
        "transpose": gpuconv.conv2d_transpose(dy, w, x.shape, list(s), p, dilations=list(d)),
        "conv of zero-inserted dy with rot180 filter": _identity_a(cfg, w, dy),
    }
    for name, got in ways.items():
        np.testing.assert_allclose(got, d_x, rtol=1e-11, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_dw_three_ways(cfg):
    rng = np.random.default_rng(12)
    x, w, dy = _problem(cfg, rng)
    s, d, p = cfg[4], cfg[5], _padding_arg(cfg[6])
    _, d_w = _formula_grads(cfg, x, w, dy)
    ways = {
        "backprop_filter": gpuconv.conv2d_backprop_filter(x, w.shape, dy, list(s), p, dilations=list(d)),
        "conv of x with dy as filter": _identity_b(cfg, x, dy),
    }
    for name, got in ways.items():
        np.testing.assert_allclose(got, d_w, rtol=1e-11, atol=1e-11, err_msg=name)


def test_formula_grads_are_the_gradient():
    """The 'autodiff' formula itself against central differences of L = sum(conv(x, w) * dy)."""
    cfg = CONFIGS[6]
    rng = np.random.default_rng(13)
    x, w, dy = _problem(cfg, rng, N=1, C=2, K=2)
    d_x, d_w = _formula_grads(cfg, x, w, dy)
    s, d, p = cfg[4], cfg[5], _padding_arg(cfg[6])

    def loss(x_, w_):
        return float((gpuconv.conv2d(x_, w_, list(s), p, dilations=list(d)) * dy).sum())
    eps = 1e-6
    for arr, grad, other in ((x, d_x, "x"), (w, d_w, "w")):
        for idx in list(np.ndindex(arr.shape))[::5]:
            e = np.zeros_like(arr)
            e[idx] = eps
            if other == "x":
                num = (loss(x + e, w) - loss(x - e, w)) / (2 * eps)
            else:
                num = (loss(x, w + e) - loss(x, w - e)) / (2 * eps)
            assert abs(num - grad[idx]) < 1e-7


# ---------------------------------------------------------------------------------------------------------
# adjointness, including groups, channels-first and 3-D
# ---------------------------------------------------------------------------------------------------------
ADJ_CONFIGS = [
    # nsp, x (channels-last), w, strides, dilations, padding, data_format
    (2, (2, 6, 7, 4), (3, 2, 2, 6), (2, 1), (1, 2), "SAME", "NHWC"),              # groups 2
    (2, (1, 7, 5, 3), (2, 3, 1, 3), 2, 1, [(1, 0), (2, 2)], "NCHW"),               # depthwise
    (2, (2, 5, 5, 2), (3, 3, 2, 3), 3, 2, "VALID", "NCHW"),
    (3, (1, 4, 5, 4, 2), (2, 3, 2, 2, 3), (2, 1, 2), (1, 2, 1), "SAME", "NDHWC"),
    (3, (2, 3, 4, 5, 4), (2, 2, 1, 2, 2), 1, (2, 1, 1), [(0, 1), (1, 0), (0, 0)], "NCDHW"),   # groups 2
]


def _user(shape_cl, fmt):
    return shape_cl if fmt in ("NHWC", "NDHWC") else (shape_cl[0], shape_cl[-1], *shape_cl[1:-1])


@pytest.mark.parametrize("cfg", ADJ_CONFIGS)
def test_conv_adjointness(cfg):
    nsp, xs, ws, s, d, p, fmt = cfg
    conv = gpuconv.conv2d if nsp == 2 else gpuconv.conv3d
    dgrad = gpuconv.conv2d_backprop_input if nsp == 2 else gpuconv.conv3d_backprop_input
    tconv = gpuconv.conv2d_transpose if nsp == 2 else gpuconv.conv3d_transpose
    wgrad = gpuconv.conv2d_backprop_filter if nsp == 2 else gpuconv.conv3d_backprop_filter
    rng = np.random.default_rng(21)
    x = rng.uniform(-1, 1, _user(xs, fmt))
    w = rng.uniform(-1, 1, ws)
    y = conv(x, w, s, p, data_format=fmt, dilations=d)
    dy = rng.uniform(-1, 1, y.shape)
    lhs = np.vdot(y, dy)
    dx = dgrad(x.shape, w, dy, s, p, data_format=fmt, dilations=d)
    np.testing.assert_allclose(np.vdot(x, dx), lhs, rtol=1e-11)
    np.testing.assert_array_equal(tconv(dy, w, x.shape, s, p, data_format=fmt, dilations=d), dx)
    dw = wgrad(x, w.shape, dy, s, p, data_format=fmt, dilations=d)
    np.testing.assert_allclose(np.vdot(w, dw), lhs, rtol=1e-11)
    # the transposed conv's own adjoint is the forward conv: <tconv(u), v> = <u, conv(v)>
    np.testing.assert_allclose(np.vdot(tconv(dy, w, x.shape, s, p, data_format=fmt, dilations=d), x), lhs,
                               rtol=1e-11)


POOL_CONFIGS = [
    # nsp, x (channels-last), ksize, strides, padding
    (2, (2, 5, 5, 3), 3, 2, "SAME"),
    (2, (1, 6, 7, 2), (2, 3), (2, 1), "VALID"),
    (2, (1, 3, 3, 2), 2, 1, "SAME"),
    (2, (1, 5, 4, 2), 3, 2, [(1, 2), (2, 0)]),
    (3, (1, 3, 4, 5, 2), 2, 2, "SAME"),
    (3, (1, 4, 3, 3, 1), (3, 2, 2), (1, 2, 1), [(1, 1), (0, 1), (1, 0)]),
]


def _pool_fns(nsp):
    if nsp == 2:
        return gpuconv.avg_pool2d, gpuconv.avg_pool_grad, gpuconv.max_pool2d, gpuconv.max_pool_grad
    return gpuconv.avg_pool3d, gpuconv.avg_pool3d_grad, gpuconv.max_pool3d, gpuconv.max_pool3d_grad


def _sum_pool(x, nsp, ksize, strides, padding):
    """Sum pooling as a depthwise conv with a ones filter (SAME/explicit pads agree with pooling's at d=1)."""
    k = (ksize,) * nsp if isinstance(ksize, int) else tuple(ksize)
    C = x.shape[-1]
    ones = np.ones(k + (1, C), x.dtype)
    conv = gpuconv.conv2d if nsp == 2 else gpuconv.conv3d
    return conv(x, ones, strides, padding), ones


@pytest.mark.parametrize("cfg", POOL_CONFIGS)
def test_avg_pool_grad_is_adjoint_of_avg_pool(cfg):
    nsp, xs, k, s, p = cfg
    avg, avg_grad, _, _ = _pool_fns(nsp)
    rng = np.random.default_rng(31)
    x = rng.uniform(-1, 1, xs)
    y = avg(x, k, s, p)
    dy = rng.uniform(-1, 1, y.shape)
    np.testing.assert_allclose(np.vdot(x, avg_grad(x.shape, dy, k, s, p)), np.vdot(y, dy), rtol=1e-11)


@pytest.mark.parametrize("cfg", POOL_CONFIGS)
def test_avg_unpool_is_adjoint_of_sum_pooling(cfg):
    nsp, xs, k, s, p = cfg
    avg, avg_grad, _, _ = _pool_fns(nsp)
    rng = np.random.default_rng(32)
    x = rng.uniform(-1, 1, xs)
    summed, ones = _sum_pool(x, nsp, k, s, p)
    u = rng.uniform(-1, 1, summed.shape)
    un = gpuconv.avg_unpool(u, k, s, p, x.shape)
    np.testing.assert_allclose(np.vdot(x, un), np.vdot(summed, u), rtol=1e-11)
    # hence avg_unpool = the transposed depthwise conv with a ones filter ...
    dgrad = gpuconv.conv2d_backprop_input if nsp == 2 else gpuconv.conv3d_backprop_input
    np.testing.assert_allclose(un, dgrad(x.shape, ones, u, s, p), rtol=1e-12, atol=1e-12)
    # ... and avg_pool_grad(dy) = avg_unpool(dy / count), avg_pool = sum_pool / count
    count, _ = _sum_pool(np.ones_like(x), nsp, k, s, p)
    np.testing.assert_allclose(avg(x, k, s, p), summed / count, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(avg_grad(x.shape, u, k, s, p), gpuconv.avg_unpool(u / count, k, s, p, x.shape),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("cfg", [c for c in POOL_CONFIGS if c[0] == 2])
def test_max_pool_gradients_and_unpool_agree(cfg, include_batch):
    """max_pool_grad = max_pool_grad_with_argmax = max_unpool(dy, argmax); max_unpool_grad is max_unpool's
    adjoint; the input at argmax is the pooled value."""
    nsp, xs, k, s, p = cfg
    rng = np.random.default_rng(41)
    x = rng.permutation(np.prod(xs)).reshape(xs).astype(np.float64)        # tie-free
    y, am = gpuconv.max_pool_with_argmax(x, k, s, p, include_batch_in_index=include_batch)
    np.testing.assert_array_equal(y, gpuconv.max_pool2d(x, k, s, p))
    flat_am = am if include_batch else am + (np.arange(xs[0]) * np.prod(xs[1:])).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(x.reshape(-1)[flat_am], y)
    dy = rng.uniform(-1, 1, y.shape)
    a = gpuconv.max_pool_grad(x, y, dy, k, s, p)
    b = gpuconv.max_pool_grad_with_argmax(x, dy, am, k, s, p, include_batch_in_index=include_batch)
    c = gpuconv.max_unpool(dy, am, x.shape, include_batch_in_index=include_batch)
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)
    g = rng.uniform(-1, 1, x.shape)
    np.testing.assert_allclose(np.vdot(c, g),
                               np.vdot(dy, gpuconv.max_unpool_grad(g, am, include_batch_in_index=include_batch)),
                               rtol=1e-11)
    # the gather at the pooled argmax of the input itself gives back the pooled values
    np.testing.assert_array_equal(gpuconv.max_unpool_grad(x, am, include_batch_in_index=include_batch), y)


@pytest.mark.parametrize("cfg", [c for c in POOL_CONFIGS if c[0] == 3])
def test_max_pool3d_grad_is_unpool_at_argmax(cfg):
    """3-D: no argmax op in TF; the reference's argmax (same formula, one more axis) drives max_unpool."""
    nsp, xs, k, s, p = cfg
    rng = np.random.default_rng(42)
    x = rng.permutation(np.prod(xs)).reshape(xs).astype(np.float64)
    _, _, maxp, maxg = _pool_fns(3)
    y = maxp(x, k, s, p)
    ks, ss = (k,) * 3 if isinstance(k, int) else k, (s,) * 3 if isinstance(s, int) else s
    _, am = R.max_pool_with_argmax(x, ks, ss, p if isinstance(p, str) else [tuple(a) for a in p])
    dy = rng.uniform(-1, 1, y.shape)
    np.testing.assert_allclose(maxg(x, y, dy, k, s, p), gpuconv.max_unpool(dy, am, x.shape), rtol=1e-12, atol=1e-12)
