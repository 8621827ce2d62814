"""Inner results as pytest reports: what the host reports for each run, and when.

As pytest-xdist's controller does with its workers' reports, the host collects
nothing of a dispatched directory: :class:`RunReports` turns one run's inner
reporter events (:mod:`pytest_lrun.wire.events`) into the ordinary hook calls as they
arrive -- ``pytest_runtest_logstart``, ``pytest_runtest_logreport`` (one
:class:`pytest.TestReport` per phase, with the inner outcome, duration, failure
text and captured output) and ``pytest_runtest_logfinish``, plus
``pytest_collectreport`` for inner collection errors and skipped modules -- so
the terminal, ``--junitxml``, ``--durations``, ``-x`` and other plugins
need no special case. Its hooks are called on the main thread only.

A host node id is the dispatched directory's node id, ``/``, the inner node id,
and a suffix that tells apart runs of one directory (``@machine`` or ``@entry``).

When the run ends, :meth:`RunReports.finish` reports what is left:

* events the live stream did not deliver are replayed from the stored ones (a
  cached, reused or attached run replays them all, so it reports exactly what the
  live run did); a run without events but with an inner JUnit XML (a command that
  writes one) gets a report per case;
* after a stop (timeout, ``lrun cancel``, Ctrl-C, the OOM killer, a vanished
  container) the test that was running fails with why, where (its own frames),
  what it printed and how long it ran, and the collected tests that never started
  are skipped as not run. A run this session stopped itself (``-x``,
  ``--maxfail``) adds only the last phases of tests under way: as with local
  tests, nothing new is reported after the session decided to stop;
* every run has one report of its own, ``DIR::lrun[machine]`` (``lrun[machine]``
  for the rootdir), which carries its log and artifacts (:mod:`.evidence`): beside
  inner tests, a pass the terminal does not count, or an error when the run failed
  for its own reasons (a timeout, an engine error, an unsafe archive, pytest's exit
  3 or 4); without inner tests (a non-pytest command), the run's result as a test's
  (see :meth:`RunReports._run_report`).

Every report carries the run's facts as ``user_properties`` (``lrun_run_id``,
``lrun_machine``, ``lrun_hash``, ``lrun_origin``, ``lrun_logs``, ``lrun_artifacts``).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_lrun.config.select import HostSelection, run_prefix, tests_prefix
from pytest_lrun.core.errors import (
    CANCELLED,
    EXIT_NONZERO,
    INTERRUPTED,
    OOM_KILLED,
    SESSION_STOPPED,
    TIMED_OUT,
    ContainerGone,
    LrunError,
)
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.core.text import one_line, printable
from pytest_lrun.report.evidence import Evidence, RunEvidence
from pytest_lrun.report.hostpaths import HostPaths
from pytest_lrun.run.logs import tail
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import (
    Collected,
    CrashInfo,
    Event,
    Finished,
    Location,
    PhaseReport,
    Start,
    Subtest,
)
from pytest_lrun.wire.junit import CaseResult

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

Outcome = Literal["passed", "failed", "skipped"]
Phase = Literal["setup", "call", "teardown"]

# How the test that was running when a run stopped fails, by the run's error code.
_STOPPED_WHILE = {
    TIMED_OUT: "timed out after {timeout:g} s while running this test",
    CANCELLED: "cancelled while running this test",
    INTERRUPTED: "interrupted while running this test",
    OOM_KILLED: "killed by the OOM killer while running this test",
    ContainerGone.code: "the container vanished while running this test",
}


# How a run without inner tests fails as its command's test did (anything else is an error).
_COMMAND_FAILURES = (None, EXIT_NONZERO, TIMED_OUT, OOM_KILLED)


@dataclass(frozen=True)
class _Crash:
    """Where a failure happened and its one-line message: what pytest's short summary,
    ``--tb=line`` and ``--junitxml`` read from a ``longrepr.reprcrash``."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:  # as pytest's ReprFileLocation prints itself (--tb=line)
        return f"{self.path}:{self.lineno}: {self.message}"


class InnerRepr:
    """An inner failure's text as a report's ``longrepr`` (the terminal prints it as it is)."""

    def __init__(self, text: str, crash: _Crash) -> None:
        self.text = text
        self.reprcrash = crash

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


@dataclass
class Progress:
    """What a run has reported so far, for the per-run progress line."""

    collected: int = 0
    done: int = 0
    failed: int = 0
    running: str | None = None


class RunReports:
    """Fires the reports of one run (of one spec) on the main thread (see the module docstring)."""

    def __init__(
        self,
        session: pytest.Session,
        spec: RunSpec,
        *,
        suffix: str,
        selection: HostSelection | None = None,
        say: Callable[[str], None] = lambda line: None,
        write: Callable[[str], None] = lambda line: None,
        evidence: Evidence | None = None,
        on_counted: Callable[[], None] = lambda: None,
    ) -> None:
        self.session = session
        self.config = session.config
        self.spec = spec
        self.suffix = suffix
        self.selection = selection
        self.say = say  # a progress line (the session prefixes "lrun: ")
        self.write = write  # a bare terminal line (--collect-only's node ids)
        self._by_keywords = selection is not None and selection.by_keywords
        self.dir_nodeid = dir_nodeid(spec.test_dir, self.config.rootpath)
        # The rootdir dispatched itself: its inner node ids are the host's as they are.
        self._prefix = tests_prefix(self.dir_nodeid)
        self.shown = shown_dir(spec.test_dir, self.config.rootpath)  # in progress lines
        if spec.shard is not None:
            self.shown += f" [shard {spec.shard}]"
        start = self.config.invocation_params.dir
        self.paths = HostPaths(spec.test_dir, spec.machine.workdir, start)
        self.evidence = evidence or Evidence(None, lambda run_id: RunFiles(Path(run_id)), start)
        self._failed: set[str] = set()  # inner tests with a failed phase: their teardown attaches the log
        self._inner_failures = 0  # failed phases of inner tests, reported on the host or not
        self.progress = Progress()
        self.run: Run | None = None
        self.origin = "created"
        self._seen = -1  # the highest event ``n`` handled: the end's replay skips what came live
        self._collected: Collected | None = None
        self._started: dict[str, Start] = {}  # tests started (logstart fired), in order
        self._ended: set[str] = set()  # tests whose teardown was reported
        self._pending: dict[str, Start] = {}  # host -k/-m: started, not yet decided
        self._selected: dict[str, bool] = {}  # host -k/-m: decided by a test's first report
        self._keywords: dict[str, tuple[str, ...]] = {}  # a running test's, from its first report
        self._finish: Finished | None = None
        self.counted = False  # whether every test of the run is in the session's count
        self._on_counted = on_counted  # told when it becomes so, before the run's next report
        self.earlier: list[Run] = []  # attempts that failed for their infrastructure, retried
        self._facts: tuple[object, list[tuple[str, object]]] | None = None  # _properties, and for which run

    # -- live --------------------------------------------------------------------------

    def prepared(self, run: Run, origin: str) -> None:
        """The store decided: ``run`` is this spec's run (``origin``: created, reused, cached)."""
        self.run, self.origin = run, origin

    def retried(self, failed: Run) -> None:
        """``failed`` (no inner test began) is tried again: the next attempt's events count from 0."""
        self.earlier.append(failed)
        self._seen, self._collected = -1, None
        # What the failed attempt counted, the next one counts again: the session's total stays true.
        self.session.testscollected -= self.progress.collected
        self.progress = Progress()
        self.counted = False

    def feed(self, events: Iterable[Event]) -> None:
        """Report ``events`` (in the order written; any already handled are skipped)."""
        for event in events:
            if event.n <= self._seen:
                continue
            self._seen = event.n
            if self._stopping() and not self._finishes_a_started_test(event):
                continue  # the session stops: nothing new, but a test under way gets its last phases
            if isinstance(event, Collected):
                self._on_collected(event)
            elif isinstance(event, Start):
                self._on_start(event)
            elif isinstance(event, PhaseReport):
                self._on_report(event)
            else:
                self._finish = event
                deselected = event.counts.get("deselected", 0)
                if deselected:
                    what = f"{self.shown} on {self.spec.where}"
                    self.say(f"{what}: {_tests(deselected)} deselected")
                    # pytest's last line counts them as it counts local ones (their ids stay inside).
                    items = [_Deselected(f"{self._prefix}<deselected {i}>") for i in range(deselected)]
                    self.config.hook.pytest_deselected(items=items)

    def _finishes_a_started_test(self, event: Event) -> bool:
        """Whether ``event`` is a phase of a test already reported as started and not ended: as
        local pytest does after ``-x``, the test that stopped the session still reports its
        teardown (where ``--junitxml`` and pytest-html write it)."""
        return (
            isinstance(event, PhaseReport)
            and event.nodeid in self._started
            and event.nodeid not in self._ended
        )

    def _on_collected(self, event: Collected) -> None:
        self._collected = event
        if not self._by_keywords:  # under a host -k/-m, each test counts once its keywords decide it
            self.counted = True
            self._on_counted()
        nodeids = [nodeid for nodeid in event.nodeids if self._wanted_id(nodeid)]
        if not self._by_keywords:  # otherwise each test counts once its keywords decide it
            self._count(len(nodeids))
        what = f"{self.shown} on {self.spec.where}"
        self.say(f"{what}: {_tests(len(event.nodeids))} collected" + self._selected_note(nodeids))
        if self.config.option.collectonly:
            for nodeid in nodeids:
                self.write(self.nodeid(nodeid))
            # The terminal's "N tests collected" counts what its collection reported (private).
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None and isinstance(getattr(reporter, "_numcollected", None), int):
                reporter._numcollected += len(nodeids)
        for error in event.errors:
            self._collectreport(error.nodeid, "failed", error.longrepr)
        for skipped in event.skipped:
            skip = skipped.skip
            where = (self._host_path(skip.path), skip.lineno, skip.reason)
            self._collectreport(skipped.nodeid, "skipped", where)

    def _selected_note(self, nodeids: list[str]) -> str:
        if self.selection is None:
            return ""
        return f" (host selection: {'by -k/-m' if self._by_keywords else len(nodeids)})"

    def _on_start(self, event: Start) -> None:
        if self._by_keywords:
            self._pending[event.nodeid] = event  # logstart waits for the keywords of its first report
        elif self._wanted_id(event.nodeid):
            self._logstart(event)

    def _on_report(self, event: PhaseReport) -> None:
        nodeid = event.nodeid
        if event.outcome == "failed" and event.wasxfail is None:
            self._inner_failures += 1  # selected on the host or not: it explains the inner exit 1
        if self._by_keywords and nodeid not in self._selected:
            assert self.selection is not None
            wanted = self.selection.wants_nodeid(nodeid) and self.selection.wants_keywords(event.keywords)
            self._selected[nodeid] = wanted
            if wanted:
                self._count(1)
        if not self._selected.get(nodeid, self._wanted_id(nodeid)):
            return
        if nodeid not in self._started:
            start = self._pending.pop(nodeid) if nodeid in self._pending else None
            self._logstart(start or Start(event.n, nodeid, event.location))
        self._fire(self._test_report(event))
        if event.when == "teardown":
            self._ended.add(nodeid)
            self._logfinish(nodeid)

    def _count(self, tests: int) -> None:
        self.session.testscollected += tests
        self.progress.collected += tests

    # -- the end -----------------------------------------------------------------------

    def finish(self, outcome: JobOutcome, hook_error: Exception | None = None) -> None:
        """Report what the run's end adds (see the module docstring); ``hook_error``: a plugin's
        ``pytest_lrun_run_finished`` raised, and the run's own report fails with it."""
        self.counted = True
        self._on_counted()
        if isinstance(outcome, LrunError | Detached):
            if isinstance(outcome, Detached):
                self.prepared(outcome.run, "detached")
            self._run_report(hook_error or outcome)
            return
        self.prepared(outcome.run, outcome.origin)
        run = outcome.run
        if run.error_code == SESSION_STOPPED or self._stopping():
            if outcome.events:
                self.feed(outcome.events)  # only the last phases of tests under way (see feed)
            return
        if outcome.events:
            self.feed(outcome.events)
        elif outcome.cases is not None and self._seen < 0:
            self._count(len(outcome.cases))
            for case in outcome.cases:
                self._replay_case(case)
        if outcome.dropped_events:
            self.say(
                f"{self.shown} on {run.machine}: {outcome.dropped_events} inner events past the events "
                f"file's cap (--lrun-log-max-bytes) were not kept; the run's log has the rest"
            )
        if self._stopping():
            return
        self._report_stop(run)
        self._run_report(hook_error or outcome)

    def _report_stop(self, run: Run) -> None:
        """After a stop, fail the test that was running -- with what it printed and how long it
        ran -- and skip those never started."""
        finish = self._finish
        cut = finish.running if finish is not None else None
        trace = self.paths.text(finish.interrupt) if finish is not None and finish.interrupt else ""
        for nodeid, start in list(self._started.items()):
            if nodeid in self._ended:
                continue
            default = f"the run ended ({run.status.value}) while running this test"
            reason = _STOPPED_WHILE.get(run.error_code or "", default).format(timeout=run.timeout or 0)
            text = "\n\n".join(part for part in (reason, trace) if part)
            sections: list[tuple[str, str]] = []
            duration = 0.0
            if cut is not None and cut.nodeid == nodeid:
                duration = cut.duration
                sections = [
                    (f"Captured {name} call", value)
                    for name, value in (("stdout", cut.stdout), ("stderr", cut.stderr))
                    if value
                ]
            longrepr = self._repr(text, reason, _where_stopped(trace, self.paths) or start.location)
            self._fire(
                self._made_report(
                    nodeid, start.location, "call", "failed", longrepr, sections=sections, duration=duration
                )
            )
            self._failed.add(nodeid)
            teardown = self._made_report(
                nodeid, start.location, "teardown", "passed", None, sections=sections
            )
            self._attach(teardown, [self._evidence().log])
            self._fire(teardown)
            self._ended.add(nodeid)
            self._logfinish(nodeid)
        stopped = run.status in (Status.TIMEOUT, Status.INTERRUPTED) or run.error_code in _STOPPED_WHILE
        # Under a host -k/-m, a test never started has no keywords to decide it by: not reported.
        if stopped and self._collected is not None and not self._by_keywords:
            reason = f"not run: the run was stopped ({run.status.value})"
            for nodeid in self._collected.nodeids:
                if nodeid in self._started or not self._wanted_id(nodeid):
                    continue
                where = (str(self.spec.test_dir / nodeid.split("::")[0]), None, reason)
                self._logstart(Start(-1, nodeid, None))
                self._fire(self._made_report(nodeid, None, "setup", "skipped", where))
                self._teardown(nodeid, None)

    def _teardown(self, inner: str, location: Location | None, **fields: Any) -> None:
        """End a test the host reports on its own: a passed teardown (``--junitxml`` writes a
        test's properties and output from it) and ``logfinish``."""
        self._fire(self._made_report(inner, location, "teardown", "passed", None, **fields))
        self._ended.add(inner)
        self._logfinish(inner)

    def _failed_itself(self, run: Run) -> bool:
        """Whether the run failed for its own reasons, beyond what its inner tests say: a
        timeout, a cancel, the OOM killer, an engine error, a refused archive, a crash, a
        usage error, or a failing exit that no inner report explains."""
        if run.error_code not in (None, EXIT_NONZERO):
            return True  # e.g. an artifact archive was refused, even from a run that passed
        if run.status is Status.COMPLETED:
            return False
        if run.status is not Status.FAILED or run.exit_code not in (1, 2, 5):
            return True  # timeout, interrupted, a usage error (4)...
        if run.exit_code == 5:  # "no tests collected": a selection that picks nothing here is no failure
            return self._collected is None
        inner = self._collected is not None or self._seen >= 0 or self.progress.collected > 0
        explained = self.progress.failed + self._inner_failures  # exit 1 (failures), 2 (collection errors)
        return not inner or explained == 0

    def finish_with_error(self, error: BaseException) -> None:
        """A bug stopped the job: the run's own report fails with it."""
        self.counted = True
        self._on_counted()
        self._run_report(error)

    def _run_report(self, outcome: JobOutcome | BaseException) -> None:
        """The run's own report, ``DIR::lrun[machine]`` (see the module docstring): its log and
        artifacts, published to the report folder and attached. With inner tests, it is an error
        when the run failed for its own reasons, else a pass the terminal does not count: the
        inner tests say how it went. Without (a command other than pytest), it is the run's
        result: it passes, or fails as a test does (a non-zero exit, a timeout, the OOM
        killer); when the run failed otherwise (a refused archive, a cancel), it is an error."""
        name = self.suffix.lstrip("@") or self.spec.where
        if self.spec.shard is not None:
            name += f" shard {self.spec.shard}"
        nodeid = f"{run_prefix(self.dir_nodeid)}{name}]"
        location = (self.dir_nodeid, None, nodeid)
        failure: Any = None  # the longrepr of a run that failed for its own reasons
        skip: Any = None
        has_inner = self._collected is not None or self._seen >= 0 or self.progress.collected > 0
        command_failed = False  # a run without inner tests whose command exited non-zero
        files: list[Path] = []
        sections: list[tuple[str, str]] = []
        if isinstance(outcome, LrunError):
            failure = self._repr(str(outcome), f"{outcome.code}: {one_line(str(outcome))}")
        elif isinstance(outcome, BaseException):
            text = "".join(traceback.format_exception(type(outcome), outcome, outcome.__traceback__))
            failure = self._repr(text, f"pytest-lrun internal error: {outcome!r}")
        elif isinstance(outcome, Detached):
            target = outcome.batch_id or outcome.run.id
            skip = (
                str(self.spec.test_dir),
                None,
                f"detached as run {outcome.run.id}; attach with --lrun-attach={target}",
            )
        else:
            evidence = self._publish(outcome.run)
            files = evidence.files()
            output = tail(evidence.log, LOG_SECTION_BYTES)
            if output:
                sections.append(("lrun container output", output))
            run = outcome.run
            if self._failed_itself(run):
                log = self.evidence.shown(evidence.log) if evidence.log.is_file() else None
                text = _run_text(run, log)
                message = f"{run.error_code}: {one_line(run.error_msg or '')}" if run.error_msg else text
                failure = self._repr(text, message.splitlines()[0], with_log=log is not None)
                command_failed = not has_inner and run.error_code in _COMMAND_FAILURES
        seconds = _run_seconds(outcome)
        phases: list[tuple[Phase, Outcome, Any, float]]
        if command_failed:  # the command was the test, and it failed
            phases = [("setup", "passed", None, 0.0), ("call", "failed", failure, seconds)]
            phases.append(("teardown", "passed", None, 0.0))
        elif failure is not None:  # an error, as a fixture's: counted as one, never as a test's result
            phases = [("setup", "failed", failure, seconds), ("teardown", "passed", None, 0.0)]
        elif skip is not None:
            phases = [("setup", "skipped", skip, 0.0), ("teardown", "passed", None, 0.0)]
        else:
            phases = [
                ("setup", "passed", None, 0.0),
                ("call", "passed", None, seconds),
                ("teardown", "passed", None, 0.0),
            ]
        # With inner tests, a run that went well is no test of the user's: its report is not counted.
        counted = failure is not None or skip is not None or not has_inner
        if counted:
            self.session.testscollected += 1
            self.config.hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        for when, word, longrepr, duration in phases:
            report = pytest.TestReport(
                nodeid,
                location,
                {"lrun": 1},
                word,
                longrepr,
                when,
                sections if when != "teardown" else [],
                duration,
                user_properties=self._properties(),
                lrun_run=True,
                lrun_counted=counted,
            )
            if when == "teardown" and files:
                self._attach(report, files)
            self._fire(report)
        if counted:
            self.config.hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def _publish(self, run: Run) -> RunEvidence:
        """The run's evidence, published to the report folder (a failure is a warning, not the run's)."""
        try:
            return self.evidence.publish(run, self._label())
        except OSError as e:
            self.say(f"warning: the log and artifacts of run {run.id} were not published: {e}")
            return self.evidence.of(run, self._label())

    # -- building reports --------------------------------------------------------------

    def nodeid(self, inner: str) -> str:
        return f"{self._prefix}{inner}{self.suffix}"

    def _location(self, inner: str, location: Location | None) -> tuple[str, int | None, str]:
        if location is None:
            return (f"{self._prefix}{inner.split('::')[0]}", None, inner.split("::")[-1])
        path, lineno, domain = location
        return (f"{self._prefix}{path}", lineno, domain + self.suffix)

    def _host_path(self, path: str) -> str:
        """A path the container named, as the host has it (the inner files are the directory's)."""
        return self.paths.absolute(path)

    def _test_report(self, event: PhaseReport) -> pytest.TestReport:
        # The reporter leaves out a location equal to the start's and keywords it sent already.
        start = self._started.get(event.nodeid)
        location = event.location or (start.location if start is not None else None)
        keywords = event.keywords or self._keywords.get(event.nodeid, ())
        if event.when == "teardown":
            self._keywords.pop(event.nodeid, None)
        elif event.keywords:
            self._keywords[event.nodeid] = event.keywords
        longrepr: Any = None
        if event.skip is not None:
            longrepr = (self._host_path(event.skip.path), event.skip.lineno, event.skip.reason)
        elif event.longrepr is not None and event.outcome == "failed":
            text = self.paths.text(event.longrepr)
            longrepr = self._repr(text, _crash_line(event.longrepr), location, crash=event.crash)
        elif event.longrepr is not None:
            longrepr = event.longrepr
        extra: dict[str, Any] = {}
        if event.wasxfail is not None:
            extra["wasxfail"] = event.wasxfail
        report = self._made_report(
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
        if event.outcome == "failed":
            self._failed.add(event.nodeid)
        if event.when == "teardown" and event.nodeid in self._failed:
            self._attach(report, [self._evidence().log])
        return report

    def _evidence(self) -> RunEvidence:
        assert self.run is not None
        return self.evidence.of(self.run, self._label())

    def _label(self) -> str:
        """The dispatched directory's name in the report folder (the rootdir's own name for ``.``)."""
        return self.spec.test_dir.name or "root"

    def _attach(self, report: pytest.TestReport, files: Sequence[Path]) -> None:
        """Attach ``files`` to ``report``: ``[[ATTACHMENT|path]]`` lines in its captured output
        (Jenkins, GitLab and Azure DevOps read them from a JUnit XML's system-out; pytest writes
        that output per ``junit_logging``), and ``lrun_attachments`` for pytest-html, Allure and
        the GitHub summary (:mod:`pytest_lrun.sinks`)."""
        shown = [self.evidence.shown(path) for path in files[:MAX_ATTACHMENTS]]
        lines = [f"[[ATTACHMENT|{printable(path)}]]" for path in shown]
        if len(files) > MAX_ATTACHMENTS:
            lines.append(f"[lrun] {len(files) - MAX_ATTACHMENTS} more files under {files[0].parent}")
        report.sections.append(("Captured stdout (lrun attachments)", "\n".join(lines)))
        report.lrun_attachments = [str(path) for path in files]  # type: ignore[attr-defined]
        log = self._evidence().log
        if log in files:
            report.lrun_log = str(log)  # type: ignore[attr-defined]

    def _made_report(
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
        return pytest.TestReport(
            self.nodeid(inner),
            self._location(inner, location),
            {keyword: 1 for keyword in keywords},
            outcome,
            longrepr,
            when,
            sections,
            duration,
            user_properties=[*properties, *self._properties()],
            **extra,
        )

    def _repr(
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
            footer = (
                f"\n\n[lrun] run {run.id} on {run.machine}; log: {self.evidence.shown(self._evidence().log)}"
            )
        if crash is not None:
            where = _Crash(self.paths.absolute(crash.path), crash.lineno or 0, crash.message or message)
        elif location:
            where = _Crash(str(self.spec.test_dir / location[0]), (location[1] or 0) + 1, message)
        else:
            where = _Crash(str(self.spec.test_dir), 0, message)
        return InnerRepr(text.rstrip("\n") + footer, where)

    def _properties(self) -> list[tuple[str, object]]:
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
            ("lrun_logs", self.evidence.shown(self._evidence().log)),
            ("lrun_artifacts", self.evidence.shown(self._evidence().artifacts)),
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

    def _replay_case(self, case: CaseResult) -> None:
        """One case of an inner JUnit XML (a run without events) as a test's reports."""
        inner = case.nodeid_hint
        location: Location | None = (case.file, case.line, case.name) if case.file else None
        message = case.message or f"{case.outcome} in the container"
        text = "\n\n".join(part.strip("\n") for part in (case.message, case.text) if part) or message
        sections = [(f"Captured {name} call", text) for name, text in _captured(case) if text]
        phases: list[tuple[Phase, Outcome, Any, dict[str, Any]]] = []
        if case.outcome == "error":
            when: Phase = "teardown" if case.when == "teardown" else "setup"
            phases.append((when, "failed", self._repr(text, message, location), {}))
        elif case.outcome == "failed":
            phases.append(("call", "failed", self._repr(text, message, location), {}))
        elif case.outcome == "skipped":
            where = (str(self.spec.test_dir / (case.file or "")), (case.line or 0) + 1, case.message)
            phases.append(("setup", "skipped", where, {}))
        elif case.outcome == "xfailed":
            phases.append(("call", "skipped", None, {"wasxfail": case.message}))
        elif case.outcome == "xpassed":
            phases.append(("call", "passed", None, {"wasxfail": case.message}))
        else:
            phases.append(("call", "passed", None, {}))
        self._logstart(Start(-1, inner, location))
        for phase_when, outcome, longrepr, extra in phases:
            report = self._made_report(
                inner,
                location,
                phase_when,
                outcome,
                longrepr,
                sections=sections,
                duration=case.duration,
                properties=case.properties,
                **extra,
            )
            self._fire(report)
        if phases[-1][0] != "teardown":
            self._teardown(inner, location, sections=sections, properties=case.properties)
        else:
            self._ended.add(inner)
            self._logfinish(inner)

    # -- firing ------------------------------------------------------------------------

    def _logstart(self, start: Start) -> None:
        self._started.setdefault(start.nodeid, start)
        self.progress.running = start.nodeid
        self.config.hook.pytest_runtest_logstart(
            nodeid=self.nodeid(start.nodeid), location=self._location(start.nodeid, start.location)
        )

    def _logfinish(self, inner: str) -> None:
        start = self._started.get(inner)
        self.progress.done += 1
        if self.progress.running == inner:
            self.progress.running = None
        self.config.hook.pytest_runtest_logfinish(
            nodeid=self.nodeid(inner), location=self._location(inner, start.location if start else None)
        )

    def _fire(self, report: pytest.TestReport) -> None:
        if report.failed and not hasattr(report, "wasxfail"):
            self.progress.failed += 1
        self.config.hook.pytest_runtest_logreport(report=report)

    def _collectreport(self, inner: str, outcome: Outcome, longrepr: Any) -> None:
        if outcome == "failed":
            longrepr = self._repr(self.paths.text(str(longrepr)), "collection failure")
            self.progress.failed += 1
        report = pytest.CollectReport(self.nodeid(inner), outcome, longrepr, [])
        self.config.hook.pytest_collectreport(report=report)

    def _stopping(self) -> bool:
        """Whether the session decided to stop (``-x``, ``--maxfail``): nothing more is reported."""
        return bool(self.session.shouldfail or self.session.shouldstop)

    # -- selection on the host (--lrun-select=host) ------------------------------------

    def _wanted_id(self, inner: str) -> bool:
        return self.selection is None or self.selection.wants_nodeid(inner)


# The last location line of a traceback (host paths): ``hangs/test_hangs.py:11: KeyboardInterrupt``.
_TRACE_LOCATION = re.compile(r"^(?P<path>\S+\.py):(?P<line>\d+): ", re.MULTILINE)


def _where_stopped(trace: str, paths: HostPaths) -> Location | None:
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


@dataclass(frozen=True)
class _Deselected:
    """An inner test the container's ``-k``/``-m`` deselected, as ``pytest_deselected`` counts it."""

    nodeid: str


def _tests(count: int) -> str:
    return f"{count} inner test" if count == 1 else f"{count} inner tests"


def _crash_line(longrepr: str | None) -> str:
    """The exception line of a failure's text (pytest's ``E   ...``), which the short summary shows."""
    for line in (longrepr or "").splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    return ""


# pytest's junit_logging=all wraps each captured stream in such a header, empty or not.
_CAPTURE_HEADER = re.compile(r"^-{5,} Captured (?:Log|Out|Err) -{5,}$", re.MULTILINE)


def _captured(case: CaseResult) -> list[tuple[str, str]]:
    """The case's captured output without pytest's headers, as ``(stdout|stderr, text)``."""
    return [
        (name, _CAPTURE_HEADER.sub("", text or "").strip())
        for name, text in (("stdout", case.system_out), ("stderr", case.system_err))
    ]


def dir_nodeid(path: Path, rootpath: Path) -> str:
    """A dispatched directory as pytest names it: its path from the rootdir (absolute outside it).

    Also the name under which the store keeps the directory's inner durations.
    """
    try:
        return path.relative_to(rootpath).as_posix()
    except ValueError:
        return str(path)


def is_lrun_report(report: pytest.TestReport) -> bool:
    """Whether ``report`` is one pytest-lrun fired (every one carries ``lrun_machine``)."""
    return any(name == "lrun_machine" for name, _value in report.user_properties)


def shown_dir(path: Path, rootpath: Path) -> str:
    """A dispatched directory as lines and tables name it: its node id, or its name for the rootdir."""
    shown = dir_nodeid(path, rootpath)
    return path.name or shown if shown == "." else shown


def _run_seconds(outcome: JobOutcome | BaseException) -> float:
    return run_duration(outcome.run) if isinstance(outcome, RunResult) else 0.0


def _run_text(run: Run, log: str | None) -> str:
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


def run_duration(run: Run) -> float:
    if run.started_at is None:
        return 0.0
    return max(0.0, (run.ended_at or run.started_at) - run.started_at)


def summary_rows(rows: Sequence[tuple[RunSpec, JobOutcome]], rootpath: Path) -> list[list[str]]:
    """The terminal summary table: (entry,) dir, machine, short hash, status, origin, duration, run id."""
    table = [["dir", "machine", "hash", "status", "origin", "duration", "run id"]]
    for spec, outcome in rows:
        shown = shown_dir(spec.test_dir, rootpath)
        if spec.shard is not None:
            shown += f" [{spec.shard}]"
        if isinstance(outcome, LrunError):
            row = [shown, spec.machine.name, "-", outcome.code, "-", "-", getattr(outcome, "run_id", "-")]
        else:
            run = outcome.run
            origin = "detached" if isinstance(outcome, Detached) else outcome.origin
            duration = "-" if isinstance(outcome, Detached) else f"{run_duration(run):.1f}s"
            row = [shown, run.machine, run.test_dir_hash[:8], run.status.value, origin, duration, run.id]
        table.append(row)
    if any(spec.plan_entry for spec, _ in rows):
        table[0].insert(0, "entry")
        for (spec, _), row in zip(rows, table[1:], strict=True):
            row.insert(0, spec.plan_entry or "-")
    return table
