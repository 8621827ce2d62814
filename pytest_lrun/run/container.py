"""A run's container: what it is created with, and stopping many at once.

* :func:`container_spec`: the :class:`~pytest_lrun.engine.ContainerSpec` a run's container is
  created with: the spec's image and command, the machine's limits, the environment with
  its secrets, the labels that clean-up filters on, and, for a pytest command, the inner
  reporter's wiring (:func:`~pytest_lrun.wire.events.reporter_wiring`) with the run's token;
* :func:`stop_all`: the containers of many runs stopped at once (Ctrl-C, ``-x``), each
  on a thread of its own, so a slow engine does not hold up the others;
* :class:`Remover`: an ended run's container removed, at once or off the run's path on
  threads of its own (a session's worker takes its next run meanwhile).

:class:`~pytest_lrun.run.dispatch.Dispatcher` creates, ships into and starts the container
with these, and records each step on the run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pytest_lrun.core.errors import ConfigError, EngineError
from pytest_lrun.engine import (
    LABEL_BATCH,
    LABEL_CREATED,
    LABEL_HASH,
    LABEL_MACHINE,
    LABEL_RUN,
    LABEL_STORE,
    ContainerSpec,
    Engine,
    stop,
)
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.readback import JUNIT_PATH
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.store import Run
from pytest_lrun.wire.events import reporter_wiring

__all__ = ["REMOVERS", "Remover", "container_spec", "stop_all"]

#: Threads that remove containers at once for a :class:`Remover` with ``later``.
REMOVERS = 4


def container_spec(run: Run, spec: RunSpec, store_id: str, *, cacheable: bool = False) -> ContainerSpec:
    """What ``run``'s container is created with, on the machine of ``spec``, for the store ``store_id``.

    ``cacheable``: the run's result may be served again (``--lrun-reuse=completed``).

    :raises ConfigError: a secret of the spec is not set on this host, or the machine is
        a remote service, which would keep the secret in its storage
    """
    if spec.machine.remote is not None and spec.secret_names:
        raise ConfigError(
            f"machine {spec.machine.name!r}",
            f"a remote (Remote Execution API) machine takes no secrets ({', '.join(spec.secret_names)}): "
            "an action's environment is stored in the service's CAS and action cache, readable by "
            "anyone who may read them; pass them on a Docker machine",
        )
    labels = {
        LABEL_RUN: run.id,
        LABEL_MACHINE: spec.machine.name,
        LABEL_HASH: run.test_dir_hash or "",
        LABEL_BATCH: spec.batch_id or "",
        LABEL_CREATED: str(int(time.time())),
        LABEL_STORE: store_id,
    }
    env = spec.environment()
    command = spec.command
    at = pytest_arguments_at(command)
    if run.event_token is not None and at is not None:
        wiring = reporter_wiring(run.event_token, image_pythonpath=env.get("PYTHONPATH"))
        command = (*command[:at], *wiring.args, *command[at:])
        env.update(wiring.env)
    return ContainerSpec(
        image=spec.image,
        command=command,
        labels=labels,
        env=env,
        workdir=spec.machine.workdir,
        network=spec.machine.network,
        cpus=spec.machine.cpus,
        memory=spec.machine.memory,
        pids_limit=spec.machine.pids_limit,
        outputs=(JUNIT_PATH, *spec.artifacts),
        timeout=spec.timeout,
        cacheable=cacheable,
    )


def stop_all(containers: Sequence[tuple[Engine, str]], grace: float) -> None:
    """Stop each ``(engine, container id)`` at once: SIGINT, and SIGKILL for those still running
    ``grace`` seconds later (:func:`~pytest_lrun.engine.stop`); returns when all are done."""
    stoppers = [
        threading.Thread(target=_stop_quietly, args=(engine, container_id, grace), daemon=True)
        for engine, container_id in containers
    ]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(grace + 60)  # engine calls have their own timeouts: a bound only


def _stop_quietly(engine: Engine, container_id: str, grace: float) -> None:
    # The run is marked interrupted by its own thread whether the stop works or not.
    with contextlib.suppress(EngineError):
        stop(engine, container_id, grace)


class Remover:
    """Removes ended runs' containers (forced, with their volumes), quietly: `lrun reap` removes
    what is left, by label, and the run's record is terminal before its container goes.

    With ``later``, :meth:`remove` returns at once and threads of its own remove the container;
    :meth:`close` waits for them, and a removal asked after it is done at once.
    """

    def __init__(self, *, later: bool) -> None:
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(REMOVERS, thread_name_prefix="lrun-remove") if later else None

    def remove(self, engine: Engine, container_id: str) -> None:
        with self._lock:
            if self._threads is not None:
                self._threads.submit(_remove_quietly, engine, container_id)
                return
        _remove_quietly(engine, container_id)

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True)


def _remove_quietly(engine: Engine, container_id: str) -> None:
    with contextlib.suppress(EngineError):
        engine.remove(container_id)
