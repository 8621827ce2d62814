"""The PostgreSQL store's record I/O: the base class every part of the database store works through.

:class:`PostgresRecords` holds the store's connections (:class:`~.pg_db.Database`) and
this host's state dir, and owns how a run becomes a row and back: a run is a row of
``lrun_runs (id, machine, key, status, batch_id, created_at, ended_at, record)``, where
``record`` is the whole record as JSON in ASCII (``text``, not ``jsonb``, which refuses
NUL and the lone surrogates of names that are not valid UTF-8) and the other columns are
what queries look at. Names are stored in an injective form (:func:`column`). A record
that does not parse is moved into ``lrun_corrupt`` (:meth:`PostgresRecords.quarantine`).

:class:`~pytest_lrun.store.postgres.PostgresStore` builds the store's contract on it,
and the database store's helper modules (:mod:`.pg_place`, :mod:`.pg_check`,
:mod:`.pg_batches`) take a :class:`PostgresRecords`, so none of them imports the store
that calls them.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from pytest_lrun.config.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_STORE_LOCK_TIMEOUT, StoreWaits
from pytest_lrun.core.errors import CorruptRecord, RunNotFound
from pytest_lrun.core.fsutil import Unparseable, make_state_dir, parse_record
from pytest_lrun.core.layout import HASHCACHE_DIR, RUNS_DIR, RunFiles
from pytest_lrun.store import pg_sql
from pytest_lrun.store.base import RunStore
from pytest_lrun.store.common import local_owner
from pytest_lrun.store.pg_db import Database, dump
from pytest_lrun.store.records import Run, valid_id

__all__ = ["PostgresRecords", "column", "uncolumn"]

logger = logging.getLogger("pytest_lrun")

_UNSAFE_TEXT = re.compile("[\\\\\x00\ud800-\udfff]")


def column(text: str) -> str:
    """``text`` as a column value: backslash, NUL and lone surrogates as ``\\uXXXX``.

    Injective (every backslash of the result starts an escape), so two names never
    share a column value, and storable (PostgreSQL text refuses NUL and surrogates).
    """
    return _UNSAFE_TEXT.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


_ESCAPE = re.compile(r"\\u([0-9a-f]{4})")


def uncolumn(value: str) -> str:
    """The text :func:`column` made ``value`` from."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), value)


class PostgresRecords(RunStore):
    """The database's run rows and this host's state dir, as every part of the database store sees them.

    The contract's operations are :class:`~pytest_lrun.store.postgres.PostgresStore`'s;
    the parameters are its own (see there).
    """

    def __init__(
        self,
        url: str,
        state_dir: str | os.PathLike[str],
        *,
        lock_timeout: float | None = DEFAULT_STORE_LOCK_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        waits: StoreWaits | None = None,
    ) -> None:
        root = Path(state_dir).expanduser()
        self.state_dir = Path(os.path.realpath(root))
        self.runs_dir = self.state_dir / RUNS_DIR
        self.hashcache_dir = self.state_dir / HASHCACHE_DIR
        make_state_dir(root, (self.runs_dir,))
        self.problems: builtins.list[CorruptRecord] = []
        #: The connections; every statement goes through it.
        waits = waits if waits is not None else StoreWaits()
        self.db = Database(url, lock_timeout=lock_timeout, connect_timeout=connect_timeout, waits=waits)

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self.db.location

    def files(self, run_id: str) -> RunFiles:
        """This host's copies of the run's files, under ``runs/<run_id>/``.

        :raises RunNotFound: ``run_id`` is not a well-formed run id
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))
        return RunFiles(self.runs_dir / run_id)

    def close(self) -> None:
        """Close every connection (releasing any watch lock still held); later calls connect again."""
        self.db.close()

    # -- records ----------------------------------------------------------------------

    def _row(self, run: Run, *, owner: dict[str, Any] | None, slot: int = 0) -> dict[str, Any]:
        """The column values of ``run``, its record with ``owner``, in ``slot`` of its machine."""
        record = run.to_dict()
        record["owner"] = owner
        return {
            "id": run.id,
            "machine": column(run.machine),
            "key": column(run.key),
            "status": run.status.value,
            "batch": None if run.batch_id is None else column(run.batch_id),
            "created": run.created_at,
            "ended": run.ended_at,
            "record": dump(record),
            "slot": slot,
        }

    def _stamped(self, owner: dict[str, Any] | None) -> dict[str, Any] | None:
        """``owner`` with our session's identity when it names this process and no session yet
        (an adopter's ``{"host", "pid"}``)."""
        if owner is None or "backend_pid" in owner:
            return owner
        if any(owner.get(field) != value for field, value in local_owner().items()):
            return owner  # another process's
        return {**owner, **self.db.backend}

    def quarantine(self, kind: str, key: str, record: str, reason: str) -> CorruptRecord:
        """Move the ``kind`` (run or batch) record ``key`` into ``lrun_corrupt``; the problem, reported."""
        self.db.atomic(
            lambda cur: cur.execute(pg_sql.MOVE_ASIDE[kind], {"id": key, "record": record, "reason": reason})
        )
        problem = CorruptRecord(f"{self.db.location} {kind} {key}", f"lrun_corrupt ({kind} {key})", reason)
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
            raise self.quarantine("run", run_id, record, str(exc)) from None
        return run

    def _decode_all(self, rows: builtins.list[tuple[str, str]]) -> builtins.list[Run]:
        runs = []
        for run_id, record in rows:
            with contextlib.suppress(CorruptRecord):
                runs.append(self._decode(run_id, record))
        return runs
