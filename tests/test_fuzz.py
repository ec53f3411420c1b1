"""Fuzzing every public op (DESIGN.md section 2 and 5; issue 6 item 4).

Three properties, each over every public op, with hypothesis drawing shapes, strides, dilations, SAME / VALID /
explicit padding (spatial-only and full-rank forms), layouts, groups, dtypes (float16/32/64; integer types for
the max ops), include_batch_in_index, argmax produced by pooling or drawn at random, IEEE specials:

1. NumPy backend == tests/loop_reference.py (through the references of tests/opspecs.py) on tiny shapes;
2. emulator (the CUDA kernels on the CPU) == NumPy backend, bit-exact for selections (max pooling, argmax,
   gathers, integer results), within the dtype's tolerance otherwise;
3. random *invalid* arguments (one argument of a valid call replaced by garbage: wrong types, ranks, dtypes,
   negative / zero / huge values, odd containers) raise ValueError or TypeError, or succeed -- never another
   exception, never a hang (an alarm turns a call that runs longer than GPUCONV_FUZZ_CALL_SECONDS into a
   failure), never a huge allocation (the address space is capped during the call, so an attempt to allocate
   gigabytes is a MemoryError, i.e. a failure).

CI mode: GPUCONV_FUZZ_FAST examples per test (default 50; whole file well under a minute with a warm emulator
cache). Long mode: the `slow`-marked twins, GPUCONV_FUZZ_EXAMPLES examples each (default 2000):
    GPUCONV_FUZZ_EXAMPLES=3000 pytest -m slow tests/test_fuzz.py
"""
from __future__ import annotations

import collections
import contextlib
import json
import dataclasses
import os
import resource
import signal
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loop_reference as R
from opspecs import FLOATS, INTS, SPECS, TOL, assert_close, expected, rand

FAST_N = int(os.environ.get("GPUCONV_FUZZ_FAST", "50"))
SLOW_N = int(os.environ.get("GPUCONV_FUZZ_EXAMPLES", "2000"))
CALL_SECONDS = int(os.environ.get("GPUCONV_FUZZ_CALL_SECONDS", "60"))
FAST = settings(max_examples=FAST_N, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                print_blob=True)
SLOW = settings(max_examples=SLOW_N, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)

CONV_OPS = ("conv2d", "conv3d", "conv2d_backprop_input", "conv3d_backprop_input", "conv2d_transpose",
            "conv3d_transpose", "conv2d_backprop_filter", "conv3d_backprop_filter")
POOL_OPS = ("max_pool2d", "max_pool3d", "avg_pool2d", "avg_pool3d", "max_pool_grad", "max_pool3d_grad",
            "avg_pool_grad", "avg_pool3d_grad", "avg_unpool")
ARGMAX_OPS = ("max_pool_with_argmax", "max_pool_grad_with_argmax", "max_unpool", "max_unpool_grad")
FAMILIES = {"conv": CONV_OPS, "pool": POOL_OPS, "argmax": ARGMAX_OPS}
# examples run, by (test, op, backend or outcome); GPUCONV_FUZZ_REPORT=<file> writes them as JSON at the end
COUNTS: collections.Counter = collections.Counter()
MAX_OPS = {"max_pool2d", "max_pool3d", "max_pool_grad", "max_pool3d_grad"} | set(ARGMAX_OPS)


@dataclasses.dataclass
class Case:
    name: str
    args: tuple
    kwargs: dict
    exact: bool = False                 # a selection: every backend must agree bit for bit
    force: dict | None = None           # conv ops on the emulator: forced kernel configuration (variant, tile...)

    def __repr__(self):
        shapes = [a.shape if isinstance(a, np.ndarray) else a for a in self.args]
        kw = {k: (v.shape if isinstance(v, np.ndarray) else v) for k, v in self.kwargs.items()}
        dts = sorted({str(a.dtype) for a in self.args if isinstance(a, np.ndarray)})
        return f"{self.name}{tuple(shapes)} {kw} {dts}"

    def call(self, backend):
        import gpuconv
        with gpuconv.use_backend(backend):
            out = getattr(gpuconv, self.name)(*self.args, **self.kwargs)
        return out


# ---------------------------------------------------------------------------------------------------------
# argument forms
# ---------------------------------------------------------------------------------------------------------
def _fmt(nsp, cl):
    return ("NHWC" if cl else "NCHW") if nsp == 2 else ("NDHWC" if cl else "NCDHW")


def _user(shape_cl, cl):
    return tuple(shape_cl) if cl else (shape_cl[0], shape_cl[-1], *shape_cl[1:-1])


def _per_axis(draw, values, cl):
    """An int, [v], a per-spatial list/tuple/array or the full-rank form (1 at batch and channels)."""
    values = [int(v) for v in values]
    forms = [list(values), tuple(values), np.array(values, np.int64)]
    if len(set(values)) == 1:
        forms += [values[0], [values[0]], np.int32(values[0])]
    forms.append([1, *values, 1] if cl else [1, 1, *values])
    return draw(st.sampled_from(forms))


def _padding(draw, nsp, cl, maxpad, windows=None):
    """(user form, spatial pairs or the string)."""
    kind = draw(st.sampled_from(["SAME", "VALID", "explicit", "explicit-full", "lower"]))
    if kind in ("SAME", "VALID"):
        return kind, kind
    if kind == "lower":
        s = draw(st.sampled_from(["SAME", "VALID"]))
        return s.lower(), s
    pairs = [(draw(st.integers(0, maxpad)), draw(st.integers(0, maxpad))) for _ in range(nsp)]
    if windows is not None:          # pooling: a pad at least the window would leave windows of only padding
        pairs = [(min(a, k - 1), min(b, k - 1)) for (a, b), k in zip(pairs, windows)]
    if kind == "explicit":
        return draw(st.sampled_from([pairs, [list(p) for p in pairs], np.array(pairs, np.int64)])), pairs
    full = [[0, 0], *[list(p) for p in pairs], [0, 0]] if cl else [[0, 0], [0, 0], *[list(p) for p in pairs]]
    return full, pairs


def _shape_form(draw, full_user, spatial, spatial_ok):
    forms = [tuple(full_user), list(full_user), np.array(full_user, np.int64), np.array(full_user, np.int32)]
    if spatial_ok:
        forms += [list(spatial), tuple(spatial)]
    return draw(st.sampled_from(forms))


def _values(draw, shape, dtype, specials=False):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rand(rng, shape, dtype)
    if specials and dtype.kind == "f" and a.size and draw(st.booleans()):
        flat = a.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0]))
    if draw(st.integers(0, 9)) == 0 and a.ndim >= 2:        # a non-contiguous view of the same values
        a = np.asfortranarray(a) if draw(st.booleans()) else np.repeat(a, 2, axis=-1)[..., ::2]
    return a


def _geometry(draw, nsp, conv):
    maxsp, maxk = (7, 4) if nsp == 2 else (4, 3)
    spatial = [draw(st.integers(1, maxsp)) for _ in range(nsp)]
    window = [draw(st.integers(1, maxk)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 4)) for _ in range(nsp)]
    dil = [draw(st.integers(1, 3)) for _ in range(nsp)] if conv else [1] * nsp
    return spatial, window, strides, dil


# ---------------------------------------------------------------------------------------------------------
# valid cases
# ---------------------------------------------------------------------------------------------------------
@st.composite
def conv_cases(draw, names=CONV_OPS):
    name = draw(st.sampled_from(names))
    nsp = 3 if "3d" in name else 2
    cl = draw(st.booleans())
    spatial, window, strides, dil = _geometry(draw, nsp, conv=True)
    pad_form, pads = _padding(draw, nsp, cl, 3)
    try:
        geo = R.out_sizes(spatial, window, strides, dil, pads)
    except ValueError:
        geo = None
    if geo is None:               # negative output: draw again (invalid calls are the job of invalid_cases)
        pad_form, pads, geo = "SAME", "SAME", R.out_sizes(spatial, window, strides, dil, "SAME")
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    x_cl = (n, *spatial, groups * cg)
    w_shape = (*window, cg, groups * kg)
    y_cl = (n, *[g[0] for g in geo], groups * kg)
    fmt = _fmt(nsp, cl)
    kw = dict(data_format=fmt)
    if not (dil == [1] * nsp and draw(st.booleans())):
        kw["dilations"] = _per_axis(draw, dil, cl)
    s = _per_axis(draw, strides, cl)
    w = _values(draw, w_shape, dtype)
    # tiny problems make every chooser pick the analytic kernels: half the cases force the tiled ones
    force = None
    if draw(st.booleans()):
        force = dict(variant="tiled", tile="64x64" if dtype == np.float64 else
                     draw(st.sampled_from(["128x128", "128x64", "64x64"])))
        if "filter" in name:
            force["splits"] = draw(st.integers(1, 3))
    if name in ("conv2d", "conv3d"):
        x = _values(draw, _user(x_cl, cl), dtype, specials=True)
        return Case(name, (x, w, s, pad_form), kw, force=force)
    dy = _values(draw, _user(y_cl, cl), dtype)
    shape = _shape_form(draw, _user(x_cl, cl), spatial, groups == 1)
    if "backprop_input" in name:
        return Case(name, (shape, w, dy, s, pad_form), kw, force=force)
    if "transpose" in name:
        return Case(name, (dy, w, shape, s), dict(padding=pad_form, **kw), force=force)
    x = _values(draw, _user(x_cl, cl), dtype)
    fs = draw(st.sampled_from([tuple(w_shape), list(w_shape), np.array(w_shape)]))
    return Case(name, (x, fs, dy, s, pad_form), kw, force=force)


def _pool_geometry(draw, nsp, cl):
    spatial, window, strides, _ = _geometry(draw, nsp, conv=False)
    pad_form, pads = _padding(draw, nsp, cl, 3, window)
    try:
        geo = R.out_sizes(spatial, window, strides, 1, pads)
    except ValueError:
        pad_form, pads, geo = "SAME", "SAME", R.out_sizes(spatial, window, strides, 1, "SAME")
    return spatial, window, strides, pad_form, pads, geo


@st.composite
def pool_cases(draw, names=POOL_OPS):
    name = draw(st.sampled_from(names))
    nsp = 3 if "3d" in name else (2 if name != "avg_unpool" else draw(st.sampled_from([2, 3])))
    cl = draw(st.booleans())
    fmt = _fmt(nsp, cl)
    spatial, window, strides, pad_form, pads, geo = _pool_geometry(draw, nsp, cl)
    is_max = name in MAX_OPS
    dtype = np.dtype(draw(st.sampled_from(FLOATS + INTS if is_max else FLOATS)))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    x_cl, y_cl = (n, *spatial, c), (n, *[g[0] for g in geo], c)
    k, s = _per_axis(draw, window, cl), _per_axis(draw, strides, cl)
    kw = {"data_format": fmt}
    if name in ("max_pool2d", "max_pool3d", "avg_pool2d", "avg_pool3d"):
        x = _values(draw, _user(x_cl, cl), dtype, specials=True)
        return Case(name, (x, k, s, pad_form), kw, exact=is_max)
    dy = _values(draw, _user(y_cl, cl), dtype)
    if name in ("max_pool_grad", "max_pool3d_grad"):
        x = _values(draw, _user(x_cl, cl), dtype, specials=draw(st.booleans()))
        y = SPECS["max_pool2d" if nsp == 2 else "max_pool3d"].reference(x, k, s, pad_form, fmt)
        return Case(name, (x, y, dy, k, s, pad_form), kw)
    shape = _shape_form(draw, _user(x_cl, cl), spatial, True)
    if name in ("avg_pool_grad", "avg_pool3d_grad"):
        return Case(name, (shape, dy, k, s, pad_form), kw)
    if cl and draw(st.booleans()):
        kw = {} if draw(st.booleans()) else {"data_format": None}
    return Case("avg_unpool", (dy, k, s, pad_form, shape), kw)


@st.composite
def argmax_cases(draw, names=ARGMAX_OPS):
    name = draw(st.sampled_from(names))
    nsp = 2 if name in ("max_pool_with_argmax", "max_pool_grad_with_argmax") else draw(st.sampled_from([2, 3]))
    spatial, window, strides, pad_form, pads, geo = _pool_geometry(draw, nsp, True)
    dtype = np.dtype(draw(st.sampled_from(FLOATS + INTS)))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    x_cl, y_cl = (n, *spatial, c), (n, *[g[0] for g in geo], c)
    include = draw(st.sampled_from([False, True, np.bool_(True)]))
    kw = {} if include is False and draw(st.booleans()) else {"include_batch_in_index": include}
    k, s = _per_axis(draw, window, True), _per_axis(draw, strides, True)
    x = _values(draw, x_cl, dtype, specials=True)
    if name == "max_pool_with_argmax":
        odt = draw(st.sampled_from(["int64", "int32", np.int64, np.dtype(np.int32), None]))
        if odt is not None:
            kw["output_dtype"] = odt
        return Case(name, (x, k, s, pad_form), kw, exact=True)
    limit = int(np.prod(x_cl[1:])) * (n if include else 1)
    idt = np.dtype(draw(st.sampled_from([np.int64, np.int32])))
    how = draw(st.sampled_from(["pooled", "random"]))
    if how == "pooled":
        am = R.max_pool_with_argmax(x, window, strides, pads, bool(include), idt)[1]
        am_shape = y_cl
    else:
        am_shape = y_cl if name != "max_unpool_grad" else (n, *[draw(st.integers(0, 3)) for _ in range(nsp)], c)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        am = rng.integers(0, limit, size=am_shape).astype(idt)
    if name == "max_unpool_grad":
        return Case(name, (_values(draw, x_cl, dtype), am), kw, exact=True)
    upd = _values(draw, am_shape, dtype)
    if name == "max_pool_grad_with_argmax":
        return Case(name, (x, upd, am, k, s, pad_form), kw)
    return Case(name, (upd, am, _shape_form(draw, x_cl, spatial, True)), kw)


CASES = {"conv": conv_cases(), "pool": pool_cases(), "argmax": argmax_cases()}


# ---------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------
def _tol(dtype, factor=1.0):
    return {d: (r * factor, a * factor) for d, (r, a) in TOL.items()}


def _compare(got, want, case, what):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(np.asarray(g), np.asarray(w), _tol(w.dtype, 2.0), case.exact, f"{what} {case!r} output {k}")


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    path = os.environ.get("GPUCONV_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({" | ".join(k): v for k, v in sorted(COUNTS.items())}, f, indent=1)


def check_numpy_vs_reference(case):
    COUNTS["numpy-vs-reference", case.name, "numpy"] += 1
    got = case.call("numpy")
    want = expected(SPECS[case.name], case)
    _compare(got, want, case, "numpy vs loop reference")


def _forced(case):
    """The context that forces case.force on the conv family the op runs on."""
    if not case.force:
        return contextlib.nullcontext()
    from gpuconv.plans import conv_dgrad, conv_fprop, conv_wgrad
    if case.name in ("conv2d", "conv3d"):
        return conv_fprop.override_config(variant=case.force["variant"], tile=case.force["tile"])
    if "filter" in case.name:
        return conv_wgrad.forced_config(**case.force)
    return conv_dgrad.forced_config(**case.force)


def check_emulator_vs_numpy(case):
    variant = (case.force or {}).get("variant", "chosen")
    COUNTS["emulator-vs-numpy", case.name, f"emulator {variant}"] += 1
    with _forced(case):
        got = case.call("emulator")
    want = case.call("numpy")
    _compare(got, want, case, "emulator vs numpy")


def _run(strategy, config, check, *extra):
    """Run hypothesis on a fresh wrapper (a function can carry one settings object only)."""
    given(strategy)(config(lambda case: check(case, *extra)))()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fuzz_numpy_vs_reference(family):
    _run(CASES[family], FAST, check_numpy_vs_reference)


@pytest.mark.emulator
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fuzz_emulator_vs_numpy(family):
    _run(CASES[family], FAST, check_emulator_vs_numpy)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fuzz_numpy_vs_reference_long(family):
    _run(CASES[family], SLOW, check_numpy_vs_reference)


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fuzz_emulator_vs_numpy_long(family):
    _run(CASES[family], SLOW, check_emulator_vs_numpy)


# ---------------------------------------------------------------------------------------------------------
# invalid arguments
# ---------------------------------------------------------------------------------------------------------
# (2^31 - 1 itself is legal: a pad of 2^31 - 1 is a valid, huge problem, not an invalid argument)
HUGE = [2**31, 2**40, 2**63 - 1, 2**64, -2**63]
# Junk strings from a fixed alphabet (ASCII, accented, CJK, NUL, an emoji, a lone surrogate): hypothesis's
# default text strategy warns about characters that do not round-trip through UTF-8 in newer versions.
_JUNK_CHARS = "aZ0 _-,.[]()éß漢\x00\U0001F600\ud800"
_junk_scalars = st.one_of(
    st.integers(-3, 0), st.sampled_from(HUGE), st.floats(allow_nan=True, allow_infinity=True), st.none(),
    st.booleans(), st.text(alphabet=_JUNK_CHARS, max_size=5),
    st.sampled_from(["SAME", "VALID", "same", "NHWC", "NCHW", "NCDHW", "int64", "int16", b"SAME", 1j, object(), ...]))


@st.composite
def _junk_arrays(draw, huge=True):
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=6)))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint64,
                                  np.bool_, np.complex64, object, "U2", "datetime64[s]"]))
    a = np.zeros(shape, dtype)
    if huge and draw(st.booleans()) and a.size and np.dtype(dtype).kind in "iu":
        info = np.iinfo(np.dtype(dtype))
        a.reshape(-1)[0] = draw(st.sampled_from([info.min, min(2**31 - 1, info.max), info.max]))
    return a


_junk = st.recursive(st.one_of(_junk_scalars, _junk_arrays()),
                     lambda inner: st.one_of(st.lists(inner, max_size=6), st.tuples(inner, inner)), max_leaves=12)
_junk_no_huge = st.recursive(st.one_of(_junk_scalars.filter(lambda v: not (isinstance(v, int) and abs(v) >= 2**31)),
                                       _junk_arrays(huge=False)),
                             lambda inner: st.one_of(st.lists(inner, max_size=6), st.tuples(inner, inner)),
                             max_leaves=12)


SHAPE_ARGS = ("input_sizes", "filter_sizes", "output_shape", "orig_input_shape")


@st.composite
def _mutate_value(draw, value, shape_arg=False):
    """A bad replacement for `value`: junk, or a near miss of the same kind. A huge entry in a shape argument
    (shape_arg) is a legal, huge problem rather than an invalid argument, so shapes get no huge entries."""
    if isinstance(value, np.ndarray) and draw(st.booleans()):
        kind = draw(st.sampled_from(["rank-", "rank+", "dtype", "axis", "empty", "negate", "list"]))
        if kind == "rank-" and value.ndim and value.shape[0]:
            return value[0]
        if kind == "rank+":
            return value[None]
        if kind == "dtype":
            dtype = draw(st.sampled_from([np.float16, np.float64, np.int8, np.int64, np.bool_, np.complex128,
                                          np.uint32]))
            with warnings.catch_warnings(), np.errstate(all="ignore"):    # NaN/inf/complex to int: junk is fine
                warnings.simplefilter("ignore")
                return value.astype(dtype)
        if kind == "axis" and value.ndim:
            ax = draw(st.integers(0, value.ndim - 1))
            return np.concatenate([value, value.take([0], axis=ax)], axis=ax) if value.shape[ax] else value
        if kind == "empty" and value.ndim:
            return value[:0]
        if kind == "negate" and value.dtype.kind in "iu":
            return (-value - 1).astype(value.dtype)
        return value.tolist()
    if isinstance(value, (int, list, tuple, np.integer)) and not isinstance(value, bool) and draw(st.booleans()):
        seq = [value] if isinstance(value, (int, np.integer)) else list(value)
        kind = draw(st.sampled_from(["zero", "negative", "huge", "length", "nest", "float"]))
        if not seq:
            return [0]
        i = draw(st.integers(0, len(seq) - 1))
        if kind == "zero":
            seq[i] = 0
        elif kind == "negative":
            seq[i] = -1 if not isinstance(seq[i], (list, tuple)) else [-1, 0]
        elif kind == "huge" and not shape_arg:
            seq[i] = draw(st.sampled_from(HUGE)) if not isinstance(seq[i], (list, tuple)) else [2**40, 0]
        elif kind == "huge":
            seq[i] = -2**40
        elif kind == "length":
            seq = seq + [1] if draw(st.booleans()) else seq[:-1]
        elif kind == "nest":
            seq[i] = [seq[i]]
        else:
            try:
                seq[i] = float(np.asarray(seq[i], dtype=float).ravel()[0]) + 0.5
            except (TypeError, ValueError, IndexError):
                seq[i] = 0.5
        return seq
    return draw(_junk_no_huge if shape_arg else _junk)


@st.composite
def invalid_cases(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    case = draw(CASES[family])
    import inspect

    import gpuconv
    params = list(inspect.signature(getattr(gpuconv, case.name)).parameters)
    slots = [("arg", i) for i in range(len(case.args))] + [("kw", k) for k in case.kwargs] + \
        [("kw", p) for p in params[len(case.args):] if p not in case.kwargs]
    for _ in range(draw(st.integers(1, 2))):
        where, key = draw(st.sampled_from(slots))
        if where == "arg":
            args = list(case.args)
            args[key] = draw(_mutate_value(args[key], params[key] in SHAPE_ARGS))
            case = dataclasses.replace(case, args=tuple(args))
        else:
            kwargs = dict(case.kwargs)
            kwargs[key] = draw(_mutate_value(kwargs.get(key, 1), key in SHAPE_ARGS))
            case = dataclasses.replace(case, kwargs=kwargs)
    if draw(st.integers(0, 19)) == 0:                       # an argument the function does not take
        case = dataclasses.replace(case, kwargs={**case.kwargs, "bogus": 1})
    return case


class CallTimeout(Exception):
    pass


@contextlib.contextmanager
def _guarded(seconds=CALL_SECONDS, extra_bytes=6 << 30):
    """A call that runs longer than `seconds` raises CallTimeout; one that maps more than `extra_bytes` of new
    address space raises MemoryError (RLIMIT_AS, restored afterwards; main thread only)."""
    main = threading.current_thread() is threading.main_thread()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    if main:
        def on_alarm(signum, frame):
            raise CallTimeout(f"call ran longer than {seconds} s")
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(seconds)
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        if old_limit[1] == resource.RLIM_INFINITY or old_limit[1] > vm + extra_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, old_limit[1]))
    try:
        yield
    finally:
        if main:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old_handler)
            resource.setrlimit(resource.RLIMIT_AS, old_limit)


def check_invalid(case, backend):
    try:
        with _guarded():
            case.call(backend)
        COUNTS["invalid", case.name, backend + " accepted"] += 1
    except (ValueError, TypeError) as exc:
        COUNTS["invalid", case.name, f"{backend} {type(exc).__name__}"] += 1
        return
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"{case!r} on {backend} raised {type(exc).__name__}: {exc} "
                             f"(expected ValueError, TypeError or success)\nargs={case.args!r}\n"
                             f"kwargs={case.kwargs!r}") from exc


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)])
def test_fuzz_invalid_arguments(backend):
    _run(invalid_cases(), FAST, check_invalid, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)])
def test_fuzz_invalid_arguments_long(backend):
    _run(invalid_cases(), SLOW, check_invalid, backend)


# ---------------------------------------------------------------------------------------------------------
# regressions found by the fuzzer
# ---------------------------------------------------------------------------------------------------------
_ONE = np.ones((1, 1, 1, 1), np.float16)
_PAST_INT32 = {
    "conv2d pad 2^40": lambda gc: gc.conv2d(_ONE, _ONE, 1, [[0, 0], [2**40, 0]]),
    "conv2d stride 2^31": lambda gc: gc.conv2d(_ONE, _ONE, 2**31, "VALID"),
    "conv2d dilation 2^31": lambda gc: gc.conv2d(_ONE, _ONE, 1, "VALID", dilations=[1, 2**31]),
    "conv2d_backprop_input stride 2^31": lambda gc: gc.conv2d_backprop_input((1, 1, 1, 1), _ONE, _ONE, 2**31,
                                                                             "VALID"),
    "conv2d_backprop_filter stride 2^31": lambda gc: gc.conv2d_backprop_filter(_ONE, (1, 1, 1, 1), _ONE, 2**31,
                                                                               "VALID"),
    "max_pool2d ksize 2^31": lambda gc: gc.max_pool2d(_ONE, 2**31, 1, "SAME"),
    "max_pool2d stride 2^64": lambda gc: gc.max_pool2d(_ONE, 1, 2**64, "VALID"),
    "avg_pool2d pad 2^31": lambda gc: gc.avg_pool2d(_ONE, 1, 1, [[2**31, 0], [0, 0]]),
}


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)])
@pytest.mark.parametrize("what", sorted(_PAST_INT32))
def test_strides_windows_dilations_pads_past_int32_are_value_errors(backend, what):
    """Found by test_fuzz_invalid_arguments: a stride/ksize/dilation/pad >= 2^31 was an OverflowError from the
    kernel plans (np.int32 scalars) and a MemoryError from the NumPy backend (pads of 2^40 cells), while the
    NumPy backend accepted strides of 2^64; now every backend refuses it in the API layer, naming the argument."""
    import gpuconv as gc
    arg = what.split()[1].replace("stride", "strides").replace("pad", "padding").replace("dilation", "dilations")
    with _guarded(), gc.use_backend(backend), pytest.raises(ValueError, match=arg):
        _PAST_INT32[what](gc)
