"""TF-named pooling ops: thin wrappers over canonical N-d pooling problems.

Max pooling scans each window row-major; the first in-bounds cell seeds the maximum and a later cell replaces
it only if strictly greater (ties -> first cell, NaN wins only as the first cell, padding is never selected).
Average pooling divides by the number of in-bounds cells.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import _args as A
from .backend import canonical_shape, from_canonical, on_tensor_device, resolve, to_canonical, user_shape
from .dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES, as_numpy_dtype_like
from .geometry import pool_problem

MAX_DTYPES = FLOAT_DTYPES + INT_DTYPES
_LAYOUT = {2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}


def _problem(nspatial: int, x_shape5, cl: bool, ksize, strides, padding, input_arg: str = "input"):
    window = A.to_triple(A.window_param(ksize, "ksize", nspatial, cl), 1)
    stride = A.to_triple(A.window_param(strides, "strides", nspatial, cl), 1)
    pad = A.pairs_to_triple(A.padding_param(padding, nspatial, cl))
    return pool_problem(x_shape5, window, stride, pad, input_arg)


def _forward(op: str, nspatial: int, x, ksize, strides, padding, data_format, dtypes):
    be = resolve({"input": x})
    cl = A.channels_last(data_format, nspatial)
    A.tensor(x, "input", nspatial + 2, dtypes, _LAYOUT[nspatial][0 if cl else 1])
    p = _problem(nspatial, canonical_shape(x.shape, nspatial, cl), cl, ksize, strides, padding)
    return from_canonical(getattr(be, op)(to_canonical(x, be.xp, nspatial, cl), p), nspatial, cl)


@on_tensor_device
def max_pool2d(input: Any, ksize, strides, padding, data_format: str = "NHWC", name: str | None = None):
    """2-D max pooling. TF: `tf.nn.max_pool2d`.

    Differs from TF: a window whose first in-bounds cell is NaN gives NaN (TF's CPU max_pool skips NaN cells,
    its argmax and MaxPoolGrad do not); an all -inf window gives -inf (TF: the dtype's lowest value).
    """
    return _forward("max_pool", 2, input, ksize, strides, padding, data_format, MAX_DTYPES)


@on_tensor_device
def max_pool3d(input: Any, ksize, strides, padding, data_format: str = "NDHWC", name: str | None = None):
    """3-D max pooling. TF: `tf.nn.max_pool3d`."""
    return _forward("max_pool", 3, input, ksize, strides, padding, data_format, MAX_DTYPES)


@on_tensor_device
def avg_pool2d(input: Any, ksize, strides, padding, data_format: str = "NHWC", name: str | None = None):
    """2-D average pooling; the divisor counts in-bounds cells only. TF: `tf.nn.avg_pool2d`."""
    return _forward("avg_pool", 2, input, ksize, strides, padding, data_format, FLOAT_DTYPES)


@on_tensor_device
def avg_pool3d(input: Any, ksize, strides, padding, data_format: str = "NDHWC", name: str | None = None):
    """3-D average pooling. TF: `tf.nn.avg_pool3d`."""
    return _forward("avg_pool", 3, input, ksize, strides, padding, data_format, FLOAT_DTYPES)


def index_dtype(output_dtype: Any) -> np.dtype:
    """'int64' / 'int32' / a NumPy, TensorFlow or torch int32/int64 dtype -> the argmax dtype."""
    try:
        dt = np.dtype(as_numpy_dtype_like(output_dtype))
    except (TypeError, ValueError):                 # not a dtype at all, or a malformed structured one
        dt = None
    if dt not in INDEX_DTYPES:
        A.fail("output_dtype", "'int64' or 'int32' (a name, or a NumPy, TensorFlow or torch dtype)",
               A.short(output_dtype))
    return dt


@on_tensor_device
def max_pool_with_argmax(input: Any, ksize, strides, padding, data_format: str = "NHWC",
                         output_dtype="int64", include_batch_in_index: bool = False, name: str | None = None):
    """2-D max pooling that also returns each maximum's flat index (NHWC only, as in TF).

    The index of input[b, y, x, c] is (y*W + x)*C + c, plus b*H*W*C when include_batch_in_index.
    TF: `tf.nn.max_pool_with_argmax`. Differs from TF: explicit padding is accepted.
    """
    be = resolve({"input": input})
    if not (isinstance(data_format, str) and data_format == "NHWC"):
        A.fail("data_format", "'NHWC' (max_pool_with_argmax is NHWC only, as in TF)", A.short(data_format))
    include = _flag(include_batch_in_index, "include_batch_in_index")
    idx = index_dtype(output_dtype)
    A.tensor(input, "input", 4, MAX_DTYPES, "NHWC")
    p = _problem(2, canonical_shape(input.shape, 2, True), True, ksize, strides, padding)
    limit = (p.N if include else 1) * p.D * p.H * p.W * p.C
    if limit > np.iinfo(idx).max + 1:
        A.fail("output_dtype", f"an index type that holds {limit - 1}", idx.name)
    y, argmax = be.max_pool_argmax(to_canonical(input, be.xp, 2, True), p, idx, include)
    return from_canonical(y, 2, True), from_canonical(argmax, 2, True)


def _flag(value: Any, arg: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        A.fail_type(arg, "a bool", A.short(value))
    return bool(value)


def _max_grad(nspatial, orig_input, orig_output, grad, ksize, strides, padding, data_format):
    be = resolve({"orig_input": orig_input, "orig_output": orig_output, "grad": grad})
    cl = A.channels_last(data_format, nspatial)
    layout = _LAYOUT[nspatial][0 if cl else 1]
    for name, t in (("orig_input", orig_input), ("orig_output", orig_output), ("grad", grad)):
        A.tensor(t, name, nspatial + 2, MAX_DTYPES, layout)
    A.same_dtype({"orig_input": orig_input, "orig_output": orig_output, "grad": grad})
    p = _problem(nspatial, canonical_shape(orig_input.shape, nspatial, cl), cl, ksize, strides, padding)
    pooled = user_shape(p.y_shape, nspatial, cl)
    A.same_shape(grad, "grad", pooled, f"the pooled shape of orig_input, {layout}")
    A.same_shape(orig_output, "orig_output", pooled, f"the pooled shape of orig_input, {layout}")
    x5 = to_canonical(orig_input, be.xp, nspatial, cl)
    dy5 = to_canonical(grad, be.xp, nspatial, cl)
    return from_canonical(be.max_pool_grad(x5, dy5, p), nspatial, cl)


@on_tensor_device
def max_pool_grad(orig_input: Any, orig_output: Any, grad: Any, ksize, strides, padding,
                  data_format: str = "NHWC", name: str | None = None):
    """Gradient of max_pool2d: each window's gradient goes to its selected cell; overlaps add.

    The selection is recomputed from orig_input with the scan rule (orig_output is checked for shape only).
    TF: `tf.raw_ops.MaxPoolGrad`.
    """
    return _max_grad(2, orig_input, orig_output, grad, ksize, strides, padding, data_format)


@on_tensor_device
def max_pool3d_grad(orig_input: Any, orig_output: Any, grad: Any, ksize, strides, padding,
                    data_format: str = "NDHWC", name: str | None = None):
    """Gradient of max_pool3d. TF: `tf.raw_ops.MaxPool3DGrad`. Differs from TF: with tied maxima only the first
    gets the gradient (TF's 3-D CPU kernel gives it to every tied cell; its 2-D MaxPoolGrad agrees with this)."""
    return _max_grad(3, orig_input, orig_output, grad, ksize, strides, padding, data_format)


def check_argmax(argmax: Any, arg: str, limit: int) -> None:
    """argmax holds int32/int64 indices in [0, limit); else TypeError/ValueError (TF aborts the process).

    On CuPy arrays this reads one flag back from the device (a synchronisation), the price of never
    writing out of bounds and of reporting the error where it was made. The argmax-indexed ops (max_unpool,
    max_pool_grad_with_argmax, max_unpool_grad) hand it to the backend's argmax_scatter / argmax_gather as
    check_range, which calls it unless its own pass showed every index in range (the CUDA window scatter and
    gather: one pass over argmax fewer, and for the window scatter one synchronisation fewer).
    """
    if np.dtype(argmax.dtype) not in INDEX_DTYPES:
        A.fail_type(arg, "dtype int32 or int64", f"dtype {argmax.dtype}")
    # One reduction: viewed as unsigned, a negative index becomes >= 2^31 (2^63), at or above the bound, which
    # is capped there (three passes and two temporaries before: 0.34 against 0.11 ms for 1.35M int64 indices).
    bits = 8 * argmax.dtype.itemsize
    unsigned = argmax.view(np.uint32 if bits == 32 else np.uint64)
    if argmax.size and int(unsigned.max()) >= min(limit, 2**(bits - 1)):
        A.fail(arg, f"indices in [0, {limit})", f"indices from {int(argmax.min())} to {int(argmax.max())}")


@on_tensor_device
def max_pool_grad_with_argmax(input: Any, grad: Any, argmax: Any, ksize, strides, padding,
                              include_batch_in_index: bool = False, name: str | None = None):
    """Gradient of max_pool_with_argmax: grad scattered to input's shape at argmax; duplicates add.

    TF: `tf.raw_ops.MaxPoolGradWithArgmax`. Differs from TF: an out-of-range argmax is a ValueError.
    """
    be = resolve({"input": input, "grad": grad, "argmax": argmax})
    include = _flag(include_batch_in_index, "include_batch_in_index")
    A.tensor(input, "input", 4, MAX_DTYPES, "NHWC")
    A.tensor(grad, "grad", 4, MAX_DTYPES, "NHWC")
    A.same_dtype({"input": input, "grad": grad})
    A.tensor(argmax, "argmax", 4, INDEX_DTYPES, "NHWC")
    p = _problem(2, canonical_shape(input.shape, 2, True), True, ksize, strides, padding)
    A.same_shape(grad, "grad", user_shape(p.y_shape, 2, True), "the pooled shape of input, NHWC")
    A.same_shape(argmax, "argmax", grad.shape, "the shape of grad")
    dy5 = to_canonical(grad, be.xp, 2, True)
    per_batch = p.D * p.H * p.W * p.C
    check_range = functools.partial(check_argmax, argmax, "argmax", per_batch * (p.N if include else 1))
    a5 = be.xp.ascontiguousarray(argmax).reshape(dy5.shape)
    return from_canonical(be.argmax_scatter(dy5, a5, p.x_shape, include, check_range), 2, True)


def spread_pooled(op: str, be, nspatial: int, cl: bool, layout: str, dy_arg: str, dy, shape_arg: str, shape,
                  ksize, strides, padding):
    """A pooled tensor spread back over its pre-pooling shape (avg_pool_grad, avg_unpool): the shape, pooled
    with ksize/strides/padding, must give the tensor's size."""
    A.tensor(dy, dy_arg, nspatial + 2, FLOAT_DTYPES, layout)
    dy_shape5 = canonical_shape(dy.shape, nspatial, cl)
    x_shape = A.shape_param(shape, shape_arg, nspatial, cl, dy_shape5[0], dy_shape5[-1])
    p = _problem(nspatial, x_shape, cl, ksize, strides, padding, shape_arg)
    A.same_shape(dy, f"{dy_arg} / {shape_arg}", user_shape(p.y_shape, nspatial, cl),
                 f"{dy_arg}'s shape equal to the pooled shape of {shape_arg}, {layout}")
    return from_canonical(getattr(be, op)(to_canonical(dy, be.xp, nspatial, cl), p), nspatial, cl)


def avg_pool_grad_nd(nspatial, orig_input_shape, grad, ksize, strides, padding, data_format):
    be = resolve({"grad": grad})
    cl = A.channels_last(data_format, nspatial)
    return spread_pooled("avg_pool_grad", be, nspatial, cl, _LAYOUT[nspatial][0 if cl else 1], "grad", grad,
                         "orig_input_shape", orig_input_shape, ksize, strides, padding)


@on_tensor_device
def avg_pool_grad(orig_input_shape, grad: Any, ksize, strides, padding, data_format: str = "NHWC",
                  name: str | None = None):
    """Gradient of avg_pool2d: dy / count spread over each window's in-bounds cells; overlaps add.

    TF: `tf.raw_ops.AvgPoolGrad`. orig_input_shape may be full or spatial-only.
    """
    return avg_pool_grad_nd(2, orig_input_shape, grad, ksize, strides, padding, data_format)


@on_tensor_device
def avg_pool3d_grad(orig_input_shape, grad: Any, ksize, strides, padding, data_format: str = "NDHWC",
                    name: str | None = None):
    """Gradient of avg_pool3d. TF: `tf.raw_ops.AvgPool3DGrad`."""
    return avg_pool_grad_nd(3, orig_input_shape, grad, ksize, strides, padding, data_format)
