"""Failure text as a report's ``longrepr``: an inner failure, a stopped test, a run that failed itself.

:class:`InnerRepr` carries the text as it is and where it happened (:class:`Crash`), which
is what pytest's terminal, short summary, ``--tb=line`` and ``--junitxml`` read. The rest
says why: what a stop did to the test that was running, where the stop found it, and why a
run failed for its own reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_lrun.core.errors import CANCELLED, INTERRUPTED, OOM_KILLED, TIMED_OUT, ContainerGone
from pytest_lrun.report.hostpaths import HostPaths
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import Location

# How the test that was running when a run stopped fails, by the run's error code.
_STOPPED_WHILE = {
    TIMED_OUT: "timed out after {timeout:g} s while running this test",
    CANCELLED: "cancelled while running this test",
    INTERRUPTED: "interrupted while running this test",
    OOM_KILLED: "killed by the OOM killer while running this test",
    ContainerGone.code: "the container vanished while running this test",
}

# The last location line of a traceback (host paths): ``hangs/test_hangs.py:11: KeyboardInterrupt``.
_TRACE_LOCATION = re.compile(r"^(?P<path>\S+\.py):(?P<line>\d+): ", re.MULTILINE)


@dataclass(frozen=True)
class Crash:
    """Where a failure happened and its one-line message: what pytest's short summary,
    ``--tb=line`` and ``--junitxml`` read from a ``longrepr.reprcrash``."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:  # as pytest's ReprFileLocation prints itself (--tb=line)
        return f"{self.path}:{self.lineno}: {self.message}"


class InnerRepr:
    """An inner failure's text as a report's ``longrepr`` (the terminal prints it as it is)."""

    def __init__(self, text: str, crash: Crash) -> None:
        self.text = text
        self.reprcrash = crash

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def stopped_reason(run: Run) -> str:
    """Why the test that was running when ``run`` ended fails."""
    default = f"the run ended ({run.status.value}) while running this test"
    return _STOPPED_WHILE.get(run.error_code or "", default).format(timeout=run.timeout or 0)


def was_stopped(run: Run) -> bool:
    """Whether ``run`` was stopped (its collected tests that never started were not run)."""
    return run.status in (Status.TIMEOUT, Status.INTERRUPTED) or run.error_code in _STOPPED_WHILE


def where_stopped(trace: str, paths: HostPaths) -> Location | None:
    """Where a stop found the running test, from the end of its traceback: a location (path
    relative to the run's directory, 0-based line) when that is a file of the directory."""
    found = list(_TRACE_LOCATION.finditer(trace))
    if not found:
        return None
    path = Path(found[-1]["path"])  # the trace is on host paths already, relative to pytest's start
    if not path.is_absolute():
        path = paths.start / path
    try:
        inner = path.resolve().relative_to(paths.test_dir.resolve()).as_posix()
    except (OSError, ValueError):
        return None
    return (inner, int(found[-1]["line"]) - 1, "")


def crash_line(longrepr: str | None) -> str:
    """The exception line of a failure's text (pytest's ``E   ...``), which the short summary shows."""
    for line in (longrepr or "").splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    return ""


def run_text(run: Run, log: str | None) -> str:
    """Why a run failed for its own reasons: its status, exit code, error and its log's tail."""
    what = {
        Status.TIMEOUT: f"timed out after {run.timeout or 0:g} s",
        Status.INTERRUPTED: "was interrupted",
        Status.FAILED: "failed",
    }.get(run.status, run.status.value)
    lines = [f"run {run.id} on {run.machine} {what}"]
    if run.exit_code is not None:
        lines.append(f"exit code: {run.exit_code}")
    if run.error_code:
        lines.append(f"error: {run.error_code}: {run.error_msg or ''}")
    if log is not None:
        lines.append(f"log: {log}")
    return "\n".join(lines)
