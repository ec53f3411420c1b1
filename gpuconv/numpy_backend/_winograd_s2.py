"""Stride-2 3x3 float32 convolutions (fprop and wgrad) on the CPU: a polyphase Winograd with 25 multiplications
per 2x2 output block instead of 36.

One axis first. Outputs y0, y1 of a stride-2 3-tap correlation read five samples d0..d4:
    y0 = d0 g0 + d1 g1 + d2 g2,        y1 = d2 g0 + d3 g1 + d4 g2.
The even taps on the even samples are Winograd F(2, 2): m0 = (d0 - d2) g0, m1 = d2 (g0 + g2), m2 = (d4 - d2) g2,
y0 = m0 + m1, y1 = m1 + m2; the odd tap adds d1 g1 to m0 and d3 g1 to m2. So three components with 2, 1 and 2
terms,
    V = [(d0 - d2, d1), (d2,), (d4 - d2, d3)],   U = [(g0, g1), (g0 + g2,), (g2, g1)],   y0 = M0 + M1, y1 = M1 + M2,
5 multiplications for 2 outputs instead of 6. In 2-D the tensor product gives 9 components (i, j) of k_i * k_j
terms (k = 2, 1, 2; 25 in all), and each component is ONE GEMM, M_ij = V_ij (tiles x k_i k_j C) @ U_ij
(k_i k_j C x K): the sum over a component's terms happens inside the GEMM. The transforms are subtractions and
copies of a 5x5 input patch per block (patches of neighbouring blocks share a row or column), exact in binary, so
the result stays within a few float32 ulps of |x| * |w| like direct summation; filter sums g0 + g2 round once.

Chunks, scratch, threads, the non-finite fallback and GPUCONV_WINOGRAD are those of _winograd.py (stride 1).
Measured on the CPU box (ResNet-50 stride-2 3x3 fprop, N=8, float32, one thread, OpenBLAS Haswell kernels; direct
-> this): 56x56x128 18.7 -> 15.2 ms, 28x28x256 17.7 -> 15.5 ms, 112x112x64 21.4 -> 18.5 ms; 14x14x512 (7x7
outputs) is left direct (MAX_WORK_RATIO). wgrad is the adjoint: dU_ij = V_ij^T @ dM_ij with dM the adjoint of
the output transform on dy (per axis dM0 = dy0, dM1 = dy0 + dy1, dM2 = dy1), partial sums over chunks added in
chunk order, then each term's gradient back to its taps (56x56x128 18.6 -> 14.9 ms, 28x28x256 17.1 -> 15.3 ms).
dgrad of stride-2 layers stays direct (its adjoint scatters into overlapping patches).
"""
from __future__ import annotations

import numpy as np

from ..geometry import ConvProblem
from . import _parallel
from ._winograd import (MIN_CHANNELS, _budget, _chunks, _finite, _region, _scratch, enabled,
                        fill_until_nonfinite)

# Winograd multiplications (25 per 2x2 tile, partial tiles counted whole) at most this fraction of the direct
# ones (9 per output): even output sizes give 0.69; 7x7 (16 tiles for 49 outputs, 0.91) gains nothing.
MAX_WORK_RATIO = 0.75

# Per axis: the five terms (0a, 0b, 1, 2a, 2b) grouped into the three components (filter terms: _terms).
_GROUPS = ((0, 1), (2,), (3, 4))
_COMPONENT = (0, 0, 1, 2, 2)                      # term -> component
_SLOT = (0, 1, 0, 0, 1)                           # term -> position within its component
_SIZES = tuple(len(gi) * len(gj) for gi in _GROUPS for gj in _GROUPS)     # terms of the 9 components (25 in all)


def applies(p: ConvProblem, dtype: np.dtype) -> bool:
    """Whether conv.py may use this path for the forward convolution of p."""
    tiles = -(-p.P // 2) * -(-p.Q // 2)
    return (enabled() and np.dtype(dtype) == np.float32 and p.groups == 1
            and (p.T, p.R, p.S) == (1, 3, 3) and p.stride == (1, 2, 2) and p.dilation[1:] == (1, 1)
            and p.pad_before[0] == 0 and p.Z == p.D
            and min(p.C, p.K) >= MIN_CHANNELS and min(p.P, p.Q) >= 2
            and 25 * tiles <= MAX_WORK_RATIO * 9 * p.P * p.Q
            and _chunk_bytes(1, 1, -(-p.Q // 2), p.C, p.K) <= _budget())


def _terms(a):
    """The five filter terms along axis 0 of a (3, ...): g0, g1, g0 + g2, g2, g1."""
    return [a[0], a[1], a[0] + a[2], a[2], a[1]]


def filter_transform(w: np.ndarray) -> list:
    """The nine U_ij (k_i k_j C, K), float32, term order (row term, column term) as in V_ij."""
    w = np.asarray(w, np.float32)
    K = w.shape[-1]
    t = [_terms(r) for r in _terms(w)]            # t[a][b]: (C, K)
    return [np.stack([t[a][b] for a in gi for b in gj]).reshape(-1, K) for gi in _GROUPS for gj in _GROUPS]


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
    V, at = [], 0
    for k in _SIZES:
        V.append(flat[at:at + k * t * C].reshape(nb, rb, tq, k, C))
        at += k * t * C
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
    made of (per axis: g0 <- terms 0 and 2, g1 <- terms 1 and 4, g2 <- terms 2 and 3)."""
    terms = [[None] * 5 for _ in range(5)]
    for c, (gi, gj) in enumerate((gi, gj) for gi in _GROUPS for gj in _GROUPS):
        blocks = du[c].reshape(len(gi), len(gj), C, K)
        for x, a in enumerate(gi):
            for y, b in enumerate(gj):
                terms[a][b] = blocks[x, y]

    def back(t):            # the adjoint of _terms along one axis: five terms -> three taps
        return [t[0] + t[2], t[1] + t[4], t[2] + t[3]]

    cols = [back(row) for row in terms]                     # 5 row terms x 3 column taps
    return np.stack([np.stack(r) for r in back([np.stack(c) for c in cols])])


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
    du = [np.zeros((k * C, K), np.float32) for k in _SIZES]

    def partial(chunk, bufs: list) -> None:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        t = nb * rb * tq
        V = _components(x4, chunk, tq, p.pad_before[1:])
        E = _scratch("M", 9 * t * K).reshape(9, nb, rb, tq, K)
        _dy_transform(_region(dy4, (n0, n1), (2 * i0, 2 * i1), (0, 2 * tq), "dy"), E)
        for c in range(9):
            np.matmul(V[c].reshape(t, _SIZES[c] * C).T, E[c].reshape(t, K), out=bufs[c])

    chunks = _chunks(N, tp, tq, lambda nb, rb: _chunk_bytes(nb, rb, tq, C, K))
    _parallel.sum_in_order(partial, chunks, du, _parallel.gemm_chunks())   # in chunk order: a fixed sum
    dw = _filter_adjoint(du, C, K)
    return dw[None] if _finite(dw) else None
