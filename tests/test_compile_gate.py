"""gpuconv.compile_gate: NVRTC over fixture kernels (good, broken, spilling, unknown name expression) and over
every registered kernel family for sm_80 and sm_90; the ptxas-log parser, the cubin reader and the occupancy
rules are also checked on their own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuconv import compile_gate as cg
from gpuconv import kernel_source
from gpuconv.kernel_source import KernelFamily, LaunchHint

FIXTURES = Path(__file__).resolve().parent / "kernels"
NVRTC = cg.nvrtc_availability()


def gate_test(fn):
    """Marked compile_gate; skipped only where cuda-bindings / NVRTC are missing (a CI failure, see conftest)."""
    return pytest.mark.compile_gate(pytest.mark.skipif(NVRTC != "yes", reason=f"needs NVRTC: {NVRTC}")(fn))

GOOD = KernelFamily("gate_good", str(FIXTURES / "gate_good.cu"),
                    ("gate_axpy<float, 128>", "gate_axpy<__half, 256>",
                     "gate_reverse_block<float>", "gate_reverse_block<double>"),
                    launch_hints={"gate_reverse_block<double>": LaunchHint(block_threads=512,
                                                                           max_dynamic_smem=100 * 1024)})
SPILL = KernelFamily("gate_spill", str(FIXTURES / "gate_spill.cu"), ("gate_spill<64>",))
BROKEN = KernelFamily("gate_broken", str(FIXTURES / "gate_broken.cu"), ("gate_broken<float>",))
MISSING = KernelFamily("gate_missing", str(FIXTURES / "gate_good.cu"),
                       ("gate_axpy<float, 128>", "gate_no_such_kernel<float>"))


def fixture_families():
    return (GOOD, SPILL, BROKEN, MISSING)


@pytest.fixture(scope="module")
def report():
    """One gate run over all fixture families, both default archs."""
    return cg.check_kernels(families=fixture_families())


def rows(rep, family, expr=None):
    """The report's kernel rows of a family (and name expression), in arch order."""
    return [k for k in rep.kernels if k.family == family and (expr is None or k.name_expression == expr)]


# ---------------------------------------------------------------------------------------------------------
# the gate over fixtures
# ---------------------------------------------------------------------------------------------------------
@gate_test
@pytest.mark.parametrize("arch", [80, 90])
def test_good_family_passes_and_reports_resources(report, arch):
    good = [k for k in rows(report, "gate_good") if k.arch == arch]
    assert len(good) == len(GOOD.name_expressions)
    assert all(k.ok for k in good), [k.problems for k in good]
    for k in good:
        assert k.lowered_name.startswith("_Z") and k.registers and 0 < k.registers <= 255
        assert (k.spill_stores, k.spill_loads, k.local_bytes) == (0, 0, 0)
    named = {k.name_expression: k for k in good}
    axpy_f, axpy_h, rev = (named["gate_axpy<float, 128>"], named["gate_axpy<__half, 256>"],
                           named["gate_reverse_block<float>"])
    assert (axpy_f.static_smem, axpy_f.launch_bounds, axpy_f.block_source) == (128 * 4, 128, "launch bounds")
    assert (axpy_h.static_smem, axpy_h.launch_bounds) == (256 * 4, 256)
    assert axpy_f.occupancy.fraction == 1.0
    assert (rev.launch_bounds, rev.block_threads, rev.block_source) == (None, cg.ASSUMED_BLOCK_THREADS, "assumed")


@gate_test
def test_plan_hint_drives_occupancy(report):
    by_arch = {k.arch: k for k in rows(report, "gate_good", "gate_reverse_block<double>")}
    for k in by_arch.values():
        assert (k.block_threads, k.block_source, k.dynamic_smem) == (512, "plan", 100 * 1024)
        assert k.occupancy.limiter == "shared memory"
    # 101 KiB per block (with the 1 KiB reserved): one block of 16 warps on sm_80's 164 KiB, two on sm_90's 228 KiB.
    assert by_arch[80].occupancy.warps_per_sm == 16 and by_arch[90].occupancy.warps_per_sm == 32


@gate_test
def test_broken_family_fails_with_the_nvrtc_log(report):
    failures = [f for f in report.failures if f.family == "gate_broken"]
    assert sorted(f.arch for f in failures) == [80, 90]
    for f in failures:
        assert f.reason.startswith("NVRTC compile error")
        assert "gate_broken.cu(4)" in f.log and "undeclared_value" in f.log
    assert "undeclared_value" in report.format_table()
    assert not report.ok


@gate_test
def test_spilling_kernel_fails(report):
    spill = rows(report, "gate_spill")
    assert [k.arch for k in spill] == [80, 90]
    for k in spill:
        assert k.spill_stores > 0 and k.spill_loads > 0 and k.local_bytes > 0
        assert k.registers <= 32  # __launch_bounds__(1024, 2): 64K registers / 2048 threads
        assert not k.ok and any("spill" in p for p in k.problems)
    assert any("gate_spill<64> sm_80: register spills" in p for p in report.problems())


@gate_test
def test_name_expression_that_names_no_kernel_fails(report):
    failures = [f for f in report.failures if f.family == "gate_missing"]
    assert sorted(f.arch for f in failures) == [80, 90]
    for f in failures:
        assert "gate_no_such_kernel<float>" in f.reason
        assert "gate_axpy<float, 128>" not in f.reason


@gate_test
def test_report_json_and_markdown(report):
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["archs"] == [80, 90] and data["nvrtc"] == cg.nvrtc_version()
    assert len(data["kernels"]) == len(report.kernels)
    k = next(k for k in data["kernels"] if k["name_expression"] == "gate_axpy<float, 128>")
    assert {"registers", "spill_stores", "spill_loads", "static_smem", "dynamic_smem", "local_bytes",
            "lowered_name", "occupancy", "ok"} <= set(k)
    assert k["occupancy"]["fraction"] == 1.0
    assert any("-arch=sm_90" in o for o in data["options"]["sm_90"])
    md = report.to_markdown().splitlines()
    assert md[0] == ("| family | kernel | instantiations | regs sm_80 | regs sm_90 | spills | local B | "
                     "smem static B | smem dyn B | block | occupancy sm_80 | occupancy sm_90 |")
    body = [line for line in md[2:] if line.startswith("| gate_")]
    assert len(body) == 3  # one row per template: gate_axpy, gate_reverse_block, gate_spill
    axpy = next(line for line in body if "`gate_axpy`" in line).split(" | ")
    assert axpy[2] == "2" and axpy[5] == "none" and axpy[7] == "512-1024" and axpy[9] == "128-256"
    assert "**1 spill**" in next(line for line in body if "`gate_spill`" in line)
    assert "**The gate fails:**" in md


@gate_test
@pytest.mark.parametrize("arch", [80, 90])
def test_cubin_reader_agrees_with_ptxas(arch):
    comp = cg.compile_family(GOOD, arch, cg.cupy_nvrtc_options(arch) + ("-Xptxas=-v",))
    assert comp.ok, comp.log
    ptxas, cubin = cg.parse_ptxas_log(comp.log), cg.read_cubin_info(comp.cubin)
    for lowered in comp.lowered.values():
        assert cubin[lowered].registers == ptxas[lowered].registers
        assert cubin[lowered].stack_frame in (None, ptxas[lowered].stack_frame)
    assert cubin[comp.lowered["gate_axpy<float, 128>"]].max_threads == 128
    assert cubin[comp.lowered["gate_reverse_block<float>"]].max_threads is None


@gate_test
def test_family_without_name_expressions_fails():
    rep = cg.check_kernels(archs=(90,), families=[KernelFamily("empty", GOOD.file, ())])
    assert not rep.ok and "no name expressions" in rep.failures[0].reason


@gate_test
def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch 70"):
        cg.check_kernels(archs=(70,), families=[GOOD])


@gate_test
def test_registered_families_pass_for_sm80_and_sm90():
    """The static budget of DESIGN §4: every real kernel compiles for sm_80 and sm_90 with zero spills."""
    fams = kernel_source.families()
    rep = cg.check_kernels(archs=(80, 90))
    assert len(rep.kernels) == 2 * sum(len(f.name_expressions) for f in fams)
    problems = rep.problems()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------
# pieces that need no NVRTC
# ---------------------------------------------------------------------------------------------------------
PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperf
ptxas         .     16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
ptxas         .     48 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 37 registers, used 1 barriers, 2048 bytes smem, 48 bytes cumulative stack size
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function '_Z1gv' for 'sm_90'
ptxas info    : Function properties for _Z1gv
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 364 bytes cmem[0]
"""


def test_parse_ptxas_log():
    infos = cg.parse_ptxas_log(PTXAS_LOG)
    k, g, helper = infos["_Z1kPf"], infos["_Z1gv"], infos["_Z6helperf"]
    assert (k.registers, k.static_smem, k.stack_frame, k.spill_stores, k.is_entry) == (37, 2048, 48, 0, True)
    assert (g.registers, g.static_smem, g.is_entry) == (8, 0, True)
    assert (helper.is_entry, helper.spill_stores, helper.spill_loads, helper.registers) == (False, 4, 8, None)


# (arch, registers, smem per block, threads per block, blocks per SM): produced by
# cudaOccMaxActiveBlocksPerMultiprocessor from CUDA 13.0's cuda_occupancy.h (A100 / H100 properties, maximum
# shared-memory carveout, opt-in dynamic smem), compiled with g++.
OCCUPANCY_CASES = [
    (80, 10, 0, 128, 16), (80, 32, 0, 1024, 2), (80, 255, 0, 256, 1), (80, 64, 0, 256, 4), (80, 40, 0, 256, 6),
    (80, 72, 0, 128, 7), (80, 128, 0, 512, 1), (80, 168, 0, 384, 1), (80, 10, 102400, 512, 1),
    (80, 32, 49152, 256, 3), (80, 32, 20000, 96, 7), (80, 24, 0, 64, 32), (80, 96, 0, 1024, 0),
    (80, 65, 0, 992, 0), (80, 16, 166912, 32, 1), (80, 16, 166913, 32, 0), (80, 16, 232448, 32, 0),
    (80, 33, 0, 33, 24),
    (90, 10, 0, 128, 16), (90, 32, 0, 1024, 2), (90, 255, 0, 256, 1), (90, 64, 0, 256, 4), (90, 40, 0, 256, 6),
    (90, 72, 0, 128, 7), (90, 128, 0, 512, 1), (90, 168, 0, 384, 1), (90, 10, 102400, 512, 2),
    (90, 32, 49152, 256, 4), (90, 32, 20000, 96, 11), (90, 24, 0, 64, 32), (90, 96, 0, 1024, 0),
    (90, 65, 0, 992, 0), (90, 16, 166912, 32, 1), (90, 16, 166913, 32, 1), (90, 16, 232448, 32, 1),
    (90, 33, 0, 33, 24),
]


@pytest.mark.parametrize("arch,regs,smem,threads,blocks", OCCUPANCY_CASES)
def test_occupancy_matches_cuda_occupancy_h(arch, regs, smem, threads, blocks):
    occ = cg.occupancy(arch, regs, smem, threads)
    assert occ.blocks_per_sm == blocks
    assert occ.warps_per_sm == blocks * -(-threads // 32) and occ.max_warps_per_sm == 64
    assert occ.limiter.startswith("cannot launch") == (blocks == 0)


def test_options_match_cupy_rawmodule():
    """Our reconstruction of RawModule's NVRTC options equals CuPy's own assembly (private API, CuPy 14)."""
    pytest.importorskip("cuda.pathfinder")
    cupy = pytest.importorskip("cupy")
    core = pytest.importorskip("cupy._core.core")
    if not hasattr(core, "assemble_cupy_compiler_options"):
        pytest.skip(f"CuPy {cupy.__version__} has no assemble_cupy_compiler_options")
    user = kernel_source.module_options()
    expected = (tuple(core.assemble_cupy_compiler_options(user)) + ("-ftz=true", "-arch=sm_90",
                                                                    "--device-as-default-execution-space"))
    assert cg.cupy_nvrtc_options(90) == expected


def test_every_kernel_file_has_a_registered_family():
    """Each kernels/*.cu is declared by a plan module, so the gate and the emulator cover all of them."""
    from gpuconv import kernel_source

    declared = {fam.file for fam in kernel_source.families()}
    on_disk = {p.name for p in kernel_source.kernel_dir().glob("*.cu")}
    assert declared == on_disk


# ---------------------------------------------------------------------------------------------------------
# crt/mma.h: where pip's CUDA wheels keep the C runtime headers
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def pathfinder(monkeypatch, tmp_path):
    """A fake cuda.pathfinder whose header directories are folders under tmp_path; crt_include_options' cache is
    cleared around the test."""
    import sys
    import types

    dirs: dict = {}

    def find_nvidia_header_directory(libname):
        if libname not in dirs:
            raise RuntimeError(f"UNKNOWN libname={libname!r}")
        return None if dirs[libname] is None else str(dirs[libname])

    module = types.ModuleType("cuda.pathfinder")
    module.find_nvidia_header_directory = find_nvidia_header_directory
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", module)
    for var in ("CUDA_PATH", "CUDA_HOME"):                            # no system toolkit unless a test makes one
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kernel_source, "SYSTEM_CUDA", str(tmp_path / "no-system-toolkit"))
    kernel_source.crt_include_options.cache_clear()

    def make(libname, *files):
        d = tmp_path / libname
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text("")
        d.mkdir(exist_ok=True)
        dirs[libname] = d
        return d

    yield make, dirs
    kernel_source.crt_include_options.cache_clear()


def test_crt_headers_next_to_the_runtime_headers_need_no_option(pathfinder):
    make, _ = pathfinder
    make("cudart", "cuda_runtime.h", "mma.h", "crt/mma.h")           # a toolkit, or CUDA 13 wheels with crt
    make("nvcc", "crt/mma.h")
    assert kernel_source.crt_include_options() == ()


def test_crt_headers_of_cuda12_wheels_come_from_the_nvcc_directory(pathfinder):
    make, _ = pathfinder
    make("cudart", "cuda_runtime.h", "mma.h")                        # nvidia-cuda-runtime-cu12
    nvcc = make("nvcc", "crt/mma.h", "nvPTXCompiler.h")               # nvidia-cuda-nvcc-cu12
    assert kernel_source.crt_include_options() == ("-I" + str(nvcc),)
    assert kernel_source.module_options()[-1] == "-I" + str(nvcc)


def test_no_crt_option_that_would_shadow_the_runtime_headers_or_without_a_source(pathfinder):
    make, dirs = pathfinder
    make("cudart", "cuda_runtime.h", "mma.h")
    make("nvcc", "crt/mma.h", "cuda_runtime.h")                       # a whole (other) toolkit: would shadow
    assert kernel_source.crt_include_options() == ()
    del dirs["nvcc"]                                                  # pathfinder knows no 'nvcc' headers
    kernel_source.crt_include_options.cache_clear()
    assert kernel_source.crt_include_options() == ()
    dirs["nvcc"] = None                                               # ... or finds none
    kernel_source.crt_include_options.cache_clear()
    assert kernel_source.crt_include_options() == ()


def test_crt_headers_from_a_system_toolkit_of_the_same_cuda_version(pathfinder, monkeypatch, tmp_path):
    """CUDA 13 runtime wheels without nvidia-cuda-crt beside a system toolkit (an image with PyTorch's wheels and
    nvcc): the toolkit's include directory is taken when its runtime headers are the same version as CuPy's."""
    make, dirs = pathfinder

    def headers(d, version):
        for f in ("cuda_runtime.h", "crt/mma.h"):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text("")
        (d / "cuda_runtime_api.h").write_text(f"/* x */\n#define CUDART_VERSION {version}\n")
        return d

    cudart = make("cudart", "mma.h")
    headers(cudart, 13000)
    (cudart / "crt" / "mma.h").unlink()                                 # wheels without crt/
    dirs["nvcc"] = None
    system = headers(tmp_path / "sys" / "include", 13000)
    monkeypatch.setattr(kernel_source, "SYSTEM_CUDA", str(tmp_path / "sys"))
    kernel_source.crt_include_options.cache_clear()
    assert kernel_source.crt_include_options() == ("-I" + str(system),)

    headers(system, 12090)                                              # another version: it would shadow
    kernel_source.crt_include_options.cache_clear()
    assert kernel_source.crt_include_options() == ()

    headers(system, 13000)
    other = headers(tmp_path / "cuda_path" / "include", 13000)          # $CUDA_PATH comes before /usr/local/cuda
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda_path"))
    kernel_source.crt_include_options.cache_clear()
    assert kernel_source.crt_include_options() == ("-I" + str(other),)


def test_compile_hint_names_the_wheels_for_a_missing_crt_header():
    hint = kernel_source.compile_hint('mma.h(55): catastrophic error: cannot open source file "crt/mma.h"')
    assert "cuda-toolkit[crt]==13.*" in hint and "cuda-toolkit[nvcc]==12.*" in hint
    assert kernel_source.compile_hint("error: expected a ';'") == ""
    fam = KernelFamily("f", "f.cu", ("k<float>",))
    assert "cuda-toolkit[crt]" in cg._compile_error_reason(fam, 'cannot open source file "crt/mma.h"')


# ---------------------------------------------------------------------------------------------------------
# GPUs beyond the gate's two architectures
# ---------------------------------------------------------------------------------------------------------
# The gate's occupancy rules cover sm_80 and sm_90 (DESIGN §4: zero spills there). Users also run the oldest
# GPUs CUDA 13 targets (T4, sm_75) and the newest (B200, sm_100; RTX 50, sm_120): every family must compile and
# lower every name expression for them too, as CuPy will compile it there (sm_86 / sm_89 share sm_80's
# instruction set; all five compiled on 2026-11-21). Spills are allowed here (ptxas for sm_100 spills
# conv_wgrad_analytic under its 32-register bound: docs/compile_gate.md).
OTHER_ARCHS = (75, 100, 120)


@gate_test
@pytest.mark.parametrize("arch", OTHER_ARCHS)
def test_every_family_compiles_for_other_gpus(arch):
    nvrtc = cg._nvrtc()
    _, supported = nvrtc.nvrtcGetSupportedArchs()
    if arch not in supported:
        pytest.skip(f"NVRTC {nvrtc.nvrtcVersion()[1:]} does not target sm_{arch}")
    options = cg.cupy_nvrtc_options(arch)
    for fam in kernel_source.families():
        c = cg.compile_family(fam, arch, options)
        assert c.ok, f"{fam.name} sm_{arch}:\n{c.log[-3000:]}"
        unlowered = [e for e, name in c.lowered.items() if not name]
        assert not unlowered and set(c.lowered) == set(fam.name_expressions), (fam.name, arch, unlowered)


# ---------------------------------------------------------------------------------------------------------
# flush-to-zero: CuPy compiles every module with -ftz=true, after gpuconv's options
# ---------------------------------------------------------------------------------------------------------
def _ptx(source: str, options, name_expressions=()) -> str:
    """PTX of source under options, with -arch=sm_XX replaced by its virtual compute_XX; each of
    `name_expressions` instantiated and its .entry renamed to the expression itself (so tests can find it)."""
    nvrtc = cg._nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"probe.cu", 0, [], [])
    assert err == ok
    try:
        for expr in name_expressions:
            assert nvrtc.nvrtcAddNameExpression(prog, expr.encode())[0] == ok
        opts = [o.replace("-arch=sm_", "-arch=compute_").encode() for o in options]
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert err == ok, log.decode(errors="replace")
        _, size = nvrtc.nvrtcGetPTXSize(prog)
        ptx = b" " * size
        nvrtc.nvrtcGetPTX(prog, ptx)
        ptx = ptx.decode(errors="replace")
        for expr in name_expressions:
            ptx = ptx.replace(f".entry {nvrtc.nvrtcGetLoweredName(prog, expr.encode())[1].decode()}(",
                              f".entry {expr}(")
        return ptx
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@gate_test
def test_max_pool_float32_comparison_is_not_flushed_to_zero():
    """Under CuPy's -ftz=true a float '>' is setp.gt.ftz.f32, which takes every subnormal for zero (the probe's
    plain compare shows the option is in force); the max-pool scan rule for float32 must compare without it
    (kernels/common.cuh replaces<float>: integer keys), so the larger of two subnormals still wins."""
    source = ('#include "common.cuh"\n'
              'extern "C" __global__ void plain(const float* a, const float* b, int* o) { o[0] = a[0] > b[0]; }\n'
              'extern "C" __global__ void scan(const float* a, const float* b, int* o) {\n'
              '    o[0] = gpuconv::replaces(a[0], b[0]); }\n')
    ptx = _ptx(source, cg.cupy_nvrtc_options(80))
    bodies = {name: ptx.split(f".entry {name}(")[1].split(".entry")[0] for name in ("plain", "scan")}
    assert "setp.gt.ftz.f32" in bodies["plain"]
    assert ".f32" not in "".join(line for line in bodies["scan"].splitlines() if "setp" in line)


# ---------------------------------------------------------------------------------------------------------
# tensor-core float32: what NVRTC makes of TensorOpMath (the emulator runs its own WMMA model, not this)
# ---------------------------------------------------------------------------------------------------------
@gate_test
def test_tf32_kernels_round_operands_and_3xtf32_multiplies_three_times():
    """Per k-tile of the 128x128 tensor-op kernel (8 warps, 4 x 2 fragments each): float16 and TF32 issue one
    wmma.mma per fragment pair and k-step (2 k-steps: 16), 3xTF32 three (48), on m16n16k8 tf32 operands; TF32
    rounds every fragment element it loads with cvt.rna.tf32.f32 (2 k-steps x (4 + 2) fragments x 4 elements =
    48), 3xTF32 the big and the small parts (96)."""
    from gpuconv.plans import conv_fprop as F
    exprs = {(dt, passes): F.FpropConfig("tensorop", "int", "128x128", 4, passes).name_expression(dt)
             for dt, passes in ((F.F16, 1), (F.F32, 1), (F.F32, 3))}
    ptx = _ptx(kernel_source.read_source("conv_fprop.cu"), cg.cupy_nvrtc_options(80, kernel_source.module_options()),
               tuple(exprs.values()))
    body = {key: ptx.split(f".entry {expr}(")[1].split(".entry")[0] for key, expr in exprs.items()}
    mma = {key: [line.split()[0] for line in b.splitlines() if "mma.sync" in line] for key, b in body.items()}
    assert set(mma[(F.F16, 1)]) == {"wmma.mma.sync.aligned.row.row.m16n16k16.f32.f32"} and len(mma[(F.F16, 1)]) == 16
    tf32 = {"wmma.mma.sync.aligned.row.row.m16n16k8.f32.tf32.tf32.f32"}
    assert set(mma[(F.F32, 1)]) == tf32 and len(mma[(F.F32, 1)]) == 16
    assert set(mma[(F.F32, 3)]) == tf32 and len(mma[(F.F32, 3)]) == 48
    assert [body[k].count("cvt.rna.tf32.f32") for k in exprs] == [0, 48, 96]


@gate_test
@pytest.mark.parametrize("family", ["dgrad", "wgrad"])
def test_backprop_tensorop_kernels_take_column_major_a_tiles(family):
    """conv_dgrad_tensorop and conv_wgrad_tensorop read their [k][m] A stage (dy) as a column-major operand: per
    k-tile of the 128x128 tile (8 warps of 64x32: 4 x 2 fragments) 8 wmma.mma (.col.row) per pass: m16n16k8 on
    tf32 operands for float32 (TF32 8, 3xTF32 24), m16n16k16 on halves for float16 (8, its k-tile 16 deep)."""
    import importlib
    import numpy as np
    plans = importlib.import_module(f"gpuconv.plans.conv_{family}")
    split = (1,) if family == "wgrad" else ()
    cases = {(np.float32, 1): "m16n16k8.f32.tf32.tf32.f32", (np.float32, 3): "m16n16k8.f32.tf32.tf32.f32",
             (np.float16, 1): "m16n16k16.f32.f32"}
    exprs = {key: plans.tensorop_expression(key[0], "int", "128x128", *split, key[1]) for key in cases}
    ptx = _ptx(kernel_source.read_source(f"conv_{family}.cu"),
               cg.cupy_nvrtc_options(80, kernel_source.module_options()),
               tuple(f"gpuconv::{family}::{e}" for e in exprs.values()))
    for (dtype, passes), expr in exprs.items():
        body = ptx.split(f".entry gpuconv::{family}::{expr}(")[1].split(".entry")[0]
        mma = [line.split()[0] for line in body.splitlines() if "mma.sync" in line]
        assert set(mma) == {f"wmma.mma.sync.aligned.col.row.{cases[dtype, passes]}"}, set(mma)
        assert len(mma) == 8 * passes
