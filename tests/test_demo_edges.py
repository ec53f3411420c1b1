"""The demo's own verdicts at their edges: the kernel-backend-vs-NumPy comparison, tolerances, pass/FAIL and the
exit status, the report's counts, --dpi's accepted ends, the backend choice; info's version lookup; and the
arithmetic of benchmarks/numpy_peak_memory.py (a mutation check of these files found them unpinned)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import time

import numpy as np
import pytest
from conftest import load_benchmark_script

import gpuconv
from gpuconv import demo

# ---------------------------------------------------------------------------------------------------------
# one full run on the NumPy backend: every claim is checked, exact claims exactly
# ---------------------------------------------------------------------------------------------------------
CLAIMS = {   # the claims of docs/demo.md's table, as the demo names its checks
    "grad": ["d_x 3 backprop_input == 1 autodiff", "d_x 2 manual conv2d == 1 autodiff",
             "d_x 4 conv2d_transpose == 3 backprop_input", "d_w 3 backprop_filter == 1 autodiff",
             "d_w 2 manual conv2d == 1 autodiff"],
    "seed002": ["output == the seed's 5x5 table", "gather with rot180(f) == transpose",
                "gather with unrotated f gives 603 at [0,0]", "output_shape 6x6 is also legal",
                "output_shape 7x7 is refused, naming [5, 6]"],
    "seed004": ["conv2d VALID == [[-2,-2],[-2,-2]]", "conv2d_transpose VALID == the seed's 4x4",
                "conv2d SAME == [[-2,-2],[-2,-2]]", "conv2d_transpose SAME == the seed's 4x4",
                "max_pool2d == [[1,5],[1,5]] / [[3,7],[3,7]]", "max_pool_with_argmax values",
                "argmax == (y*W + x)*C + c, ties to the first cell", "max_unpool == zeros + maxima at argmax",
                "the seed's scatter_nd recipe gives the same",
                "5x5: max_unpool puts every maximum back on its own cell",
                "5x5: max_pool2d(max_unpool(...)) == pooled", "avg_pool2d == window means",
                "avg_unpool fills each window with its mean"],
    "seed003": ["shapes (10,2,7,7) -> (10,1,4,4) -> (10,2,7,7) as in the seed",
                "conv3d(ones, ones) == C x in-bounds tap counts", "max_pool3d == reshape-max",
                "<conv3d_transpose(p), r> == <p, conv3d(r)> (relative)"],
    "photo": ["conv2d == sliding-window einsum", "pooled == reshape-max", "relu[argmax] == pooled",
              "max_pool2d(unpooled) == pooled", "max_unpool_grad(unpooled, argmax) == pooled",
              "<conv2d(img), u> == <img, conv2d_transpose(u)> (relative)"],
}
FLOAT_REFERENCES = {"Jacobian VJP", "NumPy einsum", "adjoint identity"}   # every other comparison is exact


@pytest.fixture(scope="module")
def numpy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = demo.main(["--backend", "numpy", "--out", str(out), "--dpi", "10"])
    return status, out, json.loads((out / "checks.json").read_text()), text.getvalue()


def test_every_claim_is_checked_and_exact_claims_exactly(numpy_run):
    status, out, report, _ = numpy_run
    assert status == 0
    got = {}
    for c in report["checks"]:
        got.setdefault(c["section"], []).append(c["name"])
    assert got == CLAIMS
    for c in report["checks"]:
        assert c["passed"], c
        if c["tol"] is None:                                   # a yes/no check
            continue
        if c["reference"] not in FLOAT_REFERENCES:
            assert c["tol"] == 0.0, c
        elif "(relative)" in c["name"]:
            assert 0 < c["tol"] <= 1e-5, c
        else:
            # 1e-5 x max(1, max|ref|), with |ref| bounded independently: x, w, d_out in (-1, 1):
            # a d_x cell sums at most 2x2 output positions x 4 out channels = 16 products; a d_w tap sums
            # N x P x Q = 2 x 4 x 3 = 24; a Gabor response of a [0, 1] image with a unit-norm 11x11 filter
            # is at most sqrt(121) = 11 (Cauchy-Schwarz)
            bound = {"d_x": 16, "d_w": 24}.get(c["name"][:3], 11)
            assert 1e-5 <= c["tol"] <= 1e-5 * bound, c
    assert report["picture"] == str(out / "demo.png") and (out / "demo.png").is_file()


def test_the_printed_count_of_maxima_the_seed_recipe_misplaces(numpy_run):
    """5x5x2 (SAME 2x2/2 -> 3x3): TF's argmax is (y*5 + x)*2 + c; the recipe decodes it with width 6.
    A maximum in input row 0 decodes correctly ((2x + c) < 12); in row y >= 1, 10y + 2x + c lands on another
    cell (row 1: 10 + 2x + c is row 0 col 5 for x = 0, else row 1 col x - 1). So: every maximum of the pooled
    rows 1 and 2 (2 x 3 x 2 = 12), plus those of pooled row 0 that sit in input row 1."""
    rng = np.random.default_rng(4)
    x5 = rng.permutation(5 * 5 * 2).astype(np.float32).reshape(1, 5, 5, 2)   # the demo's tie-free input
    top = x5[0, :2, :4].reshape(2, 2, 2, 2)             # pooled row 0, first two windows: (y, wx, x, c)
    in_row1 = int(np.sum(top[1].max(axis=1) > top[0].max(axis=1)))
    in_row1 += int(np.sum(x5[0, 1, 4] > x5[0, 0, 4]))   # the third window of row 0 is 2x1 (SAME pads a column)
    _, _, _, text = numpy_run
    assert f"puts {12 + in_row1} of 18 maxima on the wrong cell" in text


def test_the_photo_timings_list_the_photo_calls(numpy_run):
    _, _, report, text = numpy_run
    listed = text.split("  photo calls:\n", 1)[1].split("\n\n", 1)[0]
    assert "conv2d (Gabor bank)" in listed and "max_unpool_grad" in listed
    assert "jacobian" not in listed and "transpose 5x5" not in listed
    sections = {t["section"] for t in report["timings"]}
    assert sections == set(CLAIMS)


def test_an_output_shape_that_is_wrongly_accepted_fails_the_seed002_section(monkeypatch):
    real = gpuconv.conv2d_transpose

    def lenient(x, f, output_shape, *args, **kwargs):     # accepts 7x7, which TF's shape rule refuses
        if tuple(output_shape) == (1, 7, 7, 1):
            return np.zeros(output_shape, np.float32)
        return real(x, f, output_shape, *args, **kwargs)

    monkeypatch.setattr(gpuconv, "conv2d_transpose", lenient)
    d = demo.Demo("numpy", out=io.StringIO())
    demo.section_transpose(d)
    assert [(c.name, c.passed) for c in d.checks if "7x7" in c.name] == [("output_shape 7x7 is refused", False)]


# ---------------------------------------------------------------------------------------------------------
# Demo.call on a kernel backend: every result is also checked against the NumPy backend
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_op(monkeypatch):
    """gpuconv.fake_op(want, delta): `want` on the NumPy backend, `want + delta` elsewhere; records backends.

    No kernel runs: the demo only needs the backend name (use_backend/get_backend) to tell the two calls apart.
    """
    seen = []

    def op(want, delta):
        seen.append(gpuconv.get_backend())
        if gpuconv.get_backend() == "numpy":
            return want.copy()
        return (want + delta).astype(want.dtype)

    monkeypatch.setattr(gpuconv, "fake_op", op, raising=False)
    return seen


def _one_check(want, delta):
    d = demo.Demo("emulator")
    d.section = "sec"
    got = d.call("lbl", "fake_op", np.asarray(want), delta)
    (c,) = d.checks
    return d, c, got


def test_a_kernel_backend_call_is_checked_against_the_numpy_backend(fake_op):
    t0 = time.perf_counter()
    d, c, got = _one_check(np.array([100.0, -3.0], np.float32), np.float32(0))
    outer = time.perf_counter() - t0
    assert all(0 <= t.seconds <= outer for t in d.timings)   # wall times of the two calls, nothing else
    assert fake_op == ["emulator", "numpy"]                       # the op itself, then the oracle
    assert (c.section, c.name, c.reference) == ("sec", "lbl: emulator vs numpy backend", "numpy backend")
    assert c.passed and c.error == 0.0
    assert [(t.label, t.backend) for t in d.timings] == [("lbl", "emulator"), ("lbl", "numpy")]
    # on the NumPy backend itself there is no second call and no comparison
    fake_op.clear()
    n = demo.Demo("numpy")
    n.call("lbl", "fake_op", np.ones(2, np.float32), np.float32(1))
    assert fake_op == ["numpy"] and n.checks == [] and [t.backend for t in n.timings] == ["numpy"]


def test_a_gpu_call_is_timed_after_synchronising(monkeypatch):
    """On the GPU the kernels run asynchronously: the call's timing must include the stream's synchronisation."""
    import types
    waits = []

    class Stream:
        def synchronize(self):
            waits.append(1)
            time.sleep(0.05)

    fake_cupy = types.SimpleNamespace(asarray=np.asarray, cuda=types.SimpleNamespace(get_current_stream=Stream))
    monkeypatch.setattr(gpuconv, "fake_op", lambda x: x, raising=False)
    d = demo.Demo("numpy")
    d.xp = fake_cupy                        # what Demo("cuda") holds, minus the GPU
    t0 = time.perf_counter()
    d.call("lbl", "fake_op", np.ones(3, np.float32))
    outer = time.perf_counter() - t0
    assert waits == [1]
    assert 0.05 <= d.timings[0].seconds <= outer           # the wait is inside, the wall time of the call


@pytest.mark.parametrize("want,delta,tol,passed", [
    # float32: 2e-5 x max(1, max|ref|). max|ref| = 100 -> 2e-3; 1.5e-3 passes, 2.5e-3 fails
    ([100.0, -3.0], [1.5e-3, 0.0], 2e-3, True),
    ([100.0, -3.0], [2.5e-3, 0.0], 2e-3, False),
    # the largest magnitude counts, negative or not: |-100| -> tol 2e-3 again
    ([-100.0, 3.0], [0.0, 1.5e-3], 2e-3, True),
    # below 1 the scale is 1, not max|ref|: 0.5 -> tol 2e-5 (not 1e-5); 1.5e-5 passes, 2.5e-5 fails
    ([0.5, -0.25], [1.5e-5, 0.0], 2e-5, True),
    ([0.5, -0.25], [2.5e-5, 0.0], 2e-5, False),
])
def test_float32_tolerance_is_relative_to_the_largest_reference_value(fake_op, want, delta, tol, passed):
    _, c, _ = _one_check(np.array(want, np.float32), np.array(delta, np.float32))
    assert c.tol == pytest.approx(tol, rel=1e-12)
    assert c.passed is passed


def test_float16_float64_and_empty_tolerances(fake_op):
    # float16: 2e-3 x max(1, 10) = 0.02; float16 spacing at 10 is 2^-7 = 0.0078125: 2 ulps pass, 3 fail
    ulp = np.float16(2.0 ** -7)
    for k, passed in ((2, True), (3, False)):
        _, c, _ = _one_check(np.array([10.0, 1.0], np.float16), np.array([k * ulp, 0], np.float16))
        assert c.tol == pytest.approx(0.02, rel=1e-12) and c.passed is passed
    # float64: 1e-12 x max(1, 1000) = 1e-9
    _, c, _ = _one_check(np.array([1000.0]), np.array([5e-10]))
    assert c.tol == pytest.approx(1e-9, rel=1e-12) and c.passed
    _, c, _ = _one_check(np.array([1000.0]), np.array([2e-9]))
    assert not c.passed
    # nothing to compare: scale 1, tol 2e-5, a pass
    _, c, _ = _one_check(np.zeros((0, 3), np.float32), np.float32(0))
    assert c.tol == pytest.approx(2e-5, rel=1e-12) and c.passed and c.error == 0.0


def test_integer_results_such_as_argmax_must_match_exactly(fake_op):
    _, c, _ = _one_check(np.array([8, 12, 24, 28], np.int64), np.int64(0))
    assert c.tol == 0.0 and c.passed
    _, c, _ = _one_check(np.array([8, 12, 24, 28], np.int64), np.array([0, 1, 0, 0], np.int64))
    assert c.tol == 0.0 and not c.passed and c.error == 1.0


def test_each_part_of_a_tuple_result_gets_its_own_check(monkeypatch):
    vals = np.array([[4.0, 5.0]], np.float32)
    idx = np.array([[9, 13]], np.int64)

    def pool(x):
        if gpuconv.get_backend() == "numpy":
            return vals, idx
        return vals, idx + 1                       # the kernel backend's argmax is off by one

    monkeypatch.setattr(gpuconv, "fake_pool", pool, raising=False)
    d = demo.Demo("emulator")
    got = d.call("argmax", "fake_pool", np.zeros(1, np.float32))
    assert isinstance(got, tuple) and np.array_equal(got[1], idx + 1)      # the backend's own result
    assert [(c.name, c.passed) for c in d.checks] == [("argmax[0]: emulator vs numpy backend", True),
                                                      ("argmax[1]: emulator vs numpy backend", False)]


# ---------------------------------------------------------------------------------------------------------
# a check's verdict, the error it reports, the report and the exit status
# ---------------------------------------------------------------------------------------------------------
def test_a_check_passes_at_its_tolerance_and_never_on_a_missing_or_non_finite_error():
    assert demo.Check("s", "n", "r", error=1e-3, tol=1e-3).passed            # error == tol is a pass
    assert not demo.Check("s", "n", "r", error=1.0000001e-3, tol=1e-3).passed
    assert demo.Check("s", "n", "r", error=0.0, tol=0.0).passed
    for error in (None, math.nan, math.inf):
        assert not demo.Check("s", "n", "r", error=error, tol=math.inf).passed
    assert not demo.Check("s", "n", "r", error=0.0, tol=1.0, ok=False).passed   # a yes/no outcome decides
    assert demo.Check("s", "n", "r", error=5.0, tol=1.0, ok=True).passed


def test_max_abs_error_in_float64_and_on_shape_mismatches():
    # int8 127 vs -128 differ by 255 (in int8 arithmetic the difference would wrap to -1)
    assert demo.max_abs_error(np.array([127], np.int8), np.array([-128], np.int8)) == 255.0
    assert demo.max_abs_error(np.array([1.0, -2.0]), np.array([1.5, 2.0])) == 4.0
    # one element (the demo's "603 at [0,0]" check compares scalars): 603 - 67 = 536
    assert demo.max_abs_error(np.float32(603.0), 67.0) == 536.0
    assert demo.max_abs_error(np.array([[603.0]]), np.array([[67.0]])) == 536.0
    # shapes that broadcast are still a mismatch: inf, never a number
    assert demo.max_abs_error(np.zeros((2, 1)), np.zeros(2)) == math.inf
    assert demo.max_abs_error(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0


def test_a_shape_mismatch_fails_its_check_and_says_why():
    d = demo.Demo("numpy")
    c = d.check("n", np.zeros((1, 2)), np.zeros((2,)), math.inf, "r")
    assert not c.passed and c.detail == "shape (1, 2) != (2,)"
    c = d.check("n", np.zeros(2), np.ones(2), 1.0, "r")
    assert c.passed and c.detail == ""


def _demo_with(checks, monkeypatch, tmp_path):
    """Runs demo.main with the sections replaced by one that records `checks` (name -> passed)."""
    def section(d):
        d.begin("fake", "fake")
        for name, ok in checks:
            if ok is None:
                d.check(name, np.zeros(2), np.zeros(2), 0.5, "ref")
            else:
                d.check_true(name, ok, "ref", "why" if not ok else "")

    monkeypatch.setattr(demo, "SECTIONS", (section,))
    monkeypatch.setattr(demo, "section_photo", lambda *a, **k: None)
    return demo.main(["--backend", "numpy", "--out", str(tmp_path)])


def test_exit_status_and_the_summary_line(monkeypatch, tmp_path, capsys):
    # 3 checks, 1 failing: exit 1, "2 of 3 ... 1 FAILED", the failing row shows its detail
    assert _demo_with([("a", None), ("b", True), ("c", False)], monkeypatch, tmp_path) == 1
    out = capsys.readouterr().out
    assert "2 of 3 checks passed on backend 'numpy'; 1 FAILED" in out
    rows = [line for line in out.splitlines() if line.startswith("  fake ")]
    assert len(rows) == 3
    assert rows[0].split()[-3:] == ["0", "0.5", "pass"]                 # error 0, tol 0.5
    assert rows[1].split()[-3:] == ["-", "-", "pass"]                   # a yes/no check has neither
    assert rows[2].endswith("FAIL  (why)")
    report = json.loads((tmp_path / "checks.json").read_text())
    assert [(c["name"], c["tol"], c["max_abs_error"], c["passed"]) for c in report["checks"]] == [
        ("a", 0.5, 0.0, True), ("b", None, None, True), ("c", None, None, False)]
    # all pass: exit 0 and no FAILED
    assert _demo_with([("a", None), ("b", True)], monkeypatch, tmp_path) == 0
    out = capsys.readouterr().out
    assert "2 of 2 checks passed on backend 'numpy'" in out and "FAIL" not in out


def test_the_picture_path_is_recorded(monkeypatch, tmp_path):
    def section(d):
        d.begin("fake", "fake")
        d.check_true("a", True, "ref")

    monkeypatch.setattr(demo, "SECTIONS", (section,))
    monkeypatch.setattr(demo, "section_photo", lambda d, image, out, dpi: out / "demo.png")
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "checks.json").read_text())["picture"] == str(tmp_path / "demo.png")


def test_checks_json_is_strict_json_when_an_error_is_infinite_or_nan(monkeypatch, tmp_path):
    def section(d):
        d.begin("fake", "fake")
        d.check("shapes differ", np.zeros(3), np.zeros(4), 0.0, "ref")            # max_abs_error inf
        d.check("nan", np.array([np.nan]), np.array([1.0]), 0.0, "ref")           # max_abs_error nan

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    monkeypatch.setattr(demo, "SECTIONS", (section,))
    monkeypatch.setattr(demo, "section_photo", lambda d, image, out, dpi: None)
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 1
    checks = json.loads((tmp_path / "checks.json").read_text(), parse_constant=refuse)["checks"]
    assert [(c["max_abs_error"], c["passed"]) for c in checks] == [("inf", False), ("nan", False)]


def test_a_photo_section_that_raises_fails_the_demo(monkeypatch, tmp_path, capsys):
    def section(d):
        d.begin("fake", "fake")
        d.check_true("a", True, "ref")

    def photo(d, *args):
        d.begin("photo", "photo")
        raise OSError("cannot decode image")

    monkeypatch.setattr(demo, "SECTIONS", (section,))
    monkeypatch.setattr(demo, "section_photo", photo)
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 1
    assert "section stopped: OSError: cannot decode image" in capsys.readouterr().out
    (failed,) = [c for c in json.loads((tmp_path / "checks.json").read_text())["checks"] if not c["passed"]]
    assert (failed["section"], failed["name"]) == ("photo", "section ran to the end")


def test_a_demo_that_checked_nothing_does_not_pass(monkeypatch, tmp_path, capsys):
    assert _demo_with([], monkeypatch, tmp_path) == 1
    assert "0 of 0 checks passed" in capsys.readouterr().out


def test_a_kernel_backend_run_says_it_compares_with_numpy(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "backend_choice", lambda requested: ("emulator", "requested"))
    assert _demo_with([("a", True)], monkeypatch, tmp_path) == 0
    assert "every op result is also compared with the NumPy backend" in capsys.readouterr().out
    monkeypatch.setattr(demo, "backend_choice", lambda requested: ("numpy", "requested"))
    assert _demo_with([("a", True)], monkeypatch, tmp_path) == 0
    assert "compared with the NumPy backend" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# arguments and the backend choice
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dpi", [10, 64, 1200])            # both ends of 10..1200 are accepted
def test_dpi_inside_its_range_is_used(dpi):
    assert demo.parse_args(["--dpi", str(dpi)]).dpi == dpi


def test_missing_image_says_so(tmp_path, capsys):
    assert demo.main(["--backend", "numpy", "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"gpuconv demo: no image at {tmp_path / 'nope.png'}\n"


def test_an_image_that_cannot_be_read_is_a_usage_error_before_any_work(tmp_path, monkeypatch, capsys):
    """It ran the other sections and then failed the photo one: "27 of 28 checks passed", exit 1."""
    notimage = tmp_path / "notes.png"
    notimage.write_text("not a picture")
    monkeypatch.setattr(demo, "Demo", lambda *a, **k: pytest.fail("the demo ran before reading the image"))
    assert demo.main(["--backend", "numpy", "--image", str(notimage), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuconv demo: --image {notimage}: cannot read it (") and err.count("\n") == 1


def test_an_out_folder_that_cannot_be_written_is_a_usage_error(tmp_path, monkeypatch, capsys):
    # as root every folder is writable: os.access is what the demo asks, so it stands in for a read-only one
    monkeypatch.setattr(demo.os, "access", lambda path, mode: False)
    monkeypatch.setattr(demo, "Demo", lambda *a, **k: pytest.fail("the demo ran before checking --out"))
    assert demo.main(["--backend", "numpy", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"gpuconv demo: --out: cannot write into the folder {str(tmp_path)!r}\n"


def test_backend_choice(monkeypatch):
    from gpuconv import backend
    monkeypatch.setattr(backend, "available_backends",
                        lambda: {"numpy": "yes", "cuda": "yes", "emulator": "no g++"})
    assert demo.backend_choice("auto") == ("cuda", "a GPU is available")
    assert demo.backend_choice("numpy") == ("numpy", "requested")
    assert demo.backend_choice("emulator") == (None, "backend 'emulator' cannot run here: no g++")
    monkeypatch.setattr(backend, "available_backends", lambda: {"numpy": "yes", "cuda": "no driver"})
    assert demo.backend_choice("auto") == ("numpy", "no GPU backend here: no driver")

    def broken():
        raise ImportError("not built")
    monkeypatch.setattr(backend, "available_backends", broken)
    assert demo.backend_choice("auto")[0] == "numpy"
    backend_name, reason = demo.backend_choice("cuda")
    assert backend_name is None and "ImportError: not built" in reason


# ---------------------------------------------------------------------------------------------------------
# info: the first installed distribution of a list is reported
# ---------------------------------------------------------------------------------------------------------
def test_first_version_takes_the_first_installed(monkeypatch):
    import importlib
    import importlib.metadata
    info_module = importlib.import_module("gpuconv.info")
    assert info_module._version("numpy") == importlib.metadata.distribution("numpy").metadata["Version"]
    assert info_module._version("no-such-dist-x") is None
    versions = {"b": "2.0", "c": "3.0"}
    monkeypatch.setattr(info_module, "_version", versions.get)
    assert info_module._first_version(("a", "b", "c")) == "2.0"
    assert info_module._first_version(("a", "z")) is None
    monkeypatch.setattr(info_module, "_version", {"cupy-cuda12x": "13.6.0", "cupy": "1.0"}.get)
    assert info_module.info()["cupy"] == "13.6.0"


# ---------------------------------------------------------------------------------------------------------
# benchmarks/numpy_peak_memory.py
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def peak_memory():
    return load_benchmark_script("numpy_peak_memory")


def test_peak_memory_table_arithmetic(peak_memory, monkeypatch, tmp_path):
    mib = 2**20
    # case a: RSS grows 1000 MiB (1,024,000 KiB) during the call, the output is 1 MiB -> scratch 999 MiB;
    #         inputs 5 MiB (large enough that a KiB counted as 1023 bytes would show: 999.02 -> 999)
    # case b: grows 1 MiB but returns 2 MiB (pages not all touched) -> scratch -1 MiB, shown as 0
    fake = {"a": {"before_kib": 1000, "peak_kib": 1000 + 1000 * 1024, "inputs_bytes": 5 * mib,
                  "output_bytes": mib},
            "b": {"before_kib": 500, "peak_kib": 500 + 1024, "inputs_bytes": 4 * mib, "output_bytes": 2 * mib}}
    monkeypatch.setattr(peak_memory, "CASES", {"a": ("fprop", 1, 1, 1), "b": ("unpool", 2, 2, 2)})
    monkeypatch.setattr(peak_memory, "measure", lambda op, xs, ws, s: fake["a" if op == "fprop" else "b"])
    out = tmp_path / "new" / "folder" / "peak.md"
    monkeypatch.setattr("sys.argv", ["numpy_peak_memory.py", "--out", str(out)])
    for _ in range(2):                      # a new folder, then a re-run into the existing one
        assert peak_memory.main() == 0
        rows = [line for line in out.read_text().splitlines() if line.startswith(("| a ", "| b "))]
        assert rows == ["| a | 5 | 1 | 1000 | 999 |", "| b | 4 | 2 | 1 | 0 |"]


def test_peak_memory_child_counts_each_ops_own_tensors(peak_memory):
    f4 = 4
    # dgrad, stride 2: x (2,4,4,3) -> y (2,2,2,2); inputs y + w = (16 + 54) x 4 bytes, output dx = 96 x 4
    r = peak_memory.measure("dgrad", (2, 4, 4, 3), (3, 3, 3, 2), 2)
    assert (r["inputs_bytes"], r["output_bytes"]) == ((16 + 54) * f4, 96 * f4)
    # wgrad, stride 2: inputs x + y = (96 + 16) x 4, output dw = 54 x 4
    r = peak_memory.measure("wgrad", (2, 4, 4, 3), (3, 3, 3, 2), 2)
    assert (r["inputs_bytes"], r["output_bytes"]) == ((96 + 16) * f4, 54 * f4)
    # pool_argmax 2x2/2 VALID on (1,4,4,2): input 32 x 4; outputs 8 float32 values + 8 int64 argmax
    r = peak_memory.measure("pool_argmax", (1, 4, 4, 2), 2, 2)
    assert (r["inputs_bytes"], r["output_bytes"]) == (32 * f4, 8 * 4 + 8 * 8)
    # unpool of (1,512,512,16): inputs pooled 2^20 float32 + argmax 2^20 int64, output 2^22 float32 (16 MiB),
    # freshly written by the call: the peak grows by at least most of it
    r = peak_memory.measure("unpool", (1, 512, 512, 16), 2, 2)
    assert (r["inputs_bytes"], r["output_bytes"]) == (2**20 * 12, 2**22 * 4)
    assert (r["peak_kib"] - r["before_kib"]) * 1024 >= 0.9 * r["output_bytes"]


def test_peak_memory_counts_the_calls_own_temporary_and_nothing_before_it(peak_memory, monkeypatch):
    """The child reads the peak (VmHWM, not the RSS after the call) and resets it just before the call: a call
    that allocates and frees a 64 MiB temporary grows the peak by about 64 MiB, whatever the process touched
    before (here a 160 MiB buffer, freed before the call)."""
    mib = 2**20
    prelude = (
        "import numpy as np, gpuconv as gc\n"
        "_big = np.ones(160 * 2**20 // 8); _big[:] = 2; del _big\n"               # an earlier, higher peak
        "_unpool = gc.max_unpool\n"
        "def _with_temporary(*a, **k):\n"
        "    t = np.ones(64 * 2**20 // 8); t[:] = 3; del t\n"                     # 64 MiB, touched, freed
        "    return _unpool(*a, **k)\n"
        "gc.max_unpool = _with_temporary\n")
    monkeypatch.setattr(peak_memory, "CHILD", prelude + peak_memory.CHILD)
    r = peak_memory.measure("unpool", (1, 8, 8, 4), 2, 2)
    growth = (r["peak_kib"] - r["before_kib"]) * 1024
    assert 60 * mib <= growth <= 100 * mib, growth / mib
