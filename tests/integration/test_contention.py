"""Contention (issue 12), short and seeded: 16 processes on 4 machines with slots, on both stores.

The harness and its invariants live in ``tests/contention_model.py``; ``bench/contention.py``
runs it long. A failure prints the seed, the command that replays its choices and
the logged operations on the offending runs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from contention_model import PLACEMENTS, Config, read_logs, recheck, run
from lrun_procs import StoreSpec

from pytest_lrun.store import Decision, Run, Status

SEEDS = (1, 2)
SHORT = {"rounds": 3, "processes": 16, "ops_per_round": 6}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS)
def test_sixteen_processes_on_four_machines_break_no_invariant(
    backend: StoreSpec, tmp_path: Path, seed: int
) -> None:
    config = Config(seed=seed, **SHORT)
    report = run(backend, config, tmp_path / "work")
    assert report.violations == [], report.describe()
    assert report.exceptions == 0
    # gc's of different workers ran at once (two gc's, a gc and a sweep, a gc and a delete).
    assert report.overlapping_gcs > 0
    # Every worker did every operation: its join, then each round's.
    assert report.operations == config.processes * (1 + config.rounds * config.ops_per_round)
    # The contention the invariants are about happened: placements of every outcome,
    # runs removed by gc, and live runs that gc had to leave alone.
    ops = read_logs(report.logs)
    decisions = Counter(op.get("decision") for op in ops if op["op"] in PLACEMENTS)
    assert {d.value for d in Decision} <= set(decisions), decisions
    assert any(op.get("removed") or op.get("pruned") for op in ops), "gc removed nothing"
    assert any(op.get("refused") for op in ops), "no delete of a live run was tried"


@pytest.mark.timeout(300)
def test_the_checker_catches_what_a_store_must_never_do(backend: StoreSpec, tmp_path: Path) -> None:
    """The same checks, after the store was changed behind the workers' backs, find each change."""
    report = run(backend, Config(seed=3, rounds=2, processes=4), tmp_path / "work")
    assert report.violations == [], report.describe()
    store = backend.open()
    try:
        live = store.active()
        assert len(live) >= 2, "the seed left too few live runs to tamper with"
        overwritten, removed = live[0], live[1]
        store.update(dataclasses.replace(overwritten, container_id="not-its-owners"))
        store.delete(store.end(removed, Status.INTERRUPTED).id)
        for key in ("intruder-1", "intruder-2"):  # m0 has one slot
            store.prepare("m0", key, lambda: Run(test_dir="/src/x"), slots=9)
    finally:
        store.close()
    found = recheck(backend, report.logs)
    by_kind = {(v.invariant, tuple(v.ids)) for v in found}
    assert ("lost", (overwritten.id,)) in by_kind, found
    assert ("gc", (removed.id,)) in by_kind, found
    assert any(v.invariant == "slots" for v in found), found
    assert sum(v.invariant == "model" for v in found) == 2, found
