"""Hypothesis property tests: random shapes, strides, dilations, paddings (SAME/VALID/explicit), layouts, groups
and dtypes, every op against the scalar-loop reference (through opspecs' references and check_sample).

The default run keeps max_examples modest; the `slow`-marked twins run thousands of examples
(`pytest -m slow tests/test_properties.py`). GPUCONV_PROPERTY_EXAMPLES overrides the slow count.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loop_reference as R
from opspecs import FLOATS, INTS, SPECS, Sample, _ints, _pad, check_sample, rand

FAST = settings(max_examples=int(os.environ.get("GPUCONV_PROPERTY_FAST", "60")), deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=int(os.environ.get("GPUCONV_PROPERTY_EXAMPLES", "2000")), deadline=None,
                suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------
def _per_axis_form(draw, values, nsp, cl):
    """One of the accepted forms of a per-axis int parameter."""
    forms = [list(values)]
    if len(set(values)) == 1:
        forms += [values[0], [values[0]]]
    forms.append([1, *values, 1] if cl else [1, 1, *values])
    return draw(st.sampled_from(forms))


def _padding(draw, nsp, cl, windows):
    kind = draw(st.sampled_from(["SAME", "VALID", "explicit", "explicit-full"]))
    if kind in ("SAME", "VALID"):
        return kind
    pairs = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nsp)]
    if windows is not None:                                     # pooling: pads smaller than the window
        pairs = [(min(a, k - 1), min(b, k - 1)) for (a, b), k in zip(pairs, windows)]
    if kind == "explicit":
        return pairs
    return [[0, 0], *[list(p) for p in pairs], [0, 0]] if cl else [[0, 0], [0, 0], *[list(p) for p in pairs]]


@st.composite
def conv_problems(draw):
    nsp = draw(st.sampled_from([2, 2, 3]))
    cl = draw(st.booleans())
    fmt = ("NHWC" if cl else "NCHW") if nsp == 2 else ("NDHWC" if cl else "NCDHW")
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    maxsp = 7 if nsp == 2 else 4
    spatial = [draw(st.integers(1, maxsp)) for _ in range(nsp)]
    window = [draw(st.integers(1, 3)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 3)) for _ in range(nsp)]
    dil = [draw(st.integers(1, 2)) for _ in range(nsp)]
    padding = _padding(draw, nsp, cl, None)
    x_cl = (draw(st.integers(1, 2)), *spatial, groups * cg)
    w = (*window, cg, groups * kg)
    try:
        geo = R.out_sizes(spatial, window, strides, dil, _pad(padding, nsp, cl))
    except ValueError:
        geo = None
    dtype = draw(st.sampled_from(FLOATS))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(nsp=nsp, cl=cl, fmt=fmt, x_cl=x_cl, w=w, strides=_per_axis_form(draw, strides, nsp, cl),
                dilations=_per_axis_form(draw, dil, nsp, cl), padding=padding, geo=geo, dtype=dtype, seed=seed)


def _user(shape_cl, cl):
    return tuple(shape_cl) if cl else (shape_cl[0], shape_cl[-1], *shape_cl[1:-1])


def _check_conv(c):
    nsp, cl, fmt, dtype = c["nsp"], c["cl"], c["fmt"], c["dtype"]
    suffix = "2d" if nsp == 2 else "3d"
    if c["geo"] is None:                  # negative output size: every conv op refuses it
        x = np.zeros(_user(c["x_cl"], cl), dtype)
        with pytest.raises(ValueError):
            SPECS["conv" + suffix].fn(x, np.zeros(c["w"], dtype), c["strides"], c["padding"], data_format=fmt,
                                      dilations=c["dilations"])
        return
    rng = np.random.default_rng(c["seed"])
    y_cl = (c["x_cl"][0], *[g[0] for g in c["geo"]], c["w"][-1])
    x = rand(rng, _user(c["x_cl"], cl), dtype)
    w = rand(rng, c["w"], dtype)
    dy = rand(rng, _user(y_cl, cl), dtype)
    kw = dict(data_format=fmt, dilations=c["dilations"])
    s, p = c["strides"], c["padding"]
    check_sample(SPECS["conv" + suffix], Sample((x, w, s, p), kw, "fprop"))
    check_sample(SPECS[f"conv{suffix}_backprop_input"], Sample((x.shape, w, dy, s, p), kw, "dgrad"))
    check_sample(SPECS[f"conv{suffix}_transpose"], Sample((dy, w, x.shape, s), dict(padding=p, **kw), "transpose"))
    check_sample(SPECS[f"conv{suffix}_backprop_filter"], Sample((x, w.shape, dy, s, p), kw, "wgrad"))


@given(conv_problems())
@FAST
def test_conv_ops_vs_reference(c):
    _check_conv(c)


@pytest.mark.slow
@given(conv_problems())
@SLOW
def test_conv_ops_vs_reference_long(c):
    _check_conv(c)


@st.composite
def pool_problems(draw):
    nsp = draw(st.sampled_from([2, 2, 3]))
    cl = draw(st.booleans())
    fmt = ("NHWC" if cl else "NCHW") if nsp == 2 else ("NDHWC" if cl else "NCDHW")
    maxsp = 7 if nsp == 2 else 4
    spatial = [draw(st.integers(1, maxsp)) for _ in range(nsp)]
    window = [draw(st.integers(1, 3)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 3)) for _ in range(nsp)]
    padding = _padding(draw, nsp, cl, window)
    x_cl = (draw(st.integers(1, 2)), *spatial, draw(st.integers(1, 3)))
    try:
        geo = R.out_sizes(spatial, window, strides, 1, _pad(padding, nsp, cl))
    except ValueError:
        geo = None
    return dict(nsp=nsp, cl=cl, fmt=fmt, x_cl=x_cl, ksize=_per_axis_form(draw, window, nsp, cl),
                strides=_per_axis_form(draw, strides, nsp, cl), padding=padding, geo=geo,
                dtype=draw(st.sampled_from(FLOATS + INTS)), include=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))


def _check_pool(c):
    nsp, cl, fmt, dtype = c["nsp"], c["cl"], c["fmt"], c["dtype"]
    sfx = "2d" if nsp == 2 else "3d"
    k, s, p = c["ksize"], c["strides"], c["padding"]
    rng = np.random.default_rng(c["seed"])
    x = rand(rng, _user(c["x_cl"], cl), dtype)
    if c["geo"] is None:
        with pytest.raises(ValueError):
            SPECS["max_pool" + sfx].fn(x, k, s, p, fmt)
        return
    y_cl = (c["x_cl"][0], *[g[0] for g in c["geo"]], c["x_cl"][-1])
    dy = rand(rng, _user(y_cl, cl), dtype)
    is_float = dtype in FLOATS
    check_sample(SPECS["max_pool" + sfx], Sample((x, k, s, p), dict(data_format=fmt), "max", exact=True))
    y = SPECS["max_pool" + sfx].reference(x, k, s, p, fmt)
    grad_name = "max_pool_grad" if nsp == 2 else "max_pool3d_grad"
    check_sample(SPECS[grad_name], Sample((x, y, dy, k, s, p), dict(data_format=fmt), "max_grad"))
    if is_float:
        check_sample(SPECS["avg_pool" + sfx], Sample((x, k, s, p), dict(data_format=fmt), "avg"))
        grad_name = "avg_pool_grad" if nsp == 2 else "avg_pool3d_grad"
        check_sample(SPECS[grad_name], Sample((x.shape, dy, k, s, p), dict(data_format=fmt), "avg_grad"))
        check_sample(SPECS["avg_unpool"], Sample((dy, k, s, p, x.shape), dict(data_format=fmt), "avg_unpool"))
    if cl:
        inc = c["include"]
        if nsp == 2:
            check_sample(SPECS["max_pool_with_argmax"],
                         Sample((x, k, s, p), dict(include_batch_in_index=inc), "argmax", exact=True))
        _, am = R.max_pool_with_argmax(x, _ints(k, nsp, cl), _ints(s, nsp, cl), _pad(p, nsp, cl), inc)
        if nsp == 2:
            check_sample(SPECS["max_pool_grad_with_argmax"],
                         Sample((x, dy, am, k, s, p), dict(include_batch_in_index=inc), "grad_argmax"))
        check_sample(SPECS["max_unpool"], Sample((dy, am, x.shape), dict(include_batch_in_index=inc), "unpool"))
        check_sample(SPECS["max_unpool_grad"], Sample((x, am), dict(include_batch_in_index=inc), "unpool_grad",
                                                      exact=True))


@given(pool_problems())
@FAST
def test_pool_ops_vs_reference(c):
    _check_pool(c)


@pytest.mark.slow
@given(pool_problems())
@SLOW
def test_pool_ops_vs_reference_long(c):
    _check_pool(c)


# ---------------------------------------------------------------------------------------------------------
# the oracle itself, against an independent formulation: explicit np.pad, then one strided slice and one
# grouped contraction per filter tap (no per-output loops, no bounds tests: padding is data here), 2-D and 3-D
# ---------------------------------------------------------------------------------------------------------
def _padded_tap_sums(x, w, strides, dilations, geo):
    """y = sum over taps t of xpad[:, o*s + t*d, :] @ w[t], per group; x (N, spatial..., C), w (taps..., Cg, K)."""
    nsp = x.ndim - 2
    xp = np.pad(x, [(0, 0)] + [(pb, pa) for _, pb, pa in geo] + [(0, 0)])
    out = [o for o, _, _ in geo]
    cg, K = w.shape[-2], w.shape[-1]
    G = x.shape[-1] // cg
    y = np.zeros((x.shape[0], *out, G, K // G))
    for t in itertools.product(*(range(k) for k in w.shape[:nsp])):
        cells = tuple(slice(ti * d, ti * d + (o - 1) * s + 1, s) for ti, d, o, s in zip(t, dilations, out, strides))
        xt = xp[(slice(None),) + cells].reshape(x.shape[0], *out, G, cg)
        y += np.einsum("...gc,cgk->...gk", xt, w[t].reshape(cg, G, K // G))
    return y.reshape(x.shape[0], *out, K)


@given(conv_problems())
@FAST
def test_loop_reference_conv_matches_padded_tap_sums(c):
    if c["geo"] is None:
        return
    rng = np.random.default_rng(c["seed"])
    x = rng.uniform(-1, 1, c["x_cl"])
    w = rng.uniform(-1, 1, c["w"])
    s, d = _ints(c["strides"], c["nsp"], c["cl"]), _ints(c["dilations"], c["nsp"], c["cl"])
    y = R.conv_fprop(x, w, s, _pad(c["padding"], c["nsp"], c["cl"]), d)
    if y.size == 0:
        return
    np.testing.assert_allclose(y, _padded_tap_sums(x, w, s, d, c["geo"]), rtol=1e-12, atol=1e-12)
