"""Which failed runs are the infrastructure's (tried again) and which the tests' (never)."""

from __future__ import annotations

import pytest

from pytest_lrun.config.settings import resolve
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.run.spec import RunResult
from pytest_lrun.run.verdict import infra_failure
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import Start
from pytest_lrun.wire.junit import parse_junit


def failed(status: Status = Status.FAILED, **fields: object) -> Run:
    return Run(test_dir="/t", status=status, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "run",
    [
        failed(error_code="engine_unreachable"),
        failed(Status.INTERRUPTED, error_code="container_gone"),
        failed(error_code="image_pull_failed"),
        failed(error_code="oom_killed", exit_code=137),
        failed(error_code="exit_nonzero", exit_code=137),
    ],
    ids=["engine-unreachable", "container-gone", "pull-failed", "oom-killed", "sigkilled"],
)
def test_the_infrastructures_failures_before_any_test_are_retried(run: Run) -> None:
    assert infra_failure(RunResult(run, "created"))


@pytest.mark.parametrize(
    "run",
    [
        failed(error_code="exit_nonzero", exit_code=1),
        failed(Status.TIMEOUT, error_code="timeout"),
        failed(Status.INTERRUPTED, error_code="interrupted"),
        failed(Status.INTERRUPTED, error_code="cancelled"),
        failed(Status.INTERRUPTED, error_code="session_stopped"),
        failed(error_code="image_missing"),
        failed(error_code="image_build_failed"),
        failed(error_code="unsafe_archive"),
        failed(Status.COMPLETED, error_code="state_full"),
    ],
    ids=["tests-failed", "timeout", "ctrl-c", "cancelled", "x", "no-image", "build", "archive", "full"],
)
def test_other_failures_are_never_retried(run: Run) -> None:
    assert not infra_failure(RunResult(run, "created"))


def test_once_a_test_began_its_failure_is_the_tests() -> None:
    lost = failed(error_code="engine_unreachable")
    began = [Start(0, "test_x.py::test_x", None)]
    assert not infra_failure(RunResult(lost, "created", events=began))  # type: ignore[arg-type]
    assert infra_failure(RunResult(lost, "created", events=[]))
    case = parse_junit(
        b'<testsuite><testcase classname="test_x" name="test_x"><failure/></testcase></testsuite>'
    )
    assert not infra_failure(RunResult(lost, "created", cases=case))


def test_the_retries_option_is_a_small_count() -> None:
    assert resolve({}, lambda _key: None, environ={}).infra_retries == 1
    assert resolve({}, lambda _key: None, environ={"LRUN_INFRA_RETRIES": "0"}).infra_retries == 0
    with pytest.raises(ConfigError, match=r"LRUN_INFRA_RETRIES.*from 0 to 10"):
        resolve({}, lambda _key: None, environ={"LRUN_INFRA_RETRIES": "many"})


@pytest.mark.parametrize(
    ("reason", "final"),
    [
        ("pull access denied for lrun-no-such-image, repository does not exist", True),
        ('Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host', True),
        ("manifest for x:1 not found: manifest unknown", True),
        ("received unexpected HTTP status: 503 Service Unavailable", False),
        ("dial tcp: lookup registry.example: Temporary failure in name resolution", False),
        ("dial tcp: lookup registry.example on 10.0.0.1:53: server misbehaving", False),
    ],
)
def test_a_pull_no_retry_can_help_is_told_from_one_that_may_pass_next_time(reason: str, final: bool) -> None:
    from pytest_lrun.engine.docker import _pull_is_final

    assert _pull_is_final(reason) is final
