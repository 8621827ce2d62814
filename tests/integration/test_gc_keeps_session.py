"""The session's closing gc never evicts the runs it just reported, even one bigger than the cap."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from lrun_support import write_tests

# 60 MiB of artifacts: more than the state dir's default cap (50 MiB), less than the artifacts' (512 MiB).
BIG = """
    import os
    from pathlib import Path

    def test_big():
        for name in ("a", "b"):
            Path(f"/lrun/artifacts/{name}.bin").write_bytes(os.urandom(30 * 1024 * 1024))
"""


@pytest.mark.timeout(600)
def test_a_run_over_the_default_cap_is_kept_by_its_own_session(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    write_tests(project, "small", "def test_small():\n    print('small')\n")
    write_tests(project, "big", BIG)
    pytester.runpytest_subprocess("--lrun-machine=m1", "small").assert_outcomes(passed=1)
    (earlier,) = [p.name for p in (state_dir / "runs").iterdir()]

    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "big", "--junitxml=out.xml", "-o", "junit_logging=all"
    )
    result.assert_outcomes(passed=1)  # its test (the run's own report, with its artifacts, is no test)
    # The earlier run went to make room; the big one stayed, and the session said why.
    (big,) = [p.name for p in (state_dir / "runs").iterdir()]
    assert big != earlier
    result.stdout.fnmatch_lines(
        [f"lrun: warning: run {big} alone holds * bytes, more than the state dir's cap of 52428800 bytes*"]
    )
    xml = (project / "out.xml").read_text()
    attachments = re.findall(r"\[\[ATTACHMENT\|([^\]]+)\]\]", xml)
    assert any(path.endswith("a.bin") for path in attachments), attachments
    for path in attachments:
        assert Path(path).is_file(), path  # every line of the report still points at a file
    props = {p.get("name"): p.get("value") for p in ET.fromstring(xml).iter("property")}
    assert props["lrun_run_id"] == big
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", "show", big, "--json"],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert shown.returncode == 0, shown.stderr
    logs = json.loads(shown.stdout)["run"]["logs_path"]
    assert Path(logs).is_file()

    # Not the next session's own: its gc removes the big run and keeps its own.
    pytester.runpytest_subprocess("--lrun-machine=m1", "small").assert_outcomes(passed=1)
    (latest,) = [p.name for p in (state_dir / "runs").iterdir()]
    assert latest not in (big, earlier)
