"""On real engines: pytest_lrun_run_finished and every progress line happen on pytest's main thread."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from lrun_support import write_tests

# The hook says on the terminal where it was called: the line also shows when, among the progress lines.
CONFTEST = """
import threading

def pytest_lrun_run_finished(spec, outcome, config):
    on_main = threading.current_thread() is threading.main_thread()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line(
        f"hook: {spec.machine.name} {spec.machine.host} {outcome.run.status.value} main={on_main}"
    )
"""


def test_hook_and_progress_of_two_machines_run_on_the_main_thread(
    pytester: pytest.Pytester, project: Path, engines: list[str]
) -> None:
    # a (on m1) outlasts b (on m2): b's lines must show while pytest waits for a, not after.
    write_tests(project, "a", "import time\n\ndef test_slow():\n    time.sleep(6)\n")
    write_tests(project, "b", "def test_quick():\n    pass\n")
    (project / "plan.toml").write_text(
        textwrap.dedent(
            """
            [[entry]]
            name = "a1"
            dir = "a"
            machine = "m1"

            [[entry]]
            name = "b2"
            dir = "b"
            machine = "m2"
            """
        )
    )
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("--lrun-plan=plan.toml", "-v", "--lrun-live")
    result.assert_outcomes(passed=2)
    for machine, name, entry, host in (("m1", "a", "a1", engines[0]), ("m2", "b", "b2", engines[1])):
        # Each machine's run: dispatched ("collecting ... " may come first), its output, its progress
        # line, then the hook.
        result.stdout.fnmatch_lines(
            [
                f"*lrun: {machine}: dispatching {name} ({entry})*",
                f"lrun: [[]{machine} {name}[]] *1 passed*",
                f"lrun: {machine}: {name} ({entry}) completed (created)*",
                f"hook: {machine} {host} completed main=True",
            ]
        )
    result.stdout.fnmatch_lines(["hook: m2 * main=True", "lrun: m1: a (a1) completed*"])
    assert "main=False" not in result.stdout.str()
