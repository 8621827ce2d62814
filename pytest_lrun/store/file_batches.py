"""The file store's batches: one record per plan dispatch, joinable by several processes.

A batch groups the runs one plan dispatched: which run each entry got, and the
batch's status derived from those runs. Several processes may form one batch
(CI jobs that each run one entry of the same plan with the same
``--lrun-batch-id``); this module keeps their records from losing each other's
entries. It owns ``batches/`` under the state directory (:class:`FileBatchStore`)::

    batches/<batch-id>.json    the batch record (JSON object, one per batch)
    batches/<batch-id>.lock    its lock file (a sidecar: never holds data)
    corrupt/                   records that did not parse, moved aside, never deleted

A record is ``{"id", "plan", "plan_digest", "created_at", "entries", "status", "planned"}``:
``plan`` is the absolute path of the plan file the batch was created with,
``plan_digest`` the xxh3-128 digest of that file, ``created_at`` an RFC 3339 UTC
time as in run records (:func:`~pytest_lrun.core.times.rfc3339`), ``entries`` maps
entry names to the id of the entry's latest run, ``status`` is a run status
(:class:`~pytest_lrun.store.Status`) derived by :meth:`BatchStore.refresh`, and
``planned`` lists every entry name of the plan.

Rules:

* Every write replaces the record whole (:mod:`pytest_lrun.core.fsutil`), so readers
  need no lock; every read-modify-write holds the batch's lock (a thread mutex
  plus a ``filelock`` on the sidecar, released by the kernel when a holder dies).
* Joining a batch checks the plan's digest, not its path: jobs may check the
  project out in different places, but must run the same plan.
* Batch ids a user supplies to create or join a batch are validated
  (:func:`validate_batch_id`, a :class:`~pytest_lrun.core.errors.BadInput`); a lookup
  (get, record, refresh) of a malformed id is :class:`~pytest_lrun.core.errors.BatchNotFound`,
  as :meth:`RunStore.get <pytest_lrun.store.RunStore.get>` does for run ids.
* A record that does not parse is moved into ``corrupt/`` and reported as
  :class:`~pytest_lrun.core.errors.CorruptRecord`; it is never overwritten.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from pathlib import Path

from pytest_lrun.config.plan import Plan
from pytest_lrun.core.errors import BatchNotFound, CorruptRecord, RunNotFound, StoreError
from pytest_lrun.core.fsutil import (
    NotAFile,
    Unparseable,
    atomic_write_json,
    make_private_dir,
    parse_record,
    read_regular,
)
from pytest_lrun.core.layout import BATCHES_DIR
from pytest_lrun.core.locking import hold
from pytest_lrun.store.common import plan_mismatch
from pytest_lrun.store.file_io import FileRecords
from pytest_lrun.store.records import (
    Batch,
    BatchStatus,
    Status,
    derive_status,
    new_batch_id,
    valid_id,
    validate_batch_id,
)

__all__ = ["FileBatchStore"]

logger = logging.getLogger("pytest_lrun")

_NEW_ID_ATTEMPTS = 100


class FileBatchStore:
    """Batch records under the file store's state directory; safe between threads and processes.

    Made by :class:`~pytest_lrun.store.files.FileStore` (its ``batches``): it shares the
    run store's directory, lock timeout, durability and list of problems, and reads the
    store's runs to derive a batch's status.
    """

    def __init__(self, runs: FileRecords) -> None:
        self.runs = runs
        self.state_dir = runs.state_dir
        self.batches_dir = self.state_dir / BATCHES_DIR
        self.corrupt_dir = runs.corrupt_dir
        make_private_dir(self.batches_dir)
        self.lock_timeout = runs.lock_timeout
        self.durable = runs.durable
        #: The run store's list: corrupt batch records are reported with corrupt run records.
        self.problems = runs.problems

    def __repr__(self) -> str:
        return f"FileBatchStore({str(self.state_dir)!r})"

    def path(self, batch_id: str) -> Path:
        """``batches/<batch_id>.json``; does not check that it exists.

        :raises BatchNotFound: ``batch_id`` is not a well-formed batch id
        """
        return self.batches_dir / f"{self._existing_id(batch_id)}.json"

    @staticmethod
    def _existing_id(batch_id: object) -> str:
        """``batch_id`` for a lookup: a malformed id names no batch (like :meth:`RunStore.get`)."""
        if not valid_id(batch_id):
            raise BatchNotFound(str(batch_id))
        return batch_id

    # -- locking and files ------------------------------------------------------

    def _locked(self, batch_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold batch ``batch_id``'s lock (see :mod:`pytest_lrun.core.locking`)."""
        return hold(str(self.batches_dir / f"{batch_id}.lock"), self.lock_timeout, f"batch {batch_id!r}")

    def _parse(self, batch_id: str) -> Batch:
        """Read a record without side effects.

        :raises FileNotFoundError: no record
        :raises Unparseable: the record is not a valid batch record for this id
        """
        try:
            raw = read_regular(self.batches_dir / f"{batch_id}.json")
        except NotAFile as exc:
            raise Unparseable(f"the record is {exc.kind}, not a regular file") from None
        batch = parse_record(raw, Batch.from_dict)
        if batch.id != batch_id:
            raise Unparseable(f"record id {batch.id!r} does not match its file name {batch_id!r}")
        return batch

    def _load_locked(self, batch_id: str) -> Batch:
        """Read a record (caller holds the batch lock); a corrupt one is moved aside.

        :raises BatchNotFound: no record
        :raises CorruptRecord: the record did not parse and was moved to ``corrupt/``
        """
        path = self.batches_dir / f"{batch_id}.json"
        return self.runs._read_or_move_aside(
            lambda: self._parse(batch_id), path, f"batch-{batch_id}", BatchNotFound(batch_id)
        )

    def _write(self, batch: Batch) -> None:
        atomic_write_json(self.batches_dir / f"{batch.id}.json", batch.to_dict(), durable=self.durable)

    # -- public API ---------------------------------------------------------------

    def open(self, plan: Plan, batch_id: str | None = None) -> Batch:
        """Create a batch for ``plan``, or join the batch ``batch_id`` if it exists.

        With ``batch_id`` ``None`` a new batch gets a fresh id (:func:`new_batch_id`).
        With an id, the batch is created if missing, else joined: the stored record
        is returned as it is.

        :raises ConfigError: ``batch_id`` is not a valid batch id
        :raises BatchPlanMismatch: the existing batch was created for a plan with another digest
        :raises CorruptRecord: the existing record did not parse (it was moved aside)
        """
        if batch_id is None:
            for _ in range(_NEW_ID_ATTEMPTS):
                fresh = new_batch_id()
                with self._locked(fresh):
                    if (self.batches_dir / f"{fresh}.json").exists():
                        continue
                    return self._create(plan, fresh)
            raise StoreError(f"could not find a free batch id under {self.batches_dir}")  # pragma: no cover
        validate_batch_id(batch_id)
        with self._locked(batch_id):
            try:
                batch = self._load_locked(batch_id)
            except BatchNotFound:
                return self._create(plan, batch_id)
        if batch.plan_digest != plan.digest:
            raise plan_mismatch(batch, plan)
        return batch

    def _create(self, plan: Plan, batch_id: str) -> Batch:
        batch = Batch(
            id=batch_id,
            plan=str(plan.path),
            plan_digest=plan.digest,
            created_at=time.time(),
            planned=list(plan.names),
            collected=None if plan.collected is None else list(plan.collected),
        )
        self._write(batch)
        return batch

    def record(self, batch_id: str, entry: str, run_id: str) -> Batch:
        """Record ``run_id`` as the run of plan entry ``entry``; returns the updated batch.

        A read-modify-write under the batch lock: concurrent recorders never lose
        each other's entries. Recording an entry again replaces its run (a retried
        CI job). A batch whose status was terminal becomes running until the next
        :meth:`refresh`.

        :raises BatchNotFound: no such batch (or ``batch_id`` is malformed)
        :raises CorruptRecord: the record did not parse (it was moved aside)
        :raises ValueError: ``entry`` is empty or ``run_id`` is not a run id
        """
        self._existing_id(batch_id)
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"an entry name must be a non-empty string, not {entry!r}")
        if not valid_id(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        with self._locked(batch_id):
            batch = self._load_locked(batch_id)
            batch.entries[entry] = run_id
            if batch.status.is_terminal or batch.status is BatchStatus.INCOMPLETE:
                batch.status = BatchStatus.RUNNING
            self._write(batch)
        return batch

    def get(self, batch_id: str) -> Batch:
        """The stored batch (read without the lock: records are replaced whole).

        :raises BatchNotFound: no such batch (or ``batch_id`` is malformed)
        :raises CorruptRecord: the record did not parse; it was moved to ``corrupt/``
        """
        self._existing_id(batch_id)
        try:
            return self._parse(batch_id)
        except FileNotFoundError:
            raise BatchNotFound(batch_id) from None
        except Unparseable:
            with self._locked(batch_id):  # look again under the lock before moving anything
                return self._load_locked(batch_id)

    def list(self) -> builtins.list[Batch]:
        """Every stored batch, oldest first; corrupt records are moved aside and added to :attr:`problems`."""
        batches = []
        for path in self.batches_dir.glob("*.json"):
            batch_id = path.stem
            if not valid_id(batch_id):  # skips dot-names: temporary files
                continue
            try:
                batches.append(self.get(batch_id))
            except (BatchNotFound, CorruptRecord):
                continue
        batches.sort(key=lambda batch: (batch.created_at, batch.id))
        return batches

    def refresh(self, batch_id: str) -> Batch:
        """Derive the batch's status from its runs' records (:func:`derive_status`) and store it.

        :raises BatchNotFound: no such batch (or ``batch_id`` is malformed)
        :raises CorruptRecord: the record did not parse (it was moved aside)
        """
        self._existing_id(batch_id)
        with self._locked(batch_id):
            batch = self._load_locked(batch_id)
            statuses: builtins.list[Status | None] = []
            for run_id in batch.entries.values():
                try:
                    statuses.append(self.runs.get(run_id).status)
                except (RunNotFound, CorruptRecord):  # gone: counts as interrupted
                    statuses.append(None)
            # Entries no job has started yet (CI matrix jobs still to come, or never) keep it unfinished.
            status = derive_status(statuses, untaken=sum(name not in batch.entries for name in batch.planned))
            if status is not batch.status:
                batch.status = status
                self._write(batch)
        return batch
