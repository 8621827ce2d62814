"""GitHub Actions: workflow-command escaping, GitHub's limits on annotations and on the summary."""

from __future__ import annotations

from pathlib import Path

from pytest_lrun.report import github
from pytest_lrun.report.github import Failure, GithubActions, escape_data, escape_property


def _actions(tmp_path: Path, failures: int, message: str = "assert 1 == 2") -> GithubActions:
    environ = {"GITHUB_WORKSPACE": str(tmp_path), "GITHUB_REPOSITORY": "o/r", "GITHUB_SHA": "abc"}
    actions = GithubActions(environ, tmp_path, lambda: [["dir", "status"], ["suite", "failed"]], str)
    actions.failures = [
        Failure(f"suite/test_x.py::test_{i}", "suite/test_x.py", i + 1, message, "out/logs.txt")
        for i in range(failures)
    ]
    return actions


def test_messages_and_properties_are_escaped_as_githubs_toolkit_does() -> None:
    assert escape_data("50% done\nnext\r") == "50%25 done%0Anext%0D"
    assert escape_property("a::b, c") == "a%3A%3Ab%2C c"


def test_ten_annotations_then_a_notice_with_the_count_left_out(tmp_path: Path) -> None:
    lines = _actions(tmp_path, 12).annotations()
    assert len(lines) == 11
    assert lines[0] == "::error file=suite/test_x.py,line=1,title=suite/test_x.py%3A%3Atest_0::assert 1 == 2"
    assert lines[-1] == "::notice title=pytest-lrun::2 more failures: see the job summary"


def test_the_summary_links_each_failure_to_its_line_and_stays_under_githubs_limit(tmp_path: Path) -> None:
    summary = _actions(tmp_path, 2).summary({"failed": 2, "passed": 3})
    assert summary.startswith("### pytest-lrun: 2 failed, 3 passed\n")
    assert "| suite | failed |" in summary
    assert "[suite/test_x.py:2](https://github.com/o/r/blob/abc/suite/test_x.py#L2)" in summary
    big = _actions(tmp_path, 5000, message="x" * 900).summary({"failed": 5000})
    assert len(big.encode()) <= github.MAX_SUMMARY_BYTES + 2048
    assert "more (the summary's size limit)" in big


def test_a_name_that_is_not_utf8_is_escaped_not_a_crash(tmp_path: Path) -> None:
    actions = GithubActions({}, tmp_path, lambda: [["dir"], ["su\udcffite"]], str)
    actions.failures = [Failure("su\udcffite/t.py::t", "su\udcffite/t.py", 1, "boom", None)]
    summary = actions.summary({"failed": 1})
    summary.encode("utf-8")  # what the job summary file takes
    assert "su\\udcffite" in summary
