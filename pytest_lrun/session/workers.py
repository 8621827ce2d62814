"""The session's worker threads, which run its jobs through the dispatcher.

Per target (a machine or a ``tag:NAME``), as many threads as its machines have slots (twice
as many when the dispatcher stages runs) take that target's jobs in order, and the store
decides their runs in that order (:class:`JobLine`): machines work in parallel, one machine's
slots one job each, and a target's runs start in the order the user gave. A thread runs a
job to its end -- dispatched, started detached (``--lrun-detach``) or attached to
(``--lrun-attach``), with its failed inner tests run again as :mod:`.reruns` decides -- and
starts no new one once the session stops (``-x``, ``--maxfail``, Ctrl-C). What the threads
and the dispatcher's callbacks have to say goes on the :class:`~.events.EventQueue` for the
main thread: they never call a pytest hook nor write to the terminal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.text import one_line
from pytest_lrun.report.outcomes import Detached, JobOutcome
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.session.events import EventQueue, JobEnded, Live, Rerun, Retried
from pytest_lrun.session.jobs import Job
from pytest_lrun.session.reruns import Reruns
from pytest_lrun.session.terminal import shown_spec
from pytest_lrun.store import Run
from pytest_lrun.wire.events import Event as InnerEvent

#: How often a job waiting for its turn looks whether the session stops.
TURN_POLL_S = 0.2


class Workers:
    """The worker threads of one session (see the module docstring), and the dispatcher's
    callbacks that run on them; ``detach`` is ``--lrun-detach``."""

    def __init__(self, events: EventQueue, rootpath: Path, *, detach: bool, infra_retries: int) -> None:
        self.events = events
        self.rootpath = rootpath
        self.detach = detach
        self.infra_retries = infra_retries
        self.reruns: Reruns | None = None  # --lrun-flaky-attempts: a job's failed inner tests run again
        self.collect_only = False
        self.dispatcher: Dispatcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_id: str | None = None
        self._jobs = 0
        self._counts_lock = threading.Lock()
        self._counts = {"done": 0, "running": 0}
        self._lines: dict[RunSpec, JobLine] = {}  # each job's spec -> its target's line

    @property
    def started(self) -> bool:
        return self._executor is not None

    def start(
        self, dispatcher: Dispatcher, jobs: list[Job], batch_id: str | None, *, collect_only: bool
    ) -> None:
        """Start every job: per target (a machine or a tag), as many threads as its machines
        have slots, taking that target's jobs in order (under ``--collect-only``, collecting)."""
        self.dispatcher, self._batch_id, self._jobs = dispatcher, batch_id, len(jobs)
        self.collect_only = collect_only
        by_target: dict[str, list[Job]] = {}
        for job in jobs:
            by_target.setdefault(job.spec.where, []).append(job)
        # A dispatcher that stages (run.slots) gets twice the threads: one per slot makes the
        # next run's container ready while the slot is busy.
        per_slot = 2 if dispatcher.stage else 1
        lines = {
            target: sum(m.slots * per_slot for m in same[0].spec.pool) for target, same in by_target.items()
        }
        workers = sum(min(lines[target], len(same)) for target, same in by_target.items())
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lrun")
        for target, same in by_target.items():
            line = JobLine(same)
            self._lines.update(dict.fromkeys((job.spec for job in same), line))
            for _ in range(min(lines[target], len(same))):
                self._executor.submit(self._run_line, line)

    def shutdown(self) -> None:
        """Wait for the threads to end (jobs not begun are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # -- the threads --------------------------------------------------------------------

    def _run_line(self, line: JobLine) -> None:
        """A worker thread: take the target's jobs in order, handing every event to the main thread."""
        dispatcher = self.dispatcher
        assert dispatcher is not None
        while (job := line.take()) is not None:
            try:
                line.wait_turn(job.spec, lambda: dispatcher.stopping)  # at once once stopping
                if dispatcher.stopping:  # -x, --maxfail or Ctrl-C, before or in the wait: not run
                    self.events.put(JobEnded(job.spec))
                    continue
                self.events.put(self._run_job(job))
            finally:
                line.decided(job.spec)  # ended before its run was decided (an error, a stop)

    def _run_job(self, job: Job) -> JobEnded:
        spec = job.spec
        if self.collect_only and pytest_arguments_at(spec.command) is None:
            what = f"{self._shown(spec)} on {spec.where}"
            self.events.put(f"{what}: not a pytest command, nothing to collect")
            return JobEnded(spec)
        self._count("running", +1)
        started = time.monotonic()
        try:
            outcome = self._do(job)
        except LrunError as e:
            outcome = e
        except BaseException as e:  # a bug: make it visible as a failure, never hang the session
            return JobEnded(spec, error=e)
        finally:
            self._count("running", -1)
            self._count("done", +1)
        took = time.monotonic() - started
        what = f"{self._shown(spec)} {_describe(outcome)} in {took:.1f}s"
        if spec.target is not None and not isinstance(outcome, LrunError):
            what += f" on {outcome.run.machine}"
        return JobEnded(spec, outcome, said=f"{spec.where}: {what}{self._batch_progress()}")

    def _do(self, job: Job) -> JobOutcome:
        assert self.dispatcher is not None
        if job.attach_to is not None:
            self.decided(job.spec)  # its run is known: the store decides nothing
            self.events.put(f"{job.spec.where}: attaching to run {job.attach_to} ({self._shown(job.spec)})")
            return self.dispatcher.attach(job.attach_to, job.spec.machine)
        self.events.put(f"{job.spec.where}: dispatching {self._shown(job.spec)}" + self._batch_progress())
        if self.detach:
            result = self.dispatcher.start(job.spec)
            if result.run.status.is_terminal:
                return result  # failed before it began, or a cached result
            return Detached(result.run, self._batch_id)
        return self._dispatch(job.spec)

    def _dispatch(self, spec: RunSpec) -> RunResult:
        """Run ``spec``, then its failed inner tests again while :class:`.Reruns` says so."""
        assert self.dispatcher is not None
        result = self.dispatcher.dispatch(spec)
        attempt = 1
        while self.reruns is not None and not self.dispatcher.stopping:
            upcoming = self.reruns.next(spec, result, attempt)
            if upcoming is None:
                break
            rerun, nodeids = upcoming
            attempt += 1
            self.events.put(
                f"{spec.where}: {self._shown(spec)}: {_failed_tests(len(nodeids))} of run {result.run.id} "
                f"run again (attempt {attempt} of {self.reruns.attempts})"
            )
            self.events.put(Rerun(spec, result, rerun, attempt))
            result = self.dispatcher.dispatch(rerun, retry_of=result.run.id)
        return result

    def _count(self, what: str, delta: int) -> None:
        with self._counts_lock:
            self._counts[what] += delta

    def _batch_progress(self) -> str:
        if self._batch_id is None:
            return ""
        with self._counts_lock:
            done, running = self._counts["done"], self._counts["running"]
        queued = self._jobs - done - running
        return f" [batch {self._batch_id}: {done} done, {running} running, {queued} queued]"

    def _shown(self, spec: RunSpec) -> str:
        return shown_spec(spec, self.rootpath)

    # -- the dispatcher's callbacks (on worker and log-pump threads) ----------------------

    def output(self, source: RunSpec | Run, text: str) -> None:
        """The dispatcher's output sink (``--lrun-live``), called on a log-pump thread: queues the lines."""
        name = source.test_dir.name if isinstance(source, RunSpec) else Path(source.test_dir).name
        machine = source.machine.name if isinstance(source, RunSpec) else source.machine
        for line in text.splitlines():
            self.events.put(f"[{machine} {name}] {line}")

    def inner_events(self, run: Run, events: Sequence[InnerEvent]) -> None:
        """The dispatcher's event sink: a run's inner events, as its log pump parsed them."""
        self.events.put(Live(run.id, tuple(events)))

    def build_line(self, machine: str, line: str) -> None:
        """A line of an image build on ``machine``."""
        self.events.put(f"{machine}: {line}")

    def retried(self, spec: RunSpec, failed: Run, attempt: int) -> None:
        """The dispatcher's word that ``failed`` is tried again, as ``attempt``."""
        why = f"{failed.error_code}: {one_line(failed.error_msg or '')[:200]}"
        self.events.put(
            f"{failed.machine}: {self._shown(spec)}: run {failed.id} failed for its infrastructure ({why}); "
            f"trying again (attempt {attempt} of {self.infra_retries + 1})"
        )
        self.events.put(Retried(spec, failed))

    def decided(self, spec: RunSpec) -> None:
        """The dispatcher's word that the store decided ``spec``'s run (or put it in line): the
        target's next job may ask."""
        line = self._lines.get(spec)
        if line is not None:  # not a rerun's spec
            line.decided(spec)

    def queued(self, spec: RunSpec, blocker: Run) -> None:
        """The dispatcher's word that ``spec`` waits for a free slot."""
        self.decided(spec)
        slots = sum(m.slots for m in spec.pool)
        busy = f"all {slots} slots busy, e.g. with run {blocker.id} on {blocker.machine}"
        self.events.put(f"{spec.where}: {self._shown(spec)} waits for a free slot ({busy})")


class JobLine:
    """A target's jobs, taken in order by its threads, and the turn each waits for before its run
    is decided: the store decides them in the user's order (with threads racing to the store,
    a later directory could take the free slot, and a staged run's order would be chance).

    A job's turn comes once every job before it was decided: placed, cached, put in line for a
    slot, or ended without a run.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self._jobs = jobs
        self._index = {job.spec: i for i, job in enumerate(jobs)}
        self._changed = threading.Condition()
        self._taken = 0
        self._done: set[int] = set()
        self._first_undecided = 0

    def take(self) -> Job | None:
        """The next job not taken, or None when all are."""
        with self._changed:
            if self._taken == len(self._jobs):
                return None
            self._taken += 1
            return self._jobs[self._taken - 1]

    def wait_turn(self, spec: RunSpec, stopping: Callable[[], bool]) -> None:
        """Return once every job before ``spec``'s was decided, or the session stops."""
        index = self._index[spec]
        with self._changed:
            while self._first_undecided < index and not stopping():
                self._changed.wait(TURN_POLL_S)  # a stop notifies nobody: look again now and then

    def decided(self, spec: RunSpec) -> None:
        """``spec``'s run was decided, or its job ended (idempotent)."""
        with self._changed:
            self._done.add(self._index[spec])
            while self._first_undecided in self._done:
                self._first_undecided += 1
            self._changed.notify_all()


def _failed_tests(count: int) -> str:
    return "1 failed inner test" if count == 1 else f"{count} failed inner tests"


def _describe(outcome: JobOutcome) -> str:
    if isinstance(outcome, LrunError):
        return f"error {outcome.code}"
    if isinstance(outcome, Detached):
        return f"detached as run {outcome.run.id}"
    return f"{outcome.run.status.value} ({outcome.origin})"
