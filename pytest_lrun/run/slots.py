"""A dispatcher's own runs on each machine, and the gate a staged run waits at before it starts.

A run is *staged* (:func:`~pytest_lrun.run.placement.place`) when every slot of its machines
is taken and the dispatcher has a run of its own running on one of them: it is placed one
past that machine's slots (a pending record like any other, so a crash leaves it to the
reconcile and its labelled container to the reap), its container is created and the directory
uploaded while the slot is still busy, and it starts as soon as the machine's live runs,
itself included, fit the machine's slots again. The store never places a second staged run
on the machine (it counts the staged one), nor one of another process while a slot is owed.

:class:`Slots` keeps which runs the dispatcher started on each machine and not yet ended
(:meth:`Slots.running_on`: where staging may happen) and wakes a staged run as soon as one of
them ends; another process's runs ending are seen by polling the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pytest_lrun.config.machines import Machine
from pytest_lrun.store import RunStore

#: How often a staged run asks the store whether a slot freed while no run of its own ended.
GATE_POLL_S = 0.2


class Slots:
    """The runs a dispatcher started on each machine and has not ended, and the gate of staged runs."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: dict[str, set[str]] = {}
        self._ends = 0  # runs ended so far: a staged run waits only if none ended since it looked

    def started(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._running.setdefault(machine, set()).add(run_id)

    def ended(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._running.get(machine, set()).discard(run_id)
            self._ends += 1
            self._changed.notify_all()

    def running_on(self, machine: str) -> bool:
        """Whether the dispatcher has a run running on ``machine`` (a slot of its own will free)."""
        with self._changed:
            return bool(self._running.get(machine))

    def wait_free(self, store: RunStore, machine: Machine, stopping: Callable[[], bool]) -> None:
        """Return once ``machine``'s live runs (the staged one among them) fit its slots, or a stop
        (Ctrl-C, ``-x``) came: the caller checks which."""
        while not stopping():
            with self._changed:
                seen = self._ends
            if len(store.active(machine.name)) <= machine.slots:
                return
            with self._changed:
                if self._ends == seen:
                    self._changed.wait(GATE_POLL_S)
