"""conv_dgrad on an executor: dx = the input gradient of a convolution (backprop_input / transposed conv).

Allocates dx with executor.xp, picks the configuration (gpuconv.plans.conv_dgrad.config_for: the pure chooser
plus any test override) and launches its plans. Every dx element is written by the kernels, so dx is allocated
uninitialised; an empty problem returns zeros without a launch.
"""
from __future__ import annotations

import numpy as np

from ..geometry import ConvProblem
from ..plans import conv_dgrad as plans
from ..precision import effective_precision, get_float32_precision


def conv_dgrad(executor, dy, w, p: ConvProblem):
    """dx (N, D, H, W, C) of dy's dtype from dy (N, Z, P, Q, K) and w (T, R, S, C/G, K), canonical layout.
    float16 runs on tensor cores; float32 may (TF32 / 3xTF32) when gpuconv.float32_precision allows it and the
    device has them."""
    xp = executor.xp
    if p.is_empty:
        return xp.zeros(p.x_shape, dtype=dy.dtype)
    precision = effective_precision(get_float32_precision(), executor.compute_capability(dy))
    config = plans.config_for(p, dy.dtype, precision)
    dx = xp.empty(p.x_shape, dtype=dy.dtype)
    # The tiled kernel's non-finite flag (plans/conv_common.py), zeroed on the stream: no host synchronisation.
    flag = xp.zeros((1,), dtype=np.int32) if plans.needs_nonfinite_flag(config) else None
    for plan in plans.dgrad_plans(config, p, dy, w, dx, flag):
        executor.launch(plan)
    return dx
