"""The container defaults of every run, checked on the real engines: what the engine was asked for
(``docker inspect``) and what a process inside actually gets.

A run has no network unless its machine asks for one, is never privileged and mounts nothing of
the host, runs with ``no-new-privileges``, holds only the capabilities of
:data:`~pytest_lrun.engine.docker.RUN_CAPABILITIES`, and is capped in processes (``pids_limit``) and, when
its machine sets it, in memory.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from lrun_support import PYTHON_IMAGE

from pytest_lrun.config.machines import Machine
from pytest_lrun.engine.docker import RUN_CAPABILITIES
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store import RunStore, Status

# Bit numbers of the capabilities in /proc/PID/status masks (linux/capability.h).
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7}

# Runs in the container as root, prints one line: what the process was given and what it may do.
PROBE = textwrap.dedent(
    """
    import errno, json, os, socket, stat, sys, time

    def first(*paths):
        for path in paths:
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError:
                pass
        return None

    def refusal(action):
        try:
            action()
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))
        return "allowed"

    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    out = {
        "cap_eff": int(status["CapEff"], 16),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "pids_max": first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        "memory_max": first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        "mknod": refusal(lambda: os.mknod("/tmp/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))),
        "raw_socket": refusal(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        ),
        "connect": refusal(lambda: socket.create_connection(("1.1.1.1", 53), timeout=5).close()),
    }
    forks = int(sys.argv[1])
    children = []
    try:
        while len(children) < forks:
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        out["fork_refused"] = errno.errorcode.get(e.errno, str(e))
    out["forked"] = len(children)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print("PROBE", json.dumps(out), flush=True)
    """
)


@pytest.fixture
def kept(store: RunStore) -> Iterator[Dispatcher]:
    """A dispatcher that keeps each run's container, so the test can inspect it (the conftest removes it)."""
    pool = EnginePool(connect_timeout=10)
    yield Dispatcher(store, pool, keep="always")
    pool.close()


def probe(
    dispatcher: Dispatcher, tmp_path: Path, machine: Machine, *, forks: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run :data:`PROBE` on ``machine``: the container's HostConfig, and what the probe printed."""
    test_dir = tmp_path / f"probe-{machine.name}"
    test_dir.mkdir()
    (test_dir / "probe.py").write_text(PROBE)
    spec = RunSpec(
        test_dir=test_dir,
        machine=machine,
        image=PYTHON_IMAGE,
        command=("python3", "probe.py", str(forks)),
        timeout=120,
    )
    run = dispatcher.dispatch(spec).run
    assert run.status is Status.COMPLETED, run.error_msg
    logs = dispatcher.store.files(run.id).logs.read_text()
    assert run.container_id is not None
    client = docker.APIClient(base_url=machine.host, timeout=30, version="auto")
    try:
        info = client.inspect_container(run.container_id)
    finally:
        client.close()
    (line,) = [line for line in logs.splitlines() if line.startswith("PROBE ")]
    return info, json.loads(line.removeprefix("PROBE "))


@pytest.fixture(params=[0, 1], ids=["engine1", "engine2"])
def host(request: pytest.FixtureRequest, engines: list[str]) -> str:
    url: str = engines[request.param]
    return url


def test_a_run_gets_the_defaults(kept: Dispatcher, tmp_path: Path, host: str) -> None:
    info, inside = probe(kept, tmp_path, Machine(name="m1", host=host, source="config"))
    config = info["HostConfig"]

    # No network: only the loopback interface, nothing reachable.
    assert config["NetworkMode"] == "none"
    assert inside["interfaces"] == ["lo"]
    assert inside["connect"] == "ENETUNREACH"
    # Not privileged, nothing of the host mounted.
    assert config["Privileged"] is False
    assert not config.get("Binds") and not config.get("Mounts") and info["Mounts"] == []
    # A setuid binary cannot raise privileges.
    assert config["SecurityOpt"] == ["no-new-privileges"]
    assert inside["no_new_privs"] == "1"
    # Only the run capabilities: no device nodes, no raw sockets.
    assert config["CapDrop"] == ["ALL"] and sorted(config["CapAdd"]) == sorted(RUN_CAPABILITIES)
    assert inside["cap_eff"] == sum(1 << CAPABILITY_BITS[name] for name in RUN_CAPABILITIES)
    assert inside["mknod"] == "EPERM"
    assert inside["raw_socket"] == "EPERM"
    # Processes capped by default; memory only when the machine says so.
    assert config["PidsLimit"] == 4096
    assert inside["pids_max"] == "4096"
    assert config["Memory"] == 0


def test_the_machine_caps_processes_and_memory(kept: Dispatcher, tmp_path: Path, host: str) -> None:
    machine = Machine(name="small", host=host, source="config", pids_limit=32, memory=256 * 1024**2)
    info, inside = probe(kept, tmp_path, machine, forks=200)

    assert info["HostConfig"]["PidsLimit"] == 32
    assert inside["pids_max"] == "32"
    # The probe is one of the 32: a fork bomb stops short of them, refused by the kernel.
    assert inside["forked"] < 32 and inside["fork_refused"] == "EAGAIN"
    assert info["HostConfig"]["Memory"] == 256 * 1024**2
    assert inside["memory_max"] == str(256 * 1024**2)


def test_a_machine_that_asks_for_a_network_gets_it(kept: Dispatcher, tmp_path: Path, host: str) -> None:
    # The test engines have no bridge: the host's network is the one a machine can ask for here.
    info, inside = probe(kept, tmp_path, Machine(name="net", host=host, source="config", network="host"))

    assert info["HostConfig"]["NetworkMode"] == "host"
    assert inside["interfaces"] != ["lo"] and "lo" in inside["interfaces"]
