"""Benchmark: what does a rerun of 1 failed inner test out of 500 cost, against rerunning the whole dir?

Usage: ``python bench/flaky.py [--quick]`` (needs the local engine and the
``lrun-python:bookworm`` image: ``scripts/provision.sh``).

A directory of 500 inner tests, each taking 10 ms, one of which fails unless it runs
in a rerun (it reads ``LRUN_ATTEMPT``, which a rerun's container gets). Each round runs
``pytest DIR --lrun-flaky-attempts=2``: one run of the whole directory, then a rerun of
the one failed test as a run of its own (exit 0, the test named flaky). From the two
runs' records (created to ended: placing, shipping, the container, reading back):

* whole -- the first run: what a rerun of the whole dir costs;
* rerun -- the run of the failed test alone.

It also times whole invocations, in turns: ``pytest DIR`` (exit 1) against the same with
``--lrun-flaky-attempts=2``; on a busy machine their difference is noisier than the
records. Prints the medians and the ratio rerun / whole; the target is under 0.5 (a
rerun costs a container's start and one test, not the suite). Always exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pytest_lrun.store import Run
from pytest_lrun.store.files import FileStore

IMAGE = "lrun-python:bookworm"
TESTS = 500
TARGET_RATIO = 0.5

SUITE = """
    import os
    import time

    import pytest


    @pytest.mark.parametrize("n", range({tests} - 1))
    def test_steady(n):
        time.sleep(0.01)


    def test_flaky():
        time.sleep(0.01)
        assert os.environ.get("LRUN_ATTEMPT"), "fails unless rerun"
"""


def session(cmd: list[str], cwd: Path, env: dict[str, str], expect: int) -> float:
    """Wall seconds of one pytest invocation that must exit ``expect``."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {done.returncode}, not {expect}:\n{done.stdout}")
    return elapsed


def run_times(state_dir: Path) -> tuple[float, float]:
    """Seconds from created to ended of the newest rerun and of the run it reran."""
    runs = {run.id: run for run in FileStore(state_dir).list()}
    rerun = max((r for r in runs.values() if r.retry_of), key=lambda r: r.created_at or 0.0)
    first = runs[rerun.retry_of or ""]

    def took(run: Run) -> float:
        return (run.ended_at or 0.0) - (run.created_at or 0.0)

    return took(first), took(rerun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    rounds = 2 if parser.parse_args().quick else 5
    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        root = Path(tmp)
        (root / "suite").mkdir()
        (root / "suite" / "test_suite.py").write_text(textwrap.dedent(SUITE.format(tests=TESTS)))
        env = {**os.environ, "LRUN_STATE_DIR": str(root / "state")}
        pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lrun-machine=local"]
        pytest_cmd += [f"--lrun-image={IMAGE}", "suite"]
        session(pytest_cmd, root, env, 1)  # warm-up: the image's layers and the hash's stat cache
        whole_runs, reruns, plain, flaky = [], [], [], []
        for _ in range(rounds):
            plain.append(session(pytest_cmd, root, env, 1))
            flaky.append(session([*pytest_cmd, "--lrun-flaky-attempts=2"], root, env, 0))
            whole_s, rerun_s = run_times(root / "state")
            whole_runs.append(whole_s)
            reruns.append(rerun_s)
    whole, rerun = statistics.median(whole_runs), statistics.median(reruns)
    ratio = rerun / whole
    print(f"{TESTS} inner tests of 10 ms, 1 failing until rerun; medians of {rounds} rounds")
    print(f"  run of the whole dir (a whole-dir rerun costs this):  {whole:6.2f} s")
    print(f"  rerun of the 1 failed test, as a run of its own:      {rerun:6.2f} s")
    print(f"  ratio rerun / whole dir: {ratio:.2f}")
    plain_s, flaky_s = statistics.median(plain), statistics.median(flaky)
    print(f"  invocations: pytest DIR {plain_s:.2f} s, with --lrun-flaky-attempts=2 {flaky_s:.2f} s")
    verdict = "PASS" if ratio < TARGET_RATIO else "MISS"
    print(f"{verdict}: a rerun of 1 test costs under {TARGET_RATIO}x the whole dir")


if __name__ == "__main__":
    main()
