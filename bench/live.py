"""Benchmark: what do live inner results cost, and how soon does the host see each one?

Usage: ``python bench/live.py [--quick]`` (needs the local engine and the
``lrun-python-current:latest`` image, whose current pytest stamps each report with
``start``/``stop``: ``scripts/provision.sh``).

Measured in the same run, on the engine of the environment (machine ``local``):

* the reporter's cost -- a suite of 2,000 trivial tests (20 modules of 100)
  dispatched with ``pytest --lrun-machine=local``, which ships the inner reporter,
  next to the same suite behind ``sh -c "exec python3 -m pytest ..."`` with the same
  inner pytest arguments: a command the dispatcher does not take for pytest, so
  the run has no reporter and the host reads the inner JUnit at the end (the
  baseline). Median of N each, the two alternating so that a change in the shared
  machine's load hits both alike;
* the report delay -- for each inner test's ``call`` report, how long after the
  inner test ended (the report's ``stop``: the container's wall clock, which is
  the host's kernel clock) the host fires ``pytest_runtest_logreport``. A probe
  plugin loaded into the host pytest only (``-p``; it is not in the dispatched
  directory) records it for tests that sleep 0.02 s each. Median and p90.

* a huge suite -- 100,000 tests (10,000 with ``--quick``), one in a hundred
  failing, with pytest's default traceback style: the host's wall time and peak
  memory (its ``ru_maxrss``) dispatched, next to the same suite run by the host's
  own pytest locally. The host fires one report per phase of every inner test, and
  pytest's failure summary looks up each failure's teardown by scanning them all
  (F x N: 20,000 failures of 200,000 tests never finished). Local pytest pays that
  too (one in ten failing, its own run of this suite did not end in 8 minutes),
  so the failures are fewer here; the dispatched host finds them in an index.

Targets: wall time with the reporter at most 1.1x the baseline's; median delay
under 0.5 s; the huge suite dispatched within 3x local pytest's wall time. A host
report whose ``stop`` is missing or does not span the inner test's sleep (a report
made on the host, not the inner one) is said so instead of a delay. Prints a table
and PASS/MISS lines; always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _timing import timed

from pytest_lrun.config.settings import DEFAULT_COMMAND

IMAGE = "lrun-python-current:latest"
RATIO_TARGET = 1.1
HUGE_TARGET = 3.0
HUGE_MODULES = 100
DELAY_TARGET_S = 0.5
MODULES, TESTS_PER_MODULE = 20, 100
SLEEP_S = 0.02
PROBE_MODULE = "lrun_live_probe"
PROBE_OUT = "BENCH_LIVE_PROBE_OUT"  # the probe's output file

# Loaded into the host pytest with -p: one line per inner call report, [host time, start, stop].
PROBE = f"""
import json
import os
import time

_seen = []


def pytest_runtest_logreport(report):
    if report.when == "call" and not getattr(report, "lrun_run", False):  # a run's own report: no test
        _seen.append([time.time(), getattr(report, "start", None), getattr(report, "stop", None)])


def pytest_unconfigure(config):
    with open(os.environ["{PROBE_OUT}"], "w") as out:
        json.dump(_seen, out)
"""


def write_suite(root: Path) -> None:
    root.mkdir()
    body = "".join(f"\n\ndef test_{n}():\n    pass\n" for n in range(TESTS_PER_MODULE))
    for m in range(MODULES):
        (root / f"test_m{m:02}.py").write_text(body)


def write_sleepers(root: Path, count: int) -> None:
    root.mkdir()
    (root / "test_sleep.py").write_text(
        textwrap.dedent(
            f"""
            import time

            import pytest

            @pytest.mark.parametrize("n", range({count}))
            def test_sleep(n):
                time.sleep({SLEEP_S})
            """
        )
    )


def write_huge(root: Path, tests: int) -> None:
    """``tests`` trivial tests in :data:`HUGE_MODULES` modules, one in a hundred failing."""
    root.mkdir()
    per_module = tests // HUGE_MODULES
    body = "".join(
        f"\n\ndef test_{n}():\n    assert {n % 100} != 3, 'one in a hundred fails'\n"
        for n in range(per_module)
    )
    for m in range(HUGE_MODULES):
        (root / f"test_h{m:03}.py").write_text(body)


def timed_rss(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one command (its own rusage, not its siblings')."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, _status, usage = os.wait4(process.pid, 0)
    process.returncode = 1  # reaped above
    return time.monotonic() - started, usage.ru_maxrss / 1024


def delays(seen: list[list[float | None]]) -> tuple[list[float], str]:
    """Seconds from each inner test's end to its host report, or why the reports cannot tell."""
    stamped = [(now, start, stop) for now, start, stop in seen if start and stop]
    if len(stamped) < len(seen) or not seen:
        return [], f"{len(seen) - len(stamped)} of {len(seen)} host call reports have no start/stop"
    # The inner call sleeps SLEEP_S: a shorter span is a report timed on the host, after the fact.
    hosted = sum(1 for _, start, stop in stamped if stop - start < SLEEP_S)
    if hosted:
        return [], f"{hosted} of {len(seen)} host call reports are shorter than the inner sleep (host-made)"
    return [now - stop for now, _, stop in stamped], ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sleepers (a smoke run)")
    args = parser.parse_args()
    repeats, sleepers, huge = (2, 100, 10_000) if args.quick else (5, 200, 100_000)

    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        root = Path(tmp)
        write_suite(root / "suite")
        write_sleepers(root / "sleepers", sleepers)
        (root / f"{PROBE_MODULE}.py").write_text(PROBE)
        probe_out = root / "probe.json"
        env = {**os.environ, "LRUN_STATE_DIR": str(root / "state"), PROBE_OUT: str(probe_out)}
        # `python -m pytest` puts the working directory (root) on sys.path: that is how -p finds the probe.
        pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lrun-machine=local"]
        pytest_cmd += [f"--lrun-image={IMAGE}", "--lrun-reuse=never"]
        without_reporter = f"--lrun-command=sh -c {shlex.quote('exec ' + shlex.join(DEFAULT_COMMAND))}"

        with_times, without_times = [], []
        for _ in range(repeats):
            with_times.append(timed([*pytest_cmd, "suite"], root, env))
            without_times.append(timed([*pytest_cmd, without_reporter, "suite"], root, env))

        live_wall = timed([*pytest_cmd, "-p", PROBE_MODULE, "sleepers"], root, env)
        seen = json.loads(probe_out.read_text())

        write_huge(root / "huge", huge)
        local_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "huge"]
        local_wall, local_rss = timed_rss(local_cmd, root, env)
        huge_wall, huge_rss = timed_rss([*pytest_cmd, "huge"], root, env)

    with_median, without_median = statistics.median(with_times), statistics.median(without_times)
    tests = MODULES * TESTS_PER_MODULE
    rows = [
        (f"{tests} trivial tests, with the reporter", with_median),
        (f"{tests} trivial tests, without (baseline)", without_median),
        (f"{sleepers} tests of {SLEEP_S}s, with the probe", live_wall),
    ]
    print(f"{'measure (median of ' + str(repeats) + ')':48} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:48} {seconds:8.3f}")
    ratio = with_median / without_median
    print(
        f"\nwall time with / without the reporter: {ratio:.2f}x (target <= {RATIO_TARGET}x): "
        f"{'PASS' if ratio <= RATIO_TARGET else 'MISS'}"
    )
    print(
        f"\n{huge:,} tests, 1 in 100 failing, default --tb: dispatched {huge_wall:.1f}s and "
        f"{huge_rss:.0f} MiB on the host; local pytest {local_wall:.1f}s and {local_rss:.0f} MiB"
    )
    huge_ratio = huge_wall / local_wall
    print(
        f"huge suite, dispatched / local wall time: {huge_ratio:.2f}x (target <= {HUGE_TARGET}x): "
        f"{'PASS' if huge_ratio <= HUGE_TARGET else 'MISS'}; host memory {huge_rss / local_rss:.2f}x local's"
    )
    measured, why_not = delays(seen)
    if not measured:
        print(f"report delay: not measured, {why_not}: MISS")
        return
    median = statistics.median(measured)
    p90 = statistics.quantiles(measured, n=10)[-1]
    print(
        f"report delay, inner test's end to host report ({len(measured)} reports): median {median:.3f}s, "
        f"p90 {p90:.3f}s (target median < {DELAY_TARGET_S}s): {'PASS' if median < DELAY_TARGET_S else 'MISS'}"
    )


if __name__ == "__main__":
    main()
