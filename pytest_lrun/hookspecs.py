"""pytest-lrun's own hooks, all named ``pytest_lrun_*``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_lrun.config.machines import Machine
    from pytest_lrun.engine import Engine
    from pytest_lrun.run.spec import RunSpec

hookspec = pytest.hookspec


@hookspec(firstresult=True)
def pytest_lrun_make_engine(machine: Machine, config: pytest.Config) -> Engine | None:
    """Build the engine client for ``machine``.

    The built-in implementation (``trylast``) connects to the machine's Docker
    Engine (docker-py), or to its Remote Execution API service, and checks that
    it answers within ``--lrun-connect-timeout``. Return an object
    implementing :class:`pytest_lrun.engine.Engine` to supply your own (a
    wrapped client, extra TLS settings, a recorder for tests); to wrap the
    built-in client, call :func:`pytest_lrun.engine.pool.connect`.
    """


def pytest_lrun_run_finished(spec: RunSpec, outcome: Any, config: pytest.Config) -> None:
    """Called on pytest's main thread when a run reaches its outcome, after its progress line.

    It fires during collection, while the session waits for the run's directory,
    or at session finish for runs that were never collected. If it raises, the
    error shows on that run's item.

    ``outcome`` is a :class:`pytest_lrun.run.spec.RunResult`, or the
    :class:`pytest_lrun.core.errors.LrunError` that kept the run from happening.
    """
