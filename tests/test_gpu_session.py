"""benchmarks/gpu_session.py: its bench slices are valid, non-empty and disjoint, a step's budget is split by
share, a command inside its limit runs to its end, and a step that runs past its time limit still stops its
command gracefully and archives what it wrote (checked with stand-in commands: the real steps need a GPU)."""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest
from conftest import load_benchmark_script

from gpuconv.bench import cases, cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def session():
    yield load_benchmark_script("gpu_session")
    sys.modules.pop("gpu_session", None)


def _bench_args(argv: tuple[str, ...], work: Path):
    """The parsed arguments of one `gpuconv bench` command of a step, its `{work}` placeholder replaced by
    `work` (parsing creates the --out folder: not in the checkout)."""
    bench_argv = list(argv[argv.index("bench") + 1:])
    assert bench_argv[bench_argv.index("--out") + 1] == "{work}"
    return cli.parse_args([str(work) if a == "{work}" else a for a in bench_argv])


def _bench_cases(argv: tuple[str, ...], work: Path) -> list[str]:
    """The cases one `gpuconv bench` command of a step would run on a GPU (GPU batch defaults: 32, 2)."""
    args = _bench_args(argv, work)
    assert args.name
    built = cases.build_cases(args.layers, args.ops or list(cases.ALL_OPS), args.dtypes, batch=32,
                              match=args.match, batch3d=2)
    return [f"{c.layer.name}/{c.op}/{c.dtype}" for c in built]


def test_bench_slices_are_valid_non_empty_and_disjoint(session, tmp_path):
    seen: dict[str, str] = {}
    for step in ("bench1", "bench2", "bench4"):
        for cmd in session.STEPS[step]:
            names = _bench_cases(cmd.argv, tmp_path)
            assert names, f"{step}/{cmd.name} selects no case"
            for n in names:
                assert n not in seen, f"{n} is measured by both {seen[n]} and {cmd.name}"
                seen[n] = cmd.name
    # bench1 holds the targets: every 3x3 ResNet-50 layer's fprop/dgrad/wgrad in float32, every SegNet pool op
    first = {n for n, c in seen.items() if c in {cmd.name for cmd in session.STEPS["bench1"]}}
    want = {f"{c.layer.name}/{c.op}/{c.dtype}" for c in cases.build_cases(["resnet50"], ["fprop", "dgrad", "wgrad"],
                                                                            ["float32"], batch=32)
            if "3x3" in c.layer.name}
    want |= {f"{c.layer.name}/{c.op}/{c.dtype}" for c in cases.build_cases(["segnet"], list(cases.POOL_OPS),
                                                                             ["float32"], batch=32)}
    assert want and want <= first


def test_tensor_core_step_compares_tf32_with_tf32(session, tmp_path):
    """bench3 times gpuconv's opt-in TF32 and 3xTF32 convs against peers with TF32 on as well."""
    modes = set()
    for cmd in session.STEPS["bench3"]:
        args = _bench_args(cmd.argv, tmp_path)
        assert _bench_cases(cmd.argv, tmp_path) and args.ops == ["fprop", "dgrad", "wgrad"]
        assert args.dtypes == ["float32"] and args.tf32
        modes.add(args.precision)
    assert modes == {"tf32", "3xtf32"}


def test_tests_step_runs_the_gpu_tier(session):
    argv = next(c.argv for c in session.STEPS["tests"] if c.name == "pytest_gpu")
    assert argv[1:3] == ("-m", "pytest") and ("-m", "gpu") in zip(argv[3:], argv[4:])
    assert any(a.startswith("--junitxml={work}") for a in argv)


_SLOW = ("import signal, sys, time\n"
         "def stop(*_):\n    print('report written after SIGINT', flush=True); sys.exit(130)\n"
         "signal.signal(signal.SIGINT, stop)\nprint('started', flush=True)\ntime.sleep(60)\n")


def test_a_step_past_its_budget_interrupts_and_still_archives(session, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "ARCHIVE_RESERVE_S", 0)
    commands = (session.Command("quick", (sys.executable, "-c", "print('fine')"), share=0.1),
                session.Command("slow", (sys.executable, "-c", _SLOW)),
                session.Command("missing", ("gpuconv-no-such-program-xyz",)))
    outcomes = session.run_step("bench1", tmp_path, budget_s=8.0, commands=commands)
    by = {o.name: o for o in outcomes}
    assert by["quick"].returncode == 0 and not by["quick"].interrupted
    assert by["slow"].interrupted and by["slow"].returncode == 130
    assert "report written after SIGINT" in by["slow"].tail
    assert by["missing"].returncode is None and "not run" in by["missing"].tail
    [archive] = tmp_path.glob("gpu_bench1_*.tgz")
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        assert {"quick.log", "slow.log", "summary.txt"} <= set(members)
        text = tar.extractfile(members["summary.txt"]).read().decode()
    assert "slow exit 130 (stopped at its time limit)" in text and "fine" in text


def test_a_command_ignoring_sigint_is_killed(session, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "GRACE_S", 1)
    stubborn = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('go', flush=True)\n"
                "time.sleep(60)\n")
    outcome = session.run_command(session.Command("stubborn", (sys.executable, "-c", stubborn)), tmp_path, 2.0,
                                  env=None)
    assert outcome.interrupted and outcome.returncode == -9 and outcome.seconds < 30


def test_budget_below_a_minute_is_refused(session, capsys, monkeypatch):
    # a budget check that let this through must not run the real step (the whole GPU test suite)
    monkeypatch.setattr(session, "run_step", lambda *a, **k: pytest.fail("ran a step on a refused budget"))
    with pytest.raises(SystemExit):
        session.main(["tests", "--budget", "10"])
    assert "--budget: expected at least 60 seconds, got 10.0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# how a step's budget is split, and a command inside its limit runs to its end
# ---------------------------------------------------------------------------------------------------------
def test_step_budget_is_split_by_share_of_what_is_left(session, tmp_path, monkeypatch):
    limits = {}

    def fake_run(cmd, work, limit_s, env):
        limits[cmd.name] = limit_s
        return session.Outcome(cmd.name, 0, 0.0, False, "")
    monkeypatch.setattr(session, "run_command", fake_run)
    monkeypatch.setattr(session, "ARCHIVE_RESERVE_S", 0)
    monkeypatch.setattr(session, "GRACE_S", 20)
    cmds = (session.Command("a", ("true",), share=0.5), session.Command("b", ("true",)),
            session.Command("c", ("true",)))
    session.run_step("bench1", tmp_path, 250.0, cmds)
    # shares 0.5 : 1 : 1 (default 1); each but the last keeps GRACE_S back; the commands here take no time
    assert limits == pytest.approx({"a": 250 * 0.5 / 2.5 - 20, "b": 250 / 2 - 20, "c": 250.0}, abs=0.5)
    session.run_step("bench1", tmp_path, 30.0, cmds)
    assert limits["a"] == 5.0                                 # 30 x 0.5 / 2.5 - 20 < 0: the 5 s floor


def test_a_command_inside_its_limit_is_not_interrupted(session, tmp_path):
    cmd = session.Command("sleeper", (sys.executable, "-c", "import time; time.sleep(1.5); print('done')"))
    outcome = session.run_command(cmd, tmp_path, 60.0, env=None)
    assert outcome.returncode == 0 and not outcome.interrupted and "done" in outcome.tail


def test_a_budget_of_exactly_a_minute_is_accepted(session, monkeypatch):
    monkeypatch.setattr(session, "run_step", lambda step, out, budget_s: [])
    assert session.main(["tests", "--budget", "60"]) == 0
