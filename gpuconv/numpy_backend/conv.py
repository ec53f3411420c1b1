"""Convolution on the CPU: fprop, dgrad and wgrad as bounded im2col blocks + BLAS GEMMs.

One gather core serves all three operators. For a box of output positions it builds the column block
`cols[g, m, tap, ci] = src[n, o*stride + offset(tap)]` (zero where the tap reads outside src; padding is never
materialised) and multiplies it by a per-group weight matrix:
    fprop: src = x,  out = y,  stride = the conv stride, offset = k*dilation - pad_before, weights w[tap] (C/G, K/G)
    dgrad: split into stride phases: dx[phase::stride] is a stride-1 gather over dy with the taps k for which
           (phase + pad_before - k*dilation) is a multiple of the stride, offset = that multiple / stride, weights
           w[tap]^T (K/G, C/G). No multiply touches an inserted zero and no output cell is written twice.
    wgrad: dw = sum over boxes of cols(x)^T @ dy_box (the fprop columns).
Column blocks are bounded by _window.SCRATCH_BYTES (boxes over batch, then depth, rows, columns). A 1x1, stride-1,
unpadded tap reads src as it is, so that case is a plain GEMM with no copy. float16 is converted to float32 block
by block and rounded once on output; float32 and float64 run in their own precision (sgemm / dgemm).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from ._window import box_shape, boxes, tap_range


class _Gather:
    """Column blocks of one gather: src (N, A0, A1, A2, G*Ci) read at o*stride + offset per axis and tap."""

    def __init__(self, src: np.ndarray, out_spatial, strides, offsets, groups: int, acc: np.dtype):
        self.src = src
        self.out_spatial = tuple(int(v) for v in out_spatial)
        self.strides = tuple(strides)
        self.offsets = [tuple(o) for o in offsets]      # one (off_d, off_h, off_w) per tap
        self.G = groups
        self.Ci = src.shape[-1] // groups
        self.acc = acc
        self.ntaps = len(self.offsets)
        # The identity gather (one tap, stride 1, offset 0, same extent): the columns are src itself.
        self.identity = (self.ntaps == 1 and self.strides == (1, 1, 1) and self.offsets[0] == (0, 0, 0)
                         and self.out_spatial == tuple(src.shape[1:4]) and groups == 1 and src.dtype == acc)
        self.row_bytes = 0 if self.identity else self.ntaps * src.shape[-1] * acc.itemsize
        self._buf = None

    def cols(self, box) -> np.ndarray:
        """The (G, M, ntaps*Ci) column block of a box (n, o_d, o_h, o_w) of output positions."""
        nb, l0, l1, l2 = box_shape(box)
        m = nb * l0 * l1 * l2
        if self.identity:
            return self.src[box].reshape(1, m, self.Ci)
        size = self.G * m * self.ntaps * self.Ci
        if self._buf is None or self._buf.size < size:
            self._buf = np.empty(size, self.acc)
        col = self._buf[:size].reshape(self.G, nb, l0, l1, l2, self.ntaps, self.Ci)
        extents = self.src.shape[1:4]
        for j, offs in enumerate(self.offsets):
            dst = col[:, :, :, :, :, j, :]
            rng = [tap_range(box[a + 1].start, box[a + 1].stop, self.strides[a], offs[a], 0, extents[a])
                   for a in range(3)]
            if any(hi <= lo for lo, hi, _ in rng):
                dst[...] = 0
                continue
            sel = [box[0]]
            for (lo, hi, i0), st in zip(rng, self.strides):
                sel.append(slice(i0, i0 + (hi - lo - 1) * st + 1, st))
            part = self.src[tuple(sel)]
            part = part.reshape(part.shape[:4] + (self.G, self.Ci))
            inner = dst[:, :, rng[0][0]:rng[0][1], rng[1][0]:rng[1][1], rng[2][0]:rng[2][1]]
            np.copyto(inner, np.moveaxis(part, 4, 0))
            for a, ((lo, hi, _), length) in enumerate(zip(rng, (l0, l1, l2))):
                if lo > 0:
                    dst[(slice(None),) * (a + 2) + (slice(0, lo),)] = 0
                if hi < length:
                    dst[(slice(None),) * (a + 2) + (slice(hi, length),)] = 0
        return col.reshape(self.G, m, self.ntaps * self.Ci)


def _split_channels(a: np.ndarray, groups: int) -> np.ndarray:
    """View a (..., G*c) array as (..., G, c) without copying (works for strided views too)."""
    v = a.view()
    v.shape = a.shape[:-1] + (groups, a.shape[-1] // groups)
    return v


def _gather_gemm(gather: _Gather, wmat: np.ndarray, out: np.ndarray) -> None:
    """out[n, o] = cols(n, o) @ wmat per group, box by box. wmat: (G, ntaps*Ci, Ko); out: (N, O0, O1, O2, G*Ko)."""
    G, _, ko = wmat.shape
    acc = gather.acc
    direct = G == 1 and out.dtype == acc and out.flags.c_contiguous
    unit = gather.row_bytes + (0 if direct else G * ko * acc.itemsize)
    for box in boxes(out.shape[:4], unit):
        cols = gather.cols(box)
        m = cols.shape[1]
        if direct:
            np.matmul(cols[0], wmat[0], out=out[box].reshape(m, ko))
            continue
        res = np.matmul(cols, wmat)                                   # (G, M, Ko)
        dst = _split_channels(out[box], G)                            # (nb, l0, l1, l2, G, Ko)
        np.copyto(dst, np.moveaxis(res.reshape((G,) + dst.shape[:4] + (ko,)), 0, 4), casting="same_kind")


def _taps(p: ConvProblem):
    return list(itertools.product(range(p.T), range(p.R), range(p.S)))


def conv_fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y[n,o,k] = sum over taps and group channels of x[n, o*stride + tap*dilation - pad_before, c] * w[tap, c, k]."""
    y = np.empty(p.y_shape, x.dtype)
    if y.size == 0:
        return y
    if x.size == 0:
        y[...] = 0
        return y
    acc = accumulator_dtype(x.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    offsets = [tuple(k * d - b for k, d, b in zip(tap, p.dilation, p.pad_before)) for tap in taps]
    # w (T,R,S,Cg,K) -> (G, taps*Cg, Kg): column index tap*Cg + c matches the column block layout.
    wmat = np.ascontiguousarray(
        w.reshape(len(taps), cg, G, kg).transpose(2, 0, 1, 3).reshape(G, len(taps) * cg, kg), dtype=acc)
    gather = _Gather(x, (p.Z, p.P, p.Q), p.stride, offsets, G, acc)
    _gather_gemm(gather, wmat, y)
    return y


def conv_dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dx[n,i,c] = sum over taps with integer o = (i + pad_before - tap*dilation) / stride in range of dy[n,o,:] @ w[tap, c, :].

    Computed per stride phase (i = phase + stride*j): each phase is a stride-1 gather over dy.
    """
    dx = np.empty(p.x_shape, dy.dtype)
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0
        return dx
    acc = accumulator_dtype(dy.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    # w (T,R,S,Cg,K) -> (G, taps, Kg, Cg): per tap the transposed (Kg, Cg) block of each group.
    w_t = np.ascontiguousarray(w.reshape(len(taps), cg, G, kg).transpose(2, 0, 3, 1), dtype=acc)
    extents = (p.D, p.H, p.W)
    kernel = (p.T, p.R, p.S)
    for phase in itertools.product(*(range(min(s, n)) for s, n in zip(p.stride, extents))):
        # Per axis: the taps that land on this phase, and the dy offset each reads at.
        axis_taps = []
        for a in range(3):
            s, d, pb = p.stride[a], p.dilation[a], p.pad_before[a]
            axis_taps.append([(k, (phase[a] + pb - k * d) // s) for k in range(kernel[a])
                              if (phase[a] + pb - k * d) % s == 0])
        out = dx[:, phase[0]::p.stride[0], phase[1]::p.stride[1], phase[2]::p.stride[2], :]
        chosen = list(itertools.product(*axis_taps))
        if not chosen:
            out[...] = 0
            continue
        ids = [(kt * p.R + kr) * p.S + ks for (kt, _), (kr, _), (ks, _) in chosen]
        offsets = [(ot, oh, ow) for (_, ot), (_, oh), (_, ow) in chosen]
        wmat = w_t[:, ids].reshape(G, len(ids) * kg, cg)
        gather = _Gather(dy, out.shape[1:4], (1, 1, 1), offsets, G, acc)
        _gather_gemm(gather, wmat, out)
    return dx


def conv_wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw[tap, c, k] = sum over n, o of x[n, o*stride + tap*dilation - pad_before, c] * dy[n, o, k]."""
    acc = accumulator_dtype(x.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    dw = np.zeros((G, len(taps) * cg, kg), acc)
    if x.size and dy.size and dw.size:
        offsets = [tuple(k * d - b for k, d, b in zip(tap, p.dilation, p.pad_before)) for tap in taps]
        gather = _Gather(x, (p.Z, p.P, p.Q), p.stride, offsets, G, acc)
        convert = G > 1 or dy.dtype != acc
        unit = gather.row_bytes + (p.K * acc.itemsize if convert else 0)
        part = np.empty_like(dw)
        for box in boxes(dy.shape[:4], unit):
            cols = gather.cols(box)                                       # (G, M, taps*Cg)
            m = cols.shape[1]
            dyb = dy[box].reshape(m, G, kg)
            if convert:
                dyb = np.ascontiguousarray(dyb.transpose(1, 0, 2), dtype=acc)     # (G, M, Kg)
            else:
                dyb = dyb.transpose(1, 0, 2)
            np.matmul(cols.transpose(0, 2, 1), dyb, out=part)
            dw += part
    # (G, taps*Cg, Kg) -> (T, R, S, Cg, G*Kg)
    out = dw.reshape(G, len(taps), cg, kg).transpose(1, 2, 0, 3).reshape(p.w_shape)
    return np.ascontiguousarray(out, dtype=x.dtype)
