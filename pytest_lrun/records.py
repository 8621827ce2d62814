"""The run record: what a run is, as stored in ``runs/<run-id>/run.json``.

:class:`Run` is the record (a dataclass whose JSON keys are its field names;
unset fields are ``null``) and :class:`Status` its lifecycle. Parsing is strict
about types and tolerant of unknown keys, so records written by a newer version
still load. The store (:mod:`pytest_lrun.store`) decides when records change.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Run", "Status"]


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
    "artifacts_path",
    "logs_path",
    "error_code",
    "error_msg",
    "batch_id",
    "plan_entry",
    "container_id",
    "image",
)
_OPTIONAL_TIME = ("created_at", "started_at", "ended_at", "timeout")
_REQUIRED_KEYS = (*_REQUIRED_STR, "status")


@dataclass(kw_only=True)
class Run:
    """One dispatch of a test directory to a machine, as stored in ``run.json``.

    JSON keys are the field names; unset fields are written as ``null``. Times
    are unix timestamps (float seconds). ``key`` is the idempotency key
    :meth:`RunStore.prepare` matches on; ``owner`` is ``{"host": ..., "pid": ...}``
    of the process that created the run.
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

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # accept "failed" as well as Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict: every field present, ``status`` as its string."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        """Build a run from a record; unknown keys are ignored (records from newer versions).

        :raises ValueError: not an object, a required key missing, a bad status or a mistyped field
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
            raise ValueError(f"run record has an unknown status {data['status']!r}") from None
        for name in _OPTIONAL_STR:
            kwargs[name] = _expect_optional(name, data.get(name), str)
        for name in _OPTIONAL_TIME:
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"run record field {name!r} must be a number or null, not {value!r}")
            kwargs[name] = None if value is None else float(value)
        exit_code = data.get("exit_code")
        if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
            raise ValueError(f"run record field 'exit_code' must be an integer or null, not {exit_code!r}")
        kwargs["exit_code"] = exit_code
        for name in ("command", "artifacts", "env_names"):
            words = data.get(name)
            if words is not None and (
                not isinstance(words, list) or not all(isinstance(part, str) for part in words)
            ):
                raise ValueError(f"run record field {name!r} must be a list of strings or null: {words!r}")
            kwargs[name] = None if words is None else list(words)
        kwargs["owner"] = _expect_optional("owner", data.get("owner"), dict)
        return cls(**kwargs)


def _expect(name: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"run record field {name!r} must be a {kind.__name__}, not {value!r}")
    return value


def _expect_optional(name: str, value: Any, kind: type) -> Any:
    return None if value is None else _expect(name, value, kind)
