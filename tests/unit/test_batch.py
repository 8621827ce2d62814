"""The file store's batch records (files, locks, corruption), batch ids and :func:`rows`.

What every backend's batches must do is in test_store_contract.py.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from lrun_procs import write_plan

from pytest_lrun.cli.batch import rows
from pytest_lrun.config.plan import Plan
from pytest_lrun.core.errors import (
    BadInput,
    BatchNotFound,
    BatchPlanMismatch,
    ConfigError,
    CorruptRecord,
    StoreError,
)
from pytest_lrun.core.times import rfc3339
from pytest_lrun.store import BatchStatus, BatchStore, Run, RunStore, Status
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.records import Batch, new_batch_id, validate_batch_id

BATCH_ID = re.compile(r"b-\d{8}T\d{6}-[0-9a-f]{8}")


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return write_plan(tmp_path / "project")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def batches(state: Path) -> BatchStore:
    return FileStore(state, durable=False).batches


@pytest.fixture
def runs(state: Path) -> RunStore:
    return FileStore(state, durable=False)


# --- the record on disk, and its errors -----------------------------------------


def test_a_batch_is_one_json_file_in_a_private_folder(batches: BatchStore, plan: Plan, state: Path) -> None:
    batch = batches.open(plan)
    path = state / "batches" / f"{batch.id}.json"
    assert json.loads(path.read_text()) == {
        "id": batch.id,
        "plan": str(plan.path),
        "plan_digest": plan.digest,
        "created_at": rfc3339(batch.created_at),
        "entries": {},
        "status": "pending",
        "planned": ["passing@m1", "passing@m2", "failing@m1", "failing@m2"],
        "collected": None,  # a plan file's batch: no inner node ids
    }
    assert (state / "batches").stat().st_mode & 0o777 == 0o700


def test_new_batch_ids_are_valid_and_time_sortable() -> None:
    ids = [new_batch_id() for _ in range(50)]
    assert all(BATCH_ID.fullmatch(batch_id) and validate_batch_id(batch_id) for batch_id in ids)
    assert len(set(ids)) == len(ids)


def test_batch_plan_mismatch_pickles() -> None:
    err = BatchPlanMismatch("ci-1", "/a/plan.toml", "aa" * 16, "/b/plan.toml", "bb" * 16)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is BatchPlanMismatch
    assert str(copy) == str(err)
    shards = BatchPlanMismatch("ci-1", "/a/suite", "aa" * 16, "/a/suite", "bb" * 16, "1 vs 2 tests")
    assert pickle.loads(pickle.dumps(shards)).difference == "1 vs 2 tests"
    assert copy.to_dict() == err.to_dict()
    assert copy.to_dict()["code"] == "batch_plan_mismatch"
    assert (copy.batch_id, copy.batch_plan, copy.batch_digest, copy.plan, copy.plan_digest) == (
        "ci-1",
        "/a/plan.toml",
        "aa" * 16,
        "/b/plan.toml",
        "bb" * 16,
    )


# --- locks -----------------------------------------------------------------------


def test_lock_timeout_is_a_store_error(state: Path, plan: Plan) -> None:
    batches = FileStore(state, lock_timeout=0.05, durable=False).batches
    batch = batches.open(plan, "held")
    with FileLock(str(state / "batches" / "held.lock")), pytest.raises(StoreError, match="still held"):
        batches.record(batch.id, "passing@m1", "20250101T000000-00000001")


# --- rows ------------------------------------------------------------------------

NO_COUNTS = {"passed": None, "failed": None, "skipped": None}


def test_rows(batches: BatchStore, runs: RunStore, plan: Plan) -> None:
    batch = batches.open(plan)
    done = runs.insert(
        Run(
            machine="m1",
            test_dir="/src/passing",
            status=Status.FAILED,
            exit_code=1,
            started_at=100.0,
            ended_at=112.5,
        )
    )
    live, _ = runs.prepare("m2", "k", lambda: Run(test_dir="/src/failing"))
    batches.record(batch.id, "passing@m1", done.id)
    batches.record(batch.id, "failing@m2", live.id)
    batch = batches.record(batch.id, "gone@m1", "20250101T000000-deadbeef")
    table = rows(batch, runs)
    assert table == [
        {
            "entry": "passing@m1",
            "run_id": done.id,
            "machine": "m1",
            "test_dir": "/src/passing",
            "status": "failed",
            "exit_code": 1,
            "duration": 12.5,
            **NO_COUNTS,  # it left no JUnit XML
        },
        {
            "entry": "failing@m2",
            "run_id": live.id,
            "machine": "m2",
            "test_dir": "/src/failing",
            "status": "pending",
            "exit_code": None,
            "duration": None,
            **NO_COUNTS,
        },
        {
            "entry": "gone@m1",
            "run_id": "20250101T000000-deadbeef",
            "machine": None,
            "test_dir": None,
            "status": "missing",
            "exit_code": None,
            "duration": None,
            **NO_COUNTS,
        },
    ] + [
        {
            "entry": name,
            "run_id": None,
            "machine": None,
            "test_dir": None,
            "status": "pending",
            "exit_code": None,
            "duration": None,
            **NO_COUNTS,
        }
        for name in ("passing@m2", "failing@m1")
    ]
    assert rows(batch, runs) == table
    json.dumps(table)  # ready for --json output


# --- missing and corrupt records -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"id": "bad"}', id="fields-missing"),
        pytest.param(
            b'{"id": "other", "plan": "/p", "plan_digest": "d", "created_at": 1, "entries": {}, '
            b'"status": "pending"}',
            id="id-mismatch",
        ),
        pytest.param(
            b'{"id": "ci-9", "plan": "/p", "plan_digest": "d", "created_at": 1, "entries": {}, '
            b'"status": "odd"}',
            id="bad-status",
        ),
        pytest.param(
            b'{"id": "ci-9", "plan": "/p", "plan_digest": "d", "created_at": 1, "entries": {"e": 5}, '
            b'"status": "pending"}',
            id="bad-entries",
        ),
    ],
)
def test_corrupt_record_is_moved_aside_and_reported(
    batches: BatchStore, plan: Plan, state: Path, content: bytes
) -> None:
    batches.open(plan, "ci-9")
    path = state / "batches" / "ci-9.json"
    path.write_bytes(content)
    with pytest.raises(CorruptRecord) as info:
        batches.get("ci-9")
    err = info.value
    assert err.path == str(path) and not path.exists()
    moved = Path(err.moved_to)
    assert moved.parent == state / "corrupt" and moved.name.startswith("batch-ci-9.")
    assert moved.read_bytes() == content  # kept as it was, for a human to look at
    assert batches.problems == [err]
    with pytest.raises(BatchNotFound):
        batches.get("ci-9")


def test_corrupt_record_is_never_overwritten(batches: BatchStore, plan: Plan, state: Path) -> None:
    batches.open(plan, "ci-9")
    path = state / "batches" / "ci-9.json"
    path.write_text("garbage")
    with pytest.raises(CorruptRecord) as info:
        batches.record("ci-9", "passing@m1", "20250101T000000-00000001")
    assert Path(info.value.moved_to).read_text() == "garbage"
    assert not path.exists()
    path.write_text("garbage again")
    with pytest.raises(CorruptRecord) as info:
        batches.open(plan, "ci-9")
    assert Path(info.value.moved_to).read_text() == "garbage again"
    assert len(list((state / "corrupt").iterdir())) == 2


def test_list_skips_and_reports_corrupt_records(batches: BatchStore, plan: Plan, state: Path) -> None:
    good = batches.open(plan, "good")
    batches.open(plan, "bad")
    (state / "batches" / "bad.json").write_text("{")
    (state / "batches" / ".good.json.tmp").write_text("{")  # an orphan of a crashed write
    assert batches.list() == [good]
    assert [Path(problem.path).name for problem in batches.problems] == ["bad.json"]


# --- ids -------------------------------------------------------------------------------

BAD_IDS = ["", ".hidden", "-dash", "../up", "a/b", "a b", "x" * 129, "é", "a\nb", "ci:1"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_batch_ids_are_refused(batches: BatchStore, plan: Plan, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_batch_id(bad)
    assert isinstance(info.value, BadInput)
    assert f"invalid batch id {bad!r}" in str(info.value)
    with pytest.raises(BatchNotFound):
        batches.path(bad)
    calls: list[Callable[[], object]] = [
        lambda: batches.open(plan, bad),
        lambda: batches.get(bad),
        lambda: batches.record(bad, "e", "20250101T000000-00000001"),
        lambda: batches.refresh(bad),
    ]
    for call in calls:  # refused (test_store_contract.py) before any file is made, lock files too
        with contextlib.suppress(ConfigError, BatchNotFound):
            call()
    assert list((batches.state_dir / "batches").iterdir()) == []


def test_validate_batch_id_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        validate_batch_id("a b", source="environment variable LRUN_BATCH_ID")
    assert str(info.value).startswith("environment variable LRUN_BATCH_ID: invalid batch id 'a b'")
    with pytest.raises(ConfigError):
        validate_batch_id(None)


@pytest.mark.parametrize("good", ["1", "ci-123_4.5", "x" * 128, "b-20250101T000000-0123abcd", "Run.7"])
def test_good_batch_ids_are_valid(good: str) -> None:
    assert validate_batch_id(good) == good


def test_batch_record_round_trips_and_ignores_unknown_keys() -> None:
    batch = Batch(id="b", plan="/p", plan_digest="d", created_at=1.5, entries={"e": "r"}, status="failed")  # type: ignore[arg-type]
    assert batch.status is BatchStatus.FAILED
    assert Batch.from_dict({**batch.to_dict(), "future_field": 1}) == batch
    assert Batch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch


def test_state_dir_is_shared_with_the_run_store(state: Path, plan: Plan) -> None:
    runs = FileStore(state)
    batches = FileStore(state).batches
    assert batches.state_dir == runs.state_dir
    assert batches.corrupt_dir == runs.corrupt_dir
    batch = batches.open(plan)
    assert runs.list() == [] and batches.list() == [batch]
