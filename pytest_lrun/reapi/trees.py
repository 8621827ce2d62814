"""Trees in and out of a Remote Execution API service, as tar streams on pytest-lrun's side.

pytest-lrun's other paths move files as tar (the Docker Engine's archive API); the
REAPI moves them as ``Directory`` messages and blobs in the CAS. This module turns
one into the other, in both directions and for both sides:

* :func:`input_root`: the upload archive of a run (the one snapshot of the test
  directory, with the inner reporter) as an input root: its ``Directory`` messages
  and file blobs by SHA-256 digest, read lazily from the archive when uploaded;
* :func:`output_tar`: an output file or directory of an ``ActionResult`` as the tar
  stream ``get_archive`` gives for a container path, made lazily, a blob fetched
  only when the reader gets that far. What it yields is hostile input as any
  container's tar is: :func:`~pytest_lrun.tree.extract.safe_extract` refuses bad
  names, depth and sizes, and stops reading past its caps, so no more is fetched;
  a ``Tree`` that expands past :data:`~pytest_lrun.tree.tarstream.MAX_EXTRACT_MEMBERS`
  entries is cut there;
* :func:`write_input_tar` (``lrun worker``): an action's input root as a tar to
  upload into its container;
* :func:`collect_output` (``lrun worker``): a container path's tar stream as an
  ``OutputFile`` or ``OutputDirectory`` (with its ``Tree``), under caps.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from pytest_lrun.core.errors import ArchiveError
from pytest_lrun.reapi.cas import BlobKey, BlobSource, Storage, digest_of, key_of
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.tree.archive import TarWriter, TypedTarFile
from pytest_lrun.tree.extract import MAX_EXTRACT_DEPTH
from pytest_lrun.tree.tarstream import MAX_EXTRACT_MEMBERS, TarStream, member_parts, members, read_limit

__all__ = ["InputRoot", "collect_output", "input_root", "output_tar", "write_input_tar"]

_BLOCK = tarfile.BLOCKSIZE
_READ_CHUNK = 1024 * 1024


@dataclass
class _Dir:
    files: dict[str, re_pb2.FileNode] = field(default_factory=dict)
    dirs: dict[str, _Dir] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def at(self, parts: Iterable[str]) -> _Dir:
        node = self
        for part in parts:
            node = node.dirs.setdefault(part, _Dir())
        return node


@dataclass(frozen=True)
class InputRoot:
    """An input root: its digest, and every blob it needs (Directory messages and file contents)."""

    digest: re_pb2.Digest
    blobs: dict[BlobKey, BlobSource]


def input_root(archive: IO[bytes]) -> InputRoot:
    """The input root of ``archive`` (a seekable tar pytest-lrun wrote), its files read lazily."""
    root = _Dir()
    blobs: dict[BlobKey, BlobSource] = {}
    archive.seek(0)
    with TypedTarFile(fileobj=archive, mode="r") as tar:
        for member in tar:
            parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
            if not parts:
                continue
            parent, name = root.at(parts[:-1]), parts[-1]
            if member.isdir():
                parent.at((name,))
            elif member.issym():
                parent.links[name] = member.linkname
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                data = source.read()
                digest = digest_of(data)
                blobs[key_of(digest)] = _reader(archive, member.offset_data, member.size)
                parent.files[name] = re_pb2.FileNode(
                    name=name, digest=digest, is_executable=bool(member.mode & 0o111)
                )
    archive.seek(0)
    return InputRoot(_seal(root, blobs), blobs)


def _reader(archive: IO[bytes], offset: int, size: int) -> Callable[[], bytes]:
    def read() -> bytes:
        archive.seek(offset)
        return archive.read(size)

    return read


def _seal(node: _Dir, blobs: dict[BlobKey, BlobSource]) -> re_pb2.Digest:
    """``node`` as a ``Directory`` message (children first), its blob kept; returns its digest."""
    message = re_pb2.Directory(
        files=[node.files[n] for n in sorted(node.files)],
        directories=[
            re_pb2.DirectoryNode(name=n, digest=_seal(node.dirs[n], blobs)) for n in sorted(node.dirs)
        ],
        symlinks=[re_pb2.SymlinkNode(name=n, target=node.links[n]) for n in sorted(node.links)],
    )
    data = message.SerializeToString(deterministic=True)
    digest = digest_of(data)
    blobs[key_of(digest)] = data
    return digest


# --- outputs, as the tar stream of a container path --------------------------------


def output_tar(storage: Storage, result: re_pb2.ActionResult, path: str) -> Iterator[bytes] | None:
    """The tar stream ``get_archive(path)`` gives for the output at ``path`` (relative to the
    action's working directory, as the Command named it), or None when the action left none."""
    name = posixpath.basename(path)
    for output in result.output_files:
        if output.path == path:
            return _stream(storage, [(name, "file", output.digest, output.is_executable)])
    for folder in result.output_directories:
        if folder.path == path:
            return _tree_stream(storage, folder.tree_digest, name)
    return None


Entry = tuple[str, str, "re_pb2.Digest | str | None", bool]  # (name, kind, digest or link target, executable)


def _tree_stream(storage: Storage, tree_digest: re_pb2.Digest, top: str) -> Iterator[bytes]:
    tree = re_pb2.Tree.FromString(storage.read(tree_digest, max_bytes=64 * 1024 * 1024))
    children = {key_of(digest_of(d.SerializeToString(deterministic=True))): d for d in tree.children}

    def entries() -> Iterator[Entry]:
        stack: list[tuple[str, re_pb2.Directory, int]] = [(top, tree.root, 0)]
        yield (top, "dir", None, False)
        while stack:
            where, directory, depth = stack.pop()
            for f in directory.files:
                yield (f"{where}/{f.name}", "file", f.digest, f.is_executable)
            for s in directory.symlinks:
                yield (f"{where}/{s.name}", "link", s.target, False)
            for d in directory.directories:
                yield (f"{where}/{d.name}", "dir", None, False)
                child = children.get(key_of(d.digest))
                if child is not None and depth < MAX_EXTRACT_DEPTH:
                    stack.append((f"{where}/{d.name}", child, depth + 1))

    return _stream(storage, entries())


def _stream(storage: Storage, entries: Iterable[Entry]) -> Iterator[bytes]:
    """A PAX tar of ``entries``, each file's blob fetched when the reader gets to it, in chunks."""
    for count, (name, kind, what, executable) in enumerate(entries):
        if count > MAX_EXTRACT_MEMBERS:
            return  # no end marker: the reader records a truncated stream
        info = tarfile.TarInfo(name)
        info.mtime = 0
        if kind == "dir":
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            yield info.tobuf(tarfile.PAX_FORMAT)
        elif kind == "link":
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, str(what)
            yield info.tobuf(tarfile.PAX_FORMAT)
        else:
            assert isinstance(what, re_pb2.Digest)
            info.type, info.mode, info.size = tarfile.REGTYPE, 0o755 if executable else 0o644, what.size_bytes
            yield info.tobuf(tarfile.PAX_FORMAT)
            sent = 0
            for chunk in storage.chunks(what):  # fetched as read: a reader past its cap stops it
                piece = chunk[: what.size_bytes - sent]
                sent += len(piece)
                yield piece
                if sent >= what.size_bytes:
                    break
            if sent < what.size_bytes:
                return  # the service sent less than the digest says: the reader sees a truncated tar
            if what.size_bytes % _BLOCK:
                yield b"\0" * (_BLOCK - what.size_bytes % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


# --- the worker's side ---------------------------------------------------------


def write_input_tar(storage: Storage, root: re_pb2.Digest, *, max_bytes: int) -> IO[bytes]:
    """The input root ``root`` as a tar archive (a spool, rewound) to upload into a container.

    :raises ArchiveError: the tree is deeper, larger or has more entries than a run may
    """
    budget = [max_bytes]
    count = [0]
    with TarWriter() as writer:

        def add(prefix: str, digest: re_pb2.Digest, depth: int) -> None:
            if depth > MAX_EXTRACT_DEPTH:
                raise ArchiveError(f"the input root is deeper than {MAX_EXTRACT_DEPTH} levels")
            directory = re_pb2.Directory.FromString(storage.read(digest, max_bytes=budget[0]))
            blobs = storage.read_many(f.digest for f in directory.files)
            for f in directory.files:
                _check_name(f.name)
                count[0] += 1
                budget[0] -= f.digest.size_bytes
                if budget[0] < 0 or count[0] > MAX_EXTRACT_MEMBERS:
                    raise ArchiveError(f"the input root holds more than a run may ({max_bytes} bytes)")
                data = blobs[key_of(f.digest)]
                writer.add_file(
                    f"{prefix}{f.name}", io.BytesIO(data), size=len(data), executable=f.is_executable
                )
            for s in directory.symlinks:
                _check_name(s.name)
                writer.add_symlink(f"{prefix}{s.name}", s.target)
            for d in directory.directories:
                _check_name(d.name)
                writer.add_dir(f"{prefix}{d.name}")
                add(f"{prefix}{d.name}/", d.digest, depth + 1)

        add("", root, 0)
        return writer.finish()


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ArchiveError(f"the input root has an entry named {name!r}")


@dataclass
class Collected:
    """One output path read out of a container: the message for the ActionResult, and its blobs."""

    file: re_pb2.OutputFile | None = None
    directory: re_pb2.OutputDirectory | None = None
    blobs: dict[BlobKey, bytes] = field(default_factory=dict)


def collect_output(chunks: Iterable[bytes], path: str, *, max_bytes: int) -> Collected:
    """The output at ``path`` from the tar stream of its container path (hostile: read under caps).

    A single regular file is an ``OutputFile``; a directory an ``OutputDirectory`` whose
    ``Tree`` holds its regular files, symlinks and directories; members with names that
    mean no relative path, and any other type, are left out.
    """
    collected = Collected()
    root = _Dir()
    budget = max_bytes
    top_file: tuple[str, re_pb2.Digest, bool] | None = None
    is_dir = False
    stream = TarStream(chunks, read_limit(max_bytes, None))
    with stream.open() as tar:
        for count, member in enumerate(members(tar)):
            if count > MAX_EXTRACT_MEMBERS:
                break
            parts = member_parts(member.name)
            if isinstance(parts, str) or not parts or len(parts) > MAX_EXTRACT_DEPTH:
                continue
            if len(parts) == 1 and member.isdir():
                is_dir = True
                continue
            inner = parts[1:]
            if member.isfile():
                if member.size > budget:
                    raise ArchiveError(f"output {path} holds more than {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None
                data = source.read()
                budget -= len(data)
                digest = digest_of(data)
                collected.blobs[key_of(digest)] = data
                if not inner:
                    top_file = (parts[0], digest, bool(member.mode & 0o111))
                    continue
                node = re_pb2.FileNode(name=inner[-1], digest=digest, is_executable=bool(member.mode & 0o111))
                root.at(inner[:-1]).files[inner[-1]] = node
            elif member.isdir() and inner:
                root.at(inner)
            elif member.issym() and inner:
                root.at(inner[:-1]).links[inner[-1]] = member.linkname
    if top_file is not None and not is_dir:
        collected.file = re_pb2.OutputFile(path=path, digest=top_file[1], is_executable=top_file[2])
        return collected
    directories: dict[BlobKey, bytes] = {}
    root_digest = _seal(root, directories)  # type: ignore[arg-type]
    root_message = re_pb2.Directory.FromString(directories[key_of(root_digest)])
    children = [re_pb2.Directory.FromString(v) for k, v in directories.items() if k != key_of(root_digest)]
    tree = re_pb2.Tree(root=root_message, children=children).SerializeToString(deterministic=True)
    tree_digest = digest_of(tree)
    collected.blobs[key_of(tree_digest)] = tree
    collected.directory = re_pb2.OutputDirectory(path=path, tree_digest=tree_digest)
    return collected
