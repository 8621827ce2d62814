"""A dispatcher's own runs on each machine, and the gate a staged run waits at before it starts.

A run is *staged* (:func:`~pytest_lrun.run.placement.place`) when every slot of its machines
is taken and the dispatcher has a run of its own running on one of them: it is placed one
past that machine's slots (a pending record like any other, so a crash leaves it to the
reconcile and its labelled container to the reap), its container is created and the directory
uploaded while the slot is still busy, and it starts as soon as the machine's live runs,
itself included, fit the machine's slots again. The store never places a second staged run
on the machine (it counts the staged one), nor one of another process while a slot is owed.

:class:`Slots` keeps which runs the dispatcher started on each machine and not yet ended, and
its one staged run per machine (:meth:`Slots.reserve`: staging happens only where a run of its
own runs, one at a time, so the gate always opens), and wakes a staged run, and the runs
waiting in line, as soon as one of its runs ends; another process's runs ending are seen by
polling the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pytest_lrun.config.machines import Machine
from pytest_lrun.store import RunStore

#: How often a staged run asks the store whether a slot freed while no run of its own ended.
GATE_POLL_S = 0.2


class Slots:
    """The runs a dispatcher started on each machine and has not ended, its staged run on each (at
    most one), and the gate staged runs wait at."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: dict[str, set[str]] = {}
        self._staged: dict[str, str] = {}  # machine -> its staged run's id ("" while being placed)
        self._ends = 0  # runs ended so far: a staged run waits only if none ended since it looked

    def reserve(self, machine: str) -> bool:
        """Take ``machine``'s one place for a staged run: only where a run of the dispatcher's
        runs (so a slot of its own will free) and no other staged run waits (so the gate opens)."""
        with self._changed:
            if machine in self._staged or not self._running.get(machine):
                return False
            self._staged[machine] = ""
            return True

    def staged_as(self, machine: str, run_id: str) -> None:
        """The reserved place now holds ``run_id``."""
        with self._changed:
            self._staged[machine] = run_id

    def release(self, machine: str, run_id: str = "") -> None:
        """Give ``machine``'s place back, if ``run_id`` (or the reservation) holds it."""
        with self._changed:
            if self._staged.get(machine) == run_id:
                del self._staged[machine]

    def started(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._running.setdefault(machine, set()).add(run_id)
            if self._staged.get(machine) == run_id:
                del self._staged[machine]

    def ended(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._running.get(machine, set()).discard(run_id)
            if self._staged.get(machine) == run_id:  # never started (failed, cancelled)
                del self._staged[machine]
            self._ends += 1
            self._changed.notify_all()

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less when a run of the dispatcher ends (a waiter in line tries
        again at once for the slot it freed, not at its next poll)."""
        with self._changed:
            seen = self._ends
            self._changed.wait_for(lambda: self._ends != seen, seconds)

    def wait_free(self, store: RunStore, machine: Machine, stopping: Callable[[], bool]) -> None:
        """Return once ``machine``'s live runs (the staged one among them) fit its slots, or a stop
        (Ctrl-C, ``-x``) came: the caller checks which. The staged run is the only one of the
        dispatcher's on the machine that waits here, so every other live run there holds a slot
        and is running or about to: the gate opens when one of them ends."""
        while not stopping():
            with self._changed:
                seen = self._ends
            if len(store.active(machine.name)) <= machine.slots:
                return
            with self._changed:
                if self._ends == seen:
                    self._changed.wait(GATE_POLL_S)
