"""Two CI runners, one PostgreSQL store, the real engines: the store's guarantees hold across hosts.

Each "runner" is a separate pytest process with its own HOME and state dir; they share only the
database (``LRUN_STORE``) and the engines, as two CI jobs on two machines would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lrun_support import lrun_containers, wait_for, write_tests

from pytest_lrun.store import RunStore, Status, open_store
from pytest_lrun.store.records import new_batch_id

pytestmark = pytest.mark.postgres

SLOW = """
    import time
    from pathlib import Path

    def test_slow():
        time.sleep({seconds})
        Path("/lrun/artifacts/made.txt").write_text("by the run\\n")
"""


@dataclass
class Runner:
    """One simulated CI runner: its own HOME and state dir, the shared store and project."""

    name: str
    home: Path
    project: Path
    store_url: str

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LRUN_STATE", "LRUN_STORE"))}
        env.update(HOME=str(self.home), LRUN_STATE_DIR=str(self.state_dir), LRUN_STORE=self.store_url)
        return env

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
            cwd=self.project,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, *args: str, timeout: float = 180) -> tuple[int, str]:
        proc = self.start(*args)
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out

    def lrun(self, *args: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "pytest_lrun", *args],
            cwd=self.project,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout + done.stderr


@pytest.fixture
def shared(fresh_database: str, tmp_path: Path) -> Iterator[RunStore]:
    """A view of the shared store from the test itself (a third state dir)."""
    store = open_store(tmp_path / "observer", fresh_database)
    yield store
    store.close()


@pytest.fixture
def runners(project: Path, fresh_database: str, tmp_path: Path, engines: list[str]) -> Iterator[list[Runner]]:
    made = []
    for name in ("a", "b"):
        home = tmp_path / f"home-{name}"
        home.mkdir()
        made.append(Runner(name, home, project, fresh_database))
    yield made
    # Every container of a run in the shared store goes, whichever runner made it.
    store = open_store(tmp_path / "cleanup", fresh_database)
    try:
        lrun_containers(engines, {run.id for run in store.list()}, remove=True)
    finally:
        store.close()


def _containers_of(store: RunStore, engines: list[str]) -> list[str]:
    return lrun_containers(engines, {run.id for run in store.list()})


def _wait_running(store: RunStore, timeout: float = 60) -> str:
    found: list[str] = []

    def running() -> bool:
        found[:] = [run.id for run in store.list(status=Status.RUNNING)]
        return bool(found)

    wait_for(running, "a run to be running", timeout)
    time.sleep(0.5)
    return found[0]


def test_one_machine_runs_one_directory_at_a_time_across_runners(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    write_tests(a.project, "first", SLOW.format(seconds=4))
    write_tests(a.project, "second", SLOW.format(seconds=0))
    first = a.start("--lrun-machine=m1", "first")
    _wait_running(shared)
    code, out = b.run("--lrun-machine=m1", "second")
    assert code != 0 and "machine_busy" in out, out
    code, out = b.run("--lrun-machine=m1", "--lrun-busy-wait=120", "second")
    assert code == 0 and "1 passed" in out, out
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 0, out
    runs = sorted(shared.list(status=Status.COMPLETED), key=lambda r: r.started_at or 0)
    assert len(runs) == 2
    assert (runs[0].ended_at or 0) <= (runs[1].started_at or 0), "two containers ran on m1 at once"


def test_the_same_directory_at_once_is_one_container(
    runners: list[Runner], shared: RunStore, engines: list[str]
) -> None:
    write_tests(runners[0].project, "slow", SLOW.format(seconds=3))
    procs = [runner.start("--lrun-machine=m1", "slow", "--lrun-keep=always") for runner in runners]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    (run,) = shared.list()
    assert all(run.id in out and "1 passed" in out for out in outputs)
    assert _containers_of(shared, engines) == [run.id]


def test_a_matrix_of_two_jobs_is_one_batch_seen_from_either_runner(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    for name in ("one", "two"):
        write_tests(a.project, name, SLOW.format(seconds=0))
    (a.project / "plan.toml").write_text(
        textwrap.dedent(
            """
            [[entry]]
            name = "one"
            dir = "one"
            machine = "m1"

            [[entry]]
            name = "two"
            dir = "two"
            machine = "m2"
            """
        )
    )
    jobs = [
        runner.start("--lrun-plan=plan.toml", f"--lrun-plan-entry={entry}", "--lrun-batch-id=ci-42")
        for runner, entry in zip(runners, ("one", "two"), strict=True)
    ]
    outputs = [job.communicate(timeout=180)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    for runner in (a, b):
        code, out = runner.lrun("batch", "ci-42", "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["batch"]["status"] == "completed"
        assert sorted((row["entry"], row["status"]) for row in doc["rows"]) == [
            ("one", "completed"),
            ("two", "completed"),
        ]


def test_a_cached_result_crosses_runners_with_its_artifacts(runners: list[Runner], shared: RunStore) -> None:
    a, b = runners
    write_tests(a.project, "cached", SLOW.format(seconds=0))
    code, out = a.run("--lrun-machine=m1", "cached")
    assert code == 0, out
    code, out = b.run("--lrun-machine=m1", "--lrun-reuse=completed", "cached")
    assert code == 0 and "1 passed" in out and "cached" in out.split("lrun runs")[1], out
    (run,) = shared.list()
    made = b.state_dir / "runs" / run.id / "artifacts" / "artifacts" / "made.txt"
    assert made.read_text() == "by the run\n"


def _summary(out: str) -> list[str]:
    """The short test summary's lines (one per inner test, with its outcome and reason)."""
    return sorted(line for line in out.splitlines() if line.startswith(("PASSED ", "SKIPPED ", "XFAIL ")))


def test_a_cached_result_crosses_runners_with_its_inner_events(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    write_tests(
        a.project,
        "inner",
        """
        import pytest

        def test_passes():
            print("said by the test")

        def test_skips():
            pytest.skip("no widget here")

        @pytest.mark.xfail(reason="widgets are round")
        def test_xfails():
            assert False
        """,
    )
    code, ran = a.run("--lrun-machine=m1", "inner")
    assert code == 0 and "1 passed, 1 skipped, 1 xfailed" in ran, ran
    code, replayed = b.run("--lrun-machine=m1", "--lrun-reuse=completed", "inner")
    assert code == 0 and "1 passed, 1 skipped, 1 xfailed" in replayed, replayed
    assert "cached" in replayed.split("lrun runs")[1], replayed
    assert len(_summary(ran)) == 3 and _summary(replayed) == _summary(ran)
    (run,) = shared.list()
    events = [runner.state_dir / "runs" / run.id / "events.jsonl" for runner in runners]
    assert events[1].read_bytes() == events[0].read_bytes()
    assert b"said by the test" in events[1].read_bytes()


def test_a_killed_runner_s_run_is_adopted_by_the_other(
    runners: list[Runner], shared: RunStore, engines: list[str]
) -> None:
    a, b = runners
    write_tests(a.project, "slow", SLOW.format(seconds=5))
    doomed = a.start("--lrun-machine=m1", "slow")
    _wait_running(shared)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    code, out = b.run("--lrun-machine=m1", "slow")
    assert code == 0 and "1 passed" in out, (
        out
    )  # the inner test (the run's own report, with its artifact, is no test)
    assert str(b.home) in out and str(a.home) not in out, out  # b's own copies of the log and artifacts
    (run,) = shared.list()
    assert run.status is Status.COMPLETED and run.exit_code == 0
    assert len(_containers_of(shared, engines)) <= 1


def test_a_database_restart_mid_run_loses_nothing(
    runners: list[Runner], shared: RunStore, restart_postgres: object
) -> None:
    a, _ = runners
    write_tests(a.project, "slow", SLOW.format(seconds=6))
    proc = a.start("--lrun-machine=m1", "slow")
    _wait_running(shared)
    restart_postgres()  # type: ignore[operator]
    out, _ = proc.communicate(timeout=180)
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    # Whether the runner saw the outage or not, the run ends with its real result (gc settles it).
    code, gc_out = a.lrun("gc")
    assert code == 0, gc_out
    wait_for(lambda: all(run.status.is_terminal for run in shared.list()), "the run to be settled", 120)
    (run,) = shared.list()
    assert run.status is Status.COMPLETED, (run, out)


def test_matrix_jobs_each_run_one_shard_and_the_batch_shows_the_whole_suite(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    write_tests(a.project, "suite", "\n".join(f"def test_{i}():\n    pass\n" for i in range(10)))
    batch = new_batch_id()
    outs = [
        runner.run("--lrun-machine=m1", "suite", f"--lrun-shard={k}/2", f"--lrun-batch-id={batch}", "-rA")
        for k, runner in ((1, a), (2, b))
    ]
    assert all(code == 0 for code, _ in outs), outs
    ran = [line.split()[1] for _, out in outs for line in out.splitlines() if line.startswith("PASSED ")]
    assert sorted(ran) == sorted(f"suite/test_suite.py::test_{i}" for i in range(10))  # each test once
    code, out = a.lrun("batch", batch, "--json")
    assert code == 0, out
    record = json.loads(out)["batch"]
    assert record["status"] == "completed"
    assert sorted(record["entries"]) == ["suite [1/2]", "suite [2/2]"] == sorted(record["planned"])


def test_lrun_logs_of_another_runner_s_run_comes_from_the_shared_store(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    write_tests(a.project, "slow", SLOW.format(seconds=4))
    running = a.start("--lrun-machine=m1", "slow")
    try:
        run_id = _wait_running(shared)
        # Live on runner a: b has no copy yet, and says so instead of printing nothing.
        code, out = b.lrun("logs", run_id)
        assert code == 3, out
        assert out.startswith(
            f"lrun: error: no log of run {run_id} in this state dir: "
        ) and out.rstrip().endswith(
            f"its log reaches the store when it ends: follow it with lrun logs --follow {run_id}"
        ), out
        code, followed = b.lrun("logs", "--follow", run_id)  # until it ends, then from the store
    finally:
        out_a, _ = running.communicate(timeout=180)
    assert running.returncode == 0, out_a
    log = (a.state_dir / "runs" / run_id / "logs.txt").read_text()
    assert "1 passed" in log
    assert code == 0 and followed.startswith(log) and f"lrun: run {run_id} completed" in followed, followed
    code, out = b.lrun("logs", run_id)
    assert (code, out) == (0, log)
    assert (b.state_dir / "runs" / run_id / "logs.txt").read_text() == log
    assert not (b.state_dir / "runs" / run_id / "artifacts").exists()  # the log alone was fetched


def test_a_shard_batch_one_job_joined_is_incomplete_and_lrun_batch_exits_with_its_outcome(
    runners: list[Runner], shared: RunStore
) -> None:
    a, b = runners
    # Every test fails once fail.txt exists: a data file, so the node ids (and the split) stay the same.
    write_tests(
        a.project,
        "suite",
        "from pathlib import Path\n\n"
        + "\n".join(
            f"def test_{i}():\n    assert not (Path(__file__).parent / 'fail.txt').exists()\n"
            for i in range(10)
        ),
    )
    batch = new_batch_id()
    shard = ("--lrun-machine=m1", "suite", f"--lrun-batch-id={batch}")
    code, out = b.run(*shard, "--lrun-shard=2/2")
    assert code == 0, out
    second = out.count("\nPASSED ")
    assert second and f"batch {batch}: incomplete (lrun batch {batch})" in out, out  # not "running"
    code, out = a.lrun("batch", batch)
    assert code == 7, out  # incomplete: shard 1/2 was never taken, and nothing runs
    assert out.startswith(f"batch {batch}: incomplete, 1 of 2 entries no job took: suite [1/2] "), out
    assert out.splitlines()[-1].split() == ["total", str(second), "0", "0"], out
    (run,) = [run for run in shared.list(batch_id=batch) if run.plan_entry == "suite [2/2]"]
    code, shown = a.lrun("show", run.id)  # a shard's command: its first node ids, and a count
    assert code == 0 and f"... {second - 3} more node ids (lrun show --full)" in shown, shown

    # A job that collected one more test is told so, not to join "with the same plan file".
    extra = a.project / "suite" / "test_extra.py"
    extra.write_text("def test_new():\n    pass\n")
    code, out = a.run(*shard, "--lrun-shard=1/2")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert (
        "the batch's jobs collected 10 inner tests, this job 11; the first that differs, "
        "test_extra.py::test_new, is only in this job's" in out
    ), out
    assert "plan file" not in out
    extra.unlink()

    (a.project / "suite" / "fail.txt").write_text("")
    code, out = a.run(*shard, "--lrun-shard=1/2")
    first = out.count("\nFAILED ")
    assert code == 1 and first == 10 - second and f"batch {batch}: failed" in out, out
    code, out = b.lrun("batch", batch, "--json")
    assert code == 6, out  # the batch failed: so does a CI summary job that runs lrun batch
    doc = json.loads(out)
    assert doc["batch"]["status"] == "failed"
    assert doc["totals"] == {"passed": second, "failed": first, "skipped": 0}
    assert sorted((row["entry"], row["passed"], row["failed"]) for row in doc["rows"]) == [
        ("suite [1/2]", 0, first),
        ("suite [2/2]", second, 0),
    ]
