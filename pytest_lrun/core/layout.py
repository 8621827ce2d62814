"""The state dir's layout on disk: the one place that names the files and folders in it.

The state dir is ``$LRUN_STATE_DIR``, else ``~/.lrun`` (:func:`default_state_dir`). Its
folders are named by the ``*_DIR`` constants below; what each holds is the business of
the module that owns it (the file store's records: :mod:`pytest_lrun.store.files`; the
hash stat caches: the tree layer, :mod:`pytest_lrun.tree`; the build logs:
:mod:`pytest_lrun.run.images`)::

    runs/  active/  locks/  completed/  corrupt/  queue/  durations/  outcomes/  batches/
    hashcache/  builds/

Every module that reads or writes a run's files (the store, dispatch, recovery,
the command line) asks :class:`RunFiles` for the path instead of spelling it, so
the layout below can change in one place::

    runs/<run-id>/run.json        the run record
    runs/<run-id>/logs.txt        the container's log, redacted and capped, without the reporter's events
    runs/<run-id>/events.jsonl    the inner reporter's events, one JSON object a line (pytest runs only)
    runs/<run-id>/junit.xml       the inner JUnit XML, as the container wrote it
    runs/<run-id>/artifacts/      files copied out of the container
    runs/<run-id>/finish.lock     held by whoever watches the run to its end (never holds data)
    runs/<run-id>/reserve         room kept for the final record while the run lives (core.reserve)

Files kept per machine are named by :func:`machine_key`, e.g. an image build's log
``builds/<machine key>-<digest>.log`` (:mod:`pytest_lrun.run.images`).

Leftovers a crash can leave behind are named here too, so the sweeper can tell
them from live files: temporary files of atomic writes (``.<name>.<random>.tmp``)
and run folders being deleted (``runs/.deleting-<run-id>-<random>``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import xxhash

__all__ = [
    "ACTIVE_DIR",
    "BATCHES_DIR",
    "BUILDS_DIR",
    "COMPLETED_DIR",
    "CORRUPT_DIR",
    "DELETING_PREFIX",
    "DURATIONS_DIR",
    "HASHCACHE_DIR",
    "HOME_STATE_DIR",
    "LOCKS_DIR",
    "OUTCOMES_DIR",
    "QUEUE_DIR",
    "RECORD",
    "RUNS_DIR",
    "TMP_SUFFIX",
    "RunFiles",
    "default_state_dir",
    "is_leftover",
    "machine_key",
]

#: The state dir's folder under the home directory, when neither the option nor its variable names one.
HOME_STATE_DIR = ".lrun"

# The folders of the state dir.
RUNS_DIR = "runs"  # a folder per run: RunFiles
ACTIVE_DIR = "active"  # each machine's index of its live runs (the file store)
LOCKS_DIR = "locks"  # each machine's lock file, and named locks (the file store)
COMPLETED_DIR = "completed"  # the newest completed run of each key (the file store)
CORRUPT_DIR = "corrupt"  # files that did not parse, moved aside, never deleted (the file store)
QUEUE_DIR = "queue"  # each machine's line of waiters for a slot (the file store)
DURATIONS_DIR = "durations"  # the inner tests' durations per suite (the file store)
OUTCOMES_DIR = "outcomes"  # the inner tests' outcomes per run key (the file store)
BATCHES_DIR = "batches"  # batch records (the file store)
HASHCACHE_DIR = "hashcache"  # stat caches of hashed trees (any store)
BUILDS_DIR = "builds"  # image build logs per machine (any store)

RECORD = "run.json"
LOGS = "logs.txt"
EVENTS = "events.jsonl"
JUNIT = "junit.xml"
ARTIFACTS = "artifacts"
FINISH_LOCK = "finish.lock"
RESERVE = "reserve"

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

#: A run folder renamed to ``.deleting-...`` is on its way out (see ``RunStore.delete``).
DELETING_PREFIX = ".deleting-"
#: Temporary files of :func:`pytest_lrun.core.fsutil.atomic_write_bytes` are ``.<target>.<random>.tmp``.
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

    @property
    def reserve(self) -> Path:
        return self.dir / RESERVE


def default_state_dir() -> Path:
    """``$LRUN_STATE_DIR`` when set and non-empty, else ``~/.lrun``."""
    configured = os.environ.get("LRUN_STATE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / HOME_STATE_DIR


def machine_key(machine: str) -> str:
    """A filesystem-safe, collision-resistant file stem for a machine name.

    The readable part keeps ``[A-Za-z0-9_.-]`` (other runs become ``_``, at most 48
    characters, no leading dot); the suffix is the full xxh3-128 digest of the
    exact name (32 hex digits), so two names collide only by a 128-bit accident.
    """
    if not isinstance(machine, str) or not machine:
        raise ValueError(f"a machine name must be a non-empty string, not {machine!r}")
    readable = _UNSAFE_CHARS.sub("_", machine).lstrip(".")[:48] or "m"
    digest = xxhash.xxh3_128_hexdigest(machine.encode("utf-8", "surrogatepass"))
    return f"{readable}-{digest}"


def is_leftover(name: str) -> bool:
    """Whether a directory entry named ``name`` is what an interrupted write or delete left behind."""
    return name.startswith(DELETING_PREFIX) or (name.startswith(".") and name.endswith(TMP_SUFFIX))
