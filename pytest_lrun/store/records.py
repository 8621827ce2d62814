"""The records every store keeps: runs and batches, their ids, and how records spell time.

:class:`Run` is the record (a dataclass whose JSON keys are its field names;
unset fields are ``null``) and :class:`Status` its lifecycle. Parsing is strict
about types and tolerant of unknown keys, so records written by a newer version
still load. :class:`Batch` is the record of one plan dispatch, and the id rules
(:func:`valid_id`, :func:`validate_batch_id`) are shared by runs and batches.
The stores (:mod:`pytest_lrun.store`) decide when records change.

Times follow the Go ``runs`` store this design comes from: in JSON (records on
disk and every ``lrun --json`` output) a time is an RFC 3339 UTC string to the
millisecond, ``"2026-11-25T14:30:12.415Z"``; in Python it is a float of unix
seconds, because the code does arithmetic on it. :func:`rfc3339` and
:func:`parse_time` convert at the JSON boundary, for run and batch records
alike. Reading also accepts a number (records written by 0.1.0); a time that is
not finite or does not parse makes the record corrupt. Time attributes are kept
to the millisecond in memory too (:class:`MillisecondTimes`), so a record read
back equals the object that was written.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeGuard

from pytest_lrun.core.errors import ConfigError
from pytest_lrun.core.fsutil import stamp
from pytest_lrun.core.text import shown_value
from pytest_lrun.core.times import finite_float, parse_time, rfc3339, to_millis

__all__ = [
    "BATCH_ID_MAX",
    "Batch",
    "BatchStatus",
    "MillisecondTimes",
    "Run",
    "Status",
    "derive_status",
    "new_batch_id",
    "valid_id",
    "validate_batch_id",
]


class MillisecondTimes:
    """Mixin for records: the attributes named in ``_times`` are kept to the millisecond.

    That is the precision of their JSON form, so ``from_dict(obj.to_dict()) == obj``
    holds whatever time the code set. Other values (``None``; a NaN, refused when
    the record is written) are kept as they are.
    """

    _times: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._times:
            millis = to_millis(value)
            if millis is not None:
                value = millis / 1000
        super().__setattr__(name, value)


class Status(str, enum.Enum):
    """Lifecycle of a run; the last four are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"

    @property
    def is_terminal(self) -> bool:
        return self not in (Status.PENDING, Status.RUNNING)


# Field kinds drive from_dict's validation.
_REQUIRED_STR = ("id", "machine", "test_dir", "test_dir_hash", "key")
_OPTIONAL_STR = (
    "retry_of",
    "artifacts_path",
    "logs_path",
    "error_code",
    "error_msg",
    "batch_id",
    "plan_entry",
    "event_token",
    "container_id",
    "image",
    "action_digest",
)
_TIMES = ("created_at", "started_at", "ended_at")
_REQUIRED_KEYS = (*_REQUIRED_STR, "status")


@dataclass(kw_only=True)
class Run(MillisecondTimes):
    """One dispatch of a test directory to a machine, as stored in ``run.json``.

    JSON keys are the field names; unset fields are written as ``null``. Times
    (``created_at``, ``started_at``, ``ended_at``) are unix seconds here and RFC 3339
    strings in JSON; ``timeout`` is a duration in seconds, a number in both. ``key`` is the idempotency key
    :meth:`RunStore.prepare` matches on; ``owner`` is ``{"host": ..., "pid": ...}``
    of the process that created the run (a database store adds its session's
    ``backend_pid`` and ``backend_start``, by which it tells whether the owner lives).
    """

    id: str = ""
    machine: str = ""
    test_dir: str
    test_dir_hash: str = ""
    key: str = ""
    status: Status = Status.PENDING
    exit_code: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    artifacts_path: str | None = None
    logs_path: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    batch_id: str | None = None
    plan_entry: str | None = None
    container_id: str | None = None
    image: str | None = None
    command: list[str] | None = None
    owner: dict[str, Any] | None = None
    timeout: float | None = None
    artifacts: list[str] | None = None
    env_names: list[str] | None = None  # names only: values may be secrets and never reach the disk
    secret_env: list[str] | None = None  # which of env_names are named secrets (masked however short)
    # The run this one repeats after an infrastructure failure (--lrun-infra-retries); None for a first try.
    retry_of: str | None = None
    # The inner reporter's per-run token (None: the command is no pytest, or an older run). Not a
    # secret of the log and never part of the key: it only tells the reporter's lines from output.
    event_token: str | None = None
    # On a remote (Remote Execution API) machine, the digest of the run's action, HASH/SIZE: what
    # the service's action cache and its logs name the run by. ``container_id`` is its operation.
    action_digest: str | None = None

    _times: ClassVar[tuple[str, ...]] = _TIMES

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # accept "failed" as well as Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict: every field present, ``status`` as its string, times RFC 3339.

        :raises ValueError: a time is not finite (such a record is never written)
        """
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        for name in _TIMES:
            if data[name] is not None:
                data[name] = rfc3339(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        """Build a run from a record; unknown keys are ignored (records from newer versions).

        :raises ValueError: not an object, a required key missing, a bad status, a mistyped field
            or a time that is not a finite RFC 3339 time (or legacy number)
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a run record must be a JSON object, not {type(data).__name__}")
        missing = [name for name in _REQUIRED_KEYS if name not in data]
        if missing:
            raise ValueError(f"run record lacks required field(s): {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for name in _REQUIRED_STR:
            kwargs[name] = _expect(name, data[name], str)
        try:
            kwargs["status"] = Status(data["status"])
        except ValueError:
            raise ValueError(f"run record has an unknown status {shown_value(data['status'])}") from None
        for name in _OPTIONAL_STR:
            kwargs[name] = _expect_optional(name, data.get(name), str)
        for name in _TIMES:
            value = data.get(name)
            kwargs[name] = None if value is None else parse_time(value, f"run record field {name!r}")
        timeout = data.get("timeout")
        kwargs["timeout"] = None if timeout is None else finite_float(timeout)
        if timeout is not None and kwargs["timeout"] is None:
            raise ValueError(
                "run record field 'timeout' must be a finite number of seconds or null: "
                + shown_value(timeout)
            )
        exit_code = data.get("exit_code")
        if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
            raise ValueError(
                f"run record field 'exit_code' must be an integer or null, not {shown_value(exit_code)}"
            )
        kwargs["exit_code"] = exit_code
        for name in ("command", "artifacts", "env_names", "secret_env"):
            words = data.get(name)
            if words is not None and (
                not isinstance(words, list) or not all(isinstance(part, str) for part in words)
            ):
                raise ValueError(
                    f"run record field {name!r} must be a list of strings or null: {shown_value(words)}"
                )
            kwargs[name] = None if words is None else list(words)
        kwargs["owner"] = _expect_optional("owner", data.get("owner"), dict)
        return cls(**kwargs)


def _expect(name: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"run record field {name!r} must be a {kind.__name__}, not {shown_value(value)}")
    return value


def _expect_optional(name: str, value: Any, kind: type) -> Any:
    return None if value is None else _expect(name, value, kind)


# --- batches ---------------------------------------------------------------

#: The longest batch id accepted.
BATCH_ID_MAX = 128
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # batch ids and run ids alike


def valid_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a well-formed run or batch id (a malformed one names nothing)."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def new_batch_id() -> str:
    """A fresh, time-sortable batch id: ``b-YYYYmmddTHHMMSS-<8 hex>`` (UTC)."""
    return f"b-{stamp()}"


def validate_batch_id(value: object, source: str = "batch id") -> str:
    """``value`` when it is a usable batch id: 1-128 of ``A-Z a-z 0-9 _ . -``, not starting with ``.-_``.

    :param source: where the value came from, for the error (e.g. ``--lrun-batch-id``)
    :raises ConfigError: (a :class:`~pytest_lrun.core.errors.BadInput`) the value is not a usable id
    """
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise ConfigError(
            source,
            f"invalid batch id {value!r}: use 1-{BATCH_ID_MAX} characters from A-Z, a-z, 0-9, "
            "'_', '.' and '-', starting with a letter or digit",
        )
    return value


class BatchStatus(str, enum.Enum):
    """Where a batch stands, derived from its runs (:func:`derive_status`).

    ``incomplete``: every run a job started has ended well, but some planned entries
    were never taken by any job (a CI matrix job that did not run, or has not yet).
    The last four are terminal: what the batch's runs came to.
    """

    PENDING = "pending"
    RUNNING = "running"
    INCOMPLETE = "incomplete"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"

    @property
    def is_terminal(self) -> bool:
        return self not in (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.INCOMPLETE)


def derive_status(statuses: Sequence[Status | None], untaken: int = 0) -> BatchStatus:
    """A batch's status from its runs' statuses (``None``: the run record is missing) and the
    number of planned entries no job has started (``untaken``).

    No runs, or all pending: pending. Any other live run: running. Otherwise the
    worst outcome: interrupted (a missing run counts as one), then timeout, then
    failed; else incomplete while some planned entry was never taken, completed when
    every entry's run completed.
    """
    effective = [Status.INTERRUPTED if status is None else status for status in statuses]
    if all(status is Status.PENDING for status in effective):
        return BatchStatus.PENDING
    if any(not status.is_terminal for status in effective):
        return BatchStatus.RUNNING
    for worst in (Status.INTERRUPTED, Status.TIMEOUT, Status.FAILED):
        if worst in effective:
            return BatchStatus(worst.value)
    return BatchStatus.INCOMPLETE if untaken else BatchStatus.COMPLETED


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
    status: BatchStatus = BatchStatus.PENDING
    planned: list[str] = field(default_factory=list)  # every entry of the plan, recorded or not yet
    # A shard batch's inner node ids, in collection order (None: a plan file's batch): what a job
    # that collected something else is told differs.
    collected: list[str] | None = None

    _times: ClassVar[tuple[str, ...]] = ("created_at",)

    def __post_init__(self) -> None:
        self.status = BatchStatus(self.status)  # accept "failed" as well as BatchStatus.FAILED

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
            "collected": None if self.collected is None else list(self.collected),
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
                raise ValueError(f"batch record field {key!r} must be a string, not {shown_value(data[key])}")
        created_at = parse_time(data["created_at"], "batch record field 'created_at'")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(name, str) and isinstance(run_id, str) and ID_RE.fullmatch(run_id)
            for name, run_id in entries.items()
        ):
            raise ValueError("batch record field 'entries' must map entry names to run ids")
        try:
            status = BatchStatus(data["status"])
        except ValueError:
            raise ValueError(f"batch record has an unknown status {shown_value(data['status'])}") from None
        planned = data.get("planned", [])
        if not isinstance(planned, list) or not all(isinstance(name, str) for name in planned):
            raise ValueError("batch record field 'planned' must be a list of entry names")
        collected = data.get("collected")
        if collected is not None and (
            not isinstance(collected, list) or not all(isinstance(nodeid, str) for nodeid in collected)
        ):
            raise ValueError("batch record field 'collected' must be a list of node ids or null")
        return cls(
            id=data["id"],
            plan=data["plan"],
            plan_digest=data["plan_digest"],
            created_at=created_at,
            entries=dict(entries),
            status=status,
            planned=list(planned),
            collected=None if collected is None else list(collected),
        )
