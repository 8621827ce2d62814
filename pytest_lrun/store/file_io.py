"""The file store's record I/O: the base class every part of the file store reads and writes through.

:class:`FileRecords` owns the state directory's folders of records and how each
file in them is read, written and moved aside when it does not parse: a run's
``run.json``, a machine's index ``active/<machine-key>.json`` and lock
``locks/<machine-key>.lock``, the cached-result pointers ``completed/`` and the
``corrupt/`` folder (the layout is :mod:`.files`' docstring). It keeps a
machine's active set under the machine's lock and claims fresh run ids.

:class:`~pytest_lrun.store.files.FileStore` builds the store's contract on it, and the
file store's helper modules (:mod:`.file_place`, :mod:`.file_check`,
:mod:`.file_durations`, :mod:`.file_batches`) take a :class:`FileRecords`, so
none of them imports the store that calls them.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import xxhash

from pytest_lrun.core.errors import CorruptRecord, LrunError, RunNotFound, StoreError
from pytest_lrun.core.fsutil import (
    OPEN_NOFOLLOW,
    NotAFile,
    Unparseable,
    atomic_write_json,
    make_state_dir,
    move_aside,
    parse_record,
    read_regular,
    stamp,
)
from pytest_lrun.core.layout import (
    ACTIVE_DIR,
    COMPLETED_DIR,
    CORRUPT_DIR,
    HASHCACHE_DIR,
    LOCKS_DIR,
    RUNS_DIR,
    RunFiles,
    default_state_dir,
    machine_key,
)
from pytest_lrun.core.locking import hold
from pytest_lrun.core.reserve import full
from pytest_lrun.store.base import RunStore
from pytest_lrun.store.records import Run, Status, valid_id

__all__ = ["FileRecords", "sort_key", "write_json"]

logger = logging.getLogger("pytest_lrun")

T = TypeVar("T")


class FileRecords(RunStore):
    """The records of one state directory and the machines' indexes, read and written safely.

    The contract's operations are :class:`~pytest_lrun.store.files.FileStore`'s; the
    parameters are its own (see there).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float | None = 30.0,
        durable: bool = True,
    ) -> None:
        root = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
        #: The state directory, absolute with symlinks resolved; its layout is in :mod:`.files`' docstring.
        self.state_dir = Path(os.path.realpath(root))
        self.runs_dir = self.state_dir / RUNS_DIR
        self.active_dir = self.state_dir / ACTIVE_DIR
        self.locks_dir = self.state_dir / LOCKS_DIR
        self.corrupt_dir = self.state_dir / CORRUPT_DIR
        self.completed_dir = self.state_dir / COMPLETED_DIR
        #: Where :func:`pytest_lrun.tree.hashing.hash_dir` keeps its stat caches (a cache: any file may go).
        self.hashcache_dir = self.state_dir / HASHCACHE_DIR
        make_state_dir(
            root, (self.runs_dir, self.active_dir, self.locks_dir, self.corrupt_dir, self.completed_dir)
        )
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.durable = durable
        #: Corrupt files this store object found and moved aside, oldest first, for callers to show.
        self.problems: builtins.list[CorruptRecord] = []

    # -- paths ----------------------------------------------------------------

    def _run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>/``: the run's folder. Does not check that it exists.

        :raises RunNotFound: ``run_id`` is not a well-formed run id
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))
        return self.runs_dir / run_id

    def files(self, run_id: str) -> RunFiles:
        """The paths of the run's files (record, logs, JUnit XML, artifacts, finish lock).

        :raises RunNotFound: ``run_id`` is not a well-formed run id
        """
        return RunFiles(self._run_dir(run_id))

    def _record_path(self, run_id: str) -> Path:
        return self.files(run_id).record

    def _index_path(self, mkey: str) -> Path:
        return self.active_dir / f"{mkey}.json"

    def _lock_path(self, mkey: str) -> Path:
        return self.locks_dir / f"{mkey}.lock"

    # -- locking --------------------------------------------------------------

    def _locked(self, mkey: str, label: str) -> contextlib.AbstractContextManager[None]:
        """Hold machine ``mkey``'s lock (see :mod:`pytest_lrun.core.locking`)."""
        return hold(str(self._lock_path(mkey)), self.lock_timeout, f"machine {label!r}")

    # -- reading and writing files ----------------------------------------------

    def _quarantine(self, path: Path, label: str, reason: str) -> CorruptRecord | None:
        """Move ``path`` into ``corrupt/`` and report it; None when it is gone already.

        A state dir that cannot be changed (a read-only mount, a reader without write
        permission) leaves the entry where it is: it is still reported, so that readers
        list what they can.
        """
        try:
            moved = move_aside(path, self.corrupt_dir, label, durable=self.durable)
        except OSError as exc:
            moved_to = ""
            reason = f"{reason}; cannot move it aside: {exc.strerror or exc}"
        else:
            if moved is None:
                return None
            moved_to = str(moved)
        problem = CorruptRecord(str(path), moved_to, reason)
        self.problems.append(problem)
        logger.warning("%s", problem)
        return problem

    def _parse_record(self, run_id: str) -> Run:
        """Read ``runs/<run_id>/run.json`` without side effects.

        :raises FileNotFoundError: no record
        :raises Unparseable: the record is not a valid run record for this directory
        """
        path = self._record_path(run_id)
        try:
            raw = read_regular(path)  # never a wait on a fifo, never a link followed
        except NotADirectoryError:
            raise FileNotFoundError(str(path)) from None
        except NotAFile as exc:
            raise Unparseable(f"{path.name} is {exc.kind}, not a regular file") from None
        run = parse_record(raw, Run.from_dict)
        if run.id != run_id:
            raise Unparseable(f"record id {run.id!r} does not match its directory {run_id!r}")
        return run

    def _load(self, run_id: str) -> Run:
        """Read a record; move it aside if it does not parse.

        :raises RunNotFound: no record
        :raises CorruptRecord: the record did not parse and was moved to ``corrupt/``
        """
        if not valid_id(run_id):
            raise RunNotFound(str(run_id))
        return self._read_or_move_aside(
            lambda: self._parse_record(run_id),
            self._record_path(run_id),
            f"run-{run_id}",
            RunNotFound(run_id),
        )

    def _read_or_move_aside(self, parse: Callable[[], T], path: Path, label: str, missing: LrunError) -> T:
        """``parse()`` of the record at ``path``; one that does not parse is moved aside as ``label``.

        :raises LrunError: ``missing``, when there is no record (or another reader moved it aside first)
        :raises CorruptRecord: the record did not parse and was moved to ``corrupt/``
        """
        try:
            return parse()
        except FileNotFoundError:
            raise missing from None
        except Unparseable as exc:
            problem = self._quarantine(path, label, str(exc))
            if problem is None:  # another reader moved it aside first
                raise missing from None
            raise problem from None

    def _write_record(self, run: Run) -> None:
        atomic_write_json(self._record_path(run.id), run.to_dict(), durable=self.durable)

    def _parse_index(self, mkey: str) -> tuple[str | None, builtins.list[str]]:
        """The machine name and run ids in ``active/<mkey>.json`` (none when absent), without side effects.

        :raises Unparseable: the index is not valid
        """
        try:
            raw = read_regular(self._index_path(mkey))
        except FileNotFoundError:
            return None, []
        except NotAFile as exc:
            raise Unparseable(f"the index is {exc.kind}, not a regular file") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Unparseable(str(exc)) from exc
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, builtins.list) or not all(valid_id(rid) for rid in runs):
            raise Unparseable('an index must be an object with "runs": a list of run ids')
        machine = data.get("machine")
        return (machine if isinstance(machine, str) else None), [str(rid) for rid in runs]

    def _write_index(
        self, mkey: str, machine: str | None, run_ids: builtins.list[str], *, in_place_if_full: bool = False
    ) -> None:
        data = {"machine": machine, "runs": run_ids}
        write_json(self._index_path(mkey), data, durable=self.durable, in_place_if_full=in_place_if_full)

    def _iter_records(self) -> Iterator[Run]:
        """Every record that parses; corrupt ones are moved aside and reported."""
        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            return
        for name in names:
            if not valid_id(name):  # skips dot-names: temporary and half-deleted entries
                continue
            try:
                yield self._load(name)
            except (RunNotFound, CorruptRecord):
                continue

    # -- the machine's active set (callers hold the machine lock) ----------------

    def _index_locked(self, mkey: str, machine: str | None) -> tuple[str | None, builtins.list[str]]:
        """The machine's name and index; a corrupt index is moved aside and rebuilt from the records."""
        try:
            stored_name, run_ids = self._parse_index(mkey)
            return machine or stored_name, run_ids
        except Unparseable as exc:
            self._quarantine(self._index_path(mkey), f"active-{mkey}", str(exc))
        rebuilt = sorted(
            (
                run
                for run in self._iter_records()
                if not run.status.is_terminal and machine_key(run.machine) == mkey
            ),
            key=sort_key,
        )
        run_ids = [run.id for run in rebuilt]
        machine = machine or (rebuilt[0].machine if rebuilt else None)
        self._write_index(mkey, machine, run_ids)
        logger.warning(
            "rebuilt the active index of machine %r from its records: %s", machine or mkey, run_ids
        )
        return machine, run_ids

    def _live_locked(self, mkey: str, machine: str | None) -> builtins.list[Run]:
        """The machine's non-terminal runs; index entries that are stale are dropped from the index.

        A run belongs to the machine by its exact name, not only by its key: even a
        key collision cannot make one machine's run block or be reused by another.
        """
        machine, run_ids = self._index_locked(mkey, machine)
        live: builtins.list[Run] = []
        for run_id in dict.fromkeys(run_ids):  # drops duplicates, keeps order
            try:
                run = self._load(run_id)
            except (RunNotFound, CorruptRecord):
                continue
            mine = run.machine == machine if machine is not None else machine_key(run.machine) == mkey
            if not run.status.is_terminal and mine:
                live.append(run)
            elif run.status is Status.COMPLETED and mine and not self._completed_path(mkey, run.key).exists():
                self._point_to(mkey, run)  # its writer died between the record and the pointer (update)
        if [run.id for run in live] != run_ids:
            self._write_index(mkey, machine, [run.id for run in live])
        return live

    # -- new run ids, and the pointers to the newest completed run of a key ----------

    def _claim_run_dir(self) -> str:
        """A fresh run id whose folder ``runs/<id>/`` this call made (so no other writer has it)."""
        for _ in range(100):
            run_id = stamp()
            try:
                os.mkdir(self.runs_dir / run_id, 0o700)
            except FileExistsError:
                continue
            return run_id
        raise StoreError(f"could not find a free run id under {self.runs_dir}")  # pragma: no cover

    def _completed_path(self, mkey: str, key: str) -> Path:
        return self.completed_dir / f"{mkey}-{xxhash.xxh64_hexdigest(key.encode())}.json"

    def _point_to(self, mkey: str, run: Run, *, in_place_if_full: bool = False) -> None:
        """Make ``run`` (completed) the newest completed run of its key (under the machine's lock)."""
        path = self._completed_path(mkey, run.key)
        data = {"run_id": run.id}
        try:
            write_json(path, data, durable=self.durable, in_place_if_full=in_place_if_full)
        except IsADirectoryError:  # a folder where the pointer goes: moved aside like a corrupt file
            self._quarantine(path, f"completed-{path.stem}", "the pointer is a directory")
            write_json(path, data, durable=self.durable, in_place_if_full=in_place_if_full)


def write_json(path: Path, obj: Any, *, durable: bool, in_place_if_full: bool) -> None:
    """Replace ``path`` with ``obj`` (:func:`~pytest_lrun.core.fsutil.atomic_write_json`).

    With ``in_place_if_full``, a disk too full for the new file's temporary copy has
    ``path`` rewritten in place instead, when that needs no new block: the file is
    there and at least as long as the new text. Not atomic, and so only for files
    whose torn state heals: an index that does not parse is rebuilt from the records,
    a pointer that does not parse points nowhere.
    """
    try:
        atomic_write_json(path, obj, durable=durable)
    except OSError as exc:
        if not (in_place_if_full and full(exc) and _overwrite(path, obj, durable=durable)):
            raise
        logger.warning("the disk is full: %s was rewritten in place", path)


def _overwrite(path: Path, obj: Any, *, durable: bool) -> bool:
    """Write ``obj`` over the regular file at ``path`` when it fits in the file's length; whether it did."""
    data = (json.dumps(obj, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | OPEN_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < len(data):
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        if durable:
            os.fsync(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def sort_key(run: Run) -> tuple[float, str]:
    """Oldest first, by creation time, then id."""
    return (run.created_at if run.created_at is not None else 0.0, run.id)
