"""Plans, batches, detached runs and host crashes, against real engines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lrun_support import container_spans, engine_urls, wait_for_running, write_tests

SLEEPY = """
    import time

    def test_sleepy():
        time.sleep({seconds})
"""


def _plan(project: Path, body: str) -> Path:
    path = project / "plan.toml"
    path.write_text(textwrap.dedent(body))
    return path


def _runs(state_dir: Path) -> dict[str, dict[str, object]]:
    runs = [json.loads(p.read_text()) for p in (state_dir / "runs").glob("*/run.json")]
    return {str(r["plan_entry"] or r["test_dir"]): r for r in runs}


def _lives(since: float) -> dict[str, tuple[float, float]]:
    """Each run's container, start to exit, as the engines saw it (a run's record adds its
    read-back, during which the next run on its machine may start)."""
    return {
        run: span for url in engine_urls() for run, span in container_spans(url, since, time.time()).items()
    }


def _overlap(lives: dict[str, tuple[float, float]], a: dict[str, object], b: dict[str, object]) -> bool:
    (start_a, end_a), (start_b, end_b) = lives[str(a["id"])], lives[str(b["id"])]
    return start_a < end_b and start_b < end_a


def test_plan_runs_machines_in_parallel_and_serializes_one_machine(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    for name in ("a", "b", "c"):
        write_tests(project, name, SLEEPY.format(seconds=2))
    _plan(
        project,
        """
        [[entry]]
        name = "a1"
        dir = "a"
        machine = "m1"

        [[entry]]
        name = "b2"
        dir = "b"
        machine = "m2"

        [[entry]]
        name = "c1"
        dir = "c"
        machine = "m1"
        """,
    )
    began = time.time()
    result = pytester.runpytest_subprocess("--lrun-plan=plan.toml")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*dispatching a (a1) [[]batch b-*: 0 done, 1 running, 2 queued[]]*",
            "entry*dir*machine*",
            "a1*a*m1*completed*",
        ]
    )
    result.stdout.fnmatch_lines(["batch b-*: completed*"])
    runs, lives = _runs(state_dir), _lives(began)
    assert _overlap(lives, runs["a1"], runs["b2"]), "entries on two machines did not run in parallel"
    assert not _overlap(lives, runs["a1"], runs["c1"]), "entries on one machine overlapped"
    batch_ids = {r["batch_id"] for r in runs.values()}
    assert len(batch_ids) == 1 and None not in batch_ids


def test_matrix_expands_to_dir_at_machine(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    _plan(project, '[matrix]\ndirs = ["suite"]\nmachines = ["m1", "m2"]\n')
    result = pytester.runpytest_subprocess("--lrun-plan=plan.toml", "-rA")
    result.assert_outcomes(passed=2)
    # Live reports come in the order the runs finish: either machine may be first.
    lines = set(result.outlines)
    assert {"PASSED suite/test_suite.py::test_ok@m1", "PASSED suite/test_suite.py::test_ok@m2"} <= lines


def test_ci_jobs_join_one_batch(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    write_tests(project, "one", "def test_one():\n    pass\n")
    write_tests(project, "two", "def test_two():\n    pass\n")
    _plan(project, '[matrix]\ndirs = ["one", "two"]\nmachines = ["m1"]\n')
    for entry in ("one@m1", "two@m1"):
        result = pytester.runpytest_subprocess(
            "--lrun-plan=plan.toml", f"--lrun-plan-entry={entry}", "--lrun-batch-id=ci-42"
        )
        result.assert_outcomes(passed=1)
    batch = json.loads((state_dir / "batches" / "ci-42.json").read_text())
    assert sorted(batch["entries"]) == ["one@m1", "two@m1"]
    assert batch["status"] == "completed"


def test_detach_then_attach(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    write_tests(project, "slow", SLEEPY.format(seconds=3))
    detached = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-detach", "slow")
    detached.assert_outcomes(skipped=1)
    (run_id,) = [r["id"] for r in _runs(state_dir).values()]
    detached.stdout.fnmatch_lines([f"*detached: attach with pytest --lrun-attach={run_id}*"])
    assert _runs(state_dir)[str(project / "slow")]["status"] == "running"
    attached = pytester.runpytest_subprocess(f"--lrun-attach={run_id}", "-rA")
    attached.assert_outcomes(passed=1)
    attached.stdout.fnmatch_lines(["*slow*m1*completed*reused*"])
    # The log was read back from the engine: nothing was lost while no host watched.
    assert "1 passed" in (state_dir / "runs" / str(run_id) / "logs.txt").read_text()


def test_host_killed_mid_run_loses_nothing(project: Path, state_dir: Path) -> None:
    write_tests(project, "slow", SLEEPY.format(seconds=4))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lrun-machine=m1", "slow"]
    first = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_running(state_dir)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stdout
    assert "1 passed" in second.stdout
    (run,) = _runs(state_dir).values()
    assert run["status"] == "completed" and run["exit_code"] == 0


def test_log_spool_keeps_the_tail(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    (project / "noisy").mkdir()
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1",
        "--lrun-image=lrun-busybox:latest",
        "--lrun-command=sh -c 'seq 1 20000; echo the-end'",
        "--lrun-log-max-bytes=4096",
        "noisy",
    )
    result.assert_outcomes(passed=1)
    (log,) = (state_dir / "runs").glob("*/logs.txt")
    text = log.read_text()
    assert len(text.encode()) <= 4096 + 200
    assert text.startswith("[lrun: ") and "earlier output dropped" in text.splitlines()[0]
    assert text.rstrip().endswith("the-end")
