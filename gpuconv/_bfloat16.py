"""bfloat16 through float32: every op runs as float32 on widened copies of its bfloat16 tensors, and its floating
results are rounded to bfloat16 once (to nearest, ties to even; the array library's cast; NaNs keep their upper
16 bits).

Widening is exact (a bfloat16 is the upper half of a float32), so max pooling, argmax, max-pool gradients without
overlaps, unpooling without repeated indices and the gather gradient are exact; convolutions, average pooling and
sums of overlaps are the float32 result rounded once, as float16's float32 accumulation is. The cost: the float32
copies (twice the bfloat16 tensors' bytes) and two casts. Some of TensorFlow 2.21's bfloat16 CPU kernels add in
bfloat16 instead (scatter_nd, which max_unpool's recipe uses, with repeated indices; Conv2DBackpropInput with
explicit padding; MaxPoolGrad where windows overlap) and can be several ulps off (README, "Where gpuconv
deliberately differs").

The wrapper sits between the API layer and any backend (backend.resolve), so the NumPy backend, the emulator and
the CUDA kernels all see float32 only. NumPy arrays of ml_dtypes' bfloat16 are widened by ml_dtypes' casts; CuPy
(>= 14, with ml_dtypes installed) casts its own bfloat16 arrays on the device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import is_bfloat16


def any_bfloat16(arrays: dict[str, Any]) -> bool:
    """Whether one of the call's tensors is bfloat16."""
    return any(is_bfloat16(a.dtype) for a in arrays.values())


def _narrow(out, dtype):
    if isinstance(out, tuple):
        return tuple(_narrow(o, dtype) for o in out)
    if np.dtype(out.dtype).kind == "f":
        with np.errstate(all="ignore"):            # IEEE rounding: overflow to inf is the contract, not a warning
            narrow = out.astype(dtype)
        _keep_nan_payloads(out, narrow)
        return narrow
    return out                                     # argmax indices


def _keep_nan_payloads(wide, narrow) -> None:
    """NaNs of the float32 result keep their upper 16 bits in the bfloat16 one (ml_dtypes' cast returns the
    canonical quiet NaN for every NaN): a NaN that max pooling or a gather passes through from a bfloat16 input
    comes back with its own bits, as float16's and float32's do. A NaN whose upper half would read as an
    infinity (payload in the lower half only, from arithmetic) gets the quiet bit."""
    nan = wide != wide
    if not bool(nan.any()):
        return
    upper = (wide.view(np.uint32) >> 16).astype(np.uint16)
    upper |= ((upper & 0x7F) == 0).astype(np.uint16) * np.uint16(0x40)
    narrow.view(np.uint16)[nan] = upper[nan]


class Bfloat16Backend:
    """A backend's canonical ops with bfloat16 tensors widened to float32 and floating results rounded back."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.xp = inner.xp

    def __getattr__(self, op: str):
        fn = getattr(self.inner, op)
        if op.startswith("_") or not callable(fn):
            return fn

        def run(*args):
            narrow = None
            wide = []
            for a in args:
                if hasattr(a, "dtype") and hasattr(a, "astype") and is_bfloat16(a.dtype):
                    narrow = a.dtype
                    a = a.astype(np.float32)
                wide.append(a)
            out = fn(*wide)
            return out if narrow is None else _narrow(out, narrow)
        run.__name__ = op
        return run
