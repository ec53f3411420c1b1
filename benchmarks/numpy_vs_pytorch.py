"""Benchmark: gpuconv's NumPy backend against PyTorch on the CPU, same machine, same run, same thread count.

Cases: every ResNet-50 v1.5 conv layer of gpuconv.bench.layers.RESNET50 (fprop, dgrad, wgrad; float32, NHWC /
channels_last) and the SegNet pooling ladder (2x2/2 max_pool_with_argmax and max_unpool of post-ReLU
activations, as SegNet pools them; the runs before 2026-11-22 11:00 pooled standard-normal inputs, which hid
what zero maxima then cost: SegNet pool3's argmax pooling took 15.2 ms on post-ReLU data and 6.2 ms on the
normal data timed). Peers:
torch.nn.functional.conv2d on channels_last tensors and, for dgrad and wgrad, the call autograd makes
(torch.ops.aten.convolution_backward with the layer's input tensor), F.max_pool2d(return_indices=True) and
F.max_unpool2d.

The conv peer is PyTorch's oneDNN convolution on channels-last memory (issue 2's yardstick), and each case checks
that it is: one call per case runs with oneDNN's verbose mode on, and a case whose PyTorch call executed no
channels-last (acdb) oneDNN convolution stops the run; the kernels are recorded with the results. On one thread
PyTorch leaves oneDNN for unstrided 1x1 convolutions of a batch below 16 (its native im2col path, 2-5x slower:
gpuconv.bench.peers.torch_cpu_dilation), so 1x1 layers run with dilation 2, which changes nothing for a 1x1 filter.
(torch.nn.grad.conv2d_input, used here before 2026-11-21, passes an expanded dummy input, which also leaves the
channels-last path for dilated 1x1 filters.)

Timing: per case, each library in its own block: `warmup` untimed calls, then `repeats` back-to-back timed
calls; the median is reported (the minimum too: on a shared machine it is the least disturbed call). Calls are
back to back because waking idle worker threads costs time (a torch wgrad measured 3 ms back to back, 30 ms
with 50 ms pauses); a pause before each block lets the other library's spinning threads (OpenBLAS pthreads,
OpenMP) go idle first. The whole case list runs `rounds` times (default 3) and each case's samples from all rounds
are pooled before the median: both libraries' times drift on a shared machine (PyTorch's SegNet pooling took
1.0 ms in one pass over the list and 6.6 ms in another, its per-call page faults depending on the allocator's
history), and rounds spread every case over that drift instead of sampling it once.
Ratio = torch time / gpuconv time (gpuconv's throughput relative to PyTorch: > 1 means gpuconv is faster).

Padding: TF's SAME pads stride-2 layers asymmetrically (the odd cell after); PyTorch's conv2d takes symmetric
padding only, so torch runs with k//2 on both sides, which gives the same output size and the same work.
Stride-1 fprop outputs are checked to agree before timing.

numpy's OpenBLAS picks its kernels when it loads, from the CPU or from OPENBLAS_CORETYPE; the project's CPU box
sets OPENBLAS_CORETYPE=Haswell (AVX2 kernels) in its environment, while left alone OpenBLAS picks SkylakeX
(AVX-512) there. Each configuration is recorded as its own run, labelled by the variable, the thread counts
and any non-default batch size (run_label); a new run replaces the recorded one with the same label, and a
run over some layers (--only) is printed, not written.

Threads: both libraries use all cores by default. With OPENBLAS_NUM_THREADS=1 both run single-threaded, which on
a shared machine is far less exposed to one worker thread waiting for the scheduler (2-thread times there come
in multiples of the scheduler tick, e.g. 8.0, 16.0, 24.0 ms). --threads (default: OPENBLAS_NUM_THREADS, else all
cores) sets torch's threads and gpuconv's worker pool (GPUCONV_NUM_THREADS, unless already set); numpy's BLAS
threads follow OPENBLAS_NUM_THREADS.

Usage: [env -u OPENBLAS_CORETYPE] [OPENBLAS_NUM_THREADS=1] python benchmarks/numpy_vs_pytorch.py [--n 8]
       [--seg-n 4] [--repeats 7] [--rounds 3] [--only NAME,...]
Writes benchmarks/results/cpu_numpy_vs_pytorch.{json,md}. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpuconv as gc  # noqa: E402
from gpuconv.bench.layers import RESNET50, SEGNET  # noqa: E402
from gpuconv.bench.peers import channels_last_onednn, torch_cpu_dilation, torch_onednn_convolutions  # noqa: E402
from gpuconv.numpy_backend import _parallel  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def openblas_core() -> str:
    """The kernel set numpy's OpenBLAS uses (e.g. 'Haswell' = AVX2, 'SkylakeX' = AVX-512)."""
    return _parallel.blas_kernels() or "unknown"


def cpu_identity() -> dict:
    """The first CPU's model name, family, model, stepping, clock and AVX-512 flag from /proc/cpuinfo: the shared
    box's host changes between sessions (its model name, "AMD EPYC", does not tell them apart)."""
    fields = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model", "stepping": "cpu_stepping",
              "cpu MHz": "cpu_mhz"}
    found = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")          # at the first colon: model names may hold colons
        key, value = key.strip(), value.strip()
        if key in fields:
            found.setdefault(fields[key], value)
        elif key == "flags":
            found.setdefault("avx512", "avx512f" in value.split())
    return {"cpu": "unknown", **found}


def cpu_text(info: dict) -> str:
    """The CPU a run used, e.g. 'AMD EPYC (family 25, model 17, 2596 MHz, AVX-512)'; runs recorded before the
    family and model were (2026-11-23) say so."""
    if "cpu_family" not in info:
        return f"{info['cpu']} (family and model not recorded)"
    parts = [f"family {info['cpu_family']}", f"model {info.get('cpu_model', '?')}"]
    if info.get("cpu_mhz"):
        parts.append(f"{float(info['cpu_mhz']):.0f} MHz")
    if "avx512" in info:
        parts.append("AVX-512" if info["avx512"] else "no AVX-512")
    return f"{info['cpu']} ({', '.join(parts)})"


def machine() -> dict:
    """CPU identity, cores, load, library versions and BLAS of this run."""
    import torch
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        pass
    return {
        **cpu_identity(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "numpy_blas": blas,
        "openblas_core": openblas_core(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "gpuconv_threads": _parallel.num_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
    }


def times_ms(fn, warmup: int, repeats: int) -> list:
    """Per-call times of `repeats` back-to-back calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def pair(ours, theirs, warmup: int, repeats: int, pause: float) -> tuple[list, list]:
    """Each library timed in its own block of back-to-back calls (its steady state), with a pause before each
    block so that the other library's worker threads, which spin for a while after a call, have gone idle."""
    time.sleep(pause)
    a = times_ms(ours, warmup, repeats)
    time.sleep(pause)
    b = times_ms(theirs, warmup, repeats)
    return a, b


def conv_cases(n: int, only, layers=None):
    """(layer, op, flops, gpuconv call, PyTorch call, oneDNN kernels) for fprop, dgrad and wgrad of each layer
    (default RESNET50; grouped layers, such as numpy_depthwise.py's, run with their groups on both sides)."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    for layer in RESNET50 if layers is None else layers:
        if only and layer.name not in only:
            continue
        x = rng.standard_normal(layer.with_batch(n), dtype=np.float32)
        w = rng.standard_normal(layer.filter_shape, dtype=np.float32)
        s, pad, k = layer.strides, layer.padding, layer.filter_shape[0]
        g = layer.input_shape[-1] // layer.filter_shape[-2]            # TF's filter (R, S, C/G, K)
        y = gc.conv2d(x, w, s, pad)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)            # NCHW view of NHWC memory = channels_last
        dyt = torch.from_numpy(dy).permute(0, 3, 1, 2)
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        tp, d = k // 2, torch_cpu_dilation((k, k))
        cb = torch.ops.aten.convolution_backward
        # Arguments are bound now (partial), not looked up when the case runs.
        peers = {"fprop": partial(F.conv2d, xt, wt, stride=s, padding=tp, dilation=d, groups=g),
                 "dgrad": partial(cb, dyt, xt, wt, None, [s, s], [tp, tp], [d, d], False, [0, 0], g,
                                  (True, False, False)),
                 "wgrad": partial(cb, dyt, xt, wt, None, [s, s], [tp, tp], [d, d], False, [0, 0], g,
                                  (False, True, False))}
        ours = {"fprop": partial(gc.conv2d, x, w, s, pad),
                "dgrad": partial(gc.conv2d_backprop_input, x.shape, w, dy, s, pad),
                "wgrad": partial(gc.conv2d_backprop_filter, x, w.shape, dy, s, pad)}
        yt = peers["fprop"]()
        if tuple(yt.shape) != (y.shape[0], y.shape[3], y.shape[1], y.shape[2]):
            raise RuntimeError(f"{layer.name}: torch output {tuple(yt.shape)} vs gpuconv {y.shape}")
        if s == 1:
            # Same padding on both sides: the same numbers (stride-2 SAME pads TF's odd cell after, torch both).
            torch_as_tf = {"fprop": yt.permute(0, 2, 3, 1), "dgrad": peers["dgrad"]()[0].permute(0, 2, 3, 1),
                           "wgrad": peers["wgrad"]()[1].permute(2, 3, 1, 0)}
            for op, want in torch_as_tf.items():
                got = y if op == "fprop" else ours[op]()
                err = float(np.abs(want.numpy() - got).max())
                if not err <= 1e-3 * float(np.abs(got).max()):      # a NaN on either side fails too
                    raise RuntimeError(f"{layer.name}: {op} differs from torch by {err}")
        flops = 2 * int(np.prod(y.shape)) * k * k * w.shape[2]
        for op in ("fprop", "dgrad", "wgrad"):
            kernels = torch_onednn_convolutions(torch, peers[op])
            if not channels_last_onednn(kernels):
                raise RuntimeError(f"{layer.name} {op}: PyTorch ran no channels-last oneDNN convolution "
                                   f"(oneDNN reported {kernels or 'nothing'}); the peer must be oneDNN")
            yield layer.name, op, flops, ours[op], peers[op], "; ".join(kernels)


def pool_cases(n: int, only):
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(1)
    for layer in SEGNET:
        if only and layer.name not in only:
            continue
        # Post-ReLU activations, what SegNet pools: half the cells and about 1/16 of the maxima are zero.
        x = np.maximum(rng.standard_normal(layer.with_batch(n), dtype=np.float32), np.float32(0))
        k, s, pad = layer.ksize, layer.strides, layer.padding
        v, a = gc.max_pool_with_argmax(x, k, s, pad)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        vt, it = F.max_pool2d(xt, k, s, return_indices=True)
        if not np.array_equal(vt.permute(0, 2, 3, 1).numpy(), v):
            raise RuntimeError(f"{layer.name}: pooled values differ from torch")
        size = tuple(x.shape[1:3])
        yield layer.name, "max_pool_with_argmax", 0, partial(gc.max_pool_with_argmax, x, k, s, pad), \
            partial(F.max_pool2d, xt, k, s, return_indices=True), "aten max_pool2d_with_indices"
        yield layer.name, "max_unpool", 0, partial(gc.max_unpool, v, a, x.shape), \
            partial(F.max_unpool2d, vt, it, k, s, output_size=size), "aten max_unpool2d"


DEFAULT_N, DEFAULT_SEG_N = 8, 4


def run_label(info: dict, cfg: dict | None = None) -> str:
    """The configuration a run stands for; a run replaces the recorded one with the same label. Names the CPU
    (where recorded), numpy's BLAS threads where they differ from torch's, and batch sizes other than the
    defaults."""
    env = info.get("OPENBLAS_CORETYPE")
    threads = info["torch_threads"]
    label = (f"OPENBLAS_CORETYPE={env}" if env else "OPENBLAS_CORETYPE unset") + \
        f", {threads} thread{'s' if threads > 1 else ''}"
    blas = info.get("OPENBLAS_NUM_THREADS") or str(info["cpu_count"])
    if blas != str(threads):
        label += f" (numpy's BLAS: {blas})"
    if cfg and (cfg["n"], cfg["seg_n"]) != (DEFAULT_N, DEFAULT_SEG_N):
        label += f", N={cfg['n']}, SegNet N={cfg['seg_n']}"
    if "cpu_family" in info:
        label += f", {info['cpu']} family {info['cpu_family']} model {info.get('cpu_model', '?')}"
    return label


# Issue 2 item 4: median ratio >= 0.7 over all cases and no case below 0.3.
TARGET_MEDIAN, TARGET_MIN = 0.7, 0.3


def describe(run: dict) -> str:
    """Exactly which configuration a run is: machine, thread counts of both libraries, OpenBLAS kernels."""
    info = run["machine"]
    threads = info["torch_threads"]
    env = info.get("OPENBLAS_CORETYPE")
    numpy_threads = info.get("OPENBLAS_NUM_THREADS") or f"unset, all {info['cpu_count']} cores"
    pool = info.get("gpuconv_threads")
    pool_text = f"gpuconv worker pool {pool} thread{'s' if pool != 1 else ''} (GPUCONV_NUM_THREADS)" if pool \
        else "gpuconv single-threaded apart from BLAS (before the worker pool)"
    return (f"{cpu_text(info)} ({info['cpu_count']} cores, shared VM); numpy {info['numpy']} with "
            f"{info['numpy_blas']}, OpenBLAS kernels {info['openblas_core']} "
            f"(OPENBLAS_CORETYPE={env or 'unset'}), OPENBLAS_NUM_THREADS={numpy_threads}; {pool_text}; "
            f"torch {info['torch']}, torch.set_num_threads({threads}); python {info['python']}")


def _ordered(runs: list) -> list:
    """Newest machine first (the CPU of the latest run), then one thread before more, then OpenBLAS's own kernel
    choice (OPENBLAS_CORETYPE unset) before a forced one, then by label."""
    latest: dict = {}
    for run in runs:
        key = cpu_text(run["machine"])
        latest[key] = max(latest.get(key, ""), run["machine"].get("date", ""))
    rank = {cpu: i for i, cpu in enumerate(sorted(latest, key=lambda cpu: (latest[cpu], cpu), reverse=True))}
    return sorted(runs, key=lambda run: (rank[cpu_text(run["machine"])], run["machine"]["torch_threads"] != 1,
                                         run["machine"].get("OPENBLAS_CORETYPE") is not None, run["label"]))


def _sampling(cfg: dict) -> str:
    rounds = cfg.get("rounds", 1)
    text = (f"Median of {cfg['repeats']} back-to-back calls after {cfg['warmup']} warm-up call(s), each library in "
            "its own block")
    if rounds > 1:
        text = (f"The whole case list run {rounds} times in a row; per case, the median of all "
                f"{rounds} x {cfg['repeats']} calls ({cfg['repeats']} back-to-back calls after {cfg['warmup']} "
                "warm-up call(s) per round, each library in its own block)")
    return text + "."


def markdown(runs: list) -> str:
    """All recorded runs (one per OpenBLAS configuration), each with its exact configuration, table and summary."""
    runs = _ordered(runs)
    lines = ["# gpuconv NumPy backend vs PyTorch CPU", "",
             "Ratio = torch time / gpuconv time (gpuconv's throughput relative to PyTorch; > 1: gpuconv faster). "
             "Written by benchmarks/numpy_vs_pytorch.py; one section per configuration (numpy's OpenBLAS kernel "
             "set, thread count), each header naming it exactly. Target (issue 2 item 4): median ratio >= "
             f"{TARGET_MEDIAN} and no case below {TARGET_MIN}.", "",
             "The conv peer is PyTorch's oneDNN convolution on channels-last memory in every case: each case ran "
             "its PyTorch call once with oneDNN's verbose mode on and the run stops unless a channels-last "
             "oneDNN convolution executed; the 'PyTorch kernel' column names it. 1x1 layers run with dilation 2 "
             "(no change for a 1x1 filter): on one thread PyTorch otherwise leaves oneDNN for them (its native "
             "im2col path, 2-5x slower), which is what the runs before 2026-11-21 21:00 timed for 18 of the 52 "
             "cases. dgrad and wgrad are the calls autograd makes (aten convolution_backward).", "",
             "Why the kernel set and the CPU matter: the NumPy backend's convolutions are GEMMs in numpy's "
             "OpenBLAS. On the CPU of the runs up to 2026-11-22 (family and model not recorded) OpenBLAS's SGEMM "
             "ran at 93-122 GF/s on one thread with its Haswell (AVX2) kernels and at 182-234 GF/s with its "
             "SkylakeX (AVX-512) kernels (the 1x1 layers' GEMM shapes and a 4096x4096x1024 one), and oneDNN's 1x1 "
             "convolution at about 230 GF/s, so with the Haswell kernels the 1x1 layers' fprop and dgrad stayed "
             "near half of PyTorch's speed. On the AMD EPYC family 25 model 17 of the runs from 2026-11-23 "
             "(Zen 4, whose AVX-512 units are 256 bits wide) both kernel sets reach 96-100 GF/s on the "
             "4096x4096x1024 GEMM, the Haswell kernels 36-43 GF/s and the SkylakeX kernels 62-82 GF/s on the "
             "1x1 layers' shapes, and oneDNN's 1x1 convolution about 89 GF/s (8x56x56x64 -> 64).", "",
             "Reading these numbers: the box is a 2-core VM shared with other jobs (each section gives the load "
             "average). Under load, a 2-thread call often waits for its second worker thread to be scheduled, so "
             "times cluster at multiples of the scheduler tick (8.0, 16.0, 24.0 ms); on a quiet box PyTorch's "
             "2-thread times are about half its 1-thread ones. The VM's second core also wakes slowly after an "
             "idle pause such as the 0.3 s before each block: the NumPy backend's 2-worker SegNet pool4 argmax "
             "pooling took 3.4-5.7 ms in the calls after a 0.3-1 s sleep and 2.2-2.5 ms in long back-to-back "
             "series (same process, 2026-11-21), so its 2-thread pooling times here are mostly wake-up time. "
             "The NumPy backend spreads independent output chunks "
             "(pooling boxes, column blocks with their GEMMs, scatter slices) over its worker pool "
             "(GPUCONV_NUM_THREADS, set to the run's thread count), and its GEMMs use OpenBLAS's threads as well. "
             "Convs hand their boxes to the pool only when BLAS is single-threaded (1-thread runs: OpenBLAS 1 thread, "
             "pool 1 worker, so nothing changes there); with OpenBLAS on 2 threads they keep serial boxes and "
             "2-thread GEMMs, because both kinds of threads at once measured slower (14.3 ms against 12.8 ms for "
             "the 8x56x56x64 3x3 fprop). PyTorch's own times for the SegNet layers vary a lot from run to run "
             "(pool2 max_pool_with_argmax at one thread: 5 ms in one run, 28 ms in another), which moves the "
             "median ratio by several hundredths between otherwise identical runs. The 1-thread runs "
             "(median close to minimum) are the ones to compare implementations by; sections go newest CPU "
             "first, then one thread first, then OpenBLAS's own kernel choice (OPENBLAS_CORETYPE unset: SkylakeX "
             "on these AVX-512 CPUs) before the forced Haswell kernels, which the box's environment set up to "
             "2026-11-22 and no longer sets; the target holds or not per configuration (Summary). PyTorch's CPU "
             "kernels (oneDNN) pick AVX-512 either way.", "",
             "## Summary", "",
             "| configuration | CPU | run | median ratio | minimum (case) | geometric mean | target met |",
             "|---|---|---|---:|---:|---:|---|"]
    for run in runs:
        s = run["summary"]
        met = "yes" if s["median_ratio"] >= TARGET_MEDIAN and s["min_ratio"] >= TARGET_MIN else "no"
        lines.append(f"| {run['label']} (OpenBLAS {run['machine']['openblas_core']} kernels) | "
                     f"{cpu_text(run['machine'])} | {run['machine']['date']} | {s['median_ratio']:.2f} | "
                     f"{s['min_ratio']:.3f} ({s['min_case']}) | {s['geomean_ratio']:.2f} | {met} |")
    lines.append("")
    for run in runs:
        info, cfg, summary, rows = run["machine"], run["config"], run["summary"], run["results"]
        lines += [f"## {run['label']} (OpenBLAS kernels: {info['openblas_core']})", "",
                  f"Configuration: {describe(run)}.",
                  f"Run {info['date']}. Load average before / after: {info['load_before']} / {info['load_after']} "
                  "(shared machine: other jobs ran at the same time).",
                  f"ResNet-50 convs at N={cfg['n']} float32 NHWC/channels_last; SegNet pooling of post-ReLU "
                  f"activations at N={cfg['seg_n']}. "
                  f"{_sampling(cfg)}", "",
                  "| layer | op | gpuconv ms | torch ms | ratio (torch/gpuconv) | ratio of minima | gpuconv GF/s "
                  "| PyTorch kernel |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            gf = f"{r['flops'] / r['gpuconv_ms'] / 1e6:.0f}" if r["flops"] else ""
            kernel = r.get("torch_kernel", "not recorded (before the oneDNN check)")
            lines.append(f"| {r['layer']} | {r['op']} | {r['gpuconv_ms']:.1f} | {r['torch_ms']:.1f} | "
                         f"{r['ratio']:.2f} | {r['min_ratio']:.2f} | {gf} | {kernel} |")
        lines += ["", f"Median ratio {summary['median_ratio']:.2f}, minimum {summary['min_ratio']:.3f} "
                  f"({summary['min_case']}), geometric mean {summary['geomean_ratio']:.2f} over "
                  f"{summary['cases']} cases; median of the per-case ratios of minimum times "
                  f"{summary['median_ratio_of_minima']:.2f}. Configuration: {run['label']}, OpenBLAS "
                  f"{info['openblas_core']} kernels, {cpu_text(info)}.",
                  f"Cases below {TARGET_MIN}: "
                  + (", ".join(f"{r['layer']} {r['op']} {r['ratio']:.3f}" for r in rows if r["ratio"] < TARGET_MIN)
                     or "none") + ".", ""]
    return "\n".join(lines)


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum, else an error that gives the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked before any work: counts positive, --only names known layers."""
    positive = _at_least(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=positive, default=DEFAULT_N, help="batch of the ResNet-50 convs")
    ap.add_argument("--seg-n", type=positive, default=DEFAULT_SEG_N, help="batch of the SegNet pooling layers")
    ap.add_argument("--repeats", type=positive, default=7)
    ap.add_argument("--rounds", type=positive, default=3,
                    help="times the whole case list is run; each case's samples from all rounds are pooled")
    ap.add_argument("--warmup", type=_at_least(0), default=1)
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of pause before each library's block")
    # A string default goes through `type` as well: a malformed OPENBLAS_NUM_THREADS is an error, no traceback.
    ap.add_argument("--threads", type=positive, default=os.environ.get("OPENBLAS_NUM_THREADS") or str(os.cpu_count()),
                    help="torch threads and, unless GPUCONV_NUM_THREADS is set, gpuconv's worker pool (numpy's "
                         "BLAS follows OPENBLAS_NUM_THREADS); default OPENBLAS_NUM_THREADS, else all cores")
    ap.add_argument("--only", default=None,
                    help="comma-separated layer names (default: all); such a run is printed, not written")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write results/")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the recorded JSON")
    args = ap.parse_args(argv)
    if not 0 <= args.pause < float("inf"):
        ap.error(f"--pause: expected a finite number of seconds >= 0, got {args.pause}")
    known = [layer.name for layer in RESNET50 + SEGNET]
    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    if args.only is not None and not only:
        ap.error(f"--only: expected comma-separated layer names, got {args.only!r}; known: {', '.join(known)}")
    unknown = [name for name in only if name not in known]
    if unknown:
        ap.error(f"--only: unknown layer {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    args.only = set(only)                       # empty: every layer
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        runs = json.loads((RESULTS / "cpu_numpy_vs_pytorch.json").read_text())["runs"]
        (RESULTS / "cpu_numpy_vs_pytorch.md").write_text(markdown(runs))
        return 0
    import torch
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GPUCONV_NUM_THREADS", str(args.threads))
    _parallel.set_num_threads(None)             # (re)read GPUCONV_NUM_THREADS
    info = machine()
    info["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    info["load_before"] = [round(v, 2) for v in os.getloadavg()]
    cfg = {"n": args.n, "seg_n": args.seg_n, "repeats": args.repeats, "warmup": args.warmup, "rounds": args.rounds,
           "dtype": "float32"}

    samples: dict = {}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1} of {args.rounds}\n"
              "| layer | op | gpuconv ms | torch ms | ratio (torch/gpuconv) | ratio of minima |\n"
              "|---|---|---:|---:|---:|---:|", flush=True)
        # Lazily: one layer's arrays at a time.
        cases = itertools.chain(conv_cases(args.n, args.only), pool_cases(args.seg_n, args.only))
        for name, op, flops, ours, theirs, kernel in cases:
            ta, tb = pair(ours, theirs, args.warmup, args.repeats, args.pause)
            entry = samples.setdefault((name, op), {"flops": flops, "kernel": kernel, "ours": [], "theirs": []})
            entry["ours"] += ta
            entry["theirs"] += tb
            a, b = statistics.median(ta), statistics.median(tb)
            print(f"| {name} | {op} | {a:.1f} | {b:.1f} | {b / a:.2f} | {min(tb) / min(ta):.2f} |", flush=True)
    rows = []
    for (name, op), e in samples.items():
        ta, tb = e["ours"], e["theirs"]
        a, b = statistics.median(ta), statistics.median(tb)
        rows.append({"layer": name, "op": op, "flops": e["flops"], "torch_kernel": e["kernel"],
                     "gpuconv_ms": a, "torch_ms": b, "ratio": b / a,
                     "gpuconv_min_ms": min(ta), "torch_min_ms": min(tb), "min_ratio": min(tb) / min(ta),
                     "gpuconv_all_ms": ta, "torch_all_ms": tb})
    info["load_after"] = [round(v, 2) for v in os.getloadavg()]
    ratios = [r["ratio"] for r in rows]
    worst = min(rows, key=lambda r: r["ratio"])
    summary = {"cases": len(rows), "median_ratio": statistics.median(ratios), "min_ratio": worst["ratio"],
               "min_case": f"{worst['layer']} {worst['op']}",
               "geomean_ratio": float(np.exp(np.mean(np.log(ratios)))),
               "median_ratio_of_minima": statistics.median(r["min_ratio"] for r in rows)}
    print(f"\nmedian ratio {summary['median_ratio']:.2f}, min {summary['min_ratio']:.3f} ({summary['min_case']}), "
          f"geomean {summary['geomean_ratio']:.2f}; load {info['load_before']} -> {info['load_after']}")
    if args.only and not args.no_write:
        print("--only: a run over some layers is not written to results/ (its median is not the table's)")
    elif not args.no_write:
        # One run per configuration (run_label): this run replaces an earlier one with the same label.
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "cpu_numpy_vs_pytorch.json"
        runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
        run = {"label": run_label(info, cfg), "machine": info, "config": cfg, "summary": summary, "results": rows}
        runs = [r for r in runs if r.get("label") != run["label"]] + [run]
        path.write_text(json.dumps({"runs": runs}, indent=1))
        (RESULTS / "cpu_numpy_vs_pytorch.md").write_text(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
