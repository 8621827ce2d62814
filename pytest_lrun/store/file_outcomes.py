"""The file store's inner test outcomes, kept per run key, and its quarantine list (see :mod:`.outcomes`).

Split out of :mod:`.files`, whose ``save_outcomes``, ``outcomes``, ``drop_stale_outcomes`` (gc's),
``quarantine``, ``release`` and ``quarantined`` call this module's functions. It owns under the
state directory::

    outcomes/<h>.json        {"key": ..., "outcomes": [[suite, node id, run id, machine, outcome, at], ...]}
                             (h = xxh3-128 of the key; the newest MAX_KEPT per test)
    outcomes/<h>.json.lock   its lock file (a sidecar: never holds data)
    outcomes/quarantine      {"quarantined": {"<node id>": since, ...}} (and .lock)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import xxhash

from pytest_lrun.core.fsutil import NotAFile, atomic_write_json, make_private_dir, read_regular
from pytest_lrun.core.layout import OUTCOMES_DIR
from pytest_lrun.core.locking import hold
from pytest_lrun.store.file_io import FileRecords
from pytest_lrun.store.outcomes import InnerOutcome, Quarantined, newest

__all__ = ["drop_stale", "load", "load_all", "quarantine", "quarantined", "release", "save"]

QUARANTINE = "quarantine"  # in outcomes/: no .json suffix, so that load_all never reads it


def save(store: FileRecords, outcomes: Sequence[InnerOutcome]) -> None:
    """Merge ``outcomes`` into each key's file, under that file's lock."""
    by_key: dict[str, list[InnerOutcome]] = {}
    for outcome in outcomes:
        by_key.setdefault(outcome.key, []).append(outcome)
    for key, added in by_key.items():
        path = _path(store, key)
        make_private_dir(path.parent)  # 0700, as every folder of the state dir
        with hold(str(path) + ".lock", store.lock_timeout, f"outcomes of key {key[:12]}"):
            kept = newest([*_read(store, path), *added])
            rows = [[o.suite, o.nodeid, o.run_id, o.machine, o.outcome, o.at] for o in kept]
            atomic_write_json(path, {"key": key, "outcomes": rows}, durable=store.durable)


def load(store: FileRecords, key: str) -> list[InnerOutcome]:
    """The outcomes kept under ``key``, oldest first; a file that does not parse counts as none."""
    return _read(store, _path(store, key))


def load_all(store: FileRecords) -> list[InnerOutcome]:
    """Every outcome the state dir keeps, oldest first."""
    folder = store.state_dir / OUTCOMES_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return newest(o for path in paths for o in _read(store, path))


def drop_stale(store: FileRecords, keys: Collection[str], before: float) -> int:
    """Remove the file of each key not in ``keys`` (or that holds no outcome) last written before
    ``before``, under its lock, so that no save falls between the look and the removal; how many.

    The lock sidecar stays (empty, so it weighs nothing against the cap): removing a lock file
    another process may be waiting on would let two savers hold the "same" lock.
    """
    folder = store.state_dir / OUTCOMES_DIR
    dropped = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        seen = _read(store, path)
        if seen and seen[0].key in keys:
            continue  # a run has the key: no lock needed to leave the file be (writes are whole)
        with hold(str(path) + ".lock", store.lock_timeout, f"outcomes {path.stem[:12]}"):
            try:
                if path.lstat().st_mtime >= before:
                    continue  # written since the runs were listed: perhaps a new run's
            except FileNotFoundError:
                continue
            kept = _read(store, path)
            if kept and kept[0].key in keys:
                continue
            with contextlib.suppress(FileNotFoundError):  # moved aside by _read, if not a file
                path.unlink()
                dropped += 1
    return dropped


def _read(store: FileRecords, path: Path) -> list[InnerOutcome]:
    try:
        data = json.loads(read_regular(path))
        key = str(data["key"])
        return [
            InnerOutcome(key, str(s), str(n), str(r), str(m), str(o), float(t))
            for s, n, r, m, o, t in data["outcomes"]
        ]
    except NotAFile as exc:  # a folder or a fifo there: moved aside, so that the next save can write
        store._quarantine(path, f"outcomes-{path.stem}", str(exc))
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _path(store: FileRecords, key: str) -> Path:
    digest = xxhash.xxh3_128_hexdigest(key.encode("utf-8", "surrogatepass"))
    return store.state_dir / OUTCOMES_DIR / f"{digest}.json"


def quarantine(store: FileRecords, nodeid: str, since: float) -> Quarantined:
    """Add ``nodeid`` to the list under its lock (one already there keeps its date)."""
    with _quarantine_locked(store) as (path, entries):
        since = entries.setdefault(nodeid, since)
        atomic_write_json(path, {"quarantined": entries}, durable=store.durable)
    return Quarantined(nodeid, since)


def release(store: FileRecords, nodeid: str) -> bool:
    with _quarantine_locked(store) as (path, entries):
        if entries.pop(nodeid, None) is None:
            return False
        atomic_write_json(path, {"quarantined": entries}, durable=store.durable)
    return True


def quarantined(store: FileRecords) -> list[Quarantined]:
    entries = _read_quarantine(store, store.state_dir / OUTCOMES_DIR / QUARANTINE)
    return [Quarantined(nodeid, since) for nodeid, since in sorted(entries.items())]


@contextlib.contextmanager
def _quarantine_locked(store: FileRecords) -> Iterator[tuple[Path, dict[str, float]]]:
    path = store.state_dir / OUTCOMES_DIR / QUARANTINE
    make_private_dir(path.parent)
    with hold(str(path) + ".lock", store.lock_timeout, "the quarantine list"):
        yield path, _read_quarantine(store, path)


def _read_quarantine(store: FileRecords, path: Path) -> dict[str, float]:
    try:
        data = json.loads(read_regular(path))
        return {str(nodeid): float(since) for nodeid, since in data["quarantined"].items()}
    except NotAFile as exc:
        store._quarantine(path, "quarantine", str(exc))
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
