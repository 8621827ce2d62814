"""The pure parts of results from events: the pytest command, the events file, the cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun.dispatch import pytest_arguments_at
from pytest_lrun.events import Collected, Event, Finished, PhaseReport, SkipInfo, Start
from pytest_lrun.logs import EventSpool, read_events
from pytest_lrun.report import cases_from_events
from pytest_lrun.store import Run, Status


@pytest.mark.parametrize(
    ("command", "at"),
    [
        (("python3", "-m", "pytest", "-q"), 3),
        (("/usr/bin/python3.12", "-m", "pytest"), 3),
        (("pytest", "-x"), 1),
        (("sh", "-c", "pytest"), None),
        (("python3", "run.py"), None),
        ((), None),
    ],
)
def test_pytest_arguments_at(command: tuple[str, ...], at: int | None) -> None:
    assert pytest_arguments_at(command) == at


def report(nodeid: str, when: str, outcome: str = "passed", **fields: object) -> PhaseReport:
    values: dict[str, object] = {
        "n": 0,
        "nodeid": nodeid,
        "when": when,
        "outcome": outcome,
        "duration": 0.25,
        "location": ("t.py", 3, nodeid.split("::")[-1]),
        "longrepr": None,
        "skip": None,
        "sections": (),
        "wasxfail": None,
        "keywords": (),
        "user_properties": (),
        "start": None,
        "stop": None,
    }
    values.update(fields)
    return PhaseReport(**values)  # type: ignore[arg-type]


def finished_test(nodeid: str, call: str = "passed", **fields: object) -> list[Event]:
    return [
        Start(0, nodeid, ("t.py", 3, nodeid)),
        report(nodeid, "setup"),
        report(nodeid, "call", call, **fields),
        report(nodeid, "teardown", sections=(("Captured stdout call", "hello"),)),
    ]


def test_events_file_round_trip_redacts_secrets(tmp_path: Path) -> None:
    events: list[Event] = [
        Collected(0, ("t.py::a",), (), ()),
        *finished_test("t.py::a", "skipped", skip=SkipInfo("t.py", 4, "no 's3cr\"et'")),
        Finished(5, 0, {"passed": 1}, None),
    ]
    spool = EventSpool(tmp_path / "events.jsonl", secrets=['s3cr"et'])
    spool.write(events)
    spool.close()
    back = read_events(tmp_path / "events.jsonl") or []
    assert back[:3] == events[:3]  # the collection, start and setup, unchanged
    call = back[3]
    assert isinstance(call, PhaseReport) and call.skip == SkipInfo("t.py", 4, "no '***'")
    assert len(read_events(tmp_path / "events.jsonl") or []) == len(events)
    assert read_events(tmp_path / "missing.jsonl") is None


def test_a_timeout_keeps_finished_tests_names_the_running_one_and_skips_the_rest() -> None:
    run = Run(test_dir="d", status=Status.TIMEOUT, error_code="timeout", timeout=8)
    events: list[Event] = [
        Collected(0, ("t.py::a", "t.py::b", "t.py::c"), (), ()),
        *finished_test("t.py::a"),
        Start(5, "t.py::b", ("t.py", 7, "b")),
        report("t.py::b", "setup"),
        Finished(7, 2, {}, "Traceback ... KeyboardInterrupt"),
    ]
    cases, stop_named = cases_from_events(events, run)
    assert [(c.nodeid_hint, c.outcome) for c in cases] == [
        ("t.py::a", "passed"),
        ("t.py::b", "failed"),
        ("t.py::c", "skipped"),
    ]
    assert stop_named
    assert cases[0].duration == 0.75 and cases[0].system_out == "hello"
    assert cases[1].message == "timed out after 8 s while running this test"
    assert "KeyboardInterrupt" in cases[1].text
    assert cases[2].message == "not run: the run was stopped (timeout)"


def test_a_completed_run_reports_each_outcome_as_pytest_does() -> None:
    run = Run(test_dir="d", status=Status.FAILED, error_code="exit_nonzero", exit_code=1)
    events: list[Event] = [
        *finished_test("t.py::f", "failed", longrepr="def test_f():\n>   assert 1 == 2\nE   assert 1 == 2"),
        *finished_test("t.py::x", "skipped", wasxfail="known"),
        *finished_test("t.py::p", "passed", wasxfail=""),
    ]
    cases, stop_named = cases_from_events(events, run)
    assert [(c.nodeid_hint, c.outcome, c.message) for c in cases] == [
        ("t.py::f", "failed", "assert 1 == 2"),
        ("t.py::x", "xfailed", "known"),
        ("t.py::p", "xpassed", ""),
    ]
    assert not stop_named
