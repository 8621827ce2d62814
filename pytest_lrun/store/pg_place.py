"""The PostgreSQL store's placement of a new run on one of its candidate machines, and the line of waiters.

Split out of :mod:`.postgres`: :meth:`PostgresStore.place
<pytest_lrun.store.postgres.PostgresStore.place>` retries :func:`place_once` while every
slot is taken. One machine with one slot, asked without a ticket, takes no lock (the
live-slot index arbitrates); with more slots, more machines or a ticket, the decision is
one transaction under the candidates' advisory locks. The line of waiters is the table
``lrun_line`` (machine, ticket, created, seen); a waiter not seen for ``TICKET_TTL_S``
leaves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pytest_lrun.core.fsutil import stamp
from pytest_lrun.store import pg_sql
from pytest_lrun.store.base import Candidate, Decision, Ticket
from pytest_lrun.store.common import TICKET_TTL_S, ahead_of, choose, fill_new, queued_blocker
from pytest_lrun.store.pg_db import Cursor, lock_id
from pytest_lrun.store.pg_io import PostgresRecords, column
from pytest_lrun.store.records import Run

__all__ = ["place_once"]


def place_once(
    store: PostgresRecords,
    candidates: Sequence[Candidate],
    make: Callable[[Candidate], Run],
    test_dir_hash: str | None,
    ticket: Ticket | None,
) -> tuple[Run, Decision]:
    """One try of :meth:`PostgresStore.place <pytest_lrun.store.postgres.PostgresStore.place>`:
    REUSE, BUSY or CREATED, looked at again as long as a race for the chosen slot is lost."""
    by_name = {column(c.machine): c for c in candidates}
    locked = len(candidates) > 1 or candidates[0].slots > 1 or ticket is not None
    what = ", ".join(f"machine {c.machine!r}" for c in candidates)

    def attempt(cur: Cursor) -> tuple[Run, Decision] | None:
        if locked:
            for name in sorted(by_name):
                cur.execute(pg_sql.ADVISORY_XACT_LOCK, (lock_id("place", name),))
        cur.execute(pg_sql.SELECT_LIVE_ON_MACHINES, (list(by_name),))
        live = cur.fetchall()
        for run_id, machine, stored_key, _slot, record in live:
            if stored_key == column(by_name[machine].key):
                return store._decode(run_id, record), Decision.REUSE
        taken: dict[str, set[int]] = {}
        for _id, machine, _key, slot, _record in live:
            taken.setdefault(machine, set()).add(slot)
        now = time.time()
        cur.execute(pg_sql.SELECT_LINE, (list(by_name), now - TICKET_TTL_S))
        lines: dict[str, dict[str, float]] = {}
        for machine, waiter, created in cur.fetchall():
            lines.setdefault(machine, {})[waiter] = created
        used = {
            c.machine: len(taken.get(name, ())) + ahead_of(lines.get(name, {}), ticket)
            for name, c in by_name.items()
        }
        chosen = choose(candidates, used)
        if chosen is None:
            if ticket is not None:  # in line on every candidate: the next free slot there is ours
                cur.execute(pg_sql.DELETE_STALE_TICKETS, (now - TICKET_TTL_S,))
                rows = [
                    {"machine": name, "ticket": ticket.id, "created": ticket.created, "seen": now}
                    for name in by_name
                ]
                cur.executemany(pg_sql.UPSERT_TICKET, rows)
            if live:
                return store._decode(live[0][0], live[0][4]), Decision.BUSY
            return queued_blocker(candidates[0].machine), Decision.BUSY
        held = taken.get(column(chosen.machine), set())
        slot = min(set(range(chosen.slots)) - held)
        run = make(chosen)
        fill_new(run, chosen.machine, chosen.key, test_dir_hash)
        run.id, run.owner = stamp(), store._stamped(run.owner)
        cur.execute(pg_sql.INSERT_LIVE_RUN_IF_FREE, store._row(run, owner=run.owner, slot=slot))
        if cur.fetchone() is None:
            return None
        if ticket is not None:
            cur.execute(pg_sql.DELETE_TICKET, (ticket.id, list(by_name)))
        return run, Decision.CREATED

    while True:
        decided = store.db.atomic(attempt, what, retry_unique=True, transaction=locked)
        if decided is not None:
            return decided
        # Lost the slot to another runner's run, which may even have ended since: look again.
