"""Catalogue of malformed calls: every public function, every kind of bad argument.

Each bad call must raise ValueError or TypeError whose message names the offending argument, on every CPU
backend, and must leave its inputs unmodified. Valid baseline calls are checked to succeed first, so a
mutation is the only thing that makes a case fail.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import gpuconv as gc

RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def base_calls():
    """name -> (function, kwargs) of a valid call."""
    x4, w4 = f32(2, 6, 6, 4), f32(3, 3, 4, 5)
    x5, w5 = f32(1, 4, 6, 6, 2), f32(2, 3, 3, 2, 3)
    dy4 = f32(2, 3, 3, 5)
    dy5 = f32(1, 2, 3, 3, 3)
    pooled, argmax = gc.max_pool_with_argmax(x4, 2, 2, "VALID")
    return {
        "conv2d": (gc.conv2d, dict(input=x4, filters=w4, strides=2, padding="SAME")),
        "conv3d": (gc.conv3d, dict(input=x5, filters=w5, strides=2, padding="SAME")),
        "conv2d_transpose": (gc.conv2d_transpose, dict(input=dy4, filters=w4, output_shape=(2, 6, 6, 4),
                                                       strides=2, padding="SAME")),
        "conv3d_transpose": (gc.conv3d_transpose, dict(input=dy5, filters=w5, output_shape=(1, 4, 6, 6, 2),
                                                       strides=2, padding="SAME")),
        "conv2d_backprop_input": (gc.conv2d_backprop_input, dict(input_sizes=(2, 6, 6, 4), filters=w4,
                                                                 out_backprop=dy4, strides=2, padding="SAME")),
        "conv2d_backprop_filter": (gc.conv2d_backprop_filter, dict(input=x4, filter_sizes=(3, 3, 4, 5),
                                                                   out_backprop=dy4, strides=2, padding="SAME")),
        "conv3d_backprop_input": (gc.conv3d_backprop_input, dict(input_sizes=(1, 4, 6, 6, 2), filters=w5,
                                                                 out_backprop=dy5, strides=2, padding="SAME")),
        "conv3d_backprop_filter": (gc.conv3d_backprop_filter, dict(input=x5, filter_sizes=(2, 3, 3, 2, 3),
                                                                   out_backprop=dy5, strides=2, padding="SAME")),
        "max_pool2d": (gc.max_pool2d, dict(input=x4, ksize=2, strides=2, padding="VALID")),
        "max_pool3d": (gc.max_pool3d, dict(input=x5, ksize=2, strides=2, padding="VALID")),
        "avg_pool2d": (gc.avg_pool2d, dict(input=x4, ksize=2, strides=2, padding="VALID")),
        "avg_pool3d": (gc.avg_pool3d, dict(input=x5, ksize=2, strides=2, padding="VALID")),
        "max_pool_with_argmax": (gc.max_pool_with_argmax, dict(input=x4, ksize=2, strides=2, padding="VALID")),
        "max_pool_grad": (gc.max_pool_grad, dict(orig_input=x4, orig_output=pooled, grad=pooled.copy(),
                                                 ksize=2, strides=2, padding="VALID")),
        "max_pool3d_grad": (gc.max_pool3d_grad, dict(orig_input=x5, orig_output=f32(1, 2, 3, 3, 2),
                                                     grad=f32(1, 2, 3, 3, 2), ksize=2, strides=2,
                                                     padding="VALID")),
        "max_pool_grad_with_argmax": (gc.max_pool_grad_with_argmax, dict(input=x4, grad=pooled.copy(),
                                                                         argmax=argmax, ksize=2, strides=2,
                                                                         padding="VALID")),
        "avg_pool_grad": (gc.avg_pool_grad, dict(orig_input_shape=(2, 6, 6, 4), grad=f32(2, 3, 3, 4), ksize=2,
                                                 strides=2, padding="VALID")),
        "avg_pool3d_grad": (gc.avg_pool3d_grad, dict(orig_input_shape=(1, 4, 6, 6, 2), grad=f32(1, 2, 3, 3, 2),
                                                     ksize=2, strides=2, padding="VALID")),
        "max_unpool": (gc.max_unpool, dict(updates=pooled.copy(), argmax=argmax, output_shape=(2, 6, 6, 4))),
        "max_unpool_grad": (gc.max_unpool_grad, dict(grad=x4, argmax=argmax)),
        "avg_unpool": (gc.avg_unpool, dict(updates=f32(2, 3, 3, 4), ksize=2, strides=2, padding="VALID",
                                           output_shape=(2, 6, 6, 4))),
    }


def _tensor_args(kwargs):
    return [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]


# Each case: (functions it applies to or "*", argument, bad value or callable(kwargs) -> value, exception type).
BAD_WINDOW = [0, -1, (0, 1), (2, 2, 2, 2, 2, 2), "2", 1.5, [[1, 1]]]


def mutations(name, kwargs):
    """Yield (label, argument named in the error, new kwargs, exception types)."""
    def with_(arg, value):
        new = dict(kwargs)
        new[arg] = value
        return new

    for arg in ("strides", "ksize", "dilations"):
        if arg in kwargs or (arg == "dilations" and name.startswith("conv")):
            for bad in BAD_WINDOW:
                yield f"{arg}={bad!r}", arg, with_(arg, bad), (ValueError, TypeError)
            if arg != "dilations" or name.startswith("conv"):
                rank = 5 if "3d" in name else 4
                full = [2] * rank  # batch and channel entries must be 1
                yield f"{arg} batch entry != 1", arg, with_(arg, full), (ValueError,)
    if "padding" in kwargs:
        for bad in ("same ish", "FULL", 3, [1, 2], [[-1, 0], [0, 0]], [[1, 1]] * 7, None):
            yield f"padding={bad!r}", "padding", with_("padding", bad), (ValueError, TypeError)
        rank = 5 if "3d" in name else 4
        batch_pad = [[1, 1]] + [[0, 0]] * (rank - 1)
        yield "padding on batch", "padding", with_("padding", batch_pad), (ValueError,)
        if name.startswith("conv"):    # pools refuse pads >= window before; here the output extent is too long
            huge = [[2**31 - 1, 2**31 - 1]] * (rank - 2)
            yield "padding output extent > int", "padding", with_("padding", huge), (ValueError,)
    if "data_format" in gc_params(name):
        yield "data_format bad", "data_format", with_("data_format", "NWHC"), (ValueError,)
        # an array compares elementwise: it must be refused as a value, not fail in a truth test
        yield "data_format array", "data_format", with_("data_format", np.array(["NHWC", "NCHW"])), (ValueError,)
    for arg in _tensor_args(kwargs):
        a = kwargs[arg]
        yield f"{arg} wrong rank", arg, with_(arg, a[0]), (ValueError,)
        yield f"{arg} as list", arg, with_(arg, a.tolist()), (TypeError,)
        yield f"{arg} masked", arg, with_(arg, np.ma.masked_array(a, mask=np.zeros(a.shape, bool))), (TypeError,)
        yield f"{arg} complex", arg, with_(arg, a.astype(np.complex64)), (TypeError, ValueError)
        yield f"{arg} string", arg, with_(arg, np.full(a.shape, "a")), (TypeError, ValueError)
        if arg != "argmax" and len([k for k in _tensor_args(kwargs) if k != "argmax"]) > 1:
            yield f"{arg} mixed dtype", arg, with_(arg, a.astype(np.float64)), (TypeError,)
    for arg in ("input_sizes", "output_shape", "orig_input_shape"):
        if arg in kwargs:
            shape = list(kwargs[arg])
            yield f"{arg} too short", arg, with_(arg, shape[:1]), (ValueError,)
            yield f"{arg} negative", arg, with_(arg, [shape[0]] + [-3] * (len(shape) - 2) + [shape[-1]]), (ValueError,)
            yield f"{arg} float", arg, with_(arg, [float(v) for v in shape]), (TypeError,)
            yield f"{arg} wrong batch", arg, with_(arg, [shape[0] + 1] + shape[1:]), (ValueError,)
            yield f"{arg} extent > int", arg, with_(arg, [shape[0], 2**31] + shape[2:]), (ValueError,)
            if name != "max_unpool":   # any output_shape that holds the argmax indices is legal there
                yield f"{arg} spatial-only too small", arg, with_(arg, [1] * (len(shape) - 2)), (ValueError,)
                yield f"{arg} illegal spatial", arg, with_(arg, [shape[0]] + [v + 7 for v in shape[1:-1]]
                                                            + [shape[-1]]), (ValueError,)
    if "filter_sizes" in kwargs:
        sizes = list(kwargs["filter_sizes"])
        yield ("filter_sizes wrong out-channels", "filter_sizes", with_("filter_sizes", sizes[:-1] + [sizes[-1] + 1]),
               (ValueError,))
        yield "filter_sizes short", "filter_sizes", with_("filter_sizes", sizes[1:]), (ValueError,)
        yield "filter_sizes extent > int", "filter_sizes", with_("filter_sizes", [2**31] + sizes[1:]), (ValueError,)
        yield "filter_sizes zero extent", "filter_sizes", with_("filter_sizes", [0] + sizes[1:]), (ValueError,)
        yield ("filter_sizes in-channels", "filter_sizes",
               with_("filter_sizes", sizes[:-2] + [sizes[-2] - 1, sizes[-1]]), (ValueError,))
    if "filters" in kwargs and "input" in kwargs and name in ("conv2d", "conv3d"):
        w = kwargs["filters"]
        yield ("channel mismatch", "filters", with_("filters", np.concatenate([w, w[..., :1, :]], axis=-2)),
               (ValueError,))
        # half the in-channels -> 2 groups; both baselines have an odd number of out-channels
        yield ("groups not dividing out-channels", "filters", with_("filters", w[..., : w.shape[-2] // 2, :]),
               (ValueError,))
    if "argmax" in kwargs:
        a = kwargs["argmax"]
        yield "argmax out of range", "argmax", with_("argmax", a + 10**6), (ValueError,)
        yield "argmax negative", "argmax", with_("argmax", a - 10**6), (ValueError,)
        yield "argmax float", "argmax", with_("argmax", a.astype(np.float32)), (TypeError,)
        if name != "max_unpool_grad":  # any argmax shape with grad's batch and channels is legal there
            yield "argmax shape", "argmax", with_("argmax", a[:, :1]), (ValueError,)
    if "include_batch_in_index" in gc_params(name):
        yield ("include_batch_in_index not bool", "include_batch_in_index", with_("include_batch_in_index", "yes"),
               (TypeError,))
    if name == "max_pool_with_argmax":
        yield "output_dtype", "output_dtype", with_("output_dtype", "float32"), (ValueError,)
        for bad in ("i4,(-1)i4", ("i4", -1)):                  # np.dtype raises ValueError for these
            yield f"output_dtype {bad!r}", "output_dtype", with_("output_dtype", bad), (ValueError,)
        yield "NCHW", "data_format", with_("data_format", "NCHW"), (ValueError,)
    if name in ("max_pool_grad", "max_pool3d_grad", "max_pool_grad_with_argmax"):
        g = kwargs["grad"]
        yield "grad shape", "grad", with_("grad", g[:, :1]), (ValueError,)
    if name in ("max_pool_grad", "max_pool3d_grad"):
        o = kwargs["orig_output"]
        yield "orig_output shape", "orig_output", with_("orig_output", o[:, :1]), (ValueError,)
    if name == "avg_unpool":
        u = kwargs["updates"]
        yield "updates vs output_shape", "updates", with_("updates", u[:, :2]), (ValueError,)


def gc_params(name):
    import inspect
    return inspect.signature(getattr(gc, name)).parameters


def all_cases():
    for name, (fn, kwargs) in base_calls().items():
        for label, arg, bad_kwargs, exc in mutations(name, kwargs):
            yield pytest.param(name, fn, arg, bad_kwargs, exc, id=f"{name}-{label}")


@pytest.mark.parametrize("name", sorted(base_calls()))
def test_baseline_call_succeeds(name):
    fn, kwargs = base_calls()[name]
    fn(**kwargs)


def _same(a, b) -> bool:
    return all(map(_same, a, b)) if isinstance(a, tuple) else np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(base_calls()))
def test_tf_op_name_is_accepted_and_checked(name):
    """Ported TF calls name their ops (`tf.nn.conv2d(..., name="conv1")`): a str or None, by keyword or as the
    last positional argument, changes nothing; anything else is a TypeError naming `name`."""
    import inspect
    fn, kwargs = base_calls()[name]
    want = fn(**kwargs)
    assert _same(fn(**kwargs, name=f"{name}_1"), want) and _same(fn(**kwargs, name=None), want)
    params = list(inspect.signature(fn).parameters)
    args = [kwargs.get(p, inspect.signature(fn).parameters[p].default) for p in params[:-1]]
    assert _same(fn(*args, "scope/op"), want)
    for bad in (3, b"conv1", ["conv1"]):
        with pytest.raises(TypeError, match=r"^name: expected a str or None \(TF's op name, which gpuconv "
                                            r"ignores\), got "):
            fn(**kwargs, name=bad)
        with pytest.raises(TypeError, match=r"^name: expected a str or None"):
            fn(*args, bad)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)])
@pytest.mark.parametrize("name,fn,arg,bad_kwargs,exc", list(all_cases()))
def test_malformed_call_is_rejected(backend, name, fn, arg, bad_kwargs, exc):
    before = {k: copy.deepcopy(v) for k, v in bad_kwargs.items()}
    with gc.use_backend(backend):
        with pytest.raises(exc) as info:
            fn(**bad_kwargs)
    named = [a.strip() for a in str(info.value).split(":")[0].replace("/", ",").split(",")]
    assert arg in named, f"error does not name {arg!r} before its colon: {info.value}"
    for k, v in bad_kwargs.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")


def test_mixed_numpy_and_cupy_like_arrays_are_rejected():
    class FakeCupyArray:  # recognised as CuPy by module and the CUDA array interface
        __module__ = "cupy._core.core"
        __cuda_array_interface__ = {}
        ndim, shape, dtype = 4, (1, 3, 3, 1), np.dtype(np.float32)

    with pytest.raises(TypeError, match="filters"):
        gc.conv2d(f32(1, 3, 3, 1), FakeCupyArray(), 1, "SAME")


def _fake_cupy(monkeypatch):
    """A stand-in cupy module whose arrays know their device and whose Device context records the current one."""
    import sys
    import types
    fake = types.ModuleType("cupy")
    fake.current, fake.entered = 0, []

    class Device:
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            self.previous, fake.current = fake.current, self.i
            fake.entered.append(self.i)

        def __exit__(self, *exc):
            fake.current = self.previous

    fake.cuda = types.SimpleNamespace(Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", fake)

    class Array:                       # recognised as CuPy by module and the CUDA array interface
        __module__ = "cupy._core.core"
        __cuda_array_interface__ = {}
        ndim, shape, dtype = 4, (1, 3, 3, 1), np.dtype(np.float32)

        def __init__(self, device_id):
            self.device = types.SimpleNamespace(id=device_id)

    return fake, Array


def test_tensors_on_different_gpus_are_rejected_naming_them(monkeypatch):
    _, Array = _fake_cupy(monkeypatch)
    with pytest.raises(ValueError, match="input, filters: expected CuPy tensors on one GPU.*"
                                         "input on device 0, filters on device 1"):
        gc.conv2d(Array(0), Array(1), 1, "SAME")
    with pytest.raises(ValueError, match="updates, argmax: .*updates on device 1, argmax on device 2"):
        gc.max_unpool(Array(1), Array(2), (1, 6, 6, 1))


def test_ops_run_with_their_tensors_gpu_current(monkeypatch):
    """Outputs and scratch are allocated on the current device: every public op makes its tensors' GPU current
    for the call and restores the caller's afterwards."""
    from gpuconv.backend import on_tensor_device
    fake, Array = _fake_cupy(monkeypatch)
    seen = []

    @on_tensor_device
    def op(input, filters, strides):
        seen.append(fake.current)

    op(Array(3), filters=Array(3), strides=1)
    op(np.zeros(1), np.zeros(1), 1)                  # NumPy tensors: no device switch
    assert seen == [3, 0] and fake.entered == [3] and fake.current == 0
    import inspect
    wrapper_code = on_tensor_device(op).__code__                       # every wrapper shares it
    for name in gc.__all__:
        fn = getattr(gc, name)
        takes_tensors = name not in ("use_backend", "get_backend", "float32_precision", "get_float32_precision",
                                     "info")
        assert (getattr(fn, "__code__", None) is wrapper_code) == takes_tensors, name
        if takes_tensors:
            assert inspect.signature(fn) == inspect.signature(fn.__wrapped__)
            last = list(inspect.signature(fn).parameters.values())[-1]
            assert (last.name, last.default) == ("name", None), name       # TF's name=None, last


def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="^name: expected one of .*, got 'tpu'"):
        with gc.use_backend("tpu"):
            pass
    monkeypatch.setenv("GPUCONV_BACKEND", "opencl")
    with pytest.raises(ValueError, match="GPUCONV_BACKEND"):
        gc.get_backend()
    monkeypatch.setenv("GPUCONV_BACKEND", " numpy\n")   # surrounding blanks stripped, as for the other variables
    assert gc.get_backend() == "numpy"
    for bad in (None, b"numpy", 1):                     # not a str: a TypeError that shows what was given
        with pytest.raises(TypeError, match=rf"^name: expected a str, one of .*, got {bad!r} of type"):
            with gc.use_backend(bad):
                pass
    with pytest.raises(ValueError) as err:              # a huge name is shown cut, not whole
        with gc.use_backend("x" * 10**6):
            pass
    assert len(str(err.value)) < 300 and str(err.value).endswith("...")


def test_numpy_arrays_on_cuda_backend_are_rejected():
    with gc.use_backend("cuda"):
        with pytest.raises(TypeError, match="cupy arrays"):
            gc.max_pool2d(f32(1, 4, 4, 1), 2, 2, "VALID")


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_check_argmax_bounds(dtype):
    """Every index in [0, limit) passes and anything else fails, including the most negative index against a
    limit beyond the dtype's range (a one-reduction check on the unsigned view must not let it through)."""
    from gpuconv.pool import check_argmax
    lowest = int(np.iinfo(dtype).min)
    check_argmax(np.array([0, 6], dtype), "argmax", 7)
    for bad, limit in ((7, 7), (-1, 7), (lowest, 7), (lowest, 2**33), (lowest, 2**64)):
        with pytest.raises(ValueError, match=f"argmax: expected indices in \\[0, {limit}\\)"):
            check_argmax(np.array([3, bad], dtype), "argmax", limit)
    check_argmax(np.array([int(np.iinfo(dtype).max)], dtype), "argmax", 2**64)
    with pytest.raises(TypeError, match="argmax"):
        check_argmax(np.array([1], np.uint32), "argmax", 7)
