"""conv_wgrad on an executor: dw = the filter gradient of a convolution (backprop_filter).

Allocates dw (and, for split-K, the accumulator-dtype workspace of the partial tiles) with executor.xp, picks
the configuration (gpuconv.plans.conv_wgrad.config_for) and launches its plans: the tiled kernel, then the
deterministic split reduction when there is more than one split. An empty problem returns zeros.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import accumulator_dtype
from ..geometry import ConvProblem
from ..plans import conv_wgrad as plans
from ..precision import effective_precision, get_float32_precision


def conv_wgrad(executor, x, dy, p: ConvProblem):
    """dw (T, R, S, C/G, K) of x's dtype from x (N, D, H, W, C) and dy (N, Z, P, Q, K), canonical layout.
    float16 runs on tensor cores; float32 may (TF32 / 3xTF32) when gpuconv.float32_precision allows it and the
    device has them."""
    xp = executor.xp
    if p.is_empty:
        return xp.zeros(p.w_shape, dtype=x.dtype)
    precision = effective_precision(get_float32_precision(), executor.compute_capability(x))
    config = plans.config_for(p, x.dtype, precision)
    dw = xp.empty(p.w_shape, dtype=x.dtype)
    n_ws = plans.workspace_elements(config, p)
    workspace = xp.empty((n_ws,), dtype=accumulator_dtype(x.dtype)) if n_ws else None
    # The tiled kernel's non-finite flag (plans/conv_common.py), zeroed on the stream: no host synchronisation.
    flag = xp.zeros((1,), dtype=np.int32) if plans.needs_nonfinite_flag(config) else None
    for plan in plans.wgrad_plans(config, p, x, dy, dw, workspace, flag):
        executor.launch(plan)
    return dw
