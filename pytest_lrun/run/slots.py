"""A dispatcher's own runs on each machine, and the gate a staged run waits at before it starts.

A run is *staged* (:func:`~pytest_lrun.run.placement.place`) when every slot of its machines
is taken and the dispatcher has runs of its own running on one of them: it is placed past that
machine's slots (a pending record like any other, so a crash leaves it to the reconcile and
its labelled container to the reap), its container is created and the directory uploaded
while the slots are still busy, and it starts as soon as a slot frees: when a container there
exits, before its run's logs and results are read back. The store counts staged runs, and an
exited run until it ends, so it never places another process's run in a slot a staged run is
owed.

:class:`Slots` keeps which runs the dispatcher started on each machine and not yet ended, which
of them exited, and its staged runs on each machine (:meth:`Slots.reserve`: at most one per run
of its own running there, so every gate opens), and wakes the gates as soon as a container of
its exits, and the runs waiting in line as soon as a run of its ends or a staged one starts
(its place is free for the next). Of its waiters for the same machines only the oldest asks
the store (:meth:`Slots.first_in_line`): the others could take no slot it could not, and each
asking costs the store's locks; the next one asks as soon as it is placed. Another process's
runs ending are seen by polling the store.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

from pytest_lrun.config.machines import Machine
from pytest_lrun.store import RunStore, Ticket

#: How often a staged run asks the store whether a slot freed while no run of its own ended.
GATE_POLL_S = 0.2


class Slots:
    """The runs a dispatcher started on each machine and has not ended, those of them whose
    container exited, its staged runs on each, and the gate staged runs wait at."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: dict[str, set[str]] = {}
        self._exited: dict[str, set[str]] = {}  # running runs whose container exited: slots free
        self._staged: dict[str, list[str]] = {}  # machine -> its staged runs' ids ("" while placed)
        self._freed = 0  # runs ended or staged runs started: a waiter in line may be placed now
        self._exits = 0  # containers exited: a staged run may start now
        # Waiters for the same machines, oldest first: only the first asks the store for a slot.
        self._lines: dict[frozenset[str], list[Ticket]] = {}

    def reserve(self, machine: str) -> int | None:
        """Take a place for a staged run on ``machine``: one per run of the dispatcher's running
        there (each will free a slot, so each staged run's gate opens). Returns how far past the
        machine's slots the store may place it: its staged runs with this one, and its runs whose
        container exited (the store counts them until they end, yet they hold no slot); None when
        it has no place left."""
        with self._changed:
            staged = self._staged.setdefault(machine, [])
            exited = self._exited.get(machine, set())
            if len(staged) >= len(self._running.get(machine, set()) - exited):
                return None
            staged.append("")
            return len(staged) + len(exited)

    def staged_as(self, machine: str, run_id: str) -> None:
        """A place reserved on ``machine`` (any: they are alike) now holds ``run_id``."""
        with self._changed:
            staged = self._staged[machine]
            staged[staged.index("")] = run_id

    def release(self, machine: str) -> None:
        """Give a place reserved on ``machine`` back, its staged run never placed."""
        with self._changed:
            staged = self._staged.get(machine, [])
            if "" in staged:
                staged.remove("")
                self._freed_locked()

    def started(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._start_locked(machine, run_id)

    def _start_locked(self, machine: str, run_id: str) -> None:
        self._running.setdefault(machine, set()).add(run_id)
        staged = self._staged.get(machine, [])
        if run_id in staged:
            staged.remove(run_id)
        self._freed_locked()  # a place for a staged run: the next run in line may take it

    def _freed_locked(self) -> None:
        """A waiter in line may be placed now: wake them."""
        self._freed += 1
        self._changed.notify_all()

    def exited(self, machine: str, run_id: str) -> None:
        """``run_id``'s container exited: its slot is free before its run ends."""
        with self._changed:
            self._exited.setdefault(machine, set()).add(run_id)
            self._exits += 1
            self._changed.notify_all()

    def ended(self, machine: str, run_id: str) -> None:
        with self._changed:
            self._running.get(machine, set()).discard(run_id)
            self._exited.get(machine, set()).discard(run_id)
            staged = self._staged.get(machine, [])
            if run_id in staged:  # never started (failed, cancelled)
                staged.remove(run_id)
            self._exits += 1
            self._freed_locked()

    def wait_in_line(self, machines: frozenset[str], ticket: Ticket) -> None:
        """``ticket``'s waiter waits for a slot on ``machines``: behind the dispatcher's waiters for
        the same machines with older tickets, as the store's line orders them (idempotent)."""
        with self._changed:
            line = self._lines.setdefault(machines, [])
            if ticket not in line:
                bisect.insort(line, ticket, key=_age)

    def first_in_line(self, machines: frozenset[str], ticket: Ticket) -> bool:
        """Whether ``ticket``'s waiter is the dispatcher's oldest for ``machines`` (or in no line):
        only it asks the store, as any slot the others could take it could take first."""
        with self._changed:
            line = self._lines.get(machines, [])
            return ticket not in line or line[0] == ticket

    def leave_line(self, machines: frozenset[str], ticket: Ticket) -> None:
        """``ticket``'s waiter is placed or gave up: the next one in line asks the store at once."""
        with self._changed:
            line = self._lines.get(machines, [])
            if ticket in line:
                line.remove(ticket)
                self._freed_locked()
            if not line:
                self._lines.pop(machines, None)

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less when a run of the dispatcher ends or a staged one starts
        (a waiter in line tries again at once for the place it freed, not at its next poll)."""
        with self._changed:
            seen = self._freed
            self._changed.wait_for(lambda: self._freed != seen, seconds)

    def _first_staged(self, machine: str) -> str | None:
        """The staged run on ``machine`` that starts first (placed runs only)."""
        return next((staged for staged in self._staged.get(machine, []) if staged), None)

    def wait_free(self, store: RunStore, machine: Machine, run_id: str, stopping: Callable[[], bool]) -> None:
        """Return once staged run ``run_id`` fits ``machine``'s slots, counted as started from
        then on, or a stop (Ctrl-C, ``-x``) came: the caller checks which.

        The store's live runs there hold a slot each, but for the dispatcher's staged runs
        not started yet and its runs whose container exited. ``run_id`` goes first among its
        machine's staged runs, so two of them never take one freed slot."""
        while not stopping():
            with self._changed:
                seen = self._exits
                if self._first_staged(machine.name) != run_id:  # another goes first: no store read
                    self._changed.wait(GATE_POLL_S)
                    continue
            live = {run.id for run in store.active(machine.name)}
            with self._changed:
                if self._first_staged(machine.name) == run_id:
                    ready = {staged for staged in self._staged.get(machine.name, []) if staged}
                    holding = live - self._exited.get(machine.name, set()) - ready
                    if len(holding) < machine.slots:
                        self._start_locked(machine.name, run_id)
                        return
                if self._exits == seen:
                    self._changed.wait(GATE_POLL_S)


def _age(ticket: Ticket) -> tuple[float, str]:
    return ticket.created, ticket.id
