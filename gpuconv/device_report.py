"""The GPU as NVML sees it (nvidia-ml-py): name, driver, clocks, temperature, power; degrades cleanly."""
from __future__ import annotations

from typing import Any


def gpu_report() -> dict[str, Any]:
    """{'available': bool, 'reason' or 'driver' and 'devices': [...]} without initialising CUDA."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML could not start: {exc} (no NVIDIA driver on this machine?)"}
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            devices.append({"index": i, **_device(pynvml, h)})
        driver = _query(pynvml, pynvml.nvmlSystemGetDriverVersion)
        return {"available": bool(devices), "driver": driver, "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def _query(pynvml, fn, *args):
    try:
        value = fn(*args)
        return value.decode() if isinstance(value, bytes) else value
    except pynvml.NVMLError:
        return None


def _device(pynvml, h) -> dict[str, Any]:
    mem = _query(pynvml, pynvml.nvmlDeviceGetMemoryInfo, h)
    power = _query(pynvml, pynvml.nvmlDeviceGetPowerUsage, h)
    return {
        "name": _query(pynvml, pynvml.nvmlDeviceGetName, h),
        "memory_total_gib": round(mem.total / 2**30, 1) if mem else None,
        "sm_clock_mhz": _query(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": _query(pynvml, pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": _query(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "temperature_c": _query(pynvml, pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": power / 1000 if power is not None else None,
    }
