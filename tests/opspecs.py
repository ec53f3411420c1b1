"""Per-op registry (PyTorch OpInfo style): sample inputs, tolerances per dtype and a reference for every op.

    SPECS[name] = OpSpec(name, fn, sample_inputs(rng) -> [Sample], reference(*args, **kwargs), dtypes, tol)

`fn` is the public gpuconv function; `reference` has the SAME signature and is built on tests/loop_reference.py
(it parses the user-facing argument forms itself, independently of gpuconv._args). Samples are tiny and
cover NHWC/NCHW (NDHWC/NCDHW), groups, dilations, SAME/VALID/explicit padding in full-rank and spatial-only
forms, every stride form, spatial-only and array-valued shapes, empty results, float16/32/64 and integer
dtypes where the op allows them.

Reuse from other test files:
    from opspecs import SPECS, cases, check_sample
    @pytest.mark.parametrize("name,sample", cases())              # every op, every sample
    def test_x(name, sample): check_sample(SPECS[name], sample, backend="emulator")
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest

import gpuconv
import loop_reference as R

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
FLOATS = (F16, F32, F64)
INTS = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64))

# (rtol, atol) per dtype, for values drawn from [-1, 1] and sums of at most a few dozen terms. float16 results
# are accumulated in float32 and rounded once, so they may differ from the float64 reference by about one ulp.
TOL: dict[np.dtype, tuple[float, float]] = {F16: (4e-3, 4e-3), F32: (2e-5, 2e-5), F64: (1e-12, 1e-12)}
TOL.update({d: (0.0, 0.0) for d in INTS + (np.dtype(np.int32), np.dtype(np.int64))})


@dataclasses.dataclass
class Sample:
    args: tuple
    kwargs: dict
    desc: str = ""
    exact: bool = False          # selection-only results (max pooling values, argmax): compare bit-exactly

    def __repr__(self) -> str:   # pytest ids
        return self.desc


@dataclasses.dataclass
class OpSpec:
    name: str
    fn: Callable
    sample_inputs: Callable[[np.random.Generator], list]
    reference: Callable
    dtypes: tuple
    tol: dict = dataclasses.field(default_factory=lambda: dict(TOL))
    nspatial: int = 2


# ---------------------------------------------------------------------------------------------------------
# the reference's own argument parsing (independent of gpuconv._args)
# ---------------------------------------------------------------------------------------------------------
def _cl(data_format) -> bool:
    return data_format in (None, "NHWC", "NDHWC")


def _spatial_pick(seq, nsp, cl):
    return list(seq[1:-1]) if cl else list(seq[2:])


def _ints(v, nsp, cl):
    if v is None:
        return [1] * nsp
    if np.ndim(v) == 0:
        return [int(v)] * nsp
    v = [int(a) for a in np.asarray(v).ravel()]
    if len(v) == 1:
        return v * nsp
    if len(v) == nsp:
        return v
    assert len(v) == nsp + 2
    return _spatial_pick(v, nsp, cl)


def _pad(p, nsp, cl):
    if isinstance(p, str):
        return p.upper()
    pairs = [tuple(int(a) for a in q) for q in np.asarray(p).tolist()]
    if len(pairs) == nsp + 2:
        pairs = _spatial_pick(pairs, nsp, cl)
    return pairs


def _to_cl(x, cl):
    return x if cl else np.moveaxis(x, 1, -1)


def _from_cl(y, cl):
    return y if cl else np.moveaxis(y, -1, 1)


def _shape(shape, nsp, cl, batch, channels):
    s = [int(a) for a in np.asarray(shape).ravel()]
    if len(s) == nsp:
        return (batch, *s, channels)
    return (s[0], *_spatial_pick(s, nsp, cl), s[-1] if cl else s[1])


def _ref_conv(nsp):
    def conv(input, filters, strides, padding, data_format=None, dilations=None):
        cl = _cl(data_format)
        y = R.conv_fprop(_to_cl(input, cl), filters, _ints(strides, nsp, cl), _pad(padding, nsp, cl),
                         _ints(dilations, nsp, cl))
        return _from_cl(y, cl)
    return conv


def _ref_backprop_input(nsp):
    def backprop_input(input_sizes, filters, out_backprop, strides, padding, data_format=None, dilations=None):
        cl = _cl(data_format)
        dy = _to_cl(out_backprop, cl)
        x_shape = _shape(input_sizes, nsp, cl, dy.shape[0], filters.shape[-2])
        dx = R.conv_backprop_input(x_shape, filters, dy, _ints(strides, nsp, cl), _pad(padding, nsp, cl),
                                   _ints(dilations, nsp, cl))
        return _from_cl(dx, cl)
    return backprop_input


def _ref_transpose(nsp):
    def transpose(input, filters, output_shape, strides, padding="SAME", data_format=None, dilations=None):
        cl = _cl(data_format)
        x = _to_cl(input, cl)
        out_shape = _shape(output_shape, nsp, cl, x.shape[0], filters.shape[-2])
        y = R.conv_transpose(x, filters, out_shape, _ints(strides, nsp, cl), _pad(padding, nsp, cl),
                             _ints(dilations, nsp, cl))
        return _from_cl(y, cl)
    return transpose


def _ref_backprop_filter(nsp):
    def backprop_filter(input, filter_sizes, out_backprop, strides, padding, data_format=None, dilations=None):
        cl = _cl(data_format)
        return R.conv_backprop_filter(_to_cl(input, cl), filter_sizes, _to_cl(out_backprop, cl),
                                      _ints(strides, nsp, cl), _pad(padding, nsp, cl), _ints(dilations, nsp, cl))
    return backprop_filter


def _ref_pool(nsp, fn):
    def pool(input, ksize, strides, padding, data_format=None):
        cl = _cl(data_format)
        y = fn(_to_cl(input, cl), _ints(ksize, nsp, cl), _ints(strides, nsp, cl), _pad(padding, nsp, cl))
        return _from_cl(y, cl)
    return pool


def _ref_argmax(input, ksize, strides, padding, data_format="NHWC", output_dtype="int64",
                include_batch_in_index=False):
    return R.max_pool_with_argmax(input, _ints(ksize, 2, True), _ints(strides, 2, True), _pad(padding, 2, True),
                                  include_batch_in_index, np.dtype(output_dtype))


def _ref_max_pool_grad(nsp):
    def max_pool_grad(orig_input, orig_output, grad, ksize, strides, padding, data_format=None):
        cl = _cl(data_format)
        dx = R.max_pool_grad(_to_cl(orig_input, cl), _to_cl(grad, cl), _ints(ksize, nsp, cl),
                             _ints(strides, nsp, cl), _pad(padding, nsp, cl))
        return _from_cl(dx, cl)
    return max_pool_grad


def _ref_max_pool_grad_with_argmax(input, grad, argmax, ksize, strides, padding, include_batch_in_index=False):
    return R.max_pool_grad_with_argmax(input.shape, grad, argmax, include_batch_in_index)


def _ref_avg_pool_grad(nsp):
    def avg_pool_grad(orig_input_shape, grad, ksize, strides, padding, data_format=None):
        cl = _cl(data_format)
        dy = _to_cl(grad, cl)
        x_shape = _shape(orig_input_shape, nsp, cl, dy.shape[0], dy.shape[-1])
        dx = R.avg_pool_grad(x_shape, dy, _ints(ksize, nsp, cl), _ints(strides, nsp, cl), _pad(padding, nsp, cl))
        return _from_cl(dx, cl)
    return avg_pool_grad


def _ref_max_unpool(updates, argmax, output_shape, include_batch_in_index=False):
    nsp = updates.ndim - 2
    out_shape = _shape(output_shape, nsp, True, updates.shape[0], updates.shape[-1])
    return R.max_unpool(updates, argmax, out_shape, include_batch_in_index)


def _ref_max_unpool_grad(grad, argmax, include_batch_in_index=False):
    return R.max_unpool_grad(grad, argmax, include_batch_in_index)


def _ref_avg_unpool(updates, ksize, strides, padding, output_shape, data_format=None):
    nsp = updates.ndim - 2
    cl = _cl(data_format)
    u = _to_cl(updates, cl)
    x_shape = _shape(output_shape, nsp, cl, u.shape[0], u.shape[-1])
    out = R.avg_unpool(u, x_shape, _ints(ksize, nsp, cl), _ints(strides, nsp, cl), _pad(padding, nsp, cl))
    return _from_cl(out, cl)


# ---------------------------------------------------------------------------------------------------------
# random values
# ---------------------------------------------------------------------------------------------------------
def rand(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Values in [-1, 1] for floats, small integers for integer types (ties likely: the scan rule decides)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-1, 1, size=shape).astype(dtype)
    lo = 0 if dtype.kind == "u" else -5
    return rng.integers(lo, lo + 11, size=shape).astype(dtype)


def _user_layout(shape_cl, cl):
    """(N, *sp, C) -> the user's layout."""
    return tuple(shape_cl) if cl else (shape_cl[0], shape_cl[-1], *shape_cl[1:-1])


# ---------------------------------------------------------------------------------------------------------
# convolution configurations
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConvCfg:
    x: tuple                  # channels-last (N, *sp, C)
    w: tuple                  # (*window, C // G, K)
    strides: Any
    padding: Any
    data_format: str
    dilations: Any
    dtype: np.dtype
    spatial_only_shape: bool = False

    @property
    def nsp(self):
        return len(self.x) - 2

    @property
    def cl(self):
        return _cl(self.data_format)

    def y_shape(self):
        nsp = self.nsp
        geo = R.out_sizes(self.x[1:-1], self.w[:nsp], _ints(self.strides, nsp, self.cl),
                          _ints(self.dilations, nsp, self.cl), _pad(self.padding, nsp, self.cl))
        return (self.x[0], *[g[0] for g in geo], self.w[-1])

    def desc(self):
        return (f"x{self.x}w{self.w}s{_ints(self.strides, self.nsp, self.cl)}"
                f"d{_ints(self.dilations, self.nsp, self.cl)}{_short_pad(self.padding)}-{self.data_format}-"
                f"{self.dtype.name}{'-spatialshape' if self.spatial_only_shape else ''}")


def _short_pad(p):
    if isinstance(p, str):
        return p
    return "pad" + "".join(f"{a}{b}" for a, b in np.asarray(p).tolist())


CONV2D_CONFIGS = [
    ConvCfg((2, 5, 5, 3), (3, 3, 3, 4), 1, "SAME", "NHWC", None, F32, True),
    ConvCfg((1, 7, 6, 2), (3, 2, 2, 3), [1, 2, 2, 1], "VALID", "NHWC", None, F64),
    ConvCfg((1, 6, 7, 2), (2, 3, 2, 2), (1, 2), "SAME", "NCHW", [1, 1, 2, 2], F32),
    ConvCfg((2, 5, 5, 4), (3, 3, 2, 6), 2, "SAME", "NHWC", 1, F32),                       # groups 2
    ConvCfg((1, 7, 8, 2), (3, 2, 2, 2), 2, [[0, 0], [1, 2], [0, 1], [0, 0]], "NHWC", [2], F64),
    ConvCfg((1, 5, 6, 3), (2, 2, 1, 3), [1], [(1, 0), (2, 1)], "NCHW", (2, 1), F32),      # depthwise, explicit
    ConvCfg((1, 10, 4, 2), (3, 3, 2, 2), (3, 1), "SAME", "NHWC", None, F16, True),
    ConvCfg((1, 2, 2, 1), (3, 3, 1, 1), 1, "VALID", "NHWC", None, F32),                   # empty result
    ConvCfg((2, 6, 6, 2), (1, 1, 2, 3), 2, "VALID", "NHWC", None, F64),
    ConvCfg((1, 4, 4, 1), (4, 4, 1, 2), 1, "SAME", "NCHW", None, F64),                    # pads 1/2
    ConvCfg((1, 5, 5, 6), (3, 3, 2, 6), (2, 2), [[0, 0], [0, 0], [1, 1], [2, 0]], "NCHW", 1, F16),  # groups 3
    ConvCfg((1, 7, 5, 2), (3, 2, 2, 2), (2, 3), "SAME", "NHWC", (2, 2), F32),              # stride x dilation
    ConvCfg((2, 6, 3, 1), (1, 2, 1, 1), (1, 3), "SAME", "NHWC", None, F32),  # TF 2.21 CPU float32: wrong values
    ConvCfg((3, 8, 8, 4), (1, 1, 4, 4), (1, 2), "VALID", "NHWC", None, F32),  # TF 2.21 CPU float32 wgrad: heap overrun
]

CONV3D_CONFIGS = [
    ConvCfg((1, 3, 4, 4, 2), (2, 2, 2, 2, 3), 1, "SAME", "NDHWC", None, F32, True),
    ConvCfg((1, 4, 5, 3, 2), (2, 3, 1, 2, 2), (2, 1, 2), "VALID", "NCDHW", [1, 1, 1, 2, 1], F64),
    ConvCfg((2, 3, 3, 4, 4), (1, 2, 2, 2, 4), [1, 1, 2, 2, 1], [(1, 0), (0, 1), (1, 1)], "NDHWC", 1, F32),  # groups
    ConvCfg((1, 3, 4, 3, 2), (2, 2, 2, 2, 2), 2, "SAME", "NDHWC", [2, 1, 1], F16),
    ConvCfg((1, 2, 5, 4, 1), (3, 3, 3, 1, 1), 1, "VALID", "NCDHW", None, F32),             # empty (depth)
]


def _random_conv_cfg(rng, nsp) -> ConvCfg:
    """A random small valid configuration (used by opspecs samples and property tests)."""
    while True:
        G = int(rng.choice([1, 1, 2]))
        cg, kg = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        window = tuple(int(v) for v in rng.integers(1, 4, nsp))
        strides = tuple(int(v) for v in rng.integers(1, 4, nsp))
        dil = tuple(int(v) for v in rng.integers(1, 3, nsp))
        sp = tuple(int(v) for v in rng.integers(1, 8 if nsp == 2 else 5, nsp))
        kind = rng.integers(0, 3)
        padding = ["SAME", "VALID", [(int(a), int(b)) for a, b in rng.integers(0, 3, (nsp, 2))]][kind]
        fmt = ["NHWC", "NCHW"][rng.integers(0, 2)] if nsp == 2 else ["NDHWC", "NCDHW"][rng.integers(0, 2)]
        cfg = ConvCfg((int(rng.integers(1, 3)), *sp, G * cg), (*window, cg, G * kg), strides, padding, fmt, dil,
                      FLOATS[rng.integers(0, 3)])
        try:
            cfg.y_shape()
        except ValueError:
            continue
        return cfg


def _conv_cfgs(rng, nsp):
    fixed = CONV2D_CONFIGS if nsp == 2 else CONV3D_CONFIGS
    return fixed + [_random_conv_cfg(rng, nsp) for _ in range(3)]


def _conv_samples(nsp):
    def samples(rng):
        out = []
        for c in _conv_cfgs(rng, nsp):
            x = rand(rng, _user_layout(c.x, c.cl), c.dtype)
            w = rand(rng, c.w, c.dtype)
            out.append(Sample((x, w, c.strides, c.padding), dict(data_format=c.data_format, dilations=c.dilations),
                              c.desc()))
        return out
    return samples


def _x_shape_arg(c: ConvCfg, rng, force_full=False):
    """input_sizes / output_shape in one of the accepted forms."""
    groups = c.x[-1] // c.w[-2]
    if c.spatial_only_shape and groups == 1 and not force_full:
        return list(c.x[1:-1])
    full = _user_layout(c.x, c.cl)
    return [tuple(full), list(full), np.array(full, np.int64), np.array(full, np.int32)][rng.integers(0, 4)]


def _backprop_input_samples(nsp):
    def samples(rng):
        out = []
        for c in _conv_cfgs(rng, nsp):
            w = rand(rng, c.w, c.dtype)
            dy = rand(rng, _user_layout(c.y_shape(), c.cl), c.dtype)
            out.append(Sample((_x_shape_arg(c, rng), w, dy, c.strides, c.padding),
                              dict(data_format=c.data_format, dilations=c.dilations), c.desc()))
        return out
    return samples


def _transpose_samples(nsp):
    def samples(rng):
        out = []
        for c in _conv_cfgs(rng, nsp):
            w = rand(rng, c.w, c.dtype)
            x = rand(rng, _user_layout(c.y_shape(), c.cl), c.dtype)
            out.append(Sample((x, w, _x_shape_arg(c, rng), c.strides),
                              dict(padding=c.padding, data_format=c.data_format, dilations=c.dilations), c.desc()))
        # every legal output size of one transposed problem (s candidates for stride s), SAME and VALID
        for padding, sizes in (("SAME", (5, 6)), ("VALID", (7, 8))):
            for o in sizes:
                x = rand(rng, (1, 3, 3, 2) if nsp == 2 else (1, 3, 3, 3, 2), F64)
                w = rand(rng, (3,) * nsp + (1, 2), F64)
                shape = (1,) + (o,) * nsp + (1,)
                out.append(Sample((x, w, shape, 2), dict(padding=padding), f"I3k3s2{padding}O{o}"))
        return out
    return samples


def _backprop_filter_samples(nsp):
    def samples(rng):
        out = []
        for c in _conv_cfgs(rng, nsp):
            x = rand(rng, _user_layout(c.x, c.cl), c.dtype)
            dy = rand(rng, _user_layout(c.y_shape(), c.cl), c.dtype)
            sizes = [tuple(c.w), list(c.w), np.array(c.w)][rng.integers(0, 3)]
            out.append(Sample((x, sizes, dy, c.strides, c.padding),
                              dict(data_format=c.data_format, dilations=c.dilations), c.desc()))
        return out
    return samples


# ---------------------------------------------------------------------------------------------------------
# pooling configurations
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PoolCfg:
    x: tuple                  # channels-last (N, *sp, C)
    ksize: Any
    strides: Any
    padding: Any
    data_format: str
    dtype: np.dtype

    @property
    def nsp(self):
        return len(self.x) - 2

    @property
    def cl(self):
        return _cl(self.data_format)

    def y_shape(self):
        nsp = self.nsp
        geo = R.out_sizes(self.x[1:-1], _ints(self.ksize, nsp, self.cl), _ints(self.strides, nsp, self.cl), 1,
                          _pad(self.padding, nsp, self.cl))
        return (self.x[0], *[g[0] for g in geo], self.x[-1])

    def desc(self):
        return (f"x{self.x}k{_ints(self.ksize, self.nsp, self.cl)}s{_ints(self.strides, self.nsp, self.cl)}"
                f"{_short_pad(self.padding)}-{self.data_format}-{self.dtype.name}")


POOL2D_CONFIGS = [
    PoolCfg((2, 5, 5, 3), 3, 2, "SAME", "NHWC", F32),
    PoolCfg((1, 6, 7, 2), [1, 2, 3, 1], [1, 2, 1, 1], "VALID", "NHWC", F64),
    PoolCfg((1, 4, 5, 2), (2, 2), [1, 1, 2, 1], "SAME", "NCHW", F16),
    PoolCfg((1, 5, 4, 2), 2, 1, [(1, 0), (0, 1)], "NHWC", F32),
    PoolCfg((1, 4, 4, 2), [2], [2], [[0, 0], [0, 0], [1, 1], [0, 1]], "NCHW", F64),
    PoolCfg((1, 2, 3, 1), 4, 1, "SAME", "NHWC", F32),                     # window larger than input
    PoolCfg((1, 3, 3, 2), 2, 1, "SAME", "NHWC", F64),                     # overlaps, SAME pads at the end
    PoolCfg((1, 2, 2, 1), 3, 1, "VALID", "NHWC", F32),                    # empty result
    PoolCfg((2, 7, 6, 3), (3, 2), (2, 3), "SAME", "NHWC", F32),
    PoolCfg((2, 5, 6, 2), (2, 3), 2, "SAME", "NHWC", F16),
    PoolCfg((2, 1, 3, 1), 2, (1, 2), [(1, 1), (0, 1)], "NHWC", F32),    # found by test_properties (slow)
]
# Configurations also run with ascending values (each window's maximum is its last in-bounds cell).
ASCENDING_2D = [PoolCfg((2, 1, 3, 1), 2, (1, 2), [(1, 1), (0, 1)], "NHWC", F32),
                PoolCfg((3, 2, 5, 2), 2, (1, 2), [(1, 1), (0, 1)], "NCHW", F64)]
ASCENDING_3D = [PoolCfg((2, 2, 1, 3, 1), (1, 2, 2), (1, 1, 2), [(0, 0), (1, 1), (0, 1)], "NDHWC", F32)]


def ascending(shape, dtype):
    return np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
POOL2D_INT_CONFIGS = [
    PoolCfg((2, 5, 5, 3), 3, 2, "SAME", "NHWC", np.dtype(np.int8)),
    PoolCfg((1, 6, 7, 2), 2, 1, "VALID", "NCHW", np.dtype(np.uint8)),
    PoolCfg((1, 4, 5, 2), 3, 2, [(1, 1), (2, 0)], "NHWC", np.dtype(np.int16)),
    PoolCfg((1, 4, 4, 3), 2, 2, "SAME", "NHWC", np.dtype(np.uint16)),
    PoolCfg((1, 5, 3, 2), (2, 3), 1, "SAME", "NHWC", np.dtype(np.int32)),
    PoolCfg((2, 3, 4, 1), 2, (1, 2), "VALID", "NHWC", np.dtype(np.int64)),
]
POOL3D_CONFIGS = [
    PoolCfg((1, 3, 4, 5, 2), 2, 2, "SAME", "NDHWC", F32),
    PoolCfg((1, 4, 4, 3, 1), [1, 2, 2, 2, 1], (1, 2, 1), "VALID", "NDHWC", F64),
    PoolCfg((2, 2, 3, 4, 2), (1, 2, 3), 1, "SAME", "NCDHW", F16),
    PoolCfg((1, 3, 3, 3, 2), 2, 2, [(1, 0), (0, 1), (1, 1)], "NDHWC", F32),
    PoolCfg((1, 2, 3, 3, 1), 3, 1, "VALID", "NDHWC", F32),                # empty
]
POOL3D_INT_CONFIGS = [
    PoolCfg((1, 3, 4, 4, 2), 2, 2, "SAME", "NDHWC", np.dtype(np.int16)),
    PoolCfg((1, 2, 3, 4, 2), (2, 2, 2), 1, "VALID", "NCDHW", np.dtype(np.uint8)),
]


def _random_pool_cfg(rng, nsp, dtypes=FLOATS) -> PoolCfg:
    while True:
        k = tuple(int(v) for v in rng.integers(1, 4, nsp))
        s = tuple(int(v) for v in rng.integers(1, 4, nsp))
        sp = tuple(int(v) for v in rng.integers(1, 7 if nsp == 2 else 5, nsp))
        kind = rng.integers(0, 3)
        pads = [(int(rng.integers(0, kk)), int(rng.integers(0, kk))) for kk in k]
        padding = ["SAME", "VALID", pads][kind]
        fmt = ["NHWC", "NCHW"][rng.integers(0, 2)] if nsp == 2 else ["NDHWC", "NCDHW"][rng.integers(0, 2)]
        cfg = PoolCfg((int(rng.integers(1, 3)), *sp, int(rng.integers(1, 4))), k, s, padding, fmt,
                      dtypes[rng.integers(0, len(dtypes))])
        try:
            cfg.y_shape()
        except ValueError:
            continue
        return cfg


def _pool_cfgs(rng, nsp, with_ints):
    cfgs = list(POOL2D_CONFIGS if nsp == 2 else POOL3D_CONFIGS)
    if with_ints:
        cfgs += POOL2D_INT_CONFIGS if nsp == 2 else POOL3D_INT_CONFIGS
    return cfgs + [_random_pool_cfg(rng, nsp) for _ in range(3)]


def _nan_input(rng, cl):
    """4x4x1 windows of k2 s2 with NaN as a first cell, a later cell, and everywhere in one window."""
    x = rand(rng, (1, 4, 4, 1), F32)
    x[0, 0, 0, 0] = np.nan            # first cell of window (0, 0): wins
    x[0, 1, 3, 0] = np.nan            # last cell of window (0, 1): ignored
    x[0, 2:4, 0:2, 0] = np.nan        # all-NaN window (1, 0)
    x[0, 2:4, 2:4, 0] = -np.inf       # all -inf window (1, 1)
    return _to_user(x, cl)


def _to_user(x_cl, cl):
    return x_cl if cl else np.ascontiguousarray(np.moveaxis(x_cl, -1, 1))


def _pool_samples(nsp, with_ints, nan_case=False):
    def samples(rng):
        out = []
        for c in _pool_cfgs(rng, nsp, with_ints):
            x = rand(rng, _user_layout(c.x, c.cl), c.dtype)
            out.append(Sample((x, c.ksize, c.strides, c.padding), dict(data_format=c.data_format), c.desc(),
                              exact=with_ints))
        if with_ints:               # max pooling: ascending values too
            for c in ASCENDING_2D if nsp == 2 else ASCENDING_3D:
                x = ascending(_user_layout(c.x, c.cl), c.dtype)
                out.append(Sample((x, c.ksize, c.strides, c.padding), dict(data_format=c.data_format),
                                  c.desc() + "-ascending", exact=True))
        if nan_case and nsp == 2:
            for fmt in ("NHWC", "NCHW"):
                out.append(Sample((_nan_input(rng, _cl(fmt)), 2, 2, "VALID"), dict(data_format=fmt),
                                  f"nan-windows-{fmt}", exact=True))
        return out
    return samples


def _argmax_samples(rng):
    out = []
    cfgs = [c for c in POOL2D_CONFIGS + POOL2D_INT_CONFIGS if c.cl] + \
        [dataclasses.replace(_random_pool_cfg(rng, 2), data_format="NHWC") for _ in range(3)]
    for i, c in enumerate(cfgs):
        x = rand(rng, c.x, c.dtype)
        include = bool(i % 2)
        odt = ["int64", "int32", np.int64, np.dtype(np.int32)][i % 4]
        out.append(Sample((x, c.ksize, c.strides, c.padding), dict(output_dtype=odt, include_batch_in_index=include),
                          f"{c.desc()}-incl{int(include)}-{np.dtype(odt).name}", exact=True))
    # all-equal 4x4, k2 s2 -> 0, 2, 8, 10 (ties go to the first cell); NaN/-inf windows
    out.append(Sample((np.ones((2, 4, 4, 1), F32), 2, 2, "SAME"), dict(include_batch_in_index=True), "ties", True))
    for c in ASCENDING_2D:
        if c.cl:
            out.append(Sample((ascending(c.x, c.dtype), c.ksize, c.strides, c.padding), {}, c.desc() + "-ascending",
                              exact=True))
    out.append(Sample((_nan_input(rng, True), 2, 2, "VALID"), {}, "nan-windows", exact=True))
    return out


def _max_pool_grad_samples(nsp):
    def samples(rng):
        out = []
        for c in _pool_cfgs(rng, nsp, with_ints=True):
            x = rand(rng, _user_layout(c.x, c.cl), c.dtype)
            ref = _ref_pool(nsp, R.max_pool)
            y = ref(x, c.ksize, c.strides, c.padding, c.data_format)
            dy = rand(rng, y.shape, c.dtype)
            out.append(Sample((x, y, dy, c.ksize, c.strides, c.padding), dict(data_format=c.data_format), c.desc()))
        return out
    return samples


def _grad_with_argmax_samples(rng):
    out = []
    cfgs = [c for c in POOL2D_CONFIGS + POOL2D_INT_CONFIGS if c.cl] + \
        [dataclasses.replace(_random_pool_cfg(rng, 2), data_format="NHWC") for _ in range(2)]
    for i, c in enumerate(cfgs):
        include = bool(i % 2)
        x = rand(rng, c.x, c.dtype)
        dy = rand(rng, c.y_shape(), c.dtype)
        if i % 3 == 2:      # arbitrary in-range indices (duplicates add)
            limit = int(np.prod(c.x[1:])) * (c.x[0] if include else 1)
            am = rng.integers(0, max(limit, 1), size=dy.shape).astype(np.int64)
            how = "random"
        else:
            am = R.max_pool_with_argmax(x, _ints(c.ksize, 2, True), _ints(c.strides, 2, True),
                                        _pad(c.padding, 2, True), include)[1]
            how = "pooled"
        out.append(Sample((x, dy, am, c.ksize, c.strides, c.padding), dict(include_batch_in_index=include),
                          f"{c.desc()}-incl{int(include)}-{how}"))
    return out


def _avg_pool_grad_samples(nsp):
    def samples(rng):
        out = []
        for i, c in enumerate(_pool_cfgs(rng, nsp, with_ints=False)):
            dy = rand(rng, _user_layout(c.y_shape(), c.cl), c.dtype)
            full = _user_layout(c.x, c.cl)
            shape = [tuple(full), list(c.x[1:-1]), np.array(full), np.array(c.x[1:-1], np.int32)][i % 4]
            out.append(Sample((shape, dy, c.ksize, c.strides, c.padding), dict(data_format=c.data_format),
                              c.desc()))
        return out
    return samples


def _unpool_cfgs(rng):
    cfgs = [c for c in POOL2D_CONFIGS + POOL2D_INT_CONFIGS + POOL3D_CONFIGS + POOL3D_INT_CONFIGS if c.cl]
    return cfgs + [dataclasses.replace(_random_pool_cfg(rng, 2), data_format="NHWC")]


def _max_unpool_samples(rng):
    out = []
    for i, c in enumerate(_unpool_cfgs(rng)):
        include = bool(i % 2)
        u = rand(rng, c.y_shape(), c.dtype)
        if i % 3 == 0:
            limit = int(np.prod(c.x[1:])) * (c.x[0] if include else 1)
            am = rng.integers(0, max(limit, 1), size=u.shape).astype([np.int64, np.int32][i % 2])
        else:
            am = R.max_pool_with_argmax(rand(rng, c.x, c.dtype), _ints(c.ksize, c.nsp, True),
                                        _ints(c.strides, c.nsp, True), _pad(c.padding, c.nsp, True), include)[1]
        shape = [tuple(c.x), list(c.x[1:-1]), np.array(c.x)][i % 3]
        out.append(Sample((u, am, shape), dict(include_batch_in_index=include), f"{c.desc()}-incl{int(include)}"))
    return out


def _max_unpool_grad_samples(rng):
    out = []
    for i, c in enumerate(_unpool_cfgs(rng)):
        include = bool(i % 2)
        g = rand(rng, c.x, c.dtype)
        y_shape = c.y_shape()
        limit = int(np.prod(c.x[1:])) * (c.x[0] if include else 1)
        am = rng.integers(0, max(limit, 1), size=y_shape).astype([np.int64, np.int32][i % 2])
        out.append(Sample((g, am), dict(include_batch_in_index=include), f"{c.desc()}-incl{int(include)}",
                          exact=True))
    return out


def _avg_unpool_samples(rng):
    out = []
    cfgs = POOL2D_CONFIGS + POOL3D_CONFIGS + [_random_pool_cfg(rng, 2), _random_pool_cfg(rng, 3)]
    for i, c in enumerate(cfgs):
        u = rand(rng, _user_layout(c.y_shape(), c.cl), c.dtype)
        full = _user_layout(c.x, c.cl)
        shape = [tuple(full), list(c.x[1:-1]), np.array(full)][i % 3]
        fmt = None if (c.cl and i % 2) else c.data_format
        out.append(Sample((u, c.ksize, c.strides, c.padding, shape), dict(data_format=fmt), c.desc()))
    return out


# ---------------------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------------------
MAX_DTYPES = FLOATS + INTS


def _spec(name, samples, reference, dtypes=FLOATS, nspatial=2):
    return OpSpec(name, getattr(gpuconv, name), samples, reference, dtypes, nspatial=nspatial)


SPECS: dict[str, OpSpec] = {s.name: s for s in [
    _spec("conv2d", _conv_samples(2), _ref_conv(2)),
    _spec("conv3d", _conv_samples(3), _ref_conv(3), nspatial=3),
    _spec("conv2d_backprop_input", _backprop_input_samples(2), _ref_backprop_input(2)),
    _spec("conv3d_backprop_input", _backprop_input_samples(3), _ref_backprop_input(3), nspatial=3),
    _spec("conv2d_transpose", _transpose_samples(2), _ref_transpose(2)),
    _spec("conv3d_transpose", _transpose_samples(3), _ref_transpose(3), nspatial=3),
    _spec("conv2d_backprop_filter", _backprop_filter_samples(2), _ref_backprop_filter(2)),
    _spec("conv3d_backprop_filter", _backprop_filter_samples(3), _ref_backprop_filter(3), nspatial=3),
    _spec("max_pool2d", _pool_samples(2, True, nan_case=True), _ref_pool(2, R.max_pool), MAX_DTYPES),
    _spec("max_pool3d", _pool_samples(3, True), _ref_pool(3, R.max_pool), MAX_DTYPES, nspatial=3),
    _spec("avg_pool2d", _pool_samples(2, False), _ref_pool(2, R.avg_pool)),
    _spec("avg_pool3d", _pool_samples(3, False), _ref_pool(3, R.avg_pool), nspatial=3),
    _spec("max_pool_with_argmax", _argmax_samples, _ref_argmax, MAX_DTYPES),
    _spec("max_pool_grad", _max_pool_grad_samples(2), _ref_max_pool_grad(2), MAX_DTYPES),
    _spec("max_pool3d_grad", _max_pool_grad_samples(3), _ref_max_pool_grad(3), MAX_DTYPES, nspatial=3),
    _spec("max_pool_grad_with_argmax", _grad_with_argmax_samples, _ref_max_pool_grad_with_argmax, MAX_DTYPES),
    _spec("avg_pool_grad", _avg_pool_grad_samples(2), _ref_avg_pool_grad(2)),
    _spec("avg_pool3d_grad", _avg_pool_grad_samples(3), _ref_avg_pool_grad(3), nspatial=3),
    _spec("max_unpool", _max_unpool_samples, _ref_max_unpool, MAX_DTYPES),
    _spec("max_unpool_grad", _max_unpool_grad_samples, _ref_max_unpool_grad, MAX_DTYPES),
    _spec("avg_unpool", _avg_unpool_samples, _ref_avg_unpool),
]}


# ---------------------------------------------------------------------------------------------------------
# running and checking
# ---------------------------------------------------------------------------------------------------------
def samples_of(name: str, seed: int = 0) -> list:
    """The samples of one op, deterministic for a seed (a fresh generator per op)."""
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    return SPECS[name].sample_inputs(rng)


def cases(names=None, seed: int = 0) -> list:
    """pytest.param(name, sample) for every sample of every op (or of `names`), with readable ids."""
    out = []
    for name in names or SPECS:
        for i, s in enumerate(samples_of(name, seed)):
            out.append(pytest.param(name, s, id=f"{name}-{i}-{s.desc}"))
    return out


def _to_backend(backend: str, a):
    if backend == "cuda" and isinstance(a, np.ndarray) and a.ndim >= 3:
        import cupy
        return cupy.asarray(a)
    return a


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else a


def run_sample(spec: OpSpec, sample: Sample, backend: str = "numpy"):
    """Run spec.fn on the sample under `backend` ('numpy', 'emulator', 'cuda'); NumPy result(s)."""
    args = tuple(_to_backend(backend, a) for a in sample.args)
    kwargs = {k: _to_backend(backend, v) for k, v in sample.kwargs.items()}
    with gpuconv.use_backend(backend):
        out = spec.fn(*args, **kwargs)
    return tuple(_to_numpy(o) for o in out) if isinstance(out, tuple) else _to_numpy(out)


def expected(spec: OpSpec, sample: Sample):
    return spec.reference(*sample.args, **sample.kwargs)


def assert_close(got, want, tol=None, exact=False, what=""):
    """Same shape and dtype; values within (rtol, atol) of the dtype (bit-exact for exact / integer results).
    NaN must match NaN."""
    assert isinstance(got, np.ndarray), f"{what}: expected a NumPy array, got {type(got).__name__}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if exact or want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol, atol = (tol or TOL)[want.dtype]
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True, err_msg=what)


def check_sample(spec: OpSpec, sample: Sample, backend: str = "numpy"):
    """spec.fn under `backend` equals the loop reference on this sample (within the dtype's tolerance)."""
    got = run_sample(spec, sample, backend)
    want = expected(spec, sample)
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, spec.tol, sample.exact, f"{spec.name}[{sample.desc}] output {k}")
    else:
        assert_close(got, want, spec.tol, sample.exact, f"{spec.name}[{sample.desc}]")
    return got
