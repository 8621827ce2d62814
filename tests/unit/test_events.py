"""The event line format: the host's parser (pytest_lrun.events) and the reporter's encoding."""

from __future__ import annotations

import ast
import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_lrun import events
from pytest_lrun.events import (
    MAX_EVENT_BYTES,
    Collected,
    CollectError,
    CollectSkip,
    EventParser,
    Finished,
    PhaseReport,
    SkipInfo,
    Start,
    parse_log,
    reporter_file,
    reporter_wiring,
)

TOKEN = "5eb1e2c0ffee"
REPORTER_PATH = Path(events.__file__).parent / "inner" / "lrun_reporter.py"


def line(fields: dict[str, Any], token: str = TOKEN) -> bytes:
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


def test_a_whole_log_splits_into_the_human_log_and_typed_events() -> None:
    parsed = parse_log(STREAM, TOKEN)
    assert parsed.output == HUMAN
    assert parsed.events == EVENTS
    assert parsed.warnings == 0


@pytest.mark.parametrize("seed", range(20))
def test_chunks_split_anywhere_give_the_same_result(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
    assert feed_in_pieces(STREAM, cuts) == (HUMAN, list(EVENTS), 0)


def test_byte_by_byte_feeding_gives_the_same_result() -> None:
    assert feed_in_pieces(STREAM, list(range(1, len(STREAM)))) == (HUMAN, list(EVENTS), 0)


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
        json.dumps({k: v for k, v in report().items() if k != "nodeid"}).encode(),
        json.dumps(dict(FINISH, counts={"passed": True})).encode(),
        json.dumps(dict(COLLECTED, more="no")).encode(),
        json.dumps(dict(COLLECTED, skipped=[{"nodeid": "t.py", "skip": None}])).encode(),
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
