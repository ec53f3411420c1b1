"""Shared test plumbing: markers, backend fixtures, and the rule that CI fails when a required layer skipped.

Environment:
  GPUCONV_REQUIRE_EMULATOR=1   a skipped `emulator` test fails the run (CI sets it)
  GPUCONV_REQUIRE_NVRTC=1      a skipped `compile_gate` test fails the run (CI sets it)
  GPUCONV_REQUIRE_TF=1         a skipped `tf` test fails the run (CI sets it)
  GPUCONV_STRICT=1             all three at once (the README's test command and .ci/run set it)
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REQUIRED = {"emulator": "GPUCONV_REQUIRE_EMULATOR", "compile_gate": "GPUCONV_REQUIRE_NVRTC",
            "tf": "GPUCONV_REQUIRE_TF"}
_required_skips: list[str] = []
_passed: dict[str, int] = {marker: 0 for marker in REQUIRED}


def _required(marker: str) -> bool:
    return os.environ.get(REQUIRED[marker]) == "1" or os.environ.get("GPUCONV_STRICT") == "1"


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


def emulator_available() -> bool:
    """The emulator's own check (Linux, a C++ compiler, binutils)."""
    try:
        from gpuconv.executors.emulator import emulator_availability
    except ImportError:
        return False
    return emulator_availability() == "yes"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    skip_emu = pytest.mark.skip(reason="the emulator cannot run here (see gpuconv.info()['backends'])")
    for item in items:
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip_gpu)
        if "emulator" in item.keywords and not emulator_available():
            item.add_marker(skip_emu)


def pytest_runtest_logreport(report):
    for marker in REQUIRED:
        if marker not in report.keywords:
            continue
        if report.skipped and _required(marker):
            _required_skips.append(f"{report.nodeid} ({marker}): {report.longrepr}")
        elif report.when == "call" and report.passed:
            _passed[marker] += 1


def pytest_sessionfinish(session, exitstatus):
    # A required layer that ran no test at all (e.g. deselected or not collected) fails too. Only checked
    # for full runs (no -k / explicit file arguments), so a developer can still run one file.
    full_run = not session.config.option.keyword and session.config.args == session.config.getini("testpaths")
    for marker, count in _passed.items():
        if _required(marker) and full_run and count == 0:
            _required_skips.append(f"no `{marker}` test passed in a strict run")
    if _required_skips:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _required_skips:
        terminalreporter.write_sep("=", "REQUIRED TESTS WERE SKIPPED (this run fails)", red=True)
        for line in _required_skips[:50]:
            terminalreporter.write_line(line)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def gemm_chunks_on_pool(monkeypatch, parallel) -> None:
    """Make the NumPy backend's GEMM chunks (conv boxes, Winograd chunks) go to the worker pool where parallel()
    says so, whatever BLAS's threads (_parallel.gemm_workers decides by them otherwise)."""
    import contextlib

    from gpuconv.numpy_backend import _parallel
    monkeypatch.setattr(_parallel, "gemm_workers",
                        lambda chunks, transforms=False: contextlib.nullcontext(parallel()))


def load_benchmark_script(name: str):
    """A fresh module of benchmarks/<name>.py (the scripts are not a package), registered in sys.modules under
    its name, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def kernel_backend_names() -> list:
    """Backends that run the CUDA kernels: the emulator always (marked), cuda when a GPU exists (marked gpu)."""
    return [pytest.param("emulator", marks=pytest.mark.emulator), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=kernel_backend_names())
def kernel_backend(request):
    """Name of a kernel backend ('emulator' or 'cuda'); use with gpuconv.use_backend and `to_backend`."""
    return request.param


def to_backend(name: str, a):
    """A NumPy array moved to the array library of backend `name` (cupy for cuda)."""
    if name == "cuda":
        import cupy
        return cupy.asarray(a)
    return a


def to_numpy(a):
    return a.get() if hasattr(a, "get") else a


def install_emulator(monkeypatch, order: str = "forward", seed: int = 0, **options) -> None:
    """The 'emulator' backend replaced, for this test, by one whose executor runs this thread order (and takes
    any other EmulatorExecutor options, e.g. sanitize=True)."""
    from gpuconv import backend as B
    from gpuconv.executors.emulator import EmulatorExecutor
    from gpuconv.kernel_backend import KernelBackend
    monkeypatch.setitem(B._instances, "emulator", KernelBackend(EmulatorExecutor(order=order, seed=seed, **options)))


@pytest.fixture(params=["forward", "reverse"])
def ordered_backend(request, kernel_backend, monkeypatch):
    """A kernel backend name; for the emulator, installed with the thread order of the param."""
    order = request.param
    if kernel_backend == "emulator":
        install_emulator(monkeypatch, order)
    elif order != "forward":
        pytest.skip("thread order is an emulator setting")
    return kernel_backend


def record_launches(monkeypatch, backend: str, entry=lambda plan: plan.name_expression) -> list:
    """A list that receives entry(plan) for every plan kernel backend `backend` ('emulator' or 'cuda') launches
    during the test (the launch itself still happens)."""
    from gpuconv import backend as B
    executor = B._instance(backend).executor
    seen: list = []
    original = executor.launch

    def record(plan):
        seen.append(entry(plan))
        return original(plan)

    monkeypatch.setattr(executor, "launch", record)
    return seen


def count_calls(monkeypatch, module, names) -> dict:
    """{name: calls so far} for the given functions of module, each wrapped (for this test) to count its calls;
    tests use it to show that the path they check ran."""
    counts = {name: 0 for name in names}
    for name in names:
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return counts


def sequential_scatter(values, argmax, out_shape, include_batch=False):
    """The scatter kernels' promise (kernels/unpool.cu), independently: zeros, then each update added in
    increasing update order (np.add.at is unbuffered and sequential), in the accumulation dtype (float16 in
    float32, others in themselves), rounded once."""
    acc_dt = np.float32 if values.dtype == np.float16 else values.dtype
    out = np.zeros(int(np.prod(out_shape)), acc_dt)
    n = values.shape[0]
    idx = argmax.reshape(n, -1).astype(np.int64)
    if not include_batch:
        idx = idx + (np.arange(n) * (out.size // n))[:, None]
    np.add.at(out, idx.reshape(-1), values.reshape(-1).astype(acc_dt))
    return out.astype(values.dtype).reshape(out_shape)


def run_on(backend: str, fn, *args, **kwargs):
    """fn(*args) on `backend`, NumPy arrays moved there and results (one array or a tuple) moved back."""
    import gpuconv
    args = tuple(to_backend(backend, a) if isinstance(a, np.ndarray) else a for a in args)
    with gpuconv.use_backend(backend):
        out = fn(*args, **kwargs)
    return tuple(to_numpy(o) for o in out) if isinstance(out, tuple) else to_numpy(out)


def run_oracle(fn, *args, **kwargs):
    """fn(*args) on the NumPy backend: the reference the kernels are compared with."""
    import gpuconv
    with gpuconv.use_backend("numpy"):
        return fn(*args, **kwargs)
