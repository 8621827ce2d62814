"""Dispatching directories to real engines: every inner result, logs and artifacts reach the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest
from lrun_support import tls_tables, write_tests

PASSING = """
    import pytest

    def test_ok():
        print("inner stdout")

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert n

    class TestGroup:
        def test_in_class(self):
            pass

    @pytest.mark.skip(reason="not today")
    def test_skip():
        pass

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        assert False
"""

FAILING = """
    import pytest
    from pathlib import Path

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture exploded")

    def test_fail():
        assert 1 == 2, "one is not two"

    def test_error(broken):
        pass

    def test_artifact():
        Path("/lrun/artifacts/report.txt").write_text("42 widgets\\n")
"""


def test_inner_results_become_host_results(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "suite", PASSING)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "suite", "-rA")
    result.assert_outcomes(passed=4, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "lrun: m1: dispatching suite",
            "*inner stdout*",
            "*lrun runs*",
            "suite*m1*completed*created*",
            "PASSED suite/test_suite.py::test_ok",
            "PASSED suite/test_suite.py::test_param[[]1[]]",
            "PASSED suite/test_suite.py::TestGroup::test_in_class",
            "SKIPPED [[]1[]] suite/test_suite.py:*: not today",
        ]
    )
    assert result.ret == 0


def test_failures_errors_and_artifacts(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    write_tests(project, "bad", FAILING)
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "bad", "--junitxml=out.xml", "-o", "junit_logging=all"
    )
    # The run's own report carries its artifacts without being counted: the inner reports say what failed.
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*one is not two*", "*fixture exploded*"])
    assert result.ret == 1
    (run_dir,) = (state_dir / "runs").iterdir()
    assert (run_dir / "artifacts" / "artifacts" / "report.txt").read_text() == "42 widgets\n"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 1
    suite = ET.parse(project / "out.xml").getroot()
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["lrun_run_id"] == run_dir.name
    assert props["lrun_machine"] == "m1"
    assert "[[ATTACHMENT|" in ET.tostring(suite, encoding="unicode")


def test_a_run_reads_back_through_the_archive_api_only_what_the_events_do_not_carry(
    pytester: pytest.Pytester, project: Path, state_dir: Path, engines: list[str]
) -> None:
    """Each archive read costs a Docker Engine a mount and a tar process (50 ms of its CPU here):
    the JUnit XML comes with the reporter's events when it fits a line, and the artifacts dir
    every upload ships empty is read only when something was made in it."""
    write_tests(project, "quiet", "def test_quiet():\n    pass\n")
    write_tests(
        project,
        "nested",
        "from pathlib import Path\n\n\ndef test_nested():\n"
        "    Path('/lrun/artifacts/sub').mkdir()\n    Path('/lrun/artifacts/sub/x.txt').write_text('x')\n",
    )
    write_tests(
        project,
        "gone",
        "from pathlib import Path\n\n\ndef test_gone():\n"
        "    Path('/lrun/artifacts/tmp').write_text('x')\n    Path('/lrun/artifacts/tmp').unlink()\n",
    )
    # A shipped dir copied over it with its times kept: the dir gets the upload's mtime of a tree.
    write_tests(
        project,
        "copied",
        "import shutil\nfrom pathlib import Path\n\n\ndef test_copied():\n"
        "    shutil.copytree(Path(__file__).parent / 'data', '/lrun/artifacts', dirs_exist_ok=True)\n",
    )
    (project / "copied" / "data").mkdir()
    (project / "copied" / "data" / "kept.txt").write_text("kept")
    # Two MB of captured output in the XML (junit_logging=all): longer than an event line may be.
    write_tests(project, "loud", "def test_loud():\n    print('x' * 2_000_000)\n")
    began = time.time()
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "quiet", "nested", "gone", "copied", "loud")
    result.assert_outcomes(passed=5)
    runs = {Path(r["test_dir"]).name: r for r in map(_record, (state_dir / "runs").iterdir())}
    client = docker.APIClient(base_url=engines[0], version="auto")
    try:
        events = client.events(
            since=int(began), until=int(time.time()) + 1, decode=True, filters={"event": "archive-path"}
        )
        reads = Counter(e["Actor"]["Attributes"].get("lrun.run-id") for e in events)
    finally:
        client.close()
    expected = {"quiet": 0, "nested": 1, "gone": 1, "copied": 1, "loud": 1}
    assert {name: reads[run["id"]] for name, run in runs.items()} == expected
    for name, run in runs.items():  # every run's JUnit XML is in its folder all the same
        cases = ET.parse(state_dir / "runs" / run["id"] / "junit.xml").getroot().iter("testcase")
        assert [case.get("name") for case in cases] == [f"test_{name}"]
    artifacts = Path(runs["nested"]["artifacts_path"])
    assert (artifacts / "artifacts" / "sub" / "x.txt").read_text() == "x"  # made in a subdir: read
    assert (Path(runs["copied"]["artifacts_path"]) / "artifacts" / "kept.txt").read_text() == "kept"
    assert not Path(runs["quiet"]["artifacts_path"]).exists()


def _record(run_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return record


def test_k_selects_inner_tests(pytester: pytest.Pytester, project: Path) -> None:
    write_tests(project, "suite", PASSING)
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "suite", "-k", "test_param")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["lrun: suite on m1: 4 inner tests deselected"])


def test_non_pytest_command_is_one_item(pytester: pytest.Pytester, project: Path) -> None:
    (project / "shell").mkdir()
    (project / "shell" / "run.sh").write_text("echo from-shell; exit 3\n")
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "--lrun-image=lrun-busybox:latest", "--lrun-command=sh run.sh", "shell"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*exit code: 3*", "*from-shell*"])


def test_timeout_kills_the_run(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    (project / "slow").mkdir()
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1",
        "--lrun-image=lrun-busybox:latest",
        "--lrun-command=sleep 60",
        "--lrun-timeout=1",
        "slow",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*timed out*"])
    (run_dir,) = (state_dir / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "timeout"


def test_hostile_artifacts_are_refused(pytester: pytest.Pytester, project: Path, state_dir: Path) -> None:
    (project / "evil").mkdir()
    script = (
        "ln -s / /lrun/artifacts/root; ln -s ../../../etc/passwd /lrun/artifacts/pw; "
        "echo ok > /lrun/artifacts/fine"
    )
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1", "--lrun-image=lrun-busybox:latest", f"--lrun-command=sh -c '{script}'", "evil"
    )
    # The command passed, but its archive was refused: the run failed for its own reasons, an error.
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unsafe_archive*"])
    (run_dir,) = (state_dir / "runs").iterdir()
    artifacts = run_dir / "artifacts" / "artifacts"
    assert (artifacts / "fine").read_text() == "ok\n"
    assert not (artifacts / "root").exists() and not (artifacts / "root").is_symlink()
    assert not (artifacts / "pw").is_symlink()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["error_code"] == "unsafe_archive"
    assert "artifacts/root" in record["error_msg"] and "artifacts/pw" in record["error_msg"]


def test_secrets_in_env_stay_out_of_logs_and_state(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    (project / "leaky").mkdir()
    (project / "plan.toml").write_text(
        '[[entry]]\nname = "leaky"\ndir = "leaky"\nmachine = "m1"\nimage = "lrun-busybox:latest"\n'
        'command = ["sh", "-c", "echo token=$API_TOKEN"]\nenv = { API_TOKEN = "s3cr3t-value" }\n'
    )
    result = pytester.runpytest_subprocess("--lrun-plan=plan.toml", "--lrun-live")
    result.assert_outcomes(passed=1)
    assert "s3cr3t-value" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*[[]m1 leaky[]] token=[*][*][*]*"])
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert b"s3cr3t-value" not in path.read_bytes(), path


def test_keep_failed_keeps_the_container(
    pytester: pytest.Pytester, project: Path, engines: list[str]
) -> None:

    (project / "broken").mkdir()
    result = pytester.runpytest_subprocess(
        "--lrun-machine=m1",
        "--lrun-image=lrun-busybox:latest",
        "--lrun-command=false",
        "--lrun-keep=failed",
        "broken",
    )
    result.assert_outcomes(failed=1)
    (kept,) = _containers_of_run(engines[0], result, "broken")
    assert kept["State"]["Status"] == "exited"


def test_readme_quick_start_and_example_plan(pytester: pytest.Pytester, project: Path) -> None:
    """The README's quick start (scripts/demo.sh) and examples/plan.toml, as a newcomer runs them.

    The examples run with their own settings (``-c examples/pytest.ini``), under a project whose
    test-suite settings they could not meet: like this repository's, an option of a plugin the demo
    does not install, and warnings as errors (which made that option an INTERNALERROR).
    """
    examples = Path(__file__).parents[2] / "examples"
    shutil.copytree(examples, project / "examples")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.pytest.ini_options]\nfilterwarnings = ["error"]\nonly_the_suite_knows_this = 600\n'
    )
    own_settings = ("-c", "examples/pytest.ini")
    result = pytester.runpytest_subprocess(
        *own_settings,
        "--lrun-machine=local",
        "--lrun-image=lrun-python:bookworm",
        "examples/passing",
        "examples/failing",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=7, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*one widget too many*"])
    planned = pytester.runpytest_subprocess(*own_settings, "--lrun-plan=examples/plan.toml")
    planned.assert_outcomes(passed=13, failed=1, skipped=2, xfailed=2)
    planned.stdout.fnmatch_lines(["batch b-*: failed*"])


def test_machine_limits_and_no_network(pytester: pytest.Pytester, project: Path, engines: list[str]) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + f'\n[tool.lrun.machines.small]\nhost = "{engines[1]}"\nimage = "lrun-busybox:latest"\n'
        'cpus = 0.5\nmemory = "64m"\nenv = { GREETING = "hi" }\n'
    )
    (project / "probe").mkdir()
    result = pytester.runpytest_subprocess(
        "--lrun-machine=small",
        "--lrun-command=sh -c 'test $GREETING = hi && ls /lrun/work'",
        "--lrun-keep=always",
        "probe",
    )
    result.assert_outcomes(passed=1)
    (container,) = _containers_of_run(engines[1], result, "probe")
    host_config = container["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config["NetworkMode"] == "none"
    assert not host_config["Binds"], "the directory must be shipped, never bind-mounted"


def test_make_engine_hook_supplies_the_client(pytester: pytest.Pytester, project: Path) -> None:
    """A project's own pytest_lrun_make_engine (firstresult) replaces the built-in client factory."""
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    pytester.makeconftest(
        """
        from pathlib import Path

        from pytest_lrun.engine.docker import connect

        def pytest_lrun_make_engine(machine, config):
            with Path("made-engines.txt").open("a") as f:
                f.write(machine.name + "\\n")
            return connect(machine)
        """
    )
    pytester.runpytest_subprocess("--lrun-machine=m2", "suite").assert_outcomes(passed=1)
    assert (project / "made-engines.txt").read_text() == "m2\n"


def _containers_of_run(url: str, result: pytest.RunResult, dir_name: str) -> list[dict[str, Any]]:
    """What the engine says about the containers kept of the run the summary shows for ``dir_name``."""
    (row,) = [line for line in result.stdout.lines if line.startswith(f"{dir_name} ") and "created" in line]
    client = docker.APIClient(base_url=url, version="auto")
    try:
        found = client.containers(all=True, filters={"label": f"lrun.run-id={row.split()[-1]}"})
        return [client.inspect_container(c["Id"]) for c in found]
    finally:
        client.close()


def test_a_docker_context_is_a_machine(
    pytester: pytest.Pytester, project: Path, engines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context made by the docker CLI is dispatched to by its name, with no table in pyproject."""
    config_dir = project / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    subprocess.run(
        ["docker", "context", "create", "second-engine", "--docker", f"host={engines[1]}"],
        check=True,
        capture_output=True,
    )
    write_tests(project, "suite", "def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--lrun-machine=second-engine", "--lrun-image=lrun-python:bookworm", "suite"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["suite*second-engine*completed*"])


def test_a_tcp_engine_with_mutual_tls(
    pytester: pytest.Pytester, project: Path, tls_engine: tuple[str, Path]
) -> None:
    url, tls = tls_engine
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + tls_tables("host", url, tls, 'image = "lrun-busybox:latest"\n')
    )
    (project / "remote").mkdir()
    (project / "remote" / "hello.txt").write_text("shipped over TLS\n")
    result = pytester.runpytest_subprocess(
        "--lrun-machine=secure", "--lrun-command=cat hello.txt", "remote", "--lrun-live"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*[[]secure remote[]] shipped over TLS*"])
    refused = pytester.runpytest_subprocess(
        "--lrun-machine=no-client-cert", "--lrun-connect-timeout=5", "remote"
    )
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*machine 'no-client-cert'*engine at tcp://*unreachable*"])
