"""The hint after a run whose inner collection missed a package that was not shipped with it."""

from __future__ import annotations

from pathlib import Path

from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import LrunError
from pytest_lrun.report.hints import shipping_hint
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import Collected, CollectError


def _outcome(*errors: tuple[str, str]) -> RunResult:
    run = Run(machine="m1", test_dir="/x", status=Status.FAILED, exit_code=2)
    collected = Collected(1, (), tuple(CollectError(nodeid, text) for nodeid, text in errors), ())
    return RunResult(run, "created", events=[collected])


def _spec(test_dir: Path) -> RunSpec:
    return RunSpec(
        test_dir=test_dir, machine=Machine("m1", "unix:///x", "config"), image="i", command=("pytest",)
    )


def test_a_package_folder_shipped_alone_gets_the_hint(tmp_path: Path) -> None:
    (tmp_path / "toolz").mkdir()
    error = ("tests/test_x.py", "E   ModuleNotFoundError: No module named 'toolz'")
    hint = shipping_hint(_spec(tmp_path / "toolz"), _outcome(error), tmp_path)
    assert hint is not None and hint.startswith(
        "toolz/tests/test_x.py could not import 'toolz': only toolz/ was shipped, and toolz is that folder "
        "itself, so its parent is needed. Ship the project root: "
    )


def test_a_package_beside_the_shipped_folder_gets_the_hint(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "helpers.py").write_text("")
    error = ("test_x.py", "E   ModuleNotFoundError: No module named 'helpers'")
    hint = shipping_hint(_spec(tmp_path / "tests"), _outcome(error), tmp_path)
    assert hint is not None and "only tests/ was shipped, and helpers is beside it" in hint


def test_a_module_the_image_lacks_and_other_outcomes_get_none(tmp_path: Path) -> None:
    (tmp_path / "toolz").mkdir()
    error = ("tests/test_x.py", "E   ModuleNotFoundError: No module named 'numpy'")
    assert shipping_hint(_spec(tmp_path / "toolz"), _outcome(error), tmp_path) is None
    assert shipping_hint(_spec(tmp_path / "toolz"), _outcome(), tmp_path) is None
    assert shipping_hint(_spec(tmp_path / "toolz"), LrunError("no engine"), tmp_path) is None
