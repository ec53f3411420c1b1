"""Boundaries and guards of geometry, argument normalisation, validation and dispatch.

Each test pins one limit or check that a mutation audit of these modules (2026-11-22: 226 single-point changes,
46 of them wrong yet passing every other test) found untested: an off-by-one at INT32_MAX or 2^60, a dropped
half of an `or`, a per-batch index bound, a case-insensitive backend name. Expected values come from TF's size
rule (DESIGN.md section 2), from the limits documented in the code (pads, strides, sizes <= INT32_MAX; tensors
< 2^60 elements) or from the argmax index formula; the derivation is in each comment. Shapes with a zero batch
keep the "huge" cases free of memory.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _args as A
from gpuconv import backend as B
from gpuconv import geometry as G

I32 = 2**31 - 1
F32 = np.float32


def _x(shape):
    return np.arange(int(np.prod(shape)), dtype=F32).reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# geometry: the INT32_MAX output bound, the 2^60 element bound, zero extents
# ---------------------------------------------------------------------------------------------------------
def test_explicit_pads_may_give_exactly_int32_max():
    """The pad bound is 'output <= INT32_MAX': exactly INT32_MAX passes, one more fails."""
    # out = (n + pb + pa - e + s) / s = (1 + (2^31 - 2) + 0 - 1 + 1) / 1 = 2^31 - 1
    assert G.axis_geometry(1, 1, 1, 1, (I32 - 1, 0)) == (I32, I32 - 1, 0)
    # (1 + (2^31 - 1) - 1 + 1) / 1 = 2^31 > max(n=1, INT32_MAX)
    with pytest.raises(ValueError, match="padding"):
        G.axis_geometry(1, 1, 1, 1, (I32, 0))


def test_output_bound_is_relative_to_the_input_too():
    """An input longer than INT32_MAX (possible for an empty tensor) may keep its length: the bound is
    max(n, INT32_MAX), not INT32_MAX."""
    # VALID, k = s = d = 1: out = n
    assert G.axis_geometry(2**31 + 4, 1, 1, 1, "VALID") == (2**31 + 4, 0, 0)


def test_check_elements_bound_is_strict_at_2_pow_60():
    """Tensors need fewer than 2^60 elements: 2^60 - 1 passes, exactly 2^60 fails."""
    G.check_elements((2**60 - 1,), "input", "an input")
    with pytest.raises(ValueError, match="2\\^60"):
        G.check_elements((2**30, 2**30), "input", "an input")


def test_conv_problem_checks_every_tensor_for_2_pow_60():
    """conv_problem refuses an input, a filter and an output of 2^60 elements, each naming its argument."""
    one = (1, 1, 1)
    # x = 2^60 elements; 1x1 VALID with stride 2^30: out = (2^30 - 1 + 2^30) // 2^30 = 1
    with pytest.raises(ValueError, match="^input_sizes: .*2\\^60"):
        G.conv_problem((1, 1, 2**30, 2**30, 1), (1, 1, 1, 1, 1), (1, 2**30, 2**30), one, "VALID",
                       input_arg="input_sizes")
    # w = 2^60 elements on a 1x1 input, SAME (out = 1)
    with pytest.raises(ValueError, match="^filter_sizes: .*2\\^60"):
        G.conv_problem((1, 1, 1, 1, 1), (1, 2**30, 2**30, 1, 1), one, one, "SAME", filter_arg="filter_sizes")
    # y: pads (0, 2^31 - 2) give P = Q = 1 + 2^31 - 2 = 2^31 - 1; y = 4 (2^31 - 1)^2 > 2^60; x and w tiny
    pad = ((0, 0), (0, I32 - 1), (0, I32 - 1))
    with pytest.raises(ValueError, match="output with fewer than 2\\^60"):
        G.conv_problem((1, 1, 1, 1, 1), (1, 1, 1, 1, 4), one, one, pad)


def test_pool_problem_checks_the_output_for_2_pow_60():
    """A pooled output of >= 2^60 elements from a 1-cell input (pads just below the window) is refused."""
    k = I32
    # out = (1 + 2(k-1) - k + 1) / 1 = k = 2^31 - 1 per spatial axis: y = (2^31 - 1)^2 * 4 > 2^60
    pad = ((0, 0), (k - 1, k - 1), (k - 1, k - 1))
    with pytest.raises(ValueError, match="output with fewer than 2\\^60"):
        G.pool_problem((1, 1, 1, 1, 4), (1, k, k), (1, 1, 1), pad)


def test_pool_problem_needs_int64_at_exactly_2_pow_31():
    """PoolProblem.needs_int64 switches at >= 2^31 elements (2^16 x 2^15 = 2^31), like ConvProblem's."""
    assert G.pool_problem((1, 1, 2**16, 2**15, 1), (1, 1, 1), (1, 1, 1), "VALID").needs_int64()
    assert not G.pool_problem((1, 1, 2**16, 2**15 - 1, 1), (1, 1, 1), (1, 1, 1), "VALID").needs_int64()


def test_is_empty_covers_each_tensor():
    """is_empty (the kernel backends' no-launch shortcut) is true when any one tensor is empty."""
    # conv: x has height 0 but pads (1, 1) give y height 2 (all padding): x empty, y and w not
    p = G.conv_problem((1, 1, 0, 3, 1), (1, 1, 1, 1, 1), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (0, 0)))
    assert p.y_shape == (1, 1, 2, 3, 1) and p.is_empty
    # pool: window 3 on width 2, VALID: y width 0 while x is not empty
    q = G.pool_problem((1, 1, 2, 2, 1), (1, 1, 3), (1, 1, 1), "VALID")
    assert q.y_shape == (1, 1, 2, 0, 1) and q.is_empty


def test_gemm_size_dgrad_counts_every_tap():
    """dgrad's implicit GEMM: M = N*D*H*W, N = C/G, K = K/G * taps (DESIGN section 4)."""
    p = G.conv_problem((2, 1, 5, 6, 4), (1, 3, 2, 2, 6), (1, 1, 1), (1, 1, 1), "SAME")   # G = 2, taps = 6
    assert p.gemm_size("dgrad") == (2 * 5 * 6, 2, 3 * 6)
    assert p.gemm_size("wgrad") == (3, 2 * 6, 2 * 5 * 6)
    # flops: the same multiply-add count for the three operators, 2 * M * N * K * G
    assert p.flops("fprop") == p.flops("dgrad") == p.flops("wgrad") == 2 * 60 * 3 * 12 * 2


def test_zero_in_channel_filter_is_a_value_error():
    """Filters with 0 in-channels are a ValueError naming filters (not a ZeroDivisionError in C % 0)."""
    with pytest.raises(ValueError, match="^filters: .*in-channel"):
        gpuconv.conv2d(np.zeros((1, 3, 3, 2), F32), np.zeros((1, 1, 0, 4), F32), 1, "VALID")


def test_zero_channel_input_is_a_value_error():
    """An input with 0 channels would give 0 groups: a ValueError naming the input (not a ZeroDivisionError)."""
    with pytest.raises(ValueError, match="^input: expected at least one channel .*got input with 0 channels"):
        gpuconv.conv2d(np.zeros((1, 3, 3, 0), F32), np.zeros((1, 1, 1, 2), F32), 1, "VALID")


@pytest.mark.parametrize("dy_batch", [3, 1])
def test_backprop_filter_checks_the_batch(dy_batch):
    """conv2d_backprop_filter: input and out_backprop batches must agree (only check_backprop_output sees it;
    without it a batch-1 out_backprop silently sums over the input's first batch only)."""
    with pytest.raises(ValueError, match="^input: .*batch"):
        gpuconv.conv2d_backprop_filter(np.ones((2, 4, 4, 1), F32), [3, 3, 1, 1],
                                       np.ones((dy_batch, 2, 2, 1), F32), 1, "VALID")


def test_backprop_filter_accepts_int32_max_filter_sizes():
    """filter_sizes entries up to INT32_MAX are legal (an empty filter gradient keeps this memory-free)."""
    # x (0, 1, 1, 2^31-1) is empty; filters (1, 1, 2^31-1, 0): one group, K = 0; SAME keeps out = 1.
    dw = gpuconv.conv2d_backprop_filter(np.zeros((0, 1, 1, I32), F32), [1, 1, I32, 0],
                                        np.zeros((0, 1, 1, 0), F32), 1, "SAME")
    assert dw.shape == (1, 1, I32, 0) and dw.dtype == F32


# ---------------------------------------------------------------------------------------------------------
# _args: sequences, data_format, INT32_MAX boundaries, signs of pads and sizes
# ---------------------------------------------------------------------------------------------------------
def test_int_sequence_refuses_a_2d_array_with_value_error():
    """A 2-D integer array is a ValueError saying 1-D (not a TypeError from reading a row as an int)."""
    with pytest.raises(ValueError, match="1-D"):
        A.int_sequence(np.ones((1, 2), np.int64), "strides")
    with pytest.raises(ValueError, match="^strides"):
        gpuconv.conv2d(_x((1, 3, 3, 1)), np.ones((1, 1, 1, 1), F32), np.ones((2, 2), np.int64), "VALID")


def test_int_sequence_refuses_object_arrays():
    """An object array is refused by dtype, even when its elements are Python ints."""
    with pytest.raises(TypeError, match="dtype object"):
        A.int_sequence(np.array([1, 2], dtype=object), "strides")


@pytest.mark.parametrize("fmt", ["NCW", "NWC", "NDHWC", "NCDHW"])
def test_conv2d_refuses_layouts_of_other_ranks(fmt):
    """A layout of another rank is a ValueError, not read as channels-first."""
    with pytest.raises(ValueError, match="data_format"):
        gpuconv.conv2d(_x((1, 3, 3, 1)), np.ones((1, 1, 1, 1), F32), 1, "VALID", data_format=fmt)


@pytest.mark.parametrize("fmt", ["NHWC", "NCHW", "NCW"])
def test_conv3d_refuses_layouts_of_other_ranks(fmt):
    """The same for conv3d."""
    with pytest.raises(ValueError, match="data_format"):
        gpuconv.conv3d(np.zeros((1, 2, 2, 2, 1), F32), np.ones((1, 1, 1, 1, 1), F32), 1, "VALID",
                       data_format=fmt)


def test_strides_none_is_a_type_error():
    """strides has no default: None is a TypeError (only dilations default to 1)."""
    with pytest.raises(TypeError, match="^strides"):
        gpuconv.conv2d(_x((1, 3, 3, 1)), np.ones((1, 1, 1, 1), F32), None, "VALID")


def test_stride_int32_max_is_legal():
    """A stride of exactly INT32_MAX is accepted; 2^31 is not."""
    assert A.window_param(I32, "strides", 2, True) == (I32, I32)
    with pytest.raises(ValueError, match="strides"):
        A.window_param(I32 + 1, "strides", 2, True)
    # VALID 1x1 on 3x3 with stride 2^31-1: out = (3 - 1 + s) // s = 1, the top-left cell
    y = gpuconv.conv2d(_x((1, 3, 3, 1)), np.full((1, 1, 1, 1), 2, F32), I32, "VALID")
    np.testing.assert_array_equal(y, np.zeros((1, 1, 1, 1), F32))


@pytest.mark.parametrize("pairs", [[(0, 0), (0, -1)], [(0, -1), (0, 0)], [(-1, 0), (0, 0)]])
def test_negative_pad_after_or_before_is_refused(pairs):
    """Every pad, before and after, must be >= 0 (a negative after-pad would crop the input)."""
    with pytest.raises(ValueError, match="non-negative"):
        A.padding_param(pairs, 2, True)


def test_negative_pad_after_through_the_api():
    """The same through conv2d, in NHWC pairs."""
    with pytest.raises(ValueError, match="^padding: .*non-negative"):
        gpuconv.conv2d(_x((1, 3, 3, 1)), np.ones((1, 1, 1, 1), F32), 1, [[0, 0], [1, -1], [0, 0], [0, 0]])


def test_pads_up_to_int32_max_and_no_further():
    """Pads are held in a C++ int: INT32_MAX before and after is legal, 2^31 on either side is not."""
    assert A.padding_param([(I32, I32), (0, 0)], 2, True) == ((I32, I32), (0, 0))
    for pairs in ([(I32 + 1, 0), (0, 0)], [(0, I32 + 1), (0, 0)], [(0, 0), (0, I32 + 1)]):
        with pytest.raises(ValueError, match="pads <="):
            A.padding_param(pairs, 2, True)


def test_shape_param_signs_and_bounds_of_every_entry():
    """input_sizes / output_shape: every entry (spatial, batch and channels) in [0, INT32_MAX]."""
    assert A.shape_param([I32, 1], "output_shape", 2, True, batch=1, channels=1) == (1, 1, I32, 1, 1)
    assert A.shape_param([1, 0, 2, 3], "input_sizes", 2, True, batch=1, channels=None) == (1, 1, 0, 2, 3)
    for bad in ([1, -1, 3, 1], [1, 3, 3, -1]):                   # a spatial size, the channels
        with pytest.raises(ValueError, match="^input_sizes: .*non-negative"):
            A.shape_param(bad, "input_sizes", 2, True, batch=1, channels=None)
    with pytest.raises(ValueError, match="^input_sizes: .*sizes <="):
        A.shape_param([1, 3, 3, I32 + 1], "input_sizes", 2, True, batch=1, channels=None)
    with pytest.raises(ValueError, match="^input_sizes: .*non-negative"):
        gpuconv.conv2d_backprop_input([1, 3, 3, -1], np.ones((1, 1, 1, 1), F32), np.ones((1, 3, 3, 1), F32),
                                      1, "VALID")


# ---------------------------------------------------------------------------------------------------------
# argmax ops: index-type capacity and per-batch index bounds
# ---------------------------------------------------------------------------------------------------------
def test_argmax_int32_capacity_boundary():
    """int32 holds indices 0 .. 2^31 - 1: a per-batch size of 2^31 fits, 2^31 + 1 does not (empty batches keep
    this memory-free; without include_batch_in_index the index range is per batch whatever N is)."""
    _, am = gpuconv.max_pool_with_argmax(np.empty((0, 2**31, 1, 1), F32), 1, 1, "VALID", output_dtype="int32")
    assert am.dtype == np.int32 and am.shape == (0, 2**31, 1, 1)
    with pytest.raises(ValueError, match="output_dtype"):
        gpuconv.max_pool_with_argmax(np.empty((0, 2**31 + 1, 1, 1), F32), 1, 1, "VALID", output_dtype="int32")


def test_argmax_capacity_with_batch_in_index_counts_the_batch():
    """With include_batch_in_index the largest index is N*H*W*C - 1: for N = 0 there is none, so int32 does."""
    _, am = gpuconv.max_pool_with_argmax(np.empty((0, 2**31 + 1, 1, 1), F32), 1, 1, "VALID",
                                         output_dtype="int32", include_batch_in_index=True)
    assert am.dtype == np.int32 and am.size == 0


def _batch1_index():
    """Two batches of 2x2x1: per-batch size 4, so index 4 is batch 1's first cell only with the batch term."""
    return np.array([4, 0], np.int64).reshape(2, 1, 1, 1)


def test_grad_with_argmax_bounds_indices_per_batch():
    """Without include_batch_in_index an index must be < H*W*C, even when N*H*W*C is larger."""
    with pytest.raises(ValueError, match="^argmax"):
        gpuconv.max_pool_grad_with_argmax(np.zeros((2, 2, 2, 1), F32), np.ones((2, 1, 1, 1), F32),
                                          _batch1_index(), 2, 2, "VALID")
    # with the batch term, index 4 of batch 0 is batch 1's cell (0, 0): dx[1,0,0,0] += grad[0]
    dx = gpuconv.max_pool_grad_with_argmax(np.zeros((2, 2, 2, 1), F32), np.array([5, 7], F32).reshape(2, 1, 1, 1),
                                           _batch1_index(), 2, 2, "VALID", include_batch_in_index=True)
    want = np.zeros((2, 2, 2, 1), F32)
    want[1, 0, 0, 0] += 5
    want[0, 0, 0, 0] += 7
    np.testing.assert_array_equal(dx, want)


def test_max_unpool_bounds_indices_per_batch():
    """max_unpool: the same per-batch bound."""
    with pytest.raises(ValueError, match="^argmax"):
        gpuconv.max_unpool(np.ones((2, 1, 1, 1), F32), _batch1_index(), (2, 2, 2, 1))


def test_max_unpool_grad_bounds_indices_per_batch():
    """max_unpool_grad: the same per-batch bound."""
    with pytest.raises(ValueError, match="^argmax"):
        gpuconv.max_unpool_grad(np.ones((2, 2, 2, 1), F32), _batch1_index())


@pytest.mark.parametrize("grad_shape,argmax_shape", [((2, 2, 2, 1), (1, 1, 1, 1)),     # batch differs
                                                     ((1, 2, 2, 2), (1, 1, 1, 1))])    # channels differ
def test_max_unpool_grad_needs_grads_batch_and_channels(grad_shape, argmax_shape):
    """max_unpool_grad: argmax's batch and channels must be grad's."""
    with pytest.raises(ValueError, match="^argmax"):
        gpuconv.max_unpool_grad(np.ones(grad_shape, F32), np.zeros(argmax_shape, np.int64))


def test_max_unpool_grad_needs_argmax_of_grads_rank():
    """max_unpool_grad: a 5-D argmax against a 4-D grad is a ValueError (nothing else compares the ranks)."""
    with pytest.raises(ValueError, match="^argmax: .*4-D"):
        gpuconv.max_unpool_grad(np.ones((1, 2, 2, 1), F32), np.zeros((1, 1, 1, 1, 1), np.int64))


def test_max_unpool_output_shape_below_2_pow_60():
    """max_unpool refuses an output_shape of 2^60 elements before allocating it."""
    with pytest.raises(ValueError, match="^output_shape: .*2\\^60"):
        gpuconv.max_unpool(np.ones((1, 1, 1, 1), F32), np.zeros((1, 1, 1, 1), np.int64), (2**30, 2**30))


# ---------------------------------------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------------------------------------
def test_backend_names_are_case_insensitive():
    """use_backend('NumPy') selects 'numpy' and ops run on it."""
    with gpuconv.use_backend("NumPy") as name:
        assert name == "numpy" and gpuconv.get_backend() == "numpy"
        y = gpuconv.conv2d(_x((1, 2, 2, 1)), np.ones((1, 1, 1, 1), F32), 1, "VALID")
    np.testing.assert_array_equal(y, _x((1, 2, 2, 1)))


def test_empty_backend_environment_variable_means_auto(monkeypatch):
    """GPUCONV_BACKEND set but empty is 'auto' (as if unset), not an invalid name."""
    monkeypatch.setenv("GPUCONV_BACKEND", "")
    assert gpuconv.get_backend() == "auto"


def test_cupy_module_object_without_array_interface_is_not_an_array():
    """An object from CuPy's modules that is not an array (no __cuda_array_interface__) is refused."""
    Fake = type("Fake", (), {"__module__": "cupy._core.core"})
    assert not B.is_cupy_array(Fake())
    with pytest.raises(TypeError, match="^input: expected a NumPy or CuPy array"):
        gpuconv.conv2d(Fake(), np.ones((1, 1, 1, 1), F32), 1, "VALID")
