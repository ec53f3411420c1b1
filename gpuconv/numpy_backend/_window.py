"""Window sweeps without padding buffers: per-tap valid ranges and bounded chunking of index boxes.

Every NumPy op here walks the window taps (t, r, s) and, per tap, touches the output positions whose input cell
is in bounds through one strided slice. Padding is never materialised: a tap simply skips the output positions
that would read padding. Along one axis, output o reads input `i = o * stride + offset` (fprop / pooling:
offset = k * dilation - pad_before); `tap_range` finds the o for which i lies in [i_lo, i_hi).

Work is done in boxes of output positions (`boxes`) so that every scratch array is bounded by SCRATCH_BYTES
whatever the problem size.
"""
from __future__ import annotations

import functools
import itertools
import math
import threading
from typing import Iterator, Sequence

import numpy as np

# Upper bound for any scratch array of the NumPy backend (column buffers, masks, accumulators).
SCRATCH_BYTES = 32 * 2**20

# Pooling sweeps make several passes over box-shaped scratch per tap and gain nothing from larger boxes
# (measured on the CPU box, quiet: 2x2 argmax pooling of 4x360x480x64 floats 71 ms with 32 MiB or 4 MiB
# boxes, 91 ms with 256 KiB), so they keep their scratch at this size.
POOL_BOX_BYTES = 4 * 2**20


_kept = threading.local()


def thread_buffer(name: str, size: int, dtype) -> np.ndarray:
    """A buffer of `size` values of dtype: this thread's buffer `name`, kept between calls (grown as needed),
    where it is at most SCRATCH_BYTES, else a fresh array that is not kept. Fresh multi-MiB arrays on every call
    page-fault (the allocator hands such memory back to the system on free): a Winograd wgrad of 512 x 512
    channels made 3600 faults per call, 18 ms where its GEMMs take 8 (CPU box, one thread). A caller holds one
    view of a name at a time; different dtypes share a name's bytes."""
    dtype = np.dtype(dtype)
    nbytes = size * dtype.itemsize
    if nbytes > SCRATCH_BYTES:
        return np.empty(size, dtype)
    buf = getattr(_kept, name, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, np.uint8)
        setattr(_kept, name, buf)
    return buf[:nbytes].view(dtype)


def thread_buffers(name: str, parts: Sequence[tuple]) -> list[np.ndarray]:
    """Arrays of the given (shape, dtype) parts, carved at 64-byte offsets from this thread's buffer `name`
    (thread_buffer: kept between calls up to SCRATCH_BYTES in all)."""
    nbytes = [math.prod(shape) * np.dtype(dt).itemsize for shape, dt in parts]
    sizes = [-(-n // 64) * 64 for n in nbytes]
    buf = thread_buffer(name, sum(sizes), np.uint8)
    out, at = [], 0
    for (shape, dt), n, size in zip(parts, nbytes, sizes):
        out.append(buf[at:at + n].view(dt).reshape(shape))
        at += size
    return out


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def first_cells(o0: int, o1: int, stride: int, pad_before: int) -> np.ndarray:
    """Per pooling window o in [o0, o1) along one axis: its first in-bounds input index (pads are smaller than
    windows, so every window has one)."""
    return np.maximum(np.arange(o0, o1) * stride - pad_before, 0)


def cell_counts(n: int, k: int, s: int, pb: int, o0: int, o1: int) -> np.ndarray:
    """Number of in-bounds cells of each pooling window o in [o0, o1) along one axis of n cells."""
    start = np.arange(o0, o1) * s - pb
    return np.minimum(start + k, n) - np.maximum(start, 0)


def _interior_axis(n: int, extent: int, s: int, pb: int, o: int) -> tuple[int, int]:
    """The range [lo, hi) of the o outputs along one axis whose window (extent input cells from o*s - pb) lies
    inside [0, n)."""
    lo = min(o, ceil_div(pb, s))
    hi = min(o, (n + pb - extent) // s + 1)
    return lo, max(lo, hi)


def interior(p) -> list[tuple[int, int]]:
    """Per output axis (z, p, q) of a PoolProblem: the range [lo, hi) of outputs whose window lies entirely
    inside x."""
    return [_interior_axis(n, k, s, pb, o)
            for n, k, s, pb, o in zip((p.D, p.H, p.W), p.window, p.stride, p.pad_before, (p.Z, p.P, p.Q))]


def conv_interior(p) -> list[tuple[int, int]]:
    """Per output axis (z, p, q) of a ConvProblem: the range [lo, hi) of outputs none of whose taps reads
    padding (the dilated window lies inside x)."""
    return [_interior_axis(n, (k - 1) * d + 1, s, pb, o) for n, k, s, d, pb, o in
            zip((p.D, p.H, p.W), (p.T, p.R, p.S), p.stride, p.dilation, p.pad_before, (p.Z, p.P, p.Q))]


def tap_range(o0: int, o1: int, stride: int, offset: int, i_lo: int, i_hi: int) -> tuple[int, int, int]:
    """Outputs o in [o0, o1) whose input index o*stride + offset lies in [i_lo, i_hi).

    Returns (lo, hi, i_start): the range [lo, hi) relative to o0 (empty when hi <= lo, then (0, 0, 0)) and the
    input index read by output o0 + lo.
    """
    lo = max(o0, ceil_div(i_lo - offset, stride))
    hi = min(o1, ceil_div(i_hi - offset, stride))
    if hi <= lo:
        return 0, 0, 0
    return lo - o0, hi - o0, lo * stride + offset


def tap_slices(box: Sequence[slice], offsets: Sequence[int], strides: Sequence[int], dims: Sequence[int]):
    """(inner, sel) for one window tap of a box of output positions (batch, depth, row, column slices): the slice
    of the box whose outputs read an input cell inside dims through this tap (input o * stride + offset per
    axis), and the strided input slice they read. None when no output of the box does."""
    rng = [tap_range(b.start, b.stop, s, off, 0, n) for b, s, off, n in zip(box[1:], strides, offsets, dims)]
    if any(hi <= lo for lo, hi, _ in rng):
        return None
    inner = (slice(None),) + tuple(slice(lo, hi) for lo, hi, _ in rng)
    sel = (box[0],) + tuple(slice(i0, i0 + (hi - lo - 1) * s + 1, s) for (lo, hi, i0), s in zip(rng, strides))
    return inner, sel


@functools.lru_cache(maxsize=256)
def axis_taps(n: int, k: int, s: int, d: int, pb: int, o: int) -> tuple[int, ...]:
    """Window taps t in [0, k) along one axis that some output q in [0, o) reads in bounds: q*s + t*d - pb in
    [0, n), i.e. ceil((pb - q*s) / d) <= t < ceil((pb - q*s + n) / d). A union of o intervals of at most
    ceil(n / d) taps, so a huge window on a small input costs the input and output extents, not the window's.
    Pooling visits only these taps; a conv's filter gradient is zero at the others.

    Found in O(1) where n >= s (one interval, below) and otherwise in O(min(k, outputs that meet the input))
    Python steps: a loop over all o outputs took 2-3 s per 4M rows, minutes for an empty batch of 2^28 rows."""
    if o <= 0 or n <= 0 or k <= 0:
        return ()
    if n >= s:
        # Output q's interval [ceil((pb - q*s)/d), ceil((pb - q*s + n)/d)) ends at or after the start of q-1's
        # (the input span moves by s <= n per output), so the union is one interval: from the last output's
        # start to the first one's end.
        lo, hi = max(0, ceil_div(pb - (o - 1) * s, d)), min(k, ceil_div(pb + n, d))
        return tuple(range(lo, hi))
    # Only outputs with q*s - pb <= n - 1 and q*s - pb + (k-1)*d >= 0 can meet the input.
    q0, q1 = max(0, ceil_div(pb - (k - 1) * d, s)), min(o, (pb + n - 1) // s + 1)
    if k <= q1 - q0:
        # Fewer taps than candidate outputs: test each tap (some q in [q0, q1) with q*s in [pb - t*d, pb - t*d + n)).
        return tuple(t for t in range(k)
                     if max(q0, ceil_div(pb - t * d, s)) <= min(q1 - 1, (pb - t * d + n - 1) // s))
    spans = []
    for q in range(q0, q1):
        lo, hi = max(0, ceil_div(pb - q * s, d)), min(k, ceil_div(pb - q * s + n, d))
        if hi > lo:
            spans.append((lo, hi))
    taps: list = []
    last = -1
    for lo, hi in sorted(spans):
        lo = max(lo, last + 1)
        if hi > lo:
            taps.extend(range(lo, hi))
            last = hi - 1
    return tuple(taps)


def dgrad_phases(p) -> list[dict[int, list[tuple[int, int]]]]:
    """The input gradient's stride phases, per spatial axis of ConvProblem p: {phase: [(tap, offset), ...]} for
    the dx phases i = phase + stride*j that some tap reaches, in increasing phase. Tap k lands on phase
    (k*dilation - pad_before) mod stride and there reads dy row j + offset, offset = -floor((k*dilation -
    pad_before) / stride); a phase's taps are listed in decreasing k, i.e. increasing offset. Only the phases with
    taps are found, from the taps: the work grows with the filter, not the stride (a stride-2^24 1x1 dgrad took
    5.7 s when every phase was tried)."""
    out = []
    for n, k_n, s, d, pb in zip((p.D, p.H, p.W), (p.T, p.R, p.S), p.stride, p.dilation, p.pad_before):
        per_phase: dict = {}
        for k in reversed(range(k_n)):
            q, phase = divmod(k * d - pb, s)
            if phase < n:
                per_phase.setdefault(phase, []).append((k, -q))
        out.append(dict(sorted(per_phase.items())))
    return out


def phases_cover(p, per_axis: list) -> bool:
    """Whether dgrad_phases' phases reach every dx cell (else the cells of the missing phases are zeros)."""
    return all(len(ph) >= min(s, n) for ph, s, n in zip(per_axis, p.stride, (p.D, p.H, p.W)))


def boxes(dims: Sequence[int], unit_bytes: int, budget: int | None = None) -> Iterator[tuple[slice, ...]]:
    """Split the index box [0, dims) into C-order sub-boxes of at most `budget` bytes (unit_bytes per index).

    Each sub-box is a single index along the leading axes, a range along one axis and full along the trailing
    axes, so it is one contiguous block of a C-contiguous array of shape dims. A single index of the last axis
    is the smallest box, even if it exceeds the budget.
    """
    budget = SCRATCH_BYTES if budget is None else budget
    dims = [int(v) for v in dims]
    inner = unit_bytes
    split = len(dims) - 1
    for ax in range(len(dims) - 1, -1, -1):
        if inner * dims[ax] > budget:
            split = ax
            break
        inner *= dims[ax]
    else:
        yield tuple(slice(0, d) for d in dims)
        return
    step = max(1, budget // inner)
    lead = [range(d) for d in dims[:split]]
    tail = tuple(slice(0, d) for d in dims[split + 1:])
    for idx in itertools.product(*lead):
        head = tuple(slice(i, i + 1) for i in idx)
        for a in range(0, dims[split], step):
            yield head + (slice(a, min(a + step, dims[split])),) + tail


def box_shape(box: Sequence[slice]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)
