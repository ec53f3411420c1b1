"""float16 pooling on float32 copies or int16 keys (gpuconv/numpy_backend/_pool_float16.py): the table lookup
that widens is NumPy's own float16 -> float32 cast for every bit pattern, the keys order every float16 but NaN
and -0.0 as its value, and each op gives what pool.py gives on the float16 arrays themselves (the slow path it
replaces), bit for bit, also when a small scratch budget splits the work into pieces of one batch item and a few
channels, whose argmax indices must be mapped back to the full problem.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
import loop_reference as L
from gpuconv.geometry import pool_problem
from gpuconv.numpy_backend import BACKEND, _float16_bits, _pool_float16, _window
from gpuconv.numpy_backend import pool as P

RNG = np.random.default_rng(1616)


EVERY_FLOAT16 = np.arange(2**16, dtype=np.uint16).view(np.float16)


def test_widening_table_is_numpys_cast_for_every_bit_pattern():
    every = EVERY_FLOAT16.reshape(1, 1, 1, 2**16, 1)
    got = _pool_float16._wide(every, slice(0, 1), slice(0, 1))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), every.astype(np.float32).view(np.uint32))


def test_plus_zero_bits_are_numpys_float16_add_for_every_bit_pattern():
    """_float16_bits.plus_zero (integer ops on the bits) against NumPy's float16 v + 0: -0.0 -> +0.0, NaNs
    quieted with their payload, the other 64,513 patterns unchanged."""
    with np.errstate(all="ignore"):
        want = (EVERY_FLOAT16 + np.float16(0)).view(np.uint16)
    got = _float16_bits.plus_zero(EVERY_FLOAT16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), want)
    assert np.count_nonzero(want != EVERY_FLOAT16.view(np.uint16)) == 1 + 2 * 511   # -0.0, the signaling NaNs


def _nasty(shape) -> np.ndarray:
    """Ties, signed zeros, NaN (some with payloads), +-inf, subnormals, in float16."""
    x = (RNG.integers(-3, 3, size=shape) / 2).astype(np.float16)
    pick = RNG.random(shape)
    x[pick < 0.1] = -0.0
    x[(pick > 0.1) & (pick < 0.13)] = np.nan
    x[(pick > 0.13) & (pick < 0.15)] = np.inf
    x[(pick > 0.15) & (pick < 0.17)] = -np.inf
    x[(pick > 0.17) & (pick < 0.2)] = np.float16(2.0**-20)
    flat = x.reshape(-1).view(np.uint16)
    flat[:: 97] = 0x7e01                                   # a NaN with a payload
    return x


def _bits(a):
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


# (canonical x shape, window, stride, padding): tiled, overlapping with padding, 3-D, global (whole windows)
CASES = [((3, 1, 8, 10, 5), (1, 2, 2), (1, 2, 2), "VALID"),
         ((2, 1, 9, 7, 6), (1, 3, 3), (1, 2, 2), "SAME"),
         ((2, 4, 5, 6, 3), (2, 3, 2), (2, 1, 2), "SAME"),
         ((2, 1, 6, 7, 4), (1, 6, 7), (1, 1, 1), "VALID")]


@pytest.mark.parametrize("budget", [None, 64], ids=["one_piece", "pieces"])
@pytest.mark.parametrize("case", CASES, ids=["tiled", "overlapping", "3d", "global"])
def test_float32_pieces_match_the_float16_sweeps(monkeypatch, case, budget):
    """Every op against pool.py on the float16 arrays, bit for bit. budget 64 bytes: pieces of one item and one
    channel (a single (item, channel) plane is the smallest piece)."""
    xs, window, stride, pad = case
    p = pool_problem(xs, window, stride, pad)
    x = _nasty(xs)
    dy = (RNG.integers(-8, 9, size=p.y_shape) / 8).astype(np.float16)
    with np.errstate(all="ignore"):                     # (BACKEND's ops run so; pool.py's do not)
        want = {"max": P.max_pool(x, p), "avg": P.avg_pool(x, p), "grad": P.max_pool_grad(x, dy, p),
                "avg_grad": P.avg_pool_grad(dy, p), "unpool": P.avg_unpool(dy, p)}
        for include in (False, True):
            want[f"argmax{include}"] = P.max_pool_argmax(x, p, np.dtype(np.int32), include)
    if budget is not None:
        monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)
        assert len(_pool_float16._pieces(p, p.D * p.H * p.W)) == p.N * p.C
    got = {"max": BACKEND.max_pool(x, p), "avg": BACKEND.avg_pool(x, p), "grad": BACKEND.max_pool_grad(x, dy, p),
           "avg_grad": BACKEND.avg_pool_grad(dy, p), "unpool": BACKEND.avg_unpool(dy, p)}
    for include in (False, True):
        got[f"argmax{include}"] = BACKEND.max_pool_argmax(x, p, np.dtype(np.int32), include)
    for name, w in want.items():
        for g_, w_ in zip(got[name] if isinstance(w, tuple) else [got[name]], w if isinstance(w, tuple) else [w]):
            assert g_.dtype == w_.dtype and g_.shape == w_.shape, name
            if name == "avg":
                # Which NaN a sum of NaNs and infinities returns (sign, payload) depends on the order of the
                # additions, which pieces may change; everything else is bit for bit.
                nan = np.isnan(w_)
                np.testing.assert_array_equal(np.isnan(g_), nan, err_msg=name)
                g_, w_ = g_[~nan], w_[~nan]
            np.testing.assert_array_equal(_bits(g_), _bits(w_), err_msg=name)


def test_keys_order_every_float16_as_its_value():
    """_keys over every bit pattern but NaNs and -0.0: sorting by key sorts by value, equal keys are equal values
    (no two patterns left share a value), and _values inverts _keys; a NaN or a -0.0 anywhere gives no keys."""
    bits = np.arange(2**16, dtype=np.uint16)
    every = bits.view(np.float16)
    tame = every[~np.isnan(every) & (bits != 0x8000)]
    keys, flipped = _pool_float16._keys(tame)
    assert flipped and keys.dtype == np.int16
    by_key = tame[np.argsort(keys, kind="stable")].astype(np.float64)
    assert (np.diff(by_key) > 0).all()                                    # strictly increasing: a bijection
    np.testing.assert_array_equal(_pool_float16._values(keys.copy(), True).view(np.uint16), tame.view(np.uint16))
    positive = tame[tame.view(np.int16) >= 0]
    keys, flipped = _pool_float16._keys(positive)
    assert not flipped and np.array_equal(keys, positive.view(np.int16))
    for bad in (np.float16(np.nan), -np.float16(np.nan), np.float16(-0.0)):
        assert _pool_float16._keys(np.array([1, bad, -2], np.float16))[0] is None
    payload = np.array([0x7C01, 0xFE00], np.uint16).view(np.float16)       # NaNs just above +-inf's bits
    for v in payload:
        assert _pool_float16._keys(np.array([v, 1], np.float16))[0] is None


def _tame(shape, relu: bool) -> np.ndarray:
    """Ties, +-inf, subnormals, +0 and (unless relu) negative values in float16: no NaN, no -0.0."""
    x = (RNG.integers(-3, 4, size=shape) / 2).astype(np.float16)
    pick = RNG.random(shape)
    x[pick < 0.03] = np.inf
    x[(pick > 0.03) & (pick < 0.06)] = -np.inf
    x[(pick > 0.06) & (pick < 0.1)] = np.float16(-(2.0**-20))
    x[(pick > 0.1) & (pick < 0.13)] = np.float16(2.0**-24)
    x[x == 0] = 0                                                          # +0.0 only
    return np.maximum(x, np.float16(0)) if relu else x


@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
@pytest.mark.parametrize("budget", [None, 64], ids=["one_piece", "pieces"])
@pytest.mark.parametrize("case", CASES, ids=["tiled", "overlapping", "3d", "global"])
def test_max_pooling_on_int16_keys_matches_the_float16_sweeps(monkeypatch, case, budget, relu):
    """Without NaN and -0.0 in x, max_pool, max_pool_argmax and max_pool_grad run on int16 keys (no float32 copy
    is made) and give pool.py's float16 results bit for bit: maxima, ties (first cell wins), infinities,
    subnormals; the gradient's dy + 0 by its bits (signed zeros, NaN payloads, a signaling NaN quieted), summed
    where windows overlap (in float64 there, float32 in the sweep: the same sums for these values, whose float32
    sums are exact; which NaN a sum of NaNs gives may differ, so NaN cells are compared as NaN)."""
    xs, window, stride, pad = case
    p = pool_problem(xs, window, stride, pad)
    x = _tame(xs, relu)
    dy = _nasty(p.y_shape)
    dy.reshape(-1).view(np.uint16)[5::89] = 0x7C01                     # a signaling NaN
    with np.errstate(all="ignore"):
        want = [P.max_pool(x, p)] + [a for include in (False, True)
                                     for a in P.max_pool_argmax(x, p, np.dtype(np.int32), include)]
        want_grad = P.max_pool_grad(x, dy, p)
    if budget is not None:
        monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)

    def no_copy(*args):
        raise AssertionError("the float32 path ran")
    monkeypatch.setattr(_pool_float16, "_wide", no_copy)
    got = [BACKEND.max_pool(x, p)] + [a for include in (False, True)
                                      for a in BACKEND.max_pool_argmax(x, p, np.dtype(np.int32), include)]
    for g_, w_ in zip(got, want):
        assert g_.dtype == w_.dtype and g_.shape == w_.shape
        np.testing.assert_array_equal(_bits(g_), _bits(w_))
    grad = BACKEND.max_pool_grad(x, dy, p)
    assert grad.dtype == np.float16 and grad.shape == p.x_shape
    nan = np.isnan(want_grad)
    np.testing.assert_array_equal(np.isnan(grad), nan)
    if not P._overlapping(p):
        nan[...] = False                            # one value per cell: NaN bits are dy's (quieted) bits
    np.testing.assert_array_equal(_bits(grad[~nan]), _bits(want_grad[~nan]))


@pytest.mark.parametrize("budget", [None, 64], ids=["one_piece", "pieces"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=["tiled", "global"])
def test_spread_over_windows_that_do_not_overlap_copies_float16_bits(monkeypatch, case, budget):
    """avg_pool_grad and avg_unpool where no two windows share a cell: each window's float16 value (dy + 0 by its
    bits; dy / count in float32 + 0, rounded) copied into its cells, no float32 spread (checked): pool.py's float16
    results bit for bit for signed zeros, NaN payloads, a signaling NaN, infinities and subnormals in dy."""
    xs, window, stride, pad = case
    p = pool_problem(xs, window, stride, pad)
    dy = _nasty(p.y_shape)
    dy.reshape(-1).view(np.uint16)[3::41] = 0x7C01                     # a signaling NaN
    with np.errstate(all="ignore"):
        want = [P.avg_pool_grad(dy, p), P.avg_unpool(dy, p)]
    if budget is not None:
        monkeypatch.setattr(_window, "SCRATCH_BYTES", budget)

    def no_pieces(*args):
        raise AssertionError("the float32 spread ran")
    monkeypatch.setattr(_pool_float16, "_in_pieces", no_pieces)
    with np.errstate(all="ignore"):
        got = [BACKEND.avg_pool_grad(dy, p), BACKEND.avg_unpool(dy, p)]
    for g_, w_ in zip(got, want):
        assert g_.dtype == w_.dtype == np.float16 and g_.shape == w_.shape == p.x_shape
        np.testing.assert_array_equal(_bits(g_), _bits(w_))


def test_float16_scatter_of_distinct_cells_stores_v_plus_zero():
    """argmax_scatter's direct path (distinct cells) stores float16 v + 0 by its bits: NumPy's float16 add's
    result for every bit pattern (each pattern once, to a shuffled cell)."""
    cells = 2 * 2**16
    argmax = RNG.permutation(cells)[:2**16].astype(np.int64).reshape(1, 1, 1, -1, 1)
    with np.errstate(all="ignore"):
        want = np.zeros(cells, np.float16)
        want[argmax.reshape(-1)] = EVERY_FLOAT16 + np.float16(0)
        got = BACKEND.argmax_scatter(EVERY_FLOAT16.reshape(argmax.shape), argmax, (1, 1, 1, cells, 1), False)
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint16), want.view(np.uint16))


def test_argmax_of_channel_pieces_against_the_loop_reference(monkeypatch):
    """Indices from pieces of a few channels of one item, mapped back: the loop reference's, with the batch term
    and without, in int32 and int64."""
    x = (RNG.integers(-3, 3, size=(3, 7, 9, 6)) / 2).astype(np.float16)
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 4 * 2 * (7 * 9 + 3 * 4 * 5))   # two channels of one item
    for include in (False, True):
        for idt in ("int32", "int64"):
            want_y, want_a = L.max_pool_with_argmax(x, 3, 2, "SAME", include, np.dtype(idt))
            y, a = gc.max_pool_with_argmax(x, 3, 2, "SAME", output_dtype=idt, include_batch_in_index=include)
            np.testing.assert_array_equal(_bits(y), _bits(want_y))
            assert a.dtype == idt
            np.testing.assert_array_equal(a, want_a)


def test_empty_problems_keep_their_shapes():
    x = np.zeros((2, 1, 3, 3, 0), np.float16)
    p = pool_problem(x.shape, (1, 2, 2), (1, 2, 2), "VALID")
    assert BACKEND.max_pool(x, p).shape == p.y_shape
    y, a = BACKEND.max_pool_argmax(x, p, np.dtype(np.int64), True)
    assert y.shape == a.shape == p.y_shape
    assert BACKEND.avg_pool_grad(np.zeros(p.y_shape, np.float16), p).shape == p.x_shape
