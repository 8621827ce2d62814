"""Selections: which directory an argument dispatches, what goes into the inner command, host -k/-m."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun.config.select import HostSelection, Selection, dispatched_dir, last_failed
from pytest_lrun.core.errors import ConfigError


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "suite" / "sub").mkdir(parents=True)
    (tmp_path / "suite" / "sub" / "test_x.py").write_text("def test_y(): pass\n")
    (tmp_path / "top.py").write_text("")
    return tmp_path


def test_a_node_id_selects_inside_the_top_level_directory_that_holds_it(project: Path) -> None:
    assert dispatched_dir("suite", project, project) == (project / "suite", None)
    assert dispatched_dir("suite/sub", project, project) == (project / "suite" / "sub", None)
    assert dispatched_dir("suite/sub/test_x.py::test_y", project, project) == (
        project / "suite",
        "sub/test_x.py::test_y",
    )
    assert dispatched_dir("sub/test_x.py", project / "suite", project) == (project / "suite", "sub/test_x.py")
    # A file in the rootdir itself: a dispatched rootdir names its tests so, so it selects there.
    (project / "top.py").write_text("")
    assert dispatched_dir("top.py::test_y", project, project) == (project, "top.py::test_y")


@pytest.mark.parametrize(
    ("arg", "why"),
    [
        ("missing", "no such directory"),
        ("/etc/hostname", "below the rootdir"),
    ],
)
def test_what_cannot_be_dispatched_is_a_clear_error(project: Path, arg: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        dispatched_dir(arg, project, project)


def test_the_inner_arguments_carry_the_selection_and_root_node_ids_at_the_workdir() -> None:
    assert Selection().inner_arguments("/w") == ()
    assert Selection("a and not b", "slow", ("t.py::y",)).inner_arguments("/w") == (
        "-k",
        "a and not b",
        "-m",
        "slow",
        "--rootdir=/w",
        "t.py::y",
    )


def test_host_selection_matches_like_pytest() -> None:
    selection = HostSelection(Selection(keyword="Y and not slow", markexpr="db", nodeids=("sub",)))
    assert selection.by_keywords
    assert selection.wants_nodeid("sub/test_x.py::test_y") and not selection.wants_nodeid("subway/t.py::a")
    assert selection.wants_keywords(["test_y", "db"])  # -k by substring, any case; -m by name
    assert not selection.wants_keywords(["test_y", "dbx"])
    assert not selection.wants_keywords(["test_y", "db", "slow"])


def test_a_bad_expression_is_a_usage_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="-k"):
        HostSelection(Selection(keyword="a and"))


def test_last_failed_takes_a_directorys_inner_tests_and_knows_a_failed_run() -> None:
    lastfailed = {
        "suite/t.py::a": True,
        "suite/t.py::b[1]": True,
        "other/t.py::c@m1": True,
        "suite::lrun[m1]": True,
    }
    assert last_failed(lastfailed, "suite") == ({"t.py::a", "t.py::b[1]"}, True)
    assert last_failed(lastfailed, "other") == ({"t.py::c"}, False)
    # A dispatched rootdir names its tests from the root: another directory's run is none of them.
    assert last_failed({"t.py::a": True, "suite::lrun[m1]": True}, ".") == ({"t.py::a"}, False)
