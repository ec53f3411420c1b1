"""Reliability: odd array layouts, IEEE specials through convolutions, determinism, threads, compile-cache races.

Each test runs on the NumPy backend and through the emulator (the CUDA kernels on the CPU).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gpuconv as gc
import loop_reference as ref

BACKENDS = ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)]
RNG = np.random.default_rng(7)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _ops(x, w, dy):
    """A small call of each family: fprop, dgrad, wgrad, max pool + argmax, avg pool, unpool."""
    y = gc.conv2d(x, w, 2, "SAME")
    dx = gc.conv2d_backprop_input(x.shape, w, dy, 2, "SAME")
    dw = gc.conv2d_backprop_filter(x, w.shape, dy, 2, "SAME")
    p, a = gc.max_pool_with_argmax(x, 3, 2, "SAME")
    un = gc.max_unpool(p, a, x.shape)
    avg = gc.avg_pool2d(x, 3, 2, "SAME")
    return [y, dx, dw, p, a, un, avg]


def _inputs():
    x, w = f32(2, 7, 6, 3), f32(3, 3, 3, 4)
    return x, w, f32(2, 4, 3, 4)


def _layouts(a):
    """The same values as a non-contiguous view, a negative-stride view, Fortran order and read-only."""
    doubled = np.zeros((a.shape[0], a.shape[1] * 2) + a.shape[2:], a.dtype)
    doubled[:, ::2] = a
    flipped = np.ascontiguousarray(a[:, ::-1])[:, ::-1]
    readonly = a.copy()
    readonly.flags.writeable = False
    return {"strided": doubled[:, ::2], "negative": flipped, "fortran": np.asfortranarray(a), "readonly": readonly}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["strided", "negative", "fortran", "readonly"])
def test_array_layouts_give_identical_results(backend, layout):
    x, w, dy = _inputs()
    with gc.use_backend(backend):
        expected = _ops(x, w, dy)
        xv = _layouts(x)[layout]
        wv = np.asfortranarray(w) if layout == "fortran" else w
        got = _ops(xv, wv, _layouts(dy)[layout])
    assert not (layout == "strided" and xv.flags.c_contiguous)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ieee_specials_propagate_through_convolutions(backend):
    x, w = f32(1, 6, 6, 2), f32(3, 3, 2, 3)
    x[0, 1, 1, 0] = np.nan
    x[0, 4, 4, 1] = np.inf
    x[0, 4, 5, 1] = -np.inf
    with gc.use_backend(backend):
        y = gc.conv2d(x, w, 1, "SAME")
    expected = ref.conv_fprop(x.astype(np.float64), w.astype(np.float64), (1, 1), "SAME").astype(np.float32)
    # Same NaN positions and same infinities; finite values agree to float32 rounding.
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    assert np.isnan(y).any() and np.isinf(y).any()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_are_bit_identical(backend):
    x, w, dy = _inputs()
    with gc.use_backend(backend):
        first = _ops(x, w, dy)
        second = _ops(x, w, dy)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


@pytest.mark.emulator
def test_kernels_are_bit_identical_across_thread_orders(monkeypatch):
    x, w, dy = _inputs()
    results = {}
    for order in ("forward", "reverse", "shuffle:3"):
        monkeypatch.setenv("GPUCONV_EMULATOR_ORDER", order)
        from gpuconv.executors.emulator import EmulatorExecutor
        from gpuconv.kernel_backend import KernelBackend
        be = KernelBackend(EmulatorExecutor())
        monkeypatch.setattr("gpuconv.backend._instances", {"emulator": be})
        with gc.use_backend("emulator"):
            results[order] = [r.tobytes() for r in _ops(x, w, dy)]
    assert results["forward"] == results["reverse"] == results["shuffle:3"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_from_several_threads_are_correct(backend):
    cases = [_inputs() for _ in range(4)]
    with gc.use_backend("numpy"):
        expected = [_ops(*c) for c in cases]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            with gc.use_backend(backend):  # context-local: each thread selects its own backend
                results[i] = _ops(*cases[i % len(cases)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 8
    for i, got in results.items():
        for e, g in zip(expected[i % len(cases)], got):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_backend_selection_is_thread_local():
    seen = {}

    def work():
        seen["other"] = gc.get_backend()

    with gc.use_backend("numpy"):
        t = threading.Thread(target=work)
        t.start()
        t.join()
        seen["here"] = gc.get_backend()
    assert seen == {"other": "auto", "here": "numpy"}


@pytest.mark.emulator
def test_emulator_compile_cache_is_safe_under_concurrent_first_use(tmp_path, monkeypatch):
    """Several threads hit a cold cache at once: one build, every caller gets a working library."""
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path))
    from gpuconv.executors.emulator import EmulatorExecutor
    from gpuconv.kernel_backend import KernelBackend
    x = f32(1, 5, 5, 2)
    expected = gc.max_pool2d(x, 2, 1, "VALID")
    be = KernelBackend(EmulatorExecutor())
    monkeypatch.setattr("gpuconv.backend._instances", {"emulator": be})
    out, errors = [], []

    def work():
        try:
            with gc.use_backend("emulator"):
                out.append(gc.max_pool2d(x, 2, 1, "VALID"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(out) == 4
    for o in out:
        np.testing.assert_array_equal(o, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_gradient_sums_wrap_like_numpy(backend):
    """An int32 cell chosen by two overlapping windows sums past 2^31: wraps modulo 2^32 on every backend."""
    x = np.zeros((1, 1, 3, 1), np.int32)
    x[0, 0, 1, 0] = 9                       # the middle cell is the max of both 2-wide windows (stride 1)
    dy = np.full((1, 1, 2, 1), 2**31 - 1, np.int32)
    with gc.use_backend(backend):
        dx = gc.max_pool_grad(x, gc.max_pool2d(x, (1, 2), 1, "VALID"), dy, (1, 2), 1, "VALID")
    expected = np.array([0, np.int32(-2), 0], np.int32)   # (2^31 - 1) * 2 = 2^32 - 2 -> -2 in int32
    np.testing.assert_array_equal(dx.reshape(-1), expected)


@pytest.mark.gpu
def test_ops_on_several_cupy_streams_at_once():
    """Each thread launches on its own non-blocking stream; results equal the NumPy backend's."""
    import cupy

    cases = [_inputs() for _ in range(4)]
    with gc.use_backend("numpy"):
        expected = [_ops(*c) for c in cases]
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in cases]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            with streams[i]:
                got = _ops(*(cupy.asarray(a) for a in cases[i]))
                streams[i].synchronize()
            results[i] = [cupy.asnumpy(g) for g in got]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == len(cases)
    for i, got in results.items():
        for e, g in zip(expected[i], got):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
