"""Convolution on the CPU: fprop, dgrad and wgrad as bounded im2col blocks + BLAS GEMMs.

float32 3x3 (and T x 3 x 3) stride-1 problems with enough channels go to Winograd F(2x2, 3x3) first (_winograd.py:
2.25x fewer multiplications), stride-2 fprop, dgrad and wgrad to its polyphase form (_winograd_s2.py: 1.44x
fewer); both hand back to the paths below when an output would not be finite. Depthwise problems (one input
channel per group) go to _depthwise.py (a multiply and an add per tap instead of per-group GEMMs of one input
channel). One gather core serves all three operators otherwise. For a box of output positions it builds the column block
`cols[g, m, tap, ci] = src[n, o*stride + offset(tap)]` (zero where the tap reads outside src; padding is never
materialised) and multiplies it by a per-group weight matrix:
    fprop: src = x,  out = y,  stride = the conv stride, offset = k*dilation - pad_before, weights w[tap] (C/G, K/G)
    dgrad: split into stride phases: dx[phase::stride] is a stride-1 gather over dy with the taps k for which
           (phase + pad_before - k*dilation) is a multiple of the stride, offset = that multiple / stride, weights
           w[tap]^T (K/G, C/G). No multiply touches an inserted zero and no output cell is written twice.
           When C/G is well below K/G (a 3-channel first layer) dgrad is GEMM + col2im instead: dcol = dy @ w^T
           for all taps, each tap's block added to its strided slice of dx (_dgrad_scatter; no np.add.at).
    wgrad: dw = sum over boxes of cols(x)^T @ dy_box (the fprop columns), boxes added in a fixed order.

Column blocks are cache-sized: a box of output positions is chosen so that its column block is about
_Gather.BLOCK_BYTES = 4 MiB (boxes over batch, then depth, rows, columns), so the block is still in cache when
the GEMM reads it (ResNet-50 at N=8 on the CPU box, one thread: 3x3/64 fprop 27 -> 19 ms, 7x7/2 first layer fprop
33 -> 20 ms with 4 MiB blocks instead of blocks of the whole 32 MiB scratch budget). Every scratch array stays
within _window.SCRATCH_BYTES. A 1x1, stride-1, unpadded tap reads src as it is, so that case is a plain GEMM with
no copy (in GEMMs of about 4096 rows, so that the worker pool has chunks: _IDENTITY_POSITIONS). Copies
move long contiguous pieces: with _FEW_CHANNELS or more channels per group, the box's input region is first
copied once, zero-padded and group-major, and taps that read consecutive input columns are copied from it as one
run (S*C/G values per output, no bounds handling); with fewer, the block is stored transposed (one output row
per copy), from a channel-planar, stride-phase-split copy of the region where that is no larger than the block.
float16 is converted to float32 block by block and rounded once on output; float32 and float64 run in their own
precision (sgemm / dgemm).

Threads (_parallel): the boxes of one call are independent chunks spread over the worker pool; each box's
columns and GEMM are computed by one worker exactly as in the serial loop, with that worker's own column buffer
(scratch: workers x one column block + GEMM result). wgrad's per-box partial products are added to dw in box
order on the calling thread (serially: the first box's product straight into dw, the others into one per-thread
buffer kept between calls, _parallel.sum_in_order). Boxes go to the pool only when BLAS is single-threaded; with
a multi-threaded BLAS the boxes run in order and each GEMM uses BLAS's threads (both at once oversubscribe the
cores: _parallel.gemm_workers).

Cost is bounded by the operands' sizes whatever the dilation: a column block holds taps x box outputs, and the
phased copy of a box's input region (_fill_phased) is used only where that region is no larger than the block,
so a huge dilated filter on a tiny input never allocates its (mostly empty) receptive field.
"""
from __future__ import annotations

import itertools
import math
import threading

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from . import _depthwise, _parallel, _window, _winograd, _winograd_s2
from ._window import axis_taps, box_shape, boxes, tap_range


# Below this many channels per group, column blocks are stored transposed (see _Gather.transposed).
_FEW_CHANNELS = 16

# A 1x1 stride-1 gather reads src as it is (_Gather.identity): no column block sizes its boxes, yet with OpenBLAS on
# one thread the worker pool needs chunks. So its GEMMs run over boxes of about _IDENTITY_POSITIONS output
# positions: enough rows that a worker's GEMMs lose nothing against one whole GEMM (boxes of 98 rows of the
# 7x7x2048 layer lost 8 %), and wgrad's per-box partial products (C x K values added to dw) stay small against
# its GEMMs (2*m*C*K flops). The split does not depend on the worker count, nor do results. ResNet-50 1x1
# layers at N=8 on the CPU box, OpenBLAS on 1 thread and 2 workers: 8-10 -> 4-5 ms at 56x56 and 28x28 px (the
# 14x14 and 7x7 layers stay one GEMM); on one worker the same times within noise.
_IDENTITY_POSITIONS = 4096


def _tap_runs(offsets) -> list[tuple[int, int]]:
    """(first tap, length) of maximal tap runs that read consecutive input columns (same d, h offsets; w + 1).

    Along such a run an output position touches one contiguous stretch of length*C values of an input row, so
    a run is moved with one strided view instead of `length` short copies (the 7x7/2 first ResNet layer, C = 3:
    a half-batch block in 5.3 ms instead of 17 ms, measured on the CPU box).
    """
    runs = []
    for j, (od, oh, ow) in enumerate(offsets):
        if runs:
            j0, length = runs[-1]
            pd, ph, pw = offsets[j0]
            if (od, oh, ow) == (pd, ph, pw + length):
                runs[-1] = (j0, length + 1)
                continue
        runs.append((j, 1))
    return runs


class _Gather:
    """Column blocks of one gather: src (N, A0, A1, A2, G*Ci) read at o*stride + offset per axis and tap."""

    # Target size of a column block (module docstring; row_bytes below).
    BLOCK_BYTES = 4 * 2**20

    def __init__(self, src: np.ndarray, out_spatial, strides, offsets, groups: int, acc: np.dtype):
        self.src = src
        self.out_spatial = tuple(int(v) for v in out_spatial)
        self.strides = tuple(strides)
        self.offsets = [tuple(o) for o in offsets]      # one (off_d, off_h, off_w) per tap
        # Per axis, the smallest and largest tap offset: the bounds of the input region a box reads (_region).
        self.lo_offsets = tuple(min(o[a] for o in self.offsets) for a in range(3))
        self.hi_offsets = tuple(max(o[a] for o in self.offsets) for a in range(3))
        self.G = groups
        self.Ci = src.shape[-1] // groups
        self.acc = acc
        self.ntaps = len(self.offsets)
        # The identity gather (one tap, stride 1, offset 0, same extent): the columns are src itself.
        self.identity = (self.ntaps == 1 and self.strides == (1, 1, 1) and self.offsets[0] == (0, 0, 0)
                         and self.out_spatial == tuple(src.shape[1:4]) and groups == 1 and src.dtype == acc)
        self.row_bytes = 0 if self.identity else self.ntaps * src.shape[-1] * acc.itemsize
        self.runs = _tap_runs(self.offsets)
        strided = int(np.prod(self.strides)) > 1
        # Many channels per group (any group count), or several strided groups: columns copied by tap runs from a
        # zero-padded, group-major copy of the box's input region (_fill_grouped), so that copies move runs of
        # S*Ci values and need no bounds handling. Without groups the per-tap fills of the border columns (two
        # per tap and box) were the cost of large padded filters: 8x32x32x32 -> 32, SAME, one thread, CPU box,
        # fprop / dgrad in ms (dgrad with VALID too: it pads dy fully), tap runs with per-tap borders -> region:
        #     3x3 8x56x56x64 (direct path)  20.5 / 20.7 -> 18.6 / 18.5
        #     5x5                            8.5 /  8.7 ->  5.1 /  5.1
        #     7x7                           23.3 / 23.2 ->  9.8 /  9.9
        #     11x11                         90.6 / 90.1 -> 23.5 / 23.4     (VALID dgrad 89.9 -> 23.7)
        self.by_region = self.ntaps > 1 and (self.Ci >= _FEW_CHANNELS or (groups > 1 and strided))
        # Few channels otherwise: store the columns transposed, (G, taps, Ci, M), so each copy moves a whole
        # output row (l2 values) instead of Ci values per output (the block above: 3.0 ms instead of 5.3 ms by
        # runs).
        self.transposed = self.Ci < _FEW_CHANNELS and not self.by_region
        # Transposed columns of many taps (the 7x7/2 first layer; grouped stride-1 convs of few channels per
        # group): copied from a zero-padded, channel-planar, stride-phase-split copy of the box's input region
        # instead (_fill_phased). Only where that copy is no larger than the column block (stride volume <= taps).
        #
        # ResNeXt-style 3x3 layers at N=8, 32 groups, float32, one thread (CPU box, OpenBLAS SkylakeX kernels),
        # fprop / dgrad / wgrad in ms: per-tap copies of Ci values (before 2026-11-22) -> tap runs -> phased:
        #     56x56x128 (Ci 4)         29.5 / 29.4 / 29.9 -> 24.1 / 26.6 / 26.0 -> 15.1 / 14.5 / 16.9
        #     28x28x256 (Ci 8)         15.9 / 15.6 / 16.3 ->  9.7 / 10.2 /  9.2 ->  8.1 /  7.6 /  8.6
        #     14x14x512 (Ci 16)         4.7 /  5.2 /  5.2 ->  4.0 /  4.3 /  4.5 ->  6.0 /  5.9 /  6.3
        #     56x56x256 stride 2 (Ci 8) 19.9 / 27.4 / 20.9 -> 14.0 / 23.1 / 14.2 -> 21.5 / 24.7 / 25.9
        self.phased = (self.transposed and not self.identity
                       and int(np.prod(self.strides)) <= self.ntaps)
        if not self.identity:
            # Boxes are sized by row_bytes against the scratch budget; scaling it budgets a column block at about
            # BLOCK_BYTES instead, so that it is still in cache when the GEMM reads it (module docstring).
            self.row_bytes *= max(1, _window.SCRATCH_BYTES // self.BLOCK_BYTES)
        # Column buffers are per thread: boxes of one gather may be filled by several workers at once.
        self._local = threading.local()

    def box_sizing(self, extra: int) -> tuple[int, int | None]:
        """(bytes per output position, budget) for boxes(): the column row plus `extra` bytes (a GEMM result, a
        converted dy row) against the scratch budget; for the identity gather, which has no columns, boxes of
        about _IDENTITY_POSITIONS positions."""
        if self.identity:
            unit = self.src.shape[-1] * self.acc.itemsize + extra
            return unit, min(unit * _IDENTITY_POSITIONS, _window.SCRATCH_BYTES)
        return self.row_bytes + extra, None

    def _fill(self, dst: np.ndarray, n_sl: slice, ranges, offs) -> None:
        """dst = src read by one tap at the outputs ranges[a] = (o0, o1), zero outside src.

        dst: (G, nb, l0, l1, l2, Ci), or (G, Ci, nb, l0, l1, l2) for transposed columns.
        """
        extents = self.src.shape[1:4]
        rng = [tap_range(o0, o1, st, off, 0, n) for (o0, o1), st, off, n in zip(ranges, self.strides, offs, extents)]
        if any(hi <= lo for lo, hi, _ in rng):
            dst[...] = 0
            return
        sel = [n_sl]
        for (lo, hi, i0), st in zip(rng, self.strides):
            sel.append(slice(i0, i0 + (hi - lo - 1) * st + 1, st))
        part = _split_channels(self.src[tuple(sel)], self.G)                 # (nb, l0', l1', l2', G, Ci)
        inner = (slice(None),) * (3 if self.transposed else 2) + tuple(slice(lo, hi) for lo, hi, _ in rng)
        moved = np.moveaxis(part, (4, 5), (0, 1)) if self.transposed else np.moveaxis(part, 4, 0)
        np.copyto(dst[inner], moved)
        _zero_outside(dst, rng, 3 if self.transposed else 2)

    def _fill_run(self, col: np.ndarray, box, j0: int, length: int) -> None:
        """Columns of taps j0 .. j0+length-1 (one run, G == 1): the interior by one strided copy per box."""
        od, oh, ow = self.offsets[j0]
        (z0, z1), (p0, p1), (q0, q1) = [(b.start, b.stop) for b in box[1:]]
        D, H, W, C = self.src.shape[1:]
        sd, sh, sw = self.strides
        # Outputs q whose whole run is in bounds: q*sw + ow >= 0 and q*sw + ow + length - 1 < W.
        qlo, qhi, iw = tap_range(q0, q1, sw, ow, 0, W - length + 1)
        if qhi <= qlo:
            qlo = qhi = 0
        for j in range(j0, j0 + length):
            # The border columns outside [qlo, qhi) tap by tap.
            for a, b in ((0, qlo), (qhi, q1 - q0)) if qhi > qlo else ((0, q1 - q0),):
                if b > a:
                    self._fill(col[:, :, :, :, a:b, j, :], box[0], ((z0, z1), (p0, p1), (q0 + a, q0 + b)),
                               self.offsets[j])
        if qhi <= qlo:
            return
        dst = col[0, :, :, :, qlo:qhi, j0:j0 + length, :]
        rd = tap_range(z0, z1, sd, od, 0, D)
        rh = tap_range(p0, p1, sh, oh, 0, H)
        if rd[1] <= rd[0] or rh[1] <= rh[0]:
            dst[...] = 0
            return
        n0 = box[0].start
        base = self.src[n0:, rd[2]:, rh[2]:, iw:, :]
        st = self.src.strides
        view = np.lib.stride_tricks.as_strided(
            base, shape=(box[0].stop - n0, rd[1] - rd[0], rh[1] - rh[0], qhi - qlo, length * C),
            strides=(st[0], st[1] * sd, st[2] * sh, st[3] * sw, st[4]), writeable=False)
        inner = dst[:, rd[0]:rd[1], rh[0]:rh[1]]
        inner = _reshaped_view(inner, inner.shape[:4] + (length * C,))     # taps are adjacent in col
        np.copyto(inner, view)
        _zero_outside(dst, [rd, rh], 1)

    def _region_values(self, box) -> int:
        """Values of _fill_phased's or _fill_grouped's padded region copy for a box: with a large dilation it
        spans the whole receptive field (a huge dilated filter on a tiny input), and is then not used (the
        per-tap copies fill the same columns, bounded by the block)."""
        return (box[0].stop - box[0].start) * math.prod(self._region(box)[0]) * self.Ci * self.G

    def _region(self, box) -> tuple[list, list, list]:
        """Per spatial axis, for the region a box reads (o*stride + offset for its outputs o and every tap),
        padded to whole strides: (values, slice of src, slice of the region) with the src part clipped."""
        counts, src_sl, dst_sl = [], [], []
        for a, b in enumerate(box[1:]):
            s = self.strides[a]
            start = b.start * s + self.lo_offsets[a]
            length = (b.stop - 1) * s + self.hi_offsets[a] + 1 - start
            count = -(-length // s) * s
            n = self.src.shape[1 + a]
            i0, i1 = max(start, 0), min(start + length, n)
            counts.append(count)
            src_sl.append(slice(i0, max(i0, i1)))
            dst_sl.append(slice(i0 - start, max(i0, i1) - start))
        return counts, src_sl, dst_sl

    def _fill_grouped(self, col: np.ndarray, box, size: int) -> None:
        """col (G, nb, l0, l1, l2, taps, Ci) = the columns of a box, zero outside src, by one group-major copy of
        the box's input region (zero-padded; G, nb, region..., Ci) and then one strided copy per tap run: the
        run's taps are adjacent in the region and in col (measurements: __init__). size: values of the per-thread
        region buffer."""
        G, Ci = self.G, self.Ci
        nb = box[0].stop - box[0].start
        counts, src_sl, dst_sl = self._region(box)
        buf = getattr(self._local, "region", None)
        if buf is None or buf.size < size:
            buf = self._local.region = np.empty(size, self.acc)
        region = buf[:G * nb * math.prod(counts) * Ci].reshape((G, nb) + tuple(counts) + (Ci,))
        inner = region[(slice(None), slice(None)) + tuple(dst_sl)]
        np.copyto(inner, np.moveaxis(_split_channels(self.src[(box[0],) + tuple(src_sl)], G), 4, 0))
        _zero_outside(region, [(d.start, d.stop, 0) for d in dst_sl], 2)
        rs = region.strides
        l0, l1, l2 = col.shape[2:5]
        for j0, length in self.runs:
            od, oh, ow = (o - m for o, m in zip(self.offsets[j0], self.lo_offsets))
            view = np.lib.stride_tricks.as_strided(
                region[:, :, od, oh, ow], shape=(G, nb, l0, l1, l2, length * Ci),
                strides=(rs[0], rs[1], rs[2] * self.strides[0], rs[3] * self.strides[1], rs[4] * self.strides[2],
                         rs[5]), writeable=False)
            dst = col[:, :, :, :, :, j0:j0 + length, :]
            np.copyto(_reshaped_view(dst, dst.shape[:5] + (length * Ci,)), view)

    def _fill_phased(self, col_t: np.ndarray, box) -> None:
        """col_t (G, taps, Ci, nb, l0, l1, l2) = the transposed columns of a box, zero outside src.

        The box reads, per axis, src indices o*stride + offset for o in [o0, o1): the region
        [o0*stride + min offset, (o1 - 1)*stride + max offset]. That region is copied once, zero-padded, as
        phases[g, c, a0, a1, a2, n, i0, i1, i2] = region[n, i*stride + a, g, c]; tap j then reads phase
        (offset - min) % stride at i = (o - o0) + (offset - min) // stride, a plain shifted block: one copy per tap
        (whole output rows), no bounds handling (the first ResNet layer: 2.9 ms instead of 6.8 ms of column
        building per batch of 8, measured on the CPU box).
        """
        G, C = self.G, self.Ci
        nb = box[0].stop - box[0].start
        counts, src_sl, dst_sl = self._region(box)
        region = np.zeros((nb, *counts, G * C), self.acc)
        region[(slice(None),) + tuple(dst_sl)] = self.src[(box[0],) + tuple(src_sl)]
        (pd, sd), (ph, sh), (pw, sw) = [(c // s, s) for c, s in zip(counts, self.strides)]   # values per phase
        phases = np.ascontiguousarray(region.reshape(nb, pd, sd, ph, sh, pw, sw, G, C)
                                      .transpose(7, 8, 2, 4, 6, 0, 1, 3, 5))
        l0, l1, l2 = col_t.shape[4:]
        for j, offs in enumerate(self.offsets):
            (a0, u0), (a1, u1), (a2, u2) = [divmod(o - lo, s)[::-1]
                                            for o, lo, s in zip(offs, self.lo_offsets, self.strides)]
            np.copyto(col_t[:, j], phases[:, :, a0, a1, a2, :, u0:u0 + l0, u1:u1 + l1, u2:u2 + l2])

    def cols(self, box) -> np.ndarray:
        """The (G, M, ntaps*Ci) column block of a box (n, o_d, o_h, o_w) of output positions (a transposed
        view of (G, ntaps*Ci, M) memory when self.transposed; BLAS takes either without a copy)."""
        nb, l0, l1, l2 = box_shape(box)
        m = nb * l0 * l1 * l2
        if self.identity:
            return self.src[box].reshape(1, m, self.Ci)
        size = self.G * m * self.ntaps * self.Ci
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < size:
            buf = self._local.buf = np.empty(size, self.acc)
        ranges = [(b.start, b.stop) for b in box[1:]]
        if self.transposed:
            col_t = buf[:size].reshape(self.G, self.ntaps, self.Ci, nb, l0, l1, l2)
            if self.phased and self._region_values(box) <= size:
                self._fill_phased(col_t, box)
            else:
                for j, offs in enumerate(self.offsets):
                    self._fill(col_t[:, j], box[0], ranges, offs)
            return col_t.reshape(self.G, self.ntaps * self.Ci, m).transpose(0, 2, 1)
        col = buf[:size].reshape(self.G, nb, l0, l1, l2, self.ntaps, self.Ci)
        if self.by_region:
            region = self._region_values(box)
            if region <= size:
                self._fill_grouped(col, box, region)
                return col.reshape(self.G, m, self.ntaps * self.Ci)
        if self.G > 1:
            # A region larger than the block (a large dilation): tap by tap.
            for j, offs in enumerate(self.offsets):
                self._fill(col[:, :, :, :, :, j, :], box[0], ranges, offs)
            return col.reshape(self.G, m, self.ntaps * self.Ci)
        for j0, length in self.runs:
            if length > 1:
                self._fill_run(col, box, j0, length)
            else:
                self._fill(col[:, :, :, :, :, j0, :], box[0], ranges, self.offsets[j0])
        return col.reshape(self.G, m, self.ntaps * self.Ci)


def _zero_outside(dst: np.ndarray, rng, first_axis: int) -> None:
    """Zero dst outside [lo, hi) along the spatial axes first_axis, first_axis + 1, ... (one per range)."""
    for a, (lo, hi, _) in enumerate(rng):
        ax = first_axis + a
        if lo > 0:
            dst[(slice(None),) * ax + (slice(0, lo),)] = 0
        if hi < dst.shape[ax]:
            dst[(slice(None),) * ax + (slice(hi, dst.shape[ax]),)] = 0


def _reshaped_view(a: np.ndarray, shape: tuple) -> np.ndarray:
    """a reshaped without copying: ValueError where the reshape would need a copy (what setting .shape did,
    which NumPy 2.5 deprecates; ndarray.reshape's copy=False needs NumPy 2.1)."""
    v = a.reshape(shape)
    if v.size and not np.may_share_memory(v, a):
        raise ValueError(f"a view of shape {shape} of an array of shape {a.shape}, strides {a.strides} needs a copy")
    return v


def _split_channels(a: np.ndarray, groups: int) -> np.ndarray:
    """View a (..., G*c) array as (..., G, c) without copying (works for strided views too)."""
    return _reshaped_view(a, a.shape[:-1] + (groups, a.shape[-1] // groups))


def _gather_gemm(gather: _Gather, wmat: np.ndarray, out: np.ndarray) -> None:
    """out[n, o] = cols(n, o) @ wmat per group, box by box. wmat: (G, ntaps*Ci, Ko); out: (N, O0, O1, O2, G*Ko).

    Boxes are independent (each writes its own block of out), so they are spread over the worker pool.
    """
    G, _, ko = wmat.shape
    acc = gather.acc
    direct = G == 1 and out.dtype == acc and out.flags.c_contiguous
    unit, budget = gather.box_sizing(0 if direct else G * ko * acc.itemsize)   # columns (+ a GEMM result)

    def one(box) -> None:
        cols = gather.cols(box)
        m = cols.shape[1]
        if direct:
            np.matmul(cols[0], wmat[0], out=out[box].reshape(m, ko))
            return
        dst = _split_channels(out[box], G)                            # (nb, l0, l1, l2, G, Ko)
        res = _window.thread_buffer("gemm_result", G * m * ko, acc)
        if gather.transposed:
            # Columns stored (G, taps*Ci, M): the product transposed, (G, Ko, M) = wmat^T @ columns, gives BLAS
            # rows of M outputs instead of Ko (few channels per group), and the copy into out reads M-long runs
            # (ResNeXt 56x56x128, 32 groups of 4, N=8, one thread: GEMMs and copy 8.6 -> 4.8 ms of 18.5).
            res = res.reshape(G, ko, m)
            np.matmul(wmat.transpose(0, 2, 1), cols.transpose(0, 2, 1), out=res)
            moved = np.moveaxis(res.reshape((G, ko) + dst.shape[:4]), (0, 1), (4, 5))
        else:
            res = res.reshape(G, m, ko)
            np.matmul(cols, wmat, out=res)
            moved = np.moveaxis(res.reshape((G,) + dst.shape[:4] + (ko,)), 0, 4)
        np.copyto(dst, moved, casting="same_kind")

    chunks = list(boxes(out.shape[:4], unit, budget))
    with _parallel.gemm_workers(len(chunks)) as parallel:
        _parallel.map_chunks(one, chunks, parallel)


def _taps(p: ConvProblem):
    return list(itertools.product(range(p.T), range(p.R), range(p.S)))


def _active_taps(p: ConvProblem) -> list[tuple[int, ...]]:
    """Per spatial axis, the filter taps that meet the input for some output (_window.axis_taps). The other
    taps' filter gradient is a sum over nothing (zero); a filter much larger than its padded input has few."""
    return [axis_taps(n, k, s, d, pb, o) for n, k, s, d, pb, o in
            zip((p.D, p.H, p.W), (p.T, p.R, p.S), p.stride, p.dilation, p.pad_before, (p.Z, p.P, p.Q))]


def _zero_inactive_taps(dw: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw with exact zeros at the taps that never meet the input. Winograd's filter adjoint (G^T dU G) mixes
    the taps, so such a tap would otherwise get rounding noise from its neighbours instead of its sum over
    nothing."""
    active = _active_taps(p)
    if all(len(a) == n for a, n in zip(active, (p.T, p.R, p.S))):
        return dw
    keep = np.zeros((p.T, p.R, p.S), bool)
    keep[np.ix_(*active)] = True
    dw[~keep] = 0
    return dw


def conv_fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """y[n,o,k] = sum over taps and group channels of x[n, o*stride + tap*dilation - pad_before, c] * w[tap, c, k]."""
    from . import _nonfinite
    if not _nonfinite.operand_is_finite(w):          # padding must not multiply inf/NaN (DESIGN.md section 2)
        return _nonfinite.conv_fprop(x, w, p)
    y = np.empty(p.y_shape, x.dtype)
    if y.size == 0:
        return y
    if x.size == 0:
        y[...] = 0
        return y
    if _depthwise.applies(p):
        return _depthwise.fprop(x, w, p)
    for fast in (_winograd, _winograd_s2):           # False: an output was not finite, compute directly
        if fast.applies(p, x.dtype) and fast.fprop(x, w, p, y):
            return y
    acc = accumulator_dtype(x.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    offsets = [p.tap_offset(tap) for tap in taps]
    # w (T,R,S,Cg,K) -> (G, taps*Cg, Kg): column index tap*Cg + c matches the column block layout.
    wmat = np.ascontiguousarray(
        w.reshape(len(taps), cg, G, kg).transpose(2, 0, 1, 3).reshape(G, len(taps) * cg, kg), dtype=acc)
    gather = _Gather(x, (p.Z, p.P, p.Q), p.stride, offsets, G, acc)
    _gather_gemm(gather, wmat, y)
    return y


def _dgrad_scatter(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dgrad as GEMM + col2im: per box, dcol = dy_box @ w^T (all taps at once), then each tap's block is added
    to its strided slice of dx (distinct cells within one tap, so a plain in-place add, no np.add.at).

    Cheaper than the gather when C/G is well below K/G (dcol has C columns per tap, gather columns K per tap).
    Accumulates in dx itself, so it is used only where dx's dtype is the accumulator dtype.
    """
    dx = np.zeros(p.x_shape, dy.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    ntaps = len(taps)
    # w (T,R,S,Cg,K) -> (G, Kg, taps*Cg)
    wmat = np.ascontiguousarray(w.reshape(ntaps, cg, G, kg).transpose(2, 3, 0, 1).reshape(G, kg, ntaps * cg))
    offsets = [p.tap_offset(tap) for tap in taps]
    runs = _tap_runs(offsets) if G == 1 else [(j, 1) for j in range(ntaps)]
    # Few channels: dcol transposed, (G, taps, Cg, M), so each add moves a whole output row (cf. _Gather).
    transposed = cg < _FEW_CHANNELS
    if transposed:
        wmat = np.ascontiguousarray(np.swapaxes(wmat, 1, 2))                # (G, taps*Cg, Kg)
    # Boxes of different batch items add into disjoint parts of dx; boxes of one item share cells at their
    # edges, so each item's boxes (a group) run in order on one worker: every cell sums in the serial order.
    groups: dict = {}
    for box in boxes(p.y_shape[:4], (ntaps * p.C + p.K) * dy.itemsize):     # dcol, a grouped dy copy
        groups.setdefault((box[0].start, box[0].stop), []).append(box)

    def group(box_list) -> None:
        # This worker's dcol buffer, kept between calls (up to 32 MiB: fresh, it page-faulted on every call).
        buf = None
        for box in box_list:
            nb, l0, l1, l2 = box_shape(box)
            m = nb * l0 * l1 * l2
            if buf is None:
                buf = _window.thread_buffer("dcol", G * m * ntaps * cg, dy.dtype)
            if transposed:
                dcol_t = buf[:G * m * ntaps * cg].reshape(G, ntaps * cg, m)
                # (taps*Cg x Kg) @ (Kg x M), the second operand a transposed view of dy: one BLAS call, no copy.
                np.matmul(wmat, dy[box].reshape(m, G, kg).transpose(1, 2, 0), out=dcol_t)
                dcol_t = dcol_t.reshape(G, ntaps, cg, nb, l0, l1, l2)
                for j, offs in enumerate(offsets):
                    _add_tap(dx, dcol_t, p, box, j, offs, (0, l2), transposed=True)
                continue
            dcol = buf[:G * m * ntaps * cg].reshape(G, m, ntaps * cg)
            dyb = dy[box].reshape(m, G, kg).transpose(1, 0, 2)
            np.matmul(dyb if G == 1 else np.ascontiguousarray(dyb), wmat, out=dcol)
            dcol = dcol.reshape(G, nb, l0, l1, l2, ntaps, cg)
            for j0, length in runs:
                if length == 1:
                    _add_tap(dx, dcol, p, box, j0, offsets[j0], (0, l2))
                else:
                    _add_run(dx, dcol, p, box, j0, length, offsets)

    with _parallel.gemm_workers(len(groups)) as parallel:
        _parallel.map_chunks(group, list(groups.values()), parallel)
    return dx


def _add_tap(dx, dcol, p: ConvProblem, box, j: int, offs, q_sub, transposed: bool = False) -> None:
    """dx[n, o*stride + offs] += dcol[:, n, o, j] for the outputs o of the box with local q in q_sub.

    dcol: (G, nb, l0, l1, l2, taps, Cg), or (G, taps, Cg, nb, l0, l1, l2) when transposed."""
    q0 = box[3].start
    spans = [(box[1].start, box[1].stop), (box[2].start, box[2].stop), (q0 + q_sub[0], q0 + q_sub[1])]
    rng = [tap_range(a, b, st, off, 0, n) for (a, b), st, off, n in zip(spans, p.stride, offs, (p.D, p.H, p.W))]
    if any(hi <= lo for lo, hi, _ in rng):
        return
    sel = (box[0],) + tuple(slice(i0, i0 + (hi - lo - 1) * st + 1, st) for (lo, hi, i0), st in zip(rng, p.stride))
    qa = q_sub[0] + rng[2][0]
    spatial = (slice(rng[0][0], rng[0][1]), slice(rng[1][0], rng[1][1]), slice(qa, qa + rng[2][1] - rng[2][0]))
    part = _split_channels(dx[sel], p.groups)                                # (nb, l0', l1', l2', G, Cg)
    if transposed:
        target = np.moveaxis(part, (4, 5), (0, 1))
        target += dcol[(slice(None), j, slice(None), slice(None)) + spatial]
    else:
        target = np.moveaxis(part, 4, 0)
        target += dcol[(slice(None), slice(None)) + spatial + (j, slice(None))]


def _add_run(dx, dcol, p: ConvProblem, box, j0: int, length: int, offsets) -> None:
    """col2im of one tap run (G == 1): outputs whose whole run is in bounds add a contiguous stretch of
    length*C values to dx. Where stretches of neighbouring outputs overlap (length > stride), the outputs are
    split into ceil(length / stride) classes q = k (mod m), whose stretches are disjoint, one add per class."""
    od, oh, ow = offsets[j0]
    (z0, z1), (p0, p1), (q0, q1) = [(b.start, b.stop) for b in box[1:]]
    sd, sh, sw = p.stride
    C = p.C
    qlo, qhi, iw = tap_range(q0, q1, sw, ow, 0, p.W - length + 1)
    if qhi <= qlo:
        qlo = qhi = 0
    borders = ((0, qlo), (qhi, q1 - q0)) if qhi > qlo else ((0, q1 - q0),)
    for j in range(j0, j0 + length):
        for a, b in borders:
            if b > a:
                _add_tap(dx, dcol, p, box, j, offsets[j], (a, b))
    if qhi <= qlo:
        return
    rd = tap_range(z0, z1, sd, od, 0, p.D)
    rh = tap_range(p0, p1, sh, oh, 0, p.H)
    if rd[1] <= rd[0] or rh[1] <= rh[0]:
        return
    classes = -(-length // sw)
    st = dx.strides
    n0, nb = box[0].start, box[0].stop - box[0].start
    for k in range(min(classes, qhi - qlo)):
        count = -(-(qhi - qlo - k) // classes)
        base = dx[n0:, rd[2]:, rh[2]:, iw + k * sw:, :]
        target = np.lib.stride_tricks.as_strided(
            base, shape=(nb, rd[1] - rd[0], rh[1] - rh[0], count, length * C),
            strides=(st[0], st[1] * sd, st[2] * sh, st[3] * sw * classes, st[4]))
        src = dcol[0, :, rd[0]:rd[1], rh[0]:rh[1], qlo + k:qhi:classes, j0:j0 + length, :]
        src = _reshaped_view(src, src.shape[:4] + (length * C,))        # the run's taps are adjacent
        target += src


def conv_dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dx[n,i,c] = sum of dy[n,o,:] @ w[tap,c,:] over taps with o = (i + pad_before - tap*dilation) / stride an
    integer in range.

    Computed per stride phase (i = phase + stride*j): each phase is a stride-1 gather over dy. When C/G is well
    below K/G (e.g. a 3-channel first layer) the GEMM + col2im form (_dgrad_scatter) moves less data.
    """
    from . import _nonfinite
    if not _nonfinite.operand_is_finite(w):          # absent taps must not multiply inf/NaN (DESIGN.md section 2)
        return _nonfinite.conv_dgrad(dy, w, p)
    dx = np.empty(p.x_shape, dy.dtype)
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0
        return dx
    if _depthwise.applies(p):
        return _depthwise.dgrad(dy, w, p)
    if _winograd.applies(p, dy.dtype) and _winograd.dgrad(dy, w, p, dx):
        return dx
    if _winograd_s2.applies_dgrad(p, dy.dtype) and _winograd_s2.dgrad(dy, w, p, dx):
        return dx
    acc = accumulator_dtype(dy.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    taps = _taps(p)
    if acc == dy.dtype and 2 * cg < kg and (len(taps) > 1 or p.stride != (1, 1, 1)):
        return _dgrad_scatter(dy, w, p)
    # w (T,R,S,Cg,K) -> (G, Cg, taps, Kg): a copy of whole Kg rows. Each phase's weight matrix (taps*Kg, Cg) is
    # then the transposed view of its (Cg, taps*Kg) slice, which BLAS reads as it is; materialising the (Kg, Cg)
    # transposes instead cost 3.1 ms of the 21 ms of a 3x3 512 -> 512 dgrad (element by element copy).
    # Taps in reverse order (w flipped on every spatial axis), the order of increasing dy offset in which the
    # phases list them below, so that the stride-1 phase takes every tap as it stands.
    w_c = np.ascontiguousarray(w[::-1, ::-1, ::-1].reshape(len(taps), cg, G, kg).transpose(2, 1, 0, 3), dtype=acc)
    # Per axis and phase (dx index i = phase + stride*j): the taps that land on the phase and the dy offset each
    # reads at, in increasing dy offset (decreasing k): taps that read consecutive dy columns then stand next to
    # each other, so the gather copies them as runs (_tap_runs). Phases without taps on some axis get zeros.
    phase_taps = _window.dgrad_phases(p)
    if not _window.phases_cover(p, phase_taps):
        dx[...] = 0
    for phase_combo in itertools.product(*(per_phase.items() for per_phase in phase_taps)):
        phase = [ph for ph, _ in phase_combo]
        out = dx[:, phase[0]::p.stride[0], phase[1]::p.stride[1], phase[2]::p.stride[2], :]
        chosen = list(itertools.product(*(found for _, found in phase_combo)))
        ids = [((p.T - 1 - kt) * p.R + p.R - 1 - kr) * p.S + p.S - 1 - ks for (kt, _), (kr, _), (ks, _) in chosen]
        offsets = [(ot, oh, ow) for (_, ot), (_, oh), (_, ow) in chosen]
        picked = w_c if ids == list(range(len(taps))) else w_c[:, :, ids]      # stride 1: every tap, in order
        wmat = picked.reshape(G, cg, len(ids) * kg).transpose(0, 2, 1)
        gather = _Gather(dy, out.shape[1:4], (1, 1, 1), offsets, G, acc)
        _gather_gemm(gather, wmat, out)
    return dx


def conv_wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem) -> np.ndarray:
    """dw[tap, c, k] = sum over n, o of x[n, o*stride + tap*dilation - pad_before, c] * dy[n, o, k]."""
    from . import _nonfinite
    # Padding must not multiply inf/NaN (DESIGN.md section 2): only dy's border outputs meet it. Checking all of
    # dy, as large as y, took 13 % of a 1x1 layer's wgrad on the CPU box.
    if not _nonfinite.padding_outputs_finite(dy, p):
        return _nonfinite.conv_wgrad(x, dy, p)
    if x.size and dy.size and _depthwise.applies(p):
        return _depthwise.wgrad(x, dy, p)
    for fast in (_winograd, _winograd_s2):
        if x.size and dy.size and fast.applies(p, x.dtype):
            dw = fast.wgrad(x, dy, p)
            if dw is not None:
                return _zero_inactive_taps(dw, p)
    acc = accumulator_dtype(x.dtype)
    G, cg, kg = p.groups, p.group_c, p.group_k
    active = _active_taps(p)
    taps = list(itertools.product(*active))
    dw = np.zeros((G, len(taps) * cg, kg), acc)
    if x.size and dy.size and dw.size:
        offsets = [p.tap_offset(tap) for tap in taps]
        gather = _Gather(x, (p.Z, p.P, p.Q), p.stride, offsets, G, acc)
        convert = dy.dtype != acc
        unit, budget = gather.box_sizing(p.K * acc.itemsize if convert else 0)
        # Per box a partial product cols^T @ dy_box, computed on any worker; the partials are added to dw in box
        # order on this thread (the first one is dw), so the sum is the serial one whatever the thread count.
        def partial(box, bufs: list) -> None:
            cols = gather.cols(box)                                       # (G, M, taps*Cg)
            m = cols.shape[1]
            dyb = dy[box].reshape(m, G, kg)
            if convert:
                dyb = np.ascontiguousarray(dyb.transpose(1, 0, 2), dtype=acc)     # (G, M, Kg)
            else:
                # A view: BLAS reads each group's (M, Kg) block with a row stride of K values. A contiguous
                # copy per group cost more than it saved (ResNeXt 56x56x128, 32 groups of 4, N=8, one thread:
                # 19.9 -> 17.0 ms without it; 56x56x256, 64 groups: 43 -> 36 ms).
                dyb = dyb.transpose(1, 0, 2)
            np.matmul(cols.transpose(0, 2, 1), dyb, out=bufs[0])

        chunks = list(boxes(dy.shape[:4], unit, budget))
        with _parallel.gemm_workers(len(chunks)) as parallel:
            _parallel.sum_in_order(partial, chunks, [dw], parallel)
    # (G, taps*Cg, Kg) -> (T', R', S', Cg, G*Kg) over the active taps, zeros at the others
    part = dw.reshape(G, len(taps), cg, kg).transpose(1, 2, 0, 3).reshape(
        tuple(len(a) for a in active) + p.w_shape[3:])
    if len(taps) == p.T * p.R * p.S:
        return np.ascontiguousarray(part, dtype=x.dtype)
    out = np.zeros(p.w_shape, x.dtype)
    out[np.ix_(*active)] = part
    return out
