"""Benchmark: the NumPy backend's depthwise convolutions against PyTorch's, on the CPU, same machine, same run.

Cases: MobileNet v1's depthwise 3x3 layers (gpuconv.bench.layers.MOBILENET_DW) at N = 8 float32, fprop, dgrad and
wgrad, plus two shapes outside MobileNet that stress other parts of the path: few channels (8x112x112x8) and a
channel multiplier of 2 (8x56x56x128 -> 256). Cases and peers are benchmarks/numpy_vs_pytorch.py's (conv_cases:
torch.nn.functional.conv2d with the layer's groups on channels_last tensors, for dgrad and wgrad the call autograd
makes; stride-1 results checked against PyTorch's, PyTorch's oneDNN kernel recorded per case), and so is the
timing: each library in its own block of back-to-back calls after a pause, the whole list `rounds` times, the
median of all samples per case.

Not part of issue 2's target (ResNet-50 and SegNet: numpy_vs_pytorch.py); it tracks the NumPy backend's
furthest-behind ops. Each run is recorded under its label (OpenBLAS kernels, threads, the commit measured), so a
before/after pair of commits sits side by side.

Usage: [OPENBLAS_NUM_THREADS=1] python benchmarks/numpy_depthwise.py [--n 8] [--repeats 5] [--rounds 2]
       [--only NAME,...] [--no-write]
Writes benchmarks/results/cpu_depthwise.{json,md}. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import gpuconv as gc  # noqa: E402
from gpuconv.bench.layers import MOBILENET_DW, ConvLayer  # noqa: E402
from numpy_vs_pytorch import conv_cases, machine, pair  # noqa: E402

RESULTS = HERE / "results"

EXTRA = (
    ConvLayer("few_channels_8", (112, 112, 8), (3, 3, 1, 8), 1, "SAME"),
    ConvLayer("multiplier_2", (56, 56, 128), (3, 3, 1, 256), 1, "SAME"),
)


def cases(n: int, only):
    """(layer, op, gpuconv call, torch call, torch kernels) per case: numpy_vs_pytorch.conv_cases over the
    depthwise layers (which checks stride-1 results against PyTorch's and that PyTorch ran oneDNN on
    channels-last memory)."""
    for name, op, _, ours, theirs, kernels in conv_cases(n, only, MOBILENET_DW + EXTRA):
        yield name, op, ours, theirs, kernels


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "gpuconv"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(runs: list) -> str:
    lines = ["# NumPy backend depthwise convolutions vs PyTorch (CPU)", "",
             "Written by `benchmarks/numpy_depthwise.py`; one section per recorded run (latest first). "
             "Ratio = PyTorch time / gpuconv time (> 1: gpuconv faster).", ""]
    for run in sorted(runs, key=lambda r: r["time"], reverse=True):
        m = run["machine"]
        lines += [f"## {run['label']}", "",
                  f"Run {run['time']}: commit {run['commit']}; {m['cpu']} ({m['cpu_count']} cores), numpy "
                  f"{m['numpy']} ({m['numpy_blas']}, OpenBLAS kernels {m['openblas_core']}), torch {m['torch']} "
                  f"({m['torch_threads']} threads), gpuconv worker pool {m['gpuconv_threads']} thread(s); N = "
                  f"{run['n']}, float32 NHWC / channels_last; median of {run['rounds']} rounds x {run['repeats']} "
                  f"calls. Load average before / after: {run['load'][0]} / {run['load'][1]}.", "",
                  "| layer | op | gpuconv ms | torch ms | ratio | PyTorch kernel |", "|---|---|---:|---:|---:|---|"]
        for c in run["cases"]:
            lines.append(f"| {c['layer']} | {c['op']} | {c['ours_ms']:.2f} | {c['torch_ms']:.2f} | "
                         f"{c['ratio']:.2f} | {c['kernel']} |")
        ratios = [c["ratio"] for c in run["cases"]]
        lines += ["", f"Median ratio {statistics.median(ratios):.2f}, minimum {min(ratios):.2f}, maximum "
                  f"{max(ratios):.2f} over {len(ratios)} cases.", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.2)
    ap.add_argument("--threads", type=int,
                    default=int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count()),
                    help="PyTorch's threads and gpuconv's worker pool (GPUCONV_NUM_THREADS unless set)")
    ap.add_argument("--only", default=None, help="comma-separated layer names")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    for name in ("n", "repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GPUCONV_NUM_THREADS", str(args.threads))
    import torch
    torch.set_num_threads(args.threads)
    gc.use_backend("numpy")
    only = set(args.only.split(",")) if args.only else None
    load_before = [round(v, 2) for v in os.getloadavg()]
    listed = list(cases(args.n, only))
    if not listed:
        print(f"no case matches --only {args.only}", file=sys.stderr)
        return 2
    samples = {(name, op): ([], []) for name, op, *_ in listed}
    for r in range(args.rounds):
        for name, op, ours, theirs, _ in listed:
            a, b = pair(ours, theirs, 1, args.repeats, args.pause)
            samples[name, op][0].extend(a)
            samples[name, op][1].extend(b)
            print(f"round {r + 1}/{args.rounds} {name} {op}: gpuconv {statistics.median(a):.2f} ms, torch "
                  f"{statistics.median(b):.2f} ms", flush=True)
    results = []
    for name, op, _, _, kernel in listed:
        a, b = (statistics.median(v) for v in samples[name, op])
        results.append({"layer": name, "op": op, "ours_ms": a, "torch_ms": b, "ratio": b / a, "kernel": kernel})
    info = machine()
    run = {"label": f"OpenBLAS {info['openblas_core']}, {args.threads} thread(s), commit {commit()}",
           "time": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit(), "n": args.n,
           "rounds": args.rounds, "repeats": args.repeats, "machine": info,
           "load": [load_before, [round(v, 2) for v in os.getloadavg()]], "cases": results}
    print(markdown([run]))
    if args.no_write or only:
        return 0
    path = RESULTS / "cpu_depthwise.json"
    runs = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["label"] != run["label"]]
    runs.append(run)
    path.write_text(json.dumps(runs, indent=1) + "\n")
    (RESULTS / "cpu_depthwise.md").write_text(markdown(runs))
    print(f"wrote {path} and cpu_depthwise.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
