"""What the session's worker threads hand to its main thread, and the queue they hand it on.

Worker threads (and the log pumps under them) never call a pytest hook or write to the
terminal: they put a :data:`SessionEvent` on the :class:`EventQueue` -- a progress or
output line, a run the store decided, a retried attempt, a rerun of failed tests, a run's inner events as the
container wrote them, a job's end -- and the main thread handles them in order.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass

from pytest_lrun.report.outcomes import JobOutcome
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Run
from pytest_lrun.wire.events import Event as InnerEvent

# How often the main thread's wait wakes up: a blocking get is deaf to Ctrl-C on Windows.
POLL_S = 0.2


@dataclass(frozen=True)
class Prepared:
    """A worker's word that the store decided a spec's run (created, reused, cached)."""

    spec: RunSpec
    run: Run
    origin: str


@dataclass(frozen=True)
class Retried:
    """A worker's word that a spec's run failed for its infrastructure and is tried again."""

    spec: RunSpec
    failed: Run


@dataclass(frozen=True)
class Rerun:
    """A worker's word that the failed inner tests of a spec's run go again (``--lrun-flaky-attempts``):
    ``ended`` is the attempt that failed, ``rerun`` the spec of attempt number ``attempt``."""

    spec: RunSpec
    ended: RunResult
    rerun: RunSpec
    attempt: int


@dataclass(frozen=True)
class Live:
    """Inner events of a run, as its log pump parsed them."""

    run_id: str
    events: tuple[InnerEvent, ...]


@dataclass(frozen=True)
class JobEnded:
    """A worker's word that a spec's job ended: its outcome, the bug that stopped the worker,
    or neither (the session stopped before the job began)."""

    spec: RunSpec
    outcome: JobOutcome | None = None
    error: BaseException | None = None
    said: str | None = None  # the job's end line, shown once what its run reported is


# What worker threads hand to the main thread (a str is a progress line).
SessionEvent = str | Prepared | Retried | Rerun | Live | JobEnded


class EventQueue:
    """The workers' events, in the order put; any thread puts, the main thread takes."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[SessionEvent] = queue.SimpleQueue()

    def put(self, event: SessionEvent) -> None:
        self._queue.put(event)

    def wait(self) -> SessionEvent | None:
        """The next event, or None when none came within :data:`POLL_S`."""
        try:
            return self._queue.get(timeout=POLL_S)
        except queue.Empty:
            return None

    def queued(self) -> Iterator[SessionEvent]:
        """The events queued now, and any put while they are handled, until none is left."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return
