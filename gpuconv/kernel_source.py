"""Where the CUDA sources are, which template instantiations exist, and the one list of NVRTC options.

Each kernel family (one .cu file) is declared by its launch-plan module as a KernelFamily; `families()`
collects them. The CUDA executor, the emulator and the compile gate all read this registry, so the set of
instantiations that is compiled, emulated and gated is the same.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

# The launch-plan modules that declare a FAMILY (or FAMILIES) attribute.
PLAN_MODULES = ("gpuconv.plans.pool", "gpuconv.plans.unpool", "gpuconv.plans.conv_fprop",
                "gpuconv.plans.conv_dgrad", "gpuconv.plans.conv_wgrad")


@dataclass(frozen=True)
class KernelFamily:
    """One .cu file and every name expression (template instantiation) launched from it."""

    name: str
    file: str
    name_expressions: tuple[str, ...]


def kernel_dir() -> Path:
    """The directory of the .cu files: gpuconv/kernels in a wheel, <repo>/kernels in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"gpuconv kernel sources not found next to {here}")


def read_source(file: str) -> str:
    return (kernel_dir() / file).read_text()


def source_hash(file: str) -> str:
    """Hash of a .cu file and every header in the kernel directory (a cache key)."""
    h = hashlib.sha256()
    kdir = kernel_dir()
    for path in [kdir / file] + sorted(kdir.glob("*.cuh")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def families() -> tuple[KernelFamily, ...]:
    """Every kernel family declared by the plan modules that exist."""
    found = []
    for mod_name in PLAN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
            continue
        found.extend(getattr(mod, "FAMILIES", ()) or ([mod.FAMILY] if hasattr(mod, "FAMILY") else []))
    return tuple(found)


def family(name: str) -> KernelFamily:
    for fam in families():
        if fam.name == name:
            return fam
    raise KeyError(f"no kernel family {name!r}; known: {[f.name for f in families()]}")


# NVRTC options, as CuPy 14's RawModule passes them after its own include paths (see
# ../shared/notes/cupy-nvrtc-packaging-emulation.md §1.2): C++17, flush denormals, device by default.
# The compile gate adds -arch=sm_XX and the include directories; the CUDA executor hands these to RawModule.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)
NVRTC_GATE_EXTRA: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")
