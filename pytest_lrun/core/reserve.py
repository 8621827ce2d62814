"""The terminal reserve: room on the state dir's file system kept for each live run's final record.

A run that cannot write its terminal record stays live for ever (until a sweep
guesses its fate), so a full disk must never take that write away. The idea comes
from durable task stores that keep a terminal reserve, so a final result always
has room. This module owns it and nothing else:

* :func:`check_room` refuses a new run with :class:`~pytest_lrun.core.errors.StateFull`
  (``state_full``) when the state dir's file system has less free space than the
  reserve (``--lrun-terminal-reserve-bytes``, default 1 MiB), before anything is
  recorded or started;
* :func:`claim` allocates the reserve as a real file in the run's folder
  (``runs/<id>/reserve``, :attr:`~pytest_lrun.core.layout.RunFiles.reserve`), with
  ``posix_fallocate``, so the blocks are the file system's, not a promise;
* :func:`release` removes it; the store does so right before it writes the
  terminal record (``RunStore.end``), whoever ends the run. A run folder deleted
  by gc takes its reserve with it.

While the run lives, a disk that fills costs it output (the log spool drops what
it cannot write, :mod:`pytest_lrun.run.logs`), never its ending.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pytest_lrun.core.errors import StateFull
from pytest_lrun.core.fsutil import make_private_dir

__all__ = ["check_room", "claim", "full", "release"]

_CHUNK = b"\0" * (1 << 16)


def full(exc: OSError) -> bool:
    """Whether ``exc`` says the file system (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def check_room(state_dir: Path, reserve: int) -> None:
    """:raises StateFull: the file system of ``state_dir`` has less than ``reserve`` bytes free"""
    free = shutil.disk_usage(state_dir).free
    if free < reserve:
        raise StateFull(str(state_dir), free, reserve)


def claim(path: Path, reserve: int, state_dir: Path) -> None:
    """Allocate ``reserve`` bytes at ``path``.

    :raises StateFull: the file system cannot hold them (nothing is left behind)
    """
    try:
        make_private_dir(path.parent)  # a shared store makes this host's run folder on demand
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, reserve)
            except OSError as e:
                if full(e):
                    raise
                _write_zeros(fd, reserve)  # a file system without fallocate (some FUSE mounts)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        if full(e):
            raise StateFull(str(state_dir), shutil.disk_usage(state_dir).free, reserve) from e
        raise


def release(path: Path) -> None:
    """Give the reserve at ``path`` back (nothing when there is none)."""
    path.unlink(missing_ok=True)


def _write_zeros(fd: int, size: int) -> None:
    left = size
    while left > 0:
        left -= os.write(fd, _CHUNK[: min(left, len(_CHUNK))])
