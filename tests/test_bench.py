"""`python -m gpuconv bench`: tiny --quick runs write complete reports; peers degrade cleanly; timing helpers."""
from __future__ import annotations

import json
import sys

import pytest

import gpuconv
from gpuconv.bench import cli, metrics, report, timing
from gpuconv.bench.cases import build_cases

ROW_FIELDS = {"layer_set", "layer", "op", "dtype", "batch", "kind", "x_shape", "y_shape", "flops", "bytes", "impl",
              "status", "note", "median_ms", "min_ms", "p20_ms", "p80_ms", "reps", "warmup", "copies", "clock",
              "gflops", "gbps", "pct_peak", "peak_basis", "vs_gpuconv"}


def _run(tmp_path, *args):
    argv = ["--quick", "--backend", "numpy", "--out", str(tmp_path), "--name", "t", *args]
    rc = cli.main(argv)
    doc = json.loads((tmp_path / "t.json").read_text()) if (tmp_path / "t.json").exists() else None
    return rc, doc


def test_quick_run_writes_json_markdown_and_png(tmp_path, capsys):
    rc, doc = _run(tmp_path, "--match", "quick_3x3s2", "--ops", "fprop,wgrad", "--peers", "none")
    assert rc == 0
    assert doc["schema"] == "gpuconv-bench/1" and doc["backend"] == "numpy"
    assert doc["device"]["kind"] == "cpu" and doc["device"]["cpu"]["logical_cores"]
    assert doc["settings"]["mode"] == "quick" and doc["settings"]["batch"] == 1
    assert [(r["op"], r["impl"]) for r in doc["results"]] == [("fprop", "gpuconv-numpy"), ("wgrad", "gpuconv-numpy")]
    for r in doc["results"]:
        assert ROW_FIELDS <= set(r) and r["status"] == "ok"
        assert r["median_ms"] > 0 and r["reps"] >= 3 and r["gflops"] > 0
        assert r["flops"] == 2 * 1 * 14 * 14 * 64 * 32 * 3 * 3      # N P Q K C R S of quick_3x3s2_64
        assert r["pct_peak"] is None                                 # no CPU peak given
        assert r["vs_gpuconv"] == 1.0
    md = (tmp_path / "t.md").read_text()
    assert "| layer | op | dtype |" in md and "quick_3x3s2_64 | wgrad" in md
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    err = capsys.readouterr().err
    assert "[1/2]" in err and "[2/2]" in err                         # progress lines


def test_quick_pool_ops_report_bandwidth(tmp_path):
    rc, doc = _run(tmp_path, "--match", "quick_pool", "--ops", "pool_argmax,unpool,pool_grad", "--peers", "none",
                   "--cpu-peak-gflops", "100")
    assert rc == 0
    assert [r["op"] for r in doc["results"]] == ["pool_argmax", "unpool", "pool_grad"]
    for r in doc["results"]:
        assert r["status"] == "ok" and r["gflops"] is None and r["gbps"] > 0 and r["pct_peak"] is None


def test_absent_peers_degrade_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    rc, doc = _run(tmp_path, "--match", "quick_3x3s2", "--ops", "fprop", "--peers", "torch,tf")
    assert rc == 0
    impls = doc["implementations"]
    assert impls["gpuconv-numpy"]["available"] == "yes"
    assert impls["torch-cpu"]["available"].startswith("not installed")
    assert impls["tf-cpu"]["available"].startswith("not installed")
    assert {r["impl"] for r in doc["results"]} == {"gpuconv-numpy"}
    assert "`torch-cpu`: not run" in (tmp_path / "t.md").read_text()
    assert "torch-cpu not run" in capsys.readouterr().err


class _BrokenPeer:
    name, device, note = "broken-peer", "cpu", ""

    def availability(self):
        return "yes"

    def settings(self):
        return {}

    def supports(self, case):
        return None if case.op == "fprop" else "fprop only"

    def context(self):
        import contextlib
        return contextlib.nullcontext()

    def prepare(self, case, inputs, copies):
        raise RuntimeError("peer exploded")


def test_a_failing_peer_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "default_peers", lambda kind, tf32: [_BrokenPeer()])
    rc, doc = _run(tmp_path, "--match", "quick_3x3s2", "--ops", "fprop,dgrad")
    assert rc == 0
    rows = {(r["op"], r["impl"]): r for r in doc["results"]}
    assert rows[("fprop", "broken-peer")]["status"] == "error"
    assert "peer exploded" in rows[("fprop", "broken-peer")]["note"]
    assert rows[("dgrad", "broken-peer")]["status"] == "unsupported"
    assert rows[("fprop", "gpuconv-numpy")]["status"] == "ok"


def test_a_failing_gpuconv_op_makes_the_run_fail(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(gpuconv, "conv2d", broken)
    rc, doc = _run(tmp_path, "--match", "quick_3x3s2", "--ops", "fprop", "--peers", "none")
    assert rc == 1 and doc["results"][0]["status"] == "error"


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--ops", "nonsense"])
    with pytest.raises(SystemExit):
        cli.main(["--dtypes", "bfloat16"])
    assert cli.main(["--quick", "--backend", "numpy", "--match", "no-such-layer", "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------------------
# timing helpers with a fake clock
# ---------------------------------------------------------------------------------------------------------
class FakeTimer:
    """A clock that only moves when a fake call runs: call i takes durations[i] seconds."""

    name = "fake"

    def __init__(self, durations):
        self.now, self.durations, self.calls, self.syncs = 0.0, list(durations), [], 0

    def mark(self):
        return self.now

    def elapsed(self, h0, h1):
        return h1 - h0

    def sync(self):
        self.syncs += 1

    def call(self, tag):
        def run():
            self.calls.append(tag)
            self.now += self.durations[len(self.calls) - 1]
        return run


def test_measure_reports_medians_and_sizes_the_loop_from_the_warmup():
    # 2 warm-up calls of 0.5 s (the first one "compiles": 10 s), then timed calls of 1, 2, ..., 9 s
    t = FakeTimer([10.0, 0.5] + [float(i) for i in range(1, 100)])
    r = timing.measure([t.call("a"), t.call("b")], t, warmup=2, budget_s=3.0, min_reps=2, max_reps=50)
    # per-call estimate = median of the recent warm-up calls (10, 0.5) = 5.25 s -> budget 3 s -> min_reps
    assert r.reps == 2 and r.warmup == 2 and r.copies == 2 and r.clock == "fake"
    assert (r.median_s, r.min_s) == (1.5, 1.0)
    assert t.calls == ["a", "b", "a", "b"]                 # inputs rotate across warm-up and timed calls


def test_measure_keeps_warming_up_for_warmup_seconds():
    t = FakeTimer([0.1] * 100)
    r = timing.measure([t.call("x")], t, warmup=1, warmup_s=0.45, budget_s=1.0, min_reps=1, max_reps=7)
    assert r.warmup == 5                                    # 5 x 0.1 s >= 0.45 s
    assert r.reps == 7                                      # 1.0 s / 0.1 s = 10, capped at 7
    assert r.median_s == pytest.approx(0.1) and r.p20_s == pytest.approx(0.1)


def test_measure_stops_a_loop_that_overruns_its_budget():
    t = FakeTimer([0.1] * 100)
    wall = iter([0.0] + [10.0 * i for i in range(1, 100)])     # the host clock: 10 s per timed call
    r = timing.measure([t.call("x")], t, warmup=1, budget_s=1.0, min_reps=4, max_reps=50, overrun=3.0,
                       wall=lambda: next(wall))
    assert r.reps == 4                                      # past 3 x 1 s after the first call; min_reps kept


def test_quantile_rep_count_and_l2_copies():
    assert timing.quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    assert timing.quantile([7.0], 0.8) == 7.0
    assert timing.rep_count(0.01, 1.0, 5, 50) == 50
    assert timing.rep_count(1.0, 1.0, 5, 50) == 5
    assert timing.copies_for_l2(10 * 2**20, 50 * 2**20) == 10   # 2 x 50 MiB / 10 MiB
    assert timing.copies_for_l2(200 * 2**20, 50 * 2**20) == 1
    assert timing.copies_for_l2(10 * 2**20, None) == 1
    assert timing.copies_for_l2(2**20, 50 * 2**20, max_copies=8) == 8
    assert timing.copies_for_l2(2**30, 2**40, max_total_bytes=4 * 2**30) == 4


# ---------------------------------------------------------------------------------------------------------
# metrics and report helpers
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM5"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"), ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"), ("Tesla T4", None), (None, None)])
def test_find_peak(name, expected):
    peak = metrics.find_peak(name)
    assert (peak.name if peak else None) == expected


def test_percent_of_peak_and_bytes():
    h100 = metrics.find_peak("NVIDIA H100 80GB HBM3")
    got = metrics.percent_of_peak("conv", 33450.0, None, "float32", h100)
    assert got["pct_peak"] == pytest.approx(50.0) and "FP32 non-tensor" in got["peak_basis"]
    assert metrics.percent_of_peak("pool", None, 1675.0, "float32", h100)["pct_peak"] == pytest.approx(50.0)
    assert metrics.percent_of_peak("conv", 10.0, None, "float32", None)["pct_peak"] is None
    assert metrics.percent_of_peak("conv", 10.0, None, "float32", None, cpu_peak_gflops=40)["pct_peak"] == 25
    (case,) = build_cases(["segnet"], ["pool_argmax"], ["float32"], 2, match="segnet_pool1")
    x, y = 2 * 360 * 480 * 64, 2 * 180 * 240 * 64
    assert case.bytes == 4 * (x + y) + 8 * y


def test_report_helpers():
    assert report.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    rows = [{"layer_set": "s", "layer": "l", "op": "fprop", "dtype": "float32", "batch": 1, "impl": "gpuconv-numpy",
             "status": "ok", "median_ms": 2.0},
            {"layer_set": "s", "layer": "l", "op": "fprop", "dtype": "float32", "batch": 1, "impl": "peer",
             "status": "ok", "median_ms": 1.0},
            {"layer_set": "s", "layer": "l", "op": "fprop", "dtype": "float32", "batch": 1, "impl": "other",
             "status": "error", "median_ms": None}]
    report.add_ratios(rows)
    assert [r["vs_gpuconv"] for r in rows] == [1.0, 0.5, None]


@pytest.mark.gpu
def test_quick_gpu_run_uses_cuda_events_and_rotated_inputs(tmp_path):
    rc = cli.main(["--quick", "--backend", "cuda", "--match", "quick_3x3s2", "--ops", "fprop", "--out", str(tmp_path),
                   "--name", "g"])
    doc = json.loads((tmp_path / "g.json").read_text())
    assert rc == 0 and doc["device"]["kind"] == "gpu" and doc["device"]["l2_bytes"]
    ours = [r for r in doc["results"] if r["impl"] == "gpuconv-cuda"]
    assert ours and ours[0]["clock"] == "cuda_events" and ours[0]["copies"] > 1
