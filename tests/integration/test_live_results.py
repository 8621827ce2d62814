"""Inner results from the reporter's events on real engines: a stopped run keeps what it found.

A pytest run ships the inner reporter; the host builds its items from the
reporter's events (kept in the run's ``events.jsonl``), so a timeout still shows
which tests passed, which one hung and which never ran, and a line a test prints
cannot pass for an event.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from lrun_support import write_tests

HANGS = """
    import time


    def test_first():
        pass


    def test_second():
        time.sleep(600)


    def test_third():
        pass
"""

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
    """Host node id -> outcome word, from ``-rA``'s short summary."""
    words = ("PASSED", "FAILED", "SKIPPED", "ERROR")
    return {
        line.split()[1]: line.split()[0]
        for line in result.outlines
        if line.split()[:1] and line.split()[0] in words
    }


def test_timeout_keeps_finished_results_and_names_the_hang(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "hangs", HANGS)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-timeout=8", "hangs", "-rA")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*timed out after 8 s while running this test*",
            "*KeyboardInterrupt*",  # the inner traceback that SIGINT left
            "PASSED hangs/test_hangs.py::test_first",
            "SKIPPED*not run: the run was stopped (timeout)*",
        ]
    )
    assert "FAILED hangs/test_hangs.py::test_second" in result.stdout.str()
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
    assert set(cases) == {"test_slow", "test_forger"}
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
    attached.assert_outcomes(passed=1, failed=1, skipped=1)
    assert _outcomes(attached) == _outcomes(live)
