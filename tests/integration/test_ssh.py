"""ssh:// machines against a real OpenSSH server (``scripts/sshd.sh``, started by ``scripts/provision.sh``).

The server logs root in with the client key in ``LRUN_TEST_SSH_DIR`` and runs
``docker system dial-stdio`` against the first test engine, so the ssh machine
is that engine over ssh. The Docker SDK's paramiko transport reads
``~/.ssh/config`` and ``~/.ssh/known_hosts`` from ``$HOME``: every test points
``HOME`` at a folder of its own holding them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import paramiko
import pytest
from lrun_support import PYTHON_IMAGE, write_tests

from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import EngineUnreachable
from pytest_lrun.engine.docker import connect

SUITE = """
    from pathlib import Path

    def test_passes():
        pass

    def test_fails():
        assert 41 == 42, "one widget too many"

    def test_writes_an_artifact():
        Path("/lrun/artifacts/report.txt").write_text("42 widgets checked\\n")
"""

# A home: (known_hosts text, identity file) -> the folder HOME points at.
MakeHome = Callable[[str, Path], Path]


@pytest.fixture
def ssh_engine() -> tuple[str, Path]:
    """The ssh URL of the test sshd and the folder of its client key and known_hosts line."""
    url, ssh_dir = os.environ.get("LRUN_TEST_SSH_HOST"), os.environ.get("LRUN_TEST_SSH_DIR")
    if not url or not ssh_dir:
        message = 'LRUN_TEST_SSH_HOST/LRUN_TEST_SSH_DIR unset: eval "$(scripts/provision.sh)" first'
        if os.environ.get("LRUN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url, Path(ssh_dir)


@pytest.fixture
def make_home(tmp_path: Path, ssh_engine: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> MakeHome:
    """Points HOME at a new folder whose ~/.ssh holds the given known_hosts and an IdentityFile."""
    host = urlparse(ssh_engine[0]).hostname
    # An agent of the developer's could offer keys of its own; these tests say which key is offered.
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def make(known_hosts: str, identity: Path) -> Path:
        home = tmp_path / f"home-{len(list(tmp_path.glob('home-*')))}"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "known_hosts").write_text(known_hosts)
        (home / ".ssh" / "config").write_text(f"Host {host}\n  IdentityFile {identity}\n")
        monkeypatch.setenv("HOME", str(home))
        return home

    return make


@pytest.fixture
def home(make_home: MakeHome, ssh_engine: tuple[str, Path]) -> Path:
    """A HOME whose ssh files let root in to the test sshd."""
    ssh_dir = ssh_engine[1]
    return make_home((ssh_dir / "known_hosts").read_text(), ssh_dir / "id_ed25519")


def _new_key(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _inner_results(junit: Path) -> dict[str, str]:
    """Inner node id -> outcome, from a host --junitxml, less the run's own report (it names the machine)."""
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        if "lrun[" not in case.get("name", ""):
            results[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return results


def _run_files(state_dir: Path, machine: str) -> tuple[str, dict[str, bytes]]:
    """The log (durations blanked) and artifact files of the one run of ``machine`` under ``state_dir``."""
    (record,) = [
        data
        for data in (json.loads(p.read_text()) for p in state_dir.glob("runs/*/run.json"))
        if data["machine"] == machine
    ]
    log = re.sub(r"\d+\.\d+s", "N.NNs", Path(record["logs_path"]).read_text())
    artifacts = Path(record["artifacts_path"])
    files = {str(p.relative_to(artifacts)): p.read_bytes() for p in artifacts.rglob("*") if p.is_file()}
    return log, files


def test_a_suite_on_an_ssh_machine_is_the_suite_on_the_local_engine(
    pytester: pytest.Pytester,
    project: Path,
    state_dir: Path,
    home: Path,
    ssh_engine: tuple[str, Path],
) -> None:
    """Remote == local: the same inner results, log and artifacts through sshd as on the engine's socket.

    m1 is the first test engine over its unix socket; ``far`` is the same engine through the
    ssh server, so any difference is the transport's.
    """
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + f'\n[tool.lrun.machines.far]\nhost = "{ssh_engine[0]}"\nimage = "{PYTHON_IMAGE}"\n'
    )
    write_tests(project, "suite", SUITE)
    results = {}
    for machine in ("m1", "far"):
        result = pytester.runpytest_subprocess(
            f"--lrun-machine={machine}", "suite", f"--junitxml={machine}.xml"
        )
        result.assert_outcomes(passed=2, failed=1)  # the inner tests (the run's own report is no test)
        result.stdout.fnmatch_lines(["*one widget too many*", f"suite *{machine} *failed *created *"])
        results[machine] = _inner_results(project / f"{machine}.xml")
    assert results["m1"] == {
        "suite.test_suite::test_passes": "passed",
        "suite.test_suite::test_fails": "failure",
        "suite.test_suite::test_writes_an_artifact": "passed",
    }
    assert results["far"] == results["m1"]
    local_log, local_artifacts = _run_files(state_dir, "m1")
    remote_log, remote_artifacts = _run_files(state_dir, "far")
    assert "one widget too many" in local_log
    assert remote_log == local_log
    assert local_artifacts == {"artifacts/report.txt": b"42 widgets checked\n"}
    assert remote_artifacts == local_artifacts


@pytest.mark.parametrize(
    "case, expected",
    [
        ("host key", r"ssh host key of 127\.0\.0\.1:\d+ is ssh-ed25519 SHA256:\S+, not the ssh-ed25519"),
        ("refused key", r"ssh server 127\.0\.0\.1:\d+ refused the login of 'root'"),
        ("unknown host", r"ssh host 127\.0\.0\.1:\d+ is not in ~/\.ssh/known_hosts"),
        ("closed port", r"nothing takes ssh connections at 127\.0\.0\.1:\d+: Connection refused"),
    ],
    ids=["host-key", "refused-key", "unknown-host", "closed-port"],
)
def test_an_ssh_login_that_fails_says_why(
    case: str, expected: str, make_home: MakeHome, ssh_engine: tuple[str, Path], tmp_path: Path
) -> None:
    url, ssh_dir = ssh_engine
    known_hosts, identity = (ssh_dir / "known_hosts").read_text(), ssh_dir / "id_ed25519"
    if case == "host key":
        other = _new_key(tmp_path / "other-host")
        known_hosts = f"{known_hosts.split()[0]} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n"
    elif case == "refused key":
        identity = _new_key(tmp_path / "stranger")
    elif case == "unknown host":
        known_hosts = ""
    else:
        with socket.socket() as probe:  # a port nothing listens on: bound, never listening
            probe.bind(("127.0.0.1", 0))
            url = f"ssh://root@127.0.0.1:{probe.getsockname()[1]}"
            make_home(known_hosts, identity)
            _assert_unreachable(url, expected)
        return
    make_home(known_hosts, identity)
    _assert_unreachable(url, expected)


def _assert_unreachable(url: str, expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(EngineUnreachable) as caught:
        connect(Machine(name="far", host=url, source="pyproject"), connect_timeout=5)
    assert time.monotonic() - started < 5
    assert (caught.value.machine, caught.value.url) == ("far", url)
    assert str(caught.value).startswith(f"machine 'far': engine at {url} is unreachable: ")
    assert re.search(expected, caught.value.reason), caught.value.reason


def test_a_host_key_that_does_not_match_fails_the_run_naming_the_machine(
    pytester: pytest.Pytester,
    project: Path,
    make_home: MakeHome,
    ssh_engine: tuple[str, Path],
    tmp_path: Path,
) -> None:
    url, ssh_dir = ssh_engine
    other = _new_key(tmp_path / "other-host")
    name = (ssh_dir / "known_hosts").read_text().split()[0]
    make_home(f"{name} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n", ssh_dir / "id_ed25519")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + f'\n[tool.lrun.machines.far]\nhost = "{url}"\nimage = "{PYTHON_IMAGE}"\n'
    )
    write_tests(project, "suite", SUITE)
    result = pytester.runpytest_subprocess("--lrun-machine=far", "--lrun-connect-timeout=5", "suite")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*machine 'far': engine at {url} is unreachable: ssh host key of *"])
    assert result.ret == 75


def test_a_dropped_ssh_session_is_made_again(home: Path, ssh_engine: tuple[str, Path]) -> None:
    """The session gone under the client (sshd restarted, a network blip): the next request logs in again."""
    engine = connect(Machine(name="far", host=ssh_engine[0], source="pyproject"), connect_timeout=5)
    try:
        ssh = engine._api.get_adapter("http+docker://ssh").ssh_client
        dropped = ssh.get_transport()
        dropped.close()
        engine.ping()
        assert ssh.get_transport() is not dropped and ssh.get_transport().is_active()
    finally:
        engine.close()


def test_sessions_past_maxsessions_are_an_unreachable_engine_that_says_so(
    home: Path, ssh_engine: tuple[str, Path]
) -> None:
    """sshd refuses an 11th session on one connection (MaxSessions): the error names the cause."""
    engine = connect(Machine(name="far", host=ssh_engine[0], source="pyproject"), connect_timeout=5)
    adapter = engine._api.get_adapter("http+docker://ssh")
    adapter.pools.clear()  # the idle channels: the next request must open a session
    held = []
    try:
        transport = adapter.ssh_client.get_transport()
        with pytest.raises(paramiko.ChannelException):
            for _ in range(20):
                held.append(transport.open_session(timeout=5))
        with pytest.raises(EngineUnreachable) as caught:
            engine.ping()
        assert caught.value.machine == "far"
        assert "refused another session" in caught.value.reason
        assert "MaxSessions" in caught.value.reason
    finally:
        for channel in held:
            channel.close()
        engine.close()
