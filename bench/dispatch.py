"""Benchmark: what does pytest-lrun add on top of a plain ``docker run``?

Usage: ``python bench/dispatch.py [--quick]`` (needs the local engine and the
``lrun-python:bookworm`` image: ``scripts/provision.sh``).

Measured in the same run, on the engine of the environment (machine ``local``):

* baseline -- ``docker run --rm --network none`` of the same image and inner
  pytest command over the same test directory (bind-mounted: the cheapest way
  to get it there), median of N;
* per-run overhead -- the marginal cost of one more dispatched directory:
  ``(T(pytest with K dirs) - T(pytest with 1 dir)) / (K - 1)``, minus the
  baseline. Taking the difference removes pytest's own start-up, which is
  paid once per invocation however many runs it dispatches;
* cached -- a whole ``pytest --lrun-reuse=completed`` invocation that returns
  a stored result, next to plain ``pytest`` of one trivial test on the host
  (the floor: starting pytest itself);
* warm build -- a whole invocation with ``--lrun-build`` whose image is already
  built on the engine, against the same invocation with the plain image, the
  two taken in turns (the build is made once before, and removed at the end).
  It pays the context's hash (stat-cached) and one image inspect.

Targets: overhead under 0.3 s per run; a cached result in under 0.5 s for the
whole invocation; a warm build within 0.1 s of the plain image. Prints a table
and PASS/MISS lines; always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _timing import timed

from pytest_lrun.config.settings import DEFAULT_COMMAND

IMAGE = "lrun-python:bookworm"
OVERHEAD_TARGET_S = 0.3
CACHED_TARGET_S = 0.5
WARM_BUILD_TARGET_S = 0.1


def make_dirs(root: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        d = root / f"suite{i}"
        d.mkdir()
        (d / "test_it.py").write_text(
            textwrap.dedent(
                f"""
                import pytest

                @pytest.mark.parametrize("n", range(5))
                def test_n(n):
                    assert n + {i} >= 0
                """
            )
        )
        names.append(d.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    repeats, many = (2, 3) if args.quick else (5, 6)
    if shutil.which("docker") is None:
        raise SystemExit("bench: the docker CLI is needed for the baseline")

    with tempfile.TemporaryDirectory(prefix="lrun-bench-") as tmp:
        root = Path(tmp)
        dirs = make_dirs(root, many)
        (root / "floor").mkdir()
        (root / "floor" / "test_floor.py").write_text("def test_floor():\n    pass\n")
        env = {**os.environ, "LRUN_STATE_DIR": str(root / "state")}
        pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lrun-machine=local"]
        pytest_cmd += [f"--lrun-image={IMAGE}"]

        baseline = [
            timed(
                [
                    "docker",
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "-v",
                    f"{root / dirs[0]}:/lrun/work",
                    "-w",
                    "/lrun/work",
                    IMAGE,
                    *DEFAULT_COMMAND,
                ],
                root,
                env,
            )
            for _ in range(repeats)
        ]
        one = [timed([*pytest_cmd, dirs[0]], root, env) for _ in range(repeats)]
        k = [timed([*pytest_cmd, *dirs], root, env) for _ in range(repeats)]
        marginal = (statistics.median(k) - statistics.median(one)) / (many - 1)
        overhead = marginal - statistics.median(baseline)

        cached = [timed([*pytest_cmd, "--lrun-reuse=completed", dirs[0]], root, env) for _ in range(repeats)]
        floor = [
            timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "floor"], root, env)
            for _ in range(repeats)
        ]

        context = root / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY marker /marker\n")
        (context / "marker").write_text(root.name)  # a tag of its own: this benchmark's build
        build_cmd = [*pytest_cmd[:-1], "--lrun-build=context", dirs[0]]
        timed(build_cmd, root, env)  # the build itself, not measured
        plain, warm = [], []
        for _ in range(repeats):
            plain.append(timed([*pytest_cmd, dirs[0]], root, env))
            warm.append(timed(build_cmd, root, env))
        subprocess.run(
            "docker images -q --filter label=lrun.build-context="
            + str(context)
            + " | xargs -r docker rmi -f",
            shell=True,
            capture_output=True,
            check=False,
        )

    rows = [
        ("docker run (baseline), one dir", statistics.median(baseline)),
        ("pytest --lrun-machine, 1 dir", statistics.median(one)),
        (f"pytest --lrun-machine, {many} dirs", statistics.median(k)),
        ("marginal cost of one more dir", marginal),
        ("pytest --lrun-reuse=completed (cached)", statistics.median(cached)),
        ("plain pytest, one host test (floor)", statistics.median(floor)),
        ("pytest --lrun-image, 1 dir (in turns)", statistics.median(plain)),
        ("pytest --lrun-build, built already, 1 dir", statistics.median(warm)),
    ]
    print(f"{'measure':44} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:44} {seconds:8.3f}")
    ratio = statistics.median(one) / statistics.median(baseline)
    print(f"\nratio pytest-lrun (1 dir, whole invocation) / docker run: {ratio:.2f}x")
    print(
        f"per-run overhead over docker run: {overhead:+.3f}s (target < {OVERHEAD_TARGET_S}s): "
        f"{'PASS' if overhead < OVERHEAD_TARGET_S else 'MISS'}"
    )
    best_cached = statistics.median(cached)
    print(
        f"cached result, whole invocation: {best_cached:.3f}s (target < {CACHED_TARGET_S}s; pytest floor "
        f"{statistics.median(floor):.3f}s): {'PASS' if best_cached < CACHED_TARGET_S else 'MISS'}"
    )
    extra = statistics.median(warm) - statistics.median(plain)
    ratio = statistics.median(warm) / statistics.median(plain)
    print(
        f"warm build over the plain image: {extra:+.3f}s, ratio {ratio:.2f}x "
        f"(target < {WARM_BUILD_TARGET_S}s): {'PASS' if extra < WARM_BUILD_TARGET_S else 'MISS'}"
    )


if __name__ == "__main__":
    main()
