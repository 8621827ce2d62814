"""Inner tests' outcomes kept per run key, and what they prove.

A run key says everything a result depends on (the directory's hash, the image, the command,
the environment). Two runs of one key whose outcomes of one inner test differ prove that test
flaky -- stronger evidence than a pass on a retry. Each store keeps an :class:`InnerOutcome` per
inner test and run (``RunStore.save_outcomes``, ``RunStore.outcomes``); :func:`flaky_evidence`
groups them into what ``lrun flaky`` lists, and :func:`disagreed` is what keeps
``--lrun-reuse=completed`` from serving the cached result of such a key. The store's quarantine
list (:class:`Quarantined`, ``lrun flaky quarantine/release``) names the tests whose failures
``--lrun-quarantine=store`` reports as xfail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pytest_lrun.store.records import Run
from pytest_lrun.wire.events import Event, PhaseReport

__all__ = [
    "MAX_KEPT",
    "OUTCOMES",
    "FlakyEvidence",
    "InnerOutcome",
    "Quarantined",
    "disagreed",
    "flaky_evidence",
    "newest",
    "outcomes_of",
]

#: The outcomes kept and compared: a skip or an xfail says nothing either way.
OUTCOMES = ("passed", "failed")

#: The newest outcomes kept per key and inner test (a file store's bound; ``disagreed`` looks at as many).
MAX_KEPT = 20


@dataclass(frozen=True)
class InnerOutcome:
    """How one inner test of one run came out (``passed`` or ``failed``), under the run's key."""

    key: str
    suite: str  # the dispatched directory's node id, as the session names it (durations' too)
    nodeid: str  # the inner node id
    run_id: str
    machine: str
    outcome: str
    at: float  # when the run ended, unix seconds


@dataclass(frozen=True)
class FlakyEvidence:
    """An inner test whose outcome differed under one key: how often each, when, and where."""

    key: str
    suite: str
    nodeid: str
    passed: int
    failed: int
    last_seen: float
    machines: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "suite": self.suite,
            "nodeid": self.nodeid,
            "passed": self.passed,
            "failed": self.failed,
            "last_seen": self.last_seen,
            "machines": list(self.machines),
        }


@dataclass(frozen=True)
class Quarantined:
    """A test on the store's quarantine list: its node id as the host names it, and since when."""

    nodeid: str
    since: float


def outcomes_of(run: Run, suite: str, events: Iterable[Event]) -> list[InnerOutcome]:
    """The outcome of each inner test of terminal ``run`` (of directory ``suite``) from its reporter's
    events: failed when a phase failed (an xfail is no failure), passed when its call passed."""
    failed: dict[str, bool] = {}
    for event in events:
        if not isinstance(event, PhaseReport) or event.wasxfail is not None or event.subtest is not None:
            continue
        if event.outcome == "failed":
            failed[event.nodeid] = True
        elif event.when == "call" and event.outcome == "passed":
            failed.setdefault(event.nodeid, False)
    at = run.ended_at or run.created_at or 0.0
    return [
        InnerOutcome(run.key, suite, nodeid, run.id, run.machine, "failed" if bad else "passed", at)
        for nodeid, bad in failed.items()
    ]


def newest(outcomes: Iterable[InnerOutcome]) -> list[InnerOutcome]:
    """``outcomes`` without repeats of one run, the newest :data:`MAX_KEPT` per key and test, oldest first."""
    by_test: dict[tuple[str, str, str], dict[str, InnerOutcome]] = {}
    for outcome in sorted(outcomes, key=lambda o: (o.at, o.run_id)):
        by_test.setdefault((outcome.key, outcome.suite, outcome.nodeid), {})[outcome.run_id] = outcome
    kept = [o for runs in by_test.values() for o in list(runs.values())[-MAX_KEPT:]]
    return sorted(kept, key=lambda o: (o.at, o.run_id, o.suite, o.nodeid))


def flaky_evidence(outcomes: Iterable[InnerOutcome]) -> list[FlakyEvidence]:
    """The tests whose kept outcomes under one key include a pass and a failure, most recent first."""
    by_test: dict[tuple[str, str, str], list[InnerOutcome]] = {}
    for outcome in newest(outcomes):
        by_test.setdefault((outcome.key, outcome.suite, outcome.nodeid), []).append(outcome)
    found = []
    for (key, suite, nodeid), seen in by_test.items():
        counts = {word: sum(1 for o in seen if o.outcome == word) for word in OUTCOMES}
        if counts["passed"] and counts["failed"]:
            machines = tuple(sorted({o.machine for o in seen}))
            last = max(o.at for o in seen)
            found.append(
                FlakyEvidence(key, suite, nodeid, counts["passed"], counts["failed"], last, machines)
            )
    return sorted(found, key=lambda f: (-f.last_seen, f.suite, f.nodeid))


def disagreed(outcomes: Iterable[InnerOutcome]) -> bool:
    """Whether the runs of these outcomes (one key's) disagree on any inner test."""
    return bool(flaky_evidence(outcomes))
