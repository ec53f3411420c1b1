"""The device a run happens on: the GPU as NVML sees it (nvidia-ml-py: name, driver, clocks, temperature,
power), or the CPU (model, cores, BLAS). Every query degrades cleanly: a missing library, driver or field gives
a reason or None, never an exception."""
from __future__ import annotations

import os
import platform
from typing import Any


def gpu_report() -> dict[str, Any]:
    """{'available': bool, 'reason' or 'driver' and 'devices': [...]} without initialising CUDA.

    Never raises: NVML refusing the device count gives a reason, refusing one device's handle (a GPU fallen off
    the bus, one a container may not query: NVML_ERROR_NO_PERMISSION, GPU_IS_LOST, UNKNOWN) gives that device's
    record an 'error' and keeps the others. `python -m gpuconv info` and the benchmark (which reads this before
    and after its measurements) must not die on it."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}
    except Exception as exc:  # a broken install must not break info() or a benchmark run
        return {"available": False, "reason": f"pynvml failed to import: {type(exc).__name__}: {exc}"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML could not start: {exc} (no NVIDIA driver on this machine?)"}
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            return {"available": False, "reason": f"NVML could not count the GPUs: {exc}"}
        devices = [_device_record(pynvml, i) for i in range(count)]
        driver = _query(pynvml, pynvml.nvmlSystemGetDriverVersion)
        return {"available": any("error" not in d for d in devices), "driver": driver, "devices": devices}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _device_record(pynvml, index: int) -> dict[str, Any]:
    """NVML's record of GPU `index`, or {'index', 'name': None, 'error'} when NVML refuses its handle."""
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        return {"index": index, "name": None, "error": f"NVML refused this GPU: {exc}"}
    return {"index": index, **_device(pynvml, h)}


def _query(pynvml, fn, *args):
    try:
        value = fn(*args)
        return value.decode() if isinstance(value, bytes) else value
    except pynvml.NVMLError:
        return None


def _device(pynvml, h) -> dict[str, Any]:
    mem = _query(pynvml, pynvml.nvmlDeviceGetMemoryInfo, h)
    power = _query(pynvml, pynvml.nvmlDeviceGetPowerUsage, h)
    limit = _query(pynvml, pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    pci = _query(pynvml, pynvml.nvmlDeviceGetPciInfo, h)
    bus_id = getattr(pci, "busId", None)
    return {
        "name": _query(pynvml, pynvml.nvmlDeviceGetName, h),
        "pci_bus_id": bus_id.decode() if isinstance(bus_id, bytes) else bus_id,
        "memory_total_gib": round(mem.total / 2**30, 1) if mem else None,
        "sm_clock_mhz": _query(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": _query(pynvml, pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": _query(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "mem_clock_max_mhz": _query(pynvml, pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "pstate": _query(pynvml, pynvml.nvmlDeviceGetPerformanceState, h),
        "temperature_c": _query(pynvml, pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": power / 1000 if power is not None else None,
        "power_limit_w": limit / 1000 if limit is not None else None,
    }


def pci_key(bus_id: Any) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of a PCI bus id in any of the spellings NVML and CUDA use
    ('00000000:3B:00.0', '0000:3b:00.0'), or None."""
    try:
        domain, bus, rest = str(bus_id).strip().split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except (ValueError, AttributeError):
        return None


def matching_device(devices: list[dict[str, Any]], bus_id: Any) -> dict[str, Any] | None:
    """The NVML record with this PCI bus id. NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES,
    so a CUDA device index does not name an NVML device; the bus id does."""
    key = pci_key(bus_id)
    return next((d for d in devices if key is not None and pci_key(d.get("pci_bus_id")) == key), None)


def cpu_report() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where there is one), logical cores, machine, NumPy's BLAS if it says."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine() or None,
            "logical_cores": os.cpu_count(), "usable_cores": _usable_cores(),
            "machine": platform.machine(), "blas": _blas()}


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _blas() -> str | None:
    """NumPy's BLAS as numpy.show_config reports it (NumPy >= 1.26), else None."""
    try:
        import numpy
        cfg = numpy.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None
    except Exception:
        return None
