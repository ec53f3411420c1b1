"""Exact convolutions for an operand that holds inf or NaN: absent taps never multiply.

DESIGN.md section 2: a tap that reads outside x (padding), or a dgrad tap whose dy coordinate is off the stride
lattice or out of range (an inserted zero), is absent -- it takes no part in any multiplication. conv.py's
fast paths build zero-filled column blocks and multiply them by the other operand, which is exact while that
operand is finite (0 * v = 0) but not when it holds inf or NaN (0 * inf = NaN). The operand that meets those
zeros is w for fprop and dgrad and dy for wgrad; conv.py routes a problem here when that operand is not all
finite (operand_is_finite; for wgrad, dy's cells whose window reads padding: padding_outputs_finite), so
finite problems keep the fast paths bit for bit.

Here every filter tap is one GEMM per group restricted to the tap's in-bounds output box (_window.tap_slices):
    fprop  y[:, box]        += x[:, tap's input cells] @ w[tap]
    dgrad  dx[:, tap cells] += dy[:, box] @ w[tap]^T      (cells o*stride + tap*dilation - pad_before that lie
                                                           in dx: exactly the (i, o, tap) triples of the gather
                                                           rule, every stride phase at once; one tap never
                                                           reaches a dx cell twice)
    wgrad  dw[tap]          += x[:, tap's input cells]^T @ dy[:, box]
so no product ever involves padding or an inserted zero. Taps are added in (t, r, s) order, batches in order:
deterministic. Accumulation in the accumulator dtype (float32 for float16), rounded once on output. Batch
chunks bound the per-tap copies by _window.SCRATCH_BYTES.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from . import _window
from ._window import tap_slices


def operand_is_finite(a: np.ndarray) -> bool:
    """False when float array `a` holds an inf or a NaN (conv.py's routing test, Winograd's output check).

    Two integer max-reductions over a's bits, no temporary: with every exponent bit set (inf, NaN) a positive
    value's bits are the largest signed integers of the width (>= +inf's bits), a negative one's the largest
    unsigned ones (>= -inf's bits). Float reductions cost the same for float32 but NumPy's float16 max and min
    run a scalar loop: 69 ms against 0.28 ms for 6.4M float16 values on the CPU box.
    """
    if a.size == 0:
        return True
    width = a.dtype.itemsize
    pos_inf = np.array(np.inf, a.dtype).view(f"i{width}")
    neg_inf = np.array(-np.inf, a.dtype).view(f"u{width}")
    return bool(np.maximum.reduce(a.view(f"i{width}"), axis=None) < pos_inf
                and np.maximum.reduce(a.view(f"u{width}"), axis=None) < neg_inf)


def padding_outputs_finite(dy: np.ndarray, p: ConvProblem) -> bool:
    """Whether dy is finite at every output some of whose taps read padding: the slabs outside the interior
    box (_window.conv_interior), each axis's front and back. Only those dy cells meet the zero columns of
    wgrad's fast paths; a non-finite value elsewhere meets x's own cells, as in the exact sum (Winograd, whose
    tiles mix cells, then finds its output non-finite and hands back to the direct path). A 3x3 SAME layer
    reads a border of one output per side instead of all of dy; a 1x1 or VALID layer reads nothing."""
    for axis, (lo, hi) in enumerate(_window.conv_interior(p)):
        for part in (slice(0, lo), slice(hi, dy.shape[1 + axis])):
            if part.stop > part.start and not operand_is_finite(dy[(slice(None),) * (1 + axis) + (part,)]):
                return False
    return True


def _tap_boxes(p: ConvProblem):
    """Per filter tap (t, r, s) in order: (tap index, output box, input cells) or None when no output of the
    tap reads inside x. Output box: slices of (Z, P, Q); input cells: strided slices of (D, H, W)."""
    whole = (slice(None),) + tuple(slice(0, o) for o in (p.Z, p.P, p.Q))
    for j, tap in enumerate(itertools.product(range(p.T), range(p.R), range(p.S))):
        found = tap_slices(whole, p.tap_offset(tap), p.stride, (p.D, p.H, p.W))
        if found is None:
            yield j, None, None
        else:
            yield j, found[0][1:], found[1][1:]


def _batches(p: ConvProblem, acc: np.dtype):
    """Batch slices whose per-tap copies (an x box and a y box per image) stay within _window.SCRATCH_BYTES."""
    per_image = max(1, p.Z * p.P * p.Q * (p.C + p.K) * acc.itemsize * 2)
    step = max(1, _window.SCRATCH_BYTES // per_image)   # read per call: one budget, _window's
    for n0 in range(0, p.N, step):
        yield slice(n0, min(n0 + step, p.N))


def _grouped(a: np.ndarray, groups: int, acc: np.dtype) -> np.ndarray:
    """(..., G*c) -> (G, M, c) in the accumulator dtype, M = the product of the leading extents."""
    return np.ascontiguousarray(a.reshape(-1, groups, a.shape[-1] // groups).transpose(1, 0, 2), dtype=acc)


def _ungroup(res: np.ndarray, shape) -> np.ndarray:
    """(G, M, c) -> shape = (..., G*c)."""
    return res.transpose(1, 0, 2).reshape(shape)


def _taps_matrix(w: np.ndarray, p: ConvProblem, acc: np.dtype) -> np.ndarray:
    """w (T, R, S, Cg, K) -> (taps, G, Cg, Kg) in the accumulator dtype."""
    ntaps = p.T * p.R * p.S
    return np.ascontiguousarray(
        w.reshape(ntaps, p.group_c, p.groups, p.group_k).transpose(0, 2, 1, 3), dtype=acc)


def _add_tap_products(src: np.ndarray, wt: np.ndarray, dst: np.ndarray, p: ConvProblem, acc, backward: bool):
    """dst[tap's cells] += src[tap's cells] @ wt[tap] per group, tap by tap and batch chunk by batch chunk.
    fprop reads x at the tap's input cells and adds into y's output box; dgrad (backward) the other way round."""
    for j, out_box, in_cells in _tap_boxes(p):
        if out_box is None:
            continue
        src_cells, dst_cells = (out_box, in_cells) if backward else (in_cells, out_box)
        for nb in _batches(p, acc):
            target = dst[(nb,) + dst_cells]
            res = np.matmul(_grouped(src[(nb,) + src_cells], p.groups, acc), wt[j])       # (G, M, Kg or Cg)
            target += _ungroup(res, target.shape)


def conv_fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y = conv(x, w) with padding taps absent (module docstring)."""
    acc = accumulator_dtype(x.dtype)
    y = np.zeros(p.y_shape, acc)
    if y.size and x.size:
        _add_tap_products(x, _taps_matrix(w, p, acc), y, p, acc, backward=False)
    return y.astype(x.dtype, copy=False)


def conv_dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dx = the input gradient with absent taps (off the stride lattice, out of range) never multiplied."""
    acc = accumulator_dtype(dy.dtype)
    dx = np.zeros(p.x_shape, acc)
    if dx.size and dy.size:
        wt = np.ascontiguousarray(_taps_matrix(w, p, acc).transpose(0, 1, 3, 2))           # (taps, G, Kg, Cg)
        _add_tap_products(dy, wt, dx, p, acc, backward=True)
    return dx.astype(dy.dtype, copy=False)


def conv_wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw = the filter gradient with padding cells of x never multiplied by dy."""
    acc = accumulator_dtype(x.dtype)
    ntaps = p.T * p.R * p.S
    dw = np.zeros((ntaps, p.groups, p.group_c, p.group_k), acc)
    if dw.size and x.size and dy.size:
        for j, out_box, in_cells in _tap_boxes(p):
            if out_box is None:
                continue
            for nb in _batches(p, acc):
                xs = _grouped(x[(nb,) + in_cells], p.groups, acc)                         # (G, M, Cg)
                ds = _grouped(dy[(nb,) + out_box], p.groups, acc)                         # (G, M, Kg)
                dw[j] += np.matmul(xs.transpose(0, 2, 1), ds)
    out = dw.transpose(0, 2, 1, 3).reshape(p.w_shape)
    return np.ascontiguousarray(out, dtype=x.dtype)
