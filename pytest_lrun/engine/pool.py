"""A machine's built-in engine (:func:`connect`), and one per machine for an invocation (:class:`EnginePool`).

:func:`connect` picks the client by the machine's kind: a Docker Engine's
(:mod:`.docker`), or a Remote Execution API service's (:mod:`.reapi`, imported only
for such a machine, with the ``reapi`` extra). Machines connect at once (a lock per
machine), each only once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.settings import (
    DEFAULT_CONNECT_TIMEOUT,
)
from pytest_lrun.core.errors import ExtraMissing
from pytest_lrun.engine import (
    Engine,
)

EngineFactory = Callable[[Machine], Engine]


def connect(machine: Machine, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Engine:
    """A client of ``machine`` that answered within ``connect_timeout``: its Docker Engine, or its
    Remote Execution API service (``remote =`` in its table)."""
    if machine.remote is None:
        from pytest_lrun.engine.docker import connect as connect_docker

        return connect_docker(machine, connect_timeout=connect_timeout)
    try:
        import grpc  # noqa: F401 - only to say which extra is missing
    except ImportError:
        raise ExtraMissing(f"machine {machine.name!r} at {machine.host}", "reapi", "grpc") from None
    from pytest_lrun.engine.reapi import connect as connect_remote

    return connect_remote(machine, connect_timeout=connect_timeout)


class EnginePool:
    """One connected engine per machine, created on first use, shared by threads."""

    def __init__(
        self, factory: EngineFactory | None = None, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self._factory: EngineFactory = factory or (lambda m: connect(m, connect_timeout=connect_timeout))
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._connecting: dict[str, threading.Lock] = {}  # one per machine: a slow engine holds up no other

    def get(self, machine: Machine) -> Engine:
        """The machine's engine, connected on first use; machines connect at once, each once."""
        with self._lock:
            engine = self._engines.get(machine.name)
            if engine is not None:
                return engine
            connecting = self._connecting.setdefault(machine.name, threading.Lock())
        with connecting:
            with self._lock:
                engine = self._engines.get(machine.name)
            if engine is None:
                engine = self._factory(machine)
                with self._lock:
                    self._engines[machine.name] = engine
            return engine

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
