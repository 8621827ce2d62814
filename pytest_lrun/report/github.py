"""GitHub Actions: annotations on the host files of failing inner tests, and a job summary.

Active when ``GITHUB_ACTIONS=true`` (GitHub sets it in every job):

* ``::error file=PATH,line=N,title=NODE ID::MESSAGE`` for each failing inner test
  and each run that failed for its own reasons, with ``PATH`` the host file
  relative to the checkout (``GITHUB_WORKSPACE``), so the annotation lands on the
  line in the pull request. GitHub shows 10 per step: the first
  :data:`MAX_ANNOTATIONS` are written, then a notice with the count left out;
* the job summary (markdown appended to ``$GITHUB_STEP_SUMMARY``): the counts,
  the runs table, and each failure with a link to its file and line in the
  repository (when ``GITHUB_REPOSITORY`` and ``GITHUB_SHA`` are set) and its
  run's log in the report folder, then each inner test that passed on a rerun
  (flaky, :mod:`.flaky`); kept under :data:`MAX_SUMMARY_BYTES` (GitHub refuses
  more than 1 MiB a step).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.text import printable
from pytest_lrun.report.flaky import Flaky, is_flaky
from pytest_lrun.report.making import is_lrun_report

MAX_ANNOTATIONS = 10
MAX_SUMMARY_BYTES = 900 * 1024
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class Failure:
    """A failing inner test (or run) as an annotation and a summary line need it."""

    nodeid: str
    path: str  # relative to the checkout, or absolute outside it
    line: int | None
    message: str
    log: str | None


def is_github_actions(environ: Mapping[str, str]) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GithubActions:
    """Registered by the session when ``GITHUB_ACTIONS=true``; ``runs_table`` gives the summary
    table's rows (header first) at the end, ``shown`` a path as the reports show it."""

    def __init__(
        self,
        environ: Mapping[str, str],
        rootpath: Path,
        runs_table: Callable[[], list[list[str]]],
        shown: Callable[[Path], str],
    ) -> None:
        self.environ = environ
        self.rootpath = rootpath
        self.workspace = Path(environ.get("GITHUB_WORKSPACE") or os.getcwd())
        self.runs_table = runs_table
        self.shown = shown
        self.failures: list[Failure] = []
        self.flaky: list[Flaky] = []

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and is_lrun_report(report):
            self.failures.append(self._failure(report))
        elif report.when == "call" and is_flaky(report):
            self.flaky.append(report.lrun_flaky)

    def _failure(self, report: pytest.TestReport) -> Failure:
        crash: Any = getattr(report.longrepr, "reprcrash", None)
        path, line = self.rootpath / report.location[0], report.location[1]
        line = None if line is None else line + 1
        if crash is not None and crash.lineno and Path(crash.path).is_file():
            path, line = Path(crash.path), crash.lineno  # where it failed, when that is a file here
        message = str(getattr(crash, "message", "") or "")
        if not message and report.longreprtext:
            message = report.longreprtext.splitlines()[0]
        log = getattr(report, "lrun_log", None) or dict(report.user_properties).get("lrun_logs")
        shown = printable  # a name a container made may not be UTF-8: escaped, as the terminal shows it
        log_shown = shown(str(log)) if log else None
        return Failure(shown(report.nodeid), shown(self._relative(path)), line, shown(message), log_shown)

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.workspace.resolve()).as_posix()
        except ValueError:
            return str(path)

    def annotations(self) -> list[str]:
        lines = []
        for failure in self.failures[:MAX_ANNOTATIONS]:
            where = f"file={escape_property(failure.path)}"
            if failure.line:
                where += f",line={failure.line}"
            title = escape_property(failure.nodeid)
            lines.append(f"::error {where},title={title}::{escape_data(failure.message[:MAX_MESSAGE_CHARS])}")
        left = len(self.failures) - MAX_ANNOTATIONS
        if left > 0:
            lines.append(f"::notice title=pytest-lrun::{left} more failures: see the job summary")
        return lines

    def summary(self, counts: Mapping[str, int]) -> str:
        """The job summary's markdown, cut to :data:`MAX_SUMMARY_BYTES` with a line saying so."""
        said = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no tests ran"
        head = [f"### pytest-lrun: {said}", ""]
        table = [[printable(cell) for cell in row] for row in self.runs_table()]
        if len(table) > 1:
            head += [*_markdown_table(table), ""]
        lines: list[str] = []
        size = len("\n".join(head).encode()) + 200
        failures = [self._failure_line(failure) for failure in self.failures]
        flaky = [
            printable(f"- `{test.nodeid}`: {_inline(test.line()[:MAX_MESSAGE_CHARS])}") for test in self.flaky
        ]
        for title, listed in (("Failures", failures), ("Flaky: passed on a rerun", flaky)):
            if not listed:
                continue
            lines += [f"#### {title} ({len(listed)})", ""]
            for number, line in enumerate(listed):
                size += len(line.encode()) + 1
                if size > MAX_SUMMARY_BYTES:
                    lines.append(f"- ... and {len(listed) - number} more (the summary's size limit)")
                    break
                lines.append(line)
            lines.append("")
        return "\n".join(head + lines).rstrip("\n") + "\n"

    def _failure_line(self, failure: Failure) -> str:
        where = f"{failure.path}:{failure.line}" if failure.line else failure.path
        server, repo, sha = (
            self.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_SHA")
        )
        if repo and sha and not os.path.isabs(failure.path):
            anchor = f"#L{failure.line}" if failure.line else ""
            where = f"[{where}]({server or 'https://github.com'}/{repo}/blob/{sha}/{failure.path}{anchor})"
        else:
            where = f"`{where}`"
        message = _inline(failure.message.splitlines()[0][:MAX_MESSAGE_CHARS] if failure.message else "")
        log = f" (log: `{failure.log}`)" if failure.log else ""
        return printable(f"- `{failure.nodeid}` at {where}: {message}{log}")

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.annotations():  # a name a container made may not be UTF-8: escaped
            terminalreporter.write_line(printable(line))
        path = self.environ.get("GITHUB_STEP_SUMMARY")
        if not path:
            return
        counts = {k: len(v) for k, v in terminalreporter.stats.items() if k and k != "warnings"}
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(printable(self.summary(counts)))
        except OSError as e:
            terminalreporter.write_line(f"lrun: warning: the job summary was not written to {path}: {e}")


def _inline(text: str) -> str:
    """One line of text inside markdown inline code."""
    line = " ".join(text.split())
    quoted = line.replace("`", "'")
    return f"`{quoted}`" if line else ""


def _markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    return [
        "| " + " | ".join(cells[0]) + " |",
        "|" + "---|" * len(cells[0]),
        *("| " + " | ".join(row) + " |" for row in cells[1:]),
    ]
