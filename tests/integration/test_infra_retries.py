"""Infrastructure failures are retried, test failures never: real engines, a container removed
mid-run, and a real registry whose first pull fails.

The suite's conftest sleeps while it is imported, so the container can be taken away
before any inner test begins: that is the engine's fault, not the tests'.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import docker
from flaky_registry import flaky_registry
from lrun_support import BUSYBOX_IMAGE, wait_for_running, write_tests

LOST = ("exit_nonzero", "container_gone")  # how a killed and removed container ends, by who saw it first
SLOW_START = "import time\n\ntime.sleep(4)  # the container is removed meanwhile, on the first attempt\n"


def records(state_dir: Path) -> list[dict[str, object]]:
    found = [json.loads(p.read_text()) for p in state_dir.glob("runs/*/run.json")]
    return sorted(found, key=lambda record: str(record["created_at"]))


def remove_container(engine: str, run_id: str) -> None:
    client = docker.APIClient(base_url=engine, timeout=30, version="auto")
    try:  # SIGKILL, then gone: what a daemon restart or an admin's `docker rm -f` does
        for container in client.containers(all=True, filters={"label": f"lrun.run-id={run_id}"}):
            client.remove_container(container["Id"], force=True)
    finally:
        client.close()


def host_properties(project: Path) -> dict[str | None, str | None]:
    """The properties of the host JUnit XML (``--junitxml=host.xml``), by name."""
    return {prop.get("name"): prop.get("value") for prop in ET.parse(project / "host.xml").iter("property")}


def start(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--lrun-machine=m1",
            "-rA",
            *args,
            "suite",
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_container_lost_before_any_test_is_tried_again_and_the_attempts_are_shown(
    project: Path, state_dir: Path, engines: list[str]
) -> None:
    suite = write_tests(project, "suite", "def test_it():\n    pass\n")
    (suite / "conftest.py").write_text(SLOW_START)
    proc = start(project, "--junitxml=host.xml")
    first = wait_for_running(state_dir)
    remove_container(engines[0], first)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    # Killed, then gone: the engine answers the wait with exit code 137, or with "no such container".
    assert re.search(
        rf"run {first} failed for its infrastructure \((exit_nonzero: exit code 137|container_gone)", out
    )
    assert "trying again (attempt 2 of 2)" in out
    failed, retried = records(state_dir)
    assert failed["id"] == first and failed["error_code"] in LOST  # killed, as by a daemon restart
    assert retried["retry_of"] == first and retried["status"] == "completed"
    properties = host_properties(project)
    assert properties["lrun_attempts"] == "2"
    assert properties["lrun_attempt_1"].startswith(f"run {first}: {failed['error_code']}: ")
    assert properties["lrun_run_id"] == retried["id"]


def test_no_retry_when_retries_are_off(project: Path, state_dir: Path, engines: list[str]) -> None:
    suite = write_tests(project, "suite", "def test_it():\n    pass\n")
    (suite / "conftest.py").write_text(SLOW_START)
    proc = start(project, "--lrun-infra-retries=0")
    remove_container(engines[0], wait_for_running(state_dir))
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0 and re.search("exit code 137|container_gone", out), out
    assert "trying again" not in out
    assert len(records(state_dir)) == 1


def test_a_test_that_failed_is_never_retried(project: Path, state_dir: Path) -> None:
    write_tests(project, "suite", "def test_it():\n    assert False, 'a real failure'\n")
    proc = start(project, "--lrun-infra-retries=3")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "a real failure" in out
    assert "trying again" not in out
    (only,) = records(state_dir)
    assert only["error_code"] == "exit_nonzero" and only["retry_of"] is None


def test_an_image_pull_that_fails_then_succeeds_is_tried_again(
    project: Path, state_dir: Path, engines: list[str], tmp_path: Path
) -> None:
    client = docker.APIClient(base_url=engines[0], timeout=60, version="auto")
    name = f"lrun-pull-test-{secrets.token_hex(4)}"
    try:
        with flaky_registry(tmp_path / "registry") as (port, proxy):
            # Pushed straight to the registry, pulled through the proxy: one store, two names.
            client.tag(BUSYBOX_IMAGE, f"127.0.0.1:{port}/{name}", tag="1")
            for line in client.push(f"127.0.0.1:{port}/{name}", tag="1", stream=True, decode=True):
                assert "error" not in line, line
            client.remove_image(f"127.0.0.1:{port}/{name}:1")
            (project / "pyproject.toml").write_text(
                f'[tool.lrun.machines.m1]\nhost = "{engines[0]}"\n'
                f'image = "127.0.0.1:{proxy.port}/{name}:1"\npull = "missing"\n'
            )
            (project / "suite").mkdir()
            proc = start(project, "--lrun-command=echo pulled and ran", "--junitxml=host.xml")
            out, _ = proc.communicate(timeout=180)
            refused = list(proxy.refused)
    finally:
        # By tag, never by id: the pulled image is BUSYBOX_IMAGE's, which must stay.
        for image in client.images(filters={"reference": f"*/{name}"}):
            for tag in image.get("RepoTags") or ():
                if f"/{name}:" in tag:
                    client.remove_image(tag)
        client.close()
    assert proc.returncode == 0, out
    assert refused and all("/manifests/" in line for line in refused)  # the first pull, and only it
    assert re.search(r"failed for its infrastructure \(image_pull_failed", out), out
    assert "trying again (attempt 2 of 2)" in out
    failed, retried = records(state_dir)
    assert failed["error_code"] == "image_pull_failed" and failed["container_id"] is None  # nothing ran
    assert retried["retry_of"] == failed["id"] and retried["status"] == "completed"
    assert "pulled and ran" in (state_dir / "runs" / str(retried["id"]) / "logs.txt").read_text()
    properties = host_properties(project)
    assert properties["lrun_attempts"] == "2"
