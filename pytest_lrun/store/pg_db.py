"""The PostgreSQL store's connections: its schema, its transactions and what a dropped connection means.

:class:`Database` is the one place that talks to psycopg for the store
(:mod:`.postgres`, :mod:`.pg_batches`, :mod:`.pg_results` hand it their statements,
all of them from :mod:`.pg_sql`):

* the schema is created and migrated on first use, in one transaction under an
  advisory lock, so runners that start at once are safe; ``lrun_schema`` holds the
  version and the store's id, and a version newer than :data:`SCHEMA_VERSION` is
  :class:`~pytest_lrun.core.errors.StoreSchemaTooNew`;
* the main connection stays open for the store's life (its session identifies the
  runs this process creates, see :attr:`Database.backend`) and runs one
  transaction at a time (:meth:`Database.atomic`), retried on serialization
  failures and deadlocks; a lock wait past ``lock_timeout`` is
  :class:`~pytest_lrun.core.errors.StoreLocked`;
* spare connections (:meth:`Database.spare`) hold session-level watch locks and
  carry results, without blocking the main one;
* a connection that breaks (a database restart) raises
  :class:`~pytest_lrun.core.errors.StoreUnreachable` with the database's own words and
  never a password; the next call connects again, and a main connection that died
  while idle is replaced at once;
* every wait is bounded (:class:`~pytest_lrun.config.settings.StoreWaits`): the server
  cancels a statement past ``statement_timeout`` and ends a session idle inside a
  transaction past ``idle_in_transaction_session_timeout``; TCP keepalives (and
  ``tcp_user_timeout``) find a server host that vanished; and a server that does
  not answer at all (stopped by SIGSTOP, swapped out, behind a partition that keeps
  the connection up) is cut off by the client: a transaction with no answer within
  ``statement_timeout`` plus :data:`ANSWER_GRACE_S` has its socket shut down
  (:class:`_Watchdog`), the call raises ``store_unreachable`` at once, and the
  next call connects again. Waiting for a watch lock is the one wait left unbounded:
  it lasts as long as its holder watches.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import xxhash
from psycopg import errors as pg_errors

from pytest_lrun.config.settings import StoreWaits
from pytest_lrun.config.values import redact_url
from pytest_lrun.core.errors import ConfigError, StoreError, StoreLocked, StoreSchemaTooNew, StoreUnreachable
from pytest_lrun.store import pg_sql

__all__ = ["SCHEMA_VERSION", "Connection", "Cursor", "Database", "dump", "lock_id"]

#: The newest schema this code knows; :data:`.pg_sql.MIGRATIONS` leads up to it.
SCHEMA_VERSION = 7

#: Seconds beyond ``statement_timeout`` the client waits for an answer (the server's own cancel
#: comes first) before it takes the server for frozen and cuts the connection.
ANSWER_GRACE_S = 5.0
_KEEPALIVE_PROBES = 3
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


def _millis(seconds: float | None) -> str:
    """A duration as a PostgreSQL setting: ``"0"`` (no limit) for None or 0, else whole milliseconds."""
    return "0" if not seconds else f"{max(1, round(seconds * 1000))}ms"


def _cut(conn: Connection) -> None:
    """Shut the connection's socket down: a call blocked on it fails at once, as if the server hung up."""
    try:
        fd = os.dup(conn.fileno())
    except (OSError, psycopg.Error):
        return  # closed meanwhile
    with socket.socket(fileno=fd) as sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread per :class:`Database` that cuts (:func:`_cut`) connections whose call outlived
    its bound; :meth:`bound` arms it around a call."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Connection]] = {}
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None  # the running one; another one still winding down stops

    @contextlib.contextmanager
    def bound(self, conn: Connection, seconds: float | None) -> Iterator[Callable[[], bool]]:
        """Cut ``conn`` if the block lasts ``seconds`` (None: never); yields whether it was cut."""
        if seconds is None:
            yield lambda: False
            return
        token = next(self._tokens)
        with self._cond:
            self._armed[token] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lrun-store-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield lambda: token in self._fired
        finally:
            with self._cond:
                self._armed.pop(token, None)
                self._fired.discard(token)

    def _run(self) -> None:
        with self._cond:
            while self._thread is threading.current_thread():
                now = time.monotonic()
                for token, (deadline, conn) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _cut(conn)
                nearest = min((deadline for deadline, _ in self._armed.values()), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - now))

    def close(self) -> None:
        """Let the thread end (a later :meth:`bound` starts another)."""
        with self._cond:
            self._thread = None
            self._cond.notify_all()


class Database:
    """The store's connections to the database at ``url`` (see the module docstring).

    :raises ConfigError: the URL does not parse
    :raises StoreUnreachable: the database does not answer, or refuses the login
    :raises StoreSchemaTooNew: the database was set up by a newer pytest-lrun
    """

    def __init__(
        self, url: str, *, lock_timeout: float | None, connect_timeout: float, waits: StoreWaits | None = None
    ) -> None:
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self.waits = waits if waits is not None else StoreWaits()
        #: How long a call waits for the server's answer before it cuts the connection (None: for ever).
        self.answer_timeout = (
            self.waits.statement_timeout + ANSWER_GRACE_S if self.waits.statement_timeout else None
        )
        self._watchdog = _Watchdog()
        # After a call got no answer, calls fail at once for as long again instead of each
        # waiting out its own bound (or a connect's timeout) on a server that is still silent.
        self._silent_until = 0.0
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

    def unanswered(self) -> StoreUnreachable:
        """``store_unreachable`` for a server that did not answer within :attr:`answer_timeout`;
        calls fail at once for as long again (:meth:`_check_silent`)."""
        self._silent_until = time.monotonic() + (self.answer_timeout or 0.0)
        return self._silent()

    def _silent(self) -> StoreUnreachable:
        return StoreUnreachable(
            self.location,
            f"no answer within {self.answer_timeout:g} s (--lrun-store-statement-timeout "
            f"{self.waits.statement_timeout:g} s + {ANSWER_GRACE_S:g} s): the server is stopped, frozen "
            "or out of reach; the connection was closed",
        )

    def _check_silent(self) -> None:
        """:raises StoreUnreachable: a call got no answer a moment ago (see :meth:`unanswered`)"""
        if time.monotonic() < self._silent_until:
            raise self._silent()

    def _keepalives(self) -> dict[str, Any]:
        """libpq's keepalive parameters, for those the URL does not set itself."""
        idle = max(1, math.ceil(self.waits.keepalive))
        wanted = {
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": idle,
            "keepalives_count": _KEEPALIVE_PROBES,
            "tcp_user_timeout": (_KEEPALIVE_PROBES + 1) * idle * 1000,
        }
        try:
            given = psycopg.conninfo.conninfo_to_dict(self._url)
        except psycopg.Error:
            return wanted  # the connect says what is wrong with the URL
        return {key: value for key, value in wanted.items() if key not in given}

    def _connect(self, lock_timeout: float | None, *, statements: bool = True) -> Connection:
        """A new connection with the store's session settings; ``statements=False`` leaves its
        statements without a time limit (a spare connection waits for watch locks)."""
        self._check_silent()
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self.connect_timeout)),
                fallback_application_name="pytest-lrun",
                **self._keepalives(),
            )
        except psycopg.ProgrammingError as exc:  # the URL itself does not parse
            raise ConfigError("store URL", self.unreachable(exc).reason) from None
        except psycopg.Error as exc:
            # Not chained: the driver's text is only masked in ours.
            raise self.unreachable(exc) from None
        settings = (
            ("lock_timeout", _millis(lock_timeout)),
            ("statement_timeout", _millis(self.waits.statement_timeout if statements else None)),
            ("idle_in_transaction_session_timeout", _millis(self.waits.idle_timeout)),
        )
        with self._watchdog.bound(conn, self.answer_timeout) as cut:
            try:
                for name, value in settings:
                    conn.execute(pg_sql.SET_CONFIG, (name, value))
            except psycopg.Error as exc:
                conn.close()
                raise (self.unanswered() if cut() else self.unreachable(exc)) from None
        return conn

    @contextlib.contextmanager
    def bounded(self, conn: Connection) -> Iterator[None]:
        """Bound the block's statements on ``conn`` (a spare connection) by :attr:`answer_timeout`:
        past it the connection is cut and closed, and the block raises ``store_unreachable``."""
        try:
            self._check_silent()
        except StoreUnreachable:
            conn.close()
            raise
        with self._watchdog.bound(conn, self.answer_timeout) as cut:
            try:
                yield
            except psycopg.Error:
                if cut():
                    conn.close()
                    raise self.unanswered() from None
                raise

    def _connection(self) -> tuple[Connection, bool]:
        """The main connection (the caller holds ``_lock``), and whether it is new."""
        if self._main is not None and not self._main.closed:
            return self._main, False
        conn = self._connect(self.lock_timeout)
        with self._watchdog.bound(conn, self.answer_timeout) as cut:
            try:
                # A session's identity: pids are reused, a pid with its start time is not.
                row = conn.execute(pg_sql.SELECT_SESSION).fetchone()
            except psycopg.Error as exc:
                conn.close()
                raise (self.unanswered() if cut() else self.unreachable(exc)) from None
        assert row is not None  # our own session is always there
        self._main, self.backend = conn, {"backend_pid": row[0], "backend_start": row[1]}
        return conn, True

    def _migrate(self, conn: Connection) -> str:
        """Create or upgrade the schema (under an advisory lock); returns the store id."""
        with self._watchdog.bound(conn, self.answer_timeout) as cut:
            try:
                return self._migrate_once(conn)
            except psycopg.Error as exc:
                if cut():
                    conn.close()
                    self._main = None
                    raise self.unanswered() from None
                raise self._failed(conn, exc) from None

    def _migrate_once(self, conn: Connection) -> str:
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
                with self._watchdog.bound(conn, self.answer_timeout) as cut:
                    try:
                        scope = conn.transaction() if transaction else contextlib.nullcontext()
                        with scope, conn.cursor() as cur:
                            return body(cur)
                    except psycopg.Error as exc:
                        if cut():  # no answer in time: another try would wait as long again
                            conn.close()
                            self._main = None
                            raise self.unanswered() from None
                        error = exc
                if conn.broken or conn.closed:
                    self._main = None
                    if not fresh and attempt == 1:
                        conn.close()
                        continue  # it died while idle (a restart): once more on a new one
                if isinstance(error, pg_errors.LockNotAvailable):
                    where = f"{self.location} (advisory lock)"
                    raise StoreLocked(what, where, self.lock_timeout or 0.0) from None
                retry = isinstance(error, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected))
                if (retry or (retry_unique and isinstance(error, pg_errors.UniqueViolation))) and (
                    attempt < _RETRIES
                ):
                    time.sleep(random.uniform(0, 0.005 * attempt))
                    continue
                raise self._failed(conn, error) from None

    @contextlib.contextmanager
    def spare(self) -> Iterator[Connection]:
        """A connection of the idle pool (or a new one) for the block; given back if still healthy.

        It has no lock timeout: a watch lock waits as long as its holder watches.
        """
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(None, statements=False)
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
        self._watchdog.close()
        with self._lock:
            if self._main is not None:
                self._main.close()
                self._main = None
        with self._pool_lock:
            for conn in (*self._idle, *self._lent):
                conn.close()
            self._idle.clear()
