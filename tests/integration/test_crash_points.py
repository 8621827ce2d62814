"""Crash points (issue 12): the pytest host killed by SIGKILL at each point of a run's life, on both stores.

Each round writes a fresh test directory (a marker file makes its key new), runs
``pytest --lrun-machine=M DIR`` in a subprocess with ``LRUN_TEST_CRASH_AT=<point>``
(:mod:`pytest_lrun.core.faults`: the host kills itself there, no timing luck), checks it
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

Services restarted mid-run: an engine of the module's own (``tests/private_engines.py``)
and a PostgreSQL cluster of the test's own (``scripts/pg.sh`` with a folder and port of
its own), since the shared ones serve other people's runs. The run ends ``interrupted``
or with its real status, never stuck, and the next invocation on the machine passes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lrun_procs import StoreSpec
from lrun_support import PYTHON_IMAGE, free_port, lrun_containers, wait_for
from private_engines import (
    Engine,
    can_start_engines,
    launch_engine,
    load_image,
    restart_engine,
    stop_engine,
    wait_until_up,
)

from pytest_lrun.config.settings import StoreWaits
from pytest_lrun.core.errors import StoreUnreachable
from pytest_lrun.core.faults import POINTS
from pytest_lrun.store import Decision, Run, Status
from pytest_lrun.store.postgres import PostgresStore

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


def fresh_dir(lane: Lane, prefix: str, source: str = TESTS) -> Path:
    """A new test directory of the lane's project holding ``source``; a marker file makes its key new."""
    test_dir = lane.project / "dirs" / f"{prefix}-{secrets.token_hex(4)}"
    test_dir.mkdir(parents=True)
    (test_dir / "test_crash.py").write_text(source)
    (test_dir / "marker.txt").write_text(test_dir.name)
    return test_dir


def pytest_cmd(lane: Lane) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--lrun-machine={lane.machine}"]


def runs_of(lane: Lane, test_dir: Path) -> list[Run]:
    """The runs of ``test_dir`` on the lane's machine, as the store has them now."""
    store = lane.store.open()
    try:
        return [run for run in store.list(machine=lane.machine) if Path(run.test_dir).name == test_dir.name]
    finally:
        store.close()


def reap(lane: Lane) -> subprocess.CompletedProcess[str]:
    """``lrun reap --age 0`` on the lane's machine."""
    return _run([sys.executable, "-m", "pytest_lrun", "reap", "--age", "0", "--machine", lane.machine], lane)


def crash_round(lane: Lane, point: str) -> RoundResult:
    """One round at ``point`` in a fresh directory of the lane's project (see module docstring)."""
    result = RoundResult()
    test_dir = fresh_dir(lane, point)
    first = _run([*pytest_cmd(lane), str(test_dir)], lane, LRUN_TEST_CRASH_AT=point)
    result.killed = first.returncode == -signal.SIGKILL
    if not result.killed:
        result.notes.append(f"not killed at {point}: exit {first.returncode}\n{first.stdout}{first.stderr}")
    second = _run([*pytest_cmd(lane), "--lrun-reuse=completed", str(test_dir)], lane)
    if second.returncode != 0 or "2 passed" not in second.stdout:  # the directory's 2 tests
        result.lost.append(f"the next invocation: exit {second.returncode}")
        result.notes.append(f"next invocation:\n{second.stdout}{second.stderr}")
    reaped = reap(lane)
    if reaped.returncode != 0:
        result.notes.append(f"reap exited {reaped.returncode}: {reaped.stderr}")

    runs = runs_of(lane, test_dir)
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


@pytest.mark.timeout(ROUNDS * 3 * ROUND_TIMEOUT_S)
@pytest.mark.parametrize("point", POINTS)
def test_a_host_killed_at_a_crash_point_loses_nothing(
    point: str, backend: StoreSpec, engines: list[str], tmp_path: Path
) -> None:
    lane = Lane(write_project(tmp_path / "project", {"m1": engines[0]}), "m1", engines[0], backend)
    for _ in range(ROUNDS):
        result = crash_round(lane, point)
        assert result.ok, result


# --- services restarted mid-run ----------------------------------------------------------------------

# One test that is still running when its engine or database restarts.
LONG_TEST = "import time\n\n\ndef test_long():\n    time.sleep({seconds})\n"
PG_SH = Path(__file__).parents[2] / "scripts" / "pg.sh"


def start_long_run(lane: Lane, seconds: float) -> tuple[subprocess.Popen[str], Path]:
    """A pytest process dispatching a test of ``seconds`` seconds; returns once its run is running."""
    test_dir = fresh_dir(lane, "long", LONG_TEST.format(seconds=seconds))
    proc = subprocess.Popen(
        [*pytest_cmd(lane), str(test_dir)],
        cwd=lane.project,
        env=lane.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: any(run.status is Status.RUNNING for run in runs_of(lane, test_dir)), "the run to start"
        )
    except BaseException as e:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"{e}; the pytest process said:\n{output}") from e
    time.sleep(1)  # the inner pytest is in its test
    return proc, test_dir


def assert_ended_and_next_works(lane: Lane, proc: subprocess.Popen[str], test_dir: Path) -> Run:
    """The restarted run's process ends, its run is terminal (now, or after the next invocation on the
    machine, which must pass); returns that run."""
    output, _ = proc.communicate(timeout=ROUND_TIMEOUT_S)  # never stuck: it ends
    following = _run([*pytest_cmd(lane), str(fresh_dir(lane, "next"))], lane)
    assert following.returncode == 0 and "2 passed" in following.stdout, (output, following.stdout)
    (run,) = runs_of(lane, test_dir)
    assert run.status.is_terminal, (run, output)
    store = lane.store.open()
    try:
        assert store.active(lane.machine) == []
    finally:
        store.close()
    return run


class PrivateEngine:
    """An engine of this module's own (``tests/private_engines.py``): restarting it disturbs nobody."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def restart(self) -> None:
        self.engine = restart_engine(self.engine)


@pytest.fixture(scope="module")
def private_engine(engines: list[str]) -> Iterator[PrivateEngine]:
    """A dockerd of its own holding the Python image, stopped and deleted after the module."""
    if not can_start_engines():
        pytest.skip("starting an engine of its own needs root, dockerd and the docker CLI")
    # Under /var/tmp, short: the engine's sockets live under it (a unix socket path has 108 bytes).
    root = Path(tempfile.mkdtemp(prefix="lrun-engine-", dir="/var/tmp"))
    holder = PrivateEngine(launch_engine(root / "engine"))
    try:
        wait_until_up(holder.engine)
        load_image([holder.engine], engines[0], PYTHON_IMAGE, root)
        yield holder
    finally:
        stop_engine(holder.engine)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(600)
def test_an_engine_restarted_mid_run_ends_the_run_and_the_machine_works_after(
    private_engine: PrivateEngine, backend: StoreSpec, tmp_path: Path
) -> None:
    url = private_engine.engine.url
    lane = Lane(write_project(tmp_path / "project", {"private": url}), "private", url, backend)
    proc, test_dir = start_long_run(lane, 60)

    private_engine.restart()  # stops the container with the engine: the test cannot pass any more

    run = assert_ended_and_next_works(lane, proc, test_dir)
    assert run.status in (Status.INTERRUPTED, Status.FAILED) and run.error_code is not None, run
    # Its container could not be removed while the engine was down: reap removes it.
    assert reap(lane).returncode == 0
    assert lrun_containers([url], {run.id}) == []


class PrivateCluster:
    """A PostgreSQL cluster of this test's own, made and controlled by ``scripts/pg.sh``."""

    def __init__(self, root: Path, port: int) -> None:
        self.env = {**os.environ, "LRUN_POSTGRES_DIR": str(root), "LRUN_POSTGRES_PORT": str(port)}
        self.port = port

    def pg(self, *args: str) -> str:
        done = subprocess.run(
            [str(PG_SH), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"pg.sh {' '.join(args)}: {done.stderr}"
        return done.stdout

    def processes(self) -> list[int]:
        """The server's processes: the postmaster (``postmaster.pid``'s first line) and its children."""
        postmaster = int(
            (Path(self.env["LRUN_POSTGRES_DIR"]) / "data" / "postmaster.pid").read_text().split()[0]
        )
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP every process of the server: connections stay up, nothing answers."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.processes():
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
def private_cluster() -> Iterator[tuple[PrivateCluster, str]]:
    """A cluster of its own (the shared one must never restart) and the URL of a database in it."""
    if os.geteuid() != 0 or not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("a cluster of its own needs root and the PostgreSQL server binaries")
    base = Path(tempfile.mkdtemp(prefix="lrun-pg-", dir="/var/tmp"))
    base.chmod(0o755)  # the server runs as the postgres user, under it
    cluster = PrivateCluster(base / "cluster", free_port())
    try:
        cluster.pg("init")
        cluster.pg("start")
        password = secrets.token_hex(12)
        cluster.pg("psql", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE ROLE lrun LOGIN PASSWORD '{password}'")
        cluster.pg("psql", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE lrun OWNER lrun")
        yield cluster, f"postgresql://lrun:{password}@127.0.0.1:{cluster.port}/lrun"
    finally:
        with contextlib.suppress(OSError, ValueError):
            cluster.thaw()  # a test that froze it and failed: stop needs it to answer
        subprocess.run([str(PG_SH), "stop"], env=cluster.env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(600)
def test_a_database_restarted_mid_run_leaves_every_run_settled(
    private_cluster: tuple[PrivateCluster, str], engines: list[str], tmp_path: Path
) -> None:
    cluster, url = private_cluster
    spec = StoreSpec("postgres", str(tmp_path / "state"), url)
    lane = Lane(write_project(tmp_path / "project", {"m1": engines[0]}), "m1", engines[0], spec)
    proc, test_dir = start_long_run(lane, 6)

    cluster.pg("restart")  # every session ends: the run's watch lock and its owner's session with them

    run = assert_ended_and_next_works(lane, proc, test_dir)
    # The container was never touched: its real result, from its own process or from a take-over.
    assert run.status is Status.COMPLETED and run.exit_code == 0, run


# --- a frozen database server --------------------------------------------------------------------------

FROZEN_WAITS = StoreWaits(statement_timeout=2.0)  # every call answered within 2 + 5 s, or cut off


@pytest.mark.timeout(300)
@pytest.mark.parametrize("slots", [1, 2])
def test_a_frozen_database_fails_prepare_in_bounded_time_and_works_after_the_thaw(
    private_cluster: tuple[PrivateCluster, str], tmp_path: Path, slots: int
) -> None:
    cluster, url = private_cluster
    store = PostgresStore(url, tmp_path / "state", waits=FROZEN_WAITS)
    try:
        first, decision = store.prepare("m", "k0", lambda: Run(test_dir="/src/0"), slots=slots)
        assert decision is Decision.CREATED  # connected, schema made: the freeze comes inside placement
        cluster.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnreachable, match=r"no answer within 7 s .*the connection was closed"):
                store.prepare("m", "k1", lambda: Run(test_dir="/src/1"), slots=slots)
            took = time.monotonic() - started
            print(f"prepare on a frozen server ({slots} slot(s)): store_unreachable after {took:.1f} s")
            assert 6.5 < took < 15, took
            started = time.monotonic()
            with pytest.raises(StoreUnreachable):  # the server is still silent: no second wait
                store.get(first.id)
            assert time.monotonic() - started < 1
        finally:
            cluster.thaw()
    finally:
        store.close()
    # The next invocation works, and the frozen prepare left nothing half done.
    again = PostgresStore(url, tmp_path / "state", waits=FROZEN_WAITS)
    try:
        assert again.get(first.id) == first
        assert [run.id for run in again.active("m")] == [first.id]
        _, decision = again.prepare("m", "k1", lambda: Run(test_dir="/src/1"), slots=slots)
        assert decision is (Decision.CREATED if slots == 2 else Decision.BUSY)
        assert again.check() == []
    finally:
        again.close()


@pytest.mark.timeout(600)
def test_a_database_frozen_mid_run_ends_the_session_in_bounded_time_and_loses_nothing(
    private_cluster: tuple[PrivateCluster, str],
    engines: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, url = private_cluster
    monkeypatch.setenv("LRUN_STORE_STATEMENT_TIMEOUT", "2")
    spec = StoreSpec("postgres", str(tmp_path / "state"), url)
    lane = Lane(write_project(tmp_path / "project", {"m1": engines[0]}), "m1", engines[0], spec)
    proc, test_dir = start_long_run(lane, 6)

    cluster.freeze()  # about a second into the test; the container goes on and ends 5 s later
    frozen = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=120)
        took = time.monotonic() - frozen
    finally:
        cluster.thaw()

    # The session ended without the thaw: the container's 5 s, then one unanswered call (7 s).
    print(f"a session whose database froze mid-run ended {took:.1f} s after the freeze")
    assert took < 30, (took, output)
    assert "store_unreachable" in output and "no answer within 7 s" in output, output
    assert proc.returncode != 0
    (run,) = runs_of(lane, test_dir)
    assert run.status is Status.RUNNING and run.container_id is not None  # left for reconcile
    assert lrun_containers([engines[0]], {run.id}) == [run.id]  # its container kept

    # After the thaw the next invocation works, and the run gets its real result: nothing lost.
    following = _run([*pytest_cmd(lane), str(fresh_dir(lane, "next"))], lane)
    assert following.returncode == 0 and "2 passed" in following.stdout, following.stdout
    settled = _run([sys.executable, "-m", "pytest_lrun", "gc"], lane)
    assert settled.returncode == 0, settled.stderr
    (run,) = runs_of(lane, test_dir)
    assert run.status is Status.COMPLETED and run.exit_code == 0, run
