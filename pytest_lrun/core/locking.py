"""The store's one kind of lock: safe across threads and processes, refusing re-entry.

A lock is a sidecar ``*.lock`` file (never the file it protects). Taking it
means taking a per-process mutex for that file first (filelock's own locks are
per thread, so two threads of one process must be told apart here), then the
file lock itself, which the kernel releases when its holder dies, even by
SIGKILL. A thread that asks again for a lock it holds gets an error rather than
a deadlock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from pytest_lrun.core.errors import StoreError, StoreLocked

POLL_S = 0.005  # filelock polls a contended lock; critical sections last a few ms


class _Mutex:
    """A per-process, per-lock-file thread lock that knows its holder (to refuse re-entry)."""

    __slots__ = ("lock", "owner")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = None


_registry_guard = threading.Lock()
_mutexes: dict[str, _Mutex] = {}


def _mutex_for(lock_path: str) -> _Mutex:
    with _registry_guard:
        mutex = _mutexes.get(lock_path)
        if mutex is None:
            mutex = _mutexes[lock_path] = _Mutex()
        return mutex


def _reset_mutexes_in_child() -> None:  # pragma: forked child
    # A thread of the parent may have held a mutex at fork time; that thread does not exist here.
    global _registry_guard
    _registry_guard = threading.Lock()
    _mutexes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_mutexes_in_child)


@contextmanager
def hold(lock_path: str, timeout: float | None, what: str) -> Iterator[None]:
    """Hold the lock at ``lock_path``; ``what`` names the locked thing in errors.

    :raises StoreLocked: the lock was not free within ``timeout`` seconds (``None``: wait forever)
    :raises StoreError: this thread already holds it
    """
    mutex = _mutex_for(lock_path)
    me = threading.get_ident()
    if mutex.owner == me:
        raise StoreError(
            f"{what}: this thread already holds the store lock (a callback called back into the store)"
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    if not mutex.lock.acquire(timeout=-1 if timeout is None else min(timeout, threading.TIMEOUT_MAX)):
        raise StoreLocked(what, lock_path, float(timeout or 0))
    mutex.owner = me
    try:
        remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        file_lock = FileLock(lock_path, mode=0o600)
        try:
            file_lock.acquire(timeout=remaining, poll_interval=POLL_S)
        except Timeout as exc:
            raise StoreLocked(what, lock_path, float(timeout or 0)) from exc
        try:
            yield
        finally:
            file_lock.release()
    finally:
        mutex.owner = None
        mutex.lock.release()
