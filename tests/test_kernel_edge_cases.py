"""Kernel edge cases that a mutation check of kernels/*.cu and kernels/*.cuh found no test exercising.

Each test here pins one behaviour of the CUDA kernels (run on the CPU by the emulator, or on a GPU) that the
other kernel tests left open: a single-point change to the kernel code at that place passed every emulator
test before this file existed. Expected values come from the NumPy backend (the oracle) or from the kernels'
documented rule worked out independently (conftest.sequential_scatter; a float32 sum in split order), never
from the code under test.

Covered:
  * max-pool scan, float32 (common.cuh replaces<float>): a NaN that seeds the scan is never replaced, whatever
    its sign bit or payload. The integer-key compare orders a negative NaN below every number and a NaN with
    a larger payload above a smaller one, so only the NaN test on the *current* value keeps the seed.
  * conv_fprop_tiled epilogue (conv_fprop.cu): the vector store of four output channels only where all four
    are inside the group (n + 3 < Kg). With double (V = 2) and Kg = 6 the last quad is half outside; writing
    it whole puts two values into the next output row (visible when that row was written first: reverse
    thread order) and, on the last row, past the end of y (under the emulator the process then aborts on
    the corrupted heap, which fails the run too).
  * conv_fprop_tiled block tile (conv_fprop.cu FpropBlockTile): the first output channel of a block is
    tile_n * BN. Only the 128x64 tile has BM != BN, and only a group with more than 64 output channels has a
    second column tile, so nothing ran that combination.
  * deterministic scatter (unpool.cu, pass 5): a cell whose duplicates are all -0.0 sums from +0.0, so it
    holds +0.0 (the single-update case of pass 3 was tested, the duplicate case of pass 5 was not). Next to
    it, a direct check of the promised order (increasing update index) with three and four updates per cell
    whose sum depends on the order; the existing random-valued checks catch a reordering only by chance.
  * conv_dgrad_tiled tap predicate (conv_dgrad.cu, a_valid): a dy depth coordinate z == Z is absent. It occurs
    only in 3-D with a depth pad before >= 1 (stride 1, T = 3, SAME: dx depth D - 1 at tap 0 reads z = D = Z);
    no fixed case had one (only the unseeded long fuzz run found it, by chance). Reading it takes the next
    image's dy (or reads past dy on the last image).
  * pipelined main loop (conv_common.cuh pipelined_main_loop, has_next = kt + 1 < k_tiles): no k-tile is
    loaded past the last one. An extra load leaves every result unchanged (it goes to a stage nobody reads),
    but conv_dgrad_tiled's tap iterator then reads a filter tap past the end of w: an out-of-bounds global read
    (a fault on a GPU when w ends a page). Only the emulator's AddressSanitizer build sees it, so this test
    runs a sanitized emulator (one extra build of the conv_dgrad family, ~15 s when not cached).
  * conv_wgrad_reduce (conv_wgrad.cu): split-K partials add in split order, as promised; three splits whose
    float32 sum depends on the order (1, 2^25, -2^25: 0 in order, 1 reversed). A reordering changes only
    rounding, so the tolerance-based wgrad checks could not see it.
  * conv_fprop_tensorop fragment loops (conv_fprop.cu): a loop over the B fragments one past kFragsN writes
    past a per-thread fragment array and leaves every result unchanged; AddressSanitizer again (one extra
    build of conv_fprop, ~15 s when not cached).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import install_emulator, run_on as run, run_oracle as oracle, sequential_scatter

import gpuconv
from gpuconv.plans import conv_dgrad as DG
from gpuconv.plans import conv_fprop as F
from gpuconv.plans import conv_wgrad as WG


def f32_bits(*words):
    """float32 values with exactly these bit patterns (NaN payloads and signs kept)."""
    return np.array(words, np.uint32).view(np.float32)


NEG_NAN, NAN_A, NAN_B = 0xFFC00000, 0x7FC00000, 0x7FC00001


# ---------------------------------------------------------------------------------------------------------
# max-pool scan: a NaN seed stays, whatever its bits (common.cuh replaces<float>)
# ---------------------------------------------------------------------------------------------------------
def nan_seed_image():
    """1 x 2 x 6 x 1, windows 2x2 stride 2: each window's first cell is a NaN; the others are numbers or NaNs
    with a larger payload."""
    one, two, three = 0x3F800000, 0x40000000, 0x40400000
    top = [NEG_NAN, one, NAN_A, NAN_B, NEG_NAN, NAN_A]
    bottom = [two, three, one, two, three, NAN_B]
    return np.concatenate([f32_bits(*top), f32_bits(*bottom)]).reshape(1, 2, 6, 1)


def test_float32_nan_seed_is_never_replaced(kernel_backend):
    x = nan_seed_image()
    got_y, got_a = run(kernel_backend, gpuconv.max_pool_with_argmax, x, 2, 2, "VALID")
    want_y, want_a = oracle(gpuconv.max_pool_with_argmax, x, 2, 2, "VALID")
    np.testing.assert_array_equal(want_a.reshape(-1), [0, 2, 4])        # the oracle keeps every seed
    np.testing.assert_array_equal(got_a, want_a)
    np.testing.assert_array_equal(got_y, want_y)                       # NaN == NaN here
    np.testing.assert_array_equal(run(kernel_backend, gpuconv.max_pool2d, x, 2, 2, "VALID"), want_y)
    # the gradient follows the same selection
    dy = np.array([5, 7, 11], np.float32).reshape(1, 1, 3, 1)
    np.testing.assert_array_equal(run(kernel_backend, gpuconv.max_pool_grad, x, want_y, dy, 2, 2, "VALID"),
                                  oracle(gpuconv.max_pool_grad, x, want_y, dy, 2, 2, "VALID"))


# ---------------------------------------------------------------------------------------------------------
# deterministic scatter: duplicates add in increasing update index (unpool.cu passes 4 and 5)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
def test_scatter_adds_duplicates_in_update_order(kernel_backend, dtype):
    big = dtype(2.0 ** (25 if dtype == np.float32 else 54))   # big + 1 rounds to big; big - big is exact
    # batch 0: cell 0 gets [1, big, -big] (in update order: 0; reversed: 1); cell 3 gets [-big, big, 1] (1;
    # reversed: 0); cell 5 gets [1, big, 1, -big] (0; reversed: 1). Batch 1: the same cells, the update order
    # reversed.
    u0 = np.array([1, big, -big, -big, big, 1, 1, big, 1, -big], dtype)
    a0 = np.array([0, 0, 0, 3, 3, 3, 5, 5, 5, 5])
    out_shape = (2, 2, 5, 1)           # also the pooled shape of a 1x1 / stride 1 max pool, for the gradient
    updates = np.stack([u0, u0[::-1]]).reshape(out_shape)
    argmax = np.stack([a0, a0[::-1]]).reshape(out_shape).astype(np.int64)
    want = sequential_scatter(updates, argmax, out_shape)
    assert want.reshape(2, -1)[0, 0] == 0 and want.reshape(2, -1)[0, 3] == 1   # the order matters here
    got = run(kernel_backend, gpuconv.max_unpool, updates, argmax, out_shape)
    np.testing.assert_array_equal(got, want)
    # max_pool_grad_with_argmax runs the same scatter
    x = np.zeros(out_shape, dtype)
    got = run(kernel_backend, gpuconv.max_pool_grad_with_argmax, x, updates, argmax, 1, 1, "VALID")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=str)
def test_scatter_duplicates_of_negative_zero_sum_to_positive_zero(kernel_backend, dtype):
    out_shape = (1, 2, 3, 1)
    updates = np.array([-0.0, -0.0, -0.0, 2.0, -0.0, -0.0], dtype).reshape(out_shape)
    argmax = np.array([1, 1, 4, 4, 5, 5], np.int64).reshape(out_shape)   # cells 1 and 5: two -0.0 each
    want = sequential_scatter(updates, argmax, out_shape)                 # +0.0 + -0.0 + -0.0 = +0.0
    assert not np.signbit(want).any()
    for fn, args in [(gpuconv.max_unpool, (updates, argmax, out_shape)),
                     (gpuconv.max_pool_grad_with_argmax, (np.zeros(out_shape, dtype), updates, argmax, 1, 1, "VALID"))]:
        got = run(kernel_backend, fn, *args)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


# ---------------------------------------------------------------------------------------------------------
# conv_fprop_tiled epilogue: a half-outside quad of output channels is stored element by element
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2])
def test_fprop_tiled_vector_epilogue_partial_quad(ordered_backend, groups):
    # float64, vector 2: Kg = 6 = one full quad of output channels + half of one
    rng = np.random.default_rng(61)
    x = rng.uniform(-1, 1, (2, 5, 6, 4 * groups))
    w = rng.uniform(-1, 1, (3, 3, 4, 6 * groups))
    with F.override_config(variant="tiled", tile="64x64", vector=2):
        got = run(ordered_backend, gpuconv.conv2d, x, w, 1, "SAME")
    want = oracle(gpuconv.conv2d, x, w, 1, "SAME")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# conv_fprop_tiled: more than one column tile with a non-square block tile (BM = 128, BN = 64)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", [1, 4])
def test_fprop_tiled_128x64_second_column_tile(kernel_backend, vector):
    rng = np.random.default_rng(62)
    x = rng.uniform(-1, 1, (1, 4, 5, 4)).astype(np.float32)
    w = rng.uniform(-1, 1, (2, 2, 4, 72)).astype(np.float32)       # gemm_n = 72: column tiles 0..63, 64..71
    with F.override_config(variant="tiled", tile="128x64", vector=vector):
        got = run(kernel_backend, gpuconv.conv2d, x, w, 1, "SAME")
    want = oracle(gpuconv.conv2d, x, w, 1, "SAME")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# conv_dgrad_tiled: a dy depth coordinate z == Z is absent (3-D, depth pad before >= 1)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["analytic", "col2im", "tiled"])
def test_dgrad_3d_depth_tap_past_the_last_dy_plane(kernel_backend, variant):
    # D = Z = 3, T = 3, SAME in depth (pads 1, 1): dx depth 2 at tap 0 maps to z = 2 + 1 - 0 = 3 = Z, which must
    # be skipped. Two images, so a read of z = Z in image 0 lands on image 1's first dy plane (nonzero).
    rng = np.random.default_rng(63)
    x_shape = (2, 3, 2, 3, 2)                              # N, D, H, W, C
    w = rng.uniform(-1, 1, (3, 1, 2, 2, 4))                # T, R, S, C, K
    dy = rng.uniform(-1, 1, (2, 3, 2, 3, 4))               # SAME, stride 1: the forward output is x's size
    with DG.forced_config(variant=variant):
        got = run(kernel_backend, gpuconv.conv3d_backprop_input, x_shape, w, dy, 1, "SAME")
    want = oracle(gpuconv.conv3d_backprop_input, x_shape, w, dy, 1, "SAME")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# conv_wgrad_reduce: split-K partials add in split order
# ---------------------------------------------------------------------------------------------------------
def test_wgrad_split_partials_add_in_split_order(kernel_backend):
    # 1x1 filter, one channel: dw = sum_q x[q] * dy[q] over gemm_k = 24 rows, 3 splits of 8 rows. x = 1, and
    # each split has one nonzero dy row, so its float32 partial is exactly 1, 2^25 or -2^25.
    big = 2.0 ** 25                                          # big + 1 rounds to big in float32
    x = np.ones((1, 1, 24, 1), np.float32)
    dy = np.zeros((1, 1, 24, 1), np.float32)
    dy[0, 0, [0, 8, 16], 0] = [1, big, -big]
    want = np.float32(0)
    for partial in (1, big, -big):                          # the promised order: split 0, 1, 2, in float32
        want = np.float32(want + np.float32(partial))
    assert want == 0 and np.float32(np.float32(-big) + np.float32(big)) + np.float32(1) == 1   # order matters
    with WG.forced_config(variant="tiled", splits=3):
        got = run(kernel_backend, gpuconv.conv2d_backprop_filter, x, (1, 1, 1, 1), dy, 1, "VALID")
    np.testing.assert_array_equal(got.reshape(-1), [want])


# ---------------------------------------------------------------------------------------------------------
# pipelined main loop: nothing is loaded past the last k-tile (AddressSanitizer build of the emulator)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def sanitized_emulator(monkeypatch) -> str:
    """The 'emulator' backend replaced, for this test, by AddressSanitizer + UBSan builds of the kernels: an
    out-of-bounds access is an EmulatorError naming the source line (one extra build per family)."""
    install_emulator(monkeypatch, sanitize=True)
    return "emulator"


@pytest.mark.emulator
def test_dgrad_tiled_reads_nothing_past_w_under_asan(sanitized_emulator):
    rng = np.random.default_rng(64)
    w = rng.uniform(-1, 1, (3, 3, 3, 5)).astype(np.float32)       # the last k-tile reads w's last tap
    dy = rng.uniform(-1, 1, (1, 5, 6, 5)).astype(np.float32)
    with DG.forced_config(variant="tiled", tile="64x64"):
        got = run(sanitized_emulator, gpuconv.conv2d_backprop_input, (1, 5, 6, 3), w, dy, 1, "SAME")
    want = oracle(gpuconv.conv2d_backprop_input, (1, 5, 6, 3), w, dy, 1, "SAME")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.emulator
def test_fprop_tensorop_stays_inside_its_fragments_under_asan(sanitized_emulator):
    rng = np.random.default_rng(65)
    x = rng.uniform(-1, 1, (1, 6, 7, 8)).astype(np.float16)
    w = rng.uniform(-1, 1, (3, 3, 8, 16)).astype(np.float16)
    with F.override_config(variant="tensorop"):
        got = run(sanitized_emulator, gpuconv.conv2d, x, w, 1, "SAME")
    want = oracle(gpuconv.conv2d, x, w, 1, "SAME")                 # float32 accumulation, rounded once
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
