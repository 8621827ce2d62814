"""Flaky inner tests: which reruns happen, and each test reported once with its final outcome."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from _pytest.junitxml import LogXML, xml_key
from live_events import Hooks, finished_test

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.quarantine import read_quarantine_file
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.report.flaky import Quarantine, flaky_status, is_flaky
from pytest_lrun.report.live import RunReports
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.session.reruns import Reruns, failed_by_its_tests, failed_inner
from pytest_lrun.store import Run, Status, file_outcomes
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.outcomes import InnerOutcome
from pytest_lrun.wire.events import Collected, Event, Finished

MACHINE = Machine(name="m1", host="unix:///x.sock", source="pyproject")
SPEC = RunSpec(test_dir=Path("/proj/suite"), machine=MACHINE, image="img", command=("pytest",))


def run(run_id: str, *, exit_code: int = 1, retry_of: str | None = None, **fields: Any) -> Run:
    status = Status.COMPLETED if exit_code == 0 else Status.FAILED
    error = None if exit_code == 0 else "exit_nonzero"
    values: dict[str, Any] = {"status": status, "exit_code": exit_code, "error_code": error, **fields}
    return Run(id=run_id, machine="m1", test_dir="/proj/suite", retry_of=retry_of, **values)


def attempt(*tests: tuple[str, str]) -> list[Event]:
    """An attempt's events: its collection, then each (node id, call outcome) to its teardown."""
    events: list[Event] = [Collected(0, tuple(nodeid for nodeid, _ in tests), (), ())]
    for nodeid, outcome in tests:
        longrepr = f"E   assert 0 ({nodeid} failed)" if outcome == "failed" else None
        events += finished_test(nodeid, outcome, n=len(events), longrepr=longrepr)
    events.append(Finished(len(events), 0, {}, None))
    return events


class JunitHooks(Hooks):
    """The recording hooks, with pytest's own JUnit XML writer behind them."""

    def __init__(self, session: SimpleNamespace, xml: LogXML) -> None:
        super().__init__(session, maxfail=1)
        self.xml = xml

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        super().pytest_runtest_logreport(report)
        self.xml.pytest_runtest_logreport(report)


def flaky_reports(
    tmp_path: Path, attempts: int, quarantine: Quarantine | None = None
) -> tuple[RunReports, JunitHooks, LogXML]:
    """A job's reports under ``--lrun-flaky-attempts=attempts`` and ``-x``, writing a JUnit XML."""
    session = SimpleNamespace(testscollected=0, shouldfail=False, shouldstop=False)
    xml = LogXML(str(tmp_path / "junit.xml"), None)
    xml.pytest_sessionstart()
    hooks = JunitHooks(session, xml)
    stash = pytest.Stash()
    stash[xml_key] = xml
    session.config = SimpleNamespace(
        hook=hooks,
        rootpath=Path("/proj"),
        invocation_params=SimpleNamespace(dir=Path("/proj")),
        option=SimpleNamespace(collectonly=False),
        stash=stash,
    )
    reports = RunReports(
        cast(pytest.Session, session), SPEC, suffix="", flaky_attempts=attempts, quarantine=quarantine
    )
    return reports, hooks, xml


def test_a_test_that_fails_then_passes_is_reported_once_passed_and_flaky(tmp_path: Path) -> None:
    reports, hooks, xml = flaky_reports(tmp_path, attempts=3)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::a", "passed"), ("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    assert first.events is not None
    reports.feed(first.events)
    # a went out as it ended; b's failure is held back, so -x did not stop the session.
    assert {nodeid for nodeid, _, _ in hooks.outcomes()} == {"suite/t.py::a"}
    assert not reports.session.shouldfail
    reports.rerun(first, 2)
    second = RunResult(run("r2", exit_code=0, retry_of="r1"), "created", None, attempt(("t.py::b", "passed")))
    reports.prepared(second.run, "created")
    reports.finish(second)
    b = [(when, outcome) for nodeid, when, outcome in hooks.outcomes() if nodeid == "suite/t.py::b"]
    assert b == [("setup", "passed"), ("call", "passed"), ("teardown", "passed")]
    assert [call for kind, call in hooks.calls if kind == "start"].count("suite/t.py::b") == 1
    assert reports.session.testscollected == 2 and not hooks.failed()
    call = next(r for r in hooks.reports() if r.nodeid == "suite/t.py::b" and r.when == "call")
    assert is_flaky(call) and flaky_status(call) == ("flaky", "f", ("FLAKY", {"yellow": True}))
    assert ("lrun_test_attempts", 2) in call.user_properties
    assert ("lrun_test_attempt_1", "failed in run r1: assert 0 (t.py::b failed)") in call.user_properties
    (flaky,) = reports.gate.flaky
    assert flaky.line() == "passed on attempt 2 of 3; attempt 1 failed in run r1: assert 0 (t.py::b failed)"
    xml.pytest_sessionfinish()
    case = ET.parse(tmp_path / "junit.xml").find(".//testcase[@name='b']")
    assert case is not None and case.find("failure") is None
    element = case.find("flakyFailure")
    assert element is not None and element.get("message") == "assert 0 (t.py::b failed)"
    assert "t.py::b failed" in (element.findtext("stackTrace") or "")


def test_a_test_that_fails_every_attempt_fails_once_with_every_attempts_text(tmp_path: Path) -> None:
    reports, hooks, xml = flaky_reports(tmp_path, attempts=2)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    reports.rerun(first, 2)
    second = RunResult(run("r2", retry_of="r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(second.run, "created")
    reports.finish(second)
    (failed,) = hooks.failed()
    assert failed.nodeid == "suite/t.py::b" and not is_flaky(failed)
    assert "run r2 on m1" in failed.longreprtext  # its own failure, from the last run
    assert "[lrun] attempt 1 (run r1) failed too" in failed.longreprtext
    assert ("lrun_test_attempts", 2) in failed.user_properties
    xml.pytest_sessionfinish()
    case = ET.parse(tmp_path / "junit.xml").find(".//testcase[@name='b']")
    assert case is not None and case.find("failure") is not None
    assert [e.get("message") for e in case.findall("rerunFailure")] == ["assert 0 (t.py::b failed)"]


def test_a_held_failure_the_rerun_never_reports_goes_out_as_it_failed(tmp_path: Path) -> None:
    reports, hooks, _xml = flaky_reports(tmp_path, attempts=3)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    reports.rerun(first, 2)
    gone = run("r2", exit_code=137, retry_of="r1", status=Status.FAILED, error_code="container_gone")
    reports.prepared(gone, "created")
    reports.finish(RunResult(gone, "created", None, []))
    failed = [r.nodeid for r in hooks.failed()]
    assert failed[0] == "suite/t.py::b" and "run r1 on m1" in hooks.failed()[0].longreprtext


def test_a_rerun_that_skips_a_held_test_leaves_it_failed_not_flaky(tmp_path: Path) -> None:
    reports, hooks, _xml = flaky_reports(tmp_path, attempts=3)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    reports.rerun(first, 2)
    stopped = run("r2", retry_of="r1", status=Status.TIMEOUT, error_code="timeout", timeout=5)
    reports.prepared(stopped, "created")
    reports.finish(RunResult(stopped, "created", None, [Collected(0, ("t.py::b",), (), ())]))
    assert not reports.gate.flaky
    b = [(when, outcome) for nodeid, when, outcome in hooks.outcomes() if nodeid == "suite/t.py::b"]
    assert b == [("setup", "passed"), ("call", "failed"), ("teardown", "passed")]  # attempt 1's, once


def test_without_reruns_every_report_goes_out_at_once(tmp_path: Path) -> None:
    reports, hooks, _xml = flaky_reports(tmp_path, attempts=1)
    reports.prepared(run("r1"), "created")
    reports.feed(attempt(("t.py::b", "failed")))
    assert [o for o in hooks.outcomes() if o[2] == "failed"] == [("suite/t.py::b", "call", "failed")]
    assert reports.session.shouldfail  # -x stops at once, as before


def test_only_a_run_that_failed_by_its_tests_reruns_them() -> None:
    events = attempt(("t.py::a", "passed"), ("t.py::b", "failed"), ("t.py::c", "failed"))
    failed = RunResult(run("r1"), "created", None, events)
    assert failed_inner(failed) == ("t.py::b", "t.py::c")
    assert failed_by_its_tests(failed)
    timeout = run("r1", status=Status.TIMEOUT, error_code="timeout")
    collection_error = run("r1", exit_code=2)
    for ended in (timeout, collection_error):
        assert not failed_by_its_tests(RunResult(ended, "created", None, events))
    asked: list[tuple[RunSpec, tuple[str, ...], int]] = []

    def rerun_spec(spec: RunSpec, nodeids: Any, attempt: int) -> RunSpec:
        asked.append((spec, tuple(nodeids), attempt))
        return SPEC

    reruns = Reruns(3, rerun_spec)
    assert reruns.next(SPEC, failed, 1) == (SPEC, ("t.py::b", "t.py::c"))
    assert reruns.next(SPEC, failed, 3) is None  # the attempts are spent
    assert reruns.next(SPEC, RunResult(run("r2", exit_code=0), "created", None, []), 2) is None
    assert asked == [(SPEC, ("t.py::b", "t.py::c"), 2)]


DAY = 1764547200.0  # 2025-12-01T00:00:00Z


def test_a_quarantined_failure_is_an_xfail_that_fails_nothing(tmp_path: Path) -> None:
    quarantine = Quarantine({"suite/t.py::b": DAY})
    reports, hooks, xml = flaky_reports(tmp_path, attempts=1, quarantine=quarantine)
    reports.prepared(run("r1"), "created")
    reports.feed(attempt(("t.py::b", "failed"), ("t.py::a", "failed")))
    # b ran as usual, and its failure is an xfail with why (-x does not stop on it); a fails.
    assert [r.nodeid for r in hooks.failed()] == ["suite/t.py::a"]
    (b,) = [r for r in hooks.reports() if r.nodeid == "suite/t.py::b" and r.when == "call"]
    assert b.skipped and b.wasxfail == "quarantined: flaky since 2025-12-01"  # type: ignore[attr-defined]
    assert reports.gate.quarantined == {"suite/t.py::b": "quarantined: flaky since 2025-12-01"}
    xml.pytest_sessionfinish()
    case = ET.parse(tmp_path / "junit.xml").find(".//testcase[@name='b']")
    assert case is not None and case.find("failure") is None and case.find("skipped") is not None


def test_a_quarantined_test_is_rerun_and_turns_xfail_only_after_its_last_attempt(tmp_path: Path) -> None:
    quarantine = Quarantine({"suite/t.py::b": DAY})
    reports, hooks, _xml = flaky_reports(tmp_path, attempts=2, quarantine=quarantine)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    reports.rerun(first, 2)
    assert hooks.reports() == [] and reports.gate.quarantined == {}
    second = RunResult(run("r2", retry_of="r1"), "created", None, attempt(("t.py::b", "failed")))
    reports.prepared(second.run, "created")
    reports.finish(second)
    (call,) = [r for r in hooks.reports() if r.nodeid == "suite/t.py::b" and r.when == "call"]
    assert call.skipped and "attempt 1 (run r1) failed too" in call.longreprtext
    assert not hooks.failed()


def test_a_quarantine_file_lists_node_ids_with_their_dates(tmp_path: Path) -> None:
    listed = tmp_path / "quarantine.txt"
    listed.write_text("# flaky on the fleet\nsuite/t.py::a 2025-12-01\n\nsuite/t.py::b[x y]  # no date\n")
    assert read_quarantine_file(listed) == {
        "suite/t.py::a": DAY,
        "suite/t.py::b[x y]": listed.stat().st_mtime,
    }
    listed.write_text("suite/t.py::a 2025-13-45\n")
    with pytest.raises(ConfigError, match="not a date"):
        read_quarantine_file(listed)
    with pytest.raises(ConfigError, match="cannot read"):
        read_quarantine_file(tmp_path / "missing.txt")


def test_the_file_stores_gc_keeps_outcomes_written_after_it_listed_the_runs(tmp_path: Path) -> None:
    """A run that ended while gc ran has outcomes under a key gc did not see: they stay."""
    store = FileStore(tmp_path / "state", durable=False)
    store.save_outcomes([InnerOutcome("k-new", "suite", "t.py::a", "r1", "m1", "passed", 1.0)])
    assert file_outcomes.drop_stale(store, set(), before=time.time() - 60) == 0
    assert [o.run_id for o in store.outcomes("k-new")] == ["r1"]
    assert file_outcomes.drop_stale(store, {"k-new"}, before=time.time() + 60) == 0  # a run has it
    assert file_outcomes.drop_stale(store, set(), before=time.time() + 60) == 1
    assert store.outcomes("k-new") == []


def test_a_stopped_session_reports_a_held_failure_once_as_it_failed_saying_why_it_was_not_rerun(
    tmp_path: Path,
) -> None:
    """-x stopped the session (another job's failure) before this job's rerun: b ran and failed,
    and a stopped session reports what ran, as pytest does -- once, failed, with why no rerun."""
    reports, hooks, xml = flaky_reports(tmp_path, attempts=3)
    first = RunResult(run("r1"), "created", None, attempt(("t.py::a", "passed"), ("t.py::b", "failed")))
    reports.prepared(first.run, "created")
    assert first.events is not None
    reports.feed(first.events)
    assert not hooks.failed()  # held back for attempt 2
    reports.session.shouldfail = "stopping after 1 failures"  # another job's test failed under -x
    reports.finish(first)  # the job ends without its rerun: the session starts nothing new
    b = [(when, outcome) for nodeid, when, outcome in hooks.outcomes() if nodeid == "suite/t.py::b"]
    assert b == [("setup", "passed"), ("call", "failed"), ("teardown", "passed")]
    (failed,) = hooks.failed()
    assert "t.py::b failed" in failed.longreprtext
    assert "[lrun] not run again: the session stopped (-x, --maxfail) after attempt 1 of 3" in (
        failed.longreprtext
    )
    assert ("lrun_test_attempts", 1) in failed.user_properties and not reports.gate.flaky
    xml.pytest_sessionfinish()
    case = ET.parse(tmp_path / "junit.xml").find(".//testcase[@name='b']")
    assert case is not None and len(case.findall("failure")) == 1 and case.find("rerunFailure") is None
