"""Absent taps never multiply: inf / NaN in the operand that meets padding (DESIGN.md section 2).

Out-of-bounds taps are absent -- padding and the inserted zeros of a strided dgrad take no part in any
multiplication -- so an inf or NaN weight (fprop, dgrad, transposed conv) or gradient (wgrad) only reaches the
outputs where it meets an in-bounds value. tests/loop_reference.py follows the rule by construction; every backend
and every kernel variant must agree with it: same NaN positions, same infinities with the same signs, finite values
close. The kernel variants are forced with the plans' override hooks (analytic, dgrad's col2im, tiled with
scalar and vector loads, tensor-op float16, split-K > 1); on the tiled variants the non-finite flag must route
every tile to the analytic formula, whose results are then bit-identical to the analytic kernel's.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpuconv
import loop_reference as L
from gpuconv.geometry import conv_problem
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_fprop as F
from gpuconv.plans import conv_wgrad as WG
from gpuconv.plans.conv_common import nonfinite_flag_plan

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
BACKENDS = ["numpy", pytest.param("emulator", marks=pytest.mark.emulator)]
RTOL = {F16: 4e-3, F32: 1e-5, F64: 1e-12}


def values(shape, dtype, seed):
    """Finite values in [-1, 1], multiples of 1/8 (sums of a few are exact in every dtype)."""
    return (np.random.default_rng(seed).integers(-8, 9, shape) / 8).astype(dtype)


def assert_nonfinite_equal(got, ref, dtype):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.array_equal(np.isnan(got), np.isnan(ref)), (
        f"NaN positions differ: got {np.argwhere(np.isnan(got))[:5].tolist()} "
        f"want {np.argwhere(np.isnan(ref))[:5].tolist()}")
    for sign in (np.inf, -np.inf):
        assert np.array_equal(got == sign, ref == sign), f"{sign} positions differ"
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin].astype(np.float64), ref[fin].astype(np.float64), rtol=RTOL[dtype],
                               atol=RTOL[dtype])


def bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_bitwise(a, b):
    """Equal bit patterns, except that any NaN matches any NaN (payloads are not part of the contract)."""
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    keep = ~np.isnan(a)
    assert np.array_equal(bits(a)[keep], bits(b)[keep])


# ---------------------------------------------------------------------------------------------------------
# problems: (name, rank, x_shape, w_shape, strides, padding for the API, padding for the loop reference)
# ---------------------------------------------------------------------------------------------------------
PROBLEMS = [
    ("2d_same_s1", 2, (2, 5, 5, 4), (3, 3, 4, 8), 1, "SAME", "SAME"),
    ("2d_same_s2", 2, (1, 6, 7, 4), (3, 3, 4, 8), 2, "SAME", "SAME"),
    ("2d_explicit_s2", 2, (1, 5, 6, 4), (3, 2, 4, 8), [1, 2],
     [[0, 0], [2, 1], [1, 0], [0, 0]], [(2, 1), (1, 0)]),
    ("3d_same_s1", 3, (1, 3, 4, 4, 4), (2, 3, 3, 4, 8), 1, "SAME", "SAME"),
    ("3d_explicit_s2", 3, (1, 4, 3, 5, 4), (3, 2, 3, 4, 8), [2, 1, 2],
     [[0, 0], [1, 1], [0, 1], [1, 1], [0, 0]], [(1, 1), (0, 1), (1, 1)]),
]
PROBLEM_IDS = [p[0] for p in PROBLEMS]

# where the non-finite values go: (label, [(tap corner or centre, value), ...]); taps are filter positions
POISONS = {
    "inf_border": [("corner", np.inf)],
    "neg_inf_interior": [("centre", -np.inf)],
    "nan_border": [("corner", np.nan)],
    "inf_and_neg_inf": [("corner", np.inf), ("centre", -np.inf)],   # NaN only where both meet real inputs
}


def _tap(w_shape, rank, where):
    window = w_shape[:rank]
    return tuple(0 for _ in window) if where == "corner" else tuple(k // 2 for k in window)


def poisoned_filter(w_shape, rank, poison, dtype, seed=1):
    w = values(w_shape, dtype, seed)
    for i, (where, v) in enumerate(POISONS[poison]):
        w[_tap(w_shape, rank, where) + (i % w_shape[rank], 0)] = v         # same output channel: they can meet
    return w


def _api(rank, kind):
    return {("fprop", 2): gpuconv.conv2d, ("fprop", 3): gpuconv.conv3d,
            ("dgrad", 2): gpuconv.conv2d_backprop_input, ("dgrad", 3): gpuconv.conv3d_backprop_input,
            ("transpose", 2): gpuconv.conv2d_transpose, ("transpose", 3): gpuconv.conv3d_transpose,
            ("wgrad", 2): gpuconv.conv2d_backprop_filter, ("wgrad", 3): gpuconv.conv3d_backprop_filter}[kind, rank]


def dy_shape(problem):
    _, rank, xs, ws, strides, _, ref_pad = problem
    sizes = L.out_sizes(xs[1:-1], ws[:rank], strides if isinstance(strides, int) else tuple(strides), 1, ref_pad)
    return (xs[0],) + tuple(s[0] for s in sizes) + (ws[-1],)


def run_op(backend, kind, problem, x, w, dy):
    _, rank, xs, ws, strides, pad, _ = problem
    fn = _api(rank, kind)
    with gpuconv.use_backend(backend):
        if kind == "fprop":
            return np.asarray(fn(x, w, strides, pad))
        if kind == "dgrad":
            return np.asarray(fn(xs, w, dy, strides, pad))
        if kind == "transpose":
            return np.asarray(fn(dy, w, xs, strides, pad))
        return np.asarray(fn(x, ws, dy, strides, pad))


def reference(kind, problem, x, w, dy):
    _, rank, xs, ws, strides, _, ref_pad = problem
    st = strides if isinstance(strides, int) else tuple(strides)
    if kind == "fprop":
        return L.conv_fprop(x, w, st, ref_pad)
    if kind == "dgrad":
        return L.conv_backprop_input(xs, w, dy, st, ref_pad)
    if kind == "transpose":
        return L.conv_transpose(dy, w, xs, st, ref_pad)
    return L.conv_backprop_filter(x, ws, dy, st, ref_pad)


def make_inputs(kind, problem, poison, dtype):
    _, rank, xs, ws, *_ = problem
    x = values(xs, dtype, 2)
    dys = dy_shape(problem)
    if kind == "wgrad":
        w = values(ws, dtype, 1)
        dy = values(dys, dtype, 3)
        # dy non-finite at the first and the last output cell (both read padding for some taps)
        marks = POISONS[poison]
        dy[(0,) * (rank + 1) + (1,)] = marks[0][1]
        dy[(0,) + tuple(n - 1 for n in dys[1:-1]) + (5,)] = marks[-1][1]
    else:
        w = poisoned_filter(ws, rank, poison, dtype)
        dy = values(dys, dtype, 3)
    return x, w, dy


# ---------------------------------------------------------------------------------------------------------
# every backend, default variant choice
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
@pytest.mark.parametrize("kind", ["fprop", "dgrad", "transpose", "wgrad"])
def test_numpy_backend_matches_loop_reference(kind, problem, poison):
    x, w, dy = make_inputs(kind, problem, poison, F32)
    got = run_op("numpy", kind, problem, x, w, dy)
    assert_nonfinite_equal(got, reference(kind, problem, x, w, dy), F32)


@pytest.mark.parametrize("dtype", [F16, F64])
@pytest.mark.parametrize("kind", ["fprop", "dgrad", "wgrad"])
def test_numpy_backend_other_dtypes(kind, dtype):
    problem = PROBLEMS[1]
    x, w, dy = make_inputs(kind, problem, "inf_and_neg_inf", dtype)
    got = run_op("numpy", kind, problem, x, w, dy)
    assert_nonfinite_equal(got, reference(kind, problem, x, w, dy), dtype)


def test_numpy_grouped_and_few_channel_paths():
    # groups = 2 and the C/G << K/G dgrad path (_dgrad_scatter) of the fast code, with an inf weight.
    x = values((1, 5, 5, 4), F32, 2)
    w = values((3, 3, 2, 8), F32, 1)
    w[0, 0, 1, 5] = np.inf
    with gpuconv.use_backend("numpy"):
        y = gpuconv.conv2d(x, w, 2, "SAME")
    assert_nonfinite_equal(y, L.conv_fprop(x, w, 2, "SAME"), F32)
    w3 = values((3, 3, 3, 16), F32, 4)
    w3[2, 2, 0, 0] = -np.inf
    dy = values((1, 3, 3, 16), F32, 5)
    with gpuconv.use_backend("numpy"):
        dx = gpuconv.conv2d_backprop_input((1, 6, 6, 3), w3, dy, 2, "SAME")
    assert_nonfinite_equal(dx, L.conv_backprop_input((1, 6, 6, 3), w3, dy, 2, "SAME"), F32)


def test_numpy_finite_problems_keep_the_fast_path(monkeypatch):
    # Finite operands never reach the exact path: results stay bit for bit what the fast path gives.
    from gpuconv.numpy_backend import _nonfinite

    def refuse(*a, **k):
        raise AssertionError("exact path taken for a finite problem")

    for name in ("conv_fprop", "conv_dgrad", "conv_wgrad"):
        monkeypatch.setattr(_nonfinite, name, refuse)
    problem = PROBLEMS[1]
    x, w, dy = make_inputs("fprop", problem, "inf_border", F32)
    w[np.isinf(w)] = 0.5
    for kind in ("fprop", "dgrad", "wgrad"):
        got = run_op("numpy", kind, problem, x, w, dy)
        assert np.isfinite(got).all()


@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_operand_is_finite_agrees_with_isfinite_on_every_kind_of_bits(dtype):
    # The routing test reads the bits as integers: compared with np.isfinite over random bit patterns (every
    # exponent, both signs, NaN payloads), the finite extremes, zeros of both signs and a strided view.
    from gpuconv.numpy_backend._nonfinite import operand_is_finite
    width = dtype.itemsize
    rng = np.random.default_rng(7)
    patterns = rng.integers(0, 2**(8 * width), 4096, dtype=np.uint64, endpoint=False).astype(f"u{width}")
    for a in np.array_split(patterns.view(dtype), 512):
        assert operand_is_finite(a) == bool(np.isfinite(a).all())
    info = np.finfo(dtype)
    edge = np.array([info.max, -info.max, info.tiny, -info.smallest_subnormal, 0.0, -0.0], dtype)
    assert operand_is_finite(edge) and operand_is_finite(edge[:0])
    for bad in (np.inf, -np.inf, np.nan, -np.nan):
        a = np.tile(edge, (3, 4))
        a[2, 5] = bad
        assert not operand_is_finite(a) and operand_is_finite(a[:2])
        assert not operand_is_finite(a.T[::-1]) and operand_is_finite(a[:, ::2][:2])


@pytest.mark.parametrize("n,k,s,d", list(itertools.product(range(1, 7), range(1, 4), range(1, 3), range(1, 3))))
def test_conv_interior_is_the_outputs_that_read_no_padding(n, k, s, d):
    # Brute force over every output and tap of one axis (H), under SAME, VALID and explicit paddings.
    from gpuconv.geometry import conv_problem
    from gpuconv.numpy_backend._window import conv_interior
    for padding in ("SAME", "VALID", [(0, 0), (1, 0), (0, 0)], [(0, 0), (0, 1), (0, 0)], [(0, 0), (0, 2), (0, 0)]):
        try:
            p = conv_problem((1, 1, n, 1, 1), (1, k, 1, 1, 1), (1, s, 1), (1, d, 1), padding)
        except ValueError:
            continue                                                  # a negative output size
        inside = [o for o in range(p.P) if all(0 <= o * s + t * d - p.pad_before[1] < n for t in range(k))]
        (z0, z1), (lo, hi), (q0, q1) = conv_interior(p)
        assert list(range(lo, hi)) == inside and (z0, z1, q0, q1) == (0, 1, 0, 1), (padding, p)


# wgrad checks dy only where a window reads padding (the border outputs): the fast paths (1x1 GEMM, Winograd
# on VALID or on SAME with a non-finite value inside, strided and dilated gathers) get the other non-finite dy
# values and must still give the loop reference's results.
WGRAD_FAST = [
    ("1x1", (2, 5, 6, 8), (1, 1, 8, 8), 1, "SAME", 1, "border"),
    ("3x3_valid_winograd", (1, 10, 10, 32), (3, 3, 32, 32), 1, "VALID", 1, "border"),
    ("3x3_valid_s2", (1, 7, 9, 4), (3, 3, 4, 8), 2, "VALID", 1, "border"),
    ("3x3_valid_dilated", (1, 8, 8, 4), (3, 3, 4, 8), 1, "VALID", 2, "border"),
    ("3x3_same_winograd_inside", (2, 8, 8, 32), (3, 3, 32, 32), 1, "SAME", 1, "inside"),
    ("3x3_same_s2_winograd_inside", (1, 12, 12, 32), (3, 3, 32, 32), 2, "SAME", 1, "inside"),
    ("5x5_same_inside", (1, 9, 8, 4), (5, 5, 4, 8), 1, "SAME", 1, "inside"),
]


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("name,xs,ws,stride,padding,dilation,where", WGRAD_FAST, ids=[u[0] for u in WGRAD_FAST])
def test_numpy_wgrad_checks_only_outputs_that_read_padding(monkeypatch, name, xs, ws, stride, padding, dilation,
                                                           where, poison):
    from gpuconv.geometry import conv_problem
    from gpuconv.numpy_backend import _nonfinite
    from gpuconv.numpy_backend._window import conv_interior

    def refuse(*a, **k):
        raise AssertionError("non-finite values away from padding took the exact path")

    monkeypatch.setattr(_nonfinite, "conv_wgrad", refuse)
    p = conv_problem((xs[0], 1) + xs[1:], (1,) + ws, (1, stride, stride), (1, dilation, dilation), padding)
    x = values(xs, F32, 2)
    dy = values((xs[0], p.P, p.Q, ws[-1]), F32, 3)
    marks = POISONS[poison]
    (_, _), (p0, p1), (q0, q1) = conv_interior(p)
    if where == "border":                                # no output reads padding: any cell
        assert (p0, p1, q0, q1) == (0, p.P, 0, p.Q)
        first, last = (0, 0, 0, 1), (-1, -1, -1, 5)
    else:                                                # cells whose windows stay inside x
        assert p1 - p0 >= 2 and q1 - q0 >= 2
        first, last = (0, p0, q0, 1), (-1, p1 - 1, q1 - 1, 5)
    dy[first] = marks[0][1]
    dy[last] = marks[-1][1]
    with gpuconv.use_backend("numpy"):
        got = gpuconv.conv2d_backprop_filter(x, ws, dy, stride, padding, dilations=dilation)
    want = L.conv_backprop_filter(x, ws, dy, stride, padding, dilation)
    assert_nonfinite_equal(got, want, F32)
    assert not np.isfinite(want).all()


@pytest.mark.parametrize("channels,k", [(4, 8), (32, 32)])          # 32: Winograd's 3x3x3 form, which hands back
def test_numpy_conv3d_wgrad_checks_the_depth_border_too(monkeypatch, channels, k):
    # 3-D: inf/NaN in dy away from every border slab (depth included) take the fast paths and give the loop
    # reference's results; one on the front or back depth slab routes to the exact path.
    from gpuconv.numpy_backend import _nonfinite
    real = _nonfinite.conv_wgrad
    taken = []
    monkeypatch.setattr(_nonfinite, "conv_wgrad", lambda *a: taken.append(1) or real(*a))
    x = values((1, 4, 6, 6, channels), F32, 2)
    ws = (3, 3, 3, channels, k)
    for cells, exact in (([(0, 1, 2, 2, 1), (0, 2, 1, 4, 5)], False), ([(0, 0, 2, 2, 1)], True),
                         ([(0, 3, 2, 2, 1)], True)):
        dy = values((1, 4, 6, 6, k), F32, 3)
        for cell, v in zip(cells, (np.inf, np.nan)):
            dy[cell] = v
        with gpuconv.use_backend("numpy"):
            got = gpuconv.conv3d_backprop_filter(x, ws, dy, 1, "SAME")
        assert len(taken) == int(exact), cells
        taken.clear()
        if not exact:                      # the exact path's own results are checked above
            assert_nonfinite_equal(got, L.conv_backprop_filter(x, ws, dy, 1, "SAME"), F32)


def test_numpy_wgrad_border_values_take_the_exact_path(monkeypatch):
    # The other side of the rule: a non-finite dy cell on any border slab (front or back of H or W) routes the
    # problem to the exact path.
    from gpuconv.numpy_backend import _nonfinite
    taken = []
    monkeypatch.setattr(_nonfinite, "conv_wgrad", lambda *a: taken.append(1) or np.zeros(a[2].w_shape, np.float32))
    x = values((1, 8, 8, 32), F32, 2)
    for cell in [(0, 0, 4, 3), (0, 7, 4, 3), (0, 4, 0, 3), (0, 4, 7, 3)]:
        dy = values((1, 8, 8, 32), F32, 3)
        dy[cell] = np.nan
        with gpuconv.use_backend("numpy"):
            gpuconv.conv2d_backprop_filter(x, (3, 3, 32, 32), dy, 1, "SAME")
        assert len(taken) == 1, cell
        taken.clear()


# ---------------------------------------------------------------------------------------------------------
# kernel variants on the emulator
# ---------------------------------------------------------------------------------------------------------
FPROP_VARIANTS = {
    "analytic": dict(variant="analytic"),
    "tiled_v1": dict(variant="tiled", tile="64x64", vector=1),
    "tiled_v4": dict(variant="tiled", tile="64x64", vector=4),
}
DGRAD_VARIANTS = {"analytic": dict(variant="analytic"), "col2im": dict(variant="col2im"),
                  "tiled": dict(variant="tiled", tile="64x64")}
WGRAD_VARIANTS = {"analytic": dict(variant="analytic"), "tiled_split1": dict(variant="tiled", tile="64x64", splits=1),
                  "tiled_split2": dict(variant="tiled", tile="64x64", splits=2)}


def forcing(kind, fields):
    if kind == "fprop":
        return F.override_config(**fields)
    if kind in ("dgrad", "transpose"):
        return DG.forced_config(**fields)
    return WG.forced_config(**fields)


KERNEL_CASES = (
    [("fprop", v, p, po) for v in FPROP_VARIANTS for p, po in ((0, "inf_and_neg_inf"), (2, "nan_border"),
                                                               (3, "inf_border"))]
    + [("dgrad", v, p, po) for v in DGRAD_VARIANTS for p, po in ((1, "inf_and_neg_inf"), (4, "neg_inf_interior"))]
    + [("transpose", v, 2, "nan_border") for v in DGRAD_VARIANTS]
    + [("wgrad", v, p, po) for v in WGRAD_VARIANTS for p, po in ((0, "inf_and_neg_inf"), (3, "nan_border"))]
)


def _variant_table(kind):
    return {"fprop": FPROP_VARIANTS, "dgrad": DGRAD_VARIANTS, "transpose": DGRAD_VARIANTS,
            "wgrad": WGRAD_VARIANTS}[kind]


@pytest.mark.emulator
@pytest.mark.parametrize("kind,variant,problem_index,poison", KERNEL_CASES,
                         ids=[f"{k}-{v}-{PROBLEMS[p][0]}-{po}" for k, v, p, po in KERNEL_CASES])
def test_kernel_variants_match_loop_reference(kind, variant, problem_index, poison):
    problem = PROBLEMS[problem_index]
    x, w, dy = make_inputs(kind, problem, poison, F32)
    with forcing(kind, _variant_table(kind)[variant]):
        got = run_op("emulator", kind, problem, x, w, dy)
    assert_nonfinite_equal(got, reference(kind, problem, x, w, dy), F32)


@pytest.mark.emulator
@pytest.mark.parametrize("kind", ["fprop", "dgrad", "wgrad"])
def test_tiled_fallback_is_bitwise_the_analytic_kernel(kind):
    # The fallback calls the analytic kernels' per-output functions: same sums, same order, same bits
    # (wgrad with one split; with more, the split partials are reduced, as on the finite path).
    problem = PROBLEMS[0]
    x, w, dy = make_inputs(kind, problem, "inf_and_neg_inf", F32)
    tiled = {"fprop": dict(variant="tiled", tile="64x64"), "dgrad": dict(variant="tiled", tile="64x64"),
             "wgrad": dict(variant="tiled", tile="64x64", splits=1)}[kind]
    with forcing(kind, dict(variant="analytic")):
        a = run_op("emulator", kind, problem, x, w, dy)
    with forcing(kind, tiled):
        b = run_op("emulator", kind, problem, x, w, dy)
    assert_bitwise(a, b)


@pytest.mark.emulator
@pytest.mark.parametrize("poison", ["inf_border", "nan_border", "inf_and_neg_inf"])
def test_fprop_tensorop_float16(poison):
    problem = PROBLEMS[0]
    x, w, dy = make_inputs("fprop", problem, poison, F16)
    with F.override_config(variant="tensorop"):
        got = run_op("emulator", "fprop", problem, x, w, dy)
    assert_nonfinite_equal(got, reference("fprop", problem, x, w, dy), F16)


@pytest.mark.emulator
@pytest.mark.parametrize("poison", ["inf_and_neg_inf", "nan_border"])
@pytest.mark.parametrize("kind,fields", [("dgrad", dict(variant="tensorop", tile="64x64", passes=1)),
                                         ("transpose", dict(variant="tensorop", tile="128x64", passes=1)),
                                         ("wgrad", dict(variant="tensorop", tile="64x64", splits=2, passes=1))])
def test_dgrad_wgrad_tensorop_float16(kind, fields, poison):
    # float16's default backprop kernels: the flag (over w, dy for wgrad) routes their tiles to the formula too
    problem = PROBLEMS[1] if kind != "transpose" else PROBLEMS[2]
    x, w, dy = make_inputs(kind, problem, poison, F16)
    with forcing(kind, fields):
        got = run_op("emulator", kind, problem, x, w, dy)
    assert_nonfinite_equal(got, reference(kind, problem, x, w, dy), F16)


@pytest.mark.emulator
@pytest.mark.parametrize("dtype", [F16, F64])
def test_tiled_dgrad_wgrad_other_dtypes(dtype):
    problem = PROBLEMS[1]
    for kind, fields in (("dgrad", dict(variant="tiled")), ("wgrad", dict(variant="tiled", tile="64x64", splits=2))):
        x, w, dy = make_inputs(kind, problem, "inf_and_neg_inf", dtype)
        with forcing(kind, fields):
            got = run_op("emulator", kind, problem, x, w, dy)
        assert_nonfinite_equal(got, reference(kind, problem, x, w, dy), dtype)


@pytest.mark.emulator
@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_flag_kernel(dtype):
    # Each kind of non-finite value, at the first and the last element; one block, so the grid-stride loop
    # runs; a finite operand leaves the flag at 0.
    from gpuconv.executors.emulator import EmulatorExecutor
    ex = EmulatorExecutor()
    n = 700
    for pos, v in [(None, 0.0), (0, np.inf), (n - 1, -np.inf), (n - 1, np.nan), (n // 2, np.inf)]:
        a = values((n,), dtype, 0)
        if pos is not None:
            a[pos] = v
        flag = np.zeros(1, np.int32)
        plan = nonfinite_flag_plan("conv_fprop", a, n, "int", flag)
        ex.launch(plan.__class__(plan.family, plan.name_expression, (1, 1, 1), plan.block, 0, plan.args))
        assert flag[0] == (0 if pos is None else 1), (pos, v)
    # float16: the largest finite half is finite
    if dtype == F16:
        a = np.full(8, 65504, np.float16)
        flag = np.zeros(1, np.int32)
        ex.launch(nonfinite_flag_plan("conv_fprop", a, 8, "int", flag))
        assert flag[0] == 0


def test_tiled_plans_carry_the_flag():
    p = conv_problem((1, 1, 5, 5, 4), (1, 3, 3, 4, 8), (1, 1, 1), (1, 1, 1), "SAME")
    x, w, y = np.zeros(p.x_shape, F32), np.zeros(p.w_shape, F32), np.zeros(p.y_shape, F32)
    flag = np.zeros(1, np.int32)
    with F.override_config(variant="tiled", tile="64x64"):
        first, tiled = F.plan_fprop(p, F32, x, w, y, nonfinite=flag)
        with pytest.raises(ValueError, match="nonfinite"):
            F.plan_fprop(p, F32, x, w, y)
    assert first.name_expression == "gpuconv::conv_nonfinite_flag<float, int>"
    assert first.args[0] is w and int(first.args[1]) == w.size and first.args[2] is flag
    assert tiled.args[3] is flag
    with F.override_config(variant="analytic"):
        (plan,) = F.plan_fprop(p, F32, x, w, y)                       # analytic: no flag needed
    assert len(plan.args) == 3 + 22
