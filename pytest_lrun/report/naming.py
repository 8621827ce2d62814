"""How dispatched directories and their inner tests are named on the host.

A host node id is the dispatched directory's node id, ``/``, the inner node id, and a
suffix that tells apart runs of one directory (``@machine`` or ``@entry``); a run's own
report is ``DIR::lrun[machine]`` (``lrun[machine]`` for the rootdir).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_lrun.config.select import run_prefix, tests_prefix
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.wire.events import Location


def dir_nodeid(path: Path, rootpath: Path) -> str:
    """A dispatched directory as pytest names it: its path from the rootdir (absolute outside it).

    Also the name under which the store keeps the directory's inner durations.
    """
    try:
        return path.relative_to(rootpath).as_posix()
    except ValueError:
        return str(path)


def shown_dir(path: Path, rootpath: Path) -> str:
    """A dispatched directory as lines and tables name it: its node id, or its name for the rootdir."""
    shown = dir_nodeid(path, rootpath)
    return path.name or shown if shown == "." else shown


def run_suffix(spec: RunSpec, specs: Sequence[RunSpec]) -> str:
    """What tells apart the runs of one directory among ``specs``: its machine, else its plan entry."""
    same_dir = [s for s in specs if s.test_dir == spec.test_dir]
    if len(same_dir) == 1 or spec.shard is not None:  # shards: node ids as without sharding
        return ""
    if [s.where for s in same_dir].count(spec.where) == 1:
        return f"@{spec.where}"
    return f"@{spec.plan_entry}"


class NodeIds:
    """The host's names for one run's reports: its inner tests' node ids and locations, and its own."""

    def __init__(self, spec: RunSpec, rootpath: Path, suffix: str) -> None:
        self.spec = spec
        self.suffix = suffix
        self.dir_nodeid = dir_nodeid(spec.test_dir, rootpath)
        # The rootdir dispatched itself: its inner node ids are the host's as they are.
        self.prefix = tests_prefix(self.dir_nodeid)

    def nodeid(self, inner: str) -> str:
        return f"{self.prefix}{inner}{self.suffix}"

    def location(self, inner: str, location: Location | None) -> tuple[str, int | None, str]:
        if location is None:
            return (f"{self.prefix}{inner.split('::')[0]}", None, inner.split("::")[-1])
        path, lineno, domain = location
        return (f"{self.prefix}{path}", lineno, domain + self.suffix)

    def run_nodeid(self) -> str:
        """The run's own report: ``DIR::lrun[machine]``, its suffix's name when it has one, and its shard."""
        name = self.suffix.lstrip("@") or self.spec.where
        if self.spec.shard is not None:
            name += f" shard {self.spec.shard}"
        return f"{run_prefix(self.dir_nodeid)}{name}]"
