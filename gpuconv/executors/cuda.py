"""CUDA executor: runs LaunchPlans as CuPy RawModule kernels on the arrays' device and the current stream.

One RawModule per (kernel family, device), built lazily from the family's .cu file with every name expression
of the family and compiled by NVRTC on first use (CuPy caches the cubin on disk). Launches never transfer to
the host and never synchronise. CuPy is imported only when something is launched.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

from .. import kernel_source
from ..kernel_source import KernelFamily
from ..plans import LaunchPlan

# Dynamic shared memory above this needs the kernel's opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize).
DEFAULT_DYNAMIC_SMEM_LIMIT = 48 * 1024


def _cupy():
    import cupy
    return cupy


def cuda_availability() -> str:
    """'yes', or why the cuda backend cannot run here (CuPy missing, no driver or device, no NVRTC); never raises."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'gpuconv[cuda13]' or 'gpuconv[cuda12]')"
    except Exception as exc:  # a broken CuPy install must not break gpuconv.info()
        return f"CuPy failed to import: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no usable CUDA driver or device: {exc}"
    if count < 1:
        return "no CUDA device"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:
        return (f"CuPy cannot load NVRTC: {exc} (pip install 'gpuconv[cuda13]' or 'gpuconv[cuda12]': NVRTC and the "
                "CUDA headers as wheels)")
    return "yes"


class CudaExecutor:
    """Launches LaunchPlans with CuPy: `launch(plan)` on the device of the plan's arrays and its current stream.

    Args:
        families: the kernel families to serve (default: kernel_source.families(), read on first use);
            tests pass fixture families here.
    """

    name = "cuda"

    def __init__(self, families: Iterable[KernelFamily] | None = None):
        self._families = None if families is None else {f.name: f for f in families}
        self._lock = threading.Lock()
        self._modules: dict[tuple[str, int], Any] = {}           # (family, device) -> RawModule
        self._functions: dict[tuple[str, str, int], Any] = {}     # (family, name expression, device) -> kernel
        self._smem_opt_in: dict[tuple[str, str, int], int] = {}   # dynamic smem each kernel is opted in to
        self._capabilities: dict[int, int] = {}                   # device -> compute capability (75, 80, ...)

    @property
    def xp(self):
        return _cupy()

    def compute_capability(self, array) -> int:
        """Compute capability of the device holding `array` (a CuPy array) as an int: 75, 80, 90, 100..."""
        with self._lock:
            cc = self._capabilities.get(array.device.id)
            if cc is None:
                cc = self._capabilities[array.device.id] = int(array.device.compute_capability)
        return cc

    def family(self, name: str) -> KernelFamily:
        if self._families is None:
            return kernel_source.family(name)
        try:
            return self._families[name]
        except KeyError:
            raise KeyError(f"no kernel family {name!r}; known: {sorted(self._families)}") from None

    def module(self, family_name: str, device_id: int):
        """The RawModule of a family on a device (created on first request; compiled on first get_function)."""
        with self._lock:
            return self._module(family_name, device_id)

    def _module(self, family_name: str, device_id: int):
        key = (family_name, device_id)
        mod = self._modules.get(key)
        if mod is None:
            fam = self.family(family_name)
            mod = _cupy().RawModule(code=kernel_source.read_source(fam.file), options=kernel_source.family_options(fam),
                                    name_expressions=fam.name_expressions, backend="nvrtc")
            self._modules[key] = mod
        return mod

    def _function(self, family_name: str, name_expression: str, device_id: int, shared_mem: int):
        """The kernel for a name expression on the current device, opted in to `shared_mem` bytes if needed."""
        key = (family_name, name_expression, device_id)
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                if name_expression not in self.family(family_name).name_expressions:
                    raise ValueError(f"{name_expression!r} is not a name expression of kernel family "
                                     f"{family_name!r} (declare it in the family's plan module)")
                try:
                    fn = self._module(family_name, device_id).get_function(name_expression)
                except Exception as exc:          # CuPy's CompileException carries NVRTC's log in its message
                    hint = kernel_source.compile_hint(str(exc))
                    if hint:
                        raise RuntimeError(f"compiling kernel family {family_name!r} failed: {hint}\n{exc}") from exc
                    raise
                self._functions[key] = fn
            # Without the opt-in a block gets 48 KiB of shared memory in all, static included (CUDA's
            # cudaFuncAttributeMaxDynamicSharedMemorySize: static + dynamic may pass 48 KiB only when set).
            over = shared_mem + fn.shared_size_bytes > DEFAULT_DYNAMIC_SMEM_LIMIT
            if over and shared_mem > self._smem_opt_in.get(key, 0):
                fn.max_dynamic_shared_size_bytes = shared_mem
                self._smem_opt_in[key] = shared_mem
        return fn

    def launch(self, plan: LaunchPlan) -> None:
        """Run one plan asynchronously on the current stream of its arrays' device (the current device if none)."""
        cupy = _cupy()
        current = cupy.cuda.runtime.getDevice()
        device_id = next((a.device.id for a in plan.args if isinstance(a, cupy.ndarray)), current)
        ctx = cupy.cuda.Device(device_id) if device_id != current else contextlib.nullcontext()
        with ctx:
            fn = self._function(plan.family, plan.name_expression, device_id, plan.shared_mem)
            fn(plan.grid, plan.block, plan.args, shared_mem=plan.shared_mem)
