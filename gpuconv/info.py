"""info(): versions, backends available here, and the GPU as NVML reports it (never initialises CUDA)."""
from __future__ import annotations

import importlib.metadata
import platform
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# NVRTC's pip distribution: CUDA 13 names it nvidia-cuda-nvrtc, CUDA 12 nvidia-cuda-nvrtc-cu12 (what the cuda12
# extra installs through cuda-toolkit); the first one installed is reported.
NVRTC_DISTRIBUTIONS = ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12")


def _first_version(dists) -> str | None:
    """The version of the first of these distributions that is installed, else None."""
    return next((v for v in map(_version, dists) if v), None)


def info() -> dict[str, Any]:
    """A dict: versions (gpuconv, python, numpy, ml_dtypes (for bfloat16 arrays), cupy, cuda-bindings,
    nvidia-cuda-nvrtc; None where absent), the platform, the backend in force, the float32 precision in force
    (`float32-precision`: ieee, tf32 or 3xtf32), `backends` (each available or why not), `numpy-backend` (worker
    and BLAS threads, Winograd setting, BLAS kernel set) and `gpu` (the GPUs NVML sees, or why none)."""
    import numpy

    from . import __version__
    from .backend import available_backends
    from .device_report import gpu_report

    knobs = settings()
    cupy = _first_version(("cupy-cuda13x", "cupy-cuda12x", "cupy"))
    return {
        "gpuconv": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "ml_dtypes": _version("ml_dtypes"),
        "cupy": cupy,
        "cuda-bindings": _version("cuda-bindings"),
        "nvidia-cuda-nvrtc": _first_version(NVRTC_DISTRIBUTIONS),
        "backend": knobs["backend"],
        "float32-precision": knobs["float32-precision"],
        "backends": available_backends(),
        "numpy-backend": knobs["numpy-backend"],
        "gpu": gpu_report(),
    }


def settings() -> dict[str, Any]:
    """The GPUCONV_* settings in force: {'backend': get_backend(), 'float32-precision': get_float32_precision(),
    'numpy-backend': numpy_backend_settings()}.

    Raises ValueError naming the variable when one is malformed (GPUCONV_BACKEND, GPUCONV_FLOAT32_PRECISION,
    GPUCONV_NUM_THREADS, GPUCONV_WINOGRAD); the CLI reads them up front this way so that a bad value is a usage
    error, not a failure of every op later on."""
    from .backend import get_backend
    from .precision import get_float32_precision
    return {"backend": get_backend(), "float32-precision": get_float32_precision(),
            "numpy-backend": numpy_backend_settings()}


def numpy_backend_settings() -> dict[str, Any]:
    """The NumPy backend's knobs as they stand: worker threads, BLAS threads (0: unknown), numpy's BLAS kernel
    set (with what chose it), Winograd on/off."""
    from .numpy_backend import _parallel, _winograd
    return {"threads": _parallel.num_threads(), "blas_threads": _parallel.blas_threads(),
            "blas_kernels": _parallel.blas_kernel_note(), "winograd": _winograd.enabled()}
