"""The terminal reserve: refused before anything runs, allocated for real, given back at the end.

A disk that really fills (a small tmpfs under a real run) is tests/integration/test_full_disk.py.
"""

from __future__ import annotations

import errno
import os
from collections import namedtuple
from pathlib import Path

import pytest

from pytest_lrun.core.errors import StateFull
from pytest_lrun.core.reserve import check_room, claim
from pytest_lrun.run.logs import EventSpool, LogSpool
from pytest_lrun.store import Decision, Run, Status
from pytest_lrun.store.files import FileStore

Usage = namedtuple("Usage", "total used free")


def test_a_state_dir_with_less_room_than_the_reserve_refuses_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.disk_usage", lambda _path: Usage(10 << 20, (10 << 20) - 1000, 1000))
    with pytest.raises(StateFull) as info:
        check_room(tmp_path, 1 << 20)
    assert info.value.code == "state_full"
    assert str(tmp_path) in str(info.value) and "1000 bytes free" in str(info.value)
    check_room(tmp_path, 1000)  # exactly enough is enough


def test_the_reserve_is_allocated_blocks_not_a_sparse_promise(tmp_path: Path) -> None:
    claim(tmp_path / "reserve", 1 << 20, tmp_path)
    st = os.stat(tmp_path / "reserve")
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20


def test_a_reserve_the_disk_cannot_hold_is_state_full_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(_fd: int, _offset: int, _size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(StateFull):
        claim(tmp_path / "reserve", 1 << 20, tmp_path)
    assert not (tmp_path / "reserve").exists()


def test_ending_a_run_gives_its_reserve_to_the_final_record(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state", durable=False)
    run, decision = store.prepare("m1", "k", lambda: Run(test_dir="/t"))
    assert decision is Decision.CREATED
    reserve = store.files(run.id).reserve
    claim(reserve, 4096, store.state_dir)
    store.end(run, Status.COMPLETED)
    assert not reserve.exists()
    assert store.get(run.id).status is Status.COMPLETED


class FullFile:
    """A file whose writes fail as on a full disk."""

    def write(self, _data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_the_spools_drop_what_a_full_disk_refuses_and_say_so(tmp_path: Path) -> None:
    log = LogSpool(tmp_path / "logs.txt", max_bytes=1 << 20)
    log._file.close()
    log._file = FullFile()  # type: ignore[assignment]
    assert log.write(b"still shown live\n") == b"still shown live\n"  # the terminal keeps it
    assert log.lost
    log.close()
    events = EventSpool(tmp_path / "events.jsonl")
    events._file.close()
    events._file = FullFile()  # type: ignore[assignment]
    events._append(b"{}\n")
    assert events.lost
    events.close()


def test_another_write_error_is_not_taken_for_a_full_disk(tmp_path: Path) -> None:
    class Broken(FullFile):
        def write(self, _data: bytes) -> int:
            raise OSError(errno.EIO, "Input/output error")

    log = LogSpool(tmp_path / "logs.txt", max_bytes=1 << 20)
    log._file.close()
    log._file = Broken()  # type: ignore[assignment]
    with pytest.raises(OSError, match="Input/output error"):
        log.write(b"x\n")


def test_the_reserve_makes_the_run_folder_a_shared_store_has_not_made_yet(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "20261125T000000-0000abcd"
    claim(folder / "reserve", 4096, tmp_path)
    assert (folder / "reserve").stat().st_size == 4096
    assert folder.stat().st_mode & 0o777 == 0o700
