"""TF-named convolution ops: thin wrappers over one N-d core (fprop, dgrad, wgrad on canonical problems).

conv2d/conv3d -> fprop; conv*_backprop_input and conv*_transpose -> dgrad; conv*_backprop_filter -> wgrad.
Arguments are normalised and validated here, once, before any backend runs.
"""
from __future__ import annotations

from typing import Any

from . import _args as A
from .backend import (canonical_filter_shape, canonical_filters, canonical_shape, from_canonical,
                      from_canonical_filters, on_tensor_device, resolve, to_canonical)
from .dtypes import FLOAT_DTYPES
from .geometry import check_backprop_output, conv_problem

_LAYOUT = {2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}
_FILTER_LAYOUT = {2: "kh, kw, in, out", 3: "kd, kh, kw, in, out"}


def _common(nspatial: int, data_format, strides, padding, dilations):
    cl = A.channels_last(data_format, nspatial)
    stride = A.to_triple(A.window_param(strides, "strides", nspatial, cl), 1)
    dilation = A.to_triple(A.window_param(dilations, "dilations", nspatial, cl, default=1), 1)
    pad = A.pairs_to_triple(A.padding_param(padding, nspatial, cl))
    return cl, stride, dilation, pad


def _layout(nspatial: int, cl: bool) -> str:
    return _LAYOUT[nspatial][0 if cl else 1]


def _fprop(nspatial, x, filters, strides, padding, data_format, dilations):
    be = resolve({"input": x, "filters": filters})
    cl, stride, dilation, pad = _common(nspatial, data_format, strides, padding, dilations)
    A.tensor(x, "input", nspatial + 2, FLOAT_DTYPES, _layout(nspatial, cl))
    A.tensor(filters, "filters", nspatial + 2, FLOAT_DTYPES, _FILTER_LAYOUT[nspatial])
    A.same_dtype({"input": x, "filters": filters})
    p = conv_problem(canonical_shape(x.shape, nspatial, cl), canonical_filter_shape(filters.shape, nspatial), stride,
                     dilation, pad)
    x5 = to_canonical(x, be.xp, nspatial, cl)
    w5 = canonical_filters(filters, be.xp, nspatial)
    return from_canonical(be.conv_fprop(x5, w5, p), nspatial, cl)


def _dgrad(nspatial, shape_arg, shape, filters, dy_arg, dy, strides, padding, data_format, dilations):
    be = resolve({"filters": filters, dy_arg: dy})
    cl, stride, dilation, pad = _common(nspatial, data_format, strides, padding, dilations)
    A.tensor(dy, dy_arg, nspatial + 2, FLOAT_DTYPES, _layout(nspatial, cl))
    A.tensor(filters, "filters", nspatial + 2, FLOAT_DTYPES, _FILTER_LAYOUT[nspatial])
    A.same_dtype({dy_arg: dy, "filters": filters})
    dy_shape5 = canonical_shape(dy.shape, nspatial, cl)
    w_shape5 = canonical_filter_shape(filters.shape, nspatial)
    # Spatial-only shape: batch from the gradient, channels from the filters' in-channels (TF's rule).
    x_shape = A.shape_param(shape, shape_arg, nspatial, cl, batch=dy_shape5[0], channels=None
                            if len(A.int_sequence(shape, shape_arg)) == nspatial + 2 else w_shape5[3])
    p = conv_problem(x_shape, w_shape5, stride, dilation, pad, input_arg=shape_arg)
    check_backprop_output(p, dy_shape5, pad, shape_arg)
    dy5 = to_canonical(dy, be.xp, nspatial, cl)
    w5 = canonical_filters(filters, be.xp, nspatial)
    return from_canonical(be.conv_dgrad(dy5, w5, p), nspatial, cl)


def _wgrad(nspatial, x, filter_sizes, dy, strides, padding, data_format, dilations):
    be = resolve({"input": x, "out_backprop": dy})
    cl, stride, dilation, pad = _common(nspatial, data_format, strides, padding, dilations)
    A.tensor(x, "input", nspatial + 2, FLOAT_DTYPES, _layout(nspatial, cl))
    A.tensor(dy, "out_backprop", nspatial + 2, FLOAT_DTYPES, _layout(nspatial, cl))
    A.same_dtype({"input": x, "out_backprop": dy})
    sizes = A.int_sequence(filter_sizes, "filter_sizes")
    if len(sizes) != nspatial + 2 or min(sizes) < 0 or max(sizes) > A.INT32_MAX:
        A.fail("filter_sizes", f"{nspatial + 2} sizes in [0, {A.INT32_MAX}] ({_FILTER_LAYOUT[nspatial]})",
               A.short(list(sizes)))
    p = conv_problem(canonical_shape(x.shape, nspatial, cl), canonical_filter_shape(sizes, nspatial), stride,
                     dilation, pad, filter_arg="filter_sizes")
    check_backprop_output(p, canonical_shape(dy.shape, nspatial, cl), pad, "input", filter_arg="filter_sizes")
    x5 = to_canonical(x, be.xp, nspatial, cl)
    dy5 = to_canonical(dy, be.xp, nspatial, cl)
    return from_canonical_filters(be.conv_wgrad(x5, dy5, p), nspatial)


@on_tensor_device
def conv2d(input: Any, filters: Any, strides, padding, data_format: str = "NHWC", dilations=None,
           name: str | None = None):
    """2-D convolution (cross-correlation) with TF's padding rule.

    Args: input (N,H,W,C) or (N,C,H,W); filters (kh, kw, C/groups, K); strides, dilations: int or sequence;
    padding: 'SAME', 'VALID' or explicit pairs. Returns the output in input's layout and dtype.
    TF: `tf.nn.conv2d` (strides > 1 with dilations > 1 allowed, as there; `tf.nn.convolution` and Keras refuse it).
    """
    return _fprop(2, input, filters, strides, padding, data_format, dilations)


@on_tensor_device
def conv3d(input: Any, filters: Any, strides, padding, data_format: str = "NDHWC", dilations=None,
           name: str | None = None):
    """3-D convolution. TF: `tf.nn.conv3d` (gpuconv also accepts explicit padding)."""
    return _fprop(3, input, filters, strides, padding, data_format, dilations)


@on_tensor_device
def conv2d_backprop_input(input_sizes, filters: Any, out_backprop: Any, strides, padding,
                          data_format: str = "NHWC", dilations=None, name: str | None = None):
    """Gradient of conv2d with respect to its input (dgrad). input_sizes: full or spatial-only shape.

    TF: `tf.raw_ops.Conv2DBackpropInput` (`tf.compat.v1.nn.conv2d_backprop_input`). Differs from TF: dilations
    > 1 are supported (TF's own CPU kernels refuse them; its oneDNN build accepts them).
    """
    return _dgrad(2, "input_sizes", input_sizes, filters, "out_backprop", out_backprop, strides, padding,
                  data_format, dilations)


@on_tensor_device
def conv3d_backprop_input(input_sizes, filters: Any, out_backprop: Any, strides, padding,
                          data_format: str = "NDHWC", dilations=None, name: str | None = None):
    """Gradient of conv3d with respect to its input. TF: `tf.raw_ops.Conv3DBackpropInputV2`."""
    return _dgrad(3, "input_sizes", input_sizes, filters, "out_backprop", out_backprop, strides, padding,
                  data_format, dilations)


@on_tensor_device
def conv2d_transpose(input: Any, filters: Any, output_shape, strides, padding="SAME",
                     data_format: str = "NHWC", dilations=None, name: str | None = None):
    """Transposed 2-D convolution = conv2d_backprop_input with output_shape as the input size.

    filters (kh, kw, out, in). An output_shape whose forward conv does not give input's size is a ValueError
    that prints the legal range. TF: `tf.nn.conv2d_transpose`.
    """
    return _dgrad(2, "output_shape", output_shape, filters, "input", input, strides, padding, data_format,
                  dilations)


@on_tensor_device
def conv3d_transpose(input: Any, filters: Any, output_shape, strides, padding="SAME",
                     data_format: str = "NDHWC", dilations=None, name: str | None = None):
    """Transposed 3-D convolution. TF: `tf.nn.conv3d_transpose`."""
    return _dgrad(3, "output_shape", output_shape, filters, "input", input, strides, padding, data_format,
                  dilations)


@on_tensor_device
def conv2d_backprop_filter(input: Any, filter_sizes, out_backprop: Any, strides, padding,
                           data_format: str = "NHWC", dilations=None, name: str | None = None):
    """Gradient of conv2d with respect to its filters (wgrad). TF: `tf.raw_ops.Conv2DBackpropFilter`
    (`tf.compat.v1.nn.conv2d_backprop_filter`)."""
    return _wgrad(2, input, filter_sizes, out_backprop, strides, padding, data_format, dilations)


@on_tensor_device
def conv3d_backprop_filter(input: Any, filter_sizes, out_backprop: Any, strides, padding,
                           data_format: str = "NDHWC", dilations=None, name: str | None = None):
    """Gradient of conv3d with respect to its filters. TF: `tf.raw_ops.Conv3DBackpropFilterV2`."""
    return _wgrad(3, input, filter_sizes, out_backprop, strides, padding, data_format, dilations)
