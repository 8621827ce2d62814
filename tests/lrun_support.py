"""Helpers shared by the test folders (importable as ``lrun_support``: ``pythonpath = tests``).

Kept out of the ``tests`` tree's packages on purpose: the suite runs in
importlib mode, so the package under test is always the installed one (tox
installs the built wheel), never the working tree.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from pytest_lrun.config.machines import Machine, MachineResolver, load_machine_tables
from pytest_lrun.run.spec import RunSpec

DEFAULT_ENGINES = "unix:///var/run/docker.sock,unix:///var/run/lrun-docker2.sock"
PYTHON_IMAGE = "lrun-python:bookworm"
# The same Debian rootfs with a current pytest (>= 8) in /usr/local (scripts/provision.sh).
PYTHON_CURRENT_IMAGE = "lrun-python-current:latest"
BUSYBOX_IMAGE = "lrun-busybox:latest"


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now (for a server of a test's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_urls() -> list[str]:
    """The test engines, from ``LRUN_TEST_ENGINES`` (as ``scripts/provision.sh`` prints it)."""
    return [u.strip() for u in os.environ.get("LRUN_TEST_ENGINES", DEFAULT_ENGINES).split(",") if u.strip()]


def write_tests(root: Path, name: str, source: str) -> Path:
    """A test directory ``root/name`` holding ``test_<name>.py`` with ``source``."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"test_{name}.py").write_text(textwrap.dedent(source))
    return d


HANGS = """
    import time


    def test_first():
        pass


    def test_second():
        time.sleep(600)


    def test_third():
        pass
"""  # one test passes, one hangs, one never runs: what a timeout must tell apart


def tls_tables(endpoint: str, url: str, tls: Path, keys: str) -> str:
    """Machine tables for a mutual-TLS ``url`` (``endpoint`` = ``host`` or ``remote``) with
    ``provision.sh``'s certificates under ``tls``, each with ``keys`` too: ``secure``, with
    the client certificate, and ``no-client-cert``, which the endpoint must refuse."""
    return (
        f'\n[tool.lrun.machines.secure]\n{endpoint} = "{url}"\n{keys}'
        f'tls_ca_cert = "{tls / "ca.pem"}"\n'
        f'tls_client_cert = "{tls / "cert.pem"}"\n'
        f'tls_client_key = "{tls / "key.pem"}"\n'
        f'\n[tool.lrun.machines.no-client-cert]\n{endpoint} = "{url}"\n{keys}'
        f'tls_ca_cert = "{tls / "ca.pem"}"\n'
    )


def resolver_for(project: Path) -> MachineResolver:
    pyproject = project / "pyproject.toml"
    return MachineResolver(load_machine_tables(pyproject), pyproject)


def busybox_spec(tmp_path: Path, machine: Machine, *command: str) -> RunSpec:
    """A spec running ``command`` in busybox on ``machine``, from a fresh (empty) directory."""
    test_dir = tmp_path / f"dir-{secrets.token_hex(4)}"
    test_dir.mkdir()
    (test_dir / "marker.txt").write_text(test_dir.name)  # a distinct key per spec
    return RunSpec(test_dir=test_dir, machine=machine, image=BUSYBOX_IMAGE, command=command, timeout=120)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def container_status(api: Any, container_id: str) -> str | None:
    try:
        return str(api.inspect_container(container_id)["State"]["Status"])
    except docker.errors.NotFound:
        return None


def wait_for_running(state_dir: Path, timeout: float = 60.0) -> str:
    """The id of the first run under ``state_dir`` to become running (after its command had a moment)."""
    found: list[str] = []

    def running() -> bool:
        for record in sorted(state_dir.glob("runs/*/run.json")):
            data = json.loads(record.read_text())
            if data["status"] == "running":
                found.append(str(data["id"]))
                return True
        return False

    wait_for(running, "a run to become running", timeout)
    time.sleep(0.5)  # let the inner command start
    return found[0]


def container_spans(
    engine: str, since: float, until: float, label: str | None = "lrun.run-id"
) -> dict[str, tuple[float, float]]:
    """Each container's life on ``engine`` between ``since`` and ``until``, from the engine's own
    events (start to die, unix seconds): when it held a slot, whatever its run's record says of
    the read-back around it. Keyed by its ``label``'s value (lrun's containers by run id), or
    with ``label=None`` by container id, every container's."""
    client = docker.APIClient(base_url=engine, timeout=10, version="auto")
    filters = {"type": "container", **({"label": label} if label else {})}
    try:
        times: dict[str, dict[str, float]] = {}
        for event in client.events(since=int(since), until=int(until) + 1, decode=True, filters=filters):
            actor = event["Actor"]
            key = actor["Attributes"][label] if label else actor["ID"]
            times.setdefault(key, {})[event["Action"]] = event["timeNano"] / 1e9
    finally:
        client.close()
    return {key: (t["start"], t["die"]) for key, t in times.items() if "start" in t and "die" in t}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of ``spans`` (start, end) that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def lrun_containers(engines: list[str], run_ids: set[str], *, remove: bool = False) -> list[str]:
    """The run ids of the lrun-labelled containers of ``run_ids`` on ``engines``; removed when asked."""
    found: list[str] = []
    for url in engines:
        client = docker.APIClient(base_url=url, timeout=10, version="auto")
        try:
            for c in client.containers(all=True, filters={"label": "lrun.run-id"}):
                if c["Labels"].get("lrun.run-id") in run_ids:
                    found.append(c["Labels"]["lrun.run-id"])
                    if remove:
                        client.remove_container(c["Id"], force=True, v=True)
        finally:
            client.close()
    return found
