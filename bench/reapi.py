"""Benchmark: what does a remote (Remote Execution API) machine cost next to a Docker machine?

Usage: ``python bench/reapi.py [--quick]``, with the test BuildGrid and the two test
engines of ``eval "$(scripts/provision.sh)"`` (``LRUN_TEST_REAPI``,
``LRUN_TEST_REAPI_INSTANCE``, ``LRUN_TEST_ENGINES``) and the ``lrun-python:bookworm``
image on both engines.

It starts two ``lrun worker``s of its own against the service, one per engine (as
the tests do: ``tests/reapi_workers.py``), and stops them at the end, also when a step
fails or the benchmark is interrupted. Its project names the service as machine
``grid`` and the first engine as machine ``m1``, both with ``slots = 1`` (one run at
a time: the marginal cost below is then one run's whole cost). Measured in one run:

* per-run overhead -- the same test directories dispatched with
  ``--lrun-machine=m1`` and ``--lrun-machine=grid``, the four invocations taken in
  turns; each machine's marginal cost of one more directory,
  ``(T(K dirs) - T(1 dir)) / (K - 1)`` as ``bench/dispatch.py`` takes it, and the
  overhead is grid's minus m1's (pytest's start-up cancels out). The median
  whole 1-dir invocations are shown too, and where a run's time goes, from the
  run records (record to start, start to end) and, for grid, the worker's own
  time per action from its log (the rest is the service's hand-off to and from
  the worker). Target: under 0.3 s per run;
* an action cache hit -- one directory run once with ``--lrun-reuse=completed``
  (which stores its result in the service's action cache), then: the raw lookup,
  ``Storage.cached_result`` (``GetActionResult``) of its action on an open channel
  (median and max of N, and once on a fresh channel, connection included), and
  whole ``pytest --lrun-reuse=completed`` invocations, each on a fresh state dir
  so that only the action cache can serve it (checked: origin ``cached`` in the
  summary table, and the workers executed the action once). Target: the lookup
  under 0.1 s; the invocation is shown next to a cached result of the local store
  and plain ``pytest`` of one host test (the floor);
* one execution for 8 dispatchers -- 8 threads, each with its own ``Dispatcher``
  and engine pool over one shared ``FileStore``, dispatch one key (a 1 s test) at
  once; how many times the workers executed the run's action (from their logs).
  Target: exactly one, every round. And the contrast: 8 raw ``Execute`` calls of
  one action (``sleep 1``, ``do_not_cache``, ``skip_cache_lookup``) ~1 ms apart
  straight to the service -- how many executions BuildGrid alone starts (reported,
  no target).

The service is shared: another ``lrun worker`` on the same instance (a concurrent
``tests/integration/test_reapi.py``) takes some of the benchmark's actions, which its
own workers' logs then do not count, and a restart of the service or of its database
(the tests' restart cases) fails a step. Run it when neither happens.

Prints a table and PASS/MISS lines (NOISY for the overhead when a machine's K dirs took
no longer than its 1 dir: the load swamped it); exits 0 unless a step fails.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import grpc

# The workers are started as the tests start theirs (tests/reapi_workers.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _timing import timed
from reapi_workers import ReapiService, Workers

from pytest_lrun.config.machines import Machine, MachineResolver, load_machine_tables
from pytest_lrun.config.remote import image_property
from pytest_lrun.core.errors import LrunError
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.engine.reapi import RemoteEngine, connect
from pytest_lrun.reapi.cas import digest_of, key_of
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.records import Run

IMAGE = "lrun-python:bookworm"
OVERHEAD_TARGET_S = 0.3
LOOKUP_TARGET_S = 0.1
DISPATCHERS = 8
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
SUITE = """
    import pytest

    TOKEN = "{token}"  # this benchmark's own keys: nothing from an earlier run is reused


    @pytest.mark.parametrize("n", range(5))
    def test_n(n):
        assert n >= 0
"""
SLEEP = 'import time\n\nTOKEN = "{token}"\n\n\ndef test_sleeps():\n    time.sleep(1)\n'


def write_dir(root: Path, name: str, text: str) -> str:
    (root / name).mkdir()
    (root / name / "test_it.py").write_text(textwrap.dedent(text).format(token=secrets.token_hex(8)))
    return name


def write_project(root: Path, service: ReapiService, engine: str) -> None:
    root.mkdir()
    (root / "pyproject.toml").write_text(
        service.table("grid", f'image = "{IMAGE}"\nslots = 1\n')
        + f'\n[tool.lrun.machines.m1]\nhost = "{engine}"\nimage = "{IMAGE}"\nslots = 1\n'
    )
    (root / "floor").mkdir()
    (root / "floor" / "test_floor.py").write_text("def test_floor():\n    pass\n")


def grid_machine(project: Path) -> Machine:
    pyproject = project / "pyproject.toml"
    return MachineResolver(load_machine_tables(pyproject), pyproject).resolve("grid")


def only_run(state: Path) -> Run:
    """The one run of ``state``; more means a run failed and was retried (the shared service or its
    database went away meanwhile: another session's test restarted it), which the counts cannot use."""
    runs = FileStore(state).list()
    if len(runs) != 1:
        found = [(r.id, r.status.value, r.error_code) for r in runs]
        raise SystemExit(f"bench: one run expected in {state}, found {found}")
    return runs[0]


def overhead(project: Path, env: dict[str, str], repeats: int, many: int) -> dict[str, float]:
    """Medians of 1 and ``many`` dirs on each machine, taken in turns; each machine's marginal cost."""
    dirs = [write_dir(project, f"suite{i}", SUITE) for i in range(many)]
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for machine in ("m1", "grid"):
            for what, chosen in (("1", dirs[:1]), ("K", dirs)):
                cmd = [*PYTEST, f"--lrun-machine={machine}", *chosen]
                times.setdefault(f"{machine} {what}", []).append(timed(cmd, project, env))
    found = {name: statistics.median(values) for name, values in times.items()}
    for machine in ("m1", "grid"):
        found[f"{machine} marginal"] = (found[f"{machine} K"] - found[f"{machine} 1"]) / (many - 1)
    return found


_WORKER_TIME = re.compile(
    r"^lease \S+ \(action (?P<action>\S+)\): .* in (?P<seconds>[0-9.]+)s$", re.MULTILINE
)


def where(state: Path, workers: Workers) -> dict[str, float]:
    """Where a run's time goes on each machine, from the overhead step's run records (medians):
    record to start, start to end; and for grid, the workers' own time per action (from their logs)."""
    runs = [
        (r.machine, r.created_at, r.started_at, r.ended_at, r.action_digest)
        for r in FileStore(state).list()
        if r.created_at is not None and r.started_at is not None and r.ended_at is not None
    ]
    found: dict[str, float] = {}
    for machine in ("m1", "grid"):
        found[f"{machine} to start"] = statistics.median(s - c for m, c, s, _, _ in runs if m == machine)
        found[f"{machine} running"] = statistics.median(e - s for m, _, s, e, _ in runs if m == machine)
    actions = {a for m, _, _, _, a in runs if m == "grid"}
    logs = "".join(workers.log(name) for name in workers.names)
    found["grid worker"] = statistics.median(
        float(m["seconds"]) for m in _WORKER_TIME.finditer(logs) if m["action"] in actions
    )
    return found


def served_from_cache(cmd: list[str], cwd: Path, env: dict[str, str], name: str) -> float:
    """Wall seconds of an invocation whose summary table must show ``name`` served as ``cached``.

    The table, not the JUnit ``lrun_origin`` property: the property still says ``created`` for a
    run the action cache served (the report is made before the engine says it was a hit).
    """
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    row = re.compile(rf"^{re.escape(name)}\s+grid\s+\S+\s+completed\s+cached\s", re.MULTILINE)
    if done.returncode != 0 or not row.search(done.stdout):
        raise SystemExit(
            f"bench: not served from the action cache ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return elapsed


def cache_hit(
    project: Path, env: dict[str, str], root: Path, workers: Workers, repeats: int
) -> dict[str, float]:
    """The raw action cache lookup and whole invocations served by it (see the module docstring)."""
    name = write_dir(project, "hit", SUITE)
    # -rA shows the summary table. The seed runs the very same command: seeded without -rA, the
    # fresh invocations' action differed and was executed again.
    cmd = [*PYTEST, "--lrun-machine=grid", "--lrun-reuse=completed", "-rA", name]
    timed(cmd, project, {**env, "LRUN_STATE_DIR": str(root / "seed")})  # executes, fills the cache
    action = only_run(root / "seed").action_digest
    assert action is not None
    hash_, _, size = action.partition("/")
    digest = re_pb2.Digest(hash=hash_, size_bytes=int(size))

    started = time.perf_counter()
    engine = connect(grid_machine(project))
    try:
        assert engine.storage.cached_result(digest) is not None
        fresh = time.perf_counter() - started
        lookups = []
        for _ in range(repeats * 4):
            started = time.perf_counter()
            result = engine.storage.cached_result(digest)
            lookups.append(time.perf_counter() - started)
            if result is None or result.exit_code != 0:
                raise SystemExit(f"bench: the action cache lost {action}")
    finally:
        engine.close()

    served = [
        served_from_cache(cmd, project, {**env, "LRUN_STATE_DIR": str(root / f"fresh-{i}")}, name)
        for i in range(repeats)
    ]
    local = [timed(cmd, project, {**env, "LRUN_STATE_DIR": str(root / "seed")}) for _ in range(repeats)]
    floor = [timed([*PYTEST, "floor"], project, env) for _ in range(repeats)]
    if sum(workers.executions(action).values()) != 1:
        raise SystemExit(f"bench: the cached action was executed {workers.executions(action)}")
    return {
        "fresh": fresh,
        "lookup": statistics.median(lookups),
        "lookup max": max(lookups),
        "served": statistics.median(served),
        "local": statistics.median(local),
        "floor": statistics.median(floor),
    }


def executions(workers: Workers, action: str) -> int:
    """How many times the workers executed ``action``, once their logs have settled."""
    deadline = time.monotonic() + 15
    while sum(workers.executions(action).values()) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # a second execution of the same action ends at about the same time
    return sum(workers.executions(action).values())


def dispatchers(project: Path, root: Path, workers: Workers, name: str) -> tuple[int, float]:
    """8 dispatchers of one key at once: the workers' executions of its action, and the wall time."""
    test_dir = project / write_dir(project, name, SLEEP)
    spec = RunSpec(test_dir, grid_machine(project), IMAGE, ("python3", "-m", "pytest", "-q"))
    state = root / f"{name}-state"
    store = FileStore(state)
    barrier = threading.Barrier(DISPATCHERS)
    origins: list[str] = []

    def dispatch() -> None:
        pool = EnginePool(connect_timeout=10)
        try:
            barrier.wait(30)
            origins.append(Dispatcher(store, pool).dispatch(spec).origin)
        except LrunError as e:
            origins.append(f"{e.code}: {e}")  # said once below, not as a traceback per thread
        finally:
            pool.close()

    threads = [threading.Thread(target=dispatch) for _ in range(DISPATCHERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.perf_counter() - started
    if sorted(origins) != ["created"] + ["reused"] * (DISPATCHERS - 1):
        raise SystemExit(f"bench: {DISPATCHERS} dispatchers of one key ended {sorted(origins)}")
    action = only_run(state).action_digest
    assert action is not None
    return executions(workers, action), wall


def raw_executes(project: Path, workers: Workers) -> tuple[int, int]:
    """8 ``Execute`` calls of one uncacheable action ~1 ms apart: executions, and distinct operations."""
    command = re_pb2.Command(
        arguments=["sleep", "1"],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="BENCH", value=secrets.token_hex(8))],
        platform=re_pb2.Platform(
            properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in [image_property(IMAGE)]]
        ),
    )
    command_bytes = command.SerializeToString(deterministic=True)
    empty = re_pb2.Directory().SerializeToString(deterministic=True)
    action = re_pb2.Action(
        command_digest=digest_of(command_bytes), input_root_digest=digest_of(empty), do_not_cache=True
    )
    action_bytes = action.SerializeToString(deterministic=True)
    digest = digest_of(action_bytes)
    engine = RemoteEngine(grid_machine(project))
    names: list[str] = []
    done: list[str] = []  # the operations that ended: every call must, before the workers' logs are read
    failed: list[str] = []
    try:
        blobs = {key_of(digest_of(b)): b for b in (command_bytes, empty, action_bytes)}
        engine.storage.upload(blobs)
        stub = engine.channel.stub(re_grpc.ExecutionStub)
        request = re_pb2.ExecuteRequest(
            instance_name=engine.remote.instance_name, action_digest=digest, skip_cache_lookup=True
        )

        def execute() -> None:
            try:
                operations = iter(stub.Execute(request, metadata=engine.channel.metadata, timeout=120))
                operation = next(operations)
                names.append(operation.name)
                while not operation.done:
                    operation = next(operations)
                done.append(operation.name)
            except grpc.RpcError as e:
                failed.append(str(e))  # said once below, not as a traceback per thread

        threads = [threading.Thread(target=execute) for _ in range(DISPATCHERS)]
        for thread in threads:
            thread.start()
            time.sleep(0.001)
        for thread in threads:
            thread.join(120)
    finally:
        engine.close()
    if len(done) != DISPATCHERS:
        raise SystemExit(f"bench: {DISPATCHERS - len(done)} raw Execute calls did not end: {failed[:1]}")
    return executions(workers, f"{digest.hash}/{digest.size_bytes}"), len(set(names))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    repeats, many, rounds = (2, 3, 1) if args.quick else (5, 6, 3)
    service = ReapiService(
        os.environ.get("LRUN_TEST_REAPI", ""),
        os.environ.get("LRUN_TEST_REAPI_INSTANCE", ""),
        os.environ.get("LRUN_TEST_LOGSTREAM", ""),  # output live, as the tests run it
    )
    engines = [u for u in os.environ.get("LRUN_TEST_ENGINES", "").split(",") if u]
    if not service.url or len(engines) < 2:
        raise SystemExit(
            'bench: needs LRUN_TEST_REAPI and two LRUN_TEST_ENGINES: eval "$(scripts/provision.sh)"'
        )
    if (problem := service.problem()) is not None:
        raise SystemExit(f"bench: the service does not answer: {problem}")
    # SIGTERM ends the benchmark as Ctrl-C does: through the finally block that stops the workers.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="lrun-reapi-") as tmp:
        root = Path(tmp)
        project = root / "project"
        write_project(project, service, engines[0])
        env = {**os.environ, "LRUN_STATE_DIR": str(root / "state")}
        env.pop("DOCKER_HOST", None)  # the machine tables name the engines
        workers = Workers(service, engines[:2], root / "workers", IMAGE)
        try:
            workers.start()
            cost = overhead(project, env, repeats, many)
            cost.update(where(root / "state", workers))
            hit = cache_hit(project, env, root, workers, repeats)
            together = [dispatchers(project, root, workers, f"one{i}") for i in range(rounds)]
            raw = [raw_executes(project, workers) for _ in range(rounds)]
        finally:
            workers.stop()
    report(cost, hit, together, raw, load, many)


def report(
    cost: dict[str, float],
    hit: dict[str, float],
    together: list[tuple[int, float]],
    raw: list[tuple[int, int]],
    load: tuple[float, float, float],
    many: int,
) -> None:
    rows = [
        ("pytest --lrun-machine=m1 (Docker), 1 dir", cost["m1 1"]),
        (f"pytest --lrun-machine=m1 (Docker), {many} dirs", cost["m1 K"]),
        ("pytest --lrun-machine=grid (REAPI), 1 dir", cost["grid 1"]),
        (f"pytest --lrun-machine=grid (REAPI), {many} dirs", cost["grid K"]),
        ("marginal cost of one more dir, m1", cost["m1 marginal"]),
        ("marginal cost of one more dir, grid", cost["grid marginal"]),
        ("  m1 run: record to container start (median)", cost["m1 to start"]),
        ("  m1 run: container start to end (median)", cost["m1 running"]),
        ("  grid run: record to Execute's operation (median)", cost["grid to start"]),
        ("  grid run: operation to its result (median)", cost["grid running"]),
        ("  grid run: the worker's own time (median)", cost["grid worker"]),
        ("GetActionResult, fresh channel (connect too)", hit["fresh"]),
        ("GetActionResult, open channel (median)", hit["lookup"]),
        ("GetActionResult, open channel (max)", hit["lookup max"]),
        ("pytest --lrun-reuse=completed, fresh state (AC)", hit["served"]),
        ("pytest --lrun-reuse=completed, local store", hit["local"]),
        ("plain pytest, one host test (floor)", hit["floor"]),
    ]
    rows += [
        (f"{DISPATCHERS} dispatchers of one 1 s key, round {i + 1}", wall)
        for i, (_, wall) in enumerate(together)
    ]
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
    print(f"{'measure':50} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:50} {seconds:8.3f}")
    print()
    extra = cost["grid marginal"] - cost["m1 marginal"]
    # A machine that took no longer for K dirs than for 1 says the host's load swamped the measure.
    noisy = min(cost["grid marginal"], cost["m1 marginal"]) <= 0
    said = "NOISY (rerun on a quieter host)" if noisy else verdict(extra < OVERHEAD_TARGET_S)
    print(
        f"per-run overhead of grid over m1 (marginal): {extra:+.3f}s; whole 1-dir invocations "
        f"{cost['grid 1'] - cost['m1 1']:+.3f}s (target < {OVERHEAD_TARGET_S}s): "
        f"{said}"
    )
    in_records = {m: cost[f"{m} to start"] + cost[f"{m} running"] for m in ("m1", "grid")}
    print(
        f"a run from its record to its end, medians of the run records: grid {in_records['grid']:.3f}s, "
        f"m1 {in_records['m1']:.3f}s ({in_records['grid'] - in_records['m1']:+.3f}s; of grid's, the "
        f"service's hand-off around the worker {cost['grid running'] - cost['grid worker']:.3f}s; no target)"
    )
    print(
        f"action cache lookup (GetActionResult): {hit['lookup']:.3f}s median, {hit['lookup max']:.3f}s max "
        f"(target < {LOOKUP_TARGET_S}s): {verdict(hit['lookup max'] < LOOKUP_TARGET_S)}"
    )
    print(
        f"whole invocation served from the action cache: {hit['served']:.3f}s (no target; the local store's "
        f"cached result {hit['local']:.3f}s, pytest floor {hit['floor']:.3f}s)"
    )
    counts = [n for n, _ in together]
    print(
        f"{DISPATCHERS} dispatchers of one key, executions per round: {counts} (target: 1 each): "
        f"{verdict(all(n == 1 for n in counts))}"
    )
    print(
        f"{DISPATCHERS} raw Execute calls of one action ~1 ms apart, BuildGrid alone: executions per round "
        f"{[n for n, _ in raw]}, distinct operations {[ops for _, ops in raw]} (no target)"
    )


if __name__ == "__main__":
    main()
