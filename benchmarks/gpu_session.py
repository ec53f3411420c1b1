"""One step of a GPU session on a lent machine: the gpu tests or a slice of the benchmark, inside a time limit.

A lent GPU machine here runs one command of at most 10 minutes at a time, for 30 minutes in all, has no package
registry (its image brings CuPy 14, PyTorch with cuDNN, pytest, hypothesis, nvidia-ml-py and matplotlib, not
TensorFlow), and returns at most 8 files from $OUT. So the work is cut into steps that each fit one call, and a
step writes one archive plus a short summary:

    tests   nvidia-smi, `python -m gpuconv info`, where NVRTC's headers come from, then `pytest -m gpu` (every
            kernel instantiation on the GPU against the NumPy oracle, the CuPy executor, the bench smoke test)
    bench1  the issue targets first: ResNet-50 3x3 layers at N=32 float32 (fprop, dgrad, wgrad: % of FP32 peak,
            parity with cuDNN, TF32 off on every side) and the SegNet pooling ladder float32 (% of copy bandwidth)
    bench2  the rest: ResNet-50 1x1 / 7x7 layers float32, the 3x3 layers in float16, 3D U-Net layers float32
    bench3  float32 on tensor cores (opt-in): ResNet-50 fprop, dgrad and wgrad float32 with gpuconv's TF32 and 3xTF32
            against cuDNN with TF32 on (--precision tf32|3xtf32 --tf32)
    bench4  depthwise convs: MobileNet v1's depthwise layers float32 (fprop, dgrad, wgrad; gpuconv's analytic
            kernels against cuDNN's grouped convolutions)

Usage (on the device machine, in the repository root; nothing to install, the checkout is imported):

    python3 benchmarks/gpu_session.py tests  --out "$OUT"
    python3 benchmarks/gpu_session.py bench1 --out "$OUT"
    python3 benchmarks/gpu_session.py bench2 --out "$OUT"
    python3 benchmarks/gpu_session.py bench3 --out "$OUT"
    python3 benchmarks/gpu_session.py bench4 --out "$OUT"

Each command runs under its share of --budget seconds (default 540, under the 600 s a call may take): past it
the command gets SIGINT (pytest prints its summary and writes its JUnit file; `gpuconv bench` writes a partial
report of what it measured) and, 20 s later, SIGKILL. Everything goes into <out>/gpu_<step>_<time>.tgz (logs,
JUnit XML, the bench's JSON/Markdown/PNG, named by slice: resnet50_3x3_f32.json ...), and the last lines printed
are a summary. Commit the bench reports under benchmarks/results/ as <date>_<device>_<slice>.{json,md,png} (the
device is named inside each report) and quote only numbers from them.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 20            # after SIGINT, how long a command has to write its report before SIGKILL
ARCHIVE_RESERVE_S = 15  # kept back from the budget for the archive and the summary


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a step: its argv (`{work}` is replaced by the step's work folder) and its log name."""
    name: str
    argv: tuple[str, ...]
    share: float = 1.0          # weight of this command in the step's budget (of what is left when it starts)


def _bench(name: str, *args: str) -> Command:
    return Command(name, (sys.executable, "-m", "gpuconv", "bench", "--out", "{work}", "--name", name, *args))


# Where CuPy's NVRTC takes the CUDA headers from, and whether <mma.h>'s crt/mma.h is found (the tensor-core
# kernel needs it; pip's CUDA 13 runtime wheels ship it apart): gpuconv.kernel_source.crt_include_options.
_HEADERS_PROBE = """
import cupy, gpuconv.kernel_source as ks
from pathlib import Path
from cuda.pathfinder import find_nvidia_header_directory as find
cudart = find("cudart")
print("cupy", cupy.__version__, "cuda path", cupy.cuda.get_cuda_path())
print("cudart headers", cudart, "CUDART_VERSION", cudart and ks._cudart_version(Path(cudart)))
print("crt/mma.h beside them:", bool(cudart) and (Path(cudart) / ks.CRT_HEADER).is_file())
print("crt_include_options:", ks.crt_include_options())
"""

STEPS: dict[str, tuple[Command, ...]] = {
    "tests": (
        Command("nvidia_smi", ("nvidia-smi",), share=0.1),
        Command("info", (sys.executable, "-m", "gpuconv", "info"), share=0.1),
        Command("cuda_headers", (sys.executable, "-c", _HEADERS_PROBE), share=0.1),
        Command("pytest_gpu", (sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider",
                               "--junitxml={work}/pytest_gpu.xml")),
    ),
    "bench1": (
        _bench("resnet50_3x3_f32", "--layers", "resnet50", "--match", "3x3", "--ops", "fprop,dgrad,wgrad",
               "--dtypes", "float32"),
        _bench("segnet_f32", "--layers", "segnet", "--dtypes", "float32"),
    ),
    "bench2": (
        _bench("resnet50_1x1_f32", "--layers", "resnet50", "--match", "1x1", "--ops", "fprop,dgrad,wgrad",
               "--dtypes", "float32"),
        _bench("resnet50_7x7_f32", "--layers", "resnet50", "--match", "7x7", "--ops", "fprop,dgrad,wgrad",
               "--dtypes", "float32"),
        _bench("resnet50_3x3_f16", "--layers", "resnet50", "--match", "3x3", "--ops", "fprop,dgrad,wgrad",
               "--dtypes", "float16"),
        _bench("unet3d_f32", "--layers", "unet3d", "--ops", "fprop,dgrad,wgrad", "--dtypes", "float32"),
    ),
    "bench3": (
        _bench("resnet50_tf32", "--layers", "resnet50", "--ops", "fprop,dgrad,wgrad", "--dtypes", "float32",
               "--precision", "tf32", "--tf32"),
        _bench("resnet50_3xtf32", "--layers", "resnet50", "--ops", "fprop,dgrad,wgrad", "--dtypes", "float32",
               "--precision", "3xtf32", "--tf32"),
    ),
    "bench4": (
        _bench("mobilenet_dw_f32", "--layers", "mobilenet", "--ops", "fprop,dgrad,wgrad", "--dtypes", "float32"),
    ),
}


@dataclasses.dataclass
class Outcome:
    name: str
    returncode: int | None      # None: the program was not found
    seconds: float
    interrupted: bool           # stopped by SIGINT at its time limit
    tail: str                   # its last lines of output


def run_command(cmd: Command, work: Path, limit_s: float, env: dict[str, str]) -> Outcome:
    """Run one command with stdout and stderr in <work>/<name>.log; SIGINT at limit_s, SIGKILL GRACE_S later."""
    argv = [a.replace("{work}", str(work)) for a in cmd.argv]
    log = work / f"{cmd.name}.log"
    t0 = time.monotonic()
    interrupted = False
    with open(log, "w") as fh:
        fh.write(f"$ {' '.join(argv)}\n# limit {limit_s:.0f} s\n")
        fh.flush()
        try:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            fh.write(f"not run: {exc}\n")
            return Outcome(cmd.name, None, 0.0, False, f"not run: {exc}")
        try:
            proc.wait(timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    lines = log.read_text(errors="replace").splitlines()
    return Outcome(cmd.name, proc.returncode, time.monotonic() - t0, interrupted, "\n".join(lines[-12:]))


def run_step(step: str, out: Path, budget_s: float, commands: tuple[Command, ...] | None = None) -> list[Outcome]:
    """Run a step's commands in order within budget_s; archive the work folder to out; return the outcomes."""
    commands = STEPS[step] if commands is None else commands
    deadline = time.monotonic() + budget_s - ARCHIVE_RESERVE_S
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix=f"gpu_{step}_") as tmp:
        work = Path(tmp) / f"gpu_{step}_{stamp}"
        work.mkdir()
        for i, cmd in enumerate(commands):
            left = deadline - time.monotonic()
            weights = sum(c.share for c in commands[i:])
            limit = left * cmd.share / weights - (GRACE_S if i < len(commands) - 1 else 0)
            if left < 5:
                outcomes.append(Outcome(cmd.name, None, 0.0, False, "not run: the step's time budget was spent"))
                continue
            outcome = run_command(cmd, work, max(limit, 5.0), env)
            outcomes.append(outcome)
            print(f"[{step}] {outcome.name}: {_status(outcome)} in {outcome.seconds:.0f} s", flush=True)
        (work / "summary.txt").write_text(summary(step, outcomes))
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out / f"{work.name}.tgz", "w:gz") as tar:
            tar.add(work, arcname=work.name)
    return outcomes


def _status(o: Outcome) -> str:
    if o.returncode is None:
        return "not run"
    return f"exit {o.returncode}" + (" (stopped at its time limit)" if o.interrupted else "")


def summary(step: str, outcomes: list[Outcome]) -> str:
    """What a reader of the call's last output needs: per command its status and last lines."""
    parts = [f"== gpu_session {step}: " + ", ".join(f"{o.name} {_status(o)}" for o in outcomes)]
    for o in outcomes:
        parts.append(f"-- {o.name} ({_status(o)}, {o.seconds:.0f} s)\n{o.tail}")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks" / "results"),
                   help="folder for the archive (default $OUT, else benchmarks/results)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole step (default 540)")
    args = p.parse_args(argv)
    if not args.budget >= 60:
        p.error(f"--budget: expected at least 60 seconds, got {args.budget}")
    outcomes = run_step(args.step, args.out, args.budget)
    print(summary(args.step, outcomes), end="")
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
