"""``--lrun-store`` from a user's command line: a store that cannot be used fails before anything runs,
in one clear line, and never shows its password (pytester; no database or engine needed)."""

from __future__ import annotations

import pytest
from lrun_support import free_port

PASSWORD = "s3cret-pa55word"


def _assert_one_clear_line(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert PASSWORD not in text
    assert "Traceback" not in text and "INTERNALERROR" not in text
    result.stderr.fnmatch_lines(list(patterns))


def test_an_unreachable_store_fails_before_anything_runs(project: pytest.Pytester) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://ci:{PASSWORD}@127.0.0.1:{free_port()}/lrun"
    result = project.runpytest_subprocess(f"--lrun-store={url}", "--lrun-machine=m1", "suite")
    _assert_one_clear_line(result, "*store postgresql://ci:[*][*][*]@127.0.0.1:*/lrun is unreachable:*")
    assert not (project.path / "state" / "runs").exists() or not any(
        (project.path / "state" / "runs").iterdir()
    )


def test_a_store_that_is_not_a_postgresql_url_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest(f"--lrun-store=mysql://ci:{PASSWORD}@db/lrun", "--lrun-machine=m1", "suite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert PASSWORD not in text and "expected a postgresql:// URL" in text


def test_a_missing_extra_names_it(project: pytest.Pytester) -> None:
    # The child imports nothing called psycopg: a module that refuses to import stands in for it.
    project.path.joinpath("psycopg.py").write_text("raise ImportError('not installed here')\n")
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--lrun-store=postgresql://ci:{PASSWORD}@db/lrun",
        "--lrun-machine=m1",
        "suite",
    )
    _assert_one_clear_line(
        result, "*needs the 'psycopg' module: install it with pip install 'pytest-lrun[[]postgres[]]'"
    )
