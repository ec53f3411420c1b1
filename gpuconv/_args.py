"""Argument normalisation and the one error helper.

Everything user-facing (int-or-list strides, padding strings, data_format, spatial-only shapes) is turned into
canonical form here; nothing downstream sees a user-facing form. Every bad argument raises through `fail` or
`fail_type`, which name the argument, what was expected and what was given.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

from . import dtypes

# Largest stride, window, dilation or pad: the kernels hold each in a C++ int (plans/conv_common.extents_fit_int).
INT32_MAX = 2**31 - 1


def fail(arg: str, expected: str, got: Any) -> None:
    """Raise ValueError naming the argument, the expectation and the given value."""
    raise ValueError(f"{arg}: expected {expected}, got {got}")


def fail_type(arg: str, expected: str, got: Any) -> None:
    """Raise TypeError naming the argument, the expectation and the given value."""
    raise TypeError(f"{arg}: expected {expected}, got {got}")


def short(value: Any) -> str:
    """repr(value) cut to 120 characters: error messages stay readable whatever the user passed (a list of a
    million strides was a 3 MB message)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def as_int(value: Any, arg: str) -> int:
    """An exact integer (Python or NumPy int, not bool, not float, not a NumPy time value)."""
    # np.timedelta64 subclasses np.signedinteger (a stride of "2 time units" passed as 2; its arrays were refused).
    if isinstance(value, (bool, np.bool_, np.timedelta64)) or not isinstance(value, (int, np.integer)):
        try:
            if isinstance(value, (bool, np.bool_, float, np.floating, np.timedelta64)):
                raise TypeError
            return operator.index(value)
        except Exception:       # TypeError; a float TF tensor's __index__ raises AttributeError
            fail_type(arg, "an integer", f"{short(value)} of type {type(value).__name__}")
    return int(value)


def from_other_framework(value: Any) -> Any:
    """Another framework's shape or tensor as data the parsers read: a TensorFlow TensorShape as its list of
    dimensions (None where unknown), a tensor whose dtype NumPy cannot read (TensorFlow's) as its NumPy array
    (through __array__); anything else as it is. Recognised without importing TensorFlow."""
    kind = type(value)
    if kind.__name__ == "TensorShape" and kind.__module__.startswith("tensorflow"):
        try:
            return value.as_list()
        except Exception:               # unknown rank: left as it is, refused with the usual error
            return value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            np.dtype(value.dtype)
        except TypeError:
            try:
                return np.asarray(value)
            except Exception:
                return value
    return value


def int_sequence(value: Any, arg: str) -> tuple[int, ...]:
    """A 1-D sequence of exact integers: tuple, list, or integer array (NumPy or CuPy; another framework's
    tensor or shape through from_other_framework: tf.shape(x), a torch tensor, a TensorShape)."""
    value = from_other_framework(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            np.dtype(value.dtype)
        except TypeError:
            fail_type(arg, "a tuple, list or 1-D integer array", f"{short(value)} of type {type(value).__name__}")
        if getattr(value, "ndim", 1) != 1:
            fail(arg, "a 1-D sequence of integers", f"an array of shape {tuple(value.shape)}")
        if not np.issubdtype(np.dtype(value.dtype), np.integer):
            fail_type(arg, "integers", f"an array of dtype {value.dtype}")
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        fail_type(arg, "a tuple, list or 1-D integer array", f"{short(value)} of type {type(value).__name__}")
    return tuple(as_int(v, arg) for v in value)


# ---------------------------------------------------------------------------------------------------------
# data_format
# ---------------------------------------------------------------------------------------------------------
_FORMATS = {2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}


def channels_last(data_format: Any, nspatial: int, arg: str = "data_format") -> bool:
    """True for NHWC/NDHWC, False for NCHW/NCDHW; anything else is a ValueError."""
    last, first = _FORMATS[nspatial]
    if isinstance(data_format, str) and data_format in (last, first):    # str first: arrays compare elementwise
        return data_format == last
    fail(arg, f"{last!r} or {first!r}", short(data_format))


def spatial_axes(nspatial: int, is_channels_last: bool) -> tuple[int, ...]:
    """Axes of the spatial dimensions in a tensor of rank nspatial + 2."""
    return tuple(range(1, nspatial + 1)) if is_channels_last else tuple(range(2, nspatial + 2))


def channel_axis(nspatial: int, is_channels_last: bool) -> int:
    return nspatial + 1 if is_channels_last else 1


# ---------------------------------------------------------------------------------------------------------
# strides, ksize, dilations
# ---------------------------------------------------------------------------------------------------------
def window_param(value: Any, arg: str, nspatial: int, is_channels_last: bool, default: int | None = None,
                 minimum: int = 1) -> tuple[int, ...]:
    """strides / ksize / dilations: an int, a length-1 sequence, one per spatial dim, or one per dim of the
    tensor (batch and channel entries must then be 1). Returns one int per spatial dimension, each >= minimum.
    """
    if value is None:
        if default is None:
            fail_type(arg, "an int or a sequence of ints", None)
        return (default,) * nspatial
    if isinstance(value, (int, float, np.generic)) or getattr(value, "shape", None) == ():
        # A scalar: an exact integer (a 0-d integer array too); a float or bool is a TypeError showing it.
        values: tuple[int, ...] = (as_int(value, arg),) * nspatial
    else:
        seq = int_sequence(value, arg)
        rank = nspatial + 2
        if len(seq) == 1:
            values = seq * nspatial
        elif len(seq) == nspatial:
            values = seq
        elif len(seq) == rank:
            c = channel_axis(nspatial, is_channels_last)
            if seq[0] != 1 or seq[c] != 1:
                fail(arg, f"1 in the batch and channel entries (positions 0 and {c})", short(list(seq)))
            values = tuple(seq[a] for a in spatial_axes(nspatial, is_channels_last))
        else:
            fail(arg, f"an int or a sequence of length 1, {nspatial} or {rank}",
                 f"length {len(seq)}: {short(list(seq))}")
    for v in values:
        if v < minimum:
            fail(arg, f"every value >= {minimum}", short(value))
        if v > INT32_MAX:
            fail(arg, f"every value <= {INT32_MAX} (kernels keep extents, strides, dilations and pads in int)",
                 short(value))
    return values


# ---------------------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------------------
def padding_param(padding: Any, nspatial: int, is_channels_last: bool, arg: str = "padding"):
    """'SAME', 'VALID', or explicit (before, after) pairs: one per tensor dimension in data_format order (batch
    and channel pairs zero) or one per spatial dimension. Returns 'SAME', 'VALID' or nspatial pairs.
    """
    if isinstance(padding, str):
        # ASCII only: str.upper() folds e.g. 'ſ' (long s) to 'S', which TF does not accept.
        upper = padding.upper() if padding.isascii() else None
        if upper in ("SAME", "VALID"):
            return upper
        fail(arg, "'SAME', 'VALID' or explicit (before, after) pairs", short(padding))
    padding = from_other_framework(padding)
    if hasattr(padding, "tolist") and hasattr(padding, "shape"):
        if getattr(padding, "ndim", None) == 0:       # np.array("SAME") would print as 'SAME' after tolist()
            fail_type(arg, "'SAME', 'VALID' (a str) or a sequence of (before, after) pairs",
                      f"a 0-d array {short(padding)}")
        padding = padding.tolist()
    if not isinstance(padding, (list, tuple)):
        fail_type(arg, "'SAME', 'VALID' or a sequence of (before, after) pairs", short(padding))
    pairs = []
    for item in padding:
        if hasattr(item, "tolist") and hasattr(item, "shape"):
            item = item.tolist()                        # a pair given as a 1-D array
        if isinstance(item, (str, bytes)) or not isinstance(item, (list, tuple)) or len(item) != 2:
            fail(arg, "each element of explicit padding to be a (before, after) pair", short(padding))
        pairs.append((as_int(item[0], arg), as_int(item[1], arg)))
    rank = nspatial + 2
    if len(pairs) == rank:
        c = channel_axis(nspatial, is_channels_last)
        if pairs[0] != (0, 0) or pairs[c] != (0, 0):
            fail(arg, f"zero padding for the batch and channel dimensions (pairs 0 and {c})", short(padding))
        pairs = [pairs[a] for a in spatial_axes(nspatial, is_channels_last)]
    elif len(pairs) != nspatial:
        fail(arg, f"{rank} pairs (one per dimension) or {nspatial} (one per spatial dimension)",
             f"{len(pairs)} pairs: {short(padding)}")
    for pb, pa in pairs:
        if pb < 0 or pa < 0:
            fail(arg, "non-negative pads", short(padding))
        if pb > INT32_MAX or pa > INT32_MAX:
            fail(arg, f"pads <= {INT32_MAX} (kernels keep extents, strides, dilations and pads in int)",
                 short(padding))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------------------
# shapes given as arguments (input_sizes, output_shape, orig_input_shape)
# ---------------------------------------------------------------------------------------------------------
def shape_param(value: Any, arg: str, nspatial: int, is_channels_last: bool, batch: int,
                channels: int | None) -> tuple[int, ...]:
    """A full shape in data_format order, or a spatial-only shape (batch from `batch`, channels from
    `channels`). Returns the canonical (N, D, H, W, C) with D = 1 for 2-D. `channels=None` means the full
    shape must give them.
    """
    seq = int_sequence(value, arg)
    rank = nspatial + 2
    if len(seq) == rank:
        c = channel_axis(nspatial, is_channels_last)
        n, ch = seq[0], seq[c]
        spatial = tuple(seq[a] for a in spatial_axes(nspatial, is_channels_last))
        if n != batch:
            fail(arg, f"batch size {batch} (from the tensor arguments)", f"{n} in {short(list(seq))}")
        if channels is not None and ch != channels:
            fail(arg, f"{channels} channels (from the tensor arguments)", f"{ch} in {short(list(seq))}")
    elif len(seq) == nspatial:
        if channels is None:
            fail(arg, f"a full shape of length {rank}", f"length {len(seq)}: {short(list(seq))}")
        n, ch, spatial = batch, channels, seq
    else:
        fail(arg, f"a shape of length {rank} (full) or {nspatial} (spatial only)",
             f"length {len(seq)}: {short(list(seq))}")
    for v in (n, ch) + tuple(spatial):
        if v < 0:
            fail(arg, "non-negative sizes", short(list(seq)))
        if v > INT32_MAX:
            fail(arg, f"sizes <= {INT32_MAX} (kernels keep extents in int)", short(list(seq)))
    return canonical_shape(n, spatial, ch)


def canonical_shape(n: int, spatial: Sequence[int], c: int) -> tuple[int, int, int, int, int]:
    """(N, D, H, W, C) from batch, 1-3 spatial sizes (leading ones padded with 1) and channels."""
    spatial = tuple(spatial)
    return (n,) + (1,) * (3 - len(spatial)) + spatial + (c,)


def to_triple(values: Sequence[int], fill: int) -> tuple[int, int, int]:
    """Pad a per-spatial-dim tuple to 3 entries by prepending `fill` (depth for 2-D problems)."""
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values


def pairs_to_triple(padding):
    """Explicit padding pairs padded to 3 spatial dims with (0, 0); strings pass through."""
    if isinstance(padding, str):
        return padding
    return ((0, 0),) * (3 - len(padding)) + tuple(padding)


# ---------------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------------
def tensor(a: Any, arg: str, ndim: int, allowed: Sequence[np.dtype], layout: str) -> None:
    """Check a tensor's rank and dtype (its array type was checked by backend.resolve)."""
    if a.ndim != ndim:
        fail(arg, f"a {ndim}-D tensor ({layout})", f"shape {tuple(a.shape)}")
    dt = np.dtype(a.dtype)
    if not dtypes.accepts(allowed, dt):
        names = dtypes.names(allowed)
        if not dt.isnative and dtypes.accepts(allowed, dt.newbyteorder("=")):
            # '>f4' is float32 to a NumPy user, but the kernels read native words: refused with the remedy.
            fail_type(arg, f"dtype in ({names}) in native byte order "
                           "(a.astype(a.dtype.newbyteorder('=')) converts)",
                      f"dtype {dt.str} ({dt.name}, non-native byte order)")
        fail_type(arg, f"dtype in ({names})", f"dtype {a.dtype}")


def same_dtype(arrays: dict[str, Any]) -> None:
    """All named tensors share one dtype."""
    found = {n: np.dtype(a.dtype) for n, a in arrays.items()}
    if len(set(found.values())) > 1:
        fail_type(", ".join(found), "one dtype for all of them",
                  ", ".join(f"{n}: {d}" for n, d in found.items()))


def same_shape(a: Any, arg: str, shape: Sequence[int], what: str) -> None:
    if tuple(a.shape) != tuple(shape):
        fail(arg, f"shape {tuple(shape)} ({what})", f"shape {tuple(a.shape)}")
