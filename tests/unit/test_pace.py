"""What keeps a fleet's slots busy, at the seams a fake engine can show: an ended run's container
removed off the run's path, image ids found once, machines connected at once.

The same on real engines: tests/integration/test_fleet.py (no container left once pytest
returns) and ``bench/fleet.py`` (the times).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import EngineError
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.container import Remover
from pytest_lrun.run.images import Builder
from pytest_lrun.run.slots import Slots
from pytest_lrun.store.files import FileStore

WAIT_S = 10.0


class SlowRemovals:
    """An engine whose removals wait for ``go`` (the first one fails, as a vanished engine's would)."""

    machine = "m"
    url = "unix:///nowhere"

    def __init__(self) -> None:
        self.go = threading.Event()
        self.removed: list[str] = []
        self.threads: list[str] = []

    def remove(self, container_id: str) -> None:
        self.threads.append(threading.current_thread().name)
        assert self.go.wait(WAIT_S)
        if container_id == "fails":
            raise EngineError("m", "remove container: the engine went away")
        self.removed.append(container_id)


def test_a_remover_with_later_returns_at_once_and_close_waits_for_its_removals() -> None:
    engine = SlowRemovals()
    remover = Remover(later=True)
    remover.remove(engine, "fails")  # type: ignore[arg-type]
    remover.remove(engine, "c1")  # type: ignore[arg-type]
    assert engine.removed == []  # the caller went on while the removals wait
    engine.go.set()
    remover.close()
    assert engine.removed == ["c1"]  # the failed one is left to `lrun reap`, quietly
    assert all(name.startswith("lrun-remove") for name in engine.threads)
    remover.remove(engine, "c2")  # type: ignore[arg-type]
    assert engine.removed == ["c1", "c2"] and engine.threads[-1] == threading.current_thread().name


def test_a_remover_without_later_removes_before_it_returns() -> None:
    engine = SlowRemovals()
    engine.go.set()
    Remover(later=False).remove(engine, "c1")  # type: ignore[arg-type]
    assert engine.removed == ["c1"] and engine.threads == [threading.current_thread().name]


class CountedImages:
    machine = "m"
    url = "unix:///nowhere"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def image_id(self, image: str, pull: str) -> str:
        self.asked.append((image, pull))
        return f"sha256:{len(self.asked)}"


@pytest.mark.parametrize("pull", ["missing", "never"])
def test_an_image_id_is_found_once_per_machine_and_image(tmp_path: Path, pull: str) -> None:
    builder = Builder(FileStore(tmp_path / "state"))
    engine = CountedImages()
    m1, m2 = (Machine(name, "unix:///nowhere", "config", pull=pull) for name in ("m1", "m2"))
    ids = [builder.image_id(engine, m, image, None) for m in (m1, m2, m1, m2) for image in ("a", "b")]  # type: ignore[arg-type]
    assert ids == ["sha256:1", "sha256:2", "sha256:3", "sha256:4"] * 2
    assert len(engine.asked) == 4


def test_an_image_pulled_always_is_asked_for_each_run(tmp_path: Path) -> None:
    builder = Builder(FileStore(tmp_path / "state"))
    engine = CountedImages()
    machine = Machine("m1", "unix:///nowhere", "config", pull="always")
    ids = [builder.image_id(engine, machine, "a", None) for _ in range(3)]  # type: ignore[arg-type]
    assert ids == ["sha256:1", "sha256:2", "sha256:3"]


def test_machines_connect_at_once_and_each_once() -> None:
    """A machine whose engine is slow to answer holds up no other machine's first run."""
    b_connected = threading.Event()
    made: list[str] = []

    def factory(machine: Machine) -> Any:
        made.append(machine.name)
        if machine.name == "a":
            assert b_connected.wait(WAIT_S), "b waited for a's connect"
        return machine.name

    pool = EnginePool(factory)
    a, b = Machine("a", "unix:///a", "config"), Machine("b", "unix:///b", "config")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(pool.get(a))) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert pool.get(b) == "b"
    b_connected.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert results == ["a", "a", "a"] and sorted(made) == ["a", "b"]


def test_the_docker_engine_loads_without_paramiko_until_an_ssh_machine_needs_it() -> None:
    """pytest-lrun's start-up leaves docker-py's ssh transport out (tests/integration/test_ssh.py
    connects through it in a fresh process, loading it then)."""
    pytest.importorskip("paramiko")  # the ssh extra: without it there is nothing to leave out
    code = (
        "import sys; import pytest_lrun.engine.docker as d; import docker.api.client as c; "
        "print('paramiko' in sys.modules, hasattr(c, 'SSHHTTPAdapter'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_machine_has_one_staged_run_at_a_time_and_only_where_a_run_of_ours_runs() -> None:
    """Two staged runs on a machine could wait for each other at the gate with none running there
    (a plan's benchmark hung so): the second reservation is refused until the first one started."""
    slots = Slots()
    assert not slots.reserve("m1")  # nothing of ours runs there: no slot of ours will free
    slots.started("m1", "r1")
    assert slots.reserve("m1") and not slots.reserve("m1")
    slots.staged_as("m1", "s1")
    assert not slots.reserve("m1")
    slots.started("m1", "s1")  # it passed the gate: the place is free again
    assert slots.reserve("m1")
    slots.release("m1")
    assert slots.reserve("m1")
    slots.staged_as("m1", "s2")
    slots.ended("m1", "s2")  # failed before it started: the place goes with it
    slots.ended("m1", "r1")
    slots.ended("m1", "s1")
    assert not slots.reserve("m1")


def test_a_pause_ends_when_a_run_of_ours_ends() -> None:
    """A waiter in line tries again as soon as a run of its dispatcher frees a slot."""
    slots = Slots()
    slots.started("m1", "r1")
    timer = threading.Timer(0.1, slots.ended, args=("m1", "r1"))
    began = time.monotonic()
    timer.start()
    slots.pause(WAIT_S)
    assert time.monotonic() - began < WAIT_S / 2
    timer.join()
