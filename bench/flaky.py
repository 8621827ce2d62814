"""Benchmark: what does a rerun of 1 failed inner test out of 500 cost, against rerunning the whole dir?

Usage: ``python bench/flaky.py [--quick]`` (needs the local engine and the
``lrun-python:bookworm`` image: ``scripts/provision.sh``).

A directory of 500 inner tests, each taking 10 ms, one of which fails unless it runs
in a rerun (it reads ``LRUN_ATTEMPT``, which a rerun's container gets). Measured in
turns, on the engine of the environment (machine ``local``):

* whole -- ``pytest DIR``: one run of the whole directory, the flaky test failing
  (exit 1). Rerunning the whole dir costs this much again;
* flaky -- ``pytest DIR --lrun-flaky-attempts=2``: the same run, then a rerun of the
  one failed test as a run of its own (exit 0, the test named flaky);
* rerun -- flaky minus whole: what the rerun of the failed test added.

Prints the medians and the ratio rerun / whole; the target is under 0.5 (the rerun
costs a container's start and one test, not the suite). Always exits 0.
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
        whole, flaky = [], []
        for _ in range(rounds):
            whole.append(session(pytest_cmd, root, env, 1))
            flaky.append(session([*pytest_cmd, "--lrun-flaky-attempts=2"], root, env, 0))
    whole_s, flaky_s = statistics.median(whole), statistics.median(flaky)
    rerun_s = flaky_s - whole_s
    ratio = rerun_s / whole_s
    print(f"{TESTS} inner tests of 10 ms, 1 failing until rerun; medians of {rounds} rounds")
    print(f"  whole dir (one run, the rerun it would take):   {whole_s:6.2f} s")
    print(f"  with --lrun-flaky-attempts=2 (run + rerun of 1): {flaky_s:6.2f} s")
    print(f"  rerun of the 1 failed test:                      {rerun_s:6.2f} s")
    print(f"  ratio rerun / whole dir: {ratio:.2f}")
    verdict = "PASS" if ratio < TARGET_RATIO else "MISS"
    print(f"{verdict}: a rerun of 1 test costs under {TARGET_RATIO}x the whole dir")


if __name__ == "__main__":
    main()
