"""Host paths in failure texts, forwarded presentation options, and the report folder's layout."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pytest_lrun.config.settings import DEFAULT_COMMAND
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.report.evidence import Evidence, default_report_dir
from pytest_lrun.report.forward import forwarded, verbosity
from pytest_lrun.report.hostpaths import HostPaths
from pytest_lrun.store import Run

LONG = """\
    def test_bad():
>       assert helper(3) == 7
E       assert 6 == 7

test_fails.py:14: AssertionError"""


def test_a_traceback_names_the_host_file_relative_to_where_pytest_started() -> None:
    paths = HostPaths(Path("/proj/fails"), "/lrun/work", Path("/proj"))
    assert paths.text(LONG).splitlines()[-1] == "fails/test_fails.py:14: AssertionError"
    assert paths.text("sub/test_x.py:3: in test_y") == "fails/sub/test_x.py:3: in test_y"
    native = '  File "/lrun/work/test_fails.py", line 14, in test_bad'
    assert paths.text(native) == '  File "fails/test_fails.py", line 14, in test_bad'
    # The image's own files and paths above the directory are not the directory's.
    library = "/usr/lib/python3/dist-packages/x.py:9: in f"
    assert paths.text(library) == library
    assert paths.text("../other.py:9: in f") == "../other.py:9: in f"
    assert paths.absolute("/lrun/work/test_fails.py") == "/proj/fails/test_fails.py"
    assert paths.relative("/lrun/work/sub/t.py") == "fails/sub/t.py"


def test_a_directory_pytest_started_in_keeps_its_paths() -> None:
    paths = HostPaths(Path("/proj"), "/lrun/work", Path("/proj"))
    assert paths.text(LONG) == LONG
    assert paths.relative("test_fails.py") == "test_fails.py"


def _options(**given: object) -> argparse.Namespace:
    defaults = {"tbstyle": "auto", "showlocals": False, "fulltrace": False, "verbose": 0}
    return argparse.Namespace(**{**defaults, "reportchars": "fE", "capture": "fd", **given})


def test_only_what_differs_from_pytests_defaults_is_forwarded() -> None:
    assert forwarded(_options(), DEFAULT_COMMAND) == ()  # a plain invocation keeps its run key
    assert forwarded(_options(tbstyle="short", showlocals=True), DEFAULT_COMMAND) == (
        "--tb=short",
        "--showlocals",
    )
    assert forwarded(_options(capture="no", reportchars="A"), ("pytest",)) == ("-rA", "--capture=no")


@pytest.mark.parametrize(
    ("command", "asked", "appended"), [(DEFAULT_COMMAND, 2, "-vvv"), (("pytest",), 1, "-v")]
)
def test_verbosity_reaches_the_inner_pytest_whatever_its_command_says(
    command: tuple[str, ...], asked: int, appended: str
) -> None:
    (flag,) = forwarded(_options(verbose=asked), command)
    assert flag == appended and verbosity((*command, flag)) == asked


def test_each_run_publishes_its_log_and_artifacts_under_a_readable_name(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "state" / "r")
    (files.artifacts / "artifacts" / "sub").mkdir(parents=True)
    files.logs.write_text("the log\n")
    (files.artifacts / "artifacts" / "plot.png").write_bytes(b"png")
    (files.artifacts / "artifacts" / "sub" / "n.txt").write_text("n")
    (files.artifacts / "artifacts" / "link").symlink_to("/etc/passwd")
    run = Run(id="20261204T1-abcd1234", machine="m 1", test_dir="/p/suite", artifacts=["/lrun/artifacts"])
    evidence = Evidence(tmp_path / "out" / "lrun-report", lambda _id: files, tmp_path)
    published = evidence.publish(run, "suite")
    assert published.log == tmp_path / "out/lrun-report/suite-m_1-abcd1234/logs.txt"
    # One artifact path: its files directly under artifacts/, never artifacts/artifacts/; no link followed.
    names = [p.relative_to(published.log.parent).as_posix() for p in published.files()]
    assert names == ["logs.txt", "artifacts/plot.png", "artifacts/sub/n.txt"]
    assert evidence.shown(published.log) == "out/lrun-report/suite-m_1-abcd1234/logs.txt"
    # Without a report folder, reports name the state dir's files.
    assert Evidence(None, lambda _id: files, tmp_path).of(run, "suite").log == files.logs


def test_the_report_folder_defaults_beside_the_first_report_file() -> None:
    assert default_report_dir(None, "out/report.html") == Path("out/lrun-report").absolute()
    assert default_report_dir(None, None) is None
