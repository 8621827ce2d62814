"""The tree digest: the hex xxh3-128 digest of a test directory (or a build context).

:func:`hash_dir` walks the tree (:func:`pytest_lrun.tree.walk.walk`: the same entries,
ignore rules and order as the snapshot's) and returns the digest of an unambiguous
byte stream describing its entries (see "Stream format" below). It is the same on
every machine and independent of file-system listing order. With ``cache_dir`` a
file's content digest comes from the stat cache (:mod:`pytest_lrun.tree.statcache`)
when its stat is unchanged. This module owns the stream and its records, which
:func:`pytest_lrun.tree.snapshot.snapshot` feeds too, so both give the same digest.

A file that changes while :func:`hash_dir` reads it is digested as read, and no stat
cache entry vouches for it, so the next hash reads it again (the snapshot refuses it).

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
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Mapping

import xxhash

from pytest_lrun.core.errors import HashError
from pytest_lrun.tree.ignores import TEST_DIR_IGNORES, IgnoreRules, matcher
from pytest_lrun.tree.statcache import CacheRow, cache_path, load_cache, save_cache, settled, stat_key
from pytest_lrun.tree.walk import LeafFn, check_root, open_file, os_reason, unsupported, walk

__all__ = ["CHUNK_SIZE", "TreeStream", "dir_record", "file_record", "hash_dir", "symlink_record"]

#: Read size for file contents; one buffer of this size is reused for a whole hash.
CHUNK_SIZE = 1 << 20

_HEADER = b"pytest-lrun tree v1\0"
_FLUSH_AT = 1 << 16  # bytes of stream records batched before feeding the tree hasher

_U64 = struct.Struct("<Q").pack


def file_record(name: bytes, executable: bool, digest: bytes) -> bytes:
    """A file's record of the stream: its path, executable bit and content digest."""
    return b"".join((b"f", _U64(len(name)), name, b"x" if executable else b"-", digest))


def dir_record(name: bytes) -> bytes:
    """A directory's record of the stream: its path."""
    return b"d" + _U64(len(name)) + name


def symlink_record(name: bytes, target: str) -> bytes:
    """A symlink's record of the stream: its path and its text."""
    link = os.fsencode(target)
    return b"".join((b"l", _U64(len(name)), name, _U64(len(link)), link))


class TreeStream:
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
    top = check_root(path)
    started_ns = time.time_ns()
    ignored = matcher(top, ignores)

    cache_file: str | None = None
    old: Mapping[str, CacheRow] = {}
    if cache_dir is not None:
        cache_file = cache_path(cache_dir, top)
        old = load_cache(cache_file, top)
    new: dict[str, CacheRow] = {}
    tree = TreeStream()
    add = tree.add
    for relpath, name, _, leaf in walk(top, ignored, _digester(old, started_ns if cache_file else None)):
        if leaf is None:
            add(dir_record(name))
            continue
        record, row = leaf
        add(record)
        if row is not None:
            new[relpath] = row

    if cache_file is not None and new != old:
        save_cache(cache_file, top, new)
    return tree.hexdigest()


# Files are read on the calling thread, each as soon as its directory is listed (the
# records wait in the listing for their turn in the stream). A pool of 2-8 reading
# threads was measured twice and dropped: on 100k small files and 2 CPUs it cost more
# wall and CPU time than one thread (0.65-0.69 s against 0.55 s for the bare reads),
# as each of a small file's four short system calls hands the GIL to another thread.
def _digester(old: Mapping[str, CacheRow], started_ns: int | None) -> LeafFn[tuple[bytes, CacheRow | None]]:
    """hash_dir's leaf function: an entry's stream record, and a file's stat cache row or None.

    A file whose lstat matches its row in ``old`` is not read. Without rows (a cold
    hash) no file is lstat'ed: the read's fstat tells what an lstat would. A row is
    made for a file read only when caching (``started_ns`` given), the file had
    settled before the hash began, and it did not change since the walk's lstat.
    """
    view = memoryview(bytearray(CHUNK_SIZE))  # one buffer for every large file's chunks

    def leaf(
        de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str
    ) -> tuple[bytes, CacheRow | None]:
        if not de.is_file(follow_symlinks=False):
            if de.is_symlink():
                return symlink_record(name, os.readlink(de.path, dir_fd=dir_fd)), None
            raise unsupported(abspath, de.stat(follow_symlinks=False).st_mode)
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
                return file_record(name, bool(seen.st_mode & stat.S_IXUSR), row[4]), row
        digest, st = _file_digest(de.path, dir_fd, abspath, view)
        record = file_record(name, bool(st.st_mode & stat.S_IXUSR), digest)
        if started_ns is None or not settled(st.st_ctime_ns, started_ns):
            return record, None
        key = stat_key(st)
        if seen is not None and key != stat_key(seen):
            return record, None
        return record, (*key, digest)

    return leaf


def _file_digest(
    path: str, dir_fd: int | None, abspath: str, view: memoryview
) -> tuple[bytes, os.stat_result]:
    """A file's content digest and its fstat; ``path`` is opened relative to ``dir_fd`` (see :data:`LeafFn`).

    A file under a chunk is read whole by one read of a byte more than its fstat size
    (which also tells that it did not grow): open, fstat, read and close are all the
    system calls it costs.
    """
    fd = open_file(path, dir_fd, abspath)
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
        raise HashError(abspath, os_reason(exc)) from exc
    finally:
        os.close(fd)


if hasattr(os, "readv"):

    def _readinto(fd: int, view: memoryview) -> int:
        return os.readv(fd, (view,))

else:  # Windows

    def _readinto(fd: int, view: memoryview) -> int:
        with open(fd, "rb", buffering=0, closefd=False) as f:
            return f.readinto(view) or 0
