"""No container output wedges a machine: after each hostile run the run is terminal, the next run
on that machine is CREATED, and ``lrun gc`` exits 0 (real engines, real containers)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lrun_support import busybox_spec, container_status

from pytest_lrun.cli import main as lrun
from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import (
    CANCELLED,
    HOST_IO_ERROR,
    INTERNAL_ERROR,
    OOM_KILLED,
    UNSAFE_ARCHIVE,
    RunNotFound,
)
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.gc import state_size
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store import Decision, RunStore, Status
from pytest_lrun.store.records import Run
from pytest_lrun.tree.extract import MAX_EXTRACT_DEPTH, MAX_EXTRACT_ENTRIES

# Each makes something hostile under /lrun/artifacts in a busybox container.
NON_UTF8_NAME = "touch \"/lrun/artifacts/bad-$(printf '\\377\\376')-name\" && echo made"
DEEP_TREE = (
    "d=/lrun/artifacts; i=0; while [ $i -lt 1100 ]; do d=$d/d; i=$((i+1)); done; "
    "mkdir -p $d && echo deep > $d/bottom.txt && echo made"
)
FOLDER_BOMB = "cd /lrun/artifacts && seq 20000 | xargs mkdir && echo made"
# Two declared artifact paths share one budget: 2 x 6,000 folders is over it.
TWO_PATHS = (
    "mkdir -p /tmp/more && seq 6000 | (cd /lrun/artifacts && xargs mkdir) "
    "&& seq 6000 | (cd /tmp/more && xargs mkdir)"
)


def assert_machine_free_and_gc_works(store: RunStore, spec: RunSpec, hostile_run: str) -> None:
    """The machine takes a fresh run at once, and gc over the state dir exits 0 and removes it all."""
    assert store.active(spec.machine.name) == []
    run, outcome = store.prepare(spec.machine.name, "a-fresh-key", lambda: Run(test_dir=str(spec.test_dir)))
    assert outcome is Decision.CREATED
    store.end(run, Status.INTERRUPTED, error_code="test", error_msg="only probing the machine")
    assert lrun(["--state-dir", str(store.state_dir), "gc", "--max-bytes", "1"]) == 0
    with pytest.raises(RunNotFound):
        store.get(hostile_run)
    assert state_size(store) < 1024 * 1024  # every finished run and its folders went


@pytest.mark.parametrize(
    ("script", "check"),
    [
        pytest.param(NON_UTF8_NAME, lambda files: any(b"\xff\xfe" in p for p in files), id="non-utf8-name"),
        pytest.param(
            DEEP_TREE,
            lambda files: max(path.count(b"/") for path in files) <= MAX_EXTRACT_DEPTH + 64,
            id="1100-deep-tree",
        ),
        pytest.param(FOLDER_BOMB, lambda files: len(files) <= MAX_EXTRACT_ENTRIES, id="20000-folders"),
        pytest.param(TWO_PATHS, lambda files: len(files) <= MAX_EXTRACT_ENTRIES, id="one-budget-per-run"),
    ],
)
def test_hostile_artifacts_end_the_run_and_free_the_machine(
    dispatcher: Dispatcher,
    store: RunStore,
    m1: Machine,
    tmp_path: Path,
    script: str,
    check: Callable[[list[bytes]], bool],
) -> None:
    spec = replace(busybox_spec(tmp_path, m1, "sh", "-c", script), artifacts=("/lrun/artifacts", "/tmp/more"))
    result = dispatcher.dispatch(spec)
    run = result.run
    assert run.status.is_terminal, run
    assert run.error_code != INTERNAL_ERROR, run.error_msg
    # What came back is bounded, and anything refused is said.
    artifacts = store.files(run.id).artifacts
    written = _walk(artifacts) if artifacts.is_dir() else []
    assert check(written), f"{len(written)} entries came back"
    if run.error_code == UNSAFE_ARCHIVE:
        assert "refused" in (run.error_msg or "")
    json.dumps(store.get(run.id).to_dict())  # the record reads back and serializes
    assert_machine_free_and_gc_works(store, spec, run.id)


def _walk(top: Path) -> list[bytes]:
    found: list[bytes] = []
    stack = [os.fsencode(top)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                found.append(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return found


def test_an_oom_killed_container_says_so(
    dispatcher: Dispatcher, store: RunStore, m1: Machine, tmp_path: Path
) -> None:
    small = replace(m1, memory=16 * 1024 * 1024)
    # The shell grows one variable until the kernel's OOM killer stops it at the 16 MiB limit.
    spec = busybox_spec(tmp_path, small, "sh", "-c", "x=a; while true; do x=$x$x; done")
    run = dispatcher.dispatch(spec).run
    assert run.status is Status.FAILED
    assert run.error_code == OOM_KILLED, (run.error_code, run.error_msg)
    assert "OOM killer" in (run.error_msg or "")


def test_a_batch_record_that_cannot_be_written_ends_the_run(
    store: RunStore, pool: Any, m1: Machine, tmp_path: Path
) -> None:
    def disk_full(spec: RunSpec, run: Run, origin: str) -> None:
        raise OSError(28, "No space left on device")

    spec = busybox_spec(tmp_path, m1, "echo", "hi")
    with pytest.raises(OSError, match="No space left"):
        Dispatcher(store, pool, on_prepared=disk_full).dispatch(spec)
    (run,) = store.list()
    assert (run.status, run.error_code) == (Status.FAILED, HOST_IO_ERROR)
    assert "No space left on device" in (run.error_msg or "")
    # The same directory runs again at once: no twin waits for the failed run for ever.
    again = Dispatcher(store, pool).dispatch(spec)
    assert (again.origin, again.run.status) == ("created", Status.COMPLETED)


def test_a_bug_after_create_ends_the_run_and_removes_its_container(
    store: RunStore, pool: Any, m1: Machine, tmp_path: Path, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_upload(container_id: str, path: str, data: Any) -> None:
        raise RuntimeError("a bug in the upload")

    monkeypatch.setattr(pool.get(m1), "put_archive", broken_upload)
    spec = busybox_spec(tmp_path, m1, "echo", "hi")
    with pytest.raises(RuntimeError, match="a bug in the upload"):
        Dispatcher(store, pool).dispatch(spec)
    (run,) = store.list()
    assert (run.status, run.error_code) == (Status.FAILED, INTERNAL_ERROR)
    assert "RuntimeError: a bug in the upload" in (run.error_msg or "")
    assert run.container_id is not None and container_status(api, run.container_id) is None
    assert store.active(m1.name) == []


@pytest.mark.parametrize("between", ["create", "start"])
def test_a_run_cancelled_while_its_container_is_made_leaves_no_container(
    store: RunStore, pool: Any, m1: Machine, tmp_path: Path, api: Any, between: str
) -> None:
    engine = pool.get(m1)
    real = getattr(engine, between)

    def cancelled_meanwhile(*args: Any) -> Any:
        # `lrun cancel` read the record before the container was recorded (or started) and
        # wrote its end after: the dispatcher's next update is refused.
        (live,) = store.active()
        result = real(*args)
        store.end(live, Status.INTERRUPTED, error_code=CANCELLED, error_msg="cancelled with `lrun cancel`")
        return result

    setattr(engine, between, cancelled_meanwhile)
    result = Dispatcher(store, pool).dispatch(busybox_spec(tmp_path, m1, "sleep", "60"))
    assert (result.run.status, result.run.error_code) == (Status.INTERRUPTED, CANCELLED)
    assert api.containers(all=True, filters={"label": f"lrun.run-id={result.run.id}"}) == []
