"""`python -m gpuconv demo` on the NumPy backend: runs end to end, writes its picture, and fails loudly."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gpuconv
from gpuconv import demo

from conftest import gpu_available


def test_demo_runs_end_to_end_and_writes_png(tmp_path, capsys):
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path), "--dpi", "40"]) == 0
    png = tmp_path / "demo.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "checks.json").read_text())
    assert report["backend"] == "numpy"
    assert report["checks"] and all(c["passed"] for c in report["checks"])
    sections = {c["section"] for c in report["checks"]}
    assert sections == {"grad", "seed002", "seed004", "seed003", "photo"}
    out = capsys.readouterr().out
    assert "== Checks ==" in out and "FAIL" not in out
    assert "conv2d(zero-inserted x, rot180(f))[0,0] = 67; with f unrotated: 603" in out


def test_a_wrong_op_makes_the_demo_fail(tmp_path, monkeypatch, capsys):
    real = gpuconv.conv2d_transpose

    def off_by_one(*args, **kwargs):
        return real(*args, **kwargs) + np.float32(1)

    monkeypatch.setattr(gpuconv, "conv2d_transpose", off_by_one)
    monkeypatch.setattr(demo, "section_photo", lambda *a, **k: None)   # keep the failing run short
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "output == the seed's 5x5 table" in out and "FAIL" in out
    failed = [c for c in json.loads((tmp_path / "checks.json").read_text())["checks"] if not c["passed"]]
    assert any(c["section"] == "seed002" for c in failed)


def test_an_op_that_raises_stops_its_section_but_not_the_demo(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpuconv, "max_pool3d", broken)
    monkeypatch.setattr(demo, "section_photo", lambda *a, **k: None)
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "section stopped: RuntimeError: kernel exploded" in out
    assert "seed004" in out          # the sections before it still ran and reported


@pytest.mark.skipif(gpu_available(), reason="a GPU is present: the cuda backend can run")
def test_unavailable_backend_is_a_usage_error(tmp_path, capsys):
    assert demo.main(["--backend", "cuda", "--out", str(tmp_path)]) == 2
    assert "cannot run here" in capsys.readouterr().err


def test_missing_image_is_a_usage_error(tmp_path, capsys):
    assert demo.main(["--backend", "numpy", "--image", str(tmp_path / "nope.png")]) == 2


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_unusable_out_is_a_usage_error_before_any_work(tmp_path, monkeypatch, capsys, where):
    afile = tmp_path / "afile"
    afile.write_text("")
    out = afile if where == "a file" else afile / "sub"
    monkeypatch.setattr(demo, "Demo", lambda *a, **k: pytest.fail("the demo ran before checking --out"))
    assert demo.main(["--backend", "numpy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconv demo: --out: ") and repr(str(out)) in err and err.count("\n") == 1
    assert (" exists and is not a folder" if where == "a file" else "cannot create the folder") in err


def test_out_is_created_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "new" / "folder"

    class Started(Exception):
        pass

    def first_work(*args, **kwargs):
        assert out.is_dir()
        raise Started                      # stop the demo here

    monkeypatch.setattr(demo, "Demo", first_work)
    with pytest.raises(Started):
        demo.main(["--backend", "numpy", "--out", str(out)])


@pytest.mark.parametrize("dpi", ["0", "-1", "9", "1201", "100000", "eighty"])
def test_dpi_outside_its_range_is_a_usage_error(capsys, dpi):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(["--dpi", dpi])
    assert exc.value.code == 2
    assert f"argument --dpi: expected an integer in [10, 1200], got {dpi!r}" in capsys.readouterr().err


def test_pad_full_matches_the_transposed_conv_shape_rule():
    dy = np.ones((1, 4, 3, 2), np.float32)
    padded = demo.pad_full(dy, 2, (3, 3), (9, 8))
    # a VALID stride-1 conv with a 3x3 filter must give back the 9x8 input
    assert padded.shape[1:3] == (9 + 2, 8 + 2)
    assert padded[0, 2, 2, 0] == 1 and padded[0, 3, 2, 0] == 0     # zeros inserted between rows


def test_gabor_bank_is_zero_mean_unit_norm():
    bank = demo.gabor_bank(n_orient=4, size=9)
    assert bank.shape == (9, 9, 1, 4)
    assert np.allclose(bank.sum(axis=(0, 1, 2)), 0, atol=1e-5)
    assert np.allclose(np.sqrt((bank.astype(np.float64) ** 2).sum(axis=(0, 1, 2))), 1, atol=1e-5)


@pytest.mark.gpu
def test_demo_on_the_gpu_agrees_with_the_numpy_backend(tmp_path):
    assert demo.main(["--backend", "cuda", "--out", str(tmp_path), "--dpi", "40"]) == 0
    checks = json.loads((tmp_path / "checks.json").read_text())["checks"]
    assert any(c["reference"] == "numpy backend" for c in checks)
