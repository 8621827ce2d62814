"""Contention, long: the harness of ``tests/contention_model.py`` on both store backends.

Usage: ``python bench/contention.py [--rounds 200 | --quick] [--seed N] [--store files|postgres|both]
[--postgres URL]``

16 processes on 4 machines with slots mix placements, updates to terminal,
``list``, gc, hashing and batch joins for ``--rounds`` rounds, checked against the
store while they run and at every round's barrier (the invariants are listed in
``tests/contention_model.py``). The file store runs in a temporary state dir; the
PostgreSQL store (``--postgres URL``, else ``LRUN_TEST_POSTGRES``; its role needs
CREATEDB) in a fresh database, dropped afterwards. Without a URL the PostgreSQL
half is skipped, and said so.

Prints one line per store: processes, machines, rounds, operations done, their
rate and the invariant violations, which must be 0. A violation prints the seed,
the command that replays the same choices and the logged operations on the
offending runs, keeps the logs, and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The harness lives with the tests, which run it short; the database set-up is bench/store.py's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from contention_model import MACHINES, Config, Report, run
from lrun_procs import StoreSpec
from store import fresh_database, reachable


@contextlib.contextmanager
def spec_for(backend: str, state_dir: Path, admin_url: str | None) -> Iterator[StoreSpec]:
    """A store of ``backend`` for one harness run: a state dir, or a fresh database."""
    if backend == "files":
        yield StoreSpec("files", str(state_dir))
        return
    assert admin_url is not None
    with fresh_database(admin_url) as url:
        yield StoreSpec("postgres", str(state_dir), url)


def one(backend: str, config: Config, admin_url: str | None) -> Report:
    """Run the harness on ``backend``; its temporary folder goes unless a violation needs its logs."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lrun-contention-{backend}-"))
    with spec_for(backend, workdir / "state", admin_url) as spec:
        report = run(spec, config, workdir / "work")
    if report.violations:
        print(report.describe(), file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds of every process (default: 200)")
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run")
    parser.add_argument("--seed", type=int, default=1, help="picks the operations (default: 1)")
    parser.add_argument("--processes", type=int, default=16, help="worker processes (default: 16)")
    parser.add_argument("--ops", type=int, default=6, help="operations per process and round (default: 6)")
    parser.add_argument("--store", choices=["files", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LRUN_TEST_POSTGRES"),
        help="a postgresql:// URL of a role that may CREATE DATABASE (default: $LRUN_TEST_POSTGRES)",
    )
    args = parser.parse_args(argv)
    config = Config(
        seed=args.seed,
        rounds=5 if args.quick else args.rounds,
        processes=args.processes,
        ops_per_round=args.ops,
    )
    backends = ["files", "postgres"] if args.store == "both" else [args.store]
    if "postgres" in backends:
        if args.postgres:
            reachable(args.postgres)
        elif args.store == "postgres":
            raise SystemExit("bench: --store postgres needs --postgres URL or LRUN_TEST_POSTGRES")
        else:
            print("bench: no PostgreSQL URL (--postgres, LRUN_TEST_POSTGRES): the postgres store is skipped")
            backends.remove("postgres")
    reports = [one(backend, config, args.postgres) for backend in backends]
    print(f"seed {config.seed}, {config.ops_per_round} operations per process and round")
    columns = (
        "processes",
        "machines",
        "rounds",
        "operations",
        "ops/s",
        "gc overlap",
        "exceptions",
        "violations",
    )
    print(f"{'store':<10} " + " ".join(f"{c:>10}" for c in columns))
    for r in reports:
        print(
            f"{r.backend:<10} {r.config.processes:>10} {len(MACHINES):>10} {r.config.rounds:>10} "
            f"{r.operations:>10} {r.operations / r.seconds:>10.0f} {r.overlapping_gcs:>10} "
            f"{r.exceptions:>10} {len(r.violations):>10}"
        )
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
