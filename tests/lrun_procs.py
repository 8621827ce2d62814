"""Bodies of the multi-process tests: spawned children import them from here.

Test modules are imported in importlib mode, under names a spawned child cannot
import; this module sits on ``pythonpath`` (``tests``), which children inherit.
A child opens its own store from a :class:`StoreSpec`, so one body serves every backend.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pytest_lrun.config.plan import Plan, load_plan
from pytest_lrun.store import Candidate, Run, RunStore
from pytest_lrun.store.files import FileStore

WAIT_S = 60.0  # bound on every barrier, queue and join wait

# mode -> (machine, key) of worker i: all contend on one key, on one machine, or not at all
MODES: dict[str, Callable[[int], tuple[str, str]]] = {
    "same-key": lambda i: ("m", "k"),
    "different-keys": lambda i: ("m", f"k{i}"),
    "different-machines": lambda i: (f"m{i}", "k"),
}

#: A plan of four entries: two directories on two machines.
MATRIX_PLAN = '[matrix]\ndirs = ["passing", "failing"]\nmachines = ["m1", "m2"]\n'


def write_plan(root: Path, text: str = MATRIX_PLAN) -> Plan:
    """``root/plan.toml`` holding ``text`` (beside its ``passing`` and ``failing`` dirs), loaded."""
    for name in ("passing", "failing"):
        (root / name).mkdir(parents=True, exist_ok=True)
    path = root / "plan.toml"
    path.write_text(text)
    return load_plan(path)


@dataclass(frozen=True)
class StoreSpec:
    """How to open a store of one backend in any process (picklable: spawned children get it).

    ``backend`` is ``"files"`` (the records live in ``state_dir``) or ``"postgres"`` (in the
    database at ``url``; ``state_dir`` holds this runner's files).
    """

    backend: str
    state_dir: str
    url: str | None = None

    def open(self) -> RunStore:
        """A new store object on the records, with this spec's state dir."""
        return self._open(self.state_dir)

    def another_runner(self) -> RunStore:
        """A second store object on the same records, as another CI runner opens it.

        The file store shares records only through its state dir; a database store gets a
        state dir of its own, as a runner on another host has.
        """
        if self.backend == "files":
            return self._open(self.state_dir)
        return self._open(f"{self.state_dir}-other-runner")

    def _open(self, state_dir: str) -> RunStore:
        if self.backend == "files":
            return FileStore(state_dir, durable=False)
        assert self.backend == "postgres" and self.url is not None, self
        # Imported here, so the file store's tests run wherever the database store cannot load.
        from pytest_lrun.store.postgres import PostgresStore

        return PostgresStore(self.url, Path(state_dir))


def contend(
    spec: StoreSpec, mode: str, worker: int, rounds: int, barrier: Any, report: Callable[[Any], None]
) -> None:
    """Body shared by the process and thread workers: one prepare per round, all released together."""
    try:
        store = spec.open()
        try:
            machine, key = MODES[mode](worker)
            for round_no in range(rounds):
                barrier.wait(WAIT_S)
                run, outcome = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}"))
                report((round_no, worker, outcome.value, run.id, os.getpid()))
        finally:
            store.close()
    except BaseException:
        report(("error", worker, traceback.format_exc()))
        barrier.abort()


def process_worker(spec: StoreSpec, mode: str, worker: int, rounds: int, barrier: Any, results: Any) -> None:
    contend(spec, mode, worker, rounds, barrier, results.put)


def hold_prepare_until_killed(spec: StoreSpec, holding: Any) -> None:
    """Stop inside ``prepare``'s critical section (in ``make``) until SIGKILLed."""
    store = spec.open()

    def make() -> Run:  # runs inside prepare's critical section, i.e. with the machine locked
        holding.set()
        time.sleep(600)
        return Run(test_dir="/never")

    store.prepare("m", "k-dead", make)


def hold_watch_until_killed(spec: StoreSpec, run_id: str, holding: Any) -> None:
    """Hold run ``run_id``'s watch lock until SIGKILLed."""
    store = spec.open()
    with store.watching(run_id) as held:
        if held:
            holding.set()
        time.sleep(600)


def create_until_killed(spec: StoreSpec, results: Any) -> None:
    """Create a run on machine ``m``, report its id, and live on until SIGKILLed."""
    store = spec.open()
    run, outcome = store.prepare("m", "k", lambda: Run(test_dir="/src/k"))
    results.put((outcome.value, run.id, os.getpid()))
    time.sleep(600)


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
    spec: StoreSpec, plan_path: str, worker: int, run_ids: list[str], barrier: Any, results: Any
) -> None:
    """Join batch ``ci-race`` and record entry ``w<worker>-e<n>`` as ``run_ids[n]``.

    All workers are released together.
    """
    try:
        plan = load_plan(plan_path)
        store = spec.open()
        try:
            barrier.wait(WAIT_S)
            store.batches.open(plan, "ci-race")
            for n, run_id in enumerate(run_ids):
                store.batches.record("ci-race", f"w{worker}-e{n}", run_id)
        finally:
            store.close()
        results.put(("ok", worker, os.getpid()))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        barrier.abort()


#: The fleet the placement races share: two machines of two slots each.
FLEET = (("f1", 2), ("f2", 2))


def place_worker(spec: StoreSpec, key: str, barrier: Any, results: Any) -> None:
    """Place one run of ``key`` on :data:`FLEET`, released with the others; report the answer."""
    try:
        store = spec.open()
        try:
            barrier.wait(WAIT_S)
            candidates = [Candidate(machine, key, slots) for machine, slots in FLEET]
            run, outcome = store.place(candidates, lambda c: Run(test_dir=f"/src/{key}"))
            results.put((key, outcome.value, run.id, run.machine))
        finally:
            store.close()
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()
