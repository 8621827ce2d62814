"""The event line format: the host's parser (pytest_lrun.wire.events) and the reporter's encoding."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_lrun.wire import events
from pytest_lrun.wire.events import (
    MAX_EVENT_BYTES,
    Collected,
    CollectError,
    CollectSkip,
    EventParser,
    Finished,
    JunitXml,
    Parsed,
    PhaseReport,
    SkipInfo,
    Start,
    parse_log,
    reporter_file,
    reporter_wiring,
)

TOKEN = "5eb1e2c0ffee"
REPORTER_PATH = Path(events.__file__).parents[1] / "inner" / "lrun_reporter.py"
PREFIX = b"\x1elrun:" + TOKEN.encode() + b" "


def line(fields: dict[str, Any] | list[dict[str, Any]], token: str = TOKEN) -> bytes:
    """An event line: one event, or a batch of them (a list)."""
    return b"\x1elrun:" + token.encode() + b" " + json.dumps(fields).encode() + b"\n"


def report(nodeid: str = "t.py::test_a", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "e": "report",
        "n": 2,
        "nodeid": nodeid,
        "when": "call",
        "outcome": "failed",
        "duration": 0.25,
        "location": ["t.py", 3, "test_a"],
        "longrepr": "E   assert 1 == 2",
        "skip": None,
        "sections": [["Captured stdout call", "hi\n"]],
        "keywords": ["t.py", "test_a"],
        "user_properties": [["ticket", "42"]],
    }
    fields.update(overrides)
    return fields


COLLECTED = {
    "e": "collected",
    "n": 0,
    "nodeids": ["t.py::test_a"],
    "errors": [],
    "skipped": [],
    "more": False,
}
START = {"e": "start", "n": 1, "nodeid": "t.py::test_a", "location": ["t.py", 3, "test_a"]}
FINISH = {"e": "finish", "n": 3, "exitstatus": 1, "counts": {"failed": 1}, "interrupt": None}

# A run's output as the engine streams it: pytest's text with events among it, one mid-line.
STREAM = (
    b"collected 1 item\n"
    + line(COLLECTED)
    + b"\nt.py "
    + line(START)
    + line(report())
    + b"F"
    + line(FINISH)
    + b"\n=== 1 failed ===\n"
)
HUMAN = b"collected 1 item\n\nt.py F\n=== 1 failed ===\n"
# The same run as the reporter batches it: several events to a line, and one alone.
BATCHED = (
    b"collected 1 item\n\nt.py "
    + line([COLLECTED, START, report()])
    + b"F"
    + line(FINISH)
    + b"\n=== 1 failed ===\n"
)
EVENTS = (
    Collected(n=0, nodeids=("t.py::test_a",), errors=(), skipped=()),
    Start(n=1, nodeid="t.py::test_a", location=("t.py", 3, "test_a")),
    PhaseReport(
        n=2,
        nodeid="t.py::test_a",
        when="call",
        outcome="failed",
        duration=0.25,
        location=("t.py", 3, "test_a"),
        longrepr="E   assert 1 == 2",
        skip=None,
        sections=(("Captured stdout call", "hi\n"),),
        wasxfail=None,
        keywords=("t.py", "test_a"),
        user_properties=(("ticket", "42"),),
        start=None,
        stop=None,
    ),
    Finished(n=3, exitstatus=1, counts={"failed": 1}, interrupt=None),
)


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[bytes, list[Any], int]:
    parser = EventParser(TOKEN)
    output, found = b"", []
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        parsed = parser.feed(data[a:b])
        output += parsed.output
        found += parsed.events
    last = parser.close()
    return output + last.output, found + list(last.events), parser.warnings


STREAMS = pytest.mark.parametrize("stream", [STREAM, BATCHED], ids=["one-a-line", "batched"])


@STREAMS
def test_a_whole_log_splits_into_the_human_log_and_typed_events(stream: bytes) -> None:
    parsed = parse_log(stream, TOKEN)
    assert parsed.output == HUMAN
    assert parsed.events == EVENTS
    assert parsed.warnings == 0


@STREAMS
@pytest.mark.parametrize("seed", range(20))
def test_chunks_split_anywhere_give_the_same_result(stream: bytes, seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
    assert feed_in_pieces(stream, cuts) == (HUMAN, list(EVENTS), 0)


@STREAMS
def test_byte_by_byte_feeding_gives_the_same_result(stream: bytes) -> None:
    assert feed_in_pieces(stream, list(range(1, len(stream)))) == (HUMAN, list(EVENTS), 0)


def test_output_is_returned_at_once_and_only_a_possible_event_waits() -> None:
    parser = EventParser(TOKEN)
    # A progress line without its newline yet: the user sees it now.
    assert parser.feed(b"t.py ..").output == b"t.py .."
    # The start of an event line waits for the rest of it...
    assert parser.feed(b"\x1elrun:" + TOKEN[:4].encode()).output == b""
    # ...and is output once it turns out to be something else.
    assert parser.feed(b"XX").output == b"\x1elrun:" + TOKEN[:4].encode() + b"XX"


@pytest.mark.parametrize(
    "forged",
    [
        line(FINISH, token="0000000000"),  # a wrong token
        line(FINISH, token=TOKEN + "0"),  # the token with more after it
        b"\x1elrun: " + json.dumps(FINISH).encode() + b"\n",  # no token
        b"\x1elrun:" + TOKEN.encode() + json.dumps(FINISH).encode() + b"\n",  # no space
        b"lrun:" + TOKEN.encode() + b" " + json.dumps(FINISH).encode() + b"\n",  # no \x1e
    ],
    ids=["wrong-token", "longer-token", "no-token", "no-space", "no-separator"],
)
def test_a_line_without_this_runs_token_is_plain_output(forged: bytes) -> None:
    data = line(START) + forged + line(report())
    parsed = parse_log(data, TOKEN)
    assert parsed.output == forged
    assert [type(e) for e in parsed.events] == [Start, PhaseReport]
    assert parsed.warnings == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the interpreter's recursion limit
        json.dumps({"e": "teleport", "n": 1}).encode(),
        json.dumps(report(outcome="exploded")).encode(),
        json.dumps(report(when="lunch")).encode(),
        json.dumps(report(duration="slow")).encode(),
        json.dumps(report(sections=[["only a name"]])).encode(),
        json.dumps(report(sections="none")).encode(),  # optional, but not anything
        json.dumps(report(keywords=None, location=7)).encode(),
        json.dumps({k: v for k, v in report().items() if k != "nodeid"}).encode(),
        json.dumps(dict(FINISH, counts={"passed": True})).encode(),
        json.dumps(dict(COLLECTED, more="no")).encode(),
        json.dumps(dict(COLLECTED, skipped=[{"nodeid": "t.py", "skip": None}])).encode(),
        # A batch is void when any of its events is.
        b"[]",
        json.dumps([START, FINISH, 7]).encode(),
        json.dumps([START, [START]]).encode(),
        json.dumps([START, report(outcome="exploded"), FINISH]).encode(),
        json.dumps([dict(COLLECTED, more=True), {"e": "teleport", "n": 1}]).encode(),
    ],
    ids=lambda p: p[:30].decode(errors="replace"),
)
def test_a_malformed_event_with_the_right_token_is_output_and_a_warning(payload: bytes) -> None:
    bad = b"\x1elrun:" + TOKEN.encode() + b" " + payload + b"\n"
    parsed = parse_log(b"before\n" + bad + line(START), TOKEN)
    assert parsed.output == b"before\n" + bad
    assert parsed.events == (EVENTS[1],)
    assert parsed.warnings == 1


def test_output_that_is_not_utf8_stays_byte_for_byte() -> None:
    noise = b"\xff\xfe caf\xe9 \x1e\x00\x1e\x1elrun\n\x80"
    parsed = parse_log([noise[:5], noise[5:] + line(START), b"\xc3"], TOKEN)
    assert parsed.output == noise + b"\xc3"
    assert parsed.events == (EVENTS[1],)


def test_an_event_cut_off_by_the_end_of_the_stream_is_output_and_a_warning() -> None:
    cut = line(FINISH)[:-10]
    parsed = parse_log(line(START) + cut, TOKEN)
    assert (parsed.output, parsed.events, parsed.warnings) == (cut, (EVENTS[1],), 1)


def test_the_start_of_a_marker_at_the_end_of_the_stream_is_just_output() -> None:
    parsed = parse_log(b"tail \x1elru", TOKEN)
    assert (parsed.output, parsed.events, parsed.warnings) == (b"tail \x1elru", (), 0)


def test_a_token_line_longer_than_any_event_is_output_without_waiting_for_its_end() -> None:
    parser = EventParser(TOKEN)
    head = b"\x1elrun:" + TOKEN.encode() + b" " + b'{"e":"report","longrepr":"'
    piece = b"x" * 65536
    output = parser.feed(head).output
    fed = len(head)
    while fed <= MAX_EVENT_BYTES + len(head):
        output += parser.feed(piece).output
        fed += len(piece)
    # Everything fed so far is output: the parser holds no more than one event's worth.
    assert len(output) == fed
    assert parser.warnings == 1
    rest = parser.feed(b'x"}\nafter\n' + line(START))
    assert rest.output == b'x"}\nafter\n'
    assert rest.events == (EVENTS[1],)
    assert parser.close().warnings == 0


def test_a_complete_token_line_longer_than_any_event_is_output_and_a_warning() -> None:
    huge = line(report(longrepr="x" * MAX_EVENT_BYTES))
    parsed = parse_log(huge + line(START), TOKEN)
    assert (parsed.output, parsed.events, parsed.warnings) == (huge, (EVENTS[1],), 1)


def test_the_parts_of_a_long_collection_make_one_collected_event() -> None:
    parts = [
        dict(COLLECTED, n=0, nodeids=["a::1", "a::2"], more=True),
        dict(COLLECTED, n=1, nodeids=["b::1"], errors=[{"nodeid": "c.py", "longrepr": "Syntax"}], more=True),
        dict(COLLECTED, n=2, nodeids=[], skipped=[{"nodeid": "d.py", "skip": ["d.py", 1, "no"]}], more=False),
    ]
    parsed = parse_log(b"".join(line(p) for p in parts), TOKEN)
    assert parsed.events == (
        Collected(
            n=2,
            nodeids=("a::1", "a::2", "b::1"),
            errors=(CollectError("c.py", "Syntax"),),
            skipped=(CollectSkip("d.py", SkipInfo("d.py", 1, "no")),),
        ),
    )


def test_the_parts_of_a_collection_may_share_lines_with_other_events() -> None:
    parts = [dict(COLLECTED, n=0, nodeids=["a::1"], more=True), dict(COLLECTED, n=1, nodeids=["b::1"])]
    parsed = parse_log(line([parts[0]]) + line([parts[1], START]), TOKEN)
    assert parsed.events == (Collected(n=1, nodeids=("a::1", "b::1"), errors=(), skipped=()), EVENTS[1])
    assert parsed.warnings == 0


def test_a_void_batch_takes_back_the_collection_parts_it_brought() -> None:
    first = dict(COLLECTED, n=0, nodeids=["a::1"], more=True)
    bad = line([dict(COLLECTED, n=1, nodeids=["b::1"], more=True), report(when="lunch")])
    last = dict(COLLECTED, n=2, nodeids=["c::1"], more=False)
    parsed = parse_log(line(first) + bad + line(last), TOKEN)
    assert parsed.output == bad
    assert parsed.events == (Collected(n=2, nodeids=("a::1", "c::1"), errors=(), skipped=()),)
    assert parsed.warnings == 1


def test_a_collection_whose_last_part_never_came_warns() -> None:
    parsed = parse_log(line(dict(COLLECTED, more=True)), TOKEN)
    assert (parsed.output, parsed.events, parsed.warnings) == (b"", (), 1)


def test_a_skip_and_an_xfail_keep_their_details() -> None:
    skipped = report(outcome="skipped", longrepr="Skipped: no db", skip=["t.py", 7, "Skipped: no db"])
    xfailed = report(outcome="skipped", wasxfail="", start=10.0, stop=10.5)
    parsed = parse_log(line(skipped) + line(xfailed), TOKEN)
    skip, xfail = parsed.events
    assert isinstance(skip, PhaseReport) and isinstance(xfail, PhaseReport)
    assert skip.skip == SkipInfo("t.py", 7, "Skipped: no db")
    assert skip.wasxfail is None
    assert (xfail.wasxfail, xfail.start, xfail.stop) == ("", 10.0, 10.5)


def test_a_compact_report_needs_only_its_phase_and_outcome() -> None:
    compact = {
        "e": "report",
        "n": 3,
        "nodeid": "t.py::a",
        "when": "call",
        "outcome": "passed",
        "duration": 0.5,
    }
    (event,) = parse_log(line(compact), TOKEN).events
    assert isinstance(event, PhaseReport)
    assert (event.location, event.longrepr, event.skip, event.sections, event.keywords) == (
        None,
        None,
        None,
        (),
        (),
    )


@pytest.mark.parametrize("token", ["", "has space", "new\nline", "\x1e"])
def test_a_token_that_could_break_the_line_format_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="event token"):
        EventParser(token)
    with pytest.raises(ValueError, match="event token"):
        reporter_wiring(token)


def test_each_new_token_differs_and_fits_the_format() -> None:
    tokens = {events.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        EventParser(token)


# --- wiring the reporter into a run ------------------------------------------------------------


def test_the_reporter_ships_as_lrun_lrun_reporter_py() -> None:
    path, data = reporter_file()
    assert path == "lrun/lrun_reporter.py"
    assert data == REPORTER_PATH.read_bytes()


def test_the_wiring_loads_the_reporter_from_lrun_with_the_token() -> None:
    wiring = reporter_wiring(TOKEN)
    assert wiring.args == ("-p", "lrun_reporter")
    assert wiring.env == {"PYTHONPATH": "/lrun", "LRUN_EVENT_TOKEN": TOKEN}


def test_the_wiring_keeps_the_images_own_pythonpath() -> None:
    assert reporter_wiring(TOKEN, image_pythonpath="/opt/app").env["PYTHONPATH"] == "/lrun:/opt/app"


# --- the reporter's side of the format -----------------------------------------------------------


@pytest.fixture(scope="module")
def reporter() -> ModuleType:
    """The reporter module, imported without a token (so it stays silent and keeps fd 1 alone)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LRUN_EVENT_TOKEN", raising=False)
        spec = importlib.util.spec_from_file_location("lrun_reporter_under_test", REPORTER_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_the_reporter_and_the_parser_agree_on_the_format(reporter: ModuleType) -> None:
    assert reporter.MAX_EVENT_BYTES == MAX_EVENT_BYTES
    assert reporter.MARKER == events.MARKER
    assert reporter.TOKEN_VARIABLE == events.TOKEN_VARIABLE


def test_the_reporter_parses_as_python_3_8() -> None:
    ast.parse(REPORTER_PATH.read_text(), feature_version=(3, 8))


def test_the_reporter_cuts_long_texts_so_an_event_fits(reporter: ModuleType) -> None:
    longrepr = "first line\n" + "x" * (3 * MAX_EVENT_BYTES) + "\nlast line"
    sections = [["Captured stdout call", "y" * MAX_EVENT_BYTES], ["Captured stderr call", "short"]]
    data = reporter.encode(report(longrepr=longrepr, sections=sections))
    assert len(data) <= MAX_EVENT_BYTES
    parsed = parse_log(b"\x1elrun:" + TOKEN.encode() + b" " + data.encode() + b"\n", TOKEN)
    (event,) = parsed.events
    assert isinstance(event, PhaseReport)
    assert event.longrepr is not None
    assert event.longrepr.startswith("first line\n") and event.longrepr.endswith("\nlast line")
    assert "characters cut]" in event.longrepr
    assert event.sections[1] == ("Captured stderr call", "short")
    assert event.nodeid == "t.py::test_a"


def test_the_reporter_leaves_an_event_that_fits_unchanged(reporter: ModuleType) -> None:
    fields = report(longrepr="é" * 1000)
    assert json.loads(reporter.encode(fields)) == fields


# --- the reporter's batching -------------------------------------------------------------------


@pytest.fixture
def channel(reporter: ModuleType, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Makes reporter Channels writing to a file (it never blocks, unlike a pipe), closed after the test."""
    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    made: list[Any] = []

    def make(flush_s: float = 60.0) -> Any:
        made.append(reporter.Channel(fd, TOKEN, flush_s))
        return made[-1]

    yield make
    for each in made:
        each.close()  # before the fd closes: a Channel left open would write to it at exit
    os.close(fd)


def written(tmp_path: Path) -> bytes:
    return (tmp_path / "stdout").read_bytes()


def event_json(reporter: ModuleType, fields: dict[str, Any]) -> str:
    return str(reporter.encode(fields))


def test_the_reporter_writes_the_events_it_buffered_as_one_line(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path
) -> None:
    sent = [COLLECTED, START, report(), FINISH]
    out = channel()
    for fields in sent:
        out.send(event_json(reporter, fields))
    assert written(tmp_path) == b""  # buffered: the flush period (a minute here) has not passed
    out.close()
    assert written(tmp_path).count(b"\n") == 1
    assert parse_log(written(tmp_path), TOKEN) == Parsed(b"", EVENTS, 0)
    out.send(event_json(reporter, START))
    out.flush()
    assert parse_log(written(tmp_path), TOKEN).events == EVENTS  # closed: nothing more is written


def test_the_reporter_writes_a_buffered_event_within_its_flush_period(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path
) -> None:
    out = channel(reporter.FLUSH_S)
    sent = time.monotonic()
    out.send(event_json(reporter, START))
    while not written(tmp_path) and time.monotonic() - sent < 10:
        time.sleep(0.01)
    # FLUSH_S (0.2 s) in theory; the bound leaves room for a loaded machine.
    assert time.monotonic() - sent < 2
    assert parse_log(written(tmp_path), TOKEN).events == (EVENTS[1],)


def test_the_reporter_starts_a_new_line_before_one_would_outgrow_the_limit(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path
) -> None:
    # Short events (each fits in a line the timer writes) that come faster than the flush period.
    sent = [report(n=n, longrepr="x" * 3000) for n in range(400)]
    out = channel()
    for fields in sent:
        out.send(event_json(reporter, fields))
    out.close()
    lines = written(tmp_path).splitlines()
    assert len(lines) == 2
    assert all(len(raw) <= len(PREFIX) + MAX_EVENT_BYTES for raw in lines)
    parsed = parse_log(written(tmp_path), TOKEN)
    assert parsed.warnings == 0
    assert [e.n for e in parsed.events] == list(range(400))


def test_an_event_too_long_for_a_pipe_to_keep_whole_is_written_at_once(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path
) -> None:
    # The sending thread writes it: a line the timer wrote could be split by pytest's own output.
    out = channel()
    out.send(event_json(reporter, START))
    out.send(event_json(reporter, report(n=2, longrepr="x" * select.PIPE_BUF)))
    parsed = parse_log(written(tmp_path), TOKEN)
    assert [type(e) for e in parsed.events] == [Start, PhaseReport]


def test_the_lines_the_timer_writes_fit_in_one_pipe_write(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path
) -> None:
    out = channel(1.0)
    for n in range(30):
        out.send(event_json(reporter, report(n=n, longrepr="x" * 1000)))
    deadline = time.monotonic() + 10
    while len(parse_log(written(tmp_path), TOKEN).events) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = written(tmp_path).splitlines(keepends=True)
    assert all(len(raw) <= select.PIPE_BUF for raw in lines)
    assert len(lines) >= 8
    assert [e.n for e in parse_log(written(tmp_path), TOKEN).events] == list(range(30))


def test_a_process_forked_from_the_inner_pytest_does_not_write_what_it_inherited(
    reporter: ModuleType, channel: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = channel()
    out.send(event_json(reporter, START))
    with monkeypatch.context() as mp:
        mp.setattr(os, "getpid", lambda: -1)  # as the child of a fork sees it
        out.close()  # what atexit does in that child
    assert written(tmp_path) == b""
    out.close()
    assert parse_log(written(tmp_path), TOKEN).events == (EVENTS[1],)


def test_the_reporter_writes_what_is_buffered_at_exit_and_its_timer_does_not_keep_the_process_alive(
    tmp_path: Path,
) -> None:
    # A Channel that nothing closes: the process still ends, and atexit writes the event.
    script = (
        "import json, lrun_reporter as r\n"
        f"r.Channel(1, {TOKEN!r}, 60.0).send(r.encode(json.loads({json.dumps(json.dumps(START))})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPORTER_PATH.parent)}
    env.pop("LRUN_EVENT_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=60, check=True
    )
    assert parse_log(done.stdout, TOKEN) == Parsed(b"", (EVENTS[1],), 0)


def test_the_junit_xml_the_reporter_sends_is_kept_apart_from_the_events() -> None:
    xml = {"e": "junit", "path": "/lrun/out/junit.xml", "xml": "<testsuites>\u00e9</testsuites>"}
    finish = {"e": "finish", "n": 1, "exitstatus": 0, "counts": {}, "interrupt": None}
    parser = EventParser(TOKEN)
    parsed = parser.feed(b"out\n" + line([xml, finish]))
    assert parsed.output == b"out\n" and [type(e) for e in parsed.events] == [Finished]
    assert parser.junit == JunitXml("/lrun/out/junit.xml", "<testsuites>\u00e9</testsuites>")


def test_a_junit_xml_on_a_malformed_line_is_taken_back_with_it() -> None:
    parser = EventParser(TOKEN)
    xml = {"e": "junit", "path": "/lrun/out/junit.xml", "xml": "<testsuites/>"}
    parsed = parser.feed(line([xml, {"e": "finish"}]))  # the finish lacks its fields: the line is output
    assert parsed.warnings == 1 and parser.junit is None
