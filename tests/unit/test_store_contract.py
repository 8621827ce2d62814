"""The run store's contract, run against every backend (the file store and PostgreSQL).

Every test here takes the ``store`` fixture (or ``backend``, to open more store
objects in this or a spawned process) and asserts only what a user of the
interface (:class:`~pytest_lrun.store.RunStore`, :class:`~pytest_lrun.store.BatchStore`)
can observe, so both backends must pass it unchanged. What only one backend has
(index files, corrupt files, lock files, directories) is tested beside it:
``test_store.py``, ``test_store_race.py``, ``test_batch.py``.

The ``postgres`` param needs the test database (``LRUN_TEST_POSTGRES``): it skips
without one, and fails with ``LRUN_REQUIRE_POSTGRES=1`` (CI). Concurrency tests use
real processes behind barriers and events, every wait bounded, children always
reaped. ``LRUN_CONTRACT_ROUNDS`` sets the rounds of the prepare races (default 10).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lrun_procs import (
    MATRIX_PLAN,
    MODES,
    WAIT_S,
    StoreSpec,
    contend,
    create_until_killed,
    hold_prepare_until_killed,
    hold_watch_until_killed,
    place_worker,
    process_worker,
    reap_processes,
    record_worker,
    write_plan,
)

from pytest_lrun.config.plan import Plan, PlanEntry
from pytest_lrun.core.errors import (
    EXIT_BAD_INPUT,
    BadInput,
    BatchNotFound,
    BatchPlanMismatch,
    ConfigError,
    RunNotFound,
    StoreError,
    TerminalRunError,
)
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.run.gc import gc
from pytest_lrun.store import BatchStatus, Candidate, Decision, Run, RunStore, Status, Sweep, Ticket
from pytest_lrun.store.common import TICKET_TTL_S
from pytest_lrun.store.outcomes import MAX_KEPT, InnerOutcome, Quarantined, disagreed, flaky_evidence
from pytest_lrun.store.records import derive_status, valid_id

CTX = multiprocessing.get_context("spawn")
WORKERS = 8
ROUNDS = int(os.environ.get("LRUN_CONTRACT_ROUNDS", "10"))
RACE_TIMEOUT_S = max(120, ROUNDS * 6)
BATCH_ID = re.compile(r"b-\d{8}T\d{6}-[0-9a-f]{8}")
#: How soon a SIGKILLed holder's lock must be free again.
FREED_WITHIN_S = 5.0


@pytest.fixture
def store(backend: StoreSpec) -> Iterator[RunStore]:
    opened = backend.open()
    yield opened
    opened.close()


@pytest.fixture
def peer(backend: StoreSpec) -> Iterator[RunStore]:
    """A second store object on the same records, as another runner opens it (see StoreSpec)."""
    opened = backend.another_runner()
    yield opened
    opened.close()


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return write_plan(tmp_path / "project")


def plan_of(root: Path, names: list[str]) -> Plan:
    """A plan whose entries are exactly ``names`` (all over ``passing`` on m1)."""
    return write_plan(
        root, "".join(f'[[entry]]\nname = "{n}"\ndir = "passing"\nmachine = "m1"\n' for n in names)
    )


def make_run() -> Run:
    return Run(test_dir="/src/a")


def create(store: RunStore, machine: str = "m", key: str = "k", **fields: Any) -> Run:
    run, decision = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}", **fields))
    assert decision is Decision.CREATED
    return run


def finished(store: RunStore, n: int, status: Status = Status.COMPLETED) -> str:
    """The id of a new terminal run (machine ``m<n>``), recorded with ``insert``."""
    return store.insert(Run(machine=f"m{n}", test_dir=f"/t{n}", key=f"k{n}", status=status, exit_code=0)).id


def started(event: Any, proc: Any) -> bool:
    """Whether ``event`` was set within WAIT_S, giving up early once ``proc`` died."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if event.wait(0.05):
            return True
        if not proc.is_alive():
            return bool(event.is_set())
    return False


def within(seconds: float, predicate: Callable[[], bool]) -> bool:
    """Whether ``predicate()`` becomes true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def skip_unless_sigkill_frees_locks(backend: StoreSpec, directory: Path) -> None:
    """Probe what the machine can do: SIGKILL, and (for the file store) kernel file locks.

    Without flock, filelock falls back to a lock file that outlives a SIGKILLed holder.
    """
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("no SIGKILL here")
    if backend.backend != "files":
        return
    try:
        import fcntl
    except ImportError:
        pytest.skip("no kernel file locks (flock) here")
    probe = directory / "flock-probe"
    with probe.open("w") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pytest.skip("no kernel file locks (flock) here")
    probe.unlink()


def sigkill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT_S)
    assert proc.exitcode == -signal.SIGKILL


# --- prepare -------------------------------------------------------------------------


def test_prepare_creates_a_pending_run_and_fills_in_the_store_fields(store: RunStore) -> None:
    before = time.time()
    run, decision = store.prepare("gpu-1", "hash-1", make_run)
    assert decision is Decision.CREATED
    assert valid_id(run.id)
    assert (run.machine, run.key, run.test_dir, run.test_dir_hash, run.status) == (
        "gpu-1",
        "hash-1",
        "/src/a",
        "hash-1",  # no hash given: the key
        Status.PENDING,
    )
    assert run.created_at is not None and before - 0.001 <= run.created_at <= time.time() + 0.001
    assert run.owner is not None  # a backend may add how it sees the process (a database session)
    assert (run.owner["host"], run.owner["pid"]) == (socket.gethostname(), os.getpid())
    assert store.get(run.id) == run
    assert store.active("gpu-1") == [run] and store.active() == [run] and store.list() == [run]
    assert store.files(run.id).dir.is_relative_to(store.state_dir)
    assert store.check() == []


def test_prepare_takes_the_dir_hash_apart_from_the_key(store: RunStore) -> None:
    run, _ = store.prepare("m", "hash+image+cmd", make_run, test_dir_hash="hash")
    assert (run.key, run.test_dir_hash) == ("hash+image+cmd", "hash")
    own, _ = store.prepare("m2", "k", lambda: Run(test_dir="/t", test_dir_hash="own"))
    assert own.test_dir_hash == "own"
    # sorted: list() orders by wall-clock creation time, which a clock step on a fresh host can swap
    assert sorted((r.key, r.test_dir_hash) for r in store.list()) == [
        ("hash+image+cmd", "hash"),
        ("k", "own"),
    ]


def test_prepare_reuses_the_same_key_and_is_busy_for_another(store: RunStore) -> None:
    first = create(store, "m", "k1")
    calls: list[str] = []

    def make() -> Run:
        calls.append("made")
        return make_run()

    assert store.prepare("m", "k1", make) == (first, Decision.REUSE)
    assert store.prepare("m", "k2", make) == (first, Decision.BUSY)
    assert calls == []  # nothing is built for a run that is not created
    elsewhere, decision = store.prepare("m2", "k2", make)  # machines are independent
    assert decision is Decision.CREATED and elsewhere.id != first.id and elsewhere.machine == "m2"
    assert calls == ["made"]
    assert store.active() == [first, elsewhere]
    assert store.check() == []


def test_an_ended_run_frees_its_machine(store: RunStore) -> None:
    first = store.end(create(store, "m", "k1"), Status.FAILED)
    second, decision = store.prepare("m", "k1", make_run)  # an ended run is never reused
    assert decision is Decision.CREATED and second.id != first.id
    assert store.prepare("m", "k2", make_run) == (second, Decision.BUSY)
    assert store.check() == []


def test_prepare_waits_until_the_machine_is_free(store: RunStore) -> None:
    busy = create(store, "m", "k1")
    timer = threading.Timer(0.3, store.end, args=(busy, Status.COMPLETED))
    timer.start()
    try:
        began = time.monotonic()
        run, decision = store.prepare("m", "k2", make_run, wait=20)
        waited = time.monotonic() - began
    finally:
        timer.join(WAIT_S)
    assert decision is Decision.CREATED and run.key == "k2"
    assert 0.25 <= waited < 10
    assert store.active() == [run]
    assert store.check() == []


def test_prepare_gives_up_busy_when_the_wait_is_over(store: RunStore) -> None:
    busy = create(store, "m", "k1")
    began = time.monotonic()
    assert store.prepare("m", "k2", make_run, wait=0.4) == (busy, Decision.BUSY)
    assert 0.4 <= time.monotonic() - began < 3


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"id": "20240101T000000-00000000"}, id="has-an-id"),
        pytest.param({"status": Status.RUNNING}, id="not-pending"),
        pytest.param({"machine": "other"}, id="another-machine"),
        pytest.param({"key": "other"}, id="another-key"),
    ],
)
def test_make_must_return_a_fresh_pending_run(store: RunStore, bad: dict[str, Any]) -> None:
    with pytest.raises(StoreError):
        store.prepare("m", "k", lambda: Run(test_dir="/t", **bad))
    assert store.list() == [] and store.check() == []
    assert create(store, "m", "k").status is Status.PENDING


def test_make_must_return_a_run(store: RunStore) -> None:
    with pytest.raises(StoreError):
        store.prepare("m", "k", lambda: "a run")  # type: ignore[arg-type,return-value]
    assert store.list() == [] and store.check() == []


def test_a_failing_make_leaves_nothing(store: RunStore) -> None:
    def make() -> Run:
        raise RuntimeError("no image")

    with pytest.raises(RuntimeError, match="no image"):
        store.prepare("m", "k", make)
    assert store.list() == [] and store.check() == []
    assert create(store, "m", "k").key == "k"


@pytest.mark.parametrize(("machine", "key"), [("", "k"), ("m", ""), (None, "k"), ("m", None)])
def test_prepare_refuses_empty_machines_and_keys(store: RunStore, machine: Any, key: Any) -> None:
    with pytest.raises(ValueError):
        store.prepare(machine, key, make_run)
    assert store.list() == [] and store.check() == []


# --- get, update, end, insert ------------------------------------------------------------


def test_update_replaces_a_live_record_with_every_field(store: RunStore, peer: RunStore) -> None:
    run = create(store, batch_id="ci-1", plan_entry="passing@m")
    run.status = Status.RUNNING
    run.started_at = time.time()
    run.container_id = "c0ffee"
    run.image = "python:3.12-slim"
    run.command = ["pytest", "-q", "--x=a b"]
    run.timeout = 90.5
    run.artifacts = ["out/", "report.xml"]
    run.env_names = ["CI", "TOKEN"]
    run.logs_path = "/state/logs.txt"
    run.artifacts_path = "/state/artifacts"
    store.update(run)
    assert store.get(run.id) == run
    assert peer.get(run.id) == run  # as read by another store object, not a cached copy
    assert store.active("m") == [run]
    assert store.check() == []


def test_update_refuses_unknown_runs_and_identity_changes(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        store.update(Run(id="20240101T000000-00000000", machine="m", test_dir="/t", key="k"))
    run = create(store, "m", "k")
    changes: list[dict[str, Any]] = [{"machine": "m2"}, {"key": "k2"}]
    for change in changes:
        with pytest.raises(StoreError):
            store.update(dataclasses.replace(run, status=Status.RUNNING, **change))
    assert store.get(run.id) == run
    assert store.list() == [run] and store.check() == []


def test_get_of_an_unknown_or_malformed_id_is_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound) as info:
        store.get("20240101T000000-00000000")
    assert info.value.run_id == "20240101T000000-00000000"
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 129):
        with pytest.raises(RunNotFound):
            store.get(bad)
        with pytest.raises(RunNotFound):
            store.files(bad)


def test_end_writes_the_terminal_record_and_frees_the_machine(store: RunStore, peer: RunStore) -> None:
    run = create(store)
    before = time.time()
    ended = store.end(run, Status.FAILED, error_code="exit_nonzero", error_msg="exited 1")
    assert (ended.id, ended.status, ended.error_code, ended.error_msg) == (
        run.id,
        Status.FAILED,
        "exit_nonzero",
        "exited 1",
    )
    assert ended.ended_at is not None and before - 0.001 <= ended.ended_at <= time.time() + 0.001
    assert store.get(run.id) == ended and peer.get(run.id) == ended
    assert store.active() == [] and store.list(status="failed") == [ended]
    assert store.check() == []


def test_end_keeps_the_runs_own_error_unless_given_one(store: RunStore) -> None:
    run = create(store)
    run.error_code, run.error_msg = "oom_killed", "out of memory"
    ended = store.end(run, Status.FAILED)
    assert (ended.error_code, ended.error_msg) == ("oom_killed", "out of memory")
    assert store.get(run.id) == ended


def test_end_needs_a_terminal_status(store: RunStore) -> None:
    run = create(store)
    for status in (Status.PENDING, Status.RUNNING):
        with pytest.raises(StoreError):
            store.end(run, status)
    assert store.get(run.id) == run and store.active() == [run]


def test_a_terminal_record_is_written_once(store: RunStore, peer: RunStore) -> None:
    # `lrun cancel` ends the run first; the watcher then sees its container die.
    run = create(store)
    cancelled = store.end(run, Status.INTERRUPTED, error_code="cancelled", error_msg="by hand")
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("failed", lambda: store.update(dataclasses.replace(cancelled, status=Status.FAILED))),
        ("running", lambda: store.update(dataclasses.replace(cancelled, status=Status.RUNNING))),
        ("interrupted", lambda: store.update(dataclasses.replace(cancelled, artifacts_path="/x"))),
        ("interrupted", lambda: store.end(run, Status.INTERRUPTED, error_code="container_gone")),
        ("completed", lambda: store.end(cancelled, Status.COMPLETED)),
        ("failed", lambda: peer.end(run, Status.FAILED, error_code="exit_nonzero")),
    ]
    for wanted, attempt in attempts:
        with pytest.raises(TerminalRunError) as info:
            attempt()
        assert (info.value.run_id, info.value.status, info.value.wanted) == (run.id, "interrupted", wanted)
        assert store.get(run.id) == cancelled
    assert store.check() == []


def test_of_ends_at_once_exactly_one_stands(backend: StoreSpec, store: RunStore) -> None:
    run = create(store)
    barrier = threading.Barrier(WORKERS)
    won: list[Run] = []
    lost: list[BaseException] = []

    def end(i: int) -> None:
        mine = backend.open()
        try:
            barrier.wait(WAIT_S)
            won.append(mine.end(run, Status.INTERRUPTED, error_code=f"code{i}"))
        except BaseException as exc:
            lost.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=end, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert len(won) == 1, won
    assert len(lost) == WORKERS - 1 and all(isinstance(exc, TerminalRunError) for exc in lost), lost
    assert store.get(run.id) == won[0]
    assert store.check() == []


def test_insert_records_finished_runs_as_they_are(store: RunStore, peer: RunStore) -> None:
    done = store.insert(
        Run(machine="m", test_dir="/t", key="h", status=Status.COMPLETED, exit_code=0, started_at=100.0)
    )
    assert valid_id(done.id) and done.created_at is not None
    assert done.owner == {"host": socket.gethostname(), "pid": os.getpid()}
    assert store.get(done.id) == done and peer.get(done.id) == done
    given = store.insert(
        Run(
            id="20240101T000000-0000abcd",
            machine="m",
            test_dir="/t",
            key="h",
            status=Status.FAILED,
            created_at=5.0,
            owner={"host": "ci-7", "pid": 1},
        )
    )
    assert store.get("20240101T000000-0000abcd") == given
    assert (given.created_at, given.owner) == (5.0, {"host": "ci-7", "pid": 1})
    with pytest.raises(StoreError):
        store.insert(Run(machine="m", test_dir="/t", key="h"))  # not finished
    with pytest.raises(StoreError):
        store.insert(Run(id=given.id, machine="m", test_dir="/t", key="h2", status=Status.TIMEOUT))
    assert store.get(given.id) == given
    assert store.list() == [given, done] and store.active() == []
    assert store.prepare("m", "h", make_run)[1] is Decision.CREATED  # finished runs never make it busy
    assert store.check() == []


# --- list, active, last_completed, delete, sweep ----------------------------------------


def test_list_filters_and_orders_oldest_first(store: RunStore) -> None:
    # Their ids sort the other way round: the order is the creation time's.
    a = store.insert(
        Run(
            id="20240101T000000-ffffffff",
            machine="m1",
            test_dir="/a",
            key="a",
            status=Status.COMPLETED,
            created_at=1000.0,
            batch_id="b1",
        )
    )
    b = store.insert(
        Run(
            id="20240101T000000-00000000",
            machine="m2",
            test_dir="/b",
            key="b",
            status=Status.FAILED,
            created_at=2000.0,
            batch_id="b1",
        )
    )
    c = create(store, "m1", "c", batch_id="b2")
    assert store.list() == [a, b, c]
    assert store.list(machine="m1") == [a, c]
    assert store.list(status=Status.FAILED) == [b]
    assert store.list(status="pending") == [c]
    assert store.list(batch_id="b1") == [a, b]
    assert store.list(machine="m1", batch_id="b1", status=Status.COMPLETED) == [a]
    assert store.list(machine="m3") == [] and store.list(batch_id="b3") == []


def test_active_lists_live_runs_oldest_first(store: RunStore) -> None:
    first = create(store, "m2")
    time.sleep(0.005)  # a later millisecond: creation times order the runs
    second = create(store, "m1")
    second.status = Status.RUNNING
    store.update(second)
    finished(store, 3)
    assert store.active() == [first, second]
    assert store.active("m1") == [second]
    assert store.active("m3") == [] and store.active("nowhere") == []
    store.end(first, Status.TIMEOUT)
    assert store.active() == [second]
    assert store.check() == []


def test_last_completed_is_the_newest_completed_run_of_a_key(store: RunStore, peer: RunStore) -> None:
    assert store.last_completed("m", "k") is None
    older = store.end(create(store, "m", "k"), Status.COMPLETED)
    time.sleep(0.005)
    newer = store.end(create(store, "m", "k"), Status.COMPLETED)
    store.end(create(store, "m", "k"), Status.FAILED)  # a failed run is never a cached result
    create(store, "m", "k")  # nor is a live one
    assert store.last_completed("m", "k") == newer
    assert peer.last_completed("m", "k") == newer
    assert store.last_completed("m", "other") is None and store.last_completed("m2", "k") is None
    store.delete(newer.id)
    assert store.last_completed("m", "k") in (None, older)  # a deleted run is never reused


def test_delete_removes_a_terminal_run_and_its_folder(store: RunStore, peer: RunStore) -> None:
    run = create(store)
    files = store.files(run.id)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.logs.write_text("log\n")
    with pytest.raises(TerminalRunError) as info:
        store.delete(run.id)
    assert info.value.status == "pending"
    assert store.get(run.id) == run and files.logs.read_text() == "log\n"
    store.end(run, Status.COMPLETED)
    files.artifacts.mkdir()
    (files.artifacts / "report.txt").write_text("ok")
    store.delete(run.id)
    assert not files.dir.exists()
    for where in (store, peer):
        with pytest.raises(RunNotFound):
            where.get(run.id)
    with pytest.raises(RunNotFound):
        store.delete(run.id)
    assert store.list() == [] and store.check() == []


def test_sweep_leaves_a_healthy_store_alone(store: RunStore) -> None:
    live = create(store, "m1")
    done = store.end(create(store, "m2"), Status.COMPLETED)
    assert store.sweep() == Sweep()
    assert store.list() == [live, done] and store.active() == [live]
    assert store.check() == []


def test_store_objects_on_the_same_records_share_the_store_id(
    backend: StoreSpec, store: RunStore, peer: RunStore
) -> None:
    # Containers carry the id as a label: another runner must recognise them as its store's.
    assert isinstance(store.store_id, str) and store.store_id
    assert peer.store_id == store.store_id
    password = urlsplit(backend.url).password if backend.url else None
    assert isinstance(store.location, str) and store.location
    assert password is None or password not in store.location


# --- strings ------------------------------------------------------------------------------

# A container can name a file with bytes that are not UTF-8; Python carries them as surrogates.
ODD = "/src/bad-\udcff\udcfe-näme \x01\t'\";--"


def test_records_keep_any_string_losslessly(store: RunStore, peer: RunStore) -> None:
    machine = "m-\udcff-ü"
    run, _ = store.prepare(
        machine, "k-\udcfe", lambda: Run(test_dir=ODD, command=["sh", "-c", ODD], env_names=["X\udcff"])
    )
    ended = store.end(run, Status.FAILED, error_code="unsafe_archive", error_msg=f"refused {ODD}: x")
    assert store.get(run.id) == ended and peer.get(run.id) == ended
    assert store.list(machine=machine) == [ended]
    live = create(store, machine, "k")
    assert store.prepare(machine, "k2", make_run) == (live, Decision.BUSY)
    # Names that differ only in their undecodable bytes are different machines.
    assert store.prepare("m-\udcfe-ü", "k2", make_run)[1] is Decision.CREATED
    assert store.active(machine) == [live]
    assert store.check() == []


# --- the watch lock and the owner -------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_watch_lock_has_one_holder_and_a_sigkill_frees_it(
    backend: StoreSpec, store: RunStore, tmp_path: Path
) -> None:
    skip_unless_sigkill_frees_locks(backend, tmp_path)
    run = create(store)
    with store.watching(run.id, wait=False) as held:
        assert held is True
    with store.watching(run.id) as held:
        assert held is True
    holding = CTX.Event()
    proc = CTX.Process(target=hold_watch_until_killed, args=(backend, run.id, holding), daemon=True)
    waited: list[tuple[bool, float]] = []

    def wait_for_the_lock() -> None:
        with store.watching(run.id) as got:
            waited.append((got, time.monotonic()))

    waiter = threading.Thread(target=wait_for_the_lock, daemon=True)
    try:
        proc.start()
        assert started(holding, proc), "the child never took the watch lock"
        with store.watching(run.id, wait=False) as held:
            assert held is False
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and waited == [], "watching(wait=True) did not wait for the holder"
        sigkill(proc)
        killed_at = time.monotonic()
        waiter.join(WAIT_S)
    finally:
        reap_processes([proc])
    assert not waiter.is_alive()
    ((got, at),) = waited
    assert got is True and at - killed_at < FREED_WITHIN_S
    with store.watching(run.id, wait=False) as held:
        assert held is True


def test_a_named_lock_has_one_holder_across_store_objects(store: RunStore, peer: RunStore) -> None:
    order: list[str] = []

    def second() -> None:
        with store.exclusive("build m1 abc"):
            order.append("second")

    with peer.exclusive("build m1 abc"):
        with store.exclusive("build m2 abc"):  # another name is another lock
            order.append("other name")
        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "exclusive() did not wait for the holder"
        order.append("first released")
    waiter.join(WAIT_S)
    assert order == ["other name", "first released", "second"]


@pytest.mark.timeout(120)
def test_owner_alive_follows_the_creating_process(
    backend: StoreSpec, store: RunStore, tmp_path: Path
) -> None:
    skip_unless_sigkill_frees_locks(backend, tmp_path)
    mine = create(store, "mine")
    assert store.owner_alive(mine)
    results = CTX.Queue()
    proc = CTX.Process(target=create_until_killed, args=(backend, results), daemon=True)
    try:
        proc.start()
        decision, run_id, pid = results.get(timeout=WAIT_S)
        assert decision == "created"
        run = store.get(run_id)
        assert run.owner is not None and run.owner["pid"] == pid
        assert store.owner_alive(run)
        sigkill(proc)
        assert within(FREED_WITHIN_S, lambda: not store.owner_alive(run)), "a SIGKILLed owner is alive"
    finally:
        reap_processes([proc])
        results.close()
        results.join_thread()
    assert store.owner_alive(mine)
    assert store.active("m") == [run]  # its run stays for someone to adopt


@pytest.mark.timeout(120)
def test_a_sigkill_inside_prepare_leaves_nothing_and_frees_the_machine(
    backend: StoreSpec, store: RunStore, tmp_path: Path
) -> None:
    skip_unless_sigkill_frees_locks(backend, tmp_path)
    holding = CTX.Event()
    proc = CTX.Process(target=hold_prepare_until_killed, args=(backend, holding), daemon=True)
    outcome: list[Any] = []

    def prepare() -> None:
        try:
            outcome.append(store.prepare("m", "k", make_run))
        except BaseException:
            outcome.append(traceback.format_exc())

    waiter = threading.Thread(target=prepare, daemon=True)
    try:
        proc.start()
        assert started(holding, proc), "the child never got inside prepare"
        waiter.start()
        waiter.join(0.5)
        sigkill(proc)
        killed_at = time.monotonic()
        waiter.join(WAIT_S)
    finally:
        reap_processes([proc])
    assert not waiter.is_alive() and time.monotonic() - killed_at < FREED_WITHIN_S
    ((run, decision),) = outcome
    assert decision is Decision.CREATED
    assert store.list() == [run]  # the dead caller recorded nothing
    assert store.check() == []


# --- many callers at once -------------------------------------------------------------------

Result = tuple[int, int, str, str, int]  # round, worker, decision, run id, pid


def _judge_round(store: RunStore, mode: str, results: list[Result], seen: set[str]) -> None:
    """Assert one round's decisions, then end its runs so the next round starts clean."""
    decisions = Counter(decision for _, _, decision, _, _ in results)
    ids = {run_id for _, _, _, run_id, _ in results}
    if mode == "different-machines":
        assert decisions == {"created": WORKERS}, results
        assert len(ids) == WORKERS, results
    else:
        other = "reuse" if mode == "same-key" else "busy"
        assert decisions == {"created": 1, other: WORKERS - 1}, results
        assert len(ids) == 1, results  # the BUSY and REUSE answers name the created run
        (creator_pid,) = [pid for _, _, decision, _, pid in results if decision == "created"]
        (run_id,) = ids
        owner = store.get(run_id).owner
        assert owner is not None and owner["pid"] == creator_pid
    assert not ids & seen, "a run id was handed out twice"
    seen |= ids
    assert store.check() == []
    for run_id in ids:
        run = store.get(run_id)
        assert run.status is Status.PENDING
        store.end(run, Status.COMPLETED)
    assert store.active() == []
    assert store.check() == []


@pytest.mark.timeout(RACE_TIMEOUT_S)
@pytest.mark.parametrize("mode", list(MODES))
def test_processes_prepare_one_run_per_machine(backend: StoreSpec, store: RunStore, mode: str) -> None:
    barrier = CTX.Barrier(WORKERS + 1)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=process_worker, args=(backend, mode, i, ROUNDS, barrier, results), daemon=True)
        for i in range(WORKERS)
    ]
    seen: set[str] = set()
    try:
        for proc in procs:
            proc.start()
        for round_no in range(ROUNDS):
            barrier.wait(WAIT_S)
            got = [results.get(timeout=WAIT_S) for _ in range(WORKERS)]
            errors = [entry[2] for entry in got if entry[0] == "error"]
            assert not errors, "\n".join(errors)
            assert {entry[0] for entry in got} == {round_no}
            _judge_round(store, mode, got, seen)
        assert len(store.list()) == len(seen) == ROUNDS * (WORKERS if mode == "different-machines" else 1)
    finally:
        barrier.abort()
        reap_processes(procs)
        results.close()
        results.join_thread()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS


@pytest.mark.timeout(RACE_TIMEOUT_S)
@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
@pytest.mark.parametrize("mode", list(MODES))
def test_threads_prepare_one_run_per_machine(
    backend: StoreSpec, store: RunStore, mode: str, shared: bool
) -> None:
    barrier = threading.Barrier(WORKERS + 1)
    lock = threading.Lock()
    got: list[Any] = []

    def report(entry: Any) -> None:
        with lock:
            got.append(entry)

    if shared:  # every thread uses the test's store object

        def worker(i: int) -> None:
            machine, key = MODES[mode](i)
            try:
                for round_no in range(ROUNDS):
                    barrier.wait(WAIT_S)
                    run, decision = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}"))
                    report((round_no, i, decision.value, run.id, os.getpid()))
            except BaseException:
                report(("error", i, traceback.format_exc()))
                barrier.abort()

    else:

        def worker(i: int) -> None:
            contend(backend, mode, i, ROUNDS, barrier, report)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    seen: set[str] = set()
    try:
        for thread in threads:
            thread.start()
        for round_no in range(ROUNDS):
            barrier.wait(WAIT_S)
            assert within(WAIT_S, lambda: len(got) >= WORKERS or any(e[0] == "error" for e in got))
            with lock:
                batch, got[:] = got[:WORKERS], got[WORKERS:]
            errors = [entry[2] for entry in batch if entry[0] == "error"]
            assert not errors, "\n".join(errors)
            assert len(batch) == WORKERS and {entry[0] for entry in batch} == {round_no}
            _judge_round(store, mode, batch, seen)
    finally:
        barrier.abort()
        for thread in threads:
            thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)


# --- batches ----------------------------------------------------------------------------------


def test_open_creates_a_pending_batch_with_a_fresh_id(store: RunStore, peer: RunStore, plan: Plan) -> None:
    before = time.time()
    batch = store.batches.open(plan)
    assert BATCH_ID.fullmatch(batch.id), batch.id
    assert (batch.plan, batch.plan_digest, batch.entries, batch.status, batch.planned) == (
        str(plan.path),
        plan.digest,
        {},
        BatchStatus.PENDING,
        ["passing@m1", "passing@m2", "failing@m1", "failing@m2"],
    )
    assert before - 0.001 <= batch.created_at <= time.time() + 0.001
    assert store.batches.get(batch.id) == batch and peer.batches.get(batch.id) == batch
    time.sleep(0.005)  # a later millisecond: creation times order the batches
    second = store.batches.open(plan)
    assert second.id != batch.id
    assert store.batches.list() == [batch, second]


def test_open_with_an_id_creates_then_joins(store: RunStore, peer: RunStore, plan: Plan) -> None:
    created = store.batches.open(plan, "ci-4711")
    assert (created.id, created.entries, created.status) == ("ci-4711", {}, BatchStatus.PENDING)
    run_id = finished(store, 1)
    store.batches.record("ci-4711", "passing@m1", run_id)
    joined = peer.batches.open(plan, "ci-4711")  # the next CI job, on another runner
    assert joined.created_at == created.created_at
    assert joined.entries == {"passing@m1": run_id}
    assert [b.id for b in store.batches.list()] == ["ci-4711"]


def test_joining_checks_the_plans_digest_not_its_path(
    store: RunStore, peer: RunStore, plan: Plan, tmp_path: Path
) -> None:
    store.batches.open(plan, "ci-1")
    elsewhere = write_plan(tmp_path / "other-checkout")  # the same bytes, checked out elsewhere
    assert elsewhere.path != plan.path and elsewhere.digest == plan.digest
    assert peer.batches.open(elsewhere, "ci-1").plan == str(plan.path)


def test_joining_with_another_plan_is_refused(store: RunStore, plan: Plan, tmp_path: Path) -> None:
    store.batches.open(plan, "ci-1")
    run_id = finished(store, 1)
    store.batches.record("ci-1", "passing@m1", run_id)
    other = write_plan(tmp_path / "changed", MATRIX_PLAN + "# edited\n")
    with pytest.raises(BatchPlanMismatch) as info:
        store.batches.open(other, "ci-1")
    err = info.value
    assert isinstance(err, BadInput) and (err.code, err.exit_code) == ("batch_plan_mismatch", EXIT_BAD_INPUT)
    assert (err.batch_id, err.batch_plan, err.batch_digest) == ("ci-1", str(plan.path), plan.digest)
    assert (err.plan, err.plan_digest) == (str(other.path), other.digest)
    assert store.batches.get("ci-1").entries == {"passing@m1": run_id}  # untouched


def _shards_of(suite: Path, nodeids: list[str], count: int = 2) -> Plan:
    """The plan a job opens for its shards of ``suite`` (as the session does): no file, its node ids."""
    labels = [f"parso [{k}/{count}]" for k in range(1, count + 1)]
    return Plan(
        path=suite,
        digest=str(hash((tuple(labels), tuple(nodeids)))),
        entries=tuple(PlanEntry(label, suite, "m1") for label in labels),
        collected=tuple(nodeids),
    )


def test_joining_a_shard_batch_with_another_collection_says_what_differs(
    store: RunStore, peer: RunStore, tmp_path: Path
) -> None:
    suite = tmp_path / "parso"
    ids = [f"test/test_parser.py::test_{i}" for i in range(1989)]
    store.batches.open(_shards_of(suite, ids), "ci-9")
    assert peer.batches.open(_shards_of(suite, ids), "ci-9").collected == ids  # the same: joined
    more = [*ids[:1000], "test/test_parser.py::test_new", *ids[1000:]]
    with pytest.raises(BatchPlanMismatch) as info:
        peer.batches.open(_shards_of(suite, more), "ci-9")
    assert str(info.value) == (
        f"batch 'ci-9' does not match this job's shards of {suite}: the batch's jobs collected 1,989 "
        "inner tests, this job 1,990; the first that differs, test/test_parser.py::test_new, is only in "
        "this job's. Every job of a shard batch must collect the same inner tests (the same checkout, "
        "-k, -m and node ids), or use another batch id"
    )
    assert "plan file" not in str(info.value) and info.value.code == "batch_plan_mismatch"
    with pytest.raises(BatchPlanMismatch, match="only in the batch's"):
        peer.batches.open(_shards_of(suite, ids[:-1]), "ci-9")
    with pytest.raises(BatchPlanMismatch, match=r": the batch has 2 shards, this job 3\. Every job"):
        peer.batches.open(_shards_of(suite, ids, 3), "ci-9")


def test_record_adds_and_replaces_entries_in_recording_order(store: RunStore, plan: Plan) -> None:
    batch = store.batches.open(plan)
    first, second, retry = (finished(store, n) for n in range(3))
    store.batches.record(batch.id, "passing@m1", first)
    updated = store.batches.record(batch.id, "failing@m1", second)
    assert list(updated.entries.items()) == [("passing@m1", first), ("failing@m1", second)]
    retried = store.batches.record(batch.id, "passing@m1", retry)  # a retried CI job
    assert retried.entries == {"passing@m1": retry, "failing@m1": second}
    assert store.batches.get(batch.id) == retried


def test_record_refuses_empty_entries_and_malformed_run_ids(store: RunStore, plan: Plan) -> None:
    batch = store.batches.open(plan)
    with pytest.raises(ValueError):
        store.batches.record(batch.id, "", finished(store, 1))
    with pytest.raises(ValueError):
        store.batches.record(batch.id, "passing@m1", "../escape")
    assert store.batches.get(batch.id).entries == {}


def test_record_makes_a_finished_batch_running_again(store: RunStore, tmp_path: Path) -> None:
    batch = store.batches.open(plan_of(tmp_path, ["passing@m1"]))
    store.batches.record(batch.id, "passing@m1", finished(store, 1))
    assert store.batches.refresh(batch.id).status is BatchStatus.COMPLETED
    again = store.batches.record(batch.id, "failing@m1", create(store).id)
    assert again.status is BatchStatus.RUNNING and store.batches.get(batch.id).status is BatchStatus.RUNNING


@pytest.mark.timeout(120)
def test_concurrent_recorders_lose_nothing(backend: StoreSpec, store: RunStore, plan: Plan) -> None:
    entries = 10
    run_ids = [[finished(store, w * entries + n) for n in range(entries)] for w in range(WORKERS)]
    barrier = CTX.Barrier(WORKERS + 1)
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=record_worker, args=(backend, str(plan.path), w, run_ids[w], barrier, results), daemon=True
        )
        for w in range(WORKERS)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(WAIT_S)
        got = [results.get(timeout=WAIT_S) for _ in range(WORKERS)]
        errors = [entry[2] for entry in got if entry[0] == "error"]
        assert not errors, "\n".join(errors)
        assert len({entry[2] for entry in got}) == WORKERS  # really eight processes
    finally:
        barrier.abort()
        reap_processes(procs)
        results.close()
        results.join_thread()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    batch = store.batches.get("ci-race")
    assert batch.entries == {f"w{w}-e{n}": run_ids[w][n] for w in range(WORKERS) for n in range(entries)}
    assert batch.plan_digest == plan.digest and [b.id for b in store.batches.list()] == ["ci-race"]


def _run_in(store: RunStore, status: str, n: int) -> str:
    """A run in ``status`` ("missing": one that is deleted later); live ones each on their own machine."""
    if status == "missing":
        return finished(store, n)
    wanted = Status(status)
    if wanted.is_terminal:
        return finished(store, n, wanted)
    run = create(store, f"m{n}", f"k{n}")
    if wanted is Status.RUNNING:
        run.status = Status.RUNNING
        store.update(run)
    return run.id


STATUS_CASES = [
    pytest.param([], "pending", id="no-runs"),
    pytest.param(["pending", "pending"], "pending", id="all-pending"),
    pytest.param(["pending", "completed"], "running", id="pending-and-done"),
    pytest.param(["running", "failed"], "running", id="running-and-failed"),
    pytest.param(["pending", "missing"], "running", id="pending-and-missing"),
    pytest.param(["completed", "completed"], "completed", id="all-completed"),
    pytest.param(["completed", "failed"], "failed", id="failed"),
    pytest.param(["failed", "timeout", "completed"], "timeout", id="timeout-beats-failed"),
    pytest.param(["timeout", "interrupted", "failed"], "interrupted", id="interrupted-beats-all"),
    pytest.param(["completed", "missing"], "interrupted", id="missing-counts-as-interrupted"),
]


@pytest.mark.parametrize(("statuses", "expected"), STATUS_CASES)
def test_derive_status(statuses: list[str], expected: str) -> None:
    given = [None if status == "missing" else Status(status) for status in statuses]
    assert derive_status(given) is BatchStatus(expected)


def test_derive_status_with_planned_entries_no_job_took() -> None:
    assert derive_status([], untaken=2) is BatchStatus.PENDING
    assert derive_status([Status.PENDING], untaken=1) is BatchStatus.PENDING
    assert derive_status([Status.RUNNING, Status.COMPLETED], untaken=1) is BatchStatus.RUNNING
    assert derive_status([Status.COMPLETED], untaken=1) is BatchStatus.INCOMPLETE  # nothing runs
    assert derive_status([Status.COMPLETED, Status.FAILED], untaken=1) is BatchStatus.FAILED  # known already
    assert derive_status([Status.COMPLETED], untaken=0) is BatchStatus.COMPLETED


@pytest.mark.parametrize(("statuses", "expected"), STATUS_CASES)
def test_refresh_derives_and_stores_the_status_from_the_runs(
    store: RunStore, peer: RunStore, tmp_path: Path, statuses: list[str], expected: str
) -> None:
    batch = store.batches.open(plan_of(tmp_path, [f"e{n}" for n in range(max(1, len(statuses)))]))
    for n, status in enumerate(statuses):
        store.batches.record(batch.id, f"e{n}", _run_in(store, status, n))
    for n, status in enumerate(statuses):
        if status == "missing":  # deleted since it was recorded, as `lrun gc` does
            store.delete(store.batches.get(batch.id).entries[f"e{n}"])
    assert store.batches.refresh(batch.id).status is BatchStatus(expected)
    assert store.batches.get(batch.id).status is BatchStatus(expected)
    assert peer.batches.get(batch.id).status is BatchStatus(expected)
    assert len(store.batches.get(batch.id).entries) == len(statuses)


def test_refresh_follows_the_runs(store: RunStore, tmp_path: Path) -> None:
    batch = store.batches.open(plan_of(tmp_path, ["passing@m1"]))
    run = create(store)
    store.batches.record(batch.id, "passing@m1", run.id)
    assert store.batches.refresh(batch.id).status is BatchStatus.PENDING
    run.status = Status.RUNNING
    store.update(run)
    assert store.batches.refresh(batch.id).status is BatchStatus.RUNNING
    store.end(run, Status.COMPLETED)
    assert store.batches.refresh(batch.id).status is BatchStatus.COMPLETED


def test_planned_entries_no_job_started_keep_the_batch_open(
    store: RunStore, peer: RunStore, plan: Plan
) -> None:
    """A CI matrix whose other jobs have not started yet is not completed, nor running while nothing
    runs: incomplete, until the other jobs' runs complete."""
    batch = store.batches.open(plan, "ci-1")
    store.batches.record(batch.id, plan.names[0], finished(store, 0))
    assert store.batches.refresh(batch.id).status is BatchStatus.INCOMPLETE
    second = create(peer, "m9", "k9")  # the next job starts: running again
    assert peer.batches.record(batch.id, plan.names[1], second.id).status is BatchStatus.RUNNING
    assert store.batches.refresh(batch.id).status is BatchStatus.RUNNING
    peer.end(second, Status.COMPLETED)
    for n, name in enumerate(plan.names[1:], start=1):  # the other jobs, on another runner
        peer.batches.open(plan, "ci-1")
        peer.batches.record(batch.id, name, finished(peer, n))
    assert store.batches.refresh(batch.id).status is BatchStatus.COMPLETED


def test_a_run_shared_by_entries_counts_once(store: RunStore, tmp_path: Path) -> None:
    """Two entries that reused one live run follow that run, together with the batch's other runs."""
    batch = store.batches.open(plan_of(tmp_path, ["a", "b", "c"]))
    shared = create(store, "m1")
    other = create(store, "m2")
    for entry, run_id in (("a", shared.id), ("b", shared.id), ("c", other.id)):
        store.batches.record(batch.id, entry, run_id)
    assert store.batches.get(batch.id).entries == {"a": shared.id, "b": shared.id, "c": other.id}
    store.end(shared, Status.COMPLETED)
    assert store.batches.refresh(batch.id).status is BatchStatus.RUNNING
    store.end(other, Status.COMPLETED)
    assert store.batches.refresh(batch.id).status is BatchStatus.COMPLETED


BAD_IDS = ["", ".hidden", "-dash", "../up", "a/b", "a b", "x" * 129, "é", "a\nb", "ci:1"]


@pytest.mark.parametrize("batch_id", ["nope", *BAD_IDS])
def test_lookups_of_unknown_or_malformed_ids_are_batch_not_found(store: RunStore, batch_id: str) -> None:
    run_id = finished(store, 1)
    lookups: list[Callable[[], object]] = [
        lambda: store.batches.get(batch_id),
        lambda: store.batches.record(batch_id, "e", run_id),
        lambda: store.batches.refresh(batch_id),
    ]
    for lookup in lookups:
        with pytest.raises(BatchNotFound) as info:
            lookup()
        assert info.value.batch_id == batch_id and info.value.code == "batch_not_found"
    assert store.batches.list() == []


@pytest.mark.parametrize("bad", BAD_IDS)
def test_opening_a_malformed_batch_id_is_refused(store: RunStore, plan: Plan, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.batches.open(plan, bad)
    assert isinstance(info.value, BadInput) and f"invalid batch id {bad!r}" in str(info.value)
    assert store.batches.list() == []


def test_every_well_formed_batch_id_is_accepted(store: RunStore, plan: Plan) -> None:
    for good in ["1", "ci-123_4.5", "x" * 128, "b-20250101T000000-0123abcd", "Run.7"]:
        assert store.batches.open(plan, good).id == good
        assert store.batches.get(good).id == good


# --- results ------------------------------------------------------------------------------


def _write_result(files: RunFiles) -> None:
    """What a finished run leaves on this host: its JUnit XML, its log and its artifacts."""
    (files.artifacts / "out").mkdir(parents=True)
    files.junit.write_text('<testsuite name="inner" tests="1"><testcase name="t"/></testsuite>\n')
    files.logs.write_bytes(b"collected 1 item\n\xff not utf-8\n")
    (files.artifacts / "out" / "report.txt").write_text("ok\n")
    (files.artifacts / "blob.bin").write_bytes(bytes(range(256)) * 64)


def _contents(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by path relative to it (the finish lock holds nothing)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "finish.lock"
    }


def test_a_saved_result_loads_on_another_runner(store: RunStore, peer: RunStore) -> None:
    run = create(store)
    _write_result(store.files(run.id))
    ended = store.end(run, Status.COMPLETED)
    here = _contents(store.files(run.id).dir)
    store.save_result(ended)
    store.load_result(ended)  # where it ran: nothing to change
    assert _contents(store.files(run.id).dir) == here
    cached = peer.last_completed("m", "k")  # --lrun-reuse=completed on the other runner
    assert cached == ended
    peer.load_result(cached)
    there = peer.files(run.id)
    for name in ("junit.xml", "logs.txt", "artifacts/out/report.txt", "artifacts/blob.bin"):
        assert _contents(there.dir)[name] == here[name], name
    assert store.check() == []


def test_saving_the_result_of_a_run_gc_took_meanwhile_saves_nothing(store: RunStore, peer: RunStore) -> None:
    # Another runner's `lrun gc` may delete a run between its end and the share of its result.
    run = create(store)
    _write_result(store.files(run.id))
    ended = store.end(run, Status.COMPLETED)
    peer.delete(run.id)
    store.save_result(ended)  # the dispatcher would log a failure as a lost share
    for where in (store, peer):
        with pytest.raises(RunNotFound):
            where.get(run.id)
    assert store.prune(0) == [] and store.check() == []


# --- place: slots and candidate machines -----------------------------------------------


def placed(store: RunStore, key: str, *candidates: tuple[str, int]) -> tuple[Run, Decision]:
    """``store.place`` of ``key`` on ``candidates`` ((machine, slots), the key the same on each)."""
    return store.place(
        [Candidate(m, key, slots) for m, slots in candidates], lambda c: Run(test_dir=f"/src/{key}")
    )


def test_a_machine_with_slots_runs_that_many_keys_and_is_busy_only_when_all_are_taken(
    store: RunStore,
) -> None:
    first, a = placed(store, "k1", ("m", 2))
    second, b = placed(store, "k2", ("m", 2))
    assert (a, b) == (Decision.CREATED, Decision.CREATED) and first.id != second.id
    assert placed(store, "k1", ("m", 2)) == (first, Decision.REUSE)
    blocker, busy = placed(store, "k3", ("m", 2))
    assert busy is Decision.BUSY and blocker.id in (first.id, second.id)
    store.end(first, Status.COMPLETED)
    third, c = placed(store, "k3", ("m", 2))
    assert c is Decision.CREATED and {r.id for r in store.active("m")} == {second.id, third.id}
    assert store.check() == []


def test_placement_takes_the_candidate_with_the_most_free_slots_and_reuses_across_them(
    store: RunStore,
) -> None:
    one, _ = placed(store, "k1", ("a", 3), ("b", 1))
    assert one.machine == "a"  # 3 free against 1
    two, _ = placed(store, "k2", ("a", 3), ("b", 1))
    assert two.machine == "a"  # 2 free against 1
    three, _ = placed(store, "k3", ("a", 3), ("b", 1))
    assert three.machine == "a"  # 1 free against 1: the first of equals
    four, _ = placed(store, "k4", ("a", 3), ("b", 1))
    assert four.machine == "b"
    assert placed(store, "k5", ("a", 3), ("b", 1))[1] is Decision.BUSY
    # A live run of the key on any candidate is reused, never twinned on another.
    assert placed(store, "k4", ("a", 3), ("b", 1)) == (four, Decision.REUSE)
    assert placed(store, "k4", ("b", 1), ("c", 5)) == (four, Decision.REUSE)
    # make() learns where the run goes: the key may differ per machine (its image id does).
    made = store.place(
        [Candidate("c", "kc", 1), Candidate("d", "kd", 1)], lambda c: Run(test_dir=f"/src/{c.machine}")
    )
    assert (made[0].machine, made[0].key, made[0].test_dir) == ("c", "kc", "/src/c")


@pytest.mark.parametrize(
    "candidates",
    [[], [Candidate("m", "k"), Candidate("m", "k")], [Candidate("m", "k", 0)], [Candidate("", "k")]],
)
def test_a_bad_placement_request_is_refused(store: RunStore, candidates: list[Candidate]) -> None:
    with pytest.raises(ValueError):
        store.place(candidates, lambda c: Run(test_dir="/src/k"))


def test_racing_placements_never_twin_a_key_nor_overfill_a_machine(backend: StoreSpec) -> None:
    # Twelve processes: three of each of four keys, on two machines of two slots each.
    keys = [f"k{i % 4}" for i in range(12)]
    barrier, results = CTX.Barrier(len(keys)), CTX.Queue()
    procs = [CTX.Process(target=place_worker, args=(backend, key, barrier, results)) for key in keys]
    for proc in procs:
        proc.start()
    try:
        answers = [results.get(timeout=RACE_TIMEOUT_S) for _ in procs]
    finally:
        reap_processes(procs)
    assert not [a for a in answers if a[0] == "error"], answers
    created = [a for a in answers if a[1] == "created"]
    assert sorted(a[0] for a in created) == ["k0", "k1", "k2", "k3"]  # each key once
    assert Counter(a[3] for a in created) == Counter({"f1": 2, "f2": 2})
    for key, outcome, run_id, _machine in answers:
        if outcome == "reuse":
            assert run_id == next(a[2] for a in created if a[0] == key)


def test_durations_are_kept_per_suite_and_node_id_newest_first(store: RunStore, peer: RunStore) -> None:
    assert store.durations("suite") == {}
    store.save_durations("suite", {"t.py::a": 1.5, "t.py::b[\\u00e9 \udcff]": 0.25})
    store.save_durations("suite", {"t.py::a": 2.0})
    store.save_durations("other", {"t.py::a": 9.0})
    # Another runner of the store sees them (a shared store balances the whole fleet).
    assert peer.durations("suite") == {"t.py::a": 2.0, "t.py::b[\\u00e9 \udcff]": 0.25}
    assert peer.durations("other") == {"t.py::a": 9.0}


def test_outcomes_are_kept_per_key_and_runs_that_disagree_prove_a_test_flaky(
    store: RunStore, peer: RunStore
) -> None:
    odd = "t.py::b[\\u00e9 \udcff]"  # a node id a container made: escapes and a lone surrogate kept

    def seen(
        key: str, run_id: str, machine: str, outcome: str, at: float, nodeid: str = "t.py::b"
    ) -> InnerOutcome:
        return InnerOutcome(key, "suite", nodeid, run_id, machine, outcome, at)

    assert store.outcomes() == [] and store.outcomes("k1") == []
    store.save_outcomes(
        [seen("k1", "r1", "m1", "failed", 10.0), seen("k1", "r1", "m1", "passed", 10.0, "t.py::a")]
    )
    store.save_outcomes([seen("k1", "r2", "m2", "passed", 20.0), seen("k2", "r3", "m1", "failed", 30.0, odd)])
    store.save_outcomes([seen("k1", "r2", "m2", "passed", 20.0)])  # a run recorded twice counts once
    # Another runner sees them: the fleet's runs are the evidence.
    assert [(o.run_id, o.nodeid, o.outcome) for o in peer.outcomes("k1")] == [
        ("r1", "t.py::a", "passed"),
        ("r1", "t.py::b", "failed"),
        ("r2", "t.py::b", "passed"),
    ]
    assert [o.nodeid for o in peer.outcomes("k2")] == [odd]
    assert len(peer.outcomes()) == 4
    (flaky,) = flaky_evidence(peer.outcomes())
    assert (flaky.key, flaky.nodeid, flaky.passed, flaky.failed) == ("k1", "t.py::b", 1, 1)
    assert flaky.last_seen == 20.0 and flaky.machines == ("m1", "m2")
    assert disagreed(peer.outcomes("k1")) and not disagreed(peer.outcomes("k2"))
    # Only the newest MAX_KEPT per key and test count: an old failure ages out.
    store.save_outcomes([seen("k1", f"n{i:02}", "m1", "passed", 100.0 + i) for i in range(MAX_KEPT)])
    assert not disagreed(peer.outcomes("k1"))


def test_gc_drops_the_outcomes_of_keys_no_stored_run_has_any_more(store: RunStore, peer: RunStore) -> None:
    kept, gone = finished(store, 1), finished(store, 2)  # keys k1 and k2
    store.save_outcomes(
        [
            InnerOutcome("k1", "suite", "t.py::a", kept, "m1", "failed", 10.0),
            InnerOutcome("k2", "suite", "t.py::a", gone, "m2", "passed", 20.0),
            InnerOutcome("k3", "suite", "t.py::a", "r-never-stored", "m1", "passed", 30.0),
        ]
    )
    store.delete(gone)
    # Another runner's gc, under the cap (nothing evicted), drops k2's and k3's: no run has them.
    report = gc(peer, max_bytes=1 << 40)
    assert report.deleted == [] and report.outcomes_dropped == 2
    assert [(o.key, o.run_id) for o in store.outcomes()] == [("k1", kept)]
    assert store.outcomes("k2") == [] and store.outcomes("k3") == []
    assert gc(store, max_bytes=1 << 40).outcomes_dropped == 0  # nothing more to drop


def test_the_quarantine_list_is_shared_and_keeps_each_tests_first_date(
    store: RunStore, peer: RunStore
) -> None:
    odd = "suite/t.py::b[\\u00e9 \udcff]"
    assert store.quarantined_tests() == []
    assert store.quarantine_test("suite/t.py::a", 100.0) == Quarantined("suite/t.py::a", 100.0)
    assert peer.quarantine_test("suite/t.py::a", 200.0).since == 100.0  # quarantined again: since the first
    store.quarantine_test(odd, 300.0)
    assert peer.quarantined_tests() == [Quarantined("suite/t.py::a", 100.0), Quarantined(odd, 300.0)]
    assert peer.release_test("suite/t.py::a") and not store.release_test("suite/t.py::a")
    assert store.quarantined_tests() == [Quarantined(odd, 300.0)]


def test_a_free_slot_goes_to_the_oldest_waiter_never_to_a_newcomer(store: RunStore, peer: RunStore) -> None:
    def ask(on: RunStore, key: str, ticket: Ticket | None = None) -> tuple[Run, Decision]:
        return on.place([Candidate("m", key)], lambda c: Run(test_dir=f"/src/{key}"), ticket=ticket)

    holder, _ = ask(store, "k-holder")
    first, second = Ticket("t-first", 100.0), Ticket("t-second", 200.0)
    assert ask(peer, "k-first", first)[1] is Decision.BUSY  # in line
    assert ask(store, "k-second", second)[1] is Decision.BUSY  # in line behind it
    store.end(holder, Status.COMPLETED)
    # The slot is free, but owed: neither a newcomer nor the second waiter may take it.
    assert ask(store, "k-newcomer")[1] is Decision.BUSY
    assert ask(store, "k-second", second)[1] is Decision.BUSY
    run, decision = ask(peer, "k-first", first)
    assert decision is Decision.CREATED
    peer.end(run, Status.COMPLETED)
    assert ask(store, "k-newcomer")[1] is Decision.BUSY  # the second waiter is next
    assert ask(store, "k-second", second)[1] is Decision.CREATED


def test_a_waiter_that_leaves_or_goes_silent_gives_its_place_up(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ask(key: str, ticket: Ticket | None = None) -> Decision:
        return store.place([Candidate("m", key)], lambda c: Run(test_dir=f"/src/{key}"), ticket=ticket)[1]

    holder = create(store, "m", "k-holder")
    assert ask("k-gone", Ticket("t-gone", 1.0)) is Decision.BUSY
    assert ask("k-left", Ticket("t-left", 2.0)) is Decision.BUSY
    store.end(holder, Status.COMPLETED)
    store.leave_line(Ticket("t-left", 2.0), ["m"])
    assert ask("k-newcomer") is Decision.BUSY  # t-gone is still in line
    # Not seen for the line's time to live: its waiter died; the newcomer gets the slot.
    later = time.time() + TICKET_TTL_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert ask("k-newcomer") is Decision.CREATED
