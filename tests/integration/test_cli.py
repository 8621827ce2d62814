"""The ``lrun`` command line against real engines: cancel, machines, logs --follow, reap."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lrun_support import PYTHON_IMAGE, busybox_spec, container_status, resolver_for, wait_for

from pytest_lrun.cli import main
from pytest_lrun.config.machines import Machine
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.store import RunStore, Status

FOLLOW_SCRIPT = "for i in 1 2 3; do echo line$i; sleep 1; done"


def lrun(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``lrun ARGS`` in a subprocess (LRUN_STATE_DIR and the cwd come from the `project` fixture)."""
    return subprocess.run(["lrun", *args], capture_output=True, text=True, timeout=timeout)


def test_cancel_kills_a_running_run(
    tmp_path: Path,
    project: Path,
    state_dir: Path,
    store: RunStore,
    dispatcher: Dispatcher,
    m1: Machine,
    api: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sleep", "60")).run
    assert run.container_id is not None and container_status(api, run.container_id) == "running"

    status = main(["--project", str(project), "--state-dir", str(state_dir), "cancel", run.id, "--json"])

    assert status == 0
    data = json.loads(capsys.readouterr().out)["run"]
    assert data == store.get(run.id).to_dict()
    assert data["status"] == "interrupted" and data["error_code"] == "cancelled"
    assert container_status(api, run.container_id) is None
    assert store.active() == []
    # Cancelling it again is a clear error, not a crash.
    assert main(["--project", str(project), "cancel", run.id]) == 1
    assert (
        capsys.readouterr().err == f"lrun: error: run {run.id} is interrupted; it cannot become cancelled\n"
    )


def test_machines_reports_reachability_within_the_timeout(
    tmp_path: Path, engines: list[str], state_dir: Path, dispatcher: Dispatcher, project: Path
) -> None:
    root = tmp_path / "machines"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [tool.lrun.machines.m1]
            host = "{engines[0]}"
            image = "{PYTHON_IMAGE}"

            [tool.lrun.machines.m2]
            host = "{engines[1]}"

            [tool.lrun.machines.down]
            host = "tcp://127.0.0.1:1"
            """
        )
    )
    live = dispatcher.start(busybox_spec(tmp_path, resolver_for(project).resolve("m1"), "sleep", "30")).run

    started = time.monotonic()
    proc = lrun("machines", "--json", "--project", str(root), "--connect-timeout", "3")
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)["machines"]}
    assert {"m1", "m2", "down"} <= set(rows)
    assert rows["m1"]["reachable"] is True and rows["m1"]["error"] is None
    assert rows["m1"]["url"] == engines[0] and rows["m1"]["source"] == "config"
    assert rows["m1"]["active_run_id"] == live.id
    assert rows["m2"]["reachable"] is True and rows["m2"]["active_run_id"] is None
    assert rows["down"]["reachable"] is False
    assert rows["down"]["error"]["code"] == "engine_unreachable"
    assert rows["down"]["url"] == "tcp://127.0.0.1:1"
    assert elapsed < 20

    table = lrun("machines", "--project", str(root), "--connect-timeout", "3").stdout.splitlines()
    assert table[0].split() == ["NAME", "URL", "SOURCE", "TAGS", "SLOTS", "RUNS", "REACHABLE"]
    down = next(line for line in table if line.startswith("down "))
    assert " no: " in down


def test_logs_follow_watches_an_unwatched_run_to_its_end(
    tmp_path: Path, project: Path, store: RunStore, dispatcher: Dispatcher, m1: Machine
) -> None:
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sh", "-c", FOLLOW_SCRIPT)).run
    assert run.status is Status.RUNNING

    proc = lrun("logs", run.id, "--follow", timeout=90)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "line1\nline2\nline3\n"
    assert proc.stderr.splitlines()[-1] == f"lrun: run {run.id} completed (exit code 0)"
    stored = store.get(run.id)
    assert stored.status is Status.COMPLETED and stored.exit_code == 0
    assert stored.owner is not None and stored.owner["pid"] != os.getpid()  # lrun finished it


def test_logs_follow_ends_when_another_watcher_ends_the_run(
    tmp_path: Path, project: Path, store: RunStore, dispatcher: Dispatcher, m1: Machine
) -> None:
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sh", "-c", FOLLOW_SCRIPT)).run
    results: list[Any] = []
    watcher = threading.Thread(target=lambda: results.append(dispatcher.attach(run.id, m1)))
    watcher.start()  # this process watches the run; `lrun logs --follow` only reads
    # The watcher holds the run's finish lock once it spools the log.
    wait_for(lambda: (store.files(run.id).logs).exists(), "the watcher to take the run")
    try:
        proc = lrun("logs", run.id, "--follow", timeout=90)
    finally:
        watcher.join(60)
    assert proc.returncode == 0, proc.stderr
    assert "line1\nline2\nline3\n" in proc.stdout
    assert results and results[0].run.status is Status.COMPLETED
    owner = store.get(run.id).owner
    assert owner is not None and owner["pid"] == os.getpid()  # finished by this process, not by lrun


def test_reap_skips_unreachable_machines(tmp_path: Path, engines: list[str], state_dir: Path) -> None:
    root = tmp_path / "reap"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        f'[tool.lrun.machines.m1]\nhost = "{engines[0]}"\n\n[tool.lrun.machines.down]\nhost = "tcp://127.0.0.1:1"\n'
    )
    # An age no container has: nothing is removed, whoever else uses the engines.
    proc = lrun("reap", "--json", "--age", "1e9", "--project", str(root), "--connect-timeout", "3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["removed"] == []
    assert [s["machine"] for s in data["skipped"]] == ["down"]
    assert data["skipped"][0]["error"]["code"] == "engine_unreachable"

    proc = lrun("reap", "--age", "1e9", "--machine", "down", "--project", str(root), "--connect-timeout", "3")
    assert proc.returncode == 5
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lrun: error: machine 'down'")


def test_every_command_survives_a_live_run_whose_record_is_corrupt(
    tmp_path: Path, project: Path, store: RunStore, dispatcher: Dispatcher, m1: Machine, api: Any
) -> None:
    # Partial state next to a real container: its run's record is torn, so the store no longer knows it.
    run = dispatcher.start(busybox_spec(tmp_path, m1, "sleep", "60")).run
    assert run.container_id is not None
    (store.files(run.id).record).write_text('{"id": "torn')

    proc = lrun("runs")
    assert proc.returncode == 0 and run.id not in proc.stdout
    assert proc.stderr.startswith("lrun: warning: corrupt state file ")
    for args, status in [
        (("show", run.id), 3),  # moved aside by `lrun runs`: gone from this state dir
        (("logs", run.id), 3),
        (("cancel", run.id), 3),
        (("machines", "--json"), 0),
        (("gc", "--json"), 0),
        (("reap", "--json", "--age", "0", "--machine", "m1"), 0),
    ]:
        proc = lrun(*args)
        assert proc.returncode == status, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and all(
            line.startswith("lrun: ") for line in proc.stderr.splitlines()
        )
        if "--json" in args:
            assert json.loads(proc.stdout)["schema_version"] == 1
    # A running container of a run the store does not know may belong to another state dir: kept.
    assert container_status(api, run.container_id) == "running"
