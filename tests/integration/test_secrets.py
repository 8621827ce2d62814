"""Secrets reach the container and nothing else, on the real engines, with both stores.

The secret's value is three characters, under the length from which plain env values are
hidden: a named secret is masked whatever its length. After a run that prints it, records
it as a JUnit property and fails with it in the assertion message, the value is nowhere:
not in the terminal, the host JUnit XML, any file of the state dir, ``lrun --json``
output, nor (shared store) any row of the database, as text or as bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from lrun_support import write_tests

VALUE = "Zq9"  # no run id, time or digest can hold a "Z" next to a "q"
SUITE = """
    import os


    def test_the_container_gets_the_secret(record_property):
        value = os.environ["LRUN_TEST_TOKEN"]
        print("the token is", value)
        record_property("token", value)
        assert value == "Zq9"


    def test_a_failure_that_shows_it():
        value = os.environ["LRUN_TEST_TOKEN"]
        assert value == "nope", f"the token was {value}"
"""


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    if request.param == "files":
        monkeypatch.delenv("LRUN_STORE", raising=False)
        return None
    url: str = request.getfixturevalue("fresh_database")
    monkeypatch.setenv("LRUN_STORE", url)
    return url


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


def database_rows_holding(url: str, needle: str) -> list[str]:
    found = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        for table in tables:
            for (text,) in conn.execute(f'SELECT t::text FROM "{table}" t'):  # bytea shows as \\x hex
                if needle in text or needle.encode().hex() in text:
                    found.append(f"{table}: {text[:200]}")
    return found


def test_a_secret_reaches_the_container_and_nothing_else(
    pytester: pytest.Pytester,
    project: Path,
    state_dir: Path,
    store_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_tests(project, "suite", SUITE)
    monkeypatch.setenv("LRUN_TEST_TOKEN", VALUE)
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "--lrun-secret-env=LRUN_TEST_TOKEN", "--junitxml=host.xml", "-rA", "-v", "suite"
    )
    result.assert_outcomes(passed=1, failed=1)  # the container had the value: the first test passed
    result.stdout.fnmatch_lines(["*the token was ****"])
    assert VALUE not in result.stdout.str()
    assert VALUE.encode() not in (project / "host.xml").read_bytes()
    assert files_holding(state_dir, VALUE.encode()) == []
    for args in (("runs", "--json"), ("show", "--json")):
        if args[0] == "show":
            run_id = next(state_dir.glob("runs/*")).name
            args = ("show", run_id, "--json")
        out = subprocess.run(
            [sys.executable, "-m", "pytest_lrun", *args],
            cwd=project,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "LRUN_TEST_TOKEN" in out and VALUE not in out  # the name is recorded, the value never
    if store_url is not None:
        assert database_rows_holding(store_url, VALUE) == []


def test_a_secret_value_is_not_part_of_the_key_but_its_name_is(
    pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tests(project, "suite", "import os\n\ndef test_it():\n    assert os.environ['LRUN_TEST_TOKEN']\n")
    args = ["--lrun-machine=m1", "--lrun-reuse=completed", "suite"]
    monkeypatch.setenv("LRUN_TEST_TOKEN", VALUE)
    monkeypatch.setenv("LRUN_OTHER_TOKEN", "x")  # one letter: masked everywhere, and nothing breaks
    pytester.runpytest_subprocess("--lrun-secret-env=LRUN_TEST_TOKEN", *args).assert_outcomes(passed=1)
    monkeypatch.setenv("LRUN_TEST_TOKEN", "a new value")  # a rotated token: the same run
    rotated = pytester.runpytest_subprocess("--lrun-secret-env=LRUN_TEST_TOKEN", *args)
    rotated.stdout.fnmatch_lines(["*completed (cached)*"])
    renamed = pytester.runpytest_subprocess("--lrun-secret-env=LRUN_TEST_TOKEN,LRUN_OTHER_TOKEN", *args)
    renamed.assert_outcomes(passed=1)
    assert "(cached)" not in renamed.stdout.str()


def test_a_secret_missing_on_the_host_fails_before_anything_runs(
    pytester: pytest.Pytester, project: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tests(project, "suite", "def test_it():\n    pass\n")
    monkeypatch.delenv("LRUN_TEST_TOKEN", raising=False)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-secret-env=LRUN_TEST_TOKEN", "suite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*LRUN_TEST_TOKEN*not set in this environment*"])
    assert not list(state_dir.glob("runs/*"))
