"""Keeping the state directory bounded: gc, after the store's sweep of what crashes left behind.

:func:`gc` settles what crashes left behind (:meth:`~pytest_lrun.store.RunStore.sweep`),
keeps a shared store's saved results capped (:meth:`~pytest_lrun.store.RunStore.prune`),
then keeps the state directory under a size cap: terminal runs are evicted, oldest
first (:func:`_evict_runs`), then the hash stat caches (:func:`_drop_caches`); a live
run, and a run the caller keeps, is never deleted. Last, the inner outcomes of keys no
stored run has any more are dropped (:meth:`~pytest_lrun.store.RunStore.drop_stale_outcomes`).
One run that cannot be deleted is reported, and the others still go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pytest_lrun.config.settings import DEFAULT_STORE_MAX_BYTES
from pytest_lrun.core.errors import CorruptRecord, RunNotFound, TerminalRunError
from pytest_lrun.core.fsutil import tree_size
from pytest_lrun.core.text import printable
from pytest_lrun.store import Run, RunStore, Sweep

__all__ = ["GcReport", "gc", "state_size"]


@dataclass(frozen=True)
class GcReport:
    """The outcome of :func:`gc`: sizes are bytes under the state directory (:func:`state_size`).

    ``swept`` says which crash leftovers were settled; ``outcomes_dropped`` counts the keys whose
    inner outcomes went with their last run; ``problems`` has one line per
    run or leftover gc could not remove (the rest were still done); ``kept`` lists the
    terminal runs it left over the cap because they were kept, and ``warnings`` says
    when one of them alone is bigger than the cap.
    """

    max_bytes: int
    size_before: int
    size_after: int
    freed_bytes: int
    deleted: list[str]
    cap_met: bool
    swept: Sweep = field(default_factory=Sweep)
    pruned: list[str] = field(default_factory=list)  # runs a shared store dropped to keep its results capped
    problems: list[str] = field(default_factory=list)
    # Terminal runs left over the cap because they are kept (the caller's, or a live batch's).
    kept: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a kept run bigger than the cap on its own
    # Keys whose inner outcomes went, as no stored run has them any more (lrun flaky's evidence).
    outcomes_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def state_size(store: RunStore) -> int:
    """Bytes under the store's state directory: files by size, every other entry (a folder,
    a link) as :data:`~pytest_lrun.core.fsutil.ENTRY_BYTES`, so a tree of empty folders counts too."""
    return tree_size(store.state_dir)


def _age_key(run: Run) -> tuple[float, float, str]:
    ended = run.ended_at if run.ended_at is not None else run.created_at
    return (ended if ended is not None else 0.0, run.created_at or 0.0, run.id)


def _caches_oldest_first(store: RunStore) -> list[tuple[float, int, str]]:
    """``(mtime, size, path)`` of each hash stat cache; one removed meanwhile (by hashing, by
    another gc) is simply not listed."""
    try:
        names = os.listdir(store.hashcache_dir)
    except FileNotFoundError:
        return []
    caches = []
    for name in names:
        path = os.path.join(store.hashcache_dir, name)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            caches.append((st.st_mtime, st.st_size, path))
    return sorted(caches)


def _kept(runs: list[Run], keep: Collection[str]) -> dict[str, str]:
    """The runs gc must not evict, each with why: those of ``keep`` and the attempts they retried,
    and every run of a batch with a live run (a plan still being dispatched)."""
    by_id = {run.id: run for run in runs}
    kept = dict.fromkeys(keep, "it belongs to this session")
    live_batches = {run.batch_id for run in runs if run.batch_id and not run.status.is_terminal}
    for run in runs:
        if run.batch_id in live_batches:
            kept.setdefault(run.id, f"its batch {run.batch_id} is live")
    for run_id, why in list(kept.items()):
        earlier = by_id.get(run_id)
        while earlier is not None and earlier.retry_of and earlier.retry_of not in kept:
            kept[earlier.retry_of] = why  # an earlier attempt of a kept run
            earlier = by_id.get(earlier.retry_of)
    return kept


@dataclass
class _Freeing:
    """What gc has freed so far, against the cap: ``size`` is the state dir's, as counted."""

    max_bytes: int
    size: int
    freed: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.size <= self.max_bytes

    def took(self, size: int) -> None:
        self.freed += size
        self.size -= size


def _evict_runs(store: RunStore, keep: Collection[str], freeing: _Freeing) -> None:
    """Evict terminal runs held on this host, oldest first, until the cap is met; kept runs stay."""
    runs = store.list()
    keeping = _kept(runs, keep)
    here = [r for r in runs if r.status.is_terminal and store.files(r.id).dir.exists()]
    for run in sorted(here, key=_age_key):
        if freeing.done:
            break
        run_bytes = tree_size(store.files(run.id).dir)
        if run.id in keeping:
            freeing.kept.append(run.id)
            if run_bytes > freeing.max_bytes:
                freeing.warnings.append(
                    f"run {run.id} alone holds {run_bytes} bytes, more than the state dir's cap of "
                    f"{freeing.max_bytes} bytes (--lrun-state-max-bytes): kept, as {keeping[run.id]}; "
                    "a later gc removes it"
                )
            continue
        try:
            store.evict(run.id)
        except (RunNotFound, CorruptRecord, TerminalRunError):
            continue
        except OSError as e:
            freeing.problems.append(printable(f"run {run.id}: cannot delete it: {e}"))
            continue
        freeing.deleted.append(run.id)
        freeing.took(run_bytes)


def _drop_caches(store: RunStore, freeing: _Freeing) -> None:
    """Remove hash stat caches, least recently written first, until the cap is met."""
    for _mtime, cache_bytes, path in _caches_oldest_first(store):
        if freeing.done:
            break
        with contextlib.suppress(FileNotFoundError):  # another gc or a hash took it first
            os.unlink(path)
        freeing.took(cache_bytes)


def gc(
    store: RunStore,
    *,
    max_bytes: int,
    store_max_bytes: int = DEFAULT_STORE_MAX_BYTES,
    keep: Collection[str] = (),
) -> GcReport:
    """Settle crash leftovers, then keep the state directory under ``max_bytes``.

    First :meth:`RunStore.sweep` removes what crashes left behind (they would
    otherwise count against the cap for ever), and :meth:`RunStore.prune` keeps a
    shared store's saved results under ``store_max_bytes``. Nothing more happens while the
    state directory is within the cap. Above it, terminal runs are deleted
    (record, logs, artifacts) in order of ``ended_at`` (else ``created_at``) until
    the total is under the cap (:meth:`RunStore.evict`: a shared store keeps the record and
    drops only this host's copies); then, if still over, the hash stat caches, least
    recently written first (they are only caches). Live runs are never deleted,
    so the cap may stay unmet; ``cap_met`` says so. A run that cannot be deleted
    is reported in ``problems`` and the others still go.

    Nor are the runs of ``keep`` (a session passes the runs it reported, whose logs and
    attachments its report points to), the attempts they retried, and the runs of a
    batch that still has a live run: they are listed in ``kept`` when the cap is not
    met without them, and a ``warnings`` line names each that alone is over the cap.
    """
    swept = store.sweep()
    pruned = store.prune(store_max_bytes)
    size_before = state_size(store)
    freeing = _Freeing(max_bytes, size_before, problems=list(swept.problems))
    if freeing.size > max_bytes:
        _evict_runs(store, keep, freeing)
        _drop_caches(store, freeing)
    # After the evictions: the outcomes of the keys they took go with them.
    outcomes_dropped = store.drop_stale_outcomes()
    size_after = state_size(store) if freeing.freed or outcomes_dropped else size_before
    return GcReport(
        max_bytes,
        size_before,
        size_after,
        freeing.freed,
        freeing.deleted,
        size_after <= max_bytes,
        swept,
        pruned,
        freeing.problems,
        freeing.kept,
        freeing.warnings,
        outcomes_dropped,
    )
