"""A quarantine file (``--lrun-quarantine=FILE``): the inner tests whose failures do not fail the session.

One test a line, by its node id as the host names it (``suite/test_x.py::test_b``, spaces in
its parameters and all), and optionally, after a space, the date it was quarantined
(``suite/test_x.py::test_b 2026-12-01``); blank lines and ``#`` comments (a line's start, or
after a space) are ignored. A line without a date takes the file's modification time. The other
source, ``--lrun-quarantine=store``, is the store's list (``lrun flaky quarantine NODEID``).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pytest_lrun.core.errors import ConfigError

#: ``--lrun-quarantine``'s word for the store's list (anything else names a file).
FROM_STORE = "store"

_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def read_quarantine_file(path: Path) -> dict[str, float]:
    """The node ids ``path`` lists, each with when it was quarantined (unix seconds).

    :raises ConfigError: the file cannot be read, or a date does not parse
    """
    try:
        text = path.read_text(encoding="utf-8")
        mtime = path.stat().st_mtime
    except OSError as e:
        raise ConfigError("--lrun-quarantine", f"cannot read {path}: {e.strerror or e}") from e
    entries: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0].strip()
        if not line:
            continue
        nodeid, since = line, mtime
        head, _, tail = line.rpartition(" ")
        if head.strip() and _DATE.fullmatch(tail):
            try:
                day = dt.date.fromisoformat(tail)
            except ValueError:
                raise ConfigError(f"{path}:{number}", f"not a date (YYYY-MM-DD): {tail!r}") from None
            nodeid, since = head.strip(), dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
        entries[nodeid] = since
    return entries
