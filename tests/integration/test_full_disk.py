"""A state dir on a small tmpfs, a real engine: a full disk refuses new runs and never wedges a live one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lrun_support import write_tests

LOUD = """
    def test_loud():
        for i in range(40_000):
            print(f"line {i:06d} " + "x" * 100)
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the tests run as root, as the engines do)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.strip()}"
        if os.environ.get("LRUN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> None:
    """Fill the file system of ``path`` with one file, leaving about ``leave`` bytes free."""
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(path / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def records(state: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(state.glob("runs/*/run.json"))]


def test_a_full_disk_refuses_new_runs_and_never_wedges_a_live_one(
    pytester: pytest.Pytester, project: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = small_disk / "state"
    monkeypatch.setenv("LRUN_STATE_DIR", str(state))
    write_tests(project, "quiet", "def test_quiet():\n    pass\n")
    write_tests(project, "loud", LOUD)
    pytester.runpytest_subprocess("--lrun-machine=m1", "quiet").assert_outcomes(passed=1)
    (earlier,) = records(state)

    # Less free room than the reserve: refused before anything is recorded or started.
    fill(small_disk, 512 * 1024)
    refused = pytester.runpytest_subprocess("--lrun-machine=m1", "quiet")
    assert refused.ret != 0
    refused.stdout.fnmatch_lines(
        ["*less than the 1048576 bytes each run keeps*", "*state_full: the state dir*"]
    )
    assert len(records(state)) == 1

    # Room for the reserve, not for the run's 4 MB of output: the disk fills mid-run.
    (small_disk / "filler").unlink()
    fill(small_disk, 1536 * 1024)
    loud = pytester.runpytest_subprocess("--lrun-machine=m1", "loud")
    loud.stdout.fnmatch_lines(["*loud*"])
    after = {record["id"]: record for record in records(state)}  # every record parses: none is torn
    (run,) = [record for record in after.values() if record["id"] != earlier["id"]]
    assert run["status"] == "completed" and run["exit_code"] == 0  # its real status
    assert run["error_code"] == "state_full"
    assert after[earlier["id"]] == earlier
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", "show", str(earlier["id"]), "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["run"]["status"] == "completed"

    # Space freed: the next run works as if nothing happened.
    (small_disk / "filler").unlink()
    again = pytester.runpytest_subprocess("--lrun-machine=m1", "quiet", "--lrun-reuse=never")
    again.assert_outcomes(passed=1)
    assert all(record["status"] in ("completed", "failed") for record in records(state))
