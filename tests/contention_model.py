"""The contention harness of issue 12: many processes on a few machines with slots, checked against the store.

One harness, two users: ``tests/integration/test_contention.py`` runs a short seeded
configuration on each backend in CI, and ``bench/contention.py`` a long one by one
command. It sits on ``pythonpath`` (``tests``) beside :mod:`lrun_procs`, so spawned
workers can import it; the bench puts ``tests`` on ``sys.path``.

:func:`run` starts ``processes`` worker processes, each with its own store object
(:class:`~lrun_procs.StoreSpec`), on the machines of :data:`MACHINES` (each with its
slots). Rounds are fenced by two barriers. In a round every worker does
``ops_per_round`` operations picked by a generator seeded with (seed, worker,
round): ``place``/``prepare`` with slots (some waiting in line with a ticket),
``update`` and ``end`` of the runs it created, ``list``, gc (``gc``, ``delete``,
``prune``, ``sweep``, and a ``delete`` of its own live run, which must be
refused), ``hash`` (a tree of its own it changes, and trees every worker shares,
with the store's hash cache) and batch joins (``batches.open`` and ``record``).
Each operation and its result is one JSON line in the worker's log (``w<NN>.jsonl``).

The checker (this process) verifies, against the store itself:

* while the workers run, polling: no machine is over its slots, no key is live twice
  on a machine, every record parses, and a terminal record never changes;
* at each barrier (the workers are paused, so their logs are complete), also:
  ``check()`` is clean, run ids are unique, ``active()`` agrees with ``list()``, no
  update is lost (each run's record is the last one its owner wrote: the update,
  or the record ``end`` returned), no live run is gone (gc never deletes a live
  run), a run is gone only after a gc operation removed it, and every batch entry
  recorded is in the batch.

A failure names the seed and the operations that touch the offending run: the
same seed replays the same choices of operations (their interleaving is the
machine's). The answers of the store that a worker can judge alone (a refused
``delete`` of its own live run, its own run ended or gone under it, a hash that
differs from an uncached one) are judged where they happen and logged as violations.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lrun_procs import StoreSpec, reap_processes, write_plan

from pytest_lrun.config.plan import load_plan
from pytest_lrun.core.errors import RunNotFound, TerminalRunError
from pytest_lrun.run.gc import gc
from pytest_lrun.store import Candidate, Decision, Run, RunStore, Status, Ticket
from pytest_lrun.tree.hashing import hash_dir

__all__ = ["MACHINES", "Config", "Report", "Violation", "recheck", "run"]

#: The fleet: machine name -> slots (8 slots for 16 processes: placements contend).
MACHINES: dict[str, int] = {"m0": 1, "m1": 2, "m2": 2, "m3": 3}
#: The idempotency keys placed (test directories): fewer than processes, so runs are reused.
KEYS = tuple(f"dir{i}" for i in range(8))
BATCH_ID = "contention"
SHARED_TREES = 2
#: Bound on each barrier: one round of every worker, on a loaded two-core machine.
WAIT_S = 180.0
#: How long a waiter in line (a placement with a ticket) asks again before it leaves the line.
WAITER_S = 0.5
#: How many live runs a worker keeps at most before it ends one instead of placing another.
MAX_LIVE = 2
TERMINAL = (Status.COMPLETED, Status.FAILED, Status.TIMEOUT, Status.INTERRUPTED)
CTX = multiprocessing.get_context("spawn")

Op = dict[str, Any]
#: The logged names of a placement: on one machine, on candidates, and in line for a slot.
PLACEMENTS = ("prepare", "place", "wait")


@dataclass(frozen=True)
class Config:
    """One configuration of the harness; the same seed makes every worker pick the same operations."""

    seed: int
    rounds: int = 3
    processes: int = 16
    ops_per_round: int = 6

    @property
    def rerun(self) -> str:
        """The command that replays this configuration's choices (add ``--store``)."""
        return (
            f"python bench/contention.py --seed {self.seed} --rounds {self.rounds} "
            f"--processes {self.processes} --ops {self.ops_per_round}"
        )


@dataclass
class Violation:
    """One broken invariant: which, what was seen, and the ids of the runs (or entries) involved."""

    invariant: str
    message: str
    ids: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`run` did: operations done by every worker, and the violations found."""

    backend: str
    config: Config
    operations: int
    violations: list[Violation]
    seconds: float
    logs: Path
    exceptions: int = 0  # operations that raised (each is also an "error" violation)
    overlapping_gcs: int = 0  # pairs of gc operations (gc, sweep, delete) of two workers that overlapped

    def describe(self, max_ops: int = 25, max_violations: int = 20) -> str:
        """The seed, how to replay it, and the first violations with the logged operations on their ids."""
        c = self.config
        lines = [
            f"contention on the {self.backend} store: seed {c.seed}, {c.processes} processes, "
            f"{len(MACHINES)} machines, {c.rounds} rounds, {self.operations} operations, "
            f"{len(self.violations)} violation(s)",
            f"replay the same choices: {c.rerun} --store {self.backend}; the logs: {self.logs}",
        ]
        ops = read_logs(self.logs)
        for v in self.violations[:max_violations]:
            lines.append(f"* {v.invariant}: {v.message}")
            ids = [i for i in v.ids if i]  # a BUSY answer's blocker may be a run without an id
            about = [op for op in ops if any(i in json.dumps(op) for i in ids)]
            lines.extend(f"    {json.dumps(op, sort_keys=True)}" for op in about[-max_ops:])
        if len(self.violations) > max_violations:
            lines.append(f"... and {len(self.violations) - max_violations} more")
        return "\n".join(lines)


def read_logs(logs: Path) -> list[Op]:
    """Every logged operation of every worker, in the order of their start times."""
    ops = [
        json.loads(line) for path in sorted(logs.glob("w*.jsonl")) for line in path.read_text().splitlines()
    ]
    return sorted(ops, key=lambda op: op["t"])


# --- the workers ---------------------------------------------------------------------------------------


def _tree_files(tree: Path) -> None:
    """A small tree to hash: two files and a subfolder."""
    (tree / "sub").mkdir(parents=True, exist_ok=True)
    (tree / "test_a.py").write_text("def test_a():\n    pass\n")
    (tree / "sub" / "data.bin").write_bytes(bytes(range(256)))


class _Worker:
    """One process's part: its store object, its live runs, and its log."""

    def __init__(self, spec: StoreSpec, config: Config, index: int, workdir: Path, log: IO[str]) -> None:
        self.store: RunStore = spec.open()
        self.config = config
        self.index = index
        self.workdir = workdir
        self.log = log
        self.plan = load_plan(workdir / "project" / "plan.toml")
        self.shared = json.loads((workdir / "shared-hashes.json").read_text())
        self.tree = workdir / "trees" / f"w{index:02d}"
        _tree_files(self.tree)
        self.live: dict[str, Run] = {}  # runs this worker created and has not ended: nobody else ends them
        self.seen: list[str] = []  # run ids it created or reused (what it records in the batch)
        self.rng = random.Random()
        self.n = 0

    def do(self, name: str, body: Callable[[Op], None], round_no: int) -> None:
        """Run one operation and log it, with its result, the violation it showed or its traceback."""
        op: Op = {"w": self.index, "round": round_no, "n": self.n, "op": name, "t": time.time()}
        self.n += 1
        try:
            body(op)
        except Exception:
            op["error"] = traceback.format_exc()
        op["t_end"] = time.time()
        self.log.write(json.dumps(op) + "\n")
        self.log.flush()

    def round(self, round_no: int) -> None:
        self.rng = random.Random(f"{self.config.seed}:{self.index}:{round_no}")
        ops: dict[str, tuple[Callable[[Op], None], int]] = {
            "place": (self.place, 30),
            "update": (self.update, 15),
            "end": (self.end, 15),
            "list": (self.list, 10),
            "gc": (self.collect, 10),
            "hash": (self.hash, 10),
            "batch": (self.batch, 10),
        }
        for _ in range(self.config.ops_per_round):
            (name,) = self.rng.choices(list(ops), weights=[w for _, w in ops.values()])
            if name == "place" and len(self.live) >= MAX_LIVE:
                name = "end"  # slots must turn over
            elif name in ("update", "end") and not self.live:
                name = "place"
            self.do(name, ops[name][0], round_no)

    # -- runs --

    def place(self, op: Op) -> None:
        machines = self.rng.sample(sorted(MACHINES), self.rng.randint(1, 3))
        key = self.rng.choice(KEYS)
        op.update(machines=machines, key=key)

        def make(candidate: Candidate) -> Run:
            return Run(test_dir=f"/src/{key}")

        if len(machines) == 1 and self.rng.random() < 0.5:
            op["op"] = "prepare"
            (m,) = machines
            run, decision = self.store.prepare(m, key, lambda: make(Candidate(m, key)), slots=MACHINES[m])
        elif self.rng.random() < 0.25:  # a waiter in line: it asks again for a while, then gives up
            op["op"] = "wait"
            ticket = Ticket(f"w{self.index}-n{self.n}", time.time())
            candidates = [Candidate(m, key, MACHINES[m]) for m in machines]
            run, decision = self.store.place(candidates, make, wait=WAITER_S, ticket=ticket)
            if decision is Decision.BUSY:
                self.store.leave_line(ticket, machines)
        else:
            candidates = [Candidate(m, key, MACHINES[m]) for m in machines]
            run, decision = self.store.place(candidates, make)
        op.update(decision=decision.value, id=run.id, machine=run.machine)
        if run.machine not in machines or (decision is not Decision.BUSY and run.key != key):
            op["violation"] = f"{decision.value} answered with run {run.id} of {run.machine!r}/{run.key!r}"
        if decision is Decision.CREATED:
            self.live[run.id] = run
            op["record"] = run.to_dict()
        if decision is not Decision.BUSY:
            self.seen.append(run.id)

    def _own(self, op: Op) -> Run:
        run = self.live[self.rng.choice(sorted(self.live))]
        op["id"] = run.id
        return dataclasses.replace(run)

    def _lost(self, op: Op, run_id: str, exc: Exception) -> None:
        """Its own live run was ended or removed by someone else: nobody may do that."""
        op["violation"] = f"own live run {run_id} is gone or ended under its owner: {exc!r}"
        self.live.pop(run_id, None)

    def update(self, op: Op) -> None:
        run = self._own(op)
        run.status = Status.RUNNING
        run.started_at = run.started_at or time.time()
        run.container_id = f"c-w{self.index}-n{self.n}"
        run.artifacts = [*(run.artifacts or []), f"a{self.n}"]
        try:
            self.store.update(run)
        except (RunNotFound, TerminalRunError) as exc:
            self._lost(op, run.id, exc)
            return
        self.live[run.id] = run
        op["record"] = run.to_dict()

    def end(self, op: Op) -> None:
        run = self._own(op)
        files = self.store.files(run.id)
        files.dir.mkdir(parents=True, exist_ok=True)
        files.logs.write_text(f"run {run.id} by worker {self.index}\n")
        status = self.rng.choice(TERMINAL)
        try:
            ended = self.store.end(run, status, error_code=f"e-w{self.index}-n{self.n}")
        except (RunNotFound, TerminalRunError) as exc:
            self._lost(op, run.id, exc)
            return
        del self.live[run.id]
        op["record"] = ended.to_dict()
        if self.rng.random() < 0.5:  # a shared store keeps it for other runners, and prune may drop it
            self.store.save_result(ended)
            op["saved"] = True

    def list(self, op: Op) -> None:
        runs = self.store.list()
        active = self.store.active()
        op.update(runs=len(runs), active=len(active))
        over = {m: n for m, n in Counter(r.machine for r in active).items() if n > MACHINES.get(m, 0)}
        if over or len({r.id for r in runs}) != len(runs):
            op["violation"] = f"over slots {over} or twin ids in list() of {len(runs)} runs"

    # -- gc --

    def collect(self, op: Op) -> None:
        kind = self.rng.choice(["gc", "delete", "delete-live", "sweep", "prune"])
        op["kind"] = kind
        if kind == "gc":
            big = 1 << 40
            collected = gc(
                self.store,
                max_bytes=self.rng.choice([0, big]),
                store_max_bytes=self.rng.choice([0, big]),
            )
            op.update(removed=collected.deleted, pruned=collected.pruned, swept=collected.swept.to_dict())
            if collected.swept.ended or collected.problems:
                op["violation"] = (
                    f"gc ended live runs or failed: {collected.swept.ended} {collected.problems}"
                )
        elif kind == "delete":
            terminal = [r.id for r in self.store.list() if r.status.is_terminal]
            if terminal:
                run_id = op["id"] = self.rng.choice(terminal)
                try:
                    self.store.delete(run_id)
                    op["removed"] = [run_id]
                except RunNotFound:
                    op["raced"] = True  # another gc took it first
        elif kind == "delete-live":
            # Its own live run, else anyone's: a worker without one still tries (how many have
            # one at a given moment is the interleaving's, not the seed's).
            live = sorted(self.live) or sorted(run.id for run in self.store.active())
            if live:
                run_id = op["id"] = self.rng.choice(live)
                try:
                    self.store.delete(run_id)
                except TerminalRunError:
                    op["refused"] = True
                except RunNotFound:
                    op["raced"] = True  # another's run, ended and deleted by a gc meanwhile
                else:
                    op["removed"] = [run_id]
                    if run_id in self.live:
                        op["violation"] = f"delete() removed live run {run_id}"
                        del self.live[run_id]
                    # else another's run its owner ended meanwhile: a plain delete of a terminal run
        elif kind == "sweep":
            swept = self.store.sweep()
            op["swept"] = swept.to_dict()
            if swept.ended or swept.problems:
                op["violation"] = f"sweep ended live runs or failed: {swept.to_dict()}"
        elif kind == "prune":
            op["removed"] = self.store.prune(0)

    # -- hashing and batches --

    def hash(self, op: Op) -> None:
        cache = self.store.hashcache_dir
        if self.rng.random() < 0.5:
            name = f"f{self.rng.randint(0, 3)}.txt"
            if self.rng.random() < 0.25:
                (self.tree / name).unlink(missing_ok=True)
            else:
                (self.tree / name).write_text(f"{self.rng.random()}\n")
            got, wanted = hash_dir(self.tree, cache_dir=cache), hash_dir(self.tree)
            op.update(tree="own", changed=name)
        else:
            n = self.rng.randrange(SHARED_TREES)
            got, wanted = hash_dir(self.workdir / "trees" / f"shared{n}", cache_dir=cache), self.shared[n]
            op["tree"] = f"shared{n}"
        if got != wanted:
            op["violation"] = f"hash with the store's cache {got} != {wanted}"

    def join(self, op: Op) -> None:
        batch = self.store.batches.open(self.plan, BATCH_ID)
        op["batch"] = batch.id

    def batch(self, op: Op) -> None:
        if not self.seen or self.rng.random() < 0.25:
            op["op"] = "join"
            self.join(op)
            return
        entry, run_id = f"w{self.index}-n{self.n}", self.rng.choice(self.seen)
        op.update(entry=entry, id=run_id)
        batch = self.store.batches.record(BATCH_ID, entry, run_id)
        if batch.entries.get(entry) != run_id:
            op["violation"] = f"record({entry!r}, {run_id}) returned entries without it"
        if self.rng.random() < 0.25:
            op["status"] = self.store.batches.refresh(BATCH_ID).status.value


def worker_main(
    spec: StoreSpec, config: Config, index: int, workdir: str, start: Any, end: Any, errors: Any
) -> None:
    """A worker process: join the batch, then one round of operations between each pair of barriers."""
    try:
        with (Path(workdir) / "logs" / f"w{index:02d}.jsonl").open("a") as log:
            worker = _Worker(spec, config, index, Path(workdir), log)
            try:
                worker.do("join", worker.join, -1)
                for round_no in range(config.rounds):
                    start.wait(WAIT_S)
                    worker.round(round_no)
                    end.wait(WAIT_S)
            finally:
                worker.store.close()
    except BaseException:
        errors.put(f"worker {index}: {traceback.format_exc()}")
        start.abort()
        end.abort()


# --- the checker ---------------------------------------------------------------------------------------


class _Checker:
    """The invariants, judged from the store's own answers and the workers' logs."""

    def __init__(self, spec: StoreSpec, logs: Path) -> None:
        self.spec = spec
        self.logs = logs
        self.violations: list[Violation] = []
        self._lock = threading.Lock()  # the poller and the barrier checks share what follows
        self._terminal: dict[str, dict[str, Any]] = {}  # every terminal record seen, as first seen
        self._offsets: dict[Path, int] = {}
        self.operations = 0
        self.exceptions = 0
        self._gcs: list[tuple[float, float, int]] = []  # (start, end, worker) of each gc operation
        self._created: dict[str, Op] = {}
        self._live: dict[str, dict[str, Any]] = {}  # owners' live runs: the record each last wrote
        self._ended: dict[str, dict[str, Any]] = {}  # ended runs: the record end() returned
        self._removed: set[str] = set()  # runs a gc operation reports it removed
        self._entries: dict[str, str] = {}  # batch entry -> run id recorded

    def overlapping_gcs(self) -> int:
        """Pairs of gc operations of two workers that ran at the same time."""
        gcs = sorted(self._gcs)
        return sum(
            1
            for i, (_, end, worker) in enumerate(gcs)
            for start, _, other in gcs[i + 1 :]
            if start < end and other != worker
        )

    def fail(self, invariant: str, message: str, ids: Iterable[str] = ()) -> None:
        with self._lock:
            self.violations.append(Violation(invariant, message, list(ids)))

    def observe(self, store: RunStore) -> list[Run]:
        """What holds at every moment: slots, no twins, records parse, terminal records never change."""
        for machine, runs in _by_machine(store.active()).items():
            if len(runs) > MACHINES.get(machine, 0):
                ids = [r.id for r in runs]
                self.fail("slots", f"machine {machine!r} has {len(runs)} live runs: {ids}", ids)
            for key, n in Counter(r.key for r in runs).items():
                if n > 1:
                    self.fail("twins", f"key {key!r} is live {n} times on {machine!r}", [r.id for r in runs])
        runs = store.list()
        if store.problems:
            self.fail("parse", f"records that do not parse: {store.problems}")
            store.problems.clear()
        with self._lock:
            for run in (r for r in runs if r.status.is_terminal):
                record = run.to_dict()
                first = self._terminal.setdefault(run.id, record)
                if first != record:
                    self.violations.append(
                        Violation("terminal", f"terminal run {run.id} changed: {first} -> {record}", [run.id])
                    )
        return runs

    def poll(self, stop: threading.Event) -> None:
        """:meth:`observe` over and over, on a store object of its own, while the workers run."""
        store = self.spec.open()
        try:
            while not stop.wait(0.05):
                self.observe(store)
        except Exception:
            self.fail("checker", f"the poller failed: {traceback.format_exc()}")
        finally:
            store.close()

    def _read_new_ops(self) -> list[Op]:
        ops: list[Op] = []
        for path in sorted(self.logs.glob("w*.jsonl")):
            with path.open() as handle:
                handle.seek(self._offsets.get(path, 0))
                ops.extend(json.loads(line) for line in handle)
                self._offsets[path] = handle.tell()
        self.operations += len(ops)
        return sorted(ops, key=lambda op: op["t"])

    def _learn(self, op: Op) -> None:
        """Fold one logged operation into the model of what the store must hold."""
        where = f"worker {op['w']} op {op['n']} ({op['op']})"
        run_id: str = op.get("id", "")
        if "error" in op:
            self.exceptions += 1
            self.fail("error", f"{where} raised: {op['error']}", [run_id])
        if op["op"] == "gc" and op.get("kind") in ("gc", "sweep", "delete"):
            self._gcs.append((op["t"], op["t_end"], op["w"]))
        if "violation" in op:
            self.fail(op["op"], f"{where}: {op['violation']}", [run_id])
        if op["op"] in PLACEMENTS and op.get("decision") == "created":
            if run_id in self._created:
                self.fail("unique", f"{where}: run id {run_id} was created twice", [run_id])
            self._created[run_id] = op
            self._live[run_id] = op["record"]
        elif op["op"] == "update" and "record" in op:
            self._live[run_id] = op["record"]
        elif op["op"] == "end" and "record" in op:
            self._live.pop(run_id, None)
            self._ended[run_id] = op["record"]
        elif op["op"] in ("update", "end", "gc") and "violation" in op:
            self._live.pop(run_id, None)  # already counted; the owner no longer tracks it
        elif op["op"] == "batch" and "entry" in op and "error" not in op:
            self._entries[op["entry"]] = run_id
        self._removed.update(op.get("removed", ()))
        self._removed.update(op.get("pruned", ()))

    def at_barrier(self, store: RunStore, where: str) -> None:
        """Everything, with the workers paused: the store against the model of their logs."""
        for op in self._read_new_ops():
            self._learn(op)
        runs = self.observe(store)
        problems = store.check()
        if problems:
            self.fail("check", f"{where}: check() found {problems}")
        by_id = {r.id: r for r in runs}
        if len(by_id) != len(runs):
            twins = [i for i, n in Counter(r.id for r in runs).items() if n > 1]
            self.fail("unique", f"{where}: list() names a run id twice: {twins}", twins)
        live = {r.id for r in runs if not r.status.is_terminal}
        active = {r.id for r in store.active()}
        if active != live:
            self.fail("active", f"{where}: active() {sorted(active)} != live in list() {sorted(live)}")
        for run_id, record in self._live.items():
            stored = by_id.get(run_id)
            if stored is None:
                self.fail("gc", f"{where}: live run {run_id} is gone", [run_id])
            elif stored.to_dict() != record:
                self.fail(
                    "lost", f"{where}: run {run_id} is {stored.to_dict()}, its owner wrote {record}", [run_id]
                )
        for run_id, record in self._ended.items():
            stored = by_id.get(run_id)
            if stored is None and run_id not in self._removed:
                self.fail("gone", f"{where}: ended run {run_id} is gone, and no gc removed it", [run_id])
            elif stored is not None and stored.to_dict() != record:
                self.fail(
                    "lost", f"{where}: run {run_id} is {stored.to_dict()}, end() wrote {record}", [run_id]
                )
        for run_id in live - self._live.keys():
            self.fail("model", f"{where}: live run {run_id} is no worker's", [run_id])
        entries = store.batches.get(BATCH_ID).entries if self._entries else {}
        for entry, run_id in self._entries.items():
            if entries.get(entry) != run_id:
                self.fail(
                    "lost", f"{where}: batch entry {entry} is {entries.get(entry)}, not {run_id}", [entry]
                )


def _by_machine(runs: Iterable[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.machine, []).append(run)
    return grouped


# --- the harness ---------------------------------------------------------------------------------------


def run(spec: StoreSpec, config: Config, workdir: Path) -> Report:
    """Run ``config`` on the store of ``spec``; ``workdir`` holds the plan, the trees and the logs."""
    write_plan(workdir / "project")
    shared = []
    for n in range(SHARED_TREES):
        tree = workdir / "trees" / f"shared{n}"
        _tree_files(tree)
        (tree / f"only{n}.txt").write_text(str(n))
        shared.append(hash_dir(tree))
    (workdir / "shared-hashes.json").write_text(json.dumps(shared))
    logs = workdir / "logs"
    logs.mkdir()
    checker = _Checker(spec, logs)
    start, end = CTX.Barrier(config.processes + 1), CTX.Barrier(config.processes + 1)
    errors = CTX.Queue()
    procs = [
        CTX.Process(target=worker_main, args=(spec, config, i, str(workdir), start, end, errors), daemon=True)
        for i in range(config.processes)
    ]
    stop = threading.Event()
    poller = threading.Thread(target=checker.poll, args=(stop,), daemon=True)
    store = spec.open()
    began = time.monotonic()
    poller.start()
    try:
        for proc in procs:
            proc.start()
        for round_no in range(config.rounds):
            start.wait(WAIT_S)
            end.wait(WAIT_S)
            checker.at_barrier(store, f"after round {round_no}")
    except BaseException as exc:
        # Release the workers (only now: an abort would also break those still leaving a barrier).
        start.abort()
        end.abort()
        if not isinstance(exc, Exception):
            raise
        broke = isinstance(exc, threading.BrokenBarrierError)
        checker.fail(
            "harness", "a worker died or a round outlasted the wait" if broke else traceback.format_exc()
        )
    finally:
        stop.set()
        poller.join(WAIT_S)
        reap_processes(procs)
        while not errors.empty():
            checker.fail("harness", errors.get(timeout=5))
        errors.close()
        errors.join_thread()
    try:
        checker.at_barrier(store, "at the end")
    except Exception:  # say, the database went away: a failed run, with its seed and logs
        checker.fail("harness", traceback.format_exc())
    finally:
        store.close()
    return Report(
        spec.backend,
        config,
        checker.operations,
        checker.violations,
        time.monotonic() - began,
        logs,
        checker.exceptions,
        checker.overlapping_gcs(),
    )


def recheck(spec: StoreSpec, logs: Path) -> list[Violation]:
    """The barrier checks of a finished :func:`run` again, on the store as it is now."""
    checker = _Checker(spec, logs)
    store = spec.open()
    try:
        checker.at_barrier(store, "on a recheck")
    finally:
        store.close()
    return checker.violations
