"""The NumPy backend's worker pool: independent output chunks spread over threads.

NumPy releases the GIL in ufuncs, copies, fancy indexing and matmul, so threads run the per-chunk work of an op
(a pooling box, a column block and its GEMM, a slice of a scatter) on several cores at once.

Rules every caller keeps (results are bit-identical whatever the thread count):
  - each chunk writes its own part of the output (no two chunks touch one output element), and computes it
    exactly as the serial loop would: the same boxes, the same operations in the same order;
  - reductions that span chunks (conv wgrad's sum over boxes) are not split: chunks return partial results and
    the caller combines them in chunk order (`map_ordered`, `sum_in_order`);
  - scratch is per thread (per-thread buffers or per-chunk arrays, never a shared mutable buffer), so the memory
    bound of the serial path holds per worker: total scratch = workers x the per-worker budget
    (_window.SCRATCH_BYTES for column blocks, _window.POOL_BOX_BYTES for pooling boxes).

The pool is process-wide, created lazily with `num_threads()` workers: GPUCONV_NUM_THREADS if set, else
os.cpu_count(). 1 is the serial path (no pool at all). The calling thread works too: it takes chunks from the
same queue as the pool's threads, so a call finishes even when the pool is busy with other callers' work, and
users may call gpuconv from several threads at once. A chunk never submits work itself: code already running
inside a chunk (a pool thread, or a caller while it runs chunks) gets the serial path, so nothing waits on a
pool that may be waiting on it. Chunks run in the caller's context variables and floating-point error state
(np.errstate).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np

from . import _window

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_size: int | None = None
_local = threading.local()
# gemm_workers: numpy's OpenBLAS held at one thread by `depth` calls, its own count `saved`; the setter, found once.
_blas_set = None
_blas_limit_lock = threading.Lock()
_blas_limit = {"depth": 0, "saved": 0}


# Most workers a pool may have: far above any core count this backend scales to, low enough that a typo
# (GPUCONV_NUM_THREADS=100000) is an error rather than a hundred thousand threads.
MAX_THREADS = 1024


def _checked(n, source: str) -> int:
    """n as a worker count in [1, MAX_THREADS], else a ValueError naming where it came from."""
    if isinstance(n, str):
        # Plain ASCII digits only: int() would also take '2_0' and other scripts' digits.
        value = int(n) if n.isascii() and n.isdigit() else None
    else:
        try:
            value = int(n) if not isinstance(n, (bool, float)) else None
        except (TypeError, ValueError):
            value = None
    if value is None or not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{source}: expected an integer number of worker threads in [1, {MAX_THREADS}], "
                         f"got {n!r}")
    return value


def _configured() -> int:
    env = os.environ.get("GPUCONV_NUM_THREADS", "").strip()
    if env:
        return _checked(env, "GPUCONV_NUM_THREADS")
    return min(MAX_THREADS, max(1, os.cpu_count() or 1))


def _size_locked() -> int:
    """num_threads() for a caller holding _lock."""
    global _size
    if _size is None:
        _size = _configured()
    return _size


def num_threads() -> int:
    """Workers of the pool (GPUCONV_NUM_THREADS, else os.cpu_count(); read once, at first use)."""
    size = _size
    if size is None:
        with _lock:
            size = _size_locked()       # the value read under the lock: set_num_threads(None) may reset _size
    return size


def set_num_threads(n: int | None) -> None:
    """Set the worker count (None: back to GPUCONV_NUM_THREADS / os.cpu_count()). Calls already running keep
    the pool they started with; the old pool's threads exit once idle."""
    global _size, _pool
    with _lock:
        old, _pool = _pool, None
        _size = None if n is None else _checked(n, "num_threads")
    if old is not None:
        old.shutdown(wait=False)


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing's "fork" start method, e.g. data-loader workers) holds copies of the
    parent's pool and lock but none of its threads: the stale pool would never run a task (the caller then did
    every chunk alone) and a lock some other parent thread held at the fork would stay held forever. The child
    starts with a fresh lock and makes its own pool on first use; the worker count is kept. A fork during a
    parent call that holds numpy's BLAS at one thread (gemm_workers) would leave the child's BLAS there for good
    (the call that restores it runs in the parent only): the child restores it."""
    global _lock, _pool, _blas_limit_lock
    _lock = threading.Lock()
    _pool = None
    _blas_limit_lock = threading.Lock()
    if _blas_limit["depth"] > 0:
        _blas_limit["depth"] = 0
        _blas_setter()(_blas_limit["saved"])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _mark_worker() -> None:
    _local.inside = True


def workers() -> int:
    """Threads a call may use now: 1 inside a chunk (no nested parallelism), else num_threads()."""
    return 1 if getattr(_local, "inside", False) else num_threads()


def _submit(task: Callable, copies: int) -> list:
    """Futures of `copies` runs of task on the pool (made on first use with num_threads() - 1 threads: the
    caller is the last worker). Under the lock set_num_threads swaps the pool under, so no task lands on a pool
    it has shut down (that was a RuntimeError, and helpers already submitted for the call waited forever)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, _size_locked() - 1), thread_name_prefix="gpuconv-numpy",
                                       initializer=_mark_worker)
        return [_pool.submit(task) for _ in range(copies)]


def map_chunks(fn: Callable, items: Iterable, parallel: bool = True) -> None:
    """fn(item) for every item; independent items, spread over the workers (serial when 1 worker or 1 item, or
    when not `parallel`: the caller's judgement that the work is too small to pay for waking a thread)."""
    if not parallel:
        for it in items:
            fn(it)
        return
    map_ordered(fn, items, None)


_blas_get = None


def blas_threads() -> int:
    """Threads numpy's BLAS uses now (OpenBLAS's own getter from numpy's bundled library, else threadpoolctl if
    installed); 0 when unknown."""
    global _blas_get
    if _blas_get is None:
        _blas_get = _find_blas_getter()
    try:
        return int(_blas_get())
    except Exception:
        return 0


def _find_blas_getter() -> Callable:
    """The bundled OpenBLAS's getter first: a C call, where threadpoolctl's survey of the loaded libraries took
    0.33 ms per call on the CPU box (gemm_workers asks once per convolution call)."""
    fn = _openblas_function(("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                             "openblas_get_num_threads64_", "openblas_get_num_threads"), "c_int")
    if fn is not None:
        return fn
    try:
        import threadpoolctl

        def via_threadpoolctl() -> int:
            info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
            return max((i.get("num_threads", 0) for i in info), default=0)
        return via_threadpoolctl
    except ImportError:
        return lambda: 0


def _openblas_function(names: Sequence[str], restype: str):
    """The first of `names` exported by numpy's bundled OpenBLAS (numpy.libs), with ctypes restype `restype`;
    None when there is no such library or function."""
    try:
        import ctypes
        import glob

        libdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))), "numpy.libs")
        for path in glob.glob(os.path.join(libdir, "*openblas*")):
            lib = ctypes.CDLL(path)
            for name in names:
                if hasattr(lib, name):
                    fn = getattr(lib, name)
                    fn.restype = getattr(ctypes, restype)
                    return fn
    except Exception:
        pass
    return None


# OpenBLAS kernel sets that use AVX-512 (OpenBLAS's names; it runs SkylakeX on AVX-512 AMD CPUs too, as on the
# CPU box's AMD EPYC).
AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def blas_kernels() -> str:
    """The kernel set numpy's OpenBLAS runs ('Haswell' = AVX2, 'SkylakeX' = AVX-512, ...), chosen when numpy
    loads it, from the CPU or from OPENBLAS_CORETYPE; '' when unknown (another BLAS, or no getter)."""
    fn = _openblas_function(("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                             "openblas_get_corename64_", "openblas_get_corename"), "c_char_p")
    try:
        return fn().decode().strip() if fn is not None else ""
    except Exception:
        return ""


def cpu_has_avx512() -> bool:
    """Whether /proc/cpuinfo lists avx512f (False where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def blas_kernel_note() -> str:
    """One line on numpy's BLAS kernels for `gpuconv info`: the set, what chose it, and whether it leaves the
    CPU's AVX-512 unused (the NumPy backend's convolutions are GEMMs in this BLAS: on the project's AMD EPYC box
    OpenBLAS's AVX2 SGEMM ran at about half the speed of its AVX-512 one, README "Benchmarks")."""
    kernels = blas_kernels()
    if not kernels:
        return "unknown (not numpy's bundled OpenBLAS)"
    forced = os.environ.get("OPENBLAS_CORETYPE", "").strip()
    note = kernels + (f" (set by OPENBLAS_CORETYPE={forced})" if forced else " (OpenBLAS's choice for this CPU)")
    if kernels.lower() not in AVX512_KERNELS and cpu_has_avx512():
        note += "; this CPU has AVX-512, which these kernels leave unused" + (
            ": unset OPENBLAS_CORETYPE for faster GEMMs" if forced else "")
    return note


def _blas_setter():
    """OpenBLAS's openblas_set_num_threads from numpy's bundled library, or None (another BLAS, or none found)."""
    global _blas_set
    if _blas_set is None:
        _blas_set = _openblas_function(("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                                        "openblas_set_num_threads64_", "openblas_set_num_threads"), "c_int") or False
    return _blas_set or None


@contextlib.contextmanager
def gemm_workers(chunks: int, transforms: bool = False):
    """Whether `chunks` chunks that each run a GEMM go to the worker pool (the value yielded).

    Chunk threads and BLAS threads at once oversubscribe the cores (each chunk's GEMM wakes BLAS's threads too: 4
    busy threads on 2 cores; 8x56x56x64 3x3 fprop, N=8, on the 2-core CPU box: 14.3 ms against 12.1-12.8 for
    either alone), so it is one or the other. Chunks whose work is GEMMs and copies (conv.py's direct path) go to
    the pool only where BLAS is single-threaded anyway: with BLAS's threads their GEMMs scale as well (8x56x56x64
    1x1 fprop on the Zen 4 host, 2 threads: 2.2-2.8 ms in order with a 2-thread BLAS, 3.8-4.1 ms on 2 workers
    with a 1-thread one).

    transforms: the chunks also do much NumPy work outside BLAS (Winograd's transforms), which only the pool
    spreads over the cores: where BLAS runs several threads they go down to 1 while the chunks run and back
    afterwards (process-wide, counted over concurrent calls; what scikit-learn's KMeans does with threadpoolctl
    around its own threads; a GEMM another thread of the program runs meanwhile gets one BLAS thread). Zen 4
    host, 2 threads, ResNet-50 3x3 layers at N=8, in order with a 2-thread BLAS -> on the pool: 56x56x64 wgrad
    22-28 -> 14-19 ms, fprop 19-20 -> 13-19, the stride-2 28x28/56x56 layers 5-15 % faster, the 14x14 and 7x7
    ones within noise. With fewer than 2 x workers chunks they keep BLAS's threads and run in order, and so do
    all chunks where BLAS's threads cannot be read or set (not numpy's bundled OpenBLAS)."""
    nw = workers()
    if nw <= 1 or chunks < 2:
        yield False
        return
    limited = False
    with _blas_limit_lock:
        if _blas_limit["depth"] > 0:                # another call holds BLAS at one thread now
            limited = transforms
            parallel = transforms
        else:
            threads = blas_threads()
            parallel = threads == 1
            if transforms and threads > 1 and chunks >= 2 * nw and _blas_setter() is not None:
                _blas_limit["saved"] = threads
                _blas_setter()(1)
                limited = parallel = True
        if limited:
            _blas_limit["depth"] += 1
    try:
        yield parallel
    finally:
        if limited:
            with _blas_limit_lock:
                _blas_limit["depth"] -= 1
                if _blas_limit["depth"] == 0:
                    _blas_setter()(_blas_limit["saved"])


def map_ordered(fn: Callable, items: Iterable, combine: Callable | None) -> None:
    """fn(item) for every item on the workers; combine(result) is called in item order, on the calling thread
    (e.g. a fixed-order sum of per-chunk partial results). A chunk that raises (a KeyboardInterrupt on the
    calling thread included) stops the call: no further chunk starts, the running ones finish, and the first
    exception in item order propagates."""
    items: Sequence = items if isinstance(items, (list, tuple)) else list(items)
    n = min(workers(), len(items))
    if n <= 1:
        for it in items:
            r = fn(it)
            if combine is not None:
                combine(r)
        return
    count = len(items)
    results = [None] * count
    errors = [None] * count
    done = [threading.Event() for _ in range(count)] if combine is not None else None
    counter = iter(range(count))
    take = threading.Lock()
    # With combine, a pool thread starts chunk i only once i < (chunks combined) + 2n, so at most about 2n
    # partial results are alive at a time.
    state = {"next": 0}
    progress = threading.Condition()
    failed = threading.Event()            # set by the first chunk that raises: no further chunk starts

    def run(i: int, throttled: bool = True) -> None:
        """Chunk i, unless the call has failed; done[i] is set whatever happens (the caller may wait on it).
        throttled: a pool thread's chunk, which waits for the combining to come near (not the calling thread's:
        it is the one that combines)."""
        try:
            if done is not None and throttled:
                with progress:
                    progress.wait_for(lambda: i < state["next"] + 2 * n or failed.is_set())
            if not failed.is_set():
                results[i] = fn(items[i])
        except BaseException as e:            # reported on the calling thread
            errors[i] = e
            failed.set()
            with progress:
                progress.notify_all()
        finally:
            if done is not None:
                done[i].set()

    def drain() -> None:
        prev = getattr(_local, "inside", False)
        _local.inside = True
        try:
            while not failed.is_set():
                with take:
                    i = next(counter, None)
                if i is None:
                    return
                run(i)
        finally:
            _local.inside = prev

    # Pool threads run in a copy of the caller's context (np.errstate is a context variable in NumPy 2) and
    # under the caller's floating-point error state set explicitly (NumPy 1.x keeps it per thread).
    caller = contextvars.copy_context()
    err, call = np.geterr(), np.geterrcall()

    def pool_drain() -> None:
        with np.errstate(call=call, **err):
            drain()

    futures: list = []
    finished = False
    try:
        futures = _submit(lambda: caller.copy().run(pool_drain), n - 1)
        if combine is None:
            drain()
        else:
            _combine_in_order(run, combine, results, errors, done, counter, take, state, progress, failed)
        finished = True
    finally:
        # Whatever happened (an error in combine, or an interrupt while waiting, included), no chunk is left to
        # start and no pool thread waits. After a normal finish every chunk has been taken, but a pool thread may
        # not yet have started the one it took: `failed` is then left alone, since setting it would make that
        # thread skip its chunk (an output part silently never written).
        if not finished:
            failed.set()
        with take:
            for _ in counter:
                pass
        with progress:
            state["next"] = count + 2 * n
            progress.notify_all()
        for f in futures:
            if not f.cancel():
                f.result()
    for e in errors:
        if e is not None:
            raise e


def sum_in_order(partial: Callable, items: Sequence, totals: list, parallel: bool) -> None:
    """totals[k] = the sum over items of partial's k-th result, added in item order on the calling thread (the
    first partial is the sum's first term), so the sum is bit-identical whatever the worker count. partial(item,
    bufs) overwrites bufs, arrays shaped like totals. parallel: items go to the worker pool (e.g. gemm_workers()),
    else they run in order on this thread: the first partial then goes straight into totals and the others into
    one spare set carved from this thread's buffer "partial" (_window.thread_buffers, kept between calls: a fresh
    set of a filter gradient's size page-faulted on every call). On the pool, buffer sets are fresh and recycled
    between items. Unchanged totals when there are no items."""
    items = items if isinstance(items, (list, tuple)) else list(items)
    if not parallel or min(workers(), len(items)) <= 1:
        bufs = None
        for k, it in enumerate(items):
            if k == 0:
                partial(it, totals)
                continue
            if bufs is None:
                bufs = _window.thread_buffers("partial", [(t.shape, t.dtype) for t in totals])
            partial(it, bufs)
            for t, b in zip(totals, bufs):
                np.add(t, b, out=t)
        return
    free: list = []
    first = [True]

    def run(item) -> list:
        try:
            bufs = free.pop()
        except IndexError:
            bufs = [np.empty_like(t) for t in totals]
        partial(item, bufs)
        return bufs

    def add(bufs: list) -> None:
        for t, b in zip(totals, bufs):
            if first[0]:
                np.copyto(t, b)
            else:
                np.add(t, b, out=t)
        first[0] = False
        free.append(bufs)

    map_ordered(run, items, add)


def _combine_in_order(run, combine, results, errors, done, counter, take, state, progress, failed) -> None:
    """The calling thread's part of map_ordered: combine finished chunks in order, run chunks meanwhile (run:
    map_ordered's chunk runner); returns early once a chunk has failed."""
    nxt, count = 0, len(results)
    while nxt < count and not failed.is_set():
        if done[nxt].is_set():
            if errors[nxt] is None:
                combine(results[nxt])
                results[nxt] = None               # free the partial result
            nxt += 1
            with progress:
                state["next"] = nxt
                progress.notify_all()
            continue
        with take:
            i = next(counter, None)
        if i is None:
            done[nxt].wait()                  # chunk nxt was taken: its thread sets done[nxt] in any case
            continue
        prev = getattr(_local, "inside", False)
        _local.inside = True
        try:
            run(i, throttled=False)
        finally:
            _local.inside = prev


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in at most `parts` contiguous ranges of near-equal length."""
    parts = max(1, min(parts, n))
    return [(n * k // parts, n * (k + 1) // parts) for k in range(parts) if n * (k + 1) // parts > n * k // parts]
