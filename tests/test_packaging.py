"""The wheel built from the repository (issue 2 item 1): it carries every kernel source and header, the
emulator's headers and the demo's data; installed on its own (not the checkout) it imports without CuPy, finds
its kernels inside the installed package, runs the NumPy backend, and never touches CUDA."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy without build products: setuptools reuses a checkout's build/lib, whose stale files would hide
    # a file the package configuration no longer ships.
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", ".git", ".ci-cache", ".pytest_cache", ".hypothesis", ".ruff_cache",
        "__pycache__"))
    # Without build isolation where this environment has the setuptools pyproject asks for (no download);
    # else pip fetches it into an isolated build environment.
    isolation = ["--no-build-isolation"] if _has_setuptools(68) else []
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out),
                          str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    wheels = list(out.glob("gpuconv-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _has_setuptools(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def _expected_files() -> list[str]:
    """Package paths every wheel must hold: kernels/ installed as gpuconv/kernels, plus package data."""
    want = [f"gpuconv/kernels/{p.name}" for p in sorted((ROOT / "kernels").iterdir()) if p.suffix in (".cu", ".cuh")]
    want += [f"gpuconv/executors/{p.name}" for p in sorted((ROOT / "gpuconv" / "executors").iterdir())
             if p.suffix in (".h", ".cpp")]
    want += [f"gpuconv/data/{p.name}" for p in sorted((ROOT / "gpuconv" / "data").iterdir())
             if p.suffix in (".png", ".jpg")]
    return want


def test_wheel_carries_kernels_headers_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    want = _expected_files()
    assert any(w.endswith(".cu") for w in want) and any(w.endswith(".h") for w in want)
    missing = [w for w in want if w not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    for name in ("conv_fprop.cu", "common.cuh"):      # the bytes, not just the names
        with zipfile.ZipFile(wheel) as z:
            assert z.read(f"gpuconv/kernels/{name}") == (ROOT / "kernels" / name).read_bytes()


_PROBE = r"""
import importlib.abc, json, sys

CUDA = ("cupy", "cupyx", "cupy_backends", "cuda", "pynvml")
attempts = []

class NoCuda(importlib.abc.MetaPathFinder):
    # CuPy, cuda-bindings and NVML are unavailable here, whatever the machine has installed; every attempt to
    # import them is recorded.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in CUDA:
            attempts.append(name)
            raise ImportError(f"{name} blocked by the packaging test")
        return None

sys.meta_path.insert(0, NoCuda())
import numpy as np
import gpuconv as gc
from gpuconv import kernel_source

x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
y, argmax = gc.max_pool_with_argmax(x, 2, 2, "VALID")
z = gc.conv2d(x, np.ones((3, 3, 3, 2), np.float32), 1, "SAME")
families = kernel_source.families()
print(json.dumps({
    "package": gc.__file__,
    "kernel_dir": str(kernel_source.kernel_dir()),
    "sources": {f.file: len(kernel_source.read_source(f.file)) for f in families},
    "y": y.tolist(), "argmax": argmax.tolist(), "z_sum": float(z.sum()),
    "cuda_imports": attempts,
}))
"""


def test_installed_wheel_imports_without_cuda_and_finds_its_kernels(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    # A clean interpreter that sees the installed copy only: no checkout on the path, cwd outside the repository.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUCONV_BACKEND")}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-s", "-c", _PROBE], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True)
    got = json.loads(run.stdout)
    assert Path(got["package"]).resolve().is_relative_to(target.resolve())
    assert Path(got["kernel_dir"]).resolve() == (target / "gpuconv" / "kernels").resolve()
    assert set(got["sources"]) == {p.name for p in (ROOT / "kernels").glob("*.cu")}
    assert all(n > 0 for n in got["sources"].values())
    assert got["cuda_imports"] == []           # not even tried: import gpuconv and NumPy ops leave CUDA alone
    # The NumPy backend ran: the 2x2 maxima of an increasing ramp are each window's last cell.
    assert got["y"][0][0][0] == [15.0, 16.0, 17.0] and got["argmax"][0][0][0] == [15, 16, 17]
    # 3x3 ones filter, SAME, 2 output channels: each input cell is summed once per output window that covers it
    # (2 windows along an edge row/column of 4, 3 inside), twice over (K = 2).
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float64).reshape(2, 4, 4, 3)
    cover = np.array([2, 3, 3, 2])
    assert got["z_sum"] == 2 * float((x.sum(axis=(0, 3)) * np.outer(cover, cover)).sum())


def test_cuda_extras_bring_the_c_runtime_headers(wheel):
    """The cuda12 / cuda13 extras install CuPy with CUDA from pip plus the crt/ headers that <mma.h> includes
    (conv_fprop.cu's tensor-core kernel); without them NVRTC cannot compile conv_fprop.cu on a machine without
    a CUDA toolkit (kernel_source.crt_include_options)."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]

    def extra(name):
        return {r.split(";")[0].replace(" ", "") for r in requires if f'extra == "{name}"' in r}

    assert {"cupy-cuda13x[ctk]>=14", "cuda-toolkit[crt]==13.*"} <= extra("cuda13")
    assert {"cupy-cuda12x[ctk]>=14", "cuda-toolkit[nvcc]==12.*"} <= extra("cuda12")
    assert [r for r in requires if "extra ==" not in r] == ["numpy>=1.24"]      # the base install: NumPy only
