"""Remote (Remote Execution API) machines, for real: the test BuildGrid and two ``lrun worker``s.

The service is the BuildGrid ``scripts/provision.sh`` runs (``LRUN_TEST_REAPI``); one
``lrun worker`` per test engine serves it (one action at a time each), so an action
runs in a container on a real engine, shipped in through the archive API. Each test's
project names the service as machine ``grid`` and the first engine as ``m1``.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from lrun_support import HANGS, PYTHON_IMAGE, resolver_for, tls_tables, wait_for, write_tests
from reapi_workers import ReapiService, Workers

from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store.files import FileStore

pytestmark = pytest.mark.reapi

SUITE = """
    import os
    import pytest


    def test_passes():
        pass


    def test_fails():
        print("said on stdout")
        assert 6 * 7 == 41, "the answer is off"


    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass


    def test_leaves_an_artifact():
        os.makedirs("/lrun/artifacts/deep", exist_ok=True)
        with open("/lrun/artifacts/deep/report.txt", "w") as f:
            f.write("made in the container")
"""

SLEEPS = """
    import time


    def test_sleeps():
        time.sleep({seconds})
"""


@pytest.fixture(scope="module")
def workers(
    reapi_service: ReapiService, engines: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    workers = Workers(reapi_service, engines, tmp_path_factory.mktemp("workers"), PYTHON_IMAGE)
    workers.start()
    yield workers
    workers.stop()


@pytest.fixture
def grid(
    pytester: pytest.Pytester,
    reapi_service: ReapiService,
    workers: Workers,
    engines: list[str],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A project naming the service (``grid``, two slots: one per worker) and the first engine (``m1``)."""
    pytester.makepyprojecttoml(
        reapi_service.table("grid", f'image = "{PYTHON_IMAGE}"\nslots = 2\n')
        + textwrap.dedent(
            f"""
            [tool.lrun.machines.m1]
            host = "{engines[0]}"
            image = "{PYTHON_IMAGE}"
            """
        )
    )
    monkeypatch.setenv("LRUN_STATE_DIR", str(state_dir))
    return pytester.path


def _runs(state_dir: Path) -> list[dict[str, object]]:
    runs = sorted((state_dir / "runs").glob("*/run.json"))
    return [json.loads(path.read_text()) for path in runs]


def _cases(junit: Path) -> dict[str, str]:
    """Each inner test case of a JUnit XML file and its outcome (not the run's own, named by machine)."""
    cases = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        if str(case.get("name")).startswith("lrun["):
            continue
        outcome = next(
            (child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed"
        )
        cases[f"{case.get('classname')}.{case.get('name')}"] = outcome
    return cases


def test_a_suite_gives_the_same_results_logs_and_artifacts_on_a_docker_machine_and_on_the_service(
    pytester: pytest.Pytester, grid: Path, state_dir: Path, workers: Workers
) -> None:
    write_tests(grid, "suite", SUITE)
    seen = {}
    for machine in ("m1", "grid"):
        result = pytester.runpytest_subprocess(
            f"--lrun-machine={machine}", "suite", f"--junitxml={machine}.xml"
        )
        result.assert_outcomes(passed=2, failed=1, skipped=1)
        result.stdout.fnmatch_lines(["*AssertionError: the answer is off*"])
        (run,) = [r for r in _runs(state_dir) if r["machine"] == machine]
        folder = state_dir / "runs" / str(run["id"])
        artifacts = {
            str(p.relative_to(folder / "artifacts")): p.read_text()
            for p in (folder / "artifacts").rglob("*")
            if p.is_file()
        }
        seen[machine] = (_cases(grid / f"{machine}.xml"), artifacts, run["exit_code"], run["status"])
        assert "said on stdout" in (folder / "logs.txt").read_text()
        assert "1 failed, 2 passed, 1 skipped" in (folder / "logs.txt").read_text()
    assert seen["grid"] == seen["m1"]
    assert seen["grid"][1] == {"artifacts/deep/report.txt": "made in the container"}
    (remote,) = [r for r in _runs(state_dir) if r["machine"] == "grid"]
    # The run is the service's operation, and names its action, which one worker executed once.
    assert str(remote["container_id"]).startswith(f"{workers.service.instance}/")
    assert sum(workers.executions(str(remote["action_digest"])).values()) == 1


def test_a_second_invocation_with_a_fresh_state_dir_is_served_from_the_action_cache(
    pytester: pytest.Pytester, grid: Path, tmp_path: Path, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # New content, a new action: the service's cache outlives test sessions.
    write_tests(grid, "cached", f"# {uuid.uuid4()}\ndef test_ok():\n    pass\n")
    ran = []
    for attempt in ("first", "second"):
        state = tmp_path / f"state-{attempt}"  # nothing shared but the service
        monkeypatch.setenv("LRUN_STATE_DIR", str(state))
        result = pytester.runpytest_subprocess(
            "--lrun-machine=grid", "--lrun-reuse=completed", "cached", "-rA"
        )
        result.assert_outcomes(passed=1)
        ran.append(result)
        (run,) = _runs(state)
        action = str(run["action_digest"])
    ran[0].stdout.fnmatch_lines(["*cached*grid*completed*created*"])
    ran[1].stdout.fnmatch_lines(["*cached*grid*completed*cached*"])
    assert sum(workers.executions(action).values()) == 1


def test_eight_dispatchers_of_one_key_start_one_execution(
    grid: Path, state_dir: Path, workers: Workers, tmp_path: Path
) -> None:
    """BuildGrid alone runs two submissions of one action a millisecond apart twice; the store's
    one atomic prepare in front of it makes every dispatcher but one attach to the first."""
    test_dir = write_tests(tmp_path, "one", SLEEPS.format(seconds=1))
    machine = resolver_for(grid).resolve("grid")
    spec = RunSpec(test_dir, machine, PYTHON_IMAGE, ("python3", "-m", "pytest", "-q"))
    store = FileStore(state_dir)
    barrier = threading.Barrier(8)
    origins: list[tuple[str, str]] = []

    def dispatch() -> None:
        pool = EnginePool(connect_timeout=10)
        try:
            barrier.wait(30)
            result = Dispatcher(store, pool).dispatch(spec)
            origins.append((result.run.id, result.origin))
        finally:
            pool.close()

    threads = [threading.Thread(target=dispatch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(origin for _, origin in origins) == ["created"] + ["reused"] * 7
    assert len({run_id for run_id, _ in origins}) == 1
    (run,) = _runs(state_dir)
    assert run["status"] == "completed"
    assert sum(workers.executions(str(run["action_digest"])).values()) == 1


def test_a_sharded_run_spreads_over_both_workers(
    pytester: pytest.Pytester, grid: Path, state_dir: Path, workers: Workers
) -> None:
    write_tests(
        grid, "wide", "".join(f"def test_{i}():\n    __import__('time').sleep(1)\n" for i in range(4))
    )
    result = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-shards=2", "wide", "-rA")
    result.assert_outcomes(passed=4)
    shards = [r for r in _runs(state_dir) if r["machine"] == "grid" and r["status"] == "completed"]
    by_worker = [
        workers.executions(str(r["action_digest"])) for r in shards if "--collect-only" not in str(r)
    ]
    # Each worker takes one action at a time, and the two shards ran at once: one on each.
    assert sorted(name for counts in by_worker for name in counts) == ["w1", "w2"]


def test_a_timeout_cancels_the_operation_and_the_worker_stops_its_container(
    pytester: pytest.Pytester, grid: Path, state_dir: Path, workers: Workers
) -> None:
    write_tests(grid, "hangs", SLEEPS.format(seconds=120))
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-timeout=3", "hangs", "-rA")
    assert time.monotonic() - started < 60
    assert result.ret != 0
    (run,) = _runs(state_dir)
    assert run["status"] == "timeout"
    wait_for(
        lambda: any("cancelled by the service" in workers.log(name) for name in workers.names),
        "a worker told of the cancelled lease",
    )


def test_inner_results_come_live_from_the_log_stream_so_a_timeout_keeps_the_finished_ones(
    pytester: pytest.Pytester, grid: Path, state_dir: Path
) -> None:
    # A cancelled action has no result: what passed before the timeout is known only from the
    # stdout the worker streamed while the container ran.
    write_tests(grid, "hangs", HANGS)
    result = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-timeout=8", "hangs", "-rA")
    result.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*timed out after 8 s while running this test*",
            "PASSED hangs/test_hangs.py::test_first",
            "SKIPPED*not run: the run was stopped (timeout)*",
        ]
    )
    assert "FAILED hangs/test_hangs.py::test_second" in result.stdout.str()
    (run,) = _runs(state_dir)
    assert run["status"] == "timeout"
    events = (state_dir / "runs" / str(run["id"]) / "events.jsonl").read_text()
    assert '"nodeid": "test_hangs.py::test_first"' in events  # the inner id, from the stream


@pytest.fixture
def tls_service(tls_engine: tuple[str, Path]) -> tuple[str, Path]:
    """BuildGrid's mutual-TLS listener (``LRUN_TEST_REAPI_TLS``) and the certificates it trusts."""
    url = os.environ.get("LRUN_TEST_REAPI_TLS")
    if not url:
        pytest.fail('LRUN_TEST_REAPI_TLS unset: eval "$(scripts/provision.sh)" first')
    return url, tls_engine[1]


def test_a_grpcs_service_with_mutual_tls_and_one_that_asks_for_a_client_certificate(
    pytester: pytest.Pytester, grid: Path, reapi_service: ReapiService, tls_service: tuple[str, Path]
) -> None:
    url, tls = tls_service
    pyproject = grid / "pyproject.toml"
    keys = f'instance_name = "{reapi_service.instance}"\nimage = "{PYTHON_IMAGE}"\n'
    pyproject.write_text(pyproject.read_text() + tls_tables("remote", url, tls, keys))
    write_tests(grid, "suite", SUITE)
    result = pytester.runpytest_subprocess("--lrun-machine=secure", "suite")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    refused = pytester.runpytest_subprocess(
        "--lrun-machine=no-client-cert", "--lrun-connect-timeout=5", "suite"
    )
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(
        ["*machine 'no-client-cert': the Remote Execution API service at grpcs://*unreachable*tls_* files*"]
    )


def test_detach_then_attach_by_the_operations_name(
    pytester: pytest.Pytester, grid: Path, state_dir: Path
) -> None:
    write_tests(grid, "slow", SLEEPS.format(seconds=3))
    detached = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-detach", "slow")
    detached.assert_outcomes(skipped=1)
    (run,) = _runs(state_dir)
    assert run["status"] == "running"
    attached = pytester.runpytest_subprocess(f"--lrun-attach={run['id']}", "-rA")
    attached.assert_outcomes(passed=1)
    (run,) = _runs(state_dir)
    assert run["status"] == "completed"
    assert "1 passed" in (state_dir / "runs" / str(run["id"]) / "logs.txt").read_text()


def test_a_secret_is_refused_on_the_service(
    pytester: pytest.Pytester, grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tests(grid, "plain", "def test_ok():\n    pass\n")
    monkeypatch.setenv("API_TOKEN", "s3cret")
    result = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-secret-env=API_TOKEN", "plain")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*remote (Remote Execution API) machine takes no secrets (API_TOKEN)*"])
    assert "s3cret" not in result.stdout.str()


def test_a_server_restart_mid_run_ends_the_run_with_an_error_code_and_the_next_invocation_works(
    pytester: pytest.Pytester, grid: Path, state_dir: Path, reapi_service: ReapiService
) -> None:
    write_tests(grid, "slow", SLEEPS.format(seconds=8))
    restarted = threading.Timer(3, reapi_service.restart)
    restarted.start()
    try:
        # No infra retry: the retry would meet the server still starting.
        result = pytester.runpytest_subprocess("--lrun-machine=grid", "--lrun-infra-retries=0", "slow", "-rA")
    finally:
        restarted.join(120)
    assert result.ret != 0
    (run,) = _runs(state_dir)
    assert run["status"] in ("failed", "interrupted") and run["error_code"] == "engine_unreachable", run
    write_tests(grid, "after", "def test_ok():\n    pass\n")
    again = pytester.runpytest_subprocess("--lrun-machine=grid", "after", "-rA")
    again.assert_outcomes(passed=1)
