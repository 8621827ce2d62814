"""Batch records: create, join, concurrent recording from processes, status, corruption, ids."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from lrun_procs import WAIT_S, reap_processes, record_worker

from pytest_lrun.batch import rows
from pytest_lrun.errors import (
    EXIT_BAD_INPUT,
    BadInput,
    BatchNotFound,
    BatchPlanMismatch,
    ConfigError,
    CorruptRecord,
    NotFound,
    StoreError,
)
from pytest_lrun.plan import Plan, load_plan
from pytest_lrun.store import BatchStore, FileStore, Run, RunStore, Status
from pytest_lrun.store.records import Batch, derive_status, new_batch_id, rfc3339, validate_batch_id

CTX = multiprocessing.get_context("spawn")
WORKERS = 8
ENTRIES_PER_WORKER = 10
BATCH_ID = re.compile(r"b-\d{8}T\d{6}-[0-9a-f]{8}")
PLAN_TEXT = '[matrix]\ndirs = ["passing", "failing"]\nmachines = ["m1", "m2"]\n'


def make_plan(root: Path, text: str = PLAN_TEXT) -> Plan:
    for name in ("passing", "failing"):
        (root / name).mkdir(parents=True, exist_ok=True)
    path = root / "plan.toml"
    path.write_text(text)
    return load_plan(path)


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return make_plan(tmp_path / "project")


def plan_of(root: Path, names: list[str]) -> Plan:
    """A plan whose entries are exactly ``names`` (all over ``passing`` on m1)."""
    return make_plan(
        root, "".join(f'[[entry]]\nname = "{n}"\ndir = "passing"\nmachine = "m1"\n' for n in names)
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def batches(state: Path) -> BatchStore:
    return FileStore(state, durable=False).batches


@pytest.fixture
def runs(state: Path) -> RunStore:
    return FileStore(state, durable=False)


# --- create and join -----------------------------------------------------------


def test_open_creates_a_pending_batch_with_a_fresh_id(batches: BatchStore, plan: Plan, state: Path) -> None:
    batch = batches.open(plan)
    assert BATCH_ID.fullmatch(batch.id), batch.id
    assert (batch.plan, batch.plan_digest, batch.entries, batch.status) == (
        str(plan.path),
        plan.digest,
        {},
        Status.PENDING,
    )
    path = state / "batches" / f"{batch.id}.json"
    assert json.loads(path.read_text()) == {
        "id": batch.id,
        "plan": str(plan.path),
        "plan_digest": plan.digest,
        "created_at": rfc3339(batch.created_at),
        "entries": {},
        "status": "pending",
        "planned": ["passing@m1", "passing@m2", "failing@m1", "failing@m2"],
    }
    assert (state / "batches").stat().st_mode & 0o777 == 0o700
    assert batches.get(batch.id) == batch
    second = batches.open(plan)
    assert second.id != batch.id
    assert [b.id for b in batches.list()] == [batch.id, second.id]


def test_new_batch_ids_are_valid_and_time_sortable() -> None:
    ids = [new_batch_id() for _ in range(50)]
    assert all(BATCH_ID.fullmatch(batch_id) and validate_batch_id(batch_id) for batch_id in ids)
    assert len(set(ids)) == len(ids)


def test_open_with_an_id_creates_then_joins(batches: BatchStore, plan: Plan) -> None:
    created = batches.open(plan, "ci-4711")
    assert created.id == "ci-4711" and created.entries == {}
    batches.record("ci-4711", "passing@m1", "20250101T000000-00000001")
    joined = batches.open(plan, "ci-4711")
    assert joined.created_at == created.created_at
    assert joined.entries == {"passing@m1": "20250101T000000-00000001"}
    assert [b.id for b in batches.list()] == ["ci-4711"]


def test_join_checks_the_digest_not_the_path(batches: BatchStore, plan: Plan, tmp_path: Path) -> None:
    batches.open(plan, "ci-1")
    elsewhere = make_plan(tmp_path / "other-checkout")  # same bytes, another place
    assert elsewhere.path != plan.path and elsewhere.digest == plan.digest
    assert batches.open(elsewhere, "ci-1").plan == str(plan.path)


def test_join_with_a_different_plan_is_refused(batches: BatchStore, plan: Plan, tmp_path: Path) -> None:
    batches.open(plan, "ci-1")
    batches.record("ci-1", "passing@m1", "20250101T000000-00000001")
    other = make_plan(tmp_path / "changed", PLAN_TEXT + "# edited\n")
    with pytest.raises(BatchPlanMismatch) as info:
        batches.open(other, "ci-1")
    err = info.value
    assert isinstance(err, BadInput) and isinstance(err, ValueError)
    assert (err.code, err.exit_code) == ("batch_plan_mismatch", EXIT_BAD_INPUT)
    assert (err.batch_id, err.batch_plan, err.batch_digest) == ("ci-1", str(plan.path), plan.digest)
    assert (err.plan, err.plan_digest) == (str(other.path), other.digest)
    for part in (plan.digest, other.digest, str(plan.path), str(other.path), "'ci-1'"):
        assert part in str(err)
    assert batches.get("ci-1").entries == {"passing@m1": "20250101T000000-00000001"}  # untouched


def test_batch_plan_mismatch_pickles() -> None:
    err = BatchPlanMismatch("ci-1", "/a/plan.toml", "aa" * 16, "/b/plan.toml", "bb" * 16)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is BatchPlanMismatch
    assert str(copy) == str(err)
    assert copy.to_dict() == err.to_dict()
    assert copy.to_dict()["code"] == "batch_plan_mismatch"
    assert (copy.batch_id, copy.batch_plan, copy.batch_digest, copy.plan, copy.plan_digest) == (
        "ci-1",
        "/a/plan.toml",
        "aa" * 16,
        "/b/plan.toml",
        "bb" * 16,
    )


# --- recording -------------------------------------------------------------------


def test_record_adds_and_replaces_entries(batches: BatchStore, plan: Plan) -> None:
    batch = batches.open(plan)
    batches.record(batch.id, "passing@m1", "20250101T000000-00000001")
    updated = batches.record(batch.id, "failing@m1", "20250101T000000-00000002")
    assert updated.entries == {
        "passing@m1": "20250101T000000-00000001",
        "failing@m1": "20250101T000000-00000002",
    }
    retried = batches.record(batch.id, "passing@m1", "20250101T000000-00000003")
    assert retried.entries["passing@m1"] == "20250101T000000-00000003"
    assert batches.get(batch.id) == retried


def test_record_refuses_bad_entries_and_run_ids(batches: BatchStore, plan: Plan) -> None:
    batch = batches.open(plan)
    with pytest.raises(ValueError, match="entry name"):
        batches.record(batch.id, "", "20250101T000000-00000001")
    with pytest.raises(ValueError, match="not a run id"):
        batches.record(batch.id, "passing@m1", "../escape")


def test_record_makes_a_finished_batch_running_again(
    batches: BatchStore, runs: RunStore, tmp_path: Path
) -> None:
    batch = batches.open(plan_of(tmp_path, ["passing@m1"]))
    done = runs.insert(Run(machine="m1", test_dir="/p", status=Status.COMPLETED))
    batches.record(batch.id, "passing@m1", done.id)
    assert batches.refresh(batch.id).status is Status.COMPLETED
    assert batches.record(batch.id, "failing@m1", "20250101T000000-00000009").status is Status.RUNNING


def test_lock_timeout_is_a_store_error(state: Path, plan: Plan) -> None:
    batches = FileStore(state, lock_timeout=0.05, durable=False).batches
    batch = batches.open(plan, "held")
    with FileLock(str(state / "batches" / "held.lock")), pytest.raises(StoreError, match="still held"):
        batches.record(batch.id, "passing@m1", "20250101T000000-00000001")


@pytest.mark.timeout(120)
def test_concurrent_record_from_processes_loses_nothing(state: Path, plan: Plan) -> None:
    barrier = CTX.Barrier(WORKERS + 1)
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=record_worker,
            args=(str(state), str(plan.path), i, ENTRIES_PER_WORKER, barrier, results),
            daemon=True,
        )
        for i in range(WORKERS)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(WAIT_S)
        got = [results.get(timeout=WAIT_S) for _ in range(WORKERS)]
        errors = [entry[2] for entry in got if entry[0] == "error"]
        assert not errors, "\n".join(errors)
        assert len({entry[2] for entry in got}) == WORKERS  # really eight processes
    finally:
        barrier.abort()
        reap_processes(procs)
        results.close()
        results.join_thread()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    batch = FileStore(state).batches.get("ci-race")
    expected = {
        f"w{i}-e{n}": f"20250101T000000-{i:04x}{n:04x}"
        for i in range(WORKERS)
        for n in range(ENTRIES_PER_WORKER)
    }
    assert batch.entries == expected
    assert batch.plan_digest == plan.digest
    assert not list((state / "corrupt").iterdir())


# --- status ----------------------------------------------------------------------


def _make_run(runs: RunStore, status: str, n: int) -> str:
    """A run in ``status`` ("missing": an id with no record); live runs each on their own machine."""
    if status == "missing":
        return f"20250101T000000-dead{n:04x}"
    wanted = Status(status)
    if wanted.is_terminal:
        return runs.insert(Run(machine=f"m{n}", test_dir=f"/t{n}", status=wanted, exit_code=0)).id
    run, _ = runs.prepare(f"m{n}", f"k{n}", lambda: Run(test_dir=f"/t{n}"))
    if wanted is Status.RUNNING:
        run.status = Status.RUNNING
        runs.update(run)
    return run.id


STATUS_CASES = [
    pytest.param([], "pending", id="no-runs"),
    pytest.param(["pending", "pending"], "pending", id="all-pending"),
    pytest.param(["pending", "completed"], "running", id="pending-and-done"),
    pytest.param(["running", "failed"], "running", id="running-and-failed"),
    pytest.param(["pending", "missing"], "running", id="pending-and-missing"),
    pytest.param(["completed", "completed"], "completed", id="all-completed"),
    pytest.param(["completed", "failed"], "failed", id="failed"),
    pytest.param(["failed", "timeout", "completed"], "timeout", id="timeout-beats-failed"),
    pytest.param(["timeout", "interrupted", "failed"], "interrupted", id="interrupted-beats-all"),
    pytest.param(["completed", "missing"], "interrupted", id="missing-counts-as-interrupted"),
]


@pytest.mark.parametrize(("statuses", "expected"), STATUS_CASES)
def test_refresh_derives_and_stores_the_status(
    batches: BatchStore, runs: RunStore, tmp_path: Path, statuses: list[str], expected: str
) -> None:
    batch = batches.open(plan_of(tmp_path, [f"e{n}" for n in range(max(1, len(statuses)))]))
    for n, status in enumerate(statuses):
        batches.record(batch.id, f"e{n}", _make_run(runs, status, n))
    refreshed = batches.refresh(batch.id)
    assert refreshed.status is Status(expected)
    assert batches.get(batch.id).status is Status(expected)
    assert FileStore(batches.state_dir).batches.get(batch.id).status is Status(expected)


@pytest.mark.parametrize(("statuses", "expected"), STATUS_CASES)
def test_derive_status(statuses: list[str], expected: str) -> None:
    given = [None if status == "missing" else Status(status) for status in statuses]
    assert derive_status(given) is Status(expected)


def test_refresh_follows_the_runs(batches: BatchStore, runs: RunStore, tmp_path: Path) -> None:
    batch = batches.open(plan_of(tmp_path, ["passing@m1"]))
    run, _ = runs.prepare("m1", "k", lambda: Run(test_dir="/t"))
    batches.record(batch.id, "passing@m1", run.id)
    assert batches.refresh(batch.id).status is Status.PENDING
    run.status = Status.RUNNING
    runs.update(run)
    assert batches.refresh(batch.id).status is Status.RUNNING
    run.status = Status.COMPLETED
    runs.update(run)
    assert batches.refresh(batch.id).status is Status.COMPLETED


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
        },
        {
            "entry": "failing@m2",
            "run_id": live.id,
            "machine": "m2",
            "test_dir": "/src/failing",
            "status": "pending",
            "exit_code": None,
            "duration": None,
        },
        {
            "entry": "gone@m1",
            "run_id": "20250101T000000-deadbeef",
            "machine": None,
            "test_dir": None,
            "status": "missing",
            "exit_code": None,
            "duration": None,
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
        }
        for name in ("passing@m2", "failing@m1")
    ]
    assert rows(batch, runs) == table
    json.dumps(table)  # ready for --json output


# --- missing and corrupt records -----------------------------------------------------


def test_batch_not_found(batches: BatchStore, runs: RunStore) -> None:
    calls: list[Callable[[], object]] = [
        lambda: batches.get("nope"),
        lambda: batches.record("nope", "e", "20250101T000000-00000001"),
        lambda: batches.refresh("nope"),
    ]
    for call in calls:
        with pytest.raises(BatchNotFound) as info:
            call()
        assert info.value.batch_id == "nope" and info.value.code == "batch_not_found"
        assert isinstance(info.value, NotFound) and isinstance(info.value, LookupError)
    assert batches.list() == []


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
def test_bad_batch_ids_are_refused(batches: BatchStore, runs: RunStore, plan: Plan, bad: str) -> None:
    for create in (lambda: batches.open(plan, bad), lambda: validate_batch_id(bad)):
        with pytest.raises(ConfigError) as info:
            create()
        assert isinstance(info.value, BadInput)
        assert f"invalid batch id {bad!r}" in str(info.value)
    lookups: list[Callable[[], object]] = [  # a malformed id names no batch, as with run ids
        lambda: batches.get(bad),
        lambda: batches.record(bad, "e", "20250101T000000-00000001"),
        lambda: batches.refresh(bad),
        lambda: batches.path(bad),
    ]
    for lookup in lookups:
        with pytest.raises(BatchNotFound) as not_found:
            lookup()
        assert not_found.value.batch_id == bad
    assert list((batches.state_dir / "batches").iterdir()) == []


def test_validate_batch_id_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        validate_batch_id("a b", source="environment variable LRUN_BATCH_ID")
    assert str(info.value).startswith("environment variable LRUN_BATCH_ID: invalid batch id 'a b'")
    with pytest.raises(ConfigError):
        validate_batch_id(None)


@pytest.mark.parametrize("good", ["1", "ci-123_4.5", "x" * 128, "b-20250101T000000-0123abcd", "Run.7"])
def test_good_batch_ids_are_accepted(batches: BatchStore, plan: Plan, good: str) -> None:
    assert validate_batch_id(good) == good
    assert batches.open(plan, good).id == good
    assert batches.get(good).id == good


def test_batch_record_round_trips_and_ignores_unknown_keys() -> None:
    batch = Batch(id="b", plan="/p", plan_digest="d", created_at=1.5, entries={"e": "r"}, status="failed")  # type: ignore[arg-type]
    assert batch.status is Status.FAILED
    assert Batch.from_dict({**batch.to_dict(), "future_field": 1}) == batch
    assert Batch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch


def test_state_dir_is_shared_with_the_run_store(state: Path, plan: Plan) -> None:
    runs = FileStore(state)
    batches = FileStore(state).batches
    assert batches.state_dir == runs.state_dir
    assert batches.corrupt_dir == runs.corrupt_dir
    batch = batches.open(plan)
    assert runs.list() == [] and batches.list() == [batch]


def test_entries_no_job_started_keep_the_batch_open(batches: BatchStore, runs: RunStore, plan: Plan) -> None:
    """A CI matrix whose other jobs have not started yet is not completed."""
    assert len(plan.names) > 1
    batch = batches.open(plan, "ci-1")
    batches.record(batch.id, plan.names[0], _make_run(runs, "completed", 0))
    assert batches.refresh(batch.id).status is Status.RUNNING
    table = rows(batches.get(batch.id), runs)
    assert [row["status"] for row in table] == ["completed"] + ["pending"] * (len(plan.names) - 1)
    for n, name in enumerate(plan.names[1:], start=1):
        batches.record(batch.id, name, _make_run(runs, "completed", n))
    assert batches.refresh(batch.id).status is Status.COMPLETED
