"""A run's end re-reads the engine's stored log only when the follow stream missed part of it.

A follow stream opened on a container that exits at once can end before its last
output (seen with Docker 20.10); the dispatcher then rebuilds the log and the
events from the stored log. Here a fake engine's follow stream stops short.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from unit.test_recovery import FakeContainer, FakeEngine, live_run

from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.logs import read_events
from pytest_lrun.store import RunStore, Status
from pytest_lrun.store.files import FileStore
from pytest_lrun.wire.events import Finished, PhaseReport, Start

TOKEN = "5eb1e2c0ffee"
NODEID = "t.py::test_a"


def event(fields: dict[str, Any]) -> bytes:
    return b"\x1elrun:" + TOKEN.encode() + b" " + json.dumps(fields).encode() + b"\n"


START = event({"e": "start", "n": 1, "nodeid": NODEID, "location": ["t.py", 3, "test_a"]})
REPORT = event(
    {
        "e": "report",
        "n": 2,
        "nodeid": NODEID,
        "when": "call",
        "outcome": "passed",
        "duration": 0.25,
        "location": ["t.py", 3, "test_a"],
        "longrepr": None,
        "skip": None,
        "sections": [],
        "keywords": ["test_a"],
        "user_properties": [],
    }
)
FINISH = event({"e": "finish", "n": 3, "exitstatus": 0, "counts": {"passed": 1}, "interrupt": None})
LOG = b"collected 1 item\n" + START + REPORT + b"t.py .\n" + FINISH + b"=== 1 passed ===\n"
HUMAN = b"collected 1 item\nt.py .\n=== 1 passed ===\n"


class Engine(FakeEngine):
    """Its follow stream gives ``follow_log`` instead of the container's stored log (which it reads whole)."""

    def __init__(self, follow_log: bytes) -> None:
        super().__init__()
        self.follow_log = follow_log

    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]:
        stored = b"".join(super().logs(container_id, follow=follow))
        if follow:
            yield self.follow_log
        else:  # in pieces, as an engine streams it
            yield from (stored[i : i + 100] for i in range(0, len(stored), 100))


def adopted(tmp_path: Path, follow_log: bytes) -> tuple[RunStore, str]:
    """A run whose container printed ``LOG`` and exited, finished by a dispatcher following ``follow_log``."""
    store = FileStore(tmp_path / "state", durable=False)
    engine = Engine(follow_log)
    run = live_run(store, container=FakeContainer("c1", logs=LOG), engine=engine)
    store.update(replace(run, event_token=TOKEN))
    engine.finish("c1", 0)
    ended = Dispatcher(store, EnginePool(lambda machine: engine)).adopt(run, engine)
    assert ended is not None and ended.status is Status.COMPLETED
    return store, run.id


@pytest.mark.parametrize("cut", [0, len(b"collected 1 item\n" + START) + 40], ids=["empty", "mid-event"])
def test_a_follow_stream_that_ends_early_is_completed_from_the_stored_log(tmp_path: Path, cut: int) -> None:
    store, run_id = adopted(tmp_path, LOG[:cut])
    files = store.files(run_id)
    assert files.logs.read_bytes() == HUMAN  # not the half event line the follow stream ended on
    assert [type(e) for e in read_events(files.events) or []] == [Start, PhaseReport, Finished]


def test_a_whole_follow_stream_is_kept_and_the_stored_log_only_counted(tmp_path: Path) -> None:
    # As long as the stored log: had the end rebuilt the files from it, the log would not say "PASSED".
    store, run_id = adopted(tmp_path, LOG.replace(b"1 passed", b"1 PASSED"))
    files = store.files(run_id)
    assert files.logs.read_bytes() == HUMAN.replace(b"1 passed", b"1 PASSED")
    assert [type(e) for e in read_events(files.events) or []] == [Start, PhaseReport, Finished]
