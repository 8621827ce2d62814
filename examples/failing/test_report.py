"""A suite with one failure; it leaves a report under /lrun/artifacts for the host to collect."""

from pathlib import Path

ARTIFACTS = Path("/lrun/artifacts")


def test_writes_report():
    (ARTIFACTS / "report.txt").write_text("42 widgets checked\n")


def test_fails():
    widgets = {"checked": 42}
    assert widgets["checked"] == 41, "one widget too many"
