"""The PostgreSQL store: run and batch records in one database that every CI runner reaches.

Selected with ``--lrun-store=postgresql://...`` (libpq's URL syntax, so ``sslmode``,
``PGPASSWORD`` and ``~/.pgpass`` work); the contract is :mod:`.base`'s, the same as
the file store's, but it holds for every runner of the database. Each runner's
state dir keeps what is local by nature: its copies of run files (logs, JUnit
XML, artifacts) under ``runs/<run-id>/`` and the hash stat caches.

Tables (every statement of the store is in this module and :mod:`.pg_results`,
with parameters only, never formatted values)::

    lrun_schema    (version, store_id)        one row: the schema version and the store's id
    lrun_runs      (id, machine, key, status, batch_id, created_at, ended_at, record)
    lrun_batches   (id, created_at, record)
    lrun_corrupt   (kind, id, record, reason, moved_at)   records that did not parse, moved aside
    lrun_result_*  the shared results (:mod:`.pg_results`)

``record`` is the whole record as JSON (``ensure_ascii``: ``text``, not ``jsonb``,
which refuses NUL and the lone surrogates of names that are not valid UTF-8); the
other columns are what queries look at. Text columns hold names in a reversible,
injective form (:func:`_column`): backslash, NUL and surrogates become ``\\uXXXX``.

The database enforces the invariants, not only this client:

* at most one live run per machine: a unique index on ``machine`` over the
  pending and running rows; run ids unique: the primary key;
* a terminal record is final: a trigger refuses any ``UPDATE`` of a terminal row;
* :meth:`PostgresStore.prepare` is one transaction under an advisory lock on the
  machine; serialization failures, deadlocks and unique violations are retried.

The schema is created and migrated on first use under an advisory lock, so
runners that start at once are safe; a schema newer than this code is
:class:`~pytest_lrun.errors.StoreSchemaTooNew`.

Liveness across hosts: a run's watch lock (:meth:`PostgresStore.watching`) is a
session-level advisory lock held on a connection of its own, and a run's owner
records its creator's database session (``backend_pid``, ``backend_start``), alive
while that session is in ``pg_stat_activity``. Both go with their holder's
connection, so a runner that dies (even by SIGKILL) releases them at once. Both
need sessions of their own: a pooler in transaction mode would break them.

The store's main connection (short statements, under a thread lock) stays open for
the store's life; watch locks and results use connections of a small idle pool. A
connection that breaks (a database restart) raises
:class:`~pytest_lrun.errors.StoreUnreachable`, and the next call connects again.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import xxhash
from psycopg import errors as pg_errors

from ..errors import (
    OWNER_GONE,
    BatchNotFound,
    BatchPlanMismatch,
    ConfigError,
    CorruptRecord,
    RunNotFound,
    StoreError,
    StoreLocked,
    StoreSchemaTooNew,
    StoreUnreachable,
    TerminalRunError,
)
from ..fsutil import Unparseable, make_private_dir, parse_record, remove_tree, stamp
from ..layout import DELETING_PREFIX, RunFiles, is_leftover
from ..settings import DEFAULT_CONNECT_TIMEOUT, redact_url
from . import files as file_store
from . import pg_results
from .base import Decision, Sweep
from .records import Batch, Run, Status, derive_status, new_batch_id, valid_id, validate_batch_id

if TYPE_CHECKING:
    from ..plan import Plan

__all__ = ["SCHEMA_VERSION", "PostgresBatchStore", "PostgresStore"]

logger = logging.getLogger("pytest_lrun")

#: The newest schema this code knows; :data:`_MIGRATIONS` leads up to it.
SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE lrun_runs (
            id text PRIMARY KEY,
            machine text NOT NULL,
            key text NOT NULL,
            status text NOT NULL
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'interrupted', 'timeout')),
            batch_id text,
            created_at double precision,
            ended_at double precision,
            record text NOT NULL)""",
        """CREATE UNIQUE INDEX lrun_runs_one_live ON lrun_runs (machine)
            WHERE status IN ('pending', 'running')""",
        "CREATE INDEX lrun_runs_completed ON lrun_runs (machine, key, ended_at) WHERE status = 'completed'",
        "CREATE INDEX lrun_runs_created ON lrun_runs (created_at, id)",
        "CREATE INDEX lrun_runs_batch ON lrun_runs (batch_id)",
        """CREATE FUNCTION lrun_runs_final() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'run % is %: a terminal run is final', OLD.id, OLD.status
                USING ERRCODE = 'LR001';
        END $$""",
        """CREATE TRIGGER lrun_runs_final BEFORE UPDATE ON lrun_runs FOR EACH ROW
            WHEN (OLD.status NOT IN ('pending', 'running')) EXECUTE FUNCTION lrun_runs_final()""",
        """CREATE TABLE lrun_batches (
            id text PRIMARY KEY, created_at double precision NOT NULL, record text NOT NULL)""",
        """CREATE TABLE lrun_corrupt (
            kind text NOT NULL, id text NOT NULL, record text NOT NULL, reason text NOT NULL,
            moved_at timestamptz NOT NULL DEFAULT now())""",
        *pg_results.SCHEMA_V1,
    ),
}

_INSERT_RUN = """INSERT INTO lrun_runs (id, machine, key, status, batch_id, created_at, ended_at, record)
    VALUES (%(id)s, %(machine)s, %(key)s, %(status)s, %(batch)s, %(created)s, %(ended)s, %(record)s)"""
_SELECT_RUNS = """SELECT id, record FROM lrun_runs
    WHERE (%(machine)s::text IS NULL OR machine = %(machine)s)
      AND (%(status)s::text IS NULL OR status = %(status)s)
      AND (%(batch)s::text IS NULL OR batch_id = %(batch)s)
      AND (NOT %(live)s OR status IN ('pending', 'running'))
    ORDER BY COALESCE(created_at, 0), id"""
# Move a record that did not parse aside, unless someone rewrote it meanwhile.
_MOVE_ASIDE = {
    "run": """WITH gone AS (
            DELETE FROM lrun_runs WHERE id = %(id)s AND record = %(record)s RETURNING id, record)
        INSERT INTO lrun_corrupt (kind, id, record, reason) SELECT 'run', id, record, %(reason)s FROM gone""",
    "batch": """WITH gone AS (
            DELETE FROM lrun_batches WHERE id = %(id)s AND record = %(record)s RETURNING id, record)
        INSERT INTO lrun_corrupt (kind, id, record, reason)
        SELECT 'batch', id, record, %(reason)s FROM gone""",
}

_RETRIES = 8  # attempts of one transaction that hit a serialization failure or a deadlock
_IDLE_CONNECTIONS = 4  # spare connections kept for watch locks and results
_UNSAFE_TEXT = re.compile("[\\\\\x00\ud800-\udfff]")

T = TypeVar("T")
Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


def _column(text: str) -> str:
    """``text`` as a column value: backslash, NUL and lone surrogates as ``\\uXXXX``.

    Injective (every backslash of the result starts an escape), so two names never
    share a column value, and storable (PostgreSQL text refuses NUL and surrogates).
    """
    return _UNSAFE_TEXT.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _lock_id(kind: str, name: str) -> int:
    """The bigint of an advisory lock on ``name`` (a machine, a run) in ``kind``'s space."""
    digest = xxhash.xxh64_digest(f"pytest-lrun:{kind}:{name}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest, "big", signed=True)


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=True, allow_nan=False)


class PostgresStore:
    """Run records in a PostgreSQL database, this host's run files in ``state_dir``.

    :param url: a ``postgresql://`` URL as libpq reads it
    :param state_dir: this host's state dir (created with mode 0700)
    :param lock_timeout: seconds a statement waits for a machine's or a batch's lock
        before :class:`~pytest_lrun.errors.StoreLocked` (``None``: forever)
    :param connect_timeout: seconds to wait for the database to answer a connection
    :raises ConfigError: the state dir cannot be used, or the URL does not parse
    :raises StoreUnreachable: the database does not answer, or refuses the login
    :raises StoreSchemaTooNew: the database was set up by a newer pytest-lrun
    """

    def __init__(
        self,
        url: str,
        state_dir: str | os.PathLike[str],
        *,
        lock_timeout: float | None = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        root = Path(state_dir).expanduser()
        self.state_dir = Path(os.path.realpath(root))
        self.runs_dir = self.state_dir / "runs"
        self.hashcache_dir = self.state_dir / "hashcache"
        try:
            make_private_dir(root)
            make_private_dir(self.runs_dir)
        except OSError as exc:
            reason = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(f"state dir {root}", f"cannot use it: {reason or exc}") from exc
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self.problems: builtins.list[CorruptRecord] = []
        self._url = url
        self._location = redact_url(url)
        self._lock = threading.Lock()  # the main connection's: one transaction at a time
        self._main: Connection | None = None
        self._backend: dict[str, int] = {}  # the main connection's session: the owner of runs we create
        self._pool_lock = threading.Lock()
        self._idle: builtins.list[Connection] = []
        self._lent: set[Connection] = set()
        self._batches = PostgresBatchStore(self)
        try:
            with self._lock:
                self._store_id = self._migrate(self._connection()[0])
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._location!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self._location

    @property
    def store_id(self) -> str:
        """The database's store id, made with its schema: the same on every runner."""
        return self._store_id

    @property
    def batches(self) -> PostgresBatchStore:
        return self._batches

    def files(self, run_id: str) -> RunFiles:
        """This host's copies of the run's files, under ``runs/<run_id>/``.

        :raises RunNotFound: ``run_id`` is not a well-formed run id
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))
        return RunFiles(self.runs_dir / run_id)

    # -- connections ----------------------------------------------------------------

    def _unreachable(self, exc: psycopg.Error) -> StoreUnreachable:
        """The driver's error as ``store_unreachable``: one line, any password masked."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        secrets_ = {os.environ.get("PGPASSWORD", "")}
        with contextlib.suppress(psycopg.Error):
            secrets_.add(str(psycopg.conninfo.conninfo_to_dict(self._url).get("password") or ""))
        for secret in sorted(filter(None, secrets_), key=len, reverse=True):
            reason = reason.replace(secret, "***")
        return StoreUnreachable(self._location, reason)

    def _connect(self, lock_timeout: float | None) -> Connection:
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self.connect_timeout)),
                fallback_application_name="pytest-lrun",
            )
        except psycopg.ProgrammingError as exc:  # the URL itself does not parse
            raise ConfigError("store URL", str(self._unreachable(exc).reason)) from None
        except psycopg.Error as exc:
            # Not chained: the driver's text is only masked in ours.
            raise self._unreachable(exc) from None
        millis = "0" if lock_timeout is None else f"{max(1, round(lock_timeout * 1000))}ms"
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (millis,))
        except psycopg.Error as exc:
            conn.close()
            raise self._unreachable(exc) from None
        return conn

    def _connection(self) -> tuple[Connection, bool]:
        """The main connection (the caller holds ``_lock``), and whether it is new."""
        if self._main is not None and not self._main.closed:
            return self._main, False
        conn = self._connect(self.lock_timeout)
        try:
            # A session's identity: pids are reused, a pid with its start time is not.
            row = conn.execute(
                "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity"
                " WHERE pid = pg_backend_pid()"
            ).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise self._unreachable(exc) from None
        assert row is not None  # our own session is always there
        self._main, self._backend = conn, {"backend_pid": row[0], "backend_start": row[1]}
        return conn, True

    def _migrate(self, conn: Connection) -> str:
        """Create or upgrade the schema (under an advisory lock); returns the store id."""
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("schema", "lrun"),))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS lrun_schema"
                    " (version integer NOT NULL, store_id text NOT NULL)"
                )
                row = conn.execute("SELECT version, store_id FROM lrun_schema").fetchone()
                if row is None:
                    row = (0, secrets.token_hex(8))
                    conn.execute("INSERT INTO lrun_schema (version, store_id) VALUES (%s, %s)", row)
                version, store_id = int(row[0]), str(row[1])
                if version > SCHEMA_VERSION:
                    raise StoreSchemaTooNew(self._location, version, SCHEMA_VERSION)
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[number]:
                        conn.execute(statement)
                conn.execute("UPDATE lrun_schema SET version = %s", (max(version, SCHEMA_VERSION),))
        except psycopg.Error as exc:
            if conn.broken:
                raise self._unreachable(exc) from None
            raise StoreError(f"store {self._location}: cannot set up its schema: {exc}") from exc
        return store_id

    def _atomic(
        self, body: Callable[[Cursor], T], what: str = "the store", *, retry_unique: bool = False
    ) -> T:
        """Run ``body`` in one transaction of the main connection, retried when the database says so.

        A connection that died while idle (a database restart) is replaced once; one
        that fails otherwise raises :class:`StoreUnreachable`, and the next call connects again.
        """
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn, fresh = self._connection()
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        return body(cur)
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        conn.close()
                        self._main = None
                        if not fresh and attempt == 1:
                            continue
                        raise self._unreachable(exc) from None
                    if isinstance(exc, pg_errors.LockNotAvailable):
                        where = f"{self._location} (advisory lock)"
                        raise StoreLocked(what, where, self.lock_timeout or 0.0) from None
                    retry = isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)) or (
                        retry_unique and isinstance(exc, pg_errors.UniqueViolation)
                    )
                    if retry and attempt < _RETRIES:
                        time.sleep(random.uniform(0, 0.005 * attempt))
                        continue
                    raise StoreError(f"store {self._location}: {exc}") from exc

    @contextlib.contextmanager
    def _spare(self) -> Iterator[Connection]:
        """A connection of the idle pool (or a new one) for the block; given back if still healthy."""
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(None)
        with self._pool_lock:
            self._lent.add(conn)
        try:
            yield conn
        except psycopg.Error as exc:
            conn.close()
            raise (
                self._unreachable(exc)
                if conn.broken or conn.closed
                else StoreError(f"store {self._location}: {exc}")
            ) from None
        finally:
            with self._pool_lock:
                self._lent.discard(conn)
                healthy = (
                    not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                )
                if healthy and len(self._idle) < _IDLE_CONNECTIONS:
                    self._idle.append(conn)
                else:
                    conn.close()

    def close(self) -> None:
        """Close every connection (releasing any watch lock still held); the store can connect again."""
        with self._lock:
            if self._main is not None:
                self._main.close()
                self._main = None
        with self._pool_lock:
            for conn in (*self._idle, *self._lent):
                conn.close()
            self._idle.clear()

    # -- records ----------------------------------------------------------------------

    def _row(self, run: Run, *, owner: dict[str, Any] | None) -> dict[str, Any]:
        """The column values of ``run``, its record with ``owner``."""
        record = run.to_dict()
        record["owner"] = owner
        return {
            "id": run.id,
            "machine": _column(run.machine),
            "key": _column(run.key),
            "status": run.status.value,
            "batch": None if run.batch_id is None else _column(run.batch_id),
            "created": run.created_at,
            "ended": run.ended_at,
            "record": _dump(record),
        }

    def _stamped(self, owner: dict[str, Any] | None) -> dict[str, Any] | None:
        """``owner`` with our session's identity when it names this process (caller holds ``_lock``)."""
        if owner is None or owner.get("host") != socket.gethostname() or owner.get("pid") != os.getpid():
            return owner
        return {**owner, **self._backend}

    def _quarantine(self, kind: str, key: str, record: str, reason: str) -> CorruptRecord:
        self._atomic(
            lambda cur: cur.execute(_MOVE_ASIDE[kind], {"id": key, "record": record, "reason": reason})
        )
        problem = CorruptRecord(f"{self._location} {kind} {key}", f"lrun_corrupt ({kind} {key})", reason)
        self.problems.append(problem)
        logger.warning("%s", problem)
        return problem

    def _decode(self, run_id: str, record: str) -> Run:
        """The run of a stored record; one that does not parse is moved aside.

        :raises CorruptRecord: the record did not parse (it was moved to ``lrun_corrupt``)
        """
        try:
            run = parse_record(record.encode(), Run.from_dict)
            if run.id != run_id:
                raise Unparseable(f"record id {run.id!r} does not match its row {run_id!r}")
        except Unparseable as exc:
            raise self._quarantine("run", run_id, record, str(exc)) from None
        return run

    def _decode_all(self, rows: builtins.list[tuple[str, str]]) -> builtins.list[Run]:
        runs = []
        for run_id, record in rows:
            with contextlib.suppress(CorruptRecord):
                runs.append(self._decode(run_id, record))
        return runs

    # -- the contract ---------------------------------------------------------------

    def prepare(
        self,
        machine: str,
        key: str,
        make: Callable[[], Run],
        *,
        test_dir_hash: str | None = None,
        wait: float = 0,
    ) -> tuple[Run, Decision]:
        """Create a run on ``machine`` for ``key``, or find the live run that decides otherwise.

        As :meth:`FileStore.prepare <pytest_lrun.store.files.FileStore.prepare>`, in one
        transaction under the machine's advisory lock; ``make`` runs inside it (keep it
        cheap, do not call the store from it) and may run again when the transaction is retried.
        """
        file_store.machine_key(machine)  # validates the name
        if not isinstance(key, str) or not key:
            raise ValueError(f"an idempotency key must be a non-empty string, not {key!r}")
        deadline = time.monotonic() + max(0.0, wait)
        delay = file_store._BUSY_BACKOFF_START_S
        while True:
            run, outcome = self._prepare_once(machine, key, make, test_dir_hash)
            remaining = deadline - time.monotonic()
            if outcome is not Decision.BUSY or remaining <= 0:
                return run, outcome
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, file_store._BUSY_BACKOFF_MAX_S)

    def _prepare_once(
        self, machine: str, key: str, make: Callable[[], Run], test_dir_hash: str | None
    ) -> tuple[Run, Decision]:
        def body(cur: Cursor) -> tuple[Run | tuple[str, str], Decision]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("machine", machine),))
            cur.execute(
                "SELECT id, key, record FROM lrun_runs"
                " WHERE machine = %s AND status IN ('pending', 'running') ORDER BY created_at, id",
                (_column(machine),),
            )
            live = cur.fetchall()
            for run_id, stored_key, record in live:
                if stored_key == _column(key):
                    return (run_id, record), Decision.REUSE
            if live:
                return (live[0][0], live[0][2]), Decision.BUSY
            run = make()
            file_store.FileStore._fill_new(run, machine, key, test_dir_hash)
            run.id, run.owner = stamp(), self._stamped(run.owner)
            cur.execute(
                _INSERT_RUN,
                self._row(run, owner=run.owner),
            )
            return run, Decision.CREATED

        found, outcome = self._atomic(body, f"machine {machine!r}", retry_unique=True)
        if isinstance(found, Run):
            return found, outcome
        return self._decode(*found), outcome

    def insert(self, run: Run) -> Run:
        """Record an already finished run as it is; an empty ``id`` gets a fresh one.

        :raises StoreError: the run is not terminal, or a run with its id exists
        """
        file_store.machine_key(run.machine)
        if not run.status.is_terminal:
            raise StoreError(f"insert() records finished runs only; this one is {run.status.value}")
        if run.id:
            self.files(run.id)  # validates the id
        else:
            run.id = stamp()
        if run.created_at is None:
            run.created_at = time.time()
        if run.owner is None:
            run.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        row = self._row(run, owner=run.owner)
        inserted = self._atomic(
            lambda cur: cur.execute(
                _INSERT_RUN + " ON CONFLICT (id) DO NOTHING RETURNING id",
                row,
            ).fetchone()
        )
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
        row = self._atomic(
            lambda cur: cur.execute("SELECT record FROM lrun_runs WHERE id = %s", (run_id,)).fetchone()
        )
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
        file_store.machine_key(run.machine)

        def body(cur: Cursor) -> None:
            row = cur.execute(
                "SELECT machine, key, status FROM lrun_runs WHERE id = %s FOR UPDATE", (run.id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(run.id)
            if (row[0], row[1]) != (_column(run.machine), _column(run.key)):
                raise StoreError(
                    f"run {run.id}: machine and key cannot change "
                    f"(stored {row[0]!r}/{row[1]!r}, given {run.machine!r}/{run.key!r})"
                )
            if Status(row[2]).is_terminal:
                raise TerminalRunError(run.id, row[2], run.status.value)
            cur.execute(
                "UPDATE lrun_runs SET status = %(status)s, batch_id = %(batch)s, created_at = %(created)s,"
                " ended_at = %(ended)s, record = %(record)s WHERE id = %(id)s",
                self._row(run, owner=self._stamped(run.owner)),
            )

        self._atomic(body, f"run {run.id}")

    def end(
        self, run: Run, status: Status, *, error_code: str | None = None, error_msg: str | None = None
    ) -> Run:
        """Write ``run`` as terminal with ``status`` and ``ended_at`` now; the one way a run ends.

        :raises TerminalRunError: the run has ended already (its stored record stands)
        :raises RunNotFound: no such run
        """
        if not status.is_terminal:
            raise StoreError(f"run {run.id}: end() needs a terminal status, not {status.value}")
        ended = dataclasses.replace(
            run,
            status=status,
            ended_at=time.time(),
            error_code=error_code or run.error_code,
            error_msg=error_msg or run.error_msg,
        )
        self.update(ended)
        return ended

    def last_completed(self, machine: str, key: str) -> Run | None:
        """The newest completed run of ``key`` on ``machine``, or None (one index lookup)."""
        row = self._atomic(
            lambda cur: cur.execute(
                "SELECT id, record FROM lrun_runs WHERE machine = %s AND key = %s AND status = 'completed'"
                " ORDER BY ended_at DESC NULLS LAST, id DESC LIMIT 1",
                (_column(machine), _column(key)),
            ).fetchone()
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
            "machine": None if machine is None else _column(machine),
            "status": status,
            "batch": None if batch is None else _column(batch),
            "live": live,
        }
        return self._decode_all(self._atomic(lambda cur: cur.execute(_SELECT_RUNS, params).fetchall()))

    def delete(self, run_id: str) -> None:
        """Remove a terminal run: its row, its shared result and this host's folder.

        :raises RunNotFound: no such run
        :raises TerminalRunError: the run is still live
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))

        def body(cur: Cursor) -> None:
            row = cur.execute("SELECT status FROM lrun_runs WHERE id = %s FOR UPDATE", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if not Status(row[0]).is_terminal:
                raise TerminalRunError(run_id, row[0], "deleted")
            cur.execute("DELETE FROM lrun_runs WHERE id = %s", (run_id,))  # its result goes with it

        self._atomic(body, f"run {run_id}")
        self._drop_folder(run_id)

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

    def sweep(self, *, grace: float = file_store.SWEEP_GRACE_S, now: float | None = None) -> Sweep:
        """Settle what crashes left, once older than ``grace`` seconds.

        On this host: temporary files, half-deleted run folders and run folders of runs
        the database does not have are removed. In the database: a live run with no
        container whose owner is gone (its creator died between prepare and create) is
        ended ``interrupted`` with ``owner_gone``.
        """
        now = time.time() if now is None else now
        report = Sweep()
        folders = [name for name in os.listdir(self.runs_dir) if valid_id(name)]
        known = {
            row[0]
            for row in self._atomic(
                lambda cur: cur.execute("SELECT id FROM lrun_runs WHERE id = ANY(%s)", (folders,)).fetchall()
            )
        }
        candidates = [self.runs_dir / name for name in folders if name not in known]
        subdirs = [p for p in self.state_dir.iterdir() if p.is_dir()]
        for directory in (self.state_dir, *subdirs, *(self.runs_dir / name for name in known)):
            with contextlib.suppress(OSError):  # a run folder that vanished, or is not a folder
                candidates.extend(p for p in directory.iterdir() if is_leftover(p.name))
        for path in candidates:
            try:
                if now - os.lstat(path).st_mtime < grace:
                    continue
                remove_tree(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                report.problems.append(f"cannot remove leftover {path}: {exc}")
            else:
                report.removed.append(str(path.relative_to(self.state_dir)))
        for run in self.active():
            if run.container_id is not None or (run.created_at or 0) > now - grace or self.owner_alive(run):
                continue
            try:
                self.end(run, Status.INTERRUPTED, error_code=OWNER_GONE, error_msg=_ORPHAN)
            except (RunNotFound, TerminalRunError):
                continue  # ended or removed meanwhile
            report.ended.append(run.id)
        return report

    def check(self) -> builtins.list[str]:
        """The store's invariant violations, one sentence each; ``[]`` when healthy. Changes nothing.

        Checks: the database's guards (the one-live-run index, the final-record trigger)
        exist; every run and batch record parses, and a run's columns agree with its record.
        """

        def body(cur: Cursor) -> tuple[Any, builtins.list[Any], builtins.list[Any]]:
            guards = cur.execute(
                "SELECT to_regclass('lrun_runs_one_live') IS NOT NULL,"
                " EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'lrun_runs_final' AND NOT tgisinternal)"
            ).fetchone()
            runs = cur.execute(
                "SELECT id, machine, key, status, record FROM lrun_runs ORDER BY id"
            ).fetchall()
            batches = cur.execute("SELECT id, record FROM lrun_batches ORDER BY id").fetchall()
            return guards, runs, batches

        guards, runs, batches = self._atomic(body)
        problems = [
            f"lrun_runs lacks its guard {name}"
            for name, present in zip(
                ("lrun_runs_one_live (index)", "lrun_runs_final (trigger)"), guards, strict=True
            )
            if not present
        ]
        for run_id, machine, key, status, record in runs:
            try:
                run = parse_record(record.encode(), Run.from_dict)
            except Unparseable as exc:
                problems.append(f"run {run_id} is not a valid run record: {exc}")
                continue
            columns = (run.id, _column(run.machine), _column(run.key), run.status.value)
            if columns != (run_id, machine, key, status):
                problems.append(
                    f"run {run_id}: its columns {(run_id, machine, key, status)} differ from its record"
                )
        for batch_id, record in batches:
            try:
                parse_record(record.encode(), Batch.from_dict)
            except Unparseable as exc:
                problems.append(f"batch {batch_id} is not a valid batch record: {exc}")
        return problems

    def owner_alive(self, run: Run) -> bool:
        """Whether the database session that created (or last adopted) ``run`` is still connected.

        A record without a session (inserted, or written by a process that was not a
        client of this database) falls back to the file store's rule (a local pid probe).
        """
        owner = run.owner or {}
        pid, start = owner.get("backend_pid"), owner.get("backend_start")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (pid, start)):
            return file_store.owner_alive(run)
        row = self._atomic(
            lambda cur: cur.execute(
                "SELECT (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity"
                " WHERE pid = %s",
                (pid,),
            ).fetchone()
        )
        # A session of another role may hide its start time from us: its pid is all we see.
        return row is not None and row[0] in (None, start)

    @contextlib.contextmanager
    def _watch(self, run_id: str, wait: bool) -> Iterator[bool]:
        files = self.files(run_id)
        lock = _lock_id("watch", run_id)
        with self._spare() as conn:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
                if row is None or not row[0]:
                    yield False
                    return
            try:
                make_private_dir(files.dir)  # the watcher writes the log and artifacts here
                yield True
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))

    def watching(self, run_id: str, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Hold the run's watch lock (a session-level advisory lock on a connection of its own).

        The database releases it when the holder's connection drops, even by SIGKILL.
        When it is taken, this host's run folder is made if missing.
        """
        return self._watch(run_id, wait)

    def save_result(self, run: Run) -> None:
        """Store this host's JUnit XML, log and artifacts of ``run`` for every runner (in chunks)."""
        files = self.files(run.id)
        with self._spare() as conn:
            pg_results.save(conn, run.id, files)

    def load_result(self, run: Run) -> None:
        """Fetch the stored result files of ``run`` that this host lacks.

        :raises StoreError: a stored part is incomplete or its digest does not match
        """
        files = self.files(run.id)
        with self._spare() as conn:
            pg_results.load(conn, run.id, files, self._location)


_ORPHAN = "its creator's database session ended before it started a container"


class PostgresBatchStore:
    """Batch records in the store's database (see :mod:`.file_batches` for the rules, which are the same).

    A read-modify-write holds the batch row's lock (``SELECT ... FOR UPDATE``), so
    runners recording at once lose nothing.
    """

    def __init__(self, runs: PostgresStore) -> None:
        self.runs = runs

    def __repr__(self) -> str:
        return f"PostgresBatchStore({self.runs.location!r})"

    def _decode(self, batch_id: str, record: str) -> Batch:
        try:
            batch = parse_record(record.encode(), Batch.from_dict)
            if batch.id != batch_id:
                raise Unparseable(f"record id {batch.id!r} does not match its row {batch_id!r}")
        except Unparseable as exc:
            raise self.runs._quarantine("batch", batch_id, record, str(exc)) from None
        return batch

    def open(self, plan: Plan, batch_id: str | None = None) -> Batch:
        """Create a batch for ``plan`` (a fresh id when ``batch_id`` is None), or join ``batch_id``.

        :raises ConfigError: ``batch_id`` is not a valid batch id
        :raises BatchPlanMismatch: the existing batch was made from a plan with another digest
        """
        if batch_id is not None:
            validate_batch_id(batch_id)
        for _ in range(100):
            batch = Batch(
                id=batch_id or new_batch_id(),
                plan=str(plan.path),
                plan_digest=plan.digest,
                created_at=time.time(),
                planned=builtins.list(plan.names),
            )
            row = (batch.id, batch.created_at, _dump(batch.to_dict()))

            def body(cur: Cursor, row: tuple[str, float, str] = row) -> Any:
                inserted = cur.execute(
                    "INSERT INTO lrun_batches (id, created_at, record) VALUES (%s, %s, %s)"
                    " ON CONFLICT (id) DO NOTHING RETURNING id",
                    row,
                ).fetchone()
                if inserted is not None:
                    return None
                return cur.execute("SELECT record FROM lrun_batches WHERE id = %s", (row[0],)).fetchone()

            existing = self.runs._atomic(body)
            if existing is None:
                return batch
            if batch_id is not None:
                stored = self._decode(batch_id, existing[0])
                if stored.plan_digest != plan.digest:
                    raise BatchPlanMismatch(
                        stored.id, stored.plan, stored.plan_digest, str(plan.path), plan.digest
                    )
                return stored
        raise StoreError(f"could not find a free batch id in {self.runs.location}")  # pragma: no cover

    def _rewrite(self, batch_id: str, change: Callable[[Cursor, Batch], bool]) -> Batch:
        """Read the batch under its row lock, let ``change`` edit it, store it if it says so."""
        if not valid_id(batch_id):
            raise BatchNotFound(str(batch_id))

        def body(cur: Cursor) -> Batch | tuple[str]:
            row = cur.execute(
                "SELECT record FROM lrun_batches WHERE id = %s FOR UPDATE", (batch_id,)
            ).fetchone()
            if row is None:
                raise BatchNotFound(batch_id)
            try:
                batch = parse_record(row[0].encode(), Batch.from_dict)
            except Unparseable:
                return (row[0],)  # moved aside after this transaction
            if batch.id != batch_id:
                return (row[0],)
            if change(cur, batch):
                cur.execute(
                    "UPDATE lrun_batches SET record = %s WHERE id = %s", (_dump(batch.to_dict()), batch_id)
                )
            return batch

        found = self.runs._atomic(body, f"batch {batch_id!r}")
        return found if isinstance(found, Batch) else self._decode(batch_id, found[0])

    def record(self, batch_id: str, entry: str, run_id: str) -> Batch:
        """Record ``run_id`` as plan entry ``entry``'s run; a terminal batch becomes running again."""
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"an entry name must be a non-empty string, not {entry!r}")
        if not valid_id(run_id):
            raise ValueError(f"not a run id: {run_id!r}")

        def change(cur: Cursor, batch: Batch) -> bool:
            batch.entries[entry] = run_id
            if batch.status.is_terminal:
                batch.status = Status.RUNNING
            return True

        return self._rewrite(batch_id, change)

    def get(self, batch_id: str) -> Batch:
        """The stored batch.

        :raises BatchNotFound: no such batch (or a malformed id)
        :raises CorruptRecord: the record did not parse (it was moved aside)
        """
        if not valid_id(batch_id):
            raise BatchNotFound(str(batch_id))
        row = self.runs._atomic(
            lambda cur: cur.execute("SELECT record FROM lrun_batches WHERE id = %s", (batch_id,)).fetchone()
        )
        if row is None:
            raise BatchNotFound(batch_id)
        return self._decode(batch_id, row[0])

    def list(self) -> builtins.list[Batch]:
        """Every batch, oldest first; corrupt records are moved aside."""
        rows = self.runs._atomic(
            lambda cur: cur.execute("SELECT id, record FROM lrun_batches ORDER BY created_at, id").fetchall()
        )
        batches = []
        for batch_id, record in rows:
            with contextlib.suppress(CorruptRecord):
                batches.append(self._decode(batch_id, record))
        return batches

    def refresh(self, batch_id: str) -> Batch:
        """Derive the batch's status from its runs (each distinct run once) and store it."""

        def change(cur: Cursor, batch: Batch) -> bool:
            run_ids = sorted(set(batch.entries.values()))
            found = dict(
                cur.execute("SELECT id, status FROM lrun_runs WHERE id = ANY(%s)", (run_ids,)).fetchall()
            )
            statuses: builtins.list[Status | None] = [
                Status(found[run_id]) if run_id in found else None for run_id in run_ids
            ]
            # Entries no job has started yet (CI matrix jobs still to come) keep the batch open.
            statuses += [Status.PENDING for name in batch.planned if name not in batch.entries]
            status = derive_status(statuses)
            if status is batch.status:
                return False
            batch.status = status
            return True

        return self._rewrite(batch_id, change)
