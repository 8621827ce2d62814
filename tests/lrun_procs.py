"""Bodies of the multi-process tests: spawned children import them from here.

Test modules are imported in importlib mode, under names a spawned child cannot
import; this module sits on ``pythonpath`` (``tests``), which children inherit.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from pytest_lrun.plan import load_plan
from pytest_lrun.store import FileStore, Run

WAIT_S = 60.0  # bound on every barrier, queue and join wait

# mode -> (machine, key) of worker i: all contend on one key, on one machine, or not at all
MODES: dict[str, Callable[[int], tuple[str, str]]] = {
    "same-key": lambda i: ("m", "k"),
    "different-keys": lambda i: ("m", f"k{i}"),
    "different-machines": lambda i: (f"m{i}", "k"),
}


def contend(
    state_dir: str, mode: str, worker: int, rounds: int, barrier: Any, report: Callable[[Any], None]
) -> None:
    """Body shared by the process and thread workers: one prepare per round, all released together."""
    try:
        store = FileStore(state_dir)
        machine, key = MODES[mode](worker)
        for round_no in range(rounds):
            barrier.wait(WAIT_S)
            run, outcome = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}"))
            report((round_no, worker, outcome.value, run.id, os.getpid()))
    except BaseException:
        report(("error", worker, traceback.format_exc()))
        barrier.abort()


def process_worker(state_dir: str, mode: str, worker: int, rounds: int, barrier: Any, results: Any) -> None:
    contend(state_dir, mode, worker, rounds, barrier, results.put)


def hold_lock_until_killed(state_dir: str, holding: Any) -> None:
    store = FileStore(state_dir)

    def make() -> Run:  # runs inside prepare's critical section, i.e. with the machine lock held
        holding.set()
        time.sleep(600)
        return Run(test_dir="/never")

    store.prepare("m", "k-dead", make)


def reap_processes(procs: Sequence[BaseProcess]) -> None:
    for proc in procs:
        proc.join(WAIT_S)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def record_worker(
    state_dir: str, plan_path: str, worker: int, entries: int, barrier: Any, results: Any
) -> None:
    """Join batch ``ci-race`` and record this worker's entries, all workers released together."""
    try:
        plan = load_plan(plan_path)
        store = FileStore(state_dir, durable=False).batches
        barrier.wait(WAIT_S)
        store.open(plan, "ci-race")
        for n in range(entries):
            store.record("ci-race", f"w{worker}-e{n}", f"20250101T000000-{worker:04x}{n:04x}")
        results.put(("ok", worker, os.getpid()))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        barrier.abort()
