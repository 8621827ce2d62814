"""Idempotency against real engines: reuse, cached results, busy machines, two machines, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lrun_support import lrun_containers, wait_for_running, write_tests

SLOW = """
    import time

    def test_slow():
        time.sleep({seconds})
"""


def _pytest(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _runs(state_dir: Path) -> list[dict[str, object]]:
    return [json.loads((d / "run.json").read_text()) for d in sorted((state_dir / "runs").iterdir())]


def test_two_processes_share_one_run(project: Path, state_dir: Path, engines: list[str]) -> None:
    write_tests(project, "slow", SLOW.format(seconds=3))
    procs = [_pytest(project, "--lrun-machine=m1", "slow") for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = _runs(state_dir)
    assert len(runs) == 1, "a twin run was started"
    run_id = runs[0]["id"]
    assert all(str(run_id) in out and "1 passed" in out for out in outputs)
    assert sorted("created" in out.split("lrun runs")[1] for out in outputs) == [False, True]


def test_cached_result_runs_nothing(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    pytester.runpytest_subprocess("--lrun-machine=m1", "suite").assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "suite", "--lrun-reuse=completed")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["suite*m1*completed*cached*"])
    assert len(_runs(state_dir)) == 1
    # Without reuse, a terminal run is run again.
    pytester.runpytest_subprocess("--lrun-machine=m1", "suite").assert_outcomes(passed=1)
    assert len(_runs(state_dir)) == 2


def test_changed_dir_is_not_cached(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    suite = write_tests(project, "suite", "def test_ok():\n    pass\n")
    pytester.runpytest_subprocess("--lrun-machine=m1", "suite").assert_outcomes(passed=1)
    (suite / "test_more.py").write_text("def test_new():\n    assert False\n")
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "suite", "--lrun-reuse=completed")
    result.assert_outcomes(passed=1, failed=1)
    assert len(_runs(state_dir)) == 2


def test_busy_machine_fails_fast_or_waits(project: Path, state_dir: Path) -> None:
    write_tests(project, "slow", SLOW.format(seconds=4))
    write_tests(project, "other", "def test_ok():\n    pass\n")
    first = _pytest(project, "--lrun-machine=m1", "slow")
    wait_for_running(state_dir)
    busy = _pytest(project, "--lrun-machine=m1", "other").communicate(timeout=60)[0]
    assert "machine_busy" in busy and "1 error" in busy, busy
    waited = _pytest(project, "--lrun-machine=m1", "--lrun-busy-wait=60", "other").communicate(timeout=120)[0]
    assert "1 passed" in waited, waited
    first_out = first.communicate(timeout=60)[0]
    assert first.returncode == 0, first_out


def test_two_machines_in_one_invocation(pytester: pytest.Pytester, project: Path, engines: list[str]) -> None:
    write_tests(project, "one", "def test_one():\n    pass\n")
    write_tests(project, "two", "def test_two():\n    pass\n")
    pytester.makeini("[pytest]\n")  # keep the pyproject's machines, but prove ini twins work below
    result = pytester.runpytest_subprocess("--lrun-machine=m2", "one", "two")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*one*m2*completed*", "*two*m2*completed*"])


def test_ctrl_c_leaves_no_container(project: Path, state_dir: Path, engines: list[str]) -> None:
    write_tests(project, "slow", SLOW.format(seconds=60))
    proc = _pytest(project, "--lrun-machine=m1", "slow")
    run_id = wait_for_running(state_dir)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, out  # pytest's "interrupted"
    (run,) = _runs(state_dir)
    assert run["status"] == "interrupted"
    assert lrun_containers(engines[:1], {run_id}) == []


def test_unreachable_engine_is_a_clear_error(pytester: pytest.Pytester, project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + '\n[tool.lrun.machines.gone]\nhost = "tcp://127.0.0.1:1"\nimage = "x"\n'
    )
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--lrun-machine=gone", "--lrun-connect-timeout=2", "suite")
    assert time.monotonic() - started < 30
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*machine 'gone'*tcp://127.0.0.1:1*unreachable: connection refused*"])
    assert result.ret == 75  # the fleet is down, not a test: a status of its own
    assert "urllib3" not in result.stdout.str() and "HTTPConnectionPool" not in result.stdout.str()


def test_missing_image_with_pull_never(pytester: pytest.Pytester, project: Path, engines: list[str]) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + f'\n[tool.lrun.machines.strict]\nhost = "{engines[0]}"\n'
        'image = "lrun-no-such-image:1"\npull = "never"\n'
    )
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("--lrun-machine=strict", "suite")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*image_missing*lrun-no-such-image:1*Load or build it on that engine*"])


def test_an_image_no_registry_has_is_missing_and_never_retried(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-image=lrun-no-such-image:2", "suite")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*image_missing: machine 'm1': image 'lrun-no-such-image:2' is not available*"]
    )
    assert "trying again" not in result.stdout.str()  # no registry has it: a retry changes nothing
    assert len(list((state_dir / "runs").iterdir())) == 1


@pytest.fixture(autouse=True)
def _no_lrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LRUN_") and name not in (
            "LRUN_STATE_DIR",
            "LRUN_TEST_ENGINES",
            "LRUN_REQUIRE_DOCKER",
        ):
            monkeypatch.delenv(name)
