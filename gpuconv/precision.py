"""float32 convolution precision: exact IEEE float32 (the default), or tensor-core TF32 / 3xTF32 when asked for.

    "ieee"     every float32 product and sum in float32 (DESIGN.md §2). The default on every backend.
    "tf32"     the CUDA kernels may round the operands of float32 convolutions to TF32 (10 explicit mantissa
               bits) and multiply them on tensor cores, summing in float32: what PyTorch's
               `torch.backends.cudnn.allow_tf32` and TensorFlow's `enable_tensor_float_32_execution` allow
               cuDNN to do by default on Ampere and newer. About 3 decimal digits per product.
    "3xtf32"   tensor cores with three TF32 products per float32 product (CUTLASS's big + small split):
               float32-level accuracy, not bit-identical to "ieee".

A permission, as in PyTorch: the mode is used where a tensor-core kernel exists and the device has TF32 tensor
cores (sm_80 or newer) -- the forward convolution (conv_fprop: conv2d, conv3d), the input gradient (conv_dgrad:
conv*_backprop_input, conv*_transpose) and the filter gradient (conv_wgrad: conv*_backprop_filter) on the cuda and
emulator backends. Every other op, dtype, backend (NumPy: exact float32 whatever the mode) or GPU computes as
under "ieee". Inputs that hold inf or NaN are computed exactly too. The choice is `float32_precision(...)`
(context-local), else the environment variable GPUCONV_FLOAT32_PRECISION, else "ieee".
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator

from ._args import fail, fail_type, short

FLOAT32_PRECISIONS = ("ieee", "tf32", "3xtf32")
ENV_VAR = "GPUCONV_FLOAT32_PRECISION"
# Tensor-core products per float32 product of each non-"ieee" mode (the kernel's Passes template argument).
TENSOR_CORE_PASSES = {"tf32": 1, "3xtf32": 3}
TF32_MIN_COMPUTE_CAPABILITY = 80

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpuconv_float32_precision", default=None)


def check_precision(mode: Any, arg: str) -> str:
    """mode in lower case when it names a float32 precision, else the TypeError / ValueError naming `arg`."""
    if not isinstance(mode, str):
        fail_type(arg, f"a str, one of {', '.join(map(repr, FLOAT32_PRECISIONS))}",
                  f"{short(mode)} of type {type(mode).__name__}")
    if mode.lower() not in FLOAT32_PRECISIONS:
        fail(arg, f"one of {', '.join(map(repr, FLOAT32_PRECISIONS))}", short(mode))
    return mode.lower()


def get_float32_precision() -> str:
    """The float32 precision in force: set by float32_precision, else GPUCONV_FLOAT32_PRECISION, else 'ieee'."""
    mode = _selected.get()
    if mode is not None:
        return mode
    env = os.environ.get(ENV_VAR, "").strip()
    return check_precision(env, ENV_VAR) if env else "ieee"


@contextlib.contextmanager
def float32_precision(mode: str) -> Iterator[str]:
    """Context manager that sets the float32 precision ('ieee', 'tf32', '3xtf32') for the calls inside it
    (per thread / async context)."""
    token = _selected.set(check_precision(mode, "mode"))
    try:
        yield _selected.get()
    finally:
        _selected.reset(token)


def effective_precision(mode: str, compute_capability: int | None) -> str:
    """The precision a kernel can use: `mode`, or 'ieee' on a GPU without TF32 tensor cores (compute capability
    below 8.0, given as 75, 80, 90...; None: no such limit, as under the emulator)."""
    if mode != "ieee" and compute_capability is not None and compute_capability < TF32_MIN_COMPUTE_CAPABILITY:
        return "ieee"
    return mode
