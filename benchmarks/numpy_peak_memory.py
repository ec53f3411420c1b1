"""Peak resident memory of the NumPy backend on large layers, against the size of the op's own tensors.

Each op runs in a fresh subprocess; its peak RSS (Linux VmHWM, reset just before the call through
/proc/self/clear_refs) minus the RSS right before the call is the memory the call itself used. "tensors" is
inputs + output; "scratch" = used - output (the output is new memory, inputs already existed). A bounded
backend keeps scratch at a few tens of MiB whatever the layer size, while an unbounded im2col would need T*R*S
times the input.

Usage: python benchmarks/numpy_peak_memory.py [--out benchmarks/results/numpy_peak_memory.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

CASES = {
    # name: (op, input shape, filter shape or pool window, strides)
    "resnet_res2_3x3_64_N32_fprop": ("fprop", (32, 56, 56, 64), (3, 3, 64, 64), 1),
    "resnet_res2_3x3_64_N32_dgrad": ("dgrad", (32, 56, 56, 64), (3, 3, 64, 64), 1),
    "resnet_res2_3x3_64_N32_wgrad": ("wgrad", (32, 56, 56, 64), (3, 3, 64, 64), 1),
    "resnet_res3_3x3_128s2_N32_dgrad": ("dgrad", (32, 56, 56, 128), (3, 3, 128, 128), 2),
    "unet3d_enc1b_N2_fprop": ("fprop", (2, 64, 64, 64, 32), (3, 3, 3, 32, 64), 1),
    "segnet_pool1_N8_argmax": ("pool_argmax", (8, 360, 480, 64), 2, 2),
    "segnet_pool1_N8_unpool": ("unpool", (8, 360, 480, 64), 2, 2),
}

CHILD = r"""
import json, sys
import numpy as np
import gpuconv as gc
op, xs, ws, s = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal(xs, dtype=np.float32)
def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
conv = gc.conv3d if len(xs) == 5 else gc.conv2d
with gc.use_backend("numpy"):
    if op in ("fprop", "dgrad", "wgrad"):
        w = rng.standard_normal(ws, dtype=np.float32)
        y = conv(x, w, s, "SAME")
        args = {"fprop": (x, w), "dgrad": (y, w), "wgrad": (x, y)}[op]
        call = {"fprop": lambda: conv(x, w, s, "SAME"),
                "dgrad": lambda: (gc.conv3d_backprop_input if len(xs) == 5 else gc.conv2d_backprop_input)(
                    xs, w, y, s, "SAME"),
                "wgrad": lambda: (gc.conv3d_backprop_filter if len(xs) == 5 else gc.conv2d_backprop_filter)(
                    x, ws, y, s, "SAME")}[op]
    else:
        p, a = gc.max_pool_with_argmax(x, ws, s, "VALID")
        args = (x,) if op == "pool_argmax" else (p, a)
        call = (lambda: gc.max_pool_with_argmax(x, ws, s, "VALID")) if op == "pool_argmax" else \
               (lambda: gc.max_unpool(p, a, xs))
    with open("/proc/self/clear_refs", "w") as f:   # Linux: reset the peak-RSS counter (VmHWM) to now
        f.write("5")
    before = status_kib("VmRSS:")
    out = call()
    peak = status_kib("VmHWM:")
    outs = out if isinstance(out, tuple) else (out,)
    print(json.dumps({"before_kib": before, "peak_kib": peak, "inputs_bytes": sum(a.nbytes for a in args),
                      "output_bytes": sum(o.nbytes for o in outs)}))
"""


def measure(op, xs, ws, s) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([op, xs, ws, s])], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/numpy_peak_memory.md"))
    args = ap.parse_args()
    mib = 2**20
    rows = []
    for name, (op, xs, ws, s) in CASES.items():
        print(f"{name} ...", file=sys.stderr, flush=True)
        r = measure(op, xs, ws, s)
        used = (r["peak_kib"] - r["before_kib"]) * 1024      # the call's own peak growth
        scratch = used - r["output_bytes"]
        rows.append((name, r["inputs_bytes"] / mib, r["output_bytes"] / mib, used / mib, scratch / mib))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = ["# NumPy backend: peak memory per call", "",
             f"Machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}. "
             "Written by benchmarks/numpy_peak_memory.py: each op in a fresh process, peak RSS (VmHWM, reset "
             "just before the call) minus RSS before it.", "",
             "| case | inputs MiB | output MiB | peak growth MiB | scratch (growth - output) MiB |",
             "|---|---:|---:|---:|---:|"]
    for name, i, o, u, sc in rows:
        lines.append(f"| {name} | {i:.0f} | {o:.0f} | {u:.0f} | {max(sc, 0):.0f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
