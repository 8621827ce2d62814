"""One run's inner results as pytest's own report objects.

:class:`ReportMaker` makes the :class:`pytest.TestReport` of an inner test's phase (from
the reporter's event, or from a case of an inner JUnit XML), the
:class:`pytest.CollectReport` of an inner collection problem, and the failure text of
each. Every report carries the run's facts as ``user_properties`` (``lrun_run_id``,
``lrun_machine``, ``lrun_hash``, ``lrun_origin``, ``lrun_logs``, ``lrun_artifacts``, and
the attempts before a retried one), which is how :func:`is_lrun_report` knows pytest-lrun's
reports, and a failing test's teardown carries its run's log as an attachment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_lrun.core.text import one_line, printable
from pytest_lrun.report.evidence import Evidence, RunEvidence
from pytest_lrun.report.failures import Crash, InnerRepr, crash_line
from pytest_lrun.report.hostpaths import HostPaths
from pytest_lrun.report.naming import NodeIds
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store import Run
from pytest_lrun.wire.events import CrashInfo, Location, PhaseReport, Subtest
from pytest_lrun.wire.junit import CaseResult

MAX_ATTACHMENTS = 20

Outcome = Literal["passed", "failed", "skipped"]
Phase = Literal["setup", "call", "teardown"]

# pytest's junit_logging=all wraps each captured stream in such a header, empty or not.
_CAPTURE_HEADER = re.compile(r"^-{5,} Captured (?:Log|Out|Err) -{5,}$", re.MULTILINE)


def is_lrun_report(report: pytest.TestReport) -> bool:
    """Whether ``report`` is one pytest-lrun fired (every one carries ``lrun_machine``)."""
    return any(name == "lrun_machine" for name, _value in report.user_properties)


class ReportMaker:
    """Makes the reports of one run of one spec; ``run``, ``origin`` and ``earlier`` say which run
    and attempt they come from (the session learns them as the store decides)."""

    def __init__(self, spec: RunSpec, names: NodeIds, paths: HostPaths, evidence: Evidence) -> None:
        self.spec = spec
        self.names = names
        self.paths = paths
        self.evidence = evidence
        self.run: Run | None = None
        self.origin = "created"
        self.earlier: list[Run] = []  # attempts that failed for their infrastructure, retried
        self._facts: tuple[object, list[tuple[str, object]]] | None = None  # properties(), and for which run

    def report(
        self,
        inner: str,
        location: Location | None,
        when: Phase,
        outcome: Outcome,
        longrepr: Any,
        *,
        sections: Sequence[tuple[str, str]] = (),
        duration: float = 0.0,
        keywords: Sequence[str] = (),
        properties: Sequence[tuple[str, str]] = (),
        **extra: Any,
    ) -> pytest.TestReport:
        """The report of an inner test's phase."""
        return pytest.TestReport(
            self.names.nodeid(inner),
            self.names.location(inner, location),
            {keyword: 1 for keyword in keywords},
            outcome,
            longrepr,
            when,
            sections,
            duration,
            user_properties=[*properties, *self.properties()],
            **extra,
        )

    def phase_report(
        self, event: PhaseReport, location: Location | None, keywords: Sequence[str]
    ) -> pytest.TestReport:
        """The report of the inner reporter's phase ``event``, at ``location`` with ``keywords`` (the
        reporter leaves out those it sent already: the caller knows them)."""
        longrepr: Any = None
        if event.skip is not None:
            longrepr = (self.paths.absolute(event.skip.path), event.skip.lineno, event.skip.reason)
        elif event.longrepr is not None and event.outcome == "failed":
            text = self.paths.text(event.longrepr)
            longrepr = self.failure(text, crash_line(event.longrepr), location, crash=event.crash)
        elif event.longrepr is not None:
            longrepr = event.longrepr
        extra: dict[str, Any] = {}
        if event.wasxfail is not None:
            extra["wasxfail"] = event.wasxfail
        report = self.report(
            event.nodeid,
            location,
            event.when,
            event.outcome,
            longrepr,
            sections=event.sections,
            duration=event.duration,
            keywords=keywords,
            properties=event.user_properties,
            **extra,
        )
        if event.start is not None and event.stop is not None:
            report.start, report.stop = event.start, event.stop
        if event.subtest is not None:
            _as_subtest(report, event.subtest)
        return report

    def case_reports(self, case: CaseResult) -> list[pytest.TestReport]:
        """One case of an inner JUnit XML (a run without events) as a test's reports, to its teardown."""
        inner = case.nodeid_hint
        location = case_location(case)
        message = case.message or f"{case.outcome} in the container"
        text = "\n\n".join(part.strip("\n") for part in (case.message, case.text) if part) or message
        sections = [(f"Captured {name} call", text) for name, text in _captured(case) if text]
        phases: list[tuple[Phase, Outcome, Any, dict[str, Any]]] = []
        if case.outcome == "error":
            when: Phase = "teardown" if case.when == "teardown" else "setup"
            phases.append((when, "failed", self.failure(text, message, location), {}))
        elif case.outcome == "failed":
            phases.append(("call", "failed", self.failure(text, message, location), {}))
        elif case.outcome == "skipped":
            where = (str(self.spec.test_dir / (case.file or "")), (case.line or 0) + 1, case.message)
            phases.append(("setup", "skipped", where, {}))
        elif case.outcome == "xfailed":
            phases.append(("call", "skipped", None, {"wasxfail": case.message}))
        elif case.outcome == "xpassed":
            phases.append(("call", "passed", None, {"wasxfail": case.message}))
        else:
            phases.append(("call", "passed", None, {}))
        reports = [
            self.report(
                inner,
                location,
                phase,
                outcome,
                longrepr,
                sections=sections,
                duration=case.duration,
                properties=case.properties,
                **extra,
            )
            for phase, outcome, longrepr, extra in phases
        ]
        if phases[-1][0] != "teardown":  # --junitxml writes a test's properties and output from it
            teardown = self.report(
                inner, location, "teardown", "passed", None, sections=sections, properties=case.properties
            )
            reports.append(teardown)
        return reports

    def collect_report(self, inner: str, outcome: Outcome, longrepr: Any) -> pytest.CollectReport:
        """The report of an inner collection error (``failed``) or skipped module."""
        if outcome == "failed":
            longrepr = self.failure(self.paths.text(str(longrepr)), "collection failure")
        return pytest.CollectReport(self.names.nodeid(inner), outcome, longrepr, [])

    def failure(
        self,
        text: str,
        message: str,
        location: Location | None = None,
        *,
        crash: CrashInfo | None = None,
        with_log: bool = True,
    ) -> InnerRepr:
        """A failure's text, with the run it came from and its log, and where it happened: the
        inner pytest's crash location when it sent one, else the test's own line."""
        run = self.run
        footer = ""
        if run is not None and with_log:
            log = self.evidence.shown(self.run_evidence().log)
            footer = f"\n\n[lrun] run {run.id} on {run.machine}; log: {log}"
        if crash is not None:
            where = Crash(self.paths.absolute(crash.path), crash.lineno or 0, crash.message or message)
        elif location:
            where = Crash(str(self.spec.test_dir / location[0]), (location[1] or 0) + 1, message)
        else:
            where = Crash(str(self.spec.test_dir), 0, message)
        return InnerRepr(text.rstrip("\n") + footer, where)

    def attach(self, report: pytest.TestReport, files: Sequence[Path]) -> None:
        """Attach ``files`` to ``report``: ``[[ATTACHMENT|path]]`` lines in its captured output
        (Jenkins, GitLab and Azure DevOps read them from a JUnit XML's system-out; pytest writes
        that output per ``junit_logging``), and ``lrun_attachments`` for pytest-html, Allure and
        the GitHub summary (:mod:`.html_extras`, :mod:`.allure_results`, :mod:`.github`)."""
        shown = [self.evidence.shown(path) for path in files[:MAX_ATTACHMENTS]]
        lines = [f"[[ATTACHMENT|{printable(path)}]]" for path in shown]
        if len(files) > MAX_ATTACHMENTS:
            lines.append(f"[lrun] {len(files) - MAX_ATTACHMENTS} more files under {files[0].parent}")
        report.sections.append(("Captured stdout (lrun attachments)", "\n".join(lines)))
        report.lrun_attachments = [str(path) for path in files]  # type: ignore[attr-defined]
        log = self.run_evidence().log
        if log in files:
            report.lrun_log = str(log)  # type: ignore[attr-defined]

    def run_evidence(self) -> RunEvidence:
        """Where the run's log and artifacts are (it is known by now)."""
        assert self.run is not None
        return self.evidence.of(self.run, self.label())

    def label(self) -> str:
        """The dispatched directory's name in the report folder (the rootdir's own name for ``.``)."""
        return self.spec.test_dir.name or "root"

    def properties(self) -> list[tuple[str, object]]:
        """The run's facts, on every report of the run: made once per run and attempt, not per
        report (a suite of 100,000 tests fires 300,000 reports, and these name files)."""
        run = self.run
        key = (
            None if run is None else (run.id, run.machine, run.test_dir_hash, self.origin, len(self.earlier))
        )
        if self._facts is None or self._facts[0] != key:
            self._facts = (key, self._run_facts())
        return list(self._facts[1])  # a list of each report's own

    def _run_facts(self) -> list[tuple[str, object]]:
        run = self.run
        if run is None:
            return [("lrun_machine", self.spec.where)]
        return [
            ("lrun_run_id", run.id),
            ("lrun_machine", run.machine),
            ("lrun_hash", run.test_dir_hash or ""),
            ("lrun_origin", self.origin),
            ("lrun_logs", self.evidence.shown(self.run_evidence().log)),
            ("lrun_artifacts", self.evidence.shown(self.run_evidence().artifacts)),
            *self._attempts(),
        ]

    def _attempts(self) -> list[tuple[str, object]]:
        """The attempts before this one, as a CI server shows flaky infrastructure (none: no property)."""
        if not self.earlier:
            return []
        earlier = [
            (
                f"lrun_attempt_{number}",
                f"run {run.id}: {run.error_code}: {one_line(run.error_msg or '')[:200]}",
            )
            for number, run in enumerate(self.earlier, 1)
        ]
        return [("lrun_attempts", len(self.earlier) + 1), *earlier]


def case_location(case: CaseResult) -> Location | None:
    """Where an inner JUnit XML's case is, when it names its file."""
    return (case.file, case.line, case.name) if case.file else None


def _captured(case: CaseResult) -> list[tuple[str, str]]:
    """The case's captured output without pytest's headers, as ``(stdout|stderr, text)``."""
    return [
        (name, _CAPTURE_HEADER.sub("", text or "").strip())
        for name, text in (("stdout", case.system_out), ("stderr", case.system_err))
    ]


def _as_subtest(report: pytest.TestReport, subtest: Subtest) -> None:
    """Make ``report`` the subtest report pytest 9 makes, so that the terminal, ``--junitxml``
    and the counts treat it as a local subtest: ``2 subtests passed``, ``SUBFAILED(i=1)``.
    (The test's own report comes with the outcome the inner pytest gave it.) A host pytest
    without native subtests (8) reports it as a test's report, as before."""
    try:
        from _pytest.subtests import SubtestContext, SubtestReport
    except ImportError:
        return
    context = SubtestContext(msg=subtest.msg, kwargs={})
    object.__setattr__(context, "kwargs", dict(subtest.kwargs))  # the inner pytest's reprs, as they are
    report.__class__ = SubtestReport
    report.context = context  # type: ignore[attr-defined]
