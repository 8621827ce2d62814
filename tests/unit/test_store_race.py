"""Concurrent ``RunStore.prepare`` from real OS processes and from threads.

Every child is started together behind a barrier, every wait is bounded, and
children are always reaped (terminated, then killed) in ``finally``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lrun_procs import MODES, WAIT_S, contend, hold_lock_until_killed, process_worker, reap_processes

from pytest_lrun.errors import StoreLocked
from pytest_lrun.store import Decision, FileStore, Run, RunStore, Status

CTX = multiprocessing.get_context("spawn")
WORKERS = 8
ROUNDS = 20

Result = tuple[int, int, str, str, int]  # round, worker, outcome, run id, pid


def _judge_round(store: RunStore, mode: str, results: list[Result], seen: set[str]) -> None:
    """Assert one round's outcomes, then finish its runs so the next round starts clean."""
    outcomes = Counter(outcome for _, _, outcome, _, _ in results)
    ids = {run_id for _, _, _, run_id, _ in results}
    if mode == "different-machines":
        assert outcomes == {"created": WORKERS}, results
        assert len(ids) == WORKERS, results
    else:
        other = "reuse" if mode == "same-key" else "busy"
        assert outcomes == {"created": 1, other: WORKERS - 1}, results
        assert len(ids) == 1, results  # the BUSY and REUSE answers name the created run
        (creator_pid,) = [pid for _, _, outcome, _, pid in results if outcome == "created"]
        (run_id,) = ids
        owner = store.get(run_id).owner
        assert owner is not None and owner["pid"] == creator_pid
    assert not ids & seen, "a run id was handed out twice"
    seen |= ids
    assert store.check() == []
    for run_id in ids:
        run = store.get(run_id)
        assert run.status is Status.PENDING
        run.status = Status.COMPLETED
        store.update(run)
    assert store.active() == []
    assert store.check() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", list(MODES))
def test_processes_prepare_one_run_per_machine(tmp_path: Path, mode: str) -> None:
    state_dir = str(tmp_path / "state")
    store = FileStore(state_dir)
    barrier = CTX.Barrier(WORKERS + 1)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=process_worker, args=(state_dir, mode, i, ROUNDS, barrier, results), daemon=True)
        for i in range(WORKERS)
    ]
    seen: set[str] = set()
    try:
        for proc in procs:
            proc.start()
        for round_no in range(ROUNDS):
            barrier.wait(WAIT_S)
            got = [results.get(timeout=WAIT_S) for _ in range(WORKERS)]
            errors = [entry[2] for entry in got if entry[0] == "error"]
            assert not errors, "\n".join(errors)
            assert {entry[0] for entry in got} == {round_no}
            _judge_round(store, mode, got, seen)
        assert len(store.list()) == len(seen) == ROUNDS * (WORKERS if mode == "different-machines" else 1)
    finally:
        barrier.abort()
        reap_processes(procs)
        results.close()
        results.join_thread()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
@pytest.mark.parametrize("mode", list(MODES))
def test_threads_prepare_one_run_per_machine(tmp_path: Path, mode: str, shared: bool) -> None:
    state_dir = str(tmp_path / "state")
    store = FileStore(state_dir)
    barrier = threading.Barrier(WORKERS + 1)
    lock = threading.Lock()
    got: list[Any] = []

    def report(entry: Any) -> None:
        with lock:
            got.append(entry)

    if shared:  # every thread uses the parent's store object

        def worker(i: int) -> None:
            machine, key = MODES[mode](i)
            try:
                for round_no in range(ROUNDS):
                    barrier.wait(WAIT_S)
                    run, outcome = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}"))
                    report((round_no, i, outcome.value, run.id, os.getpid()))
            except BaseException:
                report(("error", i, traceback.format_exc()))
                barrier.abort()

    else:

        def worker(i: int) -> None:
            contend(state_dir, mode, i, ROUNDS, barrier, report)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    seen: set[str] = set()
    try:
        for thread in threads:
            thread.start()
        for round_no in range(ROUNDS):
            barrier.wait(WAIT_S)
            deadline = time.monotonic() + WAIT_S
            while True:
                with lock:
                    done = len(got) >= WORKERS or any(entry[0] == "error" for entry in got)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            with lock:
                batch, got[:] = got[:WORKERS], got[WORKERS:]
            errors = [entry[2] for entry in batch if entry[0] == "error"]
            assert not errors, "\n".join(errors)
            assert len(batch) == WORKERS and {entry[0] for entry in batch} == {round_no}
            _judge_round(store, mode, batch, seen)
    finally:
        barrier.abort()
        for thread in threads:
            thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)


def _kernel_drops_locks_of_dead_processes(directory: Path) -> bool:
    """Probe: flock works here (a soft lock file would outlive a SIGKILLed holder)."""
    try:
        import fcntl
    except ImportError:
        return False
    probe = directory / "flock-probe"
    with probe.open("w") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
    probe.unlink()
    return hasattr(signal, "SIGKILL")


@pytest.mark.timeout(120)
def test_sigkilled_lock_holder_does_not_block_the_next_caller(tmp_path: Path) -> None:
    if not _kernel_drops_locks_of_dead_processes(tmp_path):
        pytest.skip("no kernel file locks (flock) or no SIGKILL here")
    state_dir = str(tmp_path / "state")
    holding = CTX.Event()
    proc = CTX.Process(target=hold_lock_until_killed, args=(state_dir, holding), daemon=True)
    try:
        proc.start()
        assert holding.wait(WAIT_S), "the child never took the lock"
        # the lock is really held: a caller that will not wait gives up
        with pytest.raises(StoreLocked) as info:
            FileStore(state_dir, lock_timeout=0.3).prepare("m", "k", lambda: Run(test_dir="/t"))
        assert info.value.what == "machine 'm'"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(WAIT_S)
        assert proc.exitcode == -signal.SIGKILL
        started = time.monotonic()
        store = FileStore(state_dir, lock_timeout=10)
        run, outcome = store.prepare("m", "k", lambda: Run(test_dir="/t"))
        assert time.monotonic() - started < 5
    finally:
        reap_processes([proc])
    assert outcome is Decision.CREATED
    assert store.list() == [run]  # the dead holder recorded nothing
    assert store.check() == []
