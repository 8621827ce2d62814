"""The state dir must be private, and a run's folder never leads writes elsewhere.

Whoever can write a state dir can forge run records (a cached "completed" result for a
suite that never ran) or plant a symlink where a run's files go. So both stores refuse a
state dir (or one of its folders) that another user owns or that group or others may
write, with an error naming it and the fix; one the store creates is 0700. And artifacts
read back from a container are never written through a symlink planted in a run's folder.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from pytest_lrun.cli import main
from pytest_lrun.core.errors import EXIT_BAD_INPUT, ConfigError
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.engine import Engine
from pytest_lrun.run.logs import EventSpool, LogSpool
from pytest_lrun.run.readback import JUNIT_PATH, collect
from pytest_lrun.store import Candidate, Decision, Run, Ticket
from pytest_lrun.store.files import FileStore
from pytest_lrun.store.postgres import PostgresStore
from pytest_lrun.tree.extract import STREAM, safe_extract
from pytest_lrun.tree.hashing import hash_dir

STRANGER = 4242  # a uid that is not the test's
STATE_DIR_DOC = (Path(__file__).parents[2] / "docs" / "state-dir.md").read_text()


def make_dir(path: Path, mode: int) -> Path:
    path.mkdir()
    os.chmod(path, mode)  # past the umask
    return path


def open_file_store(path: Path) -> None:
    FileStore(path, durable=False)


def open_postgres_store(path: Path) -> None:
    # The state dir is checked before the database is ever asked: no server needed to refuse it.
    PostgresStore("postgresql://lrun@127.0.0.1:1/none", path)


StoreOpener = Callable[[Path], None]
STORES = pytest.mark.parametrize(
    "open_store", [open_file_store, open_postgres_store], ids=["files", "postgres"]
)


def test_a_state_dir_the_store_creates_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    FileStore(state, durable=False)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "runs").stat().st_mode) == 0o700


def test_every_folder_the_file_store_makes_is_private_as_the_docs_say(tmp_path: Path) -> None:
    """durations/, hashcache/ and queue/ are made on first use, 0700 whatever the umask lets through."""
    state = tmp_path / "state"
    store = FileStore(state, durable=False)
    old = os.umask(0o022)
    try:
        store.save_durations("suite", {"test_x.py::test_y": 1.5})  # durations/
        tree = make_dir(tmp_path / "tree", 0o755)
        (tree / "test_x.py").write_text("def test_y(): pass\n")
        time.sleep(0.2)  # settled (its ctime older than the hash by the racy window): its digest is cached
        hash_dir(tree, cache_dir=store.hashcache_dir)  # hashcache/
        store.place([Candidate("m", "k1")], lambda _: Run(test_dir=str(tree)))
        busy = store.place([Candidate("m", "k2")], lambda _: Run(test_dir=str(tree)), ticket=Ticket("t", 1.0))
        assert busy[1] is Decision.BUSY  # queue/: the waiter's line
    finally:
        os.umask(old)
    folders = {path.relative_to(state).parts[0] for path in state.rglob("*") if path.is_dir()}
    assert {"durations", "hashcache", "queue"} <= folders
    loose = {
        str(path.relative_to(state)): oct(stat.S_IMODE(path.stat().st_mode))
        for path in (state, *state.rglob("*"))
        if path.is_dir() and stat.S_IMODE(path.stat().st_mode) != 0o700
    }
    assert loose == {}
    layout = STATE_DIR_DOC.split("\n## The state dir\n", 1)[1].split("```", 2)[1]
    for folder in folders:
        assert f"\n{folder}/" in layout, f"{folder}/ is missing from docs/state-dir.md's layout"


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755])
def test_a_private_or_read_only_shared_state_dir_is_used(tmp_path: Path, mode: int) -> None:
    state = make_dir(tmp_path / "state", mode)
    FileStore(state, durable=False)
    assert (state / "runs").is_dir()


@pytest.mark.postgres
def test_the_postgres_store_uses_a_private_state_dir_and_creates_one(
    tmp_path: Path, fresh_database: str
) -> None:
    kept = make_dir(tmp_path / "kept", 0o755)
    for state in (kept, tmp_path / "fresh"):
        PostgresStore(fresh_database, state).close()
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    assert stat.S_IMODE((kept / "runs").stat().st_mode) == 0o700


@STORES
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777, 0o720])
def test_a_state_dir_others_may_write_is_refused_with_the_fix(
    tmp_path: Path, open_store: StoreOpener, mode: int
) -> None:
    state = make_dir(tmp_path / "state", mode)
    with pytest.raises(ConfigError) as info:
        open_store(state)
    assert info.value.source == f"state dir {state}"
    assert f"writable by group or others (mode {stat.S_IMODE(mode):04o})" in info.value.reason
    assert info.value.reason.endswith(f"fix it with: chmod 700 {state}")
    assert not (state / "runs").exists()  # nothing is written into it


@STORES
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path, open_store: StoreOpener) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another uid needs root")
    state = make_dir(tmp_path / "state", 0o700)
    os.chown(state, STRANGER, STRANGER)
    with pytest.raises(ConfigError) as info:
        open_store(state)
    assert info.value.source == f"state dir {state}"
    assert info.value.reason.startswith(f"owned by uid {STRANGER}, not by you (uid 0)")
    assert "use a state dir of your own" in info.value.reason


def test_ownership_is_judged_against_the_effective_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_dir(tmp_path / "state", 0o700)
    owner = state.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match=rf"owned by uid {owner}, not by you \(uid {owner + 1}\)"):
        FileStore(state, durable=False)


def test_a_folder_of_the_state_dir_others_may_write_is_refused_by_name(tmp_path: Path) -> None:
    state = make_dir(tmp_path / "state", 0o755)
    runs = make_dir(state / "runs", 0o777)
    with pytest.raises(ConfigError) as info:
        FileStore(state, durable=False)
    assert info.value.source == f"state dir {runs}"
    assert info.value.reason.endswith(f"chmod 700 {runs}")


def test_a_symlinked_state_dir_is_judged_by_the_folder_it_leads_to(tmp_path: Path) -> None:
    shared = make_dir(tmp_path / "shared", 0o777)
    link = tmp_path / "state"
    link.symlink_to(shared)
    with pytest.raises(ConfigError, match="writable by group or others"):
        FileStore(link, durable=False)


def test_lrun_names_the_state_dir_and_exits_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_dir(tmp_path / "state", 0o777)
    assert main(["runs", "--state-dir", str(state)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"state dir {state}: writable by group or others" in err
    assert f"chmod 700 {state}" in err


# --- artifacts and a planted symlink ---------------------------------------------------


def one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class OneArchive:
    """The archive half of an Engine: the artifacts folder holds one file, and the JUnit XML is there."""

    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        return False

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None:
        if path == "/lrun/artifacts":
            return iter([one_file_tar("artifacts/report.txt", b"42\n")])
        if path == JUNIT_PATH:
            return iter([one_file_tar("junit.xml", b"<testsuite/>")])
        return None


@pytest.fixture
def run_files(tmp_path: Path) -> RunFiles:
    files = RunFiles(tmp_path / "state" / "runs" / "r-1")
    files.dir.mkdir(parents=True)
    return files


RUN = Run(id="r-1", machine="m", test_dir="/t", container_id="c-1", artifacts=["/lrun/artifacts"])


def test_artifacts_are_never_written_through_a_symlink_planted_in_the_run_folder(
    tmp_path: Path, run_files: RunFiles
) -> None:
    files = run_files
    elsewhere = make_dir(tmp_path / "elsewhere", 0o700)
    files.artifacts.symlink_to(elsewhere)

    refused = collect(files, RUN, cast(Engine, OneArchive()))

    assert list(elsewhere.iterdir()) == []
    # The run's artifacts are where the user looks for them, in a folder of the run's own.
    assert refused == []
    assert not files.artifacts.is_symlink()
    assert (files.artifacts / "artifacts" / "report.txt").read_bytes() == b"42\n"


def test_extraction_never_follows_a_destination_that_is_a_symlink(tmp_path: Path) -> None:
    # Whoever calls it, safe_extract writes into the folder it was given, never where a link leads.
    elsewhere = make_dir(tmp_path / "elsewhere", 0o700)
    dest = tmp_path / "artifacts"
    dest.symlink_to(elsewhere)

    result = safe_extract([one_file_tar("report.txt", b"42\n")], dest)

    assert list(elsewhere.iterdir()) == []
    assert result.written == []
    assert result.refused == [(STREAM, f"{dest} is a symbolic link: nothing was extracted")]


def test_the_junit_xml_is_never_written_through_a_symlink_planted_in_the_run_folder(
    tmp_path: Path, run_files: RunFiles
) -> None:
    target = tmp_path / "elsewhere.xml"
    target.write_bytes(b"mine\n")
    run_files.junit.symlink_to(target)

    collect(run_files, RUN, cast(Engine, OneArchive()))

    assert target.read_bytes() == b"mine\n"
    assert run_files.junit.read_bytes() == b"<testsuite/>"


@pytest.mark.parametrize("name", ["logs.txt", "events.jsonl"])
def test_the_log_and_events_are_never_written_through_a_symlink_planted_in_the_run_folder(
    tmp_path: Path, name: str
) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"mine\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / name).symlink_to(target)
    spool_class = LogSpool if name == "logs.txt" else EventSpool
    for fresh in (False, True):
        with pytest.raises(OSError):
            spool_class(folder / name, max_bytes=1 << 20, fresh=fresh)
    assert target.read_bytes() == b"mine\n"
