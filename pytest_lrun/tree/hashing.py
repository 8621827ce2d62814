"""Content hashing of a test directory (or a build context): the walk, the stat cache and the snapshot.

This module owns four things and nothing else:

* **What a tree contains** -- :func:`iter_files` walks a directory with ``os.scandir``
  (symlinks are never followed), leaves out what the ignore rules say
  (:mod:`pytest_lrun.tree.ignores`: for a test directory :data:`DEFAULT_IGNORES` plus a
  ``.lrunignore`` file in gitignore syntax at the tree's root; for a build context its
  ``.dockerignore``) and yields one :class:`Entry` per file, directory and symlink, in
  a fixed order.
* **The tree digest** -- :func:`hash_dir` returns the hex xxh3-128 digest of an
  unambiguous byte stream describing those entries (see "Stream format" below).
  It is the same on every machine and independent of file-system listing order.
* **The stat cache** -- with ``cache_dir``, a file's content digest is reused
  without reading the file when its size, mtime, inode and ctime are all unchanged.
* **The snapshot** -- :func:`snapshot` walks the tree once and reads each file once,
  feeding the same bytes to the digest and to the tar archive shipped into the
  container (:class:`pytest_lrun.tree.archive.TarWriter`): what is shipped is exactly
  what the digest describes. A file that changes while it is read fails the
  snapshot (:class:`HashError`) rather than shipping a mix of two versions.

A hostile tree gets a :class:`HashError` naming the path and what is wrong, or the
handling said here; never a hang:

* a symlink is hashed and shipped as its text, wherever it points (out of the tree,
  to ``/``, nowhere): nothing is read and no folder is walked through one, and a
  folder or file swapped for one mid-walk is refused ("changed while hashing");
* a fifo, socket or device is refused ("unsupported file type (a fifo)") and never
  opened, unless an ignore rule leaves it out; a file swapped for one after its
  folder was listed is opened non-blocking (no wait for a writer), then refused;
* a file or folder that cannot be read or listed is refused with the system's
  reason ("Permission denied");
* names that are not UTF-8 are hashed and shipped as the file system's bytes; an
  error names them decoded with ``surrogateescape`` (``os.fsencode(err.path)`` is
  the name's bytes, :func:`pytest_lrun.core.text.printable` shows it);
* a file that changes while it is read fails :func:`snapshot` (nothing ships), as
  said above; :func:`hash_dir` digests what it read, and no stat cache entry vouches
  for the changed file, so the next hash reads it again;
* a tree of 100k files is walked with one folder open at a time, each folder's
  listing in memory while it is walked; ``python bench/hash.py`` hashes, snapshots
  and re-hashes such a tree.

Stream format (version 1), fed to one xxh3-128 hasher::

    header  b"pytest-lrun tree v1\\0"
    dir     b"d" u64(len(path)) path
    file    b"f" u64(len(path)) path  (b"x" | b"-")  xxh3_128(content) (16 bytes)
    symlink b"l" u64(len(path)) path  u64(len(target)) target

``path`` is the entry's path relative to the root with ``/`` separators, and
``target`` the link's text, both as file-system bytes; ``u64`` is little-endian.
Entries come in the byte order of their paths, a directory's path taken with a
trailing ``/`` (so a directory is followed by its contents). Covered: path, type,
the user-executable bit of files, file content, link text, empty directories.
Not covered: timestamps, owners, other mode bits, the root directory itself.
Changing this format changes every digest (the known-answer test guards it).

Stat cache file format (version 1), one file per tree named after the xxh64 of
the tree's absolute path, written atomically (temp file, fsync, ``os.replace``)::

    header  b"LRUNSC\\x00\\x01" u64(n) u64(len(root)) u64(len(paths)) xxh3_128(payload)
    payload root  paths (n relative paths joined by NUL)
            sizes (n x i64)  mtime_ns (n x i64)  inodes (n x u64)  ctime_ns (n x i64)
            digests (n x 16 bytes)

all little-endian. A file that does not parse, fails its checksum or names another
root is ignored and rebuilt: it is a cache, not state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Literal, TypeVar

import xxhash

from pytest_lrun.core.errors import ArchiveError, HashError
from pytest_lrun.core.fsutil import OPEN_READ_NOFOLLOW
from pytest_lrun.tree.archive import TarWriter
from pytest_lrun.tree.ignores import DEFAULT_IGNORES, IGNORE_FILE, TEST_DIR_IGNORES, IgnoreRules, matcher

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_IGNORES",
    "IGNORE_FILE",
    "Entry",
    "EntryKind",
    "Snapshot",
    "hash_dir",
    "iter_files",
    "snapshot",
]

#: Read size for file contents; one buffer of this size is reused for a whole hash.
CHUNK_SIZE = 1 << 20

EntryKind = Literal["file", "dir", "symlink"]

_HEADER = b"pytest-lrun tree v1\0"
_FLUSH_AT = 1 << 16  # bytes of stream records batched before feeding the tree hasher

# A file whose ctime is this close to the start of a hash is hashed but not cached:
# a same-size rewrite within the file system's time-stamp granularity could leave
# size, mtime, ctime and inode all unchanged. Time stamps that are whole seconds
# betray a coarse file system (ext3, HFS+, FAT), which gets the wider window.
_RACY_NS = 100_000_000
_RACY_COARSE_NS = 2_100_000_000

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree as it is hashed and shipped.

    ``relpath`` is relative to the root with ``/`` separators; ``abspath`` is the
    absolute path on this machine. ``executable`` is the user-x bit of a file
    (always ``False`` for directories and symlinks), ``size`` a file's size from
    ``lstat`` (0 otherwise) and ``link_target`` a symlink's text, never resolved
    (``None`` otherwise).
    """

    relpath: str
    kind: EntryKind
    executable: bool
    size: int
    abspath: str
    link_target: str | None = None


# --- the walk ---------------------------------------------------------------

_L = TypeVar("_L")

# What the walk yields per entry: relpath, relpath as file-system bytes, abspath, and
# None for a directory or what the caller's leaf function made of anything else. Plain
# tuples, as a hash goes through 100k of them.
_Walked = tuple[str, bytes, str, _L | None]

# A leaf function gets an entry that is not a directory, its directory's fd (None where
# the walk goes by path), its relpath, the relpath as bytes and its abspath, and says
# what the walk yields for it. ``os.open(entry.path, ..., dir_fd=fd)`` opens the entry
# either way. It runs while the directory is listed, so it may read the entry then.
_LeafFn = Callable[[os.DirEntry[str], int | None, str, bytes, str], _L]

# What iter_files and snapshot make of a leaf: kind, lstat result (files only, and
# only if asked for), link text (symlinks only).
_Leaf = tuple[EntryKind, os.stat_result | None, str | None]

_FSENC = sys.getfilesystemencoding()
_FSERR = sys.getfilesystemencodeerrors()

# Each directory below the root is opened without following a symlink (one swapped in
# for it mid-walk is refused, never followed out of the tree) and listed through its
# fd; files are opened relative to it, so the kernel resolves one path component per
# file, not all of them. Where directories cannot be opened (Windows) the walk goes by path.
_DIR_FDS = os.scandir in os.supports_fd and os.open in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def iter_files(root: str | os.PathLike[str], *, ignores: IgnoreRules = TEST_DIR_IGNORES) -> Iterator[Entry]:
    """The entries of the tree at ``root`` that are hashed and shipped, in stream order.

    Parents come before their contents. Raises :class:`HashError` at once if ``root``
    is missing or not a directory or its ``.lrunignore`` cannot be read, and while
    iterating if an entry cannot be read or is not a file, directory or symlink.
    """
    top = _check_root(root)
    return _entries(_walk(top, matcher(top, ignores), _stat_leaf))


def _entries(items: Iterator[_Walked[_Leaf]]) -> Iterator[Entry]:
    for relpath, _, abspath, leaf in items:
        if leaf is None:
            yield Entry(relpath, "dir", False, 0, abspath)
            continue
        kind, st, target = leaf
        if st is None:
            yield Entry(relpath, kind, False, 0, abspath, target)
        else:
            yield Entry(relpath, kind, bool(st.st_mode & stat.S_IXUSR), st.st_size, abspath)


def _check_root(root: str | os.PathLike[str]) -> str:
    top = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(top)
    except FileNotFoundError:
        raise HashError(top, "no such directory") from None
    except OSError as exc:
        raise HashError(top, _reason(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise HashError(top, "not a directory")
    return top


def _walk(top: str, ignored: Callable[[str], bool], leaf: _LeafFn[_L]) -> Iterator[_Walked[_L]]:
    # Depth first with an explicit stack (no recursion limit on deep trees); each
    # directory's children sorted, a directory keyed with a trailing "/". A directory
    # is listed whole and its fd closed before any of it is yielded: one directory fd
    # is open at a time, however deep the tree.
    stack = [iter(_list_dir(top, "", ignored, leaf, follow=True))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        if item[3] is None:
            stack.append(iter(_list_dir(item[2], item[0] + "/", ignored, leaf)))


def _list_dir(
    dirpath: str, prefix: str, ignored: Callable[[str], bool], leaf: _LeafFn[_L], *, follow: bool = False
) -> list[_Walked[_L]]:
    # Sorted by file-system bytes, not str: the order must not depend on the locale.
    keyed: list[tuple[bytes, _Walked[_L]]] = []
    base = dirpath if dirpath.endswith(os.sep) else dirpath + os.sep
    dir_fd = _open_dir(dirpath, follow) if _DIR_FDS else None
    try:
        with os.scandir(dirpath if dir_fd is None else dir_fd) as it:
            for de in it:
                relpath = prefix + de.name
                name = relpath.encode(_FSENC, _FSERR)
                abspath = base + de.name
                try:
                    if de.is_dir(follow_symlinks=False):
                        if not ignored(relpath + "/"):
                            keyed.append((name + b"/", (relpath, name, abspath, None)))
                    elif not ignored(relpath):
                        keyed.append(
                            (name, (relpath, name, abspath, leaf(de, dir_fd, relpath, name, abspath)))
                        )
                except OSError as exc:
                    raise HashError(abspath, _reason(exc)) from exc
    except OSError as exc:
        raise HashError(dirpath, _reason(exc)) from exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    keyed.sort()
    return [item for _, item in keyed]


def _open_dir(dirpath: str, follow: bool) -> int:
    try:
        return os.open(dirpath, _DIR_FLAGS if follow else _DIR_FLAGS | _NOFOLLOW)
    except OSError as exc:
        if not follow and exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise HashError(dirpath, "changed while hashing: no longer a directory") from exc
        raise HashError(dirpath, _reason(exc)) from exc


def _stat_leaf(de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str) -> _Leaf:
    """iter_files' leaf: a file with its lstat result, or a symlink with its text."""
    if de.is_symlink():
        return ("symlink", None, os.readlink(de.path, dir_fd=dir_fd))
    st = de.stat(follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise _unsupported(abspath, st.st_mode)
    return ("file", st, None)


def _kind_leaf(de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str) -> _Leaf:
    """snapshot's leaf: a file the listing says is regular is not lstat'ed (its read takes an fstat)."""
    if de.is_file(follow_symlinks=False):
        return ("file", None, None)
    return _stat_leaf(de, dir_fd, relpath, name, abspath)


def _unsupported(abspath: str, mode: int) -> HashError:
    # Found by the listing, a fifo, socket or device is never opened: opening a fifo
    # for reading waits for a writer, and opening a device may act on it.
    return HashError(abspath, f"unsupported file type ({_kind_name(mode)})")


def _kind_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return f"mode {stat.S_IFMT(mode):o}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- the digest -------------------------------------------------------------

_CacheRow = tuple[int, int, int, int, bytes]  # size, mtime_ns, ino, ctime_ns, content digest
_U64 = struct.Struct("<Q").pack


def _file_record(name: bytes, executable: bool, digest: bytes) -> bytes:
    return b"".join((b"f", _U64(len(name)), name, b"x" if executable else b"-", digest))


def _dir_record(name: bytes) -> bytes:
    return b"d" + _U64(len(name)) + name


def _symlink_record(name: bytes, target: str) -> bytes:
    link = target.encode(_FSENC, _FSERR)
    return b"".join((b"l", _U64(len(name)), name, _U64(len(link)), link))


class _TreeStream:
    """The digest's byte stream (see "Stream format"), records batched into one xxh3-128 hasher."""

    __slots__ = ("_hasher", "_pending")

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_128(_HEADER)
        self._pending = bytearray()

    def add(self, record: bytes) -> None:
        self._pending += record
        if len(self._pending) >= _FLUSH_AT:
            self._hasher.update(self._pending)
            self._pending.clear()

    def hexdigest(self) -> str:
        self._hasher.update(self._pending)
        self._pending.clear()
        return self._hasher.hexdigest()


def _cache_path(cache_dir: str | os.PathLike[str], top: str) -> str:
    return os.path.join(os.fspath(cache_dir), xxhash.xxh64_hexdigest(top.encode(_FSENC, _FSERR)) + ".stat")


def hash_dir(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    ignores: IgnoreRules = TEST_DIR_IGNORES,
) -> str:
    """The hex xxh3-128 digest of the tree at ``path`` (see the module docstring).

    With ``cache_dir``, per-file content digests are kept in a stat cache under it
    and reused for files whose size, mtime, inode and ctime are unchanged; the cache
    is written only after the whole tree hashed successfully, and a cache that cannot
    be read or written is ignored. Keep ``cache_dir`` out of the tree (or in an
    ignored directory such as ``.lrun/``): a cache file inside it would be hashed. Raises
    :class:`HashError` naming the path for a missing root, a root that is not a
    directory, an unreadable entry or an unsupported file type (fifo, socket, device).
    """
    top = _check_root(path)
    started_ns = time.time_ns()
    ignored = matcher(top, ignores)

    cache_file: str | None = None
    old: Mapping[str, _CacheRow] = {}
    if cache_dir is not None:
        cache_file = _cache_path(cache_dir, top)
        old = _load_cache(cache_file, top)
    new: dict[str, _CacheRow] = {}
    tree = _TreeStream()
    add = tree.add
    for relpath, name, _, leaf in _walk(top, ignored, _digester(old, started_ns if cache_file else None)):
        if leaf is None:
            add(_dir_record(name))
            continue
        record, row = leaf
        add(record)
        if row is not None:
            new[relpath] = row

    if cache_file is not None and new != old:
        _save_cache(cache_file, top, new)
    return tree.hexdigest()


# Files are read on the calling thread, each as soon as its directory is listed (the
# records wait in the listing for their turn in the stream). A pool of 2-8 reading
# threads was measured twice and dropped: on 100k small files and 2 CPUs it cost more
# wall and CPU time than one thread (0.65-0.69 s against 0.55 s for the bare reads),
# as each of a small file's four short system calls hands the GIL to another thread.
def _digester(
    old: Mapping[str, _CacheRow], started_ns: int | None
) -> _LeafFn[tuple[bytes, _CacheRow | None]]:
    """hash_dir's leaf function: an entry's stream record, and a file's stat cache row or None.

    A file whose lstat matches its row in ``old`` is not read. Without rows (a cold
    hash) no file is lstat'ed: the read's fstat tells what an lstat would. A row is
    made for a file read only when caching (``started_ns`` given), the file had
    settled before the hash began, and it did not change since the walk's lstat.
    """
    view = memoryview(bytearray(CHUNK_SIZE))  # one buffer for every large file's chunks

    def leaf(
        de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str
    ) -> tuple[bytes, _CacheRow | None]:
        if not de.is_file(follow_symlinks=False):
            if de.is_symlink():
                return _symlink_record(name, os.readlink(de.path, dir_fd=dir_fd)), None
            raise _unsupported(abspath, de.stat(follow_symlinks=False).st_mode)
        seen = None
        if old:
            seen = de.stat(follow_symlinks=False)
            row = old.get(relpath)
            if (
                row is not None
                and row[0] == seen.st_size
                and row[1] == seen.st_mtime_ns
                and row[2] == seen.st_ino
                and row[3] == seen.st_ctime_ns
            ):
                return _file_record(name, bool(seen.st_mode & stat.S_IXUSR), row[4]), row
        digest, st = _file_digest(de.path, dir_fd, abspath, view)
        record = _file_record(name, bool(st.st_mode & stat.S_IXUSR), digest)
        if started_ns is None or not _settled(st.st_ctime_ns, started_ns):
            return record, None
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        if seen is not None and key != (seen.st_size, seen.st_mtime_ns, seen.st_ino, seen.st_ctime_ns):
            return record, None
        return record, (*key, digest)

    return leaf


def _file_digest(
    path: str, dir_fd: int | None, abspath: str, view: memoryview
) -> tuple[bytes, os.stat_result]:
    """A file's content digest and its fstat; ``path`` is opened relative to ``dir_fd`` (see :data:`_LeafFn`).

    A file under a chunk is read whole by one read of a byte more than its fstat size
    (which also tells that it did not grow): open, fstat, read and close are all the
    system calls it costs.
    """
    fd = _open_file(path, dir_fd, abspath)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HashError(abspath, "changed while hashing: no longer a regular file")
        size = st.st_size
        data = os.read(fd, size + 1) if size < CHUNK_SIZE else b""
        if len(data) == size:
            return xxhash.xxh3_128_digest(data), st
        hasher = xxhash.xxh3_128(data)
        while n := _readinto(fd, view):
            hasher.update(view[:n])
        return hasher.digest(), st
    except OSError as exc:
        raise HashError(abspath, _reason(exc)) from exc
    finally:
        os.close(fd)


def _open_file(path: str, dir_fd: int | None, abspath: str) -> int:
    try:
        return os.open(path, OPEN_READ_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HashError(abspath, "changed while hashing: now a symlink") from exc
        raise HashError(abspath, _reason(exc)) from exc


if hasattr(os, "readv"):

    def _readinto(fd: int, view: memoryview) -> int:
        return os.readv(fd, (view,))

else:  # Windows

    def _readinto(fd: int, view: memoryview) -> int:
        with open(fd, "rb", buffering=0, closefd=False) as f:
            return f.readinto(view) or 0


def _settled(ctime_ns: int, started_ns: int) -> bool:
    """Whether a file last changed long enough before the hash began to be cached."""
    window = _RACY_COARSE_NS if ctime_ns % 1_000_000_000 == 0 else _RACY_NS
    return ctime_ns <= started_ns - window


# --- the snapshot -----------------------------------------------------------


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

    The digest is the one :func:`hash_dir` gives for the same tree (same walk, same
    ignore rules, same stream), so keys stored before stay valid. The archive is a
    :class:`~pytest_lrun.tree.archive.TarWriter` tar of the tree's entries under
    ``prefix``, in the digest's order, after the directory entries of ``prefix`` and
    ``extra_dirs`` and the ``extra_files`` (which the digest does not cover): each
    file of the tree holds the bytes that were hashed, with mode 0o755 or
    0o644 by the owner-executable bit the digest covers.

    A file that changes while it is read -- it ends before, or goes on past, the size
    it had when opened, or its size, mtime, ctime or inode differ after the read --
    raises :class:`HashError` naming it ("changed while being read"); so do the
    problems :func:`hash_dir` refuses. Nothing is returned then, never a mixed tree.
    A spool that cannot be written (disk full) raises :class:`ArchiveError`. With
    ``cache_dir``, the stat cache is brought up to date with what was read, so a
    later ``hash_dir(path, cache_dir=...)`` of the unchanged tree reads no file.
    """
    top = _check_root(path)
    started_ns = time.time_ns()
    items = _walk(top, matcher(top, ignores), _kind_leaf)  # _ship_file takes each file's fstat
    tree = _TreeStream()
    rows: dict[str, _CacheRow] = {}
    with TarWriter(prefix=prefix, extra_dirs=extra_dirs, extra_files=extra_files) as writer:
        try:
            for relpath, name, abspath, leaf in items:
                if leaf is None:
                    writer.add_dir(relpath)
                    tree.add(_dir_record(name))
                elif leaf[0] == "file":
                    executable, row = _ship_file(writer, relpath, abspath)
                    tree.add(_file_record(name, executable, row[4]))
                    if _settled(row[3], started_ns):
                        rows[relpath] = row
                else:
                    target = leaf[2] or ""
                    writer.add_symlink(relpath, target)
                    tree.add(_symlink_record(name, target))
            archive = writer.finish()
        except OSError as exc:  # reading errors are HashErrors by now: this is the spool
            raise ArchiveError(f"cannot write the archive of {top}: {_reason(exc)}") from exc
    if cache_dir is not None:
        cache_file = _cache_path(cache_dir, top)
        if _load_cache(cache_file, top) != rows:
            _save_cache(cache_file, top, rows)
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
            raise HashError(self.abspath, _reason(exc)) from exc
        self.done += len(data)
        if len(data) < want:
            raise HashError(
                self.abspath, f"changed while being read: it ended after {self.done} of its {self.size} bytes"
            )
        self.hasher.update(data)
        return data


def _ship_file(writer: TarWriter, relpath: str, abspath: str) -> tuple[bool, _CacheRow]:
    """Copy one file into the archive while hashing it; its executable bit and cache row."""
    fd = _open_file(abspath, None, abspath)
    try:
        try:
            before = os.fstat(fd)
        except OSError as exc:
            raise HashError(abspath, _reason(exc)) from exc
        if not stat.S_ISREG(before.st_mode):
            raise HashError(abspath, "changed while hashing: no longer a regular file")
        executable = bool(before.st_mode & stat.S_IXUSR)
        source = _OneRead(fd, abspath, before.st_size)
        writer.add_file(relpath, source, size=before.st_size, executable=executable)
        try:
            grew = os.read(fd, 1)
            after = os.fstat(fd)
        except OSError as exc:
            raise HashError(abspath, _reason(exc)) from exc
    finally:
        os.close(fd)
    if grew:
        raise HashError(abspath, f"changed while being read: it grew past its {before.st_size} bytes")
    key = (before.st_size, before.st_mtime_ns, before.st_ino, before.st_ctime_ns)
    if key != (after.st_size, after.st_mtime_ns, after.st_ino, after.st_ctime_ns):
        raise HashError(abspath, "changed while being read: its size, mtime or ctime moved")
    return executable, (*key, source.hasher.digest())


# --- the stat cache ---------------------------------------------------------

_MAGIC = b"LRUNSC\x00\x01"
_HEAD_SIZE = len(_MAGIC) + 3 * 8 + 16
_SWAP = sys.byteorder != "little"


class _BadCache(Exception):
    pass


def _load_cache(cache_file: str, top: str) -> dict[str, _CacheRow]:
    """The rows of a cache file, or none if it is missing, unreadable or corrupt."""
    try:
        with open(cache_file, "rb") as f:
            data = f.read()
        return _decode_cache(data, top)
    except (OSError, _BadCache, ValueError, UnicodeError):
        return {}


def _decode_cache(data: bytes, top: str) -> dict[str, _CacheRow]:
    if len(data) < _HEAD_SIZE or not data.startswith(_MAGIC):
        raise _BadCache("bad header")
    view = memoryview(data)
    o = len(_MAGIC)
    n, root_len, paths_len = (int.from_bytes(view[o + 8 * k : o + 8 * k + 8], "little") for k in range(3))
    checksum = bytes(view[o + 24 : o + 40])
    payload = view[_HEAD_SIZE:]
    if len(payload) != root_len + paths_len + 48 * n or xxhash.xxh3_128_digest(payload) != checksum:
        raise _BadCache("bad length or checksum")
    if bytes(payload[:root_len]) != top.encode(_FSENC, _FSERR):
        raise _BadCache("another root")
    o = root_len
    blob = bytes(payload[o : o + paths_len])
    o += paths_len
    paths = blob.decode(_FSENC, _FSERR).split("\0") if n else []
    if len(paths) != n:
        raise _BadCache("path count")
    columns: list[array[int]] = []
    for code in ("q", "q", "Q", "q"):
        column = array(code)
        if column.itemsize != 8:
            raise _BadCache("no 64-bit array type")
        column.frombytes(payload[o : o + 8 * n])
        if _SWAP:
            column.byteswap()
        columns.append(column)
        o += 8 * n
    digests = bytes(payload[o : o + 16 * n])
    rows = zip(*columns, (digests[k : k + 16] for k in range(0, 16 * n, 16)), strict=True)
    return dict(zip(paths, rows, strict=True))


def _encode_cache(top: str, rows: Mapping[str, _CacheRow]) -> list[bytes]:
    root = top.encode(_FSENC, _FSERR)
    paths = "\0".join(rows).encode(_FSENC, _FSERR)
    parts = [root, paths]
    values = list(rows.values())
    ints = (
        [row[0] for row in values],
        [row[1] for row in values],
        [row[2] for row in values],
        [row[3] for row in values],
    )
    for code, numbers in zip(("q", "q", "Q", "q"), ints, strict=True):
        column = array(code, numbers)
        if _SWAP:
            column.byteswap()
        parts.append(column.tobytes())
    parts.append(b"".join(row[4] for row in values))
    hasher = xxhash.xxh3_128()
    for part in parts:
        hasher.update(part)
    head = b"".join(
        (_MAGIC, *(x.to_bytes(8, "little") for x in (len(rows), len(root), len(paths))), hasher.digest())
    )
    return [head, *parts]


def _save_cache(cache_file: str, top: str, rows: Mapping[str, _CacheRow]) -> None:
    """Replace the cache file atomically; a cache that cannot be written is skipped."""
    directory, name = os.path.split(cache_file)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)  # a state dir's folder: private
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=directory)
    except OSError:
        return
    try:
        with open(fd, "wb") as f:
            f.writelines(_encode_cache(top, rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache_file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(exc, (OSError, ValueError, OverflowError)):
            raise
