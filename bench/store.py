"""Benchmark: does ``RunStore.prepare`` stay flat as finished runs pile up?

Usage: ``python bench/store.py [--quick]``

For 10 and for 10,000 stored terminal runs on the benchmarked machine (written
directly with ``RunStore.insert``, without fsync, to set up fast), it measures
the median latency of one ``prepare`` call, with the store's default durable
(fsynced) writes:

* single process -- the cycle is ``prepare`` on a fresh key (outcome CREATED:
  the lock, the index read, one record write, one index write) followed by
  ``update`` to completed, which is not timed;
* 8 contending processes on the same machine and key -- each loops ``prepare``
  (including the wait for the machine lock); whoever gets CREATED marks the run
  completed (not timed), so the machine keeps turning over. The REUSE calls
  (lock, index read, one record read) and the CREATED calls are reported
  apart, because their mix varies from run to run.

Target: the 10k/10 ratio of the medians within 1.5x. Prints a table and one
PASS/MISS line per case; always exits 0 (timings are machine-dependent).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pytest_lrun.store import Decision, FileStore, Run, Status

MACHINE = "bench-machine"
SIZES = (10, 10_000)
PROCESSES = 8
TARGET_RATIO = 1.5
CTX = multiprocessing.get_context("spawn")


def fill(state_dir: Path, count: int) -> None:
    """Store ``count`` finished runs on MACHINE (no fsync: setup only)."""
    store = FileStore(state_dir, durable=False)
    now = time.time()
    for i in range(count):
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


def single_process(state_dir: Path, cycles: int) -> list[float]:
    """Latencies (s) of ``prepare`` -> CREATED; each run is then completed, untimed."""
    store = FileStore(state_dir)
    latencies: list[float] = []
    for i in range(cycles + 5):  # the first 5 warm caches and are dropped
        started = time.perf_counter()
        run, outcome = store.prepare(MACHINE, f"single-{i}", lambda: Run(test_dir="/src/tests/new"))
        elapsed = time.perf_counter() - started
        assert outcome is Decision.CREATED, outcome
        run.status = Status.COMPLETED
        store.update(run)
        if i >= 5:
            latencies.append(elapsed)
    return latencies


def _contender(state_dir: str, cycles: int, barrier: Any, results: Any) -> None:
    store = FileStore(state_dir)
    samples: list[tuple[str, float]] = []
    try:
        barrier.wait(120)
        for _ in range(cycles):
            started = time.perf_counter()
            run, outcome = store.prepare(MACHINE, "shared", lambda: Run(test_dir="/src/tests/shared"))
            samples.append((outcome.value, time.perf_counter() - started))
            if outcome is Decision.CREATED:
                run.status = Status.COMPLETED
                store.update(run)
        results.put((samples, None))
    except BaseException as exc:
        results.put(([], repr(exc)))


def contended(state_dir: Path, cycles: int) -> list[tuple[str, float]]:
    """(outcome, latency in s) of every ``prepare`` from PROCESSES processes hammering one machine."""
    barrier = CTX.Barrier(PROCESSES + 1)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=_contender, args=(str(state_dir), cycles, barrier, results), daemon=True)
        for _ in range(PROCESSES)
    ]
    samples: list[tuple[str, float]] = []
    try:
        for proc in procs:
            proc.start()
        barrier.wait(120)
        for _ in procs:
            got, error = results.get(timeout=600)
            if error is not None:
                raise RuntimeError(f"a contending process failed: {error}")
            samples.extend(got)
    finally:
        barrier.abort()
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        results.close()
        results.join_thread()
    return samples


CASES = {
    "single": "1 process: CREATED (+complete)",
    "contended-reuse": f"{PROCESSES} processes, one machine+key: REUSE",
    "contended-created": f"{PROCESSES} processes, one machine+key: CREATED",
}


def measure(
    size: int, single_cycles: int, contended_cycles: int
) -> tuple[dict[str, list[float]], Counter[str]]:
    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        started = time.perf_counter()
        fill(state_dir, size)
        if hasattr(os, "sync"):
            os.sync()  # do not charge the measured fsyncs with flushing the setup's writes
        print(f"stored {size:>6,} terminal runs in {time.perf_counter() - started:.1f}s", flush=True)
        single = single_process(state_dir, single_cycles)
        samples = contended(state_dir, contended_cycles)
        problems = FileStore(state_dir).check()
        if problems:
            raise SystemExit(f"store invariants broken after the benchmark: {problems}")
    latencies = {
        "single": single,
        "contended-reuse": [latency for outcome, latency in samples if outcome == "reuse"],
        "contended-created": [latency for outcome, latency in samples if outcome == "created"],
    }
    return latencies, Counter(outcome for outcome, _ in samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer cycles (a smoke run, noisier numbers)")
    args = parser.parse_args(argv)
    single_cycles, contended_cycles = (60, 30) if args.quick else (400, 100)

    results = {size: measure(size, single_cycles, contended_cycles) for size in SIZES}
    small, large = SIZES
    print()
    print(f"RunStore.prepare latency in ms (median, p90 in brackets), machine {MACHINE!r}, durable writes")
    print(f"{'case':<46}{small:>16,}{large:>16,}{'ratio':>8}")
    verdicts = []
    for case, label in CASES.items():
        cells = []
        for size in SIZES:
            values = results[size][0][case]
            median = statistics.median(values)
            p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else median
            cells.append((median, f"{median * 1e3:.2f} [{p90 * 1e3:.2f}]"))
        ratio = cells[1][0] / cells[0][0]
        print(f"{label:<46}{cells[0][1]:>16}{cells[1][1]:>16}{ratio:>7.2f}x")
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        verdicts.append(
            f"{verdict} {case}: median {large:,}/{small:,} = {ratio:.2f}x (target within {TARGET_RATIO}x)"
        )
    for size in SIZES:
        mix = ", ".join(f"{name} {count}" for name, count in sorted(results[size][1].items()))
        print(f"  contended outcomes with {size:,} stored runs: {mix}")
    print()
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
