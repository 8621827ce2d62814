"""The file store's own layout and crash handling, and the atomic-write helper.

What every backend must do is in test_store_contract.py; races of the file store's locks are in
test_store_race.py.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.errors import (
    ConfigError,
    CorruptRecord,
    ExtraMissing,
    LrunError,
    RunNotFound,
    StoreError,
    StoreLocked,
    TerminalRunError,
)
from pytest_lrun.core.fsutil import atomic_write_bytes, atomic_write_json
from pytest_lrun.core.layout import default_state_dir, machine_key
from pytest_lrun.store import Decision, Run, RunStore, Status, open_store
from pytest_lrun.store.files import FileStore

RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")


def make_run(test_dir: str = "/src/tests/a") -> Run:
    return Run(test_dir=test_dir)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return FileStore(tmp_path / "state")


def create(store: RunStore, machine: str = "m", key: str = "k", **fields: Any) -> Run:
    run, outcome = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}", **fields))
    assert outcome is Decision.CREATED
    return run


def finish(store: RunStore, run: Run, status: Status = Status.COMPLETED) -> Run:
    run.status = status
    run.exit_code = 0 if status is Status.COMPLETED else 1
    store.update(run)
    return run


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- opening ------------------------------------------------------------------


def test_importing_the_store_loads_no_backend() -> None:
    """The backend is imported by open_store, for the store it opens: a file store never loads psycopg."""
    code = (
        "import sys, pytest_lrun.store;"
        "print([m for m in sys.modules if 'psycopg' in m or m.startswith('pytest_lrun.store.')"
        " and m.rpartition('.')[2] in ('files', 'postgres') or '.file_' in m or '.pg_' in m])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_open_store_opens_the_file_store_without_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = open_store(tmp_path / "state")
    assert isinstance(opened, FileStore) and opened.state_dir == Path(os.path.realpath(tmp_path / "state"))
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(ExtraMissing):
        open_store(tmp_path / "state", "postgresql://h/db")


# --- state directory and names ------------------------------------------------


def test_default_state_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LRUN_STATE_DIR", str(tmp_path / "custom"))
    assert default_state_dir() == tmp_path / "custom"
    monkeypatch.delenv("LRUN_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".lrun"


def test_store_without_argument_uses_env_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LRUN_STATE_DIR", str(tmp_path / "from-env"))
    store = FileStore()
    create(store)
    assert len(list((tmp_path / "from-env" / "runs").iterdir())) == 1


@pytest.mark.usefixtures("umask_zero")
def test_state_dir_is_created_private(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "state"
    store = FileStore(root)
    for directory in (root, root / "runs", root / "active", root / "locks", root / "corrupt"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    run = create(store)
    record = store.files(run.id).record
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_machine_keys_are_filesystem_safe_and_distinct() -> None:
    names = ["gpu-1", "a/b", "a_b", "..", ".hidden", "ü ber", "x" * 300, "a\\b:c*"]
    keys = [machine_key(name) for name in names]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", key), key
        assert not key.startswith(".")
        assert len(key) <= 48 + 1 + 32  # readable part, dash, the full xxh3-128 digest
    assert machine_key("gpu-1") == machine_key("gpu-1")
    with pytest.raises(ValueError):
        machine_key("")


def test_a_runs_folder_is_runs_slash_its_time_sortable_id(store: RunStore) -> None:
    run = create(store)
    assert RUN_ID.fullmatch(run.id)
    assert store.files(run.id).dir == store.state_dir / "runs" / run.id
    assert store.files(run.id).dir.is_dir()


# --- Run records ----------------------------------------------------------------


def test_status_terminal_set() -> None:
    assert [s.value for s in Status if s.is_terminal] == ["completed", "failed", "interrupted", "timeout"]
    assert not Status.PENDING.is_terminal and not Status.RUNNING.is_terminal
    assert [o.value for o in Decision] == ["created", "reuse", "busy"]


def test_record_json_has_every_field_snake_case_with_nulls(store: RunStore) -> None:
    run = create(store, command=["pytest", "-q"])
    data = json.loads((store.files(run.id).record).read_text())
    assert list(data) == [
        "id",
        "machine",
        "test_dir",
        "test_dir_hash",
        "key",
        "status",
        "exit_code",
        "created_at",
        "started_at",
        "ended_at",
        "artifacts_path",
        "logs_path",
        "error_code",
        "error_msg",
        "batch_id",
        "plan_entry",
        "container_id",
        "image",
        "command",
        "owner",
        "timeout",
        "artifacts",
        "env_names",
        "secret_env",
        "retry_of",
        "event_token",
        "action_digest",
    ]
    assert data["status"] == "pending"
    assert data["exit_code"] is None and data["ended_at"] is None and data["container_id"] is None
    assert data["command"] == ["pytest", "-q"]
    assert data["owner"] == {"host": socket.gethostname(), "pid": os.getpid()}


def test_status_may_be_given_as_its_string() -> None:
    run = Run(test_dir="/t", status="failed")  # type: ignore[arg-type]
    assert run.status is Status.FAILED and run.status.is_terminal
    with pytest.raises(ValueError):
        Run(test_dir="/t", status="exploded")  # type: ignore[arg-type]


def test_from_dict_round_trip_and_forward_compat() -> None:
    run = Run(
        id="20240101T000000-0000abcd",
        machine="m",
        test_dir="/t",
        test_dir_hash="h",
        key="h",
        status=Status.FAILED,
        exit_code=3,
        created_at=1.0,
        command=["a"],
        owner={"host": "h", "pid": 1},
    )
    data = run.to_dict()
    assert Run.from_dict(data) == run
    data["added_in_v9"] = {"anything": True}
    assert Run.from_dict(data) == run
    assert Run.from_dict({**data, "created_at": 5}).created_at == 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "'id'"),
        ({"status": "exploded"}, "status"),
        ({"exit_code": "0"}, "exit_code"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"command": "pytest -q"}, "command"),
    ],
)
def test_from_dict_rejects_bad_records(change: dict[str, Any], message: str) -> None:
    data = Run(id="x1", machine="m", test_dir="/t", test_dir_hash="h", key="h").to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        Run.from_dict(data)


@pytest.mark.parametrize("missing", ["id", "machine", "test_dir", "test_dir_hash", "key", "status"])
def test_from_dict_requires_core_fields(missing: str) -> None:
    data = Run(id="x1", machine="m", test_dir="/t", test_dir_hash="h", key="h").to_dict()
    del data[missing]
    with pytest.raises(ValueError, match=missing):
        Run.from_dict(data)


def test_store_reads_records_written_by_a_newer_version(store: RunStore) -> None:
    run = create(store)
    path = store.files(run.id).record
    data = json.loads(path.read_text())
    data["future_field"] = [1, 2]
    path.write_text(json.dumps(data))
    assert store.get(run.id) == run
    assert store.check() == []


# --- prepare ---------------------------------------------------------------------


def test_prepare_does_not_read_finished_runs(store: RunStore) -> None:
    finished = [
        store.insert(Run(machine="m", test_dir="/t", key=f"old{i}", status=Status.COMPLETED))
        for i in range(50)
    ]
    for run in finished:  # were prepare to read them, it would find them corrupt and move them aside
        (store.files(run.id).record).write_text("garbage")
    for key in ("k1", "k2"):
        run, outcome = store.prepare("m", key, make_run)
        assert outcome is Decision.CREATED
        finish(store, run)
    assert store.problems == []
    assert list((store.state_dir / "corrupt").iterdir()) == []


def test_make_that_calls_back_into_the_store_is_refused_not_deadlocked(store: RunStore) -> None:
    def make() -> Run:
        store.prepare("m", "k", make_run)
        return make_run()

    with pytest.raises(StoreError, match="already holds the store lock"):
        store.prepare("m", "k", make)
    assert create(store, "m", "k").key == "k"


# --- update, active, delete -----------------------------------------------------------


def test_machines_whose_keys_collide_never_share_a_run(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_lrun.store.file_io as io_module
    import pytest_lrun.store.files as store_module

    for module in (store_module, io_module):  # every module of the file store that names a machine's files
        monkeypatch.setattr(module, "machine_key", lambda machine: "same")
    first, outcome = store.prepare("a", "k", make_run)
    assert outcome is Decision.CREATED
    other, outcome = store.prepare("b", "k", make_run)
    assert outcome is Decision.CREATED and other.id != first.id and other.machine == "b"


def test_becoming_terminal_leaves_the_active_index(store: RunStore) -> None:
    run = create(store, "m")
    finish(store, run, Status.TIMEOUT)
    index = json.loads((store.state_dir / "active" / f"{machine_key('m')}.json").read_text())
    assert index == {"machine": "m", "runs": []}
    assert store.check() == []


def test_delete_leaves_no_trace_in_runs(store: RunStore) -> None:
    run = finish(store, create(store))
    (store.files(run.id).artifacts).mkdir()
    (store.files(run.id).artifacts / "junit.xml").write_text("<x/>")
    store.delete(run.id)
    assert list((store.state_dir / "runs").iterdir()) == []  # no half-deleted folder either


# --- crashes and corruption ---------------------------------------------------------


def boom(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device (simulated)")


def test_crash_before_rename_keeps_the_old_record(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create(store)
    before = (store.files(run.id).record).read_bytes()
    run.status = Status.RUNNING
    run.container_id = "abc"
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="simulated"):
            store.update(run)
    assert (store.files(run.id).record).read_bytes() == before
    stored = store.get(run.id)
    assert (stored.status, stored.container_id) == (Status.PENDING, None)
    assert sorted(p.name for p in store.files(run.id).dir.iterdir()) == ["run.json"]
    assert not [name for name in files_under(store.state_dir) if name.endswith(".tmp")]
    assert store.check() == []


def test_crash_in_prepare_leaves_no_half_run(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="simulated"):
            store.prepare("m", "k", make_run)
    assert list((store.state_dir / "runs").iterdir()) == []
    assert store.check() == []
    assert create(store, "m", "k").key == "k"


def test_crash_between_record_and_index_heals(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create(store, "m", "k1")
    real_replace = os.replace
    calls: list[str] = []

    def replace_record_only(src: str, dst: str) -> None:
        calls.append(str(dst))
        if len(calls) > 1:  # the record lands, the index update "crashes"
            raise OSError(5, "simulated crash")
        real_replace(src, dst)

    run.status = Status.COMPLETED
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_record_only)
        with pytest.raises(OSError):
            store.update(run)
    assert store.get(run.id).status is Status.COMPLETED
    assert store.check() == [f"active/{machine_key('m')}.json lists run {run.id}, which is completed"]
    second, outcome = store.prepare("m", "k2", make_run)  # a stale entry does not make the machine busy
    assert outcome is Decision.CREATED
    assert store.check() == []
    assert store.active("m") == [second]


def test_corrupt_record_is_moved_aside_and_reported(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    good = finish(store, create(store, "m", "good"))
    bad = finish(store, create(store, "m2", "bad"))
    path = store.files(bad.id).record
    path.write_bytes(b'{"id": "trunc')
    with caplog.at_level(logging.WARNING, logger="pytest_lrun"), pytest.raises(CorruptRecord) as info:
        store.get(bad.id)
    err = info.value
    assert err.path == str(path)
    moved = Path(err.moved_to)
    assert moved.parent == store.state_dir / "corrupt"
    assert moved.read_bytes() == b'{"id": "trunc'
    assert not path.exists()
    assert store.problems == [err]
    assert any(str(path) in record.getMessage() for record in caplog.records)
    # the rest of the store still works
    assert store.get(good.id) == good
    assert store.list() == [good]
    with pytest.raises(RunNotFound):
        store.get(bad.id)
    assert store.check() == []


def test_list_skips_corrupt_records_and_collects_them(store: RunStore) -> None:
    good = create(store, "m", "good")
    bad = finish(store, create(store, "m2", "bad"))
    (store.files(bad.id).record).write_text(json.dumps({"id": bad.id, "status": "pending"}))
    assert store.list() == [good]
    (problem,) = store.problems
    assert problem.reason == "run record lacks required field(s): machine, test_dir, test_dir_hash, key"
    assert len(list((store.state_dir / "corrupt").iterdir())) == 1
    assert store.list() == [good] and len(store.problems) == 1  # reported once


def test_corrupt_file_is_never_overwritten(store: RunStore) -> None:
    first = finish(store, create(store, "m", "a"))
    second = finish(store, create(store, "m", "b"))
    for run in (first, second):
        (store.files(run.id).record).write_text("not json")
    assert store.list() == []
    kept = sorted((store.state_dir / "corrupt").iterdir())
    assert len(kept) == 2 and all(p.read_text() == "not json" for p in kept)


def test_record_in_the_wrong_directory_is_reported(store: RunStore) -> None:
    run = finish(store, create(store))
    copy = store.state_dir / "runs" / "20200101T000000-deadbeef"
    shutil.copytree(store.files(run.id).dir, copy)
    problems = store.check()
    assert len(problems) == 1 and "does not match its directory" in problems[0]
    assert (copy / "run.json").exists()  # check() changes nothing
    with pytest.raises(CorruptRecord, match="does not match"):
        store.get(copy.name)
    assert store.check() == []


def test_corrupt_index_is_rebuilt_from_records(store: RunStore) -> None:
    finish(store, create(store, "m", "k0"))  # finished runs must stay out of the rebuilt index
    create(store, "other", "k1")  # and so must other machines' live runs
    live = create(store, "m", "k1")
    index = store.state_dir / "active" / f"{machine_key('m')}.json"
    index.write_text("[garbage")
    assert any("does not parse" in p for p in store.check())
    other, outcome = store.prepare("m", "k2", make_run)
    assert (outcome, other) == (Decision.BUSY, live)
    assert len(store.problems) == 1 and store.problems[0].path == str(index)
    assert Path(store.problems[0].moved_to).read_text() == "[garbage"
    assert json.loads(index.read_text()) == {"machine": "m", "runs": [live.id]}
    assert store.prepare("m", "k1", make_run) == (live, Decision.REUSE)
    assert store.check() == []


def test_corrupt_index_is_rebuilt_by_active(store: RunStore) -> None:
    live = create(store, "m", "k1")
    (store.state_dir / "active" / f"{machine_key('m')}.json").write_text('{"runs": "nope"}')
    assert store.active() == [live]
    assert len(store.problems) == 1
    index = json.loads((store.state_dir / "active" / f"{machine_key('m')}.json").read_text())
    assert index == {"machine": "m", "runs": [live.id]}
    assert store.check() == []


def test_check_reports_broken_invariants(store: RunStore) -> None:
    a = create(store, "m", "k1")
    index = store.state_dir / "active" / f"{machine_key('m')}.json"
    index.write_text(json.dumps({"machine": "m", "runs": []}))  # forget a: the machine looks free
    b = create(store, "m", "k1")
    index.write_text(json.dumps({"machine": "m", "runs": [a.id, b.id, "20200101T000000-00000000"]}))
    problems = store.check()
    assert any("no record" in p for p in problems)
    assert any("2 active runs of key 'k1' (twins)" in p for p in problems)
    assert len(problems) == 2


def test_stale_index_entries_are_dropped(store: RunStore) -> None:
    gone = create(store, "m", "k1")
    finish(store, gone)
    store.delete(gone.id)
    index = store.state_dir / "active" / f"{machine_key('m')}.json"
    index.write_text(json.dumps({"machine": "m", "runs": [gone.id]}))
    assert store.check() != []
    run, outcome = store.prepare("m", "k2", make_run)
    assert outcome is Decision.CREATED
    assert json.loads(index.read_text())["runs"] == [run.id]
    assert store.check() == []


# --- errors ------------------------------------------------------------------------


def test_raised_errors_survive_pickling(store: RunStore) -> None:
    caught: list[LrunError] = []
    with pytest.raises(RunNotFound) as not_found:
        store.get("20240101T000000-00000000")
    caught.append(not_found.value)
    run = finish(store, create(store))
    run.status = Status.FAILED
    with pytest.raises(TerminalRunError) as terminal:
        store.update(run)
    caught.append(terminal.value)
    (store.files(run.id).record).write_text("{")
    with pytest.raises(CorruptRecord) as corrupt:
        store.get(run.id)
    caught.append(corrupt.value)
    with pytest.raises(StoreError) as store_error:
        store.prepare("m", "k", lambda: Run(test_dir="/t", status=Status.FAILED))
    caught.append(store_error.value)
    locked = StoreLocked("m", "/state/locks/m.lock", 1.5)
    caught.append(locked)
    for err in caught:
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert clone.to_dict() == err.to_dict()
    assert isinstance(pickle.loads(pickle.dumps(locked)), TimeoutError)


# --- fsutil --------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_atomic_write_bytes_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two" * 1000)
    assert target.read_bytes() == b"two" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_bytes(target, b"shared", mode=0o644, durable=False)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache.json"
    atomic_write_json(target, {"v": 1})
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_atomic_write_json_refuses_unencodable_before_touching_disk(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": "ü"})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"nan": float("nan")})
    assert json.loads(target.read_text(encoding="utf-8")) == {"ok": "ü"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_records_escape_strings_that_are_not_utf8(store: RunStore) -> None:
    # A container can name a file with bytes that are not UTF-8; Python carries them as surrogates.
    run, _ = store.prepare("m-\udcff", "k", lambda: Run(test_dir="/src/bad-\udcff\udcfe-name"))
    assert store.files(run.id).record.read_bytes().isascii()  # escaped, not a reason to fail


def test_a_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("not a folder")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        FileStore(path)
    assert path.read_text() == "not a folder"
