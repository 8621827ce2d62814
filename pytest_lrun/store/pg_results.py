"""The PostgreSQL store's shared results: each terminal run's JUnit XML, log, events and artifacts, in chunks.

A runner that never ran a run reports it from what the runner that ran it saved
here (:meth:`PostgresStore.save_result <pytest_lrun.store.postgres.PostgresStore.save_result>`,
``load_result``). This module owns two tables (created by the store's migrations,
their statements in :mod:`.pg_sql`)::

    lrun_result_chunks(run_id, part, seq, data)            a part's bytes, CHUNK_BYTES per row
    lrun_result_parts(run_id, part, size, chunks, digest)  one row per part: its size, chunk
                                                           count and xxh3-128 digest

A part is ``junit`` (the inner JUnit XML), ``logs`` (the capped log), ``events``
(the inner reporter's capped events file, from which a runner reports the inner
tests as the run's own runner did; schema version 2 admits it) or ``artifacts``
(a tar of the run's artifacts folder, made by :func:`~pytest_lrun.tree.archive.pack`). Rules:

* Host memory stays flat: a part goes up and comes down one chunk at a time
  (the artifacts tar itself is spooled to disk past a few MiB).
* Chunks first, part row second, in one transaction: a reader never sees a part
  whose bytes are not all there.
* A part comes down into a temporary file of the run's folder (a leftover name the
  sweep knows), its digest is checked, and only then does it take its place; the
  artifacts are extracted with :func:`~pytest_lrun.tree.extract.safe_extract` and its
  caps, as they were from the container. A digest that does not match is a
  :class:`~pytest_lrun.core.errors.StoreError` and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import xxhash

from pytest_lrun.core.errors import StoreError
from pytest_lrun.core.fsutil import make_private_dir, remove_tree
from pytest_lrun.core.layout import TMP_SUFFIX, RunFiles
from pytest_lrun.store import pg_sql
from pytest_lrun.tree.archive import pack
from pytest_lrun.tree.extract import safe_extract

__all__ = ["CHUNK_BYTES", "load", "save"]

#: The size of one stored chunk (the last one of a part may be shorter).
CHUNK_BYTES = 1024 * 1024

Connection = psycopg.Connection[Any]


def save(conn: Connection, run_id: str, files: RunFiles) -> None:
    """Store this host's result files of ``run_id`` (those that exist), replacing any stored before;
    nothing when the run is gone."""
    with contextlib.ExitStack() as stack:
        sources: list[tuple[str, IO[bytes]]] = []
        for part, path in (("junit", files.junit), ("logs", files.logs), ("events", files.events)):
            with contextlib.suppress(FileNotFoundError):
                sources.append((part, stack.enter_context(path.open("rb"))))
        if files.artifacts.is_dir():
            sources.append(("artifacts", stack.enter_context(pack(files.artifacts, _tree(files.artifacts)))))
        # A run deleted since it ended (another runner's gc) has nobody to share it with: its
        # chunks would break the foreign key, and nothing is saved.
        with contextlib.suppress(psycopg.errors.ForeignKeyViolation), conn.transaction():
            conn.execute(pg_sql.DELETE_RESULT_PARTS, (run_id,))
            conn.execute(pg_sql.DELETE_RESULT_CHUNKS, (run_id,))
            for part, source in sources:
                digest, size, seq = xxhash.xxh3_128(), 0, 0
                while chunk := source.read(CHUNK_BYTES):
                    conn.execute(pg_sql.INSERT_RESULT_CHUNK, (run_id, part, seq, chunk))
                    digest.update(chunk)
                    size += len(chunk)
                    seq += 1
                conn.execute(pg_sql.INSERT_RESULT_PART, (run_id, part, size, seq, digest.hexdigest()))


def load(
    conn: Connection, run_id: str, files: RunFiles, location: str, parts: Collection[str] | None = None
) -> None:
    """Fill ``files`` with the stored parts of ``run_id`` (those in ``parts``, default all) whose local
    copy is absent.

    :raises StoreError: a stored part is incomplete or its digest does not match
    """
    targets = {"junit": files.junit, "logs": files.logs, "events": files.events, "artifacts": files.artifacts}
    with conn.transaction():
        # One snapshot for the part rows and their chunks, whatever is saved meanwhile.
        conn.execute(pg_sql.SNAPSHOT)
        stored = conn.execute(pg_sql.SELECT_RESULT_PARTS, (run_id,)).fetchall()
        for part, size, chunks, digest in stored:
            target = targets[part]
            if target.exists() or (parts is not None and part not in parts):
                continue
            make_private_dir(files.dir)
            spool = files.dir / f".{part}.{secrets.token_hex(4)}{TMP_SUFFIX}"
            try:
                _download(conn, run_id, part, chunks, spool)
                _check(spool, size, digest, f"store {location}: the stored {part} of run {run_id}")
                if part == "artifacts":
                    _unpack(spool, target)
                else:
                    os.replace(spool, target)
            finally:
                spool.unlink(missing_ok=True)


def _download(conn: Connection, run_id: str, part: str, chunks: int, spool: Path) -> None:
    with spool.open("xb") as out:
        for seq in range(chunks):
            # One row per query: a client-side cursor would hold every chunk of the part.
            row = conn.execute(pg_sql.SELECT_RESULT_CHUNK, (run_id, part, seq)).fetchone()
            if row is None:
                raise StoreError(f"the stored {part} of run {run_id} lacks chunk {seq} of {chunks}")
            out.write(row[0])


def _check(spool: Path, size: int, digest: str, what: str) -> None:
    actual = xxhash.xxh3_128()
    with spool.open("rb") as source:
        for chunk in _chunks(source):
            actual.update(chunk)
    got_size = spool.stat().st_size
    if got_size != size or actual.hexdigest() != digest:
        raise StoreError(
            f"{what} is corrupt: {got_size} bytes with digest {actual.hexdigest()}, "
            f"stored as {size} bytes with digest {digest}; run it again to store a good copy"
        )


def _unpack(spool: Path, target: Path) -> None:
    """Extract the artifacts tar next to ``target``, then move it into place whole."""
    staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with spool.open("rb") as source:
            safe_extract(_chunks(source), staging)
        os.rename(staging, target)
    finally:
        remove_tree(staging)


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def _tree(root: Path) -> list[str]:
    """Every path under ``root``, relative and ``/``-separated (symlinks listed, never followed)."""
    found: list[str] = []
    for current, dirs, names in os.walk(root):
        rel = Path(current).relative_to(root)
        found.extend((rel / name).as_posix() for name in (*dirs, *names))
    return found
