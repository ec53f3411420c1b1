"""Every declared name expression of every kernel family is launched by a test and checked against the NumPy backend.

The compile gate compiles every instantiation a family declares (gpuconv/kernel_source.py); the other kernel test
files force the variants they are about, which left many instantiations (64-bit index types, float16 large
tiles, the argmax types of the integer dtypes, ...) verified only for compiling. Here every instantiation runs
once, on a tiny problem, under two emulator thread orders (reverse and shuffled; other files use forward) or
once on a GPU:

  * conv_fprop: every configuration of plans.conv_fprop._all_configs() (analytic, tiled per tile and vector
    width, tensorop; int and long long), forced with override_config: a 2-D problem with scalar channels,
    dilation and explicit padding for V = 1, a grouped 3-D strided problem for V > 1 and tensorop.
  * conv_dgrad / conv_wgrad: analytic and every tile per dtype and index type, float16 and float32 also on tensor
    cores (tensorop: float16, float32 as TF32 and 3xTF32; wgrad with one split and with split-K, which adds the
    reduce kernel and, for float16, the float-partial instantiations), forced with forced_config, on a grouped
    3-D problem with stride phases and dilation.
  * pool: every (dtype, VEC, index type) with force_vec; max_pool, max_pool_with_argmax (int32 and int64),
    max_pool_grad and, for floats, avg_pool, avg_pool_grad and avg_unpool.
  * unpool: every (value dtype, argmax type, index type): max_unpool with the argmax of 2x2/2 pooling (the one-pass
    window scatter) and with duplicate-heavy argmax (the window scatter finds misplaced updates; the five
    general passes run), and max_unpool_grad (the gather of the same-size unsigned type).

`long long` is what the plans pick when a tensor has >= 2^31 elements; the conv plans force it with their
override, the pooling plans by making PoolProblem.needs_int64 / plans.unpool.needs_int64 answer True (the
plans are pure functions of that answer, so the launch is the one a huge problem gets, on small arrays).
Each case asserts the exact set of name expressions it launched, and test_every_declared_expression_is_covered
asserts that the cases together name every declared expression of every family: a new instantiation without a
case here fails it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools

import numpy as np
import pytest

import gpuconv
from gpuconv import kernel_source
from gpuconv.dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES, ctype
from gpuconv.geometry import PoolProblem, pool_problem
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_fprop as F
from gpuconv.plans import conv_wgrad as WG
from gpuconv.plans import pool as PP
from gpuconv.plans import unpool as UP
from gpuconv.plans.conv_common import INDEX_TYPES, SIMT16_TENSOROP_PASSES, flag_expression

from conftest import install_emulator, record_launches, run_on as run, run_oracle as oracle, sequential_scatter

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
LL = "long long"

# Emulator thread orders each case runs under (a missing barrier or a race gives order-dependent results).
ORDERS = {"emulator": [("reverse", 0), ("shuffle", 5)], "cuda": [(None, 0)]}


def install(monkeypatch, backend: str, order, seed: int) -> list:
    """Makes `backend` (for the emulator: a fresh executor with this thread order) record the name expression of
    every launch; returns the list it records into."""
    if backend == "emulator":
        install_emulator(monkeypatch, order, seed)
    return record_launches(monkeypatch, backend)


def uniform(shape, dtype, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


# rtol relative to the same op on |inputs| in float64 (sum of absolute terms); see test_conv_fprop_kernels.py
RTOL = {F16: 2e-3, F32: 1e-5, F64: 1e-12}
ATOL = {F16: 1e-4, F32: 1e-6, F64: 1e-13}
# float32 on tensor cores with one TF32 pass: each operand rounded to 11 significant bits (2^-11 relative each)
TF32_RTOL = 2 * 2.0**-11 + RTOL[F32]


def assert_conv_close(got, ref, bound, dtype, rtol=None):
    assert got.dtype == dtype and got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    tol = (RTOL[dtype] if rtol is None else rtol) * bound + ATOL[dtype]
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"max excess at {worst}: got {got[worst]}, want {ref[worst]}"


def check_orders(kernel_backend, monkeypatch, expected: set, compute, check):
    """compute() under each thread order (or once on the GPU), check(result) each time, and the launches made
    exactly the expected name expressions."""
    for order, seed in ORDERS[kernel_backend]:
        launched = install(monkeypatch, kernel_backend, order, seed)
        check(compute())
        names = set(launched)
        assert names == expected, (order, sorted(names ^ expected))


# ---------------------------------------------------------------------------------------------------------
# conv_fprop
# ---------------------------------------------------------------------------------------------------------
# scalar channels: C = 5, K = 9, strides (1, 3), dilations (2, 1), explicit asymmetric padding (2-D)
FPROP_SCALAR = (gpuconv.conv2d, (2, 8, 10, 5), (3, 2, 5, 9),
                dict(strides=[1, 3], padding=[[0, 0], [1, 0], [2, 1], [0, 0]], dilations=[2, 1]))
# vector channels: 3-D, groups 2 (C/G = 8, K/G = 12), strides (2, 1, 2), SAME
FPROP_VECTOR = (gpuconv.conv3d, (1, 3, 5, 6, 16), (2, 3, 3, 8, 24), dict(strides=[1, 2, 1, 2, 1], padding="SAME"))


def fprop_cases():
    for dt, cfg in F._all_configs():
        expected = {cfg.name_expression(dt)}
        if cfg.variant != "analytic":
            expected.add(flag_expression(dt, cfg.index))
        passes = f"p{cfg.passes}" if cfg.variant == "tensorop" else None
        name = "-".join(str(v) for v in (dt, cfg.variant, cfg.tile, f"v{cfg.vector}", passes, cfg.index)
                        if v is not None)
        yield pytest.param(dt, cfg, expected, id=name.replace(" ", ""))


FPROP_CASES = list(fprop_cases())


@pytest.mark.parametrize("dtype,cfg,expected", FPROP_CASES)
def test_conv_fprop_instantiation(kernel_backend, monkeypatch, dtype, cfg, expected):
    fn, xs, ws, kw = FPROP_SCALAR if cfg.vector == 1 else FPROP_VECTOR
    x, w = uniform(xs, dtype, 1), uniform(ws, dtype, 2)
    ref = oracle(fn, x, w, **kw)
    bound = oracle(fn, np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), **kw)
    fields = dict(variant=cfg.variant, index=cfg.index)
    if cfg.variant != "analytic":
        fields.update(tile=cfg.tile, vector=cfg.vector)
    if cfg.variant == "tensorop":
        fields.update(passes=cfg.passes)
    # float32 tensorop with one pass is TF32 (3xTF32 meets float32's tolerance)
    rtol = TF32_RTOL if F.uses_tf32(cfg, dtype) and cfg.passes == 1 else None

    def compute():
        with F.override_config(**fields):
            return run(kernel_backend, fn, x, w, **kw)

    check_orders(kernel_backend, monkeypatch, expected, compute,
                 lambda y: assert_conv_close(y, ref, bound, dtype, rtol))


# ---------------------------------------------------------------------------------------------------------
# conv_dgrad / conv_wgrad
# ---------------------------------------------------------------------------------------------------------
# 3-D, groups 2 (C/G = 3, K/G = 4), strides (1, 2, 2): 4 stride phases with 1 or 2 taps each, dilation 2 along w
GRAD_X, GRAD_W = (2, 3, 5, 6, 6), (2, 3, 2, 3, 8)
GRAD_KW = dict(strides=[1, 1, 2, 2, 1], padding="SAME", dilations=[1, 1, 1, 2, 1])


def grad_cases(op):
    for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES):
        flag = flag_expression(dt, ix)
        if op == "dgrad":
            yield pytest.param(dt, dict(variant="analytic", index=ix), {DG.analytic_expression(dt, ix)},
                               id=f"{dt}-analytic-{ix}".replace(" ", ""))
            for tile in DG.tiles_for(dt):
                yield pytest.param(dt, dict(variant="tiled", tile=tile, index=ix),
                                   {DG.tiled_expression(dt, ix, tile), flag}, id=f"{dt}-{tile}-{ix}".replace(" ", ""))
                for passes in SIMT16_TENSOROP_PASSES.get(dt, ()):
                    yield pytest.param(dt, dict(variant="tensorop", tile=tile, index=ix, passes=passes),
                                       {DG.tensorop_expression(dt, ix, tile, passes), flag},
                                       id=f"{dt}-tensorop-{tile}-p{passes}-{ix}".replace(" ", ""))
            continue
        yield pytest.param(dt, dict(variant="analytic", index=ix), {WG.analytic_expression(dt, ix)},
                           id=f"{dt}-analytic-{ix}".replace(" ", ""))
        for tile in WG.tiles_for(dt):
            for splits in (1, 3):
                expected = {WG.tiled_expression(dt, ix, tile, splits), flag}
                if splits > 1:
                    expected.add(WG.reduce_expression(dt, ix))
                yield pytest.param(dt, dict(variant="tiled", tile=tile, splits=splits, index=ix), expected,
                                   id=f"{dt}-{tile}-split{splits}-{ix}".replace(" ", ""))
                for passes in SIMT16_TENSOROP_PASSES.get(dt, ()):
                    expected = {WG.tensorop_expression(dt, ix, tile, splits, passes), flag}
                    if splits > 1:
                        expected.add(WG.reduce_expression(dt, ix))
                    fields = dict(variant="tensorop", tile=tile, splits=splits, index=ix, passes=passes)
                    yield pytest.param(dt, fields, expected,
                                       id=f"{dt}-tensorop-{tile}-split{splits}-p{passes}-{ix}".replace(" ", ""))


DGRAD_CASES = list(grad_cases("dgrad"))
WGRAD_CASES = list(grad_cases("wgrad"))


def grad_dy_shape():
    return oracle(gpuconv.conv3d, np.zeros(GRAD_X, np.float32), np.zeros(GRAD_W, np.float32), **GRAD_KW).shape


@pytest.mark.parametrize("dtype,fields,expected", DGRAD_CASES)
def test_conv_dgrad_instantiation(kernel_backend, monkeypatch, dtype, fields, expected):
    w, dy = uniform(GRAD_W, dtype, 3), uniform(grad_dy_shape(), dtype, 4)
    fn = gpuconv.conv3d_backprop_input
    ref = oracle(fn, GRAD_X, w, dy, **GRAD_KW)
    bound = oracle(fn, GRAD_X, np.abs(w).astype(np.float64), np.abs(dy).astype(np.float64), **GRAD_KW)

    # float32 tensorop with one pass is TF32 (3xTF32 meets float32's tolerance; float16 products are exact)
    rtol = TF32_RTOL if dtype == F32 and fields["variant"] == "tensorop" and fields["passes"] == 1 else None

    def compute():
        with DG.forced_config(**fields):
            return run(kernel_backend, fn, GRAD_X, w, dy, **GRAD_KW)

    check_orders(kernel_backend, monkeypatch, expected, compute,
                 lambda dx: assert_conv_close(dx, ref, bound, dtype, rtol))


# col2im: GRAD_X's shape without its groups (C = 3, the variant takes groups == 1). Its GEMM is a conv_fprop
# launch (that family's, covered above); the dgrad family's own launch is the col2im gather.
COL2IM_X, COL2IM_W = GRAD_X[:-1] + (3,), GRAD_W
COL2IM_CASES = [pytest.param(dt, ix, {DG.col2im_expression(dt, ix)}, id=f"{dt}-col2im-{ix}".replace(" ", ""))
                for dt, ix in itertools.product(FLOAT_DTYPES, INDEX_TYPES)]


@pytest.mark.parametrize("dtype,index,expected", COL2IM_CASES)
def test_conv_dgrad_col2im_instantiation(kernel_backend, monkeypatch, dtype, index, expected):
    fn = gpuconv.conv3d_backprop_input
    dy_shape = oracle(gpuconv.conv3d, np.zeros(COL2IM_X, np.float32), np.zeros(COL2IM_W, np.float32),
                      **GRAD_KW).shape
    w, dy = uniform(COL2IM_W, dtype, 7), uniform(dy_shape, dtype, 8)
    ref = oracle(fn, COL2IM_X, w, dy, **GRAD_KW)
    bound = oracle(fn, COL2IM_X, np.abs(w).astype(np.float64), np.abs(dy).astype(np.float64), **GRAD_KW)
    for order, seed in ORDERS[kernel_backend]:
        launched = install(monkeypatch, kernel_backend, order, seed)
        with DG.forced_config(variant="col2im", index=index):
            assert_conv_close(run(kernel_backend, fn, COL2IM_X, w, dy, **GRAD_KW), ref, bound, dtype)
        names = set(launched)
        assert expected <= names and names - expected <= set(F.FAMILY.name_expressions), (order, sorted(names))


@pytest.mark.parametrize("dtype,fields,expected", WGRAD_CASES)
def test_conv_wgrad_instantiation(kernel_backend, monkeypatch, dtype, fields, expected):
    x, dy = uniform(GRAD_X, dtype, 5), uniform(grad_dy_shape(), dtype, 6)
    fn = gpuconv.conv3d_backprop_filter
    ref = oracle(fn, x, GRAD_W, dy, **GRAD_KW)
    bound = oracle(fn, np.abs(x).astype(np.float64), GRAD_W, np.abs(dy).astype(np.float64), **GRAD_KW)

    rtol = TF32_RTOL if dtype == F32 and fields["variant"] == "tensorop" and fields["passes"] == 1 else None

    def compute():
        with WG.forced_config(**fields):
            return run(kernel_backend, fn, x, GRAD_W, dy, **GRAD_KW)

    check_orders(kernel_backend, monkeypatch, expected, compute,
                 lambda dw: assert_conv_close(dw, ref, bound, dtype, rtol))


# ---------------------------------------------------------------------------------------------------------
# pool
# ---------------------------------------------------------------------------------------------------------
MAX_DTYPES = FLOAT_DTYPES + INT_DTYPES


def pool_cases():
    for dt, ix in itertools.product(MAX_DTYPES, INDEX_TYPES):
        v = ctype(dt)
        for vec in PP.vec_widths(dt):
            expected = {f"pool_max_fwd<{v}, {ix}, {vec}>", f"pool_max_bwd<{v}, {ix}, {vec}>"}
            expected |= {f"pool_max_argmax_fwd<{v}, {ix}, {ctype(a)}, {vec}>" for a in INDEX_DTYPES}
            if dt in FLOAT_DTYPES:
                expected |= {f"pool_avg_fwd<{v}, {ix}, {vec}>", f"pool_avg_bwd<{v}, {ix}, true, {vec}>",
                             f"pool_avg_bwd<{v}, {ix}, false, {vec}>"}
            yield pytest.param(dt, ix, vec, expected, id=f"{dt}-vec{vec}-{ix}".replace(" ", ""))


POOL_CASES = list(pool_cases())


@contextlib.contextmanager
def index_width(monkeypatch, index: str):
    """The pooling and unpooling plans index in `index` (long long: as for a tensor of >= 2^31 elements)."""
    if index == LL:
        with monkeypatch.context() as m:
            m.setattr(PoolProblem, "needs_int64", lambda self: True)
            m.setattr(UP, "needs_int64", lambda *shapes: True)
            yield
    else:
        yield


def pool_data(shape, dtype, seed):
    """Small-range values (ties in every lane), the dtype's extremes, and for floats NaN and -inf at some cells
    (a NaN wins only as a window's first cell)."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 7) if dtype.kind == "u" else (-3, 4)
    x = rng.integers(lo, hi, shape).astype(dtype)
    flat = x.reshape(-1)
    hot = rng.choice(flat.size, max(2, flat.size // 16), replace=False)
    if dtype.kind == "f":
        flat[hot[: len(hot) // 2]], flat[hot[len(hot) // 2:]] = np.nan, -np.inf
    else:
        flat[hot[: len(hot) // 2]], flat[hot[len(hot) // 2:]] = np.iinfo(dtype).max, np.iinfo(dtype).min
    return x


@pytest.mark.parametrize("dtype,index,vec,expected", POOL_CASES)
def test_pool_instantiation(kernel_backend, monkeypatch, dtype, index, vec, expected):
    # 2-D for int, 3-D for long long (argmax is 2-D only: it pools the 3-D input's first depth slice)
    nsp = 2 if index == "int" else 3
    C = 2 * vec if vec > 1 else 3
    shape = (2, 5, 7, C) if nsp == 2 else (1, 3, 4, 5, C)
    k, s = ((3, 2), (2, 1)) if nsp == 2 else ((2, 3, 2), (1, 2, 2))
    max_pool, max_grad = (gpuconv.max_pool2d, gpuconv.max_pool_grad) if nsp == 2 else (
        gpuconv.max_pool3d, gpuconv.max_pool3d_grad)
    avg_pool, avg_grad = (gpuconv.avg_pool2d, gpuconv.avg_pool_grad) if nsp == 2 else (
        gpuconv.avg_pool3d, gpuconv.avg_pool3d_grad)
    x = pool_data(shape, dtype, seed=vec + nsp)
    x2 = x if nsp == 2 else x[:, 0]
    y = oracle(max_pool, x, k, s, "SAME")
    dy = pool_data(y.shape, dtype, seed=11) if dtype.kind != "f" else np.random.default_rng(12).integers(
        -3, 4, y.shape).astype(dtype)
    want = {"y": y, "dx": oracle(max_grad, x, y, dy, k, s, "SAME")}
    for a in INDEX_DTYPES:
        want[a] = oracle(gpuconv.max_pool_with_argmax, x2, k[-2:], s[-2:], "SAME", output_dtype=a.name,
                         include_batch_in_index=a == INDEX_DTYPES[1])
    if dtype.kind == "f":
        xf = uniform(shape, dtype, 13)
        du = uniform(y.shape, dtype, 14)
        want["avg"] = oracle(avg_pool, xf, k, s, "SAME")
        want["avg_grad"] = oracle(avg_grad, shape, du, k, s, "SAME")
        want["avg_unpool"] = oracle(gpuconv.avg_unpool, du, k, s, "SAME", shape)

    def compute():
        got = {}
        with index_width(monkeypatch, index), PP.force_vec(vec):
            got["y"] = run(kernel_backend, max_pool, x, k, s, "SAME")
            got["dx"] = run(kernel_backend, max_grad, x, y, dy, k, s, "SAME")
            for a in INDEX_DTYPES:
                got[a] = run(kernel_backend, gpuconv.max_pool_with_argmax, x2, k[-2:], s[-2:], "SAME",
                             output_dtype=a.name, include_batch_in_index=a == INDEX_DTYPES[1])
            if dtype.kind == "f":
                got["avg"] = run(kernel_backend, avg_pool, xf, k, s, "SAME")
                got["avg_grad"] = run(kernel_backend, avg_grad, shape, du, k, s, "SAME")
                got["avg_unpool"] = run(kernel_backend, gpuconv.avg_unpool, du, k, s, "SAME", shape)
        return got

    def check(got):
        assert got.keys() == want.keys()
        for key, w in want.items():
            for g, wv in zip(got[key] if isinstance(w, tuple) else (got[key],), w if isinstance(w, tuple) else (w,)):
                assert g.dtype == wv.dtype and g.shape == wv.shape, key
                if key in ("avg", "avg_grad", "avg_unpool"):
                    tol = {F16: 2e-3, F32: 2e-6, F64: 1e-13}[dtype]
                    np.testing.assert_allclose(g.astype(np.float64), wv.astype(np.float64), rtol=tol, atol=tol,
                                               err_msg=key)
                else:                       # selections and integer-valued sums: bit-exact (NaN equals NaN)
                    np.testing.assert_array_equal(g, wv, err_msg=str(key))

    check_orders(kernel_backend, monkeypatch, expected, compute, check)


# ---------------------------------------------------------------------------------------------------------
# unpool
# ---------------------------------------------------------------------------------------------------------
def unpool_cases():
    for dt, a, ix in itertools.product(FLOAT_DTYPES + INT_DTYPES, INDEX_DTYPES, INDEX_TYPES):
        v, at = ctype(dt), ctype(a)
        expected = {f"unpool_scatter_windows<{v}, {at}, {ix}>",
                    f"unpool_scatter_count<{at}, {ix}>", f"unpool_scatter_alloc<{ix}>",
                    f"unpool_scatter_place<{v}, {at}, {ix}>", f"unpool_scatter_rank<{at}, {ix}>",
                    f"unpool_scatter_sum<{v}, {ix}>", f"unpool_gather<{UP.BITS[dt.itemsize][0]}, {at}, {ix}>"}
        yield pytest.param(dt, a, ix, expected, id=f"{dt}-{a}-{ix}".replace(" ", ""))


UNPOOL_CASES = list(unpool_cases())


@pytest.mark.parametrize("dtype,argmax_dtype,index,expected", UNPOOL_CASES)
def test_unpool_instantiation(kernel_backend, monkeypatch, dtype, argmax_dtype, index, expected):
    include_batch = argmax_dtype == INDEX_DTYPES[1]
    ushape, oshape = (2, 3, 4, 3), (2, 5, 7, 3)
    rng = np.random.default_rng(21)
    limit = int(np.prod(oshape)) // (1 if include_batch else oshape[0])
    a = rng.integers(0, limit // 3, ushape)            # a third of the range: cells hit 0, 1, 2, ... times
    a.reshape(-1)[:5] = limit - 1                      # one cell hit 5+ times, at the last index
    a = a.astype(argmax_dtype)
    u = rng.integers(-3, 4, ushape).astype(dtype) if dtype.kind != "f" else uniform(ushape, dtype, 22)
    g = pool_data(oshape, dtype, seed=23)
    # the kernel's promise, independently: zeros, then each update added in increasing update order
    acc = np.float32 if dtype == F16 else dtype
    scattered = np.zeros(int(np.prod(oshape)), acc)
    idx = a.reshape(2, -1).astype(np.int64) + (0 if include_batch else np.arange(2)[:, None] * limit)
    np.add.at(scattered, idx.reshape(-1), u.reshape(-1).astype(acc))
    want_up = scattered.astype(dtype).reshape(oshape)
    want_grad = oracle(gpuconv.max_unpool_grad, g, a, include_batch_in_index=include_batch)
    # argmax of 2x2/2 pooling (5x7 -> 3x4): every update inside its own window, the window scatter's result stands
    _, owned = oracle(gpuconv.max_pool_with_argmax, uniform(oshape, F32, 24), 2, 2, "SAME",
                      output_dtype=argmax_dtype, include_batch_in_index=include_batch)
    want_owned = sequential_scatter(u, owned, oshape, include_batch)

    def compute():
        with index_width(monkeypatch, index):
            return (run(kernel_backend, gpuconv.max_unpool, u, a, oshape, include_batch_in_index=include_batch),
                    run(kernel_backend, gpuconv.max_unpool_grad, g, a, include_batch_in_index=include_batch),
                    run(kernel_backend, gpuconv.max_unpool, u, owned, oshape, include_batch_in_index=include_batch))

    def check(got):
        up, grad, up_owned = got
        assert up.dtype == dtype and grad.dtype == dtype
        assert up.tobytes() == want_up.tobytes()
        assert up_owned.tobytes() == want_owned.tobytes()
        np.testing.assert_array_equal(grad, want_grad)
        if dtype.kind != "f":
            np.testing.assert_array_equal(up, oracle(gpuconv.max_unpool, u, a, oshape,
                                                     include_batch_in_index=include_batch))

    check_orders(kernel_backend, monkeypatch, expected, compute, check)


# ---------------------------------------------------------------------------------------------------------
# grid-stride loops past their first step
# ---------------------------------------------------------------------------------------------------------
# The pooling, unpooling, split-K reduce and non-finite flag kernels loop grid-stride; their plans cap the grid
# (pool MAX_BLOCKS = 32768 blocks, flag 1024), so only tensors of millions of elements take a second step. Here the
# same plans run with a one-block grid, so every thread takes several steps (grid_step's `i + stride` branch).
GRID_STRIDE_PREFIXES = ("pool_", "unpool_", "conv_wgrad_reduce<", "gpuconv::conv_nonfinite_flag<")


def test_grid_stride_loops_with_one_block(kernel_backend, monkeypatch):
    from gpuconv import backend as B
    executor = B._instance(kernel_backend).executor
    original = executor.launch
    shrunk: set = set()

    def one_block(plan):
        if plan.name_expression.startswith(GRID_STRIDE_PREFIXES):
            shrunk.add(plan.name_expression.split("<")[0])
            plan = dataclasses.replace(plan, grid=(1, 1, 1))
        return original(plan)

    monkeypatch.setattr(executor, "launch", one_block)
    rng = np.random.default_rng(31)
    x = pool_data((2, 9, 11, 8), F32, seed=32)                 # 1584 elements: 2-7 steps per thread
    pool = dict(ksize=3, strides=2, padding="SAME")
    y, argmax = oracle(gpuconv.max_pool_with_argmax, x, include_batch_in_index=True, **pool)
    dy = rng.integers(-3, 4, y.shape).astype(F32)
    xf, du = uniform(x.shape, F32, 33), uniform(y.shape, F32, 34)
    for fn, args, kw in [
        (gpuconv.max_pool2d, (x,), pool),
        (gpuconv.max_pool_with_argmax, (x,), dict(include_batch_in_index=True, **pool)),
        (gpuconv.max_pool_grad, (x, y, dy), pool), (gpuconv.avg_pool2d, (xf,), pool),
        (gpuconv.avg_pool_grad, (x.shape, du), pool), (gpuconv.avg_unpool, (du,), dict(output_shape=x.shape, **pool)),
        (gpuconv.max_unpool_grad, (x, argmax), dict(include_batch_in_index=True)),
    ]:
        got, want = run(kernel_backend, fn, *args, **kw), oracle(fn, *args, **kw)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert g.dtype == w.dtype and g.shape == w.shape, fn.__name__
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6, err_msg=fn.__name__)
    # scatter: duplicates (argmax of overlapping 3x3/2 windows over an integer-valued input, many ties)
    xi = rng.integers(0, 3, x.shape).astype(F32)
    _, dup = oracle(gpuconv.max_pool_with_argmax, xi, include_batch_in_index=True, **pool)
    got = run(kernel_backend, gpuconv.max_unpool, du, dup, x.shape, include_batch_in_index=True)
    want = np.zeros(x.size, F32)
    np.add.at(want, dup.reshape(-1), du.reshape(-1))
    assert len(np.unique(dup)) < dup.size and got.tobytes() == want.reshape(x.shape).tobytes()
    # the window scatter's own result: argmax of 2x2/2 pooling (9x11 -> 5x6, the shape of du)
    _, owned = oracle(gpuconv.max_pool_with_argmax, xf, 2, 2, "SAME", include_batch_in_index=True)
    got = run(kernel_backend, gpuconv.max_unpool, du, owned, x.shape, include_batch_in_index=True)
    assert got.tobytes() == sequential_scatter(du, owned, x.shape, True).tobytes()
    # split-K reduce over dw (3*3*8*300 = 21600 elements) and the flag scan over w (same elements)
    xs, ws, kw = (1, 4, 4, 8), (3, 3, 8, 300), dict(strides=1, padding="SAME")
    xc, dyc = uniform(xs, F32, 35), uniform(xs[:3] + (300,), F32, 36)
    with WG.forced_config(variant="tiled", tile="64x64", splits=2):
        got = run(kernel_backend, gpuconv.conv2d_backprop_filter, xc, ws, dyc, **kw)
    ref = oracle(gpuconv.conv2d_backprop_filter, xc, ws, dyc, **kw)
    bound = oracle(gpuconv.conv2d_backprop_filter, np.abs(xc).astype(np.float64), ws, np.abs(dyc).astype(np.float64),
                   **kw)
    assert_conv_close(got, ref, bound, F32)
    w = uniform(ws, F32, 37)
    w[-1, -1, -1, -1] = np.inf                                 # the last element: found on the last step
    with F.override_config(variant="tiled", tile="64x64"):
        got = run(kernel_backend, gpuconv.conv2d, xc, w, **kw)
    want = oracle(gpuconv.conv2d, xc, w, **kw)
    assert np.isinf(want[..., -1]).any()                       # (NaN and inf compare equal below)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert shrunk == {"pool_max_fwd", "pool_max_argmax_fwd", "pool_max_bwd", "pool_avg_fwd", "pool_avg_bwd",
                      "unpool_gather", "unpool_scatter_windows", "unpool_scatter_count", "unpool_scatter_alloc",
                      "unpool_scatter_place", "unpool_scatter_rank", "unpool_scatter_sum", "conv_wgrad_reduce",
                      "gpuconv::conv_nonfinite_flag"}, shrunk


@pytest.mark.emulator
def test_launch_log(monkeypatch, tmp_path):
    # GPUCONV_EMULATOR_LOG: one "family, name expression, order" line per launch, appended
    from gpuconv.executors.emulator import EmulatorExecutor
    from gpuconv.kernel_backend import KernelBackend
    log = tmp_path / "launches.tsv"
    log.write_text("earlier\n")
    monkeypatch.setenv("GPUCONV_EMULATOR_LOG", str(log))
    be = KernelBackend(EmulatorExecutor(order="reverse"))
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4, 1)
    y = be.max_pool(x, pool_problem(x.shape, (1, 2, 2), (1, 2, 2), "VALID"))
    assert y.reshape(-1).tolist() == [5, 7, 13, 15]
    assert log.read_text().splitlines() == ["earlier", "pool\tpool_max_fwd<float, int, 1>\treverse"]


# ---------------------------------------------------------------------------------------------------------
# the cases above name every declared instantiation
# ---------------------------------------------------------------------------------------------------------
def test_every_declared_expression_is_covered():
    covered = {
        "conv_fprop": FPROP_CASES, "conv_dgrad": DGRAD_CASES + COL2IM_CASES, "conv_wgrad": WGRAD_CASES,
        "pool": POOL_CASES,
        "unpool": UNPOOL_CASES,
    }
    assert {fam.name for fam in kernel_source.families()} == set(covered)
    for fam in kernel_source.families():
        named = set().union(*(case.values[-1] for case in covered[fam.name]))
        declared = set(fam.name_expressions)
        assert named == declared, (fam.name, "not run:", sorted(declared - named), "not declared:",
                                   sorted(named - declared))
