"""The benchmark's and the device report's GPU-only paths, driven without a GPU: a run cut short keeps its
measurements, reruns do not overwrite each other, host inputs are made once per case, the % of peak uses the TF32
peak only for an implementation that ran TF32, the CuPy im2col peer (numbers and cuBLAS compute type) through a
stand-in CuPy built on NumPy, and NVML refusing a query never ends `info` or a benchmark run."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import sys
import types

import numpy as np
import pytest

import gpuconv
from gpuconv.bench import cli, metrics, peers, report, timing
from gpuconv.bench.cases import build_cases


def _argv(tmp_path, *extra, name="t"):
    argv = ["--quick", "--backend", "numpy", "--out", str(tmp_path), "--match", "quick_3x3s2", "--ops",
            "fprop,dgrad,wgrad", "--peers", "none", *extra]
    return argv + (["--name", name] if name else [])


def _doc(tmp_path, stem="t"):
    return json.loads((tmp_path / f"{stem}.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# a run cut short (a batch slot's time limit: timeout sends SIGTERM; or Ctrl-C) keeps what it measured
# ---------------------------------------------------------------------------------------------------------
def _run_case_that(monkeypatch, on_call):
    """cli.run_case wrapped: on_call(n) runs before the n-th measurement (1-based)."""
    real, count = cli.run_case, [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        on_call(count[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(cli, "run_case", wrapped)


def test_reports_are_rewritten_after_every_case(tmp_path, monkeypatch):
    """While the third measurement starts, the JSON and Markdown on disk hold the first two, marked partial: a run
    killed there (SIGKILL, no handler) keeps them."""
    seen = {}

    def on_call(n):
        if n == 3:
            seen["doc"] = _doc(tmp_path)
            seen["md"] = (tmp_path / "t.md").read_text()
    _run_case_that(monkeypatch, on_call)
    assert cli.main(_argv(tmp_path)) == 0
    partial = seen["doc"]
    assert partial["complete"] is False and partial["planned"] == 3
    assert [r["op"] for r in partial["results"]] == ["fprop", "dgrad"]
    assert all(r["status"] == "ok" for r in partial["results"])
    assert "**partial report**: 2 of 3 measurements" in seen["md"]
    final = _doc(tmp_path)
    assert final["complete"] is True and "interrupted" not in final and len(final["results"]) == 3
    assert "partial report" not in (tmp_path / "t.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))                     # written through a rename, nothing left over


@pytest.mark.parametrize("how,code", [("ctrl-c", 130), ("sigterm", 143)])
def test_an_interrupted_run_writes_a_final_report_of_what_it_measured(tmp_path, monkeypatch, capsys, how, code):
    def on_call(n):
        if n == 3:
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)                # what `timeout` sends
    _run_case_that(monkeypatch, on_call)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(_argv(tmp_path)) == code
    assert signal.getsignal(signal.SIGTERM) is before           # the run's handler is removed again
    doc = _doc(tmp_path)
    assert doc["complete"] is False and [r["op"] for r in doc["results"]] == ["fprop", "dgrad"]
    assert ("SIGTERM" if how == "sigterm" else "KeyboardInterrupt") in doc["interrupted"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"   # the final report has its chart
    md = (tmp_path / "t.md").read_text()
    assert "**partial report**: 2 of 3 measurements (interrupted: " in md
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_is_not_recorded_as_one_failed_measurement(tmp_path, monkeypatch):
    """SIGTERM inside a measurement (run_case catches Exception per row) stops the run instead of becoming an
    error row after which the run goes on."""
    def prepare_then_term(self, case, inputs, copies):
        os.kill(os.getpid(), signal.SIGTERM)
        return []
    monkeypatch.setattr(peers.GpuconvImpl, "prepare", prepare_then_term)
    assert cli.main(_argv(tmp_path)) == 143
    doc = _doc(tmp_path)
    assert doc["results"] == [] and doc["complete"] is False


def test_progress_lines_estimate_the_time_left():
    now = [0.0]
    out = io.StringIO()
    p = cli.Progress(4, stream=out, clock=lambda: now[0])
    now[0] = 30.0
    p.step("a")
    now[0] = 200.0
    p.step("b")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/4] a  (30.0 s, ~1 min 30 s left)"
    assert lines[1] == "[2/4] b  (200.0 s, ~3 min 20 s left)"
    assert cli._duration(4000) == "1 h 06 min" and cli._duration(5) == "5 s"


# ---------------------------------------------------------------------------------------------------------
# file names: a second run on the same day does not overwrite the first
# ---------------------------------------------------------------------------------------------------------
def test_default_stem_gets_the_time_when_a_report_of_that_stem_exists(tmp_path):
    now = dt.datetime(2026, 12, 1, 9, 8, 7)
    assert cli.default_stem(tmp_path, now, "NVIDIA H100 80GB HBM3") == "2026-12-01_nvidia-h100-80gb-hbm3"
    (tmp_path / "2026-12-01_nvidia-h100-80gb-hbm3.md").write_text("an earlier run")
    assert cli.default_stem(tmp_path, now, "NVIDIA H100 80GB HBM3") == "2026-12-01_nvidia-h100-80gb-hbm3_090807"


def test_two_runs_without_name_keep_both_reports(tmp_path):
    assert cli.main(_argv(tmp_path, "--ops", "fprop", name=None)) == 0
    assert cli.main(_argv(tmp_path, "--ops", "wgrad", name=None)) == 0
    docs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert sorted(d["results"][0]["op"] for d in docs) == ["fprop", "wgrad"]


# ---------------------------------------------------------------------------------------------------------
# host inputs once per case; TF32 basis per implementation
# ---------------------------------------------------------------------------------------------------------
class _CountingPeer(peers.GpuconvImpl):
    """gpuconv's NumPy backend under another name, to have several implementations per case."""

    def __init__(self, name, tf32=False):
        super().__init__("numpy")
        self.name, self.tf32 = name, tf32

    def uses_tf32(self, case):      # a peer's answer is its `tf32`, whatever the case
        return self.tf32


def test_host_inputs_are_made_once_per_case(tmp_path, monkeypatch):
    from gpuconv.bench.cases import Case
    made = []
    real = Case.host_inputs

    def counting(self, seed=0):
        made.append(self.name)
        return real(self, seed)
    monkeypatch.setattr(Case, "host_inputs", counting)
    monkeypatch.setattr(cli, "default_peers", lambda kind, tf32: [_CountingPeer("p1"), _CountingPeer("p2")])
    assert cli.main(_argv(tmp_path, "--peers", "auto")) == 0
    assert len(_doc(tmp_path)["results"]) == 9 and len(made) == 3       # 3 cases x 3 impls, inputs made 3 times


def test_percent_of_peak_uses_tf32_only_for_an_implementation_that_ran_it():
    """--tf32 with a peer that did not turn TF32 on (or the reverse) must not change that peer's basis."""
    (case,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3s2")
    peak = metrics.find_peak("NVIDIA H100 80GB HBM3")
    args = types.SimpleNamespace(tf32=True, cpu_peak_gflops=None)
    exact = cli.run_case(case, _CountingPeer("cupy-im2col", tf32=False), "cpu", "quick", None, peak, args)
    assert exact["status"] == "ok" and "FP32 non-tensor" in exact["peak_basis"]
    args.tf32 = False
    tensor = cli.run_case(case, _CountingPeer("torch-cudnn", tf32=True), "cpu", "quick", None, peak, args)
    assert "TF32 tensor dense" in tensor["peak_basis"]


def test_torch_peer_claims_tf32_only_on_the_gpu_when_allowed():
    assert peers.TorchImpl("gpu", allow_tf32=True).tf32 is True
    assert peers.TorchImpl("gpu", allow_tf32=False).tf32 is False
    assert peers.TorchImpl("cpu", allow_tf32=True).tf32 is False


def test_gpuconv_claims_tf32_for_float32_convs_on_the_gpu_when_allowed(monkeypatch):
    monkeypatch.delenv("GPUCONV_FLOAT32_PRECISION", raising=False)
    (fprop,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3s2")
    (dgrad,) = build_cases(["quick"], ["dgrad"], ["float32"], 1, match="quick_3x3s2")
    (wgrad,) = build_cases(["quick"], ["wgrad"], ["float32"], 1, match="quick_3x3s2")
    (half,) = build_cases(["quick"], ["fprop"], ["float16"], 1, match="quick_3x3s2")
    pool = build_cases(["segnet"], ["pool_argmax"], ["float32"], 1)[0]
    default = peers.GpuconvImpl("cuda")
    assert default.precision == "ieee" and not default.uses_tf32(fprop)
    for mode in ("tf32", "3xtf32"):
        impl = peers.GpuconvImpl("cuda", mode)
        assert impl.uses_tf32(fprop) and impl.uses_tf32(dgrad) and impl.uses_tf32(wgrad)
        assert not impl.uses_tf32(half) and not impl.uses_tf32(pool)
        assert not peers.GpuconvImpl("numpy", mode).uses_tf32(fprop)
        assert impl.settings()["float32_precision"] == mode and "tensor cores" in impl.settings()["precision"]
        with impl.context():
            assert gpuconv.get_float32_precision() == mode and gpuconv.get_backend() == "cuda"
        assert gpuconv.get_float32_precision() == "ieee"
    monkeypatch.setenv("GPUCONV_FLOAT32_PRECISION", "tf32")
    assert peers.GpuconvImpl("cuda").precision == "tf32"
    with pytest.raises(ValueError, match="^precision: expected one of 'ieee', 'tf32', '3xtf32', got 'fp8'"):
        peers.GpuconvImpl("cuda", "fp8")


def test_percent_of_peak_follows_gpuconvs_per_case_tf32(monkeypatch):
    (case,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3s2")
    peak = metrics.find_peak("NVIDIA H100 80GB HBM3")
    args = types.SimpleNamespace(tf32=False, cpu_peak_gflops=None)
    impl = peers.GpuconvImpl("numpy", "tf32")
    assert "FP32 non-tensor" in cli.run_case(case, impl, "cpu", "quick", None, peak, args)["peak_basis"]
    monkeypatch.setattr(impl, "uses_tf32", lambda c: c is case)
    assert "TF32 tensor dense" in cli.run_case(case, impl, "cpu", "quick", None, peak, args)["peak_basis"]


def test_bench_precision_option(tmp_path, monkeypatch):
    assert cli.parse_args(["--precision", "3xtf32"]).precision == "3xtf32"
    assert cli.parse_args([]).precision is None
    with pytest.raises(SystemExit):
        cli.parse_args(["--precision", "fp16"])
    monkeypatch.setattr(cli, "default_peers", lambda kind, tf32: [])
    assert cli.main(_argv(tmp_path, "--precision", "tf32")) == 0
    doc = _doc(tmp_path)
    assert doc["settings"]["gpuconv_float32_precision"] == "tf32"
    assert doc["implementations"]["gpuconv-numpy"]["settings"]["float32_precision"] == "tf32"
    monkeypatch.setenv("GPUCONV_FLOAT32_PRECISION", "tf64")
    assert cli.main(_argv(tmp_path)) == 2                          # a malformed setting: a usage error


# ---------------------------------------------------------------------------------------------------------
# the CuPy im2col + cuBLAS peer on a stand-in CuPy made of NumPy
# ---------------------------------------------------------------------------------------------------------
class _FakeLinalg(types.ModuleType):
    """cupy._core._routines_linalg's compute-type switch (what CUPY_TF32 sets at the first float32 matmul)."""
    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32 = 0, 1, 7

    def __init__(self, current):
        super().__init__("cupy._core._routines_linalg")
        self.current, self.set_calls = current, []

    def set_compute_type(self, dtype, kind):
        self.set_calls.append((np.dtype(dtype), kind))
        self.current = kind

    def get_compute_type(self, dtype):
        return self.current

    def compute_type_to_str(self, kind):
        return {1: "COMPUTE_TYPE_DEFAULT", 7: "COMPUTE_TYPE_TF32"}[kind]


@pytest.fixture
def numpy_cupy(monkeypatch):
    """A 'cupy' whose arrays are NumPy arrays (asarray, pad, as_strided, matmul), with a fake linalg module whose
    float32 compute type starts at TF32, as with CUPY_TF32=1 in the environment."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake"
    cp.asarray, cp.pad, cp.ascontiguousarray, cp.lib = np.asarray, np.pad, np.ascontiguousarray, np.lib
    cp.is_available = lambda: True
    core = types.ModuleType("cupy._core")
    core._routines_linalg = _FakeLinalg(current=7)
    cp._core = core
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", core._routines_linalg)
    return cp


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_im2col_peer_computes_tf_convolutions(numpy_cupy, dtype):
    """Its padded, strided column view is TF's convolution: SAME with TF's asymmetric padding (stride 2), and 3-D."""
    impl = peers.CupyIm2colImpl()
    assert impl.availability() == "yes"
    for case in build_cases(["quick"], ["fprop"], [dtype], 2):
        inputs = case.host_inputs()
        calls = impl.prepare(case, inputs, 2)
        assert len(calls) == 2
        got = calls[1]()
        conv = gpuconv.conv2d if case.nspatial == 2 else gpuconv.conv3d
        want = conv(inputs["x"], inputs["w"], case.layer.strides, case.layer.padding)
        assert got.shape == want.shape == case.y_shape
        tol = 2e-2 if dtype == "float16" else 1e-4
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def test_im2col_peer_refuses_what_its_gemm_does_not_compute():
    """One GEMM over all input channels: ungrouped forward convolutions only (a depthwise layer's filter has one
    input channel per group, which its column view would mix up), so it is not timed against gpuconv there."""
    impl = peers.CupyIm2colImpl()
    (dw,) = build_cases(["mobilenet"], ["fprop"], ["float32"], 1, match="mbv1_dw9")
    assert dw.problem.groups == 1024
    assert impl.supports(dw) == "baseline implements ungrouped convolutions only"
    (wg,) = build_cases(["quick"], ["wgrad"], ["float32"], 1, match="quick_3x3_64")
    assert impl.supports(wg) == "baseline implements fprop only"
    (ok,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3_64")
    assert impl.supports(ok) is None


def test_im2col_peer_sets_cublas_compute_type_from_tf32(numpy_cupy):
    """CUPY_TF32=1 in the environment must not make the 'exact float32' baseline run TF32, and --tf32 must turn
    TF32 on, not only change the peak it is compared with."""
    linalg = numpy_cupy._core._routines_linalg
    exact = peers.CupyIm2colImpl(allow_tf32=False)
    s = exact.settings()
    assert linalg.set_calls[-1] == (np.dtype(np.float32), linalg.COMPUTE_TYPE_DEFAULT)
    assert s["float32 compute type"] == "COMPUTE_TYPE_DEFAULT" and s["tf32"] is False and exact.tf32 is False
    fast = peers.CupyIm2colImpl(allow_tf32=True)
    (case,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3s2")
    fast.prepare(case, case.host_inputs(), 1)
    assert linalg.current == linalg.COMPUTE_TYPE_TF32 and fast.tf32 is True
    exact.prepare(case, case.host_inputs(), 1)                  # each peer sets its own mode before it runs
    assert linalg.current == linalg.COMPUTE_TYPE_DEFAULT
    assert [type(p).__name__ for p in peers.default_peers("gpu", True)] == ["TorchImpl", "CupyIm2colImpl"]
    assert peers.default_peers("gpu", True)[1].allow_tf32 is True
    assert peers.peers_by_name(["cupy-im2col"], "gpu", True)[0].allow_tf32 is True


# ---------------------------------------------------------------------------------------------------------
# NVML refusing a query: a reason or a per-device error, never an exception
# ---------------------------------------------------------------------------------------------------------
class NVMLError(Exception):
    pass


def _nvml(monkeypatch, count=2, refuse_handle=(), refuse_count=False):
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    nvml.nvmlInit = lambda: None
    shutdowns = []
    nvml.nvmlShutdown = lambda: shutdowns.append(1)

    def get_count():
        if refuse_count:
            raise NVMLError("Unknown Error")
        return count

    def handle(i):
        if i in refuse_handle:
            raise NVMLError("Insufficient Permissions")
        return i
    nvml.nvmlDeviceGetCount, nvml.nvmlDeviceGetHandleByIndex = get_count, handle
    nvml.nvmlSystemGetDriverVersion = lambda: "580.159.04"
    nvml.nvmlDeviceGetName = lambda h: f"NVIDIA H100 80GB HBM3 #{h}"
    nvml.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=f"00000000:{h + 0x17:02X}:00.0")
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30)
    for fn in ("nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetTemperature"):
        setattr(nvml, fn, lambda h, kind: 1)
    for fn in ("nvmlDeviceGetPerformanceState", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit"):
        setattr(nvml, fn, lambda h: 0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return shutdowns


def test_gpu_report_keeps_the_gpus_nvml_can_read(monkeypatch):
    from gpuconv.device_report import gpu_report
    shutdowns = _nvml(monkeypatch, refuse_handle=(0,))
    g = gpu_report()
    assert g["available"] is True and g["driver"] == "580.159.04" and shutdowns == [1]
    refused, ok = g["devices"]
    assert refused == {"index": 0, "name": None, "error": "NVML refused this GPU: Insufficient Permissions"}
    assert ok["name"] == "NVIDIA H100 80GB HBM3 #1" and ok["pci_bus_id"] == "00000000:18:00.0"
    _nvml(monkeypatch, count=1, refuse_handle=(0,))
    assert gpu_report()["available"] is False


def test_gpu_report_when_nvml_cannot_count(monkeypatch):
    from gpuconv.device_report import gpu_report
    shutdowns = _nvml(monkeypatch, refuse_count=True)
    g = gpu_report()
    assert g == {"available": False, "reason": "NVML could not count the GPUs: Unknown Error"}
    assert shutdowns == [1]


def test_info_and_format_info_survive_a_refused_gpu(monkeypatch):
    from gpuconv.__main__ import format_info
    _nvml(monkeypatch, refuse_handle=(1,))
    data = gpuconv.info()
    assert data["gpu"]["devices"][1]["error"]
    text = format_info(data)
    assert "[0] NVIDIA H100 80GB HBM3 #0" in text and "[1] unknown" in text


def test_a_failing_gpu_report_after_the_run_loses_nothing(tmp_path, monkeypatch):
    """The GPU path reads NVML again after the last measurement; a failure there is a reason in the report."""
    from gpuconv import device_report
    monkeypatch.setattr(cli, "_resolve_backend", lambda requested: ("cuda", ""))
    monkeypatch.setattr(cli, "GpuconvImpl", lambda backend, precision: _CountingPeer("gpuconv-cuda"))
    monkeypatch.setattr(cli, "_device_info", lambda kind: {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3",
                                                           "gpu": {}, "l2_bytes": 2**20})
    monkeypatch.setattr(cli, "measure_copy_bandwidth", lambda mode, l2: {"gbps": None, "reason": "none"})
    monkeypatch.setattr(timing, "CudaEventTimer", lambda: timing.CpuTimer())

    def lost(*args):
        raise RuntimeError("GPU fell off the bus")
    monkeypatch.setattr(device_report, "gpu_report", lost)
    assert cli.main(_argv(tmp_path, "--ops", "fprop")) == 0
    doc = _doc(tmp_path)
    assert doc["results"][0]["status"] == "ok" and doc["complete"] is True
    assert doc["device"]["gpu_after"] == {"available": False, "reason": "RuntimeError: GPU fell off the bus"}


@pytest.mark.parametrize("name,expected", [("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200 NVL", "H200 NVL"),
                                           ("NVIDIA H200", "H200 SXM"), ("NVIDIA H100 80GB HBM3", "H100 SXM5")])
def test_nvl_cards_get_their_own_peaks(name, expected):
    peak = metrics.find_peak(name)
    assert peak.name == expected
    if "NVL" in name:
        assert peak.fp32_tflops == 60.0 and peak.fp16_tflops == 835.5


def test_info_reports_the_cuda12_nvrtc_wheel(monkeypatch):
    import importlib
    info_module = importlib.import_module("gpuconv.info")       # gpuconv.info is also the function
    versions = {"nvidia-cuda-nvrtc-cu12": "12.9.86"}
    monkeypatch.setattr(info_module, "_version", versions.get)
    assert info_module.info()["nvidia-cuda-nvrtc"] == "12.9.86"


def test_partial_markdown_line_only_for_partial_reports():
    base = {"results": [1, 2], "planned": 5}
    assert report._partial_lines({**base, "complete": True}) == []
    assert report._partial_lines({"results": []}) == []                  # reports from before the field
    assert report._partial_lines({**base, "complete": False}) == [
        "- **partial report**: 2 of 5 measurements (in progress or killed)"]
