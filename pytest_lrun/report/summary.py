"""The end-of-session summary table: a row per run, as the terminal and the GitHub job summary show it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_lrun.core.errors import LrunError
from pytest_lrun.report.naming import shown_dir
from pytest_lrun.report.outcomes import Detached, JobOutcome, run_duration
from pytest_lrun.run.spec import RunSpec


def summary_rows(
    rows: Sequence[tuple[RunSpec, JobOutcome]],
    rootpath: Path,
    flaky: Mapping[RunSpec, int] | None = None,
) -> list[list[str]]:
    """The terminal summary table: (entry,) dir, machine, short hash, status, origin, duration, run
    id, and with ``flaky`` (``--lrun-flaky-attempts``) each job's flaky tests, the run it reran."""
    table = [["dir", "machine", "hash", "status", "origin", "duration", "run id"]]
    for spec, outcome in rows:
        shown = shown_dir(spec.test_dir, rootpath)
        if spec.shard is not None:
            shown += f" [{spec.shard}]"
        if isinstance(outcome, LrunError):
            row = [shown, spec.machine.name, "-", outcome.code, "-", "-", getattr(outcome, "run_id", "-")]
        else:
            run = outcome.run
            origin = "detached" if isinstance(outcome, Detached) else outcome.origin
            duration = "-" if isinstance(outcome, Detached) else f"{run_duration(run):.1f}s"
            row = [shown, run.machine, run.test_dir_hash[:8], run.status.value, origin, duration, run.id]
        table.append(row)
    if flaky is not None:
        table[0].append("flaky")
        for (spec, outcome), row in zip(rows, table[1:], strict=True):
            retry_of = None if isinstance(outcome, LrunError) else outcome.run.retry_of
            if retry_of:
                row[-1] += f" (retry of {retry_of})"
            row.append(str(flaky.get(spec, 0)))
    if any(spec.plan_entry for spec, _ in rows):
        table[0].insert(0, "entry")
        for (spec, _), row in zip(rows, table[1:], strict=True):
            row.insert(0, spec.plan_entry or "-")
    return table
