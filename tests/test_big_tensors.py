"""Index arithmetic past 2^31 elements (DESIGN.md section 4: "indices computed in 64-bit where a tensor has >= 2^31
elements"; issue 6 item 6), through the emulator, i.e. the CUDA kernels and launch plans themselves.

Memory stays small: np.zeros of a huge shape is mapped lazily by the OS (calloc of untouched pages), and every
problem here reads or writes only a few cells: x of shape (1, 3, 2^30, 1) with a 1x1 or 1x2 window/filter and
stride (1, 2^30) has one output per row, and row h reads input offset h * 2^30 (2^31 for h = 2). A few input
cells hold known values; the expected results are worked out by hand in each test (the NumPy backend is not run
on these shapes). Each test also checks that the launches used a 64-bit index type (`long long` in the name
expression, np.int64 scalars) and that the process's resident memory did not grow by anything near the size of
a tensor (nothing on the kernel path copied or zero-filled it by touching its pages).

A machine that cannot map the address space (overcommit disabled, ulimit -v) skips with the reason.
Durations on the shared 2-core build machine (warm emulator cache): a few milliseconds per call; the first
call of a family builds it (3-20 s).
"""
from __future__ import annotations

import contextlib
import resource

import numpy as np
import pytest

import gpuconv as gc
from conftest import record_launches

pytestmark = pytest.mark.emulator

G = 2**30
MIB = 1 << 20
RSS_SLACK = 256 * MIB          # far below any of the tensors (3 GiB int8, 6 GiB float16)


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def huge_zeros(shape, dtype):
    """np.zeros of a huge shape, mapped lazily; skip when the machine refuses the address space."""
    try:
        return np.zeros(shape, dtype)
    except MemoryError as exc:
        pytest.skip(f"cannot map {np.prod(shape) * np.dtype(dtype).itemsize / 2**30:.1f} GiB of virtual memory "
                    f"({exc}); see /proc/sys/vm/overcommit_memory and ulimit -v")


@pytest.fixture
def launches(monkeypatch):
    """Name expressions and scalar argument types of every emulator launch inside the test."""
    def name_and_scalar_types(plan):
        return plan.name_expression, {type(a) for a in plan.args if isinstance(a, np.generic)}
    return record_launches(monkeypatch, "emulator", name_and_scalar_types)


def assert_64bit(launches):
    assert launches, "no kernel ran"
    for expr, scalars in launches:
        assert "long long" in expr, f"{expr} does not index in 64 bits"
        assert np.int32 not in scalars or np.int64 in scalars, (expr, scalars)


@contextlib.contextmanager
def small_footprint(what):
    """The body must not make the process resident in more than RSS_SLACK beyond where it started."""
    before, peak_before = _resident(), _peak()
    yield
    grown = _resident() - before
    peak_grown = _peak() - max(peak_before, before)
    assert grown < RSS_SLACK, f"{what}: resident memory grew by {grown / MIB:.0f} MiB"
    assert peak_grown < RSS_SLACK, f"{what}: peak resident memory grew by {peak_grown / MIB:.0f} MiB"


@pytest.fixture
def x_int8():
    """(1, 3, 2^30, 1) int8 with x[0,0,0]=5, x[0,1,0]=-3, x[0,2,0]=2, x[0,2,1]=9 (flat 0, 2^30, 2^31, 2^31+1)."""
    x = huge_zeros((1, 3, G, 1), np.int8)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0], x[0, 2, 1, 0] = 5, -3, 2, 9
    return x


def test_problems_choose_64bit_indexing():
    from gpuconv.geometry import ConvProblem, PoolProblem  # noqa: F401 - documents where needs_int64 lives
    from gpuconv.plans import conv_fprop
    x = (1, 1, 3, G, 1)
    p = _pool_problem(x, (1, 2), (1, G))
    assert p.needs_int64() and p.y_shape == (1, 1, 3, 1, 1)
    small = _pool_problem((1, 1, 3, G // 2, 1), (1, 2), (1, G // 2))
    assert not small.needs_int64()
    cp = _conv_problem(x, (1, 1, 1, 1, 8), (1, G))
    assert cp.needs_int64()
    assert conv_fprop.choose_fprop_config(cp, np.float16).index == "long long"


def _pool_problem(x5, ksize, strides):
    from gpuconv import geometry
    return geometry.pool_problem(x5, (1, *ksize), (1, *strides), ((0, 0),) * 3)


def _conv_problem(x5, w5, strides):
    from gpuconv import geometry
    return geometry.conv_problem(x5, w5, (1, *strides), (1, 1, 1), ((0, 0),) * 3)


def test_max_pool_reads_past_2_31(x_int8, launches):
    with small_footprint("max_pool2d"), gc.use_backend("emulator"):
        y = gc.max_pool2d(x_int8, (1, 2), (1, G), "VALID")
    # windows: row h, columns 0 and 1 -> max(5, 0), max(-3, 0), max(2, 9)
    np.testing.assert_array_equal(y.ravel(), [5, 0, 9])
    assert y.dtype == np.int8
    assert_64bit(launches)


@pytest.mark.parametrize("include_batch", [False, True])
def test_max_pool_with_argmax_indices_past_2_31(x_int8, launches, include_batch):
    with small_footprint("max_pool_with_argmax"), gc.use_backend("emulator"):
        y, am = gc.max_pool_with_argmax(x_int8, (1, 2), (1, G), "VALID", include_batch_in_index=include_batch)
    np.testing.assert_array_equal(y.ravel(), [5, 0, 9])
    # row 1's max is the 0 at column 1 (ties go to the first cell: -3 < 0); row 2's the 9 at column 1
    assert am.dtype == np.int64
    np.testing.assert_array_equal(am.ravel(), [0, G + 1, 2 * G + 1])
    assert_64bit(launches)


def test_int32_argmax_is_refused_when_indices_do_not_fit(x_int8):
    with gc.use_backend("emulator"), pytest.raises(ValueError, match="output_dtype"):
        gc.max_pool_with_argmax(x_int8, (1, 2), (1, G), "VALID", output_dtype="int32")


def test_int32_argmax_holds_the_last_index_below_2_31(launches):
    """2^31 elements exactly: every index fits in int32 (the last is 2^31 - 1), so int32 is accepted."""
    x = huge_zeros((1, 2, G, 1), np.int8)
    x[0, 1, G - 1, 0] = 7                       # flat 2^31 - 1
    x[0, 0, 0, 0] = -1
    with small_footprint("max_pool_with_argmax int32"), gc.use_backend("emulator"):
        y, am = gc.max_pool_with_argmax(x, 1, (1, G - 1), "VALID", output_dtype="int32")
    # windows: (row, column) (0, 0), (0, G-1), (1, 0), (1, G-1)
    np.testing.assert_array_equal(y.ravel(), [-1, 0, 0, 7])
    assert am.dtype == np.int32
    np.testing.assert_array_equal(am.ravel(), [0, G - 1, G, 2 * G - 1])
    assert_64bit(launches)                      # the tensor has 2^31 elements: 64-bit indexing inside


@pytest.mark.parametrize("config", [None, dict(variant="analytic"), dict(variant="tiled", tile="128x128")],
                         ids=["chosen", "analytic", "tiled"])
def test_conv2d_reads_past_2_31(launches, config):
    from gpuconv.plans import conv_fprop
    x = huge_zeros((1, 3, G, 1), np.float16)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0], x[0, 2, 1, 0] = 1.5, -2.0, 0.25, 100.0
    w = np.array([2, -1, 0.5, 4, 1, -3, 0, 8], np.float16).reshape(1, 1, 1, 8)
    override = conv_fprop.override_config(**config) if config else contextlib.nullcontext()
    with small_footprint("conv2d"), gc.use_backend("emulator"), override:
        y = gc.conv2d(x, w, (1, G), "VALID")
    assert y.shape == (1, 3, 1, 8) and y.dtype == np.float16
    # 1x1 filter: y[h] = x[h, 0] * w (the 100 at column 1 lies between the strided taps and is never read)
    want = np.array([1.5, -2.0, 0.25], np.float32)[:, None] * w.reshape(1, 8).astype(np.float32)
    np.testing.assert_array_equal(y.reshape(3, 8), want.astype(np.float16))
    assert_64bit(launches)
    if config:                                  # (a tiled plan first flags a non-finite w: conv_nonfinite_flag)
        conv = [e for e, _ in launches if "conv_nonfinite_flag" not in e]
        assert (config["variant"] in conv[0]) and all("conv_fprop" in e for e in conv)


@pytest.mark.parametrize("dtype", [np.int8, np.float16])
def test_max_unpool_grad_gathers_past_2_31(launches, dtype):
    g = huge_zeros((1, 3, G, 1), dtype)
    g[0, 2, 1, 0], g[0, 1, 5, 0], g[0, 0, G - 1, 0] = 9, -4, 3
    am = np.array([2 * G + 1, G + 5, G - 1, 2 * G + 1, 0], np.int64).reshape(1, 1, 5, 1)
    with small_footprint("max_unpool_grad"), gc.use_backend("emulator"):
        v = gc.max_unpool_grad(g, am, include_batch_in_index=True)
    np.testing.assert_array_equal(v.ravel(), np.array([9, -4, 3, 9, 0], dtype))
    assert v.dtype == dtype and v.shape == am.shape
    assert_64bit(launches)


def test_max_unpool_scatters_past_2_31(launches):
    """A (1, 2, 2^30 + 1, 1) output (2^31 + 2 cells): updates land at 0, 2^30, 2^31 + 1 (twice: they add)."""
    out_shape = (1, 2, G + 1, 1)
    upd = np.array([3, 4, 5, -7], np.int8).reshape(1, 2, 2, 1)
    am = np.array([0, 2**31 + 1, 2**31 + 1, G], np.int64).reshape(1, 2, 2, 1)
    try:
        with small_footprint("max_unpool"), gc.use_backend("emulator"):
            out = gc.max_unpool(upd, am, out_shape)
    except MemoryError as exc:      # the scatter's int64 count scratch: 8 bytes per output cell, mapped lazily
        pytest.skip(f"cannot map the scatter's scratch ({exc})")
    assert out.shape == out_shape and out.dtype == np.int8
    flat = out.reshape(-1)
    assert (flat[0], flat[G], flat[2**31 + 1], flat[2**31], flat[1]) == (3, -7, 9, 0, 0)
    assert flat.size == 2**31 + 2
    assert_64bit(launches)


def test_max_pool_grad_with_argmax_scatters_past_2_31(launches):
    x = huge_zeros((1, 2, G + 1, 1), np.int8)
    x[0, 1, 1, 0] = 6                               # flat (G + 1) + 1
    dy = np.array([10, 20], np.int8).reshape(1, 2, 1, 1)
    try:
        with small_footprint("max_pool_grad_with_argmax"), gc.use_backend("emulator"):
            y, am = gc.max_pool_with_argmax(x, (1, 2), (1, G), "VALID")
            dx = gc.max_pool_grad_with_argmax(x, dy, am, (1, 2), (1, G), "VALID")
    except MemoryError as exc:
        pytest.skip(f"cannot map the scatter's scratch ({exc})")
    np.testing.assert_array_equal(am.ravel(), [0, G + 2])
    flat = dx.reshape(-1)
    assert dx.shape == x.shape and (flat[0], flat[G + 2], flat[1], flat[G + 1]) == (10, 20, 0, 0)
    assert_64bit(launches)


def test_nonfinite_flag_scan_of_the_largest_32bit_operand():
    """conv_nonfinite_flag with an int index over 2^31 - 1 values (the largest operand a 32-bit plan scans): the
    grid-stride loop must stop at the end. It stepped i += stride in int, which wrapped negative for the last
    stride of the tensor and read gigabytes before it (a segfault in the emulator, an illegal address or a
    spurious flag on the GPU). A subprocess, so that a crash is a failure; the NaN in the last cell must be
    found, the last cell before the wrap."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import numpy as np
        from gpuconv.executors.emulator import EmulatorExecutor
        from gpuconv.plans.conv_common import nonfinite_flag_plan
        n = 2**31 - 1
        try:
            a = np.zeros(n, np.float16)          # mapped lazily: read-only zero pages, no resident copy
        except MemoryError as exc:
            print("SKIP", exc)
            raise SystemExit(0)
        a[-1] = np.nan
        flag = np.zeros(1, np.int32)
        plan = nonfinite_flag_plan("conv_fprop", a, n, "int", flag)
        assert plan.grid[0] * plan.block[0] > 1 and "int>" in plan.name_expression, plan
        EmulatorExecutor().launch(plan)
        print("FLAG", int(flag[0]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["FLAG", "1"], out.stdout


def test_dgrad_analytic_images_of_2_32_pixels():
    """conv_dgrad_analytic on an image of 4 * (2^30 + 2) = 2^32 + 8 pixels (conv3d backprop input, 1x1x1 filter,
    one channel). The kernel split a dx pixel into (n, d, h, w) with the image size in int, which wraps to 8
    here: pixel 8 became batch item 1 and its dy read landed 2^32 elements past the start (a segfault in the
    emulator, hence a subprocess). The plans give such images to the analytic kernel (the tiled one refuses
    them); only the first 4 blocks of its launch run here (1024 dx elements, all in row 0 of batch item 0): the
    whole launch would be 2^32 emulated threads. The arrays hold those 1024 elements only; the correct kernel
    touches nothing else."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import dataclasses
        import numpy as np
        from gpuconv.executors.emulator import EmulatorExecutor
        from gpuconv.geometry import conv_problem
        from gpuconv.plans import conv_dgrad as DG
        p = conv_problem((1, 4, 1, 2**30 + 2, 1), (1, 1, 1, 1, 1), (1, 1, 1), (1, 1, 1), ((0, 0),) * 3)
        assert p.D * p.H * p.W == 2**32 + 8
        config = DG.config_for(p, np.float32)
        assert config == DG.DgradConfig("analytic", None, "long long"), config
        threads = 4 * DG.BLOCK
        dy = np.arange(1, threads + 1, dtype=np.float32)          # dy[0, 0, 0, q, 0] = q + 1 for q < 1024
        dx = np.full(threads, np.nan, np.float32)
        (plan,) = DG.dgrad_plans(config, p, dy, np.array([2.0], np.float32), dx)
        EmulatorExecutor().launch(dataclasses.replace(plan, grid=(4, 1, 1)))
        print("BAD", np.flatnonzero(dx != 2 * dy)[:8].tolist())   # dx[0, 0, 0, x, 0] = 2 * dy[0, 0, 0, x, 0]
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["BAD", "[]"], out.stdout
