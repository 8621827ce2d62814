"""Batch records: one per plan dispatch, joinable by several processes.

A batch groups the runs one plan dispatched: which run each entry got, and the
batch's status derived from those runs. Several processes may form one batch
(CI jobs that each run one entry of the same plan with the same
``--lrun-batch-id``); this module keeps their records from losing each other's
entries. It owns ``batches/`` under the state directory::

    batches/<batch-id>.json    the batch record (JSON object, one per batch)
    batches/<batch-id>.lock    its lock file (a sidecar: never holds data)
    corrupt/                   records that did not parse, moved aside, never deleted

A record is ``{"id", "plan", "plan_digest", "created_at", "entries", "status", "planned"}``:
``plan`` is the absolute path of the plan file the batch was created with,
``plan_digest`` the xxh3-128 digest of that file, ``created_at`` an RFC 3339 UTC
time as in run records (:func:`~pytest_lrun.records.rfc3339`), ``entries`` maps
entry names to the id of the entry's latest run, ``status`` is a run status
(:class:`~pytest_lrun.store.Status`) derived by :meth:`BatchStore.refresh`, and
``planned`` lists every entry name of the plan.

Rules:

* Every write replaces the record whole (:mod:`pytest_lrun.fsutil`), so readers
  need no lock; every read-modify-write holds the batch's lock (a thread mutex
  plus a ``filelock`` on the sidecar, released by the kernel when a holder dies).
* Joining a batch checks the plan's digest, not its path: jobs may check the
  project out in different places, but must run the same plan.
* Batch ids a user supplies to create or join a batch are validated
  (:func:`validate_batch_id`, a :class:`~pytest_lrun.errors.BadInput`); a lookup
  (get, record, refresh) of a malformed id is :class:`~pytest_lrun.errors.BatchNotFound`,
  as :meth:`RunStore.get <pytest_lrun.store.RunStore.get>` does for run ids.
* A record that does not parse is moved into ``corrupt/`` and reported as
  :class:`~pytest_lrun.errors.CorruptRecord`; it is never overwritten.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import BatchNotFound, BatchPlanMismatch, ConfigError, CorruptRecord, RunNotFound, StoreError
from .fsutil import Unparseable, atomic_write_json, make_private_dir, move_aside, parse_record, stamp
from .locking import hold
from .plan import Plan
from .records import MillisecondTimes, parse_time, rfc3339
from .store import Run, RunStore, Status

__all__ = [
    "BATCH_ID_MAX",
    "Batch",
    "BatchStore",
    "derive_status",
    "new_batch_id",
    "rows",
    "validate_batch_id",
]

logger = logging.getLogger("pytest_lrun")

#: The longest batch id accepted.
BATCH_ID_MAX = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # batch ids and run ids alike
_NEW_ID_ATTEMPTS = 100


def new_batch_id() -> str:
    """A fresh, time-sortable batch id: ``b-YYYYmmddTHHMMSS-<8 hex>`` (UTC)."""
    return f"b-{stamp()}"


def validate_batch_id(value: object, source: str = "batch id") -> str:
    """``value`` when it is a usable batch id: 1-128 of ``A-Z a-z 0-9 _ . -``, not starting with ``.-_``.

    :param source: where the value came from, for the error (e.g. ``--lrun-batch-id``)
    :raises ConfigError: (a :class:`~pytest_lrun.errors.BadInput`) the value is not a usable id
    """
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise ConfigError(
            source,
            f"invalid batch id {value!r}: use 1-{BATCH_ID_MAX} characters from A-Z, a-z, 0-9, "
            "'_', '.' and '-', starting with a letter or digit",
        )
    return value


def derive_status(statuses: Sequence[Status | None]) -> Status:
    """A batch's status from its runs' statuses (``None``: the run record is missing).

    No runs, or all pending: pending. Any other live run: running. Otherwise the
    worst outcome: interrupted (a missing run counts as one), then timeout, then
    failed; completed when every run completed.
    """
    effective = [Status.INTERRUPTED if status is None else status for status in statuses]
    if all(status is Status.PENDING for status in effective):
        return Status.PENDING
    if any(not status.is_terminal for status in effective):
        return Status.RUNNING
    for worst in (Status.INTERRUPTED, Status.TIMEOUT, Status.FAILED):
        if worst in effective:
            return worst
    return Status.COMPLETED


@dataclass(kw_only=True)
class Batch(MillisecondTimes):
    """One batch record, as stored in ``batches/<id>.json`` (keys are the field names).

    ``created_at`` is unix seconds here and an RFC 3339 string in JSON.
    """

    id: str
    plan: str
    plan_digest: str
    created_at: float
    entries: dict[str, str] = field(default_factory=dict)
    status: Status = Status.PENDING
    planned: list[str] = field(default_factory=list)  # every entry of the plan, recorded or not yet

    _times: ClassVar[tuple[str, ...]] = ("created_at",)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # accept "failed" as well as Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, ``status`` as its string, ``created_at`` RFC 3339.

        :raises ValueError: ``created_at`` is not finite
        """
        return {
            "id": self.id,
            "plan": self.plan,
            "plan_digest": self.plan_digest,
            "created_at": rfc3339(self.created_at),
            "entries": dict(self.entries),
            "status": self.status.value,
            "planned": list(self.planned),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Batch:
        """Build a batch from a record; unknown keys are ignored (records from newer versions).

        :raises ValueError: not an object, a required key missing, a mistyped field or a time
            that is not a finite RFC 3339 time (or legacy number)
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a batch record must be a JSON object, not {type(data).__name__}")
        missing = [
            key for key in ("id", "plan", "plan_digest", "created_at", "entries", "status") if key not in data
        ]
        if missing:
            raise ValueError(f"batch record lacks required field(s): {', '.join(missing)}")
        for key in ("id", "plan", "plan_digest"):
            if not isinstance(data[key], str):
                raise ValueError(f"batch record field {key!r} must be a string, not {data[key]!r}")
        created_at = parse_time(data["created_at"], "batch record field 'created_at'")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(name, str) and isinstance(run_id, str) and _ID_RE.fullmatch(run_id)
            for name, run_id in entries.items()
        ):
            raise ValueError("batch record field 'entries' must map entry names to run ids")
        try:
            status = Status(data["status"])
        except ValueError:
            raise ValueError(f"batch record has an unknown status {data['status']!r}") from None
        planned = data.get("planned", [])
        if not isinstance(planned, list) or not all(isinstance(name, str) for name in planned):
            raise ValueError("batch record field 'planned' must be a list of entry names")
        return cls(
            id=data["id"],
            plan=data["plan"],
            plan_digest=data["plan_digest"],
            created_at=created_at,
            entries=dict(entries),
            status=status,
            planned=list(planned),
        )


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


# --- the store -------------------------------------------------------------


class BatchStore:
    """Batch records under one state directory; safe to share between threads and processes.

    :param state_dir: the state directory (the run store's); ``batches/`` and ``corrupt/``
        are created in it with mode 0700
    :param lock_timeout: seconds to wait for a batch's lock before raising
        :class:`~pytest_lrun.errors.StoreError` (``None``: wait forever)
    :param durable: fsync every write (default); ``False`` keeps writes atomic only
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        lock_timeout: float | None = 30.0,
        durable: bool = True,
    ) -> None:
        root = Path(state_dir).expanduser()
        make_private_dir(root)
        self.state_dir = Path(os.path.realpath(root))
        self.batches_dir = self.state_dir / "batches"
        self.corrupt_dir = self.state_dir / "corrupt"
        for directory in (self.batches_dir, self.corrupt_dir):
            make_private_dir(directory)
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        self.lock_timeout = lock_timeout
        self.durable = durable
        #: Corrupt records this object found and moved aside, oldest first, for callers to show.
        self.problems: builtins.list[CorruptRecord] = []

    def __repr__(self) -> str:
        return f"BatchStore({str(self.state_dir)!r})"

    def path(self, batch_id: str) -> Path:
        """``batches/<batch_id>.json``; does not check that it exists.

        :raises BatchNotFound: ``batch_id`` is not a well-formed batch id
        """
        return self.batches_dir / f"{self._existing_id(batch_id)}.json"

    @staticmethod
    def _existing_id(batch_id: object) -> str:
        """``batch_id`` for a lookup: a malformed id names no batch (like :meth:`RunStore.get`)."""
        if not isinstance(batch_id, str) or _ID_RE.fullmatch(batch_id) is None:
            raise BatchNotFound(str(batch_id))
        return batch_id

    # -- locking and files ------------------------------------------------------

    def _locked(self, batch_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold batch ``batch_id``'s lock (see :mod:`pytest_lrun.locking`)."""
        return hold(str(self.batches_dir / f"{batch_id}.lock"), self.lock_timeout, f"batch {batch_id!r}")

    def _parse(self, batch_id: str) -> Batch:
        """Read a record without side effects.

        :raises FileNotFoundError: no record
        :raises Unparseable: the record is not a valid batch record for this id
        """
        raw = (self.batches_dir / f"{batch_id}.json").read_bytes()
        batch = parse_record(raw, Batch.from_dict)
        if batch.id != batch_id:
            raise Unparseable(f"record id {batch.id!r} does not match its file name {batch_id!r}")
        return batch

    def _load_locked(self, batch_id: str) -> Batch:
        """Read a record (caller holds the batch lock); a corrupt one is moved aside.

        :raises BatchNotFound: no record
        :raises CorruptRecord: the record did not parse and was moved to ``corrupt/``
        """
        try:
            return self._parse(batch_id)
        except FileNotFoundError:
            raise BatchNotFound(batch_id) from None
        except Unparseable as exc:
            path = self.batches_dir / f"{batch_id}.json"
            moved_to = move_aside(path, self.corrupt_dir, f"batch-{batch_id}", durable=self.durable)
            if moved_to is None:  # pragma: no cover - only another writer under the lock could remove it
                raise BatchNotFound(batch_id) from None
            problem = CorruptRecord(str(path), str(moved_to), str(exc))
            self.problems.append(problem)
            logger.warning("%s", problem)
            raise problem from None

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
            raise BatchPlanMismatch(batch.id, batch.plan, batch.plan_digest, str(plan.path), plan.digest)
        return batch

    def _create(self, plan: Plan, batch_id: str) -> Batch:
        batch = Batch(
            id=batch_id,
            plan=str(plan.path),
            plan_digest=plan.digest,
            created_at=time.time(),
            planned=list(plan.names),
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
        if not isinstance(run_id, str) or _ID_RE.fullmatch(run_id) is None:
            raise ValueError(f"not a run id: {run_id!r}")
        with self._locked(batch_id):
            batch = self._load_locked(batch_id)
            batch.entries[entry] = run_id
            if batch.status.is_terminal:
                batch.status = Status.RUNNING
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
            if _ID_RE.fullmatch(batch_id) is None:  # skips dot-names: temporary files
                continue
            try:
                batches.append(self.get(batch_id))
            except (BatchNotFound, CorruptRecord):
                continue
        batches.sort(key=lambda batch: (batch.created_at, batch.id))
        return batches

    def refresh(self, batch_id: str, runs: RunStore) -> Batch:
        """Derive the batch's status from its runs' records (:func:`derive_status`) and store it.

        :raises BatchNotFound: no such batch (or ``batch_id`` is malformed)
        :raises CorruptRecord: the record did not parse (it was moved aside)
        """
        self._existing_id(batch_id)
        with self._locked(batch_id):
            batch = self._load_locked(batch_id)
            statuses: builtins.list[Status | None] = []
            for run_id in batch.entries.values():
                run = _find_run(runs, run_id)
                statuses.append(None if run is None else run.status)
            # Entries no job has started yet (CI matrix jobs still to come) keep the batch open.
            statuses += [Status.PENDING for name in batch.planned if name not in batch.entries]
            status = derive_status(statuses)
            if status is not batch.status:
                batch.status = status
                self._write(batch)
        return batch

    @staticmethod
    def rows(batch: Batch, runs: RunStore) -> builtins.list[dict[str, Any]]:
        """Same as the module's :func:`rows`."""
        return rows(batch, runs)
