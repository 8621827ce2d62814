"""Reading the hostile tar streams ``get_archive`` returns: bounded, one member at a time.

The Docker Engine moves files out of containers only as tar streams (docker-py's
``container.get_archive(path)``, an iterator of byte chunks). The archive comes from a
container that ran arbitrary test code, so it is read as hostile: this module owns
reading such a stream, with memory at a few chunks and one header whatever it holds.

* :class:`TarStream` opens the chunks as a ``tarfile`` stream and :func:`members`
  yields its members one at a time; :func:`pytest_lrun.tree.extract.safe_extract`
  writes them to disk under its rules.
* :func:`read_member` reads one regular file (the inner run's ``junit.xml``) out of
  such a stream, into memory, under a size cap.
* :func:`member_parts` is what a member's name means as a relative path, or why it
  means none.

Caps on what is read: at most ``max_read`` bytes of the stream are read (by default
``max_bytes`` + :data:`STREAM_OVERHEAD`, :func:`read_limit`); an extension header (GNU
long name or long link, PAX) over :data:`MAX_HEADER_BYTES`, global PAX headers over that
in total, or more than a few extension headers in a row end the read before the header
is loaded (:class:`Capped`). Sparse members are refused the same way. A stream that
stops without the all-zero end-of-archive marker was truncated (:attr:`TarStream.ended`).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from pytest_lrun.core.errors import ArchiveError
from pytest_lrun.tree.archive import TypedTarFile

__all__ = [
    "MAX_EXTRACT_MEMBERS",
    "MAX_HEADER_BYTES",
    "READ_ERRORS",
    "STREAM_OVERHEAD",
    "Capped",
    "SourceError",
    "TarStream",
    "member_parts",
    "members",
    "name_refusal",
    "read_limit",
    "read_member",
    "stream_reason",
]

MAX_EXTRACT_MEMBERS = 100_000
"""Members of a stream looked at, by default; past them the rest is not read."""

MAX_HEADER_BYTES = 64 * 1024
"""Largest extension header (GNU long name or long link, PAX) read: 16 ``PATH_MAX`` paths."""

STREAM_OVERHEAD = 64 * 1024 * 1024
"""Bytes read beyond ``max_bytes`` by default: headers, padding, members that were refused."""

_BLOCKSIZE = tarfile.BLOCKSIZE


def read_limit(max_bytes: int, max_read: int | None) -> int:
    """The bytes of a stream read at most: ``max_read``, else ``max_bytes`` + :data:`STREAM_OVERHEAD`."""
    return max_bytes + STREAM_OVERHEAD if max_read is None else max_read


class SourceError(Exception):
    """The chunk iterator itself failed (a broken connection, a read timeout)."""


class Capped(tarfile.TarError):
    """The stream holds more than we read (a cap), or something we do not parse; the reason is the message."""


#: What reading a stream raises for its content or its source: :func:`stream_reason` says it in words.
READ_ERRORS = (tarfile.TarError, SourceError)


class _ChunkReader(io.RawIOBase):
    """A read-only, non-seekable file over an iterator of byte chunks, holding one chunk at a time.

    Reading past ``limit`` bytes raises :class:`Capped`.
    """

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._done = False
        self._left = limit
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            if self._done:
                return 0
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                return 0
            except OSError as exc:  # requests' errors derive from OSError
                self._done = True
                raise SourceError(f"reading the archive stream failed: {exc}") from exc
            self._pending = memoryview(chunk).cast("B")
        if self._left <= 0:
            self._done = True
            raise Capped(f"read cap: the stream is over {self._limit} bytes; the rest was not read")
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending), self._left)
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self._left -= size
        return size


_EXTENSION_TYPES = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XHDTYPE: "PAX",
    tarfile.XGLTYPE: "global PAX",
    tarfile.SOLARIS_XHDTYPE: "PAX",
}
_MAX_EXTENSION_CHAIN = 8  # extension headers in a row; tarfile reads each chain recursively


class _Probe(tarfile.TarInfo):
    """TarInfo that notes the end marker and refuses, before reading them, headers that are not bounded.

    In stream mode tarfile treats a truncated or garbled header after the first one as
    a quiet end of archive; the all-zero end marker is how a complete stream is told
    apart (``saw_end_marker``). tarfile reads an extension header's whole payload
    into memory, chains of them recursively, and a sparse map from the data that
    follows; this class raises :class:`Capped` at the 512-byte header instead, so
    nothing of the payload is read. Docker's archives have no sparse members and no
    global headers, and their extension headers hold a path or two. Subclassed per
    call (:func:`_probe_class`) so that concurrent reads do not share the counters.
    """

    saw_end_marker = False
    chain = 0
    global_bytes = 0

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _Probe:
        cls.saw_end_marker = len(buf) == _BLOCKSIZE and buf.count(0) == _BLOCKSIZE
        info = super().frombuf(buf, encoding, errors)
        kind = _EXTENSION_TYPES.get(info.type)
        if kind is None:
            cls.chain = 0
        else:
            cls.chain += 1
            if cls.chain > _MAX_EXTENSION_CHAIN:
                raise Capped(f"header cap: more than {_MAX_EXTENSION_CHAIN} extension headers in a row")
            if info.type == tarfile.XGLTYPE:
                cls.global_bytes += info.size
            size = cls.global_bytes if info.type == tarfile.XGLTYPE else info.size
            if size > MAX_HEADER_BYTES:
                raise Capped(f"header cap: a {kind} header of {size} bytes (cap {MAX_HEADER_BYTES})")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise Capped("sparse member (not supported)")
        return info

    # tarfile's readers of the PAX forms of a sparse map: 0.1 can raise ValueError and
    # 1.0 reads the map from the data without bound, so none of them runs.
    def _proc_gnusparse_00(self, *args: object) -> None:
        raise Capped("sparse member (not supported)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _probe_class() -> type[_Probe]:
    class _CallProbe(_Probe):
        pass

    return _CallProbe


class TarStream:
    """A tar stream given as byte chunks, opened for reading one member at a time under the caps.

    At most ``limit`` bytes of the chunks are read (:class:`Capped` past them), and
    extension headers are capped (:class:`_Probe`). :attr:`ended` tells a complete
    stream from one cut short.
    """

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        self._reader = _ChunkReader(chunks, limit)
        self._probe = _probe_class()

    def open(self) -> TypedTarFile:
        """The stream as a ``tarfile`` in stream mode; raises what :data:`READ_ERRORS` names."""
        return TypedTarFile.open(fileobj=self._reader, mode="r|", tarinfo=self._probe)

    @property
    def ended(self) -> bool:
        """Whether the last header read was the all-zero end-of-archive marker."""
        return self._probe.saw_end_marker


def members(tar: TypedTarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a stream, one at a time; none is called for once the end was reached.

    Before Python 3.11 a ``next()`` after the end seeks backwards, which a stream cannot:
    an empty archive has reached its end when it is opened.
    """
    while not tar._loaded and (member := tar.next()) is not None:
        yield member
        # TarFile keeps every header it read (with its PAX records); we need only this one.
        tar.members.clear()


def stream_reason(exc: Exception) -> str:
    """What a read error of the stream says about it, in words."""
    if isinstance(exc, Capped):
        return str(exc)
    return f"corrupt or truncated tar stream: {exc}"


def name_refusal(name: str) -> str | None:
    """Why a name cannot be used as a path on this file system at all, or None."""
    if "\0" in name:
        return "NUL in name"
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        return "name not representable in the file system encoding"
    return None


def member_parts(name: str) -> tuple[str, ...] | str:
    """The components of a member name, or the reason it is refused."""
    if name.startswith("/"):
        return "absolute path"
    unusable = name_refusal(name)
    if unusable is not None:
        return unusable
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        return "'..' in path"
    return parts


def read_member(
    chunks: Iterable[bytes],
    name: str,
    *,
    max_bytes: int,
    max_members: int = MAX_EXTRACT_MEMBERS,
    max_read: int | None = None,
) -> bytes | None:
    """The content of the regular-file member ``name`` of a tar stream, or None if it has none.

    ``name`` is matched after normalization (``./junit.xml`` is ``junit.xml``). Reading
    stops at the member; the rest of the stream is left unread. At most ``max_read``
    bytes of the stream are read (default ``max_bytes + STREAM_OVERHEAD``), and
    extension headers are capped as above. Raises
    :class:`ArchiveError` when the member is larger than ``max_bytes``, is not a
    regular file, or the stream is corrupt, truncated, over a cap or has more than
    ``max_members`` members before it.
    """
    wanted = member_parts(name)
    if isinstance(wanted, str) or not wanted:
        raise ArchiveError(f"invalid member name ({wanted or 'empty'})", name)
    stream = TarStream(chunks, read_limit(max_bytes, max_read))
    try:
        with stream.open() as tar:
            for count, member in enumerate(members(tar), start=1):
                if count > max_members:
                    raise ArchiveError(f"more than {max_members} members before it", name)
                if member_parts(member.name) != wanted:
                    continue
                if not member.isreg():
                    raise ArchiveError("archive member is not a regular file", name)
                if member.size > max_bytes:
                    raise ArchiveError(
                        f"archive member is {member.size} bytes, over the cap of {max_bytes}", name
                    )
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise ArchiveError("archive member has no data", name)
                with source:
                    data = source.read(max_bytes + 1)
                if len(data) > max_bytes:  # pragma: no cover - sizes agree for regular members
                    raise ArchiveError(f"archive member is over the cap of {max_bytes} bytes", name)
                return data
    except READ_ERRORS as exc:
        raise ArchiveError(stream_reason(exc), name) from exc
    if not stream.ended:
        raise ArchiveError("truncated tar stream: no end-of-archive marker", name)
    return None
