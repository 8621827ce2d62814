"""Inner events and a recording stand-in for pytest's hooks, for the tests of live reports
(importable as ``live_events``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_lrun.wire.events import Event, PhaseReport, Start


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


def finished_test(nodeid: str, call: str = "passed", *, n: int = 1, **fields: object) -> list[Event]:
    """A test's events from its start to its teardown, numbered from ``n``."""
    keywords = fields.pop("keywords", ())
    return [
        Start(n, nodeid, ("t.py", 3, nodeid)),
        report(nodeid, "setup", n=n + 1, keywords=keywords),
        report(nodeid, "call", call, n=n + 2, keywords=keywords, **fields),
        report(nodeid, "teardown", n=n + 3, keywords=keywords, sections=(("Captured stdout call", "hello"),)),
    ]


class Hooks:
    """Stands in for ``config.hook``: records what the reports fire, and stops like pytest's -x."""

    def __init__(self, session: SimpleNamespace, maxfail: int = 0) -> None:
        self.session = session
        self.maxfail = maxfail
        self.calls: list[tuple[str, Any]] = []

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.calls.append(("start", nodeid))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.calls.append(("report", report))
        if report.failed and self.maxfail and len(self.failed()) >= self.maxfail:
            self.session.shouldfail = f"stopping after {self.maxfail} failures"

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.calls.append(("finish", nodeid))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.calls.append(("collect", report))

    def reports(self) -> list[pytest.TestReport]:
        return [call for kind, call in self.calls if kind == "report"]

    def failed(self) -> list[pytest.TestReport]:
        return [report for report in self.reports() if report.failed]

    def outcomes(self) -> list[tuple[str, str, str]]:
        """(node id, when, outcome) of each report fired, in order."""
        return [(r.nodeid, r.when or "", r.outcome) for r in self.reports()]
