"""python -m gpuconv: info, check-kernels (on fixture families), and demo/bench delegation; every --help."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gpuconv import compile_gate, kernel_source
from gpuconv.__main__ import format_info, main
from gpuconv.kernel_source import KernelFamily

FIXTURES = Path(__file__).resolve().parent / "kernels"
GOOD = KernelFamily("gate_good", str(FIXTURES / "gate_good.cu"), ("gate_axpy<float, 128>",))
SPILL = KernelFamily("gate_spill", str(FIXTURES / "gate_spill.cu"), ("gate_spill<64>",))
NVRTC = compile_gate.nvrtc_availability()


def gate_test(fn):
    """Marked compile_gate; skipped only where cuda-bindings / NVRTC are missing (a CI failure, see conftest)."""
    return pytest.mark.compile_gate(pytest.mark.skipif(NVRTC != "yes", reason=f"needs NVRTC: {NVRTC}")(fn))


@pytest.fixture
def fixture_registry(monkeypatch):
    """kernel_source.families() returns the fixture families for the duration of a test."""
    monkeypatch.setattr(kernel_source, "families", lambda: (GOOD, SPILL))


# ---------------------------------------------------------------------------------------------------------
# --help everywhere
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    ([], "COMMAND"), (["--help"], "check-kernels"), (["info", "--help"], "--json"),
    (["check-kernels", "--help"], "--markdown"),
])
def test_help(capsys, argv, expect):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    assert exc.value.code == (0 if argv else 2)
    assert expect in out.out + out.err
    if argv == ["--help"]:
        assert all(cmd in out.out for cmd in ("info", "check-kernels", "demo", "bench"))


@pytest.mark.parametrize("command,module", [("demo", "gpuconv.demo"), ("bench", "gpuconv.bench.cli")])
def test_demo_and_bench_delegate_the_rest_of_the_command_line(monkeypatch, command, module):
    seen = []
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=lambda args: seen.append(args) or 3))
    if module == "gpuconv.bench.cli":
        import gpuconv.bench
        monkeypatch.setattr(gpuconv.bench, "cli", sys.modules[module], raising=False)
    assert main([command, "--help", "--out", "x", "pos"]) == 3
    assert seen == [["--help", "--out", "x", "pos"]]


@pytest.mark.parametrize("command,module", [("demo", "gpuconv.demo"), ("bench", "gpuconv.bench.cli")])
def test_missing_delegate_is_a_clean_error(monkeypatch, capsys, command, module):
    monkeypatch.setitem(sys.modules, module, None)
    assert main([command]) == 2
    assert f"gpuconv {command}: not available" in capsys.readouterr().err


@pytest.mark.parametrize("command,module", [("demo", "gpuconv.demo"), ("bench", "gpuconv.bench.cli")])
def test_real_delegate_help(command, module):
    """Where the real module exists, `python -m gpuconv <command> --help` reaches its own parser."""
    importlib.import_module(module)              # part of gpuconv: an import error is a failure, not a skip
    out = subprocess.run([sys.executable, "-m", "gpuconv", command, "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


# ---------------------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------------------
def test_info_runs_and_prints_versions_backends_gpu(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("versions:", "gpuconv", "numpy", "backends:", "cuda", "GPU"):
        assert word in out
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["numpy"] == "yes" and "gpu" in data
    assert data["numpy-backend"]["threads"] >= 1 and isinstance(data["numpy-backend"]["winograd"], bool)


def test_info_shows_the_numpy_backend_settings(capsys, monkeypatch):
    monkeypatch.setenv("GPUCONV_WINOGRAD", "0")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy backend: " in out and "worker threads (GPUCONV_NUM_THREADS)" in out
    assert "Winograd off (GPUCONV_WINOGRAD=0)" in out


@pytest.mark.parametrize("command", ["info", "demo", "bench"])
@pytest.mark.parametrize("var,value", [("GPUCONV_BACKEND", "opencl"), ("GPUCONV_NUM_THREADS", "0"),
                                       ("GPUCONV_NUM_THREADS", "lots"), ("GPUCONV_WINOGRAD", "maybe")])
def test_a_malformed_setting_is_named_up_front_without_a_traceback(capsys, monkeypatch, tmp_path, command, var,
                                                                   value):
    """info, demo and bench read the GPUCONV_* settings first (gpuconv.info.settings) and stop with exit 2."""
    from gpuconv.bench import cli
    from gpuconv.numpy_backend import _parallel

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started despite a malformed setting")

    monkeypatch.setattr(cli, "build_cases", must_not_run)
    monkeypatch.setattr("gpuconv.demo.Demo", must_not_run)
    argv = {"info": ["info"], "demo": ["demo", "--backend", "numpy", "--out", str(tmp_path)],
            "bench": ["bench", "--quick", "--backend", "numpy", "--out", str(tmp_path)]}[command]
    monkeypatch.setenv(var, value)
    _parallel.set_num_threads(None)                  # GPUCONV_NUM_THREADS is read at first use
    try:
        assert main(argv) == 2
    finally:
        monkeypatch.delenv(var)
        _parallel.set_num_threads(None)
    err = capsys.readouterr().err
    assert err.startswith(f"gpuconv {command}: {var}: expected") and repr(value) in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["demo", "bench"])
@pytest.mark.parametrize("var,value", [("GPUCONV_EMULATOR_ORDER", "bogus"), ("GPUCONV_EMULATOR_THREADS", "0"),
                                       ("GPUCONV_EMULATOR_STACK_KIB", "1")])
def test_a_malformed_emulator_setting_stops_an_emulator_run_up_front(capsys, monkeypatch, tmp_path, command, var,
                                                                     value):
    """demo and bench on the emulator read its GPUCONV_EMULATOR_* settings before any work (every op failed on
    them instead: "0 of 5 checks passed", exit 1)."""
    from gpuconv.bench import cli
    from gpuconv.executors.emulator import emulator_availability
    if emulator_availability() != "yes":
        pytest.skip(f"the emulator cannot run here: {emulator_availability()}")

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started despite a malformed setting")

    monkeypatch.setattr(cli, "build_cases", must_not_run)
    monkeypatch.setattr("gpuconv.demo.Demo", must_not_run)
    monkeypatch.setenv(var, value)
    argv = {"demo": ["demo", "--backend", "emulator", "--out", str(tmp_path)],
            "bench": ["bench", "--quick", "--backend", "emulator", "--out", str(tmp_path)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuconv {command}: environment variable {var}") and "Traceback" not in err


def test_an_unavailable_emulator_is_reported_once_as_unavailable(monkeypatch):
    """The reason read "unavailable: no: C++ compiler ..." before."""
    from gpuconv.info import info
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    line = [ln for ln in format_info(info()).splitlines() if ln.strip().startswith("emulator")]
    assert line == ["  emulator           unavailable: C++ compiler 'no-such-compiler-x' not found (install g++ or "
                    "set CXX)"]


def test_a_closed_stdout_ends_the_cli_without_a_traceback():
    """`python -m gpuconv info | head`: stdout's reader gone, the print raised BrokenPipeError with a traceback."""
    import os
    for command in (["info"], ["info", "--json"]):
        read, write = os.pipe()
        os.close(read)
        try:
            run = subprocess.run([sys.executable, "-m", "gpuconv", *command], stdout=write, stderr=subprocess.PIPE,
                                 text=True, timeout=120)
        finally:
            os.close(write)
        assert (run.returncode, run.stderr) == (1, ""), command


def test_format_info_with_a_gpu_and_without():
    base = {"gpuconv": "0.1.0", "python": "3.11.7", "numpy": "2.1", "cupy": None, "backend": "auto",
            "backends": {"numpy": "yes", "cuda": "CuPy is not installed"}}
    text = format_info({**base, "gpu": {"available": False, "reason": "NVML could not start"}})
    assert "cupy               not installed" in text
    assert "cuda               unavailable: CuPy is not installed" in text
    assert "GPU: none (NVML could not start)" in text
    gpu = {"available": True, "driver": "580.1", "devices": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_gib": 79.6, "sm_clock_mhz": 1980,
         "sm_clock_max_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 35, "power_w": 71.2}]}
    text = format_info({**base, "gpu": gpu})
    assert "GPU (NVML, driver 580.1):" in text
    assert "[0] NVIDIA H100 80GB HBM3, 79.6 GiB, SM 1980 MHz, max 1980 MHz, memory 2619 MHz, 35 C, 71 W" in text


# ---------------------------------------------------------------------------------------------------------
# check-kernels
# ---------------------------------------------------------------------------------------------------------
@gate_test
def test_check_kernels_table_json_markdown(fixture_registry, capsys):
    assert main(["check-kernels", "--family", "gate_good"]) == 0
    out = capsys.readouterr().out
    assert "gate_axpy<float, 128>" in out and "sm_80" in out and "sm_90" in out and "PASSED" in out

    assert main(["check-kernels", "--family", "gate_good", "--arch", "90", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["archs"] == [90] and data["kernels"][0]["registers"] > 0

    assert main(["check-kernels", "--family", "gate_good", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| family | kernel | instantiations | regs sm_80 | regs sm_90 |")
    assert "| gate_good | `gate_axpy` | 1 |" in md


@gate_test
def test_check_kernels_fails_on_spill(fixture_registry, capsys):
    assert main(["check-kernels", "--arch", "80"]) == 1  # both fixture families, one spills
    out = capsys.readouterr().out
    assert "FAILED" in out and "gate_spill<64> sm_80: register spills" in out


@gate_test
@pytest.mark.parametrize("argv,message", [
    (["check-kernels", "--family", "nope"], "unknown kernel family nope"),
    (["check-kernels", "--arch", "70"], "arch 70"),
    (["check-kernels", "--arch", "sm_90"], "comma-separated integers"),
])
def test_check_kernels_usage_errors(fixture_registry, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--arch", ","], "--arch takes comma-separated integers such as 80,90, not ','"),
    (["--arch", ""], "--arch takes comma-separated integers such as 80,90, not ''"),
    (["--family", ","], "--family takes kernel family names, not ','; known: gate_good, gate_spill"),
    (["--family", ""], "--family takes kernel family names, not ''; known: gate_good, gate_spill"),
])
def test_check_kernels_empty_arch_or_family_list_is_a_usage_error(fixture_registry, monkeypatch, capsys, argv,
                                                                  message):
    monkeypatch.setattr(compile_gate, "check_kernels", lambda **kw: pytest.fail("the gate ran on an empty list"))
    assert main(["check-kernels", *argv]) == 2
    out = capsys.readouterr()
    assert out.err == f"check-kernels: {message}\n" and "PASSED" not in out.out


def test_check_kernels_with_no_registered_family_fails(monkeypatch, capsys):
    """A gate that would check nothing does not pass (exit 1), and says why."""
    monkeypatch.setattr(kernel_source, "families", lambda: ())
    monkeypatch.setattr(compile_gate, "check_kernels", lambda **kw: pytest.fail("nothing to compile"))
    assert main(["check-kernels"]) == 1
    out = capsys.readouterr()
    assert "no kernel families are registered" in out.err and "PASSED" not in out.out + out.err


def test_check_kernels_without_nvrtc(fixture_registry, monkeypatch, capsys):
    def unavailable():
        raise compile_gate.GateUnavailable("cuda-bindings is not installed")
    monkeypatch.setattr(compile_gate, "_nvrtc", unavailable)
    assert main(["check-kernels"]) == 2
    assert "cannot run the compile gate here: cuda-bindings is not installed" in capsys.readouterr().err


def test_info_names_numpys_blas_kernels_and_what_chose_them(capsys, monkeypatch):
    """The BLAS kernel line: the set numpy's OpenBLAS reports, and OPENBLAS_CORETYPE when that chose it."""
    from gpuconv.numpy_backend import _parallel
    monkeypatch.setattr(_parallel, "blas_kernels", lambda: "Haswell")
    monkeypatch.setattr(_parallel, "cpu_has_avx512", lambda: True)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert main(["info"]) == 0
    assert ("numpy BLAS kernels: Haswell (set by OPENBLAS_CORETYPE=Haswell); this CPU has AVX-512, which these "
            "kernels leave unused: unset OPENBLAS_CORETYPE for faster GEMMs") in capsys.readouterr().out
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setattr(_parallel, "blas_kernels", lambda: "SkylakeX")
    assert _parallel.blas_kernel_note() == "SkylakeX (OpenBLAS's choice for this CPU)"
    monkeypatch.setattr(_parallel, "cpu_has_avx512", lambda: False)
    monkeypatch.setattr(_parallel, "blas_kernels", lambda: "Haswell")
    assert _parallel.blas_kernel_note() == "Haswell (OpenBLAS's choice for this CPU)"
    monkeypatch.setattr(_parallel, "blas_kernels", lambda: "")
    assert _parallel.blas_kernel_note() == "unknown (not numpy's bundled OpenBLAS)"


def test_blas_kernels_reads_numpys_openblas():
    """On numpy's wheels (bundled OpenBLAS) the kernel set is a non-empty name; elsewhere '' (unknown)."""
    import glob
    import os

    import numpy as np

    from gpuconv.numpy_backend import _parallel
    name = _parallel.blas_kernels()
    assert isinstance(name, str)
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))), "numpy.libs")
    if glob.glob(os.path.join(libs, "*openblas*")):
        assert name and name == name.strip()
