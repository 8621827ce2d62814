"""The file store's upkeep: settling what crashes left in the state directory, and checking its invariants.

Split out of :mod:`.files`, whose :meth:`FileStore.sweep
<pytest_lrun.store.files.FileStore.sweep>` and :meth:`FileStore.check
<pytest_lrun.store.files.FileStore.check>` call :func:`sweep` and :func:`check`.
Both read the layout :mod:`.files` owns (``runs/``, ``active/``) through the
store's own readers, and take a machine's lock where the store would.
"""

from __future__ import annotations

import builtins
import os
import time

from pytest_lrun.core.errors import OWNER_GONE, CorruptRecord, RunNotFound, TerminalRunError
from pytest_lrun.core.fsutil import Unparseable
from pytest_lrun.core.layout import RECORD, is_leftover, machine_key
from pytest_lrun.store.base import Sweep
from pytest_lrun.store.common import leftovers_in, owner_alive, remove_leftovers
from pytest_lrun.store.file_io import FileRecords
from pytest_lrun.store.records import Status, valid_id

__all__ = ["check", "sweep"]

_UNINDEXED = "a crash left it pending and unlisted in its machine's index; its creator is gone"


def sweep(store: FileRecords, *, grace: float, now: float | None) -> Sweep:
    """Settle what crashes left behind, once it is older than ``grace`` seconds.

    * temporary files of interrupted writes and half-deleted run folders are removed;
    * a run folder with no record (a crash between claiming an id and writing the
      record, or a record moved aside as corrupt) is removed;
    * a pending record its machine's index never listed (a crash between writing
      the record and the index), with no container and an owner that is gone, is
      ended ``interrupted`` with ``owner_gone``: nobody else would ever look at it.

    One entry that cannot be settled is reported in :attr:`Sweep.problems`; the
    others are still settled. Lists every run folder but reads only the records of
    folders that hold nothing else.
    """
    now = time.time() if now is None else now
    report = Sweep()
    candidates = leftovers_in([store.state_dir, *(p for p in store.state_dir.iterdir() if p.is_dir())])
    bare: builtins.list[str] = []  # run folders holding their record and nothing else
    for name in sorted(os.listdir(store.runs_dir)):
        folder = store.runs_dir / name
        if not valid_id(name):
            continue
        try:  # no is_dir() first: another gc may evict the run between a check and the listing
            contents = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        candidates.extend(folder / entry for entry in contents if is_leftover(entry))
        if RECORD not in contents:
            candidates.append(folder)
        elif contents == [RECORD]:
            bare.append(name)
    remove_leftovers(store.state_dir, candidates, report, grace=grace, now=now)
    # A pending run that prepare recorded but never indexed has a bare folder: nothing
    # was ever started for it. Only those records need reading, not every run's.
    indexed: set[str] | None = None
    for run_id in bare:
        try:
            run = store._load(run_id)
        except (RunNotFound, CorruptRecord):
            continue
        if run.status is not Status.PENDING or run.container_id is not None or owner_alive(run):
            continue
        if run.created_at is not None and now - run.created_at < grace:
            continue
        indexed = {live.id for live in store.active()} if indexed is None else indexed
        if run.id in indexed:
            continue
        try:
            store.end(run, Status.INTERRUPTED, error_code=OWNER_GONE, error_msg=_UNINDEXED)
        except (RunNotFound, CorruptRecord, TerminalRunError):
            continue  # ended or removed meanwhile
        report.ended.append(run.id)
    return report


def check(store: FileRecords) -> builtins.list[str]:
    """The store's invariant violations, one sentence each; ``[]`` when healthy. Changes nothing.

    Checks: every record parses and its id names its directory; every index
    parses and lists only existing, non-terminal records of its machine; at
    most one distinct key among a machine's active runs.
    """
    problems: builtins.list[str] = []
    for name in sorted(os.listdir(store.runs_dir)):
        if not valid_id(name) or not store.files(name).record.exists():
            continue
        try:
            store._parse_record(name)
        except FileNotFoundError:
            continue
        except Unparseable as exc:
            problems.append(f"runs/{name}/{RECORD} is not a valid run record: {exc}")
    for index in sorted(store.active_dir.glob("*.json")):
        mkey = index.stem
        with store._locked(mkey, mkey):
            problems.extend(_check_index(store, mkey))
    return problems


def _check_index(store: FileRecords, mkey: str) -> builtins.list[str]:

    where = f"active/{mkey}.json"
    try:
        _, run_ids = store._parse_index(mkey)
    except Unparseable as exc:
        return [f"{where} does not parse: {exc}"]
    problems: builtins.list[str] = []
    if len(set(run_ids)) != len(run_ids):
        problems.append(f"{where} lists a run more than once: {run_ids}")
    keys: dict[str, builtins.list[str]] = {}
    for run_id in run_ids:
        try:
            run = store._parse_record(run_id)
        except FileNotFoundError:
            problems.append(f"{where} lists run {run_id}, which has no record")
            continue
        except Unparseable:
            problems.append(f"{where} lists run {run_id}, whose record is not valid")
            continue
        if machine_key(run.machine) != mkey:
            problems.append(f"{where} lists run {run_id}, which belongs to machine {run.machine!r}")
        elif run.status.is_terminal:
            problems.append(f"{where} lists run {run_id}, which is {run.status.value}")
        else:
            keys.setdefault(run.key, []).append(run_id)
    for key, ids in keys.items():
        if len(ids) > 1:  # slots hold different keys; one key twice is a twin
            problems.append(f"{where}: {len(ids)} active runs of key {key!r} (twins): {ids}")
    return problems
