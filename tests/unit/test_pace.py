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
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.session.jobs import Job
from pytest_lrun.session.workers import JobLine
from pytest_lrun.store import Ticket
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


def test_a_machine_has_a_staged_run_per_run_of_ours_running_there() -> None:
    """More staged runs on a machine than runs of ours that will free a slot there could wait at
    the gate with none running (a plan's benchmark hung so): a reservation past them is refused."""
    slots = Slots()
    assert slots.reserve("m1") is None  # nothing of ours runs there: no slot of ours will free
    slots.started("m1", "r1")
    slots.started("m1", "r2")
    assert slots.reserve("m1") == 1 and slots.reserve("m1") == 2  # how far past the slots each goes
    assert slots.reserve("m1") is None
    slots.staged_as("m1", "s1")
    slots.release("m1")  # the second reservation was not placed
    assert slots.reserve("m1") == 2
    slots.staged_as("m1", "s2")
    slots.exited("m1", "r1")  # its slot is free: it will free no other
    assert slots.reserve("m1") is None
    slots.started("m1", "s1")  # it passed the gate: a place for the next
    assert slots.reserve("m1") == 3  # past the slots by s2, itself and r1 (live in the store till it ends)
    slots.release("m1")
    slots.ended("m1", "s2")  # failed before it started: its place goes with it
    for run in ("r1", "r2", "s1"):
        slots.ended("m1", run)
    assert slots.reserve("m1") is None


class Active:
    """A store whose live runs on every machine are ``live``."""

    def __init__(self, *live: str) -> None:
        self.live = set(live)

    def active(self, machine: str) -> list[Any]:
        return [type("R", (), {"id": run})() for run in sorted(self.live)]


def gate(slots: Slots, store: Active, run_id: str, passed: list[str]) -> threading.Thread:
    machine = Machine("m1", "unix:///x", "config", slots=2)
    thread = threading.Thread(
        target=lambda: (slots.wait_free(store, machine, run_id, lambda: False), passed.append(run_id))  # type: ignore[arg-type]
    )
    thread.start()
    return thread


def test_a_staged_run_starts_when_a_container_exits_not_when_its_run_ends() -> None:
    """The slot is free once the container exited: the staged run starts while the run before it
    is read back, and a second staged run waits for the next container to exit."""
    slots, store = Slots(), Active("r1", "r2", "s1", "s2")  # the store counts all four as live
    for run in ("r1", "r2"):
        slots.started("m1", run)
    for run in ("s1", "s2"):
        slots.reserve("m1")
        slots.staged_as("m1", run)
    passed: list[str] = []
    threads = [gate(slots, store, run, passed) for run in ("s1", "s2")]
    time.sleep(0.3)
    assert passed == []  # both slots are held
    slots.exited("m1", "r1")
    threads[0].join(WAIT_S)
    time.sleep(0.3)
    assert passed == ["s1"]  # r1's slot went to the first staged run only
    slots.exited("m1", "r2")
    threads[1].join(WAIT_S)
    assert passed == ["s1", "s2"]


def test_of_a_dispatchers_waiters_for_the_same_machines_only_the_oldest_asks_the_store() -> None:
    """Forty plan entries on one tag wait for its slots: each asking the store at every slot
    freed cost the host's CPU and let a younger waiter's ticket stall behind the older ones'."""
    slots, tag, other = Slots(), frozenset({"m1", "m2"}), frozenset({"m3"})
    old, young, elsewhere = Ticket("old", 1.0), Ticket("young", 2.0), Ticket("elsewhere", 3.0)
    slots.wait_in_line(tag, young)
    assert slots.first_in_line(tag, young)
    slots.wait_in_line(tag, old)  # older, as the store's line orders tickets: it goes first
    slots.wait_in_line(other, elsewhere)
    assert slots.first_in_line(tag, old) and not slots.first_in_line(tag, young)
    assert slots.first_in_line(other, elsewhere)  # other machines: no waiter of the tag's in its way
    timer = threading.Timer(0.1, slots.leave_line, args=(tag, old))
    began = time.monotonic()
    timer.start()
    slots.pause(WAIT_S)  # the next in line asks at once, not at its next poll
    assert time.monotonic() - began < WAIT_S / 2
    timer.join()
    assert slots.first_in_line(tag, young)


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


def test_a_targets_jobs_are_decided_in_the_order_given_whichever_thread_runs_first() -> None:
    machine = Machine("m", "unix:///nowhere", "config")
    jobs = [Job(RunSpec(Path(name), machine, "img", ("true",))) for name in ("first", "second", "third")]
    line = JobLine(jobs)
    taken = [line.take(), line.take()]
    assert [job.spec.test_dir.name for job in taken if job] == ["first", "second"]
    decided: list[str] = []

    def second() -> None:
        line.wait_turn(jobs[1].spec, lambda: False)
        decided.append("second")

    thread = threading.Thread(target=second)
    thread.start()  # second's thread is ready first, yet waits for first's run to be decided
    thread.join(0.3)
    assert thread.is_alive() and decided == []
    decided.append("first")
    line.decided(jobs[0].spec)
    thread.join(WAIT_S)
    assert decided == ["first", "second"]
    line.decided(jobs[1].spec)
    line.wait_turn(jobs[2].spec, lambda: False)  # returns at once: both before it were decided
    assert line.take() is jobs[2] and line.take() is None


def test_a_job_waiting_for_its_turn_goes_on_when_the_session_stops() -> None:
    machine = Machine("m", "unix:///nowhere", "config")
    jobs = [Job(RunSpec(Path(name), machine, "img", ("true",))) for name in ("first", "second")]
    began = time.monotonic()
    JobLine(jobs).wait_turn(jobs[1].spec, lambda: time.monotonic() - began > 0.3)
    assert time.monotonic() - began < WAIT_S
