"""The rule CI relies on (tests/conftest.py): in a strict run a skipped `emulator`, `compile_gate` or `tf` test
fails the run, and so does a full strict run in which one of those layers passed no test; outside strict mode,
or in a partial run (-k, file arguments), they do not. Checked on a throwaway project that holds a copy of
tests/conftest.py and a few marked tests, run by pytest in a subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
INI = """[pytest]
testpaths = tests
markers =
    gpu: g
    emulator: e
    compile_gate: c
    tf: t
"""
# One passing test per required layer, plus one per layer that skips when SKIP names its marker.
TESTS = """import os
import pytest

@pytest.mark.emulator
def test_emulator():
    pass

# skipped at setup by a marker, as conftest skips emulator tests where the emulator cannot run
@pytest.mark.emulator
@pytest.mark.skipif(os.environ.get("SKIP_AT_SETUP") == "1", reason="emulator unavailable")
def test_emulator_marked_skip():
    pass

@pytest.mark.compile_gate
def test_gate():
    pass

@pytest.mark.tf
def test_tf():
    pass

@pytest.mark.parametrize("marker", [pytest.param(m, marks=getattr(pytest.mark, m))
                                    for m in ("emulator", "compile_gate", "tf")])
def test_maybe_skipped(marker):
    if os.environ.get("SKIP") == marker:
        pytest.skip("layer unavailable")
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(CONFTEST, tmp_path / "tests" / "conftest.py")
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "tests" / "test_layers.py").write_text(TESTS)
    return tmp_path


def run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GPUCONV_REQUIRE", "GPUCONV_STRICT"))}
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                          env=clean, capture_output=True, text=True, timeout=300)


def test_a_strict_run_with_every_layer_passing_passes(project):
    r = run(project, GPUCONV_STRICT="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REQUIRED TESTS WERE SKIPPED" not in r.stdout


@pytest.mark.parametrize("marker, variable", [("emulator", "GPUCONV_REQUIRE_EMULATOR"),
                                              ("compile_gate", "GPUCONV_REQUIRE_NVRTC"),
                                              ("tf", "GPUCONV_REQUIRE_TF")])
def test_a_skipped_required_test_fails_the_run(project, marker, variable):
    for strict in ({"GPUCONV_STRICT": "1"}, {variable: "1"}):
        r = run(project, SKIP=marker, **strict)
        assert r.returncode == 1, (strict, r.stdout + r.stderr)
        assert "REQUIRED TESTS WERE SKIPPED" in r.stdout and f"({marker})" in r.stdout
    # not required: the same skip is only a skip
    r = run(project, SKIP=marker)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr


def test_a_test_skipped_by_its_marker_fails_a_strict_run(project):
    r = run(project, SKIP_AT_SETUP="1", GPUCONV_STRICT="1")
    assert r.returncode == 1 and "test_emulator_marked_skip (emulator)" in r.stdout, r.stdout + r.stderr


def test_a_full_strict_run_in_which_a_layer_passed_nothing_fails(project):
    # the tf layer's only tests are deselected by a marker expression: nothing skipped, nothing passed
    r = run(project, "-m", "not tf", GPUCONV_STRICT="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no `tf` test passed in a strict run" in r.stdout
    assert "no `emulator` test passed" not in r.stdout


def test_a_partial_strict_run_may_leave_layers_out(project):
    # -k or a file argument: a developer running one part; layers with no test there do not fail it
    assert run(project, "-k", "test_emulator", GPUCONV_STRICT="1").returncode == 0
    r = run(project, "tests/test_layers.py::test_gate", GPUCONV_STRICT="1")
    assert r.returncode == 0, r.stdout + r.stderr
