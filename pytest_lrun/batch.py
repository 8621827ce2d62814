"""What a batch looks like to a user: one row per plan entry, with its run's status.

A batch groups the runs one plan dispatched (the record is
:class:`~pytest_lrun.store.records.Batch`, kept by the store's
:class:`~pytest_lrun.store.BatchStore`). :func:`rows` joins a batch with its
runs for ``lrun batch`` and the session's summary, whichever store holds them.
"""

from __future__ import annotations

import builtins
from typing import Any

from .errors import CorruptRecord, RunNotFound
from .store import Batch, Run, RunStore

__all__ = ["rows"]


def rows(batch: Batch, runs: RunStore) -> builtins.list[dict[str, Any]]:
    """One dict per entry of ``batch`` (recorded ones in recording order, then those not started).

    Keys: ``entry``, ``run_id``, ``machine``, ``test_dir``, ``status`` (a run status
    string, or ``"missing"`` when the run record is gone), ``exit_code`` and
    ``duration`` (seconds from start to end, ``None`` until both are known). An entry of
    the plan no job has started yet has status ``"pending"`` and no run id.
    """
    table: builtins.list[dict[str, Any]] = []
    for entry, run_id in batch.entries.items():
        run = _find_run(runs, run_id)
        if run is None:
            table.append(_missing_row(entry, run_id, "missing"))
            continue
        duration = None
        if run.started_at is not None and run.ended_at is not None:
            duration = max(0.0, run.ended_at - run.started_at)
        table.append(
            {
                "entry": entry,
                "run_id": run_id,
                "machine": run.machine,
                "test_dir": run.test_dir,
                "status": run.status.value,
                "exit_code": run.exit_code,
                "duration": duration,
            }
        )
    for entry in batch.planned:
        if entry not in batch.entries:  # no job has started it yet
            table.append(_missing_row(entry, None, "pending"))
    return table


def _missing_row(entry: str, run_id: str | None, status: str) -> dict[str, Any]:
    return {
        "entry": entry,
        "run_id": run_id,
        "machine": None,
        "test_dir": None,
        "status": status,
        "exit_code": None,
        "duration": None,
    }


def _find_run(runs: RunStore, run_id: str) -> Run | None:
    try:
        return runs.get(run_id)
    except (RunNotFound, CorruptRecord):  # a corrupt record was moved aside: the run is gone
        return None
