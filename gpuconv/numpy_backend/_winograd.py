"""Winograd F(2x2, 3x3) for float32 3x3 (and T x 3 x 3) stride-1 convolutions on the CPU: 2.25x fewer multiplications.

A 2x2 block of outputs of a 3x3 convolution reads a 4x4 input tile d. With the transforms of Lavin & Gray
("Fast Algorithms for Convolutional Neural Networks", 2016)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

the block is y = A^T [ sum_c (G g_ck G^T) * (B^T d_c B) ] A (elementwise product of 4x4 matrices): per tile
the 16 components of V = B^T d B times the 16 components of U = G g G^T, which over all tiles and channels are
16 GEMMs  M[j] = V[j] (tiles x C) @ U[j] (C x K)  of 4 multiplications per output instead of 9. Every
transform is adds, subtracts and halvings, so float32 results stay within a few ulps of a normwise magnitude: per
output, the sum over channels of (sum of |x| over its window) x (sum of |w| over the taps), and per filter value
(wgrad) the sum over the taps of |x| * |dy| (tests/test_winograd.py). The products of V and U pair every cell of
a window with every tap, so where magnitudes differ by decades inside a window that bound can be far above direct
summation's |x| * |w| (measured: 10^3 to 10^8 times on values spread over 8 decades); on data of similar
magnitudes both hold. conv.py zeroes wgrad taps that meet only padding (the adjoint mixes taps).

    fprop  y = winograd(x, w)
    dgrad  dx = winograd(dy, w flipped and transposed), the input padded by 2 - pad_before (a stride-1 dgrad
           is the full correlation of dy with the flipped filter)
    wgrad  the adjoint: dU[j] = V[j]^T @ E[j] with E = A dy A^T per 2x2 block of dy, then dw = G^T dU G
           (the derivative of y = A^T[U * V]A with respect to g); partial sums over chunks added in order.

Depth taps (conv3d's T x 3 x 3 filters, depth stride and dilation 1): output plane d is the sum over t of the
2-D correlations of input plane d - pad_d + t with filter plane t, all in one GEMM per tile component.
correlate_depth transforms each input plane of a chunk once and keeps V as (tiles, planes, C), so that the T
planes an output plane reads are T*C contiguous values per tile: M = V[tiles, planes d-pad_d..+T] (tiles x T*C)
@ U (T*C x K, the T filter planes' transforms stacked), and BLAS sums the depth taps. dgrad: the same with the
filter flipped in all three axes and depth pad T - 1 - pad_d. wgrad keeps V as (planes, tiles, C), where the
planes of depth tap t for all output planes of a chunk are consecutive rows: one GEMM per depth tap. Measured
(3D U-Net / C3D layers at N=1, float32, one thread, OpenBLAS Haswell kernels; fprop / dgrad / wgrad in ms,
direct -> Winograd): 32^3x64 -> 64 105/88/101 -> 44/44/50, 16^3x128 -> 128 43/39/45 -> 19/20/20, 8x28x28x128 ->
256 113/118/113 -> 59/67/60.

Work goes in chunks of whole tile rows of some batch items, about CHUNK_BYTES of scratch each (input region, V, M,
sums), so that the transforms run on cached data (each is a handful of NumPy adds over the chunk) and the scratch
stays within _window.SCRATCH_BYTES per worker; a problem whose single tile row would not fit is convolved directly.
Chunks are independent (wgrad: partials combined in chunk order), so they go to the worker pool and the result does
not depend on the thread count; unlike conv.py's boxes, also where BLAS runs several threads, which then go down to
one while the chunks run (_parallel.gemm_workers(transforms=True): only the pool spreads the transforms; 2 threads,
8x56x56x64 wgrad 22-28 -> 14-19 ms on the Zen 4 host). Spreading a chunk's transforms over the worker pool between
BLAS-threaded GEMMs measured slower on the 2-core CPU box (8x56x56x64 fprop 12.5 ms against 9.8: OpenBLAS's threads
spin after each GEMM and compete with the workers), so the transforms stay with their chunk. Scratch buffers, the
transformed filter U (wgrad: dU) and a serial wgrad's spare partial included, are per thread and kept between calls
(_window.thread_buffer): fresh ones page-faulted on every call, and with 512 x 512 channels (U: 16 MiB) that took
longer than the GEMMs (N=1 14x14x512, one thread: fprop 19 -> 7.4 ms, wgrad 18 -> 8.4 ms; direct 9.5). Filter
transforms write into U in place, with no temporary arrays.

Non-finite values: a tile mixes its 16 input cells, so an inf that direct summation keeps in one output can
meet another inf in a neighbouring output of the tile (inf - inf = NaN). Each chunk's outputs (wgrad: the
result) are checked; if any is not finite, the op reports failure and conv.py computes it directly, which gives
exactly the direct path's infs and NaNs. (A finite Winograd output cannot have a non-finite direct value: an
inf or NaN never cancels to a finite number.)

Used by conv.py when `applies` says so: float32, groups 1, a T x 3 x 3 filter, stride 1, dilation 1, at
least MIN_CHANNELS input and output channels (below that the direct GEMMs are too thin to lose), and outputs
that tiles cover without much waste (MAX_WORK_RATIO), and enough tiles where the transformed filter is large
(MIN_TILES). GPUCONV_WINOGRAD=0 (read per call) convolves directly.
Measured on the CPU box (ResNet-50 3x3 layers, N=8, float32, one thread, OpenBLAS Haswell kernels; fprop /
dgrad / wgrad in ms, direct -> Winograd): 56x56x64 20.6/19.8/20.7 -> 13.0/13.0/13.3, 28x28x128
17.6/17.6/18.1 -> 9.9/10.2/10.6, 14x14x256 16.9/17.4/17.4 -> 9.9/10.5/10.1.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..geometry import ConvProblem
from . import _parallel, _window
from ._nonfinite import operand_is_finite as _finite

# Channels (C and K) below which the direct path stays faster.
MIN_CHANNELS = 32

# Winograd is used only where its tiles' multiplications (16 per tile: a partial tile where P or Q is odd counts
# whole) are at most this fraction of the direct ones (9 per output). Even sizes give 0.44, 7x7 outputs (16 tiles
# for 49 outputs) 0.58, 9x9 0.55, 11x11 0.53, 5x5 0.64. On the CPU box (float32, one thread, N=8, C = K = 64 to
# 512; direct -> Winograd) 7x7 gained 8-60 % (ResNet-50 res5, 7x7x512: fprop 18.3 -> 15.9 ms, dgrad 19.7 -> 14.6,
# wgrad 18.3 -> 15.9), 9x9 and 11x11 20-68 %. (7x7 measured slower before 2026-11-22, when the filter transform
# page-faulted on every call: _filter_buffers.)
MAX_WORK_RATIO = 0.6

# A transformed filter U of more than LARGE_FILTER_BYTES (16 x taps x C x K floats) is streamed from memory by
# each of the 16 GEMMs; with few tile rows to share that traffic the direct GEMM (9 taps' weights, once) wins.
# So such filters take Winograd only with at least MIN_TILES tiles (items x output planes x tiles per plane).
# Measured (CPU box, one thread, C = K = 512, U = 16 MiB; fprop / dgrad / wgrad, Winograd against direct):
# N=1 4x4 (4 tiles) 0.44 / 0.64 / 0.42 of direct's speed, 6x6 (9) 0.61 / 0.96 / 0.63, 7x7 (16) 0.78 / 1.06 /
# 0.65, 9x9 (25) 0.88 / 1.07 / 0.88; N=2 8x8 (32) 1.17 / 1.42 / 1.11, N=1 11x11 (36) 1.09 / 1.09 / 1.01. With
# C = K = 256 (U = 4 MiB, cached) 16 tiles already gain (N=1 8x8: 1.21 / 1.22 / 1.08).
LARGE_FILTER_BYTES = 4 * 2**20
MIN_TILES = 32

# Target scratch bytes of one chunk (_chunk_bytes), at most _window.SCRATCH_BYTES. Measured with V and M alone at
# 2, 4, 8 and 16 MiB (about 3.5 / 7 / 14 / 28 MiB in all): 4 and 8 best, 16 about 15% slower.
CHUNK_BYTES = 8 * 2**20

def enabled() -> bool:
    """GPUCONV_WINOGRAD: unset, empty or 1 -> on, 0 -> off; anything else is a ValueError (not a silent 'on')."""
    value = os.environ.get("GPUCONV_WINOGRAD", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"GPUCONV_WINOGRAD: expected 0 (off) or 1 (on), got {value!r}")
    return value != "0"


def applies(p: ConvProblem, dtype: np.dtype) -> bool:
    """Whether conv.py may use Winograd for this problem (fprop, dgrad and wgrad share the conditions): a 3x3
    filter in height and width, any depth taps (summed directly, correlate_depth) at depth dilation 1."""
    return (enabled() and np.dtype(dtype) == np.float32 and p.groups == 1
            and (p.R, p.S) == (3, 3) and p.stride == (1, 1, 1) and p.dilation[1:] == (1, 1)
            and (p.dilation[0] == 1 if p.T > 1 else p.pad_before[0] == 0 and p.Z == p.D)
            and min(p.C, p.K) >= MIN_CHANNELS and min(p.P, p.Q) >= 2
            and 16 * -(-p.P // 2) * -(-p.Q // 2) <= MAX_WORK_RATIO * 9 * p.P * p.Q
            and (64 * p.T * p.C * p.K <= LARGE_FILTER_BYTES or p.N * p.Z * -(-p.P // 2) * -(-p.Q // 2) >= MIN_TILES)
            and fits(p))


# ---------------------------------------------------------------------------------------------------------
# Transforms. Arrays carry the tile components on their leading axes; everything else broadcasts.
# ---------------------------------------------------------------------------------------------------------

def _g_rows(a0, a1, a2, plus, minus, tmp) -> None:
    """Rows 1 and 2 of G applied to (a0, a1, a2): plus = h + a1/2, minus = h - a1/2 with h = (a0 + a2)/2, held
    in tmp. plus or minus may be a1 (read before either is written)."""
    np.add(a0, a2, out=tmp)
    np.multiply(tmp, np.float32(0.5), out=tmp)
    np.multiply(a1, np.float32(0.5), out=minus)
    np.add(tmp, minus, out=plus)
    np.subtract(tmp, minus, out=minus)


# After G along r, tap column s of row i of U = G g G^T is kept in slot 4 i + _COLUMN_SLOT[s] until G along s.
_COLUMN_SLOT = (0, 1, 3)


def filter_transform(w: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """out (16, C, K) = G g G^T per (c, k) of w (3, 3, C, K), float32; out may be a strided view, tmp is (C, K)
    scratch. Built in place, with no temporary array: a filter of 512 x 512 channels made some 4800 page faults
    per call through its 1 MiB temporaries (15 ms, longer than the GEMMs of a 14x14 layer at N=1)."""
    for s, j in enumerate(_COLUMN_SLOT):                       # G along r: rows 0..3, column s in slot j
        np.copyto(out[j], w[0, s])
        _g_rows(w[0, s], w[1, s], w[2, s], out[4 + j], out[8 + j], tmp)
        np.copyto(out[12 + j], w[2, s])
    for i in range(4):                                         # G along s, per row: slots 0, 1, 3 -> 0..3
        u = out[4 * i:4 * i + 4]
        _g_rows(u[0], u[1], u[3], u[1], u[2], tmp)
    return out


def _filter_buffers(values: int, C: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(a float32 buffer of `values`, a (C, K) float32 scratch) for a call's transformed filter or its gradient,
    in the per-thread buffer "U" (a 512 x 512 filter's U is 16 MiB: a fresh one page-faulted on every call)."""
    return tuple(_window.thread_buffers("U", [((values,), np.float32), ((C, K), np.float32)]))


def transformed_filters(w: np.ndarray, flip: bool) -> np.ndarray:
    """U of a T x 3 x 3 filter w (T, 3, 3, C, K) for correlate / correlate_depth: (16, T*C, K), the depth taps'
    transforms stacked along the reduction axis; flip (dgrad): of w flipped in all three axes, transposed in
    (c, k), (16, T*K, C) as a transposed view (BLAS reads it as it is; tap t's (C, K) blocks are written with
    contiguous rows)."""
    T, C, K = w.shape[0], w.shape[3], w.shape[4]
    buf, tmp = _filter_buffers(16 * T * C * K, C, K)
    if not flip:
        U = buf.reshape(16, T, C, K)
        for t in range(T):
            filter_transform(w[t], U[:, t], tmp)
        return U.reshape(16, T * C, K)
    U = buf.reshape(16, C, T, K)
    for t in range(T):
        filter_transform(w[T - 1 - t, ::-1, ::-1], U[:, :, t], tmp)
    return U.reshape(16, C, T * K).transpose(0, 2, 1)


def _filter_adjoint(du: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """out (3, 3, C, K) = G^T dU G from dU (4, 4, C, K), which is overwritten (G^T along the rows is done in
    place in its rows 0..2); tmp is (C, K) scratch. No temporary array (see filter_transform)."""
    def gt_rows(a, dst) -> None:    # G^T along the first axis of a (4, ...): dst[0..2] (dst may be a[0..2])
        np.add(a[1], a[2], out=tmp)
        np.multiply(tmp, np.float32(0.5), out=tmp)             # h = (a1 + a2) / 2
        np.add(a[0], tmp, out=dst[0])
        np.subtract(a[1], a[2], out=dst[1])
        np.multiply(dst[1], np.float32(0.5), out=dst[1])
        np.add(tmp, a[3], out=dst[2])

    for j in range(4):
        gt_rows(du[:, j], du[:3, j])
    for r in range(3):
        gt_rows(du[r], out[r])
    return out


def _scratch(name: str, size: int) -> np.ndarray:
    """A float32 buffer of `size` values, this thread's buffer `name` kept between calls (_window.thread_buffer)."""
    return _window.thread_buffer(name, size, np.float32)


def _region(src: np.ndarray, n: tuple, rows: tuple, cols: tuple, name: str) -> np.ndarray:
    """src[n0:n1, r0:r1, c0:c1] with zeros where the rows or columns lie outside src (a per-thread buffer)."""
    (n0, n1), (r0, r1), (c0, c1) = n, rows, cols
    H, W, C = src.shape[1:]
    out = _scratch(name, (n1 - n0) * (r1 - r0) * (c1 - c0) * C).reshape(n1 - n0, r1 - r0, c1 - c0, C)
    i0, i1 = max(r0, 0), min(r1, H)
    j0, j1 = max(c0, 0), min(c1, W)
    if i1 <= i0 or j1 <= j0:
        out[...] = 0
        return out
    out[:, i0 - r0:i1 - r0, j0 - c0:j1 - c0] = src[n0:n1, i0:i1, j0:j1]
    out[:, :i0 - r0] = 0
    out[:, i1 - r0:] = 0
    out[:, :, :j0 - c0] = 0
    out[:, :, j1 - c0:] = 0
    return out


def _input_transform(d: np.ndarray, tq: int, V: np.ndarray) -> None:
    """V (16, nb, rb, tq, C) = B^T d B of the tiles of the padded region d (nb, 2 rb + 2, 2 tq + 2, C)."""
    nb, rows, _, C = d.shape
    rb = (rows - 2) // 2
    R = [d[:, k:k + 2 * rb:2] for k in range(4)]              # tile row k of every tile row: (nb, rb, Wp, C)
    t = _scratch("rows", 4 * nb * rb * d.shape[2] * C).reshape((4,) + R[0].shape)
    np.subtract(R[0], R[2], out=t[0])
    np.add(R[1], R[2], out=t[1])
    np.subtract(R[2], R[1], out=t[2])
    np.subtract(R[1], R[3], out=t[3])
    for a in range(4):
        c = [t[a][:, :, k:k + 2 * tq:2] for k in range(4)]      # tile column k: (nb, rb, tq, C)
        np.subtract(c[0], c[2], out=V[4 * a])
        np.add(c[1], c[2], out=V[4 * a + 1])
        np.subtract(c[2], c[1], out=V[4 * a + 2])
        np.subtract(c[1], c[3], out=V[4 * a + 3])


def _output_transform(M: np.ndarray, out: np.ndarray) -> None:
    """out (nb, rows, cols, K) = A^T m A of the tiles M (16, nb, rb, tq, K); rows <= 2 rb, cols <= 2 tq (the
    last tile row or column may stick out of the output and is then cut)."""
    rows, cols = out.shape[1:3]
    S = _scratch("sums", 8 * M[0].size).reshape((2, 4) + M.shape[1:])
    for b in range(4):
        np.add(M[b], M[4 + b], out=S[0, b])
        S[0, b] += M[8 + b]
        np.subtract(M[4 + b], M[8 + b], out=S[1, b])
        S[1, b] -= M[12 + b]
    for a in range(2):
        ra = (rows - a + 1) // 2                               # output rows a, a + 2, ... of this chunk
        for b in range(2):
            cb = (cols - b + 1) // 2
            dst = out[:, a::2, b::2]
            s = [S[a, k][:, :ra, :cb] for k in range(4)]
            if b == 0:
                np.add(s[0], s[1], out=dst)
                dst += s[2]
            else:
                np.subtract(s[1], s[2], out=dst)
                dst -= s[3]


def _chunk_bytes(nb: int, rb: int, tq: int, C: int, K: int, wgrad: bool) -> int:
    """Scratch bytes of a chunk of nb items x rb tile rows: input region, row-stage sums, V, M (or E), output
    row sums (wgrad: the dy region instead)."""
    t = nb * rb * tq
    values = nb * (2 * rb + 2) * (2 * tq + 2) * C + 4 * nb * rb * (2 * tq + 2) * C + 16 * t * (C + K)
    values += 4 * t * K * (2 if not wgrad else 1) + (2 * t * 2 * K if wgrad else 0)
    return 4 * values


def _budget() -> int:
    return min(CHUNK_BYTES, _window.SCRATCH_BYTES)


def _depth_chunk_bytes(nd: int, rb: int, tq: int, T: int, C: int, K: int, wgrad: bool) -> int:
    """Scratch bytes of a correlate_depth / wgrad chunk of nd output planes x rb tile rows: the input region of
    its nd + T - 1 planes, row-stage sums, V, M and the output row sums (wgrad: E, the dy region and its row
    sums, as much)."""
    t, planes = rb * tq, nd + T - 1
    return 4 * (((2 * rb + 2) + 4 * rb) * (2 * tq + 2) * planes * C + 16 * t * planes * C + (16 + 8) * nd * t * K)


def fits(p: ConvProblem) -> bool:
    """Whether one tile row of one item (with depth taps: of one output plane) fits the scratch budget (else
    conv.py convolves directly); dgrad tiles dx, whose width W may exceed Q."""
    tq, ck = -(-max(p.Q, p.W) // 2), max(p.C, p.K)
    if p.T > 1:
        return max(_depth_chunk_bytes(1, 1, tq, p.T, ck, ck, g) for g in (False, True)) <= _budget()
    return _chunk_bytes(1, 1, tq, ck, ck, True) <= _budget()


def _chunks(n: int, tp: int, tq: int, size) -> list:
    """(items, tile rows) chunks within the budget, size(items, tile rows) giving a chunk's scratch bytes: whole
    planes of several items where they fit, else tile rows of one item, spread evenly."""
    budget = _budget()
    if size(1, tp) <= budget:
        items = 1
        while items < n and size(items + 1, tp) <= budget:
            items += 1
        items = -(-n // -(-n // items))                       # spread evenly
        return [((i, min(i + items, n)), (0, tp)) for i in range(0, n, items)]
    rb = 1
    while rb < tp and size(1, rb + 1) <= budget:
        rb += 1
    rb = -(-tp // -(-tp // rb))
    return [((i, i + 1), (r, min(r + rb, tp))) for i in range(n) for r in range(0, tp, rb)]


def fill_until_nonfinite(fill, chunks: list) -> bool:
    """fill(chunk) writes a chunk's outputs and returns them; chunks go to the worker pool as
    _parallel.gemm_workers decides (else in order, with BLAS's threads). False as soon as some chunk's outputs
    are not finite (chunks not yet started are skipped): the caller then computes the whole op directly."""
    bad = []

    def one(chunk) -> None:
        if not bad and not _finite(fill(chunk)):
            bad.append(chunk)

    with _parallel.gemm_workers(len(chunks), transforms=True) as parallel:
        _parallel.map_chunks(one, chunks, parallel)
    return not bad


def correlate(x: np.ndarray, U: np.ndarray, pad: tuple, out: np.ndarray) -> bool:
    """out (N, P, Q, K) = the 3x3 correlation of x (N, H, W, C) with the transformed filter U (16, C, K; any
    strides BLAS takes, e.g. a transposed view), output (p, q) reading x[p - pad[0] + r, q - pad[1] + s] (zero
    outside x). False (out partly written) when an output is not finite: the caller must then compute directly."""
    N, P, Q, K = out.shape
    C = x.shape[-1]
    tp, tq = -(-P // 2), -(-Q // 2)
    chunks = _chunks(N, tp, tq, lambda nb, rb: _chunk_bytes(nb, rb, tq, C, K, False))

    def fill(chunk) -> np.ndarray:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        d = _region(x, (n0, n1), (2 * i0 - pad[0], 2 * i1 - pad[0] + 2), (-pad[1], 2 * tq - pad[1] + 2), "region")
        t = nb * rb * tq
        V = _scratch("V", 16 * t * C).reshape(16, nb, rb, tq, C)
        _input_transform(d, tq, V)
        M = _scratch("M", 16 * t * K).reshape(16, t, K)
        np.matmul(V.reshape(16, t, C), U, out=M)
        dst = out[n0:n1, 2 * i0:min(2 * i1, P)]
        _output_transform(M.reshape(16, nb, rb, tq, K), dst)
        return dst

    return fill_until_nonfinite(fill, chunks)


def _depth_region(src: np.ndarray, n: int, box: tuple, planes_last: bool) -> np.ndarray:
    """src[n, p0:p1, r0:r1, c0:c1] (box: the three ranges), zeros outside src, in a per-thread buffer laid out
    (planes, rows, cols, C) or, planes_last, (rows, cols, planes, C)."""
    order = (1, 2, 0) if planes_last else (0, 1, 2)                 # buffer axis a holds box axis order[a]
    lo = [max(a0, 0) for a0, _ in box]
    hi = [min(a1, size) for (_, a1), size in zip(box, src.shape[1:4])]
    shape = tuple(box[k][1] - box[k][0] for k in order) + (src.shape[-1],)
    out = _scratch("region", math.prod(shape)).reshape(shape)
    if any(b <= a for a, b in zip(lo, hi)):
        out[...] = 0
        return out
    inside = tuple(slice(lo[k] - box[k][0], hi[k] - box[k][0]) for k in order)
    out[inside] = src[n, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].transpose(order + (3,))
    for a, k in enumerate(order):                                    # zero the margins, axis by axis
        out[(slice(None),) * a + (slice(0, lo[k] - box[k][0]),)] = 0
        out[(slice(None),) * a + (slice(hi[k] - box[k][0], None),)] = 0
    return out


def _depth_input_transform(src: np.ndarray, chunk: tuple, T: int, pad: tuple, tq: int,
                           planes_last: bool) -> np.ndarray:
    """V of a chunk (n, (d0, d1) output planes, (i0, i1) tile rows): the input transform of the nd + T - 1
    planes its outputs read through the T depth taps (plane d - pad_d + t), as (16, rb*tq, planes, C) when
    planes_last (a tile's T consecutive planes are T*C contiguous values: correlate_depth's GEMM operand) or
    (16, planes*rb*tq, C) (T consecutive planes are contiguous rows: wgrad's)."""
    n, (d0, d1), (i0, i1) = chunk
    rb, planes, C = i1 - i0, d1 - d0 + T - 1, src.shape[-1]
    box = ((d0 - pad[0], d1 - pad[0] + T - 1), (2 * i0 - pad[1], 2 * i1 - pad[1] + 2), (-pad[2], 2 * tq - pad[2] + 2))
    d = _depth_region(src, n, box, planes_last)
    if planes_last:
        V = _scratch("V", 16 * rb * tq * planes * C).reshape(16, 1, rb, tq, planes * C)
        _input_transform(d.reshape((1,) + d.shape[:2] + (planes * C,)), tq, V)
        return V.reshape(16, rb * tq, planes, C)
    V = _scratch("V", 16 * rb * tq * planes * C).reshape(16, planes, rb, tq, C)
    _input_transform(d, tq, V)
    return V.reshape(16, planes * rb * tq, C)


def _depth_taps(V: np.ndarray, i: int, T: int) -> np.ndarray:
    """(16, tiles, T*C) view of V: per tile, the T planes that output plane i of the chunk reads, in tap order."""
    return V[:, :, i:i + T].reshape(V.shape[:2] + (T * V.shape[3],))


def _depth_chunks(N: int, Z: int, tp: int, tq: int, size) -> list:
    """(n, output planes, tile rows) chunks within the budget (_chunks over the output planes of each item)."""
    return [(n, planes, rows) for n in range(N) for planes, rows in _chunks(Z, tp, tq, size)]


def correlate_depth(x: np.ndarray, U: np.ndarray, T: int, pad: tuple, out: np.ndarray) -> bool:
    """out (N, Z, P, Q, K) = the T x 3 x 3 correlation of x (N, D, H, W, C) with U (16, T*C, K): the transformed
    3x3 filters of the T depth taps stacked along the reduction axis, so that each output plane's depth sum is
    part of one GEMM per tile component (tiles x T*C by T*C x K). Output (z, p, q) reads x[z - pad[0] + t,
    p - pad[1] + r, q - pad[2] + s] (zero outside x). False (out partly written) when an output is not finite."""
    N, Z, P, Q, K = out.shape
    C = x.shape[-1]
    tp, tq = -(-P // 2), -(-Q // 2)
    chunks = _depth_chunks(N, Z, tp, tq, lambda nd, rb: _depth_chunk_bytes(nd, rb, tq, T, C, K, False))

    def fill(chunk) -> np.ndarray:
        n, (d0, d1), (i0, i1) = chunk
        V = _depth_input_transform(x, chunk, T, pad, tq, True)
        M = _scratch("M", 16 * (d1 - d0) * V.shape[1] * K).reshape(16, d1 - d0, V.shape[1], K)
        for i in range(d1 - d0):
            np.matmul(_depth_taps(V, i, T), U, out=M[:, i])
        dst = out[n, d0:d1, 2 * i0:min(2 * i1, P)]
        _output_transform(M.reshape(16, d1 - d0, i1 - i0, tq, K), dst)
        return dst

    return fill_until_nonfinite(fill, chunks)


def fprop(x: np.ndarray, w: np.ndarray, p: ConvProblem, y: np.ndarray) -> bool:
    """y = conv(x, w) for an `applies` problem (5-D channels-last arrays). False: compute directly instead."""
    U = transformed_filters(w, flip=False)
    if p.T > 1:
        return correlate_depth(x, U, p.T, p.pad_before, y)
    x4 = x.reshape((p.N * p.D,) + x.shape[2:])
    y4 = y.reshape((p.N * p.Z,) + y.shape[2:])
    return correlate(x4, U, p.pad_before[1:], y4)


def dgrad(dy: np.ndarray, w: np.ndarray, p: ConvProblem, dx: np.ndarray) -> bool:
    """dx = the stride-1 dgrad: dy correlated with w flipped in (r, s) and transposed in (c, k), padded by
    2 - pad_before (dx[i] reads dy[i + pad_before - r] = dy[i - (2 - pad_before) + (2 - r)])."""
    # U of the flipped filter, used as (16, T*K, C) through a transposed view (BLAS reads it as it is; a
    # transposed copy of w costs about as much as the transform).
    U = transformed_filters(w, flip=True)
    if p.T > 1:            # depth taps flipped too; dx[d] reads dy[d + pad_d - t] = dy[d - (T-1-pad_d) + (T-1-t)]
        return correlate_depth(dy, U, p.T, (p.T - 1 - p.pad_before[0], 2 - p.pad_before[1], 2 - p.pad_before[2]),
                               dx)
    dy4 = dy.reshape((p.N * p.Z,) + dy.shape[2:])
    dx4 = dx.reshape((p.N * p.D,) + dx.shape[2:])
    pad = (2 - p.pad_before[1], 2 - p.pad_before[2])
    return correlate(dy4, U, pad, dx4)


def _dy_transform(e: np.ndarray, E: np.ndarray) -> None:
    """E (16, nb, rb, tq, K) = A' e A'^T of the 2x2 blocks of e (nb, 2 rb, 2 tq, K), with A' = A except for the
    sign of its last row ([0, 1] instead of [0, -1]); wgrad restores the sign on dU (one flip per row and
    column 3), so rows and columns 0 and 3 are plain copies."""
    e0, e1 = e[:, 0::2], e[:, 1::2]                            # (nb, rb, 2 tq, K)
    t = _scratch("rows", 2 * e0.size).reshape((2,) + e0.shape)
    np.add(e0, e1, out=t[0])
    np.subtract(e0, e1, out=t[1])
    for a, r in enumerate((e0, t[0], t[1], e1)):
        c0, c1 = r[:, :, 0::2], r[:, :, 1::2]
        np.copyto(E[4 * a], c0)
        np.add(c0, c1, out=E[4 * a + 1])
        np.subtract(c0, c1, out=E[4 * a + 2])
        np.copyto(E[4 * a + 3], c1)


def _wgrad_depth(x: np.ndarray, dy: np.ndarray, p: ConvProblem, du: np.ndarray) -> None:
    """du (16, T*C, K) of a problem with depth taps: per chunk and tap t, the transform of planes d - pad_d + t
    of all its output planes d against their dy blocks' transform, one GEMM over (planes x tiles); chunks'
    partials added in order."""
    N, Z, P, Q, K = dy.shape
    C, T = x.shape[-1], p.T
    tp, tq = -(-P // 2), -(-Q // 2)

    def partial(chunk, bufs: list) -> None:
        n, (d0, d1), (i0, i1) = chunk
        rows = (d1 - d0) * (i1 - i0) * tq                             # output planes x tiles
        V = _depth_input_transform(x, chunk, T, p.pad_before, tq, False)
        e = _region(dy[n], (d0, d1), (2 * i0, 2 * i1), (0, 2 * tq), "dy")
        E = _scratch("M", 16 * rows * K).reshape(16, d1 - d0, i1 - i0, tq, K)
        _dy_transform(e, E)
        step = rows // (d1 - d0)                                       # V rows per plane
        for t in range(T):
            np.matmul(V[:, t * step:t * step + rows].transpose(0, 2, 1), E.reshape(16, rows, K),
                      out=bufs[0][:, t * C:(t + 1) * C])

    chunks = _depth_chunks(N, Z, tp, tq, lambda nd, rb: _depth_chunk_bytes(nd, rb, tq, T, C, K, True))
    _sum_partials(partial, chunks, [du])


def _sum_partials(partial, chunks: list, totals: list) -> None:
    """totals = the sum of the chunks' partials in chunk order (_parallel.sum_in_order); zeros without chunks
    (totals live in kept buffers, not fresh zeros)."""
    if not chunks:
        for t in totals:
            t[...] = 0
    with _parallel.gemm_workers(len(chunks), transforms=True) as parallel:
        _parallel.sum_in_order(partial, chunks, totals, parallel)


def wgrad(x: np.ndarray, dy: np.ndarray, p: ConvProblem):
    """dw (T, 3, 3, C, K) of an `applies` problem, or None when not finite (compute directly instead)."""
    T, C, K = p.T, x.shape[-1], dy.shape[-1]
    buf, tmp = _filter_buffers(16 * T * C * K, C, K)
    du = buf.reshape(16, T * C, K)
    if T > 1:
        _wgrad_depth(x, dy, p, du)
    else:
        _wgrad_plane(x, dy, p, du)
    du = du.reshape(4, 4, T, C, K)
    du[3] *= -1                                                # undo A' (see _dy_transform)
    du[:, 3] *= -1
    dw = np.empty((T, 3, 3, C, K), np.float32)
    for t in range(T):
        _filter_adjoint(du[:, :, t], dw[t], tmp)
    return dw if _finite(dw) else None


def _wgrad_plane(x: np.ndarray, dy: np.ndarray, p: ConvProblem, du: np.ndarray) -> None:
    """du (16, C, K) of a problem without depth taps: per chunk of tiles, V^T @ E per component; chunks'
    partials added in order."""
    C, K = x.shape[-1], dy.shape[-1]
    x4 = x.reshape((p.N * p.D,) + x.shape[2:])
    dy4 = dy.reshape((p.N * p.Z,) + dy.shape[2:])
    N, P, Q, _ = dy4.shape
    pad = p.pad_before[1:]
    tp, tq = -(-P // 2), -(-Q // 2)

    def partial(chunk, bufs: list) -> None:
        (n0, n1), (i0, i1) = chunk
        nb, rb = n1 - n0, i1 - i0
        t = nb * rb * tq
        d = _region(x4, (n0, n1), (2 * i0 - pad[0], 2 * i1 - pad[0] + 2), (-pad[1], 2 * tq - pad[1] + 2), "region")
        V = _scratch("V", 16 * t * C).reshape(16, nb, rb, tq, C)
        _input_transform(d, tq, V)
        e = _region(dy4, (n0, n1), (2 * i0, 2 * i1), (0, 2 * tq), "dy")
        E = _scratch("M", 16 * t * K).reshape(16, nb, rb, tq, K)
        _dy_transform(e, E)
        np.matmul(V.reshape(16, t, C).transpose(0, 2, 1), E.reshape(16, t, K), out=bufs[0])

    _sum_partials(partial, _chunks(N, tp, tq, lambda nb, rb: _chunk_bytes(nb, rb, tq, C, K, True)), [du])
