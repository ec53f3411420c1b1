"""Compile gate: every kernel family and name expression through NVRTC, as CuPy would compile it, with no GPU.

For each family (kernel_source.families()) and each architecture (sm_80, sm_90 by default) the family's .cu file
is compiled once, with all its name expressions, by NVRTC (pip `cuda-bindings` + `nvidia-cuda-nvrtc`; no driver)
using the option list CuPy 14's RawModule builds (cupy_nvrtc_options) plus `-Xptxas=-v`. From ptxas's report in the
program log it takes, per lowered kernel: registers, spill stores/loads, stack frame (local memory) and static
shared memory; from the cubin it takes __launch_bounds__ and re-reads the register count as a cross-check. With
the block size and dynamic shared memory a plan declares (KernelFamily.launch_hints) it computes the theoretical
occupancy the way cuda_occupancy.h does, at the maximum shared-memory carveout.

The gate fails on a compile error, a name expression that does not lower, any register spill, a kernel that
cannot launch with its declared block/shared memory, or resource information that cannot be read.

    report = check_kernels()            # GateReport
    print(report.format_table()); report.ok; report.to_json(); report.to_markdown()
    python -m gpuconv check-kernels [--arch 80,90] [--family pool] [--json | --markdown]
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import kernel_source
from .kernel_source import KernelFamily

DEFAULT_ARCHS: tuple[int, ...] = (80, 90)
ASSUMED_BLOCK_THREADS = 256  # occupancy block size when neither the plan nor __launch_bounds__ gives one


class GateUnavailable(RuntimeError):
    """NVRTC (cuda-bindings + nvidia-cuda-nvrtc) or the CUDA headers cannot be found on this machine."""


# ---------------------------------------------------------------------------------------------------------
# per-SM limits and theoretical occupancy (the rules of cuda_occupancy.h, CUDA 13)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SMLimits:
    """Per-SM resources of one compute capability, as cuda_occupancy.h models them."""

    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    reg_alloc_unit: int = 256          # registers are allocated per warp in units of 256
    sub_partitions: int = 4            # the register file is split into 4 quadrants
    max_threads_per_sm: int = 2048
    max_threads_per_block: int = 1024
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 164 * 1024      # at the maximum carveout
    smem_per_block_optin: int = 163 * 1024
    smem_reserved_per_block: int = 1024
    smem_alloc_unit: int = 128


SM_LIMITS: dict[int, SMLimits] = {
    80: SMLimits(smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024),
    90: SMLimits(smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024),
}


@dataclass(frozen=True)
class Occupancy:
    """Theoretical occupancy of one kernel at one block size: resident blocks/warps per SM and what limits them."""

    block_threads: int
    blocks_per_sm: int
    warps_per_sm: int
    max_warps_per_sm: int
    limiter: str                       # "warps" | "blocks" | "registers" | "shared memory" | "cannot launch: ..."

    @property
    def fraction(self) -> float:
        return self.warps_per_sm / self.max_warps_per_sm


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: int, registers: int, smem_per_block: int, block_threads: int) -> Occupancy:
    """Resident blocks and warps per SM for a kernel using `registers` per thread and `smem_per_block` bytes
    (static + dynamic) of shared memory, launched with `block_threads` threads (cuda_occupancy.h's rules)."""
    lim = SM_LIMITS[arch]
    max_warps = lim.max_threads_per_sm // 32
    warps_per_block = -(-block_threads // 32)

    def result(blocks: int, limiter: str) -> Occupancy:
        return Occupancy(block_threads, blocks, blocks * warps_per_block, max_warps, limiter)

    if not 0 < block_threads <= lim.max_threads_per_block:
        return result(0, f"cannot launch: {block_threads} threads per block")
    regs_per_warp = _round_up(registers * 32, lim.reg_alloc_unit)
    # The hardware check assumes warps are spread over all four register-file quadrants.
    if regs_per_warp * _round_up(warps_per_block, lim.sub_partitions) > lim.regs_per_block:
        return result(0, f"cannot launch: {registers} registers x {block_threads} threads")
    smem = _round_up(smem_per_block + lim.smem_reserved_per_block, lim.smem_alloc_unit)
    if smem > lim.smem_per_block_optin + lim.smem_reserved_per_block:
        return result(0, f"cannot launch: {smem_per_block} B shared memory per block")

    by_regs = ((lim.regs_per_sm // lim.sub_partitions // regs_per_warp) * lim.sub_partitions // warps_per_block
               if regs_per_warp else lim.max_blocks_per_sm)
    limits = {
        "warps": max_warps // warps_per_block,
        "blocks": lim.max_blocks_per_sm,
        "registers": by_regs,
        "shared memory": lim.smem_per_sm // smem,
    }
    limiter = min(limits, key=limits.get)  # first minimum in the order above
    return result(limits[limiter], limiter)


# ---------------------------------------------------------------------------------------------------------
# reading ptxas's report and the cubin
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PtxasInfo:
    """ptxas's resource report for one function (entry kernel or non-inlined device function)."""

    registers: int | None = None
    stack_frame: int = 0               # bytes of local memory per thread (local arrays + spills)
    spill_stores: int = 0
    spill_loads: int = 0
    static_smem: int = 0
    is_entry: bool = False


_COMPILING = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, PtxasInfo]:
    """Per mangled function name, the resources ptxas -v printed into the NVRTC program log."""
    infos: dict[str, PtxasInfo] = {}
    entry = props = None
    for line in log.splitlines():
        if m := _COMPILING.search(line):
            entry = m.group(1)
            infos.setdefault(entry, PtxasInfo()).is_entry = True
        elif m := _PROPERTIES.search(line):
            props = m.group(1)
            infos.setdefault(props, PtxasInfo())
        elif (m := _FRAME.search(line)) and props is not None:
            info = infos[props]
            info.stack_frame, info.spill_stores, info.spill_loads = map(int, m.groups())
        elif (m := _USED.search(line)) and entry is not None:
            infos[entry].registers = int(m.group(1))
            if s := _SMEM.search(line):
                infos[entry].static_smem = int(s.group(1))
    return infos


@dataclass(frozen=True)
class CubinInfo:
    """What the cubin's .nv.info sections record for one kernel."""

    registers: int | None
    stack_frame: int | None
    max_threads: int | None            # product of __launch_bounds__ / .maxntid, None when not declared


_EIATTR_MAX_THREADS, _EIATTR_FRAME_SIZE, _EIATTR_REGCOUNT = 0x05, 0x11, 0x2F
_EIFMT_SVAL = 0x04


def _nv_info_records(data: bytes):
    """(attribute, payload) of each EIATTR record of a .nv.info section (format byte, attribute byte, u16)."""
    pos = 0
    while pos + 4 <= len(data):
        fmt, attr, value = struct.unpack_from("<BBH", data, pos)
        pos += 4
        if fmt == _EIFMT_SVAL:
            yield attr, data[pos:pos + value]
            pos += value
        else:
            yield attr, struct.pack("<H", value)


def read_cubin_info(cubin: bytes) -> dict[str, CubinInfo]:
    """Per kernel (mangled name): registers, frame size and max threads from the ELF's .nv.info sections."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not a 64-bit ELF cubin")
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = []
    for i in range(shnum):
        name, stype, _, _, offset, size, link, _, _, entsize = struct.unpack_from("<IIQQQQIIQQ", cubin,
                                                                                  shoff + i * shentsize)
        sections.append((name, stype, offset, size, link, entsize))

    def cstr(table: int, offset: int) -> str:
        start = sections[table][2] + offset
        return cubin[start:cubin.index(b"\0", start)].decode()

    def body(sec) -> bytes:
        return cubin[sec[2]:sec[2] + sec[3]]

    named = {cstr(shstrndx, sec[0]): sec for sec in sections}
    symtab = named.get(".symtab")
    symbols: list[str] = []
    if symtab is not None:
        for off in range(0, symtab[3], symtab[5] or 24):
            st_name, = struct.unpack_from("<I", cubin, symtab[2] + off)
            symbols.append(cstr(symtab[4], st_name))

    regs: dict[str, int] = {}
    frames: dict[str, int] = {}
    for attr, payload in _nv_info_records(body(named[".nv.info"]) if ".nv.info" in named else b""):
        if attr in (_EIATTR_REGCOUNT, _EIATTR_FRAME_SIZE) and len(payload) == 8:
            sym, value = struct.unpack("<II", payload)
            (regs if attr == _EIATTR_REGCOUNT else frames)[symbols[sym]] = value
    result = {}
    for sec_name, sec in named.items():
        if not sec_name.startswith(".nv.info."):
            continue
        kernel = sec_name[len(".nv.info."):]
        max_threads = None
        for attr, payload in _nv_info_records(body(sec)):
            if attr == _EIATTR_MAX_THREADS and len(payload) == 12:
                x, y, z = struct.unpack("<III", payload)
                max_threads = x * y * z
        result[kernel] = CubinInfo(regs.get(kernel), frames.get(kernel), max_threads)
    return result


# ---------------------------------------------------------------------------------------------------------
# NVRTC: availability, CuPy's option list, one compilation
# ---------------------------------------------------------------------------------------------------------
def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise GateUnavailable(f"cuda-bindings is not installed ({exc}); pip install cuda-bindings "
                              "nvidia-cuda-nvrtc") from exc
    try:
        err, *_ = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings load libnvrtc lazily; a missing library surfaces here
        raise GateUnavailable(f"NVRTC library not found ({exc}); pip install nvidia-cuda-nvrtc") from exc
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise GateUnavailable(f"nvrtcVersion failed: {err}")
    return nvrtc


def nvrtc_availability() -> str:
    """'yes', or why the compile gate cannot run here (never raises)."""
    try:
        _nvrtc()
    except GateUnavailable as exc:
        return str(exc)
    return "yes"


def nvrtc_version() -> str:
    _, major, minor = _nvrtc().nvrtcVersion()
    return f"{major}.{minor}"


def _cupy_include_dirs() -> tuple[list[str], list[str]]:
    """CuPy's bundled CCCL include dirs and its own include dir, located without importing CuPy."""
    spec = importlib.util.find_spec("cupy")
    if spec is None or not spec.submodule_search_locations:
        return [], []
    include = Path(next(iter(spec.submodule_search_locations))) / "_core" / "include"
    cccl = [str(include / "cupy" / "_cccl" / sub) for sub in ("cub", "thrust", "libcudacxx")]
    return [d for d in cccl if Path(d).is_dir()], [str(include)] if include.is_dir() else []


def cuda_include_dir() -> str:
    """The CUDA headers' directory (cuda_fp16.h, ...), found as CuPy finds it: cuda.pathfinder, 'cudart'."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError as exc:
        raise GateUnavailable(f"cuda-pathfinder is not installed ({exc}); pip install cuda-bindings") from exc
    found = find_nvidia_header_directory("cudart")
    if not found:
        raise GateUnavailable("CUDA headers (cuda_runtime.h, cuda_fp16.h) not found: pip install "
                              "nvidia-cuda-runtime (or cuda-toolkit[cudart]), or set CUDA_PATH to a toolkit")
    return str(found)


def cupy_nvrtc_options(arch: int, user_options: Sequence[str] | None = None) -> tuple[str, ...]:
    """The NVRTC option list CuPy 14's RawModule(code=..., options=user_options) compiles with, for sm_<arch>.

    Order (cupy._core.core.assemble_cupy_compiler_options + cupy.cuda.compiler): CuPy's bundled CCCL include
    dirs, the user's options, --std=c++17 unless given, CuPy's include dir, the CUDA include dir,
    -ftz=true, -arch=sm_XX, --device-as-default-execution-space.
    """
    user = tuple(kernel_source.module_options() if user_options is None else user_options)
    cccl, cupy_include = _cupy_include_dirs()
    opts = [f"-I{d}" for d in cccl] + list(user)
    if not any(o.startswith(("-std=", "--std=")) for o in user):
        opts.append("--std=c++17")
    opts += [f"-I{d}" for d in cupy_include] + [f"-I{cuda_include_dir()}"]
    extra = list(kernel_source.NVRTC_GATE_EXTRA)
    ftz = [o for o in extra if o.startswith("-ftz")]
    return tuple(opts + ftz + [f"-arch=sm_{arch}"] + [o for o in extra if o not in ftz])


@dataclass
class Compilation:
    """One NVRTC compilation of a family for one arch."""

    ok: bool
    log: str
    cubin: bytes = b""
    lowered: dict[str, str | None] = field(default_factory=dict)   # name expression -> mangled name


def compile_family(fam: KernelFamily, arch: int, options: Sequence[str]) -> Compilation:
    """Compile fam's .cu with all its name expressions under NVRTC; never raises for a compile error."""
    nvrtc = _nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    source = kernel_source.read_source(fam.file).encode()
    err, prog = nvrtc.nvrtcCreateProgram(source, Path(fam.file).name.encode(), 0, [], [])
    if err != ok:
        return Compilation(False, f"nvrtcCreateProgram: {err}")
    try:
        for expr in fam.name_expressions:
            err, = nvrtc.nvrtcAddNameExpression(prog, expr.encode())
            if err != ok:
                return Compilation(False, f"nvrtcAddNameExpression({expr!r}): {err}")
        opts = [o.encode() for o in options]
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.rstrip(b"\0 \n").decode(errors="replace")
        if err != ok:
            return Compilation(False, f"{err.name}\n{log}")
        _, size = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * size
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        lowered = {}
        for expr in fam.name_expressions:
            err, name = nvrtc.nvrtcGetLoweredName(prog, expr.encode())
            lowered[expr] = name.decode() if err == ok and name else None
        return Compilation(True, log, cubin, lowered)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------
@dataclass
class KernelReport:
    """One name expression on one arch: its resources, occupancy and anything that fails the gate."""

    family: str
    name_expression: str
    arch: int
    lowered_name: str | None = None
    registers: int | None = None
    spill_stores: int = 0
    spill_loads: int = 0
    local_bytes: int = 0               # ptxas stack frame: local arrays and spills, per thread
    static_smem: int = 0
    dynamic_smem: int = 0              # the plan's maximum (KernelFamily.launch_hints), 0 when not declared
    launch_bounds: int | None = None   # max threads per block from __launch_bounds__
    block_threads: int | None = None   # block size the occupancy is computed for
    block_source: str = ""             # "plan" | "launch bounds" | "assumed"
    occupancy: Occupancy | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["occupancy"] = (None if self.occupancy is None else
                          {**dataclasses.asdict(self.occupancy), "fraction": round(self.occupancy.fraction, 4)})
        d["ok"] = self.ok
        return d


@dataclass
class FamilyFailure:
    """A family that did not compile for an arch (or whose source could not be read)."""

    family: str
    arch: int
    reason: str
    log: str = ""


@dataclass
class GateReport:
    """Everything the gate checked: per-kernel rows, failed compilations, and the environment."""

    archs: tuple[int, ...]
    nvrtc_version: str
    options: dict[int, tuple[str, ...]]
    kernels: list[KernelReport] = field(default_factory=list)
    failures: list[FamilyFailure] = field(default_factory=list)
    families: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        # a gate that compiled nothing (no family, no arch) never passes (docs/compile_gate.md)
        return bool(self.kernels) and not self.failures and all(k.ok for k in self.kernels)

    def problems(self) -> list[str]:
        """Every reason the gate fails, one line each (NVRTC logs follow in format_table)."""
        out = [f"{f.family} sm_{f.arch}: {f.reason}" for f in self.failures]
        out += [f"{k.family} {k.name_expression} sm_{k.arch}: {p}" for k in self.kernels for p in k.problems]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "nvrtc": self.nvrtc_version, "archs": list(self.archs),
                "families": list(self.families),
                "options": {f"sm_{a}": list(o) for a, o in self.options.items()},
                "kernels": [k.to_dict() for k in self.kernels],
                "failures": [dataclasses.asdict(f) for f in self.failures],
                "problems": self.problems()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _rows(self, lowered: bool) -> list[list[str]]:
        rows = []
        for k in self.kernels:
            occ = k.occupancy
            row = [k.family, k.name_expression, f"sm_{k.arch}",
                   _num(k.registers), f"{k.spill_stores}/{k.spill_loads}", str(k.local_bytes),
                   str(k.static_smem), str(k.dynamic_smem),
                   "-" if k.block_threads is None else f"{k.block_threads}{'' if k.block_source != 'assumed' else '*'}",
                   "-" if occ is None else f"{occ.fraction:.0%} ({occ.blocks_per_sm}x{occ.block_threads // 32 or 1}w)",
                   "-" if occ is None else occ.limiter,
                   "ok" if k.ok else "FAIL"]
            if lowered:
                row.append(k.lowered_name or "-")
            rows.append(row)
        return rows

    def format_table(self) -> str:
        """A plain-text table, one row per kernel and arch, then failures with their NVRTC logs."""
        header = _TABLE_HEADER + ["lowered name"]
        rows = [header] + self._rows(lowered=True)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 12)
        lines.append("")
        lines.append("* block size assumed (no plan hint, no __launch_bounds__); occupancy at the maximum "
                     "shared-memory carveout")
        lines.append(self.summary())
        for p in self.problems():
            lines.append(f"  FAIL {p}")
        for f in self.failures:
            if f.log:
                lines += ["", f"--- NVRTC log: {f.family} sm_{f.arch} ---", f.log]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A compact Markdown table for the README: one row per kernel template, ranges over its instantiations
        (dtypes, index widths, tiles) per arch; `format_table` and `to_json` have every instantiation."""
        groups: dict[tuple[str, str], list[KernelReport]] = {}
        for k in self.kernels:
            groups.setdefault((k.family, k.name_expression.split("<")[0].strip()), []).append(k)
        arch_cols = [f"{what} sm_{a}" for what in ("regs", "occupancy") for a in self.archs]
        header = ["family", "kernel", "instantiations"] + arch_cols[:len(self.archs)] + [
            "spills", "local B", "smem static B", "smem dyn B", "block"] + arch_cols[len(self.archs):]
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (fam, kernel), ks in groups.items():
            per_arch = {a: [k for k in ks if k.arch == a and k.registers is not None] for a in self.archs}
            spilling = {k.name_expression for k in ks if k.spill_stores or k.spill_loads}
            row = [fam, f"`{kernel}`", str(len({k.name_expression for k in ks}))]
            row += [_span(k.registers for k in per_arch[a]) for a in self.archs]
            row += [f"**{len(spilling)} spill**" if spilling else "none", _span(k.local_bytes for k in ks),
                    _span(k.static_smem for k in ks), _span(k.dynamic_smem for k in ks),
                    _span(k.block_threads for k in ks if k.block_threads) +
                    ("*" if any(k.block_source == "assumed" for k in ks) else "")]
            row += [_span((round(100 * k.occupancy.fraction) for k in per_arch[a] if k.occupancy), "%")
                    for a in self.archs]
            out.append("| " + " | ".join(row) + " |")
        out += ["", (f"NVRTC {self.nvrtc_version} with CuPy's RawModule options; ranges over instantiations; "
                     "occupancy = resident warps / 64 per SM at the maximum shared-memory carveout; * = block size "
                     f"assumed ({ASSUMED_BLOCK_THREADS}). Generated by `python -m gpuconv check-kernels --markdown`.")]
        if not self.ok:
            out += ["", "**The gate fails:**"] + [f"- {p}" for p in self.problems()]
        return "\n".join(out)

    def summary(self) -> str:
        n_fail = sum(not k.ok for k in self.kernels) + len(self.failures)
        if not self.families:
            return "compile gate: no kernel families registered (kernel_source.families() is empty)"
        if not self.archs:
            return "compile gate FAILED: no arch to compile for"
        return (f"compile gate {'PASSED' if self.ok else 'FAILED'}: {len(self.kernels)} kernel x arch checked "
                f"over {len(self.families)} families, archs {', '.join(f'sm_{a}' for a in self.archs)}, "
                f"NVRTC {self.nvrtc_version}; {n_fail} failing")


_TABLE_HEADER = ["family", "kernel", "arch", "regs", "spill st/ld B", "local B", "smem static B", "smem dyn B",
                 "block", "occupancy", "limited by", "gate"]


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


def _span(values: Iterable[int], unit: str = "") -> str:
    """'7', '32-48' or '-' for a set of numbers."""
    vals = sorted(set(values))
    if not vals:
        return "-"
    return f"{vals[0]}{unit}" if len(vals) == 1 else f"{vals[0]}-{vals[-1]}{unit}"


# ---------------------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------------------
def _kernel_report(fam: KernelFamily, expr: str, arch: int, comp: Compilation,
                   ptxas: dict[str, PtxasInfo], cubin: dict[str, CubinInfo]) -> KernelReport:
    rep = KernelReport(fam.name, expr, arch, lowered_name=comp.lowered.get(expr))
    if rep.lowered_name is None:
        rep.problems.append("name expression did not lower (no such kernel instantiation)")
        return rep
    info = ptxas.get(rep.lowered_name)
    if info is None or info.registers is None:
        rep.problems.append("no ptxas resource report for this kernel in the NVRTC log")
        return rep
    rep.registers, rep.local_bytes, rep.static_smem = info.registers, info.stack_frame, info.static_smem
    rep.spill_stores, rep.spill_loads = info.spill_stores, info.spill_loads
    if info.spill_stores or info.spill_loads:
        rep.problems.append(f"register spills: {info.spill_stores} B stores, {info.spill_loads} B loads "
                            f"({info.registers} registers)")
    cub = cubin.get(rep.lowered_name)
    if cub is not None:
        rep.launch_bounds = cub.max_threads
        if cub.registers is not None and cub.registers != info.registers:
            rep.problems.append(f"ptxas log says {info.registers} registers, the cubin {cub.registers}")

    hint = fam.hint(expr)
    rep.dynamic_smem = hint.max_dynamic_smem
    if hint.block_threads:
        rep.block_threads, rep.block_source = hint.block_threads, "plan"
    elif rep.launch_bounds:
        rep.block_threads, rep.block_source = rep.launch_bounds, "launch bounds"
    else:
        rep.block_threads, rep.block_source = ASSUMED_BLOCK_THREADS, "assumed"
    if rep.launch_bounds and rep.block_threads > rep.launch_bounds:
        rep.problems.append(f"plan block of {rep.block_threads} threads exceeds __launch_bounds__ "
                            f"({rep.launch_bounds})")
    rep.occupancy = occupancy(arch, rep.registers, rep.static_smem + rep.dynamic_smem, rep.block_threads)
    if rep.occupancy.limiter.startswith("cannot launch"):
        rep.problems.append(rep.occupancy.limiter)
    return rep


def _compile_error_reason(fam: KernelFamily, log: str) -> str:
    """'NVRTC compile error', naming the name expressions NVRTC could not resolve when that is the cause."""
    bad = [e for e in fam.name_expressions
           if re.search(r"nv_mangled_name\s+" + re.escape(e) + r"\s*$", log, re.MULTILINE)]
    if bad:
        return "NVRTC compile error: name expression(s) that name no kernel: " + ", ".join(bad)
    hint = kernel_source.compile_hint(log)
    return "NVRTC compile error" + (f": {hint}" if hint else "")


def _select(families: Iterable[KernelFamily | str] | None) -> tuple[KernelFamily, ...]:
    if families is None:
        return kernel_source.families()
    return tuple(kernel_source.family(f) if isinstance(f, str) else f for f in families)


def check_kernels(archs: Iterable[int] = DEFAULT_ARCHS,
                  families: Iterable[KernelFamily | str] | None = None) -> GateReport:
    """Compile every family (default: kernel_source.families()) for every arch and report per kernel.

    Args:
        archs: compute capabilities as integers (80 = sm_80); each must be in SM_LIMITS and supported by NVRTC.
        families: KernelFamily objects or registered family names; None for all registered families.
    Returns:
        GateReport; `.ok` is False on any compile error, unlowered name expression, spill or unlaunchable
        kernel, and when nothing was compiled (no family or no arch). Raises GateUnavailable when NVRTC or the
        CUDA headers are missing, ValueError for a bad arch.
    """
    nvrtc = _nvrtc()
    archs = tuple(int(a) for a in archs)
    _, supported = nvrtc.nvrtcGetSupportedArchs()
    for a in archs:
        if a not in SM_LIMITS or a not in supported:
            raise ValueError(f"arch {a}: the gate knows {sorted(SM_LIMITS)}, this NVRTC supports {list(supported)}")
    fams = _select(families)
    options = {a: cupy_nvrtc_options(a) + ("-Xptxas=-v",) for a in archs}
    report = GateReport(archs, nvrtc_version(), options, families=tuple(f.name for f in fams))
    for fam in fams:
        if not fam.name_expressions:
            report.failures += [FamilyFailure(fam.name, a, "the family declares no name expressions") for a in archs]
            continue
        for arch in archs:
            try:
                comp = compile_family(fam, arch, options[arch])
            except OSError as exc:
                report.failures.append(FamilyFailure(fam.name, arch, f"cannot read {fam.file}: {exc}"))
                continue
            if not comp.ok:
                report.failures.append(FamilyFailure(fam.name, arch, _compile_error_reason(fam, comp.log), comp.log))
                continue
            ptxas = parse_ptxas_log(comp.log)
            try:
                cubin = read_cubin_info(comp.cubin)
            except (ValueError, struct.error, IndexError, KeyError) as exc:
                report.failures.append(FamilyFailure(fam.name, arch, f"unreadable cubin: {exc}"))
                cubin = {}
            rows = [_kernel_report(fam, expr, arch, comp, ptxas, cubin) for expr in fam.name_expressions]
            report.kernels += rows
            entries = {r.lowered_name for r in rows}
            for name, info in ptxas.items():
                if name not in entries and (info.spill_stores or info.spill_loads):
                    report.failures.append(FamilyFailure(fam.name, arch, f"register spills in function {name}: "
                                                         f"{info.spill_stores} B stores, {info.spill_loads} B loads"))
    return report
