"""Benchmark reports: one JSON document (everything), a Markdown table and a PNG chart, side by side.

JSON layout (schema "gpuconv-bench/1"): created, command, gpuconv, backend, device {kind, name, gpu|cpu},
settings, implementations {name: {available, settings}}, results [one row per case x implementation]. A row:
the case (layer_set, layer, op, dtype, batch, kind, shapes, strides, padding, flops, bytes), impl, status
("ok" | "unsupported" | "error"), note, and for "ok": median_ms, min_ms, p20_ms, p80_ms, reps, warmup,
copies, clock, gflops, gbps, pct_peak, peak_basis, vs_gpuconv (this row's median / gpuconv's median).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA = "gpuconv-bench/1"


def slug(text: str) -> str:
    """A file-name-safe short form: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """vs_gpuconv = median / the gpuconv row's median for the same case (None where either is missing)."""
    base = {}
    for r in rows:
        if r["impl"].startswith("gpuconv") and r["status"] == "ok":
            base[_case_key(r)] = r["median_ms"]
    for r in rows:
        b = base.get(_case_key(r))
        r["vs_gpuconv"] = r["median_ms"] / b if r["status"] == "ok" and b else None


def _case_key(r: dict[str, Any]) -> tuple:
    return r["layer_set"], r["layer"], r["op"], r["dtype"], r["batch"]


def write_json(doc: dict[str, Any], path: Path) -> Path:
    doc = {"schema": SCHEMA, **doc}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def markdown(doc: dict[str, Any]) -> str:
    dev = doc["device"]
    lines = [f"# gpuconv benchmark: {dev['name']}", "",
             f"- created: {doc['created']}", f"- command: `{doc['command']}`",
             f"- gpuconv {doc['gpuconv']}, backend `{doc['backend']}`, timing: {doc['settings']['timing']}"]
    if dev["kind"] == "gpu":
        g = dev.get("gpu") or {}
        lines.append(f"- GPU: {_gpu_line(g)}")
    else:
        c = dev.get("cpu") or {}
        lines.append(f"- CPU: {c.get('model')}, {c.get('usable_cores')} usable of {c.get('logical_cores')} "
                     f"logical cores, BLAS {c.get('blas')}")
    for name, impl in doc["implementations"].items():
        state = "available" if impl["available"] == "yes" else f"not run: {impl['available']}"
        settings = ", ".join(f"{k}={v}" for k, v in (impl.get("settings") or {}).items())
        lines.append(f"- `{name}`: {state}" + (f" ({settings})" if settings else ""))
    lines += ["", "Throughput: GFLOP/s = 2 x multiply-adds / median time (convolutions); GB/s = minimum bytes "
              "(inputs read once, outputs written once) / median time. `x gpuconv` = this row's median / "
              "gpuconv's median (below 1: faster than gpuconv). % peak: see peak basis in the JSON.", ""]
    header = ("| layer | op | dtype | N | impl | median ms | p20-p80 ms | GFLOP/s | GB/s | % peak | x gpuconv "
              "| reps | note |")
    lines += [header, "|" + "---|" * 13]
    for r in doc["results"]:
        if r["status"] == "ok":
            spread = f"{r['p20_ms']:.3g}-{r['p80_ms']:.3g}"
            lines.append(f"| {r['layer']} | {r['op']} | {r['dtype']} | {r['batch']} | {r['impl']} | "
                         f"{r['median_ms']:.4g} | {spread} | {_fmt(r['gflops'], '.1f')} | {_fmt(r['gbps'], '.1f')} | "
                         f"{_fmt(r['pct_peak'], '.1f')} | {_fmt(r['vs_gpuconv'], '.2f')} | {r['reps']} | "
                         f"{r.get('note') or ''} |")
        else:
            lines.append(f"| {r['layer']} | {r['op']} | {r['dtype']} | {r['batch']} | {r['impl']} | - | - | - | - | "
                         f"- | - | - | {r['status']}: {_md_escape(r.get('note') or '')} |")
    if doc.get("chart"):
        lines += ["", f"![chart]({Path(doc['chart']).name})"]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _gpu_line(g: dict[str, Any]) -> str:
    devs = g.get("devices") or [{}]
    d = devs[0]
    parts = [str(d.get("name")), f"driver {g.get('driver')}"]
    for key, label in (("sm_clock_mhz", "SM MHz"), ("sm_clock_max_mhz", "max SM MHz"),
                       ("mem_clock_mhz", "mem MHz"), ("temperature_c", "C"), ("power_w", "W"),
                       ("power_limit_w", "W limit")):
        if d.get(key) is not None:
            parts.append(f"{d[key]} {label}")
    return ", ".join(parts)


def chart(doc: dict[str, Any], path: Path) -> Path | None:
    """Horizontal bars per case and implementation: GFLOP/s for convolutions, GB/s for pooling.

    Returns None (and writes nothing) when matplotlib is not installed or there is nothing to plot.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    panels = [(k, unit, [r for r in ok if r["kind"] == k and r[metric] is not None], metric)
              for k, unit, metric in (("conv", "GFLOP/s", "gflops"), ("pool", "GB/s", "gbps"))]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    impls = list(dict.fromkeys(r["impl"] for r in ok))
    colors = {name: f"C{i}" for i, name in enumerate(impls)}
    heights = [max(1.5, 0.28 * len(rows) + 0.8) for _, _, rows, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (kind, unit, rows, metric) in zip(axes[:, 0], panels):
        cases = list(dict.fromkeys(f"{r['layer']} {r['op']} {r['dtype']}" for r in rows))
        width = 0.8 / max(1, len(impls))
        for j, name in enumerate(impls):
            ys, vals = [], []
            for r in rows:
                if r["impl"] == name:
                    ys.append(cases.index(f"{r['layer']} {r['op']} {r['dtype']}") + j * width)
                    vals.append(r[metric])
            if ys:
                ax.barh(ys, vals, height=width, color=colors[name], label=name)
        ax.set_yticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_yticklabels(cases, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title(f"{'convolutions' if kind == 'conv' else 'pooling / unpooling'} ({unit}, higher is better)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    st = doc["settings"]
    fig.suptitle(f"gpuconv bench - {doc['device']['name']} - batch {st['batch']} (3-D: {st.get('batch3d')})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path | None]:
    """Write <stem>.png (if matplotlib is there), <stem>.md and <stem>.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    add_ratios(doc["results"])
    png = chart(doc, out_dir / f"{stem}.png")
    doc["chart"] = str(png) if png else None
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(doc))
    js = write_json(doc, out_dir / f"{stem}.json")
    return {"json": js, "md": md, "png": png}
