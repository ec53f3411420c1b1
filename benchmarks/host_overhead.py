"""Host time of the CUDA-kernel path per call: gpuconv's own Python work, with the launches skipped.

A GPU call on a small tensor is bound by its host work (SegNet pool5 on the H100: 0.1-0.2 ms per call for a few
microseconds of kernel, benchmarks/results/2026-11-22_h100_segnet_f32.md). This script times that work without a
GPU: each public op runs on the kernel backend (argument checks, the canonical problem, plan selection and
building, one executor.launch per plan) with an executor whose `launch` only counts the plans and whose array
module is NumPy. It leaves out what the CUDA executor and CuPy add per call (allocating the outputs from CuPy's
pool, the kernel launch itself, setting the device), so it is a lower bound on a GPU call's host time, and the
part gpuconv controls.

Usage: python benchmarks/host_overhead.py [--calls 3000] [--out benchmarks/results/host_overhead.md]
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


def cases(rng) -> dict:
    """name -> (description, zero-argument call) on ResNet-50 res4 and SegNet pool5 shapes."""
    x = rng.standard_normal((8, 14, 14, 256), dtype=np.float32)
    w = rng.standard_normal((3, 3, 256, 256), dtype=np.float32)
    dy = rng.standard_normal((8, 14, 14, 256), dtype=np.float32)
    p5 = np.maximum(rng.standard_normal((4, 22, 30, 512), dtype=np.float32), 0)
    pooled, argmax = gc.max_pool_with_argmax(p5, 2, 2, "VALID")     # the NumPy backend: real indices
    x3 = rng.standard_normal((1, 16, 16, 16, 64), dtype=np.float32)
    w3 = rng.standard_normal((3, 3, 3, 64, 64), dtype=np.float32)
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


def time_call(fn, calls: int) -> float:
    """Median over 7 batches of the time per call, in microseconds."""
    for _ in range(max(10, calls // 10)):
        fn()
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=positive, default=3000, help="calls per timed batch")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "host_overhead.md")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    todo = cases(rng)
    executor = CountingExecutor()
    kept = backend._instances.get("emulator")
    backend._instances["emulator"] = KernelBackend(executor)      # what use_backend("emulator") now runs
    rows = []
    try:
        with gc.use_backend("emulator"):
            for name, (shape, fn) in todo.items():
                executor.launches = 0
                fn()
                launches = executor.launches
                us = time_call(fn, args.calls)
                rows.append((name, shape, launches, us))
                print(f"{name:24s} {us:7.1f} us/call  ({launches} launch{'es' if launches != 1 else ''})",
                      flush=True)
    finally:
        if kept is None:
            backend._instances.pop("emulator", None)
        else:
            backend._instances["emulator"] = kept
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    cpu = cpu_report()
    lines = [
        "# Host time of gpuconv's kernel path per call (launches skipped)",
        "",
        "Written by benchmarks/host_overhead.py: each op on the kernel backend with an executor that counts its "
        "plans instead of launching them, NumPy arrays; median of 7 batches of "
        f"{args.calls} back-to-back calls. A lower bound on a GPU call's host time (CuPy's allocation and launch "
        "come on top).",
        "",
        f"Run {stamp}; {cpu['model']} ({cpu['usable_cores']} usable cores), python {platform.python_version()}, "
        f"numpy {np.__version__}, gpuconv {gc.__version__}.",
        "",
        "| op | shapes | launches | us per call |",
        "|---|---|---:|---:|",
    ] + [f"| {n} | {s} | {k} | {us:.1f} |" for n, s, k, us in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
