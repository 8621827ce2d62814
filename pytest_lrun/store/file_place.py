"""The file store's placement of a new run on one of its candidate machines, and the lines of waiters.

Split out of :mod:`.files`: :meth:`FileStore.place <pytest_lrun.store.files.FileStore.place>`
retries :func:`place_once` while every slot is taken, and
:meth:`FileStore.leave_line <pytest_lrun.store.files.FileStore.leave_line>` takes a
ticket out of the lines with :func:`line_locked` and :func:`write_line`. This
module owns ``queue/`` under the state directory::

    queue/<machine-key>.json     the machine's line of waiters for a free slot:
                                 {"tickets": {"<ticket-id>": [created, last seen], ...}}

A line is read and written under its machine's lock (the caller holds it), like
the machine's index; a waiter not seen for ``TICKET_TTL_S`` leaves it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pytest_lrun.core.fsutil import NotAFile, atomic_write_json, make_private_dir, read_regular, remove_tree
from pytest_lrun.core.layout import QUEUE_DIR
from pytest_lrun.store.base import Candidate, Decision, Ticket
from pytest_lrun.store.common import TICKET_TTL_S, ahead_of, choose, fill_new, queued_blocker
from pytest_lrun.store.file_io import FileRecords
from pytest_lrun.store.records import Run

__all__ = ["line_locked", "place_once", "write_line"]

#: How often a waiter's try writes its ticket's "last seen" again: well within ``TICKET_TTL_S``
#: with a waiter's longest nap (2 s) on top.
REFRESH_S = TICKET_TTL_S / 4


def place_once(
    store: FileRecords,
    candidates: Sequence[Candidate],
    mkeys: Mapping[str, str],
    make: Callable[[Candidate], Run],
    test_dir_hash: str | None,
    ticket: Ticket | None,
) -> tuple[Run, Decision]:
    """One try of :meth:`FileStore.place <pytest_lrun.store.files.FileStore.place>`, under the
    candidates' machine locks (``mkeys``: each candidate's machine key)."""
    with contextlib.ExitStack() as locks:
        for c in sorted(candidates, key=lambda c: mkeys[c.machine]):
            locks.enter_context(store._locked(mkeys[c.machine], c.machine))
        live = {c.machine: store._live_locked(mkeys[c.machine], c.machine) for c in candidates}
        for c in candidates:
            for run in live[c.machine]:
                if run.key == c.key:
                    return run, Decision.REUSE
        now = time.time()
        lines = {c.machine: line_locked(store, mkeys[c.machine], now) for c in candidates}
        used = {
            machine: len(runs) + ahead_of({t: times[0] for t, times in lines[machine].items()}, ticket)
            for machine, runs in live.items()
        }
        chosen = choose(candidates, used)
        if chosen is None:
            if ticket is not None:  # in line on every candidate: the next free slot there is ours
                for c in candidates:
                    seen = lines[c.machine].get(ticket.id)
                    if seen is None or now - seen[1] > REFRESH_S:  # not a write per try: one per REFRESH_S
                        line = {**lines[c.machine], ticket.id: (ticket.created, now)}
                        write_line(store, mkeys[c.machine], line)
            blocker = next((run for c in candidates for run in live[c.machine]), None)
            return blocker or queued_blocker(candidates[0].machine), Decision.BUSY
        run = make(chosen)
        fill_new(run, chosen.machine, chosen.key, test_dir_hash)
        run.id = store._claim_run_dir()
        try:
            store._write_record(run)  # payload first ...
            mkey = mkeys[chosen.machine]
            store._write_index(mkey, chosen.machine, [*(r.id for r in live[chosen.machine]), run.id])
        except BaseException:
            # Never returned to anyone: take the half-made run back (a crash here leaves an
            # unindexed pending record, which place ignores).
            with contextlib.suppress(OSError):
                remove_tree(store._run_dir(run.id))
            run.id = ""
            raise
        if ticket is not None:
            for c in candidates:
                if lines[c.machine].pop(ticket.id, None) is not None:
                    write_line(store, mkeys[c.machine], lines[c.machine])
        return run, Decision.CREATED


def _line_path(store: FileRecords, mkey: str) -> Path:
    return store.state_dir / QUEUE_DIR / f"{mkey}.json"


def line_locked(store: FileRecords, mkey: str, now: float) -> dict[str, tuple[float, float]]:
    """The machine's waiters still in line (ticket id -> (created, last seen)); an unreadable
    line counts as empty (waiters still waiting are back in it on their next try)."""
    path = _line_path(store, mkey)
    try:
        tickets = json.loads(read_regular(path))["tickets"]
        line = {str(ticket): (float(created), float(seen)) for ticket, (created, seen) in tickets.items()}
    except NotAFile as exc:  # a folder or a fifo there: moved aside, so that the line can be written
        store._quarantine(path, f"queue-{mkey}", str(exc))
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {ticket: times for ticket, times in line.items() if now - times[1] < TICKET_TTL_S}


def write_line(store: FileRecords, mkey: str, line: dict[str, tuple[float, float]]) -> None:
    """Replace the machine's line. Atomic but never synced to disk: a line lives only as long as
    its waiters (a host crash ends them all), and one lost or unreadable counts as empty."""
    path = _line_path(store, mkey)
    make_private_dir(path.parent)  # 0700, as every folder of the state dir
    tickets = {ticket: list(times) for ticket, times in line.items()}
    atomic_write_json(path, {"tickets": tickets}, durable=False)
