"""The store's interface: what dispatch, recovery, the session and the CLI may ask of any backend.

A backend keeps run and batch records and enforces the run store's contract;
the rest of the package sees only these protocols, never a backend:

* :meth:`RunStore.place` is one atomic decision over the candidate machines of a
  request (across threads, processes and, for a shared backend, hosts): a live run
  with the same key on any candidate is REUSEd (never a twin); else a pending run
  is CREATED on the candidate with the most free slots (a machine runs up to its
  ``slots`` runs at once); when every slot of every candidate holds another key,
  the answer is BUSY. :meth:`RunStore.prepare` is the same for one machine.
* A terminal record is written once, by :meth:`RunStore.end`.
* Whoever finishes a run holds its watch lock (:meth:`RunStore.watching`); the
  lock goes with its holder's process (a file lock) or connection (a database
  session), so a run is never left without someone able to finish it.
* A run's files (log, JUnit XML, artifacts) live in this host's state dir
  (:meth:`RunStore.files`); a shared backend also keeps each terminal run's result
  so a runner that did not run it can report it (:meth:`RunStore.save_result`,
  :meth:`RunStore.load_result`).
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_lrun.core.layout import RunFiles
from pytest_lrun.store.outcomes import InnerOutcome, Quarantined
from pytest_lrun.store.records import Batch, Run, Status

if TYPE_CHECKING:
    from pytest_lrun.config.plan import Plan
    from pytest_lrun.core.errors import CorruptRecord

__all__ = ["RESULT_PARTS", "BatchStore", "Candidate", "Decision", "RunStore", "Sweep", "Ticket"]

#: The parts of a run's result a shared store keeps (:meth:`RunStore.load_result`): the inner JUnit
#: XML, the log, the inner reporter's events and the artifacts.
RESULT_PARTS = ("junit", "logs", "events", "artifacts")


class Decision(enum.Enum):
    """What :meth:`RunStore.prepare` decided."""

    CREATED = "created"  # a new pending run was recorded for the caller
    REUSE = "reuse"  # a live run with the same key exists: attach to it
    BUSY = "busy"  # a live run with a different key occupies the machine


@dataclass(frozen=True)
class Candidate:
    """A machine a run may be placed on, the run's key there (its image id may differ per
    engine) and how many runs the machine takes at once."""

    machine: str
    key: str
    slots: int = 1


@dataclass(frozen=True)
class Ticket:
    """A waiter's place in line for a slot: created once, when it first found every slot taken."""

    id: str
    created: float


@dataclass
class Sweep:
    """What :meth:`RunStore.sweep` did: leftovers removed (paths relative to the state dir),
    unindexed pending runs ended, and one line per leftover it could not settle."""

    removed: builtins.list[str] = field(default_factory=builtins.list)
    ended: builtins.list[str] = field(default_factory=builtins.list)
    problems: builtins.list[str] = field(default_factory=builtins.list)

    def to_dict(self) -> dict[str, builtins.list[str]]:
        return dataclasses.asdict(self)


class BatchStore(Protocol):
    """Batch records: one per plan dispatch, joined by every CI job that names its id."""

    def open(self, plan: Plan, batch_id: str | None = None) -> Batch:
        """Create a batch for ``plan`` (a fresh id when ``batch_id`` is None), or join ``batch_id``.

        :raises ConfigError: ``batch_id`` is not a valid batch id
        :raises BatchPlanMismatch: the existing batch was made from a plan with another digest
        """
        ...

    def record(self, batch_id: str, entry: str, run_id: str) -> Batch:
        """Record ``run_id`` as plan entry ``entry``'s run; concurrent recorders lose nothing."""
        ...

    def get(self, batch_id: str) -> Batch:
        """The stored batch.

        :raises BatchNotFound: no such batch (or a malformed id)
        """
        ...

    def list(self) -> builtins.list[Batch]:
        """Every batch, oldest first."""
        ...

    def refresh(self, batch_id: str) -> Batch:
        """Derive the batch's status from its runs and store it; returns the batch."""
        ...


class RunStore(Protocol):
    """Run records and the placement rule: slots per machine, no twins (see the module docstring)."""

    #: This host's state dir: run files (logs, JUnit XML, artifacts) and hash caches.
    state_dir: Path
    #: Where :func:`pytest_lrun.tree.hashing.hash_dir` keeps its stat caches (any file may go).
    hashcache_dir: Path
    #: Corrupt records found and moved aside, oldest first, for callers to show.
    problems: builtins.list[CorruptRecord]

    @property
    def store_id(self) -> str:
        """A short id of this store (containers carry it as the ``lrun.store`` label)."""
        ...

    @property
    def location(self) -> str:
        """Where the records are, for people: a path, or a database URL without its password."""
        ...

    @property
    def batches(self) -> BatchStore:
        """The batch records kept beside the runs."""
        ...

    def files(self, run_id: str) -> RunFiles:
        """The paths of the run's files in this host's state dir.

        :raises RunNotFound: ``run_id`` is not a well-formed run id
        """
        ...

    def prepare(
        self,
        machine: str,
        key: str,
        make: Callable[[], Run],
        *,
        test_dir_hash: str | None = None,
        wait: float = 0,
        slots: int = 1,
    ) -> tuple[Run, Decision]:
        """:meth:`place` on one machine: ``[Candidate(machine, key, slots)]``."""
        return self.place(
            [Candidate(machine, key, slots)], lambda _: make(), test_dir_hash=test_dir_hash, wait=wait
        )

    def place(
        self,
        candidates: Sequence[Candidate],
        make: Callable[[Candidate], Run],
        *,
        test_dir_hash: str | None = None,
        wait: float = 0,
        ticket: Ticket | None = None,
    ) -> tuple[Run, Decision]:
        """Create a run on one of ``candidates``, or return the live run that decides otherwise.

        REUSE: a live run with a candidate's key on that candidate. CREATED: on the
        candidate with the most free slots (the first of equals); ``make(candidate)``
        builds the pending run (no id) and the store fills in ``id``, ``machine``,
        ``key``, ``created_at``, ``owner`` and ``test_dir_hash``. BUSY: every slot of
        every candidate holds another key (the returned run is one of them), or is owed
        to an older waiter. While the answer is BUSY and ``wait`` seconds have not
        passed, the call retries.

        Waiting in line: a caller that will ask again passes its ``ticket``; a BUSY answer
        puts it in line on every candidate, and a free slot goes to the oldest ticket
        in line there, never to a newer caller (with a ticket or without), so no waiter
        starves. A ticket not seen for :data:`~pytest_lrun.store.common.TICKET_TTL_S`
        seconds leaves the line; CREATED takes it out.

        :raises ValueError: no candidate, a machine named twice, or slots below 1
        """
        ...

    def leave_line(self, ticket: Ticket, machines: Sequence[str]) -> None:
        """Take ``ticket`` out of line on ``machines`` (a waiter that gives up)."""
        ...

    def insert(self, run: Run) -> Run:
        """Record an already finished run as it is (imports, fixtures, benchmarks); returns it."""
        ...

    def get(self, run_id: str) -> Run:
        """The stored run.

        :raises RunNotFound: no such run
        :raises CorruptRecord: its record did not parse (it was moved aside)
        """
        ...

    def update(self, run: Run) -> None:
        """Replace a live run's record.

        :raises TerminalRunError: the stored run is already terminal
        """
        ...

    def end(
        self, run: Run, status: Status, *, error_code: str | None = None, error_msg: str | None = None
    ) -> Run:
        """Write ``run`` as terminal with ``status`` and ``ended_at`` now; the one way a run ends.

        :raises TerminalRunError: the run has ended already (its stored record stands)
        """
        ...

    def last_completed(self, machine: str, key: str) -> Run | None:
        """The newest completed run of ``key`` on ``machine`` (``--lrun-reuse=completed``), or None."""
        ...

    def list(
        self,
        machine: str | None = None,
        status: Status | str | None = None,
        batch_id: str | None = None,
    ) -> builtins.list[Run]:
        """Stored runs matching every given filter, oldest first."""
        ...

    def active(self, machine: str | None = None) -> builtins.list[Run]:
        """Non-terminal runs of ``machine`` (or of every machine), oldest first."""
        ...

    def delete(self, run_id: str) -> None:
        """Remove a terminal run: its record, its result and its files in this host's state dir.

        :raises TerminalRunError: the run is still live
        """
        ...

    def evict(self, run_id: str) -> None:
        """Free this host's disk of a terminal run (gc): the file store deletes the run; a shared
        store keeps its record and saved result and drops only this host's copies.

        :raises TerminalRunError: the run is still live
        """
        ...

    def prune(self, max_bytes: int) -> builtins.list[str]:
        """Keep the results saved for other runners under ``max_bytes``: terminal runs with a
        saved result are deleted, oldest first, never a live one; returns the ids deleted.

        The file store saves nothing beyond its state dir (which gc caps) and deletes nothing.
        """
        ...

    def sweep(self) -> Sweep:
        """Settle what crashes left behind (temporary files, orphan folders, unindexed runs)."""
        ...

    def check(self) -> builtins.list[str]:
        """The store's invariant violations, one sentence each; ``[]`` when healthy."""
        ...

    def owner_alive(self, run: Run) -> bool:
        """Whether the process that created ``run`` may still be at work on it."""
        ...

    def watching(self, run_id: str, *, wait: bool = True) -> AbstractContextManager[bool]:
        """Hold run ``run_id``'s watch lock for the block; yields whether it is held.

        With ``wait`` the call blocks until the lock is free (and yields True);
        without, it yields False at once when someone else holds it.
        """
        ...

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the store-wide lock named ``name`` for the block, waiting until it is free.

        One holder at a time among every user of the store (threads, processes and,
        for a shared backend, runners): e.g. one build of an image on an engine.
        The lock goes with its holder's process or connection, like the watch lock.
        """
        ...

    def save_result(self, run: Run) -> None:
        """Share a terminal run's result files from this host with every runner of the store
        (nothing, once the run is deleted: another runner's gc may take it as soon as it ends)."""
        ...

    def save_durations(self, suite: str, durations: Mapping[str, float]) -> None:
        """Record how long inner tests of directory ``suite`` took (kept per node id, newest wins)."""
        ...

    def durations(self, suite: str) -> dict[str, float]:
        """The recorded durations of ``suite``'s inner tests by node id (``{}`` when none)."""
        ...

    def save_outcomes(self, outcomes: Sequence[InnerOutcome]) -> None:
        """Record how inner tests of terminal runs came out, each under its run's key (a run
        recorded twice keeps one outcome per test; the newest ``MAX_KEPT`` per key and test count)."""
        ...

    def outcomes(self, key: str | None = None) -> builtins.list[InnerOutcome]:
        """The inner outcomes kept under ``key`` (every key's when None), oldest first."""
        ...

    def drop_stale_outcomes(self) -> int:
        """Drop the outcomes kept under keys that no stored run has any more (gc keeps them
        bounded so); how many keys' outcomes went. An outcome recorded while this runs stays."""
        ...

    def quarantine_test(self, nodeid: str, since: float) -> Quarantined:
        """Put ``nodeid`` on the quarantine list (already there: it keeps its date); the entry."""
        ...

    def release_test(self, nodeid: str) -> bool:
        """Take ``nodeid`` off the quarantine list; whether it was on it."""
        ...

    def quarantined_tests(self) -> builtins.list[Quarantined]:
        """The quarantine list, by node id."""
        ...

    def load_result(self, run: Run, parts: Collection[str] | None = None) -> None:
        """Make this host's files of ``run`` hold its result, if it ended on another runner.

        :param parts: only these of :data:`RESULT_PARTS` (``lrun logs`` needs the log alone);
            default all of them
        """
        ...

    def close(self) -> None:
        """Release connections and locks (nothing for a file store)."""
        ...
