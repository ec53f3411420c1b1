"""Adversarial inputs to the public API on the NumPy backend: unusual but plausible arrays and arguments.

Regressions of defects found by an audit (each test says what the old code did), and guards for input kinds the
other test files do not cover: zero-stride (broadcast) and memory-mapped read-only arrays, ndarray subclasses,
arguments that alias each other.
"""
from __future__ import annotations

import contextlib
import itertools
import signal

import numpy as np
import pytest

import gpuconv as gc
from gpuconv.numpy_backend._window import axis_taps
from test_errors import base_calls

@contextlib.contextmanager
def _within(seconds: int):
    """Fail a block that runs longer than `seconds` (SIGALRM; pytest runs tests on the main thread)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

# ---------------------------------------------------------------------------------------------------------
# window taps along one axis: closed form instead of a Python loop over every output
# ---------------------------------------------------------------------------------------------------------
def _taps_brute_force(n, k, s, d, pb, o):
    return tuple(t for t in range(k) if any(0 <= q * s + t * d - pb < n for q in range(o)))

def test_axis_taps_equals_brute_force():
    for n, k, s, d, pb, o in itertools.product(range(6), range(6), range(1, 5), range(1, 4), range(7), range(7)):
        assert axis_taps.__wrapped__(n, k, s, d, pb, o) == _taps_brute_force(n, k, s, d, pb, o), (n, k, s, d, pb, o)

def test_axis_taps_cost_does_not_grow_with_the_output_extent():
    """Old code: a Python loop over all o outputs (2-3 s per 4M rows; o = 2^31 - 1 ran for half an hour)."""
    big = 2**31 - 1
    with _within(10):
        assert axis_taps.__wrapped__(big, 3, 1, 1, 1, big) == (0, 1, 2)
        assert axis_taps.__wrapped__(big, 5, 2, 3, 6, big // 2) == (0, 1, 2, 3, 4)
        assert axis_taps.__wrapped__(1, big, big, 1, big - 1, 3) == (big - 1,)      # n < s, huge window

def test_filter_gradient_of_an_empty_batch_with_a_huge_extent_is_immediate():
    """Old code: conv2d_backprop_filter of x (0, 2^28, 1, 1) computed nothing for 150-220 s (axis_taps)."""
    rows = 2**28
    x = np.empty((0, rows, 1, 1), np.float32)
    dy = np.empty((0, rows, 1, 2), np.float32)
    with _within(10):
        dw = gc.conv2d_backprop_filter(x, (3, 1, 1, 2), dy, 1, "SAME")
    assert dw.shape == (3, 1, 1, 2) and not dw.any()

def test_input_gradient_with_a_huge_stride_costs_its_output_not_the_phases():
    """Old code: dgrad visited every stride phase in Python (5.7 s for stride 2^24; 2^31 - 1 ran for minutes);
    the phases with taps come from the taps now. dx row o*s + k - pad_before receives w[k] * dy[o]."""
    rows = 2**24
    w = np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1, 1)
    dy = np.full((1, 1, 1, 1), 2, np.float32)
    with _within(10):
        dx = gc.conv2d_backprop_input((1, rows, 1, 1), w, dy, (rows, 1), "SAME")
        dxt = gc.conv2d_transpose(dy, w, (1, rows, 1, 1), (rows, 1), "SAME")
    # SAME with one output: pad_before = max(0 * rows + 3 - rows, 0) // 2 = 0, so tap k lands on dx row k.
    want = np.zeros(rows, np.float32)
    want[:3] = 2 * w.ravel()
    assert np.array_equal(dx.ravel(), want) and np.array_equal(dxt.ravel(), want)

# ---------------------------------------------------------------------------------------------------------
# error messages stay short whatever was passed
# ---------------------------------------------------------------------------------------------------------
_X = np.ones((1, 4, 4, 1), np.float32)
_W = np.ones((1, 1, 1, 1), np.float32)
_MILLION = [1] * 10**6
_LONG_MESSAGE_CALLS = {
    "strides": lambda: gc.conv2d(_X, _W, _MILLION, "SAME"),
    "ksize": lambda: gc.max_pool2d(_X, [1, 2, 2, 1] + _MILLION, 1, "SAME"),
    "input_sizes": lambda: gc.conv2d_backprop_input(_MILLION, _W, _X, 1, "SAME"),
    "filter_sizes": lambda: gc.conv2d_backprop_filter(_X, _MILLION, _X, 1, "SAME"),
    "output_shape": lambda: gc.max_unpool(_X, np.zeros(_X.shape, np.int64), _MILLION),
    "include_batch_in_index": lambda: gc.max_pool_with_argmax(_X, 2, 2, "SAME", include_batch_in_index=_MILLION),
    "output_dtype": lambda: gc.max_pool_with_argmax(_X, 2, 2, "SAME", output_dtype="x" * 10**6),
    "data_format": lambda: gc.max_pool_with_argmax(_X, 2, 2, "SAME", data_format="x" * 10**6),
}

@pytest.mark.parametrize("arg", sorted(_LONG_MESSAGE_CALLS))
def test_error_messages_are_bounded(arg):
    """Old code: these messages printed the whole value (1-3 MB of text)."""
    with pytest.raises((ValueError, TypeError), match=f"^{arg}: ") as info:
        _LONG_MESSAGE_CALLS[arg]()
    assert len(str(info.value)) < 500, len(str(info.value))

# ---------------------------------------------------------------------------------------------------------
# integers and padding
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: gc.conv2d(_X, _W, np.timedelta64(2, "s"), "SAME"),
    lambda: gc.max_pool2d(_X, [np.timedelta64(2, "ms"), 2], 2, "SAME"),
])
def test_time_values_are_not_integers(call):
    """Old code: np.timedelta64 has __index__, so a stride of two "time units" was accepted as 2 (its arrays
    were refused)."""
    with pytest.raises(TypeError, match="^(strides|ksize): expected an integer"):
        call()

def test_zero_d_padding_array_is_refused_showing_what_was_given():
    """Old code: 'padding: expected 'SAME', 'VALID' or ..., got 'SAME'' (the array was shown after tolist())."""
    with pytest.raises(TypeError, match=r"^padding: .*got a 0-d array array\('SAME'"):
        gc.conv2d(_X, _W, 1, np.array("SAME"))

# ---------------------------------------------------------------------------------------------------------
# guards: array kinds and aliasing (results equal those of plain C-contiguous copies; inputs untouched)
# ---------------------------------------------------------------------------------------------------------
class _Sub(np.ndarray):
    pass

def _broadcast(a, tmp_path):
    """A zero-stride read-only view with the same values (the batch axis broadcast from one item)."""
    return np.broadcast_to(a[:1], a.shape)

def _memmap(a, tmp_path):
    path = tmp_path / "a.dat"
    np.asarray(a).tofile(path)
    return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)

def _subclass(a, tmp_path):
    return a.view(_Sub)

def _transposed(a, tmp_path):
    """A C-contiguous buffer of another axis order, transposed back: strides in no simple order."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)

@pytest.mark.parametrize("kind", [_broadcast, _memmap, _subclass, _transposed], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("name", sorted(base_calls()))
def test_unusual_array_kinds_give_the_plain_result(name, kind, tmp_path):
    fn, kwargs = base_calls()[name]
    tensors = [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]
    for k in tensors:                                    # broadcast: give every tensor one repeated batch item
        if kind is _broadcast and kwargs[k].shape[0] > 1:
            kwargs[k] = np.ascontiguousarray(_broadcast(kwargs[k], tmp_path))
    expected = fn(**kwargs)
    for k in tensors:
        odd = dict(kwargs)
        odd[k] = kind(kwargs[k], tmp_path)
        before = np.array(odd[k])
        got = fn(**odd)
        for e, g in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            assert type(g) is np.ndarray and g.flags.writeable and not np.shares_memory(g, odd[k])
            assert g.dtype == e.dtype and g.tobytes() == np.ascontiguousarray(e).tobytes(), (name, k)
        np.testing.assert_array_equal(odd[k], before)

def test_arguments_that_alias_each_other():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    buf = rng.standard_normal((2, 7, 6, 4)).astype(np.float32)
    keep_x, keep_buf = x.copy(), buf.copy()
    # the same array as input and out_backprop; overlapping views of one buffer
    assert np.array_equal(gc.conv2d_backprop_filter(x, (3, 3, 4, 4), x, 1, "SAME"),
                          gc.conv2d_backprop_filter(x.copy(), (3, 3, 4, 4), x.copy(), 1, "SAME"))
    assert np.array_equal(gc.conv2d_backprop_filter(buf[:, :6], (3, 3, 4, 4), buf[:, 1:], 1, "SAME"),
                          gc.conv2d_backprop_filter(buf[:, :6].copy(), (3, 3, 4, 4), buf[:, 1:].copy(), 1, "SAME"))
    # one array as orig_input, orig_output and grad (stride 1 SAME keeps the shape)
    assert np.array_equal(gc.max_pool_grad(x, x, x, 2, 1, "SAME"),
                          gc.max_pool_grad(x.copy(), x.copy(), x.copy(), 2, 1, "SAME"))
    # integer updates that are their own argmax
    idx = np.arange(x.size, dtype=np.int64).reshape(x.shape) % (6 * 6 * 4)
    assert np.array_equal(gc.max_unpool(idx, idx, x.shape), gc.max_unpool(idx.copy(), idx.copy(), x.shape))
    assert np.array_equal(x, keep_x) and np.array_equal(buf, keep_buf)


# ---------------------------------------------------------------------------------------------------------
# arguments are checked before a tensor is copied into the canonical layout
# ---------------------------------------------------------------------------------------------------------
_NCHW = np.ones((1, 2, 5, 5), np.float32)
_NHWC = np.ones((1, 5, 5, 2), np.float32)
_CHECKED_BEFORE_COPY = {
    "max_pool2d ksize": lambda: gc.max_pool2d(_NCHW, 7, 1, "VALID", data_format="NCHW"),
    "avg_pool3d padding": lambda: gc.avg_pool3d(np.ones((1, 2, 3, 3, 3), np.float32), 2, 1, [[0, 0]] * 5 + [[1, 1]],
                                                data_format="NCDHW"),
    "max_pool_with_argmax ksize": lambda: gc.max_pool_with_argmax(_NHWC, 9, 1, "VALID"),
    "max_pool_grad shapes": lambda: gc.max_pool_grad(_NCHW, _NCHW, _NCHW, 2, 2, "VALID", data_format="NCHW"),
    "max_pool_grad_with_argmax grad": lambda: gc.max_pool_grad_with_argmax(_NHWC, _NHWC, _NHWC.astype(np.int64), 2,
                                                                           2, "VALID"),
    "avg_pool_grad shape": lambda: gc.avg_pool_grad((1, 2, 9, 9), _NCHW, 2, 2, "VALID", data_format="NCHW"),
    "conv2d window": lambda: gc.conv2d(_NCHW, np.ones((3, 3, 2, 1), np.float32), 1, "VALID", data_format="NCHW",
                                       dilations=4),
    "conv2d_backprop_input sizes": lambda: gc.conv2d_backprop_input((1, 2, 9, 9), np.ones((3, 3, 2, 2), np.float32),
                                                                    _NCHW, 1, "VALID", data_format="NCHW"),
    "conv2d_backprop_filter out_backprop": lambda: gc.conv2d_backprop_filter(_NCHW, (3, 3, 2, 2), _NCHW, 1, "VALID",
                                                                             data_format="NCHW"),
    # (argmax's range is not here: the argmax-indexed ops take channels-last tensors only, whose canonical form is a
    # view, and their backends check the range after the kernel, whose flag spares the check on good indices)
    "max_unpool_grad argmax": lambda: gc.max_unpool_grad(_NHWC, np.zeros((2, 2, 2, 2), np.int64)),
}


@pytest.mark.parametrize("case", sorted(_CHECKED_BEFORE_COPY))
def test_bad_arguments_are_refused_before_the_input_is_copied(case, monkeypatch):
    """Old code copied the input into the canonical layout (a transposing copy of an NCHW tensor) before it
    checked ksize, strides, padding and the shapes that depend on them: a bad argument cost a full copy."""
    def copied(*args, **kwargs):
        raise AssertionError("a tensor was copied before the arguments were checked")
    for module in ("gpuconv.pool", "gpuconv.conv", "gpuconv.unpool"):
        monkeypatch.setattr(f"{module}.to_canonical", copied)
    with pytest.raises(ValueError):
        _CHECKED_BEFORE_COPY[case]()
