"""Pooling by whole windows (gpuconv/numpy_backend/_whole_windows.py): problems with no more output positions
than window taps (global pooling, ResNet's 7x7 head, large windows with padding) reduce each group of windows at
once instead of sweeping tap by tap. Every case checks that the problem does take that path (pool._by_windows),
then compares bit for bit with tests/loop_reference.py (scalar loops: the scan rule, float64 sums), on data
that makes the rule's corner cases common: ties, NaN first and later in a window, all-NaN windows, signed
zeros. Averages use multiples of 1/8, whose float32 sums are exact, so the reference's one rounding is the
expected value.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
import loop_reference as L
from gpuconv import geometry
from gpuconv.numpy_backend import _whole_windows
from gpuconv.numpy_backend import pool as P

RNG = np.random.default_rng(2311)

# (x shape NHWC / NDHWC, ksize, strides, API padding, loop-reference padding). At least 4 taps per position.
CASES = {
    "global": ((2, 9, 11, 5), (9, 11), 1, "VALID", "VALID"),
    "head_same": ((2, 5, 6, 3), 5, 3, "SAME", "SAME"),                     # 2x2 outputs, all border
    "gaps": ((2, 10, 10, 4), 4, 6, "VALID", "VALID"),                      # stride > window
    "overlapping": ((2, 8, 8, 3), 6, 2, "VALID", "VALID"),                 # 2x2 outputs sharing cells
    "explicit": ((2, 6, 5, 3), 4, 4, [[0, 0], [1, 2], [3, 0], [0, 0]], [(1, 2), (3, 0)]),
    "many_taps": ((2, 17, 16, 3), (17, 16), 1, "VALID", "VALID"),          # 272 taps: the masked reduce
    "global_3d": ((2, 4, 5, 6, 3), (4, 5, 6), 1, "VALID", "VALID"),
    "same_3d": ((2, 5, 4, 5, 2), 4, 3, "SAME", "SAME"),
    "same_tiles": ((2, 9, 11, 3), 5, 5, "SAME", "SAME"),                   # clipped border windows, no overlap
}
# The cases whose windows share no cell: their gradients take the whole-window scatters too.
DISJOINT = {"global", "gaps", "explicit", "many_taps", "global_3d", "same_tiles"}


def _problem(case) -> geometry.PoolProblem:
    """The canonical problem of a case (2-D cases get depth 1, as in the API layer)."""
    shape, ksize, strides, _, pad_ref = CASES[case]
    nsp = len(shape) - 2
    lead = (1,) * (3 - nsp)
    padding = pad_ref if isinstance(pad_ref, str) else ((0, 0),) * (3 - nsp) + tuple(pad_ref)
    return geometry.pool_problem(shape[:1] + lead + shape[1:], lead + tuple(L._per_axis(ksize, nsp)),
                                 lead + tuple(L._per_axis(strides, nsp)), padding)


def _pool(x, op, ksize, strides, pad, **kw):
    fn = {2: {"avg": gc.avg_pool2d, "max": gc.max_pool2d},
          3: {"avg": gc.avg_pool3d, "max": gc.max_pool3d}}[x.ndim - 2][op]
    return fn(x, ksize, strides, pad, **kw)


def _nasty(shape, dtype) -> np.ndarray:
    """Ties among few values, and for floats: signed zeros, a NaN as some windows' first cell and inside
    others, one all-NaN batch item channel."""
    x = (RNG.integers(-2, 3, size=shape) / 2).astype(dtype)
    if np.dtype(dtype).kind == "f":
        x[RNG.random(shape) < 0.2] = -0.0
        flat = x.reshape(-1)
        flat[RNG.choice(flat.size, max(1, flat.size // 40), replace=False)] = np.nan
        x[(0,) * (x.ndim - 1) + (slice(None),)] = np.nan      # first cell of the first windows
        x[-1, ..., 0] = np.nan                                 # every cell of the last item, channel 0
    return x


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("case", sorted(CASES))
def test_cases_take_the_whole_window_path(case):
    """Every case reaches _whole_windows (the tests below would otherwise test the tap sweeps), max pooling
    unless the tiled fast path takes it, the average's scatters where windows do not overlap."""
    p = _problem(case)
    assert P._by_windows(p, "avg") and P._by_windows(p, "argmax")
    assert P._by_windows(p, "max") == (not P._tiled(p, values_only=True))
    assert P._by_windows(p, "max_grad")
    assert P._by_windows(p, "spread") == (case in DISJOINT)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint16, np.int64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_max_pool_argmax_and_grad_match_the_scan(case, dtype):
    shape, ksize, strides, pad, pad_ref = CASES[case]
    x = _nasty(shape, dtype)
    before = x.copy()
    want_y, want_a = L.max_pool_with_argmax(x, ksize, strides, pad_ref, True, np.dtype(np.int64))
    assert_same_bits(_pool(x, "max", ksize, strides, pad), want_y)
    if x.ndim == 4:
        for include in (False, True):
            for idt in (np.int32, np.int64):
                want = L.max_pool_with_argmax(x, ksize, strides, pad_ref, include, np.dtype(idt))[1]
                y, a = gc.max_pool_with_argmax(x, ksize, strides, pad, output_dtype=idt,
                                               include_batch_in_index=include)
                assert_same_bits(y, want_y)
                assert a.dtype == idt
                np.testing.assert_array_equal(a, want)
    if dtype in (np.float32, np.float16, np.float64):
        dy = np.where(RNG.random(want_y.shape) < 0.1, -0.0, RNG.integers(-4, 5, size=want_y.shape) / 4)
        dy = dy.astype(dtype)
        grad = gc.max_pool_grad if x.ndim == 4 else gc.max_pool3d_grad
        assert_same_bits(grad(x, want_y, dy, ksize, strides, pad), L.max_pool_grad(x, dy, ksize, strides, pad_ref))
    assert_same_bits(x, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_average_pooling_and_its_scatters(case, dtype):
    shape, ksize, strides, pad, pad_ref = CASES[case]
    x = (RNG.integers(-8, 9, size=shape) / 8).astype(dtype)
    x[RNG.random(shape) < 0.1] = -0.0
    y = _pool(x, "avg", ksize, strides, pad)
    assert_same_bits(y, L.avg_pool(x, ksize, strides, pad_ref))
    g = (RNG.integers(-8, 9, size=y.shape) / 8).astype(dtype)
    g[RNG.random(g.shape) < 0.2] = -0.0
    if case in DISJOINT:                        # (overlapping windows: several rounded quotients add up)
        grad = gc.avg_pool_grad if x.ndim == 4 else gc.avg_pool3d_grad
        assert_same_bits(grad(x.shape, g, ksize, strides, pad), L.avg_pool_grad(x.shape, g, ksize, strides, pad_ref))
        if x.ndim == 4:
            assert_same_bits(gc.avg_unpool(g, ksize, strides, pad, x.shape),
                             L.avg_unpool(g, x.shape, ksize, strides, pad_ref))


def test_more_than_65535_taps():
    """A global window of 257 x 256 cells: positions need more than 16 bits (int64 codes in the masked reduce);
    the maximum sits in the last cell, with a tie earlier in one channel to keep the first."""
    x = (RNG.integers(-3, 3, size=(1, 257, 256, 2)) / 2).astype(np.float32)
    x[0, -1, -1, :] = 9
    x[0, 3, 7, 1] = 9
    want_y, want_a = L.max_pool_with_argmax(x, (257, 256), 1, "VALID")
    y, a = gc.max_pool_with_argmax(x, (257, 256), 1, "VALID")
    np.testing.assert_array_equal(a, want_a)
    assert a.reshape(-1).tolist() == [(256 * 256 + 255) * 2, (3 * 256 + 7) * 2 + 1]
    assert_same_bits(y, want_y)


@pytest.mark.parametrize("case", ["gaps", "global"])                # (unclipped windows: all of T*R*S cells)
def test_chunks_split_batch_and_channels(monkeypatch, case):
    """A scratch budget of two windows (2 bytes per cell for the selection) splits every group into chunks of
    one batch item, one position and at most two channels, run in reverse order by a stand-in pool: the results
    are the same cells as in one chunk."""
    from gpuconv.numpy_backend import _parallel
    real = _parallel.map_chunks
    calls = []

    def reversed_pool(fn, items, parallel=True):
        items = list(items)
        calls.append(len(items))
        real(fn, items[::-1], False)

    shape, ksize, strides, pad, pad_ref = CASES[case]
    p = _problem(case)
    x = _nasty(shape, np.float32)
    want_y, want_a = L.max_pool_with_argmax(x, ksize, strides, pad_ref)
    monkeypatch.setattr(_parallel, "map_chunks", reversed_pool)
    monkeypatch.setattr(_whole_windows, "_CHUNK_BYTES", 2 * 2 * p.T * p.R * p.S)
    y, a = gc.max_pool_with_argmax(x, ksize, strides, pad)
    assert calls == [p.N * p.Z * p.P * p.Q * -(-p.C // 2)]
    assert_same_bits(y, want_y)
    np.testing.assert_array_equal(a, want_a)


def test_global_pooling_of_one_channel_over_many_cells():
    """One channel: NumPy's reductions then run along the window (its inner loop), the layout the sums'
    order and the masked reduce see least often; 2-D and 3-D global windows against the reference."""
    x = (RNG.integers(-8, 9, size=(3, 40, 30, 1)) / 8).astype(np.float32)
    assert_same_bits(gc.avg_pool2d(x, (40, 30), 1, "VALID"), L.avg_pool(x, (40, 30), 1, "VALID"))
    want_y, want_a = L.max_pool_with_argmax(x, (40, 30), 1, "VALID")
    y, a = gc.max_pool_with_argmax(x, (40, 30), 1, "VALID")
    assert_same_bits(y, want_y)
    np.testing.assert_array_equal(a, want_a)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_zero_maxima_take_the_sign_of_the_first_zero(dtype):
    """Windows without NaN whose maximum is zero, held as -0.0 and +0.0 in either order: the scan keeps the first
    (+0.0 is not greater than -0.0). NumPy's vectorised fmax returns its second operand for equal values, so
    max_pool must not take the reduction's zero. Channel c even: -0.0 first; odd: +0.0 first."""
    x = np.full((2, 6, 7, 4), -1, dtype)
    first, second = np.array([-0.0, 0.0], dtype), np.array([0.0, -0.0], dtype)
    x[:, 1, 2] = np.tile(first, 2)
    x[:, 4, 5] = np.tile(second, 2)
    want_y, want_a = L.max_pool_with_argmax(x, (6, 7), 1, "VALID")
    assert np.signbit(want_y).reshape(-1).tolist() == [True, False] * 4
    assert_same_bits(gc.max_pool2d(x, (6, 7), 1, "VALID"), want_y)
    y, a = gc.max_pool_with_argmax(x, (6, 7), 1, "VALID")
    assert_same_bits(y, want_y)
    np.testing.assert_array_equal(a, want_a)


# A signaling NaN (quiet bit clear): np.fmax lets it through where it skips quiet NaNs.
_SNAN = np.array([0x7FA00000], np.uint32).view(np.float32)[0]


@pytest.mark.parametrize("row", [[1.0, _SNAN], [1.0, 0.5, 0.25, _SNAN], [1.0, _SNAN, 0.5, 0.25],
                                 [_SNAN, 1.0, 0.5, 0.25]], ids=["last_of_2", "last_of_4", "second_of_4", "first"])
def test_signaling_nan_follows_the_scan_rule(row):
    """One window over the whole row (whole-window reductions; argmax too with 4 taps): a NaN is selected only as
    the window's first cell, signaling or quiet. The whole-window maxima were np.fmax reductions, which skip
    quiet NaNs only: [1, sNaN] gave NaN, [1, sNaN, 0.5, 0.25] gave 0.5 at index 2, [1, 0.5, 0.25, sNaN] an
    IndexError. Expected: cell 0 every time (by the rule; tests/loop_reference.py agrees on values and index)."""
    x = np.array(row, np.float32).reshape(1, 1, len(row), 1)
    window = (1, len(row))
    p = geometry.pool_problem((1, 1, 1, len(row), 1), (1,) + window, (1, 1, 1), "VALID")
    assert P._by_windows(p, "max") and (P._by_windows(p, "argmax") or len(row) < 4)
    want_y, want_a = L.max_pool_with_argmax(x, window, 1, "VALID")
    assert want_a.ravel().tolist() == [0]
    y, a = gc.max_pool_with_argmax(x, window, 1, "VALID")
    assert a.ravel().tolist() == [0]
    np.testing.assert_array_equal(y.view(np.uint32), x[..., :1, :].view(np.uint32))
    np.testing.assert_array_equal(gc.max_pool2d(x, window, 1, "VALID").view(np.uint32), y.view(np.uint32))
    dx = gc.max_pool_grad(x, y, np.ones_like(y), window, 1, "VALID")
    assert dx.ravel().tolist() == [1.0] + [0.0] * (len(row) - 1)
