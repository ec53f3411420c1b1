"""Launch-plan selection for the pooling and unpooling families, as pure functions: no kernel runs here.

Hypothetical huge tensors are zero-stride broadcasts (real arrays with a shape and a dtype, no memory).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv.dtypes import FLOAT_DTYPES, INDEX_DTYPES, INT_DTYPES
from gpuconv.geometry import pool_problem
from gpuconv.kernel_source import families
from gpuconv.plans import LaunchPlan
from gpuconv.plans import pool as P
from gpuconv.plans import unpool as U


def fake(shape, dtype):
    """An array of any shape that owns no memory (enough for plans, which read shape and dtype)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


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


def test_every_dtype_and_index_width_is_declared():
    exprs = set(P.FAMILY.name_expressions)
    for it in ("int", "long long"):
        for dt in ("__half", "float", "double", "signed char", "unsigned char", "short", "unsigned short", "int",
                   "long long"):
            assert f"pool_max_fwd<{dt}, {it}>" in exprs
            assert f"pool_max_bwd<{dt}, {it}>" in exprs
            assert {f"pool_max_argmax_fwd<{dt}, {it}, {a}>" for a in ("int", "long long")} <= exprs
        for dt in ("__half", "float", "double"):
            assert {f"pool_avg_fwd<{dt}, {it}>", f"pool_avg_bwd<{dt}, {it}, true>",
                    f"pool_avg_bwd<{dt}, {it}, false>"} <= exprs
    assert not any("pool_avg_fwd<int" in e or "pool_avg_fwd<signed" in e for e in exprs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + INT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("problem", [small_problem, huge_problem])
def test_every_plan_names_a_declared_expression(dtype, index_dtype, problem):
    p = problem()
    plans = all_plans(p, dtype, index_dtype)
    plans += scatter_plans((2, 1, 3, 4, 5), (2, 1, 6, 8, 5), dtype, index_dtype)
    plans.append(U.argmax_gather(fake((2, 1, 6, 8, 5), dtype), fake((2, 1, 3, 4, 5), index_dtype),
                                 fake((2, 1, 3, 4, 5), dtype), True))
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
    assert argmax_plan.name_expression == "pool_max_argmax_fwd<float, long long, int>"


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
    p = small_problem()
    plan = P.max_pool(p, fake(p.x_shape, np.float32), fake(p.y_shape, np.float32))
    assert plan.grid[0] == -(-int(np.prod(p.y_shape)) // P.BLOCK)
    assert plan.grid[0] * plan.block[0] < 2**31         # 32-bit grid_first never overflows


def test_argmax_and_flags():
    p = small_problem()
    x, y = fake(p.x_shape, np.float16), fake(p.y_shape, np.float16)
    on = P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int32), True)
    off = P.max_pool_argmax(p, x, y, fake(p.y_shape, np.int64), False)
    assert on.name_expression == "pool_max_argmax_fwd<__half, int, int>"
    assert off.name_expression == "pool_max_argmax_fwd<__half, int, long long>"
    assert type(on.args[-1]) is np.int32 and on.args[-1] == 1 and off.args[-1] == 0


def test_avg_unpool_is_the_undivided_gather():
    p = small_problem()
    plan = U.avg_unpool(p, fake(p.y_shape, np.float64), fake(p.x_shape, np.float64))
    assert plan.family == "pool" and plan.name_expression == "pool_avg_bwd<double, int, false>"
    assert P.avg_pool_grad(p, fake(p.y_shape, np.float64), fake(p.x_shape, np.float64)).name_expression == \
        "pool_avg_bwd<double, int, true>"


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
                           fake((2, 1, 3, 4, 5), dtype), False)
    assert plan.name_expression == f"unpool_gather<{bits}, long long, int>"
    assert plan.args[0].dtype.itemsize == np.dtype(dtype).itemsize and plan.args[0].dtype.kind == "u"
    assert plan.args[-1] == np.int32(0)
