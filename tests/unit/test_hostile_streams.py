"""Hostile artifact and JUnit streams, fed to the run's folder the way dispatch does.

Each test hands :func:`pytest_lrun.run.readback.collect` (what ``Dispatcher`` calls when a
container has stopped) an engine whose archive API returns one hostile tar stream,
then checks what a user would see: nothing written outside the run's folder, the
refusal and its reason in the list that dispatch records on the run
(``error_code`` ``unsafe_archive``, one ``refused <name>: <reason>`` line each), and
time and memory bounded. The JUnit cases go on through :func:`parse_junit`, as the
controller reads the file back.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

import pytest

from pytest_lrun.core.errors import JunitError
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.engine import Engine
from pytest_lrun.run.readback import JUNIT_PATH, collect
from pytest_lrun.store import Run
from pytest_lrun.tree.extract import MAX_EXTRACT_DEPTH, MAX_EXTRACT_ENTRIES, MAX_REFUSALS_LISTED, MORE, STREAM
from pytest_lrun.wire.junit import parse_junit

ARTIFACTS = "/lrun/artifacts"

# --- building hostile streams ----------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data)
    info.mode = 0o644
    return info


def tar(*members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A PAX tar of ``members`` (a TarInfo alone has no data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for item in members:
            info, data = item if isinstance(item, tuple) else (item, b"")
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def chunked(data: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


Stream = bytes | Iterable[bytes]


class ArchiveEngine:
    """The archive half of an Engine: each container path gives the stream it was set to."""

    def __init__(self, streams: dict[str, Iterable[bytes]]) -> None:
        self.streams = streams

    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        return False

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None:
        stream = self.streams.get(path)
        return None if stream is None else iter(stream)


class Host:
    """A state dir with one run's folder, next to a host file and folder a stream must not reach."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.files = RunFiles(tmp_path / "state" / "runs" / "r-1")
        self.files.dir.mkdir(parents=True)
        self.secret = tmp_path / "secret.txt"
        self.secret.write_text("host secret\n")
        self.victim = tmp_path / "victim"
        self.victim.mkdir()

    def collect(self, artifacts: Stream | None = None, junit: Stream | None = None) -> list[tuple[str, str]]:
        """What ``collect`` refuses of these streams: a whole tar, or chunks as an engine sends them."""
        streams: dict[str, Iterable[bytes]] = {}
        for path, stream in ((ARTIFACTS, artifacts), (JUNIT_PATH, junit)):
            if stream is not None:
                streams[path] = chunked(stream) if isinstance(stream, bytes) else stream
        run = Run(id="r-1", machine="m", test_dir="/t", container_id="c-1", artifacts=[ARTIFACTS])
        refused = collect(self.files, run, cast(Engine, ArchiveEngine(streams)))
        self.assert_nothing_outside()
        return refused

    def assert_nothing_outside(self) -> None:
        """Everything under the test's folder is the run's folder, the secret or the empty victim."""
        assert sorted(p.name for p in self.root.iterdir()) == ["secret.txt", "state", "victim"]
        assert [p.name for p in (self.root / "state").iterdir()] == ["runs"]
        assert [p.name for p in (self.root / "state" / "runs").iterdir()] == ["r-1"]
        assert list(self.victim.iterdir()) == []
        assert self.secret.read_text() == "host secret\n"
        for dirpath, dirnames, filenames in os.walk(self.files.dir):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path.is_symlink():  # whatever a kept link points at stays inside the folder
                    assert path.resolve().is_relative_to(self.files.artifacts.resolve())

    def artifact_names(self) -> list[str]:
        if not self.files.artifacts.exists():
            return []
        return sorted(str(p.relative_to(self.files.artifacts)) for p in self.files.artifacts.rglob("*"))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


# --- paths and links ---------------------------------------------------------


def test_an_absolute_name_is_refused(host: Host) -> None:
    refused = host.collect(tar((entry(str(host.victim / "pwned"), data=b"x"), b"x")))
    assert refused == [(str(host.victim / "pwned"), "absolute path")]
    assert host.artifact_names() == []


def test_a_dotdot_name_is_refused(host: Host) -> None:
    name = "artifacts/../../../../victim/pwned"
    refused = host.collect(tar((entry(name, data=b"x"), b"x")))
    assert refused == [(name, "'..' in path")]


def test_a_symlink_out_and_a_write_through_it_are_refused(host: Host) -> None:
    refused = host.collect(
        tar(
            entry("out", tarfile.SYMTYPE, linkname=str(host.victim)),
            entry("up", tarfile.SYMTYPE, linkname="../../../../victim"),
            (entry("out/pwned", data=b"x"), b"x"),
            (entry("up/pwned", data=b"x"), b"x"),
        )
    )
    assert refused == [
        ("out", "absolute symlink target"),
        ("up", "symlink target escapes destination"),
        ("out/pwned", "parent was refused"),
        ("up/pwned", "parent was refused"),
    ]


def test_a_hardlink_to_a_host_file_is_refused(host: Host) -> None:
    refused = host.collect(
        tar(
            entry("passwd", tarfile.LNKTYPE, linkname="/etc/passwd"),
            entry("secret", tarfile.LNKTYPE, linkname=f"../../../{host.secret.name}"),
        )
    )
    assert refused == [
        ("passwd", "hardlink to a file not extracted before it"),
        ("secret", "hardlink to a file not extracted before it"),
    ]
    assert host.artifact_names() == []


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(tarfile.CHRTYPE, "device file"), (tarfile.BLKTYPE, "device file"), (tarfile.FIFOTYPE, "fifo")],
    ids=["char", "block", "fifo"],
)
def test_device_nodes_and_fifos_are_refused(host: Host, kind: bytes, reason: str) -> None:
    node = entry("dev-null", kind)
    node.devmajor, node.devminor = 1, 3
    assert host.collect(tar(node)) == [("dev-null", reason)]
    assert host.artifact_names() == []


# --- bombs -----------------------------------------------------------------


def test_a_member_claiming_a_terabyte_is_refused_and_the_read_is_bounded(host: Host) -> None:
    def stream() -> Iterator[bytes]:
        header = entry("big.bin")
        header.size = 1 << 40
        yield header.tobuf(format=tarfile.PAX_FORMAT)
        zeros = bytes(1 << 20)
        while True:  # an engine that never stops sending
            yield zeros

    started = time.monotonic()
    refused = host.collect(stream())
    assert time.monotonic() - started < 60
    assert refused[0] == ("big.bin", "size cap")
    assert refused[1][0] == STREAM and refused[1][1].startswith("read cap")
    assert host.artifact_names() == []


def test_a_huge_pax_header_is_refused_before_it_is_read(host: Host) -> None:
    def stream() -> Iterator[bytes]:
        header = tarfile.TarInfo("././@PaxHeader")
        header.type = tarfile.XHDTYPE
        header.size = 1 << 30  # a gigabyte of "path=..." records that tarfile would load whole
        yield header.tobuf(format=tarfile.USTAR_FORMAT)
        block = b"x" * (1 << 20)
        while True:
            yield block

    tracemalloc.start()
    try:
        refused = host.collect(stream())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert len(refused) == 1
    assert refused[0][0] == STREAM and refused[0][1].startswith(
        "header cap: a PAX header of 1073741824 bytes"
    )


def test_an_endless_stream_of_members_is_cut_and_its_refusals_stay_short(host: Host) -> None:
    def stream() -> Iterator[bytes]:
        number = 0
        while True:
            number += 1
            yield entry(f"f{number}").tobuf(format=tarfile.USTAR_FORMAT)

    started = time.monotonic()
    refused = host.collect(stream())
    assert time.monotonic() - started < 120
    files = sum(1 for _ in host.files.artifacts.iterdir())
    assert files == MAX_EXTRACT_ENTRIES
    # What dispatch writes into the run's error message: a hundred names, a count, the cut.
    assert len(refused) == MAX_REFUSALS_LISTED + 2
    assert refused[0] == (f"f{MAX_EXTRACT_ENTRIES + 1}", "entry cap")
    assert refused[-2] == (STREAM, "member cap of 100000 reached; the rest was not read")
    assert refused[-1][0] == MORE and refused[-1][1].startswith(
        "89901 more members refused"
    )  # 90,000 over the entry cap, 1 at the member cap


def test_a_deep_tree_stops_at_the_depth_cap(host: Host) -> None:
    name = "/".join(["d"] * 5000) + "/f"
    refused = host.collect(tar((entry(name, data=b"x"), b"x")))
    assert refused == [(name, "depth cap")]
    assert host.artifact_names() == []
    shallow = "/".join(["d"] * (MAX_EXTRACT_DEPTH - 1)) + "/f"
    assert host.collect(tar((entry(shallow, data=b"x"), b"x"))) == []
    assert (host.files.artifacts / shallow).read_bytes() == b"x"


# --- names -----------------------------------------------------------------


def test_a_name_that_is_not_utf8_stays_inside_the_folder_under_its_own_bytes(host: Host) -> None:
    refused = host.collect(tar((entry("caf\udce9/\udcff.txt", data=b"x"), b"x")))
    assert refused == []
    assert os.listdir(bytes(host.files.artifacts)) == [b"caf\xe9"]
    assert os.listdir(bytes(host.files.artifacts / "caf\udce9")) == [b"\xff.txt"]


def test_a_name_with_nul_is_refused(host: Host) -> None:
    info = entry("innocent", data=b"x")
    info.pax_headers = {"path": "ok\0/../../victim/pwned"}
    refused = host.collect(tar((info, b"x")))
    assert refused == [("ok\0/../../victim/pwned", "NUL in name")]
    assert host.artifact_names() == []


# --- JUnit -----------------------------------------------------------------


def junit_stream(xml: bytes) -> bytes:
    return tar((entry("junit.xml", data=xml), xml))


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE testsuites [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (level, (b"&lol%d;" % (level - 1) if level > 1 else b"&lol;") * 10)
        for level in range(1, 10)
    )
    + b']><testsuites><testsuite><testcase classname="t" name="x"><failure message="&lol9;"/>'
    + b"</testcase></testsuite></testsuites>"
)


def test_billion_laughs_in_the_junit_xml_is_refused() -> None:
    started = time.monotonic()
    with pytest.raises(JunitError, match="document type declaration <!DOCTYPE testsuites> is not allowed"):
        parse_junit(BILLION_LAUGHS)
    assert time.monotonic() - started < 5


def xxe(target: Path) -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE testsuites [<!ENTITY xxe SYSTEM "file://%s">]>'
        b'<testsuites><testsuite><testcase classname="t" name="&xxe;"><failure message="&xxe;">&xxe;'
        b"</failure></testcase></testsuite></testsuites>" % os.fsencode(target)
    )


def test_an_external_entity_in_the_junit_xml_never_reads_the_host_file(host: Host) -> None:
    with pytest.raises(JunitError) as excinfo:
        parse_junit(xxe(host.secret))
    assert "document type declaration" in str(excinfo.value)
    assert "host secret" not in str(excinfo.value)


def test_a_refused_junit_xml_is_recorded_on_the_run(host: Host) -> None:
    refused = host.collect(junit=junit_stream(xxe(host.secret)))
    assert len(refused) == 1
    assert refused[0][0] == JUNIT_PATH and "document type declaration" in refused[0][1]


def test_an_element_bomb_in_the_junit_xml_is_refused() -> None:
    # 6.6 MB that made a tree of 300 MB (64 MiB of it took 1.5 GB); the cases of the cap take 270 MB.
    xml = b"<testsuites>" + b"<testcase/>" * 600_000 + b"</testsuites>"
    started = time.monotonic()
    with pytest.raises(JunitError, match="more than 500000 elements"):
        parse_junit(xml)
    assert time.monotonic() - started < 30


def test_an_attribute_bomb_in_the_junit_xml_is_refused_before_parsing() -> None:
    attributes = b" ".join(b'a%d=""' % i for i in range(1_000_000))
    xml = b"<testsuites><testcase " + attributes + b"/></testsuites>"
    tracemalloc.start()
    try:
        with pytest.raises(JunitError, match="a tag of over 4194304 bytes at byte 12"):
            parse_junit(xml)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_junit_xml_that_is_a_symlink_to_a_host_file_is_refused(host: Host) -> None:
    refused = host.collect(junit=tar(entry("junit.xml", tarfile.SYMTYPE, linkname="/etc/passwd")))
    assert refused == [(JUNIT_PATH, "junit.xml: archive member is not a regular file")]
    assert not host.files.junit.exists()


def test_the_artifacts_come_back_when_the_junit_xml_is_refused(host: Host) -> None:
    refused = host.collect(
        artifacts=tar((entry("report.txt", data=b"42\n"), b"42\n")),
        junit=tar(entry("junit.xml", tarfile.SYMTYPE, linkname="/etc/passwd")),
    )
    assert refused == [(JUNIT_PATH, "junit.xml: archive member is not a regular file")]
    assert host.artifact_names() == ["report.txt"]


def test_a_junit_xml_claiming_a_terabyte_is_refused_unread(host: Host) -> None:
    def stream() -> Iterator[bytes]:
        header = entry("junit.xml")
        header.size = 1 << 40
        yield header.tobuf(format=tarfile.PAX_FORMAT)
        block = b"<" * (1 << 20)
        while True:
            yield block

    refused = host.collect(junit=stream())
    assert refused == [
        (JUNIT_PATH, "junit.xml: archive member is 1099511627776 bytes, over the cap of 67108864")
    ]
    assert not host.files.junit.exists()
