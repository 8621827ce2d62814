"""A run's own report, ``DIR::lrun[machine]`` (``lrun[machine]`` for the rootdir).

Every run has one; it carries the run's log and artifacts (:mod:`.evidence`), published to
the report folder and attached, and the tail of the container's output. With inner tests,
it is an error when the run failed for its own reasons (a timeout, an engine error, an
unsafe archive, pytest's exit 3 or 4), else a pass the terminal does not count
(:func:`is_uncounted`): the inner tests say how it went. Without inner tests (a command
other than pytest), it is the run's result as a test's: it passes, or fails as a test does
(a non-zero exit, a timeout, the OOM killer); when the run failed otherwise (a refused
archive, a cancel), it is an error. A job that never ran (the error that kept it from
running, a bug) is an error too; a detached run is a skip that says how to attach.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.errors import EXIT_NONZERO, OOM_KILLED, TIMED_OUT, LrunError
from pytest_lrun.core.text import one_line
from pytest_lrun.report.evidence import RunEvidence
from pytest_lrun.report.failures import run_text
from pytest_lrun.report.making import Outcome, Phase, ReportMaker
from pytest_lrun.report.outcomes import Detached, JobOutcome, run_duration
from pytest_lrun.run.logs import tail
from pytest_lrun.run.spec import RunResult
from pytest_lrun.store import Run, Status

LOG_SECTION_BYTES = 4096

# How a run without inner tests fails as its command's test did (anything else is an error).
_COMMAND_FAILURES = (None, EXIT_NONZERO, TIMED_OUT, OOM_KILLED)


def is_run_report(report: pytest.TestReport) -> bool:
    """Whether ``report`` is a run's own report (not an inner test's)."""
    return bool(getattr(report, "lrun_run", False))


def is_uncounted(report: pytest.TestReport) -> bool:
    """Whether ``report`` is a run's own report that passed beside inner tests: no test of the
    user's, which the terminal neither counts nor shows."""
    return is_run_report(report) and report.passed and not getattr(report, "lrun_counted", True)


@dataclass(frozen=True)
class InnerTally:
    """What a run's inner tests reported, as far as its own report needs to know."""

    collected: bool  # the inner collection was reported
    has_inner: bool  # the run reported inner tests (its collection, any event, or JUnit cases)
    explained: int  # failed inner phases and collection errors: what explains an inner exit 1 or 2


def failed_itself(run: Run, tally: InnerTally) -> bool:
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
        return not tally.collected
    return not tally.has_inner or tally.explained == 0


@dataclass(frozen=True)
class RunItem:
    """A run's own report as its phases: ``counted`` when it is a test of the user's (an error, a
    skip, or a run without inner tests), which the terminal counts and shows."""

    nodeid: str
    location: tuple[str, int | None, str]
    phases: list[tuple[Phase, Outcome, Any, float]]
    counted: bool
    sections: list[tuple[str, str]]  # the container's output, on the setup and call reports
    files: list[Path]  # the log and artifacts, attached to the teardown report

    def reports(self, make: ReportMaker) -> Iterator[pytest.TestReport]:
        """The reports of its phases, in order (each made once the one before was handled)."""
        for when, word, longrepr, duration in self.phases:
            report = pytest.TestReport(
                self.nodeid,
                self.location,
                {"lrun": 1},
                word,
                longrepr,
                when,
                self.sections if when != "teardown" else [],
                duration,
                user_properties=make.properties(),
                lrun_run=True,
                lrun_counted=self.counted,
            )
            if when == "teardown" and self.files:
                make.attach(report, self.files)
            yield report


def run_item(
    outcome: JobOutcome | BaseException, make: ReportMaker, tally: InnerTally, say: Callable[[str], None]
) -> RunItem:
    """The run's own report for ``outcome`` (see the module docstring); a bug that stopped the job
    is ``outcome`` too, and ``say`` tells of evidence that could not be published."""
    failure: Any = None  # the longrepr of a run that failed for its own reasons
    skip: Any = None
    command_failed = False  # a run without inner tests whose command exited non-zero
    files: list[Path] = []
    sections: list[tuple[str, str]] = []
    if isinstance(outcome, LrunError):
        failure = make.failure(str(outcome), f"{outcome.code}: {one_line(str(outcome))}")
    elif isinstance(outcome, BaseException):
        text = "".join(traceback.format_exception(type(outcome), outcome, outcome.__traceback__))
        failure = make.failure(text, f"pytest-lrun internal error: {outcome!r}")
    elif isinstance(outcome, Detached):
        target = outcome.batch_id or outcome.run.id
        skip = (
            str(make.spec.test_dir),
            None,
            f"detached as run {outcome.run.id}; attach with --lrun-attach={target}",
        )
    else:
        evidence = _publish(make, outcome.run, say)
        files = evidence.files()
        output = tail(evidence.log, LOG_SECTION_BYTES)
        if output:
            sections.append(("lrun container output", output))
        run = outcome.run
        if failed_itself(run, tally):
            log = make.evidence.shown(evidence.log) if evidence.log.is_file() else None
            text = run_text(run, log)
            message = f"{run.error_code}: {one_line(run.error_msg or '')}" if run.error_msg else text
            failure = make.failure(text, message.splitlines()[0], with_log=log is not None)
            command_failed = not tally.has_inner and run.error_code in _COMMAND_FAILURES
    seconds = run_duration(outcome.run) if isinstance(outcome, RunResult) else 0.0
    # With inner tests, a run that went well is no test of the user's: its report is not counted.
    counted = failure is not None or skip is not None or not tally.has_inner
    nodeid = make.names.run_nodeid()
    phases = _phases(failure, skip, command_failed, seconds)
    return RunItem(nodeid, (make.names.dir_nodeid, None, nodeid), phases, counted, sections, files)


def _phases(
    failure: Any, skip: Any, command_failed: bool, seconds: float
) -> list[tuple[Phase, Outcome, Any, float]]:
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
    return phases


def _publish(make: ReportMaker, run: Run, say: Callable[[str], None]) -> RunEvidence:
    """The run's evidence, published to the report folder (a failure is a warning, not the run's)."""
    try:
        return make.evidence.publish(run, make.label())
    except OSError as e:
        say(f"warning: the log and artifacts of run {run.id} were not published: {e}")
        return make.evidence.of(run, make.label())
