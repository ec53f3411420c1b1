"""benchmarks/numpy_vs_pytorch.py without PyTorch and without timing anything: its statistics, results files,
Markdown, threads handling and the guards that stop a run (torch output agreement, oneDNN peer, pooled values).

torch is replaced by a stub (a NumPy NCHW reference that shares no code with gpuconv); the timed block (`pair`)
returns fixed samples, so every median, minimum and ratio below is worked out by hand in the comments.
"""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from conftest import load_benchmark_script

from gpuconv.bench.layers import ConvLayer, PoolLayer


@pytest.fixture
def nvp():
    """A fresh copy of the script per test, so patched globals die with the test."""
    return load_benchmark_script("numpy_vs_pytorch")


# ---------------------------------------------------------------------------------------------------------
# a torch stub: NCHW tensors over NumPy arrays, and reference convolutions / pooling written out here
# ---------------------------------------------------------------------------------------------------------
class T:
    def __init__(self, a):
        self.a = np.asarray(a)

    @property
    def shape(self):
        return self.a.shape

    def permute(self, *dims):
        return T(self.a.transpose(dims))

    def contiguous(self, memory_format=None):
        return self

    def numpy(self):
        return self.a


def _windows(xp, r, s, stride, dil, p_out, q_out):
    """xp[:, :, stride*p + dil*r, stride*q + dil*s] for all output cells p, q."""
    return xp[:, :, dil * r: dil * r + stride * (p_out - 1) + 1: stride,
              dil * s: dil * s + stride * (q_out - 1) + 1: stride]


def ref_conv2d(xt, wt, stride=1, padding=0, dilation=1, groups=1):
    assert groups == 1                                   # the stub convolves ungrouped layers only
    x, w = xt.a, wt.a                                    # N,C,H,W and K,C,R,S
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    R, S = w.shape[2:]
    P = (xp.shape[2] - dilation * (R - 1) - 1) // stride + 1
    Q = (xp.shape[3] - dilation * (S - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], P, Q), np.float64)
    for r in range(R):
        for s in range(S):
            y += np.einsum("nchw,kc->nkhw", _windows(xp, r, s, stride, dilation, P, Q), w[:, :, r, s])
    return T(y.astype(np.float32))


def ref_convolution_backward(dyt, xt, wt, bias, stride, padding, dilation, transposed, out_pad, groups, mask):
    dy, x, w = dyt.a, xt.a, wt.a
    (st, _), (p, _), (d, _) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float64)
    P, Q = dy.shape[2:]
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape, np.float64)
    for r in range(w.shape[2]):
        for s in range(w.shape[3]):
            _windows(dxp, r, s, st, d, P, Q)[...] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, r, s])
            dw[:, :, r, s] = np.einsum("nkpq,ncpq->kc", dy, _windows(xp, r, s, st, d, P, Q))
    dx = dxp[:, :, p: p + x.shape[2], p: p + x.shape[3]]
    return (T(dx.astype(np.float32)) if mask[0] else None, T(dw.astype(np.float32)) if mask[1] else None, None)


def ref_max_pool2d(xt, k, s, return_indices=True):
    x = xt.a
    N, C, H, W = x.shape
    P, Q = (H - k) // s + 1, (W - k) // s + 1
    v, idx = np.full((N, C, P, Q), -np.inf, np.float32), np.zeros((N, C, P, Q), np.int64)
    for r in range(k):
        for c in range(k):
            cand = _windows(x, r, c, s, 1, P, Q)
            flat = (np.arange(P)[:, None] * s + r) * W + (np.arange(Q)[None, :] * s + c)
            better = cand > v
            v, idx = np.where(better, cand, v), np.where(better, flat, idx)
    return T(v), T(idx)


def ref_max_unpool2d(vt, it, k, s, output_size):
    v, idx = vt.a, it.a
    N, C = v.shape[:2]
    out = np.zeros((N, C, output_size[0] * output_size[1]), np.float32)
    np.put_along_axis(out, idx.reshape(N, C, -1), v.reshape(N, C, -1), axis=2)
    return T(out.reshape(N, C, *output_size))


def fake_torch(conv2d=ref_conv2d, backward=ref_convolution_backward, max_pool2d=ref_max_pool2d):
    torch = types.ModuleType("torch")
    torch.from_numpy = T
    torch.channels_last = "channels_last"
    torch.ops = types.SimpleNamespace(aten=types.SimpleNamespace(convolution_backward=backward))
    torch.nn = types.ModuleType("torch.nn")
    torch.nn.functional = types.ModuleType("torch.nn.functional")
    torch.nn.functional.conv2d = conv2d
    torch.nn.functional.max_pool2d = max_pool2d
    torch.nn.functional.max_unpool2d = ref_max_unpool2d
    torch.threads = []
    torch.set_num_threads = torch.threads.append
    return torch


def install(monkeypatch, torch):
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.nn", torch.nn)
    monkeypatch.setitem(sys.modules, "torch.nn.functional", torch.nn.functional)


ACDB = "jit:avx2 forward_training src:f32::blocked:acdb::f0"
BLOCKED = "jit:avx2 backward_weights src:f32::blocked:aBcd8b::f0"

# 1 + 2 + 3: a stride-1 3x3, a stride-1 1x1 (torch gets dilation 2) and a stride-2 3x3 whose TF SAME padding is
# asymmetric (6 + 1 cell after), so its numbers differ from torch's symmetric padding on purpose.
SMALL_CONVS = [ConvLayer("t_3x3", (5, 4, 3), (3, 3, 3, 2), 1, "SAME"),
               ConvLayer("t_1x1", (4, 4, 3), (1, 1, 3, 5), 1, "SAME"),
               ConvLayer("t_3x3s2", (6, 6, 2), (3, 3, 2, 3), 2, "SAME")]


@pytest.fixture
def convs(nvp, monkeypatch):
    """conv_cases over SMALL_CONVS with the torch stub; the oneDNN probe calls the peer and reports `kernels`."""
    install(monkeypatch, fake_torch())
    monkeypatch.setattr(nvp, "RESNET50", SMALL_CONVS)
    probe = {"calls": [], "kernels": lambda op_index: [ACDB]}

    def onednn(torch, fn):
        fn()                                              # the peer runs (with the stub)
        probe["calls"].append(fn)
        return probe["kernels"](len(probe["calls"]) - 1)
    monkeypatch.setattr(nvp, "torch_onednn_convolutions", onednn)
    return probe


def test_conv_cases_yield_three_ops_per_layer_with_their_flops_and_kernels(nvp, convs):
    cases = list(nvp.conv_cases(2, set()))
    assert [(c[0], c[1]) for c in cases] == [(name, op) for name in ("t_3x3", "t_1x1", "t_3x3s2")
                                             for op in ("fprop", "dgrad", "wgrad")]
    # flops = 2 N P Q K R S C: t_3x3 2*2*5*4*2*3*3*3 = 4320; t_1x1 2*2*4*4*5*1*1*3 = 960;
    # t_3x3s2 (SAME, stride 2: 3x3 output) 2*2*3*3*3*3*3*2 = 1944
    assert [c[2] for c in cases] == [4320] * 3 + [960] * 3 + [1944] * 3
    assert [c[5] for c in cases] == [ACDB] * 9
    assert convs["calls"] == [c[4] for c in cases]          # each op's own peer is the one checked
    # the 1x1 layer's peer runs with dilation 2, the others with 1; torch padding k//2
    assert [(c[4].keywords["dilation"], c[4].keywords["padding"]) for c in cases if c[1] == "fprop"] == \
        [(1, 1), (2, 0), (1, 1)]
    # ours: gpuconv's own fprop / dgrad / wgrad of the layer (shapes N,H,W,C / R,S,C,K)
    by = {(c[0], c[1]): c for c in cases}
    assert by["t_3x3s2", "fprop"][3]().shape == (2, 3, 3, 3)
    assert by["t_3x3s2", "dgrad"][3]().shape == (2, 6, 6, 2)
    assert by["t_3x3s2", "wgrad"][3]().shape == (3, 3, 2, 3)
    # the stride-1 peers compute the same numbers as gpuconv (NCHW -> NHWC, KCRS -> RSCK)
    for name in ("t_3x3", "t_1x1"):
        np.testing.assert_allclose(by[name, "fprop"][4]().a.transpose(0, 2, 3, 1), by[name, "fprop"][3](),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(by[name, "dgrad"][4]()[0].a.transpose(0, 2, 3, 1), by[name, "dgrad"][3](),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(by[name, "wgrad"][4]()[1].a.transpose(2, 3, 1, 0), by[name, "wgrad"][3](),
                                   rtol=1e-4, atol=1e-4)


def test_backward_peers_are_the_calls_autograd_makes(nvp, convs):
    """aten.convolution_backward(grad, input, weight, bias_sizes, stride, padding, dilation, transposed,
    output_padding, groups, output_mask): not transposed, one group, and only dx (dgrad) or only dw (wgrad)."""
    peers = {(c[0], c[1]): c[4] for c in nvp.conv_cases(1, {"t_1x1", "t_3x3s2"})}
    # t_1x1: stride 1, torch padding 1//2 = 0, dilation 2; t_3x3s2: stride 2, padding 3//2 = 1, dilation 1
    assert peers["t_1x1", "dgrad"].args[3:] == (None, [1, 1], [0, 0], [2, 2], False, [0, 0], 1, (True, False, False))
    assert peers["t_1x1", "wgrad"].args[3:] == (None, [1, 1], [0, 0], [2, 2], False, [0, 0], 1, (False, True, False))
    assert peers["t_3x3s2", "dgrad"].args[3:] == (None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1,
                                                  (True, False, False))
    assert peers["t_3x3s2", "wgrad"].args[3:] == (None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1,
                                                  (False, True, False))


def test_conv_cases_only_filters_layers(nvp, convs):
    assert [c[:2] for c in nvp.conv_cases(1, {"t_1x1"})] == [("t_1x1", "fprop"), ("t_1x1", "dgrad"),
                                                            ("t_1x1", "wgrad")]


def _perturbed(fn, index, rel):
    """fn's result with element 0 of output `index` (None: the tensor itself) moved by rel * its max."""
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        t = out if index is None else out[index]
        if t is not None:
            t.a = t.a.copy()
            t.a.flat[0] += rel * float(np.abs(t.a).max())
        return out
    return wrapped


@pytest.mark.parametrize("op,torch_kwargs", [
    ("fprop", lambda rel: dict(conv2d=_perturbed(ref_conv2d, None, rel))),
    ("dgrad", lambda rel: dict(backward=_perturbed(ref_convolution_backward, 0, rel))),
    ("wgrad", lambda rel: dict(backward=_perturbed(ref_convolution_backward, 1, rel))),
])
def test_stride_one_outputs_must_agree_with_torch(nvp, convs, monkeypatch, op, torch_kwargs):
    """The check allows 1e-3 of gpuconv's largest magnitude: 2e-4 of torch's own passes, 2e-3 stops the run."""
    install(monkeypatch, fake_torch(**torch_kwargs(2e-4)))
    assert len(list(nvp.conv_cases(1, {"t_3x3"}))) == 3
    install(monkeypatch, fake_torch(**torch_kwargs(2e-3)))
    with pytest.raises(RuntimeError, match=f"t_3x3: {op} differs from torch by"):
        list(nvp.conv_cases(1, {"t_3x3"}))


@pytest.mark.parametrize("index", [None, 0, 1])                # fprop, dgrad, wgrad
def test_a_nan_in_torch_output_stops_the_run(nvp, convs, monkeypatch, index):
    """NaN compares false with every tolerance: the check must fail on it, not let the case through."""
    def with_nan(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            t = out if index is None else out[index]
            if t is not None:
                t.a = t.a.copy()
                t.a.flat[0] = np.nan
            return out
        return wrapped
    kwargs = dict(conv2d=with_nan(ref_conv2d)) if index is None else \
        dict(backward=with_nan(ref_convolution_backward))
    install(monkeypatch, fake_torch(**kwargs))
    with pytest.raises(RuntimeError, match="t_3x3: .* differs from torch by nan"):
        list(nvp.conv_cases(1, {"t_3x3"}))


def test_stride_two_layers_are_not_compared(nvp, convs):
    """Stride-2 SAME pads TF's odd cell after, torch both sides: different numbers, no error (shape checked)."""
    cases = {op: (ours, theirs) for _, op, _, ours, theirs, _ in nvp.conv_cases(1, {"t_3x3s2"})}
    ours, theirs = cases["fprop"]
    assert not np.allclose(theirs().a.transpose(0, 2, 3, 1), ours(), atol=1e-3)


def test_torch_output_shape_must_match(nvp, convs, monkeypatch):
    def too_big(*args, **kwargs):                          # one output row too many
        y = ref_conv2d(*args, **kwargs).a
        return T(np.concatenate([y, y[:, :, :1]], axis=2))
    install(monkeypatch, fake_torch(conv2d=too_big))
    with pytest.raises(RuntimeError, match=r"t_3x3s2: torch output \(1, 3, 4, 3\) vs gpuconv \(1, 3, 3, 3\)"):
        list(nvp.conv_cases(1, {"t_3x3s2"}))


def test_a_peer_without_channels_last_onednn_stops_the_run(nvp, convs):
    # fprop and dgrad ran acdb oneDNN convolutions; wgrad's call reported a blocked one only
    convs["kernels"] = lambda i: [ACDB] if i < 2 else [BLOCKED]
    cases = nvp.conv_cases(1, {"t_1x1"})
    assert [next(cases)[1], next(cases)[1]] == ["fprop", "dgrad"]
    with pytest.raises(RuntimeError, match="t_1x1 wgrad: PyTorch ran no channels-last oneDNN convolution"):
        next(cases)
    convs["kernels"] = lambda i: []
    with pytest.raises(RuntimeError, match=r"t_3x3 fprop: .*\(oneDNN reported nothing\)"):
        next(nvp.conv_cases(1, {"t_3x3"}))


def test_kernels_of_a_case_are_joined(nvp, convs):
    convs["kernels"] = lambda i: [BLOCKED, ACDB]
    assert next(nvp.conv_cases(1, {"t_1x1"}))[5] == BLOCKED + "; " + ACDB


SMALL_POOLS = [PoolLayer("p_a", (4, 6, 3), 2, 2, "VALID"), PoolLayer("p_b", (2, 2, 2), 2, 2, "VALID")]


def test_pool_cases_check_values_and_yield_pool_and_unpool(nvp, monkeypatch):
    install(monkeypatch, fake_torch())
    monkeypatch.setattr(nvp, "SEGNET", SMALL_POOLS)
    cases = list(nvp.pool_cases(2, set()))
    assert [(c[0], c[1], c[2], c[5]) for c in cases] == [
        ("p_a", "max_pool_with_argmax", 0, "aten max_pool2d_with_indices"),
        ("p_a", "max_unpool", 0, "aten max_unpool2d"),
        ("p_b", "max_pool_with_argmax", 0, "aten max_pool2d_with_indices"),
        ("p_b", "max_unpool", 0, "aten max_unpool2d")]
    pool, unpool = cases[0], cases[1]
    x = pool[3].args[0]
    assert (x >= 0).all() and (x == 0).any() and not np.signbit(x).any()      # post-ReLU activations
    v, a = pool[3]()
    assert v.shape == (2, 2, 3, 3)
    vt, it = pool[4]()
    np.testing.assert_array_equal(vt.a.transpose(0, 2, 3, 1), v)
    # both unpools put each window's maximum back where it was, zeros elsewhere: the same (2, 4, 6, 3) array
    assert unpool[3]().shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(unpool[4]().a.transpose(0, 2, 3, 1), unpool[3]())
    assert unpool[4].keywords == {"output_size": (4, 6)}
    assert [c[:2] for c in nvp.pool_cases(1, {"p_b"})] == [("p_b", "max_pool_with_argmax"), ("p_b", "max_unpool")]


def test_pooled_values_differing_from_torch_stop_the_run(nvp, monkeypatch):
    install(monkeypatch, fake_torch(max_pool2d=lambda *a, **k: (T(ref_max_pool2d(*a, **k)[0].a + 1),
                                                               ref_max_pool2d(*a, **k)[1])))
    monkeypatch.setattr(nvp, "SEGNET", SMALL_POOLS)
    with pytest.raises(RuntimeError, match="p_a: pooled values differ from torch"):
        next(nvp.pool_cases(1, set()))


# ---------------------------------------------------------------------------------------------------------
# timing blocks with a fake clock
# ---------------------------------------------------------------------------------------------------------
def test_times_ms_and_pair(nvp, monkeypatch):
    clock, events = iter([0.0, 0.002, 1.0, 1.0005, 5.0, 5.004, 7.0, 7.001]), []
    monkeypatch.setattr(nvp, "time", types.SimpleNamespace(perf_counter=lambda: next(clock),
                                                            sleep=lambda s: events.append(("sleep", s))))
    ours, theirs = (lambda: events.append("ours")), (lambda: events.append("theirs"))
    a, b = nvp.pair(ours, theirs, 1, 2, 0.25)
    # 1 warm-up + 2 timed calls per library, each block after a pause; times in ms: 2, 0.5 then 4, 1
    assert events == [("sleep", 0.25), "ours", "ours", "ours", ("sleep", 0.25), "theirs", "theirs", "theirs"]
    assert a == pytest.approx([2.0, 0.5]) and b == pytest.approx([4.0, 1.0])
    events.clear()
    assert nvp.times_ms(ours, 0, 0) == [] and events == []


# ---------------------------------------------------------------------------------------------------------
# main(): samples pooled over rounds, rows, summary, results files, threads
# ---------------------------------------------------------------------------------------------------------
def machine_info(coretype="Haswell", threads=1, pool=1):
    return {"cpu": "Test CPU", "cpu_count": 2, "platform": "p", "python": "3.x", "numpy": "2.x",
            "numpy_blas": "openblas 0.3", "openblas_core": "Haswell" if coretype == "Haswell" else "SkylakeX",
            "OPENBLAS_CORETYPE": coretype, "OPENBLAS_NUM_THREADS": "1" if threads == 1 else None,
            "torch": "2.x", "torch_threads": threads, "gpuconv_threads": pool, "torch_parallel": []}


# Per case and round: (gpuconv samples, torch samples), repeats = 3, rounds = 2.
SAMPLES = {
    # gpuconv pooled [4,2,3,5,1,6] -> median (3+4)/2 = 3.5, min 1; torch [7,9,8,6,10,3] -> median 7.5, min 3
    # ratio 7.5/3.5 = 15/7, ratio of minima 3/1 = 3
    "A": [([4, 2, 3], [7, 9, 8]), ([5, 1, 6], [6, 10, 3])],
    # gpuconv [10,10,10,10,12,8] -> median 10, min 8; torch [2,4,2,3,1,5] -> median 2.5, min 1
    # ratio 0.25, ratio of minima 1/8
    "B": [([10, 10, 10], [2, 4, 2]), ([10, 12, 8], [3, 1, 5])],
    # gpuconv all 2 -> median 2, min 2; torch [3,3,3,3,3,1] -> median 3, min 1: ratio 1.5, ratio of minima 0.5
    "C": [([2, 2, 2], [3, 3, 3]), ([2, 2, 2], [3, 3, 1])],
}


@pytest.fixture
def fake_run(nvp, monkeypatch, tmp_path):
    """main() with the torch stub, fixed machine info and load, fake cases and the fixed SAMPLES."""
    torch = fake_torch()
    install(monkeypatch, torch)
    state = {"torch": torch, "calls": [], "pairs": [], "samples": {k: list(v) for k, v in SAMPLES.items()},
             "parallel": [], "info": machine_info()}
    monkeypatch.setattr(nvp, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(nvp, "machine", lambda: dict(state["info"]))
    loads = [(1.234, 2.0, 3.0), (4.567, 0.5, 0.25)]
    monkeypatch.setattr(nvp.os, "getloadavg", lambda: loads.append(loads.pop(0)) or loads[-1])

    def conv_cases(n, only):
        state["calls"].append(("conv", n, only))
        yield "res_a", "fprop", 2_000_000, "A", "torch A", "kernel A"
        yield "res_a", "dgrad", 3_000_000, "B", "torch B", "kernel B"

    def pool_cases(n, only):
        state["calls"].append(("pool", n, only))
        yield "seg_c", "max_unpool", 0, "C", "torch C", "aten max_unpool2d"

    def pair(ours, theirs, warmup, repeats, pause):
        state["pairs"].append((ours, theirs, warmup, repeats, pause))
        return state["samples"][ours].pop(0)
    monkeypatch.setattr(nvp, "conv_cases", conv_cases)
    monkeypatch.setattr(nvp, "pool_cases", pool_cases)
    monkeypatch.setattr(nvp, "pair", pair)
    parallel = types.SimpleNamespace(
        set_num_threads=lambda n: state["parallel"].append((n, nvp.os.environ.get("GPUCONV_NUM_THREADS"))))
    monkeypatch.setattr(nvp, "_parallel", parallel)
    monkeypatch.delenv("GPUCONV_NUM_THREADS", raising=False)
    state["json"], state["md"] = tmp_path / "results" / "cpu_numpy_vs_pytorch.json", \
        tmp_path / "results" / "cpu_numpy_vs_pytorch.md"
    return state


ARGV = ["--n", "5", "--seg-n", "3", "--repeats", "3", "--rounds", "2", "--warmup", "4", "--pause", "0.5",
        "--threads", "2"]


def test_rows_and_summary_pool_every_round(nvp, fake_run):
    assert nvp.main(ARGV) == 0
    # each round: conv cases at --n, pool cases at --seg-n; every case timed with warmup/repeats/pause
    assert fake_run["calls"] == [("conv", 5, set()), ("pool", 3, set())] * 2
    assert fake_run["pairs"] == [(k, f"torch {k}", 4, 3, 0.5) for k in "ABC"] * 2
    (run,) = json.loads(fake_run["json"].read_text())["runs"]
    rows = {r["op"]: r for r in run["results"]}
    assert [r["layer"] for r in run["results"]] == ["res_a", "res_a", "seg_c"]
    a, b, c = rows["fprop"], rows["dgrad"], rows["max_unpool"]
    assert (a["flops"], a["torch_kernel"], c["flops"], c["torch_kernel"]) == \
        (2_000_000, "kernel A", 0, "aten max_unpool2d")
    assert a["gpuconv_all_ms"] == [4, 2, 3, 5, 1, 6] and a["torch_all_ms"] == [7, 9, 8, 6, 10, 3]
    assert (a["gpuconv_ms"], a["torch_ms"], a["gpuconv_min_ms"], a["torch_min_ms"]) == (3.5, 7.5, 1, 3)
    assert a["ratio"] == pytest.approx(15 / 7) and a["min_ratio"] == pytest.approx(3.0)
    assert (b["gpuconv_ms"], b["torch_ms"], b["ratio"], b["min_ratio"]) == (10, 2.5, 0.25, 0.125)
    assert (c["gpuconv_ms"], c["torch_ms"], c["ratio"], c["min_ratio"]) == (2, 3, 1.5, 0.5)
    s = run["summary"]
    assert s["cases"] == 3
    assert s["median_ratio"] == pytest.approx(1.5)               # of 15/7, 0.25, 1.5
    assert s["min_ratio"] == 0.25 and s["min_case"] == "res_a dgrad"
    assert s["geomean_ratio"] == pytest.approx((15 / 7 * 0.25 * 1.5) ** (1 / 3))     # 0.9297
    assert s["median_ratio_of_minima"] == pytest.approx(0.5)     # of 3, 0.125, 0.5
    assert run["config"] == {"n": 5, "seg_n": 3, "repeats": 3, "warmup": 4, "rounds": 2, "dtype": "float32"}
    assert run["label"] == "OPENBLAS_CORETYPE=Haswell, 1 thread, N=5, SegNet N=3"      # not the default 8 / 4
    info = run["machine"]
    assert info["load_before"] == [1.23, 2.0, 3.0] and info["load_after"] == [4.57, 0.5, 0.25]
    assert info["date"][:2] == "20" and info["cpu"] == "Test CPU"
    md = fake_run["md"].read_text()
    assert "| res_a | dgrad | 10.0 | 2.5 | 0.25 | 0.12 | 0 | kernel B |" in md      # 3e6 / 10 ms / 1e6 = 0.3
    assert "Cases below 0.3: res_a dgrad 0.250." in md


def test_threads_go_to_torch_and_to_an_unset_gpuconv_pool(nvp, fake_run, monkeypatch):
    assert nvp.main(ARGV + ["--no-write"]) == 0
    assert fake_run["torch"].threads == [2]
    # the pool is re-read after GPUCONV_NUM_THREADS was set from --threads
    assert fake_run["parallel"] == [(None, "2")]
    assert not fake_run["json"].exists() and not fake_run["md"].exists()     # --no-write
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "7")                           # already set: kept
    fake_run["samples"] = {k: list(v) for k, v in SAMPLES.items()}
    assert nvp.main(ARGV + ["--no-write"]) == 0
    assert fake_run["parallel"][-1] == (None, "7") and fake_run["torch"].threads == [2, 2]


DEFAULT_SIZES_ARGV = ARGV[4:]                  # without --n 5 --seg-n 3: the recorded configuration's sizes


def test_a_run_replaces_only_the_section_with_its_label(nvp, fake_run):
    results = fake_run["json"].parent
    results.mkdir()
    old_same = {"label": "OPENBLAS_CORETYPE=Haswell, 1 thread", "tag": "old, same label"}
    other = _run("OPENBLAS_CORETYPE unset, 2 threads", machine_info(None, 2, 2), 0.9, 0.5, "x y")
    fake_run["json"].write_text(json.dumps({"runs": [old_same, other]}))
    assert nvp.main(DEFAULT_SIZES_ARGV) == 0
    runs = json.loads(fake_run["json"].read_text())["runs"]
    assert [r["label"] for r in runs] == ["OPENBLAS_CORETYPE unset, 2 threads", "OPENBLAS_CORETYPE=Haswell, 1 thread"]
    assert runs[0] == other and "tag" not in runs[1] and runs[1]["summary"]["cases"] == 3
    md = fake_run["md"].read_text()
    # both sections, the headline (Haswell, 1 thread) first
    assert md.index("## OPENBLAS_CORETYPE=Haswell, 1 thread") < md.index("## OPENBLAS_CORETYPE unset, 2 threads")


def test_runs_with_other_batches_or_blas_threads_keep_the_recorded_section(nvp, fake_run):
    results = fake_run["json"].parent
    results.mkdir()
    recorded = _run("OPENBLAS_CORETYPE=Haswell, 1 thread", machine_info(), 0.58, 0.302, "the full run")
    fake_run["json"].write_text(json.dumps({"runs": [recorded]}))
    assert nvp.main(ARGV) == 0                                     # N=5, SegNet N=3: a section of its own
    fake_run["info"] = dict(machine_info(), OPENBLAS_NUM_THREADS=None)     # numpy's BLAS on all 2 cores
    fake_run["samples"] = {k: list(v) for k, v in SAMPLES.items()}
    assert nvp.main(DEFAULT_SIZES_ARGV) == 0
    runs = json.loads(fake_run["json"].read_text())["runs"]
    assert runs[0] == recorded and [r["label"] for r in runs[1:]] == [
        "OPENBLAS_CORETYPE=Haswell, 1 thread, N=5, SegNet N=3",
        "OPENBLAS_CORETYPE=Haswell, 1 thread (numpy's BLAS: 2)"]


def test_a_run_over_some_layers_is_not_written(nvp, fake_run, capsys):
    assert nvp.main(DEFAULT_SIZES_ARGV + ["--only", "res2_3x3_64"]) == 0
    assert fake_run["calls"][0] == ("conv", 8, {"res2_3x3_64"})
    assert not fake_run["json"].exists() and not fake_run["md"].exists()
    assert "not written" in capsys.readouterr().out


def test_render_rewrites_the_markdown_from_the_json_without_torch(nvp, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)                         # import torch would fail
    monkeypatch.setattr(nvp, "RESULTS", tmp_path)
    runs = [_run("OPENBLAS_CORETYPE unset, 2 threads", machine_info(None, 2, 2), 0.9, 0.5, "x y")]
    (tmp_path / "cpu_numpy_vs_pytorch.json").write_text(json.dumps({"runs": runs}))
    assert nvp.main(["--render"]) == 0
    assert (tmp_path / "cpu_numpy_vs_pytorch.md").read_text() == nvp.markdown(runs)


# ---------------------------------------------------------------------------------------------------------
# Markdown, labels and descriptions of recorded runs
# ---------------------------------------------------------------------------------------------------------
def _row(layer, op, ratio, flops=0, ms=2.0, kernel=True):
    row = {"layer": layer, "op": op, "flops": flops, "gpuconv_ms": ms, "torch_ms": ms * ratio, "ratio": ratio,
           "min_ratio": ratio}
    if kernel:
        row["torch_kernel"] = "k"
    return row


def _run(label, info, median, minimum, min_case, rows=(), rounds=3, date="2026-01-01"):
    info = dict(info, date=date + "T00:00:00", load_before=[1.0], load_after=[2.0])
    return {"label": label, "machine": info,
            "config": {"n": 8, "seg_n": 4, "repeats": 7, "warmup": 1, "rounds": rounds},
            "summary": {"median_ratio": median, "min_ratio": minimum, "min_case": min_case, "geomean_ratio": 1.0,
                        "median_ratio_of_minima": 1.0, "cases": len(rows)},
            "results": list(rows)}


def _summary_rows(md):
    return [line for line in md.splitlines() if line.startswith("| OPENBLAS_CORETYPE")]


def test_markdown_orders_sections_newest_cpu_first_and_judges_the_target_at_its_bounds(nvp):
    zen4 = {"cpu_family": "25", "cpu_model": "17", "cpu_mhz": "2596.1", "avx512": True}
    runs = [_run("OPENBLAS_CORETYPE unset, 1 thread", machine_info(None, 1), 0.69, 0.35, "a b"),
            _run("OPENBLAS_CORETYPE=Haswell, 2 threads", machine_info("Haswell", 2), 0.7, 0.29, "c d"),
            _run("OPENBLAS_CORETYPE unset, 2 threads", machine_info(None, 2), 0.8, 0.4, "e f"),
            _run("OPENBLAS_CORETYPE=Haswell, 1 thread", machine_info("Haswell", 1), 0.7, 0.3, "g h"),
            _run("OPENBLAS_CORETYPE=Haswell, 1 thread, new", dict(machine_info("Haswell", 1), **zen4), 0.9, 0.5,
                 "i j", date="2026-01-02"),
            _run("OPENBLAS_CORETYPE unset, 2 threads, new", dict(machine_info(None, 2), **zen4), 0.9, 0.5,
                 "k l", date="2026-01-01")]
    md = nvp.markdown(runs)
    # order: the CPU of the latest run first, then 1 thread before more, then OpenBLAS's own kernels, then label
    # target: median >= 0.7 and minimum >= 0.3, both bounds included
    old_cpu, zen4_cpu = "Test CPU (family and model not recorded)", "Test CPU (family 25, model 17, 2596 MHz, AVX-512)"
    assert [line.split(" | ")[0:2] + [line.rstrip(" |").rsplit("| ", 1)[1]] for line in _summary_rows(md)] == [
        ["| OPENBLAS_CORETYPE=Haswell, 1 thread, new (OpenBLAS Haswell kernels)", zen4_cpu, "yes"],
        ["| OPENBLAS_CORETYPE unset, 2 threads, new (OpenBLAS SkylakeX kernels)", zen4_cpu, "yes"],
        ["| OPENBLAS_CORETYPE unset, 1 thread (OpenBLAS SkylakeX kernels)", old_cpu, "no"],
        ["| OPENBLAS_CORETYPE=Haswell, 1 thread (OpenBLAS Haswell kernels)", old_cpu, "yes"],
        ["| OPENBLAS_CORETYPE unset, 2 threads (OpenBLAS SkylakeX kernels)", old_cpu, "yes"],
        ["| OPENBLAS_CORETYPE=Haswell, 2 threads (OpenBLAS Haswell kernels)", old_cpu, "no"]]
    headers = [line for line in md.splitlines() if line.startswith("## ") and line != "## Summary"]
    assert headers == ["## OPENBLAS_CORETYPE=Haswell, 1 thread, new (OpenBLAS kernels: Haswell)",
                       "## OPENBLAS_CORETYPE unset, 2 threads, new (OpenBLAS kernels: SkylakeX)",
                       "## OPENBLAS_CORETYPE unset, 1 thread (OpenBLAS kernels: SkylakeX)",
                       "## OPENBLAS_CORETYPE=Haswell, 1 thread (OpenBLAS kernels: Haswell)",
                       "## OPENBLAS_CORETYPE unset, 2 threads (OpenBLAS kernels: SkylakeX)",
                       "## OPENBLAS_CORETYPE=Haswell, 2 threads (OpenBLAS kernels: Haswell)"]
    assert nvp.markdown(list(reversed(runs))) == md


def test_markdown_rows_and_cases_below_the_minimum(nvp):
    rows = [_row("l1", "fprop", 0.3, flops=2_000_000_000, ms=4.0),    # 2e9 flops / 4 ms = 500 GF/s
            _row("l2", "dgrad", 0.299, flops=0, kernel=False), _row("l3", "wgrad", 1.25)]
    md = nvp.markdown([_run("OPENBLAS_CORETYPE=Haswell, 1 thread", machine_info(), 0.7, 0.299, "l2 dgrad", rows)])
    assert "| l1 | fprop | 4.0 | 1.2 | 0.30 | 0.30 | 500 | k |" in md
    assert "| l2 | dgrad | 2.0 | 0.6 | 0.30 | 0.30 |  | not recorded (before the oneDNN check) |" in md
    assert "Cases below 0.3: l2 dgrad 0.299." in md                      # 0.3 itself is not below
    md = nvp.markdown([_run("OPENBLAS_CORETYPE=Haswell, 1 thread", machine_info(), 0.7, 0.3, "l1 fprop",
                            rows[:1])])
    assert "Cases below 0.3: none." in md


def test_sampling_text_names_rounds_only_when_there_are_several(nvp):
    one = nvp._sampling({"repeats": 7, "warmup": 1})                    # runs recorded before rounds existed
    assert one == "Median of 7 back-to-back calls after 1 warm-up call(s), each library in its own block."
    assert nvp._sampling({"repeats": 7, "warmup": 1, "rounds": 1}) == one
    assert nvp._sampling({"repeats": 5, "warmup": 2, "rounds": 3}).startswith(
        "The whole case list run 3 times in a row; per case, the median of all 3 x 5 calls (5 back-to-back calls "
        "after 2 warm-up call(s) per round")


def test_run_label_and_describe(nvp):
    assert nvp.run_label(machine_info("Haswell", 1)) == "OPENBLAS_CORETYPE=Haswell, 1 thread"
    assert nvp.run_label(machine_info(None, 2)) == "OPENBLAS_CORETYPE unset, 2 threads"
    identified = dict(machine_info(None, 1), cpu_family="25", cpu_model="17")
    assert nvp.run_label(identified) == "OPENBLAS_CORETYPE unset, 1 thread, Test CPU family 25 model 17"
    assert nvp.run_label(identified, {"n": 4, "seg_n": 4}) == \
        "OPENBLAS_CORETYPE unset, 1 thread, N=4, SegNet N=4, Test CPU family 25 model 17"
    headline = nvp.describe({"machine": machine_info("Haswell", 1, pool=1)})
    assert "(OPENBLAS_CORETYPE=Haswell), OPENBLAS_NUM_THREADS=1; " \
           "gpuconv worker pool 1 thread (GPUCONV_NUM_THREADS)" in headline
    assert "torch.set_num_threads(1)" in headline
    assert headline.startswith("Test CPU (family and model not recorded) (2 cores, shared VM)")
    other = nvp.describe({"machine": machine_info(None, 2, pool=2)})
    assert "(OPENBLAS_CORETYPE=unset), OPENBLAS_NUM_THREADS=unset, all 2 cores; " \
           "gpuconv worker pool 2 threads (GPUCONV_NUM_THREADS)" in other
    old = nvp.describe({"machine": machine_info(None, 2, pool=None)})
    assert "gpuconv single-threaded apart from BLAS (before the worker pool)" in old
    assert nvp.describe({"machine": dict(identified, cpu_mhz="3700.02", avx512=False)}).startswith(
        "Test CPU (family 25, model 17, 3700 MHz, no AVX-512) (2 cores, shared VM)")


def test_pause_may_be_zero_but_must_be_finite(nvp, capsys):
    assert nvp.parse_args(["--pause", "0"]).pause == 0.0
    for bad in ("inf", "nan"):                             # sleep(inf) would hang; nan compares false
        with pytest.raises(SystemExit) as exc:
            nvp.parse_args(["--pause", bad])
        assert exc.value.code == 2
        assert f"--pause: expected a finite number of seconds >= 0, got {bad}" in capsys.readouterr().err


def test_threads_default_to_all_cores_without_openblas_num_threads(nvp, monkeypatch):
    monkeypatch.setattr(nvp.os, "cpu_count", lambda: 6)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert nvp.parse_args([]).threads == 6
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")                           # empty: as if unset
    assert nvp.parse_args([]).threads == 6


def test_machine_records_the_first_cpus_identity(nvp, monkeypatch):
    install(monkeypatch, _machine_torch())
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: Test EPYC @ 2.0GHz: rev 1\nmodel name\t: other\nstepping\t: 1\ncpu MHz\t\t: 2596.140\n"
            "flags\t\t: fpu avx2 avx512f avx512bw\n\n"
            "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: second\nflags\t\t: fpu\n")
    monkeypatch.setattr(nvp, "Path", lambda path: types.SimpleNamespace(read_text=lambda: text))
    info = nvp.machine()
    assert info["cpu"] == "Test EPYC @ 2.0GHz: rev 1"          # split at the first colon only, first name only
    assert (info["cpu_family"], info["cpu_model"], info["cpu_stepping"], info["cpu_mhz"], info["avx512"]) == \
        ("25", "17", "1", "2596.140", True)                    # the first processor's block only
    assert nvp.cpu_text(info) == "Test EPYC @ 2.0GHz: rev 1 (family 25, model 17, 2596 MHz, AVX-512)"
    monkeypatch.setattr(nvp, "Path", lambda path: types.SimpleNamespace(
        read_text=lambda: "model name\t: Old\nflags\t\t: fpu avx512fx\n"))
    info = nvp.machine()
    assert (info["cpu"], info["avx512"], "cpu_family" in info) == ("Old", False, False)   # not a prefix match

    def unreadable():
        raise OSError("no /proc")
    monkeypatch.setattr(nvp, "Path", lambda path: types.SimpleNamespace(read_text=unreadable))
    info = nvp.machine()
    assert info["cpu"] == "unknown" and "cpu_family" not in info
    assert nvp.cpu_text(info) == "unknown (family and model not recorded)"


def _machine_torch():
    torch = fake_torch()
    torch.__version__, torch.get_num_threads = "9.9", lambda: 3
    torch.__config__ = types.SimpleNamespace(parallel_info=lambda: "\n".join(f"line {i}" for i in range(8)))
    return torch


def test_machine_reads_torch_threads_and_the_blas_kernels(nvp, monkeypatch):
    install(monkeypatch, _machine_torch())
    monkeypatch.setattr(nvp._parallel, "blas_kernels", lambda: "")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    info = nvp.machine()
    assert (info["torch"], info["torch_threads"], info["openblas_core"]) == ("9.9", 3, "unknown")
    assert info["torch_parallel"] == [f"line {i}" for i in range(6)] and info["OPENBLAS_CORETYPE"] == "Haswell"
    monkeypatch.setattr(nvp._parallel, "blas_kernels", lambda: "SkylakeX")
    assert nvp.openblas_core() == "SkylakeX"


def test_readme_table_matches_the_recorded_runs(nvp):
    """The README's CPU benchmark table repeats the recorded runs' summaries: every row must be one of them, with
    its date, median, minimum, geometric mean and verdict, and every recorded run must have its row."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    runs = json.loads((root / "benchmarks" / "results" / "cpu_numpy_vs_pytorch.json").read_text())["runs"]
    readme = (root / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| OPENBLAS_CORETYPE")]
    by_date = {run["machine"]["date"]: run for run in runs}
    assert len(rows) == len(runs) and len(by_date) == len(runs)
    for line in rows:
        config, cpu, date, median, minimum, geomean, met = [c.strip() for c in line.strip("| ").split(" | ")]
        run = by_date[date]
        s, info = run["summary"], run["machine"]
        host = f"family {info['cpu_family']} model {info['cpu_model']}" if "cpu_family" in info else "earlier host"
        assert cpu == host
        label = run["label"].removesuffix(f", {info['cpu']} {host}")
        assert config == f"{label} (OpenBLAS {info['openblas_core']} kernels)"
        assert (median, minimum, geomean) == (f"{s['median_ratio']:.2f}",
                                              f"{s['min_ratio']:.3f} ({s['min_case']})", f"{s['geomean_ratio']:.2f}")
        target = s["median_ratio"] >= nvp.TARGET_MEDIAN and s["min_ratio"] >= nvp.TARGET_MIN
        assert met == ("**yes**" if target else "no")
