"""A run's log spool (redacted, size-capped, tail-keeping) and its events file.

The engine's output of a run is appended to ``runs/<id>/logs.txt``. Two rules
hold for every byte written:

* values of the run's environment (which may be secrets) are replaced by
  ``***`` before anything touches the disk or the terminal;
* the file never grows past ``max_bytes``: when it would, the oldest output is
  dropped and a visible marker line says how much, so the tail survives.

The inner reporter's events (:mod:`pytest_lrun.events`), split from that output,
go to ``runs/<id>/events.jsonl`` through :class:`EventSpool`, one JSON object a
line, redacted the same way (captured output may show a secret too);
:func:`read_events` reads them back for the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .events import (
    Collected,
    CollectError,
    CollectSkip,
    Event,
    Finished,
    Location,
    PhaseReport,
    SkipInfo,
    Start,
)

MARKER = b"[lrun: %d bytes of earlier output dropped to keep the log under %d bytes]\n"
_MARKER_RE = re.compile(rb"^\[lrun: (\d+) bytes of earlier output dropped[^\n]*\n")
REDACTED = b"***"
# Short values ("1", "on") are not secrets, and redacting them would garble every log.
MIN_SECRET_LEN = 4


def redactor(secrets: Iterable[str]) -> re.Pattern[bytes] | None:
    """A pattern matching any of ``secrets`` (longest first), or None when there is nothing to hide."""
    values = sorted({s.encode() for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
    if not values:
        return None
    return re.compile(b"|".join(re.escape(v) for v in values))


class LogSpool:
    """Append-only log file with redaction and a size cap (see module docstring)."""

    def __init__(
        self, path: Path, *, max_bytes: int, secrets: Iterable[str] = (), fresh: bool = False
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._redact = redactor(secrets)
        self._pending = b""  # an incomplete last line, so a secret split across chunks is still caught
        path.parent.mkdir(parents=True, exist_ok=True)
        # fresh: the engine replays the whole log (a run taken over), so start the file anew.
        self._file = open(path, "wb" if fresh else "ab")  # noqa: SIM115 - closed in close()

    def write(self, chunk: bytes) -> bytes:
        """Append ``chunk``; returns the redacted complete lines written (for live display)."""
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending, ready = data[cut:], data[:cut]
        if len(self._pending) > 64 * 1024:  # a line that never ends is flushed in pieces
            self._pending, ready = b"", data
        return self._emit(ready)

    def _emit(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._redact is not None:
            data = self._redact.sub(REDACTED, data)
        self._file.write(data)
        self._file.flush()
        if self._file.tell() > self.max_bytes:
            self._truncate()
        return data

    def _truncate(self) -> None:
        self._file.close()
        content = self.path.read_bytes()
        dropped = 0
        match = _MARKER_RE.match(content)
        if match:
            dropped = int(match.group(1))
            content = content[match.end() :]
        keep = max(self.max_bytes // 2, 1)
        dropped += len(content) - keep
        tail = content[-keep:]
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:  # start the kept tail on a line boundary
            dropped += newline + 1
            tail = tail[newline + 1 :]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(MARKER % (dropped, self.max_bytes) + tail)
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self._emit(self._pending)
        self._pending = b""
        self._file.close()


def tail(path: Path, max_bytes: int = 8192) -> str:
    """The last ``max_bytes`` of a log file as text ("" if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    if size > max_bytes:
        data = b"[...]\n" + data[data.find(b"\n") + 1 :]
    return data.decode("utf-8", "replace")


_KINDS: dict[type[Any], str] = {
    Collected: "collected",
    Start: "start",
    PhaseReport: "report",
    Finished: "finish",
}


def _location(value: Any) -> Location | None:
    return None if value is None else (value[0], value[1], value[2])


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((first, second) for first, second in value)


def _event(record: dict[str, Any]) -> Event:
    """The event a line of ``events.jsonl`` holds; KeyError, TypeError or ValueError if it holds none."""
    kind = record.pop("e")
    if kind == "collected":
        return Collected(
            n=record["n"],
            nodeids=tuple(record["nodeids"]),
            errors=tuple(CollectError(**error) for error in record["errors"]),
            skipped=tuple(CollectSkip(s["nodeid"], SkipInfo(**s["skip"])) for s in record["skipped"]),
        )
    if kind == "start":
        return Start(n=record["n"], nodeid=record["nodeid"], location=_location(record["location"]))
    if kind == "report":
        skip = record["skip"]
        return PhaseReport(
            **{
                **record,
                "location": _location(record["location"]),
                "skip": None if skip is None else SkipInfo(**skip),
                "sections": _pairs(record["sections"]),
                "keywords": tuple(record["keywords"]),
                "user_properties": _pairs(record["user_properties"]),
            }
        )
    if kind == "finish":
        return Finished(**record)
    raise ValueError(f"unknown event kind {kind!r}")


class EventSpool:
    """Appends a run's events to its ``events.jsonl``, redacted (see the module docstring)."""

    def __init__(self, path: Path, *, secrets: Iterable[str] = (), fresh: bool = False) -> None:
        # Secrets as they appear inside a JSON string (ensure_ascii, like the lines written).
        self._redact = redactor(json.dumps(secret)[1:-1] for secret in secrets)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb" if fresh else "ab")  # noqa: SIM115 - closed in close()

    def write(self, events: Iterable[Event]) -> None:
        lines = b"".join(
            json.dumps({"e": _KINDS[type(event)], **dataclasses.asdict(event)}).encode() + b"\n"
            for event in events
        )
        if not lines:
            return
        if self._redact is not None:
            lines = self._redact.sub(REDACTED, lines)
        self._file.write(lines)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: Path) -> list[Event] | None:
    """The events in ``path`` in order, or None when the run has none (no file).

    A line that holds no event (a write cut short by a crash) ends the list: what came before stays.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    events: list[Event] = []
    for line in data.splitlines():
        try:
            events.append(_event(json.loads(line)))
        except (KeyError, TypeError, ValueError):
            break
    return events
