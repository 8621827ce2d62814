"""Tar for upload: pack a directory (or a snapshot's entries) for a container.

The Docker Engine moves files into containers only as tar streams (docker-py's
``container.put_archive(path, data)``); what comes back out is read by
:mod:`pytest_lrun.tree.extract`. This module owns the writing direction and nothing else:

* :class:`TarWriter` writes a reproducible, uncompressed PAX tar into a spooled
  temporary file (memory up to 16 MiB, then disk), member by member, as its caller
  reads them: :func:`pytest_lrun.tree.snapshot.snapshot` feeds it the very bytes it hashes.
  :func:`pack` uses it to tar chosen paths under a root. Symlinks are stored as
  symlinks, never followed.

It also holds :class:`TypedTarFile`, the ``tarfile.TarFile`` both directions use.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsRead

from pytest_lrun.core.errors import ArchiveError
from pytest_lrun.core.fsutil import OPEN_READ_NOFOLLOW

__all__ = [
    "COPY_CHUNK",
    "PACK_MTIME",
    "SPOOL_MAX_SIZE",
    "TarWriter",
    "TypedTarFile",
    "file_mode",
    "pack",
]

SPOOL_MAX_SIZE = 16 * 1024 * 1024
"""Bytes of a packed archive kept in memory before the spool moves to a temporary file."""

PACK_MTIME = 315532800
"""The mtime every packed member gets: 1980-01-01T00:00:00Z.

A fixed mtime makes the archive of an unchanged tree byte-for-byte the same, so the
upload is as reproducible as the content hash that names it. Not 0: some tools treat
an epoch-0 mtime as "unset" (GNU tar warns about an implausibly old timestamp); 1980 is
the zip epoch that reproducible Python builds also use. Caveat: mtime-keyed caches in
the container (``__pycache__``, pytest's assertion-rewrite cache) cannot tell two
uploads of a same-sized file apart, so a directory must be shipped into a fresh
location, as each run does. Pass ``mtime=None`` to :func:`pack` to keep real mtimes.
"""

EMPTY_DIR_MTIME = PACK_MTIME + 1
"""The mtime of the ``extra_dirs`` a :class:`TarWriter` ships empty: one no member of a tree
gets, so the engine's stat of such a dir tells whether anything was made in it since (a
tree's dir copied over it with its mtime kept, ``cp -a``, still counts as made)."""

COPY_CHUNK = 1024 * 1024
"""Bytes copied per read, into an archive and out of one."""


class TypedTarFile(tarfile.TarFile):
    """``tarfile.TarFile`` with the two attributes typeshed omits, which both directions use."""

    members: list[tarfile.TarInfo]  # every header read or written so far
    _loaded: bool  # the end of the archive was reached


# --- writing ---------------------------------------------------------------


def _split_relpath(relpath: str, what: str) -> tuple[str, ...]:
    """The components of a relative POSIX path, refusing absolute paths and ``..``."""
    if relpath.startswith("/"):
        raise ArchiveError(f"{what} must be relative", relpath)
    parts = tuple(p for p in relpath.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{what} must not contain '..'", relpath)
    if any("\0" in p for p in parts):
        raise ArchiveError(f"{what} must not contain NUL", relpath)
    return parts


def file_mode(executable: bool) -> int:
    """The mode a shipped file gets: 0o755 when its owner may execute it, else 0o644.

    Exactly the bit the tree digest covers, so two trees with one digest ship alike.
    """
    return 0o755 if executable else 0o644


class TarWriter:
    """A reproducible PAX tar written member by member into a spool; use as a context manager.

    Opening writes a directory entry for each level of ``prefix`` and of each of
    ``extra_dirs`` (relative to the archive root, not under the prefix; the last
    level of each mode 0o777 and mtime :data:`EMPTY_DIR_MTIME`: output directories such
    as ``lrun/out`` that the inner run must be able to write whatever user it runs as,
    since the Engine creates what it unpacks as root), then each of ``extra_files``
    (``(path from the archive root, bytes)``, mode 0o644: the inner reporter, which is no
    file of the tree). Each ``add_*`` then writes one member at ``prefix/relpath``, in the
    order called (the caller puts parents first). Ownership is uid/gid 0 with
    empty names, directories are 0o755, files :func:`file_mode`, symlinks 0o777 with
    their target unchanged, mtimes ``mtime`` (see :data:`PACK_MTIME`).

    :meth:`finish` returns the archive rewound; the caller closes it. Leaving the
    ``with`` block without finishing (an exception) discards the spool.
    """

    def __init__(
        self,
        *,
        prefix: str = "",
        extra_dirs: Iterable[str] = (),
        extra_files: Iterable[tuple[str, bytes]] = (),
        mtime: int = PACK_MTIME,
    ) -> None:
        self._prefix = _split_relpath(prefix, "prefix")
        writable = {_split_relpath(extra, "extra dir") for extra in extra_dirs}
        writable.discard(())
        files = [(_split_relpath(path, "extra file"), data) for path, data in extra_files]
        parents = [parts[:-1] for parts, _data in files]
        levels = {
            dirs[:depth] for dirs in (self._prefix, *writable, *parents) for depth in range(1, len(dirs) + 1)
        }
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_SIZE)  # noqa: SIM115
        self._finished = False
        try:
            self._tar = TypedTarFile(
                fileobj=self._spool, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_CHUNK
            )
            for dirs in sorted(levels):
                mode, when = (0o777, EMPTY_DIR_MTIME) if dirs in writable else (0o755, mtime)
                self._add(_info("/".join(dirs), tarfile.DIRTYPE, mode, when))
            for parts, data in files:
                info = _info("/".join(parts), tarfile.REGTYPE, file_mode(False), mtime)
                info.size = len(data)
                self._add(info, io.BytesIO(data))
        except BaseException:
            self._spool.close()
            raise

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            with contextlib.suppress(OSError, tarfile.TarError):
                self._tar.close()
            self._spool.close()

    def _arcname(self, relpath: str) -> str:
        return "/".join((*self._prefix, relpath))

    def _add(self, info: tarfile.TarInfo, source: SupportsRead[bytes] | None = None) -> None:
        self._tar.addfile(info, source)
        # TarFile keeps every header it wrote; a tree of 100k files needs none of them.
        self._tar.members.clear()

    def add_dir(self, relpath: str, *, mtime: int = PACK_MTIME) -> None:
        """A directory entry."""
        self._add(_info(self._arcname(relpath), tarfile.DIRTYPE, 0o755, mtime))

    def add_symlink(self, relpath: str, target: str, *, mtime: int = PACK_MTIME) -> None:
        """A symlink to ``target``, stored as is."""
        info = _info(self._arcname(relpath), tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = target
        self._add(info)

    def add_file(
        self,
        relpath: str,
        source: SupportsRead[bytes],
        *,
        size: int,
        executable: bool,
        mtime: int = PACK_MTIME,
    ) -> None:
        """A regular file of ``size`` bytes, copied from ``source`` in 1 MiB reads.

        ``source`` must give exactly ``size`` bytes; it may raise to stop the copy.
        A source that ends early raises ``OSError`` (tarfile's "unexpected end of data").
        """
        info = _info(self._arcname(relpath), tarfile.REGTYPE, file_mode(executable), mtime)
        info.size = size
        self._add(info, source)

    def finish(self) -> IO[bytes]:
        """Close the archive and return it rewound; the caller closes it."""
        self._tar.close()
        self._spool.seek(0)
        self._finished = True
        return self._spool


def _info(arcname: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


class _Packer:
    """Adds listed paths under a root to a :class:`TarWriter`, checking each one with ``lstat``."""

    def __init__(self, writer: TarWriter, root: Path, mtime: int | None) -> None:
        self.writer = writer
        self.root = root
        self.mtime = mtime
        self.checked_dirs: set[tuple[str, ...]] = {()}

    def _check_parents(self, parts: tuple[str, ...]) -> None:
        # Never read through a symlinked directory: the caller's listing says which
        # paths to ship, and a parent that is (now) a symlink would ship other files.
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            if parent in self.checked_dirs:
                continue
            path = self.root.joinpath(*parent)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError("cannot pack: a parent is not a directory (or is a symlink)", str(path))
            self.checked_dirs.add(parent)

    def add(self, parts: tuple[str, ...]) -> None:
        self._check_parents(parts)
        relpath = "/".join(parts)
        path = self.root.joinpath(*parts)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        mtime = int(st.st_mtime) if self.mtime is None else self.mtime
        if stat.S_ISLNK(st.st_mode):
            self.writer.add_symlink(relpath, os.readlink(path), mtime=mtime)
        elif stat.S_ISDIR(st.st_mode):
            self.writer.add_dir(relpath, mtime=mtime)
            self.checked_dirs.add(parts)
        elif stat.S_ISREG(st.st_mode):
            self._add_file(path, relpath, mtime)
        else:
            raise ArchiveError("cannot pack: not a regular file, directory or symlink", str(path))

    def _add_file(self, path: Path, relpath: str, mtime: int) -> None:
        try:
            fd = os.open(path, OPEN_READ_NOFOLLOW)  # a fifo swapped in is refused by the fstat below
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        with os.fdopen(fd, "rb") as fileobj:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError("cannot pack: changed type while packing", str(path))
            try:
                self.writer.add_file(
                    relpath, fileobj, size=st.st_size, executable=bool(st.st_mode & stat.S_IXUSR), mtime=mtime
                )
            except OSError as exc:
                raise ArchiveError(f"cannot pack: {exc} (did it shrink while packing?)", str(path)) from exc


def pack(
    root: Path,
    relpaths: Iterable[str],
    *,
    prefix: str = "",
    extra_dirs: Iterable[str] = (),
    mtime: int | None = PACK_MTIME,
) -> IO[bytes]:
    """Tar ``relpaths`` (relative to ``root``, ``/``-separated) for ``put_archive``; return it rewound.

    A :class:`TarWriter` (``prefix``, ``extra_dirs`` and the normalized metadata are
    its) with members in path order (parents before children; duplicates dropped).
    Only the listed paths are stored: a listed directory becomes one directory entry,
    its content is not added. ``mtime=None`` keeps each entry's own mtime. A parent
    that is a symlink, a path that vanished, or a fifo, socket or device raises
    :class:`ArchiveError`. The caller closes the archive.
    """
    root = Path(root)
    unique = {_split_relpath(rel, "path") for rel in relpaths}
    unique.discard(())
    fixed = PACK_MTIME if mtime is None else mtime
    with TarWriter(prefix=prefix, extra_dirs=extra_dirs, mtime=fixed) as writer:
        packer = _Packer(writer, root, mtime)
        for parts in sorted(unique):  # component-wise: parents before children
            packer.add(parts)
        return writer.finish()
