"""`python -m gpuconv bench`: tiny --quick runs write complete reports; peers degrade cleanly; timing helpers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark_script

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
    assert "--ops: unknown op 'nonsense'; known: fprop, " in _usage_error(capsys, ["--ops", "nonsense"])
    assert "--dtypes: 'bfloat16' is not benchmarked" in _usage_error(capsys, ["--dtypes", "bfloat16"])
    assert cli.main(["--quick", "--backend", "numpy", "--match", "no-such-layer", "--out", str(tmp_path)]) == 2


def _usage_error(capsys, argv) -> str:
    """The one error line of a usage error (exit 2) from bench's parser; nothing is measured."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_unusable_out_is_a_usage_error_before_any_measurement(tmp_path, monkeypatch, capsys, where):
    afile = tmp_path / "afile"
    afile.write_text("")
    out = afile if where == "a file" else afile / "sub"
    monkeypatch.setattr(cli, "_measure_all", lambda *a: pytest.fail("measured before checking --out"))
    assert cli.main(["--quick", "--backend", "numpy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconv bench: --out: ") and repr(str(out)) in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["a/b", "", ".", "..", "a/"])
def test_name_with_a_folder_is_a_usage_error(tmp_path, capsys, name):
    line = _usage_error(capsys, ["--quick", "--backend", "numpy", "--out", str(tmp_path), "--name", name])
    assert line.endswith(f"--name: expected a file stem such as 2026-01-01_h100, without a folder (that is --out), "
                         f"got {name!r}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-3", "0", "nan", "inf", "-inf", "fast"])
def test_cpu_peak_gflops_must_be_positive_and_finite(tmp_path, capsys, value):
    line = _usage_error(capsys, ["--quick", "--out", str(tmp_path), f"--cpu-peak-gflops={value}"])
    assert line.endswith(f"argument --cpu-peak-gflops: expected a positive number of GFLOP/s, got {value!r}")


def test_out_is_created_before_the_first_measurement(tmp_path, monkeypatch):
    out = tmp_path / "new" / "folder"
    args = cli.parse_args(["--quick", "--out", str(out), "--name", "run-1", "--cpu-peak-gflops", "1e3"])
    assert args.name == "run-1" and args.cpu_peak_gflops == 1000.0

    class Started(Exception):
        pass

    def first_measurement(*args, **kwargs):
        assert out.is_dir()
        raise Started
    monkeypatch.setattr(cli, "_measure_all", first_measurement)
    with pytest.raises(Started):
        cli.main(["--quick", "--backend", "numpy", "--peers", "none", "--out", str(out)])


@pytest.mark.parametrize("argv", [["--match", "no-such-layer"], ["--peers", "nope"], ["--backend", "cuda"]])
def test_a_usage_error_leaves_no_output_folder(tmp_path, capsys, argv):
    """bench created --out while parsing its arguments, so a run that stopped on a later usage error (no case
    matches, an unknown peer, a backend that cannot run here) left an empty folder behind."""
    from conftest import gpu_available
    if argv == ["--backend", "cuda"] and gpu_available():
        pytest.skip("a GPU is present: the cuda backend can run")
    out = tmp_path / "results"
    assert cli.main(["--quick", *(["--backend", "numpy"] if "--backend" not in argv else []), *argv,
                     "--out", str(out)]) == 2
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# benchmarks/numpy_vs_pytorch.py: its command line only (the benchmark itself takes minutes)
# ---------------------------------------------------------------------------------------------------------
NUMPY_VS_PYTORCH = Path(__file__).resolve().parents[1] / "benchmarks" / "numpy_vs_pytorch.py"


@pytest.fixture(scope="module")
def numpy_vs_pytorch():
    return load_benchmark_script("numpy_vs_pytorch")


@pytest.mark.parametrize("argv,message", [
    (["--rounds", "0"], "argument --rounds: expected an integer >= 1, got '0'"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
    (["--threads", "two"], "argument --threads: expected an integer >= 1, got 'two'"),
    (["--n", "-1"], "argument --n: expected an integer >= 1, got '-1'"),
    (["--warmup", "-1"], "argument --warmup: expected an integer >= 0, got '-1'"),
    (["--pause", "-1"], "--pause: expected a finite number of seconds >= 0, got -1.0"),
    (["--only", "bogus,segnet_pool1,nope"], "--only: unknown layer 'bogus', 'nope'; known: conv1_7x7s2, "),
    (["--only", ","], "--only: expected comma-separated layer names, got ','; known: conv1_7x7s2, "),
])
def test_numpy_vs_pytorch_usage_errors(numpy_vs_pytorch, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        numpy_vs_pytorch.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "--only" in argv:
        assert "res2_3x3_64" in err and "segnet_pool5" in err            # the valid names are listed


def test_numpy_vs_pytorch_arguments(numpy_vs_pytorch, monkeypatch):
    args = numpy_vs_pytorch.parse_args(["--only", " res2_3x3_64, segnet_pool1", "--rounds", "1", "--threads", "2"])
    assert args.only == {"res2_3x3_64", "segnet_pool1"} and args.rounds == 1 and args.threads == 2
    assert numpy_vs_pytorch.parse_args([]).only == set()                    # every layer
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert numpy_vs_pytorch.parse_args([]).threads == 3


def test_numpy_vs_pytorch_bad_argument_fails_at_once_without_a_traceback():
    out = subprocess.run([sys.executable, str(NUMPY_VS_PYTORCH), "--only", "bogus"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("numpy_vs_pytorch.py: error: --only: unknown layer")


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
    copy = doc["device"]["copy_bandwidth"]
    assert copy["gbps"] > 0 and copy["l2_factor"] >= 4, copy
    if doc["peak"]:                                 # a measured copy lands below the datasheet bandwidth
        assert copy["gbps"] < 1.1 * doc["peak"]["mem_gbps"], copy
    assert ours[0]["pct_copy_bw"] is None           # a convolution row


# ---------------------------------------------------------------------------------------------------------
# pooling against the measured copy bandwidth (GPU runs; tested here with fakes, no GPU needed)
# ---------------------------------------------------------------------------------------------------------
def test_copy_bandwidth_arithmetic_and_buffer_size():
    assert metrics.copy_gbps(2**30, 1e-3) == pytest.approx(2 * 2**30 / 1e-3 / 1e9)   # read + write
    assert metrics.copy_gbps(2**30, 0.0) is None
    l2 = 50 * 2**20
    assert timing.copy_buffer_bytes(l2, 80 * 2**30) == (2**30, "1024 MiB per buffer = 20.5 x L2")
    size, why = timing.copy_buffer_bytes(l2, 2 * 2**30 + 12345)          # two buffers <= half the free memory
    assert size == 512 * 2**20 and size % 16 == 0 and "10.2 x L2" in why
    size, why = timing.copy_buffer_bytes(l2, 600 * 2**20)                # 150 MiB < 4 x 50 MiB
    assert size is None and "200 MiB needed" in why
    assert timing.copy_buffer_bytes(None, None)[0] == 2**30


def test_measure_copy_bandwidth_takes_the_best_method_and_survives_a_failing_one():
    t = FakeTimer([])

    def copy(seconds):                                                   # a fake copy taking `seconds`
        def run():
            t.now += seconds
        return run

    def broken():
        raise RuntimeError("nvrtc failed")

    calls = {"memcpy": copy(0.004), "kernel": copy(0.002), "other": broken}
    got = timing.measure_copy_bandwidth(calls, 2**30, t, warmup=2, budget_s=0.02, min_reps=3, max_reps=18)
    assert got["method"] == "kernel" and got["gbps"] == pytest.approx(2 * 2**30 / 0.002 / 1e9)
    assert got["methods"]["memcpy"]["gbps"] == pytest.approx(2 * 2**30 / 0.004 / 1e9)
    assert "nvrtc failed" in got["methods"]["other"]["error"]
    assert got["bytes_per_copy"] == 2 * got["buffer_bytes"] == 2**31
    none = timing.measure_copy_bandwidth({"memcpy": broken}, 2**30, t, warmup=1, min_reps=1)
    assert none["gbps"] is None and none["method"] is None and none["reason"]


class _FakeCupy:
    """Just enough of CuPy for timing.cupy_copy_calls and cli.measure_copy_bandwidth."""
    uint8, uint64 = "uint8", int

    def __init__(self, free=80 * 2**30):
        self.log = []
        fake = self

        class Ptr:
            def __init__(self, n):
                self.ptr = 1000 + n + len(fake.log)

        class Array:
            def __init__(self, n):
                self.data, self.n = Ptr(n), n
                fake.log.append(("alloc", n))

            def fill(self, v):
                fake.log.append(("fill", v))

        class Runtime:
            memcpyDeviceToDevice = 3

            @staticmethod
            def memGetInfo():
                return free, 2 * free

            @staticmethod
            def memcpyAsync(dst, src, n, kind, stream):
                fake.log.append(("memcpy", n, kind, stream))

        class Kernel:
            def __init__(self, src, name):
                fake.log.append(("compile", name))

            def __call__(self, grid, block, args):
                fake.log.append(("launch", grid, block, args[2]))

        class Stream:
            ptr = 0

        import types
        self.cuda = types.SimpleNamespace(runtime=Runtime, get_current_stream=lambda: Stream())
        self.Array, self.RawKernel = Array, Kernel

    def empty(self, n, dtype):
        return self.Array(n)

    def get_default_memory_pool(self):
        import types
        return types.SimpleNamespace(free_all_blocks=lambda: self.log.append(("free",)))


def test_cupy_copy_calls_issue_a_device_to_device_memcpy_and_a_16_byte_kernel():
    cp = _FakeCupy()
    calls = timing.cupy_copy_calls(cp, 2**20)
    calls["memcpy"]()
    calls["kernel"]()
    assert ("memcpy", 2**20, 3, 0) in cp.log
    assert ("launch", (2**20 // 16 // 256,), (256,), 2**20 // 16) in cp.log
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        timing.cupy_copy_calls(cp, 100)


def test_cli_measures_copy_bandwidth_with_the_run_timing(monkeypatch):
    cp = _FakeCupy(free=8 * 2**30)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(timing, "CudaEventTimer", lambda: timing.CpuTimer())
    got = cli.measure_copy_bandwidth("quick", 50 * 2**20)
    assert got["gbps"] > 0 and got["method"] in ("memcpy", "kernel")
    assert got["buffer_bytes"] == 2**30 and got["l2_factor"] == pytest.approx(20.48)
    assert ("free",) in cp.log                                             # buffers released afterwards
    small = cli.measure_copy_bandwidth("quick", 2**30)                     # 4 x L2 does not fit: a reason
    assert small["gbps"] is None and "needed" in small["reason"]
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert cli.measure_copy_bandwidth("quick", None)["gbps"] is None       # no CuPy: no number, no crash


def test_freeing_gpu_memory_between_cases_imports_no_gpu_library():
    """The bench frees CuPy's and PyTorch's cached GPU blocks only where those libraries are imported already: it
    used to import torch for it, and a first `import torch` that failed part-way (under the stand-in CuPy module
    of the test above) left a process that segfaulted at exit (`pytest tests/test_bench.py`: exit 139)."""
    code = ("import sys; from gpuconv.bench import cli; cli._free_gpu_memory(); "
            "print(sorted(m for m in ('torch', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


def test_segnet_ladder_at_the_gpu_default_batch_has_large_tensors():
    full = build_cases(["segnet"], ["pool_argmax"], ["float32"], cli.default_batch("full", "gpu"))
    assert cli.default_batch("full", "gpu") == 32 and cli.default_batch("full", "cpu") == 1
    big = [c.layer.name for c in full if c.describe()["large_tensor"]]
    assert big == ["segnet_pool1", "segnet_pool2", "segnet_pool3", "segnet_pool4"]
    assert full[0].tensor_bytes == 32 * 360 * 480 * 64 * 4                 # 1.4 GB
    quick = build_cases(["segnet"], ["unpool"], ["float32"], cli.default_batch("quick", "gpu"))
    assert [c.layer.name for c in quick if c.describe()["large_tensor"]] == \
        ["segnet_pool1", "segnet_pool2", "segnet_pool3"]


def test_percent_of_copy_and_the_target():
    assert metrics.percent_of_copy("pool", 2400.0, 3000.0) == pytest.approx(80.0)
    assert metrics.percent_of_copy("conv", 2400.0, 3000.0) is None
    assert metrics.percent_of_copy("pool", 2400.0, None) is None
    row = {"status": "ok", "large_tensor": True, "pct_copy_bw": 80.0}
    assert metrics.meets_pool_target(row) is True
    assert metrics.meets_pool_target({**row, "pct_copy_bw": 79.9}) is False
    assert metrics.meets_pool_target({**row, "large_tensor": False}) is None
    assert metrics.meets_pool_target({**row, "pct_copy_bw": None}) is None


def _gpu_doc(copy_gbps=3000.0):
    def row(layer, op, impl, gbps, large, status="ok"):
        r = {"layer_set": "segnet", "layer": layer, "op": op, "dtype": "float32", "batch": 32, "kind": "pool",
             "impl": impl, "status": status, "note": "", "tensor_bytes": (2**28 if large else 2**20),
             "large_tensor": large, "flops": 0}
        if status == "ok":
            r.update(median_ms=1.0, p20_ms=1.0, p80_ms=1.1, reps=50, gflops=None, gbps=gbps,
                     pct_peak=100 * gbps / 3350, pct_copy_bw=metrics.percent_of_copy("pool", gbps, copy_gbps))
        return r
    rows = [row("segnet_pool1", "pool_argmax", "gpuconv-cuda", 2700.0, True),
            row("segnet_pool1", "unpool", "gpuconv-cuda", 1500.0, True),
            row("segnet_pool1", "unpool", "torch-cudnn", 2000.0, True),
            row("segnet_pool5", "pool_argmax", "gpuconv-cuda", 900.0, False),
            row("segnet_pool2", "pool_grad", "gpuconv-cuda", None, True, status="error")]
    copy = {"gbps": copy_gbps, "method": "kernel", "buffer_bytes": 2**30, "bytes_per_copy": 2**31,
            "l2_factor": 20.48, "methods": {"memcpy": {"gbps": 2900.0}, "kernel": {"gbps": copy_gbps}}}
    if copy_gbps is None:
        copy = {"gbps": None, "reason": "RuntimeError: no memory"}
    return {"created": "now", "command": "bench", "gpuconv": "0", "backend": "cuda",
            "device": {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3", "gpu": {}, "copy_bandwidth": copy},
            "settings": {"timing": "cuda events", "batch": 32, "batch3d": 2},
            "implementations": {}, "results": rows}


def test_pool_target_summary_and_markdown_column():
    doc = _gpu_doc()
    report.add_ratios(doc["results"])
    t = report.pool_target(doc)
    assert (t["target_pct"], t["min_tensor_bytes"], t["copy_gbps"]) == (80.0, 64 * 2**20, 3000.0)
    assert [(r["op"], r["meets"]) for r in t["rows"]] == [("pool_argmax", True), ("unpool", False),
                                                          ("pool_grad", None)]    # gpuconv rows >= 64 MiB only
    assert (t["qualifying"], t["met"]) == (3, 1)
    md = report.markdown(doc)
    assert "| % peak | % copy BW | x gpuconv |" in md
    assert "- measured copy bandwidth: 3000 GB/s (best of memcpy 2900, kernel 3000 GB/s" in md
    assert "| 90.0 ✓ |" in md and "| 50.0 ✗ |" in md and "| 66.7 ✗ |" in md   # torch row marked too
    assert "| 30.0 |" in md                                                    # pool5: small tensor, no mark
    assert "**Pooling target**" in md and "Met by 1 of 3 qualifying rows" in md
    assert "| segnet_pool1 | unpool | float32 | 32 | 256 | 1500.0 | 50.0 | NO |" in md
    assert "not run (error)" in md
    header = next(line for line in md.splitlines() if line.startswith("| layer | op | dtype | N | impl"))
    for line in md.splitlines():                                               # every table row has all columns
        if line.startswith("| segnet_pool") and "impl" not in line and line.count("|") > 9:
            assert line.count("|") == header.count("|")


def test_unmeasured_copy_bandwidth_is_stated_not_fatal():
    doc = _gpu_doc(copy_gbps=None)
    report.add_ratios(doc["results"])
    md = report.markdown(doc)
    assert "measured copy bandwidth: not measured (RuntimeError: no memory)" in md
    assert "Not checked: the copy bandwidth was not measured." in md


def test_fake_gpu_run_reports_percent_of_copy_bandwidth(tmp_path, monkeypatch):
    """cli.main down the GPU path (kind gpu) with the GPU replaced: the numpy backend named gpuconv-cuda, a CPU
    clock for CUDA events, a fixed measured copy bandwidth. Checks the wiring, not GPU numbers."""
    from gpuconv.bench.peers import GpuconvImpl

    class FakeCudaImpl(GpuconvImpl):
        def __init__(self, backend, precision=None):
            super().__init__("numpy", precision)
            self.name = "gpuconv-cuda"

    monkeypatch.setattr(cli, "_resolve_backend", lambda requested: ("cuda", ""))
    monkeypatch.setattr(cli, "GpuconvImpl", FakeCudaImpl)
    monkeypatch.setattr(cli, "_device_info", lambda kind: {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3",
                                                           "gpu": {}, "l2_bytes": 2**20})
    monkeypatch.setattr(cli, "measure_copy_bandwidth",
                        lambda mode, l2: {"gbps": 0.5, "method": "memcpy", "buffer_bytes": 2**22, "methods": {}})
    monkeypatch.setattr(timing, "CudaEventTimer", lambda: timing.CpuTimer())
    monkeypatch.setattr(metrics, "LARGE_TENSOR_BYTES", 10**6)        # 45x60x64: float32 0.69 MB, float64 1.38 MB
    rc = cli.main(["--quick", "--batch", "1", "--match", "quick_pool", "--ops", "pool,unpool", "--dtypes",
                   "float32,float64", "--peers", "none", "--out", str(tmp_path), "--name", "g"])
    doc = json.loads((tmp_path / "g.json").read_text())
    assert rc == 0 and doc["device"]["copy_bandwidth"]["gbps"] == 0.5
    for r in doc["results"]:
        assert r["status"] == "ok" and r["pct_copy_bw"] == pytest.approx(100 * r["gbps"] / 0.5)
        assert r["pct_peak"] == pytest.approx(100 * r["gbps"] / 3350)
        assert r["large_tensor"] == (r["dtype"] == "float64")
    t = doc["pool_target"]
    assert t["qualifying"] == 2 and {r["dtype"] for r in t["rows"]} == {"float64"}
    md = (tmp_path / "g.md").read_text()
    assert "% copy BW" in md and "**Pooling target**" in md and "qualifying rows" in md


def test_cpu_runs_have_no_copy_bandwidth_column(tmp_path):
    rc, doc = _run(tmp_path, "--match", "quick_pool", "--ops", "pool", "--peers", "none")
    assert rc == 0
    assert "copy_bandwidth" not in doc["device"] and "pool_target" not in doc
    (r,) = doc["results"]
    assert "pct_copy_bw" not in r and r["tensor_bytes"] == 45 * 60 * 64 * 4 and r["large_tensor"] is False
    md = (tmp_path / "t.md").read_text()
    assert "copy BW" not in md and "Pooling target" not in md


def test_torch_cpu_dilation_only_for_one_tap_filters():
    """Dilation 2 (which changes nothing for one tap per axis) only where the filter has one tap per axis."""
    from gpuconv.bench.peers import torch_cpu_dilation
    assert torch_cpu_dilation((1, 1)) == 2 and torch_cpu_dilation((1, 1, 1)) == 2
    assert torch_cpu_dilation((3, 3)) == 1 and torch_cpu_dilation((1, 3)) == 1 and torch_cpu_dilation((7, 7)) == 1


def test_onednn_convolutions_reads_exec_lines_only():
    from gpuconv.bench.peers import onednn_convolutions
    text = "\n".join([
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 dst:f32::blocked:"
        "Acdb64a::f0,attr-scratchpad:user,,64x64x1x1,0.01",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,forward_training,"
        "src:f32::blocked:acdb::f0 wei:f32:a:blocked:Acdb64a::f0 bia:undef,attr-scratchpad:user,,mb8_ic64oc64,0.8",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit_1x1:avx512_core,backward_data,"
        "src:f32:a:blocked:aBcd16b::f0,,,mb8,0.1",
        "unrelated output, convolution, exec"])
    assert onednn_convolutions(text) == ["brgconv_1x1:avx512_core forward_training src:f32::blocked:acdb::f0"]
    assert onednn_convolutions("") == []


def test_channels_last_onednn_needs_a_channels_last_source():
    from gpuconv.bench.peers import channels_last_onednn
    assert channels_last_onednn(["brgconv_1x1:avx512_core forward_training src:f32::blocked:acdb::f0"])
    assert channels_last_onednn(["jit:avx512_core backward_data src:f32::blocked:acdeb::f0"])
    assert not channels_last_onednn(["jit_1x1:avx512_core backward_data src:f32:a:blocked:aBcd16b::f0"])
    assert not channels_last_onednn([])


def test_fd_stdout_captures_descriptor_one_and_restores_it(capfd):
    import os

    from gpuconv.bench.peers import fd_stdout
    before = os.fstat(1).st_ino
    got = fd_stdout(lambda: os.write(1, b"from C level\n"))
    assert got == "from C level\n"
    assert os.fstat(1).st_ino == before
    os.write(1, b"after\n")
    assert "after" in capfd.readouterr().out


def test_the_timed_gpu_is_found_by_pci_bus_id(monkeypatch):
    """NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES: the report names the GPU whose bus id is
    CuPy's current device's, in either spelling, not NVML's device 0."""
    import types

    from gpuconv.device_report import matching_device, pci_key
    assert pci_key("00000000:3B:00.0") == pci_key("0000:3b:00.0") == (0, 0x3B, 0, 0)
    assert pci_key(None) is None and pci_key("garbage") is None
    devices = [{"index": 0, "name": "A", "pci_bus_id": "00000000:17:00.0"},
               {"index": 1, "name": "B", "pci_bus_id": "00000000:3B:00.0"}]
    assert matching_device(devices, "0000:3b:00.0")["name"] == "B"
    assert matching_device(devices, "0000:99:00.0") is None and matching_device(devices, None) is None

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(pci_bus_id="0000:3B:00.0", id=0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert cli._timed_gpu({"devices": devices})["name"] == "B"
    assert cli._timed_gpu({"devices": devices[:1]})["name"] == "A"      # one GPU: the one timed
    monkeypatch.setitem(sys.modules, "cupy", None)                       # no CuPy: unknown among several
    assert cli._timed_gpu({"devices": devices}) == {}
    assert "B, driver 1" in report._gpu_line({"devices": devices, "driver": "1"}, devices[1])
    assert report._gpu_line({"devices": devices, "driver": "1"}).startswith("A, driver 1")


def test_gpu_report_reads_every_field_through_nvml(monkeypatch):
    """device_report.gpu_report against a stand-in pynvml: every field, the PCI bus id decoded, and a query
    NVML refuses (NVMLError) gives None instead of an exception."""
    import types

    from gpuconv.device_report import gpu_report

    class NVMLError(Exception):
        pass

    def refused(*args):
        raise NVMLError("not supported")

    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlSystemGetDriverVersion = lambda: b"580.1"
    nvml.nvmlDeviceGetName = lambda h: [b"GPU A", "GPU B"][h]
    nvml.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=[b"00000000:17:00.0", "00000000:3B:00.0"][h])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30)
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if kind == 1 else 2619
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    nvml.nvmlDeviceGetPerformanceState = lambda h: 0
    nvml.nvmlDeviceGetTemperature = lambda h, kind: 40
    nvml.nvmlDeviceGetPowerUsage = lambda h: 75000
    nvml.nvmlDeviceGetEnforcedPowerLimit = refused
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    g = gpu_report()
    assert g["available"] and g["driver"] == "580.1"
    a, b = g["devices"]
    assert (a["name"], a["pci_bus_id"], b["name"], b["pci_bus_id"]) == ("GPU A", "00000000:17:00.0", "GPU B",
                                                                          "00000000:3B:00.0")
    assert a["memory_total_gib"] == 80.0 and a["power_w"] == 75.0 and a["power_limit_w"] is None
