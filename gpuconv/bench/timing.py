"""Timing: medians of many repetitions after warm-up, on the CPU (a wall clock) or the GPU (CUDA events).

The loop is one function, `measure`, written against a small timer interface so that it can be tested with a
fake clock:
    timer.mark() -> handle          taken before and after each call
    timer.elapsed(h0, h1) -> s      seconds between two marks (valid after timer.sync())
    timer.sync()                    waits for queued work (the GPU), nothing on the CPU
GPU discipline (notes/kernel-performance.md §8): warm up for a while (compilation, clocks), then time each call
with its own CUDA event pair on the current stream, synchronising once at the end; rotate through several copies
of the inputs so that their working set exceeds the L2 cache and no call finds its inputs cached by the last.

The device's copy bandwidth (the yardstick of memory-bound pooling) is measured with the same loop: a
device-to-device copy of a buffer >= 4x the L2 cache (1 GiB where memory allows), bytes = read + write, the best of
cudaMemcpyAsync and a 16-byte-per-thread copy kernel.
"""
from __future__ import annotations

import collections
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from .metrics import copy_gbps


@dataclass(frozen=True)
class TimingResult:
    """Seconds per call over `reps` timed repetitions (after `warmup` untimed calls)."""

    median_s: float
    min_s: float
    p20_s: float
    p80_s: float
    reps: int
    warmup: int
    copies: int
    clock: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CpuTimer:
    """Wall-clock timer (time.perf_counter unless another clock is given)."""

    name = "perf_counter"

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock

    def mark(self) -> float:
        return self.clock()

    def elapsed(self, h0: float, h1: float) -> float:
        return h1 - h0

    def sync(self) -> None:
        pass


class CudaEventTimer:
    """CUDA events recorded on CuPy's current stream (also the stream PyTorch uses by default: the legacy
    default stream), so one timer serves gpuconv, the CuPy baseline and cuDNN through PyTorch."""

    name = "cuda_events"

    def __init__(self):
        import cupy
        self._cupy = cupy

    def mark(self):
        ev = self._cupy.cuda.Event()
        ev.record()
        return ev

    def elapsed(self, h0, h1) -> float:
        return self._cupy.cuda.get_elapsed_time(h0, h1) / 1e3

    def sync(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (q in [0, 1])."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def rep_count(per_call_s: float, budget_s: float, min_reps: int, max_reps: int) -> int:
    """How many timed repetitions fit in budget_s at per_call_s each, clamped to [min_reps, max_reps]."""
    if per_call_s <= 0:
        return max_reps
    return max(min_reps, min(max_reps, int(budget_s / per_call_s)))


def measure(calls: Sequence[Callable[[], Any]], timer, *, warmup: int = 2, warmup_s: float = 0.0,
            budget_s: float = 1.0, min_reps: int = 5, max_reps: int = 1000, overrun: float = 3.0,
            wall: Callable[[], float] = time.perf_counter) -> TimingResult:
    """Time calls[i % len(calls)] (one closure per input copy) for a number of repetitions.

    Warm-up: at least `warmup` calls (at least 1) and at least `warmup_s` seconds of them; the median of the
    last few warm-up calls sets the repetition count so that the timed loop takes about `budget_s` (within
    [min_reps, max_reps]). Each timed call is bracketed by its own pair of marks; the timer is synchronised
    once after the warm-up and once after the timed loop. If calls slow down (a shared machine), the loop stops
    after min_reps once `wall` shows more than overrun x budget_s spent in it.
    """
    if not calls:
        raise ValueError("measure needs at least one call")
    n = len(calls)
    done = 0
    recent: collections.deque = collections.deque(maxlen=5)
    start = timer.mark()
    while True:
        h0 = timer.mark()
        calls[done % n]()
        h1 = timer.mark()
        recent.append((h0, h1))
        done += 1
        if done >= warmup:
            timer.sync()
            if timer.elapsed(start, h1) >= warmup_s:
                break
    per_call = statistics.median(timer.elapsed(a, b) for a, b in recent)
    reps = rep_count(per_call, budget_s, min_reps, max_reps)
    marks = []
    deadline = wall() + overrun * budget_s
    for i in range(reps):
        h0 = timer.mark()
        calls[(done + i) % n]()
        marks.append((h0, timer.mark()))
        if len(marks) >= min_reps and wall() > deadline:
            break
    timer.sync()
    reps = len(marks)
    times = sorted(timer.elapsed(a, b) for a, b in marks)
    return TimingResult(median_s=statistics.median(times), min_s=times[0], p20_s=quantile(times, 0.2),
                        p80_s=quantile(times, 0.8), reps=reps, warmup=done, copies=n, clock=timer.name)


def copies_for_l2(bytes_per_call: int, l2_bytes: int | None, *, factor: float = 2.0, max_copies: int = 64,
                  max_total_bytes: int = 8 * 2**30) -> int:
    """How many copies of a call's inputs to rotate through so that together they exceed factor x L2.

    1 when the L2 size is unknown (the CPU) or one copy already exceeds it; capped by max_copies and by
    max_total_bytes of device memory.
    """
    if not l2_bytes or bytes_per_call <= 0:
        return 1
    want = math.ceil(factor * l2_bytes / bytes_per_call)
    cap = max(1, max_total_bytes // bytes_per_call)
    return int(max(1, min(want, max_copies, cap)))


# ---------------------------------------------------------------------------------------------------------
# the device's measured copy bandwidth
# ---------------------------------------------------------------------------------------------------------
COPY_KERNEL = r"""
extern "C" __global__ void gpuconv_bench_copy16(const int4* __restrict__ src, int4* __restrict__ dst,
                                                unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}
"""
COPY_BLOCK = 256


def copy_buffer_bytes(l2_bytes: int | None, free_bytes: int | None, *, target: int = 2**30,
                      l2_factor: float = 4.0, align: int = 2**20) -> tuple[int | None, str]:
    """(bytes of each of the two copy buffers, why) for the copy-bandwidth measurement.

    `target` (1 GiB) where it fits: the two buffers may take at most half of the free device memory. The size is
    rounded down to `align` (so it is a multiple of 16) and must be >= l2_factor x L2, or the copy would run
    partly from the cache: (None, reason) then. An unknown L2 size is accepted (stated in the reason).
    """
    size = target
    if free_bytes is not None:
        size = min(size, free_bytes // 4)
    size = size // align * align
    if l2_bytes:
        need = math.ceil(l2_factor * l2_bytes)
        if size < need:
            return None, (f"only {size / 2**20:.0f} MiB per buffer fits in free device memory; "
                          f"{l2_factor:g} x L2 = {need / 2**20:.0f} MiB needed")
        return size, f"{size / 2**20:.0f} MiB per buffer = {size / l2_bytes:.1f} x L2"
    if size <= 0:
        return None, "no device memory free for the copy buffers"
    return size, f"{size / 2**20:.0f} MiB per buffer (L2 size unknown)"


def cupy_copy_calls(cupy, nbytes: int) -> dict[str, Callable[[], Any]]:
    """Two ways to copy one nbytes buffer to another on CuPy's current stream: 'memcpy' (cudaMemcpyAsync,
    device to device) and 'kernel' (COPY_KERNEL, one int4 per thread). nbytes must be a multiple of 16."""
    if nbytes % 16:
        raise ValueError("copy buffers must be a multiple of 16 bytes")
    src = cupy.empty(nbytes, dtype=cupy.uint8)
    dst = cupy.empty(nbytes, dtype=cupy.uint8)
    src.fill(1)          # touch both buffers before timing
    dst.fill(0)
    rt = cupy.cuda.runtime
    kernel = cupy.RawKernel(COPY_KERNEL, "gpuconv_bench_copy16")
    n16 = nbytes // 16
    grid = (n16 + COPY_BLOCK - 1) // COPY_BLOCK

    def memcpy():
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice,
                       cupy.cuda.get_current_stream().ptr)

    def kernel_copy():
        kernel((grid,), (COPY_BLOCK,), (src, dst, cupy.uint64(n16)))

    return {"memcpy": memcpy, "kernel": kernel_copy}


def measure_copy_bandwidth(calls: Mapping[str, Callable[[], Any]], nbytes: int, timer,
                           **measure_kw) -> dict[str, Any]:
    """Time each copy method with `measure`; the copy bandwidth is the best method's (bytes read + written) /
    median time. A method that raises is recorded with its error; {'gbps': None, ...} when none ran."""
    methods: dict[str, dict[str, Any]] = {}
    for name, call in calls.items():
        try:
            r = measure([call], timer, **measure_kw)
        except Exception as exc:  # e.g. the copy kernel does not compile: the other method still counts
            methods[name] = {"gbps": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        methods[name] = {"gbps": copy_gbps(nbytes, r.median_s), "median_ms": r.median_s * 1e3,
                         "min_ms": r.min_s * 1e3, "p20_ms": r.p20_s * 1e3, "p80_ms": r.p80_s * 1e3,
                         "reps": r.reps, "warmup": r.warmup}
    ok = {k: v for k, v in methods.items() if v.get("gbps")}
    best = max(ok, key=lambda k: ok[k]["gbps"]) if ok else None
    return {"gbps": ok[best]["gbps"] if best else None, "method": best, "buffer_bytes": nbytes,
            "bytes_per_copy": 2 * nbytes, "clock": timer.name, "methods": methods,
            **({} if best else {"reason": "no copy method ran"})}
