"""A state dir written by pytest-lrun 56bd2c1 (before the package was split into layers) reads the same.

``tests/golden/state_dir_56bd2c1/`` is what that version's file store wrote (its README.txt
says how): runs in every status, two machines' indexes of live runs, cached-result pointers,
a batch, durations and a build log. Each test opens a copy with the current code and checks
what a user sees of it: ``lrun runs``, ``show``, ``logs``, ``batch``, the durations sharding
reads, the build log, and a ``gc`` that loses none of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_lrun.cli import main
from pytest_lrun.cli.commands import EXIT_BATCH_FAILED
from pytest_lrun.config.builds import image_tag
from pytest_lrun.run.images import Builder
from pytest_lrun.store import Status
from pytest_lrun.store.files import FileStore

GOLDEN = Path(__file__).parents[1] / "golden" / "state_dir_56bd2c1"

# The golden runs, oldest first: (id, machine, status).
RUNS = [
    ("20260101T000001-00000001", "m1", "completed"),  # batch ci-42, entry unit
    ("20260101T000002-00000002", "m2", "failed"),  # batch ci-42, entry integration
    ("20260101T000003-00000003", "m1", "timeout"),
    ("20260101T000004-00000004", "m2", "interrupted"),  # cancelled before it started
    ("20260101T000005-00000005", "m2", "completed"),  # the retry of the cancelled run
    ("20260101T000006-00000006", "m2", "running"),
    ("20260101T000007-00000007", "m1", "pending"),
    ("20260101T000200-000000aa", "m1", "completed"),  # inserted as finished
]
UNIT, INTEGRATION, _, CANCELLED, RETRY, RUNNING, PENDING, _ = (run_id for run_id, _, _ in RUNS)
DURATIONS = {
    "/golden/project/tests/unit": {"tests/test_a.py::test_one": 1.25, "tests/test_a.py::test_two": 0.5},
    "/golden/project/tests/integration": {"tests/test_b.py::test_db[pg]": 12.0},
}
BUILD_DIGEST = "0123456789abcdef0123456789abcdef"

Lrun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the golden state dir, private as the old version made it (git keeps no modes)."""
    path = tmp_path / "state"
    shutil.copytree(GOLDEN, path, ignore=shutil.ignore_patterns("README.txt"))
    for folder, _dirs, _files in os.walk(path):
        os.chmod(folder, 0o700)
    monkeypatch.setenv("LRUN_STATE_DIR", str(path))
    for name in ("LRUN_STATE_MAX_BYTES", "LRUN_REAP_AGE", "LRUN_CONNECT_TIMEOUT", "LRUN_STORE"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def lrun(capsys: pytest.CaptureFixture[str]) -> Lrun:
    """Run ``lrun ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run


# Fields a record gained since the golden state dir was written: they read as null.
ADDED_SINCE = {"action_digest": None}


def record(state: Path, run_id: str) -> dict[str, object]:
    """The run as lrun shows it: every field as stored, and the fields added since as null."""
    data: dict[str, object] = json.loads((state / "runs" / run_id / "run.json").read_text())
    return {**data, **ADDED_SINCE}


def test_the_golden_state_dir_holds_what_its_readme_says() -> None:
    assert sorted(p.name for p in (GOLDEN / "runs").iterdir()) == [run_id for run_id, _, _ in RUNS]
    assert {p.name for p in GOLDEN.iterdir()} == {
        "README.txt",
        *("runs", "active", "locks", "completed", "batches", "durations", "builds"),
    }


def test_lrun_runs_lists_every_run_as_it_was_written(lrun: Lrun, state: Path) -> None:
    status, out, err = lrun("runs", "--json")
    assert (status, err) == (0, "")
    runs = json.loads(out)["runs"]
    assert [(r["id"], r["machine"], r["status"]) for r in runs] == RUNS
    assert runs == [record(state, run_id) for run_id, _, _ in RUNS]  # every field, as stored

    status, out, _ = lrun("runs", "--status", "completed", "--json")
    assert [r["id"] for r in json.loads(out)["runs"]] == [UNIT, RETRY, RUNS[-1][0]]


def test_lrun_show_and_logs_read_each_run(lrun: Lrun, state: Path) -> None:
    for run_id, _, _ in RUNS:
        status, out, _ = lrun("show", run_id, "--json")
        assert status == 0 and json.loads(out) == {"schema_version": 1, "run": record(state, run_id)}
    shown = json.loads(lrun("show", INTEGRATION, "--json")[1])["run"]
    assert (shown["status"], shown["exit_code"], shown["error_code"]) == ("failed", 1, "exit_nonzero")
    assert (shown["batch_id"], shown["plan_entry"], shown["env_names"]) == (
        "ci-42",
        "integration",
        ["CI", "TOKEN"],
    )
    assert json.loads(lrun("show", RETRY, "--json")[1])["run"]["retry_of"] == CANCELLED

    status, out, _ = lrun("logs", UNIT)
    assert status == 0 and out == "log of unit\n1 passed\n"


def test_lrun_batch_shows_the_batch_and_its_runs(lrun: Lrun, state: Path) -> None:
    status, out, _ = lrun("batch", "ci-42", "--json")
    assert status == EXIT_BATCH_FAILED
    data = json.loads(out)
    stored = json.loads((state / "batches" / "ci-42.json").read_text())
    assert data["batch"] == stored  # the derived status is the one the old version stored
    assert (stored["status"], stored["planned"]) == ("failed", ["unit", "integration", "docs"])
    assert [(r["entry"], r["run_id"], r["status"], r["exit_code"]) for r in data["rows"]][:2] == [
        ("unit", UNIT, "completed", 0),
        ("integration", INTEGRATION, "failed", 1),
    ]


def test_the_store_reads_the_indexes_pointers_durations_and_build_log(state: Path) -> None:
    store = FileStore(state)
    assert [run.id for run in store.active()] == [RUNNING, PENDING]
    assert [run.id for run in store.active("m1")] == [PENDING]
    cached = store.last_completed("m1", "unit")
    assert cached is not None and cached.id == UNIT
    assert store.last_completed("m2", "cancelled") is not None  # the completed retry's key
    for suite, durations in DURATIONS.items():
        assert store.durations(suite) == durations
    assert store.batches.get("ci-42").entries == {"unit": UNIT, "integration": INTEGRATION}
    log = Builder(store).log_path("m1", image_tag(BUILD_DIGEST))
    assert log.read_text().endswith("Successfully built\n")
    assert store.check() == [] and store.problems == []


def test_a_place_on_the_old_indexes_sees_their_live_runs(state: Path) -> None:
    from pytest_lrun.store import Decision, Run

    store = FileStore(state)
    run, decision = store.prepare("m2", "live", lambda: Run(test_dir="/golden/project/tests/live"))
    assert (decision, run.id) == (Decision.REUSE, RUNNING)
    run, decision = store.prepare("m1", "other", lambda: Run(test_dir="/golden/project/tests/other"))
    assert (decision, run.id) == (Decision.BUSY, PENDING)  # m1's one slot holds the pending run


def test_lrun_gc_loses_nothing(lrun: Lrun, state: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"  # no machine tables: reconcile leaves m1 and m2 alone
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    FileStore(state)  # makes the folders git does not keep (corrupt/, empty)
    before = sorted(str(p.relative_to(state)) for p in state.rglob("*"))

    status, out, _ = lrun("gc", "--json", "--project", str(project))

    assert status == 0
    data = json.loads(out)
    assert data["reconcile"]["changed"] == []
    assert data["gc"]["deleted"] == [] and data["gc"]["cap_met"] is True
    assert data["gc"]["swept"] == {"removed": [], "ended": [], "problems": []}
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")) == before
    store = FileStore(state)
    assert [(run.id, run.machine, run.status.value) for run in store.list()] == RUNS
    assert store.get(RUNNING).status is Status.RUNNING
