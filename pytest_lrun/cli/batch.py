"""What a batch looks like to a user: one row per plan entry, with its run's status and inner-test counts.

A batch groups the runs one plan dispatched (the record is
:class:`~pytest_lrun.store.records.Batch`, kept by the store's
:class:`~pytest_lrun.store.BatchStore`). :func:`rows` joins a batch with its
runs for ``lrun batch`` and the session's summary, whichever store holds them;
:func:`totals` adds up their inner-test counts.

A row's counts come from its run's inner JUnit XML: this host's copy, else (a run
another runner ran) the copy a shared store keeps, fetched alone. ``passed`` counts
passed tests, ``failed`` failures and errors (a test failing in its call and its
teardown counts twice, as pytest's own summary does), ``skipped`` skips and xfails.
"""

from __future__ import annotations

import builtins
from typing import Any

from pytest_lrun.core.errors import CorruptRecord, LrunError, RunNotFound
from pytest_lrun.store import Batch, Run, RunStore
from pytest_lrun.wire.junit import MAX_JUNIT_BYTES, parse_junit

__all__ = ["COUNTS", "count_tests", "rows", "totals"]

#: The inner-test counts of a row (and of :func:`totals`), in the order they are shown.
COUNTS = ("passed", "failed", "skipped")
_COUNTED_AS = {
    "passed": "passed",
    "xpassed": "passed",
    "failed": "failed",
    "error": "failed",
    "skipped": "skipped",
    "xfailed": "skipped",
}


def rows(batch: Batch, runs: RunStore) -> builtins.list[dict[str, Any]]:
    """One dict per entry of ``batch`` (recorded ones in recording order, then those not started).

    Keys: ``entry``, ``run_id``, ``machine``, ``test_dir``, ``status`` (a run status
    string, or ``"missing"`` when the run record is gone), ``exit_code``,
    ``duration`` (seconds from start to end, ``None`` until both are known) and the
    inner-test counts :data:`COUNTS` (``None`` until the run ended, or when it left no
    readable JUnit XML). An entry of the plan no job has started yet has status
    ``"pending"`` and no run id.
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
                **count_tests(run, runs),
            }
        )
    for entry in batch.planned:
        if entry not in batch.entries:  # no job has started it yet
            table.append(_missing_row(entry, None, "pending"))
    return table


def totals(table: builtins.list[dict[str, Any]]) -> dict[str, int]:
    """The inner-test counts of ``table``'s rows added up (rows without counts add nothing)."""
    return {key: sum(row[key] or 0 for row in table) for key in COUNTS}


def count_tests(run: Run, runs: RunStore) -> dict[str, int | None]:
    """``run``'s inner tests by :data:`COUNTS`, from its JUnit XML; all ``None`` while it lives or
    when it left none that reads."""
    unknown: dict[str, int | None] = dict.fromkeys(COUNTS)
    if not run.status.is_terminal:
        return unknown
    path = runs.files(run.id).junit
    try:
        if not path.exists():
            runs.load_result(run, ("junit",))  # ran on another runner: the shared store's copy
        with path.open("rb") as f:
            data = f.read(MAX_JUNIT_BYTES + 1)
        cases = parse_junit(data)
    except (LrunError, OSError):  # none (a run that never started), or one that does not read
        return unknown
    counts: dict[str, int | None] = dict.fromkeys(COUNTS, 0)
    for case in cases:
        key = _COUNTED_AS[case.outcome]
        counts[key] = (counts[key] or 0) + 1
    return counts


def _missing_row(entry: str, run_id: str | None, status: str) -> dict[str, Any]:
    return {
        "entry": entry,
        "run_id": run_id,
        "machine": None,
        "test_dir": None,
        "status": status,
        "exit_code": None,
        "duration": None,
        **dict.fromkeys(COUNTS),
    }


def _find_run(runs: RunStore, run_id: str) -> Run | None:
    try:
        return runs.get(run_id)
    except (RunNotFound, CorruptRecord):  # a corrupt record was moved aside: the run is gone
        return None
