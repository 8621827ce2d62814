"""ssh:// machines without an ssh server: the connect timeout, and the extra that brings paramiko.

Logins against a real OpenSSH server (host keys, refused keys, closed ports, the
same suite as on the local engine) are in tests/integration/test_ssh.py.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import EngineUnreachable, ExtraMissing
from pytest_lrun.engine.docker import connect


@pytest.fixture(autouse=True)
def _empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.ssh of the developer's (config, known hosts, agent) takes part."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts TCP connections (the kernel does) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _machine(url: str) -> Machine:
    return Machine(name="far", host=url, source="pyproject")


def test_a_server_that_never_greets_fails_within_the_connect_timeout(silent_port: int) -> None:
    """paramiko alone waits 15 s for the banner; the connect timeout bounds it."""
    url = f"ssh://root@127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(EngineUnreachable) as caught:
        connect(_machine(url), connect_timeout=1)
    assert time.monotonic() - started < 5
    assert caught.value.reason == f"no ssh answer from 127.0.0.1:{silent_port} within 1 s"
    assert str(caught.value).startswith(
        f"machine 'far': engine at {url} is unreachable: {caught.value.reason}. "
    )


def test_an_ssh_machine_without_paramiko_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paramiko", None)  # import paramiko now raises ImportError
    with pytest.raises(ExtraMissing) as caught:
        connect(_machine("ssh://root@127.0.0.1:2222"), connect_timeout=1)
    assert caught.value.extra == "ssh"
    assert str(caught.value) == (
        "machine 'far' at ssh://root@127.0.0.1:2222 needs the 'paramiko' module: "
        "install it with pip install 'pytest-lrun[ssh]'"
    )
