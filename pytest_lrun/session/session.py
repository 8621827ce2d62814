"""The stateful side of the plugin: one :class:`LrunSession` per pytest invocation.

Registered as a plugin (``lrun-session``) only when an ``--lrun-*`` switch turns
dispatching on, so pytest without them pays nothing. At session start its
:class:`~.jobs.JobPlanner` resolves what to run into jobs (from directory and node id
arguments, a plan, or the runs to attach to; an unknown machine fails before anything
runs), and it reconciles the store's live runs on those machines.

It then works as pytest-xdist's controller (``DSession``) does: it collects
nothing itself and takes over ``pytest_runtestloop``. The jobs run on worker
threads (:mod:`.workers`); the main thread's loop turns what they report on the
queue (:mod:`.events`) -- each run's inner events as the container writes them,
and its end -- into ordinary report hooks through
:class:`~pytest_lrun.report.live.RunReports`, so reports of runs on different
machines interleave as those runs progress. When ``-x`` or ``--maxfail`` stops
the session, the runs it created are stopped (``session_stopped``) and those it
only attached to go on for their owners. It kills its containers on Ctrl-C,
writes progress lines and the summary table at the end (:mod:`.terminal`), and
keeps the state dir under its size cap.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.config.machines import Machine, machine_resolver
from pytest_lrun.config.quarantine import FROM_STORE, read_quarantine_file
from pytest_lrun.config.select import HostSelection
from pytest_lrun.config.settings import Settings
from pytest_lrun.core.errors import EXIT_ENGINE_UNREACHABLE, ConfigError, EngineUnreachable, LrunError
from pytest_lrun.engine import Engine
from pytest_lrun.engine.pool import EnginePool, connect
from pytest_lrun.report.evidence import Evidence, default_report_dir
from pytest_lrun.report.flaky import Flaky, Quarantine, TestStatus, flaky_status
from pytest_lrun.report.github import is_github_actions
from pytest_lrun.report.live import RunReports
from pytest_lrun.report.naming import dir_nodeid, run_suffix
from pytest_lrun.report.outcomes import Detached, JobOutcome
from pytest_lrun.report.run_report import is_uncounted
from pytest_lrun.report.summary import summary_rows
from pytest_lrun.run.balance import durations_of
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.gc import gc
from pytest_lrun.run.recovery import reconcile
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.session.events import EventQueue, JobEnded, Live, Prepared, Rerun, Retried, SessionEvent
from pytest_lrun.session.jobs import Job, JobPlanner
from pytest_lrun.session.reruns import Reruns
from pytest_lrun.session.terminal import (
    ProgressLines,
    Terminal,
    TerminalProgress,
    index_teardown_reports,
    shown_spec,
    write_flaky,
    write_quarantined,
    write_summary,
)
from pytest_lrun.session.workers import Workers
from pytest_lrun.store import Batch, Run, RunStore, open_store
from pytest_lrun.store.outcomes import outcomes_of


class LrunSession:
    """Dispatches this invocation's jobs and keeps their outcomes for the report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.store: RunStore = open_store(
            settings.resolved_state_dir(), settings.store, waits=settings.store_waits
        )
        self.batches = self.store.batches
        # The machine tables are found as `lrun` finds them: --lrun-config, else upward from here.
        resolver = machine_resolver(settings.config, config.invocation_params.dir)
        self.engines = EnginePool(lambda m: config.hook.pytest_lrun_make_engine(machine=m, config=config))
        self.terminal = Terminal(config)
        self.events = EventQueue()
        self.workers = Workers(
            self.events, config.rootpath, detach=settings.detach, infra_retries=settings.infra_retries
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.engines,
            keep=settings.keep,
            reuse=settings.reuse,
            busy_wait=settings.busy_wait,
            log_max_bytes=settings.log_max_bytes,
            terminal_reserve=settings.terminal_reserve_bytes,
            stop_grace=settings.stop_grace,
            on_output=self.workers.output if settings.live else None,
            on_events=self.workers.inner_events,
            on_prepared=self._prepared,
            on_queued=self.workers.queued,
            on_build=self.workers.build_line,
            on_retry=self.workers.retried,
            infra_retries=settings.infra_retries,
            remove_later=True,  # a worker takes its next run while the last one's container goes
            stage=not settings.detach,  # a detached run never frees its slot in this session
        )
        self._batch: Batch | None = None  # the batch as refreshed at the end of the session
        self.jobs: list[Job] = []
        self.outcomes: dict[RunSpec, Future[JobOutcome]] = {}
        self.reports: dict[RunSpec, RunReports] = {}
        self._rerun_of: dict[RunSpec, RunSpec] = {}  # a rerun's spec -> its job's (--lrun-flaky-attempts)
        self.quarantine: Quarantine | None = None  # --lrun-quarantine, read at session start
        self._by_run: dict[str, RunReports] = {}
        self.planner = JobPlanner(config, settings, self.store, resolver, self.dispatcher, self.terminal.say)
        if settings.flaky_attempts > 1:  # a job's failed inner tests run again, as the planner selects them
            self.workers.reruns = Reruns(settings.flaky_attempts, self.planner.rerun_spec)
        self._progress = TerminalProgress(config)
        start = config.invocation_params.dir
        report_dir = settings.report_dir or default_report_dir(
            config.getoption("xmlpath", None), config.getoption("htmlpath", None)
        )
        self.evidence = Evidence(start / report_dir if report_dir else None, self.store.files, start)

    def register_sinks(self) -> None:
        """Register what hands the runs' results to the report tools in use (pytest-html,
        Allure, GitHub Actions): each reads pytest-lrun's reports as they are fired."""
        manager = self.config.pluginmanager
        html = self.config.getoption("htmlpath", None)
        if html and manager.hasplugin("html"):
            from pytest_lrun.report.html_extras import HtmlExtras

            html_path = Path(os.path.expanduser(os.path.expandvars(html)))  # as pytest-html expands it
            manager.register(HtmlExtras(self.config.invocation_params.dir / html_path), "lrun-html")
        if self.config.getoption("allure_report_dir", None):
            from pytest_lrun.report.allure_results import AllureResults

            attach = bool(self.config.getoption("attach_capture", True))
            manager.register(AllureResults(attach_capture=attach), "lrun-allure")
        if is_github_actions(os.environ):
            from pytest_lrun.report.github import GithubActions

            github = GithubActions(os.environ, self.config.rootpath, self._runs_table, self.evidence.shown)
            manager.register(github, "lrun-github")

    def _ended(self) -> list[tuple[RunSpec, JobOutcome]]:
        """The jobs that ended with an outcome (not those that never began, nor a worker's bug)."""
        return [
            (spec, future.result())
            for spec, future in self.outcomes.items()
            if future.done() and not future.cancelled() and future.exception() is None
        ]

    def _engine_unreachable(self) -> bool:
        """Whether a run could not happen, or ended, because its machine's engine did not answer."""
        for _spec, outcome in self._ended():
            code = outcome.code if isinstance(outcome, LrunError) else outcome.run.error_code
            if code == EngineUnreachable.code:
                return True
        return False

    def _runs_table(self) -> list[list[str]]:
        """The summary table (header first) of the runs that ended."""
        rows = self._ended()
        if not rows:
            return []
        flaky = None
        if self.settings.flaky_attempts > 1:
            flaky = {spec: len(reports.gate.flaky) for spec, reports in self.reports.items()}
        return summary_rows(rows, self.config.rootpath, flaky)

    @property
    def specs(self) -> list[RunSpec]:
        return [job.spec for job in self.jobs]

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        """Start every job on the worker threads (:mod:`.workers`)."""
        for job in self.jobs:
            self.outcomes[job.spec] = Future()
        collect_only = bool(self.config.option.collectonly)
        self.workers.start(self.dispatcher, self.jobs, self.planner.batch_id, collect_only=collect_only)

    def _prepared(self, spec: RunSpec, run: Run, origin: str) -> None:
        """The dispatcher's word (on a worker thread) that the store decided ``spec``'s run: a plan's
        entry is recorded in its batch at once, and the target's next job may ask."""
        self.workers.decided(spec)
        batch_id = self.planner.batch_id
        if batch_id is not None and spec.plan_entry is not None:
            self.batches.record(batch_id, spec.plan_entry, run.id)
        self.events.put(Prepared(spec, run, origin))

    # -- the main thread's side of the event queue ------------------------------------

    def loop(self, session: pytest.Session) -> None:
        """Handle the workers' events until every job ended (pytest-xdist's ``DSession.loop``).

        When a report makes the session stop (``-x``, ``--maxfail``), the runs this
        session created are stopped and the loop waits for the jobs to wind up;
        nothing more is reported.
        """
        lines = ProgressLines(self.terminal, self.config.rootpath)
        stopped = False
        progress = self._progress
        progress.hold()
        while not all(future.done() for future in self.outcomes.values()):
            event = self.events.wait()
            if event is not None:
                self._handle(event)
            if not stopped and (session.shouldfail or session.shouldstop):
                stopped = True
                why = session.shouldfail or session.shouldstop
                self.terminal.say(f"{why}: stopping the runs this session created")
                self.dispatcher.stop_created()
            if lines.due():
                lines.show(
                    reports for spec, reports in self.reports.items() if not self.outcomes[spec].done()
                )
        self._drain()
        progress.release()
        progress.end()

    def _counted(self) -> None:
        """A run counted all its tests: once every run has, the terminal's percentages are true."""
        if all(reports.counted for reports in self.reports.values()):
            self._progress.release()

    def _drain(self) -> None:
        """Handle the events still queued."""
        for event in self.events.queued():
            self._handle(event)

    def _handle(self, event: SessionEvent) -> None:
        if isinstance(event, str):
            self.terminal.say(event)
        elif isinstance(event, Prepared):
            reports = self._reports_of(event.spec)
            if reports is not None:  # not a run of its own (the inner collection before shards)
                reports.prepared(event.run, event.origin)
                self._by_run[event.run.id] = reports
        elif isinstance(event, Retried):
            reports = self._reports_of(event.spec)
            if reports is not None:
                reports.retried(event.failed)
        elif isinstance(event, Rerun):
            self._rerun_of[event.rerun] = event.spec
            self.reports[event.spec].rerun(event.ended, event.attempt)
            self._save_outcomes(event.spec, event.ended)
        elif isinstance(event, Live):
            if event.run_id in self._by_run:  # not a run reconcile adopted for nobody
                self._by_run[event.run_id].feed(event.events)
        else:
            self._job_ended(event)

    def _reports_of(self, spec: RunSpec) -> RunReports | None:
        """The reports of ``spec``'s job (a rerun's are its job's); None for a run of no job's own."""
        return self.reports.get(self._rerun_of.get(spec, spec))

    def _job_ended(self, event: JobEnded) -> None:
        future = self.outcomes[event.spec]
        if future.done():
            return
        reports = self.reports[event.spec]
        if event.error is not None:
            reports.finish_with_error(event.error)
            future.set_exception(event.error)
            return
        if event.outcome is None:
            future.cancel()  # never began: the session stopped first, or nothing to collect
            return
        self._save_durations(event.spec, event.outcome)
        self._save_outcomes(event.spec, event.outcome)
        if isinstance(event.outcome, RunResult) and event.outcome.events:
            # A cached or replayed run's tests first, then the line that says how it ended.
            reports.prepared(event.outcome.run, event.outcome.origin)
            reports.feed(event.outcome.events)
        if event.said is not None:
            self.terminal.say(event.said)
        try:
            self.config.hook.pytest_lrun_run_finished(
                spec=event.spec, outcome=event.outcome, config=self.config
            )
        except Exception as e:  # a plugin's bug: reported on the run, never a hang
            reports.finish(event.outcome, hook_error=e)
        else:
            reports.finish(event.outcome)
        future.set_result(event.outcome)

    def _save_durations(self, spec: RunSpec, outcome: JobOutcome) -> None:
        """Keep the inner tests' durations of a run that ran them, for shards balanced by duration."""
        if not isinstance(outcome, RunResult) or outcome.origin != "created" or not outcome.events:
            return
        try:
            suite = dir_nodeid(spec.test_dir, self.config.rootpath)
            self.store.save_durations(suite, durations_of(outcome.events))
        except (LrunError, OSError) as e:  # costs the next split its balance, never this run
            shown = shown_spec(spec, self.config.rootpath)
            self.terminal.say(f"warning: the inner durations of {shown} were not kept: {e}")

    def _save_outcomes(self, spec: RunSpec, outcome: JobOutcome) -> None:
        """Keep how the inner tests of a run that ran them came out, under its key: two runs of
        one key that disagree prove a test flaky (``lrun flaky``)."""
        if not isinstance(outcome, RunResult) or outcome.origin != "created" or not outcome.events:
            return
        try:
            suite = dir_nodeid(spec.test_dir, self.config.rootpath)
            self.store.save_outcomes(outcomes_of(outcome.run, suite, outcome.events))
        except (LrunError, OSError) as e:  # costs `lrun flaky` its evidence, never this run
            shown = shown_spec(spec, self.config.rootpath)
            self.terminal.say(f"warning: the inner outcomes of {shown} were not kept: {e}")

    # -- hooks ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        try:
            self.jobs = self.planner.plan_jobs()
            self.quarantine = self._read_quarantine()
        except LrunError as e:
            raise pytest.UsageError(f"pytest-lrun: {e}") from e
        if self.settings.plan or self.settings.attach:
            # The plan (or the attached runs) name the directories: collect exactly those.
            self.config.args[:] = sorted({str(spec.test_dir) for spec in self.specs})
        self._reconcile()

    def _read_quarantine(self) -> Quarantine | None:
        """The tests ``--lrun-quarantine`` names: the store's list, or a file's."""
        source = self.settings.quarantine
        if source is None:
            return None
        if source == FROM_STORE:
            return Quarantine({entry.nodeid: entry.since for entry in self.store.quarantined_tests()})
        return Quarantine(read_quarantine_file(self.config.invocation_params.dir / source))

    def _reconcile(self) -> None:
        """Settle live runs left by earlier processes on this invocation's machines."""
        machines = {machine.name: machine for spec in self.specs for machine in spec.pool}

        def engine_of(name: str) -> Engine:
            if name not in machines:
                raise ConfigError(name, "not used by this invocation")
            return self.engines.get(machines[name])

        report = reconcile(self.store, self.dispatcher, engine_of, machines=set(machines))
        for line in report.lines():
            self.terminal.say(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        """Collect nothing on the host (as pytest-xdist's controller): start the jobs instead."""
        specs = self.specs
        for spec in specs:
            selection = self.planner.selections.get(spec)
            self.reports[spec] = RunReports(
                session,
                spec,
                suffix=run_suffix(spec, specs),
                selection=HostSelection(selection) if selection is not None else None,
                say=self.terminal.say,
                write=self.terminal.write_line,
                evidence=self.evidence,
                on_counted=self._counted,
                flaky_attempts=self.settings.flaky_attempts,
                quarantine=self.quarantine,
            )
        self.start()
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        self.loop(session)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> TestStatus | None:
        """A run's own report that passed beside inner tests is no test of the user's: the
        terminal neither counts nor shows it (see :mod:`pytest_lrun.report.run_report`). An
        inner test that passed on a rerun is counted ``flaky`` (:mod:`pytest_lrun.report.flaky`)."""
        if is_uncounted(report):
            return ("", "", "")
        return flaky_status(report)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.terminal.say("interrupted: killing this session's containers")
        self.dispatcher.cancel_all()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Before the terminal's summary, which its own sessionfinish wrapper writes after this.
        index_teardown_reports(self.config.pluginmanager.get_plugin("terminalreporter"))
        if self._engine_unreachable():
            session.exitstatus = EXIT_ENGINE_UNREACHABLE  # the fleet is down: not a test's failure
        if self.workers.started:
            if not all(future.done() for future in self.outcomes.values()):
                self.dispatcher.cancel_all()  # the loop did not finish (a bug): leave nothing running
            self.workers.shutdown()
        # After Ctrl-C the loop stopped early: the interrupted runs' ends are reported now.
        self._drain()
        self.dispatcher.close()  # the last containers' removals, before their engines close
        self.engines.close()
        # Book-keeping after the tests: a problem here is reported, never turned into an internal error.
        try:
            if self.planner.batch_id is not None:
                self._batch = self.batches.refresh(self.planner.batch_id)
            collected = gc(
                self.store,
                max_bytes=self.settings.state_max_bytes,
                store_max_bytes=self.settings.store_max_bytes,
                keep={reports.run.id for reports in self.reports.values() if reports.run is not None},
            )
            for line in collected.warnings:
                self.terminal.say(f"warning: {line}")
        except (LrunError, OSError) as e:
            self.terminal.say(f"warning: {e}")
        finally:
            self.store.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        table = self._runs_table()
        if not table or self.config.option.collectonly:
            return
        detached = [outcome for _spec, outcome in self._ended() if isinstance(outcome, Detached)]
        attach_to = (self.planner.batch_id or detached[0].run.id) if detached else None
        write_summary(terminalreporter, table, self._batch, attach_to, self.store.problems)
        write_flaky(terminalreporter, self.flaky())
        write_quarantined(
            terminalreporter,
            [entry for reports in self.reports.values() for entry in reports.gate.quarantined.items()],
        )

    def flaky(self) -> list[Flaky]:
        """The inner tests that failed, then passed on a rerun, in the order they were reported."""
        return [flaky for reports in self.reports.values() for flaky in reports.gate.flaky]

    @pytest.hookimpl(trylast=True)
    def pytest_lrun_make_engine(self, machine: Machine, config: pytest.Config) -> Engine:
        return connect(machine, connect_timeout=self.settings.connect_timeout)
