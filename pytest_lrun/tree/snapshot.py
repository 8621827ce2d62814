"""The snapshot: one read of a tree feeding both its digest and the tar archive that ships.

:func:`snapshot` walks the tree once (:func:`pytest_lrun.tree.walk.walk`) and reads each
file once, feeding the same bytes to the digest's stream
(:class:`pytest_lrun.tree.hashing.TreeStream`) and to the tar archive shipped into the
container (:class:`pytest_lrun.tree.archive.TarWriter`): what is shipped is exactly what
the digest describes, and the digest is the one :func:`~pytest_lrun.tree.hashing.hash_dir`
gives. A file that changes while it is read fails the snapshot
(:class:`~pytest_lrun.core.errors.HashError`, "changed while being read") rather than
shipping a mix of two versions; the hostile trees the walk refuses are refused here too.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import IO

import xxhash

from pytest_lrun.core.errors import ArchiveError, HashError
from pytest_lrun.tree.archive import TarWriter
from pytest_lrun.tree.hashing import TreeStream, dir_record, file_record, symlink_record
from pytest_lrun.tree.ignores import TEST_DIR_IGNORES, IgnoreRules, matcher
from pytest_lrun.tree.statcache import CacheRow, cache_path, load_cache, save_cache, settled, stat_key
from pytest_lrun.tree.walk import check_root, kind_leaf, open_file, os_reason, walk

__all__ = ["Snapshot", "snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """One read of a tree: its digest and a tar archive of exactly the bytes the digest describes.

    ``archive`` is rewound, ready for ``put_archive``. Close it, or use the snapshot
    as a context manager, when done.
    """

    digest: str
    archive: IO[bytes]

    def close(self) -> None:
        self.archive.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def snapshot(
    path: str | os.PathLike[str],
    *,
    prefix: str = "",
    extra_dirs: Iterable[str] = (),
    extra_files: Iterable[tuple[str, bytes]] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    ignores: IgnoreRules = TEST_DIR_IGNORES,
) -> Snapshot:
    """Walk the tree at ``path`` once, read each file once, and return its digest and its archive.

    The digest is the one :func:`~pytest_lrun.tree.hashing.hash_dir` gives for the same tree (same walk, same
    ignore rules, same stream), so keys stored before stay valid. The archive is a
    :class:`~pytest_lrun.tree.archive.TarWriter` tar of the tree's entries under
    ``prefix``, in the digest's order, after the directory entries of ``prefix`` and
    ``extra_dirs`` and the ``extra_files`` (which the digest does not cover): each
    file of the tree holds the bytes that were hashed, with mode 0o755 or
    0o644 by the owner-executable bit the digest covers.

    A file that changes while it is read -- it ends before, or goes on past, the size
    it had when opened, or its size, mtime, ctime or inode differ after the read --
    raises :class:`HashError` naming it ("changed while being read"); so do the
    problems :func:`~pytest_lrun.tree.hashing.hash_dir` refuses. Nothing is returned then, never a mixed tree.
    A spool that cannot be written (disk full) raises :class:`ArchiveError`. With
    ``cache_dir``, the stat cache is brought up to date with what was read, so a
    later ``hash_dir(path, cache_dir=...)`` of the unchanged tree reads no file.
    """
    top = check_root(path)
    started_ns = time.time_ns()
    items = walk(top, matcher(top, ignores), kind_leaf)  # _ship_file takes each file's fstat
    tree = TreeStream()
    rows: dict[str, CacheRow] = {}
    with TarWriter(prefix=prefix, extra_dirs=extra_dirs, extra_files=extra_files) as writer:
        try:
            for relpath, name, abspath, leaf in items:
                if leaf is None:
                    writer.add_dir(relpath)
                    tree.add(dir_record(name))
                elif leaf[0] == "file":
                    executable, row = _ship_file(writer, relpath, abspath)
                    tree.add(file_record(name, executable, row[4]))
                    if settled(row[3], started_ns):
                        rows[relpath] = row
                else:
                    target = leaf[2] or ""
                    writer.add_symlink(relpath, target)
                    tree.add(symlink_record(name, target))
            archive = writer.finish()
        except OSError as exc:  # reading errors are HashErrors by now: this is the spool
            raise ArchiveError(f"cannot write the archive of {top}: {os_reason(exc)}") from exc
    if cache_dir is not None:
        cache_file = cache_path(cache_dir, top)
        if load_cache(cache_file, top) != rows:
            save_cache(cache_file, top, rows)
    return Snapshot(tree.hexdigest(), archive)


class _OneRead:
    """A file's bytes as the archive copies them in, each one also fed to the file's digest."""

    def __init__(self, fd: int, abspath: str, size: int) -> None:
        self.fd = fd
        self.abspath = abspath
        self.size = size
        self.done = 0
        self.hasher = xxhash.xxh3_128()

    def read(self, n: int = -1, /) -> bytes:
        left = self.size - self.done
        want = left if n < 0 else min(n, left)
        try:
            data = os.read(self.fd, want)
            while 0 < len(data) < want:  # a short read: more may follow, or the file shrank
                more = os.read(self.fd, want - len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise HashError(self.abspath, os_reason(exc)) from exc
        self.done += len(data)
        if len(data) < want:
            raise HashError(
                self.abspath, f"changed while being read: it ended after {self.done} of its {self.size} bytes"
            )
        self.hasher.update(data)
        return data


def _ship_file(writer: TarWriter, relpath: str, abspath: str) -> tuple[bool, CacheRow]:
    """Copy one file into the archive while hashing it; its executable bit and cache row."""
    fd = open_file(abspath, None, abspath)
    try:
        try:
            before = os.fstat(fd)
        except OSError as exc:
            raise HashError(abspath, os_reason(exc)) from exc
        if not stat.S_ISREG(before.st_mode):
            raise HashError(abspath, "changed while hashing: no longer a regular file")
        executable = bool(before.st_mode & stat.S_IXUSR)
        source = _OneRead(fd, abspath, before.st_size)
        writer.add_file(relpath, source, size=before.st_size, executable=executable)
        try:
            grew = os.read(fd, 1)
            after = os.fstat(fd)
        except OSError as exc:
            raise HashError(abspath, os_reason(exc)) from exc
    finally:
        os.close(fd)
    if grew:
        raise HashError(abspath, f"changed while being read: it grew past its {before.st_size} bytes")
    key = stat_key(before)
    if key != stat_key(after):
        raise HashError(abspath, "changed while being read: its size, mtime or ctime moved")
    return executable, (*key, source.hasher.digest())
