"""Suites that carry their own pytest config, inside a project whose pyproject.toml names the machines.

Real projects (toolz, parso) ship a ``setup.cfg`` or ``tox.ini``: dispatched from the project's
root, such a suite is pytest's rootdir, not the project. The machine tables are still the project's
(found upward from where pytest starts, as ``lrun`` finds them), or the file ``--lrun-config`` names.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from lrun_support import PYTHON_IMAGE, write_tests

PASSING = """
    def test_one():
        assert 1


    def test_two():
        assert 2
"""


def _tables(engines: list[str]) -> str:
    return textwrap.dedent(
        f"""
        [tool.lrun.machines.e1]
        host = "{engines[0]}"
        image = "{PYTHON_IMAGE}"
        tags = ["fleet"]

        [tool.lrun.machines.e2]
        host = "{engines[1]}"
        image = "{PYTHON_IMAGE}"
        tags = ["fleet"]
        """
    )


@pytest.fixture
def suite(pytester: pytest.Pytester, project: Path, engines: list[str]) -> Path:
    """``toolz/`` with its own setup.cfg, in a project whose pyproject.toml names e1 and e2 (tag fleet)."""
    pytester.makepyprojecttoml(_tables(engines))
    toolz = write_tests(project, "toolz", PASSING)
    (toolz / "setup.cfg").write_text("[tool:pytest]\naddopts = -ra\n")
    return toolz


@pytest.mark.parametrize("target", ["tag:fleet", "e1", "e2"])
def test_a_suite_with_its_own_setup_cfg_runs_on_the_project_s_machines(
    pytester: pytest.Pytester, suite: Path, state_dir: Path, target: str
) -> None:
    result = pytester.runpytest_subprocess(f"--lrun-machine={target}", "toolz")
    result.stdout.fnmatch_lines([f"rootdir: {suite}", "configfile: setup.cfg"])  # the suite is the rootdir
    result.assert_outcomes(passed=2)
    (record,) = [json.loads(p.read_text()) for p in (state_dir / "runs").glob("*/run.json")]
    assert record["status"] == "completed"
    assert record["machine"] in (("e1", "e2") if target == "tag:fleet" else (target,))


def test_lrun_config_names_the_machine_file_and_errors_name_the_file_read(
    pytester: pytest.Pytester, suite: Path, engines: list[str], state_dir: Path
) -> None:
    pytester.makepyprojecttoml("")  # the project names no machines now
    fleet = pytester.path / "ci" / "fleet.toml"
    fleet.parent.mkdir()
    fleet.write_text(_tables(engines))
    missing = pytester.runpytest_subprocess("--lrun-machine=e2", "toolz")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(
        [f"*unknown machine 'e2'; known machines: *(machine tables read from {pytester.path}/pyproject.toml)"]
    )
    result = pytester.runpytest_subprocess("--lrun-machine=e2", "--lrun-config=ci/fleet.toml", "toolz")
    result.assert_outcomes(passed=2)
    (record,) = [json.loads(p.read_text()) for p in (state_dir / "runs").glob("*/run.json")]
    assert (record["machine"], record["status"]) == ("e2", "completed")


def test_a_node_id_below_a_package_ships_that_folder_alone_and_the_readme_s_ways_ship_the_root(
    pytester: pytest.Pytester, project: Path, engines: list[str]
) -> None:
    pytester.makepyprojecttoml(_tables(engines))
    tests = project / "toolz" / "tests"
    tests.mkdir(parents=True)
    (project / "toolz" / "__init__.py").write_text("X = 1\n")
    (tests / "test_x.py").write_text("import toolz\n\n\ndef test_y():\n    assert toolz.X == 1\n")
    alone = pytester.runpytest_subprocess("--lrun-machine=e1", "toolz/tests/test_x.py::test_y")
    assert alone.ret != 0
    alone.stdout.fnmatch_lines(
        [
            "lrun: hint: toolz/tests/test_x.py could not import 'toolz': only toolz/ was shipped, and "
            "toolz is that folder itself, so its parent is needed. Ship the project root: dispatch it "
            "whole and select inside it (pytest --lrun-machine=e1 . -k EXPR), or make its parent the "
            "rootdir (--rootdir=..)",
            "*ModuleNotFoundError: No module named 'toolz'*",
        ]
    )
    whole = pytester.runpytest_subprocess("--lrun-machine=e1", ".", "-k", "test_y")
    whole.assert_outcomes(passed=1)
    assert "lrun: hint:" not in whole.stdout.str()
    parent = pytester.runpytest_subprocess(
        "--rootdir=..", "--lrun-machine=e1", "toolz/tests/test_x.py::test_y"
    )
    parent.assert_outcomes(passed=1)
