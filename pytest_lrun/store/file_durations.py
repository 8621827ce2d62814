"""The file store's durations of inner tests, kept per suite for sharding.

Split out of :mod:`.files`, whose :meth:`FileStore.save_durations
<pytest_lrun.store.files.FileStore.save_durations>` and ``durations`` call
:func:`save` and :func:`load`. This module owns ``durations/``
under the state directory::

    durations/<h>.json        {"suite": ..., "durations": {"<node id>": seconds, ...}}
                              (h = xxh3-128 of the suite's name)
    durations/<h>.json.lock   its lock file (a sidecar: never holds data)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import xxhash

from pytest_lrun.core.fsutil import NotAFile, atomic_write_json, make_private_dir, read_regular
from pytest_lrun.core.layout import DURATIONS_DIR
from pytest_lrun.core.locking import hold
from pytest_lrun.store.file_io import FileRecords

__all__ = ["load", "save"]


def save(store: FileRecords, suite: str, durations: Mapping[str, float]) -> None:
    """Merge ``durations`` into ``durations/<digest of suite>.json`` under its own lock."""
    path = _durations_path(store, suite)
    make_private_dir(path.parent)  # 0700, as every folder of the state dir
    with hold(str(path) + ".lock", store.lock_timeout, f"durations of {suite!r}"):
        kept = load(store, suite)
        kept.update(durations)
        atomic_write_json(path, {"suite": suite, "durations": kept}, durable=store.durable)


def load(store: FileRecords, suite: str) -> dict[str, float]:
    """The durations kept for ``suite``; a file that does not parse counts as none (it is rewritten)."""
    path = _durations_path(store, suite)
    try:
        data = json.loads(read_regular(path))
        kept = data["durations"]
        return {str(k): float(v) for k, v in kept.items() if isinstance(v, int | float)}
    except NotAFile as exc:  # a folder or a fifo there: moved aside, so that the next save can write
        store._quarantine(path, f"durations-{path.stem}", str(exc))
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _durations_path(store: FileRecords, suite: str) -> Path:
    digest = xxhash.xxh3_128_hexdigest(suite.encode("utf-8", "surrogatepass"))
    return store.state_dir / DURATIONS_DIR / f"{digest}.json"
