"""Which inner tests an invocation selects, and where that selection is applied.

pytest's own selections -- ``-k EXPR``, ``-m EXPR`` and node ids below a
dispatched directory (``suite/test_x.py::test_y``) -- pick inner tests. By default
(``--lrun-select=container``) they are forwarded into the inner pytest command
(:meth:`Selection.inner_arguments`): the container runs only what was selected,
and since the arguments are part of the command, a different selection is a
different run key while the same one reuses and caches like any run.
``--lrun-select=host`` runs every inner test and picks among the reports on the
host (:class:`HostSelection`).

This module is the only one that reads pytest's expression language; it is
pytest's own private ``_pytest.mark.expression`` (unchanged in shape from pytest
7 to 9), so ``-k`` and ``-m`` mean on the host exactly what they mean inside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _pytest.mark.expression import Expression

from pytest_lrun.core.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """A selection of inner tests: expressions and node ids relative to the dispatched directory."""

    keyword: str | None = None
    markexpr: str | None = None
    nodeids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keyword or self.markexpr or self.nodeids)

    def inner_arguments(self, workdir: str) -> tuple[str, ...]:
        """What to append to the inner pytest command.

        With node ids, ``--rootdir`` keeps the inner node ids relative to the
        directory's top (pytest would otherwise root them at the ids' common
        folder when the directory has no ini file).
        """
        args: list[str] = []
        if self.keyword:
            args += ["-k", self.keyword]
        if self.markexpr:
            args += ["-m", self.markexpr]
        if self.nodeids:
            args += [f"--rootdir={workdir}", *self.nodeids]
        return tuple(args)


class HostSelection:
    """``--lrun-select=host``: which reports of a run the host shows.

    Node ids are decided by the inner node id alone. ``-k`` and ``-m`` need a
    test's keywords, which come with its first phase report (``by_keywords``).
    ``-k`` matches a keyword case-insensitively by substring, as pytest does; the
    host knows a test's keywords but not which of them are markers, so ``-m``
    matches any keyword by its exact name.
    """

    def __init__(self, selection: Selection) -> None:
        self.nodeids = selection.nodeids
        self._keyword = _compile("-k", selection.keyword)
        self._markexpr = _compile("-m", selection.markexpr)
        self.by_keywords = self._keyword is not None or self._markexpr is not None

    def wants_nodeid(self, inner: str) -> bool:
        return not self.nodeids or any(_below(inner, wanted) for wanted in self.nodeids)

    def wants_keywords(self, keywords: Sequence[str]) -> bool:
        lowered = [keyword.lower() for keyword in keywords]

        def by_substring(name: str, /, **kwargs: Any) -> bool:
            return not kwargs and any(name.lower() in keyword for keyword in lowered)

        def by_name(name: str, /, **kwargs: Any) -> bool:
            return not kwargs and name in keywords

        if self._keyword is not None and not self._keyword.evaluate(by_substring):
            return False
        return self._markexpr is None or self._markexpr.evaluate(by_name)


def _below(inner: str, wanted: str) -> bool:
    """Whether node id ``inner`` is ``wanted`` or inside it (a folder, a module, a class)."""
    if inner == wanted:
        return True
    return any(inner.startswith(wanted + sep) for sep in ("/", "::", "["))


def _compile(flag: str, expression: str | None) -> Expression | None:
    if not expression:
        return None
    try:
        return Expression.compile(expression)
    except Exception as e:  # pytest's ParseError (its type moved between versions)
        raise ConfigError(flag, f"not a valid expression: {e}") from e


# What the host appends to a node id when one directory runs on several machines or entries.
_SUFFIX = re.compile(r"@[A-Za-z0-9_.:-]+$")


def tests_prefix(dir_nodeid: str) -> str:
    """What a dispatched directory's inner node ids gain on the host: its node id and ``/``
    (``suite/test_x.py::test_y``); nothing for the rootdir, whose tests keep their own."""
    return "" if dir_nodeid == "." else dir_nodeid + "/"


def run_prefix(dir_nodeid: str) -> str:
    """How the node id of a directory's run report begins: ``DIR::lrun[`` (``lrun[`` for the rootdir)."""
    return "lrun[" if dir_nodeid == "." else f"{dir_nodeid}::lrun["


def last_failed(lastfailed: Mapping[str, object], dir_nodeid: str) -> tuple[set[str], bool]:
    """What failed last time in a dispatched directory, from pytest's ``cache/lastfailed``.

    Returns the inner node ids of its failed tests (host node ids are the directory's node
    id, ``/``, the inner one, and maybe an ``@machine`` suffix), and whether the run itself
    failed (its ``DIR::lrun[...]`` report): then all of it runs again.
    """
    prefix, run_report = tests_prefix(dir_nodeid), run_prefix(dir_nodeid)
    inner: set[str] = set()
    run_failed = False
    for key in lastfailed:
        if key.startswith(run_report):
            run_failed = True
        elif "::lrun[" in key or key.startswith("lrun["):  # another directory's run: no test of this one
            continue
        elif key.startswith(prefix) and "::" in key:
            nodeid = key[len(prefix) :]
            inner.add(nodeid if nodeid.endswith("]") else _SUFFIX.sub("", nodeid))
    return inner, run_failed


def dispatched_dir(arg: str, invocation_dir: Path, rootpath: Path) -> tuple[Path, str | None]:
    """The directory that command-line argument ``arg`` dispatches, and the inner node id it selects.

    A directory is dispatched whole (None). A file or node id below the rootdir
    (``suite/test_x.py::test_y``) selects inside the top-level directory that holds
    it (``suite``, node id ``test_x.py::test_y``), so that directory's conftest.py
    files and data go with it; one directly in the rootdir (``test_x.py::test_y``, as
    a dispatched rootdir names its tests) selects inside the rootdir.
    """
    path_part, sep, rest = arg.partition("::")
    path = Path(path_part)
    path = (path if path.is_absolute() else invocation_dir / path).resolve()
    if path.is_dir() and not sep:
        return path, None
    if not path.exists():
        raise ConfigError(arg, "no such directory or file")
    try:
        relative = path.relative_to(rootpath.resolve())
    except ValueError:
        raise ConfigError(arg, f"a file or node id must be below the rootdir {rootpath}") from None
    if len(relative.parts) < 2:
        return rootpath.resolve(), relative.as_posix() + sep + rest
    top = rootpath.resolve() / relative.parts[0]
    inner = Path(*relative.parts[1:]).as_posix()
    return top, inner + sep + rest
