"""Recovery against real engines: crashed runs become honest, leftover containers go, live ones stay.

Runs are started with :meth:`Dispatcher.start`, which leaves them running with
nobody watching (as a killed pytest process would). Containers a test creates
itself carry the ``lrun-tests.token`` label and are removed in teardown; reap
calls see only this test's containers (:class:`OnlyMine`), so they never touch
what other sessions run on the shared engines.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from lrun_support import BUSYBOX_IMAGE, busybox_spec, container_status, resolver_for, wait_for

from pytest_lrun.config.machines import Machine
from pytest_lrun.engine import LABEL_CREATED, LABEL_RUN, LABEL_STORE, ContainerState, Engine
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.recovery import reap, reconcile
from pytest_lrun.store import Run, RunStore, Status

TEST_LABEL = "lrun-tests.token"


class OnlyMine:
    """An engine that lists only this test's containers (by token label, or by a run of its store)."""

    def __init__(self, engine: Engine, token: str, store: RunStore) -> None:
        self._engine = engine
        self._token = token
        self._store = store
        self.machine = engine.machine
        self.url = engine.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def list_labelled(self, label: str) -> list[ContainerState]:
        mine = {run.id for run in self._store.list()}
        return [
            s
            for s in self._engine.list_labelled(label)
            if s.labels.get(TEST_LABEL) == self._token or s.labels.get(LABEL_RUN) in mine
        ]


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture
def token(api: Any) -> Iterator[str]:
    """A label value for containers this test creates itself; they are all removed in teardown."""
    value = secrets.token_hex(8)
    yield value
    for c in api.containers(all=True, filters={"label": f"{TEST_LABEL}={value}"}):
        api.remove_container(c["Id"], force=True, v=True)


def engine_of(pool: EnginePool, project: Path) -> Callable[[str], Engine]:
    resolver = resolver_for(project)
    return lambda name: pool.get(resolver.resolve(name))


# --- reconcile --------------------------------------------------------------------------------------------


def test_reconcile_after_the_container_was_removed(
    tmp_path: Path,
    project: Path,
    store: RunStore,
    pool: EnginePool,
    dispatcher: Dispatcher,
    m1: Machine,
    api: Any,
) -> None:
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sleep", "30")).run
    assert run.status is Status.RUNNING and run.container_id is not None
    api.remove_container(run.container_id, force=True, v=True)

    report = reconcile(store, dispatcher, engine_of(pool, project))

    stored = store.get(run.id)
    assert stored.status is Status.INTERRUPTED
    assert stored.error_code == "container_gone"
    assert [(c.run_id, c.old_status, c.new_status) for c in report.changed] == [
        (run.id, "running", "interrupted")
    ]
    assert store.active() == [] and store.check() == []


def test_reconcile_collects_a_run_that_exited_while_unwatched(
    tmp_path: Path,
    project: Path,
    store: RunStore,
    pool: EnginePool,
    dispatcher: Dispatcher,
    m1: Machine,
    api: Any,
) -> None:
    script = "echo hi; echo data > /lrun/artifacts/a.txt; exit 3"
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sh", "-c", script)).run
    assert run.container_id is not None
    container_id = run.container_id
    wait_for(lambda: container_status(api, container_id) == "exited", "the container to exit")

    report = reconcile(store, dispatcher, engine_of(pool, project))

    stored = store.get(run.id)
    assert stored.status is Status.FAILED and stored.exit_code == 3
    assert "hi" in (store.files(run.id).logs).read_text()
    assert (store.files(run.id).artifacts / "artifacts" / "a.txt").read_text() == "data\n"
    assert container_status(api, container_id) is None  # removed once collected
    assert report.changed[0].new_status == "failed"


def test_reconcile_leaves_a_running_container_and_an_unreachable_machine(
    tmp_path: Path, project: Path, store: RunStore, pool: EnginePool, dispatcher: Dispatcher, m1: Machine
) -> None:
    running = dispatcher.start(busybox_spec(tmp_path, m1, "sleep", "30")).run
    resolve = engine_of(pool, project)
    started = time.monotonic()
    report = reconcile(store, dispatcher, resolve)
    assert time.monotonic() - started < 10  # never waits for a container
    assert store.get(running.id).status is Status.RUNNING
    assert report.untouched[0].reason == "its container is still running"

    down = Machine(name="down", host="tcp://127.0.0.1:1", source="config")
    unreachable = EnginePool(connect_timeout=2)
    try:
        report = reconcile(store, dispatcher, lambda name: unreachable.get(down))
    finally:
        unreachable.close()
    assert store.get(running.id).status is Status.RUNNING
    assert len(report.problems) == 1 and report.problems[0].startswith(
        "machine m1 unreachable: tcp://127.0.0.1:1"
    )


# --- reap --------------------------------------------------------------------------------------------------


def test_reap_removes_only_labelled_containers(
    store: RunStore, pool: EnginePool, m1: Machine, api: Any, token: str
) -> None:
    old = str(int(time.time()) - 3600)
    done = store.insert(Run(machine="m1", test_dir="/src/x", key="k", status=Status.COMPLETED, exit_code=0))

    def create(**labels: str) -> str:
        created = api.create_container(BUSYBOX_IMAGE, command=["true"], labels={TEST_LABEL: token, **labels})
        return str(created["Id"])

    plain = create(**{LABEL_CREATED: old})  # no lrun.run-id: never listed, never removed
    terminal = create(**{LABEL_RUN: done.id, LABEL_CREATED: old})
    unknown = create(
        **{LABEL_RUN: f"19990101T000000-{token[:8]}", LABEL_CREATED: old, LABEL_STORE: store.store_id}
    )
    # An unknown run of another state dir sharing the engine is not ours to judge.
    foreign = create(**{LABEL_RUN: f"19990101T000001-{token[:8]}", LABEL_CREATED: old, LABEL_STORE: "other"})
    engine = pool.get(m1)
    assert plain not in {s.id for s in engine.list_labelled(LABEL_RUN)}

    reaped = reap(store, cast(Engine, OnlyMine(engine, token, store)), max_age=0)

    assert {r.container_id for r in reaped} == {terminal, unknown}
    assert {r.reason for r in reaped} == {"its run is completed", "its run is unknown to the store"}
    assert container_status(api, terminal) is None and container_status(api, unknown) is None
    assert container_status(api, plain) == "created"
    assert container_status(api, foreign) == "created"


def test_reap_never_removes_a_live_runs_container(
    tmp_path: Path,
    store: RunStore,
    pool: EnginePool,
    dispatcher: Dispatcher,
    m1: Machine,
    api: Any,
    token: str,
) -> None:
    live = dispatcher.start(busybox_spec(tmp_path, m1, "sleep", "30")).run
    assert live.container_id is not None
    # A running container of a run this store does not know may be another state dir's live run.
    stranger = api.create_container(
        BUSYBOX_IMAGE,
        command=["sleep", "30"],
        labels={TEST_LABEL: token, LABEL_RUN: f"19990101T000000-{token[:8]}"},
    )["Id"]
    api.start(stranger)

    reaped = reap(store, cast(Engine, OnlyMine(pool.get(m1), token, store)), max_age=0)

    assert reaped == []
    assert container_status(api, live.container_id) == "running"
    assert container_status(api, stranger) == "running"
    assert store.get(live.id).status is Status.RUNNING
