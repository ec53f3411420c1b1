"""Stride-2 3x3 float32 convolutions (fprop, dgrad and wgrad) on the CPU: a polyphase Winograd with 25
multiplications per 2x2 output block (dgrad: per 2x2 block of dy) instead of 36.

One axis first. Outputs y0, y1 of a stride-2 3-tap correlation read five samples d0..d4:
    y0 = d0 g0 + d1 g1 + d2 g2,        y1 = d2 g0 + d3 g1 + d4 g2.
The even taps on the even samples are Winograd F(2, 2): m0 = (d0 - d2) g0, m1 = d2 (g0 + g2), m2 = (d4 - d2) g2,
y0 = m0 + m1, y1 = m1 + m2; the odd tap adds d1 g1 to m0 and d3 g1 to m2. So three components with 2, 1 and 2
terms,
    V = [(d0 - d2, d1), (d2,), (d4 - d2, d3)],   U = [(g0, g1), (g0 + g2,), (g2, g1)],   y0 = M0 + M1, y1 = M1 + M2,
5 multiplications for 2 outputs instead of 6. In 2-D the tensor product gives 9 components (i, j) of k_i * k_j
terms (k = 2, 1, 2; 25 in all), and each component is ONE GEMM, M_ij = V_ij (tiles x k_i k_j C) @ U_ij
(k_i k_j C x K): the sum over a component's terms happens inside the GEMM. The transforms are subtractions and
copies of a 5x5 input patch per block (patches of neighbouring blocks share a row or column); filter sums g0 + g2
round once. Products pair cells and taps that direct summation does not (d2 g2 inside (d4 - d2) g2), so the error
bound is the normwise one of _winograd.py, not |x| * |w| per output.

Chunks, scratch, threads, the non-finite fallback and GPUCONV_WINOGRAD are those of _winograd.py (stride 1).
Measured on the CPU box (ResNet-50 stride-2 3x3 fprop, N=8, float32, one thread, OpenBLAS Haswell kernels; direct
-> this): 56x56x128 18.7 -> 15.2 ms, 28x28x256 17.7 -> 15.5 ms, 112x112x64 21.4 -> 18.5 ms; 14x14x512 (7x7
outputs) is left direct (MAX_WORK_RATIO). wgrad is the adjoint: dU_ij = V_ij^T @ dM_ij with dM the adjoint of
the output transform on dy (per axis dM0 = dy0, dM1 = dy0 + dy1, dM2 = dy1), partial sums over chunks added in
chunk order, then each term's gradient back to its taps (56x56x128 18.6 -> 14.9 ms, 28x28x256 17.1 -> 15.3 ms).
dgrad is not fprop's adjoint (that would scatter into overlapping patches) but its own polyphase form: see
"dgrad" below (56x56x128 18.1 -> 15.7 ms, 28x28x256 17.2 -> 16.4 ms, 112x112x64 22.1 -> 19.5 ms; 14x14x512,
7x7 dy, stays direct).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..geometry import ConvProblem
from ._winograd import (LARGE_FILTER_BYTES, MIN_CHANNELS, _budget, _chunks, _filter_buffers, _finite, _region,
                        _scratch, _sum_partials, enabled, fill_until_nonfinite)

# Winograd multiplications (25 per 2x2 tile, partial tiles counted whole) at most this fraction of the direct
# ones (9 per output): even output sizes give 0.69; 7x7 (16 tiles for 49 outputs, 0.91) gains nothing.
MAX_WORK_RATIO = 0.75

# fprop and wgrad with a transformed filter (25 x C x K floats) above _winograd.LARGE_FILTER_BYTES need at least
# MIN_TILES tiles (items x 2x2 output blocks): each of the 9 GEMMs streams its part of U. Measured (CPU box, one
# thread, fprop / wgrad against direct): 512 x 512 channels N=1 8x8 outputs (16 tiles) 0.65 / 0.58 of direct's
# speed, 10x10 (25) 0.72 / 0.73, 14x14 (49) 0.91 / 0.96, 2 x 16x16 (128) 1.01 / 0.93, 8 x 14x14 (392) 1.06 /
# 1.02; 256 x 256: N=1 14x14 (49) 0.93 / 1.03, 8x8 at N=4 (64) 1.05 / 1.06, 14x14 at N=2 (98) 1.06 / 1.14. dgrad
# keeps its own condition: it gained even at N=1 8x8 with 512 channels (1.75; the direct strided dgrad is slower).
MIN_TILES = 64

# Per axis: the five terms (0a, 0b, 1, 2a, 2b) grouped into the three components (filter terms: _TERM_TAPS).
_GROUPS = ((0, 1), (2,), (3, 4))
_COMPONENT = (0, 0, 1, 2, 2)                      # term -> component
_SLOT = (0, 1, 0, 0, 1)                           # term -> position within its component
_SIZES = tuple(len(gi) * len(gj) for gi in _GROUPS for gj in _GROUPS)     # terms of the 9 components (25 in all)
_STARTS = tuple(itertools.accumulate((0,) + _SIZES[:-1]))                  # each component's first term


def _pays(p: ConvProblem, dtype: np.dtype, tiles: int) -> bool:
    """The conditions fprop, wgrad and dgrad share: a float32 ungrouped 3x3 stride-2 undilated conv (depth 1),
    enough channels, and `tiles` blocks of 25 multiplications within MAX_WORK_RATIO of the direct ones."""
    return (enabled() and np.dtype(dtype) == np.float32 and p.groups == 1
            and (p.T, p.R, p.S) == (1, 3, 3) and p.stride == (1, 2, 2) and p.dilation[1:] == (1, 1)
            and p.pad_before[0] == 0 and p.Z == p.D
            and min(p.C, p.K) >= MIN_CHANNELS and min(p.P, p.Q) >= 2
            and 25 * tiles <= MAX_WORK_RATIO * 9 * p.P * p.Q)


def applies(p: ConvProblem, dtype: np.dtype) -> bool:
    """Whether conv.py may use this path for the forward convolution (and the filter gradient) of p."""
    tiles = -(-p.P // 2) * -(-p.Q // 2)
    return (_pays(p, dtype, tiles)
            and (100 * p.C * p.K <= LARGE_FILTER_BYTES or p.N * p.Z * tiles >= MIN_TILES)
            and _chunk_bytes(1, 1, -(-p.Q // 2), p.C, p.K) <= _budget())


# Per axis, the taps each filter term sums (the terms g0, g1, g0 + g2, g2, g1), and each tap's terms (adjoint).
_TERM_TAPS = ((0,), (1,), (0, 2), (2,), (1,))
_TAP_TERMS = ((0, 2), (1, 4), (2, 3))


def _tap_sum(w: np.ndarray, rows: tuple, cols: tuple, out: np.ndarray, tmp: np.ndarray) -> None:
    """out (C, K) = the sum over s in cols of (the sum over r in rows of w[r, s]): a filter term along both axes
    of w (3, 3, C, K), each sum over two taps rounded once (rows before columns); tmp: (C, K) scratch."""
    if len(cols) == 1:
        if len(rows) == 1:
            np.copyto(out, w[rows[0], cols[0]])
        else:
            np.add(w[rows[0], cols[0]], w[rows[1], cols[0]], out=out)
    elif len(rows) == 1:
        np.add(w[rows[0], cols[0]], w[rows[0], cols[1]], out=out)
    else:
        np.add(w[rows[0], cols[0]], w[rows[1], cols[0]], out=out)
        np.add(w[rows[0], cols[1]], w[rows[1], cols[1]], out=tmp)
        np.add(out, tmp, out=out)


def _term_blocks(w: np.ndarray, terms: list) -> list:
    """Per entry (row terms, column terms) of `terms`, the (n_rows x n_cols x C, K) block of their tap sums
    (_tap_sum) in row-major term order, all in the per-thread filter buffer (no fresh arrays: see _winograd)."""
    C, K = w.shape[2:]
    flat, tmp = _filter_buffers(sum(len(a) * len(b) for a, b in terms) * C * K, C, K)
    blocks, at = [], 0
    for row_terms, col_terms in terms:
        u = flat[at:at + len(row_terms) * len(col_terms) * C * K].reshape(len(row_terms), len(col_terms), C, K)
        for x, rows in enumerate(row_terms):
            for y, cols in enumerate(col_terms):
                _tap_sum(w, rows, cols, u[x, y], tmp)
        blocks.append(u.reshape(-1, K))
        at += u.size
    return blocks


def filter_transform(w: np.ndarray) -> list:
    """The nine U_ij (k_i k_j C, K) of w (3, 3, C, K), float32, term order (row term, column term) as in V_ij."""
    return _term_blocks(w, [([_TERM_TAPS[a] for a in gi], [_TERM_TAPS[b] for b in gj])
                            for gi in _GROUPS for gj in _GROUPS])


def _chunk_bytes(nb: int, rb: int, tq: int, C: int, K: int) -> int:
    """Scratch bytes of a chunk: input region, two row differences, V (25 terms), M (9 components), row sums."""
    t = nb * rb * tq
    values = nb * (4 * rb + 1) * (4 * tq + 1) * C + 2 * nb * rb * (4 * tq + 1) * C + 25 * t * C + 15 * t * K
    return 4 * values


def _input_transform(d: np.ndarray, tq: int, V: list) -> None:
    """V[3 i + j] (nb, rb, tq, k_i k_j, C) from the padded region d (nb, 4 rb + 1, 4 tq + 1, C)."""
    nb, rows, width, C = d.shape
    rb = (rows - 1) // 4
    D = [d[:, u:u + 4 * rb:4] for u in range(5)]           # patch row u of every tile row: (nb, rb, width, C)
    diff = _scratch("rows", 2 * nb * rb * width * C).reshape(2, nb, rb, width, C)
    np.subtract(D[0], D[2], out=diff[0])
    np.subtract(D[4], D[2], out=diff[1])
    row_terms = [diff[0], D[1], D[2], diff[1], D[3]]
    for a, rv in enumerate(row_terms):
        c = [rv[:, :, u:u + 4 * tq:4] for u in range(5)]   # patch column u of every tile: (nb, rb, tq, C)
        col_terms = [None, c[1], c[2], None, c[3]]
        for b in range(5):
            i, j = _COMPONENT[a], _COMPONENT[b]
            dst = V[3 * i + j][:, :, :, _SLOT[a] * len(_GROUPS[j]) + _SLOT[b]]
            if b == 0:
                np.subtract(c[0], c[2], out=dst)
            elif b == 3:
                np.subtract(c[4], c[2], out=dst)
            else:
                np.copyto(dst, col_terms[b])


def _components(x4: np.ndarray, chunk, tq: int, pad: tuple) -> list:
    """The nine V_ij (nb, rb, tq, k_ij, C) of a chunk ((n0, n1), (i0, i1)) of items x tile rows of x4, in one
    per-thread buffer."""
    (n0, n1), (i0, i1) = chunk
    nb, rb, C = n1 - n0, i1 - i0, x4.shape[-1]
    t = nb * rb * tq
    d = _region(x4, (n0, n1), (4 * i0 - pad[0], 4 * i1 - pad[0] + 1), (-pad[1], 4 * tq - pad[1] + 1), "region")
    flat = _scratch("V", 25 * t * C)
    V = [flat[at * t * C:(at + k) * t * C].reshape(nb, rb, tq, k, C) for at, k in zip(_STARTS, _SIZES)]
    _input_transform(d, tq, V)
    return V


def _output_transform(M: np.ndarray, out: np.ndarray) -> None:
    """out (nb, rows, cols, K) from the components M (9, nb, rb, tq, K): y_i' = M_i' + M_i'+1 along each axis;
    a tile row or column sticking out of the output is cut."""
    rows, cols = out.shape[1:3]
    S = _scratch("sums", 6 * M[0].size).reshape((2, 3) + M.shape[1:])
    for i in range(2):
        for j in range(3):
            np.add(M[3 * i + j], M[3 * (i + 1) + j], out=S[i, j])
    for i in range(2):
        ri = (rows - i + 1) // 2
        for j in range(2):
            cj = (cols - j + 1) // 2
            np.add(S[i, j][:, :ri, :cj], S[i, j + 1][:, :ri, :cj], out=out[:, i::2, j::2])


def fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem, y: np.ndarray) -> bool:
    """y = conv(x, w) for an `applies` problem (5-D channels-last arrays). False (y partly written) when an
    output is not finite: compute directly instead."""
    x4 = x.reshape((p.N * p.D,) + x.shape[2:])
    out = y.reshape((p.N * p.Z,) + y.shape[2:])
    N, P, Q, K = out.shape
    C = x4.shape[-1]
    tp, tq = -(-P // 2), -(-Q // 2)
    U = filter_transform(w[0])

    def fill(chunk) -> np.ndarray:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        t = nb * rb * tq
        V = _components(x4, chunk, tq, p.pad_before[1:])
        M = _scratch("M", 9 * t * K).reshape(9, t, K)
        for c in range(9):
            np.matmul(V[c].reshape(t, _SIZES[c] * C), U[c], out=M[c])
        dst = out[n0:n1, 2 * i0:min(2 * i1, P)]
        _output_transform(M.reshape(9, nb, rb, tq, K), dst)
        return dst

    return fill_until_nonfinite(fill, _chunks(N, tp, tq, lambda nb, rb: _chunk_bytes(nb, rb, tq, C, K)))


def _filter_adjoint(du: list, C: int, K: int) -> np.ndarray:
    """dw (3, 3, C, K) from the nine dU_ij (k_i k_j C, K): each term's gradient goes back to the taps it was
    made of (per axis: g0 <- terms 0 and 2, g1 <- terms 1 and 4, g2 <- terms 2 and 3), column terms first."""
    terms = [[None] * 5 for _ in range(5)]
    for c, (gi, gj) in enumerate((gi, gj) for gi in _GROUPS for gj in _GROUPS):
        blocks = du[c].reshape(len(gi), len(gj), C, K)
        for x, a in enumerate(gi):
            for y, b in enumerate(gj):
                terms[a][b] = blocks[x, y]
    dw = np.empty((3, 3, C, K), np.float32)
    tmp = _scratch("sums", C * K).reshape(C, K)
    for r, (a0, a1) in enumerate(_TAP_TERMS):
        for s, (b0, b1) in enumerate(_TAP_TERMS):
            np.add(terms[a0][b0], terms[a0][b1], out=dw[r, s])
            np.add(terms[a1][b0], terms[a1][b1], out=tmp)
            np.add(dw[r, s], tmp, out=dw[r, s])
    return dw


def _dy_transform(e: np.ndarray, E: np.ndarray) -> None:
    """E (9, nb, rb, tq, K): the adjoint of _output_transform on the 2x2 blocks of e (nb, 2 rb, 2 tq, K): per
    axis dM0 = dy0, dM1 = dy0 + dy1, dM2 = dy1."""
    e0, e1 = e[:, 0::2], e[:, 1::2]
    s = _scratch("rows", e0.size).reshape(e0.shape)
    np.add(e0, e1, out=s)
    for i, r in enumerate((e0, s, e1)):
        c0, c1 = r[:, :, 0::2], r[:, :, 1::2]
        np.copyto(E[3 * i], c0)
        np.add(c0, c1, out=E[3 * i + 1])
        np.copyto(E[3 * i + 2], c1)


def wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem):
    """dw (1, 3, 3, C, K) of an `applies` problem, or None when not finite (compute directly instead): the
    adjoint of fprop, dU_ij = V_ij^T @ dM_ij summed over chunks in chunk order, then back to the taps."""
    x4 = x.reshape((p.N * p.D,) + x.shape[2:])
    dy4 = dy.reshape((p.N * p.Z,) + dy.shape[2:])
    N, P, Q, K = dy4.shape
    C = x4.shape[-1]
    tp, tq = -(-P // 2), -(-Q // 2)
    flat, _ = _filter_buffers(25 * C * K, C, K)
    du = [flat[at * C * K:(at + k) * C * K].reshape(k * C, K) for at, k in zip(_STARTS, _SIZES)]

    def partial(chunk, bufs: list) -> None:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        t = nb * rb * tq
        V = _components(x4, chunk, tq, p.pad_before[1:])
        E = _scratch("M", 9 * t * K).reshape(9, nb, rb, tq, K)
        _dy_transform(_region(dy4, (n0, n1), (2 * i0, 2 * i1), (0, 2 * tq), "dy"), E)
        for c in range(9):
            np.matmul(V[c].reshape(t, _SIZES[c] * C).T, E[c].reshape(t, K), out=bufs[c])

    _sum_partials(partial, _chunks(N, tp, tq, lambda nb, rb: _chunk_bytes(nb, rb, tq, C, K)), du)
    dw = _filter_adjoint(du, C, K)
    return dw[None] if _finite(dw) else None


# dgrad, the transposed stride-2 correlation. Along one axis a block of two dy samples d1 = dy[m], d2 = dy[m+1]
# (with d0 = dy[m-1]) makes four consecutive dx cells from 2m - pad_before on, alternately of the even-tap and
# the odd-tap phase:
#     e0 = d0 g2 + d1 g0,   o0 = d1 g1,   e1 = d1 g2 + d2 g0,   o1 = d2 g1.
# The even phase is F(2, 2): m0 = (d0 - d1) g2, m1 = d1 (g0 + g2), m2 = (d2 - d1) g0, e0 = m0 + m1, e1 = m1 + m2.
# So four data terms A = d0 - d1, B = d1, C = d2 - d1, D = d2 carry the products [m0], [m1, o0], [m2], [o1]:
# 5 multiplications for 4 cells instead of 6. In 2-D each of the 16 data components (a, b) is ONE GEMM,
# V_ab (tiles x K) @ U_ab (K x n_a n_b C), 25 C columns in all, and each 4x4 block of dx sums its products.
# Per data term (A, B, C, D), the taps of its filter terms along one axis: [g2], [g0 + g2, g1], [g0], [g1].
_DG_TAPS = (((2,),), ((0, 2), (1,)), ((0,),), ((1,),))
_DG_WIDTH = tuple(len(taps) for taps in _DG_TAPS)   # filter terms per data term
_DG_PRODUCT = ((0, 0), (1, 0), (1, 1), (2, 0), (3, 0))   # products m0, m1, o0, m2, o1 as (data term, slot)
_DG_CELLS = ((0, 1), (2,), (1, 3), (4,))          # block cell u (e0, o0, e1, o1) = sum of these products


def applies_dgrad(p: ConvProblem, dtype: np.dtype) -> bool:
    """Whether conv.py may use this path for the input gradient of p (pad_before 0 or 1, as SAME and VALID
    give for 3x3 stride 2)."""
    tq = -(-(p.W + p.pad_before[2]) // 4)
    return (_pays(p, dtype, -(-(p.H + p.pad_before[1]) // 4) * tq) and max(p.pad_before[1:]) <= 1
            and _dgrad_chunk_bytes(1, 1, tq, p.C, p.K) <= _budget())


def _dgrad_filter_transform(w: np.ndarray) -> list:
    """The 16 U_ab (K, n_a n_b C), columns (row slot, column slot, c): transposed views (dx = dy @ w^T; BLAS
    reads them as they are) of (n_a n_b C, K) blocks of tap sums in w's own layout (transposed copies took 1.8 ms
    per call at 256 x 256 channels, fresh arrays page-faulted: 28x28x256 dgrad, N=8, 20.6 -> 15.2 ms)."""
    return [u.T for u in _term_blocks(w, [(_DG_TAPS[a], _DG_TAPS[b]) for a in range(4) for b in range(4)])]


def _dgrad_chunk_bytes(nb: int, rb: int, tq: int, C: int, K: int) -> int:
    """Scratch bytes of a dgrad chunk: dy region, two row differences, V (16 terms), M (25 products), sums."""
    t = nb * rb * tq
    values = nb * (2 * rb + 1) * (2 * tq + 1) * K + 2 * nb * rb * (2 * tq + 1) * K + 16 * t * K + 35 * t * C
    return 4 * values


def _dgrad_input_transform(d: np.ndarray, tq: int, V: np.ndarray) -> None:
    """V (16, nb, rb, tq, K) from the zero-padded dy region d (nb, 2 rb + 1, 2 tq + 1, K)."""
    nb, rows, width, K = d.shape
    rb = (rows - 1) // 2
    D = [d[:, u:u + 2 * rb:2] for u in range(3)]                 # d0, d1, d2 of every block row
    diff = _scratch("rows", 2 * nb * rb * width * K).reshape(2, nb, rb, width, K)
    np.subtract(D[0], D[1], out=diff[0])
    np.subtract(D[2], D[1], out=diff[1])
    for a, rv in enumerate((diff[0], D[1], diff[1], D[2])):
        c = [rv[:, :, u:u + 2 * tq:2] for u in range(3)]
        np.subtract(c[0], c[1], out=V[4 * a])
        np.copyto(V[4 * a + 1], c[1])
        np.subtract(c[2], c[1], out=V[4 * a + 2])
        np.copyto(V[4 * a + 3], c[2])


def _dgrad_output_transform(M: list, dx: np.ndarray, n: tuple, b0: int, pad: tuple) -> None:
    """dx's 4x4 blocks from block row b0 on: cell (u, v) = sum of the products of _DG_CELLS[u] x _DG_CELLS[v].
    M[a][b]: (nb, rb, tq, n_a, n_b, C). Block (b, c) starts at dx (4 b - pad[0], 4 c - pad[1]); cells outside
    dx are cut."""
    nb, rb, tq = M[0][0].shape[:3]
    H, W = dx.shape[1:3]

    def product(i, j):
        (a, s), (b, t) = _DG_PRODUCT[i], _DG_PRODUCT[j]
        return M[a][b][:, :, :, s, t]

    S = _scratch("sums", 10 * nb * rb * tq * M[0][0].shape[-1]).reshape((5, 2) + M[0][0].shape[:3] + (-1,))
    cols = []                                                     # per row product i: its four column sums
    for i in range(5):
        np.add(product(i, 0), product(i, 1), out=S[i, 0])
        np.add(product(i, 1), product(i, 3), out=S[i, 1])
        cols.append((S[i, 0], product(i, 2), S[i, 1], product(i, 4)))

    def span(start: int, count: int, size: int) -> tuple:
        """(first block, blocks, first cell) of the cells start + 4 k, k < count, inside [0, size)."""
        first = 0 if start >= 0 else 1
        last = min(count, (size - 1 - start) // 4 + 1)
        return first, max(0, last - first), start + 4 * first

    for u, ru in enumerate(_DG_CELLS):
        fb, nbr, h = span(4 * b0 - pad[0] + u, rb, H)
        for v in range(4):
            fc, nbc, w = span(-pad[1] + v, tq, W)
            if nbr == 0 or nbc == 0:
                continue
            dst = dx[n[0]:n[1], h:h + 4 * (nbr - 1) + 1:4, w:w + 4 * (nbc - 1) + 1:4]
            src = [cols[i][v][:, fb:fb + nbr, fc:fc + nbc] for i in ru]
            if len(src) == 2:
                np.add(src[0], src[1], out=dst)
            else:
                np.copyto(dst, src[0])


def dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem, dx: np.ndarray) -> bool:
    """dx = the stride-2 input gradient for an `applies_dgrad` problem (5-D channels-last arrays). False (dx
    partly written) when an output is not finite: compute directly instead."""
    dy4 = dy.reshape((p.N * p.Z,) + dy.shape[2:])
    out = dx.reshape((p.N * p.D,) + dx.shape[2:])
    N, H, W, C = out.shape
    K = dy4.shape[-1]
    pad = p.pad_before[1:]
    tp, tq = -(-(H + pad[0]) // 4), -(-(W + pad[1]) // 4)
    U = _dgrad_filter_transform(w[0])

    def fill(chunk) -> np.ndarray:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        t = nb * rb * tq
        d = _region(dy4, (n0, n1), (2 * i0 - 1, 2 * i1), (-1, 2 * tq), "region")
        V = _scratch("V", 16 * t * K).reshape(16, nb, rb, tq, K)
        _dgrad_input_transform(d, tq, V)
        flat = _scratch("M", 25 * t * C)
        M, at = [[None] * 4 for _ in range(4)], 0
        for a in range(4):
            for b in range(4):
                k = _DG_WIDTH[a] * _DG_WIDTH[b]
                m = flat[at:at + t * k * C].reshape(t, k * C)
                np.matmul(V[4 * a + b].reshape(t, K), U[4 * a + b], out=m)
                M[a][b] = m.reshape(nb, rb, tq, _DG_WIDTH[a], _DG_WIDTH[b], C)
                at += t * k * C
        _dgrad_output_transform(M, out, (n0, n1), i0, pad)
        return out[n0:n1, max(0, 4 * i0 - pad[0]):max(0, min(H, 4 * i1 - pad[0]))]

    return fill_until_nonfinite(fill, _chunks(N, tp, tq, lambda nb, rb: _dgrad_chunk_bytes(nb, rb, tq, C, K)))
