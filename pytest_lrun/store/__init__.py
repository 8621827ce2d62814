"""The run store: durable run and batch records behind one interface, with two backends.

* :mod:`.base` is the interface (:class:`RunStore`, :class:`BatchStore`) that
  dispatch, recovery, the session and the CLI depend on;
* :mod:`.records` holds the records every backend keeps (:class:`Run`,
  :class:`Batch`) and how they spell ids and times;
* :mod:`.files` (with :mod:`.file_batches`) is the embedded default: records in
  one host's state dir, made safe across threads and processes with file locks.

:func:`open_store` picks the backend from the ``--lrun-store`` setting.
"""

from __future__ import annotations

from pathlib import Path

from .base import BatchStore, Decision, RunStore, Sweep
from .files import FileStore, default_state_dir, machine_key
from .records import Batch, Run, Status

__all__ = [
    "Batch",
    "BatchStore",
    "Decision",
    "FileStore",
    "Run",
    "RunStore",
    "Status",
    "Sweep",
    "default_state_dir",
    "machine_key",
    "open_store",
]


def open_store(state_dir: Path) -> RunStore:
    """The store of this invocation: the file store in ``state_dir``."""
    return FileStore(state_dir)
