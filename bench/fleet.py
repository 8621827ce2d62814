"""Benchmark: does a fleet of engines run a plan and a sharded suite as fast as its slots allow?

Usage: ``python bench/fleet.py [--quick]``, as root (it starts engines), with the
``lrun-python:bookworm`` image on the engine of the environment (``DOCKER_HOST``,
else ``/var/run/docker.sock``: ``scripts/provision.sh``).

It starts 4 engines of its own on this machine (``dockerd`` on separate sockets,
data roots and exec roots under one temporary folder), loads the image into each,
names them in a ``pyproject.toml`` as 4 machine tables with ``tags = ["bench"]``
and ``slots = 2``, and stops them and deletes their folders at the end, also when
a step fails or the benchmark is interrupted. Measured in one run:

* baselines on one of those engines: ``docker run --rm IMAGE true`` (one
  container start), and plain ``docker run``s of the sharded suite's inner
  collection and of one plan entry (the directory bind-mounted), medians of 3;
  plain ``pytest`` of one trivial test on the host (pytest's own start-up);
  and, right before each pytest-lrun measurement, the same work as plain
  ``docker run --rm`` commands of the inner pytest, 2 at once per engine: what
  8 containers at once on this machine allow. The ``/docker`` column is
  pytest-lrun's wall time over that: pytest-lrun's own share, the targets (at
  most 1.10x for the plans and for the shards with durations known, 1.2x for the
  cold shards);
* a plan of 40 entries of 1 s each (one test directory, 40 keys: each entry has
  its own ``env`` value) on ``tag:bench``. Ideal: total work over total slots
  (40 * 1 / 8 = 5 s) plus one container start (shown; 1.3x of it is out of this
  host's reach, whoever dispatches);
* the same plan with each entry a busybox ``sleep`` in place of a pytest session,
  against the same ideal: what the slots and the placement allow when a container
  costs the host next to no CPU (8 pytest sessions at once are more than 2 CPUs
  run at full speed);
* one directory of 200 tests of 0.2 s each with ``--lrun-machine=tag:bench
  --lrun-shards=auto``, cold (a fresh state dir: no recorded durations), then in
  the same state dir again (durations known; ``--lrun-reuse=never``, the
  default, so it runs again). Ideal: total work over total slots plus one
  container start plus the inner collection run;
* for each pytest invocation, the dispatcher's CPU time (user + system) and peak
  resident memory, from ``wait4`` of that process; and for it and each plain
  ``docker run`` pool, the share of the machine's CPU time busy meanwhile (all
  processes, engines and other users included: ``/proc/stat``);
* before the engines start, a cold ``hash_dir`` of 100k small files (5k with
  ``--quick``) against a sha256 pass over the same files, as ``bench/hash.py``
  races them. Target: at least 1x.

Where the time goes comes from the run records the invocation wrote (their
``created_at``, ``started_at``, ``ended_at``): the time before the first run is
created, the median time from a run's record to its container start, the median
time in the container, the time after the last run ended, how full the slots
were, and how soon a run waiting in line is created, and its container started, after
a slot frees. Targets from them: that start under 0.15 s (median), and under 0.4 s from
the last run's end to the process's exit. Each pytest invocation loads pytest-lrun
alone (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``, ``-p pytest_lrun.plugin``): the other plugins
of the venv are not pytest-lrun's cost. Prints a table and PASS/MISS lines; exits 0
unless a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker

# The engines of its own are started as the tests start theirs (tests/private_engines.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _timing import timed
from hash import SMALL_RATIO_TARGET, make_small_tree, race, sha256_pass
from lrun_support import container_spans
from private_engines import Engine, can_start_engines, launch_engine, load_image, stop_engine, wait_until_up

from pytest_lrun.config.settings import DEFAULT_COMMAND
from pytest_lrun.core.layout import RECORD, RUNS_DIR
from pytest_lrun.store.records import Run
from pytest_lrun.tree.hashing import hash_dir
from pytest_lrun.tree.walk import iter_files

T = TypeVar("T")
IMAGE = "lrun-python:bookworm"
SLEEPER = "lrun-busybox:latest"  # the plan again with entries that cost the host next to no CPU
ENGINES, SLOTS = 4, 2
TAG = "bench"
RATIO_TARGET = 1.3  # over the ideal: out of this host's reach, shown for the record
# Over the plain `docker run`s of the same work in the same run: pytest-lrun's own share.
DOCKER_TARGET, COLD_DOCKER_TARGET = 1.10, 1.2
SLOT_START_TARGET = 0.15  # median seconds from a slot freeing to the next container's start
EXIT_TARGET = 0.4  # seconds from the last run's end to the process's exit
# pytest with pytest-lrun alone: the plugins of the development venv (hypothesis' terminal summary
# imports all of hypothesis, 0.9 s under load) are no part of what is measured.
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_lrun.plugin"]
ONLY_LRUN = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@dataclass(frozen=True)
class Usage:
    """One pytest invocation: when it began (unix time), its wall time, CPU time and peak memory,
    and how busy the machine's CPUs were meanwhile (every process's work, not only its own)."""

    began: float
    wall: float
    cpu: float
    peak_mib: float
    host_busy: float


def cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all CPUs since boot (the ``cpu`` line of ``/proc/stat``)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def busy_since(mark: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was busy since ``mark`` (of :func:`cpu_ticks`)."""
    busy, total = cpu_ticks()
    return (busy - mark[0]) / max(1, total - mark[1])


@contextmanager
def fleet(root: Path, source: str) -> Iterator[list[Engine]]:
    """Start ``ENGINES`` engines holding ``IMAGE`` (saved once from ``source``); always stop them after."""
    engines: list[Engine] = []
    try:
        root.mkdir()
        for i in range(ENGINES):
            engines.append(launch_engine(root / f"engine{i + 1}"))
        for engine in engines:
            wait_until_up(engine)
        load_image(engines, source, IMAGE, root)
        load_image(engines, source, SLEEPER, root)
        yield engines
    finally:
        for engine in engines:
            stop_engine(engine)


def measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> Usage:
    """Run ``cmd``; its wall time, and its own CPU time and peak RSS (``wait4``: this process alone)."""
    began = time.time()
    started = time.perf_counter()
    mark = cpu_ticks()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        host_busy = busy_since(mark)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            out.seek(0)
            output = out.read().decode(errors="replace")
            raise SystemExit(f"bench: {' '.join(cmd)} failed ({process.returncode}):\n{output}")
    cpu = usage.ru_utime + usage.ru_stime
    return Usage(began, wall, cpu, usage.ru_maxrss / 1024, host_busy)  # ru_maxrss: KiB on Linux


def write_project(
    root: Path, engines: list[Engine], entries: int, entry_s: float, tests: int, test_s: float
) -> None:
    """The machine tables, the plan's directory and plan, and the suite to shard."""
    (root / "pyproject.toml").write_text(
        "".join(
            f'[tool.lrun.machines.fleet{i + 1}]\nhost = "{e.url}"\nimage = "{IMAGE}"\n'
            f'tags = ["{TAG}"]\nslots = {SLOTS}\n\n'
            for i, e in enumerate(engines)
        )
    )
    (root / "entry").mkdir()
    (root / "entry" / "test_entry.py").write_text(
        f"import time\n\n\ndef test_sleep():\n    time.sleep({entry_s})\n"
    )
    # One directory, many keys: the entry's env is part of its run key.
    (root / "plan.toml").write_text(
        "\n".join(
            f'[[entry]]\nname = "e{i}"\ndir = "entry"\nmachine = "tag:{TAG}"\n'
            f'env = {{ BENCH_ENTRY = "{i}" }}\n'
            for i in range(entries)
        )
    )
    # The same plan, each entry a busybox `sleep` in place of a pytest session: scheduling alone.
    (root / "plan-sleep.toml").write_text(
        "\n".join(
            f'[[entry]]\nname = "s{i}"\ndir = "entry"\nmachine = "tag:{TAG}"\n'
            f'image = "{SLEEPER}"\ncommand = ["sleep", "{entry_s:g}"]\nenv = {{ BENCH_ENTRY = "{i}" }}\n'
            for i in range(entries)
        )
    )
    (root / "suite").mkdir()
    (root / "suite" / "test_suite.py").write_text(
        textwrap.dedent(
            f"""
            import time

            import pytest


            @pytest.mark.parametrize("n", range({tests}))
            def test_sleep(n):
                time.sleep({test_s})
            """
        )
    )
    (root / "floor").mkdir()
    (root / "floor" / "test_floor.py").write_text("def test_floor():\n    pass\n")


@dataclass(frozen=True)
class Times:
    """One run's record, as far as where the time goes is concerned (unix seconds)."""

    machine: str
    collection: bool  # the inner collection run before the shards
    id: str
    created: float
    started: float
    ended: float


def times_of(state: Path, usage: Usage) -> list[Times]:
    """The runs an invocation created (after it began) and that ran to an end, oldest first."""
    found = []
    for path in (state / RUNS_DIR).glob(f"*/{RECORD}"):
        run = Run.from_dict(json.loads(path.read_text()))
        if run.created_at is None or run.started_at is None or run.ended_at is None:
            continue
        if run.created_at >= usage.began:
            collection = "--collect-only" in (run.command or [])
            found.append(Times(run.machine, collection, run.id, run.created_at, run.started_at, run.ended_at))
    return sorted(found, key=lambda t: t.created)


def where(usage: Usage, runs: list[Times]) -> list[str]:
    """Where an invocation's wall time went, from its run records."""
    if not runs:
        return ["  (no run records)"]
    lines = [f"  before the first run record: {runs[0].created - usage.began:6.2f}s"]
    work = [t for t in runs if not t.collection]
    for what, group in (
        ("inner collection run", [t for t in runs if t.collection]),
        (f"{len(work)} runs", work),
    ):
        if not group:
            continue
        span = max(t.ended for t in group) - min(t.created for t in group)
        inside = [t.ended - t.started for t in group]
        starting = [t.started - t.created for t in group]
        busy = (
            f"; slots busy {sum(inside) / (span * ENGINES * SLOTS):.0%} of the span" if group is work else ""
        )
        lines.append(
            f"  {what}: span {span:6.2f}s; record to container start median "
            f"{statistics.median(starting):.2f}s (max {max(starting):.2f}s); "
            f"in the container median {statistics.median(inside):.2f}s{busy}"
        )
    lines.append(f"  after the last run ended:    {exit_after(usage, runs):6.2f}s")
    # A run that waited in line is created when a slot frees: after the latest end before it, on any machine.
    ends = [t.ended for t in work]
    waits = [
        t.created - max(e for e in ends if e <= t.created) for t in work if ends and min(ends) <= t.created
    ]
    if waits:
        lines.append(
            f"  {len(waits)} runs created after a run ended: each {statistics.median(waits):.2f}s after the "
            f"latest run end before it (median)"
        )
    per_machine = Counter(t.machine for t in work)
    lines.append("  runs per machine: " + ", ".join(f"{m} {n}" for m, n in sorted(per_machine.items())))
    return lines


def slot_gaps(lives: dict[str, list[tuple[float, float]]]) -> list[float]:
    """For each container that took a slot another one freed, its start after that slot freed:
    on each engine, past its first SLOTS starts, each start takes the slot that freed first
    (the earliest exit at or before it not yet taken)."""
    gaps = []
    for spans in lives.values():
        ends = sorted(end for _, end in spans)
        starts = sorted(start for start, _ in spans)[SLOTS:]
        taken = 0
        for started in starts:
            if taken < len(ends) and ends[taken] <= started:
                gaps.append(started - ends[taken])
                taken += 1
    return gaps


def engine_lives(
    engines: list[Engine], since: float, until: float, runs: list[Times] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Every container's life (start to exit) on each of ``engines`` between ``since`` and
    ``until``, from the engines' own events: when it held a slot. With ``runs``, only their
    work runs' containers (an inner collection run frees no slot a shard waited for: the
    shards are made from its result)."""
    work = None if runs is None else {t.id for t in runs if not t.collection}
    return {
        engine.url: [
            (start, end)
            for key, (start, end) in container_spans(
                engine.url, since, until, label=None if work is None else "lrun.run-id"
            ).items()
            if since <= start and end <= until and (work is None or key in work)
        ]
        for engine in engines
    }


def exit_after(usage: Usage, runs: list[Times]) -> float:
    """Seconds from the last run's end to the process's exit."""
    return usage.began + usage.wall - max(t.ended for t in runs)


@dataclass(frozen=True)
class Row:
    """One pytest-lrun measurement, beside its baseline of plain ``docker run``s."""

    name: str
    usage: Usage
    ideal: float
    pool: Pool
    runs: list[Times]
    lives: dict[str, list[tuple[float, float]]]  # its containers' on each engine
    extra: float = 0.0  # added to the pool's wall time (the inner collection run, for shards)
    staged: Pool | None = None  # the same work as staged starts (:func:`staged_pool`)

    @property
    def ratio(self) -> float:
        """pytest-lrun's wall time over the plain ``docker run``s' of the same work."""
        return self.usage.wall / (self.pool.wall + self.extra)

    def slot_lines(self) -> list[str]:
        """How soon a container starts after a slot frees, from the engines' own events: here
        and with plain ``docker run``s (the engines' limit, measured right before)."""
        lines = []
        pools = [("pytest-lrun", self.lives), ("plain docker runs", self.pool.lives)]
        if self.staged is not None:
            pools.append(("staged starts (the engines' own limit)", self.staged.lives))
        for who, lives in pools:
            gaps = slot_gaps(lives)
            inside = [end - start for spans in lives.values() for start, end in spans]
            if gaps and inside:
                lines.append(
                    f"  {who}: {len(gaps)} containers took a slot that freed: started "
                    f"{statistics.median(gaps):.2f}s (median; max {max(gaps):.2f}s) after it freed; "
                    f"a container's life {statistics.median(inside):.2f}s (median)"
                )
        return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass(frozen=True)
class Pool:
    """A pool of plain ``docker run``s: its wall time, the share of the machine's CPUs busy
    meanwhile, and its containers' lives on each engine."""

    wall: float
    busy: float
    lives: dict[str, list[tuple[float, float]]]


def pooled(engines: list[Engine], work: Callable[[T], None], items: list[T]) -> Pool:
    """``work`` on each of ``items``, SLOTS threads per engine, measured as a :class:`Pool`."""
    began, started = time.time(), time.perf_counter()
    mark = cpu_ticks()
    with ThreadPoolExecutor(len(engines) * SLOTS) as pool:
        list(pool.map(work, items))
    wall = time.perf_counter() - started
    return Pool(wall, busy_since(mark), engine_lives(engines, began, began + wall))


def docker_pool(engines: list[Engine], jobs: list[list[str]], cwd: Path, env: dict[str, str]) -> Pool:
    """A plain ``docker run --rm`` of each job (arguments after ``run``), SLOTS per engine at once."""
    free: queue.Queue[str] = queue.Queue()
    for engine in engines:
        for _ in range(SLOTS):
            free.put(engine.url)

    def one(args: list[str]) -> None:
        url = free.get()
        try:
            timed(["docker", "-H", url, "run", "--rm", "--network", "none", *args], cwd, env)
        finally:
            free.put(url)

    return pooled(engines, one, jobs)


def staged_pool(engines: list[Engine], jobs: list[list[str]], cwd: Path, env: dict[str, str]) -> Pool:
    """The engines' own limit for a slot's next start: SLOTS loops per engine, each creating its
    next container (``docker create``) while its last one runs, waiting for that one's exit
    and starting the next at once over one API connection, the removal after. What any
    dispatcher at best does when a slot frees; its starts after an exit are the engine's own."""
    todo: queue.Queue[list[str]] = queue.Queue()
    for job in jobs:
        todo.put(job)

    def slot(url: str) -> None:
        client = docker.APIClient(base_url=url, version="auto", timeout=600)
        last = None
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    break
                made = subprocess.run(
                    ["docker", "-H", url, "create", "--network", "none", *job],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                if last is not None:
                    client.wait(last)
                client.start(made.stdout.strip())
                if last is not None:
                    client.remove_container(last)
                last = made.stdout.strip()
            if last is not None:
                client.wait(last)
                client.remove_container(last)
        finally:
            client.close()

    return pooled(engines, slot, [engine.url for engine in engines for _ in range(SLOTS)])


def in_container(test_dir: Path, *args: str) -> list[str]:
    """``docker run`` arguments of the inner pytest over ``test_dir``, bind-mounted (no bytecode written)."""
    mount = ["-v", f"{test_dir}:/lrun/work", "-w", "/lrun/work", "-e", "PYTHONDONTWRITEBYTECODE=1"]
    return [*mount, IMAGE, *DEFAULT_COMMAND, *args]


def cold_hash(tree: Path, files: int) -> float:
    """sha256 pass time over cold ``hash_dir`` time, best of 5, on ``files`` small files made in ``tree``."""
    tree.mkdir()
    make_small_tree(tree, files, random.Random(20240601))
    paths = [e.abspath for e in iter_files(tree) if e.kind == "file"]
    cold, sha = race(5, lambda: hash_dir(tree), lambda: sha256_pass(paths)).wall
    return sha / cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter tests (a smoke run)")
    args = parser.parse_args()
    entries, entry_s, tests, test_s = (16, 0.5, 80, 0.1) if args.quick else (40, 1.0, 200, 0.2)
    if not can_start_engines():
        raise SystemExit("bench: starting engines needs root, dockerd and the docker CLI")
    source = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    # SIGTERM ends the benchmark as Ctrl-C does: through the finally blocks that stop the engines.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    slots = ENGINES * SLOTS
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="lrun-fleet-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        small_files = 5_000 if args.quick else 100_000
        hash_ratio = cold_hash(root / "small-files", small_files)
        with fleet(root / "engines", source) as engines:
            project = root / "project"
            project.mkdir()
            write_project(project, engines, entries, entry_s, tests, test_s)
            env = {**os.environ, **ONLY_LRUN}
            env.pop("DOCKER_HOST", None)  # the machine tables name the engines
            one = ["docker", "-H", engines[0].url, "run", "--rm", "--network", "none"]
            start = statistics.median(timed([*one, IMAGE, "true"], project, env) for _ in range(3))
            suite = project / "suite"
            collect = statistics.median(
                timed([*one, *in_container(suite, "--collect-only", "-q")], project, env) for _ in range(3)
            )
            alone = statistics.median(
                timed([*one, *in_container(project / "entry")], project, env) for _ in range(3)
            )
            floor = statistics.median(timed([*PYTEST, "floor"], project, env) for _ in range(3))

            def lrun_row(
                name: str, cmd: list[str], state: Path, ideal: float, pool: Pool, **more: Any
            ) -> Row:
                """One pytest-lrun invocation measured, with its run records and containers' lives."""
                usage = measured(cmd, project, {**env, "LRUN_STATE_DIR": str(state)})
                runs = times_of(state, usage)
                lives = engine_lives(engines, usage.began, usage.began + usage.wall, runs)
                return Row(name, usage, ideal, pool, runs, lives, **more)

            def plan_row(name: str, plan_file: str, work: list[str]) -> Row:
                """The plan's run, right after its baselines (the shared machine's load drifts): the
                same work as plain `docker run`s, one per entry with its own env value, and as
                staged starts (the engines' own limit for a start after a slot frees)."""
                jobs = [["-e", f"BENCH_ENTRY={i}", *work] for i in range(entries)]
                pool = docker_pool(engines, jobs, project, env)
                staged = staged_pool(engines, jobs, project, env)
                cmd = [*PYTEST, f"--lrun-plan={plan_file}"]
                return lrun_row(name, cmd, root / f"{plan_file}-state", plan_ideal, pool, staged=staged)

            plan_ideal = entries * entry_s / slots + start
            shard_ideal = tests * test_s / slots + start + collect
            rows = [
                plan_row(
                    f"plan: {entries} entries of {entry_s}s on tag:{TAG}",
                    "plan.toml",
                    in_container(project / "entry"),
                ),
                plan_row(
                    f"plan: {entries} busybox sleeps of {entry_s}s",
                    "plan-sleep.toml",
                    [SLEEPER, "sleep", f"{entry_s:g}"],
                ),
            ]
            nodeids = [f"test_suite.py::test_sleep[{n}]" for n in range(tests)]
            shard_pool = docker_pool(
                engines, [in_container(suite, *nodeids[k::slots]) for k in range(slots)], project, env
            )
            shard_cmd = [
                *PYTEST,
                f"--lrun-machine=tag:{TAG}",
                "--lrun-shards=auto",
                "--lrun-reuse=never",
                "suite",
            ]
            for name in ("--lrun-shards=auto, cold", "shards, durations known"):  # one state dir: then known
                rows.append(
                    lrun_row(
                        f"{tests} tests of {test_s}s, {name}",
                        shard_cmd,
                        root / "shard-state",
                        shard_ideal,
                        shard_pool,
                        extra=collect,
                    )
                )

    plan_pool = rows[0].pool
    shard_wall = shard_pool.wall + collect
    print(f"{ENGINES} engines x {SLOTS} slots ({os.cpu_count()} CPUs, load average {load:.1f} at the start)")
    print(f"docker run --rm {IMAGE} true (one container start): {start:.2f}s")
    print(f"docker run of the suite's inner collection:         {collect:.2f}s")
    print(f"docker run of one plan entry, alone:                 {alone:.2f}s")
    print(f"plain pytest of one host test (pytest start-up):     {floor:.2f}s")
    print(
        f"docker run pool, the plan's entries ({SLOTS} per engine):   {plan_pool.wall:.2f}s "
        f"(machine CPUs {plan_pool.busy:.0%} busy)"
    )
    print(
        f"docker run pool, collection + {slots} shards:            {shard_wall:.2f}s "
        f"(machine CPUs {shard_pool.busy:.0%} busy in the shards)\n"
    )
    print(
        f"{'measure':48} {'wall s':>7} {'ideal s':>7} {'/ideal':>7} {'/docker':>7} "
        f"{'CPU s':>6} {'peak MiB':>8} {'machine busy':>12}"
    )
    for row in rows:
        print(
            f"{row.name:48} {row.usage.wall:7.2f} {row.ideal:7.2f} {row.usage.wall / row.ideal:6.2f}x "
            f"{row.ratio:6.2f}x {row.usage.cpu:6.2f} {row.usage.peak_mib:8.1f} {row.usage.host_busy:12.0%}"
        )
    for row in rows:
        print(f"\nwhere the time goes: {row.name}")
        print("\n".join(where(row.usage, row.runs)))
        print("\n".join(row.slot_lines()))
    print()
    for row in rows:
        print(
            f"{row.name}: wall / ideal {row.usage.wall / row.ideal:.2f}x "
            "(no target here: see docs/benchmarks.md)"
        )
    for row, target in zip(
        rows, (DOCKER_TARGET, DOCKER_TARGET, COLD_DOCKER_TARGET, DOCKER_TARGET), strict=True
    ):
        print(
            f"{row.name}: wall / plain docker runs {row.ratio:.2f}x "
            f"(target <= {target}x): {verdict(row.ratio <= target)}"
        )
    for row in rows:
        gaps = slot_gaps(row.lives)
        if gaps:
            median = statistics.median(gaps)
            print(
                f"{row.name}: container start after its slot frees, median {median:.2f}s over {len(gaps)} "
                f"containers (target < {SLOT_START_TARGET}s): {verdict(median < SLOT_START_TARGET)}"
            )
            own = slot_gaps(row.staged.lives) if row.staged is not None else []
            if own:  # the engines' own start after an exit, on this host and load, is no share of ours
                share = median - statistics.median(own)
                print(
                    f"{row.name}: the same over the engines' own staged starts (median "
                    f"{statistics.median(own):.2f}s), pytest-lrun's share {share:.2f}s "
                    f"(target < {SLOT_START_TARGET}s): {verdict(share < SLOT_START_TARGET)}"
                )
        else:
            print(f"{row.name}: container start after its slot frees: no container waited for a slot")
        if row.runs:
            after = exit_after(row.usage, row.runs)
            print(
                f"{row.name}: last run's end to the process's exit {after:.2f}s "
                f"(target < {EXIT_TARGET}s): {verdict(after < EXIT_TARGET)}"
            )
    print(
        f"cold hash_dir of {small_files} small files, sha256 pass / hash_dir: {hash_ratio:.2f}x "
        f"(target >= {SMALL_RATIO_TARGET:g}x): {verdict(hash_ratio >= SMALL_RATIO_TARGET)}"
    )


if __name__ == "__main__":
    main()
