"""Command line: python -m gpuconv info | check-kernels | demo | bench  (also the `gpuconv` console script).

`demo` and `bench` hand the rest of the command line, unparsed, to gpuconv.demo.main and gpuconv.bench.cli.main.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> (module, help); the module's main(argv) gets every argument after the subcommand.
DELEGATES = {
    "demo": ("gpuconv.demo", "run the visual demo (SegNet-style pool/unpool, deconvolution); see demo --help"),
    "bench": ("gpuconv.bench.cli", "benchmark every op against the peers installed here; see bench --help"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuconv", description="TF-semantics convolution and pooling kernels "
                                     "on CuPy arrays, with a NumPy fallback.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="versions, backends available here, GPU (via NVML)",
                          description="Print gpuconv.info(): versions, which backends can run here, the GPU.")
    info.add_argument("--json", action="store_true", help="print the dict as JSON")

    gate = sub.add_parser("check-kernels", help="compile every kernel with NVRTC; registers, spills, occupancy",
                          description="The compile gate: compile every kernel family and name expression with "
                          "NVRTC using CuPy's options, report per kernel and arch, and exit 1 on a compile "
                          "error or a register spill (exit 2 when NVRTC is unavailable). See docs/compile_gate.md.")
    gate.add_argument("--arch", default="80,90",
                      help="compute capabilities to compile for, comma-separated: 80 and/or 90 (default 80,90)")
    gate.add_argument("--family", action="append", default=None, metavar="F",
                      help="only this kernel family (repeat or comma-separate for several)")
    fmt = gate.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as JSON")
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")

    for name, (module, help_text) in DELEGATES.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here; run by _delegate before parsing
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on argv (default sys.argv[1:]); returns the exit status (1 when stdout's reader went away)."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `python -m gpuconv info | head`: no traceback. stdout now points at devnull, so that the flush at exit
        # does not fail again (the recipe of Python's `signal` documentation, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATES:
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info(args)
    return _check_kernels(args)


def _delegate(command: str, rest: list[str]) -> int:
    module_name = DELEGATES[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # a dependency of the module is missing: show the real error
        print(f"gpuconv {command}: not available in this installation ({module_name} not found)", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


# ---------------------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------------------
def _info(args) -> int:
    from . import info
    try:
        data = info()
    except ValueError as err:          # a malformed GPUCONV_* setting: say which, no traceback
        print(f"gpuconv info: {err}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2, default=str) if args.json else format_info(data))
    return 0


def format_info(data: dict[str, Any]) -> str:
    """gpuconv.info()'s dict as aligned text: versions, backends, GPUs."""
    versions = ["gpuconv", "python", "platform", "numpy", "ml_dtypes", "cupy", "cuda-bindings", "nvidia-cuda-nvrtc"]
    lines = ["versions:"]
    lines += [f"  {k:<18} {data.get(k) or 'not installed'}" for k in versions if k in data]
    lines.append(f"backend in force: {data.get('backend', '?')}")
    if "float32-precision" in data:
        lines.append(f"float32 precision: {data['float32-precision']} (GPUCONV_FLOAT32_PRECISION; tf32 / 3xtf32: conv "
                     "forward and gradients on tensor cores, sm_80+)")
    lines.append("backends:")
    for name, status in (data.get("backends") or {}).items():
        lines.append(f"  {name:<18} {'available' if status == 'yes' else 'unavailable: ' + str(status)}")
    nb = data.get("numpy-backend")
    if nb:
        blas = nb.get("blas_threads") or "unknown"
        winograd = "on (GPUCONV_WINOGRAD=0 turns it off)" if nb.get("winograd") else "off (GPUCONV_WINOGRAD=0)"
        lines.append(f"numpy backend: {nb.get('threads')} worker threads (GPUCONV_NUM_THREADS), BLAS threads "
                     f"{blas}, Winograd {winograd}")
        if nb.get("blas_kernels"):
            lines.append(f"numpy BLAS kernels: {nb['blas_kernels']}")
    gpu = data.get("gpu") or {}
    if not gpu.get("available"):
        lines.append(f"GPU: none ({gpu.get('reason', 'NVML reports no device')})")
    else:
        lines.append(f"GPU (NVML, driver {gpu.get('driver') or '?'}):")
        for dev in gpu.get("devices", []):
            lines.append(f"  [{dev.get('index')}] {_device_line(dev)}")
    return "\n".join(lines)


def _device_line(dev: dict[str, Any]) -> str:
    parts = [str(dev.get("name") or "unknown")]
    fields = [("memory_total_gib", "{} GiB"), ("sm_clock_mhz", "SM {} MHz"), ("sm_clock_max_mhz", "max {} MHz"),
              ("mem_clock_mhz", "memory {} MHz"), ("temperature_c", "{} C"), ("power_w", "{:.0f} W")]
    parts += [fmt.format(dev[k]) for k, fmt in fields if dev.get(k) is not None]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# check-kernels
# ---------------------------------------------------------------------------------------------------------
def _check_kernels(args) -> int:
    from . import compile_gate, kernel_source

    try:
        archs = tuple(int(a) for a in args.arch.split(",") if a.strip())
    except ValueError:
        archs = ()
    if not archs:
        print(f"check-kernels: --arch takes comma-separated integers such as 80,90, not {args.arch!r}",
              file=sys.stderr)
        return 2
    families = None
    if args.family is not None:
        names = [n.strip() for value in args.family for n in value.split(",") if n.strip()]
        known = {f.name for f in kernel_source.families()}
        unknown = [n for n in names if n not in known]
        if not names:
            print(f"check-kernels: --family takes kernel family names, not {','.join(args.family)!r}; known: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
        if unknown:
            print(f"check-kernels: unknown kernel family {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
        families = names
    elif not kernel_source.families():   # a gate that checks nothing must not pass
        print("check-kernels: no kernel families are registered (kernel_source.families() is empty), nothing to "
              "compile", file=sys.stderr)
        return 1
    try:
        report = compile_gate.check_kernels(archs=archs, families=families)
    except compile_gate.GateUnavailable as exc:
        print(f"check-kernels: cannot run the compile gate here: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"check-kernels: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.to_json())
    elif args.markdown:
        print(report.to_markdown())
    else:
        print(report.format_table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
