"""A real container leaves hostile things for the host to read back: none of them gets out of the run's
folder, and every refusal is on the run's record and on the terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lrun_support import BUSYBOX_IMAGE

# Run in the container's copy of the test directory; each line is one hostile thing.
EVIL = r"""
cd /lrun/artifacts
ln -s /etc/passwd passwd
ln -s ../../../../../../etc/shadow up
mkfifo pipe
touch "bad-$(printf '\377\376')-name"
echo ok > fine
printf '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>' > /lrun/out/junit.xml
printf '<testsuite><testcase classname="t" name="&x;"/></testsuite>' >> /lrun/out/junit.xml
"""


def test_hostile_artifacts_stay_in_the_run_folder_and_are_recorded(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    (project / "evil").mkdir()
    (project / "evil" / "evil.sh").write_text(EVIL)
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", f"--lrun-image={BUSYBOX_IMAGE}", "--lrun-command=sh -e evil.sh", "evil"
    )
    out = result.stdout.str()

    (run_dir,) = (state_dir / "runs").iterdir()
    artifacts = run_dir / "artifacts" / "artifacts"
    # What is safe came back; the links out and the fifo did not; the odd name is inside, as its bytes.
    assert sorted(os.listdir(bytes(artifacts))) == [b"bad-\xff\xfe-name", b"fine"]
    assert (artifacts / "fine").read_text() == "ok\n"
    for dirpath, dirnames, filenames in os.walk(run_dir):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            assert not path.is_symlink() and path.resolve().is_relative_to(run_dir.resolve())

    # Each refusal is on the run's record, with its reason; the terminal names the run.
    record = json.loads((run_dir / "run.json").read_text())
    assert record["error_code"] == "unsafe_archive"
    refusals = record["error_msg"].splitlines()
    assert "refused artifacts/passwd: absolute symlink target" in refusals
    assert "refused artifacts/up: symlink target escapes destination" in refusals
    assert "refused artifacts/pipe: fifo" in refusals
    assert f"[lrun] run {run_dir.name} on m1" in out

    # The JUnit XML with an external entity is refused as such, and the host's /etc/passwd is never read.
    assert "document type declaration <!DOCTYPE t> is not allowed" in out
    assert "root:x:0:0" not in out
    result.assert_outcomes(errors=1)  # the command passed; its archive was refused: the run failed itself
