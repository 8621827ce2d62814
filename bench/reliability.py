"""The reliability suite, long: crash points, contention and hostile inputs, in one table.

Usage: ``python bench/reliability.py [--rounds 20] [--contention-rounds 200] [--quick]
[--store files|postgres|both] [--postgres URL] [--lanes 3] [--point NAME ...]``, with the test
engines of ``scripts/provision.sh`` (``LRUN_TEST_ENGINES``). CI runs the same three parts short
(``tests/integration/test_crash_points.py``, ``test_contention.py`` and the hostile-input tests);
docs/reliability.md shows this command's figures. Three parts:

* crash points (below);
* contention: ``bench/contention.py``'s harness, 16 processes on 4 machines with slots, for
  ``--contention-rounds`` rounds on each store: operations and invariant violations;
* hostile inputs: the hostile-input and fuzz tests (``tests/unit/test_hostile_streams.py``,
  ``test_hostile_dirs.py``, ``test_fuzz_inputs.py``, ``tests/integration/test_hostile_artifacts.py``):
  crafted cases and generated inputs tried, and how many got through.

Crash points: the pytest host killed by SIGKILL at each point of a run's life, on both stores.

Each round is ``tests/integration/test_crash_points.py``'s :func:`crash_round`: a fresh
test directory, a ``pytest --lrun-machine`` killed at the point by
``LRUN_TEST_CRASH_AT`` (:mod:`pytest_lrun.core.faults`), the same command again, ``lrun
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
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# The round lives with the tests, which run it short; the database set-up is bench/store.py's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from contention import one as contend
from contention import spec_for
from contention_model import MACHINES
from contention_model import Config as ContentionConfig
from lrun_support import engine_urls, lrun_containers
from store import reachable
from test_crash_points import Lane, RoundResult, crash_round, write_project

from pytest_lrun.core.faults import POINTS


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


def matrix(backend: str, points: list[str], rounds: int, lanes: int, admin_url: str | None) -> list[Tally]:
    """Every round of ``points`` on ``backend``, ``lanes`` at a time; the tallies in ``points`` order."""
    engines = engine_urls()
    workdir = Path(tempfile.mkdtemp(prefix=f"lrun-reliability-{backend}-"))
    machines = {f"crash{i}": engines[i % len(engines)] for i in range(lanes)}
    project = write_project(workdir / "project", machines)
    tallies = {point: Tally(point, backend) for point in points}
    with spec_for(backend, workdir / "state", admin_url) as spec:
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
    parser.add_argument(
        "--contention-rounds", type=int, default=200, help="rounds of each contention process (default: 200)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 crash rounds, 5 contention rounds: a smoke run"
    )
    parser.add_argument("--lanes", type=int, default=3, help="rounds at once, a machine each (default: 3)")
    parser.add_argument("--point", action="append", choices=POINTS, help="only this point (repeatable)")
    parser.add_argument("--store", choices=["files", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LRUN_TEST_POSTGRES"),
        help="a postgresql:// URL of a role that may CREATE DATABASE (default: $LRUN_TEST_POSTGRES)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.contention_rounds = 2, 5
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
    config = ContentionConfig(seed=1, rounds=args.contention_rounds)
    contention = [contend(backend, config, args.postgres) for backend in backends]
    hostile = hostile_inputs()

    columns = ("rounds", "killed", "lost", "twins", "stuck", "orphans")
    print(f"\ncrash points\n{'point':<20} {'store':<9} " + " ".join(f"{c:>7}" for c in columns))
    for t in tallies:
        print(
            f"{t.point:<20} {t.store:<9} {t.rounds:>7} {t.killed:>7} {t.lost:>7} {t.twins:>7} "
            f"{t.stuck:>7} {t.orphans:>7}"
        )
    print(
        f"\ncontention (seed {config.seed})\n{'store':<9} {'processes':>9} {'machines':>8} "
        f"{'rounds':>6} {'operations':>10} {'violations':>10}"
    )
    for r in contention:
        print(
            f"{r.backend:<9} {r.config.processes:>9} {len(MACHINES):>8} {r.config.rounds:>6} "
            f"{r.operations:>10} {len(r.violations):>10}"
        )
    print(f"\nhostile inputs\n{'crafted cases':>14} {'generated':>10} {'got through':>12}")
    print(f"{hostile.cases:>14} {hostile.generated:>10} {hostile.failed:>12}")
    held = all(t.ok for t in tallies) and not any(r.violations for r in contention) and hostile.ok
    return 0 if held else 1


@dataclass(frozen=True)
class Hostile:
    """The hostile-input tests' tally: crafted cases, inputs hypothesis generated, failures."""

    cases: int
    generated: int
    failed: int
    ok: bool


HOSTILE_TESTS = (
    "tests/unit/test_hostile_streams.py",
    "tests/unit/test_hostile_dirs.py",
    "tests/unit/test_fuzz_inputs.py",
    "tests/integration/test_hostile_artifacts.py",
)


def hostile_inputs() -> Hostile:
    """Run the hostile-input tests once; a test is a crafted case, or a property of generated inputs."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            "-rf",
            *HOSTILE_TESTS,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    generated = sum(int(n) for n in re.findall(r"- (\d+) passing examples", done.stdout))
    properties = len(re.findall(r"- (\d+) passing examples", done.stdout))
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?)", done.stdout)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if done.returncode != 0:
        print(done.stdout[-4000:], file=sys.stderr)
    return Hostile(counts.get("passed", 0) + failed - properties, generated, failed, done.returncode == 0)


if __name__ == "__main__":
    sys.exit(main())
