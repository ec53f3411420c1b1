"""conv_fprop on a kernel executor (cuda or emulator): allocate y, build the launch plans, launch them.

Same signature as the NumPy backend's conv_fprop; the arrays are canonical and C-contiguous (API layer).
"""
from __future__ import annotations

import numpy as np

from ..geometry import ConvProblem
from ..plans.conv_fprop import needs_nonfinite_flag, plan_fprop, select_config
from ..precision import effective_precision, get_float32_precision


def conv_fprop(executor, x, w, p: ConvProblem):
    """y (N, Z, P, Q, K) = forward convolution of x (N, D, H, W, C) with w (T, R, S, C/G, K).

    Empty problems return zeros without a launch (an empty gemm_k sums nothing). float16 accumulates in
    float32 inside the kernels; the dtype of y is the dtype of x. Tiled configurations first flag a w that
    holds inf or NaN (then their tiles use the analytic formula: padding never multiplies w). float32 may run on
    tensor cores (TF32 / 3xTF32) when gpuconv.float32_precision allows it and the device has them.
    """
    xp = executor.xp
    if p.is_empty:
        return xp.zeros(p.y_shape, dtype=x.dtype)
    y = xp.empty(p.y_shape, dtype=x.dtype)
    precision = effective_precision(get_float32_precision(), executor.compute_capability(x))
    config = select_config(p, x.dtype, x, w, y, precision)
    # The tiled kernels' non-finite flag (plans/conv_common.py), zeroed on the stream: no host synchronisation.
    flag = xp.zeros((1,), dtype=np.int32) if needs_nonfinite_flag(config) else None
    for plan in plan_fprop(p, x.dtype, x, w, y, config, nonfinite=flag):
        executor.launch(plan)
    return y
