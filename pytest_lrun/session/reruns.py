"""Reruns of failed inner tests (``--lrun-flaky-attempts``): which tests of a run go again, and when.

A run that ended because inner tests failed -- pytest's exit 1, with no error of the run's
own -- has those tests, and only they, run again as a new run: the spec's command with
their node ids (as node id arguments and shards select), on the same machine or tag, with
``LRUN_ATTEMPT`` (2, 3, ...) in its environment, its record's ``retry_of`` naming the run
before. That goes on until they pass or the attempts
are spent. Which reports the host shows for them is :mod:`pytest_lrun.report.flaky`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_lrun.core.errors import EXIT_NONZERO
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Status
from pytest_lrun.wire.events import PhaseReport

# How a spec is run again for some of its inner tests (the planner's ``rerun_spec``).
RerunSpec = Callable[[RunSpec, Sequence[str], int], "RunSpec | None"]


def failed_inner(result: RunResult) -> tuple[str, ...]:
    """The inner node ids of ``result``'s tests with a failed phase (an xfail is no failure), in order."""
    failed: dict[str, None] = {}
    for event in result.events or ():
        if isinstance(event, PhaseReport) and event.outcome == "failed" and event.wasxfail is None:
            failed.setdefault(event.nodeid)
    return tuple(failed)


def failed_by_its_tests(result: RunResult) -> bool:
    """Whether ``result``'s run ended as pytest does when tests failed, and for nothing else (a
    timeout, a crash, a collection error and a cancel are the run's, never rerun here)."""
    run = result.run
    return (
        result.origin != "cached"
        and run.status is Status.FAILED
        and run.exit_code == 1
        and run.error_code in (None, EXIT_NONZERO)
    )


class Reruns:
    """Decides each rerun of a job: ``attempts`` in all (1: none), specs made by ``rerun_spec``."""

    def __init__(self, attempts: int, rerun_spec: RerunSpec) -> None:
        self.attempts = attempts
        self.rerun_spec = rerun_spec

    def next(self, spec: RunSpec, ended: RunResult, attempt: int) -> tuple[RunSpec, tuple[str, ...]] | None:
        """The spec of the attempt after ``attempt`` (whose result is ``ended``) and the node ids it
        runs, or None when ``ended`` is the last one."""
        if attempt >= self.attempts or not failed_by_its_tests(ended):
            return None
        nodeids = failed_inner(ended)
        rerun = self.rerun_spec(spec, nodeids, attempt + 1) if nodeids else None
        return None if rerun is None else (rerun, nodeids)
