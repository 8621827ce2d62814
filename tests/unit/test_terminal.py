"""The terminal's failure summary, fed by a dispatched suite's many reports."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pytest_lrun.session.terminal import index_teardown_reports


class Reporter:
    """The part of pytest's terminal reporter the failure summary uses to find teardowns."""

    def __init__(self, reports: list[Any]) -> None:
        self.reports = reports
        self.scans = 0

    def getreports(self, name: str) -> list[Any]:
        self.scans += 1
        return self.reports if name == "" else []

    def _get_teardown_reports(self, node_id: Any) -> list[Any]:
        return [r for r in self.getreports("") if r.when == "teardown" and r.nodeid == str(node_id)]


class NodeId:
    """pytest 9 passes a structured node id whose str is the node id."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def test_each_failures_teardowns_are_found_as_pytest_finds_them_in_one_scan() -> None:
    reports = [
        SimpleNamespace(nodeid=f"d/t.py::t{i}", when=when)
        for i in range(1000)
        for when in ("setup", "teardown")
    ]
    reporter = Reporter(reports)
    expected = {i: reporter._get_teardown_reports(f"d/t.py::t{i}") for i in range(0, 1000, 7)}
    reporter.scans = 0
    index_teardown_reports(reporter)
    for i, found in expected.items():
        assert reporter._get_teardown_reports(NodeId(f"d/t.py::t{i}")) == found
        assert reporter._get_teardown_reports(f"d/t.py::t{i}") == found
    assert reporter._get_teardown_reports("d/t.py::missing") == []
    assert reporter.scans == 1  # not once per failure: F x N was what a huge suite could not finish


def test_a_reporter_without_that_lookup_is_left_alone() -> None:
    plain = SimpleNamespace()
    index_teardown_reports(plain)
    assert not hasattr(plain, "_get_teardown_reports")
