"""benchmarks/host_overhead.py (the kernel path's host time per call, launches skipped or, with --backend cuda,
real): it times every op it lists, counts the plans each call hands its executor, and leaves gpuconv's backend
table as it found it."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark_script

from gpuconv import backend


def test_host_overhead_script_covers_every_op_and_restores_the_backends(tmp_path):
    ho = load_benchmark_script("host_overhead")
    before = backend._instances.get("emulator")
    out = tmp_path / "host.md"
    assert ho.main(["--calls", "2", "--out", str(out)]) == 0
    assert backend._instances.get("emulator") is before
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][0] == "| op"
    assert [r[0][2:] for r in rows[1:]] == list(ho.cases(np.random.default_rng(0)))
    launches = {r[0][2:]: int(r[2]) for r in rows[1:]}
    # One plan per pooling call (window scatter for SegNet's 2x2/2 unpooling), a flag launch before each tiled
    # conv kernel, and the split-K reduction after a split filter gradient.
    assert all(n >= 1 for n in launches.values()) and launches["max_pool2d"] == 1
    assert all(float(r[3].rstrip(" |")) > 0 for r in rows[1:])



@pytest.mark.gpu
def test_host_overhead_script_runs_the_ops_on_the_gpu(tmp_path):
    ho = load_benchmark_script("host_overhead")
    before = backend._instances.get("cuda")
    out = tmp_path / "host_cuda.md"
    assert ho.main(["--backend", "cuda", "--calls", "2", "--out", str(out)]) == 0
    assert backend._instances.get("cuda") is before
    text = out.read_text()
    assert "real calls on the GPU" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0][2:] for r in rows] == list(ho.cases(np.random.default_rng(0)))
    assert all(int(r[2]) >= 1 and float(r[3].rstrip(" |")) > 0 for r in rows)
