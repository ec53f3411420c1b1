"""Where the CUDA sources are, which template instantiations exist, and the one list of NVRTC options.

Each kernel family (one .cu file) is declared by its launch-plan module as a KernelFamily; `families()`
collects them. The CUDA executor, the emulator and the compile gate all read this registry, so the set of
instantiations that is compiled, emulated and gated is the same.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# The launch-plan modules that declare a FAMILY (or FAMILIES) attribute.
PLAN_MODULES = ("gpuconv.plans.pool", "gpuconv.plans.unpool", "gpuconv.plans.conv_fprop",
                "gpuconv.plans.conv_dgrad", "gpuconv.plans.conv_wgrad")


class LaunchHint(NamedTuple):
    """What a plan module may tell the compile gate about one name expression's launches (all optional).

    block_threads: the threads per block its plans use (else the gate takes __launch_bounds__, else assumes 256);
    max_dynamic_smem: the most dynamic shared memory, in bytes, any of its plans requests.
    """

    block_threads: int | None = None
    max_dynamic_smem: int = 0


@dataclass(frozen=True)
class KernelFamily:
    """One .cu file and every name expression (template instantiation) launched from it.

    `file` is relative to kernel_dir() (an absolute path also works: tests use it for fixture kernels).
    `launch_hints` optionally maps a name expression to a LaunchHint, used only by the compile gate's
    occupancy and shared-memory report.
    """

    name: str
    file: str
    name_expressions: tuple[str, ...]
    launch_hints: Mapping[str, LaunchHint] = field(default_factory=dict, compare=False, hash=False)

    def hint(self, name_expression: str) -> LaunchHint:
        return self.launch_hints.get(name_expression, LaunchHint())


def kernel_dir() -> Path:
    """The directory of the .cu files: gpuconv/kernels in a wheel, <repo>/kernels in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"gpuconv kernel sources not found next to {here}")


def source_path(file: str) -> Path:
    """The path of a family's .cu file (relative to kernel_dir(), or absolute)."""
    return kernel_dir() / file


def read_source(file: str) -> str:
    return source_path(file).read_text()


def source_hash(file: str) -> str:
    """Hash of a .cu file and every header in the kernel directory (a cache key: family_options)."""
    h = hashlib.sha256()
    kdir = kernel_dir()
    for path in [source_path(file)] + sorted(kdir.glob("*.cuh")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def families() -> tuple[KernelFamily, ...]:
    """Every kernel family declared by the plan modules (a missing module is an error, never a silent gap in
    what the compile gate and the emulator cover)."""
    return tuple(importlib.import_module(mod_name).FAMILY for mod_name in PLAN_MODULES)


def family(name: str) -> KernelFamily:
    for fam in families():
        if fam.name == name:
            return fam
    raise KeyError(f"no kernel family {name!r}; known: {[f.name for f in families()]}")


# NVRTC options. NVRTC_OPTIONS are gpuconv's own: the CUDA executor hands them (plus module_options()'s -I of
# the kernel directory) to RawModule, which wraps them in CuPy 14's include paths and appends NVRTC_GATE_EXTRA and
# -arch=sm_XX itself (../shared/notes/cupy-nvrtc-packaging-emulation.md §1.2). The compile gate, which has no
# CuPy runtime to do that, reproduces the whole list (compile_gate.cupy_nvrtc_options).
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)
NVRTC_GATE_EXTRA: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")


def module_options() -> tuple[str, ...]:
    """The options gpuconv passes to RawModule: NVRTC_OPTIONS, -I<kernel_dir()> for #include "common.cuh", and
    the directory of the CUDA C runtime headers where CuPy's CUDA include directory lacks them
    (crt_include_options)."""
    return NVRTC_OPTIONS + ("-I" + str(kernel_dir()),) + crt_include_options()


def family_options(fam: KernelFamily) -> tuple[str, ...]:
    """module_options() plus -DGPUCONV_SOURCE_HASH=<source_hash(fam.file)>, what the CUDA executor compiles a
    family with. CuPy's disk cache (~/.cupy/kernel_cache) keys a module on its source text and options, not on
    the headers it #includes: without the hash, an edited or upgraded common.cuh would load the old cubin. The
    macro is used by no kernel, so the compile gate's module_options() compile the same code."""
    return module_options() + (f"-DGPUCONV_SOURCE_HASH={source_hash(fam.file)}",)


# The header that <mma.h> (conv_fprop.cu's tensor-core kernel) includes and pip's CUDA wheels ship apart.
CRT_HEADER = "crt/mma.h"
SYSTEM_CUDA = "/usr/local/cuda"     # a system toolkit's usual root, the last place crt_include_options looks


@functools.lru_cache(maxsize=None)
def crt_include_options() -> tuple[str, ...]:
    """("-I<dir>",) for the directory holding crt/mma.h where the CUDA include directory CuPy compiles with
    (cuda.pathfinder's 'cudart' headers, as CuPy 14 finds them) does not hold it, else ().

    A full toolkit and CUDA 13's wheels (nvidia-cuda-crt, `cuda-toolkit[crt]`) put crt/ next to the runtime
    headers; CUDA 12's wheels put it in nvidia-cuda-nvcc-cu12's directory (`cuda-toolkit[nvcc]`, pathfinder's
    'nvcc' headers), which NVRTC does not search. Candidates, in order: pathfinder's 'nvcc' headers, then the
    include directory of a system toolkit ($CUDA_PATH, $CUDA_HOME, /usr/local/cuda: CUDA 13 runtime wheels
    without nvidia-cuda-crt next to a system nvcc, as on an image with PyTorch's wheels). One holding runtime
    headers of its own (cuda_runtime_api.h) is taken only when their CUDART_VERSION equals that of CuPy's, since
    it could shadow them: an equal version shadows nothing that differs. () where cuda.pathfinder is not
    installed or no candidate qualifies (the CUDA executor then explains NVRTC's error)."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError:
        return ()

    def find(libname: str) -> Path | None:
        try:
            found = find_nvidia_header_directory(libname)
        except Exception:                     # unknown name in this pathfinder version, unreadable tree, ...
            return None
        return Path(found) if found else None

    cudart = find("cudart")
    if cudart is None or (cudart / CRT_HEADER).is_file():
        return ()
    toolkits = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), SYSTEM_CUDA]
    candidates = [find("nvcc")] + [Path(t) / "include" for t in toolkits if t]
    wanted = _cudart_version(cudart)
    for d in candidates:
        if d is None or not (d / CRT_HEADER).is_file():
            continue
        has_runtime = (d / "cuda_runtime.h").is_file() or (d / "cuda_runtime_api.h").is_file()
        if not has_runtime or (wanted is not None and _cudart_version(d) == wanted):
            return ("-I" + str(d),)
    return ()


def _cudart_version(include_dir: Path) -> int | None:
    """CUDART_VERSION (e.g. 13000 for 13.0) as cuda_runtime_api.h in include_dir defines it, else None."""
    try:
        text = (include_dir / "cuda_runtime_api.h").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*#\s*define\s+CUDART_VERSION\s+(\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def compile_hint(log: str) -> str:
    """What to do about an NVRTC error log, where gpuconv knows ("" otherwise)."""
    if CRT_HEADER in log:
        return (f"NVRTC cannot find {CRT_HEADER}, which <mma.h> includes. With CUDA from pip wheels install "
                "cuda-toolkit[crt]==13.* (CUDA 13) or cuda-toolkit[nvcc]==12.* (CUDA 12); gpuconv's extras "
                "cuda13 and cuda12 do. Or use a full CUDA toolkit (CUDA_PATH).")
    return ""
