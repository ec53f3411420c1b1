"""The emulator executor: runs the CUDA kernels of kernels/*.cu on the CPU, on NumPy arrays, through LaunchPlans.

A kernel family's .cu file is compiled by g++ together with a compatibility header (emulator_shim.h: the CUDA
device API; emulator_runtime.h: fibers and the block scheduler) into a shared library, cached on disk by a
hash of every input, and loaded with ctypes once per process. `EmulatorExecutor.launch(plan)` then runs the
plan's grid with CuPy's calling convention: arrays are passed as data pointers, exact NumPy scalars as their
bytes, and every argument is checked against the kernel's parameter list first.

Every CUDA thread is a fiber; __syncthreads and the warp operations switch fibers. The order in which a block's
fibers are resumed (at the start and after each barrier) is forward, reverse or shuffled, shared memory is
filled with 0xFF bytes at every block start, and a barrier that cannot complete is an error, not a hang. With
sanitize=True the library is built with AddressSanitizer and UBSan and every launch runs in a subprocess
(emulator_runner). See docs/emulator.md.

Environment: GPUCONV_EMULATOR_ORDER (forward | reverse | shuffle[:seed]) is the default order;
GPUCONV_CACHE_DIR the cache root; CXX the compiler (g++); GPUCONV_EMULATOR_CXXFLAGS extra compiler flags
(e.g. "-O0" for gdb); GPUCONV_EMULATOR_THREADS OS threads sharing the blocks of a launch (default 1);
GPUCONV_EMULATOR_STACK_KIB the fiber stack size; GPUCONV_EMULATOR_UCONTEXT=1 uses ucontext fibers;
GPUCONV_EMULATOR_LOG=<path> appends one tab-separated line "family, name expression, thread order" per
launch to <path> (kernel coverage: which instantiations a test run executed; see docs/emulator.md).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import kernel_source
from ..kernel_source import KernelFamily
from ..plans import LaunchPlan

HERE = Path(__file__).resolve().parent
SHIM = HERE / "emulator_shim.h"
RUNTIME = HERE / "emulator_runtime.h"

ORDERS = ("forward", "reverse", "shuffle")
ORDER_ENV = "GPUCONV_EMULATOR_ORDER"
LOG_ENV = "GPUCONV_EMULATOR_LOG"
# Dynamic shared memory per block: the largest any supported GPU allows (sm_90: 227 KiB).
DYNAMIC_SMEM_CAPACITY = 227 * 1024
SMEM_REDZONE = 256
MAX_THREADS_PER_BLOCK = 1024
MAX_WORKERS = 1024                      # GPUCONV_EMULATOR_THREADS / workers, like GPUCONV_NUM_THREADS
MIN_STACK_KIB, MAX_STACK_KIB = 16, 1 << 20   # GPUCONV_EMULATOR_STACK_KIB: below 16 KiB a kernel's frame may not fit
# Libraries kept per family and build mode; older ones (earlier versions of the sources) are deleted.
KEEP_BUILDS = 4
# Bump when the generated sources or the build recipe change in a way the hashed inputs do not show.
BUILD_RECIPE = 1

_BASE_FLAGS = ("-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-extern-tls-init", "-fno-strict-aliasing",
               "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas")
_FAST_FLAGS = ("-O2", "-g")
_SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer")

# Headers that kernels may include for NVRTC; under the emulator emulator_shim.h already provides their content.
_STUB_HEADERS = {
    "cuda_fp16.h": "", "cuda_bf16.h": "", "cuda_runtime.h": "", "cuda.h": "", "vector_types.h": "",
    "vector_functions.h": "", "device_launch_parameters.h": "",
    "math_constants.h": "#define CUDART_INF_F __int_as_float(0x7f800000)\n"
                        "#define CUDART_NAN_F __int_as_float(0x7fffffff)\n"
                        "#define CUDART_INF __longlong_as_double(0x7ff0000000000000LL)\n"
                        "#define CUDART_NAN __longlong_as_double(0xfff8000000000000LL)\n"
                        "#define CUDART_PI_F 3.141592654f\n",
    **{f"cuda/std/{h}": "namespace cuda { namespace std { using namespace ::std; } }\n"
       for h in ("limits", "type_traits", "cstdint", "utility", "cstddef")},
}


class EmulatorError(RuntimeError):
    """A kernel run by the emulator failed a check (divergent barrier, bad warp mask, sanitizer report...)."""


class EmulatorBuildError(EmulatorError):
    """g++ could not build a kernel family for the emulator; the message carries the compiler log."""


# ---------------------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------------------
def _cxx() -> str:
    return os.environ.get("CXX", "g++")


def _tool(name: str) -> str | None:
    return shutil.which(name)


def emulator_availability() -> str:
    """'yes' if the emulator can build and run kernels here, else the reason it cannot."""
    if sys.platform != "linux":
        return f"the emulator needs Linux (ELF thread-local storage), this is {sys.platform}"
    if not _tool(_cxx()):
        return f"C++ compiler {_cxx()!r} not found (install g++ or set CXX)"
    if not _tool("readelf"):
        return "readelf (binutils) not found"
    return "yes"


def parse_order(spec: str) -> tuple[str, int | None]:
    """'forward' | 'reverse' | 'shuffle' | 'shuffle:<seed>' -> (order, seed or None)."""
    name, _, seed = spec.strip().lower().partition(":")
    if name not in ORDERS or (seed and (name != "shuffle" or not seed.isdigit())):
        raise ValueError(f"emulator order must be one of {', '.join(ORDERS)} (shuffle may be 'shuffle:<seed>'), "
                         f"got {spec!r}")
    return name, int(seed) if seed else None


def cache_dir() -> Path:
    """Where built libraries live: $GPUCONV_CACHE_DIR/emulator, else $XDG_CACHE_HOME/gpuconv/emulator, else
    ~/.cache/gpuconv/emulator."""
    root = os.environ.get("GPUCONV_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuconv"
    return base / "emulator"


def _env_int(name: str, default: int, lo: int, hi: int) -> int:
    """An integer environment setting in [lo, hi], `default` when unset or empty; anything else is a ValueError
    (a stack of 0 KiB crashed the process at the first launch, a thread count of 0 silently became 1)."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer in [{lo}, {hi}], got {value!r}") from None
    if not lo <= number <= hi:
        raise ValueError(f"environment variable {name} must be an integer in [{lo}, {hi}], got {number}")
    return number


# ---------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """A kernel family and the directory its .cu file is in."""

    family: KernelFamily
    kernel_dir: Path

    @property
    def path(self) -> Path:
        return self.kernel_dir / self.family.file


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:      # no such compiler, not executable
        raise EmulatorBuildError(f"{what}: cannot run {cmd[0]!r} ({err.strerror or err}); install g++ or set CXX "
                                 "to a C++17 compiler") from err
    if proc.returncode != 0:
        raise EmulatorBuildError(f"{what} failed (exit {proc.returncode}):\n$ {' '.join(cmd)}\n"
                                 f"{proc.stdout}{proc.stderr}")
    return proc.stdout


_version_cache: dict[str, str] = {}


def _compiler_version() -> str:
    cxx = _cxx()
    if cxx not in _version_cache:
        _version_cache[cxx] = _run([cxx, "--version"], f"{cxx} --version").splitlines()[0]
    return _version_cache[cxx]


def _flags(sanitize: bool) -> list[str]:
    flags = list(_BASE_FLAGS) + list(_SANITIZE_FLAGS if sanitize else _FAST_FLAGS)
    if os.environ.get("GPUCONV_EMULATOR_UCONTEXT") == "1":
        flags.append("-DGPUCONV_EMU_UCONTEXT=1")
    flags += os.environ.get("GPUCONV_EMULATOR_CXXFLAGS", "").split()
    flags += [f"-DGPUCONV_EMU_DYNAMIC_SMEM_CAPACITY={DYNAMIC_SMEM_CAPACITY}",
              f"-DGPUCONV_EMU_SMEM_REDZONE={SMEM_REDZONE}"]
    return flags


def _include_dirs(src: _Source) -> list[Path]:
    dirs = [src.kernel_dir.resolve()]
    try:
        gpuconv_kernels = kernel_source.kernel_dir().resolve()
    except FileNotFoundError:
        return dirs
    return dirs + ([gpuconv_kernels] if gpuconv_kernels not in dirs else [])


def _build_key(src: _Source, sanitize: bool) -> str:
    h = hashlib.sha256()
    for part in (str(BUILD_RECIPE), _cxx(), _compiler_version(), " ".join(_flags(sanitize)), src.family.name,
                 src.family.file, "\n".join(src.family.name_expressions), repr(sorted(_STUB_HEADERS.items()))):
        h.update(part.encode())
        h.update(b"\0")
    inputs = [SHIM, RUNTIME, src.path.resolve()]
    for d in _include_dirs(src):
        inputs += sorted(p for p in d.iterdir() if p.suffix in (".cuh", ".h", ".hpp"))
    for path in inputs:
        h.update(str(path).encode())
        h.update(path.read_bytes())
    return f"{src.family.name}-{h.hexdigest()[:20]}" + ("-asan" if sanitize else "")


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _translation_unit(src: _Source) -> str:
    lines = [f"// Generated by gpuconv.executors.emulator for kernel family {src.family.name!r}. Do not edit.",
             "#define GPUCONV_EMULATOR 1",
             '#include "emulator_shim.h"',
             f"#include {_c_string(str(src.path.resolve()))}",
             "GPUCONV_EMU_KERNELS_BEGIN"]
    lines += [f"GPUCONV_EMU_KERNEL({_c_string(e)}, {e})" for e in src.family.name_expressions]
    lines += ["GPUCONV_EMU_KERNELS_END", '#include "emulator_runtime.h"', ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class _TlsSymbol:
    name: str
    value: int
    size: int
    defined: bool


def _tls_symbols(path: Path) -> list[_TlsSymbol]:
    """TLS symbols of an ELF file (readelf -sW)."""
    out = _run(["readelf", "-sW", str(path)], f"readelf on {path.name}")
    symbols = []
    for line in out.splitlines():
        cols = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(cols) >= 8 and cols[3] == "TLS":
            symbols.append(_TlsSymbol(cols[7], int(cols[1], 16), int(cols[2], 0), cols[6] != "UND"))
    return symbols


def _shared_memory_assembly(names: Iterable[str]) -> str:
    """Defines every `extern __shared__` array (undefined TLS symbol) as one dynamic shared memory buffer."""
    total = DYNAMIC_SMEM_CAPACITY + 2 * SMEM_REDZONE
    lines = ['\t.section .tbss,"awT",@nobits', "\t.balign 64", "\t.type gpuconv_emu_smem_block, @object",
             f"\t.size gpuconv_emu_smem_block, {total}", "gpuconv_emu_smem_block:", f"\t.zero {SMEM_REDZONE}"]
    for name in sorted(set(names)):
        lines += [f"\t.globl {name}", f"\t.hidden {name}", f"\t.type {name}, @object",
                  f"\t.size {name}, {DYNAMIC_SMEM_CAPACITY}", f"{name}:"]
    lines += [f"\t.zero {DYNAMIC_SMEM_CAPACITY + SMEM_REDZONE}", '\t.section .note.GNU-stack,"",@progbits', ""]
    return "\n".join(lines)


def _shared_memory_layout(so: Path) -> dict:
    """Static __shared__ ranges and the dynamic buffer's offset in the library's TLS segment."""
    symbols = [s for s in _tls_symbols(so) if s.defined]
    block = next(s for s in symbols if s.name == "gpuconv_emu_smem_block")
    ranges = set()
    for s in symbols:
        inside_block = block.value <= s.value < block.value + block.size
        if s.size and not inside_block and "gpuconv_emu" not in s.name:
            ranges.add((s.value, s.size))
    return {"static_smem": sorted(ranges), "dynamic_offset": block.value + SMEM_REDZONE}


_build_locks: dict[str, threading.RLock] = {}
_build_locks_guard = threading.Lock()


def _build(src: _Source, sanitize: bool, _retries: int = 3) -> Path:
    """The path of the family's library, building it if the cache does not have it (thread- and process-safe).

    The sources are hashed before and after compiling; a build whose sources changed meanwhile is discarded.
    """
    key = _build_key(src, sanitize)
    out_dir = cache_dir()
    so = out_dir / f"{key}.so"
    with _build_locks_guard:
        lock = _build_locks.setdefault(key, threading.RLock())  # re-entered by a rebuild
    with lock:
        if so.is_file():
            return so
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=out_dir))
        except OSError as err:
            raise EmulatorBuildError(f"the emulator's build cache {str(out_dir)!r} cannot be written "
                                     f"({err.strerror or err}); set GPUCONV_CACHE_DIR to a writable folder") from err
        try:
            for name, text in _STUB_HEADERS.items():
                (tmp / "stubs" / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / "stubs" / name).write_text(f"#pragma once\n// emulator stub: emulator_shim.h provides this\n"
                                                  f"{text}")
            tu = tmp / f"{src.family.name}_emulator.cpp"
            tu.write_text(_translation_unit(src))
            flags = _flags(sanitize)
            includes = [f"-I{d}" for d in [tmp / "stubs", HERE, *_include_dirs(src)]]
            obj = tmp / "kernels.o"
            _run([_cxx(), *flags, *includes, "-c", str(tu), "-o", str(obj)],
                 f"g++ compiling kernel family {src.family.name!r} ({src.path}) for the emulator")
            dynamic = [s.name for s in _tls_symbols(obj) if not s.defined]
            asm = tmp / "shared_memory.s"
            asm.write_text(_shared_memory_assembly(dynamic))
            tmp_so = tmp / "lib.so"
            _run([_cxx(), *flags, "-shared", str(obj), str(asm), "-o", str(tmp_so), "-Wl,--no-undefined"],
                 f"g++ linking kernel family {src.family.name!r} for the emulator")
            (tmp / "layout.json").write_text(json.dumps(_shared_memory_layout(tmp_so)))
            if _build_key(src, sanitize) != key:
                # A source was saved while g++ read it: this library may not match the hashed text, so it
                # must not be cached under that key. Build again from what is on disk now.
                if _retries <= 0:
                    raise EmulatorBuildError(f"kernel family {src.family.name!r}: its sources kept changing "
                                             "during the emulator build")
                return _build(src, sanitize, _retries - 1)
            os.replace(tmp / "layout.json", out_dir / f"{key}.json")
            os.replace(tmp_so, so)   # last: the .so marks a complete build
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(out_dir, src.family.name, sanitize)
        return so


# A build younger than this is never pruned: another process may have built it and not loaded it yet.
PRUNE_MIN_AGE_S = 600


def _prune(out_dir: Path, family: str, sanitize: bool) -> None:
    """Deletes all but the KEEP_BUILDS newest libraries of a family and mode (a loaded one stays mapped),
    sparing recent builds that a concurrent process may be about to load."""
    pattern = re.compile(re.escape(family) + r"-[0-9a-f]{20}" + ("-asan" if sanitize else "") + r"\.so")
    builds = []
    for p in out_dir.glob(f"{family}-*.so"):
        try:
            if pattern.fullmatch(p.name):
                builds.append((p.stat().st_mtime, p))
        except FileNotFoundError:   # pruned by another process
            continue
    now = time.time()
    for mtime, p in sorted(builds, reverse=True)[KEEP_BUILDS:]:
        if now - mtime < PRUNE_MIN_AGE_S:
            continue
        for stale in (p, p.with_suffix(".json")):
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# loaded libraries
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelSignature:
    """A kernel's index in its library and its parameters: sizes in bytes and kinds (p, i, f, o)."""

    index: int
    sizes: tuple[int, ...]
    kinds: str


_ORDER_CODES = {"forward": 0, "reverse": 1, "shuffle": 2}
_KIND_NAMES = {"p": "pointer", "i": "integer", "f": "floating-point", "o": "other"}


class _Library:
    """One loaded family library: its kernel table and its launch entry point."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.gpuconv_emu_kernel_count.restype = ctypes.c_int
        lib.gpuconv_emu_kernel_name.restype = ctypes.c_char_p
        lib.gpuconv_emu_kernel_name.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_kernel_nargs.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_kernel_arg_sizes.restype = ctypes.POINTER(ctypes.c_int)
        lib.gpuconv_emu_kernel_arg_sizes.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_kernel_arg_kinds.restype = ctypes.c_char_p
        lib.gpuconv_emu_kernel_arg_kinds.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_configure.argtypes = [ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_int, ctypes.c_ulonglong]
        u32x3 = ctypes.c_uint * 3
        lib.gpuconv_emu_launch.argtypes = [ctypes.c_int, u32x3, u32x3, ctypes.c_ulonglong,
                                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_ulonglong,
                                           ctypes.c_ulonglong, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulonglong]
        lib.gpuconv_emu_launch.restype = ctypes.c_int
        self._lib = lib
        self._u32x3 = u32x3
        layout = json.loads(path.with_suffix(".json").read_text())
        flat = [v for r in layout["static_smem"] for v in r]
        lib.gpuconv_emu_configure((ctypes.c_ulonglong * max(1, len(flat)))(*flat), len(layout["static_smem"]),
                                  layout["dynamic_offset"])
        self.static_smem_bytes = sum(size for _, size in layout["static_smem"])
        self.kernels: dict[str, KernelSignature] = {}
        for k in range(lib.gpuconv_emu_kernel_count()):
            n = lib.gpuconv_emu_kernel_nargs(k)
            sizes = lib.gpuconv_emu_kernel_arg_sizes(k)
            self.kernels[lib.gpuconv_emu_kernel_name(k).decode()] = KernelSignature(
                k, tuple(sizes[i] for i in range(n)), lib.gpuconv_emu_kernel_arg_kinds(k).decode())

    def signature(self, name_expression: str) -> KernelSignature:
        try:
            return self.kernels[name_expression]
        except KeyError:
            raise ValueError(f"kernel {name_expression!r} is not among the family's name expressions "
                             f"{sorted(self.kernels)}") from None

    def launch(self, name_expression: str, grid, block, shared_mem: int, args: tuple, order: str, seed: int,
               stack_bytes: int, workers: int) -> None:
        sig = self.signature(name_expression)
        slots = _pack_args(name_expression, sig, args)
        pointers = (ctypes.c_void_p * max(1, len(args)))(*[slots.ctypes.data + 8 * i for i in range(len(args))])
        err = ctypes.create_string_buffer(8192)
        rc = self._lib.gpuconv_emu_launch(sig.index, self._u32x3(*grid), self._u32x3(*block), shared_mem, pointers,
                                          _ORDER_CODES[order], seed, stack_bytes, workers, err, len(err))
        if rc != 0:
            raise EmulatorError(f"{name_expression} (order {order}, seed {seed}): {err.value.decode(errors='replace')}")


def _pack_args(name_expression: str, sig: KernelSignature, args: tuple) -> np.ndarray:
    """One 8-byte slot per argument: an array's data pointer or a scalar's bytes; every argument checked."""
    if len(args) != len(sig.sizes):
        raise TypeError(f"{name_expression}: the kernel takes {len(sig.sizes)} arguments, the plan passes {len(args)}")
    slots = np.zeros(max(1, len(args)), dtype=np.uint64)
    raw = slots.view(np.uint8)
    for i, (a, size, kind) in enumerate(zip(args, sig.sizes, sig.kinds)):
        where = f"{name_expression}: argument {i}"
        if kind == "p":
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where} is a pointer parameter; pass a NumPy array, not {type(a).__name__}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: the array must be C-contiguous")
            slots[i] = a.ctypes.data
            continue
        if isinstance(a, np.ndarray):
            raise TypeError(f"{where} is a {size}-byte {_KIND_NAMES[kind]} parameter; got an array")
        if not isinstance(a, np.generic):
            raise TypeError(f"{where} is a {size}-byte {_KIND_NAMES[kind]} parameter; pass an exact NumPy scalar, "
                            f"not a Python {type(a).__name__}")
        if a.itemsize != size:
            raise TypeError(f"{where} is a {size}-byte {_KIND_NAMES[kind]} parameter; got {a.dtype} "
                            f"({a.itemsize} bytes)")
        is_float = isinstance(a, np.floating) and a.dtype != np.float16
        is_int = isinstance(a, (np.integer, np.bool_))
        if (kind == "i" and not is_int) or (kind == "f" and not is_float):
            raise TypeError(f"{where} is a {size}-byte {_KIND_NAMES[kind]} parameter; got {a.dtype}")
        raw[8 * i: 8 * i + size] = np.frombuffer(a.tobytes(), dtype=np.uint8)
    return slots


_libraries: dict[Path, _Library] = {}
_libraries_guard = threading.Lock()


def load_library(path: Path) -> _Library:
    """The library at `path`, loaded once per process."""
    with _libraries_guard:
        if path not in _libraries:
            _libraries[path] = _Library(path)
        return _libraries[path]


# ---------------------------------------------------------------------------------------------------------
# the executor
# ---------------------------------------------------------------------------------------------------------
def _check_geometry(plan: LaunchPlan) -> None:
    where = plan.name_expression
    if len(plan.grid) != 3 or len(plan.block) != 3:
        raise ValueError(f"{where}: grid {plan.grid} and block {plan.block} must be 3-tuples")
    bx, by, bz = (int(v) for v in plan.block)
    if bx * by * bz > MAX_THREADS_PER_BLOCK or bx > 1024 or by > 1024 or bz > 64:
        raise ValueError(f"{where}: block {plan.block} exceeds CUDA's limits (1024 threads; 1024 x 1024 x 64)")
    gx, gy, gz = (int(v) for v in plan.grid)
    if gx >= 2 ** 31 or gy > 65535 or gz > 65535:
        raise ValueError(f"{where}: grid {plan.grid} exceeds CUDA's limits (2^31-1 x 65535 x 65535)")
    if not 0 <= int(plan.shared_mem) <= DYNAMIC_SMEM_CAPACITY:
        raise ValueError(f"{where}: {plan.shared_mem} bytes of dynamic shared memory; the emulator (like sm_90) "
                         f"allows 0..{DYNAMIC_SMEM_CAPACITY}")


def _log_launch(plan: LaunchPlan, order: str) -> None:
    """Appends the launch to $GPUCONV_EMULATOR_LOG, if set (one short O_APPEND write: safe across processes)."""
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{plan.family}\t{plan.name_expression}\t{order}\n")


class EmulatorExecutor:
    """Runs LaunchPlans on NumPy arrays by executing the CUDA kernels on the CPU.

    Args:
        order: "forward", "reverse" or "shuffle": the order in which a block's threads are resumed at the start
            and after every barrier. Default: $GPUCONV_EMULATOR_ORDER (forward|reverse|shuffle[:seed]), else
            "forward".
        seed: seed of the shuffled order (per block, so results do not depend on `workers`).
        sanitize: build with AddressSanitizer + UBSan and run every launch in a subprocess; out-of-bounds
            global or dynamic shared memory accesses raise EmulatorError with the sanitizer's report.
        workers: OS threads that share a launch's blocks (default $GPUCONV_EMULATOR_THREADS, else 1).
    """

    name = "emulator"
    xp = np

    def __init__(self, order: str | None = None, seed: int | None = None, sanitize: bool = False,
                 workers: int | None = None):
        try:
            env_order, env_seed = parse_order(os.environ.get(ORDER_ENV) or "forward")
        except ValueError as err:
            raise ValueError(f"environment variable {ORDER_ENV}: {err}") from None
        self.order = parse_order(order)[0] if order is not None else env_order
        self.seed = int(seed) if seed is not None else (env_seed if env_seed is not None else 0)
        self.sanitize = bool(sanitize)
        if workers is None:
            workers = _env_int("GPUCONV_EMULATOR_THREADS", 1, 1, MAX_WORKERS)
        elif (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
              or not 1 <= workers <= MAX_WORKERS):
            raise ValueError(f"workers: expected an integer in [1, {MAX_WORKERS}], got {workers!r}")
        self.workers = int(workers)
        self.stack_bytes = _env_int("GPUCONV_EMULATOR_STACK_KIB", 1024 if sanitize else 256, MIN_STACK_KIB,
                                    MAX_STACK_KIB) * 1024
        self._extra: dict[str, _Source] = {}

    def __repr__(self) -> str:
        return (f"EmulatorExecutor(order={self.order!r}, seed={self.seed}, sanitize={self.sanitize}, "
                f"workers={self.workers})")

    def compute_capability(self, array) -> int | None:
        """None: the emulator models every GPU feature the kernels use (WMMA, TF32) on any array."""
        return None

    def load_family(self, family: KernelFamily, kernel_dir: str | os.PathLike | None = None) -> None:
        """Makes a family that kernel_source.families() does not list (e.g. a test fixture) launchable here."""
        kdir = Path(kernel_dir) if kernel_dir is not None else kernel_source.kernel_dir()
        if not (kdir / family.file).is_file():
            raise FileNotFoundError(f"kernel family {family.name!r}: {kdir / family.file} does not exist")
        self._extra[family.name] = _Source(family, kdir)

    def _source(self, name: str) -> _Source:
        if name in self._extra:
            return self._extra[name]
        return _Source(kernel_source.family(name), kernel_source.kernel_dir())

    def library_path(self, family: str) -> Path:
        """The built library of a family (for gdb: `gdb -p <pid>` and break on kernel names)."""
        return _build(self._source(family), self.sanitize)

    def signature(self, family: str, name_expression: str) -> KernelSignature:
        """A kernel's parameter sizes and kinds, as the emulator sees its C++ signature."""
        if self.sanitize:
            raise ValueError("signature() loads the library into this process; use an executor without sanitize")
        return load_library(self.library_path(family)).signature(name_expression)

    def launch(self, plan: LaunchPlan) -> None:
        """Runs the plan's grid to completion (synchronously); output arrays are written in place."""
        src = self._source(plan.family)
        if plan.name_expression not in src.family.name_expressions:
            raise ValueError(f"{plan.name_expression!r} is not a name expression of kernel family "
                             f"{plan.family!r}: {list(src.family.name_expressions)}")
        _check_geometry(plan)
        path = _build(src, self.sanitize)
        _log_launch(plan, self.order)
        grid = tuple(int(v) for v in plan.grid)
        block = tuple(int(v) for v in plan.block)
        if self.sanitize:
            from .emulator_runner import run_in_subprocess
            run_in_subprocess(path, plan.name_expression, grid, block, int(plan.shared_mem), plan.args, self.order,
                              self.seed, self.stack_bytes)
            return
        load_library(path).launch(plan.name_expression, grid, block, int(plan.shared_mem), plan.args, self.order,
                                  self.seed, self.stack_bytes, self.workers)
