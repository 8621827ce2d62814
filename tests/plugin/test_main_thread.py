"""Hooks and terminal writes happen on pytest's main thread, whatever the worker threads do.

The machines are fake engines supplied through ``pytest_lrun_make_engine`` (a
narrow seam: what is under test is the session's event queue, not Docker).
``tests/integration/test_main_thread.py`` proves the same on real engines.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch

import pytest

from pytest_lrun.config.settings import OPTIONS

PYPROJECT = """
[tool.lrun.machines.m1]
host = "tcp://127.0.0.1:1"
image = "img:1"

[tool.lrun.machines.m2]
host = "tcp://127.0.0.1:1"
image = "img:1"
"""

# Dir "a" runs on m1, dir "b" on m2 (the plan names the machines: a run per machine, in parallel).
PLAN = """
[[entry]]
name = "a1"
dir = "a"
machine = "m1"

[[entry]]
name = "b2"
dir = "b"
machine = "m2"
"""

# A conftest whose engines run every container at once (one line of output, exit 0), and which
# records in order, with whether it was on the main thread, each "lrun:" terminal line and each
# pytest_lrun_run_finished call. On the machines named in ENGINE_BUG the engine raises a bug (not an
# LrunError); on those in HOOK_BUG the hook raises after recording its call.
CONFTEST = """
import json
import threading
from pathlib import Path

import pytest

ENGINE_BUG = {engine_bug!r}
HOOK_BUG = {hook_bug!r}
EVENTS = []


def _on_main():
    return threading.current_thread() is threading.main_thread()


class FakeEngine:
    def __init__(self, machine):
        self.machine = machine.name
        self.url = "fake://" + machine.name

    def ping(self):
        pass

    def image_id(self, image, pull):
        if self.machine in ENGINE_BUG:
            raise RuntimeError("engine bug on " + self.machine)
        return "sha256:fake"

    def create(self, spec):
        return "c-" + spec.labels["lrun.run-id"]

    def put_archive(self, container_id, path, data):
        pass

    def start(self, container_id):
        pass

    def wait(self, container_id, timeout):
        return 0

    def logs(self, container_id, *, follow):
        yield ("hello from " + self.machine + "\\n").encode()

    def untouched(self, container_id, path, mtime):
        return False

    def get_archive(self, container_id, path):
        return None

    def inspect(self, container_id):
        return None

    def kill(self, container_id):
        pass

    def remove(self, container_id):
        pass

    def list_labelled(self, label):
        return []

    def close(self):
        pass


def pytest_lrun_make_engine(machine, config):
    return FakeEngine(machine)


def pytest_lrun_run_finished(spec, outcome, config):
    EVENTS.append(["finished " + spec.machine.name, _on_main()])
    if spec.machine.name in HOOK_BUG:
        raise ValueError("hook bug on " + spec.machine.name)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    write_line = reporter.write_line

    def recording(line, **kwargs):
        if line.startswith("lrun:"):
            EVENTS.append([line, _on_main()])
        write_line(line, **kwargs)

    reporter.write_line = recording


def pytest_unconfigure(config):
    Path("events.json").write_text(json.dumps(EVENTS))
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.setenv("LRUN_STATE_DIR", str(pytester.path / "state"))
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.path.joinpath("plan.toml").write_text(PLAN)
    for name in ("a", "b"):
        pytester.mkdir(name)
    return pytester


def _run(
    project: pytest.Pytester, *args: str, engine_bug: tuple[str, ...] = (), hook_bug: tuple[str, ...] = ()
) -> tuple[pytest.RunResult, list[str]]:
    """Run pytest on the plan; the result and the recorded events, each checked to be on the main thread."""
    project.makeconftest(CONFTEST.format(engine_bug=set(engine_bug), hook_bug=set(hook_bug)))
    # Bounded: before the main-thread loop, a raising hook left pytest waiting forever in collection.
    result = project.runpytest_subprocess("--lrun-plan=plan.toml", *args, timeout=60)
    events = json.loads(project.path.joinpath("events.json").read_text())
    off_main = [what for what, on_main in events if not on_main]
    assert not off_main, f"called from a worker thread: {off_main}"
    return result, [what for what, _ in events]


def _index(events: list[str], pattern: str) -> int:
    """The position of the one event matching fnmatch ``pattern``."""
    (found,) = [i for i, event in enumerate(events) if fnmatch(event, pattern)]
    return found


def test_hooks_and_progress_of_both_machines_run_on_the_main_thread(project: pytest.Pytester) -> None:
    result, events = _run(project, "--lrun-live")
    result.assert_outcomes(passed=2)
    for machine, name in (("m1", "a"), ("m2", "b")):
        dispatching = _index(events, f"lrun: {machine}: dispatching {name} *")
        output = _index(events, f"lrun: [[]{machine} {name}] hello from {machine}")
        done = _index(events, f"lrun: {machine}: {name} * completed (created) *")
        finished = _index(events, f"finished {machine}")
        assert dispatching < output < done < finished, events


def test_a_worker_bug_fails_its_run_and_the_other_machine_goes_on(project: pytest.Pytester) -> None:
    result, events = _run(project, "-rA", engine_bug=("m2",))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: engine bug on m2*", "ERROR b::lrun[[]m2[]] - *internal error*"]
    )
    assert "finished m1" in events and "finished m2" not in events


def test_a_raising_hook_fails_its_run_instead_of_hanging(project: pytest.Pytester) -> None:
    result, _ = _run(project, "-rA", hook_bug=("m2",))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ValueError: hook bug on m2*", "ERROR b::lrun[[]m2[]] - *internal error*"])
