"""How a run's terminal status is decided: from its exit code, what was kept of it, or what went wrong.

The :class:`~pytest_lrun.run.dispatch.Dispatcher` that watched a run to its end, or that
ends it on the way, records what this module decides (a :class:`Verdict`):

* :func:`exit_verdict`: a container that ran to its end, or past its timeout:
  ``completed`` on exit 0 (or pytest's "no tests collected"), else ``failed`` with
  ``oom_killed`` or ``exit_nonzero``; ``timeout``; ``interrupted`` when this process
  stopped it; and what of its output was not kept (a full state dir, a refused archive);
* :func:`engine_verdict`: an engine that failed the run mid-run or mid-read:
  ``interrupted`` (``container_gone``) when its container is gone, else ``failed``;
* :func:`error_verdict`: an exception that ends a run on the way (``interrupted`` for
  Ctrl-C, else ``failed`` with the error's code);
* :func:`infra_failure`: whether a failed run failed for its infrastructure, not its
  tests, and is tried again (``--lrun-infra-retries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pytest_lrun.core.errors import (
    EXIT_NONZERO,
    HOST_IO_ERROR,
    INTERNAL_ERROR,
    INTERRUPTED,
    OOM_KILLED,
    TIMED_OUT,
    UNSAFE_ARCHIVE,
    ContainerGone,
    EngineError,
    EngineUnreachable,
    ImagePullFailed,
    LrunError,
    StateFull,
)
from pytest_lrun.core.text import printable
from pytest_lrun.engine import Engine
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.spec import RunResult
from pytest_lrun.store import Run, Status
from pytest_lrun.wire.events import PhaseReport, Start

__all__ = [
    "INFRA_CODES",
    "KILLED_EXIT",
    "NO_TESTS_COLLECTED",
    "Verdict",
    "engine_verdict",
    "error_verdict",
    "exit_verdict",
    "infra_failure",
]

#: What a run that failed for its infrastructure, not its tests, ends with (``--lrun-infra-retries``).
INFRA_CODES = frozenset(
    {EngineUnreachable.code, EngineError.code, ContainerGone.code, ImagePullFailed.code, OOM_KILLED}
)


#: The exit code of a container killed by SIGKILL (128 + 9): the OOM killer, a daemon restart, an admin.
KILLED_EXIT = 137
#: pytest's "no tests collected" (``ExitCode.NO_TESTS_COLLECTED``).
NO_TESTS_COLLECTED = 5


@dataclass(frozen=True)
class Verdict:
    """How a run ends: its terminal status, and the error that ends it (``code`` and ``msg``),
    which replaces the run's own error fields; None keeps them."""

    status: Status
    code: str | None = None
    msg: str | None = None


def exit_verdict(
    run: Run,
    exit_code: int | None,
    *,
    engine: Engine,
    timeout: float,
    lost: bool,
    refused: Sequence[tuple[str, str]],
    stopped: tuple[str, str] | None,
) -> tuple[Run, Verdict]:
    """How a watched run ends, once its container stopped (``exit_code``) or outlived ``timeout``
    (``exit_code`` None), and its output was read back.

    ``lost``: the state dir's file system filled, so output or artifacts were not all kept;
    ``refused``: the archive members not extracted; ``stopped``: the error code and message
    when this process stopped the run (Ctrl-C, ``-x``). Returns the run with the error fields
    of what was not kept, and the verdict.
    """
    if lost:
        run = _with_error(
            run,
            StateFull.code,
            f"the state dir's file system filled during the run: output or artifacts "
            f"were not all kept (exit code {exit_code})",
        )
    elif refused:
        run = _with_error(run, UNSAFE_ARCHIVE, "\n".join(printable(f"refused {n}: {r}") for n, r in refused))
    if stopped is not None:
        return run, Verdict(Status.INTERRUPTED, *stopped)
    if exit_code is None:
        return run, Verdict(Status.TIMEOUT, TIMED_OUT, f"timed out after {timeout:g}s")
    # pytest's exit 5 is "no tests collected" (a -k that picks nothing in this directory): no failure.
    pytest_run = pytest_arguments_at(tuple(run.command or ())) is not None
    no_tests = pytest_run and exit_code == NO_TESTS_COLLECTED
    if exit_code == 0 or no_tests:
        return run, Verdict(Status.COMPLETED)
    assert run.container_id is not None
    state = engine.inspect(run.container_id)
    if state is not None and state.oom_killed:
        run = _with_error(
            run,
            OOM_KILLED,
            f"the kernel's OOM killer stopped the container at its memory limit (exit code {exit_code})",
        )
    elif run.error_code is None:
        run = _with_error(run, EXIT_NONZERO, f"exit code {exit_code}")
    return run, Verdict(Status.FAILED)


def _with_error(run: Run, code: str, msg: str) -> Run:
    return replace(run, error_code=code, error_msg=msg)


def engine_verdict(run: Run, engine: Engine, error: EngineError) -> tuple[Verdict, bool]:
    """How a run ends after the engine failed it mid-run or mid-read, and whether its container
    is left to remove: ``interrupted`` (``container_gone``) when its container is gone or being
    removed (a daemon restart, `docker rm -f`: the engine then answers whatever it says
    mid-removal), else ``failed``; an engine that does not answer has nothing to remove."""
    assert run.container_id is not None
    if isinstance(error, EngineUnreachable):
        return Verdict(Status.FAILED, error.code, str(error)), False  # nobody to ask, nothing to remove
    if not isinstance(error, ContainerGone) and _vanished(engine, run.container_id):
        error = ContainerGone(run.machine, f"container {run.container_id[:12]} vanished: {error}")
    if isinstance(error, ContainerGone):  # gone, or its removal under way: nothing left to remove
        return Verdict(Status.INTERRUPTED, error.code, str(error)), False
    return Verdict(Status.FAILED, error.code, str(error)), True


def _vanished(engine: Engine, container_id: str) -> bool:
    """Whether the container is gone or being removed; False when the engine cannot say."""
    try:
        state = engine.inspect(container_id)
    except EngineError:
        return False
    return state is None or state.status == "removing"


def error_verdict(exc: BaseException) -> Verdict:
    """How a run ends when ``exc`` stops it on the way: Ctrl-C, an lrun error, the host's I/O, a bug."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        status, code = Status.INTERRUPTED, INTERRUPTED
    elif isinstance(exc, LrunError):
        status, code = Status.FAILED, exc.code
    elif isinstance(exc, OSError):
        status, code = Status.FAILED, HOST_IO_ERROR
    else:
        status, code = Status.FAILED, INTERNAL_ERROR
    msg = printable(f"{type(exc).__name__}: {exc}" if not isinstance(exc, LrunError) else str(exc))
    return Verdict(status, code, msg)


def infra_failure(result: RunResult) -> bool:
    """Whether ``result`` failed for its infrastructure before any inner test began: the engine
    went away, the container vanished or was killed (SIGKILL, the OOM killer), its image could
    not be pulled."""
    run = result.run
    killed = run.error_code == EXIT_NONZERO and run.exit_code == KILLED_EXIT
    if run.status is Status.COMPLETED or not (killed or run.error_code in INFRA_CODES):
        return False
    began = any(isinstance(event, Start | PhaseReport) for event in result.events or ())
    return not began and not result.cases
