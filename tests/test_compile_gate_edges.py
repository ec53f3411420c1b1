"""gpuconv.compile_gate: the decisions that pass or fail the gate, each on a small input — fabricated ptxas logs
and cubin records fed to the per-kernel verdict, and the fixture kernels with one piece of the gate's input
replaced (an unreadable cubin, a spilling device function, a source that cannot be read). Complements
tests/test_compile_gate.py, whose fixtures never reach these branches; none of these tests compiles the real
kernel families."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from gpuconv import compile_gate as cg
from gpuconv import kernel_source
from gpuconv.__main__ import main
from gpuconv.kernel_source import KernelFamily, LaunchHint

FIXTURES = Path(__file__).resolve().parent / "kernels"
NVRTC = cg.nvrtc_availability()


def gate_test(fn):
    """Marked compile_gate; skipped only where cuda-bindings / NVRTC are missing (a CI failure, see conftest)."""
    return pytest.mark.compile_gate(pytest.mark.skipif(NVRTC != "yes", reason=f"needs NVRTC: {NVRTC}")(fn))


AXPY = "gate_axpy<float, 128>"
GOOD = KernelFamily("gate_good", str(FIXTURES / "gate_good.cu"), (AXPY, "gate_reverse_block<float>"))
SPILL = KernelFamily("gate_spill", str(FIXTURES / "gate_spill.cu"), ("gate_spill<64>",))


# ---------------------------------------------------------------------------------------------------------
# the verdict on one kernel, from fabricated ptxas and cubin records (no NVRTC)
# ---------------------------------------------------------------------------------------------------------
EXPR, LOWERED = "k<1>", "_Z1kILi1EEvv"


def verdict(arch=80, registers=32, cubin=None, hint=None, lowered=LOWERED, **ptxas):
    """_kernel_report for one name expression whose ptxas record is PtxasInfo(registers, **ptxas)."""
    fam = KernelFamily("f", "f.cu", (EXPR,), launch_hints={EXPR: hint} if hint else {})
    comp = cg.Compilation(True, "", b"", {EXPR: lowered})
    info = {LOWERED: cg.PtxasInfo(registers=registers, is_entry=True, **ptxas)}
    return cg._kernel_report(fam, EXPR, arch, comp, info, {} if cubin is None else {LOWERED: cubin})


@pytest.mark.parametrize("stores,loads", [(4, 0), (0, 4), (1024, 2048)])
def test_any_spill_fails_the_kernel(stores, loads):
    k = verdict(spill_stores=stores, spill_loads=loads, stack_frame=max(stores, loads))
    assert (k.spill_stores, k.spill_loads) == (stores, loads)
    assert not k.ok and k.problems == [f"register spills: {stores} B stores, {loads} B loads (32 registers)"]


def test_local_memory_without_spills_passes():
    k = verdict(stack_frame=64, static_smem=2048)
    assert k.ok and (k.local_bytes, k.static_smem, k.registers) == (64, 2048, 32)


def test_missing_resource_information_fails():
    assert verdict(lowered=None).problems == ["name expression did not lower (no such kernel instantiation)"]
    assert not verdict(lowered="_Z5otherv").ok                      # lowered, but ptxas reported no such kernel
    assert not verdict(registers=None).ok                           # a report without "Used N registers"


def test_register_counts_of_log_and_cubin_must_agree():
    assert verdict(cubin=cg.CubinInfo(registers=32, stack_frame=0, max_threads=None)).ok
    assert verdict(cubin=cg.CubinInfo(registers=None, stack_frame=None, max_threads=None)).ok
    k = verdict(cubin=cg.CubinInfo(registers=40, stack_frame=0, max_threads=None))
    assert k.problems == ["ptxas log says 32 registers, the cubin 40"]


def test_block_size_from_plan_then_launch_bounds_then_assumed():
    bounds = cg.CubinInfo(registers=32, stack_frame=0, max_threads=512)
    k = verdict(cubin=bounds)
    assert (k.launch_bounds, k.block_threads, k.block_source) == (512, 512, "launch bounds") and k.ok
    k = verdict(cubin=bounds, hint=LaunchHint(block_threads=128))
    assert (k.block_threads, k.block_source, k.occupancy.block_threads) == (128, "plan", 128) and k.ok
    k = verdict()
    assert (k.launch_bounds, k.block_threads, k.block_source) == (None, cg.ASSUMED_BLOCK_THREADS, "assumed")


@pytest.mark.parametrize("block,ok", [(256, True), (257, False), (512, False)])
def test_plan_block_larger_than_launch_bounds_fails(block, ok):
    k = verdict(cubin=cg.CubinInfo(registers=32, stack_frame=0, max_threads=256), hint=LaunchHint(block))
    assert k.ok == ok
    assert k.problems == ([] if ok else [f"plan block of {block} threads exceeds __launch_bounds__ (256)"])


def test_occupancy_counts_static_and_dynamic_shared_memory():
    k = verdict(arch=90, static_smem=4096, hint=LaunchHint(block_threads=128, max_dynamic_smem=60 * 1024))
    assert k.dynamic_smem == 60 * 1024
    assert k.occupancy == cg.occupancy(90, 32, 4096 + 60 * 1024, 128)
    assert k.occupancy.blocks_per_sm == 3 and k.occupancy.limiter == "shared memory"


@pytest.mark.parametrize("arch,static,dynamic,registers,block,ok", [
    (80, 2048, 162 * 1024, 32, 128, False),   # 164 KiB > sm_80's 163 KiB opt-in
    (90, 2048, 162 * 1024, 32, 128, True),    # ... within sm_90's 227 KiB
    (80, 0, 0, 255, 1024, False),             # 255 registers x 1024 threads > 64 K
    (80, 0, 0, 64, 1024, True),
    (90, 0, 0, 32, 2048, False),              # more than 1024 threads per block
])
def test_a_plan_that_cannot_launch_fails(arch, static, dynamic, registers, block, ok):
    k = verdict(arch=arch, registers=registers, static_smem=static,
                hint=LaunchHint(block_threads=block, max_dynamic_smem=dynamic))
    assert k.ok == ok and k.occupancy.limiter.startswith("cannot launch") == (not ok)
    assert k.problems == ([] if ok else [k.occupancy.limiter])


@pytest.mark.parametrize("threads,blocks", [(1, 32), (31, 32), (0, 0), (1025, 0)])
def test_occupancy_at_the_block_size_bounds(threads, blocks):
    for arch in (80, 90):
        occ = cg.occupancy(arch, 32, 0, threads)
        assert occ.blocks_per_sm == blocks and occ.limiter.startswith("cannot launch") == (blocks == 0)


# ---------------------------------------------------------------------------------------------------------
# ptxas log parsing
# ---------------------------------------------------------------------------------------------------------
# A device function whose properties follow an entry kernel's, multi-digit spills, an entry with no smem.
PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1av' for 'sm_80'
ptxas info    : Function properties for _Z1av
ptxas         .     1280 bytes stack frame, 1024 bytes spill stores, 2048 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 49152 bytes smem, 368 bytes cmem[0]
ptxas info    : Function properties for _Z6helperPf
ptxas         .     24 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Compiling entry function '_Z1bv' for 'sm_80'
ptxas info    : Function properties for _Z1bv
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 360 bytes cmem[0]
"""


def test_parse_ptxas_log_attributes_each_line_to_its_function():
    infos = cg.parse_ptxas_log(PTXAS_LOG)
    a, b, helper = infos["_Z1av"], infos["_Z1bv"], infos["_Z6helperPf"]
    assert (a.registers, a.static_smem, a.stack_frame, a.spill_stores, a.spill_loads) == (255, 49152, 1280, 1024,
                                                                                          2048)
    assert (b.registers, b.static_smem, b.stack_frame, b.spill_stores, b.spill_loads) == (12, 0, 0, 0, 0)
    assert (helper.registers, helper.is_entry, helper.stack_frame, helper.spill_stores, helper.spill_loads) == (
        None, False, 24, 12, 16)
    assert a.is_entry and b.is_entry


# ---------------------------------------------------------------------------------------------------------
# the gate over the fixture kernels with one input replaced
# ---------------------------------------------------------------------------------------------------------
@gate_test
@pytest.mark.parametrize("stores,loads", [(8, 0), (0, 8)])
def test_spill_in_a_non_inlined_device_function_fails(monkeypatch, stores, loads):
    parse = cg.parse_ptxas_log

    def with_spilling_helper(log):
        infos = parse(log)
        infos["_Z6helperPf"] = cg.PtxasInfo(stack_frame=8, spill_stores=stores, spill_loads=loads)
        return infos

    monkeypatch.setattr(cg, "parse_ptxas_log", with_spilling_helper)
    rep = cg.check_kernels(archs=(80, 90), families=[GOOD])
    assert all(k.ok for k in rep.kernels) and not rep.ok
    assert [(f.family, f.arch) for f in rep.failures] == [("gate_good", 80), ("gate_good", 90)]
    assert all(f"register spills in function _Z6helperPf: {stores} B stores, {loads} B loads" == f.reason
               for f in rep.failures)


@gate_test
def test_unreadable_cubin_fails_the_gate(monkeypatch):
    def unreadable(cubin):
        raise ValueError("not a 64-bit ELF cubin")

    monkeypatch.setattr(cg, "read_cubin_info", unreadable)
    rep = cg.check_kernels(archs=(90,), families=[GOOD])
    assert not rep.ok and [(f.family, f.arch, f.reason) for f in rep.failures] == [
        ("gate_good", 90, "unreadable cubin: not a 64-bit ELF cubin")]
    assert len(rep.kernels) == 2 and all(k.registers for k in rep.kernels)   # still reported from the log


@gate_test
def test_unreadable_source_fails_the_gate(tmp_path):
    gone = KernelFamily("gone", str(tmp_path / "gone.cu"), ("k<float>",))
    rep = cg.check_kernels(archs=(80, 90), families=[gone, GOOD])
    assert not rep.ok and [(f.family, f.arch) for f in rep.failures] == [("gone", 80), ("gone", 90)]
    assert all(f.reason.startswith("cannot read ") for f in rep.failures)
    assert len(rep.kernels) == 2 * len(GOOD.name_expressions) and all(k.ok for k in rep.kernels)


@gate_test
def test_each_arch_compiles_with_its_own_options(monkeypatch):
    """Every family x arch is compiled once, with -arch=sm_<that arch> and ptxas -v; every expression gets a row."""
    calls = []
    compile_family = cg.compile_family

    def spy(fam, arch, options):
        calls.append((fam.name, arch, [o for o in options if o.startswith("-arch=")], "-Xptxas=-v" in options))
        return compile_family(fam, arch, options)

    monkeypatch.setattr(cg, "compile_family", spy)
    rep = cg.check_kernels(archs=(80, 90), families=[GOOD, SPILL])
    assert calls == [(f, a, [f"-arch=sm_{a}"], True) for f in ("gate_good", "gate_spill") for a in (80, 90)]
    assert {(k.family, k.name_expression, k.arch) for k in rep.kernels} == {
        (f.name, e, a) for f in (GOOD, SPILL) for e in f.name_expressions for a in (80, 90)}


@gate_test
def test_an_arch_this_nvrtc_cannot_target_is_rejected(monkeypatch):
    monkeypatch.setitem(cg.SM_LIMITS, 11, cg.SMLimits())            # known to the gate, no NVRTC targets sm_11
    with pytest.raises(ValueError, match="arch 11"):
        cg.check_kernels(archs=(11,), families=[GOOD])


@gate_test
def test_an_arch_without_occupancy_rules_is_rejected():
    """NVRTC targets sm_75 / sm_100 / sm_120, but the gate has no SM_LIMITS for them: a usage error, not a crash."""
    arch = next(a for a in (75, 100, 120) if a in cg._nvrtc().nvrtcGetSupportedArchs()[1])
    with pytest.raises(ValueError, match=f"arch {arch}"):
        cg.check_kernels(archs=(80, arch), families=[GOOD])


@gate_test
def test_family_without_name_expressions_fails_on_every_arch():
    rep = cg.check_kernels(archs=(80, 90), families=[KernelFamily("empty", GOOD.file, ()), GOOD])
    assert not rep.ok and [(f.family, f.arch) for f in rep.failures] == [("empty", 80), ("empty", 90)]


def test_a_report_over_no_family_does_not_say_passed():
    rep = cg.GateReport((80, 90), "13.0", {}, families=())
    assert "PASSED" not in rep.summary() and "no kernel families registered" in rep.summary()
    assert not rep.ok


@gate_test
@pytest.mark.parametrize("archs,families", [((), [GOOD]), ((80,), [])])
def test_a_gate_that_compiled_nothing_is_not_ok(archs, families):
    """check_kernels with no arch or no family compiled nothing: never ok, never PASSED (the CLI refuses both
    as usage errors; this is the Python API)."""
    rep = cg.check_kernels(archs=archs, families=families)
    assert not rep.kernels and not rep.ok and "PASSED" not in rep.summary()


# ---------------------------------------------------------------------------------------------------------
# check-kernels: the exit status does not depend on the output format
# ---------------------------------------------------------------------------------------------------------
@gate_test
@pytest.mark.parametrize("fmt", [[], ["--json"], ["--markdown"]])
def test_check_kernels_exit_status_in_every_format(monkeypatch, capsys, fmt):
    monkeypatch.setattr(kernel_source, "families", lambda: (GOOD, SPILL))
    assert main(["check-kernels", "--arch", "80", "--family", "gate_good", *fmt]) == 0
    assert main(["check-kernels", "--arch", "80", *fmt]) == 1
    assert main(["check-kernels", "--arch", "90", "--family", "gate_good,gate_spill", *fmt]) == 1
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------
# NVRTC that is installed but cannot load
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_nvrtc(monkeypatch):
    """cuda.bindings.nvrtc replaced by a module whose nvrtcVersion is the test's to define."""
    nvrtc = types.SimpleNamespace(nvrtcResult=types.SimpleNamespace(NVRTC_SUCCESS=0))
    bindings = types.ModuleType("cuda.bindings")
    bindings.nvrtc = nvrtc
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", nvrtc)
    return nvrtc


def test_nvrtc_library_that_does_not_load_makes_the_gate_unavailable(fake_nvrtc):
    def missing():
        raise RuntimeError("libnvrtc.so.13: cannot open shared object file")

    fake_nvrtc.nvrtcVersion = missing
    assert cg.nvrtc_availability().startswith("NVRTC library not found (libnvrtc.so.13")
    fake_nvrtc.nvrtcVersion = lambda: (7, 0, 0)
    assert cg.nvrtc_availability() == "nvrtcVersion failed: 7"
    with pytest.raises(cg.GateUnavailable):
        cg.check_kernels(archs=(80,), families=[GOOD])
