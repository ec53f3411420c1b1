"""gpuconv.executors.cuda: plumbing checked against a fake CuPy (options, name expressions, memoisation per
device, large-smem opt-in, current stream, arguments untouched, thread safety), and real launches under `gpu`."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from gpuconv import kernel_source
from gpuconv.executors.cuda import CudaExecutor, cuda_availability
from gpuconv.kernel_source import KernelFamily
from gpuconv.plans import LaunchPlan

FIXTURES = Path(__file__).resolve().parent / "kernels"
GOOD = KernelFamily("gate_good", str(FIXTURES / "gate_good.cu"),
                    ("gate_axpy<float, 128>", "gate_reverse_block<float>"))


# ---------------------------------------------------------------------------------------------------------
# a fake cupy: records what the executor asks of it
# ---------------------------------------------------------------------------------------------------------
class FakeCupy(types.ModuleType):
    """Just enough of cupy for CudaExecutor: RawModule, ndarray, cuda.runtime/Device/get_current_stream."""

    def __init__(self, device_count=2):
        super().__init__("cupy")
        fake = self
        self.current_device = 0
        self.modules = []       # every RawModule built
        self.launches = []      # (kernel, device, stream, grid, block, args, kwargs)
        self.events = []        # anything that would synchronise or transfer
        self.streams = {0: "stream-0", 1: "stream-1"}

        class RawModule:
            def __init__(self, **kwargs):
                time.sleep(0.01)  # widen the window for the thread-safety test
                self.kwargs, self.device, self.compiled = kwargs, fake.current_device, []
                fake.modules.append(self)

            def get_function(self, name):
                self.compiled.append(name)
                return Kernel(name, self)

        class Kernel:
            shared_size_bytes = 0       # static shared memory (tests set it per kernel)

            def __init__(self, name, module):
                self.name, self.module, self.smem_settings = name, module, []

            @property
            def max_dynamic_shared_size_bytes(self):
                return self.smem_settings[-1] if self.smem_settings else 0

            @max_dynamic_shared_size_bytes.setter
            def max_dynamic_shared_size_bytes(self, value):
                self.smem_settings.append(value)

            def __call__(self, grid, block, args, **kwargs):
                fake.launches.append((self, fake.current_device, fake.cuda.get_current_stream(), grid, block,
                                      args, kwargs))

        class ndarray:
            def __init__(self, device_id):
                self.device = types.SimpleNamespace(id=device_id)

            def get(self):
                fake.events.append("get")

        class Device:
            def __init__(self, device_id):
                self.id, self.previous = device_id, None

            def __enter__(self):
                self.previous, fake.current_device = fake.current_device, self.id
                return self

            def __exit__(self, *exc):
                fake.current_device = self.previous

            def synchronize(self):
                fake.events.append("synchronize")

        def get_device_count():
            return device_count

        self.RawModule, self.ndarray = RawModule, ndarray
        self.cuda = types.SimpleNamespace(
            Device=Device,
            get_current_stream=lambda: fake.streams[fake.current_device],
            runtime=types.SimpleNamespace(getDevice=lambda: fake.current_device, getDeviceCount=get_device_count),
            nvrtc=types.SimpleNamespace(getVersion=lambda: (13, 5)),
        )


@pytest.fixture
def fake(monkeypatch):
    cp = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return cp


def plan(expr="gate_axpy<float, 128>", shared_mem=0, args=None, family="gate_good"):
    args = args if args is not None else (np.float32(2.0), np.int32(10))
    return LaunchPlan(family, expr, (3, 1, 1), (128, 1, 1), shared_mem, args)


# ---------------------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------------------
def test_rawmodule_built_from_the_family(fake):
    ex = CudaExecutor([GOOD])
    assert ex.name == "cuda" and ex.xp is fake
    ex.launch(plan())
    (mod,) = fake.modules
    assert mod.kwargs == {"code": kernel_source.read_source(GOOD.file), "options": kernel_source.family_options(GOOD),
                          "name_expressions": GOOD.name_expressions, "backend": "nvrtc"}
    assert kernel_source.family_options(GOOD) == kernel_source.module_options() + (
        f"-DGPUCONV_SOURCE_HASH={kernel_source.source_hash(GOOD.file)}",)
    assert kernel_source.module_options()[:2] == kernel_source.NVRTC_OPTIONS + ("-I" + str(kernel_source.kernel_dir()),)
    assert mod.compiled == ["gate_axpy<float, 128>"]


def test_options_change_when_an_included_header_changes(tmp_path, monkeypatch):
    """CuPy's disk cache keys a module on its code and options only: an edit to a header the .cu includes must
    change the options (the source hash), or the old cubin would be loaded."""
    import shutil
    kdir = tmp_path / "kernels"
    shutil.copytree(kernel_source.kernel_dir(), kdir)
    monkeypatch.setattr(kernel_source, "kernel_dir", lambda: kdir)
    fam = kernel_source.family("pool")
    before = kernel_source.family_options(fam)
    (kdir / "common.cuh").write_text((kdir / "common.cuh").read_text() + "\n// edited\n")
    after = kernel_source.family_options(fam)
    assert before != after and before[:-1] == after[:-1] and after[-1].startswith("-DGPUCONV_SOURCE_HASH=")


def test_missing_crt_header_gets_a_hint_other_compile_errors_pass_through(fake, monkeypatch):
    """NVRTC's 'cannot open crt/mma.h' (pip CUDA without the C runtime headers) becomes a RuntimeError that says
    what to install; any other compile error reaches the caller unchanged."""
    class CompileException(Exception):
        pass

    log = 'mma.h(55): catastrophic error: cannot open source file "crt/mma.h"'
    monkeypatch.setattr(fake.RawModule, "get_function", lambda self, name: (_ for _ in ()).throw(CompileException(log)))
    with pytest.raises(RuntimeError, match=r"cuda-toolkit\[crt\]==13.*cuda-toolkit\[nvcc\]==12") as info:
        CudaExecutor([GOOD]).launch(plan())
    assert isinstance(info.value.__cause__, CompileException) and log in str(info.value)
    monkeypatch.setattr(fake.RawModule, "get_function",
                        lambda self, name: (_ for _ in ()).throw(CompileException("error: expected a ';'")))
    with pytest.raises(CompileException, match="expected a ';'"):
        CudaExecutor([GOOD]).launch(plan())


def test_launch_passes_plan_through_on_the_current_stream(fake):
    x, y = fake.ndarray(0), fake.ndarray(0)
    args = (x, y, np.float32(0.5), np.int32(7))
    p = plan(args=args, shared_mem=1024)
    CudaExecutor([GOOD]).launch(p)
    (kernel, device, stream, grid, block, got_args, kwargs) = fake.launches[0]
    assert (kernel.name, device, stream) == ("gate_axpy<float, 128>", 0, "stream-0")
    assert (grid, block, kwargs) == ((3, 1, 1), (128, 1, 1), {"shared_mem": 1024})
    assert got_args is args and all(a is b for a, b in zip(got_args, args))
    assert fake.events == []  # no synchronisation, no host transfer


def test_modules_and_kernels_memoised_per_family_and_device(fake):
    ex = CudaExecutor([GOOD])
    for _ in range(3):
        ex.launch(plan())
    ex.launch(plan("gate_reverse_block<float>"))
    assert len(fake.modules) == 1 and fake.modules[0].compiled == ["gate_axpy<float, 128>",
                                                                   "gate_reverse_block<float>"]
    # arrays on device 1: a second module, built and launched under device 1, on device 1's current stream
    ex.launch(plan(args=(fake.ndarray(1), np.int32(3))))
    assert len(fake.modules) == 2 and fake.modules[1].device == 1
    assert fake.launches[-1][1:3] == (1, "stream-1")
    assert fake.current_device == 0  # restored
    # with device 1 current and no arrays, device 1's module is reused
    with fake.cuda.Device(1):
        ex.launch(plan())
    assert len(fake.modules) == 2 and fake.launches[-1][0].module is fake.modules[1]
    assert ex.module("gate_good", 0) is fake.modules[0]


def test_large_dynamic_smem_opt_in(fake):
    ex = CudaExecutor([GOOD])
    ex.launch(plan(shared_mem=48 * 1024))
    kernel = fake.launches[-1][0]
    assert kernel.smem_settings == []          # 48 KiB needs no opt-in
    ex.launch(plan(shared_mem=64 * 1024))
    ex.launch(plan(shared_mem=64 * 1024))
    ex.launch(plan(shared_mem=32 * 1024))
    assert kernel.smem_settings == [64 * 1024]  # set once, never lowered
    ex.launch(plan(shared_mem=100 * 1024))
    assert kernel.smem_settings == [64 * 1024, 100 * 1024]
    assert fake.launches[-1][6] == {"shared_mem": 100 * 1024}


def test_dynamic_smem_opt_in_counts_static_shared_memory(fake):
    """20 KiB static + 40 KiB dynamic passes the 48 KiB a block gets without the opt-in: opted in, although the
    dynamic request alone is below 48 KiB."""
    ex = CudaExecutor([GOOD])
    ex.launch(plan(shared_mem=16 * 1024))
    kernel = fake.launches[-1][0]
    kernel.shared_size_bytes = 20 * 1024
    ex.launch(plan(shared_mem=28 * 1024))
    assert kernel.smem_settings == []           # 48 KiB in all: no opt-in
    ex.launch(plan(shared_mem=40 * 1024))
    assert kernel.smem_settings == [40 * 1024]


def test_unknown_family_and_name_expression(fake):
    ex = CudaExecutor([GOOD])
    with pytest.raises(KeyError, match="no kernel family 'pool'"):
        ex.launch(plan(family="pool"))
    with pytest.raises(ValueError, match="not a name expression"):
        ex.launch(plan("gate_axpy<double, 128>"))
    assert fake.launches == []


def test_default_families_come_from_the_registry(fake, monkeypatch):
    monkeypatch.setattr(kernel_source, "families", lambda: (GOOD,))
    CudaExecutor().launch(plan())
    assert fake.modules[0].kwargs["name_expressions"] == GOOD.name_expressions


def test_concurrent_first_launches_compile_once(fake):
    ex = CudaExecutor([GOOD])
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        ex.launch(plan())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.modules) == 1 and fake.modules[0].compiled == ["gate_axpy<float, 128>"]
    assert len(fake.launches) == 8


def test_importing_the_executor_does_not_import_cupy():
    code = "import sys, gpuconv.executors.cuda as c; c.CudaExecutor(); print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------------------------------------
# cuda_availability
# ---------------------------------------------------------------------------------------------------------
def test_availability_yes_with_a_device(fake):
    assert cuda_availability() == "yes"


def test_availability_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert "CuPy is not installed" in cuda_availability()

    no_device = FakeCupy(device_count=0)
    monkeypatch.setitem(sys.modules, "cupy", no_device)
    assert cuda_availability() == "no CUDA device"

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver")
    no_device.cuda.runtime.getDeviceCount = no_driver
    assert cuda_availability() == "no usable CUDA driver or device: cudaErrorInsufficientDriver"


def test_availability_never_raises_here():
    reason = cuda_availability()
    assert isinstance(reason, str) and reason


# ---------------------------------------------------------------------------------------------------------
# real launches (need CuPy and a GPU)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_axpy_matches_numpy():
    import cupy
    n = 1000
    x, y = np.arange(n, dtype=np.float32), np.linspace(-1, 1, n, dtype=np.float32)
    dx, dy = cupy.asarray(x), cupy.asarray(y)
    cupy.cuda.Stream.null.synchronize()      # the uploads ran on the null stream, which a non-blocking one skips
    ex = CudaExecutor([GOOD])
    with cupy.cuda.Stream(non_blocking=True) as stream:
        ex.launch(LaunchPlan("gate_good", "gate_axpy<float, 128>", (-(-n // 128), 1, 1), (128, 1, 1), 0,
                             (dx, dy, np.float32(0.5), np.int32(n))))
        stream.synchronize()
    np.testing.assert_allclose(dy.get(), 0.5 * x + y, rtol=1e-6)


@pytest.mark.gpu
def test_gpu_large_dynamic_smem_launch():
    """64 KiB of dynamic shared memory only launches after the executor's opt-in."""
    import cupy
    n, block = 1000, 256
    x = np.arange(n, dtype=np.float32)
    dx, dy = cupy.asarray(x), cupy.zeros(n, dtype=cupy.float32)
    CudaExecutor([GOOD]).launch(LaunchPlan("gate_good", "gate_reverse_block<float>", (-(-n // block), 1, 1),
                                           (block, 1, 1), 64 * 1024, (dx, dy, np.int32(n))))
    expected = np.zeros(n, np.float32)
    for b in range(0, n, block):
        for t in range(block):
            j = b + block - 1 - t
            if j < n and b + t < n:
                expected[j] = x[b + t]
            elif j < n:
                expected[j] = 0.0
    np.testing.assert_array_equal(dy.get(), expected)
