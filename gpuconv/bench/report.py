"""Benchmark reports: one JSON document (everything), a Markdown table and a PNG chart, side by side.

JSON layout (schema "gpuconv-bench/1"): created, command, gpuconv, backend, device {kind, name, gpu|cpu},
settings, implementations {name: {available, settings}}, results [one row per case x implementation]. A row:
the case (layer_set, layer, op, dtype, batch, kind, shapes, strides, padding, flops, bytes), impl, status
("ok" | "unsupported" | "error"), note, and for "ok": median_ms, min_ms, p20_ms, p80_ms, reps, warmup,
copies, clock, gflops, gbps, pct_peak, peak_basis, vs_gpuconv (this row's median / gpuconv's median).
Pooling rows also carry tensor_bytes (the full-resolution tensor) and large_tensor (>= 64 MiB).

complete: false while a run is in progress (the JSON and Markdown are rewritten after every case) and when
Ctrl-C or SIGTERM cut it short (interrupted says which; planned: the number of measurements the run meant to make).

GPU runs only: device.copy_bandwidth (the measured copy bandwidth: gbps, method, buffer_bytes, bytes_per_copy,
l2_factor, methods {memcpy, kernel}; or gbps None and a reason), pct_copy_bw on every ok row (None for
convolutions), and pool_target {target_pct, min_tensor_bytes, copy_gbps, qualifying, met, rows}: the gpuconv
pooling rows on tensors >= 64 MiB and whether each reaches >= 80% of the copy bandwidth. CPU runs have none of these.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import metrics

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


def pool_target(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pooling target's verdict for a GPU run (None for a CPU run, which measures no copy bandwidth):
    every gpuconv pooling row on a tensor >= 64 MiB, its % of the measured copy bandwidth and whether it is
    >= 80% (meets None where the row did not run or the copy bandwidth is unknown)."""
    copy_bw = doc["device"].get("copy_bandwidth")
    if copy_bw is None:
        return None
    rows = []
    for r in doc["results"]:
        if r["kind"] != "pool" or not r.get("large_tensor") or not r["impl"].startswith("gpuconv"):
            continue
        rows.append({"layer": r["layer"], "op": r["op"], "dtype": r["dtype"], "batch": r["batch"],
                     "impl": r["impl"], "status": r["status"], "tensor_bytes": r["tensor_bytes"],
                     "gbps": r.get("gbps"), "pct_copy_bw": r.get("pct_copy_bw"),
                     "meets": metrics.meets_pool_target(r)})
    return {"target_pct": metrics.POOL_TARGET_PCT, "min_tensor_bytes": metrics.LARGE_TENSOR_BYTES,
            "copy_gbps": copy_bw.get("gbps"), "qualifying": len(rows),
            "met": sum(1 for r in rows if r["meets"]), "rows": rows}


def write_json(doc: dict[str, Any], path: Path) -> Path:
    doc = {"schema": SCHEMA, **doc}
    return _write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def markdown(doc: dict[str, Any]) -> str:
    dev = doc["device"]
    with_copy = "copy_bandwidth" in dev          # GPU runs: the % copy BW column and the pooling target
    lines = [f"# gpuconv benchmark: {dev['name']}", "",
             f"- created: {doc['created']}", f"- command: `{doc['command']}`",
             *_partial_lines(doc),
             f"- gpuconv {doc['gpuconv']}, backend `{doc['backend']}`, timing: {doc['settings']['timing']}"]
    if dev["kind"] == "gpu":
        g = dev.get("gpu") or {}
        lines.append(f"- GPU: {_gpu_line(g, dev.get('timed_gpu'))}")
        if "copy_bandwidth" in dev:
            lines.append(f"- measured copy bandwidth: {_copy_line(dev['copy_bandwidth'])}")
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
              "gpuconv's median (below 1: faster than gpuconv). % peak: see peak basis in the JSON."
              + (f" % copy BW (pooling): GB/s / the measured copy bandwidth; {_MARK[True]} / {_MARK[False]}: "
                 f"tensor >= 64 MiB, meets / misses the >= {metrics.POOL_TARGET_PCT:g}% target." if with_copy else ""),
              ""]
    cols = ["layer", "op", "dtype", "N", "impl", "median ms", "p20-p80 ms", "GFLOP/s", "GB/s", "% peak"]
    cols += (["% copy BW"] if with_copy else []) + ["x gpuconv", "reps", "note"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in doc["results"]:
        head = [r["layer"], r["op"], r["dtype"], str(r["batch"]), r["impl"]]
        if r["status"] == "ok":
            cells = head + [f"{r['median_ms']:.4g}", f"{r['p20_ms']:.3g}-{r['p80_ms']:.3g}", _fmt(r["gflops"], ".1f"),
                            _fmt(r["gbps"], ".1f"), _fmt(r["pct_peak"], ".1f")]
            if with_copy:
                cells.append(_copy_cell(r))
            cells += [_fmt(r["vs_gpuconv"], ".2f"), str(r["reps"]), r.get("note") or ""]
        else:
            cells = head + ["-"] * (len(cols) - 6) + [f"{r['status']}: {_md_escape(r.get('note') or '')}"]
        lines.append("| " + " | ".join(cells) + " |")
    if with_copy:
        lines += ["", *_target_lines(doc.get("pool_target") or pool_target(doc))]
    if doc.get("chart"):
        lines += ["", f"![chart]({Path(doc['chart']).name})"]
    return "\n".join(lines) + "\n"


_MARK = {True: "✓", False: "✗"}


def _partial_lines(doc: dict[str, Any]) -> list[str]:
    """A line saying the report is partial (run in progress or cut short), none for a complete run (and for
    reports written before the field existed)."""
    if doc.get("complete", True):
        return []
    done, planned = len(doc["results"]), doc.get("planned", "?")
    why = f"interrupted: {doc['interrupted']}" if doc.get("interrupted") else "in progress or killed"
    return [f"- **partial report**: {done} of {planned} measurements ({why})"]


def _copy_cell(r: dict[str, Any]) -> str:
    """'% copy BW' cell: the percentage, marked on tensors >= 64 MiB with whether it meets the target."""
    text = _fmt(r.get("pct_copy_bw"), ".1f")
    meets = metrics.meets_pool_target(r)
    return text if meets is None else f"{text} {_MARK[meets]}"


def _copy_line(c: dict[str, Any]) -> str:
    if not c.get("gbps"):
        return f"not measured ({c.get('reason')}); no % copy BW"
    methods = ", ".join(f"{k} {v['gbps']:.0f}" if v.get("gbps") else f"{k} failed"
                        for k, v in (c.get("methods") or {}).items())
    size = c.get("buffer_bytes") or 0
    l2 = f" = {c['l2_factor']:.1f}x L2" if c.get("l2_factor") else ""
    return (f"{c['gbps']:.0f} GB/s (best of {methods} GB/s; device-to-device copy of {size / 2**20:.0f} MiB"
            f"{l2}, bytes = read + write, median, CUDA events)")


def _target_lines(t: dict[str, Any] | None) -> list[str]:
    """The Markdown summary of the pooling target."""
    if t is None:
        return []
    head = (f"**Pooling target** (issue 3 item 6): gpuconv pooling/unpooling at >= {t['target_pct']:g}% of the "
            f"measured copy bandwidth on tensors >= {t['min_tensor_bytes'] // 2**20} MiB (benchmark, not test).")
    if not t.get("copy_gbps"):
        return [head + " Not checked: the copy bandwidth was not measured."]
    if not t["rows"]:
        return [head + " No gpuconv pooling row here is on a tensor that large (the segnet set at the default "
                       "batch has several)."]
    lines = [head + f" Met by {t['met']} of {t['qualifying']} qualifying rows.", "",
             "| layer | op | dtype | N | tensor MiB | GB/s | % copy BW | meets |", "|" + "---|" * 8]
    for r in t["rows"]:
        verdict = {True: "yes", False: "NO", None: f"not run ({r['status']})" if r["status"] != "ok" else "-"}
        lines.append(f"| {r['layer']} | {r['op']} | {r['dtype']} | {r['batch']} | {r['tensor_bytes'] / 2**20:.0f} | "
                     f"{_fmt(r['gbps'], '.1f')} | {_fmt(r['pct_copy_bw'], '.1f')} | {verdict[r['meets']]} |")
    return lines


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _gpu_line(g: dict[str, Any], timed: dict[str, Any] | None = None) -> str:
    """The timed GPU's NVML record (cli._timed_gpu; older reports lack it: NVML's first device)."""
    d = timed or (g.get("devices") or [{}])[0]
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
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)), squeeze=False,
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
        copy_gbps = (doc["device"].get("copy_bandwidth") or {}).get("gbps")
        if kind == "pool" and copy_gbps:
            ax.axvline(copy_gbps, color="k", lw=1, label=f"measured copy {copy_gbps:.0f} GB/s")
            ax.axvline(metrics.POOL_TARGET_PCT / 100 * copy_gbps, color="k", lw=1, ls="--",
                       label=f"target {metrics.POOL_TARGET_PCT:g}% (tensors >= 64 MiB)")
        ax.set_yticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_yticklabels(cases, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title(f"{'convolutions' if kind == 'conv' else 'pooling / unpooling'} ({unit}, higher is better)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(axis="x", alpha=0.3)
    st = doc["settings"]
    fig.suptitle(f"gpuconv bench - {doc['device']['name']} - batch {st['batch']} (3-D: {st.get('batch3d')})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path | None]:
    """Write <stem>.png (if matplotlib is there), <stem>.md and <stem>.json into out_dir."""
    _prepare(doc, out_dir)
    return _write_md_json(doc, out_dir, stem, chart(doc, out_dir / f"{stem}.png"))


def write_partial(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path | None]:
    """The JSON and Markdown reports of a run still in progress (no chart: it is drawn once, at the end), so
    that a run killed before its end (a batch slot's time limit) keeps every measurement made so far."""
    _prepare(doc, out_dir)
    return _write_md_json(doc, out_dir, stem, None)


def _write_md_json(doc: dict[str, Any], out_dir: Path, stem: str, png: Path | None) -> dict[str, Path | None]:
    """<stem>.md and <stem>.json, naming the chart if one was drawn."""
    doc["chart"] = str(png) if png else None
    md = _write_text(out_dir / f"{stem}.md", markdown(doc))
    js = write_json(doc, out_dir / f"{stem}.json")
    return {"json": js, "md": md, "png": png}


def _prepare(doc: dict[str, Any], out_dir: Path) -> None:
    """The folder, and the fields derived from the rows (ratios, pooling target), before a report is written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    add_ratios(doc["results"])
    target = pool_target(doc)
    if target is not None:
        doc["pool_target"] = target


def _write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and a rename, so that a run killed mid-write leaves the previous complete
    report, never a truncated one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
