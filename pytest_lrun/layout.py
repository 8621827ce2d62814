"""The state dir's layout on disk: the one place that names the files and folders in it.

Every module that reads or writes a run's files (the store, dispatch, recovery,
the command line) asks :class:`RunFiles` for the path instead of spelling it, so
the layout below can change in one place::

    runs/<run-id>/run.json        the run record
    runs/<run-id>/logs.txt        the container's log, redacted and capped, without the reporter's events
    runs/<run-id>/events.jsonl    the inner reporter's events, one JSON object a line (pytest runs only)
    runs/<run-id>/junit.xml       the inner JUnit XML, as the container wrote it
    runs/<run-id>/artifacts/      files copied out of the container
    runs/<run-id>/finish.lock     held by whoever watches the run to its end (never holds data)

Leftovers a crash can leave behind are named here too, so the sweeper can tell
them from live files: temporary files of atomic writes (``.<name>.<random>.tmp``)
and run folders being deleted (``runs/.deleting-<run-id>-<random>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DELETING_PREFIX",
    "RECORD",
    "TMP_SUFFIX",
    "RunFiles",
    "is_leftover",
]

RECORD = "run.json"
LOGS = "logs.txt"
EVENTS = "events.jsonl"
JUNIT = "junit.xml"
ARTIFACTS = "artifacts"
FINISH_LOCK = "finish.lock"

#: A run folder renamed to ``.deleting-...`` is on its way out (see ``RunStore.delete``).
DELETING_PREFIX = ".deleting-"
#: Temporary files of :func:`pytest_lrun.fsutil.atomic_write_bytes` are ``.<target>.<random>.tmp``.
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run's files (see the module docstring); nothing here touches the disk."""

    dir: Path

    @property
    def record(self) -> Path:
        return self.dir / RECORD

    @property
    def logs(self) -> Path:
        return self.dir / LOGS

    @property
    def events(self) -> Path:
        return self.dir / EVENTS

    @property
    def junit(self) -> Path:
        return self.dir / JUNIT

    @property
    def artifacts(self) -> Path:
        return self.dir / ARTIFACTS

    @property
    def finish_lock(self) -> Path:
        return self.dir / FINISH_LOCK


def is_leftover(name: str) -> bool:
    """Whether a directory entry named ``name`` is what an interrupted write or delete left behind."""
    return name.startswith(DELETING_PREFIX) or (name.startswith(".") and name.endswith(TMP_SUFFIX))
