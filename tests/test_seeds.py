"""The worked examples of the seed documents (../shared/seeds), with their exact numbers.

000/001: tf.nn.conv2d's docstring formula and the "d_x four ways / d_w three ways" recipe (VALID, stride 1, as in
         the answer's script: pad-to-full + rot180 conv, backprop_input, conv2d_transpose; NHWC->HWIO conv).
002:     the 5x5 conv2d_transpose result, and why its first element is 67 and not 603.
003:     5x5x3 -> conv 2x2 s2 SAME -> 3x3 -> conv2d_transpose back ([1,5,5,3] and [1,6,6,3] both legal);
         conv3d -> max_pool3d -> conv3d_transpose shapes (10,2,7,7,512) -> (10,1,4,4,512) -> (10,2,7,7,512).
004:     VALID/SAME conv + transpose of a 4x4 ones image with kernel [1,0,-1,-2]; the 4x4x2 max-pool / argmax /
         unpool example; the avg-unpool description ("restore the size, fill each pooled value into its region").
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
import loop_reference as R
from gpuconv import geometry

# ---------------------------------------------------------------------------------------------------------
# seed 002
# ---------------------------------------------------------------------------------------------------------
SEED002_X = np.array([[[[-67], [-77]], [[-117], [-127]]]], np.float32)                     # (1, 2, 2, 1)
SEED002_F = np.array([[[[-1]], [[2]], [[-3]]], [[[4]], [[-5]], [[6]]], [[[-7]], [[8]], [[-9]]]], np.float32)
SEED002_OUT = np.array([
    [67, -134, 278, -154, 231],
    [-268, 335, -710, 385, -462],
    [586, -770, 1620, -870, 1074],
    [-468, 585, -1210, 635, -762],
    [819, -936, 1942, -1016, 1143],
], np.float32)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_seed002_transpose_5x5(dtype):
    y = gpuconv.conv2d_transpose(SEED002_X.astype(dtype), SEED002_F.astype(dtype), output_shape=(1, 5, 5, 1),
                                 strides=[1, 2, 2, 1], padding="VALID")
    assert y.shape == (1, 5, 5, 1) and y.dtype == dtype
    np.testing.assert_array_equal(y[0, :, :, 0], SEED002_OUT.astype(dtype))      # integers: exact in every dtype


def test_seed002_first_element_is_67_not_603():
    """The transposed conv scatters x[i] * f[a] to output i*s + a: the filter is NOT rotated. Output (0, 0) is
    reached only by x[0,0] through tap f[0,0] = -1, so it is -67 * -1 = 67; 603 = -67 * -9 would be the
    textbook picture with a rotated filter."""
    y = gpuconv.conv2d_transpose(SEED002_X, SEED002_F, (1, 5, 5, 1), 2, "VALID")
    assert y[0, 0, 0, 0] == SEED002_X[0, 0, 0, 0] * SEED002_F[0, 0, 0, 0] == 67
    assert y[0, 0, 0, 0] != SEED002_X[0, 0, 0, 0] * SEED002_F[2, 2, 0, 0]
    # the centre (2, 2) is reached by every input through the opposite corner taps:
    # -67*-9 + -77*-7 + -117*-3 + -127*-1 = 603 + 539 + 351 + 127 = 1620
    assert y[0, 2, 2, 0] == 1620
    # conv2d_transpose IS conv2d_backprop_input (same numbers), and NCHW gives the same grid
    dx = gpuconv.conv2d_backprop_input((1, 5, 5, 1), SEED002_F, SEED002_X, 2, "VALID")
    np.testing.assert_array_equal(dx, y)
    yc = gpuconv.conv2d_transpose(SEED002_X.transpose(0, 3, 1, 2), SEED002_F, (1, 1, 5, 5), [1, 1, 2, 2], "VALID",
                                  data_format="NCHW")
    np.testing.assert_array_equal(yc[0, 0], SEED002_OUT)


def test_seed002_legal_output_sizes():
    # I=2, k=3, s=2, VALID: O in [(I-1)s + k, (I-1)s + k + s - 1] = [5, 6]; 4 and 7 are refused with the range.
    for o in (5, 6):
        assert gpuconv.conv2d_transpose(SEED002_X, SEED002_F, (1, o, o, 1), 2, "VALID").shape == (1, o, o, 1)
    y6 = gpuconv.conv2d_transpose(SEED002_X, SEED002_F, (1, 6, 6, 1), 2, "VALID")
    np.testing.assert_array_equal(y6[0, :5, :5, 0], SEED002_OUT)      # the 6th row/column are zeros (past L=5)
    assert not y6[0, 5, :, 0].any() and not y6[0, :, 5, 0].any()
    for o in (4, 7):
        with pytest.raises(ValueError, match=r"\[5, 6\]"):
            gpuconv.conv2d_transpose(SEED002_X, SEED002_F, (1, o, 5, 1), 2, "VALID")


# ---------------------------------------------------------------------------------------------------------
# seed 004: conv / transpose of a 4x4 ones image
# ---------------------------------------------------------------------------------------------------------
SEED004_K = np.array([1.0, 0, -1, -2], np.float32).reshape(2, 2, 1, 1)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_seed004_conv_and_transpose(padding):
    img = np.ones((1, 4, 4, 1), np.float32)
    conv = gpuconv.conv2d(img, SEED004_K, strides=[1, 2, 2, 1], padding=padding)
    assert conv.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(conv, np.full((1, 2, 2, 1), -2, np.float32))
    t = gpuconv.conv2d_transpose(conv, SEED004_K, [1, 4, 4, 1], strides=[1, 2, 2, 1], padding=padding)
    want = np.array([[-2, 0, -2, 0], [2, 4, 2, 4], [-2, 0, -2, 0], [2, 4, 2, 4]], np.float32)
    np.testing.assert_array_equal(t[0, :, :, 0], want)


# ---------------------------------------------------------------------------------------------------------
# seed 004: the 4x4x2 max-pool / argmax / unpool example
# ---------------------------------------------------------------------------------------------------------
SEED004_IMG = np.array([
    [[0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [0.0, 4.0]],
    [[1.0, 5.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0]],
    [[2.0, 6.0], [2.0, 6.0], [2.0, 6.0], [2.0, 6.0]],
    [[3.0, 7.0], [3.0, 7.0], [3.0, 7.0], [3.0, 7.0]],
], np.float32).reshape(1, 4, 4, 2)
# Each 2x2 window's max is in its second row; both columns tie and the first (left) wins, so the argmax of
# window (i, j), channel c is input cell (2i+1, 2j): ((2i+1)*W + 2j)*C + c with W=4, C=2.
SEED004_POOL = np.array([[[1, 5], [1, 5]], [[3, 7], [3, 7]]], np.float32).reshape(1, 2, 2, 2)
SEED004_ARGMAX = np.array([[[8, 9], [12, 13]], [[24, 25], [28, 29]]], np.int64).reshape(1, 2, 2, 2)


def _seed_un_max_pool(net, mask, stride):
    """The seed's un_max_pool, in NumPy: output (N, Hp*s, Wp*s, C); y = mask // (W*C), x = mask % (W*C) // C."""
    n, hp, wp, c = net.shape
    out_shape = (n, hp * stride, wp * stride, c)
    b = np.ones_like(mask) * np.arange(n).reshape(n, 1, 1, 1)
    y = mask // (out_shape[2] * out_shape[3])
    x = mask % (out_shape[2] * out_shape[3]) // out_shape[3]
    f = np.ones_like(mask) * np.arange(c)
    ret = np.zeros(out_shape, net.dtype)
    np.add.at(ret, (b.ravel(), y.ravel(), x.ravel(), f.ravel()), net.ravel())       # tf.scatter_nd sums
    return ret


def test_seed004_max_pool_argmax_unpool():
    pooled = gpuconv.max_pool2d(SEED004_IMG, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
    np.testing.assert_array_equal(pooled, SEED004_POOL)
    pooled2, mask = gpuconv.max_pool_with_argmax(SEED004_IMG, [1, 2, 2, 1], [1, 2, 2, 1], "SAME")
    np.testing.assert_array_equal(pooled2, SEED004_POOL)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, SEED004_ARGMAX)
    unpooled = gpuconv.max_unpool(pooled2, mask, (1, 4, 4, 2))
    want = np.zeros((1, 4, 4, 2), np.float32)
    want[0, 1, 0] = want[0, 1, 2] = [1, 5]
    want[0, 3, 0] = want[0, 3, 2] = [3, 7]
    np.testing.assert_array_equal(unpooled, want)
    np.testing.assert_array_equal(unpooled, _seed_un_max_pool(pooled2, mask, 2))     # the seed's recipe agrees
    # the flat-index view: the input at argmax is the pooled value
    np.testing.assert_array_equal(SEED004_IMG.reshape(-1)[mask], pooled2)


def test_seed004_include_batch_in_index():
    img = np.concatenate([SEED004_IMG, SEED004_IMG + 10])
    pooled, mask = gpuconv.max_pool_with_argmax(img, 2, 2, "SAME", include_batch_in_index=True)
    np.testing.assert_array_equal(mask[0], SEED004_ARGMAX[0])
    np.testing.assert_array_equal(mask[1], SEED004_ARGMAX[0] + 4 * 4 * 2)          # + b*H*W*C
    np.testing.assert_array_equal(img.reshape(-1)[mask], pooled)
    un = gpuconv.max_unpool(pooled, mask, (2, 4, 4, 2), include_batch_in_index=True)
    np.testing.assert_array_equal(un[1], gpuconv.max_unpool(pooled[1:], mask[1:] - 32, (1, 4, 4, 2))[0])


def test_seed004_recipe_scrambles_rows_when_not_divisible():
    """5x5 input, k2 s2 SAME: the seed's recipe decodes with Wout = Hp*s = 6 and misplaces values (the
    'tilted image', TF #2169); max_unpool with the original shape puts every value back where it came from."""
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    pooled, mask = gpuconv.max_pool_with_argmax(x, 2, 2, "SAME")
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])  # tf-semantics 3
    np.testing.assert_array_equal(mask[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    un = gpuconv.max_unpool(pooled, mask, (5, 5))                                   # spatial-only shape
    np.testing.assert_array_equal(un, np.where(np.isin(x, pooled), x, 0))
    seed = _seed_un_max_pool(pooled, mask, 2)                                       # 6x6, wrong rows
    assert seed.shape == (1, 6, 6, 1) and not np.array_equal(seed[:, :5, :5], un)


def test_seed004_avg_unpool_fills_regions():
    """'Restore the original size, then fill each pooled value into its region.'"""
    pooled = gpuconv.avg_pool2d(SEED004_IMG, 2, 2, "SAME")
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[0.5, 0.5], [2.5, 2.5]])
    np.testing.assert_array_equal(pooled[0, :, :, 1], [[4.5, 4.5], [6.5, 6.5]])
    un = gpuconv.avg_unpool(pooled, 2, 2, "SAME", (1, 4, 4, 2))
    want = np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(un, want)


# ---------------------------------------------------------------------------------------------------------
# seed 003
# ---------------------------------------------------------------------------------------------------------
def test_seed003_transpose_2d_both_legal_sizes():
    rng = np.random.default_rng(3)
    x5 = rng.uniform(-1, 1, (1, 5, 5, 3)).astype(np.float32)
    kernel = rng.uniform(-1, 1, (2, 2, 3, 1)).astype(np.float32)
    y = gpuconv.conv2d(x5, kernel, [1, 2, 2, 1], "SAME")
    assert y.shape == (1, 3, 3, 1)
    for shape in ([1, 5, 5, 3], [1, 6, 6, 3]):
        assert gpuconv.conv2d_transpose(y, kernel, shape, [1, 2, 2, 1], "SAME").shape == tuple(shape)
    with pytest.raises(ValueError, match=r"\[5, 6\]"):
        gpuconv.conv2d_transpose(y, kernel, [1, 7, 7, 3], [1, 2, 2, 1], "SAME")


def test_seed003_conv3d_pool3d_transpose_shapes_full_size():
    """The seed's exact shapes, through the geometry (pure integers; 512 channels are too slow for the loop)."""
    p = geometry.conv_problem((10, 2, 7, 7, 512), (3, 3, 3, 512, 512), (1, 1, 1), (1, 1, 1), "SAME")
    assert p.y_shape == (10, 2, 7, 7, 512)
    q = geometry.pool_problem(p.y_shape, (2, 2, 2), (2, 2, 2), "SAME")
    assert q.y_shape == (10, 1, 4, 4, 512)
    t = geometry.conv_problem((10, 2, 7, 7, 512), (3, 3, 3, 512, 512), (2, 2, 2), (1, 1, 1), "SAME")
    assert t.y_shape == q.y_shape                 # so output_shape (10,2,7,7,512) is legal for the transpose


def test_seed003_conv3d_pool3d_transpose_values():
    """Same pipeline with 4 channels: constant 1.0 tensors, as in the seed."""
    c = 4
    x3 = np.ones((10, 2, 7, 7, c), np.float32)
    k1 = np.ones((3, 3, 3, c, c), np.float32)
    y2 = gpuconv.conv3d(x3, k1, strides=[1, 1, 1, 1, 1], padding="SAME")
    assert y2.shape == (10, 2, 7, 7, c)
    # SAME, depth 2 with k 3: pads 1/1 -> every output sees 2 depth taps; interior 3x3 -> 2*9*c = 72
    assert y2[0, 0, 3, 3, 0] == 2 * 9 * c and y2[0, 0, 0, 0, 0] == 2 * 4 * c
    pool = gpuconv.max_pool3d(y2, ksize=[1, 2, 2, 2, 1], strides=[1, 2, 2, 2, 1], padding="SAME")
    assert pool.shape == (10, 1, 4, 4, c)
    # window (0,1,1) covers rows 2-3, cols 2-3: all interior -> 72; the last window (rows 6, cols 6) is a corner
    assert pool[0, 0, 1, 1, 0] == 72 and pool[0, 0, 3, 3, 0] == 2 * 4 * c
    k2 = np.ones((3, 3, 3, c, c), np.float32)
    y3 = gpuconv.conv3d_transpose(pool, k2, output_shape=[10, 2, 7, 7, c], strides=[1, 2, 2, 2, 1], padding="SAME")
    assert y3.shape == (10, 2, 7, 7, c)
    # the seed prints only the shape; the values against the loop reference's independent scatter form (every
    # batch item is the same, so one is enough)
    want = R.conv_transpose(pool[:1], k2, (1, 2, 7, 7, c), 2, "SAME")
    np.testing.assert_array_equal(y3, np.broadcast_to(want, y3.shape))


# ---------------------------------------------------------------------------------------------------------
# seeds 000 / 001
# ---------------------------------------------------------------------------------------------------------
def test_seed000_docstring_formula():
    """output[b,i,j,k] = sum_{di,dj,q} input[b, s*i + di, s*j + dj, q] * filter[di,dj,q,k]   (VALID)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 7, 6, 3))
    f = rng.uniform(-1, 1, (3, 2, 3, 4))
    s = 2
    y = gpuconv.conv2d(x, f, [1, s, s, 1], "VALID")
    oh, ow = (7 - 3) // s + 1, (6 - 2) // s + 1
    want = np.zeros((2, oh, ow, 4))
    for b in range(2):
        for i in range(oh):
            for j in range(ow):
                patch = x[b, s * i:s * i + 3, s * j:s * j + 2, :]          # "extract image patches"
                want[b, i, j] = patch.reshape(-1) @ f.reshape(-1, 4)       # "right-multiply the filter matrix"
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def _rot180(w):
    """The seed's tf_rot180: flip the window and swap in/out channels."""
    return np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


def _pad_to_full(dy, w_size):
    """The seed's tf_pad_to_full_conv2d: k-1 zeros on each side."""
    kh, kw = w_size[:2]
    return np.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))


def _nhwc_to_hwio(t):
    return np.ascontiguousarray(t.transpose(1, 2, 0, 3))


def test_seed000_dx_four_ways_dw_three_ways():
    """f = sum(conv2d(x, w) * d_out): d_x and d_w by the seed's methods agree (VALID, stride 1)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 6, 5, 3))
    w = rng.uniform(-1, 1, (3, 2, 3, 4))
    x_shape, w_shape, strides = x.shape, w.shape, [1, 1, 1, 1]
    y = gpuconv.conv2d(x, w, strides, "VALID")
    d_out = rng.uniform(-1, 1, y.shape)
    # Method 1 (autodiff): the gradient of sum(conv(x, w) * d_out) from its definition
    d_x = np.zeros_like(x)
    d_w = np.zeros_like(w)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            d_x[:, i:i + 3, j:j + 2, :] += np.einsum("nk,abck->nabc", d_out[:, i, j], w)
            d_w += np.einsum("nabc,nk->abck", x[:, i:i + 3, j:j + 2, :], d_out[:, i, j])
    d_x_manual = gpuconv.conv2d(_pad_to_full(d_out, w_shape), _rot180(w), strides, "VALID")
    d_x_backprop_input = gpuconv.conv2d_backprop_input(x_shape, w, d_out, strides, "VALID")
    d_x_transpose = gpuconv.conv2d_transpose(d_out, w, x_shape, strides, "VALID")
    for got in (d_x_manual, d_x_backprop_input, d_x_transpose):
        np.testing.assert_allclose(got, d_x, rtol=1e-12, atol=1e-12)
    # Method 2 for d_w: channels of x act as the batch, the batch of d_out as the filter's in-channels
    d_w_manual = _nhwc_to_hwio(gpuconv.conv2d(np.ascontiguousarray(x.transpose(3, 1, 2, 0)), _nhwc_to_hwio(d_out),
                                              strides, "VALID"))
    d_w_backprop_filter = gpuconv.conv2d_backprop_filter(x, w_shape, d_out, strides, "VALID")
    for got in (d_w_manual, d_w_backprop_filter):
        np.testing.assert_allclose(got, d_w, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# tf-semantics.md examples marked [run] (executed on TF 2.21): exact numbers
# ---------------------------------------------------------------------------------------------------------
def _img(values, dtype=np.float32):
    a = np.array(values, dtype)
    return a.reshape(1, *a.shape, 1)


def test_run_argmax_ties_and_padding():
    _, am = gpuconv.max_pool_with_argmax(np.ones((1, 4, 4, 1), np.float32), 2, 2, "VALID")
    np.testing.assert_array_equal(am.ravel(), [0, 2, 8, 10])                  # ties: first cell
    _, am = gpuconv.max_pool_with_argmax(_img([[0, 0, 5], [5, 0, 0]]), (2, 3), 1, "VALID")
    assert am.ravel().tolist() == [2]                                         # equal maxima at flat 2 and 3
    y, am = gpuconv.max_pool_with_argmax(_img(-np.arange(1, 10).reshape(3, 3)), 2, 2, "SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])        # padding never selected
    np.testing.assert_array_equal(am[0, :, :, 0], [[0, 2], [6, 8]])
    _, am = gpuconv.max_pool_with_argmax(_img(np.arange(25).reshape(5, 5)), 3, 2, "SAME")
    np.testing.assert_array_equal(am[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_run_argmax_nan_inf_intmin():
    nan, inf = np.nan, np.inf
    cases = [([[nan, 1], [3, 2]], nan, 0), ([[1, nan], [3, 2]], 3, 2), ([[nan, nan], [nan, nan]], nan, 0),
             ([[-inf, -inf], [-inf, -inf]], -inf, 0)]
    for window, value, index in cases:
        y, am = gpuconv.max_pool_with_argmax(_img(window), 2, 2, "VALID")
        np.testing.assert_array_equal(y.ravel(), [value])
        assert am.ravel().tolist() == [index]
        np.testing.assert_array_equal(gpuconv.max_pool2d(_img(window), 2, 2, "VALID").ravel(), [value])
    lo = np.iinfo(np.int32).min
    y, am = gpuconv.max_pool_with_argmax(_img([[lo, lo], [lo, lo]], np.int32), 2, 2, "VALID")
    assert y.ravel().tolist() == [lo] and am.ravel().tolist() == [0]


def test_run_max_pool_grad():
    ones = np.ones((1, 3, 3, 1), np.float32)
    y = gpuconv.max_pool2d(ones, 2, 1, "VALID")
    dx = gpuconv.max_pool_grad(ones, y, np.ones_like(y), 2, 1, "VALID")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])   # each window's first cell
    centre = _img([[1, 2, 3], [4, 9, 5], [6, 7, 8]])
    y = gpuconv.max_pool2d(centre, 2, 1, "VALID")
    dx = gpuconv.max_pool_grad(centre, y, np.ones_like(y), 2, 1, "VALID")
    assert dx[0, 1, 1, 0] == 4 and dx.sum() == 4                                         # overlaps add
    nan_first = _img([[np.nan, 1], [3, 2]])
    y = gpuconv.max_pool2d(nan_first, 2, 2, "VALID")
    dx = gpuconv.max_pool_grad(nan_first, y, np.ones_like(np.nan_to_num(y)), 2, 2, "VALID")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])                      # to the NaN cell
    # unpool of the pooled centre: 36 at the centre (scatter_nd sums the four windows' picks)
    y, am = gpuconv.max_pool_with_argmax(centre, 2, 1, "VALID")
    un = gpuconv.max_unpool(y, am, centre.shape)
    assert un[0, 1, 1, 0] == 36 and un.sum() == 36


def test_run_avg_pool_and_grad():
    x = _img(np.arange(1, 10).reshape(3, 3))
    np.testing.assert_array_equal(gpuconv.avg_pool2d(x, 2, 2, "SAME")[0, :, :, 0], [[3, 4.5], [7.5, 9]])
    y = gpuconv.avg_pool2d(x, 3, 1, "SAME")
    assert y[0, 0, 0, 0] == 3.0 == (1 + 2 + 4 + 5) / 4
    np.testing.assert_array_equal(gpuconv.avg_pool2d(np.ones((1, 5, 4, 2)), 3, 2, "SAME"), np.ones((1, 3, 2, 2)))
    dx = gpuconv.avg_pool_grad((1, 3, 3, 1), np.ones((1, 2, 2, 1), np.float32), 2, 2, "SAME")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[.25, .25, .5], [.25, .25, .5], [.5, .5, 1]])


def test_run_scatter_nd_sums_duplicates():
    # tf-semantics 5: scatter_nd indices [1,1,2] values [1,2,3] -> [0,3,3,0]; here as argmax in a (1,1,4,1) map
    out = gpuconv.max_unpool(np.array([1, 2, 3], np.float32).reshape(1, 1, 3, 1),
                             np.array([1, 1, 2]).reshape(1, 1, 3, 1), (1, 1, 4, 1))
    np.testing.assert_array_equal(out.ravel(), [0, 3, 3, 0])
