"""The run store: durable run and batch records behind one interface, with two backends.

* :mod:`.base` is the interface (:class:`RunStore`, :class:`BatchStore`) that
  dispatch, recovery, the session and the CLI depend on;
* :mod:`.records` holds the records every backend keeps (:class:`Run`,
  :class:`Batch`) and how they spell ids and times;
* :mod:`.outcomes` holds the inner tests' outcomes kept per run key, and the flaky
  tests they prove;
* :mod:`.common` is what both backends do the same way (the rules of a new run,
  the busy wait, a run's owner on this host, the leftovers of crashes);
* :mod:`.files` is the embedded default: records in one host's state dir, made
  safe across threads and processes with file locks. Its parts: :mod:`.file_io`
  (the base class :class:`~.file_io.FileRecords`: reading and writing each file),
  :mod:`.file_place` (placement and the lines of waiters), :mod:`.file_check`
  (sweep and check), :mod:`.file_durations`, :mod:`.file_outcomes` and :mod:`.file_batches`;
* :mod:`.postgres` keeps the records in a PostgreSQL database that every CI
  runner reaches (``--lrun-store=postgresql://...``, the ``postgres`` extra). Its
  parts: :mod:`.pg_io` (the base class :class:`~.pg_io.PostgresRecords`: a run as a
  row), :mod:`.pg_db` (connections, transactions, the schema), :mod:`.pg_sql` (every
  statement), :mod:`.pg_place` (placement and the line of waiters), :mod:`.pg_check`
  (sweep and check), :mod:`.pg_batches` and :mod:`.pg_results` (results shared
  between runners).

:func:`open_store` picks the backend from the ``--lrun-store`` setting and imports
only that one: importing this package loads neither backend (nor psycopg).
"""

from __future__ import annotations

from pathlib import Path

from pytest_lrun.config.settings import StoreWaits
from pytest_lrun.core.errors import ExtraMissing
from pytest_lrun.store.base import BatchStore, Candidate, Decision, RunStore, Sweep, Ticket
from pytest_lrun.store.records import Batch, BatchStatus, Run, Status

__all__ = [
    "Batch",
    "BatchStatus",
    "BatchStore",
    "Candidate",
    "Decision",
    "Run",
    "RunStore",
    "Status",
    "Sweep",
    "Ticket",
    "open_store",
]


def open_store(state_dir: Path, url: str | None = None, *, waits: StoreWaits | None = None) -> RunStore:
    """The store of this invocation: the file store in ``state_dir``, or the database at ``url``.

    With a database, ``state_dir`` still holds this host's copies of run files and hash caches,
    and ``waits`` are its bounded waits (the ``store_*`` settings,
    :attr:`Settings.store_waits <pytest_lrun.config.settings.Settings.store_waits>`; default:
    their defaults).

    :raises ExtraMissing: ``url`` names a database and psycopg is not installed
    :raises StoreUnreachable: the database does not answer, or refuses the login
    """
    if url is None:
        from pytest_lrun.store.files import FileStore

        return FileStore(state_dir)
    try:
        import psycopg  # noqa: F401 - only to say which extra is missing
    except ImportError:
        raise ExtraMissing("a postgresql:// store", "postgres", "psycopg") from None
    from pytest_lrun.store.postgres import PostgresStore

    waits = waits if waits is not None else StoreWaits()
    return PostgresStore(url, state_dir, lock_timeout=waits.lock_timeout, waits=waits)
