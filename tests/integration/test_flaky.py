"""Flaky tests on a real engine (``--lrun-flaky-attempts``): only the failed inner tests run again,
as a new run; a test that then passes is named flaky wherever a user looks, and one that fails
every attempt fails with every attempt's failure.

The flaky test is flaky on purpose and for certain: it fails in a first run and passes in a
rerun, which it tells by ``LRUN_ATTEMPT``, the variable a rerun's container gets. Nothing has
to survive from one container to the next. On both stores: two runs of one key that disagree
(a secret, which enters the key by its name only, decides the outcome) make ``lrun flaky`` list
the test and keep its key's result out of the cache unless asked (``completed-even-flaky``);
a quarantined failing test leaves the session green.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from lrun_procs import StoreSpec
from lrun_support import write_tests

from pytest_lrun.store import Status
from pytest_lrun.store.files import FileStore

FLAKY = """
    import os


    def test_steady():
        pass


    def test_flaky():
        attempt = os.environ.get("LRUN_ATTEMPT")
        print(f"attempt {attempt}")
        assert attempt is not None, "fails on the first attempt"
"""

# Its outcome follows a secret, which enters the run key by its name only: two runs of one key.
COIN = """
    import os


    def test_coin():
        assert os.environ["COIN"] == "heads"
"""

BROKEN = """
    import os


    def test_broken():
        assert False, f"broken on attempt {os.environ.get('LRUN_ATTEMPT', '1')}"
"""


def _env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a CI job in ``root`` (GitHub Actions on), with ``extra``."""
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
        **extra,
    )
    return env


def _session(root: Path, engine: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``root`` on machine m1 (``engine``), as a CI job runs it, with ``env`` set."""
    (root / "pyproject.toml").write_text(
        f'[tool.lrun.machines.m1]\nhost = "{engine}"\nimage = "lrun-python:bookworm"\n'
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lrun-machine=m1", "-rA", *args]
    return subprocess.run(
        command, cwd=root, env=_env(root, **env), capture_output=True, text=True, timeout=300
    )


def _lrun(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest_lrun", *args]
    return subprocess.run(
        command, cwd=root, env=_env(root, **env), capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory, engines: list[str]) -> dict[str, Any]:
    """A suite with a steady and a flaky test, run with three attempts and every report."""
    root = tmp_path_factory.mktemp("flaky")
    write_tests(root, "suite", FLAKY)
    out = root / "out"
    done = _session(
        root,
        engines[0],
        "suite",
        "--lrun-flaky-attempts=3",
        f"--junitxml={out / 'junit.xml'}",
        f"--html={out / 'report.html'}",
        f"--alluredir={out / 'allure'}",
    )
    return {"root": root, "out": out, "stdout": done.stdout + done.stderr, "returncode": done.returncode}


def test_a_flaky_test_leaves_the_session_green_and_is_named_flaky(flaky: dict[str, Any]) -> None:
    stdout = flaky["stdout"]
    assert flaky["returncode"] == 0, stdout
    assert re.search(r"^=+ 1 passed, 1 flaky in ", stdout, re.MULTILINE), stdout
    assert "1 failed inner test of run" in stdout and "run again (attempt 2 of 3)" in stdout
    assert re.search(
        r"FLAKY suite/test_suite.py::test_flaky - passed on attempt 2 of 3; attempt 1 failed in run "
        r"\S+: AssertionError: fails on the first attempt",
        stdout,
    ), stdout
    assert "FAILED" not in stdout  # the first attempt's failure never reached pytest


def test_the_rerun_ran_only_the_failed_test_as_a_run_of_its_own(flaky: dict[str, Any]) -> None:
    runs = sorted(FileStore(flaky["root"] / "state").list(), key=lambda run: run.created_at or 0)
    first, rerun = runs
    assert first.status is Status.FAILED and rerun.status is Status.COMPLETED
    assert rerun.retry_of == first.id and rerun.machine == first.machine == "m1"
    assert rerun.command is not None and rerun.command[-1] == "test_suite.py::test_flaky"
    # The summary table names the rerun and counts the flaky test.
    row = next(line for line in flaky["stdout"].splitlines() if rerun.id in line and "suite" in line)
    assert f"(retry of {first.id})" in row and row.rstrip().endswith("1")


def _case(flaky: dict[str, Any], name: str) -> ET.Element:
    root = ET.parse(flaky["out"] / "junit.xml").getroot()
    (case,) = [case for case in root.iter("testcase") if case.get("name") == name]
    return case


def test_junit_carries_the_first_failure_as_a_flaky_failure(flaky: dict[str, Any]) -> None:
    case = _case(flaky, "test_flaky")
    assert case.find("failure") is None and case.find("error") is None
    (element,) = case.findall("flakyFailure")
    assert element.get("type") == "AssertionError"
    assert (element.get("message") or "").startswith("AssertionError: fails on the first attempt")
    assert "fails on the first attempt" in (element.findtext("stackTrace") or "")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["lrun_test_attempts"] == "2"
    assert "lrun_test_attempt_1" in properties
    assert _case(flaky, "test_steady").find("flakyFailure") is None


def test_html_allure_and_the_github_summary_show_it(flaky: dict[str, Any]) -> None:
    out = flaky["out"]
    page = (out / "report.html").read_text()
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob is not None
    (test,) = json.loads(html.unescape(blob.group(1)))["tests"]["suite/test_suite.py::test_flaky"]
    assert any(extra["name"] == "lrun flaky" for extra in test["extras"])
    results = [json.loads(p.read_text()) for p in (out / "allure").glob("*-result.json")]
    (result,) = [r for r in results if r["name"] == "test_flaky"]
    assert result["status"] == "passed" and result["statusDetails"]["flaky"] is True
    summary = (flaky["root"] / "summary.md").read_text()
    assert "#### Flaky: passed on a rerun (1)" in summary
    (line,) = [
        line for line in summary.splitlines() if line.startswith("- `suite/test_suite.py::test_flaky`")
    ]
    assert "passed on attempt 2 of 3; attempt 1 failed in run" in line


def test_a_test_failing_every_attempt_fails_with_every_attempts_failure(
    tmp_path: Path, engines: list[str]
) -> None:
    write_tests(tmp_path, "broken", BROKEN)
    junit = tmp_path / "junit.xml"
    done = _session(tmp_path, engines[0], "broken", "--lrun-flaky-attempts=2", f"--junitxml={junit}")
    stdout = done.stdout + done.stderr
    assert done.returncode == 1, stdout
    assert re.search(r"^=+ 1 failed in ", stdout, re.MULTILINE), stdout
    assert "broken on attempt 2" in stdout and "broken on attempt 1" in stdout
    assert "[lrun] attempt 1 (run " in stdout
    (case,) = [
        case for case in ET.parse(junit).getroot().iter("testcase") if case.get("name") == "test_broken"
    ]
    assert case.find("failure") is not None
    (rerun,) = case.findall("rerunFailure")
    assert "broken on attempt 1" in (rerun.get("message") or "")


def test_runs_of_one_key_that_disagree_are_listed_and_served_from_the_cache_only_if_asked(
    tmp_path: Path, engines: list[str], backend: StoreSpec
) -> None:
    write_tests(tmp_path, "coin", COIN)
    store = {"LRUN_STORE": backend.url} if backend.url else {}
    base = ("coin", "--lrun-secret-env=COIN")
    args = (*base, "--lrun-reuse=completed")
    tails = _session(tmp_path, engines[0], *args, COIN="tails", **store)
    assert tails.returncode == 1, tails.stdout
    heads = _session(tmp_path, engines[0], *args, COIN="heads", **store)
    assert heads.returncode == 0, heads.stdout
    listed = _lrun(tmp_path, "flaky", "--json", **store)
    assert listed.returncode == 0, listed.stderr
    (flaky,) = json.loads(listed.stdout)["flaky"]
    assert (flaky["suite"], flaky["nodeid"]) == ("coin", "test_coin.py::test_coin")
    assert (flaky["passed"], flaky["failed"], flaky["machines"]) == (1, 1, ["m1"])
    # The completed run of that key proves nothing: it runs again instead of being served.
    again = _session(tmp_path, engines[0], *args, COIN="heads", **store)
    assert again.returncode == 0, again.stdout
    assert "completed (created)" in again.stdout and "(cached)" not in again.stdout
    # Asked for, it is served all the same: the newest completed run, whatever the coin says now.
    served = _session(tmp_path, engines[0], *base, "--lrun-reuse=completed-even-flaky", COIN="tails", **store)
    assert served.returncode == 0, served.stdout
    assert "completed (cached)" in served.stdout and "(created)" not in served.stdout, served.stdout


def test_a_quarantined_failing_test_leaves_the_session_green(
    tmp_path: Path, engines: list[str], backend: StoreSpec
) -> None:
    write_tests(tmp_path, "broken", BROKEN)
    store = {"LRUN_STORE": backend.url} if backend.url else {}
    nodeid = "broken/test_broken.py::test_broken"
    assert _lrun(tmp_path, "flaky", "quarantine", nodeid, **store).returncode == 0
    listed = json.loads(_lrun(tmp_path, "flaky", "--json", **store).stdout)["quarantined"]
    assert [entry["nodeid"] for entry in listed] == [nodeid]
    green = _session(tmp_path, engines[0], "broken", "--lrun-quarantine=store", **store)
    assert green.returncode == 0, green.stdout
    assert re.search(r"^=+ 1 xfailed in ", green.stdout, re.MULTILINE), green.stdout
    day = listed[0]["since"][:10]
    assert f"QUARANTINED {nodeid} - failed; quarantined: flaky since {day}" in green.stdout
    # Released, it fails the session again.
    assert _lrun(tmp_path, "flaky", "release", nodeid, **store).returncode == 0
    red = _session(tmp_path, engines[0], "broken", "--lrun-quarantine=store", **store)
    assert red.returncode == 1 and "QUARANTINED" not in red.stdout, red.stdout
    # A file names it too, with the date it was quarantined.
    (tmp_path / "quarantine.txt").write_text(f"{nodeid} 2026-11-30\n")
    filed = _session(tmp_path, engines[0], "broken", "--lrun-quarantine=quarantine.txt", **store)
    assert filed.returncode == 0, filed.stdout
    assert "quarantined: flaky since 2026-11-30" in filed.stdout
