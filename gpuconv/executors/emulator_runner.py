"""Runs one emulator launch in a subprocess with AddressSanitizer preloaded (EmulatorExecutor(sanitize=True)).

A library built with -fsanitize=address can only be loaded into a process whose first loaded library is the
ASan runtime, so sanitized launches run as `python -m gpuconv.executors.emulator_runner <request dir>` with
LD_PRELOAD=<libasan.so>. The parent writes the arrays as .npy files and the launch as request.json; the child
runs it and writes the arrays back; the parent copies them into the caller's arrays. A sanitizer report or an
emulator error makes the child exit non-zero, and the parent raises EmulatorError with the child's stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EXIT_EMULATOR_ERROR = 3
EXIT_SANITIZER = 86


def _libasan() -> str:
    from .emulator import EmulatorError, _cxx
    out = subprocess.run([_cxx(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not out or not os.path.isabs(out) or not os.path.exists(out):
        raise EmulatorError(f"sanitize=True needs AddressSanitizer's runtime; {_cxx()} -print-file-name=libasan.so "
                            f"gave {out!r}")
    return out


def run_in_subprocess(library: Path, name_expression: str, grid, block, shared_mem: int, args: tuple, order: str,
                      seed: int, stack_bytes: int) -> None:
    """Runs the launch in a sanitized child process and copies the arrays it wrote back into `args`."""
    from .emulator import EmulatorError
    with tempfile.TemporaryDirectory(prefix="gpuconv-emu-") as tmp:
        tmpdir = Path(tmp)
        encoded = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                np.save(tmpdir / f"arg{i}.npy", a, allow_pickle=False)
                encoded.append({"array": f"arg{i}.npy"})
            else:
                encoded.append({"scalar": np.asarray(a).dtype.str, "hex": np.asarray(a).tobytes().hex()})
        request = {"library": str(library), "name_expression": name_expression, "grid": list(grid),
                   "block": list(block), "shared_mem": shared_mem, "order": order, "seed": seed,
                   "stack_bytes": stack_bytes, "args": encoded}
        (tmpdir / "request.json").write_text(json.dumps(request))
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["LD_PRELOAD"] = _libasan()
        env["ASAN_OPTIONS"] = (f"detect_leaks=0:halt_on_error=1:exitcode={EXIT_SANITIZER}:"
                               "detect_stack_use_after_return=0:" + env.get("ASAN_OPTIONS", ""))
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:" + env.get("UBSAN_OPTIONS", "")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, "-m", "gpuconv.executors.emulator_runner", str(tmpdir)],
                              capture_output=True, text=True, env=env)
        if proc.stdout:
            sys.stdout.write(proc.stdout)   # the kernels' printf output
        if proc.returncode != 0:
            kind = {EXIT_EMULATOR_ERROR: "emulator error",
                    EXIT_SANITIZER: "AddressSanitizer/UBSan report"}.get(proc.returncode, f"exit {proc.returncode}")
            raise EmulatorError(f"{name_expression} under sanitize=True ({kind}):\n{proc.stderr.strip()}")
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                np.copyto(a, np.load(tmpdir / f"arg{i}.npy"))


def _decode_args(tmpdir: Path, encoded: list) -> tuple:
    args = []
    for item in encoded:
        if "array" in item:
            args.append(np.load(tmpdir / item["array"]))
        else:
            args.append(np.frombuffer(bytes.fromhex(item["hex"]), dtype=np.dtype(item["scalar"]))[0])
    return tuple(args)


def main(argv: list[str]) -> int:
    from .emulator import EmulatorError, load_library
    tmpdir = Path(argv[0])
    request = json.loads((tmpdir / "request.json").read_text())
    args = _decode_args(tmpdir, request["args"])
    try:
        load_library(Path(request["library"])).launch(
            request["name_expression"], tuple(request["grid"]), tuple(request["block"]), request["shared_mem"], args,
            request["order"], request["seed"], request["stack_bytes"], 1)
    except EmulatorError as exc:
        print(exc, file=sys.stderr)
        return EXIT_EMULATOR_ERROR
    for item, a in zip(request["args"], args):
        if "array" in item:
            np.save(tmpdir / item["array"], a, allow_pickle=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
