"""Crash points, long: the pytest host killed by SIGKILL at each point of a run's life, on both stores.

Usage: ``python bench/reliability.py [--rounds 20] [--store files|postgres|both] [--postgres URL]
[--lanes 3] [--point NAME ...]``, with the test engines of ``scripts/provision.sh``
(``LRUN_TEST_ENGINES``).

Each round is ``tests/integration/test_crash_points.py``'s :func:`crash_round`: a fresh
test directory, a ``pytest --lrun-machine`` killed at the point by
``LRUN_TEST_CRASH_AT`` (:mod:`pytest_lrun.faults`), the same command again, ``lrun
reap --age 0``, and the invariants checked against the store and the engine.
Rounds run in ``--lanes`` lanes at once: each lane is a machine of its own (the
lanes alternate between the test engines), so rounds never wait for each other's
slot. The file store lives in a temporary state dir; the PostgreSQL store
(``--postgres URL``, else ``LRUN_TEST_POSTGRES``; its role needs CREATEDB) in a
fresh database, dropped afterwards.

Prints one line per point and store: rounds, hosts killed at the point, lost
results, twin containers, stuck runs and orphan containers; all but the kills must
be 0, and every round's host must have been killed. A broken round prints what
the processes said. Exits 1 unless every line holds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# The round lives with the tests, which run it short; the database set-up is bench/store.py's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from lrun_procs import StoreSpec
from lrun_support import engine_urls, lrun_containers
from store import fresh_database, reachable
from test_crash_points import Lane, RoundResult, crash_round, write_project

from pytest_lrun.faults import POINTS


@dataclass
class Tally:
    """The rounds of one point on one store."""

    point: str
    store: str
    rounds: int = 0
    killed: int = 0
    lost: int = 0
    twins: int = 0
    stuck: int = 0
    orphans: int = 0
    broken: int = 0

    def add(self, result: RoundResult) -> None:
        self.rounds += 1
        self.killed += result.killed
        self.lost += len(result.lost)
        self.twins += len(result.twins)
        self.stuck += len(result.stuck)
        self.orphans += len(result.orphans)
        self.broken += not result.ok

    @property
    def ok(self) -> bool:
        return not self.broken and self.killed == self.rounds


@contextlib.contextmanager
def store_for(backend: str, state_dir: Path, admin_url: str | None) -> Iterator[StoreSpec]:
    """A store of ``backend`` for the matrix: a state dir, or a fresh database."""
    if backend == "files":
        yield StoreSpec("files", str(state_dir))
        return
    assert admin_url is not None
    with fresh_database(admin_url) as url:
        yield StoreSpec("postgres", str(state_dir), url)


def matrix(backend: str, points: list[str], rounds: int, lanes: int, admin_url: str | None) -> list[Tally]:
    """Every round of ``points`` on ``backend``, ``lanes`` at a time; the tallies in ``points`` order."""
    engines = engine_urls()
    workdir = Path(tempfile.mkdtemp(prefix=f"lrun-reliability-{backend}-"))
    machines = {f"crash{i}": engines[i % len(engines)] for i in range(lanes)}
    project = write_project(workdir / "project", machines)
    tallies = {point: Tally(point, backend) for point in points}
    with store_for(backend, workdir / "state", admin_url) as spec:
        free: queue.Queue[Lane] = queue.Queue()
        for name, url in machines.items():
            free.put(Lane(project, name, url, spec))

        def one(point: str) -> tuple[str, RoundResult]:
            lane = free.get()
            try:
                return point, crash_round(lane, point)
            finally:
                free.put(lane)

        try:
            with ThreadPoolExecutor(lanes) as pool:
                for point, result in pool.map(one, [p for p in points for _ in range(rounds)]):
                    tallies[point].add(result)
                    if not result.ok:  # said at once: a long run's first broken round is worth reading early
                        print(f"--- {point} on {backend}: {result}", file=sys.stderr, flush=True)
                        for note in result.notes:
                            print(note, file=sys.stderr, flush=True)
        finally:
            store = spec.open()
            try:
                run_ids = {run.id for run in store.list()}
            finally:
                store.close()
            lrun_containers(engines, run_ids, remove=True)  # whatever a broken round left
    if all(t.ok for t in tallies.values()):
        shutil.rmtree(workdir, ignore_errors=True)
    return [tallies[point] for point in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per point and store (default: 20)")
    parser.add_argument("--lanes", type=int, default=3, help="rounds at once, a machine each (default: 3)")
    parser.add_argument("--point", action="append", choices=POINTS, help="only this point (repeatable)")
    parser.add_argument("--store", choices=["files", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LRUN_TEST_POSTGRES"),
        help="a postgresql:// URL of a role that may CREATE DATABASE (default: $LRUN_TEST_POSTGRES)",
    )
    args = parser.parse_args(argv)
    points = args.point or list(POINTS)
    backends = ["files", "postgres"] if args.store == "both" else [args.store]
    if "postgres" in backends:
        if args.postgres:
            reachable(args.postgres)
        elif args.store == "postgres":
            raise SystemExit("bench: --store postgres needs --postgres URL or LRUN_TEST_POSTGRES")
        else:
            print("bench: no PostgreSQL URL (--postgres, LRUN_TEST_POSTGRES): the postgres store is skipped")
            backends.remove("postgres")
    tallies = [
        t for backend in backends for t in matrix(backend, points, args.rounds, args.lanes, args.postgres)
    ]
    columns = ("rounds", "killed", "lost", "twins", "stuck", "orphans")
    print(f"{'point':<20} {'store':<9} " + " ".join(f"{c:>7}" for c in columns))
    for t in tallies:
        print(
            f"{t.point:<20} {t.store:<9} {t.rounds:>7} {t.killed:>7} {t.lost:>7} {t.twins:>7} "
            f"{t.stuck:>7} {t.orphans:>7}"
        )
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
