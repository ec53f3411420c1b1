"""conv_fprop on a kernel executor (cuda or emulator): allocate y, build the launch plans, launch them.

Same signature as the NumPy backend's conv_fprop; the arrays are canonical and C-contiguous (API layer).
"""
from __future__ import annotations

from ..geometry import ConvProblem
from ..plans.conv_fprop import plan_fprop


def conv_fprop(executor, x, w, p: ConvProblem):
    """y (N, Z, P, Q, K) = forward convolution of x (N, D, H, W, C) with w (T, R, S, C/G, K).

    Empty problems return zeros without a launch (an empty gemm_k sums nothing). float16 accumulates in
    float32 inside the kernels; the dtype of y is the dtype of x.
    """
    xp = executor.xp
    if p.is_empty:
        return xp.zeros(p.y_shape, dtype=x.dtype)
    y = xp.empty(p.y_shape, dtype=x.dtype)
    for plan in plan_fprop(p, x.dtype, x, w, y):
        executor.launch(plan)
    return y
