"""Flaky inner tests (``--lrun-flaky-attempts``): each test reported once, with its final outcome.

When a run's failed inner tests may run again (:mod:`pytest_lrun.session.reruns`), pytest
must never see a failure of a test that later passes: ``-x`` would stop, the exit status
would be 1, ``--junitxml`` would write it. :class:`FlakyGate` stands between a run's reports
(:class:`~.live.RunReports`) and pytest's hooks: an inner test's hook calls, from its
``logstart`` to its ``logfinish``, wait until its outcome in this attempt is known; a test
that failed while attempts are left is held back, anything else goes out.

* A test that passes on a later attempt goes out passed and flaky: its reports carry a
  :class:`Flaky` (``lrun_flaky``, which the terminal counts as ``flaky``, pytest-html,
  Allure and the GitHub summary show) and the properties ``lrun_test_attempts`` and
  ``lrun_test_attempt_N`` (each earlier failure); its JUnit test case gets a Surefire
  ``<flakyFailure>`` per failed attempt, which Jenkins and GitLab read.
* A test that fails every attempt goes out failed, every earlier attempt's failure text
  after its own, with the same properties and a ``<rerunFailure>`` per earlier attempt.
* What is still held when the job ends (a rerun that never reported the test, or
  skipped it: it crashed, timed out, or the session stopped) goes out as it failed; when
  ``-x`` or ``--maxfail`` stopped the session first, its text says it was not run again.

A quarantined test (``--lrun-quarantine``, :class:`Quarantine`) runs as usual; the failed
reports it finally sends go out as xfail, ``quarantined: flaky since DATE``.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_lrun.core.text import one_line
from pytest_lrun.report.failures import InnerRepr

LOGSTART = "pytest_runtest_logstart"
LOGREPORT = "pytest_runtest_logreport"
LOGFINISH = "pytest_runtest_logfinish"

# A hook call held back: the hook's name and its keyword arguments.
Call = tuple[str, dict[str, Any]]

_EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class AttemptFailure:
    """How an inner test failed in one attempt."""

    attempt: int
    run_id: str
    message: str  # the crash line the short summary shows
    text: str  # the whole failure text

    @property
    def kind(self) -> str:
        """The exception's name, when the message starts with one (``AssertionError: ...``)."""
        head = self.message.split(":", 1)[0].strip()
        return head if _EXCEPTION_NAME.fullmatch(head) else "failure"


@dataclass(frozen=True)
class Flaky:
    """On every report of an inner test that failed, then passed: ``lrun_flaky``."""

    nodeid: str
    attempt: int  # the attempt it passed on
    attempts: int  # --lrun-flaky-attempts
    failures: tuple[AttemptFailure, ...]

    def line(self) -> str:
        """What the terminal's flaky summary says of it."""
        first = self.failures[0]
        return (
            f"passed on attempt {self.attempt} of {self.attempts}; attempt {first.attempt} failed "
            f"in run {first.run_id}: {first.message}"
        )

    def text(self) -> str:
        """Its earlier failures in full, for the report tools that show text (pytest-html)."""
        parts = [f"FLAKY: {self.line()}"]
        parts += [f"attempt {f.attempt} (run {f.run_id}) failed:\n{f.text}" for f in self.failures]
        return "\n\n".join(parts)


def is_flaky(report: pytest.TestReport) -> bool:
    """Whether ``report`` is of an inner test that failed, then passed on a rerun."""
    return isinstance(getattr(report, "lrun_flaky", None), Flaky)


# What pytest_report_teststatus answers: category, letter, and the word (with its markup).
TestStatus = tuple[str, str, str | tuple[str, Mapping[str, bool]]]


def flaky_status(report: pytest.TestReport) -> TestStatus | None:
    """The terminal's word for a flaky test's call (``pytest_report_teststatus``): passed, counted
    as ``flaky``; None for any other report."""
    if report.when == "call" and report.passed and is_flaky(report):
        return "flaky", "f", ("FLAKY", {"yellow": True})
    return None


class Quarantine:
    """The tests whose failures are reported as xfail (``--lrun-quarantine``): each host node id
    with the time it was quarantined."""

    def __init__(self, entries: Mapping[str, float]) -> None:
        self.entries = dict(entries)

    def reason(self, nodeid: str) -> str | None:
        """The xfail reason of ``nodeid``, or None when it is not quarantined."""
        since = self.entries.get(nodeid)
        if since is None:
            return None
        day = dt.datetime.fromtimestamp(since, dt.timezone.utc).date().isoformat()
        return f"quarantined: flaky since {day}"


class FlakyGate:
    """Holds one job's inner test reports until their final outcome (see the module docstring).

    ``run_id`` tells the run of the attempt under way; with ``attempts`` 1 every call goes
    straight out.
    """

    def __init__(
        self,
        config: pytest.Config,
        attempts: int,
        run_id: Callable[[], str],
        quarantined: Callable[[str], str | None] = lambda inner: None,
    ) -> None:
        self.config = config
        self.attempts = attempts
        self._quarantined = quarantined  # an inner test's xfail reason when it is quarantined
        self.quarantined: dict[str, str] = {}  # the job's quarantined tests that failed: their reasons
        self.attempt = 1
        self._run_id = run_id
        self._open: dict[str, list[Call]] = {}  # tests of this attempt under way: their calls
        self._held: dict[str, list[Call]] = {}  # tests that failed, waiting for the next attempt
        self._failures: dict[str, list[AttemptFailure]] = {}  # each test's failures, earlier attempts
        self.flaky: list[Flaky] = []  # the job's flaky tests, as they went out

    def start(self, inner: str, nodeid: str, location: Any) -> None:
        call: Call = (LOGSTART, {"nodeid": nodeid, "location": location})
        if self.attempts > 1:
            self._open[inner] = [call]
        else:
            self._call(call)

    def report(self, inner: str | None, report: pytest.TestReport) -> None:
        calls = self._open.get(inner) if inner is not None else None
        if calls is None:
            self._call((LOGREPORT, {"report": report}), inner)
        else:
            calls.append((LOGREPORT, {"report": report}))

    def finish(self, inner: str, nodeid: str, location: Any) -> None:
        call: Call = (LOGFINISH, {"nodeid": nodeid, "location": location})
        calls = self._open.pop(inner, None)
        if calls is None:
            self._call(call)
            return
        calls.append(call)
        self._settle(inner, calls)

    def next_attempt(self, attempt: int) -> None:
        """Attempt number ``attempt`` begins: the tests it reruns come again from their start."""
        self.attempt = attempt

    def release(self, *, stopped: bool = False) -> None:
        """The job ended: what is still held goes out as it failed, with every attempt's failure.

        ``stopped``: the session stopped (``-x``, ``--maxfail``) before the next attempt. A stopped
        session reports what ran, as pytest does: such a test ran and failed, so it goes out failed,
        and its text says why it was not run again.
        """
        for inner in list(self._held):
            calls = self._held.pop(inner)
            failures = self._failures.pop(inner, [])
            last = failures[-1].attempt
            _add_attempts(calls, failures[:-1], last, flaky=None)
            if stopped:
                _add_text(
                    calls,
                    f"[lrun] not run again: the session stopped (-x, --maxfail) after attempt {last} "
                    f"of {self.attempts}",
                )
            self._fire(inner, calls, failures[:-1], "rerunFailure")

    # -- deciding ------------------------------------------------------------------------

    def _settle(self, inner: str, calls: list[Call]) -> None:
        reports = [kwargs["report"] for name, kwargs in calls if name == LOGREPORT]
        failed = [r for r in reports if r.failed and not hasattr(r, "wasxfail")]
        earlier = self._failures.get(inner, [])
        if failed and self.attempt < self.attempts:
            earlier.append(_failure_of(failed[0], self.attempt, self._run_id()))
            self._failures[inner] = earlier
            self._held[inner] = calls
            return
        if earlier and not failed and any(r.skipped for r in reports):
            return  # skipped (not run: the rerun was stopped) proves nothing: the failure stays held
        self._held.pop(inner, None)  # what this attempt reported stands for the earlier one
        self._failures.pop(inner, None)
        if not earlier:
            self._fire(inner, calls, [], "")
            return
        flaky = None if failed else Flaky(reports[0].nodeid, self.attempt, self.attempts, tuple(earlier))
        _add_attempts(calls, earlier, self.attempt, flaky=flaky)
        if flaky is not None:
            self.flaky.append(flaky)
        self._fire(inner, calls, earlier, "flakyFailure" if flaky is not None else "rerunFailure")

    def _fire(self, inner: str, calls: list[Call], failures: list[AttemptFailure], element: str) -> None:
        for name, kwargs in calls:
            report = kwargs.get("report")
            if failures and report is not None and report.when == "teardown":
                # Before --junitxml's own hook handles the teardown, which closes the test case.
                _junit_elements(self.config, report, failures, element)
            self._call((name, kwargs), inner)

    def _call(self, call: Call, inner: str | None = None) -> None:
        name, kwargs = call
        report = kwargs.get("report")
        if report is not None and inner is not None and report.failed and not hasattr(report, "wasxfail"):
            reason = self._quarantined(inner)
            if reason is not None:  # --lrun-quarantine: it ran as usual, its failure fails nothing
                report.outcome, report.wasxfail = "skipped", reason
                self.quarantined[report.nodeid] = reason
        getattr(self.config.hook, name)(**kwargs)


def _failure_of(report: pytest.TestReport, attempt: int, run_id: str) -> AttemptFailure:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = one_line(str(getattr(crash, "message", "") or f"{report.when} failed"))
    return AttemptFailure(attempt, run_id, message, str(report.longrepr or ""))


def _add_attempts(
    calls: list[Call], earlier: list[AttemptFailure], attempt: int, *, flaky: Flaky | None
) -> None:
    """Mark a test's reports with its attempts; a failure's text gains the earlier ones'."""
    properties: list[tuple[str, object]] = [("lrun_test_attempts", attempt)]
    properties += [
        (f"lrun_test_attempt_{f.attempt}", f"failed in run {f.run_id}: {f.message}") for f in earlier
    ]
    for name, kwargs in calls:
        report = kwargs.get("report")
        if name != LOGREPORT or report is None:
            continue
        report.user_properties = [*report.user_properties, *properties]
        if flaky is not None:
            report.lrun_flaky = flaky
        elif report.failed and isinstance(report.longrepr, InnerRepr) and earlier:
            texts = [f"[lrun] attempt {f.attempt} (run {f.run_id}) failed too:\n{f.text}" for f in earlier]
            report.longrepr = InnerRepr(
                "\n\n".join([report.longrepr.text, *texts]), report.longrepr.reprcrash
            )


def _add_text(calls: list[Call], text: str) -> None:
    """Append ``text`` to the failure text of a test's failed reports."""
    for name, kwargs in calls:
        report = kwargs.get("report")
        if (
            name == LOGREPORT
            and report is not None
            and report.failed
            and isinstance(report.longrepr, InnerRepr)
        ):
            report.longrepr = InnerRepr(f"{report.longrepr.text}\n\n{text}", report.longrepr.reprcrash)


def _junit_elements(
    config: pytest.Config, report: pytest.TestReport, failures: list[AttemptFailure], element: str
) -> None:
    """Surefire's ``<flakyFailure>`` (or ``<rerunFailure>``) per earlier attempt, in the test case
    ``--junitxml`` writes (its writer is pytest's private ``LogXML``; without it, nothing)."""
    try:
        from _pytest.junitxml import bin_xml_escape, xml_key
    except ImportError:  # pragma: no cover - a pytest without it: the properties still say it
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    reporter = xml.node_reporter(report)
    for failure in failures:
        # Escaped as pytest escapes its own: a failure's ANSI colours are no valid XML.
        node = ET.Element(element, message=bin_xml_escape(failure.message), type=failure.kind)
        trace = ET.SubElement(node, "stackTrace")
        trace.text = bin_xml_escape(failure.text)
        reporter.append(node)
