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


def info() -> dict[str, Any]:
    """A dict: gpuconv/Python/NumPy/CuPy/NVRTC versions, backends available (or why not), GPUs via NVML."""
    import numpy

    from . import __version__
    from .backend import available_backends, get_backend
    from .device_report import gpu_report

    cupy = next((v for v in (_version(d) for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy")) if v), None)
    return {
        "gpuconv": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "cupy": cupy,
        "cuda-bindings": _version("cuda-bindings"),
        "nvidia-cuda-nvrtc": _version("nvidia-cuda-nvrtc"),
        "backend": get_backend(),
        "backends": available_backends(),
        "numpy-backend": numpy_backend_settings(),
        "gpu": gpu_report(),
    }


def numpy_backend_settings() -> dict[str, Any]:
    """The NumPy backend's knobs as they stand: worker threads, BLAS threads (0: unknown), numpy's BLAS kernel
    set (with what chose it), Winograd on/off."""
    from .numpy_backend import _parallel, _winograd
    return {"threads": _parallel.num_threads(), "blas_threads": _parallel.blas_threads(),
            "blas_kernels": _parallel.blas_kernel_note(), "winograd": _winograd.enabled()}
