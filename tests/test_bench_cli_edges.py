"""`python -m gpuconv bench` edges a mutation check of bench/cli.py and bench/peers.py found untested: --layers
picks the layer sets, an unknown --peers name is a usage error, a peer's Unsupported from prepare() is a row, the
progress text of a row, the GPU device record (name from NVML, else CuPy), GPU memory freed after each GPU
measurement only, the stem check on every report file, the GPU peers' settings (cuDNN flags, CuPy arrays) through
stand-in modules (no GPU, no torch needed)."""
from __future__ import annotations

import datetime as dt
import json
import sys
import types

import numpy as np
import pytest

from gpuconv.bench import cli, peers, timing
from gpuconv.bench.cases import build_cases


def _doc(tmp_path, stem="t"):
    return json.loads((tmp_path / f"{stem}.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# arguments: --layers, --peers, --cpu-peak-gflops
# ---------------------------------------------------------------------------------------------------------
def test_layers_option_chooses_the_layer_sets(tmp_path):
    """--layers segnet with --quick times SegNet's layers, not the quick set --quick implies without --layers."""
    rc = cli.main(["--quick", "--backend", "numpy", "--layers", "segnet", "--match", "segnet_pool5", "--ops", "pool",
                   "--peers", "none", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    doc = _doc(tmp_path)
    assert doc["settings"]["layer_sets"] == ["segnet"]
    assert [(r["layer_set"], r["layer"], r["status"]) for r in doc["results"]] == [("segnet", "segnet_pool5", "ok")]


def test_unknown_layer_set_and_peer_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--layers", "quick,nope", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--layers: unknown set 'nope'" in capsys.readouterr().err
    # an unknown peer name: exit 2 (usage), not 1 (which says a gpuconv measurement failed)
    rc = cli.main(["--quick", "--backend", "numpy", "--peers", "nope", "--out", str(tmp_path), "--name", "t"])
    assert rc == 2 and "unknown peer 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_cpu_peak_gflops_accepts_any_positive_value():
    assert cli._gflops("0.5") == 0.5 and cli._gflops("1e3") == 1000.0


# ---------------------------------------------------------------------------------------------------------
# rows and progress
# ---------------------------------------------------------------------------------------------------------
class _PickyPeer(peers.GpuconvImpl):
    """gpuconv's NumPy backend under another name whose prepare() refuses the case (as the torch peer does for a
    padding it cannot copy)."""

    def __init__(self):
        super().__init__("numpy")
        self.name = "picky-peer"

    def prepare(self, case, inputs, copies):
        raise peers.Unsupported("padding [1, 1] gives output (7, 7), TF gives (8, 8)")


def test_unsupported_from_prepare_is_an_unsupported_row(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "default_peers", lambda kind, tf32: [_PickyPeer()])
    rc = cli.main(["--quick", "--backend", "numpy", "--match", "quick_3x3s2", "--ops", "fprop", "--out",
                   str(tmp_path), "--name", "t"])
    assert rc == 0
    rows = {r["impl"]: r for r in _doc(tmp_path)["results"]}
    assert rows["gpuconv-numpy"]["status"] == "ok"
    assert rows["picky-peer"]["status"] == "unsupported"
    assert rows["picky-peer"]["note"] == "padding [1, 1] gives output (7, 7), TF gives (8, 8)"


def test_progress_text_of_a_row():
    # 1.23456 ms -> '1.235'; a conv row shows GFLOP/s, a pool row (gflops None) GB/s; others status: note
    assert cli._describe({"status": "ok", "median_ms": 1.23456, "reps": 7, "gflops": 56.78, "gbps": 3.0}) == \
        "1.235 ms median of 7, 56.8 GFLOP/s"
    assert cli._describe({"status": "ok", "median_ms": 0.5, "reps": 20, "gflops": None, "gbps": 12.34}) == \
        "0.500 ms median of 20, 12.3 GB/s"
    assert cli._describe({"status": "unsupported", "note": "fprop only"}) == "unsupported: fprop only"


def test_gpu_memory_is_freed_after_each_gpu_measurement_only(monkeypatch):
    (case,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3s2")
    freed = []
    monkeypatch.setattr(cli, "_free_gpu_memory", lambda: freed.append(1))
    monkeypatch.setattr(timing, "CudaEventTimer", lambda: timing.CpuTimer())
    args = types.SimpleNamespace(cpu_peak_gflops=None)
    assert cli.run_case(case, peers.GpuconvImpl("numpy"), "gpu", "quick", None, None, args)["status"] == "ok"
    assert freed == [1]
    assert cli.run_case(case, peers.GpuconvImpl("numpy"), "cpu", "quick", None, None, args)["status"] == "ok"
    assert freed == [1]                                          # nothing to free after a CPU measurement


# ---------------------------------------------------------------------------------------------------------
# the GPU device record, through a stand-in CuPy
# ---------------------------------------------------------------------------------------------------------
def _fake_cupy(name=b"CuPy GPU", l2=50 * 2**20):
    class Device:
        id = 0
        pci_bus_id = "0000:41:00.0"

        def __init__(self):
            self.attributes = {"L2CacheSize": l2}

    cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
        getDeviceProperties=lambda i: {"name": name}))
    return types.SimpleNamespace(cuda=cuda)


@pytest.mark.parametrize("nvml_name,expected", [("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
                                                (None, "CuPy GPU")])
def test_gpu_device_is_named_by_nvml_else_by_cupy(monkeypatch, nvml_name, expected):
    from gpuconv import device_report
    record = {"pci_bus_id": "00000000:41:00.0"} | ({"name": nvml_name} if nvml_name else {})
    monkeypatch.setattr(device_report, "gpu_report", lambda: {"available": True, "devices": [record]})
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    d = cli._device_info("gpu")
    assert d["kind"] == "gpu" and d["name"] == expected
    assert d["timed_gpu"] == record and d["l2_bytes"] == 50 * 2**20 and "cpu" in d


# ---------------------------------------------------------------------------------------------------------
# file stems
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["json", "md", "png"])
def test_default_stem_checks_every_report_file(tmp_path, ext):
    now = dt.datetime(2026, 12, 1, 9, 8, 7)
    (tmp_path / f"2026-12-01_cpu-x.{ext}").write_text("an earlier run")
    assert cli.default_stem(tmp_path, now, "CPU X") == "2026-12-01_cpu-x_090807"


# ---------------------------------------------------------------------------------------------------------
# peers: GPU settings through stand-ins, TF's 2-D-only argmax ops
# ---------------------------------------------------------------------------------------------------------
def _fake_torch():
    ns = types.SimpleNamespace
    return ns(__version__="9.9", cuda=ns(is_available=lambda: True), get_num_threads=lambda: 4,
              backends=ns(cudnn=ns(benchmark=False, allow_tf32=True, version=lambda: 90100),
                          cuda=ns(matmul=ns(allow_tf32=True)), mkldnn=ns(is_available=lambda: True)))


@pytest.mark.parametrize("allow", [False, True])
def test_torch_gpu_peer_sets_and_reports_cudnn_flags(monkeypatch, allow):
    """torch's defaults (cudnn.allow_tf32 True, benchmark False) are overridden on the GPU: benchmark on, TF32
    exactly as asked, and the settings state them."""
    fake = _fake_torch()
    monkeypatch.setattr(peers, "_import_version", lambda module: (fake, "yes"))
    impl = peers.TorchImpl("gpu", allow_tf32=allow)
    assert impl.availability() == "yes"
    s = impl.settings()
    assert s["torch"] == "9.9" and s["memory_format"] == "channels_last"
    assert s["cudnn"] == 90100 and s["cudnn.benchmark"] is True
    assert s["cudnn.allow_tf32"] is allow and s["cuda.matmul.allow_tf32"] is allow
    assert fake.backends.cudnn.allow_tf32 is allow and fake.backends.cuda.matmul.allow_tf32 is allow


def test_torch_cpu_peer_leaves_cudnn_alone(monkeypatch):
    fake = _fake_torch()
    monkeypatch.setattr(peers, "_import_version", lambda module: (fake, "yes"))
    s = peers.TorchImpl("cpu", allow_tf32=True).settings()
    assert s["threads"] == 4 and "cudnn" not in s
    assert fake.backends.cudnn.benchmark is False and fake.backends.cudnn.allow_tf32 is True   # untouched


def test_gpuconv_cuda_peer_times_cupy_arrays(monkeypatch):
    fake = types.SimpleNamespace(asarray=np.asarray)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert peers.GpuconvImpl("cuda")._xp() is fake
    assert peers.GpuconvImpl("numpy")._xp() is np


def test_tensorflow_peer_refuses_3d_argmax_ops_without_importing_tf():
    """No layer set has a 3-D pooling layer today, so this is the supports() contract: 3-D argmax ops are
    'unsupported' rows (TF has no 3-D max_pool_with_argmax), not TF errors."""
    from gpuconv.bench.cases import Case
    from gpuconv.bench.layers import PoolLayer
    p3 = PoolLayer("p3", (4, 6, 6, 8), 2, 2, "VALID")
    p2 = PoolLayer("p2", (6, 6, 8), 2, 2, "VALID")
    tf = peers.TensorflowImpl()
    for op in ("pool_argmax", "unpool", "pool_grad"):
        assert tf.supports(Case("s", p3, op, "float32", 1)) == "max_pool_with_argmax is 2-D only"
        assert tf.supports(Case("s", p2, op, "float32", 1)) is None
    assert tf.supports(Case("s", p3, "pool", "float32", 1)) is None
    assert tf.supports(Case("s", p2, "avg_unpool", "float32", 1)) == "no TF op"
    assert tf._tf is None                                        # supports() never imports TensorFlow


def test_torch_gpu_peer_availability_follows_cuda(monkeypatch):
    fake = _fake_torch()
    monkeypatch.setattr(peers, "_import_version", lambda module: (fake, "yes"))
    assert peers.TorchImpl("gpu").availability() == "yes"
    fake.cuda.is_available = lambda: False
    assert peers.TorchImpl("gpu").availability() == "torch has no CUDA device here"
    assert peers.TorchImpl("cpu").availability() == "yes"            # the CPU peer needs no CUDA
    monkeypatch.setattr(peers, "_import_version", lambda module: (None, "not installed or broken (ImportError: x)"))
    assert peers.TorchImpl("cpu").availability() == "not installed or broken (ImportError: x)"


def test_im2col_peer_availability_asks_cupy_for_a_device(monkeypatch):
    visible = [False]
    fake = types.SimpleNamespace(is_available=lambda: visible[0])
    monkeypatch.setattr(peers, "_import_version", lambda module: (fake, "yes"))
    assert peers.CupyIm2colImpl().availability() == "CuPy sees no CUDA device"
    visible[0] = True
    assert peers.CupyIm2colImpl().availability() == "yes"
    monkeypatch.setattr(peers, "_import_version", lambda module: (None, "not installed or broken (ImportError: x)"))
    assert peers.CupyIm2colImpl().availability() == "not installed or broken (ImportError: x)"


@pytest.mark.parametrize("device,seen,noted", [
    ("gpu", None, False),                                          # cuDNN: no oneDNN check, no note
    ("cpu", [], True),                                             # no oneDNN convolution ran: noted
    ("cpu", ["brg:avx512 forward_training src:f32::blocked:acdb::f0"], False),
])
def test_onednn_check_and_note_only_for_the_cpu_torch_peer(monkeypatch, device, seen, noted):
    (case,) = build_cases(["quick"], ["fprop"], ["float32"], 1, match="quick_3x3_64")   # symmetric padding
    checked = []
    monkeypatch.setattr(peers, "_import_version", lambda module: (_fake_torch(), "yes"))
    monkeypatch.setattr(peers.TorchImpl, "_conv", lambda self, case, inputs, pads: (lambda: None))
    monkeypatch.setattr(peers, "torch_onednn_convolutions", lambda torch, fn: checked.append(fn) or seen)
    impl = peers.TorchImpl(device)
    assert len(impl.prepare(case, {}, 2)) == 2
    assert len(checked) == (device == "cpu")
    assert ("PyTorch ran no channels-last oneDNN convolution" in impl.note) == noted


def test_default_and_named_peers_per_device(monkeypatch):
    monkeypatch.setattr(peers, "_import_version", lambda module: (_fake_torch(), "yes"))   # imports nothing

    def described(ps):
        return [(p.name, p.device, getattr(p, "tf32", False)) for p in ps]      # as cli.run_case reads it
    assert described(peers.default_peers("gpu", True)) == [("torch-cudnn", "gpu", True), ("cupy-im2col", "gpu", True)]
    assert described(peers.default_peers("gpu", False)) == [("torch-cudnn", "gpu", False),
                                                            ("cupy-im2col", "gpu", False)]
    assert described(peers.default_peers("cpu", True)) == [("torch-cpu", "cpu", False), ("tf-cpu", "cpu", False)]
    assert described(peers.peers_by_name(["tf", "torch", "cupy-im2col"], "gpu", True)) == \
        [("tf-cpu", "cpu", False), ("torch-cudnn", "gpu", True), ("cupy-im2col", "gpu", True)]
    assert described(peers.peers_by_name(["torch"], "cpu", True)) == [("torch-cpu", "cpu", False)]


def test_a_truncated_onednn_exec_line_is_skipped():
    """A convolution exec line cut short (fewer than implementation, prop_kind, descriptor after the primitive
    kind, e.g. output interleaved with another writer) is skipped, not an IndexError that fails the torch row."""
    cut = "onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv:avx512_core"
    whole = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,"
             "src:f32::blocked:acdb::f0 wei:f32")
    text = f"{cut}\n{whole}"
    assert peers.onednn_convolutions(text) == ["jit:avx2 forward_training src:f32::blocked:acdb::f0"]


@pytest.mark.parametrize("op", ["pool", "avg_pool"])
def test_torch_cpu_peer_refuses_a_pooling_of_another_size(op):
    """2x2 stride-1 SAME pooling of 4x4: TF pads (0, 1) and gives 4x4; PyTorch pads the leading 0 on both sides
    and, with ceil_mode, still gives (4 + 0 - 2) / 1 + 1 = 3x3 (a window starting in the trailing pad is
    dropped). Timing it would compare unequal work: the case is unsupported, not an ok row."""
    pytest.importorskip("torch")
    from gpuconv.bench.cases import Case
    from gpuconv.bench.layers import PoolLayer
    case = Case("s", PoolLayer("p", (4, 4, 3), 2, 1, "SAME"), op, "float32", 1)
    assert case.y_shape == (1, 4, 4, 3)
    with pytest.raises(peers.Unsupported, match=r"pooled size \(3, 3\) differs from TF's \(4, 4\)"):
        peers.TorchImpl("cpu").prepare(case, case.host_inputs(), 1)
