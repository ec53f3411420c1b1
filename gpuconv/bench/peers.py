"""Implementations a benchmark case is timed on: gpuconv itself and its peers, where installed.

Each implementation has `name`, `device` ('cpu' or 'gpu'), `tf32` (whether its float32 runs on TF32 tensor cores:
the % of peak is then taken against the TF32 peak; gpuconv, whose TF32 covers some conv ops only, answers per case
with `uses_tf32(case)` instead), `availability()` ('yes' or why not),
`settings()` (precision modes and threads, stated in the report), `supports(case)` (None or why not),
`context()` (entered around prepare + timing) and `prepare(case, inputs, copies) -> [callable]`: one
zero-argument closure per input copy, each running the op once on its own copy (outputs are allocated by the
call, as a user's call would). Preparation (uploads, layout changes, argmax for unpooling) is never timed.

Peers: PyTorch (cuDNN on the GPU with cudnn.benchmark and channels_last; oneDNN on the CPU, checked per case
through oneDNN's verbose output, 1x1 filters dilated so that PyTorch does not leave oneDNN), TensorFlow on the
CPU, and an im2col + cuBLAS baseline in CuPy (fprop only). PyTorch pads symmetrically: where TF's SAME padding is
asymmetric (stride 2, odd total) the PyTorch peer pads by the larger side on both ends, which gives the same
output size and FLOP count but not the same numbers; the row says so.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Callable

import numpy as np

from .cases import Case

Closure = Callable[[], Any]


class Unsupported(Exception):
    """The implementation cannot run this case (the reason is reported, not an error)."""


def _import_version(module: str) -> tuple[Any, str]:
    """(module, 'yes') or (None, reason) - never raises."""
    try:
        mod = __import__(module)
        return mod, "yes"
    except Exception as exc:  # ImportError, or a broken install raising something else
        return None, f"not installed or broken ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------------------
# gpuconv
# ---------------------------------------------------------------------------------------------------------
# The benchmark ops whose float32 gpuconv runs on tensor cores under "tf32" / "3xtf32" (gpuconv/precision.py).
TF32_OPS = ("fprop", "dgrad", "wgrad", "transpose")


class GpuconvImpl:
    """gpuconv's TF-named API on one backend (numpy, emulator or cuda), with a float32 precision
    (gpuconv/precision.py; default: the one in force, 'ieee' unless GPUCONV_FLOAT32_PRECISION says otherwise)."""

    def __init__(self, backend: str, precision: str | None = None):
        from ..precision import check_precision, get_float32_precision
        self.backend = backend
        self.precision = get_float32_precision() if precision is None else check_precision(precision, "precision")
        self.name = f"gpuconv-{backend}"
        self.device = "gpu" if backend == "cuda" else "cpu"
        self.note = ""

    def uses_tf32(self, case: Case) -> bool:
        """Whether this case's float32 may run on TF32 tensor cores: a conv forward, input or filter gradient or
        transposed conv on the GPU, TF32 allowed (the % of peak then uses the TF32 peak; 3xTF32 spends three tensor-core
        products per product)."""
        return (self.precision != "ieee" and self.backend == "cuda" and case.op in TF32_OPS
                and case.dtype == "float32")

    def availability(self) -> str:
        return "yes"

    def settings(self) -> dict[str, Any]:
        ops = "/".join(TF32_OPS)
        fp32 = {"ieee": "exact fp32 (no TF32)", "tf32": f"fp32 {ops} on TF32 tensor cores where the GPU has them, else "
                "exact", "3xtf32": f"fp32 {ops} as 3xTF32 on tensor cores where the GPU has them, else exact"
                }[self.precision]
        s: dict[str, Any] = {"backend": self.backend, "float32_precision": self.precision,
                             "precision": f"{fp32}; float16 accumulates in float32"}
        if self.backend == "numpy":
            s["numpy"] = np.__version__
        return s

    def supports(self, case: Case) -> str | None:
        if case.op in ("pool_argmax", "unpool", "pool_grad") and case.nspatial != 2:
            return "max_pool_with_argmax is 2-D only, as in TF"
        return None

    @contextlib.contextmanager
    def context(self):
        import gpuconv
        with gpuconv.use_backend(self.backend), gpuconv.float32_precision(self.precision):
            yield

    def _xp(self):
        if self.backend == "cuda":
            import cupy
            return cupy
        return np

    def prepare(self, case: Case, inputs: dict[str, np.ndarray], copies: int) -> list[Closure]:
        import gpuconv as gc
        xp = self._xp()
        s, pad, n = case.layer.strides, case.layer.padding, case.nspatial
        closures = []
        for _ in range(copies):
            a = {k: xp.asarray(v).copy() for k, v in inputs.items()}
            if case.kind == "conv":
                closures.append(_gpuconv_conv(gc, case, a, s, pad, n))
            else:
                closures.append(_gpuconv_pool(gc, case, a, s, pad, n))
        return closures


def _gpuconv_conv(gc, case: Case, a: dict, s, pad, n) -> Closure:
    x, w, dy = a["x"], a["w"], a["dy"]
    conv = gc.conv2d if n == 2 else gc.conv3d
    bi = gc.conv2d_backprop_input if n == 2 else gc.conv3d_backprop_input
    bf = gc.conv2d_backprop_filter if n == 2 else gc.conv3d_backprop_filter
    tr = gc.conv2d_transpose if n == 2 else gc.conv3d_transpose
    xs, ws = case.x_shape, case.w_shape
    return {
        "fprop": lambda: conv(x, w, s, pad),
        "dgrad": lambda: bi(xs, w, dy, s, pad),
        "wgrad": lambda: bf(x, ws, dy, s, pad),
        "transpose": lambda: tr(dy, w, xs, s, pad),
    }[case.op]


def _gpuconv_pool(gc, case: Case, a: dict, s, pad, n) -> Closure:
    x, dy, k = a["x"], a["dy"], case.layer.ksize
    mp = gc.max_pool2d if n == 2 else gc.max_pool3d
    ap = gc.avg_pool2d if n == 2 else gc.avg_pool3d
    if case.op == "pool":
        return lambda: mp(x, k, s, pad)
    if case.op == "avg_pool":
        return lambda: ap(x, k, s, pad)
    if case.op == "avg_unpool":
        return lambda: gc.avg_unpool(dy, k, s, pad, case.x_shape)
    if case.op == "pool_argmax":
        return lambda: gc.max_pool_with_argmax(x, k, s, pad)
    y, argmax = gc.max_pool_with_argmax(x, k, s, pad)
    if case.op == "unpool":
        return lambda: gc.max_unpool(y, argmax, case.x_shape)
    return lambda: gc.max_pool_grad_with_argmax(x, dy, argmax, k, s, pad)       # pool_grad


# ---------------------------------------------------------------------------------------------------------
# PyTorch (cuDNN on the GPU, oneDNN / native on the CPU)
# ---------------------------------------------------------------------------------------------------------
class TorchImpl:
    """PyTorch with channels_last tensors. On the GPU: cudnn.benchmark on, TF32 off unless allow_tf32."""

    def __init__(self, device: str, allow_tf32: bool = False):
        self.device = device
        self.name = "torch-cudnn" if device == "gpu" else "torch-cpu"
        self.allow_tf32 = allow_tf32
        self.note = ""
        self._torch, self._avail = _import_version("torch")

    @property
    def tf32(self) -> bool:
        """TF32 only where asked for and only on the GPU (cuDNN); the CPU has no TF32."""
        return self.allow_tf32 and self.device == "gpu"

    def availability(self) -> str:
        if self._torch is None:
            return self._avail
        if self.device == "gpu" and not self._torch.cuda.is_available():
            return "torch has no CUDA device here"
        return "yes"

    def _configure(self) -> None:
        t = self._torch
        if self.device == "gpu":
            t.backends.cudnn.benchmark = True
            t.backends.cudnn.allow_tf32 = self.allow_tf32
            t.backends.cuda.matmul.allow_tf32 = self.allow_tf32

    def settings(self) -> dict[str, Any]:
        t = self._torch
        s: dict[str, Any] = {"torch": t.__version__, "memory_format": "channels_last"}
        if self.device == "gpu":
            self._configure()
            s.update({"cudnn": t.backends.cudnn.version(), "cudnn.benchmark": t.backends.cudnn.benchmark,
                      "cudnn.allow_tf32": t.backends.cudnn.allow_tf32,
                      "cuda.matmul.allow_tf32": t.backends.cuda.matmul.allow_tf32})
        else:
            s.update({"threads": t.get_num_threads(), "mkldnn": t.backends.mkldnn.is_available()})
        return s

    def supports(self, case: Case) -> str | None:
        if case.op == "avg_unpool":
            return "no PyTorch op"
        return None

    def context(self):
        return self._torch.inference_mode()

    def _dev(self):
        return "cuda" if self.device == "gpu" else "cpu"

    def _nchw(self, a: np.ndarray):
        """NHWC NumPy array -> a torch tensor in NCHW order with channels_last memory (the same bytes)."""
        t = self._torch.from_numpy(np.ascontiguousarray(a)).to(self._dev())
        return t.permute(0, t.ndim - 1, *range(1, t.ndim - 1))

    def _filters(self, w: np.ndarray):
        """TF filters (spatial..., in, out) -> torch (out, in, spatial...) in channels_last memory."""
        t = self._torch.from_numpy(np.ascontiguousarray(w)).to(self._dev())
        nd = t.ndim - 2
        t = t.permute(nd + 1, nd, *range(nd))
        fmt = self._torch.channels_last if nd == 2 else self._torch.channels_last_3d
        return t.contiguous(memory_format=fmt)

    def prepare(self, case: Case, inputs: dict[str, np.ndarray], copies: int) -> list[Closure]:
        self._configure()
        if case.kind == "conv":
            pads, self.note = torch_padding(case)
            calls = [self._conv(case, inputs, pads) for _ in range(copies)]
            if self.device == "cpu" and not channels_last_onednn(torch_onednn_convolutions(self._torch, calls[0])):
                self.note = "; ".join(filter(None, [self.note, "PyTorch ran no channels-last oneDNN convolution "
                                                                 "here (its native kernel or a reordered layout)"]))
            return calls
        self.note = ""
        return [self._pool(case, inputs) for _ in range(copies)]

    def _conv(self, case: Case, inputs, pads) -> Closure:
        torch, F = self._torch, self._torch.nn.functional
        n = case.nspatial
        x, w, dy = self._nchw(inputs["x"]), self._filters(inputs["w"]), self._nchw(inputs["dy"])
        s = [case.layer.strides] * n
        conv = F.conv2d if n == 2 else F.conv3d
        e = case.w_shape[:n]
        got = tuple((case.x_shape[1 + i] + 2 * pads[i] - e[i]) // s[i] + 1 for i in range(n))
        if got != tuple(case.y_shape[1:-1]):
            raise Unsupported(f"padding {pads} gives output {got}, TF gives {tuple(case.y_shape[1:-1])}")
        d = [torch_cpu_dilation(e) if self.device == "cpu" else 1] * n
        g = case.problem.groups                   # TF's filter (..., C/G, K) is torch's (K, C/G, ...) as it is
        if case.op == "fprop":
            return lambda: conv(x, w, None, s, pads, d, g)
        if case.op in ("dgrad", "wgrad"):
            mask = [case.op == "dgrad", case.op == "wgrad", False]
            cb = torch.ops.aten.convolution_backward
            return lambda: cb(dy, x, w, None, s, pads, d, False, [0] * n, g, mask)
        tr = F.conv_transpose2d if n == 2 else F.conv_transpose3d
        op = [case.x_shape[1 + i] - ((case.y_shape[1 + i] - 1) * s[i] - 2 * pads[i] + e[i]) for i in range(n)]
        if any(o < 0 or o >= s[i] for i, o in enumerate(op)):
            raise Unsupported(f"output_padding {op} out of range for stride {s}")
        return lambda: tr(dy, w, None, s, pads, op, g)

    def _pool(self, case: Case, inputs) -> Closure:
        """TF's SAME pooling as PyTorch's: the smaller (leading) pad on both sides, ceil_mode for the extra
        trailing cell; PyTorch's divisor also excludes padding (count_include_pad=False)."""
        torch, F = self._torch, self._torch.nn.functional
        n = case.nspatial
        x, dy = self._nchw(inputs["x"]), self._nchw(inputs["dy"])
        k, s = [case.layer.ksize] * n, [case.layer.strides] * n
        pads = list(case.problem.pad_before[3 - n:])
        if any(p > k_ / 2 for p, k_ in zip(pads, k)):
            raise Unsupported(f"PyTorch pooling needs padding <= ksize/2, got {pads}")
        ceil = case.layer.padding == "SAME"
        mp = F.max_pool2d if n == 2 else F.max_pool3d
        y, idx = mp(x, k, s, pads, 1, ceil, True)
        if tuple(y.shape[2:]) != tuple(case.y_shape[1:-1]):
            raise Unsupported(f"pooled size {tuple(y.shape[2:])} differs from TF's {tuple(case.y_shape[1:-1])}")
        if case.op == "pool":
            return lambda: mp(x, k, s, pads, 1, ceil)
        if case.op == "pool_argmax":
            return lambda: mp(x, k, s, pads, 1, ceil, True)
        if case.op == "avg_pool":
            ap = F.avg_pool2d if n == 2 else F.avg_pool3d
            return lambda: ap(x, k, s, pads, ceil, False)
        if case.op == "unpool":
            up = F.max_unpool2d if n == 2 else F.max_unpool3d
            size = list(case.x_shape[1:-1])
            if case.layer.ksize > case.layer.strides:
                self.note = ("overlapping windows: PyTorch's max_unpool stores one of the updates that share an "
                             "index, gpuconv and TF add them")
            return lambda: up(y, idx, k, s, pads, size)
        bw = (torch.ops.aten.max_pool2d_with_indices_backward if n == 2
              else torch.ops.aten.max_pool3d_with_indices_backward)
        g = dy.contiguous(memory_format=torch.channels_last if n == 2 else torch.channels_last_3d)
        return lambda: bw(g, x, k, s, pads, [1] * n, ceil, idx)


def torch_cpu_dilation(filter_spatial) -> int:
    """Dilation for PyTorch's CPU convolution peer: 2 for a filter of one tap per axis, else 1.

    PyTorch's CPU convolution runs oneDNN except, on one thread, for unstrided undilated 1x1 convolutions of a
    batch below 16: those take its native im2col path (thnn_conv2d / _slow_conv2d; ConvParams::use_mkldnn in
    aten/src/ATen/native/Convolution.cpp), 2-5x slower on the CPU box (8x56x56x64 -> 64 fprop, 1 thread: 4.5
    ms native, 0.85 ms oneDNN). A dilation changes nothing for a filter with one tap per axis (same output size,
    same arithmetic) and makes use_mkldnn choose oneDNN, the peer the CPU targets name."""
    return 2 if all(int(e) == 1 for e in filter_spatial) else 1


def fd_stdout(fn: Callable[[], Any]) -> str:
    """What fn writes to file descriptor 1 (C-level output such as oneDNN's verbose lines), captured through a
    temporary file; Python's sys.stdout is flushed first and the descriptor restored afterwards."""
    import ctypes
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 1)
        try:
            fn()
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def onednn_convolutions(verbose_text: str) -> list[str]:
    """'implementation prop_kind src-descriptor' of each convolution primitive oneDNN's verbose output says it
    executed (lines like 'onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,
    forward_training,src:f32::blocked:acdb::f0 wei:...')."""
    found = []
    for line in verbose_text.splitlines():
        fields = line.split(",")
        if "exec" in fields and "convolution" in fields:
            i = fields.index("convolution")
            if len(fields) > i + 3:
                found.append(f"{fields[i + 1]} {fields[i + 2]} {fields[i + 3].split(' ')[0]}")
    return found


def torch_onednn_convolutions(torch, fn: Callable[[], Any]) -> list[str]:
    """onednn_convolutions of one call of fn, with oneDNN's verbose mode on for that call only."""
    mk = torch.backends.mkldnn

    def verbose_call() -> None:
        with mk.verbose(mk.VERBOSE_ON):
            fn()
    return onednn_convolutions(fd_stdout(verbose_call))


def channels_last_onednn(convolutions: list[str]) -> bool:
    """Whether one of these oneDNN convolutions (onednn_convolutions) read channels-last memory (format tag
    acdb in 2-D, acdeb in 3-D): the CPU peer the targets name."""
    return any(tag in c for c in convolutions for tag in (":acdb:", ":acdeb:"))


def torch_padding(case: Case) -> tuple[list[int], str]:
    """Symmetric per-axis padding for PyTorch, and a note when TF's padding is asymmetric."""
    p = case.problem
    axes = slice(3 - case.nspatial, 3)
    before, after = p.pad_before[axes], p.pad_after[axes]
    if before == after:
        return list(before), ""
    return list(after), f"PyTorch pads {list(after)} on both sides (TF: {list(before)} before, {list(after)} after)"


# ---------------------------------------------------------------------------------------------------------
# TensorFlow on the CPU (the semantic reference)
# ---------------------------------------------------------------------------------------------------------
class TensorflowImpl:
    """TensorFlow eager ops pinned to the CPU: exactly the semantics gpuconv reproduces."""

    name = "tf-cpu"
    device = "cpu"

    def __init__(self):
        self.note = ""
        self._tf = None
        self._avail = None

    def availability(self) -> str:
        if self._avail is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            self._tf, self._avail = _import_version("tensorflow")
        return self._avail

    def settings(self) -> dict[str, Any]:
        tf = self._tf
        return {"tensorflow": tf.__version__, "device": "/CPU:0",
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default"}

    def supports(self, case: Case) -> str | None:
        if case.op in ("pool_argmax", "unpool", "pool_grad") and case.nspatial != 2:
            return "max_pool_with_argmax is 2-D only"
        if case.op == "avg_unpool":
            return "no TF op"
        return None

    def context(self):
        return self._tf.device("/CPU:0")

    def prepare(self, case: Case, inputs: dict[str, np.ndarray], copies: int) -> list[Closure]:
        tf = self._tf
        n, s, pad = case.nspatial, case.layer.strides, case.layer.padding
        strides = [1] + [s] * n + [1]
        out = []
        for _ in range(copies):
            a = {k: tf.constant(v) for k, v in inputs.items()}
            if case.kind == "conv":
                out.append(self._conv(case, a, strides, pad))
            else:
                out.append(self._pool(case, a, strides, pad))
        return out

    def _conv(self, case: Case, a, strides, pad) -> Closure:
        tf, n = self._tf, case.nspatial
        x, w, dy = a["x"], a["w"], a["dy"]
        xs, ws = tf.constant(case.x_shape, tf.int32), tf.constant(case.w_shape, tf.int32)
        raw = tf.raw_ops
        if case.op == "fprop":
            conv = tf.nn.conv2d if n == 2 else tf.nn.conv3d
            return lambda: conv(x, w, strides, pad)
        if case.op == "dgrad":
            if n == 2:
                return lambda: raw.Conv2DBackpropInput(input_sizes=xs, filter=w, out_backprop=dy, strides=strides,
                                                       padding=pad)
            return lambda: raw.Conv3DBackpropInputV2(input_sizes=xs, filter=w, out_backprop=dy, strides=strides,
                                                     padding=pad)
        if case.op == "wgrad":
            if n == 2:
                return lambda: raw.Conv2DBackpropFilter(input=x, filter_sizes=ws, out_backprop=dy, strides=strides,
                                                        padding=pad)
            return lambda: raw.Conv3DBackpropFilterV2(input=x, filter_sizes=ws, out_backprop=dy, strides=strides,
                                                      padding=pad)
        tr = tf.nn.conv2d_transpose if n == 2 else tf.nn.conv3d_transpose
        return lambda: tr(dy, w, list(case.x_shape), strides, pad)

    def _pool(self, case: Case, a, strides, pad) -> Closure:
        tf, n = self._tf, case.nspatial
        x, dy = a["x"], a["dy"]
        k = [1] + [case.layer.ksize] * n + [1]
        if case.op == "pool":
            mp = tf.nn.max_pool2d if n == 2 else tf.nn.max_pool3d
            return lambda: mp(x, k, strides, pad)
        if case.op == "avg_pool":
            ap = tf.nn.avg_pool2d if n == 2 else tf.nn.avg_pool3d
            return lambda: ap(x, k, strides, pad)
        if case.op == "pool_argmax":
            return lambda: tf.nn.max_pool_with_argmax(x, k, strides, pad)
        y, argmax = tf.nn.max_pool_with_argmax(x, k, strides, pad, include_batch_in_index=True)
        if case.op == "unpool":
            # The seed's scatter_nd recipe, with batch-inclusive flat indices (no index decoding).
            total = int(np.prod(case.x_shape))
            idx, vals = tf.reshape(argmax, [-1, 1]), tf.reshape(y, [-1])
            return lambda: tf.reshape(tf.scatter_nd(idx, vals, [total]), case.x_shape)
        return lambda: tf.raw_ops.MaxPoolGradWithArgmax(input=x, grad=dy, argmax=argmax, ksize=k, strides=strides,
                                                        padding=pad, include_batch_in_index=True)


# ---------------------------------------------------------------------------------------------------------
# im2col + cuBLAS in CuPy (fprop only): the Chainer-style baseline
# ---------------------------------------------------------------------------------------------------------
class CupyIm2colImpl:
    """Padded input -> strided im2col view -> contiguous column matrix -> one cuBLAS GEMM.

    Its float32 GEMM runs TF32 only with allow_tf32 (--tf32): CuPy picks cuBLAS's compute type from CUPY_TF32 at
    its first float32 matmul, so a CUPY_TF32=1 in the environment would otherwise turn TF32 on while the report
    claims exact float32 (and --tf32 alone would leave it off while the % of peak used the TF32 peak). The
    compute type is set explicitly in prepare() and read back into settings()."""

    name = "cupy-im2col"
    device = "gpu"

    def __init__(self, allow_tf32: bool = False):
        self.note = ""
        self.allow_tf32 = allow_tf32
        self.tf32 = allow_tf32
        self._cupy, self._avail = _import_version("cupy")

    def availability(self) -> str:
        if self._cupy is None:
            return self._avail
        try:
            return "yes" if self._cupy.is_available() else "CuPy sees no CUDA device"
        except Exception as exc:
            return f"CuPy cannot reach a device ({type(exc).__name__}: {exc})"

    def _configure(self) -> str:
        """Set CuPy's float32 GEMM compute type (TF32 or cuBLAS's default, exact float32); the type in force,
        or why it could not be set (CuPy's private linalg module moved: TF32 then follows CUPY_TF32)."""
        try:
            from cupy._core import _routines_linalg as linalg
            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if self.allow_tf32
                                    else linalg.COMPUTE_TYPE_DEFAULT)
            kind = linalg.get_compute_type(np.float32)
            self.tf32 = kind == linalg.COMPUTE_TYPE_TF32
            return linalg.compute_type_to_str(kind)
        except Exception as exc:  # noqa: BLE001 - reported in the settings, the peer still runs
            self.tf32 = os.environ.get("CUPY_TF32", "0") not in ("", "0")
            return f"unknown ({type(exc).__name__}: {exc}); CUPY_TF32={os.environ.get('CUPY_TF32', '0 (unset)')}"

    def settings(self) -> dict[str, Any]:
        return {"cupy": self._cupy.__version__, "float32 compute type": self._configure(),
                "tf32": self.tf32, "gemm": "cupy.matmul -> cuBLAS"}

    def supports(self, case: Case) -> str | None:
        if case.op != "fprop":
            return "baseline implements fprop only"
        return None if case.problem.groups == 1 else "baseline implements ungrouped convolutions only"

    def context(self):
        return contextlib.nullcontext()

    def prepare(self, case: Case, inputs: dict[str, np.ndarray], copies: int) -> list[Closure]:
        self._configure()
        cp = self._cupy
        p = case.problem
        x5shape = (p.N, p.D, p.H, p.W, p.C)
        pads = ((0, 0),) + tuple(zip(p.pad_before, p.pad_after)) + ((0, 0),)
        taps = p.T * p.R * p.S
        out = []
        for _ in range(copies):
            x = cp.asarray(inputs["x"]).reshape(x5shape)
            w = cp.asarray(inputs["w"]).reshape(taps * p.C, p.K)

            def run(x=x, w=w):
                xp_ = cp.pad(x, pads)
                sn, sd, sh, sw, sc = xp_.strides
                st = p.stride
                view = cp.lib.stride_tricks.as_strided(
                    xp_, (p.N, p.Z, p.P, p.Q, p.T, p.R, p.S, p.C),
                    (sn, sd * st[0], sh * st[1], sw * st[2], sd, sh, sw, sc))
                cols = cp.ascontiguousarray(view).reshape(p.N * p.Z * p.P * p.Q, taps * p.C)
                return (cols @ w).reshape(case.y_shape)
            out.append(run)
        return out


def default_peers(device: str, allow_tf32: bool) -> list:
    """The peers worth timing next to gpuconv on this kind of machine."""
    if device == "gpu":
        return [TorchImpl("gpu", allow_tf32), CupyIm2colImpl(allow_tf32)]
    return [TorchImpl("cpu"), TensorflowImpl()]


PEER_NAMES = ("torch", "tf", "cupy-im2col")


def peers_by_name(names: list[str], device: str, allow_tf32: bool) -> list:
    """Peers chosen with --peers (torch -> torch-cudnn on the GPU / torch-cpu on the CPU)."""
    out = []
    for n in names:
        if n == "torch":
            out.append(TorchImpl(device, allow_tf32))
        elif n == "tf":
            out.append(TensorflowImpl())
        elif n == "cupy-im2col":
            out.append(CupyIm2colImpl(allow_tf32))
        else:
            raise ValueError(f"unknown peer {n!r}; known: {', '.join(PEER_NAMES)}")
    return out
