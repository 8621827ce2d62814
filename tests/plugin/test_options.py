"""The plugin's wiring, seen from a user's command line (pytester; no engine needed)."""

from __future__ import annotations

import pytest

from pytest_lrun.config.settings import OPTIONS


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for option in OPTIONS:
        result.stdout.fnmatch_lines([f"*{option.flag}*"])
        result.stdout.fnmatch_lines([f"*{option.ini}*"])


def test_plain_pytest_is_untouched(project: pytest.Pytester) -> None:
    result = project.runpytest("suite")
    result.assert_outcomes(passed=1)
    assert "lrun:" not in result.stdout.str()
    assert not (project.path / "state").exists()


def test_collect_only_has_nothing_to_collect_from_a_non_pytest_command(project: pytest.Pytester) -> None:
    # m1's engine does not exist: connecting would fail, so this proves nothing connects.
    result = project.runpytest("--lrun-machine=m1", "--lrun-command=make test", "--collect-only", "suite")
    result.stdout.fnmatch_lines(["lrun: suite on m1: not a pytest command, nothing to collect"])
    assert "engine_unreachable" not in result.stdout.str()
    assert not (project.path / "state" / "runs").exists() or not any(
        (project.path / "state" / "runs").iterdir()
    )


@pytest.mark.parametrize(
    ("ini", "env", "flag", "shown"),
    [
        ("m1", None, None, "machine=m1"),
        ("m1", "m2", None, "machine=m2"),
        ("m1", "m2", "local", "machine=local"),
    ],
)
def test_precedence_ini_env_cli(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str,
    env: str | None,
    flag: str | None,
    shown: str,
) -> None:
    project.makeini(f"[pytest]\nlrun_machine = {ini}\nlrun_image = img:1\n")
    if env:
        monkeypatch.setenv("LRUN_MACHINE", env)
    args = [f"--lrun-machine={flag}"] if flag else []
    result = project.runpytest(*args, "--collect-only", "suite")
    result.stdout.fnmatch_lines([f"lrun: {shown},*"])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("ini", [], "*ini option lrun_timeout: invalid value 'soon'*"),
        ("env", [], "*environment variable LRUN_TIMEOUT: invalid value 'soon'*"),
        ("flag", ["--lrun-timeout=soon"], "*--lrun-timeout*invalid value 'soon'*"),
    ],
)
def test_bad_values_name_their_source(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, setup: str, args: list[str], message: str
) -> None:
    if setup == "ini":
        project.makeini("[pytest]\nlrun_timeout = soon\n")
    elif setup == "env":
        monkeypatch.setenv("LRUN_TIMEOUT", "soon")
    result = project.runpytest("--lrun-machine=m1", *args, "suite")
    result.stderr.fnmatch_lines([message])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unknown_machine_names_the_known_ones(project: pytest.Pytester) -> None:
    result = project.runpytest("--lrun-machine=nope", "suite")
    result.stderr.fnmatch_lines(["*unknown machine 'nope'; known machines: *local, m1, m2*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_missing_image_is_refused_before_anything_runs(project: pytest.Pytester) -> None:
    result = project.runpytest("--lrun-machine=m2", "suite")
    result.stderr.fnmatch_lines(["*no image for machine 'm2'*--lrun-image*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_node_id_in_the_rootdir_dispatches_the_rootdir(project: pytest.Pytester) -> None:
    # A dispatched rootdir names its tests "test_top.py::test_top": passed back, it selects there.
    project.makepyfile(test_top="def test_top():\n    pass\n")
    result = project.runpytest("--lrun-machine=m1", "test_top.py::test_top")
    result.stdout.fnmatch_lines(
        [f"lrun: m1: dispatching {project.path.name}", "ERROR lrun[[]m1[]] - engine_unreachable*"]
    )
    assert "./" not in result.stdout.str()


def test_a_bad_keyword_expression_fails_before_anything_runs(project: pytest.Pytester) -> None:
    result = project.runpytest("--lrun-machine=m1", "-k", "a and", "suite")
    result.stderr.fnmatch_lines(["*-k: not a valid expression*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_detach_and_attach_are_exclusive(project: pytest.Pytester) -> None:
    result = project.runpytest("--lrun-machine=m1", "--lrun-detach", "--lrun-attach=x", "suite")
    result.stderr.fnmatch_lines(["*detach and attach cannot be combined*"])


@pytest.mark.parametrize(
    ("name", "arg"), [("suite", "suite"), ("tests", "tests"), ("suite", "suite/test_inner.py")]
)
def test_a_dispatched_dirs_conftest_is_never_imported_on_the_host(
    project: pytest.Pytester, name: str, arg: str
) -> None:
    inner = project.path / name
    inner.mkdir(exist_ok=True)
    (inner / "test_inner.py").write_text("def test_inner():\n    pass\n")
    (inner / "conftest.py").write_text("import only_in_the_image  # noqa: F401\n")
    project.makeconftest("def pytest_report_header():\n    return 'host conftest loaded'\n")
    result = project.runpytest("--lrun-machine=m1", arg)
    # The engine does not exist: the run's own report is an error; the conftest was never imported.
    assert result.ret == 75, result.stderr.str()
    result.stdout.fnmatch_lines(["host conftest loaded", f"ERROR {name}::lrun[[]m1[]] - engine_unreachable*"])


def test_no_sibling_directorys_conftest_is_imported_when_nothing_lies_beside_the_dispatched_one(
    project: pytest.Pytester,
) -> None:
    # suites/ holds only directories: pytest must not be anchored at suites/ itself, where it also
    # imports the conftest of every test* subdirectory (other dispatched directories among them).
    suites = project.path / "suites"
    for name in ("test_a", "test_b"):
        (suites / name).mkdir(parents=True)
    (suites / "test_a" / "test_inner.py").write_text("def test_inner():\n    pass\n")
    (suites / "test_b" / "conftest.py").write_text("import only_in_the_image  # noqa: F401\n")
    project.makeconftest("def pytest_report_header():\n    return 'host conftest loaded'\n")
    result = project.runpytest("--lrun-machine=m1", "suites/test_a")
    assert result.ret == 75, result.stderr.str()
    result.stdout.fnmatch_lines(
        ["host conftest loaded", "ERROR suites/test_a::lrun[[]m1[]] - engine_unreachable*"]
    )
