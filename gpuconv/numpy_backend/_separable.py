"""Separable max selection for 2-D pooling windows that lie inside x: ResNet's 3x3/2 stem pooling and other
overlapping windows, where the tiled fast path (stride == window) does not apply.

A window's maximum is the maximum over its rows of each row's maximum over the window's columns, and the row
maxima of one input row serve every window that covers the row (R - stride of every R window rows are shared
with the next window down). Per box of interior outputs:
  stage 1: cm = each input row's maximum over the S window columns of every output column ((S - 1) np.maximum
           passes over the box's input rows), and cc = the first column s whose cell equals that maximum;
  stage 2: m = the maximum of cm over the R window rows ((R - 1) passes over the outputs), and the first window
           row r whose cm equals m.
Without a NaN (the caller checks m: pool.py's _maxima_exact) the scan rule of pool.py selects the first cell in
row-major window order whose value equals the maximum: that cell lies in the first row that holds the maximum,
and within the row it is the first column holding it, so its tap position is r * S + cc[r]. The first-equal
searches run backwards over the candidates as one-byte recurrences (D_last = 0, D_k = not_equal_k * (D_{k+1} + 1)
gives the first equal position), and the row's column code is selected by the same recurrence over differences
of the row codes (uint8 arithmetic wraps, exactly). Ops per output, 3x3/2: 6 np.maximum values and 6
comparisons instead of 8 and 9 per-tap passes plus 27 one-byte ops of pool.py's generic sweep.
"""
from __future__ import annotations

import functools

import numpy as np

from . import _window
from ._window import interior


def applies(p) -> bool:
    """Whether the separable selection serves p: windows of one plane (T == 1), at least two taps, tap positions
    in one byte (uint8 recurrences), and some output whose window lies inside x."""
    return p.T == 1 and 1 < p.R * p.S <= 255 and all(hi > lo for lo, hi in _inner(p))


@functools.lru_cache(maxsize=64)
def _inner(p) -> tuple:
    return tuple(interior(p))


def inside(p, box) -> bool:
    """Whether the output box (slices over n, z, p, q) is one of boxes()'s: windows of one plane inside x."""
    if not applies(p):
        return False
    return all(lo <= s.start and s.stop <= hi for s, (lo, hi) in zip(box[1:], _inner(p)))


def _input_rows(p, rows: int) -> int:
    return (rows - 1) * p.stride[1] + p.R


def boxes(p, itemsize: int, unit: int, budget: int):
    """Boxes of interior outputs (slices over n, z, p, q; one plane each) whose scratch fits budget: unit bytes
    per output position (the caller's) plus this module's per input row and output column (x's itemsize).
    Whole interior planes of several batch items where they fit, else rows of one item spread evenly, else
    columns of one row."""
    (z0, z1), (p0, p1), (q0, q1) = _inner(p)
    per_row = (q1 - q0) * p.C * (itemsize + 2)                  # cm, cc and comparison flags per input row

    def cost(rows: int, cols: int) -> int:
        return rows * cols * unit + _input_rows(p, rows) * per_row * cols // (q1 - q0)

    rows, cols, items = p1 - p0, q1 - q0, 1
    if cost(rows, cols) <= budget:
        items = max(1, min(p.N, budget // cost(rows, cols)))
        items = -(-p.N // -(-p.N // items))                   # items spread evenly
    else:
        fit = [r for r in range(1, rows + 1) if cost(r, cols) <= budget]
        if fit:
            rows = -(-(p1 - p0) // -(-(p1 - p0) // fit[-1]))  # the same number of boxes, rows spread evenly
        else:
            rows = 1
            cols = max(1, max((c for c in range(1, cols + 1) if cost(1, c) <= budget), default=1))
    for z in range(z0, z1):
        for n in range(0, p.N, items):
            for a in range(p0, p1, rows):
                for c in range(q0, q1, cols):
                    yield (slice(n, min(n + items, p.N)), slice(z, z + 1), slice(a, min(a + rows, p1)),
                           slice(c, min(c + cols, q1)))


def maxima(x: np.ndarray, p, box, y: np.ndarray) -> tuple:
    """y (the box's outputs, shape (nb, 1, rows, cols, C)) = the window maxima by np.maximum: exact values
    wherever no NaN and no -0.0 is involved (the caller checks). Returns the state first_taps() needs: the
    window column views of the box's input rows and their maxima cm, in this thread's buffer "pool_separable"
    (valid until the thread's next maxima() call)."""
    sh, sw = p.stride[1], p.stride[2]
    nb, _, rows, cols, C = y.shape
    d = box[1].start * p.stride[0] - p.pad_before[0]
    h0 = box[2].start * sh - p.pad_before[1]
    w0 = box[3].start * sw - p.pad_before[2]
    hin = _input_rows(p, rows)
    xb = x[box[0], d, h0:h0 + hin, w0:w0 + (cols - 1) * sw + p.S]
    span = (cols - 1) * sw + 1
    columns = [xb[:, :, s:s + span:sw] for s in range(p.S)]
    shape, out = (nb, hin, cols, C), (nb, rows, cols, C)
    cm, cc, ne, t, rel = _window.thread_buffers("pool_separable", [(shape, x.dtype), (shape, np.uint8),
                                                                   (shape, np.bool_), (out, np.uint8),
                                                                   (out, np.int32)])
    if p.S > 1:
        np.maximum(columns[0], columns[1], out=cm)
        for s in range(2, p.S):
            np.maximum(cm, columns[s], out=cm)
    else:
        cm = columns[0]
    m = y[:, 0]
    span = (rows - 1) * sh + 1
    window_rows = [cm[:, r:r + span:sh] for r in range(p.R)]
    if p.R > 1:
        np.maximum(window_rows[0], window_rows[1], out=m)
        for r in range(2, p.R):
            np.maximum(m, window_rows[r], out=m)
    else:
        np.copyto(m, window_rows[0])
    return columns, cm, window_rows, cc, ne, t, rel


def _first_equal(candidates: list, target: np.ndarray, code: np.ndarray, ne: np.ndarray) -> None:
    """code (uint8) = the position of the first candidate equal to target (the last one where none before is;
    the caller's maxima guarantee one), by D_last = 0, D_k = (candidate_k != target) * (D_{k+1} + 1)."""
    k = len(candidates)
    np.not_equal(candidates[k - 2], target, out=code.view(np.bool_))
    for j in range(k - 3, -1, -1):
        np.not_equal(candidates[j], target, out=ne)
        code += np.uint8(1)
        np.multiply(code, ne.view(np.uint8), out=code)


def _first_cells(p, state: tuple, y: np.ndarray, row: np.ndarray):
    """Each window's first cell in row-major order equal to its maximum (y: exact maxima without NaN): its
    window row into row (uint8, y's shape without the plane axis) and its window column as the returned uint8
    array (None for one-column windows: column 0)."""
    columns, cm, window_rows, cc, ne, t, _ = state
    sh = p.stride[1]
    m = y[:, 0]
    span = (m.shape[1] - 1) * sh + 1
    row_codes = None
    if p.S > 1:
        _first_equal(columns, cm, cc, ne)
        row_codes = [cc[:, r:r + span:sh] for r in range(p.R)]
    if p.R == 1:
        row[...] = 0
        return row_codes[0]
    # Backwards over the window rows: row = the first row holding m (as _first_equal), t = the differences of
    # the row codes summed up to that row, so that row_codes[0] + t is that row's column code.
    ne_rows = ne.reshape(-1)[:m.size].reshape(m.shape)
    np.not_equal(window_rows[p.R - 2], m, out=row.view(np.bool_))
    if row_codes is not None:
        np.subtract(row_codes[p.R - 1], row_codes[p.R - 2], out=t)
        np.multiply(t, row, out=t)
    for r in range(p.R - 3, -1, -1):
        np.not_equal(window_rows[r], m, out=ne_rows)
        flag = ne_rows.view(np.uint8)
        row += np.uint8(1)
        np.multiply(row, flag, out=row)
        if row_codes is not None:
            t += row_codes[r + 1]
            t -= row_codes[r]
            np.multiply(t, flag, out=t)
    if row_codes is None:
        return None
    t += row_codes[0]
    return t


def first_taps(p, state: tuple, y: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """taps (uint8, y's shape) = each window's first cell in row-major order equal to its maximum, as its tap
    position r * S + s (pool.py's _taps(p) order: every tap of an interior window is live), from maxima()'s
    state; y must hold exact maxima without NaN."""
    code = taps[:, 0]
    col = _first_cells(p, state, y, code)
    if col is not None:
        code *= np.uint8(p.S)
        code += col
    return taps


def flat_index(p, state: tuple, box, y: np.ndarray, row: np.ndarray, out: np.ndarray) -> None:
    """out (y's shape) = the flat index ((d*H + h)*W + w)*C + c within its batch item of each window's first
    cell equal to its maximum (as first_taps; row: uint8 scratch of y's shape): in int32 where the item's indices
    fit (then cast into out), from the window origins and the cell's offset row*W + column."""
    col = _first_cells(p, state, y, row[:, 0])
    dest = out[:, 0]
    work = state[-1] if out.dtype != np.int32 and p.D * p.H * p.W * p.C < 2**31 else dest
    np.copyto(work, row[:, 0], casting="unsafe")
    work *= work.dtype.type(p.W)
    if col is not None:
        np.add(work, col, out=work, casting="unsafe")
    work *= work.dtype.type(p.C)
    dt = work.dtype
    d = box[1].start * p.stride[0] - p.pad_before[0]
    hs = (np.arange(box[2].start, box[2].stop, dtype=dt) * p.stride[1] + (d * p.H - p.pad_before[1])) * (p.W * p.C)
    ws = (np.arange(box[3].start, box[3].stop, dtype=dt) * p.stride[2] - p.pad_before[2]) * p.C
    work += hs[:, None, None]
    work += ws[:, None] + np.arange(p.C, dtype=dt)
    if work is not dest:
        np.copyto(dest, work, casting="unsafe")
