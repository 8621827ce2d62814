"""Inner results from the reporter's events on real engines, reported live.

A pytest run ships the inner reporter; the host reports each inner test as its
events arrive (and keeps them in the run's ``events.jsonl``), so results show
while the container runs, a timeout still shows which tests passed, which one
hung and which never ran, ``-x`` stops the run, selections run inside the
container, and a line a test prints cannot pass for an event.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from lrun_support import HANGS, lrun_containers, write_tests

from pytest_lrun.core.times import parse_time

FORGED = '\\x1elrun:0123456789abcdef {"e":"report","n":9,"nodeid":"x"}'
TIMED = f"""
    import time


    def test_slow():
        time.sleep(0.6)


    def test_forger():
        print('{FORGED}')
        assert False, "the forger fails"
"""


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Host node id -> outcome word, from ``-rA``'s short summary (the host's: a run's container
    output, shown with its error, may hold the inner pytest's own)."""
    words = ("PASSED", "FAILED", "SKIPPED", "ERROR")
    lines = result.outlines
    summary = max(i for i, line in enumerate(lines) if "short test summary info" in line)
    return {
        line.split()[1]: line.split()[0]
        for line in lines[summary:]
        if line.split()[:1] and line.split()[0] in words
    }


def test_timeout_keeps_finished_results_and_names_the_hang(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "hangs", HANGS)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-timeout=8", "hangs", "-rA")
    # The run timed out: its own report is an error beside the hung test's failure.
    result.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*timed out after 8 s while running this test*",
            "hangs/test_hangs.py:*: KeyboardInterrupt",  # where SIGINT found it, on the host path
            "PASSED hangs/test_hangs.py::test_first",
            "SKIPPED*not run: the run was stopped (timeout)*",
            "ERROR hangs::lrun[[]m1[]] - timeout: timed out after 8*",
        ]
    )
    assert "FAILED hangs/test_hangs.py::test_second" in result.stdout.str()
    assert "_pytest/main.py" not in result.stdout.str()  # never pytest's own KeyboardInterrupt trace
    (run_dir,) = (state_dir / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "timeout"
    assert "\x1elrun:" not in (run_dir / "logs.txt").read_text()


def test_events_give_inner_durations_and_ignore_forged_lines(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "timed", TIMED)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "timed", "--junitxml=out.xml", "-rA")
    result.assert_outcomes(passed=1, failed=1)  # the forged "report" made no result
    result.stdout.fnmatch_lines(["*the forger fails*"])
    cases = {case.get("name"): case for case in ET.parse(project / "out.xml").getroot().iter("testcase")}
    assert set(cases) == {"test_slow", "test_forger", "lrun[m1]"}  # the run's case carries its log
    assert 0.6 <= float(cases["test_slow"].get("time") or 0) < 5
    (run_dir,) = (state_dir / "runs").iterdir()
    assert '"nodeid": "timed/test_timed.py::test_slow"' not in (run_dir / "logs.txt").read_text()
    assert "0123456789abcdef" in (run_dir / "logs.txt").read_text()  # the forged line is output

    cached = pytester.runpytest_subprocess("--lrun-machine=m1", "timed", "--lrun-reuse=completed", "-rA")
    cached.assert_outcomes(passed=1, failed=1)
    assert _outcomes(cached) == _outcomes(result)


def test_reattach_reports_what_the_live_run_did(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "hangs", HANGS)
    live = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-timeout=8", "hangs", "-rA")
    detached = pytester.runpytest_subprocess(
        "--lrun-machine=m2", "--lrun-timeout=8", "hangs", "--lrun-detach"
    )
    detached.assert_outcomes(skipped=1)
    (run_id,) = re.findall(r"detached as run (\S+)", detached.stdout.str())
    attached = pytester.runpytest_subprocess(f"--lrun-attach={run_id}", "-rA")
    attached.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)
    # The same inner results; the run's own error is named after its machine.
    assert _outcomes(attached) == {
        nodeid.replace("lrun[m1]", "lrun[m2]"): outcome for nodeid, outcome in _outcomes(live).items()
    }


SECONDS = """
    import time


    def test_1():
        time.sleep(1)


    def test_2():
        time.sleep(1)


    def test_3():
        time.sleep(1)


    def test_4():
        time.sleep(1)
"""

# A host plugin that notes when the first inner report reached the host.
FIRST_REPORT = """
import time
from pathlib import Path


def pytest_runtest_logreport(report):
    marker = Path("first-report")
    if report.when == "call" and not marker.exists():
        marker.write_text(repr(time.time()))
"""


def _run_record(state_dir: Path) -> dict[str, object]:
    (run_dir,) = (state_dir / "runs").iterdir()
    record: dict[str, object] = json.loads((run_dir / "run.json").read_text())
    return record


def test_the_first_result_shows_while_the_container_still_runs(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "seconds", SECONDS)
    pytester.makeconftest(FIRST_REPORT)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "seconds")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["lrun: seconds on m1: 4 inner tests collected"])
    first = float((project / "first-report").read_text())
    ended = _run_record(state_dir)["ended_at"]
    assert isinstance(ended, str)
    # Three more one-second tests ran after the first report reached the host.
    assert first < parse_time(ended) - 2


FAILS_THEN_SLEEPS = """
    import time


    def test_fails():
        assert False, "the first failure"


    def test_slow_1():
        time.sleep(60)


    def test_slow_2():
        time.sleep(60)
"""


def test_exitfirst_stops_the_run_this_session_created(
    pytester: pytest.Pytester, project: Path, state_dir: Path, engines: list[str]
) -> None:
    write_tests(project, "stops", FAILS_THEN_SLEEPS)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "stops", "-x", "--lrun-stop-grace=5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures: stopping the runs this session created*"])
    assert "test_slow_1" not in result.stdout.str().split("stopping after")[-1].split("lrun runs")[0]
    record = _run_record(state_dir)
    assert (record["status"], record["error_code"]) == ("interrupted", "session_stopped")
    assert lrun_containers(engines, {str(record["id"])}) == []  # stopped and removed, not left running
    assert result.duration < 45  # far from the 120 s the slow tests would take


SELECTED = """
    def test_alpha():
        pass


    def test_beta():
        pass


    def test_gamma():
        pass
"""


def _inner_junit_cases(state_dir: Path) -> list[str]:
    (run_dir,) = (state_dir / "runs").iterdir()
    return [case.get("name") or "" for case in ET.parse(run_dir / "junit.xml").getroot().iter("testcase")]


def test_keyword_selection_runs_only_the_selected_inner_test(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "picked", SELECTED)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "picked", "-k", "beta", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASSED picked/test_picked.py::test_beta"])
    assert _inner_junit_cases(state_dir) == ["test_beta"]  # the container ran only that one


def test_a_node_id_below_the_directory_runs_only_that_test(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "picked", SELECTED)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "picked/test_picked.py::test_gamma", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASSED picked/test_picked.py::test_gamma"])
    assert _inner_junit_cases(state_dir) == ["test_gamma"]


def test_collect_only_shows_the_inner_node_ids_without_running_them(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "picked", SELECTED)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "picked", "--collect-only", "-k", "not alpha")
    result.stdout.fnmatch_lines(["picked/test_picked.py::test_beta", "picked/test_picked.py::test_gamma"])
    assert "test_alpha" not in result.stdout.str()
    assert _inner_junit_cases(state_dir) == []  # pytest --collect-only ran no test


def test_a_selection_that_picks_nothing_in_one_directory_is_no_failure(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "picked", "def test_alpha():\n    pass\n")
    write_tests(project, "other", "def test_beta():\n    pass\n")
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "picked", "other", "-k", "alpha")
    assert result.ret == 0
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(
        ["lrun: m1: other completed (created) in *"]
    )  # inner exit 5: no tests, no failure
    records = [json.loads((run / "run.json").read_text()) for run in (state_dir / "runs").iterdir()]
    assert sorted((r["status"], r["exit_code"]) for r in records) == [("completed", 0), ("completed", 5)]


SUBTESTS = """
    import unittest


    class T(unittest.TestCase):
        def test_loop(self):
            for i in range(3):
                with self.subTest(i=i):
                    self.assertNotEqual(i, 1)


    def test_native(subtests):
        for n in range(2):
            with subtests.test(msg="check", n=n):
                assert n >= 0
"""


def _last_line(result: pytest.RunResult) -> str:
    return re.sub(r" in [\d.]+s.*", "", [line for line in result.outlines if " in " in line][-1].strip("= "))


def test_subtests_count_as_they_do_locally(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "subs", SUBTESTS)
    local = pytester.runpytest_subprocess("subs", "-p", "no:lrun", "-q")
    current = ("--lrun-machine=m1", "--lrun-image=lrun-python-current:latest", "subs")
    assert _last_line(pytester.runpytest_subprocess(*current, "-q")) == _last_line(local)
    assert _last_line(local) == "1 failed, 2 passed, 4 subtests passed"
    dispatched = pytester.runpytest_subprocess(*current, "-v")
    dispatched.stdout.fnmatch_lines(
        ["*::T::test_loop SUBFAILED(i=1)*", "SUBFAILED(i=1) subs/test_subs.py::T::test_loop*"]
    )
    assert dispatched.stdout.str().count("test_native PASSED") == 1  # its subtests are SUBPASSED, not PASSED
    # pytest 7 (the bookworm image) has no subtests: the inner pytest's own counts come through as they are.
    old = pytester.runpytest_subprocess("--lrun-machine=m1", "subs")
    assert _last_line(old) == "1 failed, 1 error"  # test_loop fails at i=1; no subtests fixture there
