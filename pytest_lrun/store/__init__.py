"""The run store: durable run and batch records behind one interface, with two backends.

* :mod:`.base` is the interface (:class:`RunStore`, :class:`BatchStore`) that
  dispatch, recovery, the session and the CLI depend on;
* :mod:`.records` holds the records every backend keeps (:class:`Run`,
  :class:`Batch`) and how they spell ids and times;
* :mod:`.files` (with :mod:`.file_batches`) is the embedded default: records in
  one host's state dir, made safe across threads and processes with file locks;
* :mod:`.postgres` keeps the records in a PostgreSQL database that every CI
  runner reaches (``--lrun-store=postgresql://...``, the ``postgres`` extra).

:func:`open_store` picks the backend from the ``--lrun-store`` setting.
"""

from __future__ import annotations

from pathlib import Path

from pytest_lrun.core.errors import ExtraMissing
from pytest_lrun.store.base import BatchStore, Candidate, Decision, RunStore, Sweep, Ticket
from pytest_lrun.store.files import FileStore, default_state_dir, machine_key
from pytest_lrun.store.records import Batch, BatchStatus, Run, Status

__all__ = [
    "Batch",
    "BatchStatus",
    "BatchStore",
    "Candidate",
    "Decision",
    "FileStore",
    "Run",
    "RunStore",
    "Status",
    "Sweep",
    "Ticket",
    "default_state_dir",
    "machine_key",
    "open_store",
]


def open_store(state_dir: Path, url: str | None = None) -> RunStore:
    """The store of this invocation: the file store in ``state_dir``, or the database at ``url``.

    With a database, ``state_dir`` still holds this host's copies of run files and hash caches,
    and a :class:`~pytest_lrun.config.settings.StoreURL` brings the waits of the ``store_*`` settings.

    :raises ExtraMissing: ``url`` names a database and psycopg is not installed
    :raises StoreUnreachable: the database does not answer, or refuses the login
    """
    if url is None:
        return FileStore(state_dir)
    try:
        import psycopg  # noqa: F401 - only to say which extra is missing
    except ImportError:
        raise ExtraMissing("a postgresql:// store", "postgres", "psycopg") from None
    from pytest_lrun.config.settings import StoreURL, StoreWaits
    from pytest_lrun.store.postgres import PostgresStore

    waits = url.waits if isinstance(url, StoreURL) else StoreWaits()
    return PostgresStore(url, state_dir, lock_timeout=waits.lock_timeout, waits=waits)
