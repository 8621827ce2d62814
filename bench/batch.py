"""Benchmark: how well does a plan spread over two machines?

Usage: ``python bench/batch.py [--quick]`` (needs the two engines and images of
``scripts/provision.sh``; their URLs come from ``LRUN_TEST_ENGINES`` as that
script prints them).

A plan of N short entries (each a directory whose tests sleep S seconds),
alternating over machines m1 and m2, is dispatched by one ``pytest
--lrun-plan`` invocation. Measured in the same run:

* the invocation's wall time;
* the sum of the entries' own durations (started_at..ended_at of each run
  record): what running them one after another would cost;
* plain ``pytest`` running the same directories on the host, one process.

With two machines the wall time should approach half the sum (ratio ~0.5) and
beat plain pytest once the entries are long enough to hide the container
start-up. Prints a table and the ratios; always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from _timing import timed

from pytest_lrun.core.times import parse_time

DEFAULT_ENGINES = "unix:///var/run/docker.sock,unix:///var/run/lrun-docker2.sock"
IMAGE = "lrun-python:bookworm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter entries (a smoke run)")
    args = parser.parse_args()
    entries, seconds = (4, 0.5) if args.quick else (8, 2.0)
    engines = os.environ.get("LRUN_TEST_ENGINES", DEFAULT_ENGINES).split(",")

    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(
            "".join(
                f'[tool.lrun.machines.m{i + 1}]\nhost = "{url}"\nimage = "{IMAGE}"\n\n'
                for i, url in enumerate(engines[:2])
            )
        )
        plan = []
        for i in range(entries):
            d = root / f"entry{i}"
            d.mkdir()
            (d / f"test_entry{i}.py").write_text(
                textwrap.dedent(
                    f"""
                    import time

                    def test_sleep():
                        time.sleep({seconds})
                    """
                )
            )
            plan.append(f'[[entry]]\nname = "e{i}"\ndir = "{d.name}"\nmachine = "m{i % 2 + 1}"\n')
        (root / "plan.toml").write_text("\n".join(plan))
        env = {**os.environ, "LRUN_STATE_DIR": str(root / "state")}
        lrun_wall = timed(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lrun-plan=plan.toml"],
            root,
            env,
        )
        records = [json.loads(p.read_text()) for p in (root / "state" / "runs").glob("*/run.json")]
        own = sum(parse_time(r["ended_at"]) - parse_time(r["started_at"]) for r in records)
        dirs = [f"entry{i}" for i in range(entries)]
        plain_wall = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *dirs], root, env)

    print(f"{entries} entries of {seconds}s over 2 machines")
    print(f"{'measure':42} {'seconds':>8}")
    print(f"{'pytest --lrun-plan (wall)':42} {lrun_wall:8.2f}")
    print(f"{'sum of the entries own durations':42} {own:8.2f}")
    print(f"{'plain pytest of the same dirs on the host':42} {plain_wall:8.2f}")
    print(f"\nwall / sum of entries: {lrun_wall / own:.2f} (two machines: ideal 0.5)")
    print(f"wall / plain pytest:   {lrun_wall / plain_wall:.2f}")


if __name__ == "__main__":
    main()
