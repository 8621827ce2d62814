"""Runs as pytest nodes: the collector of a dispatched directory and its items.

Every inner test of a run becomes an :class:`InnerItem` whose setup and call
replay the inner outcome (passed, failed, error, skipped, xfailed), so the
terminal, ``-k``, ``--junitxml`` and every other plugin see ordinary items and
reports. The inner tests come from the reporter's events when the run has them
(:func:`cases_from_events`: one per test with a phase report, and after a stop
the test that was running and those never started), else from the inner JUnit
XML. A run without inner results (a crash, a timeout, a non-pytest
command, a busy machine) is one :class:`RunItem` whose outcome follows the
run's status. Each report carries the run's log tail as its ``log`` section and
the run's facts as ``user_properties``; artifacts are listed as
``[[ATTACHMENT|path]]`` lines that CI servers pick up from the JUnit XML.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
import pytest

from .dispatch import RunResult, RunSpec
from .errors import CANCELLED, EXIT_NONZERO, INTERRUPTED, OOM_KILLED, TIMED_OUT, ContainerGone, LrunError
from .events import Collected, Event, Finished, PhaseReport, Start
from .junit import CaseOutcome, CaseResult, When
from .logs import tail
from .store import Run, Status

LOG_SECTION_BYTES = 4096
MAX_ATTACHMENTS = 20


@dataclass(frozen=True)
class Detached:
    """A run started with ``--lrun-detach`` and left running."""

    run: Run
    batch_id: str | None


# A spec's outcome: the result, the error that prevented the run (busy machine, engine down), or a
# run left running.
JobOutcome = RunResult | LrunError | Detached
Waiter = Callable[[RunSpec], JobOutcome]


class _HostHooks:
    """Use the hooks of the directory *around* the dispatched one.

    A dispatched directory's own conftest.py belongs to the container; computing
    hooks for its path would import it on the host.
    """

    path: Path
    session: pytest.Session

    @property
    def ihook(self) -> pluggy.HookRelay:
        return self.session.gethookproxy(self._host_dir())

    def _host_dir(self) -> Path:
        raise NotImplementedError


class LrunDir(_HostHooks, pytest.Collector):
    """A dispatched test directory; its children appear once its runs are done.

    Deliberately not a ``pytest.Directory``: pytest imports the conftest.py of
    every Directory it collects, and this one's belongs to the container.
    """

    def __init__(self, *, specs: list[RunSpec], wait: Waiter, path: Path, **kwargs: Any) -> None:
        rootpath = kwargs["parent"].config.rootpath
        try:
            nodeid = path.relative_to(rootpath).as_posix()
        except ValueError:
            nodeid = str(path)
        super().__init__(name=path.name, path=path, nodeid=nodeid, **kwargs)
        self.specs = specs
        self.wait = wait

    def _host_dir(self) -> Path:
        return self.path.parent

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        for spec in self.specs:
            suffix = self._suffix(spec)
            if self.config.option.collectonly:
                # --collect-only dispatches nothing: show what would run.
                yield RunItem.from_parent(self, spec=spec, outcome=None, suffix=suffix)
                continue
            yield from items_for(self, spec, self.wait(spec), suffix)

    def _suffix(self, spec: RunSpec) -> str:
        """What tells apart the runs of one directory: its machine, else its plan entry."""
        if len(self.specs) == 1:
            return ""
        machines = [s.machine.name for s in self.specs]
        if machines.count(spec.machine.name) == 1:
            return f"@{spec.machine.name}"
        return f"@{spec.plan_entry}"


def items_for(parent: LrunDir, spec: RunSpec, outcome: JobOutcome, suffix: str) -> Iterator[pytest.Item]:
    if isinstance(outcome, LrunError | Detached):
        yield RunItem.from_parent(parent, spec=spec, outcome=outcome, suffix=suffix)
        return
    stop_named = False
    cases = outcome.cases
    if outcome.events:
        cases, stop_named = cases_from_events(outcome.events, outcome.run)
    if cases is None:
        yield RunItem.from_parent(parent, spec=spec, outcome=outcome, suffix=suffix)
        return
    for case in cases:
        yield InnerItem.from_parent(parent, spec=spec, result=outcome, case=case, suffix=suffix)
    if _run_level_failure(outcome.run, cases, stop_named):
        yield RunItem.from_parent(parent, spec=spec, outcome=outcome, suffix=suffix)


def _run_level_failure(run: Run, cases: list[CaseResult], stop_named: bool) -> bool:
    """Whether the run failed beyond what its inner test results already say.

    ``stop_named``: an inner test already fails with why the run was stopped.
    """
    if stop_named and run.error_code in _STOPPED_WHILE:
        return False
    if run.error_code not in (None, EXIT_NONZERO):
        return True  # e.g. an artifact archive was refused, even from a run that passed
    if run.status is Status.COMPLETED:
        return False
    if run.status is not Status.FAILED or run.exit_code != 1:
        return True  # timeout, interrupted, pytest's exit 2-5...
    return not any(case.outcome in ("failed", "error") for case in cases)


# How the test that was running when a run stopped fails, by the run's error code.
_STOPPED_WHILE = {
    TIMED_OUT: "timed out after {timeout:g} s while running this test",
    CANCELLED: "cancelled while running this test",
    INTERRUPTED: "interrupted while running this test",
    OOM_KILLED: "killed by the OOM killer while running this test",
    ContainerGone.code: "the container vanished while running this test",
}


def cases_from_events(events: Sequence[Event], run: Run) -> tuple[list[CaseResult], bool]:
    """The inner tests of a run as the reporter's events tell them, and whether a stop was named.

    One case per node id with a phase report, in the order they started, built as pytest's
    JUnit XML would have it (outcome, failure text, captured output, summed duration);
    collection errors and skipped modules come first. After a stop, the test that was
    running (a ``start`` without a teardown report) fails with the stop's reason and the
    inner traceback, and the collected tests never started are skipped as not run.
    """
    collected: Collected | None = None
    finished: Finished | None = None
    started: dict[str, Start] = {}
    reports: dict[str, list[PhaseReport]] = {}
    for event in events:
        if isinstance(event, Collected):
            collected = event
        elif isinstance(event, Finished):
            finished = event
        elif isinstance(event, Start):
            started.setdefault(event.nodeid, event)
        else:
            reports.setdefault(event.nodeid, []).append(event)
            started.setdefault(event.nodeid, Start(event.n, event.nodeid, event.location))
    cases: list[CaseResult] = []
    if collected is not None:
        cases += [
            _case(e.nodeid, None, "error", "collect", "collection failure", e.longrepr)
            for e in collected.errors
        ]
        cases += [_case(k.nodeid, None, "skipped", "collect", k.skip.reason, "") for k in collected.skipped]
    stopped = run.status in (Status.TIMEOUT, Status.INTERRUPTED) or run.error_code in _STOPPED_WHILE
    stop_named = False
    for nodeid, start in started.items():
        phases = reports.get(nodeid, [])
        if any(report.when == "teardown" for report in phases):
            cases += _cases_of(nodeid, start, phases)
            continue
        default = f"the run ended ({run.status.value}) while running this test"
        reason = _STOPPED_WHILE.get(run.error_code or "", default).format(timeout=run.timeout or 0)
        trace = finished.interrupt if finished is not None and finished.interrupt else ""
        cases.append(_case(nodeid, start, "failed", "call", reason, trace, phases))
        stop_named = True
    if stopped and collected is not None:
        reason = f"not run: the run was stopped ({run.status.value})"
        cases += [
            _case(n, None, "skipped", "setup", reason, "") for n in collected.nodeids if n not in started
        ]
    return cases, stop_named


def _cases_of(nodeid: str, start: Start, phases: list[PhaseReport]) -> list[CaseResult]:
    """A finished test's cases, as pytest's JUnit XML has them: a call failure followed by a
    teardown error is two, anything else one (an error before a failure before a skip)."""
    by_when = {report.when: report for report in phases}
    setup, call, teardown = by_when.get("setup"), by_when.get("call"), by_when["teardown"]
    main: CaseResult | None = None
    if setup is not None and setup.outcome == "failed":
        main = _case(
            nodeid, start, "error", "setup", _crash_line(setup.longrepr), setup.longrepr or "", phases
        )
    elif setup is not None and setup.outcome == "skipped":
        main = _skip_case(nodeid, start, setup, phases)
    elif call is not None and call.outcome == "failed":
        main = _case(nodeid, start, "failed", "call", _crash_line(call.longrepr), call.longrepr or "", phases)
    elif call is not None and call.outcome == "skipped":
        main = _skip_case(nodeid, start, call, phases)
    if teardown.outcome == "failed":
        error = _case(
            nodeid,
            start,
            "error",
            "teardown",
            _crash_line(teardown.longrepr),
            teardown.longrepr or "",
            phases,
        )
        return [main, error] if main is not None and main.outcome == "failed" else [error]
    if main is not None:
        return [main]
    outcome: CaseOutcome = "xpassed" if call is not None and call.wasxfail is not None else "passed"
    return [_case(nodeid, start, outcome, "call", "", "", phases)]


def _skip_case(nodeid: str, start: Start, report: PhaseReport, phases: list[PhaseReport]) -> CaseResult:
    if report.wasxfail is not None:
        return _case(nodeid, start, "xfailed", report.when, report.wasxfail, "", phases)
    reason = report.skip.reason if report.skip is not None else report.longrepr or ""
    return _case(nodeid, start, "skipped", report.when, reason, "", phases)


def _case(
    nodeid: str,
    start: Start | None,
    outcome: CaseOutcome,
    when: When,
    message: str,
    text: str,
    phases: Sequence[PhaseReport] = (),
) -> CaseResult:
    """One inner test's case; its duration, output and properties from its phase reports."""
    location = start.location if start is not None else None
    last = phases[-1] if phases else None  # pytest's sections accumulate: the last report has them all
    sections = last.sections if last is not None else ()
    out = "\n".join(text for name, text in sections if "stderr" not in name)
    err = "\n".join(text for name, text in sections if "stderr" in name)
    return CaseResult(
        classname="",
        name=location[2] if location else nodeid,
        file=location[0] if location else None,
        line=location[1] if location else None,
        duration=sum(report.duration for report in phases),
        outcome=outcome,
        when=when,
        message=message,
        text=text,
        system_out=out or None,
        system_err=err or None,
        properties=last.user_properties if last is not None else (),
        nodeid_hint=nodeid,
    )


def _crash_line(longrepr: str | None) -> str:
    """The exception line of a failure's text (pytest's ``E   ...``), which the short summary shows."""
    for line in (longrepr or "").splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    return ""


class InnerFailure(Exception):
    """An inner test failed (or errored); its text is the inner report."""


class _LrunItem(_HostHooks, pytest.Item):
    spec: RunSpec

    def _host_dir(self) -> Path:
        return self.spec.test_dir.parent

    def _attach_run(self, result: RunResult, inner_out: str = "") -> None:
        run = result.run
        self.user_properties.extend(
            [
                ("lrun_run_id", run.id),
                ("lrun_machine", run.machine),
                ("lrun_hash", run.test_dir_hash or ""),
                ("lrun_status", str(run.status.value)),
                ("lrun_origin", result.origin),
                ("lrun_duration", f"{run_duration(run):.3f}"),
                ("lrun_artifacts", run.artifacts_path or ""),
                ("lrun_logs", run.logs_path or ""),
            ]
        )
        if run.logs_path:
            self.add_report_section("call", "log", tail(Path(run.logs_path), LOG_SECTION_BYTES))
        stdout = "\n".join(part for part in (inner_out, attachment_lines(run)) if part)
        if stdout:
            self.add_report_section("call", "stdout", stdout)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, InnerFailure | LrunError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class InnerItem(_LrunItem):
    """One inner test of a run, replaying its outcome on the host."""

    def __init__(
        self, *, spec: RunSpec, result: RunResult, case: CaseResult, suffix: str, **kwargs: Any
    ) -> None:
        parent = kwargs["parent"]
        kwargs.setdefault("name", case.nodeid_hint + suffix)
        kwargs.setdefault("nodeid", f"{parent.nodeid}/{case.nodeid_hint}{suffix}")
        super().__init__(**kwargs)
        self.spec = spec
        self.result = result
        self.case = case
        if case.file:
            self.path = spec.test_dir / case.file

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.case.line if self.case.line is not None else None
        return self.path, line, self.case.nodeid_hint

    def setup(self) -> None:
        self._attach_run(self.result, inner_out=_captured(self.case.system_out))
        inner_err = _captured(self.case.system_err)
        if inner_err:
            self.add_report_section("call", "stderr", inner_err)
        if self.case.outcome == "error":
            raise InnerFailure(_case_text(self.case, self.result.run))

    def runtest(self) -> None:
        outcome = self.case.outcome
        if outcome == "failed":
            raise InnerFailure(_case_text(self.case, self.result.run))
        if outcome == "skipped":
            # Item location: the skip summary then names the inner test, not this module.
            raise pytest.skip.Exception(
                self.case.message or "skipped in the container", _use_item_location=self.case.line is not None
            )
        if outcome == "xfailed":
            pytest.xfail(self.case.message or "xfail")


class RunItem(_LrunItem):
    """The run itself, for runs without inner results or failing beyond them."""

    def __init__(self, *, spec: RunSpec, outcome: JobOutcome | None, suffix: str, **kwargs: Any) -> None:
        kwargs.setdefault("name", f"lrun[{suffix.lstrip('@') or spec.machine.name}]")
        super().__init__(**kwargs)
        self.spec = spec
        self.outcome = outcome
        self.path = spec.test_dir

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.spec.test_dir.name} on {self.spec.machine.name}"

    def setup(self) -> None:
        if isinstance(self.outcome, RunResult):
            self._attach_run(self.outcome)

    def runtest(self) -> None:
        if self.outcome is None:
            pytest.skip("--collect-only: not dispatched")
        if isinstance(self.outcome, LrunError):
            raise self.outcome
        if isinstance(self.outcome, Detached):
            target = self.outcome.batch_id or self.outcome.run.id
            pytest.skip(f"detached as run {self.outcome.run.id}; attach with --lrun-attach={target}")
        run = self.outcome.run
        if run.status is not Status.COMPLETED or run.error_code is not None:
            raise InnerFailure(_run_text(run))


# pytest's junit_logging=all wraps each captured stream in such a header, empty or not.
_CAPTURE_HEADER = re.compile(r"^-{5,} Captured (?:Log|Out|Err) -{5,}$", re.MULTILINE)


def _captured(text: str | None) -> str:
    """The inner test's captured output without pytest's headers; "" when there was none."""
    return _CAPTURE_HEADER.sub("", text or "").strip()


def _case_text(case: CaseResult, run: Run) -> str:
    """The inner failure, message first (pytest's short summary shows the first line), then traceback."""
    parts = [part.strip("\n") for part in (case.message, case.text) if part]
    text = "\n\n".join(parts) or f"{case.outcome} in the container"
    return f"{text}\n\n[lrun] run {run.id} on {run.machine}: {run.status.value}"


def _run_text(run: Run) -> str:
    what = {
        Status.TIMEOUT: "timed out",
        Status.INTERRUPTED: "was interrupted",
        Status.FAILED: "failed",
    }.get(run.status, run.status.value)
    lines = [f"run {run.id} on {run.machine} {what}"]
    if run.exit_code is not None:
        lines.append(f"exit code: {run.exit_code}")
    if run.error_code:
        lines.append(f"error: {run.error_code}: {run.error_msg or ''}")
    if run.logs_path:
        lines.append(f"logs: {run.logs_path}")
        log = tail(Path(run.logs_path), LOG_SECTION_BYTES)
        if log:
            lines += ["--- log tail ---", log.rstrip()]
    return "\n".join(lines)


def run_duration(run: Run) -> float:
    if run.started_at is None:
        return 0.0
    return max(0.0, (run.ended_at or run.started_at) - run.started_at)


def attachment_lines(run: Run) -> str:
    """``[[ATTACHMENT|path]]`` lines (Jenkins, GitLab, Azure DevOps) for the logs and artifacts."""
    paths: list[str] = []
    if run.logs_path and os.path.isfile(run.logs_path):
        paths.append(run.logs_path)
    if run.artifacts_path and os.path.isdir(run.artifacts_path):
        for dirpath, _dirs, files in sorted(os.walk(run.artifacts_path)):
            paths.extend(os.path.join(dirpath, f) for f in sorted(files))
    shown = paths[:MAX_ATTACHMENTS]
    lines = [f"[[ATTACHMENT|{os.path.abspath(p)}]]" for p in shown]
    if len(paths) > len(shown):
        lines.append(f"[lrun] {len(paths) - len(shown)} more artifacts under {run.artifacts_path}")
    return "\n".join(lines)


def summary_rows(rows: Sequence[tuple[RunSpec, JobOutcome]], rootpath: Path) -> list[list[str]]:
    """The terminal summary table: (entry,) dir, machine, short hash, status, origin, duration, run id."""
    table = [["dir", "machine", "hash", "status", "origin", "duration", "run id"]]
    for spec, outcome in rows:
        try:
            shown_dir = str(spec.test_dir.relative_to(rootpath))
        except ValueError:
            shown_dir = str(spec.test_dir)
        if isinstance(outcome, LrunError):
            row = [shown_dir, spec.machine.name, "-", outcome.code, "-", "-", getattr(outcome, "run_id", "-")]
        else:
            run = outcome.run
            origin = "detached" if isinstance(outcome, Detached) else outcome.origin
            duration = "-" if isinstance(outcome, Detached) else f"{run_duration(run):.1f}s"
            row = [shown_dir, run.machine, run.test_dir_hash[:8], run.status.value, origin, duration, run.id]
        table.append(row)
    if any(spec.plan_entry for spec, _ in rows):
        table[0].insert(0, "entry")
        for (spec, _), row in zip(rows, table[1:], strict=True):
            row.insert(0, spec.plan_entry or "-")
    return table
