"""How records spell time: RFC 3339 UTC strings in JSON, unix seconds in Python, legacy numbers read."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.errors import BatchNotFound, CorruptRecord
from pytest_lrun.core.times import parse_time, rfc3339
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.records import Batch, Run, Status

STAMP = 1795617012.415  # 2026-11-25T14:30:12.415Z


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (STAMP, "2026-11-25T14:30:12.415Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (-1.5, "1969-12-31T23:59:58.500Z"),
        (STAMP + 0.0004, "2026-11-25T14:30:12.415Z"),  # to the nearest millisecond
        (STAMP + 0.0006, "2026-11-25T14:30:12.416Z"),
        (-62135596800, "0001-01-01T00:00:00.000Z"),  # the year is always four digits
        (253402300799.999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_rfc3339_and_back(seconds: float, text: str) -> None:
    assert rfc3339(seconds) == text
    assert parse_time(text) == round(seconds, 3)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-25T15:30:12.415+01:00", STAMP),
        ("2026-11-25T09:00:12.415-05:30", STAMP),
        ("2026-11-25t14:30:12.415z", STAMP),
        ("2026-11-25T14:30:12.415999999Z", STAMP),  # finer digits are dropped
        ("2026-11-25T14:30:12Z", STAMP - 0.415),
    ],
)
def test_parse_time_accepts_any_rfc3339_time(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds, abs=1e-6)


def test_parse_time_accepts_numbers_of_records_written_by_0_1_0() -> None:
    assert parse_time(STAMP + 0.0001) == STAMP
    assert parse_time(5) == 5.0


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        10**400,
        True,
        None,
        [],
        "",
        "yesterday",
        "1795617012.415",
        "2026-11-25T14:30:12.415",  # no offset: not a UTC time
        "2026-11-25 14:30:12Z",
        "2026-02-30T00:00:00Z",
        "2026-11-25T24:00:00Z",
        "9999-12-31T23:00:00-05:00",  # past the year 9999 in UTC
        "\uff12\uff10\uff12\uff16-11-25T14:30:12Z",  # fullwidth digits: not ASCII
    ],
)
def test_parse_time_refuses_what_is_not_a_time(value: Any) -> None:
    with pytest.raises(ValueError, match="created_at"):
        parse_time(value, "field 'created_at'")


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300])
def test_rfc3339_refuses_what_is_not_a_time(value: float) -> None:
    with pytest.raises(ValueError):
        rfc3339(value)


def a_run(**fields: Any) -> Run:
    return Run(**{"id": "r1", "machine": "m", "test_dir": "/t", "test_dir_hash": "h", "key": "k", **fields})


def test_run_record_times_are_rfc3339_and_timeout_a_number() -> None:
    run = a_run(created_at=STAMP, started_at=STAMP + 1, ended_at=None, timeout=90.5)
    data = run.to_dict()
    assert data["created_at"] == "2026-11-25T14:30:12.415Z"
    assert data["started_at"] == "2026-11-25T14:30:13.415Z"
    assert data["ended_at"] is None
    assert data["timeout"] == 90.5
    assert isinstance(run.created_at, float)  # Python keeps unix seconds for arithmetic


def test_round_trip_keeps_times_to_the_millisecond() -> None:
    now = time.time()
    run = a_run(created_at=now, started_at=now + 0.12345, ended_at=now + 61.0009)
    back = Run.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back == run  # the object itself holds milliseconds: what is written is what is read
    for name in ("created_at", "started_at", "ended_at"):
        assert getattr(back, name) == pytest.approx(getattr(run, name), abs=0.0005)
    assert back.started_at == round(now + 0.12345, 3)


def test_times_set_after_construction_are_kept_to_the_millisecond() -> None:
    run = a_run()
    run.ended_at = STAMP + 0.0004
    assert run.ended_at == STAMP
    run.created_at = 7
    assert run.created_at == 7.0 and isinstance(run.created_at, float)


def test_run_record_of_0_1_0_with_number_times_loads() -> None:
    data = a_run().to_dict() | {"created_at": STAMP, "started_at": 1795617013, "ended_at": None}
    run = Run.from_dict(data)
    assert (run.created_at, run.started_at, run.ended_at) == (STAMP, 1795617013.0, None)


@pytest.mark.parametrize("name", ["created_at", "started_at", "ended_at", "timeout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, "yesterday", "2026-13-01T00:00:00Z"])
def test_run_record_with_a_bad_time_does_not_load(name: str, value: Any) -> None:
    if name == "timeout" and isinstance(value, str):
        value = "90"  # a duration is a number, never a string
    with pytest.raises(ValueError, match=name):
        Run.from_dict(a_run().to_dict() | {name: value})


def test_a_record_with_a_nan_time_on_disk_is_corrupt_and_moved_aside(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state", durable=False)
    run = store.insert(a_run(id="", status=Status.FAILED, created_at=STAMP))
    path = store.files(run.id).record
    # Python's json reads the non-standard NaN token: a hand-edited or foreign record may hold it.
    path.write_text(path.read_text().replace('"2026-11-25T14:30:12.415Z"', "NaN"))
    with pytest.raises(CorruptRecord, match="created_at"):
        store.get(run.id)
    assert not path.exists() and len(list((tmp_path / "state" / "corrupt").iterdir())) == 1
    assert store.list() == []


def test_batch_record_created_at_is_rfc3339(tmp_path: Path) -> None:
    batch = Batch(id="b", plan="/p", plan_digest="d", created_at=STAMP + 0.0001)
    data = batch.to_dict()
    assert data["created_at"] == "2026-11-25T14:30:12.415Z"
    assert Batch.from_dict(json.loads(json.dumps(data))) == batch
    assert Batch.from_dict(data | {"created_at": 1}).created_at == 1.0  # written by 0.1.0


@pytest.mark.parametrize("value", [math.nan, "soon", None])
def test_batch_record_with_a_bad_time_is_corrupt(tmp_path: Path, value: Any) -> None:
    batches = FileStore(tmp_path / "state", durable=False).batches
    data = Batch(id="b1", plan="/p", plan_digest="d", created_at=STAMP).to_dict() | {"created_at": value}
    (batches.batches_dir / "b1.json").write_text(json.dumps(data))
    with pytest.raises(CorruptRecord, match="created_at"):
        batches.get("b1")
    with pytest.raises(BatchNotFound):
        batches.get("b1")  # moved aside, never loaded
