"""Allure: inner tests as Allure results, through allure-pytest's own writer.

allure-pytest builds its results from item lifecycle hooks (``pytest_runtest_setup``
and the like), which a dispatched test never passes through on the host, so it
sees none of them. This plugin, registered by the session when allure-pytest
writes results (``--alluredir``), gathers pytest-lrun's reports per test and, at
the session's end (when every run's log and artifacts are in place), hands each
test to the writer allure-pytest registered (``allure_commons``' ``report_result``
and ``report_attached_file`` hooks), named as allure-pytest names a local test:

* ``fullName`` ``package.module.Class#function``, ``testCaseId`` and
  ``historyId`` from it (the history follows a test across runs);
* labels ``parentSuite``, ``suite``, ``subSuite`` from the node id, ``host`` (the
  machine the test ran on), ``framework``, ``language``, ``package``;
* its status (``failed`` for an assertion, ``broken`` for any other error or a
  setup/teardown failure, ``skipped``, ``passed``), message and trace, start and
  stop as the inner pytest timed them;
* its captured output as text attachments (as ``--allure-no-capture`` leaves
  off), and the files pytest-lrun attached: a failing test's run log, a run's
  own log and artifacts.
"""

from __future__ import annotations

import hashlib
import mimetypes
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.text import printable
from pytest_lrun.report.flaky import is_flaky
from pytest_lrun.report.making import is_lrun_report

# A failure whose message starts so is an assertion (allure's "failed"); anything else is "broken".
_ASSERTION_PREFIXES = ("assert", "AssertionError", "Failed", "pytest.fail", "timed out")


@dataclass
class _Test:
    nodeid: str
    reports: list[pytest.TestReport] = field(default_factory=list)


class AllureResults:
    """Registered by the session when allure-pytest writes results (see the module docstring)."""

    def __init__(self, attach_capture: bool = True) -> None:
        self.attach_capture = attach_capture
        self._tests: dict[str, _Test] = {}
        self._copied: dict[Path, str] = {}  # a run's file, copied once however many tests attach it

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_lrun_report(report):
            self._tests.setdefault(report.nodeid, _Test(report.nodeid)).reports.append(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        import allure_commons

        hook = allure_commons.plugin_manager.hook
        for test in self._tests.values():
            result, files = self._result(test)
            for attachment, source in files:
                if isinstance(source, Path):
                    if source in self._copied:
                        continue
                    self._copied[source] = attachment.source
                    hook.report_attached_file(source=str(source), file_name=attachment.source)
                else:
                    hook.report_attached_data(body=source, file_name=attachment.source)
            hook.report_result(result=result)
        self._tests.clear()

    def _result(self, test: _Test) -> tuple[Any, list[tuple[Any, Path | str]]]:
        from allure_commons.model2 import Attachment, Label, TestResult

        parts = _Parsed(test.nodeid)
        status, details = _status(test.reports)
        reports = test.reports
        starts = [r.start for r in reports if getattr(r, "start", None)]
        stops = [r.stop for r in reports if getattr(r, "stop", None)]
        now = time.time()
        properties = dict(reports[-1].user_properties)
        labels = [
            ("parentSuite", parts.parent_package),
            ("suite", parts.module),
            ("subSuite", " > ".join(parts.class_names)),
            ("host", str(properties.get("lrun_machine", ""))),
            ("framework", "pytest"),
            ("language", f"{platform.python_implementation().lower()}{sys.version_info[0]}"),
            ("package", parts.package),
        ]
        full_name = parts.full_name
        result = TestResult(
            uuid=_uuid(),
            name=parts.name,
            fullName=full_name,
            testCaseId=md5(full_name),
            historyId=md5(full_name, parts.param_id),
            titlePath=[*parts.path_segments, *parts.class_names],
            status=status,
            statusDetails=details,
            start=int((min(starts) if starts else now) * 1000),
            stop=int((max(stops) if stops else now) * 1000),
            labels=[Label(name=name, value=value) for name, value in labels if value],
        )
        files: list[tuple[Any, Path | str]] = []
        last = reports[-1]
        if self.attach_capture:
            for name, text in (("log", last.caplog), ("stdout", last.capstdout), ("stderr", last.capstderr)):
                if text:
                    files.append(
                        (Attachment(name=name, source=f"{_uuid()}-attachment.txt", type="text/plain"), text)
                    )
        for report in reports:
            for name in getattr(report, "lrun_attachments", None) or ():
                path = Path(name)
                if not path.is_file():
                    continue
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                source = self._copied.get(path) or f"{_uuid()}-attachment{path.suffix or '.txt'}"
                # A name a container made may not be UTF-8: shown escaped, as the terminal shows it.
                files.append((Attachment(name=printable(path.name), source=source, type=kind), path))
        result.attachments = [attachment for attachment, _source in files]
        return result, files


def md5(*parts: str) -> str:
    """allure-commons' digest of names (its ``md5``): the UTF-8 of each part, in turn."""
    digest = hashlib.md5()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))  # a node id may hold a container's odd name
    return digest.hexdigest()


def _uuid() -> str:
    return str(uuid.uuid4())


def _status(reports: list[pytest.TestReport]) -> tuple[str, Any]:
    """allure-pytest's status of a test, from its phase reports."""
    from allure_commons.model2 import StatusDetails

    for report in reports:
        message = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
        if report.failed:
            text = report.longreprtext
            message = message or (text.splitlines()[0] if text else "")
            assertion = report.when == "call" and message.startswith(_ASSERTION_PREFIXES)
            return ("failed" if assertion else "broken"), StatusDetails(message=message, trace=text)
        if report.skipped:
            if hasattr(report, "wasxfail"):
                return "skipped", StatusDetails(message=f"XFAIL {report.wasxfail}".strip())
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longreprtext
            return "skipped", StatusDetails(message=str(reason))
    flaky = next((r.lrun_flaky for r in reports if is_flaky(r)), None)
    if flaky is not None:  # Allure's own flag: the report marks it, and its history counts it
        return "passed", StatusDetails(flaky=True, message=f"FLAKY: {flaky.line()}", trace=flaky.text())
    xpass = next((r for r in reports if hasattr(r, "wasxfail")), None)
    if xpass is not None:
        return "passed", StatusDetails(message=f"XPASS {xpass.wasxfail}".strip())
    return "passed", None


class _Parsed:
    """A node id as allure-pytest splits it (its ``ParsedPytestNodeId``), for names and suites."""

    def __init__(self, nodeid: str) -> None:
        filepath, *classes, function = [*nodeid.split("::"), ""][: max(2, nodeid.count("::") + 1)]
        self.path_segments = filepath.split("/")
        *parents, filename = self.path_segments
        self.parent_package = ".".join(parents)
        self.module = filename.rsplit(".", 1)[0]
        self.package = ".".join(part for part in (self.parent_package, self.module) if part)
        self.class_names = classes
        self.name = function or filename
        base, _, param = self.name.partition("[")
        self.param_id = param.rstrip("]")
        class_part = "." + ".".join(classes) if classes else ""
        self.full_name = f"{self.package}{class_part}#{base}"
