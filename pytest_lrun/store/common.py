"""What every store backend does the same way: the rules of a new run, the busy wait, ending a
run, the owner of a run on this host (:func:`local_owner`, :func:`owner_alive`), and removing
what crashes left in this host's state dir.

The backends differ in how they make a decision atomic (file locks, database transactions);
the steps around that decision live here once.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_lrun.core.errors import BatchPlanMismatch, StoreError
from pytest_lrun.core.fsutil import remove_tree
from pytest_lrun.core.layout import is_leftover
from pytest_lrun.store.base import Candidate, Decision, Sweep, Ticket
from pytest_lrun.store.records import Batch, Run, Status

if TYPE_CHECKING:
    from pytest_lrun.config.plan import Plan

__all__ = [
    "SWEEP_GRACE_S",
    "TICKET_TTL_S",
    "ahead_of",
    "check_candidates",
    "check_machine",
    "check_request",
    "choose",
    "ended",
    "fill_new",
    "leftovers_in",
    "local_owner",
    "owner_alive",
    "plan_mismatch",
    "queued_blocker",
    "remove_leftovers",
    "retry_while_busy",
]

_BUSY_BACKOFF_START_S = 0.05
_BUSY_BACKOFF_MAX_S = 1.0
#: How old a leftover must be before a sweep removes it: younger ones may belong to a
#: write or a prepare that is still under way in another process.
SWEEP_GRACE_S = 300.0
#: A ticket in line for a slot that is not seen again for this long leaves the line (its waiter
#: died or gave up). Waiters ask again at least every couple of seconds.
TICKET_TTL_S = 10.0


def check_machine(machine: str) -> None:
    """Refuse an empty (or non-string) machine name."""
    if not isinstance(machine, str) or not machine:
        raise ValueError(f"a machine name must be a non-empty string, not {machine!r}")


def check_request(machine: str, key: str) -> None:
    """Refuse a ``prepare`` for an empty machine name or key before anything is locked."""
    check_machine(machine)
    if not isinstance(key, str) or not key:
        raise ValueError(f"an idempotency key must be a non-empty string, not {key!r}")


def check_candidates(candidates: Sequence[Candidate]) -> None:
    """Refuse a ``place`` that names no machine, one machine twice, a bad key or slots below 1."""
    if not candidates:
        raise ValueError("place() needs at least one candidate machine")
    machines = [candidate.machine for candidate in candidates]
    if len(set(machines)) != len(machines):
        raise ValueError(f"a candidate machine is named twice: {machines}")
    for candidate in candidates:
        check_request(candidate.machine, candidate.key)
        if not isinstance(candidate.slots, int) or candidate.slots < 1:
            raise ValueError(
                f"machine {candidate.machine!r}: slots must be 1 or more, not {candidate.slots!r}"
            )


def ahead_of(line: Mapping[str, float], ticket: Ticket | None) -> int:
    """How many tickets in ``line`` (ticket id -> created) come before ``ticket`` (all: no ticket)."""
    if ticket is None:
        return len(line)
    return sum(
        1
        for other, created in line.items()
        if other != ticket.id and (created, other) < (ticket.created, ticket.id)
    )


def queued_blocker(machine: str) -> Run:
    """What a BUSY answer returns when the free slots are owed to waiters and no run holds them."""
    return Run(machine=machine, test_dir="(a slot owed to an earlier waiter)")


def choose(candidates: Sequence[Candidate], used: Mapping[str, int]) -> Candidate | None:
    """The candidate with the most free slots (the first of equals), or None when all are full."""
    free = [c for c in candidates if used.get(c.machine, 0) < c.slots]
    return max(free, key=lambda c: c.slots - used.get(c.machine, 0), default=None)


def retry_while_busy(once: Callable[[], tuple[Run, Decision]], wait: float) -> tuple[Run, Decision]:
    """``once()`` until its answer is not BUSY or ``wait`` seconds passed, with a bounded, growing,
    jittered sleep between tries (the lock or transaction is released while sleeping)."""
    deadline = time.monotonic() + max(0.0, wait)
    delay = _BUSY_BACKOFF_START_S
    while True:
        run, outcome = once()
        remaining = deadline - time.monotonic()
        if outcome is not Decision.BUSY or remaining <= 0:
            return run, outcome
        time.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, _BUSY_BACKOFF_MAX_S)


def fill_new(run: Run, machine: str, key: str, test_dir_hash: str | None) -> None:
    """Check what ``make()`` built and fill in the fields the store owns (all but ``id``).

    ``test_dir_hash`` is the argument, else the run's own, else ``key``; ``owner`` is
    this process unless ``make()`` set one.

    :raises StoreError: ``make()`` returned something other than a fresh pending run for this request
    """
    if not isinstance(run, Run):
        raise StoreError(f"make() must return a Run, not {type(run).__name__}")
    if run.id:
        raise StoreError(f"make() must return a run without an id (the store assigns it), got {run.id!r}")
    if run.status is not Status.PENDING:
        raise StoreError(f"make() must return a pending run, got {run.status.value}")
    if run.machine not in ("", machine):
        raise StoreError(f"make() returned a run for machine {run.machine!r}, expected {machine!r}")
    if run.key not in ("", key):
        raise StoreError(f"make() returned a run with key {run.key!r}, expected {key!r}")
    run.machine = machine
    run.key = key
    if test_dir_hash is not None:
        run.test_dir_hash = test_dir_hash
    elif not run.test_dir_hash:
        run.test_dir_hash = key
    if run.created_at is None:
        run.created_at = time.time()
    if run.owner is None:
        run.owner = local_owner()


def ended(run: Run, status: Status, error_code: str | None, error_msg: str | None) -> Run:
    """``run`` as :meth:`RunStore.end` writes it: terminal, ``ended_at`` now, the codes given.

    :raises StoreError: ``status`` is not terminal
    """
    if not status.is_terminal:
        raise StoreError(f"run {run.id}: end() needs a terminal status, not {status.value}")
    return dataclasses.replace(
        run,
        status=status,
        ended_at=time.time(),
        error_code=error_code or run.error_code,
        error_msg=error_msg or run.error_msg,
    )


def local_owner() -> dict[str, Any]:
    """The owner record of a run this process holds: ``{"host": ..., "pid": ...}``.

    The database store adds its session's identity when it writes the record.
    """
    return {"host": socket.gethostname(), "pid": os.getpid()}


def owner_alive(run: Run) -> bool:
    """Whether the process that owns ``run`` may still be at work on it, by host and pid.

    Another host's process is assumed alive (we cannot look). On this host the
    owner's pid is probed; an owner record without a usable pid (hand-edited,
    ``null``) names no process, so nobody owns the run.
    """
    owner = run.owner or {}
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a pid no process can have
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def remove_leftovers(
    state_dir: Path, candidates: Iterable[Path], report: Sweep, *, grace: float, now: float
) -> None:
    """Remove each candidate older than ``grace`` seconds, noting it (or why not) in ``report``."""
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
            report.removed.append(str(path.relative_to(state_dir)))


def leftovers_in(directories: Iterable[Path]) -> builtins.list[Path]:
    """The leftover entries (by name) directly in each of ``directories``; a missing one has none."""
    found: builtins.list[Path] = []
    for directory in directories:
        try:
            found.extend(directory / name for name in os.listdir(directory) if is_leftover(name))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def plan_mismatch(batch: Batch, plan: Plan) -> BatchPlanMismatch:
    """The error for joining ``batch`` with ``plan``, whose digests differ: for a shard batch (no
    plan file), what differs between what its jobs collected and what this job collected."""
    args = (batch.id, batch.plan, batch.plan_digest, str(plan.path), plan.digest)
    if batch.collected is None and plan.collected is None:
        return BatchPlanMismatch(*args)  # two plan files: the message says so
    if batch.collected is None or plan.collected is None:
        made = "a plan file" if batch.collected is None else "the shards of a directory"
        return BatchPlanMismatch(
            *args, f"the batch was made from {made} ({batch.plan}); use another batch id for this job"
        )
    theirs, ours = batch.collected, list(plan.collected)
    differences: list[str] = []
    if batch.plan != str(plan.path):
        differences.append(f"the batch's jobs split {batch.plan}")
    if len(batch.planned) != len(plan.names):
        differences.append(f"the batch has {len(batch.planned)} shards, this job {len(plan.names)}")
    elif batch.planned != list(plan.names):
        differences.append(
            f"the batch's shards are {', '.join(batch.planned)}; this job's {', '.join(plan.names)}"
        )
    if theirs != ours:
        differences.append(
            f"the batch's jobs collected {len(theirs):,} inner tests, this job {len(ours):,}; "
            + _first_difference(theirs, ours)
        )
    differences = differences or ["the batch was split by another version of pytest-lrun"]
    return BatchPlanMismatch(
        *args,
        "; ".join(differences)
        + ". Every job of a shard batch must collect the same inner tests (the same checkout, "
        "-k, -m and node ids), or use another batch id",
    )


def _first_difference(theirs: Sequence[str], ours: Sequence[str]) -> str:
    """The first node id where two collections part, and which one has it."""
    pairs = enumerate(zip(theirs, ours, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(theirs), len(ours)))
    mine, other = set(ours), set(theirs)
    if at < len(ours) and ours[at] not in other:
        return f"the first that differs, {ours[at]}, is only in this job's"
    if at < len(theirs) and theirs[at] not in mine:
        return f"the first that differs, {theirs[at]}, is only in the batch's"
    if at < len(ours) and at < len(theirs):
        return (
            f"the same tests in another order, from {ours[at]} (this job) and {theirs[at]} (the batch's) on"
        )
    return "the same tests, some of them twice in one collection"
