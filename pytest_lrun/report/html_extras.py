"""pytest-html: a run's evidence as the report's extras.

pytest-html 4 reads ``report.extras`` when a test's teardown report arrives. For
each report of pytest-lrun's that carries ``lrun_attachments`` (the run's own
report: its log and artifacts; a failing inner test: its run's log), this
plugin adds to them first (``tryfirst``; pytest-html's hook runs last):

* images inline, embedded so they show in a self-contained report too (up to
  :data:`MAX_IMAGE_BYTES`; a larger one is a link);
* the run's log as a text extra on the run's own report (its last
  :data:`MAX_LOG_BYTES`), and a link to the whole file (all a failing test gets);
* every other file as a link, relative to the HTML file (the report folder is
  uploaded beside it);
* for an inner test that passed on a rerun (:mod:`.flaky`), its earlier failures as a
  text extra, ``lrun flaky``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.text import printable
from pytest_lrun.report.flaky import Flaky
from pytest_lrun.report.run_report import is_run_report
from pytest_lrun.run.logs import tail

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_LOG_BYTES = 256 * 1024
# pytest-html's own image kinds: the mime type of each extension it shows inline.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}


class HtmlExtras:
    """Registered by the session when pytest-html writes a report (``--html``)."""

    def __init__(self, html_path: Path) -> None:
        self.html_dir = html_path.parent

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        flaky = getattr(report, "lrun_flaky", None) if report.when == "teardown" else None
        if isinstance(flaky, Flaky):
            from pytest_html import extras as html

            note = html.text(flaky.text(), name="lrun flaky")
            report.extras = [*getattr(report, "extras", []), note]  # type: ignore[attr-defined]
        files = getattr(report, "lrun_attachments", None)
        if not files:
            return
        log = getattr(report, "lrun_log", None)
        extras: list[dict[str, Any]] = list(getattr(report, "extras", []))
        # The log's text once, on the run's own report; a failing test links to it.
        run_report = is_run_report(report)
        for name in files:
            extras.extend(self._extras(Path(name), is_log=name == log, with_text=run_report))
        report.extras = extras  # type: ignore[attr-defined]

    def _extras(self, path: Path, *, is_log: bool, with_text: bool) -> list[dict[str, Any]]:
        from pytest_html import extras

        link = extras.url(self._relative(path), name=printable(path.name))  # a name may not be UTF-8
        if is_log:
            text = tail(path, MAX_LOG_BYTES) if with_text else ""
            return [extras.text(text, name="lrun log"), link] if text else [link]
        mime = IMAGE_TYPES.get(path.suffix.lower())
        try:
            size = path.stat().st_size
        except OSError:
            return [link]
        if mime is not None and size <= MAX_IMAGE_BYTES:
            content = base64.b64encode(path.read_bytes()).decode("ascii")
            return [
                extras.image(content, name=printable(path.name), mime_type=mime, extension=path.suffix[1:])
            ]
        return [link]

    def _relative(self, path: Path) -> str:
        try:
            return Path(os.path.relpath(path, self.html_dir)).as_posix()
        except ValueError:  # another drive
            return path.as_uri()
