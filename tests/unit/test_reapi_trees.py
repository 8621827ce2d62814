"""Trees in and out of a Remote Execution API service: the input root is the upload archive, and an
action's outputs come back as a tar stream that is hostile input like any container's.

The CAS is a dict here (a narrow seam: tests/integration/test_reapi.py runs the real service).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from pytest_lrun.reapi.cas import digest_of, key_of
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.trees import collect_output, input_root, output_tar, write_input_tar
from pytest_lrun.tree.archive import TarWriter
from pytest_lrun.tree.extract import safe_extract
from pytest_lrun.tree.tarstream import MAX_EXTRACT_MEMBERS


class FakeStorage:
    """Blobs by digest; counts the bytes it served."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.served = 0

    def put(self, data: bytes) -> re_pb2.Digest:
        digest = digest_of(data)
        self.blobs[key_of(digest)] = data
        return digest

    def put_message(self, message: re_pb2.Directory | re_pb2.Tree) -> re_pb2.Digest:
        return self.put(message.SerializeToString(deterministic=True))

    def read(self, digest: re_pb2.Digest, *, max_bytes: int) -> bytes:
        assert digest.size_bytes <= max_bytes
        data = self.blobs[key_of(digest)]
        self.served += len(data)
        return data

    def read_many(self, digests: object) -> dict[tuple[str, int], bytes]:
        return {key_of(d): self.read(d, max_bytes=d.size_bytes) for d in digests}  # type: ignore[attr-defined]

    def chunks(self, digest: re_pb2.Digest) -> Iterator[bytes]:
        """A huge blob is never held: it is made up as it is served, 1 MiB at a time."""
        if key_of(digest) in self.blobs:
            yield self.read(digest, max_bytes=digest.size_bytes)
            return
        for _ in range(0, digest.size_bytes, 1 << 20):
            self.served += 1 << 20
            yield b"x" * (1 << 20)


def _file(storage: FakeStorage, name: str, data: bytes) -> re_pb2.FileNode:
    return re_pb2.FileNode(name=name, digest=storage.put(data))


def _output_dir(
    storage: FakeStorage, root: re_pb2.Directory, children: list[re_pb2.Directory]
) -> re_pb2.ActionResult:
    tree = storage.put_message(re_pb2.Tree(root=root, children=children))
    return re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="../artifacts", tree_digest=tree)]
    )


def test_the_input_root_is_the_upload_archive_with_the_same_bytes_and_modes() -> None:
    with TarWriter(prefix="lrun/work", extra_files=[("lrun/lrun_reporter.py", b"# reporter")]) as writer:
        writer.add_file("test_a.py", io.BytesIO(b"def test(): pass\n"), size=17, executable=False)
        writer.add_file("run.sh", io.BytesIO(b"#!/bin/sh\n"), size=10, executable=True)
        writer.add_symlink("link", "test_a.py")
        with writer.finish() as archive:
            root = input_root(archive)
            storage = FakeStorage()
            storage.blobs.update({k: v if isinstance(v, bytes) else v() for k, v in root.blobs.items()})
    with write_input_tar(storage, root.digest, max_bytes=1 << 20) as back, tarfile.open(fileobj=back) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["lrun/work/test_a.py"]).read() == b"def test(): pass\n"  # type: ignore[union-attr]
        assert members["lrun/work/run.sh"].mode & 0o111 and not members["lrun/work/test_a.py"].mode & 0o111
        assert members["lrun/work/link"].linkname == "test_a.py"
        assert "lrun/lrun_reporter.py" in members
    # The same tree gives the same digest: what lets the service's action cache answer.
    with TarWriter(prefix="lrun/work", extra_files=[("lrun/lrun_reporter.py", b"# reporter")]) as writer:
        writer.add_file("test_a.py", io.BytesIO(b"def test(): pass\n"), size=17, executable=False)
        writer.add_file("run.sh", io.BytesIO(b"#!/bin/sh\n"), size=10, executable=True)
        writer.add_symlink("link", "test_a.py")
        with writer.finish() as again:
            assert input_root(again).digest == root.digest


def test_an_output_file_and_directory_come_back_as_the_docker_path_reads_them(tmp_path: Path) -> None:
    storage = FakeStorage()
    junit = storage.put(b"<testsuites/>")
    deep = re_pb2.Directory(files=[_file(storage, "report.txt", b"made")])
    root = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="deep", digest=storage.put_message(deep))])
    result = _output_dir(storage, root, [deep])
    result.output_files.append(re_pb2.OutputFile(path="../out/junit.xml", digest=junit))
    assert output_tar(storage, result, "../nothing") is None
    extracted = safe_extract(output_tar(storage, result, "../artifacts"), tmp_path / "a")  # type: ignore[arg-type]
    assert extracted.refused == []
    assert (tmp_path / "a" / "artifacts" / "deep" / "report.txt").read_text() == "made"
    safe_extract(output_tar(storage, result, "../out/junit.xml"), tmp_path / "j")  # type: ignore[arg-type]
    assert (tmp_path / "j" / "junit.xml").read_bytes() == b"<testsuites/>"


def test_hostile_names_and_links_in_an_output_tree_are_refused(tmp_path: Path) -> None:
    storage = FakeStorage()
    root = re_pb2.Directory(
        files=[
            _file(storage, "..", b"up"),
            _file(storage, "a/../../b", b"out"),
            _file(storage, "ok.txt", b"ok"),
        ],
        symlinks=[re_pb2.SymlinkNode(name="escape", target="../../../etc/passwd")],
    )
    extracted = safe_extract(output_tar(storage, _output_dir(storage, root, []), "../artifacts"), tmp_path)  # type: ignore[arg-type]
    assert (tmp_path / "artifacts" / "ok.txt").read_text() == "ok"
    assert not (tmp_path / "artifacts" / "escape").exists()
    assert len(extracted.refused) == 3
    assert not (tmp_path.parent / "b").exists()


def test_a_tree_that_expands_past_the_member_cap_is_cut_there(tmp_path: Path) -> None:
    """Twenty levels of a directory holding its child twice is a million entries from 20 messages."""
    storage = FakeStorage()
    level = re_pb2.Directory(files=[_file(storage, "f", b"x")])
    levels = [level]
    for _ in range(20):
        digest = storage.put_message(level)
        level = re_pb2.Directory(
            directories=[
                re_pb2.DirectoryNode(name="a", digest=digest),
                re_pb2.DirectoryNode(name="b", digest=digest),
            ]
        )
        levels.append(level)
    chunks = list(output_tar(storage, _output_dir(storage, level, levels[:-1]), "../artifacts"))  # type: ignore[arg-type]
    headers = sum(1 for chunk in chunks if len(chunk) >= 512 and chunk[257:262] == b"ustar")
    assert headers <= MAX_EXTRACT_MEMBERS + 1


def test_a_huge_output_blob_is_fetched_only_as_far_as_the_reader_reads(tmp_path: Path) -> None:
    storage = FakeStorage()
    huge = re_pb2.Digest(hash="f" * 64, size_bytes=50 * 1024 * 1024 * 1024)  # 50 GiB, never stored
    root = re_pb2.Directory(files=[re_pb2.FileNode(name="big.bin", digest=huge)])
    extracted = safe_extract(
        output_tar(storage, _output_dir(storage, root, []), "../artifacts"),  # type: ignore[arg-type]
        tmp_path,
        max_bytes=8 * 1024 * 1024,
        max_read=16 * 1024 * 1024,
    )
    assert extracted.refused
    assert storage.served <= 20 * 1024 * 1024


def test_a_worker_collects_a_containers_output_directory_as_a_tree() -> None:
    with TarWriter() as writer:
        writer.add_dir("artifacts")
        writer.add_dir("artifacts/deep")
        writer.add_file("artifacts/deep/r.txt", io.BytesIO(b"made"), size=4, executable=False)
        writer.add_symlink("artifacts/link", "deep/r.txt")
        with writer.finish() as archive:
            collected = collect_output([archive.read()], "../artifacts", max_bytes=1 << 20)
    assert collected.file is None and collected.directory is not None
    tree = re_pb2.Tree.FromString(collected.blobs[key_of(collected.directory.tree_digest)])
    assert [d.name for d in tree.root.directories] == ["deep"]
    assert [s.name for s in tree.root.symlinks] == ["link"]
    assert tree.children[0].files[0].name == "r.txt"
    assert collected.blobs[key_of(tree.children[0].files[0].digest)] == b"made"
