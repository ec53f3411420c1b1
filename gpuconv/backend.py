"""Backend choice and the array edge: which implementation runs a call, and on which array library.

Backends: "numpy" (the fallback and oracle), "cuda" (CUDA kernels through CuPy), "emulator" (the same CUDA
kernels run on the CPU on NumPy arrays) and "auto" (NumPy arrays -> numpy, CuPy arrays -> cuda). The choice is
`use_backend(...)` (context-local), else the environment variable GPUCONV_BACKEND, else "auto".

Importing this module never imports CuPy; a CuPy array is recognised by its type's module.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import _bfloat16
from ._args import fail, fail_type, short

BACKENDS = ("auto", "numpy", "cuda", "emulator")
ENV_VAR = "GPUCONV_BACKEND"

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpuconv_backend", default=None)


def _check_name(name: Any, arg: str) -> str:
    if not isinstance(name, str):
        fail_type(arg, f"a str, one of {', '.join(map(repr, BACKENDS))}",
                  f"{short(name)} of type {type(name).__name__}")
    if name.lower() not in BACKENDS:
        fail(arg, f"one of {', '.join(map(repr, BACKENDS))}", short(name))
    return name.lower()


def get_backend() -> str:
    """The backend name in force: set by use_backend, else GPUCONV_BACKEND, else 'auto'."""
    name = _selected.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR, "").strip()        # stripped, like GPUCONV_NUM_THREADS and GPUCONV_WINOGRAD
    return _check_name(env, ENV_VAR) if env else "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager that selects a backend for the calls inside it (per thread / async context)."""
    token = _selected.set(_check_name(name, "name"))
    try:
        yield _selected.get()
    finally:
        _selected.reset(token)


# ---------------------------------------------------------------------------------------------------------
# array types
# ---------------------------------------------------------------------------------------------------------
def is_cupy_array(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy" and hasattr(a, "__cuda_array_interface__")


def array_kind(a: Any, arg: str) -> str:
    """'numpy' or 'cupy'; a TypeError naming the argument for anything else (lists included, and NumPy masked
    arrays: the ops would use the masked-out values as data)."""
    if isinstance(a, np.ma.MaskedArray):
        fail_type(arg, "a NumPy or CuPy array (not a masked array: gpuconv would use the masked-out values; pass "
                  f"{arg}.filled(value))", "numpy.ma.MaskedArray")
    if isinstance(a, np.ndarray):
        return "numpy"
    if is_cupy_array(a):
        return "cupy"
    fail_type(arg, "a NumPy or CuPy array", f"{type(a).__name__}")


def tensor_kind(arrays: dict[str, Any]) -> str:
    """The one array kind of all tensor arguments; mixing NumPy and CuPy is a TypeError."""
    kinds = {name: array_kind(a, name) for name, a in arrays.items()}
    found = set(kinds.values())
    if len(found) > 1:
        listing = ", ".join(f"{n} is {k}" for n, k in kinds.items())
        fail_type(", ".join(kinds), "all NumPy or all CuPy arrays (gpuconv never copies between host and "
                  "device implicitly)", listing)
    return found.pop()


def _device_id(a: Any) -> int | None:
    return getattr(getattr(a, "device", None), "id", None) if is_cupy_array(a) else None


def on_tensor_device(op: Callable) -> Callable:
    """Decorator of every public op: run it with the GPU that holds its CuPy tensor arguments as the current
    device, so that outputs and scratch are allocated there and its kernels launch there (CuPy allocates and
    launches on the current device, whatever device the inputs are on). Tensors on different GPUs are a
    ValueError naming them: gpuconv never copies between devices.

    Every op's last parameter is TF's `name=None` (so that ported calls that name their ops run unchanged): a str
    or None, checked here and otherwise ignored (gpuconv builds no graph)."""
    params = list(inspect.signature(op).parameters)
    at = params.index("name") if "name" in params else None

    @functools.wraps(op)
    def run(*args, **kwargs):
        name = None if at is None else kwargs.get("name") if len(args) <= at else args[at]
        if name is not None and not isinstance(name, str):
            fail_type("name", "a str or None (TF's op name, which gpuconv ignores)",
                      f"{short(name)} of type {type(name).__name__}")
        devices = {d for d in map(_device_id, (*args, *kwargs.values())) if d is not None}
        if not devices:
            return op(*args, **kwargs)
        if len(devices) > 1:
            bound = inspect.signature(op).bind(*args, **kwargs).arguments
            where = {name: _device_id(v) for name, v in bound.items() if _device_id(v) is not None}
            fail(", ".join(where), "CuPy tensors on one GPU (gpuconv never copies between devices)",
                 ", ".join(f"{name} on device {d}" for name, d in where.items()))
        import cupy
        with cupy.cuda.Device(devices.pop()):
            return op(*args, **kwargs)
    return run


# ---------------------------------------------------------------------------------------------------------
# backend objects
# ---------------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_instances: dict[str, Any] = {}


def _after_fork_in_child() -> None:
    """A forked child gets a fresh lock: one another parent thread held at the fork (making a backend) would
    stay held, and every op of the child would wait on it."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _instance(name: str):
    with _lock:
        if name not in _instances:
            if name == "numpy":
                from . import numpy_backend
                _instances[name] = numpy_backend.BACKEND
            elif name == "emulator":
                from .executors.emulator import EmulatorExecutor
                from .kernel_backend import KernelBackend
                _instances[name] = KernelBackend(EmulatorExecutor())
            elif name == "cuda":
                from .executors.cuda import CudaExecutor
                from .kernel_backend import KernelBackend
                _instances[name] = KernelBackend(CudaExecutor())
        return _instances[name]


def resolve(arrays: dict[str, Any]):
    """The backend object that runs a call on these tensor arguments (validated: types agree with it).

    A backend object has `name`, `xp` (numpy or cupy) and one method per canonical op (see
    numpy_backend/__init__.py for the list and signatures). Calls with a bfloat16 tensor get the backend wrapped
    in _bfloat16.Bfloat16Backend (float32 inside, results rounded to bfloat16).
    """
    kind = tensor_kind(arrays)
    name = get_backend()
    if name == "auto":
        name = "cuda" if kind == "cupy" else "numpy"
    wanted = "cupy" if name == "cuda" else "numpy"
    if kind != wanted:
        fail_type(", ".join(arrays), f"{wanted} arrays for backend {name!r}", f"{kind} arrays")
    if _bfloat16.any_bfloat16(arrays):
        return _bfloat16.Bfloat16Backend(_instance(name))      # every backend sees float32 only
    return _instance(name)


def available_backends() -> dict[str, str]:
    """Each backend and whether it can run here ('yes' or the reason it cannot), without initialising CUDA."""
    from .executors import availability
    return {"numpy": "yes", **availability()}


def canonical_shape(shape: Sequence[int], nspatial: int, is_channels_last: bool) -> tuple[int, ...]:
    """The (N, D, H, W, C) shape to_canonical gives a tensor of this user-layout shape: known before the copy, so
    that arguments are checked against it first (a bad ksize costs no copy of a large NCHW input)."""
    shape = tuple(int(v) for v in shape)
    spatial = shape[1:-1] if is_channels_last else shape[2:]
    channels = shape[-1] if is_channels_last else shape[1]
    return (shape[0],) + (1,) * (3 - nspatial) + spatial + (channels,)


def to_canonical(x, xp, nspatial: int, is_channels_last: bool):
    """A tensor in user layout (N, spatial..., C) or (N, C, spatial...) as a C-contiguous (N, D, H, W, C)."""
    shape5 = canonical_shape(x.shape, nspatial, is_channels_last)
    if not is_channels_last:
        x = x.transpose((0,) + tuple(range(2, nspatial + 2)) + (1,))
    return xp.ascontiguousarray(x).reshape(shape5)


def from_canonical(y, nspatial: int, is_channels_last: bool):
    """A canonical (N, D, H, W, C) result in the user's layout (a view where possible)."""
    n, c = y.shape[0], y.shape[-1]
    y = y.reshape((n,) + tuple(y.shape[4 - nspatial:4]) + (c,))
    if not is_channels_last:
        y = y.transpose((0, nspatial + 1) + tuple(range(1, nspatial + 1)))
    return y


def user_shape(shape5: Sequence[int], nspatial: int, is_channels_last: bool) -> tuple[int, ...]:
    """A canonical (N, D, H, W, C) shape in the user's layout: the shape from_canonical gives such an array."""
    n, c, spatial = int(shape5[0]), int(shape5[-1]), tuple(int(v) for v in shape5[4 - nspatial:4])
    return (n,) + spatial + (c,) if is_channels_last else (n, c) + spatial


def canonical_filter_shape(shape: Sequence[int], nspatial: int) -> tuple[int, ...]:
    """The (T, R, S, in, out) shape canonical_filters gives filters of this shape."""
    return (1,) * (3 - nspatial) + tuple(int(v) for v in shape)


def canonical_filters(w, xp, nspatial: int):
    """Filters (spatial..., in, out) as a C-contiguous (T, R, S, in, out)."""
    return xp.ascontiguousarray(w).reshape(canonical_filter_shape(w.shape, nspatial))


def from_canonical_filters(dw, nspatial: int):
    return dw.reshape(tuple(dw.shape[3 - nspatial:]))


def shape_of(seq: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in seq)
