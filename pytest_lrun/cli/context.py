"""What the ``lrun`` commands share: their settings, the store, the machines and their engines.

:class:`Context` is made once per command from the parsed arguments and builds each
piece on first use, so that ``lrun runs`` never reads a ``pyproject.toml`` nor dials an
engine: the store (a read-only command never makes a state dir), the machine resolver,
the engines (one shared pool), a dispatcher for the runs a command finishes, and
:meth:`Context.each_engine`, the walk over every known engine that ``images``, ``gc
--images`` and ``reap`` take (a machine that does not answer is skipped with a warning).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_lrun.cli.output import say
from pytest_lrun.config.settings import Settings, resolve
from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.text import one_line
from pytest_lrun.store import RunStore, open_store

if TYPE_CHECKING:
    from pytest_lrun.config.machines import Machine, MachineResolver
    from pytest_lrun.engine import Engine
    from pytest_lrun.engine.pool import EnginePool
    from pytest_lrun.run.dispatch import Dispatcher

__all__ = ["Context"]


class Context:
    """What a command needs, built lazily so that ``lrun runs`` never reads pyproject or dials an engine."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = resolve(
            {
                "state_dir": args.state_dir,
                "store": args.store,
                "connect_timeout": args.connect_timeout,
                "state_max_bytes": getattr(args, "max_bytes", None),
                "reap_age": getattr(args, "age", None),
                "image_max_age": getattr(args, "image_max_age", None),
            },
            lambda _key: None,
        )
        self._store: RunStore | None = None
        self._scratch: str | None = None  # the empty state dir a read of a missing one uses
        self._resolver: MachineResolver | None = None
        self._pool: EnginePool | None = None
        self.skipped: list[dict[str, Any]] = []  # machines a command went without: {"machine", "error"}

    @property
    def store(self) -> RunStore:
        if self._store is None:
            state_dir = self.settings.resolved_state_dir()
            reads_only = getattr(self.args, "reads_only", False)
            if reads_only and self.settings.store is None and not state_dir.is_dir():
                # A command that only reads never makes a state dir: one that nothing has made reads
                # as an empty one (no runs, no such run), from a folder of its own removed at close.
                self._scratch = tempfile.mkdtemp(prefix="lrun-empty-")
                state_dir = Path(self._scratch)
            self._store = open_store(state_dir, self.settings.store, waits=self.settings.store_waits)
        return self._store

    @property
    def resolver(self) -> MachineResolver:
        if self._resolver is None:
            from pytest_lrun.config.machines import machine_resolver

            project = self.args.project
            if project is not None:
                self._resolver = machine_resolver(project, source="--project")
            else:
                self._resolver = machine_resolver(self.settings.config, source="LRUN_CONFIG")
        return self._resolver

    def connect(self, machine: Machine) -> Engine:
        """A new engine client for ``machine`` that answered a ping (the one way the commands dial)."""
        from pytest_lrun.engine.pool import connect

        return connect(machine, connect_timeout=self.settings.connect_timeout)

    @property
    def pool(self) -> EnginePool:
        if self._pool is None:
            from pytest_lrun.engine.pool import EnginePool

            self._pool = EnginePool(self.connect)
        return self._pool

    def engine(self, machine: str) -> Engine:
        """The connected engine of ``machine`` (shared; closed with the context)."""
        return self.pool.get(self.resolver.resolve(machine))

    def dispatcher(self) -> Dispatcher:
        from pytest_lrun.run.dispatch import Dispatcher

        return Dispatcher(self.store, self.pool, log_max_bytes=self.settings.log_max_bytes)

    def each_engine(self, explicit: str | None) -> Iterator[tuple[Engine, list[str]]]:
        """Each engine once, with the names it is known by: machine ``explicit``'s, else every known one's.

        A machine table's name comes before ``local``/``default`` for the same engine. A
        machine that does not answer is skipped with a warning (``explicit``: its error is
        raised); :attr:`skipped` collects them for ``--json``.
        """
        from pytest_lrun.config.machines import ENVIRONMENT_NAMES

        names = [explicit] if explicit is not None else self.resolver.known()
        by_url: dict[str, list[str]] = {}
        for name in sorted(names, key=lambda name: name in ENVIRONMENT_NAMES):
            try:
                by_url.setdefault(self.resolver.resolve(name).host, []).append(name)
            except LrunError as e:
                self._skip(name, e, explicit)
        for same in by_url.values():
            try:
                engine = self.engine(same[0])
            except LrunError as e:
                self._skip(same[0], e, explicit)
                continue
            yield engine, same

    def _skip(self, name: str, e: LrunError, explicit: str | None) -> None:
        if explicit is not None:
            raise e
        self.skipped.append({"machine": name, "error": e.to_dict()})
        if not self.args.json:
            say(f"lrun: skipping machine {name}: {one_line(str(e))}", err=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._store is not None:
            self._store.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
