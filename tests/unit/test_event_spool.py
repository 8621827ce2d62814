"""The events file's cap and redaction (``pytest_lrun.run.logs.EventSpool``, issue 9).

The host reports a run from its ``events.jsonl``; the file is bounded like the
log, but what must survive is every test's outcome, not the bytes of its texts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pytest_lrun.run.logs import (
    HARD_LIMIT_FACTOR,
    REDUCED_TEXT_CHARS,
    EventSpool,
    read_event_file,
    read_events,
)
from pytest_lrun.wire.events import Collected, Event, Finished, PhaseReport, Start

REPORT = PhaseReport(
    n=0,
    nodeid="",
    when="setup",
    outcome="passed",
    duration=0.5,
    location=("t.py", 3, "test"),
    longrepr=None,
    skip=None,
    sections=(),
    wasxfail=None,
    keywords=("t.py",),
    user_properties=(),
    start=None,
    stop=None,
)


def a_test(
    nodeid: str, outcome: str = "passed", longrepr: str | None = None, output: str = ""
) -> list[Event]:
    """One test's events as the reporter sends them: start, then setup, call and teardown reports."""
    call = dataclasses.replace(
        REPORT,
        nodeid=nodeid,
        when="call",
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=longrepr,
        sections=(("Captured stdout call", output),) if output else (),
    )
    return [
        Start(0, nodeid, ("t.py", 3, nodeid)),
        dataclasses.replace(REPORT, nodeid=nodeid),
        call,
        dataclasses.replace(REPORT, nodeid=nodeid, when="teardown"),
    ]


def outcomes(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.nodeid, e.when, e.outcome) for e in events if isinstance(e, PhaseReport)]


def spooled(path: Path, events: list[Event], **options: object) -> EventSpool:
    spool = EventSpool(path, **options)  # type: ignore[arg-type]
    spool.write(events)
    spool.close()
    return spool


def test_past_the_cap_every_outcome_survives_and_texts_are_cut(tmp_path: Path) -> None:
    trace = "def test_f():\n" + "x" * 30_000 + "\nE   assert 1 == 2"
    tests = [a_test(f"t.py::f{i}", "failed" if i % 2 else "passed", trace, "o" * 10_000) for i in range(40)]
    events: list[Event] = [
        Collected(0, tuple(f"t.py::f{i}" for i in range(40)), (), ()),
        *(event for test in tests for event in test),
        Finished(1, 1, {"passed": 20, "failed": 20}, None),
    ]
    path = tmp_path / "events.jsonl"
    spool = spooled(path, events, max_bytes=100_000)

    back = read_events(path) or []
    assert spool.dropped == 0 and len(back) == len(events)
    assert outcomes(back) == outcomes(events)  # every phase of every test, in order
    assert back[0] == events[0] and back[-1] == events[-1]  # collection and finish whole
    calls = [e for e in back if isinstance(e, PhaseReport) and e.when == "call"]
    assert calls[0].longrepr == trace and calls[0].sections  # under the cap: whole
    for call in calls[2:]:  # past it: no captured output, the trace's head and tail around a marker
        assert call.sections == () and call.longrepr is not None
        assert len(call.longrepr) < REDUCED_TEXT_CHARS + 100
        assert call.longrepr.startswith("def test_f():\nxxx") and call.longrepr.endswith("E   assert 1 == 2")
        assert "characters cut: the events file passed its cap" in call.longrepr
    assert path.stat().st_size < HARD_LIMIT_FACTOR * 100_000


def test_past_the_hard_limit_tests_are_left_out_whole_and_finish_is_written(tmp_path: Path) -> None:
    nodeids = [f"t.py::test_{i}" for i in range(200)]
    finish = Finished(9, 0, {"passed": 200}, None)
    events: list[Event] = [
        Collected(0, tuple(nodeids), (), ()),
        *(event for nodeid in nodeids for event in a_test(nodeid)),
        finish,
    ]
    path = tmp_path / "events.jsonl"
    spool = EventSpool(path, max_bytes=2_000)
    for event in events:  # one at a time, as the engine streams them
        spool.write([event])
    spool.close()

    found = read_event_file(path)
    assert found is not None
    kept = [e.nodeid for e in found.events if isinstance(e, Start)]
    assert 0 < len(kept) < len(nodeids) and kept == nodeids[: len(kept)]
    # Never half a test: a kept start has its three reports, a test left out has none.
    assert outcomes(found.events) == [
        (n, when, "passed") for n in kept for when in ("setup", "call", "teardown")
    ]
    assert found.events[0] == events[0] and found.events[-1] == finish
    assert spool.dropped == found.dropped == 4 * (len(nodeids) - len(kept))
    one_test = sum(len(json.dumps(dataclasses.asdict(e))) + 20 for e in a_test(nodeids[-1]))
    collected_and_finish = len(json.dumps(dataclasses.asdict(events[0]))) + 200
    assert path.stat().st_size <= HARD_LIMIT_FACTOR * 2_000 + one_test + collected_and_finish


def test_appending_continues_the_cap_and_the_counts_add_up(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = spooled(path, [e for i in range(60) for e in a_test(f"t.py::a{i}")], max_bytes=2_000)
    assert first.dropped > 0
    # A reattach appends: the file is already past the hard limit, so no new test fits.
    second = spooled(path, [*a_test("t.py::late"), Finished(1, 0, {}, None)], max_bytes=2_000)
    assert second.dropped == 4
    found = read_event_file(path)
    assert found is not None and found.dropped == first.dropped + 4
    assert "t.py::late" not in {e.nodeid for e in found.events if isinstance(e, Start)}
    assert isinstance(found.events[-1], Finished)
    # A fresh spool (the log replayed whole) starts the count and the file anew.
    fresh = spooled(path, a_test("t.py::again"), max_bytes=2_000, fresh=True)
    assert fresh.dropped == 0
    again = read_event_file(path)
    assert again is not None and again.dropped == 0
    assert again.events == a_test("t.py::again")


def test_secrets_are_hidden_in_every_text_and_never_break_the_file(tmp_path: Path) -> None:
    secret = 'T0p"SecretValue'
    # The secret straddles where the cut falls: redacting after the cut would leave its head.
    trace = "h" * (REDUCED_TEXT_CHARS // 2 - 4) + secret + "t" * 20_000
    events: list[Event] = [
        Collected(0, ("t.py::a", "t.py::b"), (), ()),
        *a_test("t.py::a", "failed", f"stop: {secret}", f"printed {secret}"),
        *a_test("t.py::b", "failed", trace),
        Finished(1, 1, {"failed": 2}, None),
    ]
    path = tmp_path / "events.jsonl"
    # "stop" and "call" are also a field name and a phase: only strings' contents are redacted.
    spooled(path, events, max_bytes=3_000, secrets=[secret, "stop", "call"])

    data = path.read_bytes()
    assert b"T0p" not in data and b"Secret" not in data
    back = read_events(path) or []
    assert outcomes(back) == outcomes(events)
    first = next(e for e in back if isinstance(e, PhaseReport) and e.when == "call")
    assert (first.longrepr, first.sections) == ("***: ***", (("Captured stdout ***", "printed ***"),))
    assert isinstance(back[-1], Finished) and back[-1].counts == {"failed": 2}


def test_a_file_written_before_the_cap_reads_as_it_did(tmp_path: Path) -> None:
    # Lines as the spool wrote them before it had a cap, then one cut short by a crash.
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"e": "collected", "n": 0, "nodeids": ["t.py::a"], "errors": [], "skipped": []}\n'
        '{"e": "start", "n": 1, "nodeid": "t.py::a", "location": ["t.py", 3, "test_a"]}\n'
        '{"e": "report", "n": 2, "nodeid": "t.py::a", "when": "setup", "outcome": "passed", '
        '"duration": 0.5, "location": ["t.py", 3, "test_a"], "longrepr": null, "skip": null, '
        '"sections": [["Captured log setup", "hi"]], "wasxfail": null, "keywords": ["a"], '
        '"user_properties": [], "start": 1.0, "stop": 1.5}\n'
        '{"e": "report", "n": 3, "nodeid": "t.py::a", "wh'
    )
    found = read_event_file(path)
    assert found is not None and found.dropped == 0
    assert [type(e).__name__ for e in found.events] == ["Collected", "Start", "PhaseReport"]
    report = found.events[2]
    assert isinstance(report, PhaseReport) and report.sections == (("Captured log setup", "hi"),)
    assert read_event_file(tmp_path / "missing.jsonl") is None
