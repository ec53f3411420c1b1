"""Pooling and unpooling kernels (kernels/pool.cu, kernels/unpool.cu) through the public API, against the NumPy
backend, on every kernel backend (the emulator always; cuda where a GPU exists).

Inputs are tiny (the emulator runs each CUDA thread as a fiber). Float inputs are tie-free unless a test is about
ties; gradients are integer-valued so that every summation order gives the same bits, and max-pool results are
selections, so most comparisons are exact. Where sums of arbitrary floats are compared, tolerances are per dtype.
The scatter (max_unpool, max_pool_grad_with_argmax) is also checked bit-for-bit against np.add.at, which adds
duplicates in increasing update order as the kernel promises, under several emulator thread orders.
The vectorised pooling variants (VEC channels per thread) run forced to every VEC and as chosen, against the NumPy
backend and bit-for-bit against VEC = 1; a misaligned view must fall back to VEC = 1 (and the emulator's __ldg
alignment check must catch a vector load the plan let through by mistake).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import (install_emulator, record_launches, run_on as run, run_oracle as oracle, sequential_scatter,
                      to_backend, to_numpy)

import gpuconv
from gpuconv.plans import pool as pool_plans

FLOATS = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64))
INTS = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64))
TOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


# ---------------------------------------------------------------------------------------------------------
# backends, thread orders, running a call
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def backend(ordered_backend):
    """A kernel backend name, under each emulator thread order (conftest.ordered_backend)."""
    return ordered_backend


def assert_same(got, want, dtype=None):
    """Bit-exact equality for selections and integer-valued sums (NaN equals NaN); shapes and dtypes too."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def assert_same_bits_but_nan_payloads(got, want):
    """Bit-exact equality (signed zeros included) except the payload of a NaN: a GPU's float add returns its
    canonical NaN for 0 + NaN (float32 0x7fffffff), where the CPU (NumPy, the emulator) keeps the operand's."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype.kind == "f":
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan)
        got, want = got[~nan], want[~nan]
    assert got.tobytes() == want.tobytes()


def assert_close(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = TOL.get(got.dtype, 0)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def distinct(shape, dtype, seed=0):
    """Tie-free values (a permutation; exact in every dtype for the tiny sizes used here)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    v = rng.permutation(n) - n // 2
    if np.dtype(dtype) in INTS:
        info = np.iinfo(dtype)
        v = np.mod(v, min(n, info.max - info.min)) + max(info.min, -(n // 2))
        if len(np.unique(v)) != n:            # int8/uint8 with more than 256 cells: ties unavoidable
            v = rng.integers(info.min, info.max, n, endpoint=True)
    else:
        v = v * 0.25
    return np.asarray(v, dtype).reshape(shape)


def small_ints(shape, dtype, lo=-3, hi=4, seed=1):
    """Integer-valued data from a small range: many ties, and sums that are exact in every dtype."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        lo, hi = 0, hi - lo
    return rng.integers(lo, hi, shape).astype(dtype)


# Pooling cases: (nspatial, data_format, input shape in that format, ksize, strides, padding). Odd sizes,
# overlapping and non-overlapping windows, SAME / VALID / explicit padding, 2-D and 3-D, both layouts.
CASES = {
    "2d-nhwc-k3s2-same": (2, "NHWC", (2, 7, 9, 3), 3, 2, "SAME"),
    "2d-nchw-k23s12-valid": (2, "NCHW", (2, 3, 7, 9), (2, 3), (1, 2), "VALID"),
    "2d-nhwc-k2s2-valid-odd": (2, "NHWC", (1, 9, 5, 4), 2, 2, "VALID"),
    "2d-nhwc-k32s1-explicit": (2, "NHWC", (2, 5, 6, 2), (3, 2), 1, [[0, 0], [1, 2], [1, 0], [0, 0]]),
    "2d-nchw-k3s3-same": (2, "NCHW", (1, 2, 8, 7), 3, 3, "SAME"),
    "3d-ndhwc-k232s212-same": (3, "NDHWC", (1, 4, 5, 6, 3), (2, 3, 2), (2, 1, 2), "SAME"),
    "3d-ncdhw-k2s1-valid": (3, "NCDHW", (2, 2, 3, 4, 3), 2, 1, "VALID"),
    "3d-ndhwc-explicit": (3, "NDHWC", (1, 3, 4, 5, 2), (2, 2, 3), (1, 2, 2),
                          [[0, 0], [1, 0], [0, 1], [2, 1], [0, 0]]),
}
CASE_IDS = list(CASES)

MAX_POOL = {2: gpuconv.max_pool2d, 3: gpuconv.max_pool3d}
AVG_POOL = {2: gpuconv.avg_pool2d, 3: gpuconv.avg_pool3d}
MAX_GRAD = {2: gpuconv.max_pool_grad, 3: gpuconv.max_pool3d_grad}
AVG_GRAD = {2: gpuconv.avg_pool_grad, 3: gpuconv.avg_pool3d_grad}


def case(name):
    nsp, fmt, shape, k, s, pad = CASES[name]
    return nsp, {"ksize": k, "strides": s, "padding": pad, "data_format": fmt}, shape


# ---------------------------------------------------------------------------------------------------------
# forward pooling
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASE_IDS)
def test_max_pool_float32(backend, name):
    nsp, kw, shape = case(name)
    x = distinct(shape, np.float32)
    assert_same(run(backend, MAX_POOL[nsp], x, **kw), oracle(MAX_POOL[nsp], x, **kw))


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=str)
@pytest.mark.parametrize("name", ["2d-nhwc-k3s2-same", "3d-ndhwc-explicit"])
def test_max_pool_dtypes_with_ties(backend, name, dtype):
    nsp, kw, shape = case(name)
    x = small_ints(shape, dtype)
    assert_same(run(backend, MAX_POOL[nsp], x, **kw), oracle(MAX_POOL[nsp], x, **kw))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", CASE_IDS)
def test_avg_pool(backend, name, dtype):
    nsp, kw, shape = case(name)
    x = np.random.default_rng(3).uniform(-1, 1, shape).astype(dtype)
    assert_close(run(backend, AVG_POOL[nsp], x, **kw), oracle(AVG_POOL[nsp], x, **kw))


def test_avg_pool_counts_only_in_bounds_cells(backend):
    # tf-semantics.md §4: 1..9 (3x3), k2 s2 SAME -> [[3, 4.5], [7.5, 9]]
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    y = run(backend, gpuconv.avg_pool2d, x, 2, 2, "SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[3, 4.5], [7.5, 9]])


# ---------------------------------------------------------------------------------------------------------
# max_pool_with_argmax: TF's index, include_batch, int32/int64, ties, padding, NaN, -inf
# ---------------------------------------------------------------------------------------------------------
ARGMAX_CASES = [n for n in CASE_IDS if CASES[n][1] == "NHWC"]


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("output_dtype", ["int64", "int32"])
@pytest.mark.parametrize("name", ARGMAX_CASES)
def test_max_pool_with_argmax(backend, name, output_dtype, include_batch):
    _, kw, shape = case(name)
    kw.pop("data_format")
    x = distinct(shape, np.float32, seed=5)
    got = run(backend, gpuconv.max_pool_with_argmax, x, output_dtype=output_dtype,
              include_batch_in_index=include_batch, **kw)
    want = oracle(gpuconv.max_pool_with_argmax, x, output_dtype=output_dtype,
                  include_batch_in_index=include_batch, **kw)
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])
    assert got[1].dtype == np.dtype(output_dtype)
    # the index addresses the maximum itself
    flat = x.reshape(-1) if include_batch else x.reshape(x.shape[0], -1)
    picked = flat[got[1].reshape(-1)] if include_batch else np.take_along_axis(
        flat, got[1].reshape(x.shape[0], -1), 1)
    np.testing.assert_array_equal(picked.reshape(got[0].shape), got[0])


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=str)
def test_argmax_ties_go_to_the_first_cell(backend, dtype):
    x = small_ints((2, 7, 6, 3), dtype, lo=0, hi=2)
    for args in [(3, 2, "SAME"), ((2, 3), 1, "VALID")]:
        got = run(backend, gpuconv.max_pool_with_argmax, x, *args, include_batch_in_index=True)
        want = oracle(gpuconv.max_pool_with_argmax, x, *args, include_batch_in_index=True)
        assert_same(got[0], want[0])
        assert_same(got[1], want[1])
    # all equal, 2x2/2 on 4x4: first cell of each window (tf-semantics.md §3)
    ones = np.ones((1, 4, 4, 1), dtype)
    _, argmax = run(backend, gpuconv.max_pool_with_argmax, ones, 2, 2, "VALID")
    np.testing.assert_array_equal(argmax.reshape(-1), [0, 2, 8, 10])


def test_argmax_never_selects_padding(backend):
    # tf-semantics.md §3: 3x3 of -1..-9, k2 s2 SAME -> values [[-1,-3],[-7,-9]], argmax [[0,2],[6,8]]
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 2, 2, "SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[0, 2], [6, 8]])
    # 5x5 arange k3 s2 SAME -> [[6,8,9],[16,18,19],[21,23,24]]
    x = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
    _, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 3, 2, "SAME")
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_nan_wins_only_as_first_cell(backend, dtype):
    # windows 2x2/2 over a 2x4 image: [NaN, 1, 3, 2] -> NaN at cell 0; [1, NaN, 3, 2] -> 3
    x = np.array([[np.nan, 1, 1, np.nan], [3, 2, 3, 2]], dtype).reshape(1, 2, 4, 1)
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 2, 2, "VALID")
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 0
    assert y[0, 0, 1, 0] == 3 and argmax[0, 0, 1, 0] == 6
    assert_same(run(backend, gpuconv.max_pool2d, x, 2, 2, "VALID"), y)
    # the gradient follows the same selection: the NaN cell gets its window's gradient
    dy = np.array([[[[5], [7]]]], dtype)
    dx = run(backend, gpuconv.max_pool_grad, x, y, dy, 2, 2, "VALID")
    np.testing.assert_array_equal(dx.reshape(-1), [5, 0, 0, 0, 0, 0, 7, 0])
    # random NaNs in first and later cells agree with the NumPy backend
    x = distinct((2, 6, 7, 3), dtype, seed=7)
    x[0, 0, 0, :] = np.nan          # first cell of window (0, 0)
    x[1, 3, 4, 1] = np.nan          # some later cell
    x[0, 5, 6, 2] = np.nan
    for fn in (gpuconv.max_pool_with_argmax,):
        got, want = run(backend, fn, x, 3, 2, "SAME"), oracle(fn, x, 3, 2, "SAME")
        assert_same(got[0], want[0])
        assert_same(got[1], want[1])
    dy = small_ints(want[0].shape, dtype, seed=8)
    assert_same(run(backend, gpuconv.max_pool_grad, x, want[0], dy, 3, 2, "SAME"),
                oracle(gpuconv.max_pool_grad, x, want[0], dy, 3, 2, "SAME"))


def test_float32_order_of_subnormals_zeros_and_infinities(backend):
    """float32 max pooling compares integer keys (kernels/common.cuh: CuPy's -ftz=true would take subnormals for
    zero): every pair of the special values below, in both orders, in a 1x2 window, gives the NumPy backend's
    selection, bit for bit (-0 and +0 tie: the first cell wins)."""
    tiny = np.finfo(np.float32).smallest_subnormal
    special = np.array([0.0, -0.0, tiny, 2 * tiny, -tiny, -2 * tiny, np.finfo(np.float32).tiny, 1.0, -1.0,
                        np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max, np.nan], np.float32)
    pairs = np.array([(a, b) for a in special for b in special], np.float32)    # 196 windows
    x = pairs.reshape(1, len(pairs), 2, 1)
    for fn in (gpuconv.max_pool_with_argmax,):
        got, want = run(backend, fn, x, [1, 2], [1, 2], "VALID"), oracle(fn, x, [1, 2], [1, 2], "VALID")
        assert_same(got[0], want[0])
        assert_same(got[1], want[1])
    assert_same(run(backend, gpuconv.max_pool2d, x, [1, 2], [1, 2], "VALID"), want[0])
    second = want[1].reshape(len(special), len(special)) % 2 == 1
    assert second[2, 3] and not second[3, 2] and not second[3, 0]      # 2*tiny beats tiny and 0; tiny loses
    assert not second[0, 1] and not second[1, 0]                        # +0 and -0 tie: the first cell


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_all_minus_inf_window_gives_its_first_cell(backend, dtype):
    x = np.full((1, 4, 4, 2), -np.inf, dtype)
    x[0, 2:, 2:, :] = 1
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 2, 2, "VALID")
    assert y[0, 0, 0, 0] == -np.inf and argmax[0, 0, 0, 0] == 0 and argmax[0, 0, 0, 1] == 1
    assert argmax[0, 0, 1, 0] == (0 * 4 + 2) * 2
    assert y[0, 1, 1, 0] == 1
    assert_same(run(backend, gpuconv.max_pool3d, x[:, None], (1, 2, 2), (1, 2, 2), "VALID")[:, 0], y)


@pytest.mark.parametrize("dtype", [np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int64)], ids=str)
def test_integer_extremes(backend, dtype):
    info = np.iinfo(dtype)
    x = np.full((1, 3, 3, 1), info.min, dtype)
    x[0, 2, 2, 0] = info.max
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 2, 1, "VALID")
    np.testing.assert_array_equal(y[0, :, :, 0], [[info.min, info.min], [info.min, info.max]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[0, 1], [3, 8]])


# ---------------------------------------------------------------------------------------------------------
# gradients and avg_unpool
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASE_IDS)
def test_max_pool_grad(backend, name):
    nsp, kw, shape = case(name)
    x = distinct(shape, np.float32, seed=11)
    y = oracle(MAX_POOL[nsp], x, **kw)
    dy = small_ints(y.shape, np.float32, seed=12)
    assert_same(run(backend, MAX_GRAD[nsp], x, y, dy, **kw), oracle(MAX_GRAD[nsp], x, y, dy, **kw))


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=str)
def test_max_pool_grad_dtypes_with_ties(backend, dtype):
    for name in ("2d-nhwc-k3s2-same", "3d-ncdhw-k2s1-valid"):
        nsp, kw, shape = case(name)
        x = small_ints(shape, dtype, lo=0, hi=3)
        y = oracle(MAX_POOL[nsp], x, **kw)
        dy = small_ints(y.shape, dtype, seed=13)
        assert_same(run(backend, MAX_GRAD[nsp], x, y, dy, **kw), oracle(MAX_GRAD[nsp], x, y, dy, **kw))


def test_max_pool_grad_overlaps_add(backend):
    # tf-semantics.md §4: all-ones 3x3, k2 s1 -> each window's first cell; centre max 9 -> 4 at the centre
    x = np.ones((1, 3, 3, 1), np.float32)
    dy = np.ones((1, 2, 2, 1), np.float32)
    dx = run(backend, gpuconv.max_pool_grad, x, dy, dy, 2, 1, "VALID")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    x[0, 1, 1, 0] = 9
    dx = run(backend, gpuconv.max_pool_grad, x, dy, dy, 2, 1, "VALID")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0, 0], [0, 4, 0], [0, 0, 0]])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", CASE_IDS)
def test_avg_pool_grad(backend, name, dtype):
    nsp, kw, shape = case(name)
    y = oracle(AVG_POOL[nsp], np.zeros(shape, dtype), **kw)
    dy = np.random.default_rng(14).uniform(-1, 1, y.shape).astype(dtype)
    assert_close(run(backend, AVG_GRAD[nsp], shape, dy, **kw), oracle(AVG_GRAD[nsp], shape, dy, **kw))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", CASE_IDS)
def test_avg_unpool(backend, name, dtype):
    nsp, kw, shape = case(name)
    y = oracle(AVG_POOL[nsp], np.zeros(shape, dtype), **kw)
    u = np.random.default_rng(15).uniform(-1, 1, y.shape).astype(dtype)
    assert_close(run(backend, gpuconv.avg_unpool, u, output_shape=shape, **kw),
                 oracle(gpuconv.avg_unpool, u, output_shape=shape, **kw))


def test_avg_pool_grad_spreads_by_count(backend):
    # tf-semantics.md §4: k2 s2 SAME on 3x3, dy = 1 -> [[.25,.25,.5],[.25,.25,.5],[.5,.5,1]]
    dx = run(backend, gpuconv.avg_pool_grad, (1, 3, 3, 1), np.ones((1, 2, 2, 1), np.float32), 2, 2, "SAME")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[.25, .25, .5], [.25, .25, .5], [.5, .5, 1]])
    out = run(backend, gpuconv.avg_unpool, np.ones((1, 2, 2, 1), np.float64), 2, 1, "VALID", (3, 3))
    np.testing.assert_array_equal(out[0, :, :, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


# ---------------------------------------------------------------------------------------------------------
# empty results
# ---------------------------------------------------------------------------------------------------------
def test_empty_results(backend):
    x = distinct((1, 2, 3, 2), np.float32)                      # VALID window 3x3 larger than 2 rows
    for fn in (gpuconv.max_pool2d, gpuconv.avg_pool2d):
        assert run(backend, fn, x, 3, 1, "VALID").shape == (1, 0, 1, 2)
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 3, 1, "VALID")
    assert y.shape == argmax.shape == (1, 0, 1, 2)
    dy = np.zeros((1, 0, 1, 2), np.float32)
    for got in (run(backend, gpuconv.max_pool_grad, x, dy, dy, 3, 1, "VALID"),
                run(backend, gpuconv.avg_pool_grad, x.shape, dy, 3, 1, "VALID"),
                run(backend, gpuconv.avg_unpool, dy, 3, 1, "VALID", x.shape),
                run(backend, gpuconv.max_pool_grad_with_argmax, x, dy, dy.astype(np.int64), 3, 1, "VALID")):
        assert got.shape == x.shape and not got.any()
    empty_batch = np.zeros((0, 4, 4, 3), np.float16)
    assert run(backend, gpuconv.max_pool2d, empty_batch, 2, 2, "SAME").shape == (0, 2, 2, 3)
    u, a = np.zeros((2, 0, 2, 3), np.float32), np.zeros((2, 0, 2, 3), np.int64)
    out = run(backend, gpuconv.max_unpool, u, a, (2, 3, 4, 3))
    assert out.shape == (2, 3, 4, 3) and not out.any()
    assert run(backend, gpuconv.max_unpool_grad, np.ones((2, 3, 4, 3), np.float32), a).shape == a.shape


# ---------------------------------------------------------------------------------------------------------
# scatter (max_unpool, max_pool_grad_with_argmax) and gather (max_unpool_grad)
# ---------------------------------------------------------------------------------------------------------
def duplicate_heavy_argmax(updates_shape, out_shape, include_batch, dtype, seed=21):
    """argmax with many repeated indices (cells hit 0, 1, 2, 3 and many times)."""
    rng = np.random.default_rng(seed)
    n = updates_shape[0]
    limit = int(np.prod(out_shape)) // (1 if include_batch else n)
    a = rng.integers(0, max(2, limit // 3), updates_shape)     # a third of the range: heavy duplication
    a.reshape(-1)[:7] = limit - 1                              # one cell hit 7+ times, at the last index
    return a.astype(dtype)


SCATTER_CASES = {
    "2d": ((2, 3, 4, 3), (2, 5, 7, 3)),
    "3d": ((2, 2, 3, 2, 2), (2, 3, 5, 4, 2)),
}


SCATTER_DTYPES = FLOATS + tuple(np.dtype(t) for t in (np.int8, np.uint16, np.int64))


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("dtype", SCATTER_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(SCATTER_CASES))
def test_max_unpool_duplicates(backend, name, dtype, index_dtype, include_batch):
    ushape, oshape = SCATTER_CASES[name]
    a = duplicate_heavy_argmax(ushape, oshape, include_batch, index_dtype)
    u = (small_ints(ushape, dtype, seed=22) if dtype in INTS
         else np.random.default_rng(23).uniform(-1, 1, ushape).astype(dtype))
    got = run(backend, gpuconv.max_unpool, u, a, oshape, include_batch_in_index=include_batch)
    assert_same(got, sequential_scatter(u, a, oshape, include_batch))
    want = oracle(gpuconv.max_unpool, u, a, oshape, include_batch_in_index=include_batch)
    if dtype in INTS:
        assert_same(got, want)
    else:
        assert_close(got, want)


@pytest.mark.emulator
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=str)
def test_scatter_is_independent_of_thread_order(monkeypatch, dtype):
    ushape, oshape = (2, 4, 5, 3), (2, 6, 6, 3)
    a = duplicate_heavy_argmax(ushape, oshape, False, np.int64, seed=31)
    u = np.random.default_rng(32).standard_normal(ushape).astype(dtype)
    results = []
    for order, seed in [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]:
        install_emulator(monkeypatch, order, seed)
        results.append(run("emulator", gpuconv.max_unpool, u, a, oshape))
    for r in results:
        assert r.tobytes() == results[0].tobytes()
    assert_same(results[0], sequential_scatter(u, a, oshape, False))


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int16)], ids=str)
@pytest.mark.parametrize("name", ["2d-nhwc-k3s2-same", "2d-nhwc-k32s1-explicit", "2d-nhwc-k2s2-valid-odd"])
def test_max_pool_grad_with_argmax(backend, name, dtype, include_batch):
    _, kw, shape = case(name)
    kw.pop("data_format")
    x = distinct(shape, dtype, seed=41)
    _, argmax = oracle(gpuconv.max_pool_with_argmax, x, include_batch_in_index=include_batch, **kw)
    dy = small_ints(argmax.shape, dtype, seed=42)
    got = run(backend, gpuconv.max_pool_grad_with_argmax, x, dy, argmax, include_batch_in_index=include_batch, **kw)
    assert_same(got, oracle(gpuconv.max_pool_grad_with_argmax, x, dy, argmax,
                            include_batch_in_index=include_batch, **kw))
    # identity (tf-semantics.md §5): equals max_pool_grad, which recomputes the selection from x
    y = oracle(gpuconv.max_pool2d, x, **kw)
    assert_same(got, run(backend, gpuconv.max_pool_grad, x, y, dy, **kw))


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=str)
@pytest.mark.parametrize("name", list(SCATTER_CASES))
def test_max_unpool_grad(backend, name, dtype, include_batch):
    ushape, oshape = SCATTER_CASES[name]
    a = duplicate_heavy_argmax(ushape, oshape, include_batch, np.int32 if dtype == np.int8 else np.int64)
    g = distinct(oshape, dtype, seed=51)
    got = run(backend, gpuconv.max_unpool_grad, g, a, include_batch_in_index=include_batch)
    assert_same(got, oracle(gpuconv.max_unpool_grad, g, a, include_batch_in_index=include_batch))


def test_scatter_adds_to_zero(backend):
    # a lone -0.0 lands as 0 + (-0.0) = +0.0, as in TF's scatter_nd recipe; NaN and inf pass through
    u = np.array([-0.0, np.nan, np.inf, 2.0], np.float32).reshape(1, 1, 4, 1)
    a = np.array([0, 1, 2, 3], np.int64).reshape(1, 1, 4, 1)
    out = run(backend, gpuconv.max_unpool, u, a, (1, 2, 2, 1))
    assert not np.signbit(out.reshape(-1)[0])
    np.testing.assert_array_equal(out.reshape(-1), [0.0, np.nan, np.inf, 2.0])


@pytest.mark.parametrize("argmax_kind,first_kernels", [("random", ["count"]), ("pooled", ["windows", "count"])])
def test_kernels_guard_out_of_range_argmax(backend, monkeypatch, argmax_kind, first_kernels):
    # The API rejects such indices; called directly, the canonical ops still never touch memory outside the
    # output: the scatter skips bad updates and the gather reads 0 for them. With 2x2/2 pooling's argmax the
    # window scatter runs first; out-of-range indices are in no window, so it flags them and the general passes
    # run.
    from gpuconv.backend import resolve
    rng = np.random.default_rng(91)
    if argmax_kind == "random":                                  # 5 rows of updates for 4 rows: no windows
        v = rng.standard_normal((2, 1, 5, 4, 2)).astype(np.float32)
        a = rng.integers(-5, 60, v.shape).astype(np.int64)
    else:
        v = rng.standard_normal((2, 1, 2, 3, 2)).astype(np.float32)
        a = pooled_argmax(distinct((2, 4, 6, 2), np.float32, seed=92), 2, "SAME")[:, None]
    a[0, 0, 0, 0, 0], a[1, 0, 0, 0, 1] = 10**12, -(10**12)
    launched = scatter_kernels(monkeypatch, backend)
    with gpuconv.use_backend(backend):
        be = resolve({"values": to_backend(backend, v)})
        out = to_numpy(be.argmax_scatter(to_backend(backend, v), to_backend(backend, a), (2, 1, 4, 6, 2), False))
        g = rng.standard_normal((2, 1, 4, 6, 2)).astype(np.float32)
        got = to_numpy(be.argmax_gather(to_backend(backend, g), to_backend(backend, a), True))
    ok = (a >= 0) & (a < 48)
    want = np.zeros(96, np.float32)
    np.add.at(want, (a + np.arange(2).reshape(2, 1, 1, 1, 1) * 48)[ok], v[ok])
    np.testing.assert_array_equal(out.reshape(-1), want)
    inside = (a >= 0) & (a < 96)
    np.testing.assert_array_equal(got[inside], g.reshape(-1)[a[inside]])
    assert not got[~inside].any()
    assert launched[:len(first_kernels)] == first_kernels


def test_unpool_round_trip_segnet_style(backend):
    # pool 2x2/2 with argmax, unpool with the original shape (odd sizes: no row scrambling), grad of unpool
    x = distinct((2, 7, 5, 3), np.float32, seed=61) + 100       # no zero among the maxima
    y, argmax = run(backend, gpuconv.max_pool_with_argmax, x, 2, 2, "SAME")
    up = run(backend, gpuconv.max_unpool, y, argmax, (7, 5))
    mask = up != 0
    np.testing.assert_array_equal(up[mask], x[mask])
    assert mask.sum() == y.size
    assert_same(run(backend, gpuconv.max_unpool_grad, up, argmax), y)


# ---------------------------------------------------------------------------------------------------------
# window scatter: the one-pass fast path of max_unpool / max_pool_grad_with_argmax (kernels/unpool.cu)
# ---------------------------------------------------------------------------------------------------------
def scatter_kernels(monkeypatch, backend) -> list:
    """Which scatter kernels the test launches: 'windows' (the one-pass window scatter) and 'count' (the first of
    the five general passes)."""
    return record_launches(monkeypatch, backend, lambda plan: plan.name_expression.split("<")[0]
                           .replace("unpool_scatter_", ""))


def window_bounds(pooled, size, s):
    """The cells [start, stop) of each window along one axis of stride s: the last one runs to the axis' end."""
    return [(o * s, size if o == pooled - 1 else o * s + s) for o in range(pooled)]


def test_window_strides_tile_each_axis_with_disjoint_windows():
    # per axis: the smallest s whose `pooled` windows [o*s, o*s + s) cover [0, size) and all start inside it,
    # else the largest s whose windows fit, the last window taking the remaining cells
    from gpuconv.plans.unpool import window_strides

    def brute(pooled, size):
        covering = [s for s in range(1, size + 1) if pooled * s >= size and (pooled - 1) * s < size]
        fitting = [s for s in range(1, size + 1) if pooled * s <= size]
        return covering[0] if covering else fitting[-1] if fitting else None

    for pooled in range(1, 7):
        for size in range(1, 15):
            want = brute(pooled, size)
            got = window_strides((2, 1, pooled, 1, 3), (2, 1, size, 1, 3))
            assert got == (None if want is None else (1, want, 1)), (pooled, size)
            if got is not None:                  # disjoint, in order, none empty, together the whole axis
                bounds = window_bounds(pooled, size, got[1])
                assert [c for a, b in bounds for c in range(a, b)] == list(range(size))
                assert all(a < b for a, b in bounds)
    # every axis must fit; batch and channels must agree
    assert window_strides((1, 2, 3, 4, 5), (1, 4, 6, 8, 5)) == (2, 2, 2)
    assert window_strides((1, 2, 3, 4, 5), (1, 4, 6, 3, 5)) is None           # 4 windows in 3 cells
    assert window_strides((1, 1, 3, 4, 5), (2, 1, 6, 8, 5)) is None
    assert window_strides((1, 1, 3, 4, 5), (1, 1, 6, 8, 4)) is None
    assert window_strides((1, 1, 22, 30, 5), (1, 1, 45, 60, 5)) == (1, 2, 2)  # SegNet pool4: last rows 42-44
    # windows of at most WINDOW_CELLS_MAX cells (one thread writes a window), the last one included
    from gpuconv.plans.unpool import WINDOW_CELLS_MAX as most
    assert window_strides((1, 1, 1, 1, 1), (1, 1, 1, most, 1)) == (1, 1, most)
    assert window_strides((1, 1, 1, 1, 1), (1, 1, 1, most + 1, 1)) is None
    assert window_strides((1, 1, 2, 3, 1), (1, 2, 4, 3 * most // 4, 1)) == (2, 2, most // 4)
    assert window_strides((1, 1, 2, 3, 1), (1, 2, 4, 3 * most // 4 + 3, 1)) is None
    assert window_strides((1, 1, 1, 40, 1), (1, 1, 1, 78, 1)) == (1, 1, 1)      # the last window: 39 cells
    assert window_strides((1, 1, 2, 40, 1), (1, 1, 4, 78, 1)) is None           # 2 x 39 cells
    assert window_strides((1, 1, 2, 2, 1), (1, 1, 2, 2**30 + 1, 1)) is None   # test_big_tensors' scatter


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_window_strides_hold_every_window_of_2x2_stride_2_pooling(padding):
    # SAME 2x2/2 on any size, VALID on even sizes and on odd ones from 9 cells: each inferred window holds the
    # in-bounds cells of the pooling window of the same position (so pooling's argmax never falls back). VALID
    # on 5 or 7 cells gives the shapes of 3x3/3 SAME pooling too, whose tiles [0, 3), [3, ...) the plan takes.
    from gpuconv.plans.unpool import window_strides
    for size in range(2, 40):
        if padding == "VALID" and size in (5, 7):
            continue
        pooled = -(-size // 2) if padding == "SAME" else size // 2
        got = window_strides((1, 1, pooled, 1, 1), (1, 1, size, 1, 1))
        assert got is not None and got[0] == got[2] == 1, (size, got)
        for o, (start, stop) in enumerate(window_bounds(pooled, size, got[1])):
            assert set(range(2 * o, min(2 * o + 2, size))) <= set(range(start, stop)), (size, o)


# (updates shape via pooling of x, 2-D or 3-D): SegNet's 2x2/2 on even and odd sizes (VALID on odd ones leaves
# cells in no pooling window), 3x3/3, 3-D 2x2x2/2. (3x3/3 SAME on 7 cells pads one cell before: windows [-1, 2),
# [2, 5), ... are not the tiles [0, 3), [3, 6), ... the shapes give, so it takes the general passes.)
WINDOW_CASES = {
    "2d-even": ((2, 6, 8, 4), 2, "SAME"),
    "2d-odd": ((2, 7, 5, 3), 2, "SAME"),
    "2d-odd-valid": ((2, 9, 11, 3), 2, "VALID"),               # a remainder row and column: in the last windows
    "2d-k3s3": ((1, 9, 6, 2), 3, "VALID"),
    "3d-even": ((1, 4, 6, 4, 2), 2, "SAME"),
}


def pooled_argmax(x, k, padding, index_dtype=np.int64, include_batch=False):
    """argmax of k x k / k max pooling (3-D: the 2-D argmax of each depth slice pair, recomputed in flat form)."""
    if x.ndim == 4:
        return oracle(gpuconv.max_pool_with_argmax, x, k, k, padding, output_dtype=index_dtype,
                      include_batch_in_index=include_batch)[1]
    # 3-D: flat index (per batch item, or with it) of each window's maximum, found by brute force
    n, d, h, w, c = x.shape
    zd, zh, zw = -(-d // k), -(-h // k), -(-w // k)
    out = np.empty((n, zd, zh, zw, c), np.int64)
    for idx in np.ndindex(n, zd, zh, zw, c):
        b, z, p, q, ch = idx
        box = x[b, z*k:z*k + k, p*k:p*k + k, q*k:q*k + k, ch]
        dz, dh, dw = np.unravel_index(int(np.argmax(box)), box.shape)
        flat = (((z*k + dz) * h + p*k + dh) * w + q*k + dw) * c + ch
        out[idx] = flat + (b * d * h * w * c if include_batch else 0)
    return out.astype(index_dtype)


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("dtype", SCATTER_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(WINDOW_CASES))
def test_window_scatter_of_pooling_argmax(backend, monkeypatch, name, dtype, index_dtype, include_batch):
    shape, k, padding = WINDOW_CASES[name]
    a = pooled_argmax(distinct(shape, np.float32, seed=81), k, padding, index_dtype, include_batch)
    u = (small_ints(a.shape, dtype, seed=82) if dtype in INTS
         else np.random.default_rng(83).uniform(-1, 1, a.shape).astype(dtype))
    if dtype.kind == "f":
        u.reshape(-1)[:3] = [-0.0, np.nan, np.inf]                 # lands as +0.0 (0 + update), NaN, inf
    launched = scatter_kernels(monkeypatch, backend)
    got = run(backend, gpuconv.max_unpool, u, a, shape, include_batch_in_index=include_batch)
    assert launched == ["windows"]                                 # one pass, no fallback
    assert_same_bits_but_nan_payloads(got, sequential_scatter(u, a, shape, include_batch))
    if dtype.kind == "f":
        assert not np.signbit(got.reshape(-1)[int(a.reshape(-1)[0])])   # update 0 (item 0) was -0.0


def misplace(a, shape, how):
    """a copy of 2x2/2 pooling's argmax (canonical 2-D NHWC, per batch item) with one update moved out of its
    window: to the next window's first cell ('spatial', a duplicate), to another channel of its own cell
    ('channel'), or, as a with-batch index, to the same cell of the other batch item ('batch')."""
    a = a.copy()
    n, h, w, c = shape
    if how == "spatial":
        a[0, 0, 0, 1] = a[0, 0, 1, 1]
    elif how == "channel":
        a[1, 1, 1, 0] = a[1, 1, 1, 0] + 1                           # channel 0 -> 1 of the same pixel
    else:
        a[0, 1, 0, 2] = a[0, 1, 0, 2] + h * w * c                   # item 0's update at item 1's cell
    return a


@pytest.mark.parametrize("how", ["spatial", "channel", "batch"])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int16)], ids=str)
def test_window_scatter_falls_back_on_a_misplaced_update(backend, monkeypatch, dtype, how):
    shape = (2, 6, 8, 3)
    include_batch = how == "batch"
    a = misplace(pooled_argmax(distinct(shape, np.float32, seed=84), 2, "SAME", np.int64, include_batch),
                 shape, how)
    u = small_ints(a.shape, dtype, seed=85)
    launched = scatter_kernels(monkeypatch, backend)
    got = run(backend, gpuconv.max_unpool, u, a, shape, include_batch_in_index=include_batch)
    assert launched[:2] == ["windows", "count"]                    # flagged, then the general passes
    assert got.tobytes() == sequential_scatter(u, a, shape, include_batch).tobytes()


RANGE_CHECK_CASES = {           # argmax kind -> (range checks the kernel backend makes, the kernels it starts with)
    "pooled": (0, ["windows"]),               # every index in its own window, so in range: no check needed
    "misplaced": (1, ["windows", "count"]),   # the window scatter flags it; checked before the general passes
    "no windows": (1, ["count"]),             # more rows of updates than rows
}


@pytest.mark.parametrize("kind", list(RANGE_CHECK_CASES))
def test_scatter_calls_the_range_check_unless_the_window_scatter_proved_it(backend, monkeypatch, kind):
    # argmax_scatter's check_range is the API's range check (a pass over argmax and, on a GPU, a synchronisation):
    # the NumPy backend calls it first, a kernel backend only when the window scatter did not run or flagged an
    # update; what the check raises stops the call before the general passes
    from gpuconv.backend import resolve
    from gpuconv.numpy_backend import BACKEND as NUMPY
    shape = (2, 6, 8, 3)
    a = pooled_argmax(distinct(shape, np.float32, seed=93), 2, "SAME")
    if kind == "misplaced":
        a = misplace(a, shape, "spatial")
    out_shape = (2, 1) + shape[1:]
    if kind == "no windows":
        a, out_shape = a.reshape(2, 6, 2, 3) % 48, (2, 1, 4, 4, 3)      # 6 rows of updates for 4 rows
    a = a[:, None]
    v = small_ints(a.shape, np.float32, seed=94)
    want = sequential_scatter(v, a, out_shape, False)
    calls, kernels = RANGE_CHECK_CASES[kind]
    checks = []
    launched = scatter_kernels(monkeypatch, backend)
    with gpuconv.use_backend(backend):
        be = resolve({"values": to_backend(backend, v)})
        got = to_numpy(be.argmax_scatter(to_backend(backend, v), to_backend(backend, a), out_shape, False,
                                         lambda: checks.append(1)))
    assert len(checks) == calls and launched[:len(kernels)] == kernels
    assert got.tobytes() == want.tobytes()
    checks.clear()
    assert NUMPY.argmax_scatter(v, a, out_shape, False, lambda: checks.append(1)).tobytes() == want.tobytes()
    assert len(checks) == 1

    def refuse():
        raise ValueError("argmax: out of range")
    launched.clear()
    with gpuconv.use_backend(backend), pytest.raises(ValueError, match="out of range") if calls else \
            contextlib.nullcontext():
        be.argmax_scatter(to_backend(backend, v), to_backend(backend, a), out_shape, False, refuse)
    assert launched == [k for k in kernels if k == "windows"]          # nothing after the check


@pytest.mark.parametrize("bad_index", [None, 10**9, -1])
def test_gather_calls_the_range_check_only_for_a_flagged_index(backend, bad_index):
    # argmax_gather's check_range: the NumPy backend calls it first; a kernel backend reads the gather's flag and
    # calls it only when an index was out of range (that value gathers 0)
    from gpuconv.backend import resolve
    from gpuconv.numpy_backend import BACKEND as NUMPY
    shape = (2, 6, 8, 3)
    a = pooled_argmax(distinct(shape, np.float32, seed=97), 2, "SAME")[:, None]
    g = small_ints((2, 1) + shape[1:], np.float32, seed=98)
    checks = []
    assert NUMPY.argmax_gather(g, a, False, lambda: checks.append(1)).shape == a.shape and checks == [1]
    if bad_index is not None:
        a.reshape(-1)[5] = bad_index
    checks.clear()
    with gpuconv.use_backend(backend):
        be = resolve({"grad": to_backend(backend, g)})
        got = to_numpy(be.argmax_gather(to_backend(backend, g), to_backend(backend, a), False,
                                        lambda: checks.append(1)))
    assert len(checks) == (0 if bad_index is None else 1)
    ok = (a >= 0) & (a < g[0].size)
    want = np.where(ok, g.reshape(-1)[np.where(ok, a, 0) + np.arange(2).reshape(2, 1, 1, 1, 1) * g[0].size], 0)
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("include_batch", [False, True])
@pytest.mark.parametrize("index", [10**6, -1, 2**40])
def test_out_of_range_argmax_is_refused_after_the_window_scatter(backend, index, include_batch):
    # with windows, the range check runs only when the window scatter flags an update: an out-of-range index
    # is in no window, so both scatters still refuse it with the API's message; so does the gather, whose flag
    # calls the check
    x = distinct((2, 6, 8, 3), np.float32, seed=95)
    _, a = oracle(gpuconv.max_pool_with_argmax, x, 2, 2, "SAME", include_batch_in_index=include_batch)
    a.reshape(-1)[-1] = index
    limit = x.size if include_batch else x.size // 2
    u = small_ints(a.shape, np.float32, seed=96)
    with pytest.raises(ValueError, match=f"argmax: expected indices in \\[0, {limit}\\)"):
        run(backend, gpuconv.max_unpool, u, a, x.shape, include_batch_in_index=include_batch)
    with pytest.raises(ValueError, match=f"argmax: expected indices in \\[0, {limit}\\)"):
        run(backend, gpuconv.max_pool_grad_with_argmax, x, u, a, 2, 2, "SAME", include_batch_in_index=include_batch)
    with pytest.raises(ValueError, match=f"argmax: expected indices in \\[0, {limit}\\)"):
        run(backend, gpuconv.max_unpool_grad, x, a, include_batch_in_index=include_batch)


def test_window_scatter_falls_back_for_overlapping_pooling(backend, monkeypatch):
    # 3x3/2 SAME windows overlap; 8x8 -> 4x4 admits 2x2 tiles, so the window scatter runs, finds argmax in the
    # next tile, and the general passes add the duplicates
    x = small_ints((2, 8, 8, 3), np.float32, seed=86)              # ties: cells selected by two windows
    _, a = oracle(gpuconv.max_pool_with_argmax, x, 3, 2, "SAME")
    dy = small_ints(a.shape, np.float32, seed=87)
    launched = scatter_kernels(monkeypatch, backend)
    got = run(backend, gpuconv.max_pool_grad_with_argmax, x, dy, a, 3, 2, "SAME")
    assert launched[:2] == ["windows", "count"] and len(np.unique(a)) < a.size
    assert got.tobytes() == sequential_scatter(dy, a, x.shape).tobytes()


def test_max_pool_grad_with_argmax_segnet_takes_the_window_scatter(backend, monkeypatch):
    x = distinct((2, 9, 7, 4), np.float32, seed=88)
    _, a = oracle(gpuconv.max_pool_with_argmax, x, 2, 2, "SAME", include_batch_in_index=True)
    dy = np.random.default_rng(89).standard_normal(a.shape).astype(np.float32)
    launched = scatter_kernels(monkeypatch, backend)
    got = run(backend, gpuconv.max_pool_grad_with_argmax, x, dy, a, 2, 2, "SAME", include_batch_in_index=True)
    assert launched == ["windows"]
    assert got.tobytes() == oracle(gpuconv.max_pool_grad_with_argmax, x, dy, a, 2, 2, "SAME",
                                   include_batch_in_index=True).tobytes()


# ---------------------------------------------------------------------------------------------------------
# determinism: repeated calls are bit-identical
# ---------------------------------------------------------------------------------------------------------
def test_repeated_calls_are_bit_identical(backend):
    rng = np.random.default_rng(71)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    u = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    a = duplicate_heavy_argmax(u.shape, x.shape, True, np.int64, seed=72)
    calls = [
        lambda: run(backend, gpuconv.max_unpool, u, a, x.shape, include_batch_in_index=True),
        lambda: run(backend, gpuconv.max_pool_grad, x, u, u, 3, 2, "SAME"),
        lambda: run(backend, gpuconv.avg_pool_grad, x.shape, u, 3, 2, "SAME"),
        lambda: run(backend, gpuconv.avg_unpool, u, 3, 2, "SAME", x.shape),
        lambda: run(backend, gpuconv.avg_pool2d, x, 3, 2, "SAME"),
    ]
    for call in calls:
        first = call()
        for _ in range(2):
            assert call().tobytes() == first.tobytes()


# ---------------------------------------------------------------------------------------------------------
# vectorised variants (VEC channels per thread, 64/128-bit accesses): every VEC, forced and chosen, against the
# NumPy backend and bit-for-bit against VEC = 1; a misaligned view falls back to VEC = 1
# ---------------------------------------------------------------------------------------------------------
VEC_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.float16, np.float32, np.float64, np.int64))
VEC_SHAPES = {2: lambda C: (2, 5, 7, C), 3: lambda C: (1, 3, 4, 5, C)}
VEC_POOL = {2: ((3, 2), (2, 1), "SAME"), 3: ((2, 3, 2), (1, 2, 2), "SAME")}


@pytest.fixture
def launched(monkeypatch):
    """The name expressions of the pooling plans built while the test runs (any backend)."""
    names = []
    build = pool_plans._plan

    def recording(*args, **kwargs):
        plan = build(*args, **kwargs)
        names.append(plan.name_expression)
        return plan
    monkeypatch.setattr(pool_plans, "_plan", recording)
    return names


def vec_of(expression: str) -> int:
    return int(expression.rsplit(", ", 1)[1][:-1])


def lane_data(shape, dtype, seed):
    """Ties in every lane (a small value range), each dtype's extremes, and for floats NaN and -inf in some lanes:
    at the first cell of some windows (NaN wins there) and at later cells (NaN never wins there)."""
    dtype = np.dtype(dtype)
    x = small_ints(shape, dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    flat = x.reshape(-1)
    hot = rng.choice(flat.size, max(2, flat.size // 16), replace=False)
    if dtype.kind == "f":
        flat[hot[: len(hot) // 2]] = np.nan
        flat[hot[len(hot) // 2:]] = -np.inf
        x[(0,) * (x.ndim - 1)][:2] = np.nan             # first cell of the first window, lanes 0 and 1
    else:
        info = np.iinfo(dtype)
        flat[hot[: len(hot) // 2]] = info.max
        flat[hot[len(hot) // 2:]] = info.min
    return x


def vec_cases():
    for dt in VEC_DTYPES:
        for vec in pool_plans.vec_widths(dt):
            # C = VEC, 2 VEC, 3 VEC (float32: 4, 8, 12); the scalar kernel forced on C = 4
            for C in ((vec, 2 * vec, 3 * vec) if vec > 1 else (4,)):
                for nsp in (2, 3):
                    yield pytest.param(dt, vec, C, nsp, id=f"{dt}-vec{vec}-C{C}-{nsp}d")


@pytest.mark.parametrize("dtype,vec,C,nsp", list(vec_cases()))
def test_vectorised_max_pool_every_vec(kernel_backend, launched, dtype, vec, C, nsp):
    x = lane_data(VEC_SHAPES[nsp](C), dtype, seed=C + nsp)
    k, s, pad = VEC_POOL[nsp]
    with pool_plans.force_vec(vec):
        y = run(kernel_backend, MAX_POOL[nsp], x, k, s, pad)
        ym, am = run(kernel_backend, gpuconv.max_pool_with_argmax, x[:, 0] if nsp == 3 else x, k[-2:], s[-2:], pad,
                     include_batch_in_index=True)
        dy = small_ints(y.shape, dtype, seed=5)
        dx = run(kernel_backend, MAX_GRAD[nsp], x, y, dy, k, s, pad)
    assert launched and all(vec_of(e) == vec for e in launched), launched
    x2 = x[:, 0] if nsp == 3 else x
    assert_same(y, oracle(MAX_POOL[nsp], x, k, s, pad))
    want = oracle(gpuconv.max_pool_with_argmax, x2, k[-2:], s[-2:], pad, include_batch_in_index=True)
    assert_same(ym, want[0])
    assert_same(am, want[1])
    assert_same(dx, oracle(MAX_GRAD[nsp], x, y, dy, k, s, pad))


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", [np.dtype(np.int8), np.dtype(np.float16), np.dtype(np.float32),
                                   np.dtype(np.float64)], ids=str)
def test_vectorised_argmax_index_types(kernel_backend, launched, dtype, index_dtype):
    vec = pool_plans.vec_widths(dtype)[0]
    x = lane_data((2, 6, 5, 2 * vec), dtype, seed=9)
    for include_batch in (False, True):
        got = run(kernel_backend, gpuconv.max_pool_with_argmax, x, 3, 2, "SAME", output_dtype=index_dtype,
                  include_batch_in_index=include_batch)
        want = oracle(gpuconv.max_pool_with_argmax, x, 3, 2, "SAME", output_dtype=index_dtype,
                      include_batch_in_index=include_batch)
        assert_same(got[0], want[0])
        assert_same(got[1], want[1])
    assert [vec_of(e) for e in launched] == [vec, vec]          # chosen: the widest


@pytest.mark.parametrize("dtype,vec,C,nsp", [c for c in vec_cases() if c.values[0].kind == "f"])
def test_vectorised_avg_pool_every_vec(kernel_backend, launched, dtype, vec, C, nsp):
    shape = VEC_SHAPES[nsp](C)
    k, s, pad = VEC_POOL[nsp]
    x = np.random.default_rng(C).uniform(-1, 1, shape).astype(dtype)
    y_shape = oracle(AVG_POOL[nsp], x, k, s, pad).shape
    dy = np.random.default_rng(C + 1).uniform(-1, 1, y_shape).astype(dtype)
    results = {}
    for v in sorted({1, vec}):
        with pool_plans.force_vec(v):
            results[v] = (run(kernel_backend, AVG_POOL[nsp], x, k, s, pad),
                          run(kernel_backend, AVG_GRAD[nsp], shape, dy, k, s, pad),
                          run(kernel_backend, gpuconv.avg_unpool, dy, k, s, pad, shape))
    assert sorted({vec_of(e) for e in launched}) == sorted({1, vec})
    for got, want in zip(results[vec], results[1]):        # same summation order per element: same bits
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert_close(results[vec][0], oracle(AVG_POOL[nsp], x, k, s, pad))
    assert_close(results[vec][1], oracle(AVG_GRAD[nsp], shape, dy, k, s, pad))
    assert_close(results[vec][2], oracle(gpuconv.avg_unpool, dy, k, s, pad, shape))


@pytest.mark.parametrize("C", [4, 8, 12, 6, 3])
@pytest.mark.parametrize("dtype", [np.dtype(np.int8), np.dtype(np.float16), np.dtype(np.float32),
                                   np.dtype(np.float64)], ids=str)
def test_chosen_vec_is_the_widest_that_applies(kernel_backend, launched, dtype, C):
    # fresh NumPy (malloc) and CuPy allocations are 16-byte aligned, so only C decides
    x = lane_data((2, 5, 6, C), dtype, seed=C)
    assert_same(run(kernel_backend, gpuconv.max_pool2d, x, 2, 2, "SAME"), oracle(gpuconv.max_pool2d, x, 2, 2, "SAME"))
    want = next(v for v in pool_plans.vec_widths(dtype) if C % v == 0)
    assert [vec_of(e) for e in launched] == [want]


def misaligned(backend, a, elements=1):
    """A copy of `a` on `backend` whose data pointer is `elements` elements past an allocation's start."""
    if backend == "cuda":
        import cupy as xp
    else:
        xp = np
    buf = xp.empty(a.size + elements, a.dtype)
    out = buf[elements:].reshape(a.shape)
    out[...] = xp.asarray(a)
    return out


@pytest.mark.parametrize("dtype", [np.dtype(np.int8), np.dtype(np.float16), np.dtype(np.float32),
                                   np.dtype(np.float64)], ids=str)
def test_misaligned_view_falls_back_to_vec1(kernel_backend, launched, dtype):
    vec = pool_plans.vec_widths(dtype)[0]
    x = lane_data((2, 5, 6, vec), dtype, seed=3)
    xm = misaligned(kernel_backend, x)
    assert pool_plans.vector_lanes(xm) == 1
    y = run(kernel_backend, gpuconv.max_pool2d, xm, 3, 2, "SAME")
    got = run(kernel_backend, gpuconv.max_pool_with_argmax, xm, 3, 2, "SAME")
    dy = small_ints(y.shape, dtype, seed=4)
    dx = run(kernel_backend, gpuconv.max_pool_grad, x, y, misaligned(kernel_backend, dy), 3, 2, "SAME")
    assert [vec_of(e) for e in launched] == [1, 1, 1]
    assert_same(y, oracle(gpuconv.max_pool2d, x, 3, 2, "SAME"))
    want = oracle(gpuconv.max_pool_with_argmax, x, 3, 2, "SAME")
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])
    assert_same(dx, oracle(gpuconv.max_pool_grad, x, y, dy, 3, 2, "SAME"))
    if dtype.kind == "f":
        assert_same(run(kernel_backend, gpuconv.avg_pool2d, xm, 3, 2, "SAME"), run(kernel_backend, gpuconv.avg_pool2d,
                                                                                    x, 3, 2, "SAME"))
    with pool_plans.force_vec(vec), pytest.raises(ValueError, match="not aligned"):
        run(kernel_backend, gpuconv.max_pool2d, xm, 3, 2, "SAME")


@pytest.mark.emulator
def test_emulator_catches_a_misaligned_vector_load(monkeypatch):
    # were the plan's alignment test wrong, the vector __ldg would fault (on the GPU: "misaligned address")
    from gpuconv.executors.emulator import EmulatorError
    monkeypatch.setattr(pool_plans, "vector_lanes", lambda *arrays: pool_plans.MAX_VEC)
    x = misaligned("emulator", distinct((1, 4, 4, 4), np.float32))
    with pytest.raises(EmulatorError, match="misaligned"):
        run("emulator", gpuconv.max_pool2d, x, 2, 2, "VALID")


# ---------------------------------------------------------------------------------------------------------
# GPU: CuPy arrays in, CuPy arrays out, through the default ("auto") backend
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cupy_arrays_through_auto_backend():
    import cupy
    x = distinct((2, 9, 8, 4), np.float32, seed=81)
    xd = cupy.asarray(x)
    y, argmax = gpuconv.max_pool_with_argmax(xd, 3, 2, "SAME")
    assert isinstance(y, cupy.ndarray) and isinstance(argmax, cupy.ndarray)
    want_y, want_a = oracle(gpuconv.max_pool_with_argmax, x, 3, 2, "SAME")
    assert_same(y.get(), want_y)
    assert_same(argmax.get(), want_a)
    up = gpuconv.max_unpool(y, argmax, xd.shape)
    assert isinstance(up, cupy.ndarray)
    assert_same(up.get(), sequential_scatter(want_y, want_a, x.shape, False))
    big = cupy.asarray(np.random.default_rng(82).standard_normal((4, 64, 64, 32)).astype(np.float32))
    assert_close(gpuconv.avg_pool2d(big, 3, 2, "SAME").get(), oracle(gpuconv.avg_pool2d, big.get(), 3, 2, "SAME"))
