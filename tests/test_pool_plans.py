"""Launch-plan selection for the pooling and unpooling families, as pure functions: no kernel runs here.

Hypothetical huge tensors are zero-stride broadcasts (real arrays with a shape and a dtype, no memory) of one
element at a chosen byte offset from a 64-byte aligned buffer, so the vector-width chooser sees known pointers.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv.dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES
from gpuconv.geometry import PoolProblem, pool_problem
from gpuconv.kernel_source import families
from gpuconv.plans import LaunchPlan
from gpuconv.plans import pool as P
from gpuconv.plans import unpool as U


def fake(shape, dtype, offset=0):
    """An array of any shape that owns no memory (enough for plans, which read shape, dtype and data pointer),
    its data pointer `offset` bytes past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    buf = np.zeros(128 + dtype.itemsize, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    elem = buf[start:start + dtype.itemsize].view(dtype).reshape(())
    out = np.broadcast_to(elem, tuple(shape))
    assert P.data_ptr(out) % 64 == offset % 64
    return out


def small_problem():
    return pool_problem((2, 1, 7, 9, 3), (1, 3, 2), (1, 2, 2), "SAME")


def huge_problem():
    # 2^31 + 2^25 input elements: needs 64-bit indexing.
    return pool_problem((33, 1, 1024, 1024, 64), (1, 2, 2), (1, 2, 2), "VALID")


def all_plans(p, dtype=np.float32, index_dtype=np.int64):
    """Every pooling plan for p; the average ops only for float dtypes (the API allows no others)."""
    x, y = fake(p.x_shape, dtype), fake(p.y_shape, dtype)
    a = fake(p.y_shape, index_dtype)
    plans = [P.max_pool(p, x, y), P.max_pool_argmax(p, x, y, a, True), P.max_pool_grad(p, x, y, x)]
    if np.dtype(dtype) in FLOAT_DTYPES:
        plans += [P.avg_pool(p, x, y), P.avg_pool_grad(p, y, x), U.avg_unpool(p, y, x)]
    return plans


def scatter_plans(values_shape, out_shape, dtype=np.float32, index_dtype=np.int64, include_batch=False):
    v, a, o = fake(values_shape, dtype), fake(values_shape, index_dtype), fake(out_shape, dtype)
    scratch = {name: fake((n,), dt) for name, (n, dt, _) in U.scatter_scratch(values_shape, out_shape).items()}
    return U.argmax_scatter(v, a, o, scratch, include_batch)


# ---------------------------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------------------------
def test_families_registered():
    names = {f.name: f for f in families()}
    assert names["pool"] is P.FAMILY and names["unpool"] is U.FAMILY
    for fam in (P.FAMILY, U.FAMILY):
        assert len(set(fam.name_expressions)) == len(fam.name_expressions)


VECS = {"__half": (4, 1), "float": (4, 1), "double": (2, 1), "signed char": (16, 8, 1), "unsigned char": (16, 8, 1),
        "short": (4, 1), "unsigned short": (4, 1), "int": (4, 1), "long long": (2, 1)}


def test_every_dtype_index_width_and_vec_is_declared():
    exprs = set(P.FAMILY.name_expressions)
    for it in ("int", "long long"):
        for dt, vecs in VECS.items():
            for v in vecs:
                assert f"pool_max_fwd<{dt}, {it}, {v}>" in exprs
                assert f"pool_max_bwd<{dt}, {it}, {v}>" in exprs
                assert {f"pool_max_argmax_fwd<{dt}, {it}, {a}, {v}>" for a in ("int", "long long")} <= exprs
        for dt in ("__half", "float", "double"):
            for v in VECS[dt]:
                assert {f"pool_avg_fwd<{dt}, {it}, {v}>", f"pool_avg_bwd<{dt}, {it}, true, {v}>",
                        f"pool_avg_bwd<{dt}, {it}, false, {v}>"} <= exprs
    assert not any("pool_avg_fwd<int" in e or "pool_avg_fwd<signed" in e for e in exprs)
    # nothing else: every expression ends in one of its dtype's widths
    for e in exprs:
        dt, vec = e.split("<")[1].split(", ")[0], int(e.rsplit(", ", 1)[1][:-1])
        assert vec in VECS[dt], e


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + INT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("problem", [small_problem, huge_problem])
def test_every_plan_names_a_declared_expression(dtype, index_dtype, problem):
    p = problem()
    plans = all_plans(p, dtype, index_dtype)
    plans += scatter_plans((2, 1, 3, 4, 5), (2, 1, 6, 8, 5), dtype, index_dtype)
    plans.append(U.argmax_gather(fake((2, 1, 6, 8, 5), dtype), fake((2, 1, 3, 4, 5), index_dtype),
                                 fake((2, 1, 3, 4, 5), dtype), fake((1,), np.int32), True))
    declared = {P.FAMILY.name: set(P.FAMILY.name_expressions), U.FAMILY.name: set(U.FAMILY.name_expressions)}
    for plan in plans:
        assert isinstance(plan, LaunchPlan)
        assert plan.name_expression in declared[plan.family], plan.name_expression


# ---------------------------------------------------------------------------------------------------------
# index width, arguments, grid
# ---------------------------------------------------------------------------------------------------------
def _scalars(plan):
    return [a for a in plan.args if isinstance(a, np.generic)]


def test_small_problem_uses_32_bit_indices():
    p = small_problem()
    assert not p.needs_int64()
    for plan in all_plans(p):
        assert re.match(r"\w+<[^,]+, int[,>]", plan.name_expression), plan.name_expression   # index type int
        assert all(type(a) is np.int32 for a in _scalars(plan)), plan.name_expression


def test_kept_plan_arguments_follow_the_index_width_the_problem_answers(monkeypatch):
    """The plans keep each problem's scalar arguments (geometry_args), keyed by index width too: a problem made to
    answer needs_int64() (kernel coverage does this on small problems) gets int64 scalars, and the same problem
    afterwards int32 ones again, never the other width's kept arguments."""
    p = small_problem()
    before = [_scalars(plan) for plan in all_plans(p)]
    with monkeypatch.context() as m:
        m.setattr(PoolProblem, "needs_int64", lambda self: True)
        for plan in all_plans(p):
            assert "long long" in plan.name_expression
            assert all(type(a) is np.int64 for a in _scalars(plan)[:17]), plan.name_expression
    after = [_scalars(plan) for plan in all_plans(p)]
    assert all(type(a) is np.int32 for scalars in after for a in scalars) and after == before


def test_huge_problem_uses_64_bit_indices():
    p = huge_problem()
    assert p.needs_int64()
    for plan in all_plans(p, index_dtype=np.int32):
        # the index type is the second template argument; the argmax type (int here) is independent of it
        assert re.match(r"\w+<[^,]+, long long", plan.name_expression), plan.name_expression
        scalars = _scalars(plan)
        flags = [a for a in scalars if type(a) is np.int32]
        assert all(type(a) in (np.int64, np.int32) for a in scalars)
        assert len(flags) == (1 if "argmax" in plan.name_expression else 0)   # only include_batch is int32
    argmax_plan = all_plans(p, index_dtype=np.int32)[1]
    assert argmax_plan.name_expression == "pool_max_argmax_fwd<float, long long, int, 4>"   # C = 64: VEC 4


def test_geometry_arguments_in_kernel_order():
    p = pool_problem((2, 5, 7, 9, 3), (2, 3, 2), (1, 2, 3), ((1, 0), (1, 1), (0, 1)))
    plan = P.max_pool(p, fake(p.x_shape, np.float32), fake(p.y_shape, np.float32))
    _, _, total, *geom = plan.args
    assert total == np.prod(p.y_shape)
    assert [int(v) for v in geom] == [p.D, p.H, p.W, p.C, p.T, p.R, p.S, p.Z, p.P, p.Q, *p.stride, *p.pad_before]
    grad = P.max_pool_grad(p, fake(p.x_shape, np.float32), fake(p.y_shape, np.float32), fake(p.x_shape, np.float32))
    assert grad.args[3] == np.prod(p.x_shape)           # gradients: one thread per input element


def test_no_python_scalars_anywhere():
    plans = all_plans(small_problem()) + all_plans(huge_problem()) + scatter_plans((2, 1, 3, 4, 5), (2, 1, 6, 8, 5))
    for plan in plans:
        for a in plan.args:
            assert not isinstance(a, (bool, int, float)), (plan.name_expression, a)


def test_grid_is_capped_and_covers_small_problems():
    assert P.grid_for(1) == (1, 1, 1)
    assert P.grid_for(P.BLOCK) == (1, 1, 1)
    assert P.grid_for(P.BLOCK + 1) == (2, 1, 1)
    assert P.grid_for(2**40) == (P.MAX_BLOCKS, 1, 1)
    for plan in all_plans(huge_problem()):
        assert plan.block == (P.BLOCK, 1, 1)
        assert plan.grid[0] == P.MAX_BLOCKS and plan.grid[1:] == (1, 1)
    p = small_problem()                                 # C = 3: VEC 1, one thread per element
    plan = P.max_pool(p, fake(p.x_shape, np.float32), fake(p.y_shape, np.float32))
    assert plan.name_expression.endswith(", 1>")
    assert plan.grid[0] == -(-int(np.prod(p.y_shape)) // P.BLOCK)
    assert plan.grid[0] * plan.block[0] < 2**31         # 32-bit grid_first never overflows


def test_argmax_and_flags():
    p = small_problem()
    x, y = fake(p.x_shape, np.float16), fake(p.y_shape, np.float16)
    on = P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int32), True)
    off = P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int64), False)
    assert on.name_expression == "pool_max_argmax_fwd<__half, int, int, 1>"
    assert off.name_expression == "pool_max_argmax_fwd<__half, int, long long, 1>"
    assert type(on.args[-1]) is np.int32 and on.args[-1] == 1 and off.args[-1] == 0


def test_avg_unpool_is_the_undivided_gather():
    p = small_problem()
    plan = U.avg_unpool(p, fake(p.y_shape, np.float64), fake(p.x_shape, np.float64))
    assert plan.family == "pool" and plan.name_expression == "pool_avg_bwd<double, int, false, 1>"
    assert P.avg_pool_grad(p, fake(p.y_shape, np.float64), fake(p.x_shape, np.float64)).name_expression == \
        "pool_avg_bwd<double, int, true, 1>"


# ---------------------------------------------------------------------------------------------------------
# vector width (VEC): alignment, the chooser, the forced override
# ---------------------------------------------------------------------------------------------------------
def channels_problem(C, nspatial=2):
    shape = (2, 1, 5, 6, C) if nspatial == 2 else (1, 3, 4, 5, C)
    return pool_problem(shape, (1, 3, 2) if nspatial == 2 else (2, 2, 3), (1, 2, 1), "SAME")


def _vec(plan) -> int:
    return int(plan.name_expression.rsplit(", ", 1)[1][:-1])


def test_vec_widths_per_element_size():
    assert P.vec_widths(np.float16) == (4, 1) and P.vec_widths(np.int16) == (4, 1)
    assert P.vec_widths(np.float32) == (4, 1) and P.vec_widths(np.int32) == (4, 1)
    assert P.vec_widths(np.float64) == (2, 1) and P.vec_widths(np.int64) == (2, 1)
    assert P.vec_widths(np.int8) == (16, 8, 1) and P.vec_widths(np.uint8) == (16, 8, 1)
    for dt in FLOAT_DTYPES + INT_DTYPES:                # 64- or 128-bit accesses
        assert all(v * dt.itemsize in (8, 16) for v in P.vec_widths(dt)[:-1])


@pytest.mark.parametrize("offset,dtype,lanes", [
    (0, np.float32, 16), (16, np.float32, 16), (48, np.float64, 16),   # 16-byte aligned: any VEC
    (8, np.float32, 2), (4, np.float32, 1), (12, np.float32, 1),
    (8, np.float64, 1), (8, np.float16, 4), (4, np.float16, 2), (2, np.float16, 1),
    (8, np.int8, 8), (4, np.int8, 4), (1, np.int8, 1), (3, np.uint8, 1), (8, np.int64, 1)])
def test_vector_lanes_from_data_pointers(offset, dtype, lanes):
    assert P.vector_lanes(fake((3, 4), dtype, offset)) == lanes
    assert P.vector_lanes(fake((3, 4), dtype, offset), fake((2,), dtype)) == lanes      # the least aligned wins
    assert P.vector_lanes() == P.MAX_VEC


def test_vector_lanes_checks_each_array_at_its_own_itemsize():
    # 16-byte aligned float32 data with int64 argmax 8 bytes off 16: VEC 4 would store 32 argmax bytes as two
    # 16-byte words, which need 16-byte alignment -> 1 lane; int32 argmax 8 bytes off: 8-byte words -> 2 lanes
    x = fake((4,), np.float32)
    assert P.vector_lanes(x, fake((4,), np.int64, 8)) == 1
    assert P.vector_lanes(x, fake((4,), np.int32, 8)) == 2
    assert P.vector_lanes(x, fake((4,), np.int64, 16)) == P.MAX_VEC


def test_data_pointer_of_numpy_views():
    buf = np.empty(9, np.float32)
    assert P.data_ptr(buf[1:]) == P.data_ptr(buf) + 4
    assert P.data_ptr(buf[1:].reshape(2, 4)) == P.data_ptr(buf) + 4


@pytest.mark.parametrize("dtype,C,lanes,vec", [
    (np.float32, 4, 16, 4), (np.float32, 8, 16, 4), (np.float32, 12, 16, 4), (np.float32, 6, 16, 1),
    (np.float32, 3, 16, 1), (np.float32, 8, 2, 1), (np.float32, 8, 4, 4),
    (np.float16, 4, 16, 4), (np.float16, 12, 4, 4), (np.float16, 2, 16, 1), (np.float16, 8, 2, 1),
    (np.float64, 2, 16, 2), (np.float64, 6, 2, 2), (np.float64, 3, 16, 1), (np.float64, 4, 1, 1),
    (np.int8, 16, 16, 16), (np.int8, 48, 16, 16), (np.int8, 24, 16, 8), (np.int8, 8, 16, 8),
    (np.int8, 32, 8, 8), (np.int8, 12, 16, 1), (np.int8, 16, 4, 1),
    (np.uint8, 16, 16, 16), (np.int16, 4, 16, 4), (np.uint16, 6, 16, 1), (np.int32, 12, 4, 4),
    (np.int64, 2, 2, 2), (np.int64, 10, 1, 1)])
def test_choose_vec(dtype, C, lanes, vec):
    p = channels_problem(C)
    assert P.choose_vec(p, dtype, lanes) == vec
    assert P.vec_reason(p, dtype, lanes, vec) == ""
    wider = [v for v in P.vec_widths(dtype) if v > vec]
    assert all(P.vec_reason(p, dtype, lanes, v) for v in wider)      # the widest that applies


@pytest.mark.parametrize("nspatial", [2, 3])
def test_plans_pick_vec_from_channels_and_alignment(nspatial):
    p = channels_problem(8, nspatial)
    for dtype, vec in [(np.float32, 4), (np.float16, 4), (np.float64, 2), (np.int8, 8), (np.int64, 2)]:
        plans = all_plans(p, dtype)
        assert [_vec(pl) for pl in plans] == [vec] * len(plans)
        # grid over lane groups; total stays the element count
        assert plans[0].grid[0] == -(-int(np.prod(p.y_shape)) // vec // P.BLOCK)
        assert int(plans[0].args[2]) == int(np.prod(p.y_shape))
        # one misaligned array (any of them) -> VEC 1
        x, y = fake(p.x_shape, dtype), fake(p.y_shape, dtype)
        off = np.dtype(dtype).itemsize
        assert _vec(P.max_pool(p, fake(p.x_shape, dtype, off), y)) == 1
        assert _vec(P.max_pool(p, x, fake(p.y_shape, dtype, off))) == 1
        assert _vec(P.max_pool_grad(p, x, fake(p.y_shape, dtype, off), x)) == 1
        assert _vec(P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int64, 8), False)) == 1
        assert _vec(P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int64, 16), False)) == vec
    p12 = channels_problem(12, nspatial)
    assert [_vec(pl) for pl in all_plans(p12, np.float32)] == [4] * 6
    assert _vec(P.max_pool(p12, fake(p12.x_shape, np.int8), fake(p12.y_shape, np.int8))) == 1   # 12 % 8 != 0


def test_force_vec():
    p = channels_problem(8)
    x, y = fake(p.x_shape, np.float32), fake(p.y_shape, np.float32)
    with P.force_vec(1):
        assert [_vec(pl) for pl in all_plans(p)] == [1] * 6
        with P.force_vec(4):                            # nests, and restores the outer value
            assert _vec(P.max_pool(p, x, y)) == 4
        assert _vec(P.avg_pool(p, x, y)) == 1
    assert _vec(P.max_pool(p, x, y)) == 4              # the chooser again
    with P.force_vec(2), pytest.raises(ValueError, match="not instantiated for float32"):
        P.max_pool(p, x, y)
    with P.force_vec(4), pytest.raises(ValueError, match="not aligned"):
        P.max_pool(p, fake(p.x_shape, np.float32, 8), y)
    p6 = channels_problem(6)
    with P.force_vec(4), pytest.raises(ValueError, match="C = 6 is not a multiple of VEC = 4"):
        P.avg_pool(p6, fake(p6.x_shape, np.float32), fake(p6.y_shape, np.float32))
    with pytest.raises(ValueError, match="VEC must be"), P.force_vec(3):
        pass


# ---------------------------------------------------------------------------------------------------------
# unpool: the scatter's passes, scratch, copy kernels per element size
# ---------------------------------------------------------------------------------------------------------
def test_scatter_passes_and_scratch():
    plans = scatter_plans((2, 1, 3, 4, 5), (2, 1, 6, 8, 5), np.float16, np.int32, include_batch=True)
    assert [pl.name_expression for pl in plans] == [
        "unpool_scatter_count<int, int>", "unpool_scatter_alloc<int>",
        "unpool_scatter_place<__half, int, int>", "unpool_scatter_rank<int, int>",
        "unpool_scatter_sum<__half, int>"]
    place = plans[2]
    assert place.args[0].dtype == np.float16 and place.args[5].dtype == np.float16
    m, o = 2 * 3 * 4 * 5, 2 * 6 * 8 * 5
    assert [int(v) for v in place.args[6:10]] == [m, m // 2, o // 2, o] and place.args[10] == np.int32(1)
    scratch = U.scatter_scratch((2, 1, 3, 4, 5), (2, 1, 6, 8, 5))
    assert scratch["count"] == (o, np.dtype(np.int32), True) and scratch["meta"][2]
    assert scratch["bucket"][0] == m and scratch["dup_cells"][0] == m // 2 + 1   # a duplicate cell holds >= 2
    assert not scratch["bucket"][2] and not scratch["sorted"][2]


def test_scatter_index_width_follows_the_larger_tensor():
    assert not U.needs_int64((4, 100), (4, 2**29 - 1))
    assert U.needs_int64((4, 100), (4, 2**29))               # out has 2^31 cells
    assert U.needs_int64((2**31,), (1,))
    plans = scatter_plans((4, 1, 1, 1, 8), (4, 1, 2**13, 2**13, 8), np.int8, np.int32)
    assert all("long long" in pl.name_expression for pl in plans)
    assert U.scatter_scratch((4, 1, 1, 1, 8), (4, 1, 2**13, 2**13, 8))["count"][1] == np.int64
    for pl in plans:
        assert all(type(a) in (np.int64, np.int32) for a in _scalars(pl))


@pytest.mark.parametrize("dtype,bits", [(np.float16, "unsigned short"), (np.float32, "unsigned int"),
                                        (np.float64, "unsigned long long"), (np.int8, "unsigned char"),
                                        (np.uint16, "unsigned short"), (np.int64, "unsigned long long")])
def test_gather_moves_bits(dtype, bits):
    plan = U.argmax_gather(fake((2, 1, 6, 8, 5), dtype), fake((2, 1, 3, 4, 5), np.int64),
                           fake((2, 1, 3, 4, 5), dtype), fake((1,), np.int32), False)
    assert plan.name_expression == f"unpool_gather<{bits}, long long, int>"
    assert plan.args[0].dtype.itemsize == np.dtype(dtype).itemsize and plan.args[0].dtype.kind == "u"
    assert plan.args[-1] == np.int32(0)
