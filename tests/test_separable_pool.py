"""Separable max selection (gpuconv/numpy_backend/_separable.py): the interior windows of overlapping (and other
non-tiling) 2-D pooling, whose maxima come from per-row column maxima and whose selected cell is the first window
row holding the maximum, then that row's first column holding it.

Every result is checked against tests/loop_reference.py (the scan rule, scalar loops), bit for bit for values and
exactly for indices; each test also checks that the separable path ran, so a change of the dispatch cannot make it
vacuous.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
import loop_reference as L
from conftest import count_calls
from gpuconv.geometry import pool_problem
from gpuconv.numpy_backend import _parallel, _separable, _window
from gpuconv.numpy_backend import pool as P

RNG = np.random.default_rng(3311)


@pytest.fixture
def ran(monkeypatch):
    """Counts of the separable path's calls: maxima (every interior box) and the selections."""
    return count_calls(monkeypatch, _separable, ("maxima", "first_taps", "flat_index"))


def _data(kind: str, shape) -> np.ndarray:
    """Ties (few distinct values), post-ReLU zeros, +0/-0 mixes, NaN among them, or integers."""
    small = RNG.integers(-2, 3, size=shape)
    if kind == "ties":
        return small.astype(np.float32)
    if kind == "relu":
        return np.maximum(RNG.standard_normal(shape), 0).astype(np.float32)
    if kind == "signed_zeros":
        x = np.maximum(small, 0).astype(np.float64)
        x[RNG.random(shape) < 0.5] = -0.0
        return x
    if kind == "nan":
        x = small.astype(np.float32)
        x[RNG.random(shape) < 0.05] = np.nan
        return x
    if kind == "int8":
        return small.astype(np.int8)
    raise ValueError(kind)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


# (x shape NHWC, window, strides, padding): ResNet's stem pooling shape class, stride 1, windows wider than
# tall and taller than wide, strides above the window (gaps), explicit padding, one-row and one-column windows.
GEOMETRIES = [((2, 13, 11, 3), (3, 3), (2, 2), "SAME"),
              ((2, 9, 10, 2), (3, 3), (1, 1), "VALID"),
              ((1, 10, 12, 2), (2, 4), (1, 3), "SAME"),
              ((2, 12, 9, 2), (4, 2), (3, 1), [(1, 2), (0, 1)]),
              ((1, 11, 11, 2), (2, 2), (3, 3), "VALID"),
              ((2, 9, 12, 2), (1, 3), (1, 2), "SAME"),
              ((2, 12, 9, 2), (3, 1), (2, 1), "VALID")]
KINDS = ["ties", "relu", "signed_zeros", "nan", "int8"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[1]}/{g[2]}")
def test_max_pool_argmax_and_grad_follow_the_scan(ran, geometry, kind):
    xs, window, strides, padding = geometry
    x = _data(kind, xs)
    keep = x.copy()
    want_y, want_a = L.max_pool_with_argmax(x, window, strides, padding)
    y = gc.max_pool2d(x, window, strides, padding)
    np.testing.assert_array_equal(_bits(y), _bits(want_y))
    for include, index_dtype in ((False, np.int64), (True, np.int32)):
        v, a = gc.max_pool_with_argmax(x, window, strides, padding, output_dtype=index_dtype,
                                       include_batch_in_index=include)
        _, want = L.max_pool_with_argmax(x, window, strides, padding, include_batch=include)
        np.testing.assert_array_equal(_bits(v), _bits(want_y))
        assert a.dtype == index_dtype
        np.testing.assert_array_equal(a, want)
    if x.dtype.kind == "f":
        dy = (RNG.integers(-8, 9, size=want_y.shape) / 8).astype(x.dtype)          # sums exact in float32
        dx = gc.max_pool_grad(x, want_y, dy, window, strides, padding)
        np.testing.assert_array_equal(dx, L.max_pool_grad(x, dy, window, strides, padding).astype(x.dtype))
    np.testing.assert_array_equal(_bits(x), _bits(keep))
    assert ran["maxima"]
    if kind in ("ties", "relu", "int8"):
        # NaN and -0.0 next to a zero maximum send a box to the exact scan after its separable maxima.
        assert ran["flat_index"] and (ran["first_taps"] or kind == "int8")


def test_windows_of_one_plane_in_3d(ran):
    """max_pool3d with a depth window of 1 and a depth stride of 2 (planes 0, 2, 4 of 6): one plane per box."""
    x = _data("ties", (2, 6, 9, 8, 3))
    window, strides = (1, 3, 3), (2, 2, 1)
    want_y, _ = L.max_pool_with_argmax(x, window, strides, "SAME")
    np.testing.assert_array_equal(gc.max_pool3d(x, window, strides, "SAME"), want_y)
    dy = (RNG.integers(-8, 9, size=want_y.shape) / 8).astype(np.float32)
    dx = gc.max_pool3d_grad(x, want_y, dy, window, strides, "SAME")
    np.testing.assert_array_equal(dx, L.max_pool_grad(x, dy, window, strides, "SAME").astype(np.float32))
    assert ran["maxima"] and ran["first_taps"]


@pytest.mark.parametrize("budget", [2**10, 3 * 2**9, 2**13])
def test_box_splits_and_worker_counts_change_no_bit(monkeypatch, ran, budget):
    """Small box budgets force boxes of a few rows (rows spread evenly), of a few columns of one row (2^10 and
    1.5 KiB: less than one interior row), and whole planes of several items (8 KiB); 1, 2 and 3 workers compute the
    boxes. Every variant gives the loop reference's bits."""
    monkeypatch.setattr(_window, "POOL_BOX_BYTES", budget)
    monkeypatch.setattr(P, "_PARALLEL_MIN", 0)
    x = _data("relu", (3, 15, 17, 4))
    window, strides = (3, 3), (2, 2)
    want_y, want_a = L.max_pool_with_argmax(x, window, strides, "SAME")
    dy = (RNG.integers(-8, 9, size=want_y.shape) / 8).astype(np.float32)
    want_dx = L.max_pool_grad(x, dy, window, strides, "SAME").astype(np.float32)
    p = pool_problem((3, 1, 15, 17, 4), (1,) + window, (1,) + strides, "SAME")
    assert len(list(_separable.boxes(p, 4, 4 * 4, budget))) > 1
    try:
        for workers in (1, 2, 3):
            _parallel.set_num_threads(workers)
            y, a = gc.max_pool_with_argmax(x, window, strides, "SAME")
            np.testing.assert_array_equal(_bits(y), _bits(want_y))
            np.testing.assert_array_equal(a, want_a)
            np.testing.assert_array_equal(gc.max_pool_grad(x, want_y, dy, window, strides, "SAME"), want_dx)
    finally:
        _parallel.set_num_threads(None)
    assert ran["maxima"] > 3 and ran["flat_index"] and ran["first_taps"]


def test_boxes_cover_the_interior_once():
    """boxes() tiles the interior outputs exactly: every interior position in one box, none outside."""
    p = pool_problem((3, 2, 15, 17, 4), (1, 3, 3), (2, 2, 2), "SAME")
    inner = _separable._inner(p)
    for budget in (2**9, 2**12, 2**20):
        seen = np.zeros((p.N, p.Z, p.P, p.Q), np.int64)
        for box in _separable.boxes(p, 4, 16, budget):
            assert box[1].stop - box[1].start == 1                    # one plane per box
            seen[box] += 1
        want = np.zeros_like(seen)
        want[:, slice(*inner[0]), slice(*inner[1]), slice(*inner[2])] = 1
        np.testing.assert_array_equal(seen, want)


def test_float16_keys_and_float32_copies(ran):
    """float16 pooling runs pool.py on int16 keys (no NaN, no -0.0) or on float32 copies (with them): both reach
    the separable path and give the scan's bits."""
    for with_nan in (False, True):
        x = (RNG.integers(-4, 5, size=(2, 11, 13, 3)) / 4).astype(np.float16)
        if with_nan:
            x[0, 3, 4, 1] = np.nan
        want_y, want_a = L.max_pool_with_argmax(x, (3, 3), (2, 2), "SAME")
        y, a = gc.max_pool_with_argmax(x, (3, 3), (2, 2), "SAME")
        np.testing.assert_array_equal(_bits(y), _bits(want_y))
        np.testing.assert_array_equal(a, want_a)
    assert ran["maxima"] >= 2 and ran["flat_index"] >= 1       # the NaN box (both items) is scanned exactly


def test_applies_only_to_windows_of_one_plane_with_byte_tap_positions():
    assert _separable.applies(pool_problem((1, 1, 9, 9, 1), (1, 3, 3), (1, 2, 2), "SAME"))
    assert not _separable.applies(pool_problem((1, 4, 9, 9, 1), (2, 3, 3), (1, 2, 2), "SAME"))     # two planes
    assert not _separable.applies(pool_problem((1, 1, 40, 40, 1), (1, 16, 16), (1, 1, 1), "VALID"))  # 256 taps
    assert _separable.applies(pool_problem((1, 1, 40, 40, 1), (1, 15, 17), (1, 1, 1), "VALID"))    # 255 taps
    assert not _separable.applies(pool_problem((1, 1, 2, 2, 1), (1, 3, 3), (1, 1, 1), "SAME"))    # no interior
