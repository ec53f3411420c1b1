"""NumPy-backend paths that only particular inputs reach: the exact non-finite path's chunks and groups, col2im
dgrad for float16 and groups, grouped column blocks from one region copy, Winograd's applicability, chunking and
overflow fallback, the tiled argmax fast path's padding and code widths, scatter chunking and its hand-over to the
worker pool, float16 accumulation.

A mutation audit of gpuconv/numpy_backend (2026-11-22: 298 single-point changes) found 24 wrong ones that every
other test in the default run let through (three only the slow fuzz run caught); each test here fails on one or
more of them (named in its docstring as "Mutant"). Expected values come from tests/loop_reference.py (scalar
loops in float64), a float64 reference in this file, or a hand derivation in a comment, never from the code
under test.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
import loop_reference as L
from conftest import kernel_backend_names, run_on
from gpuconv.numpy_backend import _window
from gpuconv.numpy_backend import conv as conv_module

RNG = np.random.default_rng(4242)


def eighths(shape, dtype=np.float32, lo=-8, hi=9):
    """Multiples of 1/8 in [lo/8, hi/8): sums of a few hundred products are exact in float32."""
    return (RNG.integers(lo, hi, size=shape) / 8).astype(dtype)


def sixty_fourths(shape, dtype):
    return (RNG.integers(-64, 65, size=shape) / 64).astype(dtype)


def assert_nonfinite_close(got, want, rtol=1e-5):
    """Same NaN and +-inf positions, finite values close."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    for v in (np.inf, -np.inf):
        assert np.array_equal(got == v, want == v)
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------------------------
# non-finite operands (_nonfinite.py)
# ---------------------------------------------------------------------------------------------------------
def test_nonfinite_tap_that_misses_the_input_along_one_axis_only():
    """A filter row that reads only padding (rows -3 and -1 for outputs 0 and 1: H 3, R 3, stride 2, pad (3, 0))
    while its columns are in bounds, with inf/NaN operands: the tap is skipped. Mutant: _tap_boxes skipping a
    tap only when every axis misses (`all` for `any`), whose strided input slice is then not empty while its
    output box is (a reshape error)."""
    x = eighths((1, 3, 4, 2))
    w = eighths((3, 2, 2, 3))
    w[0, 0, 1, 2] = np.inf                       # the tap that meets only padding: absent, no NaN anywhere
    w[1, 1, 0, 0] = np.nan
    pad_api, pad_ref = [[0, 0], [3, 0], [0, 0], [0, 0]], [(3, 0), (0, 0)]
    y = gc.conv2d(x, w, 2, pad_api)
    assert_nonfinite_close(y, L.conv_fprop(x, w, 2, pad_ref))
    dy = eighths(y.shape)
    dx = gc.conv2d_backprop_input(x.shape, w, dy, 2, pad_api)
    assert_nonfinite_close(dx, L.conv_backprop_input(x.shape, w, dy, 2, pad_ref))
    dy[0, 1, 1, 1] = -np.inf
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 2, pad_api)
    assert_nonfinite_close(dw, L.conv_backprop_filter(x, w.shape, dy, 2, pad_ref))


def test_nonfinite_grouped_dgrad_and_wgrad():
    """Grouped convolution (G 2, C/G 2, K/G 3) on the exact non-finite path: the filter gradient's
    (taps, G, Cg, Kg) -> (taps, Cg, G*Kg) layout and the input gradient per group. Mutant: dw reshaped without
    the transpose (groups and in-channels swapped)."""
    x = eighths((2, 5, 4, 4))
    w = eighths((3, 3, 2, 6))
    w[2, 0, 1, 4] = -np.inf
    dy = eighths((2, 3, 2, 6))
    dx = gc.conv2d_backprop_input(x.shape, w, dy, 2, "SAME")
    assert_nonfinite_close(dx, L.conv_backprop_input(x.shape, w, dy, 2, "SAME"))
    dy[1, 0, 1, 3] = np.nan
    dy[0, 2, 0, 5] = np.inf
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 2, "SAME")
    assert_nonfinite_close(dw, L.conv_backprop_filter(x, w.shape, dy, 2, "SAME"))


def test_nonfinite_batch_chunks_add_up(monkeypatch):
    """The exact path's batch chunks (one image each under a tiny scratch budget) give the unchunked results;
    the filter gradient sums over all of them. Mutant: dw[tap] assigned per chunk instead of added."""
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 1)
    x = eighths((3, 4, 5, 2))
    w = eighths((2, 3, 2, 3))
    w[1, 1, 0, 0] = np.inf
    y = gc.conv2d(x, w, 1, "SAME")
    assert_nonfinite_close(y, L.conv_fprop(x, w, 1, "SAME"))
    dy = eighths(y.shape)
    assert_nonfinite_close(gc.conv2d_backprop_input(x.shape, w, dy, 1, "SAME"),
                           L.conv_backprop_input(x.shape, w, dy, 1, "SAME"))
    dy[2, 3, 4, 1] = np.inf
    assert_nonfinite_close(gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME"),
                           L.conv_backprop_filter(x, w.shape, dy, 1, "SAME"))


# ---------------------------------------------------------------------------------------------------------
# direct convolution (conv.py)
# ---------------------------------------------------------------------------------------------------------
def test_float16_dgrad_by_col2im_rounds_once():
    """float16 input gradient where C/G is well below K/G (the GEMM + col2im form accumulates in dx itself, so
    float16 must take the gather path with a float32 accumulator): the exact sum, rounded once. Values are
    multiples of 1/64 in [-1, 1]: sums of up to 64 products need 18 bits, exact in float32 and float64 but not
    in float16, so the float64 loop reference cast to float16 is the one rounding.
    Mutant: col2im chosen for float16 too (dx summed in float16, tap by tap)."""
    w = sixty_fourths((3, 3, 2, 16), np.float16)
    dy = sixty_fourths((2, 4, 4, 16), np.float16)
    dx = gc.conv2d_backprop_input((2, 7, 7, 2), w, dy, 2, "SAME")
    assert dx.dtype == np.float16
    want = L.conv_backprop_input((2, 7, 7, 2), w.astype(np.float64), dy.astype(np.float64), 2, "SAME")
    np.testing.assert_array_equal(dx, want.astype(np.float16))


def test_dgrad_with_every_tap_off_the_input_is_zero():
    """Input gradient of a 1-row input, row stride 4, filter height 2, row padding (2, 0) (width: stride 1, no
    padding): the one output row reads rows -2 and -1 only, so dx is all zeros (no tap lands on a cell of dx;
    the stride phases that would carry taps, 2 and 3, lie beyond dx's single row). dx starts as np.empty, so
    freed non-zero buffers of its size are left around first. Mutant: phases enumerated up to the stride
    instead of min(stride, rows), which counts those phases as covered and skips zeroing dx."""
    w = eighths((2, 1, 3, 4))
    dy = eighths((2, 1, 5, 4))
    pad = [[0, 0], [2, 0], [0, 0], [0, 0]]
    for _ in range(3):
        junk = [np.full((2, 1, 5, 3), 7.0, np.float32) for _ in range(4)]
        del junk
        dx = gc.conv2d_backprop_input((2, 1, 5, 3), w, dy, [4, 1], pad)
        np.testing.assert_array_equal(dx, L.conv_backprop_input((2, 1, 5, 3), w, dy, (4, 1), [(2, 0), (0, 0)]))
        assert not dx.any()


@pytest.mark.parametrize("few", [0, 10**9], ids=["rows", "transposed"])
def test_grouped_dgrad_by_col2im(monkeypatch, few):
    """Grouped input gradient by GEMM + col2im (G 2, C/G 2 well below K/G 5), dcol in row and in transposed
    layout; with rows, tap runs are a G == 1 shortcut only. Mutant: tap runs used for G > 1 as well."""
    monkeypatch.setattr(conv_module, "_FEW_CHANNELS", few)
    w = eighths((3, 3, 2, 10))
    dy = eighths((2, 4, 3, 10))
    dx = gc.conv2d_backprop_input((2, 7, 6, 4), w, dy, 2, "SAME")
    np.testing.assert_allclose(dx, L.conv_backprop_input((2, 7, 6, 4), w, dy, 2, "SAME"), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# column blocks from a region copy (_Gather._fill_grouped: any group count; _Gather._fill_phased with several groups)
# ---------------------------------------------------------------------------------------------------------
# (x shape, w shape, strides, padding, dilations, _FEW_CHANNELS or None (the module's), the fill fprop uses)
GROUPED_COLUMNS = {
    "phased, 4 groups of 2": ((2, 6, 7, 8), (3, 3, 2, 8), 1, "SAME", 1, None, "_fill_phased"),
    "runs, 4 groups of 16": ((1, 5, 6, 64), (3, 3, 16, 8), 1, "SAME", 1, None, "_fill_grouped"),
    "runs, strided, 4 groups of 2": ((2, 7, 8, 8), (3, 3, 2, 8), 2, "SAME", 1, None, "_fill_grouped"),
    "runs, explicit pads": ((1, 11, 13, 12), (3, 2, 4, 6), [2, 1], [[0, 0], [2, 1], [0, 2], [0, 0]], 1, 3,
                            "_fill_grouped"),
    # a region larger than the columns (few outputs, wide strides): tap by tap
    "small, wide strides": ((1, 7, 9, 12), (3, 2, 4, 6), [2, 3], [[0, 0], [2, 1], [0, 2], [0, 0]], 1, 3,
                            "_fill"),
    "runs, dilated": ((2, 7, 9, 12), (3, 3, 4, 6), 1, "SAME", [1, 2], 3, "_fill_grouped"),
    "phased, dilated, stride 1": ((2, 7, 9, 12), (3, 3, 4, 6), 1, "SAME", [2, 1], None, "_fill_phased"),
    "3-D runs": ((1, 4, 5, 6, 12), (2, 3, 3, 4, 6), 1, "SAME", 1, 3, "_fill_grouped"),
    "3-D phased": ((1, 4, 5, 6, 12), (2, 3, 3, 4, 6), 1, "SAME", 1, None, "_fill_phased"),
    "float16 runs": ((2, 7, 8, 8), (3, 3, 2, 8), 2, "SAME", 1, None, "_fill_grouped"),
    # region larger than the column block (one output, dilation 6): tap by tap, rows layout
    "huge dilation": ((1, 13, 13, 12), (3, 3, 4, 6), 1, "VALID", 6, 3, "_fill"),
    # one group of >= _FEW_CHANNELS channels: the region copy too (per-tap border fills made large padded
    # filters 4x slower), and with a region larger than the block the tap runs (one tap each at dilation 6)
    "ungrouped 5x5 SAME": ((2, 7, 9, 16), (5, 5, 16, 4), 1, "SAME", 1, None, "_fill_grouped"),
    "ungrouped 3-D strided": ((1, 5, 6, 7, 16), (3, 2, 3, 16, 4), 2, "SAME", 1, None, "_fill_grouped"),
    "ungrouped huge dilation": ((1, 13, 13, 16), (3, 3, 16, 6), 1, "VALID", 6, None, "_fill"),
}


@pytest.mark.parametrize("case", GROUPED_COLUMNS.values(), ids=GROUPED_COLUMNS.keys())
def test_grouped_columns_by_region_copy(monkeypatch, case):
    """Grouped convolutions (fprop, dgrad, wgrad) whose columns come from one copy of the box's input region:
    group-major and copied by tap runs (_fill_grouped), or channel-planar and copied by whole output rows
    (_fill_phased), or, where that region would outgrow the column block, tap by tap; exact against the loop
    reference (multiples of 1/8: every sum is exact). The fill fprop's gather used is checked, so each case
    keeps reaching its path."""
    x_shape, w_shape, strides, padding, dilations, few, fill = case
    if few is not None:
        monkeypatch.setattr(conv_module, "_FEW_CHANNELS", few)
    used = []
    for name in ("_fill_grouped", "_fill_phased", "_fill"):
        original = getattr(conv_module._Gather, name)

        def spy(self, *args, _name=name, _original=original):
            used.append(_name)
            return _original(self, *args)
        monkeypatch.setattr(conv_module._Gather, name, spy)
    dtype = np.float16 if case is GROUPED_COLUMNS["float16 runs"] else np.float32
    x, w = eighths(x_shape, dtype), eighths(w_shape, dtype)
    three = len(x_shape) == 5
    fprop, dgrad, wgrad = ((gc.conv3d, gc.conv3d_backprop_input, gc.conv3d_backprop_filter) if three else
                           (gc.conv2d, gc.conv2d_backprop_input, gc.conv2d_backprop_filter))
    ref_pad = padding if isinstance(padding, str) else [tuple(p) for p in padding[1:-1]]
    y = fprop(x, w, strides, padding, dilations=dilations)
    assert fill in used and set(used) <= {fill, "_fill"}, used      # tap by tap: boxes whose region is too large
    np.testing.assert_array_equal(y, L.conv_fprop(x, w, strides, ref_pad, dilations))
    dy = eighths(y.shape, dtype)
    np.testing.assert_array_equal(dgrad(x.shape, w, dy, strides, padding, dilations=dilations),
                                  L.conv_backprop_input(x.shape, w, dy, strides, ref_pad, dilations))
    np.testing.assert_array_equal(wgrad(x, w.shape, dy, strides, padding, dilations=dilations),
                                  L.conv_backprop_filter(x, w.shape, dy, strides, ref_pad, dilations))


# ---------------------------------------------------------------------------------------------------------
# Winograd (_winograd.py)
# ---------------------------------------------------------------------------------------------------------
def _ref64(x, w, dy, pads, strides=(1, 1, 1)):
    """fprop, dgrad, wgrad of an undilated 3-D convolution in float64, by strided slices of the zero-padded
    input (x (N, D, H, W, C), w (T, R, S, C, K), pads ((before, after),) * 3; padding after may be cut by the
    stride, so the padded array is at least as long as the windows need)."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    Z, P, Q = dy.shape[1:4]
    need = [(o - 1) * s + k for o, s, k in zip((Z, P, Q), strides, w.shape[:3])]
    xp = np.pad(x, [(0, 0)] + [(b, max(a, n - b - e)) for (b, a), n, e in zip(pads, need, x.shape[1:4])]
                + [(0, 0)])
    y = np.zeros(dy.shape)
    dxp = np.zeros(xp.shape)
    dw = np.zeros(w.shape)
    for t, r, s in np.ndindex(*w.shape[:3]):
        cells = (slice(None),) + tuple(slice(k, k + (o - 1) * st + 1, st)
                                       for k, o, st in zip((t, r, s), (Z, P, Q), strides))
        y += xp[cells] @ w[t, r, s]
        dxp[cells] += dy @ w[t, r, s].T
        dw[t, r, s] = np.einsum("nzpqc,nzpqk->ck", xp[cells], dy)
    (d0, _), (h0, _), (w0, _) = pads
    D, H, W = x.shape[1:4]
    return y, dxp[:, d0:d0 + D, h0:h0 + H, w0:w0 + W], dw


def _conv3d_depth_padded_is_direct(x_shape, w_shape):
    """conv3d and both gradients with depth padding (0, 2) (rows and columns SAME-like (1, 1)) against
    float64; returns the output's shape."""
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal(w_shape).astype(np.float32)
    pads = ((0, 2), (1, 1), (1, 1))
    pad_api = [[0, 0]] + [list(p) for p in pads] + [[0, 0]]
    y = gc.conv3d(x, w, 1, pad_api)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    got = (y, gc.conv3d_backprop_input(x.shape, w, dy, 1, pad_api),
           gc.conv3d_backprop_filter(x, w.shape, dy, 1, pad_api))
    for g, r in zip(got, _ref64(x, w, dy, pads)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-3)
    return y.shape


def test_winograd_with_depth_padding():
    """A 1x3x3 conv3d with explicit depth padding (0, 2): the output has depth D + 2, so Winograd's per-plane
    tiling (which pairs input plane i with output plane i) does not apply; the result is the direct one.
    Mutant: Winograd's applicability test without its `Z == D` condition (pad_before 0 passes the other one)."""
    assert _conv3d_depth_padded_is_direct((1, 2, 6, 6, 32), (1, 3, 3, 32, 32)) == (1, 4, 6, 6, 32)


def test_winograd_overflow_to_minus_inf_only_falls_back():
    """A Winograd output that overflows to -inf alone (no +inf, no NaN in the call) is caught too. x: zeros
    but for -3e38 at (0, 0) and +3e38 at (0, 2) of channel 0, w = 0.5 everywhere, VALID on 4x4: one tile. Its
    component V00 = (d00 - d20) - (d02 - d22) = -6e38 overflows to -inf and feeds only output (0, 0), every
    other component is finite. Direct sums (by hand): y(0, 0) = 0.5 * (-3e38) + 0.5 * 3e38 = 0,
    y(0, 1) = 0.5 * 3e38 = 1.5e38, y(1, 0) = y(1, 1) = 0 (rows 1..3 are zero), for every out channel.
    Mutant: the finiteness test checks only the maximum (or only for NaN)."""
    x = np.zeros((1, 4, 4, 32), np.float32)
    x[0, 0, 0, 0], x[0, 0, 2, 0] = -3e38, 3e38
    w = np.full((3, 3, 32, 32), 0.5, np.float32)
    want = np.zeros((1, 2, 2, 32), np.float32)
    want[0, 0, 1] = 1.5e38
    np.testing.assert_array_equal(gc.conv2d(x, w, 1, "VALID"), want)
    np.testing.assert_array_equal(gc.conv2d(-x, w, 1, "VALID"), -want)      # the +inf mirror image


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_winograd_chunks_of_several_items(monkeypatch, op):
    """Winograd chunks of whole planes of two batch items out of three (a budget that fits two items' planes):
    the last chunk holds the one item left. Mutant: chunk ends not clipped to the batch."""
    from gpuconv.geometry import conv_problem
    from gpuconv.numpy_backend import _winograd
    x = RNG.standard_normal((3, 8, 8, 32)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    dy = RNG.standard_normal((3, 8, 8, 32)).astype(np.float32)
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", _winograd._chunk_bytes(2, 4, 4, 32, 32, op == "wgrad"))
    p = conv_problem((3, 1, 8, 8, 32), (1, 3, 3, 32, 32), (1, 1, 1), (1, 1, 1), "SAME")
    assert _winograd.applies(p, np.float32)
    want = _ref64(x[:, None], w[None], dy[:, None], ((0, 0), (1, 1), (1, 1)))
    got = {"fprop": lambda: gc.conv2d(x, w, 1, "SAME"),
           "dgrad": lambda: gc.conv2d_backprop_input(x.shape, w, dy, 1, "SAME"),
           "wgrad": lambda: gc.conv2d_backprop_filter(x, w.shape, dy, 1, "SAME")}[op]()
    np.testing.assert_allclose(got, want[["fprop", "dgrad", "wgrad"].index(op)][:, 0] if op != "wgrad"
                               else want[2][0], rtol=1e-4, atol=2e-3)


def test_winograd_filter_gradient_overflow_falls_back():
    """Filter gradient of values near float32's limit: B^T d B (sums of two cells) overflows, direct products
    with a small dy do not, so the call is redone directly and the result is finite and close to float64.
    Mutant: Winograd's filter gradient returned without its finiteness check."""
    big = np.float32(2.5e38)
    x = np.where(RNG.random((1, 6, 6, 32)) < 0.5, big, -big).astype(np.float32)
    dy = (RNG.standard_normal((1, 4, 4, 32)) * 1e-6).astype(np.float32)
    dw = gc.conv2d_backprop_filter(x, (3, 3, 32, 32), dy, 1, "VALID")
    assert np.isfinite(dw).all()
    want = _ref64(x[:, None], np.zeros((1, 3, 3, 32, 32)), dy[:, None], ((0, 0),) * 3)[2][0]
    scale = _ref64(np.abs(x[:, None]), np.zeros((1, 3, 3, 32, 32)), np.abs(dy[:, None]), ((0, 0),) * 3)[2][0]
    assert (np.abs(dw - want) <= 16 * np.finfo(np.float32).eps * scale).all()


def test_winograd_not_used_for_a_3x3x3_filter_with_same_depth():
    """A 3x3x3 conv3d whose depth padding (0, 2) keeps the depth (Z == D, pad_before 0): Winograd is 2-D (one
    depth tap) and must not take it. Mutant: the filter-shape test ignoring the depth extent T."""
    assert _conv3d_depth_padded_is_direct((1, 3, 6, 6, 32), (3, 3, 3, 32, 32)) == (1, 3, 6, 6, 32)


def test_stride2_winograd_dgrad_not_used_with_a_large_pad():
    """Stride-2 input gradient with explicit padding (5, 1) on the rows, on a size where the polyphase
    Winograd would pay: its block bookkeeping covers pad_before <= 1 (SAME and VALID), so this one is computed
    directly. Mutant: applies_dgrad without its pad_before condition (the output transform then writes blocks
    of the wrong extent: a shape error)."""
    from gpuconv.geometry import conv_problem
    from gpuconv.numpy_backend import _winograd_s2
    pads = ((0, 0), (5, 1), (0, 1))
    p = conv_problem((1, 1, 64, 64, 32), (1, 3, 3, 32, 32), (1, 2, 2), (1, 1, 1), list(pads))
    assert _winograd_s2._pays(p, np.float32, -(-(p.H + 5) // 4) * -(-p.W // 4))      # everything but the pad
    w = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    dy = RNG.standard_normal((1, p.P, p.Q, 32)).astype(np.float32)
    dx = gc.conv2d_backprop_input((1, 64, 64, 32), w, dy, 2, [[0, 0], [5, 1], [0, 1], [0, 0]])
    want = _ref64(np.zeros((1, 1, 64, 64, 32)), w[None], dy[:, None], pads, (1, 2, 2))[1][:, 0]
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# pooling (pool.py)
# ---------------------------------------------------------------------------------------------------------
def _ties(shape, dtype=np.float32):
    """Few distinct values: many ties, which the scan rule breaks toward the first cell."""
    return (RNG.integers(-3, 3, size=shape) / 2).astype(dtype)


def _check_argmax_pool(x, ksize, strides, pad_api, pad_ref):
    """max_pool_with_argmax and max_pool against the loop reference, both index dtypes, with and without the
    batch term."""
    for include in (False, True):
        for idt in ("int32", "int64"):
            want_y, want_a = L.max_pool_with_argmax(x, ksize, strides, pad_ref, include, np.dtype(idt))
            y, a = gc.max_pool_with_argmax(x, ksize, strides, pad_api, output_dtype=idt,
                                           include_batch_in_index=include)
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(a, want_a)
    np.testing.assert_array_equal(gc.max_pool2d(x, ksize, strides, pad_api), want_y)


def test_tiled_max_pool_with_padding_before_the_rows():
    """The tiled fast path (stride == window) with explicit padding before rows and columns: interior windows
    start at output row and column 1, and the flat indices of their maxima count from the unpadded origin.
    Mutants: the fast path's row origins without pad_before, or its box shift not relative to the interior."""
    x = _ties((2, 7, 9, 3))
    _check_argmax_pool(x, 2, 2, [[0, 0], [1, 0], [1, 0], [0, 0]], [(1, 0), (1, 0)])
    x = _ties((2, 11, 8, 2))
    _check_argmax_pool(x, 3, 3, [[0, 0], [2, 1], [1, 2], [0, 0]], [(2, 1), (1, 2)])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_fast_path_status_of_the_maxima(dtype):
    """pool._check's verdict on a box of maxima against its definition ("nan" if any NaN, else "zero" if any
    maximum compares equal to zero, else "ok"), on maxima all positive, non-negative with +0 or -0, mixed signs
    with and without zeros, all negative, and with a NaN among each. Mutants: the early answer also for
    negative least maxima, the NaN test dropped."""
    from types import SimpleNamespace
    from gpuconv.numpy_backend import pool as pool_module
    rng = np.random.default_rng(5)
    sc = SimpleNamespace(ne=np.empty(64, bool), cut=pool_module._FastScratch.cut)
    base = (rng.random((4, 16)) + 0.5).astype(dtype)
    cases = [base, -base]
    for zero in (0.0, -0.0):
        for sign in (1, -1):
            m = (base * np.where(rng.random(base.shape) < 0.5, sign, 1)).astype(dtype)
            cases.append(m.copy())
            m[2, 3] = zero
            cases.append(m)
    cases += [np.where(np.arange(64).reshape(4, 16) == 9, np.nan, c).astype(dtype) for c in list(cases)]
    for m in cases:
        want = "nan" if np.isnan(m).any() else "zero" if (m == 0).any() else "ok"
        assert pool_module._check(m, sc) == want, m


@pytest.mark.parametrize("xs, k", [((1, 2, 255, 2), 2),      # 2x2: last tap offset (W + 1) = 256 channels
                                   ((1, 3, 127, 2), 3),      # 3x3: 2 W + 2 = 256
                                   ((1, 2, 255, 256), 2)])   # (W + 1) * C = 2^16 values
def test_tiled_argmax_tap_offsets_at_the_code_dtype_limits(xs, k):
    """The fast path's tap offsets where the largest one is exactly 2^8 (in units of C) or 2^16 (values): one
    past what uint8 / uint16 hold, so wider codes are needed. The maximum is put in the window's last tap
    (offset = the largest), elsewhere random ties. Mutants: the dtype limits tested with <= instead of <, or the
    largest offset computed one too small."""
    x = _ties(xs)
    x[:, k - 1::k, k - 1::k, :] = 5                      # every window's last cell (row-major) holds its maximum
    _check_argmax_pool(x, k, k, "VALID", "VALID")


def test_float16_overlapping_scatters_round_once():
    """float16 scatters with overlapping windows (3x3 stride 1: up to 9 windows add into one cell) sum in
    float32 and round once. Values are multiples of 1/1024 in [-1, 1] (exact in float16); sums of 9 need 14
    bits, exact in float32 but not in float16, so the loop reference (float64 sums, one cast) is exact.
    Mutants: no float32 accumulator for float16 (every add rounded to float16), or one in x's dtype."""
    upd = (RNG.integers(-1024, 1025, size=(2, 6, 7, 3)) / 1024).astype(np.float16)
    out = gc.avg_unpool(upd, 3, 1, "SAME", (2, 6, 7, 3))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, L.avg_unpool(upd, (2, 6, 7, 3), 3, 1, "SAME"))
    # max_pool_grad: one peak in every 3x3 window (rows and columns 1, 4, ...), selected by up to 9 windows;
    # positive dy in [1/2, 1], so those sums reach [4, 9] where float16's spacing is 1/256 .. 1/128.
    x = np.zeros((2, 6, 7, 3), np.float16)
    x[:, 1::3, 1::3] = 1
    dy = (RNG.integers(512, 1025, size=(2, 6, 7, 3)) / 1024).astype(np.float16)
    dx = gc.max_pool_grad(x, gc.max_pool2d(x, 3, 1, "SAME"), dy, 3, 1, "SAME")
    assert dx.dtype == np.float16
    np.testing.assert_array_equal(dx, L.max_pool_grad(x, dy, 3, 1, "SAME"))


@pytest.mark.parametrize("include", [False, True])
def test_argmax_scatter_in_chunks_of_several_items(monkeypatch, include):
    """max_unpool / max_unpool_grad with a scratch budget that groups two batch items per chunk (five items:
    chunks from items 0, 2, 4), each item's indices offset within its chunk's slab. Mutant: the offsets taken
    from the absolute item number (items 2 and 3 shifted by two more items)."""
    x = _ties((5, 4, 6, 2), np.float64)
    v, a = gc.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=include)
    per_item_out, per_item_idx = 4 * 6 * 2, a[0].size
    monkeypatch.setattr(_window, "SCRATCH_BYTES", 2 * (per_item_out + 8 * per_item_idx))
    upd = RNG.standard_normal(v.shape)
    out = gc.max_unpool(upd, a, x.shape, include_batch_in_index=include)
    np.testing.assert_allclose(out, L.max_unpool(upd, a, x.shape, include), rtol=1e-12)
    g = RNG.standard_normal(x.shape)
    np.testing.assert_array_equal(gc.max_unpool_grad(g, a, include_batch_in_index=include),
                                  L.max_unpool_grad(g, a, include))


def test_scatter_chunks_that_share_cells_are_not_handed_to_the_pool(monkeypatch):
    """Index chunks that may add into the same output cells (include_batch: absolute indices) run in order on
    the calling thread; only chunks with disjoint outputs may go to the worker pool, where any order gives the
    same result. A stand-in pool that runs its chunks in reverse order makes a wrong hand-over visible: three
    one-value chunks 1, 1e16, -1e16 into one cell give (1 + 1e16) - 1e16 = 0 in order, 1 reversed.
    Mutant: every chunk list handed to the pool (`disjoint` ignored)."""
    from gpuconv.numpy_backend import _parallel
    from gpuconv.numpy_backend import pool as P
    real = _parallel.map_chunks

    def reversed_pool(fn, items, parallel=True):
        items = list(items)
        real(fn, items[::-1] if parallel else items, False)

    monkeypatch.setattr(_parallel, "map_chunks", reversed_pool)
    monkeypatch.setattr(P, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(P, "_SCATTER_CHUNK", 1)
    vals = np.array([1.0, 1e16, -1e16]).reshape(1, 1, 1, 3, 1)
    am = np.zeros((1, 1, 1, 3, 1), np.int64)
    out = P.argmax_scatter(vals, am, (1, 1, 1, 2, 1), True)
    assert out.reshape(-1).tolist() == [0.0, 0.0]


def test_avg_pool_divides_once():
    """avg_pool = (exact sum) / count with one rounding: values are multiples of 1/8, so float32 window sums are
    exact and the float64 loop reference cast to float32 is the correctly rounded quotient (3x3 SAME windows
    hold 4, 6 or 9 cells). Mutant: multiplying by a rounded 1/count instead of dividing."""
    x = eighths((2, 7, 8, 5))
    np.testing.assert_array_equal(gc.avg_pool2d(x, 3, 1, "SAME"), L.avg_pool(x, 3, 1, "SAME"))
    x = x.astype(np.float64)
    np.testing.assert_array_equal(gc.avg_pool2d(x, 3, 1, "SAME"), L.avg_pool(x, 3, 1, "SAME"))


def test_int8_max_pool_with_257_taps(monkeypatch):
    """An int8 window of 257 taps: tap numbers 0..256 need 16 bits while the values' masks are 8 bits wide.
    The maximum sits in the last cell, tap 256. Mutant: the tap-number width sized for one tap fewer (uint8,
    where 256 does not fit)."""
    from gpuconv.numpy_backend import pool as pool_module
    monkeypatch.setattr(pool_module, "_by_windows", lambda p, op: False)    # tap sweeps, not whole windows
    x = RNG.integers(-5, 5, size=(2, 1, 260, 2)).astype(np.int8)
    x[:, 0, 256] = 100
    y = gc.max_pool2d(x, (1, 257), 1, "VALID")
    np.testing.assert_array_equal(y, L.max_pool(x, (1, 257), 1, "VALID"))
    dy = RNG.integers(-3, 4, size=y.shape).astype(np.int8)
    np.testing.assert_array_equal(gc.max_pool_grad(x, y, dy, (1, 257), 1, "VALID"),
                                  L.max_pool_grad(x, dy, (1, 257), 1, "VALID"))
    v, a = gc.max_pool_with_argmax(x, (1, 257), 1, "VALID")
    np.testing.assert_array_equal(a, L.max_pool_with_argmax(x, (1, 257), 1, "VALID")[1])


@pytest.mark.parametrize("backend", ["numpy"] + kernel_backend_names())
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ksize, strides", [(2, 2), (3, 1)], ids=["disjoint", "overlapping"])
def test_scattered_negative_zero_arrives_as_positive_zero(backend, dtype, ksize, strides):
    """A -0.0 gradient or update that reaches a cell alone comes out as +0.0 from every scatter, on every
    backend, as from TF's CPU kernels, which add into zeros (TF 2.21: MaxPoolGrad, MaxPoolGradWithArgmax and
    AvgPoolGrad of an all -0.0 grad have no sign bit set, 2x2/2 VALID), and as from overlapping windows and
    the kernels' accumulators. Before, the NumPy backend assigned where windows do not overlap and kept -0.0."""
    x = np.arange(2 * 6 * 6 * 3, dtype=dtype).reshape(2, 6, 6, 3)
    y, am = gc.max_pool_with_argmax(x, ksize, strides, "VALID")
    neg = np.full(y.shape, -0.0, dtype)
    outs = {"max_pool_grad": run_on(backend, gc.max_pool_grad, x, y, neg, ksize, strides, "VALID"),
            "max_pool_grad_with_argmax": run_on(backend, gc.max_pool_grad_with_argmax, x, neg, am, ksize,
                                                strides, "VALID"),
            "avg_pool_grad": run_on(backend, gc.avg_pool_grad, x.shape, neg, ksize, strides, "VALID"),
            "avg_unpool": run_on(backend, gc.avg_unpool, neg, ksize, strides, "VALID", x.shape),
            "max_unpool": run_on(backend, gc.max_unpool, neg, am, x.shape)}
    for name, out in outs.items():
        assert out.dtype == dtype and not out.any(), name
        assert not np.signbit(out).any(), name
