"""A run's log spool (redacted, size-capped, tail-keeping) and its events file.

The engine's output of a run is appended to ``runs/<id>/logs.txt``. Two rules
hold for every byte written:

* the values to hide (:func:`hidden_values`: every named secret's, whatever its
  length, and the run's other environment values of :data:`MIN_SECRET_LEN`
  characters or more, which may be secrets too) are replaced by ``***`` before
  anything touches the disk or the terminal;
* the file never grows past ``max_bytes``: when it would, the oldest output is
  dropped and a visible marker line says how much, so the tail survives.

The inner reporter's events (:mod:`pytest_lrun.wire.events`), split from that output,
go to ``runs/<id>/events.jsonl`` through :class:`EventSpool`, one JSON object a
line; :func:`read_event_file` (and :func:`read_events`) read them back for the
report. Every string of an event is redacted the same way (captured output may
show a secret too), but not its field names nor its phase and outcome (a fixed
vocabulary): a secret that happens to be "stop" or "call" cannot break the file.

The host reports from the events, so the events file is capped too, but not
like the log: nothing written is ever dropped (an early test's result is worth
as much as a late one's), and what must survive is each test's outcome, not the
bytes of its texts. With ``max_bytes`` (the log's cap, ``--lrun-log-max-bytes``):

* while the file is under ``max_bytes``, events are written whole;
* past it, a ``report`` event is written reduced: its captured output
  (``sections``) is dropped and its ``longrepr`` cut to its head and tail around
  a marker, :data:`REDUCED_TEXT_CHARS` characters in all; ``collected``,
  ``start`` and ``finish`` events are still whole (they are small, or written once);
* past :data:`HARD_LIMIT_FACTOR` times ``max_bytes``, a test that starts is left
  out whole, its ``start`` and its ``report`` events (never half a test: a
  ``start`` without its reports would read as the test that was running when the
  run stopped). ``collected`` and ``finish`` are always written, so the report
  still knows what was collected and how the session ended. How many events were
  left out is :attr:`EventSpool.dropped`, and it is written to the file as a
  ``{"e": "dropped", "events": N}`` line when the spool closes
  (:attr:`EventFile.dropped` once read back).

So the file stays under about ``HARD_LIMIT_FACTOR * max_bytes``, plus the
collection, the finish and the reports of the one test that crossed the limit
(each event is at most :data:`~pytest_lrun.wire.events.MAX_EVENT_BYTES`). A reduced
test (a start and three reports) takes about 1 KiB, 5 KiB when it fails, so
the room between the two limits (48 MiB with the default cap) holds the
outcomes of about ten thousand failing tests, or forty thousand passing ones,
before any is left out.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import xml.sax.saxutils
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from pytest_lrun.config.settings import DEFAULT_LOG_MAX_BYTES
from pytest_lrun.core.fsutil import OPEN_NOFOLLOW
from pytest_lrun.core.reserve import full
from pytest_lrun.wire.events import (
    Collected,
    CollectError,
    CollectSkip,
    CrashInfo,
    CutShort,
    Event,
    Finished,
    Location,
    PhaseReport,
    SkipInfo,
    Start,
    Subtest,
)

MARKER = b"[lrun: %d bytes of earlier output dropped to keep the log under %d bytes]\n"
_MARKER_RE = re.compile(rb"^\[lrun: (\d+) bytes of earlier output dropped[^\n]*\n")
REDACTED = b"***"
# A short plain env value ("1", "on") is not taken for a secret: hiding it would garble every log.
MIN_SECRET_LEN = 4


def hidden_values(env: Mapping[str, str], secret_names: Iterable[str]) -> list[str]:
    """What a run's output must never show: each named secret's value (``--lrun-secret-env``),
    however short, and the other values of its environment from :data:`MIN_SECRET_LEN` characters."""
    named = set(secret_names)
    return [value for name, value in env.items() if name in named or len(value) >= MIN_SECRET_LEN]


def _secret_values(secrets: Iterable[str]) -> list[str]:
    """The values to hide, longest first (so a secret that contains another is hidden whole)."""
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def redactor(secrets: Iterable[str]) -> re.Pattern[bytes] | None:
    """A pattern matching any of ``secrets`` in bytes, or None when there is nothing to hide."""
    values = _secret_values(secrets)
    return re.compile(b"|".join(re.escape(v.encode()) for v in values)) if values else None


def redact_xml(data: bytes, secrets: Iterable[str]) -> bytes:
    """``data`` (an XML document) with each secret masked in its text, attribute values,
    comments and CDATA, never in its markup, so that however short a secret is (``x``
    appears in ``<?xml``) the document stays well-formed. A masked piece is compared
    and written unescaped-then-escaped, so a secret written as ``a&amp;b`` is found too."""
    values = _secret_values(secrets)
    if not values:
        return data
    pattern = re.compile("|".join(re.escape(v) for v in values))
    text = data.decode("utf-8", "surrogateescape")

    def masked(piece: str, escapes: dict[str, str]) -> str:
        plain = html.unescape(piece)
        hidden = pattern.sub(REDACTED.decode(), plain)
        return piece if hidden == plain else xml.sax.saxutils.escape(hidden, escapes)

    def in_markup(match: re.Match[str]) -> str:
        token = match.group()
        for start, end in (("<!--", "-->"), ("<![CDATA[", "]]>")):
            if token.startswith(start):
                return start + pattern.sub(REDACTED.decode(), token[len(start) : -len(end)]) + end
        if token.startswith(("<?", "<!")):  # the XML declaration, a doctype: no test wrote them
            return token
        return _XML_QUOTED.sub(lambda q: q[1] + masked(q[2], _ATTRIBUTE_ESCAPES[q[1]]) + q[1], token)

    out, at = [], 0
    for match in _XML_MARKUP.finditer(text):
        out += [masked(text[at : match.start()], {}), in_markup(match)]
        at = match.end()
    out.append(masked(text[at:], {}))
    return "".join(out).encode("utf-8", "surrogateescape")


_XML_MARKUP = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<[^>]*>", re.DOTALL)
_XML_QUOTED = re.compile(r"([\"'])(.*?)\1", re.DOTALL)
# An attribute value keeps its whitespace characters only as character references.
_WHITESPACE_REFS = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_ATTRIBUTE_ESCAPES = {'"': {'"': "&quot;", **_WHITESPACE_REFS}, "'": {"'": "&apos;", **_WHITESPACE_REFS}}


class LogSpool:
    """Append-only log file with redaction and a size cap (see module docstring)."""

    def __init__(
        self, path: Path, *, max_bytes: int, secrets: Iterable[str] = (), fresh: bool = False
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._redact = redactor(secrets)
        self._pending = b""  # an incomplete last line, so a secret split across chunks is still caught
        self.lost = False
        """Whether output was dropped because the state dir's file system was full."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # fresh: the engine replays the whole log (a run taken over), so start the file anew.
        self._file = _open_for_writing(path, fresh=fresh)

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
        if not self.lost:
            try:
                self._file.write(data)
                if self._file.tell() > self.max_bytes:
                    self._truncate()
            except OSError as e:
                if not full(e):
                    raise
                self.lost = True  # the run goes on; its final record has its reserve
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
        try:
            tmp.write_bytes(MARKER % (dropped, self.max_bytes) + tail)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self._file = _open_for_writing(self.path, fresh=False)

    def close(self) -> None:
        self._emit(self._pending)
        self._pending = b""
        self._file.close()


def _open_for_writing(path: Path, *, fresh: bool) -> BinaryIO:
    """``path`` opened unbuffered to append (``fresh``: emptied first), never through a symlink
    planted in the run's folder: a write the disk refuses fails at once, nothing is left to flush."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else os.O_APPEND) | OPEN_NOFOLLOW
    return os.fdopen(os.open(path, flags, 0o600), "wb" if fresh else "ab", buffering=0)


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
        skip, crash, subtest = record["skip"], record.get("crash"), record.get("subtest")
        return PhaseReport(
            **{
                **record,
                "location": _location(record["location"]),
                "skip": None if skip is None else SkipInfo(**skip),
                "crash": None if crash is None else CrashInfo(**crash),
                "subtest": None if subtest is None else Subtest(subtest["msg"], _pairs(subtest["kwargs"])),
                "sections": _pairs(record["sections"]),
                "keywords": tuple(record["keywords"]),
                "user_properties": _pairs(record["user_properties"]),
            }
        )
    if kind == "finish":
        running = record.get("running")
        return Finished(**{**record, "running": None if running is None else CutShort(**running)})
    raise ValueError(f"unknown event kind {kind!r}")


#: The characters a report's ``longrepr`` keeps once the events file is past its cap (head and tail).
REDUCED_TEXT_CHARS = 4096
#: Past this many times its cap, the events file takes no more tests (see the module docstring).
HARD_LIMIT_FACTOR = 4
#: Fields whose values come from a fixed vocabulary ("call", "passed"), never from the test: not redacted.
_VOCABULARY = frozenset({"when", "outcome"})
#: The kind of the line that records how many events a spool left out.
DROPPED = "dropped"


def _cut(text: str) -> str:
    """``text`` within :data:`REDUCED_TEXT_CHARS`: its head and tail around a marker saying how much went.

    The reporter cuts an event's texts the same way (it cannot import this module).
    """
    if len(text) <= REDUCED_TEXT_CHARS:
        return text
    keep = REDUCED_TEXT_CHARS // 2
    cut = len(text) - 2 * keep
    return f"{text[:keep]}\n[lrun: {cut} characters cut: the events file passed its cap]\n{text[-keep:]}"


class EventSpool:
    """Appends a run's events to its ``events.jsonl``, redacted and capped (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        secrets: Iterable[str] = (),
        fresh: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        """The ``start`` and ``report`` events this spool left out past ``HARD_LIMIT_FACTOR * max_bytes``."""
        values = _secret_values(secrets)
        self._redact = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._left_out: set[str] = set()  # tests whose start was left out: their reports go too
        self.lost = False
        """Whether events were dropped because the state dir's file system was full."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = _open_for_writing(path, fresh=fresh)
        # Appending (a reattach) continues the file: its size so far counts toward the cap.
        self._size = self._file.seek(0, os.SEEK_END)

    def write(self, events: Iterable[Event]) -> list[Event]:
        """Append ``events``, redacted; returns them as written (what a live report may show)."""
        written = [self._redacted(event) for event in events]
        lines = [line for line in map(self._line, written) if line]
        if lines:
            self._append(b"".join(lines))
        return written

    def _line(self, event: Event) -> bytes:
        """``event``'s line as the cap allows (b"" when it is left out); counts its bytes as written."""
        if isinstance(event, Start | PhaseReport) and not self._takes(event):
            self.dropped += 1
            return b""
        # The event's own fields, not a copy (this runs for every event of a live run): the
        # encoder writes nested parts (a SkipInfo, a CollectError) as objects, as asdict would.
        fields: dict[str, Any] = vars(event)
        record = {"e": _KINDS[type(event)], **fields}
        line = _encode(record)
        if isinstance(event, PhaseReport) and self._size + len(line) > self.max_bytes:
            longrepr = record["longrepr"]
            line = _encode(
                {**record, "sections": [], "longrepr": None if longrepr is None else _cut(longrepr)}
            )
        self._size += len(line)
        return line

    def _takes(self, event: Start | PhaseReport) -> bool:
        """Whether the test of ``event`` is in the file (decided at its start, for all its events)."""
        if isinstance(event, Start):
            if self._size < HARD_LIMIT_FACTOR * self.max_bytes:
                self._left_out.discard(event.nodeid)  # a test run again (a rerun plugin) may fit now
                return True
            self._left_out.add(event.nodeid)
            return False
        if event.nodeid not in self._left_out:
            return True
        if event.when == "teardown":  # the test's last event: forget it, memory stays flat
            self._left_out.discard(event.nodeid)
        return False

    def _redacted(self, value: Any) -> Any:
        """``value`` of the same type with every secret in its strings replaced; dict keys and
        an event's vocabulary fields (its phase, outcome...) untouched."""
        if self._redact is None:
            return value
        if isinstance(value, str):
            return self._redact.sub(REDACTED.decode(), value)
        if isinstance(value, dict):
            return {key: self._redacted(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._redacted(item) for item in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                f.name: self._redacted(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.init and f.name not in _VOCABULARY
            }
            return dataclasses.replace(value, **changes)
        return value

    def _append(self, data: bytes) -> None:
        if self.lost:
            return
        try:
            self._file.write(data)
        except OSError as e:
            if not full(e):
                raise
            self.lost = True  # as the log spool: the run goes on, its final record has its reserve

    def close(self) -> None:
        if self.dropped:
            self._append(_encode({"e": DROPPED, "events": self.dropped}))
        self._file.close()


def _event_part(value: object) -> dict[str, Any]:
    """A dataclass inside an event (a SkipInfo, a CollectError...) as the JSON object of its fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return vars(value)
    raise TypeError(f"an event holds a {type(value).__name__}, which has no JSON form")


_ENCODER = json.JSONEncoder(default=_event_part)


def _encode(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode() + b"\n"


@dataclasses.dataclass(frozen=True)
class EventFile:
    """What a run's ``events.jsonl`` holds."""

    events: list[Event]
    dropped: int
    """Events its spools left out past their hard limit (0 in a file written before the cap)."""


def read_event_file(path: Path) -> EventFile | None:
    """The events in ``path`` in order and the count of those left out, or None when there is no file.

    A line that holds no event (a write cut short by a crash) ends the list: what came before stays.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    events: list[Event] = []
    dropped = 0
    for line in data.splitlines():
        try:
            record = json.loads(line)
            if isinstance(record, dict) and record.get("e") == DROPPED:
                dropped += int(record["events"])
            else:
                events.append(_event(record))
        except (KeyError, TypeError, ValueError):
            break
    return EventFile(events, dropped)


def read_events(path: Path) -> list[Event] | None:
    """The events in ``path`` in order, or None when the run has none (see :func:`read_event_file`)."""
    found = read_event_file(path)
    return None if found is None else found.events
