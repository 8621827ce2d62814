"""Reports where users read them, against the real tools: JUnit XML, pytest-html (and a headless
Chromium rendering it), allure-pytest's results, and a GitHub Actions job summary and annotations.

One invocation on a real engine dispatches four directories: one that passes, one that fails,
one that writes a PNG artifact and one that hangs past its timeout. Each tool is then read as
its users' tools read it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import pytest
from lrun_support import write_tests

PASSES = """
    def test_ok():
        print("hello from passes")
"""

FAILS = """
    def helper(x):
        return x * 2


    def test_fine():
        assert helper(2) == 4


    def test_bad():
        print("evidence before the failure")
        assert helper(3) == 7
"""


def _png(width: int, height: int) -> bytes:
    """A real PNG: a red rectangle."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


ART = f"""
    import os


    def test_plot():
        os.makedirs("/lrun/artifacts", exist_ok=True)
        with open("/lrun/artifacts/plot.png", "wb") as f:
            f.write({_png(40, 30)!r})
        with open("/lrun/artifacts/notes.txt", "w") as f:
            f.write("notes\\n")
"""

HANGS = """
    import time


    def test_quick():
        pass


    def test_hang():
        print("before the hang")
        time.sleep(120)
"""


def _line(source: str, text: str) -> int:
    """The line of ``text`` in the file ``write_tests`` makes of ``source``."""
    return textwrap.dedent(source).splitlines().index(text) + 1


FAILS_LINE = _line(FAILS, "    assert helper(3) == 7")
HANG_LINE = _line(HANGS, "    time.sleep(120)")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, engines: list[str]) -> dict[str, Any]:
    """One pytest run writing every report, and where its outputs are."""
    root = tmp_path_factory.mktemp("reports")
    (root / "pyproject.toml").write_text(
        f'[tool.lrun.machines.m1]\nhost = "{engines[0]}"\nimage = "lrun-python:bookworm"\n'
    )
    for name, source in (("passes", PASSES), ("fails", FAILS), ("art", ART), ("hangs", HANGS)):
        write_tests(root, name, source)
    out = root / "out"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LRUN_", "GITHUB_", "PYTEST_")) or key == "LRUN_TEST_ENGINES"
    }
    env.update(
        LRUN_STATE_DIR=str(root / "state"),
        GITHUB_ACTIONS="true",
        GITHUB_STEP_SUMMARY=str(root / "summary.md"),
        GITHUB_WORKSPACE=str(root),
        GITHUB_REPOSITORY="example/project",
        GITHUB_SHA="0123abc",
    )
    command = [
        *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lrun-machine=m1", "--lrun-timeout=8"),
        *("passes", "fails", "art", "hangs", "-rA", "-o", "junit_logging=system-out"),
        f"--junitxml={out / 'junit.xml'}",
        f"--html={out / 'report.html'}",
        f"--alluredir={out / 'allure'}",
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return {"root": root, "out": out, "stdout": done.stdout, "returncode": done.returncode}


def test_the_terminal_counts_only_the_users_tests(reported: dict[str, Any]) -> None:
    stdout = reported["stdout"]
    assert reported["returncode"] == 1, stdout
    # passes, fails' test_fine, art and hangs' test_quick pass; the hang and test_bad fail; the
    # timed-out run is an error of its own; the runs that went well add nothing.
    assert re.search(r"^=+ 2 failed, 4 passed, 1 error in ", stdout, re.MULTILINE), stdout
    assert "ERROR hangs::lrun[m1] - timeout: timed out after 8" in stdout
    # The hang: one failure, where it was on the host path, what it printed, no pytest internals.
    assert f"hangs/test_hangs.py:{HANG_LINE}: KeyboardInterrupt" in stdout
    assert "before the hang" in stdout and "_pytest/main.py" not in stdout and "pluggy/_" not in stdout


def _junit(reported: dict[str, Any]) -> dict[str, ET.Element]:
    root = ET.parse(reported["out"] / "junit.xml").getroot()
    return {f"{case.get('classname')}::{case.get('name')}": case for case in root.iter("testcase")}


def test_junit_attachments_resolve_inside_the_report_folder(reported: dict[str, Any]) -> None:
    root, report_dir = reported["root"], reported["out"] / "lrun-report"
    cases = _junit(reported)
    attachments = {
        name: re.findall(r"\[\[ATTACHMENT\|([^\]]+)\]\]", case.findtext("system-out") or "")
        for name, case in cases.items()
    }
    every = [path for paths in attachments.values() for path in paths]
    assert every
    for path in every:  # relative to where pytest ran (the checkout CI uploads from), inside the folder
        assert not os.path.isabs(path) and (root / path).is_file() and report_dir in (root / path).parents
    # The failing test and the failed run carry the run's log; the artifact run its files.
    assert any(p.endswith("/logs.txt") for p in attachments["fails.test_fails::test_bad"])
    assert any(p.endswith("/logs.txt") for p in attachments["hangs.test_hangs::test_hang"])
    assert any(p.endswith("/logs.txt") for p in attachments["hangs::lrun[m1]"])
    art = sorted(Path(p).name for p in attachments["art::lrun[m1]"])
    assert art == ["logs.txt", "notes.txt", "plot.png"]
    assert not any("artifacts/artifacts" in p for p in every)
    # lrun_logs is filled in on every inner test, and names the published log.
    properties = {
        p.get("name"): p.get("value") for p in cases["fails.test_fails::test_fine"].iter("property")
    }
    assert (root / str(properties["lrun_logs"])).is_file()
    # The hang keeps its real duration and what it printed.
    hang = cases["hangs.test_hangs::test_hang"]
    assert float(hang.get("time") or 0) > 5
    assert "before the hang" in (hang.findtext("system-out") or "")
    assert len(hang.findtext("failure") or "") < 4000


def _html_tests(reported: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    page = (reported["out"] / "report.html").read_text()
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob, "no data blob in the pytest-html report"
    tests: dict[str, list[dict[str, Any]]] = json.loads(html.unescape(blob.group(1)))["tests"]
    return tests


def test_pytest_html_shows_artifacts_as_extras(reported: dict[str, Any]) -> None:
    out = reported["out"]
    tests = _html_tests(reported)
    (art,) = tests["art::lrun[m1]"]
    images = [extra for extra in art["extras"] if extra["format_type"] == "image"]
    assert [image["name"] for image in images] == ["plot.png"]
    assert (out / images[0]["content"]).read_bytes().startswith(b"\x89PNG")
    links = {extra["name"]: extra["content"] for extra in art["extras"] if extra["format_type"] == "url"}
    assert (out / links["notes.txt"]).read_text() == "notes\n"
    # The run's log is a text extra; the container output sits under a section named for it.
    assert any(extra["name"] == "lrun log" for extra in art["extras"])
    (bad,) = tests["fails/test_fails.py::test_bad"]
    assert any(extra["format_type"] == "url" and extra["name"] == "logs.txt" for extra in bad["extras"])
    (error,) = tests["hangs::lrun[m1]"]
    assert error["result"] == "Error" and "lrun container output" in error["log"]


def test_a_browser_shows_the_artifact_image(reported: dict[str, Any], chromium: str) -> None:
    """Headless Chromium renders the report with every row open: the artifact's image is in the
    page, loaded, and not hidden; a screenshot is kept beside the report."""
    out = reported["out"]
    page = f"{(out / 'report.html').as_uri()}?collapsed="
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={out / 'chromium'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    images = re.findall(r'<img[^>]*src="(assets/[^"]+\.png)"', dom)
    assert images, dom[-2000:]
    assert all((out / src).read_bytes().startswith(b"\x89PNG") for src in images)
    body = dom[dom.index('id="art::lrun[m1]"') :]
    assert 'class="extras-row hidden"' not in body[: body.index("</tbody>")]
    # The screenshot (kept beside the report) shows the image: its red, which nothing else is, painted.
    shot = out / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2400", page], capture_output=True, timeout=120
    )
    red = sum(1 for pixel in _pixels(shot.read_bytes()) if pixel[0] > 240 and pixel[1] < 20 and pixel[2] < 20)
    assert red >= 50 * 30, f"the artifact's red is not on screen ({red} pixels): see {shot}"


def _pixels(png: bytes) -> list[tuple[int, ...]]:
    """The pixels of an 8-bit RGB or RGBA PNG (what Chromium's screenshots are), undoing its filters."""
    pos, data, width, height, channels = 8, b"", 0, 0, 3
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, _depth, color = struct.unpack(">IIBB", body[:10])
            channels = 4 if color == 6 else 3
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    raw, stride = zlib.decompress(data), width * channels
    previous, pixels = bytearray(stride), []
    for row in range(height):
        kind, line = (
            raw[row * (stride + 1)],
            bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min(
                    (abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner)
                )
                line[i] = (line[i] + near[2]) & 255
        pixels += [tuple(line[i : i + channels]) for i in range(0, stride, channels)]
        previous = line
    return pixels


def test_allure_gets_every_inner_test_with_its_attachments(reported: dict[str, Any]) -> None:
    allure = reported["out"] / "allure"
    results = [json.loads(p.read_text()) for p in allure.glob("*-result.json")]
    by_name = {r["fullName"]: r for r in results}
    assert by_name["fails.test_fails#test_bad"]["status"] == "failed"
    assert "assert 6 == 7" in by_name["fails.test_fails#test_bad"]["statusDetails"]["message"]
    assert by_name["hangs.test_hangs#test_hang"]["status"] == "failed"
    assert by_name["passes.test_passes#test_ok"]["status"] == "passed"
    labels = {label["name"]: label["value"] for label in by_name["fails.test_fails#test_bad"]["labels"]}
    assert labels["parentSuite"] == "fails" and labels["suite"] == "test_fails" and labels["host"] == "m1"
    bad = by_name["fails.test_fails#test_bad"]
    assert bad["stop"] >= bad["start"] > 0
    attached = {a["name"]: allure / a["source"] for r in results for a in r.get("attachments", [])}
    assert attached["plot.png"].read_bytes().startswith(b"\x89PNG")
    assert all(path.is_file() for path in attached.values())
    stdout = next(a for a in bad["attachments"] if a["name"] == "stdout")
    assert "evidence before the failure" in (allure / stdout["source"]).read_text()


def test_github_annotations_name_host_files_and_the_summary_lists_failures(reported: dict[str, Any]) -> None:
    annotations = [line for line in reported["stdout"].splitlines() if line.startswith("::error ")]
    assert (
        f"::error file=fails/test_fails.py,line={FAILS_LINE},title=fails/test_fails.py%3A%3Atest_bad::"
        in "\n".join(annotations)
    )
    assert any(line.startswith(f"::error file=hangs/test_hangs.py,line={HANG_LINE},") for line in annotations)
    summary = (reported["root"] / "summary.md").read_text()
    assert summary.startswith("### pytest-lrun: ") and "| dir | machine |" in summary
    link = f"https://github.com/example/project/blob/0123abc/fails/test_fails.py#L{FAILS_LINE}"
    assert link in summary and "#### Failures (3)" in summary


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "no chromium (scripts/provision.sh installs Debian's)"
        if os.environ.get("LRUN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


TWO = """
    def test_one():
        pass


    def test_two():
        assert False, "two fails"


    def test_three():
        pass
"""


def test_the_terminal_reads_as_pytests_own(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "first", TWO)
    write_tests(project, "second", TWO)
    verbose = pytester.runpytest_subprocess("--lrun-machine=m1", "first", "second", "-v")
    shown = [int(p) for p in re.findall(r"\[\s*(\d+)%\]", verbose.stdout.str())]
    assert shown and shown == sorted(shown) and shown[-1] == 100, shown  # never back from 100%
    quiet = pytester.runpytest_subprocess("--lrun-machine=m1", "first", "second", "-q", "-k", "one or two")
    assert not re.search(
        r"^[.FEsx]+lrun:", quiet.stdout.str(), re.MULTILINE
    )  # lrun lines on lines of their own
    assert not re.search(r"^\s*\[100%\]$", quiet.stdout.str(), re.MULTILINE)  # no lone [100%]
    quiet.stdout.fnmatch_lines(["2 failed, 2 passed, 2 deselected in *"])  # the container's deselected count
    collected = pytester.runpytest_subprocess("--lrun-machine=m1", "first", "second", "-q", "--collect-only")
    lines = [line for line in collected.outlines if line.strip()]
    assert lines[:6] == [
        f"{d}/test_{d}.py::test_{n}" for d in ("first", "second") for n in ("one", "two", "three")
    ]
    assert lines[6:] == ["6 tests collected in " + lines[6].split(" in ")[1]]


def test_last_failed_runs_only_the_inner_tests_that_failed(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "first", TWO)
    write_tests(project, "clean", "def test_fine():\n    pass\n")
    pytester.runpytest_subprocess("--lrun-machine=m1", "first", "clean").assert_outcomes(passed=3, failed=1)
    again = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "first", "clean", "--lf", "-p", "cacheprovider"
    )
    again.stdout.fnmatch_lines(
        [
            "lrun: --lf: first: running the 1 inner tests that failed last time",
            "lrun: --lf: clean: nothing failed last time: running all of it",
        ]
    )
    again.assert_outcomes(passed=1, failed=1)  # first's test_two, and clean's one test
