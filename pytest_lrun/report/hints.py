"""Hints for a run that failed for want of what was not shipped with it.

A directory argument ships that directory alone, and a file or node id ships the
top-level folder under the rootdir that holds it (:func:`~pytest_lrun.config.select.dispatched_dir`):
nothing above it reaches the container. When that folder is the package under
test (``toolz/tests/test_x.py::test_y`` ships ``toolz/``), the inner collection
fails with ``ModuleNotFoundError: No module named 'toolz'``. :func:`shipping_hint`
recognises that from the run's inner collection errors and says what was shipped
and how to ship the project root; the plugin prints it after the run's end line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.wire.events import Collected

__all__ = ["shipping_hint"]

_MISSING = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([A-Za-z_][\w]*)")


def shipping_hint(spec: RunSpec, outcome: object, rootpath: Path) -> str | None:
    """What to tell the user when ``outcome`` failed to import, at collection, a module that lives
    on the host in the shipped folder's place or beside it (not one the image lacks); else None."""
    if not isinstance(outcome, RunResult):
        return None
    folder = spec.test_dir
    for nodeid, text in _collect_errors(outcome):
        for name in _MISSING.findall(text):
            if folder.name == name:
                where = f"{name} is that folder itself, so its parent is needed"
            elif (folder.parent / name).is_dir() or (folder.parent / f"{name}.py").is_file():
                where = f"{name} is beside it"
            else:
                continue  # a module the image lacks: no shipping would help
            try:
                shown = folder.relative_to(rootpath).as_posix() or "."
            except ValueError:
                shown = str(folder)
            host_id = nodeid if shown == "." else f"{shown}/{nodeid}"  # as the host's report names it
            return (
                f"{host_id} could not import {name!r}: only {shown}/ was shipped, and {where}. Ship the "
                f"project root: dispatch it whole and select inside it (pytest --lrun-machine="
                f"{spec.where} . -k EXPR), or make its parent the rootdir (--rootdir=..)"
            )
    return None


def _collect_errors(outcome: RunResult) -> Iterator[tuple[str, str]]:
    """(node id, text) of each inner collection error, from the reporter's events or the JUnit XML."""
    for event in outcome.events or ():
        if isinstance(event, Collected):
            for error in event.errors:
                yield error.nodeid, error.longrepr
    for case in outcome.cases or ():
        if case.when == "collect":
            yield case.nodeid_hint, f"{case.message}\n{case.text}"
