"""Executors run LaunchPlans: `cuda` (CuPy RawModule on a GPU) and `emulator` (the same kernels on the CPU).

An executor has `name`, `xp` (the array module it works on), `launch(plan)` and `compute_capability(array)` (e.g.
80 or 90 for the device holding the array; None where no device limits the kernels, as under the emulator).
"""
from __future__ import annotations


def availability() -> dict[str, str]:
    """'yes' or the reason each kernel executor cannot run here; never initialises CUDA beyond a probe."""
    from .cuda import cuda_availability
    from .emulator import emulator_availability
    return {"cuda": cuda_availability(), "emulator": emulator_availability()}
