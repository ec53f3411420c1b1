"""The emulator executor: fixture kernels (tests/emulator_fixtures/*.cu) run through LaunchPlans on the CPU and
compared with NumPy under forward, reverse and shuffled thread orders; planted bugs must be caught."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from gpuconv.executors.emulator import (EmulatorBuildError, EmulatorError, EmulatorExecutor, cache_dir,
                                        emulator_availability, parse_order)
from gpuconv.kernel_source import KernelFamily
from gpuconv.plans import LaunchPlan

pytestmark = pytest.mark.emulator

FIXTURES = Path(__file__).parent / "emulator_fixtures"
REDUCE = KernelFamily("emu_reduce", "reduce.cu", (
    "block_sum<float>", "block_sum<double>", "barrier_votes", "read_uninitialized", "arrival_order"))
WARP = KernelFamily("emu_warp", "warp.cu", ("warp_ops", "shuffle_across_barrier", "mismatched_masks"))
ELEMENTWISE = KernelFamily("emu_elementwise", "elementwise.cu", (
    "axpy<float>", "scale_accum<__half>", "scale_accum<float>", "double_float4",
    "atomic_mix<int>", "atomic_mix<unsigned int>", "atomic_mix<unsigned long long>", "atomic_mix<float>",
    "atomic_mix<double>", "cas_sum<int>", "cas_sum<unsigned int>", "cas_sum<unsigned long long>",
    "round_trip_16", "thread_coords", "hello"))
BUGS = KernelFamily("emu_bugs", "planted_bugs.cu", (
    "rotate_missing_sync", "rotate_synced", "early_exit_before_barrier", "smem_overrun", "global_overrun",
    "shuffle_after_exit"))
BROKEN = KernelFamily("emu_broken", "broken.cu", ("broken",))
WMMA = KernelFamily("emu_wmma", "wmma.cu", ("wmma_synced", "wmma_missing_syncwarp", "wmma_tf32_rounded",
                                            "wmma_tf32_raw", "float_to_tf32"))
FAMILIES = (REDUCE, WARP, ELEMENTWISE, BUGS, BROKEN, WMMA)

ORDERS = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]


def make_executor(order="forward", seed=0, **kwargs) -> EmulatorExecutor:
    ex = EmulatorExecutor(order=order, seed=seed, **kwargs)
    for fam in FAMILIES:
        ex.load_family(fam, FIXTURES)
    return ex


@pytest.fixture(params=ORDERS, ids=[f"{o}{s}" if o == "shuffle" else o for o, s in ORDERS])
def ex(request):
    return make_executor(*request.param)


def launch(ex, family, name, grid, block, shared_mem, *args):
    ex.launch(LaunchPlan(family.name, name, grid, block, shared_mem, args))


def raises_without_hanging(fn, timeout=60.0) -> BaseException | None:
    """Runs fn in a thread; fails the test if it has not returned after `timeout` seconds."""
    outcome: dict = {}

    def target():
        try:
            fn()
        except BaseException as exc:   # handed to the test
            outcome["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the launch hung instead of reporting an error"
    return outcome.get("exc")


# ---------------------------------------------------------------------------------------------------------
# block level: dynamic + static shared memory, __syncthreads, poisoning, order
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, name", [(np.float32, "block_sum<float>"), (np.float64, "block_sum<double>")])
def test_block_reduction_matches_numpy(ex, dtype, name):
    n, block = 1000, 256
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    grid = -(-n // block)
    out = np.zeros(grid, dtype)
    total = np.zeros(1, dtype)
    launch(ex, REDUCE, name, (grid, 1, 1), (block, 1, 1), block * x.itemsize, x, out, total, np.int32(n))
    padded = np.concatenate([x, np.zeros(grid * block - n, dtype)]).reshape(grid, block)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, padded.sum(axis=1, dtype=np.float64), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(total[0], x.sum(dtype=np.float64), rtol=rtol, atol=rtol)


def test_syncthreads_count_and_or(ex):
    x = np.zeros((4, 64), np.int32)
    x[1, 5] = 1          # some
    x[2, :] = 1          # all
    x[3, ::2] = 3        # half
    out = np.full(12, -7, np.int32)
    launch(ex, REDUCE, "barrier_votes", (4, 1, 1), (64, 1, 1), 0, x, out)
    np.testing.assert_array_equal(out.reshape(4, 3), [[0, 0, 0], [1, 0, 1], [64, 1, 1], [32, 0, 1]])


def test_shared_memory_is_poisoned_at_every_block_start(ex):
    grid, block = 3, 64
    out_static = np.zeros(grid * block, np.int32)
    out_dynamic = np.zeros(grid * block, np.float32)
    launch(ex, REDUCE, "read_uninitialized", (grid, 1, 1), (block, 1, 1), block * 4, out_static, out_dynamic)
    np.testing.assert_array_equal(out_static, -1)   # 0xFFFFFFFF
    assert np.isnan(out_dynamic).all()


def tickets(ex, n=64):
    ticket = np.zeros(2 * n, np.int32)
    launch(ex, REDUCE, "arrival_order", (1, 1, 1), (n, 1, 1), 0, ticket, np.zeros(1, np.int32))
    return ticket[:n], ticket[n:] - n


def test_thread_order_forward_reverse_shuffle():
    n = 64
    before, after = tickets(make_executor("forward"), n)
    np.testing.assert_array_equal(before, np.arange(n))
    np.testing.assert_array_equal(after, np.arange(n))
    before, after = tickets(make_executor("reverse"), n)
    np.testing.assert_array_equal(before, np.arange(n)[::-1])
    np.testing.assert_array_equal(after, np.arange(n)[::-1])
    b1, a1 = tickets(make_executor("shuffle", 1), n)
    assert sorted(b1) == list(range(n)) and sorted(a1) == list(range(n))
    assert not np.array_equal(b1, np.arange(n)) and not np.array_equal(b1, a1)   # reshuffled after the barrier
    b1_again, a1_again = tickets(make_executor("shuffle", 1), n)
    np.testing.assert_array_equal(b1, b1_again)                                # seeded: reproducible
    np.testing.assert_array_equal(a1, a1_again)
    assert not np.array_equal(b1, tickets(make_executor("shuffle", 2), n)[0])


def test_wmma_model_is_warp_collective():
    """The emulator's nvcuda::wmma (kernels/conv_common.cuh): a 16x16x16 half product is a @ b in float, and a
    kernel that reads a stored accumulator tile without __syncwarp reads other lanes' unwritten cells (each
    lane stores only its own share, as a distributed fragment does) under every order: the bug the conv
    tensorop kernel's __syncwarp calls guard against, which a model giving every lane the whole tile hid."""
    rng = np.random.default_rng(4)
    a = rng.integers(-4, 5, (16, 16)).astype(np.float16)        # small integers: every sum exact in float
    b = rng.integers(-4, 5, (16, 16)).astype(np.float16)
    want = a.astype(np.float32) @ b.astype(np.float32)
    for order, seed in ORDERS:
        ex = make_executor(order, seed)
        y = np.zeros((16, 16), np.float32)
        launch(ex, WMMA, "wmma_synced", (1, 1, 1), (32, 1, 1), 0, a, b, y)
        np.testing.assert_array_equal(y, want)
        y = np.zeros((16, 16), np.float32)
        launch(ex, WMMA, "wmma_missing_syncwarp", (1, 1, 1), (32, 1, 1), 0, a, b, y)
        assert not np.array_equal(y, want), order


def test_wmma_tf32_model_rounds_like_cvt_rna_and_reads_only_tf32_bits():
    """__float_to_tf32 is cvt.rna.tf32.f32 (nearest, ties away from zero, inf and NaN kept; the float32 maximum
    rounds up to inf), and a 16x16x8 tf32 mma reads only the TF32 bits of its operands: with the elements
    rounded first it is the product of the rounded matrices, without it the product of the truncated ones."""
    from test_tf32 import tf32_nearest, tf32_truncated
    ex = make_executor("reverse", 0)
    ulp = 2.0**-10
    x = np.array([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2.0**-23, 1 + 3 * ulp / 2, 3.4028235e38, np.inf,
                  -np.inf, np.nan, 0.0, -0.0, 1e-40, 2.0**-126 * (1 + ulp / 2), 0.1, -7.3], np.float32)
    y = np.zeros_like(x)
    launch(ex, WMMA, "float_to_tf32", (1, 1, 1), (32, 1, 1), 0, x, y, np.int32(x.size))
    want = tf32_nearest(x)
    assert np.array_equal(y.view(np.uint32)[~np.isnan(x)], want.view(np.uint32)[~np.isnan(x)]) and np.isnan(y[7])
    assert y[0] == 1 + ulp and y[1] == -(1 + ulp) and y[2] == 1 and y[4] == np.inf
    rng = np.random.default_rng(6)
    a = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    b = rng.uniform(-1, 1, (8, 16)).astype(np.float32)
    for name, part in (("wmma_tf32_rounded", tf32_nearest), ("wmma_tf32_raw", tf32_truncated)):
        out = np.zeros((16, 16), np.float32)
        launch(ex, WMMA, name, (1, 1, 1), (32, 1, 1), 0, a, b, out)
        exact = part(a).astype(np.float64) @ part(b).astype(np.float64)
        np.testing.assert_allclose(out, exact, rtol=0, atol=8 * 2.0**-24 * 8)   # float32 sums of 8 products
    assert not np.allclose(tf32_nearest(a) @ tf32_nearest(b), tf32_truncated(a) @ tf32_truncated(b), rtol=0,
                           atol=8 * 2.0**-24 * 8)                              # the two differ measurably


def test_missing_syncthreads_is_exposed_by_some_order():
    x = np.arange(128, dtype=np.float32)
    want = np.roll(x.reshape(2, 64), -1, axis=1).ravel()
    wrong_under = []
    for order, seed in ORDERS:
        ex = make_executor(order, seed)
        y = np.zeros_like(x)
        launch(ex, BUGS, "rotate_synced", (2, 1, 1), (64, 1, 1), 0, x, y)
        np.testing.assert_array_equal(y, want)
        y = np.zeros_like(x)
        launch(ex, BUGS, "rotate_missing_sync", (2, 1, 1), (64, 1, 1), 0, x, y)
        if not np.array_equal(y, want):
            wrong_under.append(order)
    assert wrong_under, "the planted missing __syncthreads gave the right answer under every order"


def test_divergent_barrier_is_an_error_not_a_hang(ex):
    y = np.zeros(64, np.float32)
    exc = raises_without_hanging(lambda: launch(ex, BUGS, "early_exit_before_barrier", (1, 1, 1), (64, 1, 1), 0,
                                                y, np.int32(40)))
    assert isinstance(exc, EmulatorError)
    message = str(exc)
    assert "early_exit_before_barrier" in message and "divergent barrier" in message
    assert "planted_bugs.cu:23" in message and "24 threads exited" in message


# ---------------------------------------------------------------------------------------------------------
# warp level
# ---------------------------------------------------------------------------------------------------------
def warp_ops_reference(x: np.ndarray, width: int, delta: int) -> np.ndarray:
    """The 13 rows of warp_ops, from CUDA's definitions (warps of 32 consecutive threads)."""
    T = x.size
    out = np.zeros((13, T), np.int64)
    for w0 in range(0, T, 32):
        v = x[w0:w0 + 32].astype(np.int64)
        for j in range(32):
            seg, last = j & ~(width - 1), (j & ~(width - 1)) + width - 1
            src_idx = seg + (((j * 7 + 3) % 37) & (width - 1))
            up, down, xor = j - delta, j + delta, j ^ delta
            out[0, w0 + j] = v[src_idx]
            out[1, w0 + j] = v[up] if up >= seg else v[j]
            out[2, w0 + j] = v[down] if down <= last else v[j]
            out[3, w0 + j] = v[xor] if xor <= last else v[j]
            out[9, w0 + j] = sum(1 << k for k in range(32) if v[k] % 4 == v[j] % 4)
            out[11, w0 + j] = v[(j + 1) % 32]
            out[12, w0 + j] = (v[j + 1] if j < 15 else -1) if j < 16 else 0
        out[4, w0:w0 + 32] = sum(1 << k for k in range(32) if v[k] & 1)
        out[5, w0:w0 + 32] = int((v > 90).any())
        out[6, w0:w0 + 32] = int((v >= 0).all())
        out[7, w0:w0 + 32] = v.sum()
        out[8, w0:w0 + 32] = 0xFFFFFFFF
        out[10, w0:w0 + 32] = v.sum()
    return out.astype(np.uint32).view(np.int32)   # 32-bit results, as the kernel stores them


@pytest.mark.parametrize("width, delta", [(32, 5), (16, 3), (8, 1)])
def test_warp_operations(ex, width, delta):
    x = np.random.default_rng(width).integers(0, 100, size=128).astype(np.int32)
    out = np.zeros(13 * x.size, np.int32)
    launch(ex, WARP, "warp_ops", (2, 1, 1), (64, 1, 1), 0, x, out, np.int32(width), np.uint32(delta))
    want = warp_ops_reference(x, width, delta)
    got = out.reshape(13, x.size)
    for row in range(13):
        np.testing.assert_array_equal(got[row], want[row], err_msg=f"warp_ops row {row}")


@pytest.mark.parametrize("family, kernel, block, args, expect", [
    (BUGS, "shuffle_after_exit", 64, (np.zeros(64, np.float32),), "lane 5 of the warp has exited|exited while lane"),
    (WARP, "shuffle_across_barrier", 64, (np.zeros(64, np.int32),), "deadlock"),
    (WARP, "mismatched_masks", 32, (np.zeros(32, np.int32),), "with mask 0x"),
])
def test_broken_warp_synchronisation_is_an_error(ex, family, kernel, block, args, expect):
    exc = raises_without_hanging(lambda: launch(ex, family, kernel, (1, 1, 1), (block, 1, 1), 0, *args))
    assert isinstance(exc, EmulatorError)
    assert kernel in str(exc)
    assert any(part in str(exc) for part in expect.split("|")), str(exc)


# ---------------------------------------------------------------------------------------------------------
# atomics, __half / bfloat16, vector loads, coordinates
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ctype, dtype", [("int", np.int32), ("unsigned int", np.uint32),
                                          ("unsigned long long", np.uint64), ("float", np.float32),
                                          ("double", np.float64)])
def test_atomics(ex, ctype, dtype):
    n = 300
    x = np.random.default_rng(3).permutation(n).astype(dtype) + dtype(5)   # distinct, integer-valued: exact sums
    out = np.array([0, 0, np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf, 0], dtype)
    launch(ex, ELEMENTWISE, f"atomic_mix<{ctype}>", (3, 1, 1), (128, 1, 1), 0, x, out, np.int32(n))
    assert out[0] == x.sum() and out[1] == x.max() and out[2] == x.min() and out[3] in x
    if np.issubdtype(dtype, np.integer):
        total = np.zeros(1, dtype)
        launch(ex, ELEMENTWISE, f"cas_sum<{ctype}>", (3, 1, 1), (128, 1, 1), 0, x, total, np.int32(n))
        assert total[0] == x.sum()


def bfloat16_reference(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even, NaN kept quiet) -> float32, by bit manipulation."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    nan = np.isnan(x)
    rounded[nan] = ((bits[nan] >> 16) | 0x40) << 16
    return rounded.astype(np.uint32).view(np.float32)


def test_half_and_bfloat16_conversions(ex):
    rng = np.random.default_rng(5)
    specials = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 2.98e-8, 1e-7,
                         6.1e-5, 6.09e-5, 1.0009765625, 1.00048828125, 1.00146484375, np.inf, -np.inf, np.nan,
                         3.4e38, 1e-40], np.float32)
    x = np.concatenate([specials, rng.standard_normal(500).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 500)])
    x = x.astype(np.float32)
    n = x.size
    h, b, hops = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(3 * n, np.float32)
    launch(ex, ELEMENTWISE, "round_trip_16", (-(-n // 128), 1, 1), (128, 1, 1), 0, x, h, b, hops, np.int32(n))
    one = np.float16(1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        hx = x.astype(np.float16)
        np.testing.assert_array_equal(h, hx.astype(np.float32))
        np.testing.assert_array_equal(b, bfloat16_reference(x))
        np.testing.assert_array_equal(hops[0::3], (hx + one).astype(np.float32))
        np.testing.assert_array_equal(hops[1::3], (hx * hx).astype(np.float32))
        np.testing.assert_array_equal(hops[2::3], np.fmax(hx, one).astype(np.float32))


@pytest.mark.parametrize("ctype, dtype", [("__half", np.float16), ("float", np.float32)])
def test_accumulation_type_helpers(ex, ctype, dtype):
    x = np.random.default_rng(2).standard_normal(100).astype(dtype)
    y = np.zeros_like(x)
    launch(ex, ELEMENTWISE, f"scale_accum<{ctype}>", (1, 1, 1), (128, 1, 1), 0, x, y, np.float32(0.3), np.int32(100))
    np.testing.assert_array_equal(y, (x.astype(np.float32) * np.float32(0.3)).astype(dtype))


def test_float4_vector_access(ex):
    x = np.arange(64, dtype=np.float32)
    y = np.zeros_like(x)
    launch(ex, ELEMENTWISE, "double_float4", (1, 1, 1), (32, 1, 1), 0, x, y, np.int32(16))
    np.testing.assert_array_equal(y, 2 * x)


def test_misaligned_vector_load_is_an_error(ex):
    x = np.arange(65, dtype=np.float32)[1:]      # C-contiguous, 4 bytes past a 16-byte boundary
    with pytest.raises(EmulatorError, match=r"misaligned address .* in __ldg \(.*elementwise.cu:\d+\): the 16-byte "
                                            r"type needs 16-byte alignment"):
        launch(ex, ELEMENTWISE, "double_float4", (1, 1, 1), (32, 1, 1), 0, x, np.zeros(64, np.float32), np.int32(16))


def test_three_dimensional_grid_and_block(ex):
    grid, block = (2, 3, 2), (4, 2, 3)
    threads = int(np.prod(grid) * np.prod(block))
    out = np.full(12 * threads, -1, np.int32)
    launch(ex, ELEMENTWISE, "thread_coords", grid, block, 0, out)
    got = out.reshape(grid[2], grid[1], grid[0], block[2], block[1], block[0], 12)
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(v) for v in (grid[2], grid[1], grid[0], block[2], block[1],
                                                                    block[0])], indexing="ij")
    for k, want in enumerate((tx, ty, tz, bx, by, bz)):
        np.testing.assert_array_equal(got[..., k], want)
    np.testing.assert_array_equal(got[..., 6:9], np.broadcast_to(block, got.shape[:-1] + (3,)))
    np.testing.assert_array_equal(got[..., 9:12], np.broadcast_to(grid, got.shape[:-1] + (3,)))


def test_printf_in_kernels(capfd):
    launch(make_executor(), ELEMENTWISE, "hello", (2, 1, 1), (32, 1, 1), 0, np.int32(2))
    lines = capfd.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"hello from thread {t} of block {b}" for b in (0, 1) for t in (0, 1))


def test_grid_stride_loop_and_parallel_blocks():
    n = 100_003
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    for workers in (1, 2):
        y = np.ones(n, np.float32)
        launch(make_executor(workers=workers), ELEMENTWISE, "axpy<float>", (37, 1, 1), (128, 1, 1), 0, x, y,
               np.float32(2.0), np.int64(n))
        np.testing.assert_array_equal(y, np.float32(2.0) * x + np.float32(1.0))


def test_ucontext_fibers_give_the_same_results(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATOR_UCONTEXT", "1")
    test_block_reduction_matches_numpy(make_executor("shuffle", 3), np.float32, "block_sum<float>")


# ---------------------------------------------------------------------------------------------------------
# arguments and launch configuration are checked against the kernel's signature
# ---------------------------------------------------------------------------------------------------------
def block_sum_plan(*scalar, args=None, grid=(1, 1, 1), block=(64, 1, 1), shared_mem=256, name="block_sum<float>"):
    x, out, total = np.zeros(64, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
    args = args if args is not None else (x, out, total, *scalar)
    return LaunchPlan(REDUCE.name, name, grid, block, shared_mem, args)


def test_signature_is_read_from_the_kernel():
    sig = make_executor().signature(REDUCE.name, "block_sum<double>")
    assert sig.sizes == (8, 8, 8, 4) and sig.kinds == "pppi"


@pytest.mark.parametrize("scalar, expect", [
    (np.int64(64), "argument 3 is a 4-byte integer parameter; got int64 (8 bytes)"),
    (np.float32(64), "argument 3 is a 4-byte integer parameter; got float32"),
    (np.zeros(1, np.int32), "argument 3 is a 4-byte integer parameter; got an array"),
])
def test_wrong_scalar_is_a_type_error_naming_kernel_and_argument(scalar, expect):
    with pytest.raises(TypeError, match="block_sum<float>: " + expect.replace("(", r"\(").replace(")", r"\)")):
        make_executor().launch(block_sum_plan(scalar))


def test_other_argument_errors():
    ex = make_executor()
    x = np.zeros(64, np.float32)
    with pytest.raises(TypeError, match="argument 0 is a pointer parameter; pass a NumPy array, not float32"):
        ex.launch(block_sum_plan(args=(np.float32(0), x, x, np.int32(64))))
    with pytest.raises(TypeError, match="takes 4 arguments, the plan passes 3"):
        ex.launch(block_sum_plan(args=(x, x, x)))
    with pytest.raises(ValueError, match="argument 1: the array must be C-contiguous"):
        ex.launch(block_sum_plan(args=(x, np.zeros(8, np.float32)[::2], x, np.int32(64))))
    with pytest.raises(ValueError, match="not a name expression"):
        ex.launch(block_sum_plan(np.int32(64), name="block_sum<int>"))
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        ex.launch(block_sum_plan(np.int32(64), block=(1025, 1, 1)))
    with pytest.raises(ValueError, match="dynamic shared memory"):
        ex.launch(block_sum_plan(np.int32(64), shared_mem=300 * 1024))
    with pytest.raises(KeyError, match="no kernel family"):
        ex.launch(LaunchPlan("no_such_family", "k", (1, 1, 1), (1, 1, 1), 0, ()))


# ---------------------------------------------------------------------------------------------------------
# building, caching, configuration
# ---------------------------------------------------------------------------------------------------------
def test_compile_error_carries_the_compiler_log():
    with pytest.raises(EmulatorBuildError, match="undeclared_identifier") as info:
        make_executor().launch(LaunchPlan(BROKEN.name, "broken", (1, 1, 1), (1, 1, 1), 0, (np.zeros(1, np.float32),)))
    assert "broken.cu:3" in str(info.value)


def test_a_missing_compiler_or_unwritable_cache_is_a_build_error_that_says_what_to_do(monkeypatch, tmp_path):
    """Both leaked a bare FileNotFoundError from subprocess / mkdir."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(EmulatorBuildError, match=r"cannot run '.*no-such-g\+\+' .*install g\+\+ or set CXX"):
        make_executor().library_path(REDUCE.name)
    monkeypatch.delenv("CXX")
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(afile))
    with pytest.raises(EmulatorBuildError, match=r"build cache '.*afile/emulator' cannot be written .*"
                                                 r"set GPUCONV_CACHE_DIR to a writable folder"):
        make_executor().library_path(REDUCE.name)


def test_library_is_cached_by_content():
    first = make_executor().library_path(REDUCE.name)
    assert first.parent == cache_dir() and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert make_executor("reverse").library_path(REDUCE.name) == first    # the order is a launch parameter
    assert first.stat().st_mtime_ns == mtime


def test_old_builds_are_pruned(tmp_path):
    from gpuconv.executors.emulator import KEEP_BUILDS, _prune
    names = [f"emu_x-{i:020x}.so" for i in range(KEEP_BUILDS + 2)]
    names += ["emu_x-" + "f" * 20 + "-asan.so", "emu_xy-" + "0" * 20 + ".so"]
    for age, name in enumerate(reversed(names)):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).with_suffix(".json").write_text("{}")
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    _prune(tmp_path, "emu_x", sanitize=False)
    left = sorted(p.name for p in tmp_path.glob("*.so"))
    assert left == sorted(names[-KEEP_BUILDS - 2:])   # the newest plain builds, the asan one, another family's
    assert len(list(tmp_path.glob("*.json"))) == len(left)


@pytest.mark.parametrize("name, value, expect", [
    ("GPUCONV_EMULATOR_STACK_KIB", "0", r"GPUCONV_EMULATOR_STACK_KIB must be an integer in \[16, 1048576\], got 0"),
    ("GPUCONV_EMULATOR_STACK_KIB", "-4", r"in \[16, 1048576\], got -4"),
    ("GPUCONV_EMULATOR_STACK_KIB", "big", r"in \[16, 1048576\], got 'big'"),
    ("GPUCONV_EMULATOR_THREADS", "0", r"GPUCONV_EMULATOR_THREADS must be an integer in \[1, 1024\], got 0"),
    ("GPUCONV_EMULATOR_THREADS", "100000", r"in \[1, 1024\], got 100000"),
])
def test_numeric_settings_out_of_range_are_refused(monkeypatch, name, value, expect):
    """A 0 KiB fiber stack segfaulted the process at the first launch; 0 threads silently meant 1."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=expect):
        EmulatorExecutor()


def test_numeric_settings_in_range(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATOR_STACK_KIB", "64")
    monkeypatch.setenv("GPUCONV_EMULATOR_THREADS", "3")
    ex = EmulatorExecutor()
    assert (ex.stack_bytes, ex.workers) == (64 * 1024, 3)
    assert EmulatorExecutor(workers=np.int64(2)).workers == 2
    for bad in (0, 2000, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"workers: expected an integer in \[1, 1024\], got {bad!r}"):
            EmulatorExecutor(workers=bad)


def test_order_from_environment(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATOR_ORDER", "shuffle:7")
    ex = EmulatorExecutor()
    assert (ex.order, ex.seed) == ("shuffle", 7)
    assert (EmulatorExecutor(order="reverse").order, EmulatorExecutor(seed=3).seed) == ("reverse", 3)
    monkeypatch.setenv("GPUCONV_EMULATOR_ORDER", "sideways")
    with pytest.raises(ValueError, match="GPUCONV_EMULATOR_ORDER: emulator order must be one of"):
        EmulatorExecutor()
    assert parse_order("Reverse") == ("reverse", None)
    with pytest.raises(ValueError, match="emulator order must be one of .*got 'forward:3'"):
        parse_order("forward:3")


def test_executor_interface():
    ex = EmulatorExecutor()
    assert ex.name == "emulator" and ex.xp is np
    assert emulator_availability() == "yes"


# ---------------------------------------------------------------------------------------------------------
# AddressSanitizer mode (one sanitized build of the planted-bug family, launches in subprocesses)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sanitized():
    return make_executor(sanitize=True)


def test_sanitize_runs_correct_kernels(sanitized):
    x = np.arange(64, dtype=np.float32)
    y = np.zeros_like(x)
    launch(sanitized, BUGS, "rotate_synced", (1, 1, 1), (64, 1, 1), 0, x, y)
    np.testing.assert_array_equal(y, np.roll(x, -1))


def test_sanitize_catches_shared_memory_overrun(sanitized):
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(EmulatorError, match="AddressSanitizer") as info:
        launch(sanitized, BUGS, "smem_overrun", (1, 1, 1), (64, 1, 1), 64 * 4, x, np.zeros_like(x))
    assert "smem_overrun" in str(info.value) and "planted_bugs.cu:31" in str(info.value)


def test_sanitize_catches_global_overrun(sanitized):
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(EmulatorError, match="heap-buffer-overflow") as info:
        launch(sanitized, BUGS, "global_overrun", (1, 1, 1), (64, 1, 1), 0, x, np.zeros_like(x), np.int32(64))
    assert "planted_bugs.cu:39" in str(info.value)


def test_a_source_edited_during_the_build_is_not_cached_under_the_old_text(tmp_path, monkeypatch):
    """g++ reads the live file after the key was hashed: a build whose sources changed must be redone."""
    from gpuconv.executors import emulator as emu

    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    source = kdir / "fill.cu"
    kernel = "__global__ void fill(float* y, int n) {{ int i = threadIdx.x; if (i < n) y[i] = {value}f; }}\n"
    source.write_text(kernel.format(value=1.0))
    real_run = emu._run
    edits = []

    def run_and_edit(cmd, what):
        out = real_run(cmd, what)
        if "-c" in cmd and not edits:      # the first compile has read fill.cu: now the file changes
            source.write_text(kernel.format(value=2.0))
            edits.append(cmd)
        return out

    monkeypatch.setattr(emu, "_run", run_and_edit)
    family = KernelFamily("emu_fill_race", "fill.cu", ("fill",))
    ex = EmulatorExecutor()
    ex.load_family(family, kdir)
    y = np.zeros(4, np.float32)
    launch(ex, family, "fill", (1, 1, 1), (4, 1, 1), 0, y, np.int32(4))
    assert edits, "the build did not run"
    np.testing.assert_array_equal(y, 2.0)          # built from the text on disk, not the half-old one
    libraries = list((tmp_path / "cache").rglob("emu_fill_race-*.so"))
    assert len(libraries) == 1                     # nothing cached under the old text's key
