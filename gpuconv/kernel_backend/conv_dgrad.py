"""conv_dgrad on an executor: dx = the input gradient of a convolution (backprop_input / transposed conv).

Allocates dx with executor.xp, picks the configuration (gpuconv.plans.conv_dgrad.config_for: the pure chooser
plus any test override) and launches its plans; the col2im variant (few channels) runs a conv_fprop GEMM per
batch chunk first. Every dx element is written by the kernels, so dx is allocated uninitialised; an empty
problem returns zeros without a launch.
"""
from __future__ import annotations

import numpy as np

from ..geometry import ConvProblem
from ..plans import conv_dgrad as plans
from ..precision import effective_precision, get_float32_precision
from .conv_fprop import conv_fprop


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
    if config.variant == "col2im":
        return _gemm_col2im(executor, dy, w, p, config, dx)
    # The tiled kernel's non-finite flag (plans/conv_common.py), zeroed on the stream: no host synchronisation.
    flag = xp.zeros((1,), dtype=np.int32) if plans.needs_nonfinite_flag(config) else None
    for plan in plans.dgrad_plans(config, p, dy, w, dx, flag):
        executor.launch(plan)
    return dx


def _gemm_col2im(executor, dy, w, p: ConvProblem, config, dx):
    """The col2im variant (plans/conv_dgrad.py): per batch chunk, cols = a 1x1 conv_fprop of dy with w as a
    (K, T*R*S*C) matrix, then conv_dgrad_col2im gathers each dx element's present taps from cols."""
    col_dtype = plans.col2im_dtype(dy.dtype)
    w_cols = plans.col2im_weights(w, executor.xp)
    step = plans.col2im_images(p, dy.dtype)
    for n0 in range(0, p.N, step):
        images = min(step, p.N - n0)
        dy_chunk = dy[n0:n0 + images].astype(col_dtype, copy=False)
        cols = conv_fprop(executor, dy_chunk, w_cols, plans.col2im_gemm_problem(p, images))
        executor.launch(plans.col2im_plan(config, p, images, cols, dx[n0:n0 + images]))
    return dx
