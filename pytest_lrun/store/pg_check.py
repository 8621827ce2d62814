"""The PostgreSQL store's upkeep: settling what crashes left, and checking the database's invariants.

Split out of :mod:`.postgres`, whose :meth:`PostgresStore.sweep
<pytest_lrun.store.postgres.PostgresStore.sweep>` and :meth:`PostgresStore.check
<pytest_lrun.store.postgres.PostgresStore.check>` call :func:`sweep` and :func:`check`,
as the file store keeps its own in :mod:`.file_check`.
"""

from __future__ import annotations

import builtins
import os
import time
from typing import Any

from pytest_lrun.core.errors import OWNER_GONE, RunNotFound, TerminalRunError
from pytest_lrun.core.fsutil import Unparseable, parse_record
from pytest_lrun.store import pg_sql
from pytest_lrun.store.base import Sweep
from pytest_lrun.store.common import leftovers_in, remove_leftovers
from pytest_lrun.store.pg_db import Cursor
from pytest_lrun.store.pg_io import PostgresRecords, column
from pytest_lrun.store.records import Batch, Run, Status, valid_id

__all__ = ["check", "sweep"]

_ORPHAN = "its creator's database session ended before it started a container"


def sweep(store: PostgresRecords, *, grace: float, now: float | None) -> Sweep:
    """Settle what crashes left, once older than ``grace`` seconds.

    On this host: temporary files, half-deleted run folders and run folders of runs
    the database does not have are removed. In the database: a live run with no
    container whose owner is gone (its creator died between prepare and create) is
    ended ``interrupted`` with ``owner_gone``.
    """
    now = time.time() if now is None else now
    report = Sweep()
    folders = [name for name in os.listdir(store.runs_dir) if valid_id(name)]
    known = {
        row[0]
        for row in store.db.atomic(
            lambda cur: cur.execute(pg_sql.SELECT_KNOWN_RUN_IDS, (folders,)).fetchall()
        )
    }
    candidates = [store.runs_dir / name for name in folders if name not in known]
    subdirs = [p for p in store.state_dir.iterdir() if p.is_dir()]
    candidates += leftovers_in([store.state_dir, *subdirs, *(store.runs_dir / name for name in known)])
    remove_leftovers(store.state_dir, candidates, report, grace=grace, now=now)
    for run in store.active():
        if run.container_id is not None or (run.created_at or 0) > now - grace or store.owner_alive(run):
            continue
        try:
            store.end(run, Status.INTERRUPTED, error_code=OWNER_GONE, error_msg=_ORPHAN)
        except (RunNotFound, TerminalRunError):
            continue  # ended or removed meanwhile
        report.ended.append(run.id)
    return report


def check(store: PostgresRecords) -> builtins.list[str]:
    """The store's invariant violations, one sentence each; ``[]`` when healthy. Changes nothing.

    Checks: the database's guards (the live-slot index, the final-record trigger)
    exist; every run and batch record parses, and a run's columns agree with its record.
    """

    def body(cur: Cursor) -> tuple[Any, builtins.list[Any], builtins.list[Any]]:
        guards = cur.execute(pg_sql.CHECK_GUARDS).fetchone()
        runs = cur.execute(pg_sql.SELECT_RUNS_BY_ID).fetchall()
        batches = cur.execute(pg_sql.SELECT_BATCHES_BY_ID).fetchall()
        return guards, runs, batches

    guards, runs, batches = store.db.atomic(body)
    problems = [
        f"lrun_runs lacks its guard {name}"
        for name, present in zip(
            ("lrun_runs_live_slot (index)", "lrun_runs_final (trigger)"), guards, strict=True
        )
        if not present
    ]
    for run_id, machine, key, status, record in runs:
        try:
            run = parse_record(record.encode(), Run.from_dict)
        except Unparseable as exc:
            problems.append(f"run {run_id} is not a valid run record: {exc}")
            continue
        columns = (run.id, column(run.machine), column(run.key), run.status.value)
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
