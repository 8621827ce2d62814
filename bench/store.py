"""Benchmark: does ``prepare`` stay flat as finished runs pile up, on both store backends?

Usage: ``python bench/store.py [--quick] [--postgres URL]``

Each backend -- the file store, and the PostgreSQL store when a database URL is
given (``--postgres URL``, else ``LRUN_TEST_POSTGRES``) -- is measured with 10 and
with 10,000 stored terminal runs on the benchmarked machine, set up through the
store's own ``insert`` from 4 processes (the file store without fsync). The
PostgreSQL store gets a fresh database for each size, created from the given URL
(its role needs CREATEDB) and dropped afterwards, even when the benchmark fails.
Without a URL the PostgreSQL half is skipped, and said so.

Measured: the latency of one ``prepare`` call, with each backend's durable writes
(fsync for the file store, synchronous commits for PostgreSQL):

* single process -- ``prepare`` on a fresh key (outcome CREATED), then ``end`` as
  completed, which is not timed;
* 8 contending processes on the same machine and key -- each loops ``prepare``
  (including the wait for the machine's lock); whoever gets CREATED ends the run
  as completed (not timed), so the machine keeps turning over. The REUSE and the
  CREATED calls are reported apart, because their mix varies from run to run.

Prints the median and p90 of each case and, for PostgreSQL, one PASS/FAIL line per
target: its 10,000/10 median ratio within 1.5x, and its median within 3x of the
file store's in this run, for each case (and size). Exits 1 when a target fails.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import secrets
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_lrun.config.values import parse_store_url, redact_url
from pytest_lrun.store import Decision, Run, RunStore, Status, open_store
from pytest_lrun.store.files import FileStore

MACHINE = "bench-machine"
SIZES = (10, 10_000)
PROCESSES = 8
FILLERS = 4  # processes that store the setup runs: a commit's wait on the disk overlaps the others'
TARGET_GROWTH = 1.5  # PostgreSQL: median with 10,000 runs / median with 10 runs
TARGET_VS_FILE = 3.0  # PostgreSQL median / the file store's median, same case and size
DROP_PATIENCE_S = 60  # how long the bench tries to drop its database through a server outage
CTX = multiprocessing.get_context("spawn")

CASES = {
    "single": "1 process: CREATED (+end)",
    "contended-reuse": f"{PROCESSES} processes, one machine+key: REUSE",
    "contended-created": f"{PROCESSES} processes, one machine+key: CREATED",
}


def connect(state_dir: str, url: str | None, *, setup: bool = False) -> RunStore:
    """The benchmarked store: the database at ``url``, else the file store in ``state_dir``.

    ``setup`` skips the file store's fsyncs; the database commits as it always does.
    """
    if url is None:
        return FileStore(state_dir, durable=not setup)
    return open_store(Path(state_dir), url)


# -- process bodies (module level, so spawned processes can import them) -----------


def _fill_part(state_dir: str, url: str | None, first: int, stop: int, count: int) -> None:
    """Store the terminal runs ``first`` to ``stop - 1`` of ``count`` on MACHINE."""
    store = connect(state_dir, url, setup=True)
    now = time.time()
    try:
        for i in range(first, stop):
            store.insert(
                Run(
                    machine=MACHINE,
                    test_dir=f"/src/tests/dir{i}",
                    key=f"old-{i}",
                    test_dir_hash=f"old-{i}",
                    status=Status.COMPLETED,
                    exit_code=0,
                    created_at=now - count + i,
                    ended_at=now - count + i + 0.5,
                )
            )
    finally:
        store.close()


def _contender(state_dir: str, url: str | None, cycles: int, barrier: Any) -> list[tuple[str, float]]:
    """(outcome, latency in s) of ``cycles`` calls of ``prepare`` on MACHINE's one shared key."""
    store = connect(state_dir, url)
    samples: list[tuple[str, float]] = []
    try:
        barrier.wait(120)  # every contender connected and imported: start together
        for _ in range(cycles):
            started = time.perf_counter()
            run, outcome = store.prepare(MACHINE, "shared", lambda: Run(test_dir="/src/tests/shared"))
            samples.append((outcome.value, time.perf_counter() - started))
            if outcome is Decision.CREATED:
                store.end(run, Status.COMPLETED)
    finally:
        store.close()
    return samples


def _child(body: Callable[..., Any], args: tuple[Any, ...], results: Any) -> None:
    """Run ``body(*args)`` and send its result, or its error, to the parent."""
    try:
        results.put((body(*args), None))
    except BaseException as exc:
        results.put((None, repr(exc)))


def in_processes(body: Callable[..., Any], arglists: list[tuple[Any, ...]], timeout: float) -> list[Any]:
    """``body``'s results, from one spawned process per argument tuple; every process is reaped.

    :raises RuntimeError: a process failed, died, or all took longer than ``timeout`` seconds
    """
    results = CTX.Queue()
    procs = [CTX.Process(target=_child, args=(body, args, results), daemon=True) for args in arglists]
    outputs: list[Any] = []
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        while len(outputs) < len(procs):
            try:
                output, error = results.get(timeout=1)
            except queue.Empty:
                dead = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    what = f"exit codes {dead}" if dead else f"no answer within {timeout:.0f}s"
                    raise RuntimeError(f"a {body.__name__} process failed: {what}") from None
                continue
            if error is not None:
                raise RuntimeError(f"a {body.__name__} process failed: {error}")
            outputs.append(output)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():  # stuck behind a failed sibling (say, at the barrier)
                proc.terminate()
                proc.join(10)
        results.close()
        results.join_thread()
    return outputs


# -- one measurement ------------------------------------------------------------------


@dataclass
class Figures:
    """One backend's latencies (s) at one size, by case, and the contended outcomes' mix."""

    latencies: dict[str, list[float]]
    outcomes: Counter[str]


def fill(state_dir: str, url: str | None, count: int) -> None:
    """Store ``count`` finished runs on MACHINE through the store's ``insert``."""
    bounds = [count * part // FILLERS for part in range(FILLERS + 1)]
    arglists = [(state_dir, url, bounds[p], bounds[p + 1], count) for p in range(FILLERS)]
    in_processes(_fill_part, arglists, timeout=600)


def single_process(state_dir: str, url: str | None, cycles: int) -> list[float]:
    """Latencies (s) of ``prepare`` -> CREATED; each run then ends completed, untimed."""
    store = connect(state_dir, url)
    latencies: list[float] = []
    try:
        for i in range(cycles + 5):  # the first 5 warm caches and are dropped
            started = time.perf_counter()
            run, outcome = store.prepare(MACHINE, f"single-{i}", lambda: Run(test_dir="/src/tests/new"))
            elapsed = time.perf_counter() - started
            assert outcome is Decision.CREATED, outcome
            store.end(run, Status.COMPLETED)
            if i >= 5:
                latencies.append(elapsed)
    finally:
        store.close()
    return latencies


def measure(url: str | None, size: int, single_cycles: int, contended_cycles: int) -> Figures:
    """Fill a fresh store (the file store, or the empty database at ``url``) and time ``prepare``."""
    backend = "file store" if url is None else "PostgreSQL"
    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        state_dir = str(Path(tmp) / "state")
        started = time.perf_counter()
        fill(state_dir, url, size)
        if hasattr(os, "sync"):
            os.sync()  # do not charge the measured writes with flushing the setup's
        took = time.perf_counter() - started
        print(f"{backend}: stored {size:>6,} terminal runs in {took:.1f}s", flush=True)
        single = single_process(state_dir, url, single_cycles)
        barrier = CTX.Barrier(PROCESSES)
        samples = [
            sample
            for got in in_processes(
                _contender, [(state_dir, url, contended_cycles, barrier)] * PROCESSES, timeout=600
            )
            for sample in got
        ]
        store = connect(state_dir, url)
        try:
            problems = store.check()
        finally:
            store.close()
        if problems:
            raise SystemExit(f"bench: {backend} invariants broken after the benchmark: {problems}")
    return Figures(
        latencies={
            "single": single,
            "contended-reuse": [latency for outcome, latency in samples if outcome == "reuse"],
            "contended-created": [latency for outcome, latency in samples if outcome == "created"],
        },
        outcomes=Counter(outcome for outcome, _ in samples),
    )


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database made through ``admin_url``; dropped on the way out."""
    import psycopg
    from psycopg import sql

    name = f"lrun_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urllib.parse.urlunsplit(urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        deadline = time.monotonic() + DROP_PATIENCE_S
        while True:
            try:
                with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
                    # FORCE: a contender that was terminated may still hold a session there.
                    conn.execute(drop)
                break
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and time.monotonic() < deadline:
                    # Say, a server restarting: wait for it.
                    time.sleep(1)
                    continue
                print(f"bench: could not drop database {name}, drop it by hand: {exc}", file=sys.stderr)
                break


def reachable(admin_url: str) -> None:
    """Fail at once, in one line, when the database cannot be used (before minutes of file store work).

    :raises SystemExit: psycopg is missing, or the database does not answer
    """
    try:
        import psycopg
    except ImportError:
        raise SystemExit("bench: --postgres needs psycopg: pip install 'pytest-lrun[postgres]'") from None
    try:
        psycopg.connect(admin_url, connect_timeout=10).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise SystemExit(f"bench: PostgreSQL at {redact_url(admin_url)} does not answer: {reason}") from None


# -- the report -----------------------------------------------------------------------


def median_p90(values: list[float]) -> tuple[float, float]:
    if not values:
        raise SystemExit("bench: a case got no samples (rerun without --quick)")
    median = statistics.median(values)
    return median, statistics.quantiles(values, n=10)[-1] if len(values) > 1 else median


def report(results: dict[str, dict[int, Figures]]) -> list[tuple[bool, str]]:
    """Print the table; returns the PostgreSQL targets' (passed, line) verdicts."""
    small, large = SIZES
    medians: dict[tuple[str, str, int], float] = {}
    print()
    print(f"prepare latency in ms: median [p90], machine {MACHINE!r}, durable writes")
    print(f"{'backend':<12}{'case':<46}{f'{small:,} runs':>16}{f'{large:,} runs':>16}{'ratio':>8}")
    for backend, by_size in results.items():
        for case, label in CASES.items():
            cells = []
            for size in SIZES:
                median, p90 = median_p90(by_size[size].latencies[case])
                medians[backend, case, size] = median
                cells.append(f"{median * 1e3:.2f} [{p90 * 1e3:.2f}]")
            growth = medians[backend, case, large] / medians[backend, case, small]
            print(f"{backend:<12}{label:<46}{cells[0]:>16}{cells[1]:>16}{growth:>7.2f}x")
    for backend, by_size in results.items():
        for size in SIZES:
            mix = ", ".join(f"{name} {count}" for name, count in sorted(by_size[size].outcomes.items()))
            print(f"  {backend} contended outcomes with {size:,} stored runs: {mix}")
    verdicts = []
    if "postgresql" in results:
        for case in CASES:
            growth = medians["postgresql", case, large] / medians["postgresql", case, small]
            verdicts.append(
                (
                    growth <= TARGET_GROWTH,
                    f"postgresql {case}: median {large:,}/{small:,} runs = {growth:.2f}x"
                    f" (target within {TARGET_GROWTH}x)",
                )
            )
            for size in SIZES:
                versus = medians["postgresql", case, size] / medians["file", case, size]
                verdicts.append(
                    (
                        versus <= TARGET_VS_FILE,
                        f"postgresql {case}, {size:,} runs: median vs the file store's = {versus:.2f}x"
                        f" (target within {TARGET_VS_FILE}x)",
                    )
                )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer cycles (a smoke run, noisier numbers)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        type=parse_store_url,
        default=os.environ.get("LRUN_TEST_POSTGRES") or None,
        help="a postgresql:// URL of a role that may CREATE DATABASE (default: $LRUN_TEST_POSTGRES)",
    )
    args = parser.parse_args(argv)
    single_cycles, contended_cycles = (60, 30) if args.quick else (400, 300)
    admin_url: str | None = args.postgres
    if admin_url is not None:
        reachable(admin_url)

    if hasattr(os, "getloadavg"):  # the figures mean little on a machine busy with other work
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    results = {"file": {size: measure(None, size, single_cycles, contended_cycles) for size in SIZES}}
    if admin_url is not None:
        results["postgresql"] = {}
        for size in SIZES:
            with fresh_database(admin_url) as url:
                results["postgresql"][size] = measure(url, size, single_cycles, contended_cycles)
    verdicts = report(results)
    print()
    if admin_url is None:
        print("PostgreSQL half skipped: no database URL (give --postgres URL or set LRUN_TEST_POSTGRES)")
    for passed, line in verdicts:
        print(f"{'PASS' if passed else 'FAIL'} {line}")
    return 0 if all(passed for passed, _ in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
