"""The PostgreSQL store: run and batch records in one database that every CI runner reaches.

Selected with ``--lrun-store=postgresql://...`` (libpq's URL syntax, so ``sslmode``,
``PGPASSWORD`` and ``~/.pgpass`` work). The contract is :mod:`.base`'s, as for the
file store, but it holds for every runner of the database. Each runner's state dir
keeps what is local by nature: its copies of run files (logs, JUnit XML,
artifacts) under ``runs/<run-id>/`` and the hash stat caches. The store's work
is shared by this module and its helpers: :mod:`.pg_io` (the base class
:class:`~pytest_lrun.store.pg_io.PostgresRecords`: a run as a row and back, records
moved aside), :mod:`.pg_db` (connections, transactions, the schema), :mod:`.pg_place`
(placing a new run, the line of waiters), :mod:`.pg_check` (sweep and check),
:mod:`.pg_batches` and :mod:`.pg_results` (results shared between runners). Every
statement they send is a constant of :mod:`.pg_sql`: parameters only, never
formatted values.

A run is a row of ``lrun_runs`` holding its whole record as JSON (:mod:`.pg_io`).
The database enforces the invariants itself:

* at most one live run per slot of a machine (a unique index over the pending and running
  rows) and unique run ids (the primary key);
* a terminal record is final (a trigger refuses any ``UPDATE`` of a terminal row);
* :meth:`PostgresStore.place` on one single-slot machine takes no lock (the index
  arbitrates); with slots or several candidates it is one transaction under the
  candidates' advisory locks, retried on serialization failures, deadlocks and
  unique violations.

Liveness across hosts: a run's watch lock (:meth:`PostgresStore.watching`) is a
session-level advisory lock on a connection of its own, and a run's owner records
its creator's database session (``backend_pid``, ``backend_start``), alive while
that session is in ``pg_stat_activity``. Both go with their holder's connection,
so a runner that dies (even by SIGKILL) releases them at once. Both need sessions
of their own: a connection pooler in transaction mode would break them.

A record that does not parse is moved into ``lrun_corrupt`` (kept, never deleted)
and reported as :class:`~pytest_lrun.core.errors.CorruptRecord`, as the file store
moves a file into ``corrupt/``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from types import TracebackType

import psycopg

from pytest_lrun.core.errors import CorruptRecord, RunNotFound, StoreError, StoreUnreachable, TerminalRunError
from pytest_lrun.core.faults import crash_point
from pytest_lrun.core.fsutil import make_private_dir, remove_tree, stamp
from pytest_lrun.core.layout import DELETING_PREFIX
from pytest_lrun.core.reserve import release
from pytest_lrun.store import pg_check, pg_results, pg_sql
from pytest_lrun.store.base import Candidate, Decision, Sweep, Ticket
from pytest_lrun.store.common import (
    SWEEP_GRACE_S,
    check_candidates,
    check_machine,
    ended,
    local_owner,
    owner_alive,
    retry_while_busy,
)
from pytest_lrun.store.outcomes import MAX_KEPT, InnerOutcome, Quarantined, newest
from pytest_lrun.store.pg_batches import PostgresBatchStore
from pytest_lrun.store.pg_db import Cursor, lock_id
from pytest_lrun.store.pg_io import PostgresRecords, column, uncolumn
from pytest_lrun.store.pg_place import place_once
from pytest_lrun.store.records import Run, Status, valid_id

__all__ = ["PostgresStore"]


class PostgresStore(PostgresRecords):
    """Run records in a PostgreSQL database, this host's run files in ``state_dir``.

    :param url: a ``postgresql://`` URL as libpq reads it
    :param state_dir: this host's state dir (created with mode 0700; refused when not private, as
        :class:`~pytest_lrun.store.files.FileStore` refuses it)
    :param lock_timeout: seconds a statement waits for a machine's or a batch's lock
        before :class:`~pytest_lrun.core.errors.StoreLocked` (``None``: forever)
    :param connect_timeout: seconds to wait for the database to answer a connection
    :param waits: the other bounded waits (statement, idle transaction, keepalive; see
        :class:`~.pg_db.Database`); its ``lock_timeout`` is the caller's to pass as ``lock_timeout``
    :raises ConfigError: the state dir cannot be used, or the URL does not parse
    :raises StoreUnreachable: the database does not answer, or refuses the login
    :raises StoreSchemaTooNew: the database was set up by a newer pytest-lrun
    """

    def __repr__(self) -> str:
        return f"PostgresStore({self.db.location!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def store_id(self) -> str:
        """The database's store id, made with its schema: the same on every runner."""
        return self.db.store_id

    @functools.cached_property
    def batches(self) -> PostgresBatchStore:
        """The batch records in the same database."""
        return PostgresBatchStore(self)

    # -- the contract ---------------------------------------------------------------

    def place(
        self,
        candidates: Sequence[Candidate],
        make: Callable[[Candidate], Run],
        *,
        test_dir_hash: str | None = None,
        wait: float = 0,
        ticket: Ticket | None = None,
    ) -> tuple[Run, Decision]:
        """Create a run on one of ``candidates``, or find the live run that decides otherwise.

        As :meth:`FileStore.place <pytest_lrun.store.files.FileStore.place>`; the line of
        waiters is the table ``lrun_line``. One machine with one slot, asked without a
        ticket, takes no lock: REUSE and BUSY come from one read of its live runs,
        and CREATED is one ``INSERT ... ON CONFLICT DO NOTHING`` that the live-slot index
        lets through for exactly one of the runners racing for the slot. With more slots or
        more machines, a read alone could let two runners of one key create twins in two
        free slots: the decision is one transaction holding the candidates' advisory locks
        (taken in a fixed order). Either way the index keeps two live runs out of one slot.
        ``make`` may run more than once (when a race is lost): keep it cheap and free of
        side effects, and do not call the store from it.
        """
        check_candidates(candidates)
        return retry_while_busy(lambda: place_once(self, candidates, make, test_dir_hash, ticket), wait)

    def leave_line(self, ticket: Ticket, machines: Sequence[str]) -> None:
        names = [column(machine) for machine in machines]
        self.db.atomic(lambda cur: cur.execute(pg_sql.DELETE_TICKET, (ticket.id, names)), "the line")

    def insert(self, run: Run) -> Run:
        """Record an already finished run as it is; an empty ``id`` gets a fresh one.

        :raises StoreError: the run is not terminal, or a run with its id exists
        """
        check_machine(run.machine)
        if not run.status.is_terminal:
            raise StoreError(f"insert() records finished runs only; this one is {run.status.value}")
        if run.id:
            self.files(run.id)  # validates the id
        else:
            run.id = stamp()
        if run.created_at is None:
            run.created_at = time.time()
        if run.owner is None:
            run.owner = local_owner()
        row = self._row(run, owner=run.owner)
        inserted = self.db.atomic(lambda cur: cur.execute(pg_sql.INSERT_RUN_IF_NEW, row).fetchone())
        if inserted is None:
            raise StoreError(f"a run with id {run.id!r} already exists")
        return run

    def get(self, run_id: str) -> Run:
        """The stored run.

        :raises RunNotFound: no such run
        :raises CorruptRecord: its record did not parse (it was moved aside)
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))
        row = self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_RUN, (run_id,)).fetchone())
        if row is None:
            raise RunNotFound(run_id)
        return self._decode(run_id, row[0])

    def update(self, run: Run) -> None:
        """Replace a live run's record; ``id``, ``machine`` and ``key`` cannot change.

        :raises RunNotFound: no such run
        :raises TerminalRunError: the stored run is already terminal (the trigger refuses it too)
        :raises StoreError: ``machine`` or ``key`` differ from the stored run's
        """
        if not valid_id(run.id):
            raise RunNotFound(str(run.id))
        check_machine(run.machine)

        def body(cur: Cursor) -> None:
            row = cur.execute(pg_sql.SELECT_RUN_FOR_UPDATE, (run.id,)).fetchone()
            if row is None:
                raise RunNotFound(run.id)
            if (row[0], row[1]) != (column(run.machine), column(run.key)):
                raise StoreError(
                    f"run {run.id}: machine and key cannot change "
                    f"(stored {row[0]!r}/{row[1]!r}, given {run.machine!r}/{run.key!r})"
                )
            if Status(row[2]).is_terminal:
                raise TerminalRunError(run.id, row[2], run.status.value)
            cur.execute(pg_sql.UPDATE_RUN, self._row(run, owner=self._stamped(run.owner)))
            if run.status.is_terminal:
                crash_point("during_final_update")  # inside the transaction, before its commit

        self.db.atomic(body, f"run {run.id}")

    def end(
        self, run: Run, status: Status, *, error_code: str | None = None, error_msg: str | None = None
    ) -> Run:
        """Write ``run`` as terminal with ``status`` and ``ended_at`` now; the one way a run ends.

        :raises TerminalRunError: the run has ended already (its stored record stands)
        :raises RunNotFound: no such run
        """
        # The owner as update() stores it: the run returned is the run stored.
        run = ended(dataclasses.replace(run, owner=self._stamped(run.owner)), status, error_code, error_msg)
        release(self.files(run.id).reserve)  # this host's room: its log and the shared result get it
        self.update(run)
        return run

    def last_completed(self, machine: str, key: str) -> Run | None:
        """The newest completed run of ``key`` on ``machine``, or None (one index lookup)."""
        row = self.db.atomic(
            lambda cur: cur.execute(pg_sql.SELECT_LAST_COMPLETED, (column(machine), column(key))).fetchone()
        )
        if row is None:
            return None
        try:
            return self._decode(row[0], row[1])
        except CorruptRecord:
            return None

    def list(
        self,
        machine: str | None = None,
        status: Status | str | None = None,
        batch_id: str | None = None,
    ) -> builtins.list[Run]:
        """Stored runs matching every given filter, oldest first; corrupt ones are moved aside."""
        wanted = None if status is None else Status(status).value
        return self._select(machine=machine, status=wanted, batch=batch_id, live=False)

    def active(self, machine: str | None = None) -> builtins.list[Run]:
        """Non-terminal runs of ``machine`` (or of every machine), oldest first."""
        return self._select(machine=machine, status=None, batch=None, live=True)

    def _select(
        self, *, machine: str | None, status: str | None, batch: str | None, live: bool
    ) -> builtins.list[Run]:
        params = {
            "machine": None if machine is None else column(machine),
            "status": status,
            "batch": None if batch is None else column(batch),
            "live": live,
        }
        return self._decode_all(
            self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_RUNS, params).fetchall())
        )

    def delete(self, run_id: str) -> None:
        """Remove a terminal run: its row, its shared result and this host's folder.

        :raises RunNotFound: no such run
        :raises TerminalRunError: the run is still live
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))

        def body(cur: Cursor) -> None:
            row = cur.execute(pg_sql.SELECT_RUN_STATUS_FOR_UPDATE, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if not Status(row[0]).is_terminal:
                raise TerminalRunError(run_id, row[0], "deleted")
            cur.execute(pg_sql.DELETE_RUN, (run_id,))  # its result goes with it

        self.db.atomic(body, f"run {run_id}")
        self._drop_folder(run_id)

    def prune(self, max_bytes: int) -> builtins.list[str]:
        """Delete terminal runs with saved results, oldest first, until the results fit ``max_bytes``.

        A run deleted meanwhile by another runner's prune is simply not counted twice.
        """
        rows = self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_PRUNABLE).fetchall())
        total = sum(int(size) for _, size in rows)
        deleted: builtins.list[str] = []
        for run_id, size in rows:
            if total <= max_bytes:
                break
            with contextlib.suppress(RunNotFound):
                self.delete(run_id)
                deleted.append(run_id)
            total -= int(size)
        return deleted

    def evict(self, run_id: str) -> None:
        """Free this host's disk of a terminal run: its record and shared result stay for every runner.

        :raises RunNotFound: no such run
        :raises TerminalRunError: the run is still live
        """
        run = self.get(run_id)
        if not run.status.is_terminal:
            raise TerminalRunError(run_id, run.status.value, "evicted")
        self._drop_folder(run_id)

    def _drop_folder(self, run_id: str) -> None:
        """Remove this host's folder of the run (renamed first: a crash mid-removal leaves a
        name the sweep finishes removing)."""
        trash = self.runs_dir / f"{DELETING_PREFIX}{run_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.files(run_id).dir, trash)
        except FileNotFoundError:
            return
        remove_tree(trash)

    def sweep(self, *, grace: float = SWEEP_GRACE_S, now: float | None = None) -> Sweep:
        """Settle what crashes left, once older than ``grace`` seconds (:mod:`.pg_check`)."""
        return pg_check.sweep(self, grace=grace, now=now)

    def check(self) -> builtins.list[str]:
        """The store's invariant violations, one sentence each; ``[]`` when healthy (:mod:`.pg_check`)."""
        return pg_check.check(self)

    def owner_alive(self, run: Run) -> bool:
        """Whether the database session that created (or last adopted) ``run`` is still connected.

        A record without a session (inserted, or written by a process that was not a
        client of this database) falls back to the file store's rule (a local pid probe).
        """
        owner = run.owner or {}
        pid, start = owner.get("backend_pid"), owner.get("backend_start")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (pid, start)):
            return owner_alive(run)
        row = self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_SESSION_START, (pid,)).fetchone())
        # A session of another role may hide its start time from us: its pid is all we see.
        return row is not None and row[0] in (None, start)

    @contextlib.contextmanager
    def _advisory(self, kind: str, name: str, wait: bool) -> Iterator[bool]:
        """Hold a session-level advisory lock on a connection of its own; yields whether it is held."""
        lock = lock_id(kind, name)
        with self.db.spare() as conn:
            if wait:  # as long as the holder holds it: the one wait without a bound
                conn.execute(pg_sql.ADVISORY_LOCK, (lock,))
            else:
                with self.db.bounded(conn):
                    row = conn.execute(pg_sql.ADVISORY_TRY_LOCK, (lock,)).fetchone()
                if row is None or not row[0]:
                    yield False
                    return
            try:
                yield True
            finally:
                released = None
                with contextlib.suppress(psycopg.Error, StoreUnreachable), self.db.bounded(conn):
                    released = conn.execute(pg_sql.ADVISORY_UNLOCK, (lock,)).fetchone()
                if released is None or not released[0]:
                    conn.close()  # never back to the pool with the lock: closing the session drops it

    @contextlib.contextmanager
    def _watch(self, run_id: str, wait: bool) -> Iterator[bool]:
        with self._advisory("watch", run_id, wait) as held:
            if held:
                make_private_dir(self.files(run_id).dir)  # the watcher writes the log and artifacts here
            yield held

    def watching(self, run_id: str, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Hold the run's watch lock (a session-level advisory lock on a connection of its own).

        The database releases it when the holder's connection drops, even by SIGKILL.
        When it is taken, this host's run folder is made if missing.
        """
        return self._watch(run_id, wait)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the advisory lock on ``name`` for the block: one holder across every runner."""
        with self._advisory("named", name, wait=True):
            yield

    def save_result(self, run: Run) -> None:
        """Store this host's JUnit XML, log, events and artifacts of ``run`` for every runner (in chunks)."""
        files = self.files(run.id)
        with self.db.spare() as conn:
            pg_results.save(conn, run.id, files)

    def save_durations(self, suite: str, durations: Mapping[str, float]) -> None:
        """Upsert each node id's duration, in one transaction."""
        rows = [(column(suite), column(nodeid), float(seconds)) for nodeid, seconds in durations.items()]
        if rows:
            self.db.atomic(
                lambda cur: cur.executemany(pg_sql.UPSERT_DURATION, rows), f"durations of {suite!r}"
            )

    def durations(self, suite: str) -> dict[str, float]:
        rows = self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_DURATIONS, (column(suite),)).fetchall())
        return {uncolumn(nodeid): float(seconds) for nodeid, seconds in rows}

    def save_outcomes(self, outcomes: Sequence[InnerOutcome]) -> None:
        """Insert each outcome (a run's test recorded already stays as it was), in one transaction."""
        rows = [
            (column(o.key), column(o.suite), column(o.nodeid), o.run_id, column(o.machine), o.outcome, o.at)
            for o in outcomes
        ]
        keys = sorted({column(o.key) for o in outcomes})

        def insert(cur: Cursor) -> None:
            cur.executemany(pg_sql.INSERT_OUTCOME, rows)
            for key in keys:  # bounded as the file store is: the newest MAX_KEPT per key and test
                cur.execute(pg_sql.PRUNE_OUTCOMES, {"key": key, "kept": MAX_KEPT})

        if rows:
            self.db.atomic(insert, "inner outcomes")

    def outcomes(self, key: str | None = None) -> builtins.list[InnerOutcome]:
        def read(cur: Cursor) -> builtins.list[tuple[str, str, str, str, str, str, float]]:
            if key is None:
                return cur.execute(pg_sql.SELECT_OUTCOMES).fetchall()
            return cur.execute(pg_sql.SELECT_OUTCOMES_OF_KEY, (column(key),)).fetchall()

        rows = self.db.atomic(read)
        return newest(
            InnerOutcome(uncolumn(k), uncolumn(s), uncolumn(n), r, uncolumn(m), o, float(at))
            for k, s, n, r, m, o, at in rows
        )

    def drop_stale_outcomes(self) -> int:
        row = self.db.atomic(
            lambda cur: cur.execute(pg_sql.DELETE_STALE_OUTCOMES).fetchone(), "stale outcomes"
        )
        return int(row[0]) if row else 0

    def quarantine_test(self, nodeid: str, since: float) -> Quarantined:
        def put(cur: Cursor) -> tuple[str, float]:
            cur.execute(pg_sql.INSERT_QUARANTINED, (column(nodeid), since))
            row = cur.execute(pg_sql.SELECT_QUARANTINED_ONE, (column(nodeid),)).fetchone()
            assert row is not None  # inserted, or there already, in this transaction
            return row[0], row[1]

        _nodeid, kept = self.db.atomic(put, "the quarantine list")
        return Quarantined(nodeid, float(kept))

    def release_test(self, nodeid: str) -> bool:
        deleted = self.db.atomic(
            lambda cur: cur.execute(pg_sql.DELETE_QUARANTINED, (column(nodeid),)).rowcount
        )
        return bool(deleted)

    def quarantined_tests(self) -> builtins.list[Quarantined]:
        rows = self.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_QUARANTINED).fetchall())
        return [Quarantined(uncolumn(nodeid), float(since)) for nodeid, since in rows]

    def load_result(self, run: Run, parts: Collection[str] | None = None) -> None:
        """Fetch the stored result files of ``run`` (its ``parts``, default all) that this host lacks.

        :raises StoreError: a stored part is incomplete or its digest does not match
        """
        files = self.files(run.id)
        with self.db.spare() as conn:
            pg_results.load(conn, run.id, files, self.db.location, parts)
