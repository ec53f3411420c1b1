"""The dtypes gpuconv accepts, and their C++ spellings for kernel name expressions.

One table, used by the API layer (what is accepted), the NumPy backend (what to accumulate in) and the launch
plans (which template instantiation to name).

bfloat16 is accepted wherever float16 is, but no backend sees it: gpuconv._bfloat16 runs the float32 op on
widened copies and rounds the result. NumPy and CuPy have no bfloat16 of their own; ml_dtypes registers one
(TensorFlow, JAX and CuPy >= 14 use it), recognised here by its name, so gpuconv neither needs nor imports ml_dtypes.
"""
from __future__ import annotations

import numpy as np

# Floating dtypes every op accepts. float16 is computed in float32 and rounded once at the end.
FLOAT_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Integer dtypes accepted by max pooling, argmax, max-pool gradients and unpooling (TF: MaxPool supports
# the real number types; gpuconv supports these).
INT_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64)
)

# argmax dtypes of max_pool_with_argmax (TF: Targmax in {int32, int64}).
INDEX_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.int32), np.dtype(np.int64))

# C++ type names, as they appear in template name expressions (CuPy maps float16 to `half`/`__half`).
CTYPE: dict[np.dtype, str] = {
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype sums are accumulated in: float32 for float16, else the dtype itself."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def ctype(dtype: np.dtype) -> str:
    """C++ spelling of a supported dtype (KeyError for anything else: callers validated it already)."""
    return CTYPE[np.dtype(dtype)]


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES


def is_bfloat16(dtype) -> bool:
    """Whether dtype is ml_dtypes' bfloat16 (native byte order)."""
    dt = np.dtype(dtype)
    if dt.kind != "V":                  # ml_dtypes' types are kind 'V'; this exit skips the costly dt.name
        return False
    return dt.name == "bfloat16" and dt.itemsize == 2 and dt.isnative and dt.type.__module__ == "ml_dtypes"


def as_numpy_dtype_like(d):
    """A TensorFlow DType (its `as_numpy_dtype`) or a torch.dtype (its name, 'torch.int32' -> 'int32') as
    something np.dtype reads, so that ported code's `output_dtype=tf.int32` works; anything else as it is. Like
    is_bfloat16, recognised without importing either library."""
    if type(d).__module__.startswith("tensorflow"):
        try:
            return d.as_numpy_dtype
        except Exception:       # not a DType, or tf.resource / tf.variant: no NumPy equivalent (a KeyError)
            return d
    if type(d).__module__ == "torch" and type(d).__name__ == "dtype":
        return str(d).removeprefix("torch.")
    return d


def accepts(allowed, dtype) -> bool:
    """Whether a tensor of dtype is accepted where the dtypes `allowed` are: those, plus bfloat16 wherever
    float16 is."""
    dt = np.dtype(dtype)
    return dt in allowed or (is_bfloat16(dt) and np.dtype(np.float16) in allowed)


def names(allowed) -> str:
    """The accepted dtypes' names for error messages (bfloat16 listed after float16 where it is accepted)."""
    out = []
    for d in allowed:
        out.append(np.dtype(d).name)
        if np.dtype(d) == np.float16:
            out.append("bfloat16")
    return ", ".join(out)
