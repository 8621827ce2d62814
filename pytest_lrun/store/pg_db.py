"""The PostgreSQL store's connections: its schema, its transactions and what a dropped connection means.

:class:`Database` is the one place that talks to psycopg for the store
(:mod:`.postgres`, :mod:`.pg_batches`, :mod:`.pg_results` hand it their statements,
all of them from :mod:`.pg_sql`):

* the schema is created and migrated on first use, in one transaction under an
  advisory lock, so runners that start at once are safe; ``lrun_schema`` holds the
  version and the store's id, and a version newer than :data:`SCHEMA_VERSION` is
  :class:`~pytest_lrun.errors.StoreSchemaTooNew`;
* the main connection stays open for the store's life (its session identifies the
  runs this process creates, see :attr:`Database.backend`) and runs one
  transaction at a time (:meth:`Database.atomic`), retried on serialization
  failures and deadlocks; a lock wait past ``lock_timeout`` is
  :class:`~pytest_lrun.errors.StoreLocked`;
* spare connections (:meth:`Database.spare`) hold session-level watch locks and
  carry results, without blocking the main one;
* a connection that breaks (a database restart) raises
  :class:`~pytest_lrun.errors.StoreUnreachable` with the database's own words and
  never a password; the next call connects again, and a main connection that died
  while idle is replaced at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import xxhash
from psycopg import errors as pg_errors

from ..errors import ConfigError, StoreError, StoreLocked, StoreSchemaTooNew, StoreUnreachable
from ..settings import redact_url
from . import pg_sql

__all__ = ["SCHEMA_VERSION", "Connection", "Cursor", "Database", "dump", "lock_id"]

#: The newest schema this code knows; :data:`.pg_sql.MIGRATIONS` leads up to it.
SCHEMA_VERSION = 6

_RETRIES = 8  # attempts of one transaction that hit a serialization failure or a deadlock
_IDLE_CONNECTIONS = 4  # spare connections kept for watch locks and results

T = TypeVar("T")
Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


def lock_id(kind: str, name: str) -> int:
    """The bigint of an advisory lock on ``name`` (a machine, a run) in ``kind``'s space."""
    digest = xxhash.xxh64_digest(f"pytest-lrun:{kind}:{name}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest, "big", signed=True)


def dump(record: dict[str, Any]) -> str:
    """A record as stored: JSON in ASCII, so NUL and lone surrogates are escapes, not refusals."""
    return json.dumps(record, ensure_ascii=True, allow_nan=False)


class Database:
    """The store's connections to the database at ``url`` (see the module docstring).

    :raises ConfigError: the URL does not parse
    :raises StoreUnreachable: the database does not answer, or refuses the login
    :raises StoreSchemaTooNew: the database was set up by a newer pytest-lrun
    """

    def __init__(self, url: str, *, lock_timeout: float | None, connect_timeout: float) -> None:
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        #: The URL without its password, for every message.
        self.location = redact_url(url)
        #: The main connection's session (``backend_pid``, ``backend_start``): the owner of runs we create.
        self.backend: dict[str, int] = {}
        self._url = url
        self._lock = threading.Lock()  # the main connection's: one transaction at a time
        self._main: Connection | None = None
        self._pool_lock = threading.Lock()
        self._idle: list[Connection] = []
        self._lent: set[Connection] = set()
        try:
            with self._lock:
                #: Made with the schema: the same on every runner of the database.
                self.store_id = self._migrate(self._connection()[0])
        except BaseException:
            self.close()
            raise

    def unreachable(self, exc: psycopg.Error) -> StoreUnreachable:
        """The driver's error as ``store_unreachable``: one line, any password masked."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hidden = {os.environ.get("PGPASSWORD", "")}
        with contextlib.suppress(psycopg.Error):
            hidden.add(str(psycopg.conninfo.conninfo_to_dict(self._url).get("password") or ""))
        for secret in sorted(filter(None, hidden), key=len, reverse=True):
            reason = reason.replace(secret, "***")
        return StoreUnreachable(self.location, reason)

    def _failed(self, conn: Connection, exc: psycopg.Error) -> StoreError:
        """What a failed statement means: the server is gone, or it refused this one."""
        broken = conn.broken or conn.closed
        if broken:
            conn.close()
            return self.unreachable(exc)
        return StoreError(f"store {self.location}: {exc}")

    def _connect(self, lock_timeout: float | None) -> Connection:
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self.connect_timeout)),
                fallback_application_name="pytest-lrun",
            )
        except psycopg.ProgrammingError as exc:  # the URL itself does not parse
            raise ConfigError("store URL", self.unreachable(exc).reason) from None
        except psycopg.Error as exc:
            # Not chained: the driver's text is only masked in ours.
            raise self.unreachable(exc) from None
        millis = "0" if lock_timeout is None else f"{max(1, round(lock_timeout * 1000))}ms"
        try:
            conn.execute(pg_sql.SET_LOCK_TIMEOUT, (millis,))
        except psycopg.Error as exc:
            conn.close()
            raise self.unreachable(exc) from None
        return conn

    def _connection(self) -> tuple[Connection, bool]:
        """The main connection (the caller holds ``_lock``), and whether it is new."""
        if self._main is not None and not self._main.closed:
            return self._main, False
        conn = self._connect(self.lock_timeout)
        try:
            # A session's identity: pids are reused, a pid with its start time is not.
            row = conn.execute(pg_sql.SELECT_SESSION).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise self.unreachable(exc) from None
        assert row is not None  # our own session is always there
        self._main, self.backend = conn, {"backend_pid": row[0], "backend_start": row[1]}
        return conn, True

    def _migrate(self, conn: Connection) -> str:
        """Create or upgrade the schema (under an advisory lock); returns the store id."""
        try:
            with conn.transaction():
                conn.execute(pg_sql.ADVISORY_XACT_LOCK, (lock_id("schema", "lrun"),))
                conn.execute(pg_sql.CREATE_SCHEMA_TABLE)
                row = conn.execute(pg_sql.SELECT_SCHEMA).fetchone()
                if row is None:
                    row = (0, secrets.token_hex(8))
                    conn.execute(pg_sql.INSERT_SCHEMA, row)
                version, store_id = int(row[0]), str(row[1])
                if version > SCHEMA_VERSION:
                    raise StoreSchemaTooNew(self.location, version, SCHEMA_VERSION)
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in pg_sql.MIGRATIONS[number]:
                        conn.execute(statement)
                conn.execute(pg_sql.SET_SCHEMA_VERSION, (max(version, SCHEMA_VERSION),))
        except psycopg.Error as exc:
            raise self._failed(conn, exc) from None
        return store_id

    def atomic(
        self,
        body: Callable[[Cursor], T],
        what: str = "the store",
        *,
        retry_unique: bool = False,
        transaction: bool = True,
    ) -> T:
        """Run ``body`` in one transaction of the main connection, retried when the database says so.

        ``body`` may run again (keep it free of side effects outside the transaction);
        with ``retry_unique`` a unique violation is retried too (a race the body's own
        lock lost). ``what`` names the lock for :class:`StoreLocked`. Without
        ``transaction`` each statement of ``body`` commits on its own: one round trip for
        a single read, where no BEGIN and COMMIT are needed.
        """
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn, fresh = self._connection()
                try:
                    scope = conn.transaction() if transaction else contextlib.nullcontext()
                    with scope, conn.cursor() as cur:
                        return body(cur)
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        self._main = None
                        if not fresh and attempt == 1:
                            conn.close()
                            continue  # it died while idle (a restart): once more on a new one
                    if isinstance(exc, pg_errors.LockNotAvailable):
                        where = f"{self.location} (advisory lock)"
                        raise StoreLocked(what, where, self.lock_timeout or 0.0) from None
                    retry = isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected))
                    if (retry or (retry_unique and isinstance(exc, pg_errors.UniqueViolation))) and (
                        attempt < _RETRIES
                    ):
                        time.sleep(random.uniform(0, 0.005 * attempt))
                        continue
                    raise self._failed(conn, exc) from None

    @contextlib.contextmanager
    def spare(self) -> Iterator[Connection]:
        """A connection of the idle pool (or a new one) for the block; given back if still healthy.

        It has no lock timeout: a watch lock waits as long as its holder watches.
        """
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(None)
        with self._pool_lock:
            self._lent.add(conn)
        try:
            yield conn
        except psycopg.Error as exc:
            raise self._failed(conn, exc) from None
        finally:
            with self._pool_lock:
                self._lent.discard(conn)
                idle = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                if idle and len(self._idle) < _IDLE_CONNECTIONS:
                    self._idle.append(conn)
                else:
                    conn.close()

    def close(self) -> None:
        """Close every connection (releasing any watch lock still held); later calls connect again."""
        with self._lock:
            if self._main is not None:
                self._main.close()
                self._main = None
        with self._pool_lock:
            for conn in (*self._idle, *self._lent):
                conn.close()
            self._idle.clear()
