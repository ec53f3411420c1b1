"""The benchmark's numbers at their edges, each against a count worked out by hand: bytes of every conv and pooling
op, GFLOP/s and GB/s units, % of peak where the table has no entry, CUDA-event milliseconds, upper quantiles, the
copy kernel's grid, the layer tables against their names and sources, and the device and Markdown reports."""
from __future__ import annotations

import re
import sys
import types

import pytest

import gpuconv
from gpuconv import device_report
from gpuconv.bench import cli, metrics, peers, report, timing
from gpuconv.bench.cases import POOL_OPS, build_cases
from gpuconv.bench.layers import LAYER_SETS, RESNET50, SEGNET, UNET3D_C3D, ConvLayer


def _case(layer_set, layer, op, dtype="float32", batch=2):
    (case,) = [c for c in build_cases([layer_set], [op], [dtype], batch, batch3d=batch) if c.layer.name == layer]
    return case


# ---------------------------------------------------------------------------------------------------------
# work counts
# ---------------------------------------------------------------------------------------------------------
def test_conv_bytes_count_x_w_and_y_once():
    # res2_3x3_64, N=2: x 2x56x56x64, w 3x3x64x64, y 2x56x56x64 (SAME, stride 1)
    x, w, y = 2 * 56 * 56 * 64, 3 * 3 * 64 * 64, 2 * 56 * 56 * 64
    for op in ("fprop", "dgrad", "wgrad", "transpose"):
        assert _case("resnet50", "res2_3x3_64", op).bytes == 4 * (x + w + y)
    assert _case("resnet50", "res2_3x3_64", "fprop", "float16").bytes == 2 * (x + w + y)
    # quick_3x3s2_64, N=1: x 28x28x32, w 3x3x32x64, y ceil(28/2) = 14 -> 14x14x64
    c = _case("quick", "quick_3x3s2_64", "dgrad", "float64", batch=1)
    assert c.y_shape == (1, 14, 14, 64)
    assert c.bytes == 8 * (28 * 28 * 32 + 3 * 3 * 32 * 64 + 14 * 14 * 64)


def test_3d_case_shapes_flops_and_bytes():
    # unet3d_enc2, N=2: x 2x32x32x32x64, w 3x3x3x64x64, y = x (SAME, stride 1); 2 x N Z P Q K C T R S
    c = _case("unet3d", "unet3d_enc2", "wgrad")
    assert c.x_shape == c.y_shape == (2, 32, 32, 32, 64) and c.w_shape == (3, 3, 3, 64, 64)
    assert c.flops == 2 * 2 * 32 * 32 * 32 * 64 * 64 * 27
    assert c.bytes == 4 * (2 * (2 * 32**3 * 64) + 27 * 64 * 64)


def test_pool_bytes_of_every_op():
    # quick_pool_45x60, 2x2/2 SAME, N=2: y = ceil(45/2) x ceil(60/2) = 23 x 30, 64 channels; argmax int64
    x, y = 2 * 45 * 60 * 64, 2 * 23 * 30 * 64
    want = {"pool": 4 * x + 4 * y,                  # read x, write y
            "avg_pool": 4 * x + 4 * y,
            "pool_argmax": 4 * x + 4 * y + 8 * y,   # read x, write y and its argmax
            "unpool": 4 * y + 8 * y + 4 * x,        # read y and argmax, write x-sized output
            "pool_grad": 4 * y + 8 * y + 4 * x,     # read dy and argmax, write dx
            "avg_unpool": 4 * y + 4 * x}            # read y, write x-sized output
    assert set(want) == set(POOL_OPS)
    for op, nbytes in want.items():
        c = _case("quick", "quick_pool_45x60", op)
        assert c.y_shape == (2, 23, 30, 64) and c.flops == 0
        assert c.bytes == nbytes, op
    c = _case("quick", "quick_pool_45x60", "unpool", "float16")
    assert metrics.pool_bytes("unpool", c.problem, "float16", index_bytes=4) == 2 * y + 4 * y + 2 * x
    assert c.tensor_bytes == 2 * x


def test_throughput_units():
    # 1e9 FLOPs and 2e9 bytes in half a second: 2 GFLOP/s, 4 GB/s
    assert metrics.throughput(0.5, 10**9, 2 * 10**9) == {"gflops": 2.0, "gbps": 4.0}
    assert metrics.throughput(0.5, 0, 10**9) == {"gflops": None, "gbps": 2.0}
    assert metrics.throughput(0.0, 10**9, 10**9) == {"gflops": None, "gbps": None}


def test_percent_of_peak_without_a_table_entry_or_a_rate():
    h100 = metrics.find_peak("NVIDIA H100 80GB HBM3")
    none = {"pct_peak": None, "peak_basis": None}
    assert metrics.percent_of_peak("conv", 100.0, 50.0, "float64", h100) == none    # no FP64 entry: not memory BW
    assert metrics.percent_of_peak("conv", None, 50.0, "float32", h100) == none     # a zero-time row
    assert metrics.percent_of_peak("pool", None, None, "float32", h100) == none
    half = metrics.percent_of_peak("conv", 989.0e3 / 2, None, "float16", h100)      # H100 SXM FP16 dense 989 TF
    assert half["pct_peak"] == pytest.approx(50.0) and "FP16 tensor dense" in half["peak_basis"]


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------
def test_cuda_event_timer_converts_milliseconds_to_seconds(monkeypatch):
    log = []

    class Event:
        def record(self):
            log.append("record")

    stream = types.SimpleNamespace(synchronize=lambda: log.append("sync"))
    cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: 2.5,        # CuPy answers in ms
                                 get_current_stream=lambda: stream)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    t = timing.CudaEventTimer()
    h0, h1 = t.mark(), t.mark()
    t.sync()
    assert t.elapsed(h0, h1) == pytest.approx(2.5e-3) and log == ["record", "record", "sync"]


def test_upper_quantiles_interpolate_between_their_neighbours():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert timing.quantile(v, 0.8) == pytest.approx(4.2)      # position 0.8 x 4 = 3.2: 4 + 0.2 x (5 - 4)
    assert timing.quantile(v, 0.5) == 3.0 and timing.quantile(v, 1.0) == 5.0


def test_copy_bandwidth_methods_report_milliseconds():
    now = [0.0]
    timer = types.SimpleNamespace(name="fake", mark=lambda: now[0], elapsed=lambda a, b: b - a, sync=lambda: None)

    def copy():
        now[0] += 0.004                                           # 4 ms per copy

    got = timing.measure_copy_bandwidth({"memcpy": copy}, 2**30, timer, warmup=1, budget_s=0.02, min_reps=3)
    m = got["methods"]["memcpy"]
    assert [m[k] for k in ("median_ms", "min_ms", "p20_ms", "p80_ms")] == pytest.approx([4.0] * 4)


def test_copy_kernel_grid_covers_a_partial_block_and_sizes_are_multiples_of_16():
    log = []

    class Array:
        def __init__(self, n):
            self.data = types.SimpleNamespace(ptr=n)

        def fill(self, v):
            pass

    def kernel(src, name):
        return lambda grid, block, args: log.append((grid, block, args[2]))

    cp = types.SimpleNamespace(uint8="uint8", uint64=int, empty=lambda n, dtype: Array(n), RawKernel=kernel,
                               cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(), get_current_stream=None))
    timing.cupy_copy_calls(cp, 16 * 257)["kernel"]()            # 257 int4s: one full block of 256 and one more
    assert log == [((2,), (256,), 257)]
    timing.cupy_copy_calls(cp, 48)                              # 16-byte multiples that are not 32-byte ones are fine
    with pytest.raises(ValueError, match="multiple of 16"):
        timing.cupy_copy_calls(cp, 24)


def test_copies_for_l2_default_memory_cap():
    # 1 GiB per call against a huge L2 wants hundreds of copies: capped by the default 8 GiB of copies
    assert timing.copies_for_l2(2**30, 100 * 2**30) == 8


class _FixedTimer:
    """A clock that moves only when a fake call runs, `seconds` per call."""

    name = "fixed"

    def __init__(self, seconds):
        self.now, self.seconds = 0.0, seconds

    def mark(self):
        return self.now

    def elapsed(self, h0, h1):
        return h1 - h0

    def sync(self):
        pass

    def call(self):
        self.now += self.seconds


class _FixedImpl:
    name, note, tf32 = "fixed-peer", "", False

    def __init__(self, timer):
        self.timer = timer

    def supports(self, case):
        return None

    def context(self):
        import contextlib
        return contextlib.nullcontext()

    def prepare(self, case, inputs, copies):
        return [self.timer.call]


def test_a_row_reports_every_time_in_milliseconds_and_its_rates(monkeypatch):
    timer = _FixedTimer(0.002)                                           # 2 ms per call
    monkeypatch.setattr(timing, "CpuTimer", lambda: timer)
    case = _case("quick", "quick_3x3s2_64", "fprop", batch=1)
    row = cli.run_case(case, _FixedImpl(timer), "cpu", "quick", None, None,
                       types.SimpleNamespace(cpu_peak_gflops=None))
    assert row["status"] == "ok" and row["clock"] == "fixed"
    assert [row[k] for k in ("median_ms", "min_ms", "p20_ms", "p80_ms")] == pytest.approx([2.0] * 4)
    flops = 2 * 1 * 14 * 14 * 64 * 32 * 3 * 3                            # 2 x N P Q K C R S
    assert row["gflops"] == pytest.approx(flops / 0.002 / 1e9)
    assert row["gbps"] == pytest.approx(4 * (28 * 28 * 32 + 3 * 3 * 32 * 64 + 14 * 14 * 64) / 0.002 / 1e9)


def test_cpu_runs_are_named_after_the_cpu_model(monkeypatch):
    monkeypatch.setattr(device_report, "cpu_report", lambda: {"model": "Test Xeon 9999"})
    assert cli._device_info("cpu")["name"] == "Test Xeon 9999"
    monkeypatch.setattr(device_report, "cpu_report", lambda: {"model": None})
    assert cli._device_info("cpu")["name"] == "unknown CPU"


@pytest.mark.parametrize("op, api", [
    ("pool", "max_pool2d"), ("avg_pool", "avg_pool2d"), ("pool_argmax", "max_pool_with_argmax"),
    ("unpool", "max_unpool"), ("pool_grad", "max_pool_grad_with_argmax"), ("avg_unpool", "avg_unpool")])
def test_each_pool_op_times_its_own_gpuconv_function(monkeypatch, op, api):
    called = []
    for name in ("max_pool2d", "avg_pool2d", "max_pool_with_argmax", "max_unpool", "max_pool_grad_with_argmax",
                 "avg_unpool"):
        monkeypatch.setattr(gpuconv, name, lambda *a, _name=name, **k: called.append(_name) or ("y", "argmax"))
    case = _case("quick", "quick_pool_45x60", op, batch=1)
    (closure,) = peers.GpuconvImpl("numpy").prepare(case, case.host_inputs(), 1)
    called.clear()                                            # prepare may pool once for the argmax it needs
    closure()
    assert called == [api]


def test_tensorflow_runs_2d_argmax_pooling():
    tf = peers.TensorflowImpl()                               # supports() needs no TensorFlow
    for op in ("pool_argmax", "unpool", "pool_grad"):
        assert tf.supports(_case("segnet", "segnet_pool5", op, batch=1)) is None
    assert tf.supports(_case("segnet", "segnet_pool5", "avg_unpool", batch=1)) == "no TF op"


# ---------------------------------------------------------------------------------------------------------
# layer tables: each entry agrees with its name and with its network
# ---------------------------------------------------------------------------------------------------------
def test_mobilenet_layers_are_depthwise_and_follow_the_network():
    """MobileNet v1's depthwise layers: filters (3, 3, 1, C) over C input channels (groups = C), stride 2 exactly
    where the name says s2, and each layer's input is the previous one's output (its spatial size halved after a
    stride-2 layer; the pointwise conv between them changes only the channels)."""
    layers = LAYER_SETS["mobilenet"]
    assert layers[0].input_shape == (112, 112, 32)                        # after the 3x3/2 stem on 224x224
    for layer in layers:
        c = layer.input_shape[-1]
        assert layer.filter_shape == (3, 3, 1, c) and layer.padding == "SAME", layer.name
        assert layer.strides == (2 if layer.name.endswith("s2") else 1), layer.name
    for prev, nxt in zip(layers, layers[1:]):
        assert nxt.input_shape[0] == -(-prev.input_shape[0] // prev.strides), (prev.name, nxt.name)


def test_conv_layers_match_their_names_and_channels():
    for layer in (*RESNET50, *UNET3D_C3D, *LAYER_SETS["quick"]):
        if not isinstance(layer, ConvLayer):
            continue
        *taps, c_in, k = layer.filter_shape
        assert layer.input_shape[-1] == c_in, layer.name                   # filters read every input channel
        assert len(taps) == len(layer.input_shape) - 1 and layer.padding == "SAME", layer.name
        kernel = re.search(r"_(\d)x(\d)", layer.name)                      # resnet / quick: _<k>x<k>
        if kernel:
            assert taps == [int(kernel[1]), int(kernel[2])], layer.name
        else:                                                               # 3D U-Net / C3D: 3x3x3
            assert taps == [3, 3, 3], layer.name
        assert layer.strides == (2 if re.search(r"\ds2(?:_|$)", layer.name) else 1), layer.name   # <k>s2, <out>s2
        out = re.search(r"_(\d+)(?:to(\d+))?(?:s2)?$", layer.name)          # ..._<out>, ..._<in>to<out>
        if out:
            assert k == int(out[2] or out[1]), layer.name
    conv1 = RESNET50[0]                                                     # conv1_7x7s2: 224x224 RGB -> 64
    assert (conv1.input_shape, conv1.filter_shape, conv1.strides) == ((224, 224, 3), (7, 7, 3, 64), 2)


def test_resnet50_stage_sizes_and_segnet_ladder():
    # ResNet-50 at 224: stage 2 at 56, 3 at 28, 4 at 14, 5 at 7; a stage's stride-2 3x3 reads the previous size
    size = {"res2": 56, "res3": 28, "res4": 14, "res5": 7}
    for layer in RESNET50[1:]:
        h = size[layer.name[:4]] * (layer.strides if "3x3" in layer.name else 1)
        assert layer.input_shape[:2] == (h, h), layer.name
    # SegNet: 2x2/2 VALID pooling of the VGG-16 encoder at 360x480: each pool reads the last one's floor(/2)
    h, w = 360, 480
    for layer, c in zip(SEGNET, (64, 128, 256, 512, 512)):
        assert layer.input_shape == (h, w, c) and (layer.ksize, layer.strides, layer.padding) == (2, 2, "VALID")
        h, w = h // 2, w // 2


# ---------------------------------------------------------------------------------------------------------
# device report
# ---------------------------------------------------------------------------------------------------------
def test_gpu_report_starts_nvml_before_asking_it(monkeypatch):
    class NVMLError(Exception):
        pass

    started = []

    def needs_init(value):
        def query(*args):
            if not started:
                raise NVMLError("Uninitialized")
            return value
        return query

    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    nvml.nvmlInit = lambda: started.append(1)
    nvml.nvmlShutdown = lambda: started.clear()
    nvml.nvmlDeviceGetCount = needs_init(1)
    nvml.nvmlDeviceGetHandleByIndex = needs_init(0)
    nvml.nvmlSystemGetDriverVersion = needs_init("580.1")
    nvml.nvmlDeviceGetName = needs_init("NVIDIA H100 80GB HBM3")
    for fn in ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
               "nvmlDeviceGetPciInfo", "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo",
               "nvmlDeviceGetPerformanceState", "nvmlDeviceGetTemperature"):
        setattr(nvml, fn, needs_init(None))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    g = device_report.gpu_report()
    assert g["available"] is True and g["devices"][0]["name"] == "NVIDIA H100 80GB HBM3" and not started


def test_cpu_model_from_cpuinfo_else_the_platform(monkeypatch):
    import io

    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test Xeon 9999\nflags\t: fpu\n"
    monkeypatch.setattr(device_report, "open", lambda *a, **k: io.StringIO(cpuinfo), raising=False)
    assert device_report.cpu_report()["model"] == "Test Xeon 9999"

    def no_file(*a, **k):
        raise OSError("no /proc")
    monkeypatch.setattr(device_report, "open", no_file, raising=False)
    monkeypatch.setattr(device_report.platform, "processor", lambda: "Test Processor")
    assert device_report.cpu_report()["model"] == "Test Processor"


def test_pci_keys_are_hexadecimal_in_every_field():
    assert device_report.pci_key("0000001A:3B:1F.7") == (0x1A, 0x3B, 0x1F, 7)


def test_an_unknown_bus_id_matches_no_device_not_one_without_a_bus_id():
    refused = {"index": 0, "name": None, "error": "NVML refused this GPU: Unknown Error"}    # no pci_bus_id
    assert device_report.matching_device([refused], None) is None
    assert device_report.matching_device([refused], "garbage") is None


def test_blas_is_read_from_numpys_build_config(monkeypatch):
    import numpy
    cfg = {"Build Dependencies": {"blas": {"name": "scipy-openblas", "version": "0.3.27"}}}
    monkeypatch.setattr(numpy, "show_config", lambda mode=None: cfg)
    assert device_report._blas() == "scipy-openblas 0.3.27"


# ---------------------------------------------------------------------------------------------------------
# Markdown report
# ---------------------------------------------------------------------------------------------------------
def test_markdown_header_lines():
    g = {"driver": "580.1", "devices": [{"name": "NVIDIA H100 80GB HBM3", "sm_clock_mhz": 1755,
                                         "sm_clock_max_mhz": 1980, "temperature_c": 41, "power_w": 120.5}]}
    assert report._gpu_line(g) == "NVIDIA H100 80GB HBM3, driver 580.1, 1755 SM MHz, 1980 max SM MHz, 41 C, 120.5 W"
    copy = {"gbps": 3000.0, "buffer_bytes": 2**30, "l2_factor": 20.48,
            "methods": {"memcpy": {"gbps": 2900.0}, "kernel": {"gbps": 3000.0}}}
    assert "device-to-device copy of 1024 MiB = 20.5x L2" in report._copy_line(copy)
    doc = {"created": "now", "command": "bench", "gpuconv": "0", "backend": "numpy", "chart": "/tmp/x/run.png",
           "device": {"kind": "cpu", "name": "cpu", "cpu": {}}, "settings": {"timing": "perf_counter"},
           "implementations": {"gpuconv-numpy": {"available": "yes", "settings": {"threads": 4}},
                               "torch-cpu": {"available": "yes", "settings": {}}},
           "results": []}
    md = report.markdown(doc)
    assert "- `gpuconv-numpy`: available (threads=4)\n" in md and "- `torch-cpu`: available\n" in md
    assert "![chart](run.png)" in md
