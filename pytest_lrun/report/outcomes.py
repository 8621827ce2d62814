"""What one job of the session came to, as its reports and the summary take it.

A job's outcome (:data:`JobOutcome`) is the run's result, the error that kept the run from
happening (a busy machine, an engine down), or a run left running (:class:`Detached`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_lrun.core.errors import LrunError
from pytest_lrun.run.spec import RunResult
from pytest_lrun.store import Run


@dataclass(frozen=True)
class Detached:
    """A run started with ``--lrun-detach`` and left running."""

    run: Run
    batch_id: str | None


# A spec's outcome: the result, the error that prevented the run (busy machine, engine down), or a
# run left running.
JobOutcome = RunResult | LrunError | Detached


def run_duration(run: Run) -> float:
    """How long a run ran, from its start to its end (to its start while it has none)."""
    if run.started_at is None:
        return 0.0
    return max(0.0, (run.ended_at or run.started_at) - run.started_at)
