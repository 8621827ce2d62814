"""What the session writes on pytest's terminal, on the main thread only.

``lrun:`` lines (:class:`Terminal`), a progress line per live run every
:data:`PROGRESS_EVERY_S` seconds (:class:`ProgressLines`), the terminal's own progress
percentages held while runs report their collections late (:class:`TerminalProgress`),
the summary's runs table and what follows it (:func:`write_summary`), and the index that
keeps the terminal's failure summary linear (:func:`index_teardown_reports`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.text import format_table
from pytest_lrun.report.flaky import Flaky
from pytest_lrun.report.live import RunReports
from pytest_lrun.report.naming import shown_dir
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store import Batch

# How often each live run's progress line is shown (when it changed), and at most how long a run
# whose progress stands still (a long test) goes without one.
PROGRESS_EVERY_S = 30.0
QUIET_PROGRESS_S = 300.0


def shown_spec(spec: RunSpec, rootpath: Path) -> str:
    """A spec as the session's lines name it: its directory, its shard, its plan entry."""
    shown = shown_dir(spec.test_dir, rootpath)
    if spec.shard is not None and not spec.plan_entry:  # a batch's entry names its shard already
        shown += f" [shard {spec.shard}]"
    return f"{shown} ({spec.plan_entry})" if spec.plan_entry else shown


class Terminal:
    """The session's lines, written through pytest's terminal reporter (when there is one)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def say(self, line: str) -> None:
        """Write ``lrun: line`` to the terminal; main thread only (workers queue their lines).

        ``--collect-only -q`` prints node ids alone, as pytest does: progress stays out.
        """
        if self.config.option.collectonly and self.config.get_verbosity() < 0:
            return
        self.write_line(f"lrun: {line}")

    def write_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            # Under -q the terminal writes result letters without marking the line as begun, so
            # its own write_line would go on after them: end that line first.
            reporter.ensure_newline()
            writer = getattr(reporter, "_tw", None)
            if writer is not None and writer.width_of_current_line:
                writer.line()
            reporter.write_line(line)


class ProgressLines:
    """A line per live run whose progress changed since its last line, every :data:`PROGRESS_EVERY_S`;
    an unchanged one (a long test) gets a line every :data:`QUIET_PROGRESS_S`, saying for how long."""

    def __init__(self, terminal: Terminal, rootpath: Path) -> None:
        self.terminal = terminal
        self.rootpath = rootpath
        self._shown_at = time.monotonic()
        # Per spec: the progress last shown, since when it stands still, when it was shown.
        self._shown: dict[RunSpec, tuple[tuple[int, int, str | None], float, float]] = {}

    def due(self) -> bool:
        """Whether the lines are due (and, when they are, they count as shown now)."""
        if time.monotonic() - self._shown_at < PROGRESS_EVERY_S:
            return False
        self._shown_at = time.monotonic()
        return True

    def show(self, live: Iterable[RunReports]) -> None:
        """The lines of the ``live`` runs' reports (those whose run is known)."""
        now = time.monotonic()
        for reports in live:
            spec, run = reports.spec, reports.run
            if run is None:
                continue
            p = reports.progress
            state = (p.done, p.failed, p.running)
            last = self._shown.get(spec)
            if last is not None and last[0] == state and now - last[2] < QUIET_PROGRESS_S:
                continue
            since = last[1] if last is not None and last[0] == state else now
            self._shown[spec] = (state, since, now)
            running = f", running {p.running}" if p.running else ""
            if running and now - since >= PROGRESS_EVERY_S:
                running += f" for {now - since:.0f}s"
            self.terminal.say(
                f"{run.machine}: {shown_spec(spec, self.rootpath)}: {p.done}/{p.collected} tests done, "
                f"{p.failed} failed{running}"
            )


class TerminalProgress:
    """The terminal's progress percentages, kept true while runs report their collections late.

    pytest counts the tests collected before any runs; here each run's count arrives with
    its inner collection, so percentages shown early would go back (100%, then 83%). They are
    held until every run has counted its tests. Its final ``[100%]``, which pytest writes after
    the loop, would land alone on a line after the runs' last ``lrun:`` lines: it is left out.
    Both use the terminal reporter's ``_show_progress_info`` (private, read with a default).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.reporter: Any = None
        self.shown: Any = False
        self.held = False

    def hold(self) -> None:
        """Hold the percentages (the terminal reporter exists by now: the session's loop runs)."""
        self.reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        self.shown = getattr(self.reporter, "_show_progress_info", False)
        # Before pytest 8.4 the terminal counted a finished test only while it showed percentages.
        if self.shown and self.reporter is not None and pytest.version_tuple >= (8, 4):
            self.reporter._show_progress_info = False
            self.held = True

    def release(self) -> None:
        if self.held and self.reporter is not None:
            self.reporter._show_progress_info = self.shown
            self.held = False

    def end(self) -> None:
        writer = getattr(self.reporter, "_tw", None)
        if (
            self.shown
            and self.reporter is not None
            and writer is not None
            and writer.width_of_current_line == 0
        ):
            self.reporter._show_progress_info = False


def write_summary(
    terminalreporter: Any,
    table: list[list[str]],
    batch: Batch | None,
    attach_to: str | None,
    problems: Iterable[object],
) -> None:
    """The ``lrun runs`` section: the runs table, the batch's status, how to attach to what was
    detached (``attach_to``), and the store's problems."""
    terminalreporter.section("lrun runs")
    for line in format_table(table):
        terminalreporter.write_line(line)
    if batch is not None:
        terminalreporter.write_line(f"batch {batch.id}: {batch.status.value} (lrun batch {batch.id})")
    if attach_to is not None:
        terminalreporter.write_line(f"detached: attach with pytest --lrun-attach={attach_to}")
    for problem in problems:
        terminalreporter.write_line(f"lrun: warning: {problem}", yellow=True)


def write_flaky(terminalreporter: Any, flaky: Sequence[Flaky]) -> None:
    """The ``lrun flaky tests`` section: each inner test that failed, then passed on a rerun
    (``--lrun-flaky-attempts``), and how its first failure went."""
    if not flaky:
        return
    terminalreporter.section("lrun flaky tests", yellow=True)
    for test in flaky:
        terminalreporter.write_line(f"FLAKY {test.nodeid} - {test.line()}", yellow=True)


def write_quarantined(terminalreporter: Any, failed: Sequence[tuple[str, str]]) -> None:
    """The ``lrun quarantined tests`` section: each quarantined test that failed, reported as xfail
    (``--lrun-quarantine``), with its reason."""
    if not failed:
        return
    terminalreporter.section("lrun quarantined tests", yellow=True)
    for nodeid, reason in failed:
        terminalreporter.write_line(f"QUARANTINED {nodeid} - failed; {reason}", yellow=True)


def index_teardown_reports(reporter: Any) -> None:
    """Let the terminal find a failed test's teardown reports by node id in one step.

    pytest's failure summary looks up each failure's teardown reports by scanning every
    report of the "" category (every passed setup and teardown): F failures among N tests
    cost F x N, and a dispatched suite of 200,000 tests with 20,000 failures did not finish.
    This gives the terminal reporter (its private ``_get_teardown_reports``, when it has one)
    the same answer from an index built once, at the summary, when every report is in.
    """
    if not callable(getattr(reporter, "_get_teardown_reports", None)):
        return
    index: dict[str, list[Any]] | None = None

    def teardown_reports(node_id: Any) -> list[Any]:  # a node id, or pytest 9's NodeId (its str is one)
        nonlocal index
        if index is None:
            index = {}
            for report in reporter.getreports(""):
                if report.when == "teardown":
                    index.setdefault(report.nodeid, []).append(report)
        return index.get(str(node_id), [])

    reporter._get_teardown_reports = teardown_reports
