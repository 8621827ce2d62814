"""The file store: run records in one host's state directory (the embedded default backend).

This module owns the state directory and everything under it except the
contents of a run's directory written by other modules (logs, artifacts). It
decides, atomically across threads and processes, whether a request for a
machine creates a run, reuses the live run with the same idempotency key, or
finds the machine busy with a different key (:meth:`FileStore.prepare`).
Parts of the file store's work live in helper modules of their own, each
owning its folder: :mod:`.file_place` (placing a new run on one of its candidate
machines, and the lines of waiters in ``queue/``), :mod:`.file_check` (sweep and
check), :mod:`.file_durations` (``durations/``), :mod:`.file_outcomes` (``outcomes/``) and
:mod:`.file_batches` (``batches/``).
They and :class:`FileStore` read and write records through the base class
:class:`~pytest_lrun.store.file_io.FileRecords` (:mod:`.file_io`: each run's record,
the machines' indexes and locks, the cached-result pointers, ``corrupt/``).

State directory (``$LRUN_STATE_DIR``, else ``~/.lrun``; created with mode 0700)::

    runs/<run-id>/                a run's folder; its files: :class:`~pytest_lrun.core.layout.RunFiles`
    active/<machine-key>.json     index of the machine's non-terminal runs:
                                  {"machine": "<name>", "runs": ["<run-id>", ...]}
    locks/<machine-key>.lock      the machine's lock file (a sidecar: never holds data)
    locks/named-<h>.lock          a lock of :meth:`FileStore.exclusive` (h = xxh3-64 of its name)
    completed/<machine-key>-<h>.json  {"run_id": ...}: the newest completed run of a key
                                  (h = xxh64 of the key), for cached results
    corrupt/                      state files that did not parse, moved aside, never deleted
    hashcache/                    stat caches of hashed trees (tree.statcache; rebuilt when missing)
    queue/, durations/, outcomes/, batches/  lines of waiters, test durations and outcomes, batch records

``<run-id>`` is time-sortable: ``YYYYmmddTHHMMSS-<8 hex>`` (UTC). ``<machine-key>``
is the machine name made filesystem-safe plus the full xxh3-128 digest of the
exact name (:func:`machine_key`), and :meth:`FileStore.prepare` compares the
stored name as well, so two machines never share a key.

Rules the store keeps:

* Every file is replaced whole (:mod:`pytest_lrun.core.fsutil`): readers never see a
  torn file and need no lock. Writers of a machine's index and of its runs'
  records hold the machine's lock (a thread mutex plus a ``filelock`` on the
  sidecar file; the kernel drops it when a holder dies, even by SIGKILL).
  Machines never contend with each other.
* Payload first, pointer second: a new record is written before the index entry
  that points to it, and a run becomes terminal in its record before it leaves
  the index. A crash leaves at worst a stale index entry (healed by the next
  :meth:`FileStore.prepare`) or an unindexed record, never an entry for a record
  that was never written.
* A disk that fills after a run's terminal record is written is no error of the run:
  the machine's index (and a completed run's pointer) is then rewritten in place,
  under the machine's lock, which needs no new block; a torn index heals like a
  corrupt one. Where even that fails, the stale entry is logged and the next
  :meth:`FileStore.prepare` drops it.
* A terminal record is written once: :meth:`FileStore.end` is the one way a run
  becomes terminal, and no write changes a terminal record afterwards.
* A file that does not parse is moved into ``corrupt/`` and reported as
  :class:`~pytest_lrun.core.errors.CorruptRecord` (raised by :meth:`FileStore.get`,
  collected in :attr:`FileStore.problems`, logged to the ``pytest_lrun`` logger);
  a corrupt index is rebuilt from the machine's records.
* :meth:`FileStore.prepare` reads only the machine's index and the few records it
  lists, so its cost does not grow with the number of finished runs.
* What a crash leaves behind (temporary files, half-deleted run folders, a run
  folder with no record, a pending record its machine's index never listed) is
  found and settled by :meth:`FileStore.sweep` (:mod:`.file_check`).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path

import filelock
import xxhash

from pytest_lrun.core.errors import CorruptRecord, RunNotFound, StoreError, TerminalRunError
from pytest_lrun.core.faults import crash_point
from pytest_lrun.core.fsutil import fsync_dir, read_regular, remove_tree
from pytest_lrun.core.layout import DELETING_PREFIX, machine_key
from pytest_lrun.core.locking import hold
from pytest_lrun.core.reserve import full, release
from pytest_lrun.store import file_check, file_durations, file_outcomes
from pytest_lrun.store.base import Candidate, Decision, Sweep, Ticket
from pytest_lrun.store.common import (
    SWEEP_GRACE_S,
    check_candidates,
    ended,
    local_owner,
    owner_alive,
    retry_while_busy,
)
from pytest_lrun.store.file_batches import FileBatchStore
from pytest_lrun.store.file_io import FileRecords, sort_key
from pytest_lrun.store.file_place import line_locked, place_once, write_line
from pytest_lrun.store.outcomes import InnerOutcome, Quarantined
from pytest_lrun.store.records import Run, Status, valid_id

__all__ = ["FileStore"]

logger = logging.getLogger("pytest_lrun")


class FileStore(FileRecords):
    """Run records under one state directory; safe to share between threads and processes.

    :param state_dir: the state directory (default:
        :func:`~pytest_lrun.core.layout.default_state_dir`); created with mode 0700,
        refused when another user owns it or group or others may write it
        (:func:`~pytest_lrun.core.fsutil.make_state_dir`)
    :param lock_timeout: seconds to wait for a machine's lock before raising
        :class:`~pytest_lrun.core.errors.StoreLocked` (``None``: wait forever). The lock is held
        for milliseconds, and a dead holder releases it, so this only fires for a stuck holder.
    :param durable: fsync every write (default). ``False`` keeps writes atomic but not
        power-cut safe; for tests and benchmarks.
    """

    def __repr__(self) -> str:
        return f"FileStore({str(self.state_dir)!r})"

    @property
    def location(self) -> str:
        """The state directory."""
        return str(self.state_dir)

    @functools.cached_property
    def batches(self) -> FileBatchStore:
        """The batch records under ``batches/`` of the same state directory (made on first use)."""
        return FileBatchStore(self)

    @property
    def store_id(self) -> str:
        """A short id of this state dir on this host (containers carry it as the ``lrun.store`` label)."""
        return xxhash.xxh64_hexdigest(f"{socket.gethostname()}:{self.state_dir}".encode())

    # -- watching, sharing, closing ---------------------------------------------

    def watching(self, run_id: str, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Hold the run's ``finish.lock`` (a file lock the kernel drops with its holder) for the block.

        Taking it fails with ``FileNotFoundError`` once the run's folder is gone: the lock
        never brings a deleted run's folder back.
        """
        return _finish_lock(self.files(run_id).finish_lock, wait)

    def owner_alive(self, run: Run) -> bool:
        return owner_alive(run)

    def exclusive(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold ``locks/named-<digest of name>.lock`` for the block, waiting for it as long as it takes."""
        digest = xxhash.xxh3_64_hexdigest(name.encode("utf-8", "surrogatepass"))
        path = self.locks_dir / f"named-{digest}.lock"
        return hold(str(path), None, name)

    def save_result(self, run: Run) -> None:
        """Nothing to share: every user of this store reads the same state dir."""

    def load_result(self, run: Run, parts: Collection[str] | None = None) -> None:
        """Nothing to fetch: a run's files are where it ran."""

    def save_durations(self, suite: str, durations: Mapping[str, float]) -> None:
        """Merge ``durations`` into ``durations/<digest of suite>.json`` under its own lock."""
        file_durations.save(self, suite, durations)

    def durations(self, suite: str) -> dict[str, float]:
        """The durations kept for ``suite``; a file that does not parse counts as none (it is rewritten)."""
        return file_durations.load(self, suite)

    def save_outcomes(self, outcomes: Sequence[InnerOutcome]) -> None:
        """Merge ``outcomes`` into ``outcomes/<digest of key>.json``, each under its own lock."""
        file_outcomes.save(self, outcomes)

    def outcomes(self, key: str | None = None) -> builtins.list[InnerOutcome]:
        return file_outcomes.load_all(self) if key is None else file_outcomes.load(self, key)

    def drop_stale_outcomes(self) -> int:
        """Remove ``outcomes/<h>.json`` of each key none of the runs has, if written before the runs
        were listed (one written since may be a new run's)."""
        listed_at = time.time()
        return file_outcomes.drop_stale(self, {run.key for run in self.list()}, listed_at)

    def quarantine_test(self, nodeid: str, since: float) -> Quarantined:
        return file_outcomes.quarantine(self, nodeid, since)

    def release_test(self, nodeid: str) -> bool:
        return file_outcomes.release(self, nodeid)

    def quarantined_tests(self) -> builtins.list[Quarantined]:
        return file_outcomes.quarantined(self)

    def close(self) -> None:
        """Nothing to release: locks are taken and dropped per call."""

    # -- public API --------------------------------------------------------------

    def place(
        self,
        candidates: Sequence[Candidate],
        make: Callable[[Candidate], Run],
        *,
        test_dir_hash: str | None = None,
        wait: float = 0,
        ticket: Ticket | None = None,
    ) -> tuple[Run, Decision]:
        """Create a run on one of ``candidates``, or find the live run that decides otherwise.

        In one critical section over the candidates' machine locks (taken in the
        order of their keys, so two placements never deadlock): a live run with a
        candidate's key gives ``(run, REUSE)``; else ``make(candidate)`` builds a
        pending run (no id) for the candidate with the most free slots, the store
        fills in ``id``, ``machine``, ``key``, ``created_at``, ``owner`` and
        ``test_dir_hash`` (``test_dir_hash`` argument, else the run's own, else
        ``key``), records it and returns ``(run, CREATED)``; with every slot taken,
        ``(a live run, BUSY)``. ``make`` runs under the locks: keep it cheap and do
        not call the store from it. The line of waiters (``ticket``, see
        :meth:`RunStore.place <pytest_lrun.store.base.RunStore.place>`) of a machine is
        ``queue/<machine key>.json``, read and written under the machine's lock.

        While the answer is BUSY and ``wait`` seconds have not passed, the locks are
        released and the call retries after a bounded, growing sleep.

        :raises StoreLocked: a machine's lock stayed held for ``lock_timeout``
        :raises StoreError: ``make`` returned something other than a fresh pending run
        """
        check_candidates(candidates)
        mkeys = {c.machine: machine_key(c.machine) for c in candidates}
        return retry_while_busy(
            lambda: place_once(self, candidates, mkeys, make, test_dir_hash, ticket), wait
        )

    def leave_line(self, ticket: Ticket, machines: Sequence[str]) -> None:
        now = time.time()
        for machine in machines:
            mkey = machine_key(machine)
            with self._locked(mkey, machine):
                line = line_locked(self, mkey, now)
                if line.pop(ticket.id, None) is not None:
                    write_line(self, mkey, line)

    def insert(self, run: Run) -> Run:
        """Record an already finished run as-is (imports, fixtures, benchmarks); returns it.

        The run must be terminal, so no index changes and no lock is taken. An
        empty ``id`` gets a fresh one; ``created_at`` and ``owner`` are filled in if unset.

        :raises StoreError: the run is not terminal, or a run with its id exists
        """
        machine_key(run.machine)  # validates the name
        if not run.status.is_terminal:
            raise StoreError(f"insert() records finished runs only; this one is {run.status.value}")
        if run.id:
            try:
                os.mkdir(self._run_dir(run.id), 0o700)
            except FileExistsError:
                raise StoreError(f"a run with id {run.id!r} already exists") from None
        else:
            run.id = self._claim_run_dir()
        if run.created_at is None:
            run.created_at = time.time()
        if run.owner is None:
            run.owner = local_owner()
        try:
            self._write_record(run)
        except BaseException:
            with contextlib.suppress(OSError):
                self._run_dir(run.id).rmdir()
            raise
        return run

    def get(self, run_id: str) -> Run:
        """The stored run.

        :raises RunNotFound: no such run
        :raises CorruptRecord: its record did not parse; it was moved to ``corrupt/``
        """
        return self._load(run_id)

    def update(self, run: Run) -> None:
        """Replace a live run's record (under the machine's lock).

        A terminal record is final: once written it is never replaced, so the
        first word on how a run ended (say, ``cancelled``) is the one that stays.
        A run that becomes terminal leaves the machine's active index. ``id``,
        ``machine`` and ``key`` cannot change. Runs become terminal through :meth:`end`.

        :raises RunNotFound: no such run
        :raises CorruptRecord: the stored record did not parse (it was moved aside)
        :raises TerminalRunError: the stored run is already terminal
        :raises StoreError: ``machine`` or ``key`` differ from the stored run's
        """
        if not valid_id(run.id):
            raise RunNotFound(str(run.id))
        mkey = machine_key(run.machine)
        with self._locked(mkey, run.machine):
            stored = self._load(run.id)
            if stored.machine != run.machine or stored.key != run.key:
                raise StoreError(
                    f"run {run.id}: machine and key cannot change "
                    f"(stored {stored.machine!r}/{stored.key!r}, given {run.machine!r}/{run.key!r})"
                )
            if stored.status.is_terminal:
                raise TerminalRunError(run.id, stored.status.value, run.status.value)
            self._write_record(run)
            if run.status is Status.COMPLETED:
                crash_point("during_final_update")
                # Pointer second: the newest completed run of this key, for cached results. Index last:
                # while the index lists the run, a read of it writes a pointer a crash left out.
                with _ended_anyway(run, "its cached-result pointer"):
                    self._point_to(mkey, run, in_place_if_full=True)
            if run.status.is_terminal:
                _, run_ids = self._index_locked(mkey, run.machine)
                if run.id in run_ids:
                    with _ended_anyway(run, "the machine's active index"):
                        ids = [rid for rid in run_ids if rid != run.id]
                        self._write_index(mkey, run.machine, ids, in_place_if_full=True)

    def end(
        self, run: Run, status: Status, *, error_code: str | None = None, error_msg: str | None = None
    ) -> Run:
        """Write ``run`` as terminal with ``status`` and ``ended_at`` now; returns the record written.

        The one way a run ends: dispatch, take-over, reconcile and cancel all come
        here. ``error_code``/``error_msg`` replace the run's own when given.

        :raises TerminalRunError: the run has ended already (its stored record stands)
        :raises RunNotFound: no such run
        """
        run = ended(run, status, error_code, error_msg)
        release(self.files(run.id).reserve)  # its room goes to the record about to be written
        self.update(run)
        return run

    def last_completed(self, machine: str, key: str) -> Run | None:
        """The newest completed run of ``key`` on ``machine`` (``--lrun-reuse=completed``), or None.

        Reads one pointer and one record, however many runs are stored.
        """
        try:
            pointer = json.loads(read_regular(self._completed_path(machine_key(machine), key)))
            run = self.get(str(pointer["run_id"]))
        except (OSError, ValueError, KeyError, TypeError, RunNotFound, CorruptRecord):
            return None  # no such run yet, or it was deleted: nothing to reuse
        if run.status is not Status.COMPLETED or run.machine != machine or run.key != key:
            return None
        return run

    def list(
        self,
        machine: str | None = None,
        status: Status | str | None = None,
        batch_id: str | None = None,
    ) -> builtins.list[Run]:
        """Stored runs matching every given filter, oldest first. Scans all records.

        Records that do not parse are skipped, moved aside and added to :attr:`problems`.
        """
        wanted = None if status is None else Status(status)
        runs = [
            run
            for run in self._iter_records()
            if (machine is None or run.machine == machine)
            and (wanted is None or run.status is wanted)
            and (batch_id is None or run.batch_id == batch_id)
        ]
        runs.sort(key=sort_key)
        return runs

    def active(self, machine: str | None = None) -> builtins.list[Run]:
        """Non-terminal runs of ``machine`` (or of every machine), oldest first, read via the indexes."""
        if machine is not None:
            targets: builtins.list[tuple[str, str | None]] = [(machine_key(machine), machine)]
        else:
            targets = [(path.stem, None) for path in sorted(self.active_dir.glob("*.json"))]
        runs: builtins.list[Run] = []
        for mkey, name in targets:
            with self._locked(mkey, name or mkey):
                runs.extend(self._live_locked(mkey, name))
        runs.sort(key=sort_key)
        return runs

    def delete(self, run_id: str) -> None:
        """Remove a terminal run's directory (record, logs, artifacts).

        :raises RunNotFound: no such run
        :raises CorruptRecord: its record did not parse (it was moved aside; the directory stays)
        :raises TerminalRunError: the run is still live (pending or running)
        """
        machine = self._load(run_id).machine
        with self._locked(machine_key(machine), machine):
            run = self._load(run_id)
            if not run.status.is_terminal:
                raise TerminalRunError(run_id, run.status.value, "deleted")
            # Rename first so that a crash mid-removal leaves a dot-name that scans skip
            # (and that sweep() finishes removing).
            trash = self.runs_dir / f"{DELETING_PREFIX}{run_id}-{secrets.token_hex(4)}"
            os.rename(self._run_dir(run_id), trash)
            if self.durable:
                fsync_dir(self.runs_dir)
        remove_tree(trash)

    def evict(self, run_id: str) -> None:
        """The run lives only in this state dir: evicting it is deleting it (:meth:`delete`)."""
        self.delete(run_id)

    def prune(self, max_bytes: int) -> builtins.list[str]:
        """Nothing is saved beyond the state dir, whose cap gc keeps."""
        return []

    def sweep(self, *, grace: float = SWEEP_GRACE_S, now: float | None = None) -> Sweep:
        """Settle what crashes left behind, once it is older than ``grace`` seconds (:mod:`.file_check`)."""
        return file_check.sweep(self, grace=grace, now=now)

    def check(self) -> builtins.list[str]:
        """The store's invariant violations, one sentence each; ``[]`` when healthy (:mod:`.file_check`)."""
        return file_check.check(self)


@contextlib.contextmanager
def _ended_anyway(run: Run, what: str) -> Iterator[None]:
    """A full disk while writing ``what`` after ``run``'s terminal record: logged, never raised.

    The run has ended (its record says so). What is left is a stale index entry or a
    missing pointer, which the next prepare of the machine heals.
    """
    try:
        yield
    except OSError as exc:
        if not full(exc):
            raise
        logger.warning("run %s ended, but the disk is full: %s was not written (%s)", run.id, what, exc)


@contextlib.contextmanager
def _finish_lock(path: Path, wait: bool) -> Iterator[bool]:
    lock = filelock.FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
