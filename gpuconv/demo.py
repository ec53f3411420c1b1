"""`python -m gpuconv demo`: a guided, self-checking run through the seed documents and a deconvnet round trip.

Sections (each prints what it shows, then records checks):
  1. seeds 000/001 - the 4 ways of computing d_x and the 3 ways of computing d_w agree;
  2. seed 002      - conv2d_transpose's exact output, and why its first element is 67 rather than 603;
  3. seed 004      - conv / transpose, max-pool / argmax / unpool and average unpooling, exact values;
  4. seed 003      - conv3d -> max_pool3d -> conv3d_transpose shapes (and values by loop-free identities);
  5. a deconvnet / SegNet-style round trip on a photograph (Gabor filter bank -> ReLU -> max_pool_with_argmax
     -> max_unpool -> conv2d_transpose), written as a PNG grid.

Oracles: the seeds' exact numbers, loop-free NumPy identities that share no code with gpuconv (sliding-window
einsum, reshape-max pooling, adjoint inner products, Jacobians built from unit inputs), and - when the demo runs
on the cuda or emulator backend - the NumPy backend, op by op. Exit status 0 when every check passes, 1 when any
fails, 2 for a usage error or a backend that cannot run here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import gpuconv as gc

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_IMAGE = DATA_DIR / "grace_hopper_256.png"
IMAGE_SIZE = 256


# ---------------------------------------------------------------------------------------------------------
# checks and the op wrapper
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One verified claim: the max abs error against a reference (or a yes/no outcome) and its tolerance."""

    section: str
    name: str
    reference: str
    error: float | None = None
    tol: float = 0.0
    ok: bool | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.ok is not None:
            return self.ok
        return self.error is not None and math.isfinite(self.error) and self.error <= self.tol


@dataclass
class Timing:
    section: str
    label: str
    backend: str
    seconds: float


def max_abs_error(got: Any, want: Any) -> float:
    """Max |got - want| in float64; inf when the shapes differ."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return math.inf
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def backend_choice(requested: str) -> tuple[str | None, str]:
    """(backend, reason): the backend the demo runs on, or None and why the requested one cannot run (also
    when a GPUCONV_* setting is malformed: every op would fail on it)."""
    from .info import settings
    try:
        settings()
    except ValueError as err:
        return None, str(err)
    try:
        from .backend import available_backends
        avail = available_backends()
    except Exception as exc:  # executors not built yet: only the NumPy backend can run
        avail = {"numpy": "yes", "cuda": f"unavailable ({type(exc).__name__}: {exc})",
                 "emulator": f"unavailable ({type(exc).__name__}: {exc})"}
    if requested == "auto":
        return ("cuda", "a GPU is available") if avail.get("cuda") == "yes" else (
            "numpy", f"no GPU backend here: {avail.get('cuda')}")
    if avail.get(requested) == "yes":
        if requested == "emulator":
            from .executors.emulator import EmulatorExecutor
            try:
                EmulatorExecutor()              # reads the GPUCONV_EMULATOR_* settings, builds nothing
            except ValueError as err:
                return None, str(err)
        return requested, "requested"
    return None, f"backend {requested!r} cannot run here: {avail.get(requested)}"


class Demo:
    """Runs gpuconv ops on one backend, moves results to the host, records checks and timings."""

    def __init__(self, backend: str, out=None):
        self.backend = backend
        self.out = out
        self.checks: list[Check] = []
        self.timings: list[Timing] = []
        self.section = ""
        if backend == "cuda":
            import cupy
            self.xp = cupy
        else:
            self.xp = np

    # -- output ------------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out or sys.stdout)

    def begin(self, section: str, title: str) -> None:
        self.section = section
        self.say()
        self.say(f"== {title} ==")

    # -- arrays ------------------------------------------------------------------------------------------
    def _to_dev(self, a: Any) -> Any:
        return self.xp.asarray(a) if isinstance(a, np.ndarray) and self.xp is not np else a

    @staticmethod
    def _to_host(a: Any) -> Any:
        if isinstance(a, tuple):
            return tuple(Demo._to_host(v) for v in a)
        return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a

    def _sync(self) -> None:
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def call(self, label: str, op: str, *args, **kwargs):
        """gpuconv.<op>(*args) on the demo's backend (host arrays in, host arrays out), timed; on a kernel
        backend the same call on the NumPy backend is the oracle, recorded as a check."""
        fn = getattr(gc, op)  # looked up per call, so tests can monkeypatch gpuconv's functions
        dev_args = [self._to_dev(a) for a in args]
        dev_kwargs = {k: self._to_dev(v) for k, v in kwargs.items()}
        with gc.use_backend(self.backend):
            t0 = time.perf_counter()
            result = fn(*dev_args, **dev_kwargs)
            self._sync()
            self.timings.append(Timing(self.section, label, self.backend, time.perf_counter() - t0))
        result = self._to_host(result)
        if self.backend != "numpy":
            with gc.use_backend("numpy"):
                t0 = time.perf_counter()
                ref = fn(*args, **kwargs)
                self.timings.append(Timing(self.section, label, "numpy", time.perf_counter() - t0))
            pairs = zip(result, ref) if isinstance(ref, tuple) else [(result, ref)]
            for i, (got, want) in enumerate(pairs):
                scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
                exact = not np.issubdtype(want.dtype, np.floating)
                tol = 0.0 if exact else _rtol(want.dtype) * scale
                suffix = f"[{i}]" if isinstance(ref, tuple) else ""
                self.check(f"{label}{suffix}: {self.backend} vs numpy backend", got, want, tol, "numpy backend")
        return result

    # -- checks ------------------------------------------------------------------------------------------
    def check(self, name: str, got: Any, want: Any, tol: float, reference: str) -> Check:
        c = Check(self.section, name, reference, max_abs_error(got, want), tol)
        if np.shape(got) != np.shape(want):
            c.detail = f"shape {np.shape(got)} != {np.shape(want)}"
        self.checks.append(c)
        return c

    def check_true(self, name: str, ok: bool, reference: str, detail: str = "") -> Check:
        c = Check(self.section, name, reference, ok=bool(ok), detail=detail)
        self.checks.append(c)
        return c

    def fail_section(self, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.checks.append(Check(self.section, "section ran to the end", "-", ok=False, detail=msg))
        self.say(f"  !! section stopped: {msg}")


def _rtol(dtype) -> float:
    return {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-5}.get(np.dtype(dtype), 1e-12)


# ---------------------------------------------------------------------------------------------------------
# loop-free NumPy helpers (share no code with gpuconv)
# ---------------------------------------------------------------------------------------------------------
def zero_insert(a: np.ndarray, stride: int) -> np.ndarray:
    """NHWC tensor with stride-1 zeros inserted between rows and between columns."""
    n, h, w, c = a.shape
    z = np.zeros((n, (h - 1) * stride + 1, (w - 1) * stride + 1, c), a.dtype)
    z[:, ::stride, ::stride, :] = a
    return z


def pad_full(dy: np.ndarray, stride: int, k: tuple[int, int], x_hw: tuple[int, int]) -> np.ndarray:
    """Seed 000's tf_pad_to_full_conv2d: zero-insert dy and pad it so a VALID stride-1 conv gives x's size.

    k-1 cells before; after, k-1 plus the input rows/columns the forward VALID conv never reached.
    """
    z = zero_insert(dy, stride)
    after = [k[i] - 1 + x_hw[i] - (z.shape[1 + i] + k[i] - 1) for i in range(2)]
    return np.pad(z, ((0, 0), (k[0] - 1, after[0]), (k[1] - 1, after[1]), (0, 0)))


def rot180(w: np.ndarray) -> np.ndarray:
    """Seed 000's tf_rot180 with in/out channels swapped: (kh, kw, in, out) -> rotated (kh, kw, out, in)."""
    return np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


def correlate_same(img: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """SAME, stride-1 2-D correlation by sliding windows + einsum: an oracle independent of gpuconv."""
    kh, kw = bank.shape[:2]
    ph, pw = kh - 1, kw - 1
    padded = np.pad(img.astype(np.float64), ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))  # n,h,w,c,kh,kw
    return np.einsum("nhwcij,ijck->nhwk", win, bank.astype(np.float64), optimize=True)


def gabor_bank(n_orient: int = 8, size: int = 11, sigma: float = 2.5, wavelength: float = 6.0,
               gamma: float = 0.6) -> np.ndarray:
    """Even (cosine) Gabor filters at n_orient orientations, zero-mean, unit L2 norm: (size, size, 1, n)."""
    r = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    bank = np.empty((size, size, 1, n_orient), np.float32)
    for i in range(n_orient):
        theta = np.pi * i / n_orient
        xr = xx * np.cos(theta) + yy * np.sin(theta)
        yr = -xx * np.sin(theta) + yy * np.cos(theta)
        g = np.exp(-(xr ** 2 + (gamma * yr) ** 2) / (2 * sigma ** 2)) * np.cos(2 * np.pi * xr / wavelength)
        g -= g.mean()
        bank[:, :, 0, i] = g / np.linalg.norm(g)
    return bank


def load_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """A grayscale photograph as float32 in [0, 1], centre-cropped to a square and resized to size x size."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        with Image.open(path) as im:
            im = im.convert("L")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
            return np.asarray(im, np.float32) / 255.0
    try:
        import matplotlib.image as mpimg  # reads PNG without Pillow
    except ImportError as exc:
        raise ImportError("the photo round trip needs Pillow or matplotlib: pip install 'gpuconv[demo]'") from exc
    a = np.asarray(mpimg.imread(str(path)), np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    if a.shape != (size, size):
        raise ValueError(f"{path}: without Pillow the image must already be {size}x{size} (got {a.shape})")
    return a if a.max() <= 1.0 else a / 255.0


# ---------------------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------------------
def section_gradients(d: Demo) -> None:
    d.begin("grad", "Seeds 000/001: four ways to d_x, three ways to d_w")
    rng = np.random.default_rng(0)
    s = 2
    x = rng.uniform(-1, 1, (2, 9, 8, 3)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 3, 3, 4)).astype(np.float32)
    y = d.call("conv2d", "conv2d", x, w, s, "VALID")
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    d.say(f"  x {x.shape}, w {w.shape}, stride {s}, VALID -> y {y.shape}; d_out random of y's shape")

    # d_x, method 1: reverse-mode autodiff of the linear map x -> conv2d(x, w) is the vector-Jacobian
    # product; the Jacobian is built column by column from unit inputs (one batched conv2d call).
    cells = int(np.prod(x.shape[1:]))
    basis = np.eye(cells, dtype=np.float32).reshape((cells,) + x.shape[1:])
    jac = d.call("jacobian", "conv2d", basis, w, s, "VALID").reshape(cells, -1)        # (cells, P*Q*K)
    dx_autodiff = (dy.reshape(len(x), -1).astype(np.float64) @ jac.T.astype(np.float64)).reshape(x.shape)
    # method 2: conv2d of the zero-inserted, fully padded d_out with the rotated, in/out-swapped filter
    dx_manual = d.call("manual d_x", "conv2d", pad_full(dy, s, w.shape[:2], x.shape[1:3]), rot180(w), 1, "VALID")
    # methods 3 and 4
    dx_bi = d.call("backprop_input", "conv2d_backprop_input", x.shape, w, dy, s, "VALID")
    dx_tr = d.call("transpose", "conv2d_transpose", dy, w, x.shape, s, "VALID")
    tol = 1e-5 * max(1.0, float(np.abs(dx_autodiff).max()))
    d.say("  d_x: 1 autodiff (VJP)  2 conv2d(pad_full(d_out), rot180(w))  3 conv2d_backprop_input  "
          "4 conv2d_transpose")
    d.check("d_x 3 backprop_input == 1 autodiff", dx_bi, dx_autodiff, tol, "Jacobian VJP")
    d.check("d_x 2 manual conv2d == 1 autodiff", dx_manual, dx_autodiff, tol, "Jacobian VJP")
    d.check("d_x 4 conv2d_transpose == 3 backprop_input", dx_tr, dx_bi, 0.0, "identity (same op)")

    # d_w, method 1: the Jacobian of y w.r.t. w is the patch matrix: conv2d with identity filters = im2col.
    kh, kw, c, k = w.shape
    taps = kh * kw * c
    eye_w = np.eye(taps, dtype=np.float32).reshape(kh, kw, c, taps)
    patches = d.call("im2col", "conv2d", x, eye_w, s, "VALID").reshape(-1, taps)
    dw_autodiff = (patches.T.astype(np.float64) @ dy.reshape(-1, k).astype(np.float64)).reshape(w.shape)
    # method 2: conv2d of x (channels as batch) with d_out as the filter: stride and dilation swap roles
    x_t = np.ascontiguousarray(x.transpose(3, 1, 2, 0))          # (C, H, W, N)
    dy_f = np.ascontiguousarray(dy.transpose(1, 2, 0, 3))        # (P, Q, N, K) as HWIO
    dw_m = d.call("manual d_w", "conv2d", x_t, dy_f, 1, "VALID", dilations=s)   # (C, >=kh, >=kw, K)
    dw_manual = dw_m[:, :kh, :kw, :].transpose(1, 2, 0, 3)
    dw_bf = d.call("backprop_filter", "conv2d_backprop_filter", x, w.shape, dy, s, "VALID")
    tol = 1e-5 * max(1.0, float(np.abs(dw_autodiff).max()))
    d.say("  d_w: 1 autodiff (patches^T d_out)  2 conv2d(x^T, d_out as filter, dilation=stride)  "
          "3 conv2d_backprop_filter")
    d.check("d_w 3 backprop_filter == 1 autodiff", dw_bf, dw_autodiff, tol, "Jacobian VJP")
    d.check("d_w 2 manual conv2d == 1 autodiff", dw_manual, dw_autodiff, tol, "Jacobian VJP")


SEED002_X = np.array([[-67, -77], [-117, -127]], np.float32).reshape(1, 2, 2, 1)
SEED002_F = np.array([[-1, 2, -3], [4, -5, 6], [-7, 8, -9]], np.float32).reshape(3, 3, 1, 1)
SEED002_OUT = np.array([
    [67, -134, 278, -154, 231],
    [-268, 335, -710, 385, -462],
    [586, -770, 1620, -870, 1074],
    [-468, 585, -1210, 635, -762],
    [819, -936, 1942, -1016, 1143]], np.float32).reshape(1, 5, 5, 1)


def section_transpose(d: Demo) -> None:
    d.begin("seed002", "Seed 002: conv2d_transpose, and why the first element is 67, not 603")
    out = d.call("transpose 5x5", "conv2d_transpose", SEED002_X, SEED002_F, (1, 5, 5, 1), 2, "VALID")
    d.say("  conv2d_transpose(x=[[-67,-77],[-117,-127]], f=[[-1,2,-3],[4,-5,6],[-7,8,-9]], (1,5,5,1), 2, VALID):")
    for row in out[0, :, :, 0]:
        d.say("    " + " ".join(f"{v:7.0f}" for v in row))
    d.check("output == the seed's 5x5 table", out, SEED002_OUT, 0.0, "seed 002")
    d.say("  Each input cell scatters x*f onto the output with f NOT rotated, windows 2 apart: out[0,0] only")
    d.say("  receives x[0,0]*f[0,0] = (-67)(-1) = 67. As a gather (a conv2d over the zero-inserted, padded")
    d.say("  input) the same map uses the 180-degree-rotated filter, whose bottom-right tap is f[0,0].")
    d.say("  603 = (-67)(-9) is that gather with the unrotated filter: the question's mistake.")
    xz = pad_full(SEED002_X, 2, (3, 3), (5, 5))
    gather = d.call("gather, rotated f", "conv2d", xz, rot180(SEED002_F), 1, "VALID")
    wrong = d.call("gather, unrotated f", "conv2d", xz, SEED002_F, 1, "VALID")
    d.say(f"  conv2d(zero-inserted x, rot180(f))[0,0] = {gather[0, 0, 0, 0]:.0f}; "
          f"with f unrotated: {wrong[0, 0, 0, 0]:.0f}")
    d.check("gather with rot180(f) == transpose", gather, SEED002_OUT, 0.0, "seed 002")
    d.check("gather with unrotated f gives 603 at [0,0]", wrong[0, 0, 0, 0], 603.0, 0.0, "seed 002 question")
    # Seed 003's remark: several output_shapes are legal; others are refused with the legal range.
    six = d.call("transpose 6x6", "conv2d_transpose", SEED002_X, SEED002_F, (1, 6, 6, 1), 2, "VALID")
    d.check_true("output_shape 6x6 is also legal", six.shape == (1, 6, 6, 1), "TF shape rule")
    try:
        with gc.use_backend(d.backend):
            gc.conv2d_transpose(d._to_dev(SEED002_X), d._to_dev(SEED002_F), (1, 7, 7, 1), 2, "VALID")
        d.check_true("output_shape 7x7 is refused", False, "TF shape rule", "no error raised")
    except ValueError as exc:
        d.say(f"  output_shape (1,7,7,1) -> ValueError: {exc}")
        d.check_true("output_shape 7x7 is refused, naming [5, 6]", "[5, 6]" in str(exc), "TF shape rule",
                     str(exc))


SEED004_IMG = np.array([
    [[0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [0.0, 4.0]],
    [[1.0, 5.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0]],
    [[2.0, 6.0], [2.0, 6.0], [2.0, 6.0], [2.0, 6.0]],
    [[3.0, 7.0], [3.0, 7.0], [3.0, 7.0], [3.0, 7.0]]], np.float32).reshape(1, 4, 4, 2)


def section_seed004(d: Demo) -> None:
    d.begin("seed004", "Seed 004: conv/transpose, max-pool/argmax/unpool, average unpooling")
    img = np.ones((1, 4, 4, 1), np.float32)
    kernel = np.array([1.0, 0, -1, -2], np.float32).reshape(2, 2, 1, 1)
    conv_expected = np.full((1, 2, 2, 1), -2, np.float32)
    back_expected = np.tile(np.array([[-2, 0], [2, 4]], np.float32), (2, 2)).reshape(1, 4, 4, 1)
    for pad in ("VALID", "SAME"):
        y = d.call(f"conv {pad}", "conv2d", img, kernel, 2, pad)
        d.check(f"conv2d {pad} == [[-2,-2],[-2,-2]]", y, conv_expected, 0.0, "seed 004")
        back = d.call(f"transpose {pad}", "conv2d_transpose", y, kernel, (1, 4, 4, 1), 2, pad)
        d.check(f"conv2d_transpose {pad} == the seed's 4x4", back, back_expected, 0.0, "seed 004")
    d.say("  ones(4x4) * [[1,0],[-1,-2]] stride 2 -> all -2; transposed back: rows [-2 0 -2 0] / [2 4 2 4]")

    # The seed's max-pool / argmax / unpool example (4x4x2; it could not run it: TF's op was GPU-only).
    y_exp = np.array([[[1, 5], [1, 5]], [[3, 7], [3, 7]]], np.float32).reshape(1, 2, 2, 2)
    # ties (equal values along a row) go to the first cell in row-major scan order: index (y*W + x)*C + c
    a_exp = np.array([[[8, 9], [12, 13]], [[24, 25], [28, 29]]], np.int64).reshape(1, 2, 2, 2)
    pooled = d.call("max_pool2d", "max_pool2d", SEED004_IMG, 2, 2, "SAME")
    d.check("max_pool2d == [[1,5],[1,5]] / [[3,7],[3,7]]", pooled, y_exp, 0.0, "seed 004 (by hand)")
    vals, argmax = d.call("max_pool_with_argmax", "max_pool_with_argmax", SEED004_IMG, 2, 2, "SAME")
    d.check("max_pool_with_argmax values", vals, y_exp, 0.0, "seed 004 (by hand)")
    d.check("argmax == (y*W + x)*C + c, ties to the first cell", argmax, a_exp, 0.0, "TF index rule")
    d.say(f"  argmax (channel 0): {argmax[0, :, :, 0].tolist()}  (channel 1): {argmax[0, :, :, 1].tolist()}")
    unpooled = d.call("max_unpool", "max_unpool", vals, argmax, SEED004_IMG.shape)
    u_exp = np.zeros_like(SEED004_IMG)
    u_exp.reshape(-1)[a_exp.reshape(-1)] = y_exp.reshape(-1)
    d.check("max_unpool == zeros + maxima at argmax", unpooled, u_exp, 0.0, "seed 004 scatter_nd recipe")
    d.check("the seed's scatter_nd recipe gives the same", seed_unpool_recipe(vals, argmax, 2), u_exp, 0.0,
            "seed 004 scatter_nd recipe")

    # The seed's recipe decodes rows with output_shape = pooled * stride; wrong when H, W are not multiples.
    rng = np.random.default_rng(4)
    x5 = rng.permutation(5 * 5 * 2).astype(np.float32).reshape(1, 5, 5, 2)   # tie-free
    v5, a5 = d.call("argmax 5x5", "max_pool_with_argmax", x5, 2, 2, "SAME")
    u5 = d.call("unpool 5x5", "max_unpool", v5, a5, x5.shape)
    c = x5.shape[3]
    true_yx = (a5 // (5 * c), a5 % (5 * c) // c)
    seed_yx = (a5 // (6 * c), a5 % (6 * c) // c)        # the recipe's decode with W = 3 x 2 = 6
    misplaced = int(np.count_nonzero((true_yx[0] != seed_yx[0]) | (true_yx[1] != seed_yx[1])))
    d.say(f"  5x5 input (SAME -> 3x3): decoding argmax with pooled x stride = 6x6, as the seed's recipe does,"
          f" puts {misplaced} of {a5.size} maxima on the wrong cell; max_unpool takes the original shape")
    d.check("5x5: max_unpool puts every maximum back on its own cell", u5, np.where(u5 != 0, x5, 0), 0.0,
            "input cells")
    d.check("5x5: max_pool2d(max_unpool(...)) == pooled", d.call("re-pool 5x5", "max_pool2d", u5, 2, 2, "SAME"),
            v5, 0.0, "pooled values")

    # Average pooling and the seed's average unpooling: every cell of a window gets the window's mean.
    avg = d.call("avg_pool2d", "avg_pool2d", SEED004_IMG, 2, 2, "SAME")
    avg_exp = SEED004_IMG.reshape(1, 2, 2, 2, 2, 2).mean(axis=(2, 4))
    d.check("avg_pool2d == window means", avg, avg_exp, 0.0, "reshape-mean")
    au = d.call("avg_unpool", "avg_unpool", avg, 2, 2, "SAME", SEED004_IMG.shape)
    d.check("avg_unpool fills each window with its mean", au, np.repeat(np.repeat(avg_exp, 2, 1), 2, 2), 0.0,
            "seed 004 picture")


def seed_unpool_recipe(net: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """Seed 004's un_max_pool in NumPy: decode (b, y, x, f) with output_shape = pooled * stride, scatter_nd."""
    n, h, w, c = net.shape
    oh, ow = h * stride, w * stride
    mask = mask.astype(np.int64)
    b = np.broadcast_to(np.arange(n).reshape(n, 1, 1, 1), mask.shape)
    y = mask // (ow * c)
    x = mask % (ow * c) // c
    f = np.broadcast_to(np.arange(c), mask.shape)
    out = np.zeros((n, oh, ow, c), net.dtype)
    np.add.at(out, (b.ravel(), y.ravel(), x.ravel(), f.ravel()), net.ravel())
    return out


def _tap_counts(n: int, k: int) -> np.ndarray:
    """Per position of a SAME stride-1 axis: how many of the k taps fall inside [0, n)."""
    pb = (k - 1) // 2
    i = np.arange(n)
    return np.minimum(i - pb + k, n) - np.maximum(i - pb, 0)


def section_conv3d(d: Demo) -> None:
    d.begin("seed003", "Seed 003: conv3d -> max_pool3d -> conv3d_transpose shapes")
    c = 8   # the seed uses 512 channels; the shapes along D, H, W are the point and do not depend on it
    x3 = np.ones((10, 2, 7, 7, c), np.float32)
    k1 = np.ones((3, 3, 3, c, c), np.float32)
    y2 = d.call("conv3d", "conv3d", x3, k1, 1, "SAME")
    pool = d.call("max_pool3d", "max_pool3d", y2, 2, 2, "SAME")
    y3 = d.call("conv3d_transpose", "conv3d_transpose", pool, k1, (10, 2, 7, 7, c), 2, "SAME")
    d.say(f"  {x3.shape} -conv3d SAME-> {y2.shape} -max_pool3d 2x2x2/2 SAME-> {pool.shape} "
          f"-conv3d_transpose/2-> {y3.shape}   (channels {c}; the seed's 512 give the same spatial shapes)")
    d.check_true("shapes (10,2,7,7) -> (10,1,4,4) -> (10,2,7,7) as in the seed",
                 (y2.shape, pool.shape, y3.shape) == ((10, 2, 7, 7, c), (10, 1, 4, 4, c), (10, 2, 7, 7, c)),
                 "seed 003")
    # conv3d of ones by ones: C x (taps inside along D) x (along H) x (along W)
    counts = np.einsum("i,j,k->ijk", _tap_counts(2, 3), _tap_counts(7, 3), _tap_counts(7, 3)) * c
    y2_exp = np.broadcast_to(counts[None, :, :, :, None], y2.shape).astype(np.float32)
    d.check("conv3d(ones, ones) == C x in-bounds tap counts", y2, y2_exp, 0.0, "closed form")
    # max_pool3d by reshape-max after padding to even sizes with -inf (SAME, 2x2x2/2: pads 0/0, 0/1, 0/1)
    padded = np.pad(y2_exp, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    pool_exp = padded.reshape(10, 1, 2, 4, 2, 4, 2, c).max(axis=(2, 4, 6))
    d.check("max_pool3d == reshape-max", pool, pool_exp, 0.0, "reshape-max")
    # conv3d_transpose is the adjoint of the stride-2 conv3d: <T(p), r> == <p, conv3d(r)>
    r = np.random.default_rng(3).uniform(-1, 1, y3.shape).astype(np.float32)
    fwd = d.call("conv3d stride 2", "conv3d", r, k1, 2, "SAME")
    lhs = float(np.sum(y3.astype(np.float64) * r))
    rhs = float(np.sum(pool.astype(np.float64) * fwd))
    d.check("<conv3d_transpose(p), r> == <p, conv3d(r)> (relative)", abs(lhs - rhs) / max(abs(rhs), 1e-30),
            0.0, 1e-5, "adjoint identity")


@dataclass(frozen=True)
class Photo:
    """The photograph of the round trip, read before any work (a file that is no image is a usage error)."""
    name: str
    pixels: np.ndarray              # load_image's (IMAGE_SIZE, IMAGE_SIZE) float32 in [0, 1]


def section_photo(d: Demo, photo: Photo, out_dir: Path, dpi: int) -> Path | None:
    d.begin("photo", "Deconvnet / SegNet round trip on a photograph")
    img = photo.pixels[None, :, :, None]                          # (1, 256, 256, 1) in [0, 1]
    bank = gabor_bank()
    d.say(f"  image {photo.name} {img.shape[1]}x{img.shape[2]}; {bank.shape[3]} even Gabor filters "
          f"{bank.shape[0]}x{bank.shape[1]} (zero-mean, unit norm)")
    feat = d.call("conv2d (Gabor bank)", "conv2d", img, bank, 1, "SAME")
    relu = np.maximum(feat, 0)
    pooled, argmax = d.call("max_pool_with_argmax 2x2/2", "max_pool_with_argmax", relu, 2, 2, "SAME")
    unpooled = d.call("max_unpool", "max_unpool", pooled, argmax, relu.shape)
    recon = d.call("conv2d_transpose (unpooled)", "conv2d_transpose", unpooled, bank, img.shape, 1, "SAME")
    recon_full = d.call("conv2d_transpose (all features)", "conv2d_transpose", relu, bank, img.shape, 1, "SAME")

    ref = correlate_same(img, bank)
    d.check("conv2d == sliding-window einsum", feat, ref, 1e-5 * max(1.0, float(np.abs(ref).max())),
            "NumPy einsum")
    h2, w2 = relu.shape[1] // 2, relu.shape[2] // 2
    d.check("pooled == reshape-max", pooled, relu.reshape(1, h2, 2, w2, 2, -1).max(axis=(2, 4)), 0.0,
            "reshape-max")
    d.check("relu[argmax] == pooled", np.take(relu[0].reshape(-1), argmax), pooled, 0.0, "input cells")
    d.check("max_pool2d(unpooled) == pooled", d.call("re-pool", "max_pool2d", unpooled, 2, 2, "SAME"), pooled,
            0.0, "pooled values")
    d.check("max_unpool_grad(unpooled, argmax) == pooled", d.call("max_unpool_grad", "max_unpool_grad",
                                                                  unpooled, argmax), pooled, 0.0, "gather")
    lhs = float(np.sum(ref * unpooled))                                        # <conv2d(img), u>
    rhs = float(np.sum(img.astype(np.float64) * recon))                       # <img, conv2d_transpose(u)>
    d.check("<conv2d(img), u> == <img, conv2d_transpose(u)> (relative)", abs(lhs - rhs) / max(abs(lhs), 1e-30),
            0.0, 1e-5, "adjoint identity")
    kept = np.count_nonzero(unpooled) / unpooled.size
    corr = float(np.corrcoef(recon.ravel(), img.ravel())[0, 1])
    corr_full = float(np.corrcoef(recon_full.ravel(), img.ravel())[0, 1])
    d.say(f"  unpooled maps keep {kept:.1%} of the cells; reconstruction vs input: Pearson r = {corr:.3f} "
          f"(without pooling: {corr_full:.3f})")
    try:
        path = save_grid(out_dir / "demo.png", img, bank, relu, pooled, unpooled, recon, recon_full, dpi)
    except ImportError as exc:
        d.say(f"  (no picture: {exc})")
        return None
    d.say(f"  picture: {path}")
    return path


def save_grid(path: Path, img, bank, relu, pooled, unpooled, recon, recon_full, dpi: int) -> Path:
    """A 4x4 PNG grid: input / reconstructions / filters, then feature, pooled and unpooled maps."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the picture needs matplotlib: pip install 'gpuconv[demo]'") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = bank.shape[3]
    picks = [0, n // 4, n // 2, 3 * n // 4] if n >= 4 else list(range(n))
    mosaic = np.concatenate([np.pad(bank[:, :, 0, i], 1, constant_values=np.nan) for i in picks], axis=1)
    fig, axes = plt.subplots(4, 4, figsize=(8, 8.6), dpi=dpi)
    top = [(img[0, :, :, 0], "input"), (recon[0, :, :, 0], "reconstruction\n(unpooled -> transpose)"),
           (recon_full[0, :, :, 0], "reconstruction\n(no pooling)"), (mosaic, "filters shown below")]
    for ax, (a, title) in zip(axes[0], top):
        ax.imshow(a, cmap="gray")
        ax.set_title(title, fontsize=8)
    rows = [(relu, "ReLU(conv2d)"), (pooled, "max_pool_with_argmax"), (unpooled, "max_unpool")]
    for r, (maps, label) in enumerate(rows, start=1):
        for ax, i in zip(axes[r], picks):
            m = maps[0, :, :, i]
            ax.imshow(m, cmap="magma", vmin=0, vmax=max(float(np.percentile(m, 99.5)), 1e-12))
            ax.set_title(f"{label}\n{180 * i / n:.0f} deg, {maps.shape[1]}x{maps.shape[2]}", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------
# report and entry point
# ---------------------------------------------------------------------------------------------------------
def print_report(d: Demo) -> None:
    d.say()
    d.say("== Checks ==")
    width = max(len(c.name) for c in d.checks) if d.checks else 10
    d.say(f"  {'section':8} {'check':{width}} {'reference':26} {'max abs err':>11} {'tol':>8}  result")
    for c in d.checks:
        err = "-" if c.error is None else f"{c.error:.3g}"
        tol = "-" if c.ok is not None else f"{c.tol:.2g}"
        verdict = "pass" if c.passed else "FAIL"
        d.say(f"  {c.section:8} {c.name:{width}} {c.reference:26} {err:>11} {tol:>8}  {verdict}"
              + (f"  ({c.detail})" if c.detail and not c.passed else ""))
    d.say()
    d.say("== Timings (wall time of the gpuconv calls, synchronised; first calls include any compilation) ==")
    sections = list(dict.fromkeys(t.section for t in d.timings))
    for sec in sections:
        for be in dict.fromkeys(t.backend for t in d.timings if t.section == sec):
            rows = [t for t in d.timings if t.section == sec and t.backend == be]
            d.say(f"  {sec:8} {be:9} {len(rows):3d} calls {1e3 * sum(t.seconds for t in rows):10.2f} ms")
    photo = [t for t in d.timings if t.section == "photo"]
    if photo:
        d.say("  photo calls:")
        for t in photo:
            d.say(f"    {t.backend:9} {t.label:34} {1e3 * t.seconds:10.2f} ms")
    failed = sum(not c.passed for c in d.checks)
    d.say()
    d.say(f"{len(d.checks) - failed} of {len(d.checks)} checks passed on backend {d.backend!r}"
          + ("" if not failed else f"; {failed} FAILED"))


def write_json(d: Demo, path: Path, picture: Path | None) -> None:
    data = {
        "backend": d.backend,
        "gpuconv": gc.__version__,
        "picture": str(picture) if picture else None,
        "checks": [{"section": c.section, "name": c.name, "reference": c.reference,
                    "max_abs_error": _json_number(c.error),
                    "tol": c.tol if c.ok is None else None, "passed": c.passed, "detail": c.detail}
                   for c in d.checks],
        "timings": [{"section": t.section, "label": t.label, "backend": t.backend, "seconds": t.seconds}
                    for t in d.timings],
    }
    path.write_text(json.dumps(data, indent=2, allow_nan=False))


def _json_number(x):
    """A float JSON can hold: inf (shapes that differ) and nan become the strings "inf" / "nan", which strict
    parsers (jq, JSON.parse) accept, unlike Python's bare Infinity / NaN."""
    return x if x is None or math.isfinite(x) else str(x)


DPI_RANGE = (10, 1200)   # demo.png is 8 x 8.6 inches: 80 x 86 to 9600 x 10320 pixels


def _dpi(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not DPI_RANGE[0] <= value <= DPI_RANGE[1]:
        raise argparse.ArgumentTypeError(f"expected an integer in [{DPI_RANGE[0]}, {DPI_RANGE[1]}], got {text!r}")
    return value


def out_dir_problem(path: Path) -> str | None:
    """Create the output folder now, before any work: None, or why it cannot be used (shared with bench)."""
    if path.exists() and not path.is_dir():
        return f"{str(path)!r} exists and is not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the folder {str(path)!r}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"cannot write into the folder {str(path)!r}"
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpuconv demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "cuda", "emulator"),
                   help="where the ops run (auto: cuda when a GPU is available, else numpy)")
    p.add_argument("--out", default="gpuconv-demo", type=Path, help="folder for demo.png and checks.json")
    p.add_argument("--image", default=DEFAULT_IMAGE, type=Path, help="photograph for the round trip")
    p.add_argument("--dpi", default=80, type=_dpi,
                   help=f"resolution of demo.png (8 x 8.6 inches), {DPI_RANGE[0]}..{DPI_RANGE[1]}")
    return p.parse_args(argv)


SECTIONS: tuple[Callable[[Demo], None], ...] = (section_gradients, section_transpose, section_seed004,
                                                 section_conv3d)


def main(argv: list[str]) -> int:
    """Entry point of `python -m gpuconv demo`; returns the exit status."""
    args = parse_args(argv)
    backend, reason = backend_choice(args.backend)
    if backend is None:
        print(f"gpuconv demo: {reason}", file=sys.stderr)
        return 2
    if not args.image.is_file():
        print(f"gpuconv demo: no image at {args.image}", file=sys.stderr)
        return 2
    try:
        photo = Photo(args.image.name, load_image(args.image))
    except Exception as exc:        # not an image, or neither Pillow nor matplotlib installed
        print(f"gpuconv demo: --image {args.image}: cannot read it ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    problem = out_dir_problem(args.out)
    if problem:
        print(f"gpuconv demo: --out: {problem}", file=sys.stderr)
        return 2
    d = Demo(backend)
    d.say(f"gpuconv {gc.__version__} demo on backend {backend!r} ({reason})")
    if backend != "numpy":
        d.say("every op result is also compared with the NumPy backend")
    for section in SECTIONS:
        try:
            section(d)
        except Exception as exc:  # a broken op must not hide the remaining sections
            d.fail_section(exc)
    picture = None
    try:
        picture = section_photo(d, photo, args.out, args.dpi)
    except Exception as exc:
        d.fail_section(exc)
    print_report(d)
    write_json(d, args.out / "checks.json", picture)
    return 0 if d.checks and all(c.passed for c in d.checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
