"""Recovery without an engine: reconcile, watch, cancel, reap and gc against a small fake Engine.

The fake implements the :class:`~pytest_lrun.engine.Engine` protocol for the few
calls these seams make; the same behaviours run against real engines in
tests/integration/test_recovery.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pytest

from pytest_lrun.core.errors import (
    CANCELLED,
    OWNER_GONE,
    ContainerGone,
    EngineError,
    EngineUnreachable,
    TerminalRunError,
    UnknownMachine,
)
from pytest_lrun.core.fsutil import ENTRY_BYTES
from pytest_lrun.engine import LABEL_CREATED, LABEL_RUN, LABEL_STORE, ContainerSpec, ContainerState, Engine
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.gc import gc, state_size
from pytest_lrun.run.readback import JUNIT_PATH
from pytest_lrun.run.recovery import (
    ReconcileReport,
    _docker_time,
    cancel,
    container_created,
    reap,
    reconcile,
    watch,
)
from pytest_lrun.store import Decision, Run, RunStore, Status
from pytest_lrun.store.files import FileStore

# --- a fake engine ------------------------------------------------------------------------


@dataclass
class FakeContainer:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "running"  # created, running, exited (an exited one needs an exit_code)
    exit_code: int | None = None
    logs: bytes = b""
    artifacts: dict[str, bytes] = field(default_factory=dict)  # name -> content under /lrun/artifacts
    created: str = "2024-01-02T03:04:05.123456789Z"


class FakeEngine:
    """An in-memory engine: containers are records the test edits; every call is logged."""

    def __init__(self, machine: str = "m", url: str = "fake://m") -> None:
        self.machine = machine
        self.url = url
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None
        self.exits: dict[str, threading.Event] = {}  # wait() blocks on these while a container runs

    def add(self, container: FakeContainer) -> FakeContainer:
        self.containers[container.id] = container
        return container

    def _check(self, call: str, container_id: str = "") -> None:
        self.calls.append((call, container_id))
        if self.fail_with is not None:
            raise self.fail_with

    def ping(self) -> None:
        self._check("ping")

    def image_id(self, image: str, pull: str) -> str:
        return "sha256:fake"

    def create(self, spec: ContainerSpec) -> str:
        raise NotImplementedError

    def put_archive(self, container_id: str, path: str, data: IO[bytes]) -> None:
        raise NotImplementedError

    def start(self, container_id: str) -> None:
        raise NotImplementedError

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        self._check("wait", container_id)
        c = self.containers.get(container_id)
        if c is None:
            raise ContainerGone(self.machine, f"container {container_id} vanished")
        if c.status == "running":
            event = self.exits.setdefault(container_id, threading.Event())
            if not event.wait(timeout if timeout is not None else 30):
                return None
        if c.status == "created":
            return 0  # what Docker answers for a container that never started
        return c.exit_code

    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]:
        self._check("logs", container_id)
        c = self.containers.get(container_id)
        if c is None:
            raise ContainerGone(self.machine, f"container {container_id} vanished")
        yield c.logs

    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        c = self.containers.get(container_id)
        return c is not None and path == "/lrun/artifacts" and not c.artifacts

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None:
        c = self.containers.get(container_id)
        if c is None or path != "/lrun/artifacts" or not c.artifacts:
            return None
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, content in c.artifacts.items():
                info = tarfile.TarInfo(f"artifacts/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return iter([buf.getvalue()])

    def inspect(self, container_id: str) -> ContainerState | None:
        self._check("inspect", container_id)
        c = self.containers.get(container_id)
        if c is None:
            return None
        return ContainerState(
            id=c.id,
            status=c.status,
            running=c.status == "running",
            exit_code=c.exit_code if c.status == "exited" else None,
            oom_killed=False,
            labels=dict(c.labels),
            created=c.created,
        )

    def kill(self, container_id: str) -> None:
        self._check("kill", container_id)
        c = self.containers.get(container_id)
        if c is not None and c.status == "running":
            c.status, c.exit_code = "exited", 137
            self.exits.setdefault(container_id, threading.Event()).set()

    def remove(self, container_id: str) -> None:
        self._check("remove", container_id)
        self.containers.pop(container_id, None)

    def list_labelled(self, label: str) -> list[ContainerState]:
        self._check("list", label)
        states = [self.inspect(c.id) for c in self.containers.values() if label in c.labels]
        return [s for s in states if s is not None]

    def close(self) -> None:
        pass

    def finish(self, container_id: str, exit_code: int) -> None:
        c = self.containers[container_id]
        c.status, c.exit_code = "exited", exit_code
        self.exits.setdefault(container_id, threading.Event()).set()


def _conforms(engine: Engine) -> Engine:  # mypy checks FakeEngine against the protocol here
    return engine


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return FileStore(tmp_path / "state", durable=False)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def dispatcher(store: RunStore, engine: FakeEngine) -> Dispatcher:
    return Dispatcher(store, EnginePool(lambda machine: _conforms(engine)))


def live_run(
    store: RunStore,
    *,
    machine: str = "m",
    key: str = "k",
    container: FakeContainer | None = None,
    engine: FakeEngine | None = None,
    owner: dict[str, Any] | None = None,
    status: Status = Status.RUNNING,
) -> Run:
    """A live run as a dispatch leaves it, with its container registered in ``engine``."""
    run, outcome = store.prepare(
        machine,
        key,
        lambda: Run(test_dir=f"/src/{key}", owner=owner, timeout=60, artifacts=["/lrun/artifacts"]),
    )
    assert outcome is Decision.CREATED
    if container is not None:
        assert engine is not None
        container.labels.setdefault(LABEL_RUN, run.id)
        engine.add(container)
        run = replace(run, container_id=container.id, logs_path=str(store.files(run.id).logs))
    if status is Status.RUNNING:
        run = replace(run, status=status, started_at=time.time())
    store.update(run)
    return run


def finished_run(
    store: RunStore, *, machine: str = "m", ended_at: float, created_at: float, size: int = 0
) -> Run:
    run = store.insert(
        Run(
            machine=machine,
            test_dir="/src/done",
            key="done",
            status=Status.COMPLETED,
            exit_code=0,
            created_at=created_at,
            ended_at=ended_at,
        )
    )
    if size:
        (store.files(run.id).logs).write_bytes(b"x" * size)
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def hold_lock() -> Iterator[Any]:
    """Start a separate process that holds a run's finish lock until the test ends (a live watcher)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(store: RunStore, run_id: str) -> subprocess.Popen[str]:
        path = store.files(run_id).finish_lock
        code = (
            "import filelock, sys\n"
            f"lock = filelock.FileLock({str(path)!r}, thread_local=False)\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        release(proc)


def release(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def one_engine(engine: FakeEngine) -> Any:
    calls: list[str] = []

    def resolve(name: str) -> Engine:
        calls.append(name)
        return engine

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


# --- reconcile ------------------------------------------------------------------------------------


def test_container_gone_becomes_interrupted_and_keeps_its_log(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    logs = store.files(run.id).logs
    logs.write_bytes(b"output before the crash\n")
    del engine.containers["c1"]  # `docker rm -f` while nobody watched

    report = reconcile(store, dispatcher, one_engine(engine))

    stored = store.get(run.id)
    assert stored.status is Status.INTERRUPTED
    assert stored.error_code == ContainerGone.code == "container_gone"
    assert stored.exit_code is None and stored.ended_at is not None
    assert logs.read_bytes() == b"output before the crash\n"
    (change,) = report.changed
    assert (change.run_id, change.old_status, change.new_status) == (run.id, "running", "interrupted")
    assert "container_gone" in change.reason
    assert report.problems == [] and report.untouched == []
    assert store.active() == []


def test_exited_while_unwatched_gets_its_real_result(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    container = FakeContainer("c1", logs=b"hi\n", artifacts={"report.txt": b"42\n"})
    run = live_run(store, container=container, engine=engine)
    engine.finish("c1", 3)

    report = reconcile(store, dispatcher, one_engine(engine))

    stored = store.get(run.id)
    assert stored.status is Status.FAILED and stored.exit_code == 3
    assert stored.error_code == "exit_nonzero"
    assert "hi" in (store.files(run.id).logs).read_text()
    assert (store.files(run.id).artifacts / "artifacts" / "report.txt").read_bytes() == b"42\n"
    assert "c1" not in engine.containers  # removed after collection
    (change,) = report.changed
    assert change.new_status == "failed" and "exited with code 3" in change.reason


def test_exited_zero_while_unwatched_completes(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    run = live_run(store, container=FakeContainer("c1", logs=b"ok\n"), engine=engine)
    engine.finish("c1", 0)
    reconcile(store, dispatcher, one_engine(engine))
    stored = store.get(run.id)
    assert (stored.status, stored.exit_code, stored.error_code) == (Status.COMPLETED, 0, None)


def test_pending_run_whose_owner_died_without_a_container_is_interrupted(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    owner = {"host": socket.gethostname(), "pid": dead_pid()}
    run = live_run(store, owner=owner, status=Status.PENDING)

    report = reconcile(store, dispatcher, one_engine(engine))

    stored = store.get(run.id)
    assert stored.status is Status.INTERRUPTED and stored.error_code == OWNER_GONE
    assert [(c.old_status, c.new_status) for c in report.changed] == [("pending", "interrupted")]


def test_pending_run_of_a_live_creator_is_left_alone(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    run = live_run(store, status=Status.PENDING)  # owned by this very process
    report = reconcile(store, dispatcher, one_engine(engine))
    assert store.get(run.id).status is Status.PENDING
    assert report.changed == [] and [c.run_id for c in report.untouched] == [run.id]


def test_container_created_but_never_started_is_not_a_pass(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    # The creator died between `create` and `start`: Docker's wait answers 0 for such a container.
    run = live_run(
        store, container=FakeContainer("c1", status="created"), engine=engine, status=Status.PENDING
    )

    report = reconcile(store, dispatcher, one_engine(engine))

    stored = store.get(run.id)
    assert stored.status is Status.INTERRUPTED and stored.error_code == OWNER_GONE
    assert "c1" not in engine.containers
    assert ("wait", "c1") not in engine.calls
    assert report.changed[0].new_status == "interrupted"


def test_run_watched_by_a_live_process_is_left_alone(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher, hold_lock: Any
) -> None:
    exited = live_run(store, container=FakeContainer("c1", logs=b"x\n"), engine=engine)
    engine.finish("c1", 1)
    gone = live_run(store, machine="m2", container=FakeContainer("c2"), engine=engine)
    del engine.containers["c2"]
    holders = [hold_lock(store, exited.id), hold_lock(store, gone.id)]

    report = reconcile(store, dispatcher, one_engine(engine))

    assert store.get(exited.id).status is Status.RUNNING
    assert store.get(gone.id).status is Status.RUNNING
    assert report.changed == []
    assert {c.reason for c in report.untouched} == {"watched by a live process"}
    assert ("wait", "c1") not in engine.calls

    for proc in holders:  # the watcher dies: the next reconcile settles both
        release(proc)
    report = reconcile(store, dispatcher, one_engine(engine))
    assert store.get(exited.id).status is Status.FAILED
    assert store.get(gone.id).status is Status.INTERRUPTED
    assert len(report.changed) == 2


def test_running_container_is_left_running_without_waiting(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    started = time.monotonic()
    report = reconcile(store, dispatcher, one_engine(engine))
    assert time.monotonic() - started < 5
    assert store.get(run.id).status is Status.RUNNING
    assert ("wait", "c1") not in engine.calls
    assert report.untouched[0].reason == "its container is still running"


def test_unreachable_engine_leaves_runs_untouched_and_says_so(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    far = live_run(store, machine="far", key="a", container=FakeContainer("c1"), engine=engine)
    engine.finish("c1", 0)
    unknown = live_run(store, machine="nowhere", key="b", container=FakeContainer("c3"), engine=engine)
    del engine.containers["c3"]
    asked: list[str] = []

    def resolve(name: str) -> Engine:
        asked.append(name)
        if name == "far":
            raise EngineUnreachable("far", "tcp://far:2376", "connection refused")
        raise UnknownMachine(name, ["far"])

    report = reconcile(store, dispatcher, resolve)

    assert sorted(asked) == ["far", "nowhere"]
    assert sorted(report.problems) == [
        "machine far unreachable: tcp://far:2376: connection refused",
        "machine nowhere unreachable: unknown machine 'nowhere'; known machines: far",
    ]
    for run in (far, unknown):
        assert store.get(run.id).status is Status.RUNNING
    assert report.changed == [] and report.untouched == []
    assert report.lines() == report.problems
    assert engine.calls == []  # nothing was asked of any engine


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (EngineUnreachable("m", "fake://m", "went away"), "machine m unreachable: fake://m: went away"),
        (
            EngineError("m", "inspect container: 500 boom"),
            "machine m: engine error: inspect container: 500 boom",
        ),
    ],
)
def test_engine_failing_midway_is_a_problem_not_a_crash(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher, error: Exception, line: str
) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    engine.fail_with = error
    report = reconcile(store, dispatcher, one_engine(engine))
    assert store.get(run.id).status is Status.RUNNING
    assert report.problems == [line]
    assert report.changed == [] and report.untouched == []


def test_machines_limits_what_is_reconciled(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    mine = live_run(store, machine="m", container=FakeContainer("c1"), engine=engine)
    other = live_run(store, machine="other", container=FakeContainer("c2"), engine=engine)
    del engine.containers["c1"], engine.containers["c2"]
    resolve = one_engine(engine)
    reconcile(store, dispatcher, resolve, machines={"m"})
    assert resolve.calls == ["m"]
    assert store.get(mine.id).status is Status.INTERRUPTED
    assert store.get(other.id).status is Status.RUNNING


def test_report_serialises(store: RunStore, engine: FakeEngine, dispatcher: Dispatcher) -> None:
    live_run(store, container=FakeContainer("c1"), engine=engine)
    del engine.containers["c1"]
    report = reconcile(store, dispatcher, one_engine(engine))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"changed", "untouched", "problems"}
    assert set(data["changed"][0]) == {"run_id", "machine", "old_status", "new_status", "reason"}
    assert report.lines()[0].startswith("run ") and "running -> interrupted" in report.lines()[0]
    assert ReconcileReport().lines() == []


# --- watch ------------------------------------------------------------------------------------------


def test_watch_finishes_a_running_run_when_its_container_exits(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    run = live_run(store, container=FakeContainer("c1", logs=b"done\n"), engine=engine)
    timer = threading.Timer(0.3, engine.finish, args=("c1", 0))
    timer.start()
    try:
        ended = watch(dispatcher, run.id, engine, poll=0.05)
    finally:
        timer.cancel()
    assert ended is not None and ended.status is Status.COMPLETED


def test_watch_stops_when_asked(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher, hold_lock: Any
) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    hold_lock(store, run.id)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert watch(dispatcher, run.id, engine, stop=stop, poll=0.05) is None
    assert store.get(run.id).status is Status.RUNNING


# --- cancel -------------------------------------------------------------------------------------------


def test_cancel_kills_marks_and_removes(store: RunStore, engine: FakeEngine) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    ended = cancel(store, run.id, one_engine(engine))
    assert ended.status is Status.INTERRUPTED and ended.error_code == CANCELLED
    assert store.get(run.id).error_code == CANCELLED
    assert [c for c in engine.calls if c[0] in ("kill", "remove")] == [("kill", "c1"), ("remove", "c1")]
    assert "c1" not in engine.containers


def test_cancel_of_a_terminal_run_is_refused(store: RunStore, engine: FakeEngine) -> None:
    run = finished_run(store, ended_at=1.0, created_at=1.0)
    with pytest.raises(TerminalRunError, match="is completed; it cannot become cancelled"):
        cancel(store, run.id, one_engine(engine))


def test_cancel_with_an_unreachable_engine_changes_nothing(store: RunStore, engine: FakeEngine) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    engine.fail_with = EngineUnreachable("m", "fake://m", "down")
    with pytest.raises(EngineUnreachable):
        cancel(store, run.id, one_engine(engine))
    assert store.get(run.id).status is Status.RUNNING


def test_cancel_of_a_watched_run_records_first(store: RunStore, engine: FakeEngine, hold_lock: Any) -> None:
    run = live_run(store, container=FakeContainer("c1"), engine=engine)
    hold_lock(store, run.id)
    recorded_before_kill: list[Status] = []
    real_kill = engine.kill

    def kill(container_id: str) -> None:
        recorded_before_kill.append(store.get(run.id).status)
        real_kill(container_id)

    engine.kill = kill  # type: ignore[method-assign]
    ended = cancel(store, run.id, one_engine(engine))
    assert recorded_before_kill == [Status.INTERRUPTED]
    assert ended.error_code == CANCELLED and "c1" not in engine.containers


def test_cancel_of_a_pending_run_without_container_needs_no_engine(store: RunStore) -> None:
    run = live_run(store, status=Status.PENDING)

    def no_engine(name: str) -> Engine:
        raise AssertionError("no engine should be needed")

    assert cancel(store, run.id, no_engine).status is Status.INTERRUPTED


# --- reap ------------------------------------------------------------------------------------------------

NOW = 1_700_000_000.0


def labelled(cid: str, run_id: str, *, age: float, status: str = "exited", store: str = "") -> FakeContainer:
    labels = {LABEL_RUN: run_id, LABEL_CREATED: str(int(NOW - age)), LABEL_STORE: store}
    return FakeContainer(cid, labels=labels, status=status)


def test_reap_removes_old_containers_of_terminal_and_unknown_runs(
    store: RunStore, engine: FakeEngine
) -> None:
    done = finished_run(store, ended_at=NOW - 500, created_at=NOW - 600)
    live = live_run(store, key="live")
    engine.add(labelled("terminal", done.id, age=400))
    engine.add(labelled("unknown", "20000101T000000-00000000", age=400, store=store.store_id))
    engine.add(labelled("young", done.id, age=10))
    engine.add(labelled("live", live.id, age=4000, status="running"))
    # Unknown to this store and labelled by another: another state dir's run sharing the engine.
    engine.add(labelled("unknown-running", "20000101T000000-11111111", age=4000, status="running", store="x"))
    # Ours but unknown (its record torn or on its way) and still running: never an orphan.
    engine.add(
        labelled("ours-running", "20000101T000000-22222222", age=4000, status="running", store=store.store_id)
    )
    engine.add(FakeContainer("empty-label", labels={LABEL_RUN: "", LABEL_CREATED: "0"}, status="exited"))

    reaped = reap(store, engine, max_age=300, now=NOW)

    assert {r.container_id for r in reaped} == {"terminal", "unknown"}
    assert set(engine.containers) == {"young", "live", "unknown-running", "ours-running", "empty-label"}
    by_id = {r.container_id: r for r in reaped}
    assert by_id["terminal"].run_status == "completed" and by_id["terminal"].reason == "its run is completed"
    assert by_id["unknown"].run_status is None and "unknown" in by_id["unknown"].reason
    assert by_id["terminal"].age_s == pytest.approx(400, abs=1)
    assert json.loads(json.dumps(by_id["terminal"].to_dict()))["machine"] == "m"
    assert ("list", LABEL_RUN) in engine.calls


def test_reap_uses_the_engine_creation_time_without_the_label(store: RunStore, engine: FakeEngine) -> None:
    engine.add(
        FakeContainer(
            "old",
            labels={LABEL_RUN: "20000101T000000-00000000", LABEL_STORE: store.store_id},
            created="2023-11-14T22:00:00.5Z",
            status="exited",
        )
    )
    engine.add(
        FakeContainer(
            "new",
            labels={LABEL_RUN: "20000101T000000-00000001", LABEL_CREATED: "garbage"},
            created="2023-11-14T22:13:19Z",
            status="exited",
        )
    )
    engine.add(
        FakeContainer(
            "undated", labels={LABEL_RUN: "20000101T000000-00000002"}, created="yesterday", status="exited"
        )
    )
    reaped = reap(store, engine, max_age=60, now=NOW)  # NOW is 2023-11-14T22:13:20Z
    assert [r.container_id for r in reaped] == ["old"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20.250000000Z", NOW + 0.25),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T22:13:20", NOW),
        ("0001-01-01T00:00:00Z", -62135596800.0),
        ("", None),
        ("not a time", None),
    ],
)
def test_docker_time(text: str, expected: float | None) -> None:
    assert _docker_time(text) == (pytest.approx(expected) if expected is not None else None)


def test_container_created_prefers_the_label() -> None:
    state = ContainerState(
        "c", "exited", False, 0, False, {LABEL_CREATED: "123"}, created="2023-11-14T22:13:20Z"
    )
    assert container_created(state) == 123.0


# --- gc -----------------------------------------------------------------------------------------------------


def test_gc_under_the_cap_does_nothing(store: RunStore) -> None:
    finished_run(store, ended_at=1, created_at=1, size=1000)
    report = gc(store, max_bytes=1_000_000)
    assert report.deleted == [] and report.cap_met and report.freed_bytes == 0
    assert report.size_before == report.size_after == state_size(store)


def test_gc_deletes_terminal_runs_oldest_ended_first_and_keeps_live_ones(store: RunStore) -> None:
    # Created in one order, ended in another: gc goes by ended_at.
    ended_last = finished_run(store, created_at=100, ended_at=400, size=10_000)
    ended_first = finished_run(store, created_at=200, ended_at=210, size=10_000)
    ended_second = finished_run(store, created_at=300, ended_at=310, size=10_000)
    live = live_run(store, key="live")
    (store.files(live.id).logs).write_bytes(b"y" * 10_000)
    before = state_size(store)

    report = gc(store, max_bytes=before - 15_000)  # two runs must go

    assert report.deleted == [ended_first.id, ended_second.id]
    assert report.cap_met and report.size_after <= before - 15_000
    assert report.freed_bytes >= 20_000 and report.size_before == before
    remaining = {run.id for run in store.list()}
    assert remaining == {ended_last.id, live.id}
    assert store.check() == []


def test_gc_falls_back_to_created_at_and_reports_an_unmet_cap(store: RunStore) -> None:
    old = store.insert(Run(machine="m", test_dir="/d", key="x", status=Status.FAILED, created_at=5))
    (store.files(old.id).logs).write_bytes(b"z" * 5000)
    live = live_run(store, key="live")
    (store.files(live.id).logs).write_bytes(b"y" * 50_000)

    report = gc(store, max_bytes=1000)

    assert report.deleted == [old.id]
    assert not report.cap_met and report.size_after > 1000
    assert [run.id for run in store.list()] == [live.id]
    assert json.loads(json.dumps(report.to_dict()))["cap_met"] is False


def test_gc_keeps_the_runs_it_is_told_to_their_earlier_attempts_and_a_live_batchs_runs(
    store: RunStore,
) -> None:
    """A session's own runs (and the attempts they retried) and the ended runs of a batch with a
    live run stay, however far over the cap; a kept run bigger than the cap alone is named."""
    other = finished_run(store, created_at=1, ended_at=2, size=10_000)
    first = finished_run(store, created_at=3, ended_at=4, size=10_000)
    retry = store.insert(
        Run(
            machine="m",
            test_dir="/d",
            key="r",
            status=Status.COMPLETED,
            created_at=5,
            ended_at=6,
            retry_of=first.id,
        )
    )
    (store.files(retry.id).logs).write_bytes(b"r" * 60_000)
    in_batch = store.insert(
        Run(
            machine="m",
            test_dir="/b",
            key="b1",
            status=Status.FAILED,
            created_at=7,
            ended_at=8,
            batch_id="b-live",
        )
    )
    (store.files(in_batch.id).logs).write_bytes(b"b" * 10_000)
    store.prepare("m", "b2", lambda: Run(test_dir="/b2", batch_id="b-live"))  # the batch's live run

    report = gc(store, max_bytes=50_000, keep={retry.id})

    assert report.deleted == [other.id]
    assert report.kept == [first.id, retry.id, in_batch.id]
    assert not report.cap_met
    assert {run.id for run in store.list()} >= {first.id, retry.id, in_batch.id}
    (warning,) = report.warnings
    assert warning.startswith(f"run {retry.id} alone holds ") and "it belongs to this session" in warning
    assert json.loads(json.dumps(report.to_dict()))["kept"] == report.kept

    # The next gc, told nothing, removes them (the batch's still stay while it is live).
    assert gc(store, max_bytes=50_000).deleted == [first.id, retry.id]


def test_state_size_counts_every_file_and_folder(store: RunStore, tmp_path: Path) -> None:
    (store.state_dir / "hashcache").mkdir(exist_ok=True)
    base = state_size(store)
    (store.state_dir / "hashcache" / "blob").write_bytes(b"a" * 123)
    assert state_size(store) == base + 123
    (store.state_dir / "hashcache" / "empty").mkdir()
    assert state_size(store) == base + 123 + ENTRY_BYTES  # a folder bomb weighs something
    assert os.path.isdir(store.state_dir)


def test_gc_drops_hash_caches_after_terminal_runs_and_never_a_live_run(store: RunStore) -> None:
    live = live_run(store, key="live")
    (store.files(live.id).logs).write_bytes(b"x" * 4000)
    store.hashcache_dir.mkdir(exist_ok=True)
    for n, age in enumerate((300, 100)):
        cache = store.hashcache_dir / f"tree{n}.stat"
        cache.write_bytes(b"c" * 3000)
        os.utime(cache, (NOW - age, NOW - age))
    report = gc(store, max_bytes=state_size(store) - 2000)
    assert report.cap_met
    assert not (store.hashcache_dir / "tree0.stat").exists(), "the least recently written cache goes first"
    assert (store.hashcache_dir / "tree1.stat").exists()
    assert not store.get(live.id).status.is_terminal and store.files(live.id).dir.is_dir()


# --- one bad run is that run's problem ------------------------------------------------------


def test_an_owner_without_a_pid_is_nobody(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher
) -> None:
    # A hand-edited record says `"owner": {"host": <this host>, "pid": null}`.
    run = live_run(store, owner={"host": socket.gethostname(), "pid": None}, status=Status.PENDING)
    report = reconcile(store, dispatcher, one_engine(engine))
    assert store.get(run.id).error_code == OWNER_GONE
    assert [c.run_id for c in report.changed] == [run.id] and report.problems == []


def test_reconcile_reports_one_bad_run_and_settles_the_others(
    store: RunStore, engine: FakeEngine, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = live_run(store, container=FakeContainer("bad"), engine=engine)
    good = live_run(store, machine="m2", container=FakeContainer("good", logs=b"ok\n"), engine=engine)
    engine.finish("bad", 0)
    engine.finish("good", 0)
    real_inspect = engine.inspect

    def inspect(container_id: str) -> ContainerState | None:
        if container_id == "bad":
            raise RuntimeError("a bug meets a strange record")
        return real_inspect(container_id)

    monkeypatch.setattr(engine, "inspect", inspect)
    report = reconcile(store, dispatcher, one_engine(engine))
    assert store.get(good.id).status is Status.COMPLETED
    assert store.get(bad.id).status is Status.RUNNING  # left for the next reconcile, not a crash
    assert any(bad.id in line and "RuntimeError" in line for line in report.problems)


# --- crash leftovers ----------------------------------------------------------------------------


def test_sweep_settles_what_crashes_leave_behind(store: RunStore, dispatcher: Dispatcher) -> None:
    old = time.time() - 3600
    done = finished_run(store, ended_at=old, created_at=old)
    leftovers = [
        store.runs_dir / ".deleting-20240101T000000-0000abcd-1234abcd",  # a delete cut short
        store.files(done.id).dir / ".run.json.x1y2.tmp",  # an atomic write cut short
        store.active_dir / ".m.json.x1y2.tmp",
        store.runs_dir / "20240101T000000-deadbeef",  # an id claimed, no record written
    ]
    leftovers[0].mkdir()
    (leftovers[0] / "logs.txt").write_text("half gone\n")
    leftovers[1].write_text("{")
    leftovers[2].write_text("{")
    leftovers[3].mkdir()
    # A pending record prepare wrote just before the crash that kept it out of the machine's index.
    unindexed = store.insert(
        Run(machine="m", test_dir="/src/x", key="k", status=Status.INTERRUPTED, created_at=old)
    )
    record = store.files(unindexed.id).record
    data = json.loads(record.read_text())
    data.update(status="pending", ended_at=None, owner={"host": socket.gethostname(), "pid": dead_pid()})
    record.write_text(json.dumps(data))
    young = store.runs_dir / "20990101T000000-0000beef"  # a prepare under way right now
    young.mkdir()
    for path in [*leftovers, young, record]:
        os.utime(path, (old, old))
    os.utime(young, None)

    swept = store.sweep()

    assert not any(path.exists() for path in leftovers)
    assert young.exists() and store.files(done.id).record.exists()
    assert swept.ended == [unindexed.id]
    assert store.get(unindexed.id).error_code == OWNER_GONE
    assert store.check() == [] and store.sweep().removed == []


def test_gc_removes_a_tree_a_thousand_folders_deep(store: RunStore) -> None:
    old = time.time() - 3600
    run = finished_run(store, ended_at=old, created_at=old)
    deep = store.files(run.id).artifacts
    deep.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(deep)
        for _ in range(1100):
            os.mkdir("d")
            os.chdir("d")
        Path("bottom.txt").write_text("deep\n")
    finally:
        os.chdir(cwd)
    assert state_size(store) > 1100 * ENTRY_BYTES
    report = gc(store, max_bytes=1)
    assert report.deleted == [run.id] and report.problems == []
    assert not store.files(run.id).dir.exists()


def test_gc_beside_another_gc_never_trips_on_a_vanished_cache(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.hashcache_dir.mkdir()
    (store.hashcache_dir / "kept").write_bytes(b"x" * 100)
    real_listdir = os.listdir

    def listdir(path: Any) -> list[str]:
        names = real_listdir(path)
        # Another gc removed this one between our listing and our stat of it.
        return [*names, "gone-meanwhile"] if Path(path) == store.hashcache_dir else names

    monkeypatch.setattr(os, "listdir", listdir)
    report = gc(store, max_bytes=1)
    assert not (store.hashcache_dir / "kept").exists() and report.problems == []


@pytest.mark.parametrize(
    ("removed", "status", "code"),
    [(True, Status.INTERRUPTED, "container_gone"), (False, Status.FAILED, "engine_error")],
    ids=["removed-meanwhile", "engine-failed"],
)
def test_a_read_the_engine_fails_ends_the_run_gone_or_failed_never_raises(
    store: RunStore,
    engine: FakeEngine,
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
    removed: bool,
    status: Status,
    code: str,
) -> None:
    run = live_run(store, container=FakeContainer("c1", logs=b"hi\n"), engine=engine)
    engine.finish("c1", 137)

    def failing_read(container_id: str, path: str) -> Iterator[bytes] | None:
        # The first read, the JUnit XML's, fails (CI saw it when a run had no artifacts to read).
        if removed:  # `docker rm -f` between the wait and the read: the engine's answer mid-removal
            engine.containers.pop(container_id, None)
        if path != JUNIT_PATH:
            return None
        raise EngineError("m", f"download {path}: RWLayer of container {container_id} is unexpectedly nil")

    monkeypatch.setattr(engine, "get_archive", failing_read)
    ended = dispatcher.adopt(run, engine)

    assert ended is not None and (ended.status, ended.error_code) == (status, code)
    assert "RWLayer" in (ended.error_msg or "")
    assert store.get(run.id).status is status
    assert "c1" not in engine.containers  # a failed run's container is removed as any other's
