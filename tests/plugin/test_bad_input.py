"""Bad input fails at the door: a usage error naming what is wrong, never an INTERNALERROR.

Each case is a user's command line (pytester) or an ``lrun`` command; no engine is
needed, because every case is refused before anything dials one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun import cli

MACHINES = """
[tool.lrun.machines.m1]
host = "tcp://127.0.0.1:1"
image = "img:1"
"""
DEEP = 5000  # levels of nested arrays: far past the interpreter's recursion limit


def entry(dir: str = "suite", name: str = "e1") -> str:
    return f'[[entry]]\nname = "{name}"\ndir = "{dir}"\nmachine = "m1"\n'


def assert_usage_error(result: pytest.RunResult, *lines: str) -> None:
    """Exit 4 with ``lines`` (fnmatch patterns) on stderr, and no traceback anywhere."""
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output, output
    result.stderr.fnmatch_lines(list(lines))
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def non_utf8_dir(parent: Path) -> Path:
    """A directory named with the byte 0xff (Python decodes it to a surrogate), or skip."""
    path = parent / "bad-\udcff"
    try:
        path.mkdir()
    except (OSError, UnicodeEncodeError) as e:  # a file system or locale that refuses such names
        pytest.skip(f"cannot make a non-UTF-8 directory name here: {e}")
    return path


# --- plans ------------------------------------------------------------------------------------


def test_plan_nested_too_deeply(project: pytest.Pytester) -> None:
    plan = project.path / "plan.toml"
    plan.write_text(entry() + f"env = {'[' * DEEP}{']' * DEEP}\n")
    result = project.runpytest(f"--lrun-plan={plan}")
    assert_usage_error(result, f"ERROR: pytest-lrun: {plan}: invalid TOML: nested too deeply")


def test_plan_dir_name_too_long(project: pytest.Pytester) -> None:
    plan = project.path / "plan.toml"
    plan.write_text(entry(dir="d" * 300))
    result = project.runpytest(f"--lrun-plan={plan}")
    assert_usage_error(
        result, f"*{plan}: entry 'e1': field 'dir': cannot use directory 'ddd*': File name too long"
    )


def test_plan_that_is_not_utf8(project: pytest.Pytester) -> None:
    plan = project.path / "plan.toml"
    plan.write_bytes(entry().encode() + b'image = "\xff"\n')
    result = project.runpytest(f"--lrun-plan={plan}")
    assert_usage_error(result, f"*{plan}: not UTF-8 text: *can't decode byte 0xff*")


def test_plan_dir_whose_path_is_not_utf8(project: pytest.Pytester) -> None:
    (project.path / "link").symlink_to(non_utf8_dir(project.path))
    plan = project.path / "plan.toml"
    plan.write_text(entry(dir="link"))
    result = project.runpytest(f"--lrun-plan={plan}")
    assert_usage_error(
        result, r"*field 'dir': directory 'link' resolves to *bad-\udcff, which is not valid UTF-8"
    )


def test_plan_whose_path_is_not_utf8(project: pytest.Pytester) -> None:
    # Before, its batch record could not be written: UnicodeEncodeError, an INTERNALERROR.
    bad = non_utf8_dir(project.path)
    (bad / "suite").mkdir()
    plan = bad / "plan.toml"
    plan.write_text(entry())
    result = project.runpytest(f"--lrun-plan={plan}")
    assert_usage_error(result, r"*the plan's path *bad-\udcff/plan.toml is not valid UTF-8")


def test_plan_entry_name_that_is_not_utf8(project: pytest.Pytester) -> None:
    # As a shell passes the byte 0xff: a real process, so the argument is bytes, not a str.
    plan = project.path / "plan.toml"
    plan.write_text(entry())
    result = project.runpytest_subprocess(f"--lrun-plan={plan}", "--lrun-plan-entry=x\udcff")
    assert_usage_error(result, r"*no entry named 'x\udcff'; the plan's entries are: 'e1'")


def test_machine_name_that_is_not_utf8(project: pytest.Pytester) -> None:
    # Before: the Docker-context lookup hashed the name as UTF-8 and pytest ended in an INTERNALERROR.
    result = project.runpytest_subprocess("--lrun-machine=m\udcff", "suite")
    assert_usage_error(result, r"*unknown machine 'm\\udcff'; known machines: *m1*")


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            "LRUN_TIMEOUT",
            "nan",
            "*environment variable LRUN_TIMEOUT: invalid value 'nan': expected a positive*",
        ),
        (
            "LRUN_TIMEOUT",
            "inf",
            "*environment variable LRUN_TIMEOUT: invalid value 'inf': expected a positive*",
        ),
        (
            "LRUN_REAP_AGE",
            "nan",
            "*environment variable LRUN_REAP_AGE: invalid value 'nan': expected a number*",
        ),
        ("lrun_connect_timeout", "inf", "*ini option lrun_connect_timeout: invalid value 'inf'*"),
        ("--lrun-busy-wait", "inf", "*--lrun-busy-wait: invalid value 'inf': expected a number of seconds*"),
        (
            "--lrun-state-max-bytes",
            "1e400",
            "*--lrun-state-max-bytes: invalid value '1e400': expected a size*",
        ),
    ],
)
def test_numbers_that_are_not_finite_name_their_source(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str, value: str, message: str
) -> None:
    args = ["--lrun-machine=m1", "suite"]
    if where.startswith("--"):
        args.append(f"{where}={value}")
    elif where.startswith("LRUN_"):
        monkeypatch.setenv(where, value)
    else:
        project.makeini(f"[pytest]\n{where} = {value}\n")
    result = project.runpytest(*args)
    assert_usage_error(result, message)


# --- the state dir ------------------------------------------------------------------------------


@pytest.mark.parametrize("below", ["", "/runs"], ids=["a-file", "under-a-file"])
def test_state_dir_that_is_a_file(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    state = project.path / "state-file"
    state.write_text("not a directory\n")
    monkeypatch.setenv("LRUN_STATE_DIR", f"{state}{below}")
    result = project.runpytest("--lrun-machine=m1", "suite")
    assert_usage_error(result, f"*state dir {state}{below}*")


# --- the lrun command line ----------------------------------------------------------------------


def test_lrun_gc_refuses_an_overflowing_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["gc", "--max-bytes", "1e400"])
    assert info.value.code == 2
    assert "argument --max-bytes: invalid value '1e400': expected a size" in capsys.readouterr().err


def test_lrun_machines_with_a_pyproject_nested_too_deeply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest itself reads pyproject.toml first (and fails the same way), so the lrun command shows it.
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"{MACHINES}x = {'[' * DEEP}{']' * DEEP}\n")
    code = cli.main(["--state-dir", str(tmp_path / "state"), "--project", str(tmp_path), "machines"])
    assert code == 2
    assert capsys.readouterr().err == f"lrun: error: {pyproject}: not valid TOML: nested too deeply\n"
