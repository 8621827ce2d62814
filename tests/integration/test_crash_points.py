"""Crash points (issue 12): the pytest host killed by SIGKILL at each point of a run's life, on both stores.

Each round writes a fresh test directory (a marker file makes its key new), runs
``pytest --lrun-machine=M DIR`` in a subprocess with ``LRUN_TEST_CRASH_AT=<point>``
(:mod:`pytest_lrun.faults`: the host kills itself there, no timing luck), checks it
died by SIGKILL, then runs the same command again without it and with
``--lrun-reuse=completed`` (a run that ended while nobody watched is reported from
its record, not run again), runs ``lrun reap --age 0`` and checks against the
store and the engine:

* lost results: the container that ran finished its tests and passed, so that run's
  record is ``completed`` with exit code 0 and the second invocation reports the
  tests passed;
* twin containers: at most one container of the directory ever started;
* stuck runs: no run of the directory is left ``pending`` or ``running``, and one
  that never started is ``interrupted`` with an ``error_code``;
* orphans: no container of the directory's runs is left after the reap.

:func:`crash_round` is the round, shared with ``bench/reliability.py``, which runs
the same matrix long (20 rounds per point and store) and prints the table.
Here ``LRUN_CRASH_ROUNDS`` rounds (default 2) run per point and store.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lrun_procs import StoreSpec
from lrun_support import PYTHON_IMAGE, lrun_containers

from pytest_lrun.faults import POINTS
from pytest_lrun.store import Status

ROUNDS = int(os.environ.get("LRUN_CRASH_ROUNDS", "2"))
ROUND_TIMEOUT_S = 120.0

# Two tests: the first leaves artifacts to collect, the second keeps the container running a
# while after the first events, so the host dies mid-run while its container goes on.
TESTS = textwrap.dedent(
    """
    import pathlib
    import time


    def test_leaves_artifacts():
        out = pathlib.Path("/lrun/artifacts")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("a.txt", "b.txt"):
            (out / name).write_text(name)


    def test_outlives_the_host():
        time.sleep(2)
    """
)


@dataclass(frozen=True)
class Lane:
    """Where rounds run: a project whose ``pyproject.toml`` names ``machine`` on ``engine``, and a store."""

    project: Path
    machine: str
    engine: str
    store: StoreSpec

    def env(self) -> dict[str, str]:
        """The environment of the pytest and lrun processes of this lane (no crash point)."""
        env = {k: v for k, v in os.environ.items() if k not in ("LRUN_TEST_CRASH_AT", "LRUN_STORE")}
        env["LRUN_STATE_DIR"] = self.store.state_dir
        if self.store.url is not None:
            env["LRUN_STORE"] = self.store.url
        return env


def write_project(root: Path, machines: dict[str, str]) -> Path:
    """``root`` with a ``pyproject.toml`` naming each machine (name -> engine URL) on the Python image."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        "".join(
            f'[tool.lrun.machines.{name}]\nhost = "{url}"\nimage = "{PYTHON_IMAGE}"\n\n'
            for name, url in machines.items()
        )
    )
    return root


@dataclass
class RoundResult:
    """What one round found: each list names the runs (or says what) broke that invariant."""

    killed: bool = False
    lost: list[str] = field(default_factory=list)
    twins: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # output of the processes when something broke

    @property
    def ok(self) -> bool:
        return self.killed and not (self.lost or self.twins or self.stuck or self.orphans)


def _run(cmd: list[str], lane: Lane, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=lane.project,
        env={**lane.env(), **extra},
        capture_output=True,
        text=True,
        timeout=ROUND_TIMEOUT_S,
        check=False,
    )


def crash_round(lane: Lane, point: str) -> RoundResult:
    """One round at ``point`` in a fresh directory of the lane's project (see module docstring)."""
    result = RoundResult()
    test_dir = lane.project / "dirs" / f"{point}-{secrets.token_hex(4)}"
    test_dir.mkdir(parents=True)
    (test_dir / "test_crash.py").write_text(TESTS)
    (test_dir / "marker.txt").write_text(test_dir.name)  # a new key every round
    pytest_cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--lrun-machine={lane.machine}",
    ]

    first = _run([*pytest_cmd, str(test_dir)], lane, LRUN_TEST_CRASH_AT=point)
    result.killed = first.returncode == -signal.SIGKILL
    if not result.killed:
        result.notes.append(f"not killed at {point}: exit {first.returncode}\n{first.stdout}{first.stderr}")
    second = _run([*pytest_cmd, "--lrun-reuse=completed", str(test_dir)], lane)
    if second.returncode != 0 or "3 passed" not in second.stdout:  # the directory's item and its 2 tests
        result.lost.append(f"the next invocation: exit {second.returncode}")
        result.notes.append(f"next invocation:\n{second.stdout}{second.stderr}")
    reap = _run([sys.executable, "-m", "pytest_lrun", "reap", "--age", "0", "--machine", lane.machine], lane)
    if reap.returncode != 0:
        result.notes.append(f"reap exited {reap.returncode}: {reap.stderr}")

    store = lane.store.open()
    try:
        runs = [run for run in store.list(machine=lane.machine) if Path(run.test_dir).name == test_dir.name]
    finally:
        store.close()
    started = [run for run in runs if run.started_at is not None]
    result.twins = [run.id for run in started[1:]]
    result.lost.extend(
        f"{run.id}: {run.status.value} ({run.error_code}: {run.error_msg})"
        for run in started
        if run.status is not Status.COMPLETED or run.exit_code != 0
    )
    if not started:
        result.lost.append("no run of the directory ever started")
    result.stuck = [f"{run.id}: {run.status.value}" for run in runs if not run.status.is_terminal]
    result.stuck.extend(
        f"{run.id}: never started, yet {run.status.value} ({run.error_code})"
        for run in runs
        if run.started_at is None and (run.status is not Status.INTERRUPTED or run.error_code is None)
    )
    result.orphans = lrun_containers([lane.engine], {run.id for run in runs})
    return result


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """Where the records live: a state dir, or a fresh database of the test's own (and a state dir)."""
    state_dir = str(tmp_path / "state")
    if request.param == "files":
        return StoreSpec("files", state_dir)
    return StoreSpec("postgres", state_dir, request.getfixturevalue("fresh_database"))


@pytest.mark.timeout(ROUNDS * 3 * ROUND_TIMEOUT_S)
@pytest.mark.parametrize("point", POINTS)
def test_a_host_killed_at_a_crash_point_loses_nothing(
    point: str, store_spec: StoreSpec, engines: list[str], tmp_path: Path
) -> None:
    lane = Lane(write_project(tmp_path / "project", {"m1": engines[0]}), "m1", engines[0], store_spec)
    for _ in range(ROUNDS):
        result = crash_round(lane, point)
        assert result.ok, result
