"""pytest-lrun's inner reporter: the container's pytest reports each test to the host as it happens.

Shipped in a run's upload as ``/lrun/lrun_reporter.py`` and loaded with
``-p lrun_reporter`` (``PYTHONPATH=/lrun``); nothing is installed in the image.
It runs with the image's Python (>= 3.8) and pytest (>= 7.0), so it imports only
the standard library and pytest, never pytest_lrun.

With ``LRUN_EVENT_TOKEN`` in the environment, it writes events to the process's
original standard output, several to a line::

    \\x1e lrun:<token> <compact JSON>\\n      (no spaces around "lrun:"; one space before the JSON)

The JSON is one event object or an array of event objects, in the order written.
Each event has ``"e"`` (its kind) and ``"n"`` (0, 1, 2, ... in the order
written). The kinds, and the host's parser, are in ``pytest_lrun/wire/events.py``:

* ``collected`` after collection: ``nodeids``, ``errors`` (failed collectors with
  their text), ``skipped`` (skipped collectors with their reason) and ``more``: a
  long collection is split into several ``collected`` parts, all but the last with
  ``"more": true``;
* ``start`` when a test starts (``pytest_runtest_logstart``): ``nodeid``, ``location``;
* ``report`` for each phase (``pytest_runtest_logreport``): ``nodeid``, ``when``,
  ``outcome``, ``duration``, and only when they say something: ``location`` (when
  it differs from the start's), ``longrepr`` (text), ``skip`` (the
  ``[path, lineno, reason]`` of a skip), ``sections`` (captured output),
  ``wasxfail``, ``keywords`` (with a test's first report only: the host keeps them
  for the test's other phases), ``user_properties``, ``start``/``stop`` (when pytest
  records them), ``crash`` (a failure's ``[path, lineno, message]``: where it
  happened and its one-line message, as ``longrepr.reprcrash`` says), ``subtest``
  (a subtest's report: its ``msg`` and ``kwargs``, the values as pytest shows them);
* ``finish`` at the end (``pytest_sessionfinish``): ``exitstatus``, ``counts`` (the
  categories pytest's own summary counts), ``interrupt`` (where a Ctrl-C/SIGINT
  stopped the session: the traceback through the test's own frames, without
  pytest's and pluggy's, or null) and ``running`` (the test that SIGINT cut short:
  ``nodeid``, ``duration`` and the ``stdout``/``stderr`` it had printed, or null);
* ``junit`` right before ``finish``, with no ``n`` (no event of the session's own): the
  ``path`` and text (``xml``) of the JUnit XML pytest wrote (``--junitxml``), when it
  is UTF-8 and fits one line. The host then takes it from here: reading the file back
  through a Docker Engine's archive API costs the engine a mount and a tar process.

Why this way:

* The standard output is duplicated when this module is imported, which ``-p``
  does before pytest's capture redirects file descriptor 1, and events are
  written with ``os.write`` on that duplicate: capture never swallows them, and
  no stdio buffer holds them behind the test's own output (only the reporter's
  own batching, below, delays them).
* Events may land in the middle of pytest's progress line (``test_x.py ..``): the
  host looks for ``\\x1e`` anywhere in a line and keeps what precedes it as output.
* The token is removed from ``os.environ`` on import, so the tests (and any
  pytest they start, such as xdist's workers) cannot read it from there, and a
  line printed by a test is never taken for an event by accident.
* An event's JSON is at most ``MAX_EVENT_BYTES``: long texts are cut in the
  middle with a marker, so one test cannot flood the host. So is a line's.
* Events are buffered and written several to a line, because every line costs:
  the engine's log driver, the host's log pump and its parser each pay per line,
  and a run writes four events per test. What is buffered is written when its
  oldest event has waited ``FLUSH_S`` -- by a daemon thread if the session's
  does not write it first, so a test that runs long (or hangs) has its ``start``
  on the host within that; when the next event would make the line longer than
  ``MAX_EVENT_BYTES``; on Ctrl-C/SIGINT, so a stopped session still reports what
  it found; at the session's end; and at the process's exit. The daemon's lines
  are short enough for a pipe to keep whole among pytest's own output
  (:class:`Channel`).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import threading
import time
from typing import Any

import pytest

# Kept equal to pytest_lrun.wire.events.MAX_EVENT_BYTES (a unit test checks): this file cannot import it.
MAX_EVENT_BYTES = 1024 * 1024
TOKEN_VARIABLE = "LRUN_EVENT_TOKEN"
MARKER = b"\x1elrun:"
# A collection error's text may use this much of a `collected` part, so that many fit in one.
COLLECT_ERROR_CHARS = MAX_EVENT_BYTES // 8
# Room for a `collected` part's own keys around its lists.
PART_OVERHEAD = 256
# The longest an event waits in the buffer: how late a test's start may reach the host.
FLUSH_S = 0.2


def _open_channel() -> tuple[str, int]:
    """The token and a duplicate of the original stdout, or ("", -1): then the reporter stays silent."""
    token = os.environ.pop(TOKEN_VARIABLE, "")
    if not token:
        return "", -1
    try:
        return token, os.dup(1)
    except OSError:  # no stdout at all: nowhere to report to
        return "", -1


_TOKEN, _FD = _open_channel()


def _cut(text: str, limit: int) -> str:
    """``text`` at most about ``limit`` characters: its head and tail around a marker saying how much went."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}\n[lrun: {len(text) - 2 * keep} characters cut]\n{text[len(text) - keep :]}"


def _shrink(value: Any, limit: int) -> Any:
    """``value`` with every string cut to ``limit`` characters and every list to ``limit`` items."""
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, dict):
        return {key: _shrink(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_shrink(item, limit) for item in value[:limit]]
    return value


def _dumps(value: Any) -> str:
    # ASCII only: its length is its size in bytes, and any byte the test printed survives the trip.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def encode(event: dict[str, Any]) -> str:
    """``event`` as JSON of at most ``MAX_EVENT_BYTES``: its longest texts cut until it fits."""
    data = _dumps(event)
    limit = MAX_EVENT_BYTES
    while len(data) > MAX_EVENT_BYTES and limit > 1:
        limit //= 2
        data = _dumps(_shrink(event, limit))
    return data


def _skip_info(longrepr: Any) -> list[Any] | None:
    """A skip's ``[path, lineno, reason]``, when ``longrepr`` is pytest's skip tuple."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return [str(longrepr[0]), longrepr[1], str(longrepr[2])]
    return None


def _location(location: Any) -> list[Any] | None:
    if location is None:
        return None
    path, lineno, domain = location
    return [str(path), lineno, str(domain)]


class Channel:
    """Event lines to ``fd``: events buffered and written several to a line (see the module docstring).

    The buffer and the writes are under one lock: none is written after
    :meth:`close`. Two threads write: the session's (pytest's hooks call
    :meth:`send`, :meth:`flush` and :meth:`close`), which also writes pytest's
    own output, and the timer. A line the timer writes may meet pytest's output
    in the pipe, and a pipe keeps a write whole only up to ``PIPE_BUF`` bytes: so
    the timer writes lines of at most that, and the session's thread writes the
    long lines itself. It writes an event too long for the timer's lines at once,
    and the buffer when its oldest event has waited half of ``flush_s``: while
    tests run fast it writes every line, and the timer writes only when no event
    came for a while (a test that runs long), ``flush_s`` after the oldest.
    """

    def __init__(self, fd: int, token: str, flush_s: float = FLUSH_S) -> None:
        self._fd = fd
        self._prefix = MARKER + token.encode("ascii") + b" "
        self._atomic = select.PIPE_BUF - len(self._prefix) - 1  # the JSON of a line the timer writes
        self._flush_s = flush_s
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)  # wakes the timer when a batch begins, or at close
        self._closed = False
        self._batch: list[str] = []
        self._size = 0  # the batch's events and a comma after each: its array is one byte more
        self._since = 0.0  # when the batch's oldest event came
        # A daemon: a session that never ends (a hang, os._exit) does not keep the process alive.
        self._timer = threading.Thread(target=self._flush_when_due, name="lrun-reporter-flush", daemon=True)
        self._timer.start()
        atexit.register(self.close)

    def send(self, data: str) -> None:
        """Buffer an event's JSON (from the session's thread); write the buffer when it is due."""
        with self._lock:
            if self._fd < 0:
                return
            if self._batch and self._size + len(data) + 2 > MAX_EVENT_BYTES:
                self._write(MAX_EVENT_BYTES)
            now = time.monotonic()
            if not self._batch:
                self._since = now
                self._due.notify()
            self._batch.append(data)
            self._size += len(data) + 1
            if len(data) > self._atomic or now - self._since >= self._flush_s / 2:
                self._write(MAX_EVENT_BYTES)

    def flush(self) -> None:
        """Write what is buffered, now (from the session's thread)."""
        with self._lock:
            self._write(MAX_EVENT_BYTES)

    def close(self) -> None:
        """Write what is buffered and stop: the timer ends, later events are dropped."""
        # A process forked from this one (by a test) inherits the buffer and maybe a held
        # lock, but not the timer: only the process that buffered the events writes them.
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._write(MAX_EVENT_BYTES)
            self._fd = -1
            self._closed = True
            self._due.notify()

    def _flush_when_due(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._batch:
                    self._due.wait()
                    continue
                left = self._since + self._flush_s - time.monotonic()
                if left > 0:
                    self._due.wait(left)
                else:
                    self._write(self._atomic)

    def _write(self, limit: int) -> None:
        """Write the buffer in lines of at most ``limit`` bytes of JSON, each in one write (lock held).

        A line holds one event as itself, several as an array. ``send`` keeps the
        buffer within ``MAX_EVENT_BYTES``, and events longer than the timer's
        ``limit`` out of it: with either limit, every event fits in a line.
        """
        batch, self._batch, self._size = self._batch, [], 0
        lines: list[list[str]] = []
        size = limit  # the line being filled: its events, a comma after each, one bracket
        for data in batch:
            if size + len(data) + 2 > limit:
                lines.append([])
                size = 0
            lines[-1].append(data)
            size += len(data) + 1
        for events in lines:
            if self._fd < 0:
                return
            payload = events[0] if len(events) == 1 else "[" + ",".join(events) + "]"
            view = memoryview(self._prefix + payload.encode("ascii") + b"\n")
            try:
                while view:  # a pipe may take a long line in several writes
                    view = view[os.write(self._fd, view) :]
            except OSError:  # the host stopped reading: stay silent rather than fail the tests
                self._fd = -1


class Reporter:
    """Sends the events of one pytest session to ``fd`` through a :class:`Channel` (module docstring)."""

    def __init__(self, config: pytest.Config, fd: int, token: str) -> None:
        self._config = config
        self._channel = Channel(fd, token)
        self._n = 0
        self._collect_errors: list[dict[str, Any]] = []
        self._collect_skips: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self._started: tuple[str, Any] = ("", None)  # the test last started and its location
        self._started_at = 0.0  # when it started (time.monotonic)
        self._ended = ""  # the test last torn down: when it is the one started, none is running
        self._keyworded = ""  # the test whose keywords were last sent
        self._interrupt: str | None = None
        self._running: dict[str, Any] | None = None
        self._item: pytest.Item | None = None  # the test being run, for what it printed before a stop

    def emit(self, kind: str, fields: dict[str, Any]) -> None:
        """Number one event and send it."""
        event = {"e": kind, "n": self._n}
        event.update(fields)
        self._n += 1
        self._channel.send(encode(event))

    def _tally(self) -> dict[str, int]:
        """What pytest's summary counts: the terminal reporter's tally when it runs (asking each
        report's status as it came would cost a hook call per report), else the collection's."""
        terminal = self._config.pluginmanager.get_plugin("terminalreporter")
        stats = getattr(terminal, "stats", None)
        if not isinstance(stats, dict):
            return dict(self._counts)
        return {
            category: len(reports)
            for category, reports in stats.items()
            if category and category != "warnings"
        }

    def _count(self, category: str, by: int = 1) -> None:
        self._counts[category] = self._counts.get(category, 0) + by

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # Counted as pytest's terminal counts them: a broken collector is an error.
        if report.failed:
            self._count("error")
            text = _cut(str(report.longrepr), COLLECT_ERROR_CHARS)
            self._collect_errors.append({"nodeid": report.nodeid, "longrepr": text})
        elif report.skipped:
            self._count("skipped")
            skip = _skip_info(report.longrepr) or [report.fspath, None, str(report.longrepr)]
            self._collect_skips.append({"nodeid": report.nodeid, "skip": skip})

    @pytest.hookimpl
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self._count("deselected", len(items))

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Emit the collection, in parts that each fit in an event."""
        lists: dict[str, list[Any]] = {"nodeids": [], "errors": [], "skipped": []}
        size = PART_OVERHEAD
        items: list[tuple[str, Any]] = [("nodeids", item.nodeid) for item in session.items]
        items += [("errors", error) for error in self._collect_errors]
        items += [("skipped", skip) for skip in self._collect_skips]
        for key, item in items:
            item_size = len(_dumps(item)) + 1
            if size + item_size > MAX_EVENT_BYTES and size > PART_OVERHEAD:
                self.emit("collected", dict(lists, more=True))
                lists = {"nodeids": [], "errors": [], "skipped": []}
                size = PART_OVERHEAD
            lists[key].append(item)
            size += item_size
        self.emit("collected", dict(lists, more=False))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        self._item = item

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self._started = (nodeid, _location(location))
        self._started_at = time.monotonic()
        self.emit("start", {"nodeid": nodeid, "location": self._started[1]})

    # trylast: after the terminal's, which gives a test with a failed subtest its final outcome.
    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Compact: what is empty, a location equal to the start's and keywords already sent with
        # the test's first report are left out (the host fills them in): a suite of quick tests
        # sends about half the bytes through the engine's log.
        nodeid = report.nodeid
        fields: dict[str, Any] = {
            "nodeid": nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "duration": report.duration,
        }
        location = _location(report.location)
        if self._started != (nodeid, location):
            fields["location"] = location
        longrepr = report.longrepr
        skip = _skip_info(longrepr)
        if skip:
            fields["skip"] = skip
            fields["longrepr"] = skip[2]
        elif longrepr is not None:
            fields["longrepr"] = _text(longrepr)
        if report.sections:
            fields["sections"] = [[name, content] for name, content in report.sections]
        if report.when == "setup" or nodeid != self._keyworded:
            fields["keywords"] = sorted(report.keywords)
            self._keyworded = nodeid
        if report.user_properties:
            fields["user_properties"] = [[str(name), str(value)] for name, value in report.user_properties]
        if hasattr(report, "wasxfail"):
            fields["wasxfail"] = str(report.wasxfail)
        context = getattr(report, "context", None)  # a subtest's (pytest 9, or the pytest-subtests plugin)
        if context is not None and hasattr(context, "kwargs"):
            kwargs = {str(key): str(value) for key, value in dict(context.kwargs).items()}
            msg = getattr(context, "msg", None)
            fields["subtest"] = {"msg": None if msg is None else str(msg), "kwargs": kwargs}
        crash = getattr(longrepr, "reprcrash", None) if report.failed else None
        if crash is not None:
            fields["crash"] = [str(crash.path), crash.lineno, str(crash.message)]
        if report.when == "teardown":
            self._ended = nodeid
        for stamp in ("start", "stop"):  # newer pytest only
            value = getattr(report, stamp, None)
            if isinstance(value, (int, float)):
                fields[stamp] = value
        self.emit("report", fields)

    # tryfirst: pytest's capture manager stops capturing on this hook, and prints what it holds.
    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # Where the test was when SIGINT came (a timeout, a cancel): the host names it, with what it
        # printed and how long it ran, as a failure of that test.
        self._interrupt = _interrupt_text(excinfo, self._config)
        nodeid = self._started[0]
        if nodeid and nodeid != self._ended:
            out, err = _captured_so_far(self._config, self._item)
            self._running = {
                "nodeid": nodeid,
                "duration": time.monotonic() - self._started_at,
                "stdout": _cut(out, MAX_EVENT_BYTES // 4),
                "stderr": _cut(err, MAX_EVENT_BYTES // 4),
            }
        # What was buffered goes now, whatever the rest of the session's end does.
        self._channel.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self._send_junit()
        fields = {
            "exitstatus": int(exitstatus),
            "counts": self._tally(),
            "interrupt": self._interrupt,
            "running": self._running,
        }
        self.emit("finish", fields)
        self._channel.close()

    def _send_junit(self) -> None:
        """Send the JUnit XML pytest wrote, if any (its own ``pytest_sessionfinish`` ran before
        this trylast one), when it fits one line; otherwise the host reads the file."""
        xmlpath = getattr(self._config.option, "xmlpath", None)
        if not xmlpath:
            return
        # Where pytest's junitxml plugin puts it.
        path = os.path.normpath(os.path.abspath(os.path.expanduser(os.path.expandvars(xmlpath))))
        try:
            with open(path, "rb") as xml:
                data = xml.read(MAX_EVENT_BYTES + 1)
            line = _dumps({"e": "junit", "path": path, "xml": data.decode("utf-8")})  # never cut
        except (OSError, UnicodeDecodeError):
            return
        if len(line) <= MAX_EVENT_BYTES:  # never shorter than the bytes read (one past the limit)
            self._channel.send(line)


def _text(longrepr: Any) -> str:
    """A failure's text as the terminal prints it: ``str()`` of pytest's reprs strips the
    indentation of its first line (``    def test_x():``)."""
    if hasattr(longrepr, "toterminal"):
        try:
            from _pytest._io import TerminalWriter

            out = io.StringIO()
            writer = TerminalWriter(file=out)
            writer.hasmarkup = False
            longrepr.toterminal(writer)
            return out.getvalue().rstrip().lstrip("\n")
        except Exception:  # a pytest without that writer: its own text
            pass
    return str(longrepr)


def _internal(entry: Any) -> bool:
    """Whether a traceback entry is pytest's or pluggy's own machinery (or generated code)."""
    path = str(entry.path).replace("\\", "/")
    return "/_pytest/" in path or "/pluggy/" in path or path.startswith("<")


def _interrupt_text(excinfo: pytest.ExceptionInfo[BaseException], config: pytest.Config) -> str:
    """Where SIGINT stopped the session, through the test's own frames only, in the ``--tb`` style
    asked (long unless short, line or native was asked): never pytest's hook machinery."""
    try:
        own = excinfo.traceback.filter(lambda entry: not _internal(entry))
        if len(own) == 0:
            own = excinfo.traceback[-1:]
        excinfo.traceback = own
        short = config.getoption("tbstyle", "auto") in ("short", "line", "native", "no")
        return _text(excinfo.getrepr(style="short" if short else "long", funcargs=False, tbfilter=False))
    except Exception:  # an old or odd pytest: the exception's line still says what happened
        return excinfo.exconly()


def _captured_so_far(config: pytest.Config, item: pytest.Item | None) -> tuple[str, str]:
    """What the running test printed before SIGINT: pytest reads it only when the test ends.

    pytest 7's capture hook wrapper reads it into the item's sections as the phase unwinds;
    newer ones leave it in the global capture.
    """
    sections = getattr(item, "_report_sections", None) or []
    out = "".join(str(content) for _when, key, content in sections if key == "stdout")
    err = "".join(str(content) for _when, key, content in sections if key == "stderr")
    capman = config.pluginmanager.getplugin("capturemanager")
    try:
        more_out, more_err = capman.read_global_capture()
    except Exception:  # not capturing (-s), or already stopped
        return out, err
    return out + str(more_out or ""), err + str(more_err or "")


def pytest_configure(config: pytest.Config) -> None:
    """Register the reporter when this process has a token (otherwise pytest runs as if it were absent)."""
    if _FD >= 0:
        config.pluginmanager.register(Reporter(config, _FD, _TOKEN), "lrun-reporter-session")
