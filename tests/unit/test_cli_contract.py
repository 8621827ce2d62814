"""The ``lrun`` contract: every ``--json`` shape pinned by a golden file, every command under partial state.

Golden files live in ``tests/golden/<case>.json``. Values that change from run to
run (run ids, times, paths, hostnames, pids, sizes, ages) are replaced by
placeholders (:func:`normalise`) before comparing. After an intended change of a
shape, regenerate them all with::

    LRUN_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_cli_contract.py

and review the diff of ``tests/golden/``. Engines are faked at the one seam the
command line dials through (``_Context.connect``): machines ``m1`` and ``m2``
answer, every other machine is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun import cli
from pytest_lrun.cli.commands import EXIT_BATCH_FAILED, EXIT_BATCH_INCOMPLETE, EXIT_BATCH_UNFINISHED
from pytest_lrun.cli.context import Context
from pytest_lrun.cli.output import JSON_SCHEMA_VERSION
from pytest_lrun.cli.parser import build_parser
from pytest_lrun.config.builds import LABEL_BUILD, LABEL_BUILD_CONTEXT
from pytest_lrun.config.machines import Machine
from pytest_lrun.config.plan import load_plan
from pytest_lrun.core.errors import EngineUnreachable
from pytest_lrun.core.times import parse_time
from pytest_lrun.engine import LABEL_CREATED, LABEL_RUN, LABEL_STORE, ContainerState, Engine, ImageInfo
from pytest_lrun.store import Decision, Run, RunStore, Status
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.outcomes import InnerOutcome

GOLDEN = Path(__file__).parents[1] / "golden"
UPDATE = os.environ.get("LRUN_UPDATE_GOLDEN") == "1"
STAMP = 1577934245.123  # 2020-01-02T03:04:05.123Z: the runs' times, kept in the goldens (see normalise)
MISSING_RUN = "20200101T000000-deadbeef"  # recorded in a batch, its record never reached this state dir


# --- a fake engine at the command line's seam -------------------------------------------


class FakeEngine:
    """An :class:`~pytest_lrun.engine.Engine` holding containers in a dict; what lrun never calls fails."""

    def __init__(self, machine: str) -> None:
        self.machine = machine
        self.url = f"tcp://{machine}.invalid:2375"
        self.containers: dict[str, ContainerState] = {}
        self.built: dict[str, ImageInfo] = {}  # images pytest-lrun built, by id

    def add(self, container_id: str, run_id: str, store: RunStore, *, age: float, running: bool) -> None:
        labels = {LABEL_RUN: run_id, LABEL_STORE: store.store_id, LABEL_CREATED: str(time.time() - age)}
        status = "running" if running else "exited"
        self.containers[container_id] = ContainerState(
            container_id, status, running, None if running else 0, labels=labels
        )

    def ping(self) -> None:
        pass

    def inspect(self, container_id: str) -> ContainerState | None:
        return self.containers.get(container_id)

    def kill(self, container_id: str) -> None:
        state = self.containers[container_id]
        self.containers[container_id] = replace(state, status="exited", running=False, exit_code=137)

    def interrupt(self, container_id: str) -> None:  # the inner pytest stops on SIGINT
        state = self.containers[container_id]
        self.containers[container_id] = replace(state, status="exited", running=False, exit_code=2)

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        return self.containers[container_id].exit_code

    def remove(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    def list_labelled(self, label: str) -> list[ContainerState]:
        return [state for state in self.containers.values() if label in state.labels]

    def images(self, label: str) -> list[ImageInfo]:
        return [image for image in self.built.values() if label in image.labels]

    def remove_image(self, image: str) -> bool:
        return self.built.pop(image, None) is not None

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # create, start, logs, ...: never needed by lrun
        raise AssertionError(f"lrun called engine.{name}")


@dataclass
class World:
    """A state dir and project, with fake engines for ``m1`` and ``m2``."""

    root: Path
    store: RunStore
    engines: dict[str, FakeEngine]
    capsys: pytest.CaptureFixture[str]

    def lrun(self, *args: str) -> tuple[int, str, str]:
        """``lrun ARGS`` in-process: (exit status, stdout, stderr)."""
        self.capsys.readouterr()
        try:
            status = cli.main(list(args))
        except SystemExit as e:  # argparse usage errors
            status = int(e.code or 0)
        out, err = self.capsys.readouterr()
        return status, out, err


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> World:
    state = tmp_path / "state"
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        "".join(
            f'[tool.lrun.machines.{name}]\nhost = "tcp://{name}.invalid:2375"\n\n' for name in ("m1", "m2")
        )
        + '[tool.lrun.machines.pair]\nhost = "tcp://pair.invalid:2375"\n'
        + 'tags = ["fleet", "big"]\nslots = 2\n\n'
        + '[tool.lrun.machines.down]\nhost = "tcp://down.invalid:2375"\n'
    )
    monkeypatch.chdir(project)
    monkeypatch.setenv("LRUN_STATE_DIR", str(state))
    monkeypatch.setenv("DOCKER_HOST", "tcp://local.invalid:2375")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for name in ("LRUN_STATE_MAX_BYTES", "LRUN_REAP_AGE", "LRUN_CONNECT_TIMEOUT", "LRUN_IMAGE_MAX_AGE"):
        monkeypatch.delenv(name, raising=False)
    engines = {name: FakeEngine(name) for name in ("m1", "m2")}

    def connect(_ctx: object, machine: Machine) -> Engine:
        if machine.name not in engines:
            raise EngineUnreachable(machine.name, machine.host, "no route to host")
        return engines[machine.name]

    monkeypatch.setattr(Context, "connect", connect)
    return World(tmp_path, FileStore(state, durable=False), engines, capsys)


def live(world: World, machine: str, created_at: float, container_id: str | None = None) -> Run:
    """A live run of ``machine``: running in container ``container_id``, or pending without one."""
    store = world.store
    run, outcome = store.prepare(
        machine, f"key-{machine}", lambda: Run(test_dir="/src/live", created_at=created_at)
    )
    assert outcome is Decision.CREATED
    if container_id is not None:
        run = replace(run, status=Status.RUNNING, container_id=container_id, started_at=created_at + 1)
        store.update(run)
    return run


def plan(world: World, *names: str) -> Path:
    """A plan file with one entry per name, all on m1."""
    folder = world.root / "plan"
    (folder / "a").mkdir(parents=True, exist_ok=True)
    path = folder / "plan.toml"
    path.write_text("".join(f'[[entry]]\nname = "{n}"\ndir = "a"\nmachine = "m1"\n\n' for n in names))
    return path


@dataclass
class Populated:
    done: Run
    failed: Run
    running: Run
    vanished: Run


@pytest.fixture
def populated(world: World) -> Populated:
    """Runs of every kind, a batch with entries not run here, and containers on the fake engines."""
    store = world.store
    done_id = "20200102T030405-0000d0e1"
    done = store.insert(
        Run(
            id=done_id,
            machine="m1",
            test_dir="/src/suite",
            test_dir_hash="abc123",
            key="key-done",
            status=Status.COMPLETED,
            exit_code=0,
            created_at=STAMP,
            started_at=STAMP + 1,
            ended_at=STAMP + 12.5,
            logs_path=str(store.files(done_id).logs),
            artifacts_path=str(store.files(done_id).artifacts),
            batch_id="b-golden",
            plan_entry="done",
            container_id="c-done",
            image="python:3.12-slim",
            command=["python3", "-m", "pytest"],
            timeout=600.0,
            artifacts=["/lrun/artifacts"],
            env_names=["TOKEN"],
        )
    )
    failed = store.insert(
        Run(
            machine="m2",
            test_dir="/src/other",
            test_dir_hash="def456",
            key="key-failed",
            status=Status.FAILED,
            exit_code=1,
            created_at=STAMP + 60,
            started_at=STAMP + 61,
            ended_at=STAMP + 65,
            error_code="exit_nonzero",
            error_msg="pytest exited with code 1",
        )
    )
    running = live(world, "m1", STAMP + 120, "c-running")
    vanished = live(world, "m2", STAMP + 180, "c-vanished")  # its container is gone from m2
    live(world, "down", STAMP + 240, "c-down")  # its engine does not answer
    orphan = store.runs_dir / "20200102T030405-0000dead"  # a crash's leftover: a run folder, no record
    orphan.mkdir()
    os.utime(orphan, (STAMP, STAMP))
    world.engines["m1"].add("c-done", done.id, store, age=3600, running=False)
    world.engines["m1"].add("c-running", running.id, store, age=3600, running=True)
    digest = "0123456789abcdef" * 2
    labels = {LABEL_BUILD: digest, LABEL_BUILD_CONTEXT: "/src/docker/test"}
    image_id = "sha256:" + "ab" * 32
    world.engines["m1"].built[image_id] = ImageInfo(
        image_id, (f"lrun-build:{digest}",), labels, 123456, STAMP
    )
    batches = FileStore(store.state_dir, durable=False).batches
    batch = batches.open(load_plan(plan(world, "done", "gone", "later")), "b-golden")
    batches.record(batch.id, "done", done.id)
    batches.record(batch.id, "gone", MISSING_RUN)
    store.files(done.id).junit.write_text(  # its inner tests, counted in the batch's rows
        '<testsuite name="pytest" tests="3"><testcase classname="t" name="a"/><testcase classname="t" '
        'name="b"/><testcase classname="t" name="c"><skipped type="pytest.skip" message="s"/></testcase>'
        "</testsuite>\n"
    )
    # Two runs of key-done disagreed on t.py::b (a third, of another key, proves nothing).
    store.save_outcomes(
        [
            InnerOutcome("key-done", "suite", "t.py::b", "r-old", "m2", "failed", STAMP - 600),
            InnerOutcome("key-done", "suite", "t.py::b", done.id, "m1", "passed", STAMP + 12.5),
            InnerOutcome("key-done", "suite", "t.py::a", done.id, "m1", "passed", STAMP + 12.5),
            InnerOutcome("key-failed", "other", "t.py::c", failed.id, "m2", "failed", STAMP + 65),
        ]
    )
    store.quarantine_test("suite/t.py::b", STAMP + 86400)
    return Populated(done, failed, running, vanished)


# --- golden files ---------------------------------------------------------------------------

_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_FIXED_TIMES = (STAMP, STAMP + 86400)  # what the test wrote; later times are the clock's
_VOLATILE_KEYS = frozenset({"host", "pid", "size_before", "size_after", "freed_bytes", "age_s"})


def normalise(text: str, root: Path) -> Any:
    """The JSON document ``text`` with what differs between runs replaced by placeholders.

    Paths under the test's folder start with ``<tmp>``; run ids become ``<run-N>``
    in order of appearance; RFC 3339 times taken from the clock become ``<time>``
    (only the contract's exact spelling is recognised: another one shows up as a
    diff); owner hosts and pids, sizes and ages become ``<key>``.
    """
    for prefix in sorted({str(root), os.path.realpath(root)}, key=len, reverse=True):
        text = text.replace(json.dumps(prefix)[1:-1], "<tmp>")
    ids: dict[str, str] = {}

    def run_id(match: re.Match[str]) -> str:
        return ids.setdefault(match.group(), f"<run-{len(ids) + 1}>")

    def clock_time(match: re.Match[str]) -> str:
        fixed = _FIXED_TIMES[0] <= parse_time(match.group()) <= _FIXED_TIMES[1]
        return match.group() if fixed else "<time>"

    def walk(value: Any, key: str | None = None) -> Any:
        if key in _VOLATILE_KEYS and value is not None:
            return f"<{key}>"
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return _TIME.sub(clock_time, _RUN_ID.sub(run_id, value))
        return value

    return walk(json.loads(text))


def check_golden(name: str, output: str, root: Path) -> None:
    """Compare normalised ``output`` with ``tests/golden/<name>.json`` (rewrite it: LRUN_UPDATE_GOLDEN=1)."""
    data = normalise(output, root)
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return
    assert path.is_file(), f"no golden file {path}: run with LRUN_UPDATE_GOLDEN=1 to write it"
    assert data == json.loads(path.read_text()), f"{name}: --json output differs from {path}"


@dataclass(frozen=True)
class Case:
    """One ``--json`` output to pin: the command line (``{name}`` fields are run ids) and its exit status."""

    args: tuple[str, ...]
    status: int = 0


CASES: dict[str, Case] = {
    "runs": Case(("runs", "--json")),
    "show": Case(("show", "{done}", "--json")),
    "cancel": Case(("cancel", "{running}", "--json")),
    # A run gone counts as interrupted: the batch failed, and lrun batch says so in its exit status.
    "batch": Case(("batch", "b-golden", "--json"), status=EXIT_BATCH_FAILED),
    "machines": Case(("machines", "--json")),
    "gc": Case(("gc", "--max-bytes", "1", "--json")),  # deletes every terminal run; live ones stay
    "reap": Case(("reap", "--json")),
    "images": Case(("images", "--json")),
    "gc_images": Case(("gc", "--images", "--image-max-age", "0", "--json")),
    "flaky": Case(("flaky", "--json")),
    "error": Case(("show", MISSING_RUN, "--json"), status=3),
}


@pytest.mark.parametrize("name", CASES)
def test_json_output_matches_its_golden_file(name: str, world: World, populated: Populated) -> None:
    case = CASES[name]
    ids = {"done": populated.done.id, "running": populated.running.id}
    status, out, err = world.lrun(*(arg.format(**ids) for arg in case.args))
    assert status == case.status, err
    assert json.loads(out)["schema_version"] == JSON_SCHEMA_VERSION == 1
    check_golden(name, out, world.root)


def test_every_json_command_has_a_golden_case() -> None:
    subparsers = next(
        action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    with_json = {
        name
        for name, parser in subparsers.choices.items()
        if any("--json" in action.option_strings for action in parser._actions)
    }
    assert with_json == {case.args[0] for name, case in CASES.items() if name != "error"}


def test_golden_files_are_only_those_of_the_cases() -> None:
    assert {path.stem for path in GOLDEN.glob("*.json")} == set(CASES)


def test_the_goldens_pin_the_side_effects_too(world: World, populated: Populated) -> None:
    # What the goldens show is what happened: the fake engines' containers and the store agree.
    assert world.lrun("cancel", populated.running.id, "--json")[0] == 0
    assert "c-running" not in world.engines["m1"].containers
    assert world.lrun("reap", "--json")[0] == 0
    assert "c-done" not in world.engines["m1"].containers
    status, out, _ = world.lrun("gc", "--json")
    assert status == 0
    changed = json.loads(out)["reconcile"]["changed"]
    assert [(c["run_id"], c["new_status"]) for c in changed] == [(populated.vanished.id, "interrupted")]
    assert world.store.get(populated.vanished.id).error_code == "container_gone"


# --- partial state: every command, never a traceback -------------------------------------


@dataclass
class Partial:
    """Ids in a state dir that holds only part of the picture."""

    bare: str  # a pending run with null times, no container, no exit code, no owner, null command
    ended: str  # a terminal run with the same nulls
    corrupt: str  # a run folder whose record does not parse
    missing: str = MISSING_RUN  # named by the batch, never stored here
    batch: str = "b-partial"


def strip_record(store: RunStore, run_id: str) -> None:
    """Rewrite a run's record by hand with every optional field null (as an older or foreign writer may)."""
    path = store.files(run_id).record
    data = json.loads(path.read_text())
    keep = {"id", "machine", "test_dir", "test_dir_hash", "key", "status"}
    path.write_text(json.dumps({k: (v if k in keep else None) for k, v in data.items()}))


@pytest.fixture
def partial(world: World) -> Partial:
    store = world.store
    bare = live(world, "m1", STAMP)
    strip_record(store, bare.id)
    ended = store.insert(Run(machine="m2", test_dir="/src/ended", key="k", status=Status.FAILED))
    strip_record(store, ended.id)
    corrupt = store.insert(Run(machine="m2", test_dir="/src/corrupt", key="k2", status=Status.COMPLETED))
    (store.files(corrupt.id).record).write_text('{"id": "torn')
    batches = FileStore(store.state_dir, durable=False).batches
    batch = batches.open(load_plan(plan(world, "bare", "missing", "later")), "b-partial")
    batches.record(batch.id, "bare", bare.id)
    batches.record(batch.id, "missing", MISSING_RUN)
    return Partial(bare.id, ended.id, corrupt.id)


# (command line with {fields} of Partial, exit status on the partial state dir, on an empty one)
COMMANDS: list[tuple[tuple[str, ...], int, int]] = [
    (("runs",), 0, 0),
    (("show", "{bare}"), 0, 3),
    (("show", "{ended}"), 0, 3),
    (("show", "{missing}"), 3, 3),
    (("show", "{corrupt}"), 1, 3),
    (("logs", "{bare}"), 0, 3),
    (("logs", "{missing}"), 3, 3),
    (("logs", "{corrupt}"), 1, 3),
    (("cancel", "{bare}"), 0, 3),
    (("cancel", "{ended}"), 1, 3),
    (("cancel", "{corrupt}"), 1, 3),
    (("batch", "{batch}"), EXIT_BATCH_UNFINISHED, 3),  # its exit status follows the batch: running
    (("machines",), 0, 0),
    (("gc",), 0, 0),
    (("reap",), 0, 0),
    (("images",), 0, 0),
    (("gc", "--images"), 0, 0),
    (("flaky",), 0, 0),
    (("flaky", "release", "suite/t.py::b"), 0, 0),
    (("flaky", "quarantine"), 2, 2),
]


BATCH_EXITS = (EXIT_BATCH_FAILED, EXIT_BATCH_INCOMPLETE, EXIT_BATCH_UNFINISHED)


def _check_answer(status: int, out: str, err: str, expected: int, *, as_json: bool) -> None:
    assert status == expected, err
    assert "Traceback" not in out + err
    for line in err.splitlines():
        assert line.startswith("lrun: "), err
    if status in BATCH_EXITS:  # no error: lrun batch shows a batch that did not complete
        assert err == ""
        assert json.loads(out)["batch"]["status"] if as_json else out.startswith("batch ")
    elif status != 0:
        if as_json:
            assert json.loads(out)["error"]["code"]
        else:
            assert err.splitlines()[-1].startswith("lrun: error: ") and out == ""
    elif as_json:
        assert json.loads(out)["schema_version"] == 1


@pytest.mark.parametrize(
    ("args", "on_partial", "on_empty", "as_json"),
    [
        pytest.param(
            args, on_partial, on_empty, as_json, id=" ".join((*args, "--json")[: len(args) + as_json])
        )
        for args, on_partial, on_empty in COMMANDS
        for as_json in (False, True)
        if not (as_json and args[0] == "logs")  # the one command without --json
    ],
)
def test_every_command_on_partial_and_empty_state(
    world: World,
    partial: Partial,
    args: tuple[str, ...],
    on_partial: int,
    on_empty: int,
    as_json: bool,
) -> None:
    line = [arg.format(**vars(partial)) for arg in args]
    flags = ["--json"] if as_json else []
    _check_answer(*world.lrun(*line, *flags), on_partial, as_json=as_json)
    _check_answer(
        *world.lrun(*line, *flags, "--state-dir", str(world.root / "empty")), on_empty, as_json=as_json
    )


def test_a_corrupt_record_is_reported_once(world: World, partial: Partial) -> None:
    status, out, err = world.lrun("show", partial.corrupt)
    assert (status, out) == (1, "")
    assert err.startswith("lrun: error: corrupt state file ") and err.count("\n") == 1  # not also a warning
    assert world.lrun("show", partial.corrupt)[0] == 3  # moved aside: no longer here


def test_partial_state_reads_as_a_user_expects(world: World, partial: Partial) -> None:
    status, out, err = world.lrun("runs")
    assert status == 0
    assert err.startswith(
        f"lrun: warning: corrupt state file {world.store.files(partial.corrupt).dir}/run.json"
    )
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows[partial.bare][2:] == ["pending", "-", "/src/live", "-"]  # no exit code, no age
    assert partial.corrupt not in rows

    status, out, _ = world.lrun("show", partial.bare)
    shown = dict(line.split(None, 1) for line in out.splitlines())
    assert shown["created_at"] == shown["owner"] == shown["command"] == shown["container_id"] == "-"

    status, out, _ = world.lrun("batch", partial.batch)
    table = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert table["bare"][2] == "pending" and table["missing"][2] == "missing" and table["later"][5] == "-"

    status, out, _ = world.lrun("cancel", partial.bare)
    assert (status, out) == (0, f"cancelled run {partial.bare} on m1\n")
    assert world.store.get(partial.bare).status is Status.INTERRUPTED
