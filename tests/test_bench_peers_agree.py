"""The benchmark's peers compute the op they are timed for: each CPU implementation's closure (gpuconv, TensorFlow,
PyTorch) on small cases of every op, against gpuconv's NumPy backend called here directly with the case's
arguments. A peer that timed another op, another padding or other indices would be compared on unequal work.

PyTorch pads symmetrically: where TF's SAME padding is asymmetric it pads the larger (trailing) amount on both
sides (`peers.torch_padding`, which notes it), so its expected values are gpuconv's with that explicit padding.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv.bench import peers
from gpuconv.bench.cases import Case
from gpuconv.bench.layers import ConvLayer, PoolLayer

CONV_LAYERS = (
    ConvLayer("t_3x3", (9, 10, 6), (3, 3, 6, 5), 1, "SAME"),
    ConvLayer("t_3x3s2_asym", (10, 8, 4), (3, 3, 4, 6), 2, "SAME"),     # TF pads (0, 1) on both axes
    ConvLayer("t_1x1", (6, 7, 8), (1, 1, 8, 5), 1, "SAME"),             # PyTorch runs it with dilation 2
    ConvLayer("t_5x5_valid", (11, 9, 3), (5, 5, 3, 4), 2, "VALID"),
    ConvLayer("t_3d", (5, 6, 7, 3), (3, 3, 3, 3, 4), 1, "SAME"),
    ConvLayer("t_depthwise_s2", (9, 8, 6), (3, 3, 1, 12), 2, "SAME"),  # groups 6, multiplier 2 (MobileNet-like)
    ConvLayer("t_grouped", (7, 8, 6), (3, 3, 2, 9), 1, "SAME"),        # groups 3, 2 channels each
)
POOL_LAYERS = (
    PoolLayer("t_pool_odd", (7, 9, 5), 2, 2, "SAME"),                   # a partial last window on both axes
    PoolLayer("t_pool_valid", (8, 6, 3), 2, 2, "VALID"),
    PoolLayer("t_pool3", (9, 8, 4), 3, 2, "SAME"),                      # overlapping windows
    PoolLayer("t_pool_3d", (5, 6, 7, 3), 2, 2, "SAME"),
)
CONV_CASES = [Case("t", layer, op, "float32", 2) for layer in CONV_LAYERS
              for op in ("fprop", "dgrad", "wgrad", "transpose")]
ARGMAX_OPS = ("pool_argmax", "unpool", "pool_grad")       # 2-D only, as in TF (gpuconv's own refusal)
POOL_CASES = [Case("t", layer, op, "float32", 2) for layer in POOL_LAYERS
              for op in ("pool", "avg_pool", "avg_unpool") + (ARGMAX_OPS if len(layer.input_shape) == 3 else ())]


def _explicit(before, after):
    """Explicit NHWC / NDHWC padding from per-axis pads."""
    return [[0, 0]] + [[int(b), int(a)] for b, a in zip(before, after)] + [[0, 0]]


def expected(case: Case, inputs, symmetric: bool = False):
    """The case's op through gpuconv's public API on the NumPy backend; `symmetric`: with PyTorch's padding."""
    n, s, p = case.nspatial, case.layer.strides, case.problem
    axes = slice(3 - n, 3)
    pad = case.layer.padding
    if symmetric:
        pad = _explicit(p.pad_after[axes], p.pad_after[axes])
    x, dy = inputs["x"], inputs["dy"]
    with gpuconv.use_backend("numpy"):
        if case.kind == "conv":
            w = inputs["w"]
            conv, bi, bf, tr = ((gpuconv.conv2d, gpuconv.conv2d_backprop_input, gpuconv.conv2d_backprop_filter,
                                 gpuconv.conv2d_transpose) if n == 2 else
                                (gpuconv.conv3d, gpuconv.conv3d_backprop_input, gpuconv.conv3d_backprop_filter,
                                 gpuconv.conv3d_transpose))
            return {"fprop": lambda: conv(x, w, s, pad),
                    "dgrad": lambda: bi(case.x_shape, w, dy, s, pad),
                    "wgrad": lambda: bf(x, case.w_shape, dy, s, pad),
                    "transpose": lambda: tr(dy, w, case.x_shape, s, pad)}[case.op]()
        k = case.layer.ksize
        if case.op == "pool":
            return (gpuconv.max_pool2d if n == 2 else gpuconv.max_pool3d)(x, k, s, pad)
        if case.op == "avg_pool":
            return (gpuconv.avg_pool2d if n == 2 else gpuconv.avg_pool3d)(x, k, s, pad)
        if case.op == "avg_unpool":
            return gpuconv.avg_unpool(dy, k, s, pad, case.x_shape)
        y, argmax = gpuconv.max_pool_with_argmax(x, k, s, pad)
        if case.op == "pool_argmax":
            return y, argmax
        if case.op == "unpool":
            return gpuconv.max_unpool(y, argmax, case.x_shape)
        return gpuconv.max_pool_grad_with_argmax(x, dy, argmax, k, s, pad)


def _run(impl, case):
    reason = impl.supports(case)
    if reason:
        return reason, None
    inputs = case.host_inputs(seed=3)
    with impl.context():
        (closure,) = impl.prepare(case, inputs, 1)
        return inputs, closure()


def _close(got, want, case):
    assert got.shape == want.shape, case.name
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=case.name)


# ---------------------------------------------------------------------------------------------------------
# gpuconv's own closures (NumPy backend)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONV_CASES + POOL_CASES, ids=lambda c: c.name)
def test_gpuconv_closure_computes_its_case(case):
    inputs, got = _run(peers.GpuconvImpl("numpy"), case)
    want = expected(case, inputs)
    if case.op == "pool_argmax":
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    else:
        _close(got, want, case)


# ---------------------------------------------------------------------------------------------------------
# TensorFlow: the same semantics, so the same values (argmax indices included)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.tf
@pytest.mark.parametrize("case", CONV_CASES + POOL_CASES, ids=lambda c: c.name)
def test_tensorflow_peer_computes_its_case(case):
    pytest.importorskip("tensorflow")
    impl = peers.TensorflowImpl()
    assert impl.availability() == "yes" or impl.availability().startswith("yes")
    inputs, got = _run(impl, case)
    if got is None:
        assert case.op == "avg_unpool", inputs
        return
    want = expected(case, inputs)
    if case.op == "pool_argmax":
        np.testing.assert_array_equal(got[0].numpy(), want[0])
        np.testing.assert_array_equal(got[1].numpy(), want[1])
    else:
        _close(got.numpy(), want, case)


# ---------------------------------------------------------------------------------------------------------
# PyTorch on the CPU (not a CI dependency: runs where torch is installed)
# ---------------------------------------------------------------------------------------------------------
def _nhwc(t):
    return np.moveaxis(t.detach().cpu().numpy(), 1, -1)


@pytest.mark.parametrize("case", CONV_CASES + POOL_CASES, ids=lambda c: c.name)
def test_torch_cpu_peer_computes_its_case(case):
    pytest.importorskip("torch")
    impl = peers.TorchImpl("cpu")
    inputs, got = _run(impl, case)
    if got is None:
        assert case.op == "avg_unpool", inputs
        return
    asym = case.kind == "conv" and peers.torch_padding(case)[1] != ""
    assert ("PyTorch pads" in impl.note) == asym
    if case.kind == "conv":
        want = expected(case, inputs, symmetric=True)
        if case.op in ("dgrad", "wgrad"):
            got = got[0] if case.op == "dgrad" else got[1]
            if case.op == "wgrad":       # (out, in, spatial...) -> (spatial..., in, out)
                _close(np.transpose(got.detach().numpy(), tuple(range(2, got.ndim)) + (1, 0)), want, case)
                return
        _close(_nhwc(got), want, case)
        return
    want = expected(case, inputs)
    if case.op == "pool_argmax":
        y, idx = got
        np.testing.assert_array_equal(_nhwc(y), want[0])
        # PyTorch's index is y*W + x within each (batch, channel) plane; gpuconv's is (y*W + x)*C + c
        np.testing.assert_array_equal(_nhwc(idx), want[1] // case.x_shape[-1])
        return
    overlapping = case.layer.ksize > case.layer.strides
    assert ("overlapping windows" in impl.note) == (overlapping and case.op == "unpool")
    if overlapping and case.op == "unpool":
        # PyTorch stores one update per index where gpuconv adds: equal wherever a cell got at most one
        y, argmax = expected(Case("t", case.layer, "pool_argmax", case.dtype, case.batch), inputs)
        flat = argmax.ravel() + np.repeat(np.arange(case.batch), argmax[0].size) * np.prod(case.x_shape[1:])
        single = np.bincount(flat, minlength=np.prod(case.x_shape)).reshape(case.x_shape) <= 1
        assert not single.all()
        np.testing.assert_array_equal(_nhwc(got)[single], want[single])
        return
    _close(_nhwc(got), want, case)


def test_torch_cpu_peer_refuses_a_padding_it_cannot_copy():
    """A 2x2 stride-1 SAME conv: TF pads (0, 1), PyTorch's symmetric (1, 1) would give one more output row."""
    pytest.importorskip("torch")
    case = Case("t", ConvLayer("t_2x2", (6, 6, 3), (2, 2, 3, 4), 1, "SAME"), "fprop", "float32", 1)
    with pytest.raises(peers.Unsupported, match=r"gives output \(7, 7\), TF gives \(6, 6\)"):
        _run(peers.TorchImpl("cpu"), case)
