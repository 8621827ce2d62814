"""The stat cache: a file's content digest reused, unread, while its stat says it did not change.

With a ``cache_dir``, :func:`~pytest_lrun.tree.hashing.hash_dir` reuses a file's content
digest without reading the file when its size, mtime, inode and ctime are all
unchanged, and :func:`~pytest_lrun.tree.snapshot.snapshot` brings the cache up to date
with what it read. This module owns the cache's rows (:data:`CacheRow`), which rows
may be trusted (:func:`settled`), and the file that keeps them. A file that changes
while it is hashed gets no row, so the next hash reads it again.

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
import os
import sys
import tempfile
from array import array
from collections.abc import Mapping

import xxhash

__all__ = ["CacheRow", "cache_path", "load_cache", "save_cache", "settled", "stat_key"]

#: A file's row: size, mtime_ns, ino, ctime_ns (its :func:`stat_key`) and its content digest.
CacheRow = tuple[int, int, int, int, bytes]

# A file whose ctime is this close to the start of a hash is hashed but not cached:
# a same-size rewrite within the file system's time-stamp granularity could leave
# size, mtime, ctime and inode all unchanged. Time stamps that are whole seconds
# betray a coarse file system (ext3, HFS+, FAT), which gets the wider window.
_RACY_NS = 100_000_000
_RACY_COARSE_NS = 2_100_000_000


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What a row vouches for: size, mtime, inode and ctime."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def settled(ctime_ns: int, started_ns: int) -> bool:
    """Whether a file last changed long enough before the hash began to be cached."""
    window = _RACY_COARSE_NS if ctime_ns % 1_000_000_000 == 0 else _RACY_NS
    return ctime_ns <= started_ns - window


def cache_path(cache_dir: str | os.PathLike[str], top: str) -> str:
    """The cache file of the tree at ``top`` (an absolute path) under ``cache_dir``."""
    return os.path.join(os.fspath(cache_dir), xxhash.xxh64_hexdigest(os.fsencode(top)) + ".stat")


_MAGIC = b"LRUNSC\x00\x01"
_HEAD_SIZE = len(_MAGIC) + 3 * 8 + 16
_SWAP = sys.byteorder != "little"


class _BadCache(Exception):
    pass


def load_cache(cache_file: str, top: str) -> dict[str, CacheRow]:
    """The rows of a cache file, or none if it is missing, unreadable or corrupt."""
    try:
        with open(cache_file, "rb") as f:
            data = f.read()
        return _decode_cache(data, top)
    except (OSError, _BadCache, ValueError, UnicodeError):
        return {}


def _decode_cache(data: bytes, top: str) -> dict[str, CacheRow]:
    if len(data) < _HEAD_SIZE or not data.startswith(_MAGIC):
        raise _BadCache("bad header")
    view = memoryview(data)
    o = len(_MAGIC)
    n, root_len, paths_len = (int.from_bytes(view[o + 8 * k : o + 8 * k + 8], "little") for k in range(3))
    checksum = bytes(view[o + 24 : o + 40])
    payload = view[_HEAD_SIZE:]
    if len(payload) != root_len + paths_len + 48 * n or xxhash.xxh3_128_digest(payload) != checksum:
        raise _BadCache("bad length or checksum")
    if bytes(payload[:root_len]) != os.fsencode(top):
        raise _BadCache("another root")
    o = root_len
    blob = bytes(payload[o : o + paths_len])
    o += paths_len
    paths = os.fsdecode(blob).split("\0") if n else []
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


def _encode_cache(top: str, rows: Mapping[str, CacheRow]) -> list[bytes]:
    root = os.fsencode(top)
    paths = os.fsencode("\0".join(rows))
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


def save_cache(cache_file: str, top: str, rows: Mapping[str, CacheRow]) -> None:
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
