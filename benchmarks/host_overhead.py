"""Host time of the CUDA-kernel path per call: gpuconv's own Python work, with the launches skipped or real.

A GPU call on a small tensor is bound by its host work (SegNet pool5 on the H100: 0.1-0.2 ms per call for a few
microseconds of kernel, benchmarks/results/2026-11-22_h100_segnet_f32.md). By default this script times that work
without a GPU: each public op runs on the kernel backend (argument checks, the canonical problem, plan selection
and building, one executor.launch per plan) with an executor whose `launch` only counts the plans and whose array
module is NumPy. That leaves out what the CUDA executor and CuPy add per call (allocating the outputs from CuPy's
pool, the kernel launch itself, setting the device), so it is a lower bound on a GPU call's host time, and the
part gpuconv controls.

With --backend cuda (a GPU and CuPy needed) the same calls run for real on the cuda backend, back to back, with
one device synchronisation per batch: the time per call is then what a loop of such calls costs, host work and
launches included (the kernels of these shapes take a few microseconds each; where they take longer, the GPU
bounds the loop instead).

Usage: python benchmarks/host_overhead.py [--backend counting|cuda] [--calls 3000] [--out FILE.md]
Not a test. Times are the median of 7 batches of --calls back-to-back calls, per call.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpuconv as gc  # noqa: E402
from gpuconv import backend  # noqa: E402
from gpuconv.device_report import cpu_report  # noqa: E402
from gpuconv.kernel_backend import KernelBackend  # noqa: E402


class CountingExecutor:
    """An executor that runs nothing: NumPy arrays, and `launch` counts the plans it is given."""

    name = "emulator"
    xp = np

    def __init__(self):
        self.launches = 0

    def launch(self, plan) -> None:
        self.launches += 1

    def compute_capability(self, array) -> int:
        return 90


def cases(rng, to_device=lambda a: a) -> dict:
    """name -> (description, zero-argument call) on ResNet-50 res4 and SegNet pool5 shapes; `to_device` moves
    each input to the arrays the timed backend takes (cupy.asarray for cuda)."""
    x = rng.standard_normal((8, 14, 14, 256), dtype=np.float32)
    w = rng.standard_normal((3, 3, 256, 256), dtype=np.float32)
    dy = rng.standard_normal((8, 14, 14, 256), dtype=np.float32)
    p5 = np.maximum(rng.standard_normal((4, 22, 30, 512), dtype=np.float32), 0)
    with gc.use_backend("numpy"):
        pooled, argmax = gc.max_pool_with_argmax(p5, 2, 2, "VALID")     # real indices
    x3 = rng.standard_normal((1, 16, 16, 16, 64), dtype=np.float32)
    w3 = rng.standard_normal((3, 3, 3, 64, 64), dtype=np.float32)
    x, w, dy, p5, pooled, argmax, x3, w3 = map(to_device, (x, w, dy, p5, pooled, argmax, x3, w3))
    return {
        "conv2d": ("8x14x14x256, 3x3x256x256, SAME", lambda: gc.conv2d(x, w, 1, "SAME")),
        "conv2d_backprop_input": ("same layer", lambda: gc.conv2d_backprop_input(x.shape, w, dy, 1, "SAME")),
        "conv2d_backprop_filter": ("same layer", lambda: gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME")),
        "conv3d": ("1x16x16x16x64, 3x3x3x64x64, SAME", lambda: gc.conv3d(x3, w3, 1, "SAME")),
        "max_pool2d": ("4x22x30x512, 2x2/2 VALID", lambda: gc.max_pool2d(p5, 2, 2, "VALID")),
        "max_pool_with_argmax": ("same", lambda: gc.max_pool_with_argmax(p5, 2, 2, "VALID")),
        "avg_pool2d": ("same", lambda: gc.avg_pool2d(p5, 2, 2, "VALID")),
        "max_pool_grad": ("same", lambda: gc.max_pool_grad(p5, pooled, pooled, 2, 2, "VALID")),
        "max_unpool": ("same", lambda: gc.max_unpool(pooled, argmax, p5.shape)),
    }


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def time_call(fn, calls: int, sync=lambda: None) -> float:
    """Median over 7 batches of the time per call, in microseconds; `sync` ends each batch (and the warm-up)."""
    for _ in range(max(10, calls // 10)):
        fn()
    sync()
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


class _Counting:
    """Counts the launches of an executor while passing them on."""

    def __init__(self, executor):
        self.executor = executor
        self.launches = 0

    def __getattr__(self, name):
        return getattr(self.executor, name)

    def launch(self, plan) -> None:
        self.launches += 1
        self.executor.launch(plan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("counting", "cuda"), default="counting",
                    help="counting: launches skipped, no GPU needed (default); cuda: real calls on the GPU")
    ap.add_argument("--calls", type=positive, default=3000, help="calls per timed batch")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown report (default benchmarks/results/host_overhead.md; with --backend cuda, "
                         "host_overhead_cuda.md)")
    args = ap.parse_args(argv)
    cuda = args.backend == "cuda"
    out = args.out or ROOT / "benchmarks" / "results" / ("host_overhead_cuda.md" if cuda else "host_overhead.md")
    rng = np.random.default_rng(0)
    if cuda:
        import cupy
        from gpuconv.executors.cuda import CudaExecutor
        name, executor, sync = "cuda", _Counting(CudaExecutor()), cupy.cuda.Device().synchronize
        todo = cases(rng, cupy.asarray)
        machine = f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}, host "
    else:
        name, executor, sync = "emulator", CountingExecutor(), lambda: None
        todo = cases(rng)
        machine = ""
    kept = backend._instances.get(name)
    backend._instances[name] = KernelBackend(executor)      # what use_backend(name) now runs
    rows = []
    try:
        with gc.use_backend(name):
            for op, (shape, fn) in todo.items():
                executor.launches = 0
                fn()
                launches = executor.launches
                us = time_call(fn, args.calls, sync)
                rows.append((op, shape, launches, us))
                print(f"{op:24s} {us:7.1f} us/call  ({launches} launch{'es' if launches != 1 else ''})",
                      flush=True)
    finally:
        if kept is None:
            backend._instances.pop(name, None)
        else:
            backend._instances[name] = kept
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    cpu = cpu_report()
    how = ("each op for real on the cuda backend, one device synchronisation per batch: host work and launches"
           if cuda else
           "each op on the kernel backend with an executor that counts its plans instead of launching them, NumPy "
           "arrays")
    bound = ("The time per call of a loop of such calls." if cuda else
             "A lower bound on a GPU call's host time (CuPy's allocation and launch come on top).")
    title = "real calls on the GPU" if cuda else "launches skipped"
    lines = [
        f"# Host time of gpuconv's kernel path per call ({title})",
        "",
        f"Written by benchmarks/host_overhead.py --backend {args.backend}: {how}; median of 7 batches of "
        f"{args.calls} back-to-back calls. {bound}",
        "",
        f"Run {stamp}; {machine}{cpu['model']} ({cpu['usable_cores']} usable cores), python "
        f"{platform.python_version()}, numpy {np.__version__}, gpuconv {gc.__version__}.",
        "",
        "| op | shapes | launches | us per call |",
        "|---|---|---:|---:|",
    ] + [f"| {n} | {s} | {k} | {us:.1f} |" for n, s, k, us in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
