"""gpuconv._args: every accepted argument form (DESIGN section 1) and errors that name the argument.

The second half goes through the public API, so the normalisation is checked where users meet it.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _args as A


# ---------------------------------------------------------------------------------------------------------
# strides / ksize / dilations
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,cl,expected", [
    (2, True, (2, 2)),
    (np.int64(3), True, (3, 3)),
    ([2], True, (2, 2)),
    ((2, 3), True, (2, 3)),
    ([1, 2, 3, 1], True, (2, 3)),             # NHWC order
    ([1, 1, 2, 3], False, (2, 3)),            # NCHW order
    (np.array([1, 2, 3, 1]), True, (2, 3)),
    (np.array(2), True, (2, 2)),              # a 0-d integer array is an int
])
def test_window_param_forms_2d(value, cl, expected):
    assert A.window_param(value, "strides", 2, cl) == expected


@pytest.mark.parametrize("value,cl,expected", [
    (2, True, (2, 2, 2)),
    ([3], False, (3, 3, 3)),
    ((1, 2, 3), True, (1, 2, 3)),
    ([1, 1, 2, 3, 1], True, (1, 2, 3)),
    ([1, 1, 1, 2, 3], False, (1, 2, 3)),
])
def test_window_param_forms_3d(value, cl, expected):
    assert A.window_param(value, "ksize", 3, cl) == expected


def test_window_param_default():
    assert A.window_param(None, "dilations", 2, True, default=1) == (1, 1)
    with pytest.raises(TypeError, match="strides"):
        A.window_param(None, "strides", 2, True)


@pytest.mark.parametrize("value,cl,exc", [
    ([2, 2, 2, 1], True, ValueError),         # batch entry != 1
    ([1, 2, 2, 2], True, ValueError),         # channel entry (NHWC) != 1
    ([1, 2, 2, 1], False, ValueError),        # channel entry (NCHW, position 1) != 1
    ([1, 2, 2], True, ValueError),            # length 3 for 2-D
    ([], True, ValueError),
    (0, True, ValueError),                    # < 1
    ([1, -1], True, ValueError),
    (1.0, True, TypeError),
    (True, True, TypeError),
    ([1.5, 2], True, TypeError),
    ("2", True, TypeError),
    (np.array([1.0, 2.0]), True, TypeError),
    (np.float32(2), True, TypeError),         # NumPy scalars: the value shown, not "an array of shape ()"
    (np.bool_(True), True, TypeError),
    (np.array(2.0), True, TypeError),
])
def test_window_param_errors_name_the_argument(value, cl, exc):
    with pytest.raises(exc, match="^dilations: ") as e:
        A.window_param(value, "dilations", 2, cl)
    assert "shape ()" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------------------
def test_padding_strings():
    assert A.padding_param("SAME", 2, True) == "SAME"
    assert A.padding_param("VALID", 3, False) == "VALID"
    assert A.padding_param("same", 2, True) == "SAME" and A.padding_param("Valid", 2, True) == "VALID"
    with pytest.raises(ValueError, match="^padding: "):
        A.padding_param("FULL", 2, True)
    # str.upper() folds these non-ASCII letters to S and I; TF refuses them, and so does gpuconv.
    for lookalike in ("\u017fame", "val\u0131d"):
        with pytest.raises(ValueError, match="^padding: "):
            A.padding_param(lookalike, 2, True)


class _ForeignTensor:
    """A stand-in for another framework's 1-D tensor (tf.shape(x), torch.tensor([2, 2])): a dtype NumPy cannot
    interpret, and __array__ for its values."""

    def __init__(self, values, dtype):
        self._a = np.asarray(values, dtype)
        self.shape, self.ndim, self.dtype = self._a.shape, self._a.ndim, f"foreign.{self._a.dtype}"

    def __array__(self, dtype=None, copy=None):
        return self._a


def test_foreign_tensors_as_integer_sequences():
    """tf.shape(x) as output_shape is the usual conv2d_transpose idiom; its dtype is no NumPy dtype."""
    assert A.int_sequence(_ForeignTensor([1, 5, 6, 1], np.int32), "output_shape") == (1, 5, 6, 1)
    assert A.window_param(_ForeignTensor([2, 3], np.int64), "strides", 2, True) == (2, 3)
    with pytest.raises(TypeError, match="^strides: expected integers, got an array of dtype float"):
        A.int_sequence(_ForeignTensor([2.0, 2.0], np.float32), "strides")

    class Symbolic(_ForeignTensor):             # a graph-mode tensor: no values to read
        def __array__(self, dtype=None, copy=None):
            raise NotImplementedError("symbolic")

    with pytest.raises(TypeError, match="^output_shape: expected a tuple, list or 1-D integer array"):
        A.int_sequence(Symbolic([1, 2], np.int32), "output_shape")
    x, w = _x((1, 3, 3, 1)), _x((3, 3, 1, 1))
    y = gpuconv.conv2d(x, w, _ForeignTensor([2, 2], np.int64), "SAME")
    want = gpuconv.conv2d_transpose(y, w, (1, 3, 3, 1), 2, "SAME")
    np.testing.assert_array_equal(gpuconv.conv2d_transpose(y, w, _ForeignTensor([1, 3, 3, 1], np.int32), 2,
                                                           "SAME"), want)


@pytest.mark.parametrize("padding,cl,expected", [
    ([[0, 0], [1, 2], [3, 4], [0, 0]], True, ((1, 2), (3, 4))),
    ([[0, 0], [0, 0], [1, 2], [3, 4]], False, ((1, 2), (3, 4))),
    ([(1, 2), (3, 4)], True, ((1, 2), (3, 4))),
    (np.array([[0, 0], [1, 2], [3, 4], [0, 0]]), True, ((1, 2), (3, 4))),
    ([np.array([1, 2]), np.array([3, 4])], True, ((1, 2), (3, 4))),     # pairs as 1-D arrays
])
def test_padding_explicit_forms(padding, cl, expected):
    assert A.padding_param(padding, 2, cl) == expected


@pytest.mark.parametrize("padding,exc", [
    ([[1, 1], [1, 2], [3, 4], [0, 0]], ValueError),     # batch pad
    ([[0, 0], [1, 2], [3, 4], [0, 1]], ValueError),     # channel pad (NHWC)
    ([1, 2], ValueError),                               # flat list (TF: each element must be a pair)
    ([[1, 2, 3], [0, 0]], ValueError),
    ([[1, 2]], ValueError),                             # 1 pair for 2-D
    ([[-1, 0], [0, 0]], ValueError),
    ([[0.5, 0], [0, 0]], TypeError),
    (3, TypeError),
])
def test_padding_errors_name_the_argument(padding, exc):
    with pytest.raises(exc, match="^padding: "):
        A.padding_param(padding, 2, True)


# ---------------------------------------------------------------------------------------------------------
# shapes and data_format
# ---------------------------------------------------------------------------------------------------------
def test_shape_param_forms():
    assert A.shape_param((2, 5, 6, 3), "input_sizes", 2, True, 2, 3) == (2, 1, 5, 6, 3)
    assert A.shape_param([2, 3, 5, 6], "input_sizes", 2, False, 2, 3) == (2, 1, 5, 6, 3)
    assert A.shape_param(np.array([5, 6]), "input_sizes", 2, True, 2, 3) == (2, 1, 5, 6, 3)
    assert A.shape_param((4, 5, 6), "output_shape", 3, True, 1, 7) == (1, 4, 5, 6, 7)
    assert A.shape_param((1, 7, 4, 5, 6), "output_shape", 3, False, 1, None) == (1, 4, 5, 6, 7)


@pytest.mark.parametrize("value,channels", [
    ((3, 5, 6, 3), 3),        # batch mismatch
    ((2, 5, 6, 4), 3),        # channel mismatch
    ((5, 6, 3), 3),           # length 3 for 2-D
    ((5, -6), 3),
    ((5, 6), None),           # spatial-only needs channels from elsewhere
    ((5.0, 6.0), 3),
])
def test_shape_param_errors(value, channels):
    with pytest.raises((ValueError, TypeError), match="^input_sizes: "):
        A.shape_param(value, "input_sizes", 2, True, 2, channels)


def test_data_format():
    assert A.channels_last("NHWC", 2) and not A.channels_last("NCHW", 2)
    assert A.channels_last("NDHWC", 3) and not A.channels_last("NCDHW", 3)
    for bad, nsp in [("NDHWC", 2), ("NHWC", 3), ("nhwc", 2), (None, 2)]:
        with pytest.raises(ValueError, match="^data_format: "):
            A.channels_last(bad, nsp)


# ---------------------------------------------------------------------------------------------------------
# through the public API (needs the NumPy backend)
# ---------------------------------------------------------------------------------------------------------
def _x(shape, dtype=np.float32):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) / 10


@pytest.mark.parametrize("strides", [2, [2], (2, 2), [1, 2, 2, 1], np.array([2, 2])])
def test_api_stride_forms_agree(strides):
    x, w = _x((1, 5, 5, 2)), _x((3, 3, 2, 2))
    base = gpuconv.conv2d(x, w, (2, 2), "SAME")
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, strides, "SAME"), base)


def test_api_padding_forms_agree():
    x, w = _x((1, 5, 5, 2)), _x((3, 3, 2, 2))
    full = gpuconv.conv2d(x, w, 1, [[0, 0], [1, 2], [0, 1], [0, 0]])
    spatial = gpuconv.conv2d(x, w, 1, [(1, 2), (0, 1)])
    np.testing.assert_array_equal(full, spatial)
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    nchw = gpuconv.conv2d(xc, w, [1, 1, 1, 1], [[0, 0], [0, 0], [1, 2], [0, 1]], data_format="NCHW")
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), full)


@pytest.mark.parametrize("call,arg", [
    (lambda x, w: gpuconv.conv2d(x, w, [2, 2, 2, 1], "SAME"), "strides"),
    (lambda x, w: gpuconv.conv2d(x, w, 1, "SAME", dilations=[1, 2, 2, 2]), "dilations"),
    (lambda x, w: gpuconv.conv2d(x, w, 1, "SOME"), "padding"),
    (lambda x, w: gpuconv.conv2d(x, w, 1, [[1, 1], [0, 0], [0, 0], [0, 0]]), "padding"),
    (lambda x, w: gpuconv.conv2d(x, w, 1, "SAME", data_format="NCDHW"), "data_format"),
    (lambda x, w: gpuconv.conv2d(x[0], w, 1, "SAME"), "input"),
    (lambda x, w: gpuconv.conv2d(x, w[0], 1, "SAME"), "filters"),
    (lambda x, w: gpuconv.conv2d(x, w.astype(np.float64), 1, "SAME"), "input, filters"),
    (lambda x, w: gpuconv.conv2d(x.astype(np.int32), w.astype(np.int32), 1, "SAME"), "input"),
    (lambda x, w: gpuconv.conv2d(x.tolist(), w, 1, "SAME"), "input"),
    (lambda x, w: gpuconv.conv2d(x, w, 1, "VALID", dilations=3), "input"),     # negative output size
    (lambda x, w: gpuconv.conv2d_backprop_input((1, 5, 5), w, x, 1, "SAME"), "input_sizes"),
    (lambda x, w: gpuconv.conv2d_backprop_input((2, 5, 5, 2), w, x, 1, "SAME"), "input_sizes"),
    (lambda x, w: gpuconv.conv2d_transpose(x, w, (1, 9, 5, 2), 1, "SAME"), "output_shape"),
    (lambda x, w: gpuconv.conv2d_backprop_filter(x, (3, 3, 2), x, 1, "SAME"), "filter_sizes"),
    (lambda x, w: gpuconv.max_pool2d(x, 0, 1, "SAME"), "ksize"),
    (lambda x, w: gpuconv.max_pool2d(x, 2, [1, 1, 1, 2], "SAME"), "strides"),
    (lambda x, w: gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", output_dtype="int16"), "output_dtype"),
    (lambda x, w: gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", data_format="NCHW"), "data_format"),
    (lambda x, w: gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", include_batch_in_index=1), "include_batch_in_index"),
    (lambda x, w: gpuconv.avg_pool2d(x.astype(np.int32), 2, 2, "SAME"), "input"),
    (lambda x, w: gpuconv.avg_pool_grad((1, 5, 5, 2), x, 2, 2, "SAME"), "grad"),
    (lambda x, w: gpuconv.max_unpool(x, np.zeros(x.shape, np.int64) + 10**6, (1, 5, 5, 2)), "argmax"),
    (lambda x, w: gpuconv.max_unpool(x, np.zeros(x.shape, np.int64) - 1, (1, 5, 5, 2)), "argmax"),
    (lambda x, w: gpuconv.max_unpool(x, np.zeros(x.shape, np.float32), (1, 5, 5, 2)), "argmax"),
    (lambda x, w: gpuconv.max_unpool(x, np.zeros(x.shape, np.int64), (2, 5, 5, 2)), "output_shape"),
    (lambda x, w: gpuconv.avg_unpool(x, 2, 2, "SAME", (1, 5, 5, 2)), "updates"),
    (lambda x, w: gpuconv.conv2d(x, w.astype(">f4"), 1, "SAME"), "filters"),
    (lambda x, w: gpuconv.max_unpool(x, np.zeros(x.shape, ">i8"), (1, 5, 5, 2)), "argmax"),
])
def test_api_errors_name_the_argument(call, arg):
    x, w = _x((1, 5, 5, 2)), _x((3, 3, 2, 2))
    with pytest.raises((ValueError, TypeError)) as e:
        call(x, w)
    named = str(e.value).split(":")[0]          # "arg: expected ..., got ..." (may name two arguments: "a / b")
    assert arg in named, str(e.value)


def test_non_native_byte_order_is_refused_with_the_conversion():
    """'>f4' is float32 to a NumPy user, but the kernels read native words: a TypeError saying how to convert."""
    x = _x((1, 4, 4, 2)).astype(">f4")
    with pytest.raises(TypeError, match=r"^input: expected .* in native byte order \(a\.astype\(a\.dtype\."
                                        r"newbyteorder\('='\)\) converts\), got dtype >f4 \(float32, non-native"):
        gpuconv.max_pool2d(x, 2, 2, "VALID")
    native = x.astype(x.dtype.newbyteorder("="))
    assert native.dtype == np.float32
    np.testing.assert_array_equal(gpuconv.max_pool2d(native, 2, 2, "VALID"),
                                  np.asarray(x, np.float32).reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4)))


def test_transposed_error_prints_legal_range():
    # tf-semantics 1.3: I=3, k=3, s=2, SAME -> legal O in [5, 6]; 11 is refused with that range in the message.
    x, w = _x((1, 3, 3, 1)), _x((3, 3, 1, 1))
    with pytest.raises(ValueError) as e:
        gpuconv.conv2d_transpose(x, w, (1, 11, 6, 1), 2, "SAME")
    assert "output_shape" in str(e.value) and "[5, 6]" in str(e.value) and "height" in str(e.value)
    with pytest.raises(ValueError, match=r"\[7, 8\]"):
        gpuconv.conv2d_transpose(x, w, (1, 7, 9, 1), 2, "VALID")
    # An empty input: TF's forward size (O - 5 + 2) / 2 truncates toward zero, so O in [2, 4] all give 0.
    empty, w5 = np.ones((1, 0, 3, 1), np.float32), np.ones((5, 1, 1, 1), np.float32)
    assert gpuconv.conv2d_transpose(empty, w5, (1, 2, 3, 1), (2, 1), "VALID").shape == (1, 2, 3, 1)
    with pytest.raises(ValueError, match=r"height in \[2, 4\]"):
        gpuconv.conv2d_transpose(empty, w5, (1, 5, 3, 1), (2, 1), "VALID")


def test_mixing_array_types_is_type_error():
    class Fake:
        pass
    with pytest.raises(TypeError, match="filters"):
        gpuconv.conv2d(_x((1, 3, 3, 1)), Fake(), 1, "SAME")


def test_shape_errors_speak_the_callers_layout():
    """Shape mismatches name shapes in the caller's data_format (not the canonical N,D,H,W,C), and a 0-channel
    input is blamed on the input, not on the filter's out-channels."""
    f = np.float32
    cases = [
        (lambda: gpuconv.max_pool_grad(_x((1, 2, 4, 4)), _x((1, 2, 3, 3)), _x((1, 2, 4, 4)), 2, 1, "VALID",
                                       data_format="NCHW"),
         r"^grad: expected shape \(1, 2, 3, 3\) \(the pooled shape of orig_input, NCHW\), got shape \(1, 2, 4, 4\)"),
        (lambda: gpuconv.max_pool_grad(_x((1, 2, 4, 4)), _x((1, 2, 4, 4)), _x((1, 2, 3, 3)), 2, 1, "VALID",
                                       data_format="NCHW"),
         r"^orig_output: expected shape \(1, 2, 3, 3\)"),
        (lambda: gpuconv.max_pool3d_grad(_x((1, 4, 4, 4, 2)), _x((1, 3, 3, 3, 2)), _x((1, 4, 4, 4, 2)), 2, 1,
                                         "VALID"),
         r"^grad: expected shape \(1, 3, 3, 3, 2\) \(the pooled shape of orig_input, NDHWC\)"),
        (lambda: gpuconv.avg_pool_grad((1, 2, 4, 4), _x((1, 2, 4, 4)), 2, 1, "VALID", data_format="NCHW"),
         r"^grad / orig_input_shape: expected shape \(1, 2, 3, 3\) .*NCHW\), got shape \(1, 2, 4, 4\)"),
        (lambda: gpuconv.max_pool_grad_with_argmax(_x((1, 4, 4, 2)), _x((1, 4, 4, 2)),
                                                   np.zeros((1, 4, 4, 2), np.int64), 2, 1, "VALID"),
         r"^grad: expected shape \(1, 3, 3, 2\) \(the pooled shape of input, NHWC\), got shape \(1, 4, 4, 2\)"),
        (lambda: gpuconv.conv2d(np.ones((1, 4, 4, 0), f), _x((3, 3, 1, 2)), 1, "SAME"),
         r"^input: expected at least one channel .*got input with 0 channels"),
        (lambda: gpuconv.conv2d_backprop_input((1, 4, 4, 0), _x((3, 3, 1, 2)), _x((1, 4, 4, 2)), 1, "SAME"),
         r"^input_sizes: expected at least one channel"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()



@pytest.mark.parametrize("library", ["tensorflow", "torch"])
def test_argmax_output_dtype_takes_tensorflow_and_torch_dtypes(library):
    """Ported TF code passes `output_dtype=tf.int32` (TF's own default is tf.int64), PyTorch users torch.int32:
    both name the same index types as 'int32' / 'int64'; their other dtypes are refused with the usual error.
    (TensorFlow is a test dependency; torch is not, so its case may skip.)"""
    lib = pytest.importorskip(library)
    prefix = "tf" if library == "tensorflow" else "torch"
    x = _x((2, 5, 4, 3))
    for name in ("int32", "int64"):
        want = gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", output_dtype=name)[1]
        got = gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", output_dtype=getattr(lib, name))[1]
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    for name in ("int16", "float32"):
        with pytest.raises(ValueError, match=rf"^output_dtype: expected 'int64' or 'int32'.*got {prefix}\.{name}$"):
            gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", output_dtype=getattr(lib, name))
    if library == "tensorflow":
        # TF dtypes without a NumPy equivalent: their as_numpy_dtype raises KeyError, which leaked.
        for name in ("resource", "variant"):
            with pytest.raises(ValueError, match=rf"^output_dtype: expected 'int64' or 'int32'.*got tf\.{name}$"):
                gpuconv.max_pool_with_argmax(x, 2, 2, "SAME", output_dtype=getattr(lib, name))


def test_float_tensorflow_scalars_as_integer_arguments_are_a_type_error():
    """A float TF scalar as a stride or window: TF's __index__ raises AttributeError, which leaked; an integer
    TF scalar is an integer."""
    tf = pytest.importorskip("tensorflow")
    x = _x((1, 4, 4, 1))
    for arg, call in (("ksize", lambda v: gpuconv.max_pool2d(x, v, 2, "SAME")),
                      ("strides", lambda v: gpuconv.conv2d(x, _x((1, 1, 1, 1)), v, "SAME")),
                      ("dilations", lambda v: gpuconv.conv2d(x, _x((1, 1, 1, 1)), 1, "SAME", dilations=v))):
        with pytest.raises(TypeError, match=rf"^{arg}: expected an integer, got .* of type EagerTensor$"):
            call(tf.constant(2.0))
        assert call(tf.constant(2)).shape == call(2).shape


def test_a_zero_extent_filter_names_the_canonical_window():
    """A 2-D filter of height 0 was reported as "window (depth, height, width) (1, 0, 3)", a depth it never had."""
    x = _x((1, 4, 4, 1))
    with pytest.raises(ValueError, match=r"^filters: expected positive window extents, got a zero extent in the "
                                         r"canonical window \(depth, height, width\) \(1, 0, 3\) "
                                         r"\(2-D filters have depth 1\)$"):
        gpuconv.conv2d(x, np.ones((0, 3, 1, 1), np.float32), 1, "SAME")
    with pytest.raises(ValueError, match=r"^filter_sizes: expected positive window extents, got .*\(0, 3, 3\)"):
        gpuconv.conv3d_backprop_filter(_x((1, 4, 4, 4, 1)), (0, 3, 3, 1, 1), _x((1, 4, 4, 4, 1)), 1, "SAME")


def test_tensorflow_shapes_and_tensors_as_shapes_windows_and_padding():
    """TensorShape (what x.shape is in TF) as output_shape, strides or ksize, and explicit padding as a 2-D TF
    tensor, as TF takes them (both were a TypeError); an unknown rank or dimension is a TypeError naming the
    argument."""
    tf = pytest.importorskip("tensorflow")
    x, w = _x((1, 5, 5, 2)), _x((3, 3, 2, 4))
    y = gpuconv.conv2d(x, w, tf.TensorShape([1, 2, 2, 1]), "SAME")
    np.testing.assert_array_equal(y, gpuconv.conv2d(x, w, 2, "SAME"))
    np.testing.assert_array_equal(gpuconv.conv2d_transpose(y, w, tf.TensorShape([1, 5, 5, 2]), 2, "SAME"),
                                  gpuconv.conv2d_transpose(y, w, (1, 5, 5, 2), 2, "SAME"))
    np.testing.assert_array_equal(gpuconv.max_pool2d(x, tf.TensorShape([2, 2]), 2, "VALID"),
                                  gpuconv.max_pool2d(x, 2, 2, "VALID"))
    pads = [[0, 0], [1, 2], [2, 1], [0, 0]]
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, 1, tf.constant(pads)), gpuconv.conv2d(x, w, 1, pads))
    with pytest.raises(TypeError, match=r"^output_shape: expected a tuple, list or 1-D integer array, got "
                                        r"TensorShape\(None\)"):
        gpuconv.conv2d_transpose(y, w, tf.TensorShape(None), 2, "SAME")
    with pytest.raises(TypeError, match=r"^output_shape: expected an integer, got None"):
        gpuconv.conv2d_transpose(y, w, tf.TensorShape([1, None, 5, 2]), 2, "SAME")
    with pytest.raises(TypeError, match=r"^padding: expected an integer, got 0\.0"):
        gpuconv.conv2d(x, w, 1, tf.constant(pads, tf.float32))
