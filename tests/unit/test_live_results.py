"""Reports from a run's events (fired into a recording hook), the pytest command, the events file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from live_events import Hooks, finished_test, report

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.select import HostSelection, Selection
from pytest_lrun.report.live import RunReports
from pytest_lrun.run.logs import EventSpool, read_events
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import Collected, CutShort, Event, Finished, PhaseReport, SkipInfo, Start


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


def reports_for(
    *, maxfail: int = 0, selection: Selection | None = None, collectonly: bool = False
) -> tuple[RunReports, Hooks]:
    session = SimpleNamespace(testscollected=0, shouldfail=False, shouldstop=False)
    hooks = Hooks(session, maxfail)
    session.config = SimpleNamespace(
        hook=hooks,
        rootpath=Path("/proj"),
        invocation_params=SimpleNamespace(dir=Path("/proj")),
        option=SimpleNamespace(collectonly=collectonly),
    )
    machine = Machine(name="m1", host="unix:///x.sock", source="pyproject")
    spec = RunSpec(test_dir=Path("/proj/suite"), machine=machine, image="img", command=("pytest",))
    reports = RunReports(
        cast(pytest.Session, session),
        spec,
        suffix="",
        selection=HostSelection(selection) if selection is not None else None,
    )
    reports.prepared(Run(id="r1", machine="m1", test_dir="/proj/suite"), "created")
    return reports, hooks


def test_reports_fire_as_events_arrive_with_the_inner_outcome_and_duration() -> None:
    reports, hooks = reports_for()
    reports.feed([Collected(0, ("t.py::a", "t.py::b"), (), ())])
    assert reports.session.testscollected == 2 and hooks.calls == []
    reports.feed(finished_test("t.py::a", n=1))
    assert [kind for kind, _ in hooks.calls] == ["start", "report", "report", "report", "finish"]
    call = hooks.reports()[1]
    assert (call.nodeid, call.when, call.outcome, call.duration) == ("suite/t.py::a", "call", "passed", 0.25)
    assert call.location == ("suite/t.py", 3, "a")
    assert ("lrun_run_id", "r1") in call.user_properties
    assert hooks.reports()[2].sections == [("Captured stdout call", "hello")]


def test_a_failure_carries_its_text_and_the_line_the_short_summary_shows() -> None:
    reports, hooks = reports_for()
    text = "def test_f():\n>   assert 1 == 2\nE   assert 1 == 2"
    reports.feed(finished_test("t.py::f", "failed", longrepr=text))
    (failed,) = hooks.failed()
    assert failed.longrepr.reprcrash.message == "assert 1 == 2"  # type: ignore[union-attr]
    assert failed.longreprtext.startswith(text) and "[lrun] run r1 on m1" in failed.longreprtext


def test_skips_and_xfails_report_as_pytest_does() -> None:
    reports, hooks = reports_for()
    reports.feed(
        [
            *finished_test("t.py::s", "skipped", skip=SkipInfo("/lrun/work/t.py", 4, "no db")),
            *finished_test("t.py::x", "skipped", wasxfail="known", n=10),
            *finished_test("t.py::p", "passed", wasxfail="", n=20),
        ]
    )
    skip, xfail, xpass = (r for r in hooks.reports() if r.when == "call")
    assert skip.longrepr == ("/proj/suite/t.py", 4, "no db")  # the container's path, as the host has it
    assert xfail.skipped and xfail.wasxfail == "known"  # type: ignore[attr-defined]
    assert xpass.passed and xpass.wasxfail == ""  # type: ignore[attr-defined]


def test_a_timeout_keeps_finished_tests_names_the_running_one_and_skips_the_rest() -> None:
    reports, hooks = reports_for()
    run = Run(
        id="r1", machine="m1", test_dir="/proj/suite", status=Status.TIMEOUT, error_code="timeout", timeout=8
    )
    reports.feed(
        [
            Collected(0, ("t.py::a", "t.py::b", "t.py::c"), (), ()),
            *finished_test("t.py::a", n=1),
            Start(5, "t.py::b", ("t.py", 7, "b")),
            report("t.py::b", "setup", n=6),
        ]
    )
    cut = CutShort("t.py::b", 7.5, "printed before the hang\n", "")
    trace = "t.py:9: in b\n    time.sleep(60)\nE   KeyboardInterrupt"
    reports.finish(RunResult(run, "created", None, [Finished(7, 2, {}, trace, cut)]))
    assert [o for o in hooks.outcomes() if o[1] == "call" or o[2] != "passed"] == [
        ("suite/t.py::a", "call", "passed"),
        ("suite/t.py::b", "call", "failed"),
        ("suite/t.py::c", "setup", "skipped"),
        ("suite::lrun[m1]", "setup", "failed"),  # the run timed out: an error of its own, not a test
    ]
    hung = hooks.failed()[0]
    assert hung.longrepr.reprcrash.message == "timed out after 8 s while running this test"  # type: ignore[union-attr]
    # The test's own frames on the host path, what it printed, and how long it really ran.
    assert "suite/t.py:9: in b" in hung.longreprtext and "_pytest" not in hung.longreprtext
    assert hung.capstdout == "printed before the hang\n" and hung.duration == 7.5
    skipped = next(r for r in hooks.reports() if r.skipped)
    assert skipped.longrepr == ("/proj/suite/t.py", None, "not run: the run was stopped (timeout)")


def test_the_end_replays_only_what_did_not_come_live() -> None:
    events: list[Event] = [Collected(0, ("t.py::a", "t.py::b"), (), ()), *finished_test("t.py::a", n=1)]
    events += finished_test("t.py::b", n=5)
    run = Run(id="r1", machine="m1", test_dir="/proj/suite", status=Status.COMPLETED)
    live, live_hooks = reports_for()
    live.feed(events[:5])  # the follow stream ended early: b's events came only with the stored log
    live.finish(RunResult(run, "created", None, events))
    cached, cached_hooks = reports_for()
    cached.finish(RunResult(run, "cached", None, events))
    assert live_hooks.outcomes() == cached_hooks.outcomes()
    assert len(live_hooks.outcomes()) == 9 and live.session.testscollected == 2
    # The run's own report passes, and is marked so the terminal counts it as no test.
    run_reports = live_hooks.reports()[-3:]
    assert all(r.passed and r.lrun_run for r in run_reports)  # type: ignore[attr-defined]


def test_once_the_session_stops_nothing_more_is_reported() -> None:
    reports, hooks = reports_for(maxfail=1)
    reports.feed([*finished_test("t.py::a", "failed", longrepr="E   boom"), *finished_test("t.py::b", n=10)])
    # The failing call stops the session (-x); the test still reports its teardown, as locally
    # (--junitxml and pytest-html write a test there); b, not started, reports nothing.
    assert [o[:2] for o in hooks.outcomes()] == [("suite/t.py::a", w) for w in ("setup", "call", "teardown")]
    run = Run(
        id="r1", machine="m1", test_dir="/proj/suite", status=Status.INTERRUPTED, error_code="session_stopped"
    )
    reports.finish(RunResult(run, "created", None, []))
    assert len(hooks.outcomes()) == 3


def test_host_selection_reports_only_the_selected_tests() -> None:
    reports, hooks = reports_for(selection=Selection(keyword="b and not slow"))
    reports.feed([Collected(0, ("t.py::a", "t.py::b"), (), ())])
    reports.feed(finished_test("t.py::a", n=1, keywords=("a", "t.py")))
    reports.feed(finished_test("t.py::b", n=5, keywords=("b", "t.py")))
    assert {o[0] for o in hooks.outcomes()} == {"suite/t.py::b"}
    assert reports.session.testscollected == 1


def test_a_run_without_events_is_one_report_of_its_own() -> None:
    reports, hooks = reports_for()
    run = Run(
        id="r1",
        machine="m1",
        test_dir="/proj/suite",
        status=Status.FAILED,
        exit_code=3,
        error_code="exit_nonzero",
    )
    reports.finish(RunResult(run, "created"))
    # No inner tests: the command was the test, and it failed.
    assert hooks.outcomes() == [
        ("suite::lrun[m1]", w, o)
        for w, o in (("setup", "passed"), ("call", "failed"), ("teardown", "passed"))
    ]
    assert "exit code: 3" in hooks.failed()[0].longreprtext
    assert reports.session.testscollected == 1


def test_a_run_that_failed_for_its_own_reasons_is_an_error_beside_its_inner_results() -> None:
    reports, hooks = reports_for()
    reports.feed([Collected(0, ("t.py::a",), (), ()), *finished_test("t.py::a", n=1)])
    run = Run(
        id="r1", machine="m1", test_dir="/proj/suite", status=Status.FAILED, error_code="unsafe_archive"
    )
    reports.finish(RunResult(run, "created"))
    errors = [("suite::lrun[m1]", "setup", "failed"), ("suite::lrun[m1]", "teardown", "passed")]
    assert hooks.outcomes()[-2:] == errors
    assert "unsafe_archive" in hooks.failed()[0].longreprtext
    assert reports.session.testscollected == 2  # the inner test, and the error


def test_a_compact_report_takes_its_location_from_the_start_and_keywords_from_the_first_report() -> None:
    reports, hooks = reports_for()
    start, setup, call, teardown = finished_test("t.py::a", keywords=("a", "slow"))
    compact_call = dataclasses.replace(call, location=None, keywords=())  # type: ignore[type-var]
    compact_teardown = dataclasses.replace(teardown, location=None, keywords=())  # type: ignore[type-var]
    reports.feed([start, setup, compact_call, compact_teardown])
    fired = hooks.reports()
    assert [r.location for r in fired][1:] == [("suite/t.py", 3, "t.py::a")] * 2  # the start's
    assert all({"a", "slow"} <= set(r.keywords) for r in fired)


def test_a_retried_attempt_counts_its_tests_once() -> None:
    reports, _hooks = reports_for()
    reports.feed([Collected(0, ("t.py::a", "t.py::b"), (), ())])
    reports.retried(Run(id="r0", machine="m1", test_dir="/proj/suite", error_code="container_gone"))
    reports.feed([Collected(0, ("t.py::a", "t.py::b"), (), ())])
    assert reports.session.testscollected == 2 and reports.progress.collected == 2


def test_a_failure_the_host_selection_leaves_out_still_explains_the_inner_exit() -> None:
    reports, hooks = reports_for(selection=Selection(keyword="b"))
    reports.feed([Collected(0, ("t.py::a", "t.py::b"), (), ())])
    reports.feed(finished_test("t.py::a", "failed", n=1, keywords=("a",), longrepr="E   boom"))
    reports.feed(finished_test("t.py::b", n=5, keywords=("b",)))
    run = Run(
        id="r1",
        machine="m1",
        test_dir="/proj/suite",
        status=Status.FAILED,
        exit_code=1,
        error_code="exit_nonzero",
    )
    reports.finish(RunResult(run, "created"))
    assert not hooks.failed()  # a is not selected; the run did not fail for its own reasons
