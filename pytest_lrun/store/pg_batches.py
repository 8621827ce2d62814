"""The PostgreSQL store's batches: one record per plan dispatch, joined by every runner of the database.

The rules are the file store's (:mod:`.file_batches`): joining checks the plan's
digest, planned entries keep a batch open, and a record that does not parse is
moved aside (into ``lrun_corrupt``). A batch is a row of ``lrun_batches`` holding
its whole record as JSON; every read-modify-write holds the row's lock
(``SELECT ... FOR UPDATE``), so runners recording at once lose nothing, and a
batch's status is derived from each distinct run once, however many entries or
jobs attached to it.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_lrun.core.errors import BatchNotFound, CorruptRecord, StoreError
from pytest_lrun.core.fsutil import Unparseable, parse_record
from pytest_lrun.store import pg_sql
from pytest_lrun.store.common import plan_mismatch
from pytest_lrun.store.pg_db import Cursor, dump
from pytest_lrun.store.pg_io import PostgresRecords
from pytest_lrun.store.records import (
    Batch,
    BatchStatus,
    Status,
    derive_status,
    new_batch_id,
    valid_id,
    validate_batch_id,
)

if TYPE_CHECKING:
    from pytest_lrun.config.plan import Plan

__all__ = ["PostgresBatchStore"]


class PostgresBatchStore:
    """Batch records in the store's database (see :mod:`.file_batches` for the rules, which are the same).

    A read-modify-write holds the batch row's lock (``SELECT ... FOR UPDATE``), so
    runners recording at once lose nothing.
    """

    def __init__(self, runs: PostgresRecords) -> None:
        self.runs = runs

    def __repr__(self) -> str:
        return f"PostgresBatchStore({self.runs.location!r})"

    def _decode(self, batch_id: str, record: str) -> Batch:
        try:
            batch = parse_record(record.encode(), Batch.from_dict)
            if batch.id != batch_id:
                raise Unparseable(f"record id {batch.id!r} does not match its row {batch_id!r}")
        except Unparseable as exc:
            raise self.runs.quarantine("batch", batch_id, record, str(exc)) from None
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
                collected=None if plan.collected is None else builtins.list(plan.collected),
            )
            row = (batch.id, batch.created_at, dump(batch.to_dict()))

            def body(cur: Cursor, row: tuple[str, float, str] = row) -> Any:
                inserted = cur.execute(pg_sql.INSERT_BATCH_IF_NEW, row).fetchone()
                if inserted is not None:
                    return None
                return cur.execute(pg_sql.SELECT_BATCH, (row[0],)).fetchone()

            existing = self.runs.db.atomic(body)
            if existing is None:
                return batch
            if batch_id is not None:
                stored = self._decode(batch_id, existing[0])
                if stored.plan_digest != plan.digest:
                    raise plan_mismatch(stored, plan)
                return stored
        raise StoreError(f"could not find a free batch id in {self.runs.location}")  # pragma: no cover

    def _rewrite(self, batch_id: str, change: Callable[[Cursor, Batch], bool]) -> Batch:
        """Read the batch under its row lock, let ``change`` edit it, store it if it says so."""
        if not valid_id(batch_id):
            raise BatchNotFound(str(batch_id))

        def body(cur: Cursor) -> Batch | tuple[str]:
            row = cur.execute(pg_sql.SELECT_BATCH_FOR_UPDATE, (batch_id,)).fetchone()
            if row is None:
                raise BatchNotFound(batch_id)
            try:
                batch = parse_record(row[0].encode(), Batch.from_dict)
            except Unparseable:
                return (row[0],)  # moved aside after this transaction
            if batch.id != batch_id:
                return (row[0],)
            if change(cur, batch):
                cur.execute(pg_sql.UPDATE_BATCH, (dump(batch.to_dict()), batch_id))
            return batch

        found = self.runs.db.atomic(body, f"batch {batch_id!r}")
        return found if isinstance(found, Batch) else self._decode(batch_id, found[0])

    def record(self, batch_id: str, entry: str, run_id: str) -> Batch:
        """Record ``run_id`` as plan entry ``entry``'s run; a terminal batch becomes running again."""
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"an entry name must be a non-empty string, not {entry!r}")
        if not valid_id(run_id):
            raise ValueError(f"not a run id: {run_id!r}")

        def change(cur: Cursor, batch: Batch) -> bool:
            batch.entries[entry] = run_id
            if batch.status.is_terminal or batch.status is BatchStatus.INCOMPLETE:
                batch.status = BatchStatus.RUNNING
            return True

        return self._rewrite(batch_id, change)

    def get(self, batch_id: str) -> Batch:
        """The stored batch.

        :raises BatchNotFound: no such batch (or a malformed id)
        :raises CorruptRecord: the record did not parse (it was moved aside)
        """
        if not valid_id(batch_id):
            raise BatchNotFound(str(batch_id))
        row = self.runs.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_BATCH, (batch_id,)).fetchone())
        if row is None:
            raise BatchNotFound(batch_id)
        return self._decode(batch_id, row[0])

    def list(self) -> builtins.list[Batch]:
        """Every batch, oldest first; corrupt records are moved aside."""
        rows = self.runs.db.atomic(lambda cur: cur.execute(pg_sql.SELECT_BATCHES).fetchall())
        batches = []
        for batch_id, record in rows:
            with contextlib.suppress(CorruptRecord):
                batches.append(self._decode(batch_id, record))
        return batches

    def refresh(self, batch_id: str) -> Batch:
        """Derive the batch's status from its runs (each distinct run once) and store it."""

        def change(cur: Cursor, batch: Batch) -> bool:
            run_ids = sorted(set(batch.entries.values()))
            found = dict(cur.execute(pg_sql.SELECT_RUN_STATUSES, (run_ids,)).fetchall())
            statuses: builtins.list[Status | None] = [
                Status(found[run_id]) if run_id in found else None for run_id in run_ids
            ]
            # Entries no job has started yet (CI matrix jobs still to come, or never) keep it unfinished.
            status = derive_status(statuses, untaken=sum(name not in batch.entries for name in batch.planned))
            if status is batch.status:
                return False
            batch.status = status
            return True

        return self._rewrite(batch_id, change)
