"""The ``lrun`` command line against a store filled through the RunStore API (no engine)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.cli import main
from pytest_lrun.cli.commands import EXIT_BATCH_FAILED, EXIT_BATCH_INCOMPLETE, EXIT_BATCH_UNFINISHED
from pytest_lrun.cli.follow import Tail
from pytest_lrun.config.machines import find_machine_file
from pytest_lrun.config.plan import load_plan
from pytest_lrun.core.errors import EXIT_BAD_INPUT, EXIT_NOT_FOUND, ConfigError
from pytest_lrun.store import Decision, Run, RunStore, Status
from pytest_lrun.store.files import FileStore


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state dir, also named by LRUN_STATE_DIR (so most calls need no --state-dir)."""
    path = tmp_path / "state"
    monkeypatch.setenv("LRUN_STATE_DIR", str(path))
    for name in ("LRUN_STATE_MAX_BYTES", "LRUN_REAP_AGE", "LRUN_CONNECT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def store(state: Path) -> RunStore:
    return FileStore(state, durable=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project without machine tables: every machine name a run record holds is unknown here."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    return root


Lrun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def lrun(capsys: pytest.CaptureFixture[str]) -> Lrun:
    """Run ``lrun ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as e:  # argparse usage errors
            status = int(e.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def finished(
    store: RunStore,
    *,
    machine: str = "m1",
    status: Status = Status.COMPLETED,
    created_at: float = 1000.0,
    ended_at: float | None = None,
    batch_id: str | None = None,
    logs: bytes | None = None,
    exit_code: int | None = None,
) -> Run:
    run = store.insert(
        Run(
            logs_path=None if logs is None else "logs.txt",
            machine=machine,
            test_dir="/src/suite",
            test_dir_hash="abc123",
            key=f"key-{machine}",
            status=status,
            exit_code=(0 if status is Status.COMPLETED else 1) if exit_code is None else exit_code,
            created_at=created_at,
            started_at=created_at + 1,
            ended_at=created_at + 5 if ended_at is None else ended_at,
            batch_id=batch_id,
            command=["python3", "-m", "pytest"],
            artifacts=["/lrun/artifacts"],
        )
    )
    if logs is not None:
        (store.files(run.id).logs).write_bytes(logs)
    return run


def live(store: RunStore, machine: str = "m1", key: str = "live-key") -> Run:
    run, outcome = store.prepare(machine, key, lambda: Run(test_dir="/src/live"))
    assert outcome is Decision.CREATED
    return run


# --- runs and show ------------------------------------------------------------------------


def test_runs_json_is_the_store_records(lrun: Lrun, store: RunStore) -> None:
    done = finished(store)
    failed = finished(store, machine="m2", status=Status.FAILED, created_at=2000.0)
    pending = live(store)

    status, out, err = lrun("runs", "--json")

    assert status == 0 and err == ""
    envelope = json.loads(out)
    assert envelope["schema_version"] == 1
    data = envelope["runs"]
    assert data == [store.get(r.id).to_dict() for r in (done, failed, pending)]
    record = json.loads((store.files(done.id).record).read_text())
    assert set(data[0]) == set(record) and data[0] == record
    assert data[0]["created_at"] == "1970-01-01T00:16:40.000Z"  # RFC 3339, as in the record


def test_runs_filters(lrun: Lrun, store: RunStore) -> None:
    a = finished(store, machine="m1", batch_id="b1")
    b = finished(store, machine="m2", status=Status.FAILED, created_at=2000.0)
    live(store, machine="m3")

    def ids(*args: str) -> list[str]:
        status, out, _ = lrun("runs", "--json", *args)
        assert status == 0
        return [r["id"] for r in json.loads(out)["runs"]]

    assert ids("--machine", "m2") == [b.id]
    assert ids("--status", "completed") == [a.id]
    assert ids("--batch", "b1") == [a.id]
    assert ids("--machine", "m1", "--status", "failed") == []


def test_runs_table(lrun: Lrun, store: RunStore) -> None:
    run = finished(store, status=Status.FAILED, exit_code=3, created_at=time.time() - 7200)
    _status, out, _ = lrun("runs")
    header, row = out.splitlines()
    assert header.split() == ["ID", "MACHINE", "STATUS", "EXIT", "DIR", "AGE"]
    assert row.split() == [run.id, "m1", "failed", "3", "/src/suite", "2h"]


def test_runs_empty(lrun: Lrun, state: Path) -> None:
    assert lrun("runs") == (0, "no runs\n", "")
    assert json.loads(lrun("runs", "--json")[1]) == {"schema_version": 1, "runs": []}


def test_show_json_equals_the_record(lrun: Lrun, store: RunStore) -> None:
    run = finished(store, logs=b"x\n")
    status, out, _ = lrun("show", run.id, "--json")
    assert status == 0
    assert json.loads(out) == {
        "schema_version": 1,
        "run": json.loads((store.files(run.id).record).read_text()),
    }


def test_show_human(lrun: Lrun, store: RunStore) -> None:
    run = finished(store)
    _status, out, _ = lrun("show", run.id)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["id"] == run.id and lines["status"] == "completed"
    assert lines["command"] == "python3 -m pytest"
    assert lines["error_code"] == "-"
    assert lines["created_at"].startswith("1970-01-01T00:16:40.000Z (") and lines["created_at"].endswith(
        "ago)"
    )


def test_show_summarises_a_shard_s_node_ids_and_full_prints_them_all(lrun: Lrun, store: RunStore) -> None:
    ids = [f"test/test_parser.py::test_case[{i}]" for i in range(2000)]
    base = ["python3", "-m", "pytest", "-q", "--rootdir=/lrun/work"]
    run = store.insert(
        Run(
            machine="m1",
            test_dir="/src/parso",
            test_dir_hash="h",
            key="k",
            status=Status.COMPLETED,
            command=[*base, *ids],
        )
    )
    _status, out, _ = lrun("show", run.id)
    command = dict(line.split(None, 1) for line in out.splitlines())["command"]
    assert command == (
        "python3 -m pytest -q --rootdir=/lrun/work 'test/test_parser.py::test_case[0]' "
        "'test/test_parser.py::test_case[1]' 'test/test_parser.py::test_case[2]' "
        "... 1,997 more node ids (lrun show --full)"
    )
    status, out, _ = lrun("show", run.id, "--full")
    full = dict(line.split(None, 1) for line in out.splitlines())["command"]
    assert status == 0 and shlex.split(full) == [*base, *ids]
    assert json.loads(lrun("show", run.id, "--json")[1])["run"]["command"] == [*base, *ids]


def test_global_options_work_after_the_command(lrun: Lrun, store: RunStore, tmp_path: Path) -> None:
    elsewhere = FileStore(tmp_path / "other")
    run = finished(elsewhere)
    status, out, _ = lrun("show", run.id, "--json", "--state-dir", str(tmp_path / "other"))
    assert status == 0 and json.loads(out)["run"]["id"] == run.id
    status, out, _ = lrun("--state-dir", str(tmp_path / "other"), "runs", "--json")
    assert [r["id"] for r in json.loads(out)["runs"]] == [run.id]


# --- errors -----------------------------------------------------------------------------------


def test_not_found_is_exit_3_with_one_line(lrun: Lrun, state: Path) -> None:
    status, out, err = lrun("show", "20200101T000000-deadbeef")
    assert status == EXIT_NOT_FOUND == 3
    assert out == ""
    assert err == "lrun: error: no run with id '20200101T000000-deadbeef'\n"


def test_not_found_json(lrun: Lrun, state: Path) -> None:
    status, out, err = lrun("show", "nope", "--json")
    assert status == 3 and err == ""
    assert json.loads(out) == {
        "schema_version": 1,
        "error": {"code": "run_not_found", "message": "no run with id 'nope'", "run_id": "nope"},
    }


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("runs", "--status", "bogus"),
        ("frobnicate",),
        ("show",),
        ("reap", "--age", "-1"),
        ("gc", "--max-bytes", "lots"),
    ],
)
def test_usage_errors_exit_2(lrun: Lrun, state: Path, args: tuple[str, ...]) -> None:
    status, out, err = lrun(*args)
    assert status == 2 and out == ""
    assert err.splitlines()[-1].startswith("lrun")


def test_bad_environment_value_is_bad_input(lrun: Lrun, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRUN_STATE_MAX_BYTES", "lots")
    status, out, err = lrun("runs")
    assert status == EXIT_BAD_INPUT
    assert err.count("\n") == 1 and "LRUN_STATE_MAX_BYTES" in err and err.startswith("lrun: error: ")
    status, out, _ = lrun("runs", "--json")
    assert status == 2 and json.loads(out)["error"]["code"] == "config_invalid"


def test_project_without_pyproject_is_bad_input(lrun: Lrun, state: Path, tmp_path: Path) -> None:
    status, _, err = lrun("machines", "--project", str(tmp_path))
    assert status == 2 and "no pyproject.toml" in err


def test_find_machine_file(tmp_path: Path, project: Path) -> None:
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    assert find_machine_file(None, deep, source="x") == project / "pyproject.toml"
    assert find_machine_file(project, source="x") == (project / "pyproject.toml").absolute()
    toml = project / "pyproject.toml"
    assert find_machine_file(toml, source="x") == toml.absolute()
    (deep / "fleet.toml").write_text("")
    assert find_machine_file(Path("fleet.toml"), deep, source="x") == deep / "fleet.toml"  # relative to cwd
    with pytest.raises(ConfigError, match=r"^--lrun-config: no file .*/a/nope.toml$"):
        find_machine_file(Path("nope.toml"), project / "a", source="--lrun-config")


def test_lrun_reads_the_machine_file_lrun_config_names(
    lrun: Lrun, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = tmp_path / "ci" / "fleet.toml"
    fleet.parent.mkdir()
    fleet.write_text('[tool.lrun.machines.far]\nhost = "tcp://127.0.0.1:1"\n')
    monkeypatch.setenv("LRUN_CONFIG", str(fleet))
    status, out, _ = lrun("machines", "--json", "--connect-timeout", "2")
    assert status == 0 and "far" in [row["name"] for row in json.loads(out)["machines"]]
    status, _, err = lrun("images", "--machine", "near")
    assert status == EXIT_NOT_FOUND
    assert err.rstrip().endswith(f"(machine tables read from {fleet})")
    monkeypatch.setenv("LRUN_CONFIG", str(tmp_path / "gone.toml"))
    status, _, err = lrun("machines")
    assert (status, err) == (EXIT_BAD_INPUT, f"lrun: error: LRUN_CONFIG: no file {tmp_path / 'gone.toml'}\n")


# --- logs --------------------------------------------------------------------------------------


def test_logs_prints_the_file(store: RunStore, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    content = b"line one\nline two \xe2\x9c\x93\nno newline at the end"
    run = finished(store, logs=content)
    assert main(["logs", run.id]) == 0
    assert capsysbinary.readouterr().out == content


def test_logs_of_a_run_without_logs_prints_nothing(lrun: Lrun, store: RunStore) -> None:
    run = finished(store)
    assert lrun("logs", run.id) == (0, "", "")


def test_logs_of_a_run_that_ran_in_another_state_dir_says_it_has_none(lrun: Lrun, store: RunStore) -> None:
    # A file store shares nothing: a record whose log is elsewhere cannot be printed, and lrun says so.
    run = store.insert(
        Run(
            machine="m1",
            test_dir="/src/suite",
            test_dir_hash="h",
            key="k",
            status=Status.COMPLETED,
            exit_code=0,
            ended_at=1000.0,
            logs_path="/elsewhere/state/runs/x/logs.txt",
            owner={"host": "runner-7", "pid": 1},
        )
    )
    status, out, err = lrun("logs", run.id)
    assert (status, out) == (EXIT_NOT_FOUND, "")
    assert err == (
        f"lrun: error: no log of run {run.id} in this state dir: the runner that ran it (host runner-7) "
        f"wrote it to /elsewhere/state/runs/x/logs.txt, and the store {store.state_dir} holds no copy "
        "(a shared --lrun-store keeps each run's log once it ended, unless its runner could not save it; "
        "a file store keeps none)\n"
    )


def test_logs_of_a_run_live_here_before_its_first_output_prints_nothing(lrun: Lrun, store: RunStore) -> None:
    run = live(store)
    store.update(replace(run, status=Status.RUNNING, logs_path=str(store.files(run.id).logs)))
    assert lrun("logs", run.id) == (0, "", "")


def test_logs_not_found(lrun: Lrun, state: Path) -> None:
    status, _, err = lrun("logs", "20200101T000000-deadbeef")
    assert status == 3 and err.count("\n") == 1


def test_logs_follow_of_a_terminal_run_returns_at_once(lrun: Lrun, store: RunStore) -> None:
    run = finished(store, logs=b"all done\n")
    assert lrun("logs", run.id, "--follow") == (0, "all done\n", "")


def test_logs_follow_prints_until_the_run_ends(lrun: Lrun, store: RunStore, project: Path) -> None:
    # The run's machine is unknown to the project, so `lrun` cannot watch it itself: another process
    # (here a thread) writes the log and ends the run, and --follow shows what it writes.
    run = live(store)
    run = replace(
        run,
        status=Status.RUNNING,
        started_at=time.time(),
        logs_path=str(store.files(run.id).logs),
    )
    store.update(run)
    logs = store.files(run.id).logs

    def writer() -> None:
        for i in range(5):
            with open(logs, "ab") as f:
                f.write(f"step {i}\n".encode())
            time.sleep(0.1)
        store.update(replace(run, status=Status.COMPLETED, exit_code=0, ended_at=time.time()))

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    try:
        status, out, err = lrun("logs", run.id, "--follow", "--project", str(project))
    finally:
        thread.join()
    assert status == 0
    assert out == "".join(f"step {i}\n" for i in range(5))
    assert "cannot watch run" in err and "unknown machine 'm1'" in err
    assert err.splitlines()[-1] == f"lrun: run {run.id} completed (exit code 0)"
    assert time.monotonic() - started < 15


def test_tail_follows_appends_rewrites_and_cuts(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    tail = Tail(path)
    assert tail.read(final=False) == b""  # not there yet
    path.write_bytes(b"a\nb\n")
    assert tail.read(final=False) == b"a\nb\n"
    with open(path, "ab") as f:
        f.write(b"c\n")
    assert tail.read(final=False) == b"c\n"
    # A take-over replays the log into the same file: nothing new until it has caught up.
    with open(path, "wb") as f:
        f.write(b"a\n")
    assert tail.read(final=False) == b""
    with open(path, "ab") as f:
        f.write(b"b\nc\nd\n")
    assert tail.read(final=False) == b"d\n"
    # The size cap cuts the log to its tail in a new file: continue after what was printed.
    cut = tmp_path / "cut"
    cut.write_bytes(b"[lrun: 2 bytes of earlier output dropped]\nc\nd\ne\n")
    os.replace(cut, path)
    assert tail.read(final=False) == b"e\n"
    # Rewritten beyond recognition: print it whole rather than lose output.
    other = tmp_path / "other"
    other.write_bytes(b"x\ny\n")
    os.replace(other, path)
    assert tail.read(final=True) == b"x\ny\n"


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_of_a_terminal_run_is_a_clear_error(lrun: Lrun, store: RunStore) -> None:
    run = finished(store)
    status, out, err = lrun("cancel", run.id)
    assert status == 1 and out == ""
    assert err == f"lrun: error: run {run.id} is completed; it cannot become cancelled\n"
    status, out, _ = lrun("cancel", run.id, "--json")
    assert json.loads(out)["error"]["code"] == "run_terminal"


def test_cancel_of_a_pending_run_without_container(lrun: Lrun, store: RunStore, project: Path) -> None:
    run = live(store)
    status, out, _ = lrun("cancel", run.id, "--json", "--project", str(project))
    assert status == 0
    data = json.loads(out)["run"]
    assert data == store.get(run.id).to_dict()
    assert data["status"] == "interrupted" and data["error_code"] == "cancelled"


def test_cancel_not_found(lrun: Lrun, state: Path) -> None:
    assert lrun("cancel", "20200101T000000-deadbeef")[0] == 3


# --- gc --------------------------------------------------------------------------------------------


def fill(store: RunStore, run: Run, size: int) -> None:
    (store.files(run.id).logs).write_bytes(b"x" * size)


def test_gc_deletes_oldest_terminal_first_and_keeps_live_ones(
    lrun: Lrun, store: RunStore, project: Path
) -> None:
    newest = finished(store, created_at=100, ended_at=900)
    oldest = finished(store, created_at=200, ended_at=300)
    middle = finished(store, created_at=300, ended_at=500)
    running = live(store, machine="elsewhere")
    for run in (newest, oldest, middle, running):
        fill(store, run, 200_000)  # records and folders add far less than one run's logs

    status, out, err = lrun("gc", "--json", "--max-bytes", "550000", "--project", str(project))

    assert status == 0 and err == ""
    data = json.loads(out)
    assert data["gc"]["deleted"] == [oldest.id, middle.id]
    assert data["gc"]["cap_met"] is True and data["gc"]["size_after"] <= 550_000
    assert {r.id for r in store.list()} == {newest.id, running.id}
    # The live run's machine is not in this project: reconcile leaves it alone and says why.
    assert data["reconcile"]["problems"] == [
        "machine elsewhere unreachable: unknown machine 'elsewhere'; known machines: local "
        f"(machine tables read from {project / 'pyproject.toml'})"
    ]
    assert store.get(running.id).status is Status.PENDING


def test_gc_cap_not_met(lrun: Lrun, store: RunStore, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = finished(store)
    running = live(store)
    fill(store, done, 1000)
    fill(store, running, 100_000)
    monkeypatch.setenv("LRUN_STATE_MAX_BYTES", "10k")  # the env var is the default cap

    status, out, err = lrun("gc", "--project", str(project))

    assert status == 0
    assert "deleted 1 terminal run(s)" in out
    assert "lrun: warning: the state dir stays over its cap" in err
    assert [r.id for r in store.list()] == [running.id]


def test_gc_under_the_cap(lrun: Lrun, store: RunStore, project: Path) -> None:
    run = finished(store)
    status, out, _err = lrun("gc", "--json", "--project", str(project))
    data = json.loads(out)
    assert status == 0 and data["gc"]["deleted"] == [] and data["gc"]["cap_met"] is True
    assert data["gc"]["max_bytes"] == 50 * 1024 * 1024
    assert store.get(run.id).status is Status.COMPLETED


# --- batch ------------------------------------------------------------------------------------------


def test_batch(lrun: Lrun, store: RunStore, tmp_path: Path) -> None:
    plan_dir = tmp_path / "plan"
    (plan_dir / "a").mkdir(parents=True)
    (plan_dir / "b").mkdir()
    (plan_dir / "plan.toml").write_text(
        textwrap.dedent(
            """
            [[entry]]
            name = "one"
            dir = "a"
            machine = "m1"

            [[entry]]
            name = "two"
            dir = "b"
            machine = "m2"
            """
        )
    )
    batches = FileStore(store.state_dir).batches
    batch = batches.open(load_plan(plan_dir / "plan.toml"), "b-test")
    one = finished(store, machine="m1", batch_id=batch.id)
    two = finished(store, machine="m2", status=Status.FAILED, batch_id=batch.id, created_at=2000)
    batches.record(batch.id, "one", one.id)
    batches.record(batch.id, "two", two.id)

    status, out, _ = lrun("batch", "b-test", "--json")

    assert status == EXIT_BATCH_FAILED
    data = json.loads(out)
    assert data["batch"]["id"] == "b-test" and data["batch"]["status"] == "failed"
    assert [(r["entry"], r["run_id"], r["status"], r["exit_code"]) for r in data["rows"]] == [
        ("one", one.id, "completed", 0),
        ("two", two.id, "failed", 1),
    ]
    assert set(data["rows"][0]) == {
        "entry",
        "run_id",
        "machine",
        "test_dir",
        "status",
        "exit_code",
        "duration",
        "passed",
        "failed",
        "skipped",
    }

    status, out, _ = lrun("batch", "b-test")
    assert status == EXIT_BATCH_FAILED
    assert out.splitlines()[0].startswith("batch b-test: failed")
    assert "ENTRY" in out and one.id in out and two.id in out


def test_batch_not_found(lrun: Lrun, state: Path) -> None:
    status, _out, err = lrun("batch", "b-missing")
    assert status == 3 and err == "lrun: error: no batch with id 'b-missing'\n"


def test_batch_with_entries_this_state_dir_has_not_run(lrun: Lrun, store: RunStore, tmp_path: Path) -> None:
    # A CI matrix job's view: the batch names entries that other jobs run (or have not started yet).
    (tmp_path / "a").mkdir()
    (tmp_path / "plan.toml").write_text(
        "".join(
            f'[[entry]]\nname = "{name}"\ndir = "a"\nmachine = "m1"\n\n' for name in ("ran", "gone", "later")
        )
    )
    batches = FileStore(store.state_dir).batches
    batch = batches.open(load_plan(tmp_path / "plan.toml"), "b-ci")
    ran = finished(store, batch_id=batch.id)
    batches.record(batch.id, "ran", ran.id)
    batches.record(batch.id, "gone", "20200101T000000-deadbeef")  # its record is on another machine

    status, out, err = lrun("batch", "b-ci")

    assert status == EXIT_BATCH_FAILED and err == ""  # a run gone counts as interrupted
    table = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert table["ran"][:3] == ["ran", "m1", "completed"]
    assert table["gone"] == ["gone", "-", "missing", "-", "-", "-", "-", "-", "20200101T000000-deadbeef", "-"]
    assert table["later"] == ["later", "-", "pending", "-", "-", "-", "-", "-", "-", "-"]
    status, out, _ = lrun("batch", "b-ci", "--json")
    rows = {row["entry"]: row for row in json.loads(out)["rows"]}
    assert status == EXIT_BATCH_FAILED
    assert rows["later"]["run_id"] is None and rows["later"]["status"] == "pending"


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6">
<testcase classname="test_x" name="test_a" time="0.1"/>
<testcase classname="test_x" name="test_b" time="0.1"/>
<testcase classname="test_x" name="test_c" time="0.1"><failure message="no">x</failure></testcase>
<testcase classname="test_x" name="test_d" time="0.1"><error message="setup">x</error></testcase>
<testcase classname="test_x" name="test_e" time="0.1"><skipped type="pytest.skip" message="s"/></testcase>
<testcase classname="test_x" name="test_f" time="0.1"><skipped type="pytest.xfail" message="x"/></testcase>
</testsuite></testsuites>
"""


def test_batch_status_counts_and_exit_status_follow_the_batch(
    lrun: Lrun, store: RunStore, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "plan.toml").write_text(
        "".join(
            f'[[entry]]\nname = "{name}"\ndir = "a"\nmachine = "m1"\n\n' for name in ("s [1/2]", "s [2/2]")
        )
    )
    batches = FileStore(store.state_dir).batches
    batch = batches.open(load_plan(tmp_path / "plan.toml"), "b-shards")
    assert lrun("batch", "b-shards")[0] == EXIT_BATCH_UNFINISHED  # pending: nothing started yet

    # Only shard 2/2 was joined, and it completed: nothing runs, shard 1/2 was never taken.
    second = finished(store, batch_id=batch.id)
    store.files(second.id).junit.write_text(JUNIT)
    batches.record(batch.id, "s [2/2]", second.id)
    status, out, _ = lrun("batch", "b-shards")
    assert status == EXIT_BATCH_INCOMPLETE
    lines = out.splitlines()
    assert lines[0].startswith("batch b-shards: incomplete, 1 of 2 entries no job took: s [1/2] (plan ")
    assert lines[1].split()[:8] == [
        "ENTRY",
        "MACHINE",
        "STATUS",
        "EXIT",
        "DURATION",
        "PASSED",
        "FAILED",
        "SKIPPED",
    ]
    assert lines[2].split()[:8] == ["s", "[2/2]", "m1", "completed", "0", "4.0s", "2", "2"]
    assert lines[-1].split() == ["total", "2", "2", "2"]
    status, out, _ = lrun("batch", "b-shards", "--json")
    data = json.loads(out)
    assert status == EXIT_BATCH_INCOMPLETE and data["batch"]["status"] == "incomplete"
    assert [(r["entry"], r["passed"], r["failed"], r["skipped"]) for r in data["rows"]] == [
        ("s [2/2]", 2, 2, 2),
        ("s [1/2]", None, None, None),
    ]
    assert data["totals"] == {"passed": 2, "failed": 2, "skipped": 2}

    first = live(store)  # shard 1/2's job comes after all: running
    batches.record(batch.id, "s [1/2]", first.id)
    assert lrun("batch", "b-shards")[0] == EXIT_BATCH_UNFINISHED
    store.end(first, Status.COMPLETED)
    assert lrun("batch", "b-shards")[0] == 0


def test_text_output_escapes_what_is_not_unicode(lrun: Lrun, store: RunStore) -> None:
    # A test dir whose name is not UTF-8 reaches the record as a lone surrogate (os.fsdecode);
    # capsys, like a UTF-8 terminal, refuses to encode one.
    run = store.insert(
        Run(machine="m1", test_dir="/tmp/\udcff", key="k", status=Status.FAILED, error_msg="bad \udcfe name")
    )
    status, out, err = lrun("runs")
    assert (status, err) == (0, "")
    assert out.splitlines()[1].split()[4] == "/tmp/\\udcff"
    status, out, err = lrun("show", run.id)
    assert (status, err) == (0, "")
    assert "/tmp/\\udcff" in out and "bad \\udcfe name" in out
    status, out, _ = lrun("show", run.id, "--json")
    assert status == 0 and out.isascii()
    assert json.loads(out)["run"]["test_dir"] == "/tmp/\udcff"  # lossless in JSON


# --- entry points ---------------------------------------------------------------------------------


def test_python_dash_m(state: Path, store: RunStore) -> None:
    run = finished(store)
    env = {**os.environ, "LRUN_STATE_DIR": str(state)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", "runs", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)["runs"]] == [run.id]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 3 and proc.stderr == "lrun: error: no run with id 'nope'\n"


def test_machines_lists_known_names_without_an_engine(
    lrun: Lrun, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `local` resolves to DOCKER_HOST; point it at a port nothing listens on.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    root = tmp_path / "p"
    root.mkdir()
    (root / "pyproject.toml").write_text('[tool.lrun.machines.broken]\nhost = "ftp://x"\n')
    status, out, _ = lrun("machines", "--json", "--project", str(root), "--connect-timeout", "2")
    assert status == 0
    rows: dict[str, Any] = {row["name"]: row for row in json.loads(out)["machines"]}
    assert set(rows) == {"broken", "local"}
    assert rows["broken"]["reachable"] is False and rows["broken"]["error"]["code"] == "config_invalid"
    assert rows["local"]["reachable"] is False and rows["local"]["error"]["code"] == "engine_unreachable"
    assert rows["local"]["url"] == "tcp://127.0.0.1:1" and rows["local"]["source"] == "environment"
    assert set(rows["local"]) == {
        *("name", "url", "source", "reachable", "error", "active_run_id"),
        *("tags", "slots", "in_use", "free", "runs"),
    }


@pytest.mark.parametrize(
    ("command", "status"),
    [(["runs"], 0), (["show", "r1"], EXIT_NOT_FOUND), (["batch", "b1"], EXIT_NOT_FOUND)],
)
def test_a_command_that_only_reads_never_makes_a_state_dir(
    tmp_path: Path, command: list[str], status: int
) -> None:
    missing = tmp_path / "no" / "such"
    assert main(["--state-dir", str(missing), *command]) == status  # as an empty one: no runs, no such id
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    ("logstream", "expected"),
    [
        ("ls.example", "expected a gRPC endpoint"),
        ("grpcs://ls.example:8981", "expected grpc://, found 'grpcs://ls.example:8981'"),
    ],
)
def test_a_workers_logstream_is_refused_as_a_tables_would_be(
    lrun: Lrun, state: Path, logstream: str, expected: str
) -> None:
    status, out, err = lrun(
        "worker", "--remote", "grpc://bg.example:8980", "--logstream", logstream, "--machine", "local"
    )
    assert (status, out) == (EXIT_BAD_INPUT, "")
    assert err.startswith("lrun: error: --logstream: ") and expected in err
