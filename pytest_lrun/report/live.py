"""Inner results as pytest reports: what the host reports for each run, and when.

As pytest-xdist's controller does with its workers' reports, the host collects
nothing of a dispatched directory: :class:`RunReports` turns one run's inner
reporter events (:mod:`pytest_lrun.wire.events`) into the ordinary hook calls as they
arrive -- ``pytest_runtest_logstart``, ``pytest_runtest_logreport`` (one
:class:`pytest.TestReport` per phase, with the inner outcome, duration, failure
text and captured output) and ``pytest_runtest_logfinish``, plus
``pytest_collectreport`` for inner collection errors and skipped modules -- so
the terminal, ``--junitxml``, ``--durations``, ``-x`` and other plugins
need no special case. Its hooks are called on the main thread only. The reports
are made by :mod:`.making` and named by :mod:`.naming`.

When the run ends, :meth:`RunReports.finish` reports what is left:

* events the live stream did not deliver are replayed from the stored ones (a
  cached, reused or attached run replays them all, so it reports exactly what the
  live run did); a run without events but with an inner JUnit XML (a command that
  writes one) gets a report per case;
* after a stop (timeout, ``lrun cancel``, Ctrl-C, the OOM killer, a vanished
  container) the test that was running fails with why, where (its own frames),
  what it printed and how long it ran (:mod:`.failures`), and the collected tests
  that never started are skipped as not run. A run this session stopped itself
  (``-x``, ``--maxfail``) adds only the last phases of tests under way: as with
  local tests, nothing new is reported after the session decided to stop;
* every run has one report of its own, ``DIR::lrun[machine]``, which carries its
  log and artifacts (:mod:`.run_report`).

Every inner test's hook calls go through the job's :class:`~.flaky.FlakyGate`: under
``--lrun-flaky-attempts`` the failed tests of a run that is rerun (:meth:`RunReports.rerun`)
are held back, so each test is reported once with its final outcome, and a quarantined
test's failure goes out as an xfail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.config.select import HostSelection
from pytest_lrun.core.errors import SESSION_STOPPED, LrunError
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.report.evidence import Evidence
from pytest_lrun.report.failures import stopped_reason, was_stopped, where_stopped
from pytest_lrun.report.flaky import FlakyGate, Quarantine
from pytest_lrun.report.hostpaths import HostPaths
from pytest_lrun.report.making import Outcome, ReportMaker, case_location
from pytest_lrun.report.naming import NodeIds, shown_dir
from pytest_lrun.report.outcomes import Detached, JobOutcome
from pytest_lrun.report.run_report import InnerTally, run_item
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Run
from pytest_lrun.wire.events import Collected, Event, Finished, Location, PhaseReport, Start
from pytest_lrun.wire.junit import CaseResult


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
        flaky_attempts: int = 1,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.session = session
        self.config = session.config
        self.spec = spec
        self.selection = selection
        self.say = say  # a progress line (the session prefixes "lrun: ")
        self.write = write  # a bare terminal line (--collect-only's node ids)
        self._by_keywords = selection is not None and selection.by_keywords
        self.names = NodeIds(spec, self.config.rootpath, suffix)
        self.shown = shown_dir(spec.test_dir, self.config.rootpath)  # in progress lines
        if spec.shard is not None:
            self.shown += f" [shard {spec.shard}]"
        start = self.config.invocation_params.dir
        self.paths = HostPaths(spec.test_dir, spec.machine.workdir, start)
        evidence = evidence or Evidence(None, lambda run_id: RunFiles(Path(run_id)), start)
        self.make = ReportMaker(spec, self.names, self.paths, evidence)
        self._failed: set[str] = set()  # inner tests with a failed phase: their teardown attaches the log
        self._inner_failures = 0  # failed phases of inner tests, reported on the host or not
        self.progress = Progress()
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
        # Each inner test's reports go out once, with its outcome over every attempt (--lrun-flaky-attempts).
        # A quarantined test is named as the terminal names it, without a machine's @suffix.
        listed = quarantine or Quarantine({})
        self.gate = FlakyGate(
            self.config,
            flaky_attempts,
            lambda: self.run.id if self.run else "",
            lambda inner: listed.reason(self.names.prefix + inner),
        )
        self._rerun = False  # whether the run under way reruns failed tests of an earlier one

    @property
    def run(self) -> Run | None:
        """The spec's run, once the store decided it."""
        return self.make.run

    # -- live --------------------------------------------------------------------------

    def prepared(self, run: Run, origin: str) -> None:
        """The store decided: ``run`` is this spec's run (``origin``: created, reused, cached)."""
        self.make.run, self.make.origin = run, origin

    def retried(self, failed: Run) -> None:
        """``failed`` (no inner test began) is tried again: the next attempt's events count from 0."""
        self.make.earlier.append(failed)
        self._seen, self._collected = -1, None
        # What the failed attempt counted, the next one counts again: the session's total stays true.
        self.session.testscollected -= self.progress.collected
        self.progress = Progress()
        self.counted = False

    def rerun(self, ended: RunResult, attempt: int) -> None:
        """``ended`` reported all it had (its failed tests held back), and attempt number
        ``attempt`` runs them again as a new run: its events count from 0, its tests once more."""
        if ended.events:
            self.feed(ended.events)
        self._publish(ended.run)
        self._seen, self._collected, self._finish = -1, None, None
        self._inner_failures = 0
        self._rerun = True
        again = {event.nodeid for event in ended.events or () if isinstance(event, PhaseReport)}
        for nodeid in again & self._failed:
            self._started.pop(nodeid, None)
            self._ended.discard(nodeid)
        self._failed -= again
        self.gate.next_attempt(attempt)

    def _publish(self, run: Run) -> None:
        """An earlier attempt's log and artifacts, which its held failures point to, in the report folder."""
        try:
            self.make.evidence.publish(run, self.make.label())
        except OSError as e:
            self.say(f"warning: the log and artifacts of run {run.id} were not published: {e}")

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
                    items = [_Deselected(f"{self.names.prefix}<deselected {i}>") for i in range(deselected)]
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
        if self._rerun:  # the tests of a rerun were counted by the first attempt
            return
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
                self.write(self.names.nodeid(nodeid))
            # The terminal's "N tests collected" counts what its collection reported (private).
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None and isinstance(getattr(reporter, "_numcollected", None), int):
                reporter._numcollected += len(nodeids)
        for error in event.errors:
            self._collectreport(error.nodeid, "failed", error.longrepr)
        for skipped in event.skipped:
            skip = skipped.skip
            where = (self.paths.absolute(skip.path), skip.lineno, skip.reason)
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
        self._fire(self._test_report(event), nodeid)
        if event.when == "teardown":
            self._ended.add(nodeid)
            self._logfinish(nodeid)

    def _test_report(self, event: PhaseReport) -> pytest.TestReport:
        # The reporter leaves out a location equal to the start's and keywords it sent already.
        start = self._started.get(event.nodeid)
        location = event.location or (start.location if start is not None else None)
        keywords = event.keywords or self._keywords.get(event.nodeid, ())
        if event.when == "teardown":
            self._keywords.pop(event.nodeid, None)
        elif event.keywords:
            self._keywords[event.nodeid] = event.keywords
        report = self.make.phase_report(event, location, keywords)
        if event.outcome == "failed":
            self._failed.add(event.nodeid)
        if event.when == "teardown" and event.nodeid in self._failed:
            self.make.attach(report, [self.make.run_evidence().log])
        return report

    def _count(self, tests: int) -> None:
        self.session.testscollected += tests
        self.progress.collected += tests

    # -- the end -----------------------------------------------------------------------

    def finish(self, outcome: JobOutcome, hook_error: Exception | None = None) -> None:
        """Report what the run's end adds (see the module docstring); ``hook_error``: a plugin's
        ``pytest_lrun_run_finished`` raised, and the run's own report fails with it. The job
        ends with it: failures held back for a rerun that never reported them go out, even
        when the session stops."""
        self._finish_run(outcome, hook_error)
        self.gate.release(stopped=self._stopping())

    def _finish_run(self, outcome: JobOutcome, hook_error: Exception | None) -> None:
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
            reason = stopped_reason(run)
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
            longrepr = self.make.failure(text, reason, where_stopped(trace, self.paths) or start.location)
            self._fire(
                self.make.report(
                    nodeid, start.location, "call", "failed", longrepr, sections=sections, duration=duration
                ),
                nodeid,
            )
            self._failed.add(nodeid)
            teardown = self.make.report(nodeid, start.location, "teardown", "passed", None, sections=sections)
            self.make.attach(teardown, [self.make.run_evidence().log])
            self._fire(teardown, nodeid)
            self._ended.add(nodeid)
            self._logfinish(nodeid)
        # Under a host -k/-m, a test never started has no keywords to decide it by: not reported.
        if was_stopped(run) and self._collected is not None and not self._by_keywords:
            reason = f"not run: the run was stopped ({run.status.value})"
            for nodeid in self._collected.nodeids:
                if nodeid in self._started or not self._wanted_id(nodeid):
                    continue
                where = (str(self.spec.test_dir / nodeid.split("::")[0]), None, reason)
                self._logstart(Start(-1, nodeid, None))
                self._fire(self.make.report(nodeid, None, "setup", "skipped", where), nodeid)
                # A passed teardown: --junitxml writes a test's properties and output from it.
                self._fire(self.make.report(nodeid, None, "teardown", "passed", None), nodeid)
                self._ended.add(nodeid)
                self._logfinish(nodeid)

    def finish_with_error(self, error: BaseException) -> None:
        """A bug stopped the job: the run's own report fails with it."""
        self.counted = True
        self._on_counted()
        self._run_report(error)

    def _run_report(self, outcome: JobOutcome | BaseException) -> None:
        """The run's own report, ``DIR::lrun[machine]`` (see :mod:`.run_report`): counted, it is
        started and finished as a test is. Failures held back for a rerun that never reported
        them go out first: the job ends with this report."""
        self.gate.release(stopped=self._stopping())
        has_inner = self._collected is not None or self._seen >= 0 or self.progress.collected > 0
        explained = self.progress.failed + self._inner_failures  # exit 1 (failures), 2 (collection errors)
        tally = InnerTally(collected=self._collected is not None, has_inner=has_inner, explained=explained)
        item = run_item(outcome, self.make, tally, self.say)
        if item.counted:
            self.session.testscollected += 1
            self.config.hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in item.reports(self.make):
            self._fire(report)
        if item.counted:
            self.config.hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _replay_case(self, case: CaseResult) -> None:
        """One case of an inner JUnit XML (a run without events) as a test's reports."""
        inner = case.nodeid_hint
        self._logstart(Start(-1, inner, case_location(case)))
        for report in self.make.case_reports(case):
            self._fire(report, inner)
        self._ended.add(inner)
        self._logfinish(inner)

    # -- firing ------------------------------------------------------------------------

    def _logstart(self, start: Start) -> None:
        self._started.setdefault(start.nodeid, start)
        self.progress.running = start.nodeid
        self.gate.start(
            start.nodeid, self.names.nodeid(start.nodeid), self.names.location(start.nodeid, start.location)
        )

    def _logfinish(self, inner: str) -> None:
        start = self._started.get(inner)
        self.progress.done += 1
        if self.progress.running == inner:
            self.progress.running = None
        location: Location | None = start.location if start else None
        self.gate.finish(inner, self.names.nodeid(inner), self.names.location(inner, location))

    def _fire(self, report: pytest.TestReport, inner: str | None = None) -> None:
        """Report ``report``; one of inner test ``inner`` goes through the flaky gate."""
        if report.failed and not hasattr(report, "wasxfail"):
            self.progress.failed += 1
        self.gate.report(inner, report)

    def _collectreport(self, inner: str, outcome: Outcome, longrepr: Any) -> None:
        if outcome == "failed":
            self.progress.failed += 1
        self.config.hook.pytest_collectreport(report=self.make.collect_report(inner, outcome, longrepr))

    def _stopping(self) -> bool:
        """Whether the session decided to stop (``-x``, ``--maxfail``): nothing more is reported."""
        return bool(self.session.shouldfail or self.session.shouldstop)

    # -- selection on the host (--lrun-select=host) ------------------------------------

    def _wanted_id(self, inner: str) -> bool:
        return self.selection is None or self.selection.wants_nodeid(inner)


@dataclass(frozen=True)
class _Deselected:
    """An inner test the container's ``-k``/``-m`` deselected, as ``pytest_deselected`` counts it."""

    nodeid: str


def _tests(count: int) -> str:
    return f"{count} inner test" if count == 1 else f"{count} inner tests"
