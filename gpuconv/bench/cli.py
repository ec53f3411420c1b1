"""`python -m gpuconv bench`: time gpuconv and its peers on named layer sets; write JSON, Markdown and a PNG.

On a GPU (backend cuda): CUDA events after a timed warm-up, inputs rotated through enough copies to exceed
twice the L2 cache, medians of many repetitions; peers cuDNN through PyTorch (TF32 off unless --tf32) and an
im2col + cuBLAS baseline in CuPy. On a machine without a GPU (backend numpy): perf_counter medians after
warm-up; peers PyTorch and TensorFlow on the CPU. Progress goes to stderr, the report paths to stdout.

On a GPU the device's copy bandwidth is measured once per run (a device-to-device copy >= 4x L2, the same
timing loop) and every pooling row gets its % of it next to GB/s and % of the datasheet peak; the report states
the pooling target (>= 80% of it on tensors >= 64 MiB) and which rows meet it.

A full GPU run takes longer than many batch slots allow, so the JSON and Markdown reports are rewritten after
every case ("complete": false until the end), and Ctrl-C or SIGTERM (what `timeout` sends) ends the run with a
final report of what was measured (exit 130 / 143). Without --name the file stem is <date>_<device>, with the
time appended when a report of that stem already exists, so that a run split over several commands keeps
every part.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import math
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import metrics, report, timing
from .cases import ALL_OPS, DTYPES, Case, build_cases
from .layers import LAYER_SETS
from ..precision import FLOAT32_PRECISIONS
from .peers import PEER_NAMES, GpuconvImpl, Unsupported, default_peers, peers_by_name

# (warmup calls, warmup seconds, timed-loop budget seconds, min reps, max reps) per mode and device
TIMING = {
    ("quick", "cpu"): (3, 0.0, 0.05, 3, 20),
    ("quick", "gpu"): (3, 0.05, 0.05, 10, 200),
    ("full", "cpu"): (3, 0.2, 1.0, 5, 200),
    ("full", "gpu"): (10, 1.0, 0.5, 50, 2000),
}


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _gflops(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of GFLOP/s, got {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpuconv bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small layers (the 'quick' set unless --layers is given), few repetitions")
    p.add_argument("--ops", type=_csv, default=None, help=f"comma list from: {', '.join(ALL_OPS)} (default all)")
    p.add_argument("--layers", type=_csv, default=None,
                   help=f"layer sets: {', '.join(LAYER_SETS)} (default: resnet50,unet3d,segnet; quick with --quick)")
    p.add_argument("--match", default=None, help="only layers whose name contains this text")
    p.add_argument("--dtypes", type=_csv, default=["float32"],
                   help=f"comma list from: {', '.join(DTYPES)} (default float32)")
    p.add_argument("--batch", type=int, default=None, help="batch size of 2-D layers (default: 32 on a GPU, 1 "
                                                           "on the CPU; 8 and 1 with --quick)")
    p.add_argument("--batch3d", type=int, default=None, help="batch size of 3-D layers (default: 2 on a GPU, "
                                                             "1 on the CPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "cuda", "emulator"),
                   help="gpuconv backend to time (auto: cuda when a GPU is available, else numpy)")
    p.add_argument("--peers", default="auto",
                   help=f"'auto', 'none' or a comma list from: {', '.join(PEER_NAMES)}")
    p.add_argument("--tf32", action="store_true", help="let the peers use TF32 for float32 (stated in the report)")
    p.add_argument("--precision", choices=FLOAT32_PRECISIONS, default=None,
                   help="gpuconv's float32 precision (default: GPUCONV_FLOAT32_PRECISION, else ieee); tf32 / 3xtf32 "
                        "run float32 fprop / dgrad / wgrad / transpose on tensor cores on sm_80+ (pair with --tf32 for "
                        "the peers)")
    p.add_argument("--cpu-peak-gflops", type=_gflops, default=None,
                   help="the CPU's peak, if you know it, for '%% of peak' on the CPU (omitted otherwise)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the reports")
    p.add_argument("--name", default=None, help="file stem (default <date>_<device>)")
    args = p.parse_args(argv)
    for op in args.ops or []:
        if op not in ALL_OPS:
            p.error(f"--ops: unknown op {op!r}; known: {', '.join(ALL_OPS)}")
    for layer_set in args.layers or []:
        if layer_set not in LAYER_SETS:
            p.error(f"--layers: unknown set {layer_set!r}; known: {', '.join(LAYER_SETS)}")
    for dt in args.dtypes:
        if dt not in DTYPES:
            p.error(f"--dtypes: {dt!r} is not benchmarked; choose from {', '.join(DTYPES)} "
                    "(the benchmark has no bfloat16 cases)")
    for opt in ("batch", "batch3d"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            p.error(f"--{opt} must be >= 1")
    if args.name is not None and (args.name in ("", ".", "..") or Path(args.name).name != args.name
                                  or "\0" in args.name):
        p.error(f"--name: expected a file stem such as 2026-01-01_h100, without a folder (that is --out), "
                f"got {args.name!r}")
    return args


def _resolve_backend(requested: str) -> tuple[str | None, str]:
    from ..demo import backend_choice
    return backend_choice(requested)


def _l2_bytes() -> int | None:
    try:
        import cupy
        return int(cupy.cuda.Device().attributes["L2CacheSize"])
    except Exception:
        return None


def _free_gpu_memory() -> None:
    """Hand CuPy's and PyTorch's cached GPU blocks back between cases. Only libraries already imported can hold
    any, so none is imported here: a first `import torch` that fails part-way (it did under a test's stand-in
    CuPy module) leaves torch's C state half-built and the interpreter segfaults at exit."""
    try:
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    try:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def measure_copy_bandwidth(mode: str, l2: int | None) -> dict[str, Any]:
    """The GPU's copy bandwidth, measured once per run (timing.measure_copy_bandwidth with the run's timing
    settings): {'gbps', 'method', 'buffer_bytes', 'l2_factor', 'methods', ...} or {'gbps': None, 'reason'}."""
    calls = None
    try:
        import cupy
        free, _total = cupy.cuda.runtime.memGetInfo()
        nbytes, why = timing.copy_buffer_bytes(l2, free)
        if nbytes is None:
            return {"gbps": None, "reason": why}
        warmup, warmup_s, budget_s, min_reps, max_reps = TIMING[(mode, "gpu")]
        calls = timing.cupy_copy_calls(cupy, nbytes)
        result = timing.measure_copy_bandwidth(calls, nbytes, timing.CudaEventTimer(), warmup=warmup,
                                               warmup_s=warmup_s, budget_s=budget_s, min_reps=min_reps,
                                               max_reps=max_reps)
        return {**result, "buffer": why, "l2_factor": nbytes / l2 if l2 else None}
    except Exception as exc:  # no copy bandwidth is a missing column, not a failed run
        return {"gbps": None, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        calls = None
        _free_gpu_memory()


def default_batch(mode: str, kind: str) -> int:
    """Batch of 2-D layers without --batch: 32 on a GPU (8 with --quick), 1 on the CPU."""
    return {("quick", "gpu"): 8, ("full", "gpu"): 32}.get((mode, kind), 1)


def _device_info(kind: str) -> dict[str, Any]:
    from ..device_report import cpu_report, gpu_report
    if kind == "gpu":
        g = gpu_report()
        timed = _timed_gpu(g)
        name = timed.get("name")
        if name is None:
            try:
                import cupy
                props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
                name = props["name"].decode()
            except Exception:
                name = "unknown GPU"
        return {"kind": "gpu", "name": name, "gpu": g, "timed_gpu": timed, "cpu": cpu_report(),
                "l2_bytes": _l2_bytes()}
    c = cpu_report()
    return {"kind": "cpu", "name": c.get("model") or "unknown CPU", "cpu": c}


def _timed_gpu(report: dict[str, Any]) -> dict[str, Any]:
    """NVML's record of the GPU the run times (CuPy's current device, matched by PCI bus id), {} if unknown."""
    from ..device_report import matching_device
    devices = report.get("devices") or []
    try:
        import cupy
        bus_id = cupy.cuda.Device().pci_bus_id
    except Exception:
        bus_id = None
    found = matching_device(devices, bus_id)
    if found is None and len(devices) == 1:
        found = devices[0]                  # one GPU: it is the one timed
    return found or {}


class Progress:
    """One line per measurement on stderr: [i/n] case impl -> result (elapsed, estimated time left).

    The estimate is the mean time per measurement so far times the measurements left: on a long GPU run it
    tells early whether the run fits the time slot it has (and where to split it with --layers / --ops)."""

    def __init__(self, total: int, stream=None, clock=time.perf_counter):
        self.total, self.done, self.stream, self.clock = total, 0, stream, clock
        self.t0 = clock()

    def step(self, text: str) -> None:
        self.done += 1
        width = len(str(self.total))
        elapsed = self.clock() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done:{width}d}/{self.total}] {text}  ({elapsed:.1f} s, ~{_duration(left)} left)",
              file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '1 h 02 min': a short human duration."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Terminated(BaseException):
    """SIGTERM during a run (what `timeout` sends). A BaseException, like KeyboardInterrupt, so that run_case's
    per-measurement `except Exception` does not record it as one failed row and go on."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated in the main thread (Python's default would end the process at
    once, losing the report); the previous handler is restored on exit. Outside the main thread, a no-op."""
    def handler(signum, frame):
        raise Terminated(f"signal {signum} (SIGTERM)")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:                        # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_stem(out: Path, now: _dt.datetime, device_name: str) -> str:
    """<date>_<device>, or <date>_<device>_<HHMMSS> when a report of the first stem is already in `out`
    (a second run on the same day, e.g. a GPU run split over several commands, must not overwrite the first)."""
    stem = f"{now:%Y-%m-%d}_{report.slug(device_name)}"
    if any((out / f"{stem}.{ext}").exists() for ext in ("json", "md", "png")):
        stem = f"{stem}_{now:%H%M%S}"
    return stem


def run_case(case: Case, impl, kind: str, mode: str, l2: int | None, peak, args,
             copy_bw: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one case on one implementation; a row for the report (status ok / unsupported / error).

    copy_bw: the run's measured copy bandwidth (GPU runs); ok rows then get pct_copy_bw (None for convolutions
    and when the measurement failed). Without it (CPU runs) rows have no pct_copy_bw field. inputs: the case's
    host inputs when the caller made them once for every implementation (they are never modified), else made
    here. The % of peak uses the TF32 peak only where the implementation says it ran TF32 (its `tf32`, or
    `uses_tf32(case)`)."""
    row: dict[str, Any] = {**case.describe(), "impl": impl.name, "status": "ok", "note": ""}
    why = impl.supports(case)
    if why:
        return {**row, "status": "unsupported", "note": why}
    warmup, warmup_s, budget_s, min_reps, max_reps = TIMING[(mode, kind)]
    copies = timing.copies_for_l2(case.bytes, l2) if kind == "gpu" else 1
    timer = timing.CudaEventTimer() if kind == "gpu" else timing.CpuTimer()
    try:
        with impl.context():
            calls = impl.prepare(case, case.host_inputs() if inputs is None else inputs, copies)
            result = timing.measure(calls, timer, warmup=warmup, warmup_s=warmup_s, budget_s=budget_s,
                                    min_reps=min_reps, max_reps=max_reps)
    except Unsupported as exc:
        return {**row, "status": "unsupported", "note": str(exc)}
    except Exception as exc:  # a failing implementation is reported, not fatal
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    finally:
        calls = None
        if kind == "gpu":
            _free_gpu_memory()
    row["note"] = getattr(impl, "note", "") or ""
    row.update({"median_ms": result.median_s * 1e3, "min_ms": result.min_s * 1e3, "p20_ms": result.p20_s * 1e3,
                "p80_ms": result.p80_s * 1e3, "reps": result.reps, "warmup": result.warmup,
                "copies": result.copies, "clock": result.clock})
    row.update(metrics.throughput(result.median_s, case.flops, case.bytes))
    tf32 = impl.uses_tf32(case) if hasattr(impl, "uses_tf32") else bool(getattr(impl, "tf32", False))
    row.update(metrics.percent_of_peak(case.kind, row["gflops"], row["gbps"], case.dtype, peak, tf32=tf32,
                                       cpu_peak_gflops=args.cpu_peak_gflops if kind == "cpu" else None))
    if copy_bw is not None:
        row["pct_copy_bw"] = metrics.percent_of_copy(case.kind, row["gbps"], copy_bw.get("gbps"))
    return row


def _describe(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['note']}"
    rate = f"{row['gflops']:.1f} GFLOP/s" if row.get("gflops") else f"{row['gbps']:.1f} GB/s"
    return f"{row['median_ms']:.3f} ms median of {row['reps']}, {rate}"


def main(argv: list[str]) -> int:
    """Entry point of `python -m gpuconv bench`; 0 when every gpuconv measurement ran, 1 if one failed,
    2 for a usage error or a backend that cannot run here, 130 / 143 when Ctrl-C / SIGTERM cut the run short
    (the reports then hold the measurements made, with "complete": false)."""
    args = parse_args(argv)
    backend, reason = _resolve_backend(args.backend)
    if backend is None:
        print(f"gpuconv bench: {reason}", file=sys.stderr)
        return 2
    kind = "gpu" if backend == "cuda" else "cpu"
    mode = "quick" if args.quick else "full"
    batch = args.batch or default_batch(mode, kind)
    batch3d = args.batch3d or (2 if kind == "gpu" else 1)
    layer_sets = args.layers or (["quick"] if args.quick else ["resnet50", "unet3d", "segnet"])
    cases = build_cases(layer_sets, args.ops or list(ALL_OPS), args.dtypes, batch, args.match, batch3d)
    if not cases:
        print("gpuconv bench: no case matches the chosen layers, ops and --match", file=sys.stderr)
        return 2

    if args.peers == "auto":
        peers = default_peers(kind, args.tf32)
    elif args.peers == "none":
        peers = []
    else:
        try:
            peers = peers_by_name(_csv(args.peers), kind, args.tf32)
        except ValueError as exc:
            print(f"gpuconv bench: --peers: {exc}", file=sys.stderr)
            return 2
    from ..demo import out_dir_problem
    # Created now, before any measurement (not after the first one), and after every other usage check (a run
    # that stops on one leaves no empty folder behind).
    problem = out_dir_problem(args.out)
    if problem:
        print(f"gpuconv bench: --out: {problem}", file=sys.stderr)
        return 2
    impls = [GpuconvImpl(backend, args.precision)]
    implementations: dict[str, Any] = {}
    for impl in impls + peers:
        avail = impl.availability()
        settings = None
        if avail == "yes":
            try:
                settings = impl.settings()
            except Exception as exc:
                avail = f"settings failed ({type(exc).__name__}: {exc})"
        implementations[impl.name] = {"available": avail, "settings": settings}
        if avail != "yes":
            print(f"gpuconv bench: {impl.name} not run: {avail}", file=sys.stderr)
    runnable = [i for i in impls + peers if implementations[i.name]["available"] == "yes"]

    device = _device_info(kind)
    peak = metrics.find_peak(device["name"]) if kind == "gpu" else None
    warmup, warmup_s, budget_s, min_reps, max_reps = TIMING[(mode, kind)]
    timing_text = (f"{'CUDA events' if kind == 'gpu' else 'perf_counter'}, warm-up >= {warmup} calls and "
                   f">= {warmup_s:g} s, ~{budget_s:g} s per measurement, {min_reps}-{max_reps} reps, median"
                   + (", inputs rotated past 2x L2" if kind == "gpu" else ""))
    print(f"gpuconv bench: {len(cases)} cases x {len(runnable)} implementations on {device['name']} "
          f"(backend {backend}, batch {batch}, 3-D batch {batch3d}, {mode})", file=sys.stderr)
    copy_bw = None
    if kind == "gpu":
        copy_bw = device["copy_bandwidth"] = measure_copy_bandwidth(mode, device.get("l2_bytes"))
        print("gpuconv bench: measured copy bandwidth " + (
            f"{copy_bw['gbps']:.0f} GB/s ({copy_bw['method']}, {copy_bw.get('buffer')})" if copy_bw.get("gbps")
            else f"unavailable: {copy_bw.get('reason')}"), file=sys.stderr)

    now = _dt.datetime.now(_dt.timezone.utc).astimezone()
    import gpuconv
    rows: list[dict[str, Any]] = []
    doc = {
        "created": now.isoformat(timespec="seconds"),
        "command": "python -m gpuconv bench " + shlex.join(argv),
        "gpuconv": gpuconv.__version__,
        "backend": backend,
        "device": device,
        "peak": None if peak is None else dataclasses.asdict(peak),
        "settings": {"mode": mode, "batch": batch, "batch3d": batch3d, "layer_sets": layer_sets,
                     "match": args.match, "ops": args.ops or list(ALL_OPS), "dtypes": args.dtypes,
                     "tf32_for_peers": args.tf32, "gpuconv_float32_precision": impls[0].precision,
                     "timing": timing_text, "cpu_peak_gflops": args.cpu_peak_gflops},
        "implementations": implementations,
        "complete": False,
        "planned": len(cases) * len(runnable),
        "results": rows,
    }
    stem = args.name or default_stem(args.out, now, device["name"])
    interrupted = _measure_all(cases, runnable, kind, mode, peak, args, copy_bw, device, doc, stem)

    if kind == "gpu":   # clocks, temperature and power after the run, next to the ones before it
        device["gpu_after"] = _gpu_report_after()
    doc["complete"] = interrupted is None
    if interrupted is not None:
        doc["interrupted"] = interrupted
    paths = report.write_all(doc, args.out, stem)
    for key in ("json", "md", "png"):
        if paths[key]:
            print(paths[key])
    if paths["png"] is None:
        print("gpuconv bench: no chart (matplotlib not installed or nothing measured)", file=sys.stderr)
    failed = [r for r in rows if r["impl"].startswith("gpuconv") and r["status"] == "error"]
    for r in failed:
        print(f"gpuconv bench: FAILED {r['layer']} {r['op']} {r['dtype']}: {r['note']}", file=sys.stderr)
    if interrupted is not None:
        print(f"gpuconv bench: interrupted ({interrupted}) after {len(rows)} of {doc['planned']} measurements; "
              "the report holds those", file=sys.stderr)
        return 143 if interrupted.startswith("signal") else 130
    return 1 if failed else 0


def _measure_all(cases: list[Case], runnable: list, kind: str, mode: str, peak, args,
                 copy_bw: dict[str, Any] | None, device: dict[str, Any], doc: dict[str, Any],
                 stem: str) -> str | None:
    """Run every case on every implementation into doc['results'], rewriting the JSON and Markdown reports
    after each case (a run killed later keeps what it measured). Returns None, or why the run stopped early
    (Ctrl-C, SIGTERM)."""
    progress = Progress(len(cases) * len(runnable))
    rows = doc["results"]
    try:
        with _sigterm_raises():
            for case in cases:
                wanted = [impl for impl in runnable if not impl.supports(case)]
                inputs = case.host_inputs() if wanted else None      # once per case, shared by the impls
                for impl in runnable:
                    row = run_case(case, impl, kind, mode, device.get("l2_bytes"), peak, args, copy_bw, inputs)
                    rows.append(row)
                    progress.step(f"{case.name} {impl.name}: {_describe(row)}")
                inputs = None
                report.write_partial(doc, args.out, stem)
    except KeyboardInterrupt:
        return "KeyboardInterrupt (Ctrl-C)"
    except Terminated as exc:
        return str(exc)
    return None


def _gpu_report_after() -> dict[str, Any]:
    """gpu_report() after the measurements; a failure there is a reason in the report, never a lost run."""
    from ..device_report import gpu_report
    try:
        return gpu_report()
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
