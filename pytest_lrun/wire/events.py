"""The inner reporter's events on the host: wiring the reporter into a run, and reading its output.

The reporter (``pytest_lrun/inner/lrun_reporter.py``, shipped as
``/lrun/lrun_reporter.py``) writes its events, several to a line, in the
container's output; its docstring describes the kinds. This module owns the
other half:

* :func:`reporter_file` and :func:`reporter_wiring` give what a run needs to load
  the reporter (the file for the upload, the ``-p`` arguments, the environment)
  and :func:`new_token` the per-run token;
* :class:`EventParser` splits the output, fed in chunks as the engine streams it,
  into the human log (every valid event line removed) and typed events;
  :func:`parse_log` does the same for a whole stored log (replay).

A line holds events only when it carries this run's token: ``\\x1e`` ``lrun:``
TOKEN, a space, JSON of at most :data:`MAX_EVENT_BYTES`, ``\\n``. The JSON is one
event object, or a non-empty array of event objects (the reporter batches
events: every line costs the engine and the host). The ``\\x1e`` may come
mid-line (the reporter writes between pytest's progress dots); what precedes it
is output. Anything else -- another token, no token, a line cut off by the end of
the stream -- is output, byte for byte. A line with the right token that is not
valid (bad JSON, a wrong field in any of its events, too long) is output too,
none of its events counts, and it is one warning: a broken reporter line never
raises here.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Literal, TypeAlias, cast

# The most JSON one line (one event, or a batch) may carry; equal to the reporter's own
# constant (a unit test checks).
MAX_EVENT_BYTES = 1024 * 1024
MARKER = b"\x1elrun:"
TOKEN_VARIABLE = "LRUN_EVENT_TOKEN"
REPORTER_MODULE = "lrun_reporter"
REPORTER_DIR = "/lrun"  # where the upload puts the reporter in the container
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_DECODER = json.JSONDecoder()

When: TypeAlias = Literal["setup", "call", "teardown"]
PhaseOutcome: TypeAlias = Literal["passed", "failed", "skipped"]
Location: TypeAlias = tuple[str, int | None, str]
"""pytest's ``(path, 0-based line or None, domain)`` of a test."""


def new_token() -> str:
    """A fresh random token for one run (hex: safe in an environment value and in a log line)."""
    return secrets.token_hex(16)


def keyed_token(key: str) -> str:
    """The token of every run with the run key ``key``: a remote service's action is the same
    for the same key only if its environment, which carries the token, is too, and only then
    can the service's action cache answer it."""
    return hashlib.sha256(f"lrun-event-token:{key}".encode()).hexdigest()[:32]


def reporter_file() -> tuple[str, bytes]:
    """The reporter as the upload archive carries it: (path relative to the container's ``/``, bytes)."""
    source = resources.files("pytest_lrun.inner").joinpath(f"{REPORTER_MODULE}.py")
    return f"{REPORTER_DIR.lstrip('/')}/{REPORTER_MODULE}.py", source.read_bytes()


@dataclass(frozen=True)
class ReporterWiring:
    """What an inner pytest command needs to load the reporter."""

    args: tuple[str, ...]
    """Put right after ``pytest`` (or ``python -m pytest``) in the inner command."""
    env: dict[str, str]
    """Add to the container's environment."""


def reporter_wiring(token: str, *, image_pythonpath: str | None = None) -> ReporterWiring:
    """The ``-p`` arguments and environment that load the reporter with ``token``.

    ``image_pythonpath`` is the image's own ``PYTHONPATH``, if it sets one: the
    container's value replaces the image's, so it is kept after ``/lrun``.
    """
    _check_token(token)
    pythonpath = f"{REPORTER_DIR}:{image_pythonpath}" if image_pythonpath else REPORTER_DIR
    return ReporterWiring(args=("-p", REPORTER_MODULE), env={"PYTHONPATH": pythonpath, TOKEN_VARIABLE: token})


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkipInfo:
    """A skip's place and reason (pytest's ``(path, lineno, reason)`` longrepr tuple)."""

    path: str
    lineno: int | None
    reason: str


@dataclass(frozen=True)
class CollectError:
    """A collector that failed (an import error, a syntax error) and its text."""

    nodeid: str
    longrepr: str


@dataclass(frozen=True)
class CollectSkip:
    """A collector that skipped (a module-level ``pytest.skip``)."""

    nodeid: str
    skip: SkipInfo


@dataclass(frozen=True)
class Collected:
    """The inner collection: node ids in pytest's order; ``n`` is that of its last part."""

    n: int
    nodeids: tuple[str, ...]
    errors: tuple[CollectError, ...]
    skipped: tuple[CollectSkip, ...]


@dataclass(frozen=True)
class Start:
    """A test started (``pytest_runtest_logstart``)."""

    n: int
    nodeid: str
    location: Location | None


@dataclass(frozen=True)
class CrashInfo:
    """Where a failure happened and its one-line message (pytest's ``longrepr.reprcrash``)."""

    path: str
    lineno: int | None
    message: str


@dataclass(frozen=True)
class CutShort:
    """The test a stop (SIGINT: a timeout, a cancel) cut short, with what it had printed."""

    nodeid: str
    duration: float
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Subtest:
    """What tells a subtest's report from its test's (``subtests.test(msg, **kwargs)``, ``subTest``)."""

    msg: str | None
    kwargs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PhaseReport:
    """One phase of one test (``pytest_runtest_logreport``), enough to rebuild its ``TestReport``."""

    n: int
    nodeid: str
    when: When
    outcome: PhaseOutcome
    duration: float
    location: Location | None
    longrepr: str | None
    """The report's text (a skip's reason for a skip); long texts are cut with a marker."""
    skip: SkipInfo | None
    """Set when the inner longrepr was a skip tuple."""
    sections: tuple[tuple[str, str], ...]
    """Captured output: ``("Captured stdout call", text)`` and so on."""
    wasxfail: str | None
    """None when the report has no ``wasxfail`` (it may be ``""``: an xfail without a reason)."""
    keywords: tuple[str, ...]
    user_properties: tuple[tuple[str, str], ...]
    start: float | None
    stop: float | None
    crash: CrashInfo | None = None
    """A failure's place and message, as the inner pytest had them (older reporters send none)."""
    subtest: Subtest | None = None
    """Set on a subtest's report."""


@dataclass(frozen=True)
class Finished:
    """The inner session ended (``pytest_sessionfinish``)."""

    n: int
    exitstatus: int
    counts: dict[str, int]
    """What pytest's summary counts: ``passed``, ``failed``, ``error``, ``xfailed``, ``deselected``..."""
    interrupt: str | None
    """Where SIGINT (a timeout, a cancel) stopped the session (the test's own frames), or None."""
    running: CutShort | None = None
    """The test SIGINT cut short (older reporters send none)."""


Event: TypeAlias = Collected | Start | PhaseReport | Finished


@dataclass(frozen=True)
class JunitXml:
    """The JUnit XML the inner pytest wrote, as the reporter sent it at the session's end (no
    event of the session's own: the host reads it instead of the container's file)."""

    path: str
    """Where pytest wrote it in the container (absolute)."""
    xml: str


@dataclass(frozen=True)
class Parsed:
    """A piece of container output, split: the human log bytes and the events, in order."""

    output: bytes
    events: tuple[Event, ...]
    warnings: int
    """Lines with the right token that were no valid event (they stay in ``output``)."""


class _Malformed(Exception):
    """An event line with this run's token whose JSON is not a valid event."""


class _Fields:
    """One event's JSON object, read with type checks: any surprise is :class:`_Malformed`."""

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict):
            raise _Malformed("not an object")
        self._data: dict[str, object] = data

    def get(self, key: str) -> object:
        if key not in self._data:
            raise _Malformed(f"no {key!r}")
        return self._data[key]

    def require(self, keys: Callable[[dict[str, object]], tuple[object, ...]]) -> tuple[object, ...]:
        """The values of an :func:`operator.itemgetter`'s keys (the hot kinds: one call, not one a field)."""
        try:
            return keys(self._data)
        except KeyError as e:
            raise _Malformed(f"no {e.args[0]!r}") from None

    def optional(self, key: str, default: object = None) -> object:
        """The value of ``key``, ``default`` when it is absent."""
        return self._data.get(key, default)

    def text(self, key: str) -> str:
        return _as_str(self.get(key))

    def opt_text(self, key: str) -> str | None:
        value = self._data.get(key)
        return None if value is None else _as_str(value)

    def integer(self, key: str) -> int:
        return _as_int(self.get(key))

    def opt_number(self, key: str) -> float | None:
        value = self._data.get(key)
        return None if value is None else _as_number(value)

    def items(self, key: str) -> list[object]:
        return _as_list(self.get(key))

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise _Malformed(f"{key!r} is not a boolean")
        return value


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{value!r} is not a string")
    return value


def _as_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{value!r} is not an integer")
    return value


def _as_opt_int(value: object) -> int | None:
    return None if value is None else _as_int(value)


def _as_number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Malformed(f"{value!r} is not a number")
    return float(value)


def _as_list(value: object, length: int | None = None) -> list[object]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _Malformed(f"{value!r} is not a list" + (f" of {length}" if length is not None else ""))
    return value


def _pair(value: object) -> tuple[str, str]:
    first, second = _as_list(value, 2)
    return _as_str(first), _as_str(second)


def _location(value: object) -> Location | None:
    if value is None:
        return None
    path, lineno, domain = _as_list(value, 3)
    return _as_str(path), _as_opt_int(lineno), _as_str(domain)


def _crash(value: object) -> CrashInfo | None:
    if value is None:
        return None
    path, lineno, message = _as_list(value, 3)
    return CrashInfo(_as_str(path), _as_opt_int(lineno), _as_str(message))


def _subtest(value: object) -> Subtest | None:
    if value is None:
        return None
    f = _Fields(value)
    kwargs = f.get("kwargs")
    if not isinstance(kwargs, dict):
        raise _Malformed("'kwargs' is not an object")
    return Subtest(msg=f.opt_text("msg"), kwargs=tuple((_as_str(k), _as_str(v)) for k, v in kwargs.items()))


def _cut_short(value: object) -> CutShort | None:
    if value is None:
        return None
    f = _Fields(value)
    return CutShort(
        nodeid=f.text("nodeid"),
        duration=_as_number(f.get("duration")),
        stdout=f.opt_text("stdout") or "",
        stderr=f.opt_text("stderr") or "",
    )


def _skip(value: object) -> SkipInfo | None:
    if value is None:
        return None
    path, lineno, reason = _as_list(value, 3)
    return SkipInfo(_as_str(path), _as_opt_int(lineno), _as_str(reason))


def _texts(value: object) -> tuple[str, ...]:
    return tuple(map(_as_str, _as_list(value)))


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    return tuple(map(_pair, _as_list(value)))


def _choice(value: object, allowed: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _Malformed(f"{value!r} is not one of {sorted(allowed)}")
    return value


_WHENS = frozenset(("setup", "call", "teardown"))
_OUTCOMES = frozenset(("passed", "failed", "skipped"))
# The required fields of the two kinds that come for every test, read in one call each.
_START_FIELDS = operator.itemgetter("n", "nodeid", "location")
_REPORT_FIELDS = operator.itemgetter("n", "nodeid", "when", "outcome", "duration")


def _start(f: _Fields) -> Start:
    n, nodeid, location = f.require(_START_FIELDS)
    return Start(n=_as_int(n), nodeid=_as_str(nodeid), location=_location(location))


def _report(f: _Fields) -> PhaseReport:
    """A phase report. Only its first five fields are required: the reporter leaves out what is
    empty (``longrepr``, ``skip``, ``sections``, ``user_properties``), a location equal to the
    start's, and the keywords it already sent with the test's first report (see the reporter)."""
    n, nodeid, when, outcome, duration = f.require(_REPORT_FIELDS)
    return PhaseReport(
        n=_as_int(n),
        nodeid=_as_str(nodeid),
        when=cast(When, _choice(when, _WHENS)),
        outcome=cast(PhaseOutcome, _choice(outcome, _OUTCOMES)),
        duration=_as_number(duration),
        location=_location(f.optional("location")),
        longrepr=f.opt_text("longrepr"),
        skip=_skip(f.optional("skip")),
        sections=_pairs(f.optional("sections", [])),
        wasxfail=f.opt_text("wasxfail"),
        keywords=_texts(f.optional("keywords", [])),
        user_properties=_pairs(f.optional("user_properties", [])),
        start=f.opt_number("start"),
        stop=f.opt_number("stop"),
        crash=_crash(f.optional("crash")),
        subtest=_subtest(f.optional("subtest")),
    )


def _finished(f: _Fields) -> Finished:
    counts = f.get("counts")
    if not isinstance(counts, dict):
        raise _Malformed("'counts' is not an object")
    return Finished(
        n=f.integer("n"),
        exitstatus=f.integer("exitstatus"),
        counts={_as_str(k): _as_int(v) for k, v in counts.items()},
        interrupt=f.opt_text("interrupt"),
        running=_cut_short(f.optional("running")),
    )


def _collected_part(f: _Fields) -> Collected:
    errors = []
    for item in f.items("errors"):
        error = _Fields(item)
        errors.append(CollectError(nodeid=error.text("nodeid"), longrepr=error.text("longrepr")))
    skipped = []
    for item in f.items("skipped"):
        skip = _Fields(item)
        info = _skip(skip.get("skip"))
        if info is None:
            raise _Malformed("a collect skip without its reason")
        skipped.append(CollectSkip(nodeid=skip.text("nodeid"), skip=info))
    return Collected(
        n=f.integer("n"),
        nodeids=_texts(f.get("nodeids")),
        errors=tuple(errors),
        skipped=tuple(skipped),
    )


def _check_token(token: str) -> None:
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"an event token is letters, digits, '-' and '_', not {token!r}")


class EventParser:
    """Splits one run's output, chunk by chunk, into the human log and events (module docstring).

    Output is returned as soon as it cannot be the start of an event line; only
    bytes from a ``\\x1e`` that may begin this run's event wait for the rest of
    their line (at most :data:`MAX_EVENT_BYTES` of JSON, then they are output).
    """

    def __init__(self, token: str) -> None:
        _check_token(token)
        self._prefix = MARKER + token.encode("ascii") + b" "
        self._held = b""
        self._parts: list[Collected] = []
        self.warnings = 0
        """Warnings so far, over every :meth:`feed` and :meth:`close`."""
        self.junit: JunitXml | None = None
        """The JUnit XML the reporter sent (a ``junit`` line), if one came."""

    def feed(self, chunk: bytes) -> Parsed:
        """The output and events that ``chunk`` (after what was fed before) completes."""
        data, self._held = self._held + chunk, b""
        return self._scan(data, final=False)

    def close(self) -> Parsed:
        """The end of the stream: held bytes (a cut-off line) are output; an unfinished event warns."""
        data, self._held = self._held, b""
        parsed = self._scan(data, final=True)
        if self._parts:  # a collection whose last part never came
            self._parts = []
            self.warnings += 1
            return Parsed(parsed.output, parsed.events, parsed.warnings + 1)
        return parsed

    def _scan(self, data: bytes, *, final: bool) -> Parsed:
        prefix = self._prefix
        output = bytearray()
        events: list[Event] = []
        warnings = 0
        pos = 0
        while True:
            start = data.find(MARKER[:1], pos)
            if start < 0:
                output += data[pos:]
                break
            output += data[pos:start]
            head = data[start : start + len(prefix)]
            if head != prefix:
                if not final and len(head) < len(prefix) and prefix.startswith(head):
                    self._held = data[start:]  # maybe this run's event: wait for more
                    break
                output += data[start : start + 1]
                pos = start + 1
                continue
            end = data.find(b"\n", start + len(prefix))
            if end < 0:
                if final or len(data) - start - len(prefix) > MAX_EVENT_BYTES:
                    output += data[start:]  # cut off, or longer than any event: output
                    warnings += 1
                else:
                    self._held = data[start:]
                break
            pos = end + 1
            try:
                events += self._decode(data[start + len(prefix) : end])
            except _Malformed:
                output += data[start:pos]
                warnings += 1
        self.warnings += warnings
        return Parsed(bytes(output), tuple(events), warnings)

    def _decode(self, payload: bytes) -> list[Event]:
        """The events of one line's JSON: all of them, or :class:`_Malformed` and none."""
        if len(payload) > MAX_EVENT_BYTES:
            raise _Malformed("longer than a line may be")
        try:
            # The reporter writes ASCII: no encoding to detect, as json.loads would for bytes.
            data = _DECODER.decode(payload.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise _Malformed(str(e)) from e
        if not isinstance(data, list):
            event = self._event(_Fields(data))
            return [] if event is None else [event]
        if not data:
            raise _Malformed("an empty array")
        # A bad element voids the whole line: collection parts and JUnit XML it brought are taken back.
        parts, junit = self._parts.copy(), self.junit
        try:
            return [event for item in data if (event := self._event(_Fields(item))) is not None]
        except _Malformed:
            self._parts, self.junit = parts, junit
            raise

    def _event(self, fields: _Fields) -> Event | None:
        """The event ``fields`` hold; None when it is a collection part that more parts follow, or
        the JUnit XML (:attr:`junit`)."""
        kind = fields.text("e")
        if kind == "start":
            return _start(fields)
        if kind == "report":
            return _report(fields)
        if kind == "finish":
            return _finished(fields)
        if kind == "junit":
            self.junit = JunitXml(fields.text("path"), fields.text("xml"))
            return None
        if kind != "collected":
            raise _Malformed(f"unknown event kind {kind!r}")
        part = _collected_part(fields)
        more = fields.flag("more")
        self._parts.append(part)
        if more:
            return None
        parts, self._parts = self._parts, []
        return Collected(
            n=part.n,
            nodeids=tuple(i for p in parts for i in p.nodeids),
            errors=tuple(e for p in parts for e in p.errors),
            skipped=tuple(s for p in parts for s in p.skipped),
        )


def parse_log(chunks: bytes | Iterable[bytes], token: str) -> Parsed:
    """A whole stored log (one bytes or its chunks) split as :class:`EventParser` does (replay)."""
    parser = EventParser(token)
    output = bytearray()
    events: list[Event] = []
    pieces = [parser.feed(chunk) for chunk in ([chunks] if isinstance(chunks, bytes) else chunks)]
    for parsed in [*pieces, parser.close()]:
        output += parsed.output
        events += parsed.events
    return Parsed(bytes(output), tuple(events), parser.warnings)
