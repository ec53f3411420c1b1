"""Unpooling: max_unpool (scatter at argmax, TF's scatter_nd recipe), its gradient, and avg_unpool."""
from __future__ import annotations

import functools
import math
from typing import Any

from . import _args as A
from .backend import canonical_shape, from_canonical, on_tensor_device, resolve, to_canonical
from .dtypes import INDEX_DTYPES
from .geometry import check_elements
from .pool import MAX_DTYPES, _flag, check_argmax, spread_pooled

_LAYOUT = {4: "NHWC", 5: "NDHWC"}


def _with_argmax(arg: str, t: Any, argmax: Any, include_batch_in_index: Any):
    """Shared checks of the argmax-indexed ops: a 4-D/5-D channels-last tensor and an int32/int64 argmax of the
    same rank. Returns (backend, number of spatial dims, include_batch flag)."""
    be = resolve({arg: t, "argmax": argmax})
    include = _flag(include_batch_in_index, "include_batch_in_index")
    if t.ndim not in (4, 5):
        A.fail(arg, "a 4-D (NHWC) or 5-D (NDHWC) tensor", f"shape {tuple(t.shape)}")
    A.tensor(t, arg, t.ndim, MAX_DTYPES, _LAYOUT[t.ndim])
    A.tensor(argmax, "argmax", t.ndim, INDEX_DTYPES, _LAYOUT[t.ndim])
    return be, t.ndim - 2, include


@on_tensor_device
def max_unpool(updates: Any, argmax: Any, output_shape, include_batch_in_index: bool = False, name: str | None = None):
    """Zeros of output_shape with each update added at its argmax (duplicate indices add).

    output_shape: the original (pre-pooling) shape, full (N, H, W, C) / (N, D, H, W, C) or spatial-only (H, W) /
    (D, H, W); decoding the size from the pooled size x stride would scramble rows when H or W is not a multiple
    of the stride.
    TF: the `tf.scatter_nd` recipe of seed 004; SegNet's unpooling.
    """
    be, nspatial, include = _with_argmax("updates", updates, argmax, include_batch_in_index)
    A.same_shape(argmax, "argmax", updates.shape, "the shape of updates")
    out5 = A.shape_param(output_shape, "output_shape", nspatial, True, updates.shape[0], updates.shape[-1])
    check_elements(out5, "output_shape", "an output")
    per_batch = math.prod(out5[1:])
    check_range = functools.partial(check_argmax, argmax, "argmax", per_batch * (out5[0] if include else 1))
    u5 = to_canonical(updates, be.xp, nspatial, True)
    a5 = be.xp.ascontiguousarray(argmax).reshape(u5.shape)
    return from_canonical(be.argmax_scatter(u5, a5, out5, include, check_range), nspatial, True)


@on_tensor_device
def max_unpool_grad(grad: Any, argmax: Any, include_batch_in_index: bool = False, name: str | None = None):
    """Gradient of max_unpool: grad gathered at argmax (shape of argmax)."""
    be, nspatial, include = _with_argmax("grad", grad, argmax, include_batch_in_index)
    if argmax.shape[0] != grad.shape[0] or argmax.shape[-1] != grad.shape[-1]:
        A.fail("argmax", f"batch {grad.shape[0]} and channels {grad.shape[-1]} (those of grad)",
               f"shape {tuple(argmax.shape)}")
    g_shape5 = canonical_shape(grad.shape, nspatial, True)
    limit = math.prod(g_shape5[1:]) * (g_shape5[0] if include else 1)
    check_range = functools.partial(check_argmax, argmax, "argmax", limit)
    g5 = to_canonical(grad, be.xp, nspatial, True)
    a5 = to_canonical(argmax, be.xp, nspatial, True)
    return from_canonical(be.argmax_gather(g5, a5, include, check_range), nspatial, True)


@on_tensor_device
def avg_unpool(updates: Any, ksize, strides, padding, output_shape, data_format=None, name: str | None = None):
    """Copy each pooled value into every in-bounds cell of its window (overlaps add): the adjoint of sum pooling.

    output_shape: the original (pre-pooling) shape, full or spatial-only; pooling it with ksize/strides/padding
    must give updates' spatial size. data_format: None (NHWC or NDHWC by rank) or one of the four layouts.
    """
    be = resolve({"updates": updates})
    if updates.ndim not in (4, 5):
        A.fail("updates", "a 4-D or 5-D tensor", f"shape {tuple(updates.shape)}")
    nspatial = updates.ndim - 2
    fmt = _LAYOUT[updates.ndim] if data_format is None else data_format
    cl = A.channels_last(fmt, nspatial)
    return spread_pooled("avg_unpool", be, nspatial, cl, fmt, "updates", updates, "output_shape", output_shape,
                         ksize, strides, padding)
