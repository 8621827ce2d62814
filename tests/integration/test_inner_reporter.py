"""The inner reporter inside real containers: Debian bookworm's pytest 7.2 and a current pytest (>= 8).

Each case creates a container from the image with the docker SDK, puts the
reporter (as :func:`pytest_lrun.wire.events.reporter_file` ships it) and a small test
file into it, runs ``python3 -m pytest`` with :func:`reporter_wiring`'s arguments
and environment, and parses the engine's log as it streams and again as a whole.
"""

from __future__ import annotations

import io
import re
import tarfile
import textwrap
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from lrun_support import PYTHON_CURRENT_IMAGE, PYTHON_IMAGE

from pytest_lrun.wire import events
from pytest_lrun.wire.events import Collected, EventParser, Finished, Parsed, PhaseReport, parse_log

TEST_LABEL = "lrun-tests.inner-reporter"
TOKEN = events.new_token()
FORGED = "\x1elrun:0123456789abcdef " + '{"e":"finish","n":99,"exitstatus":0,"counts":{},"interrupt":null}'

SUITE = f"""
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("setup boom")


def test_pass():
    print("to stdout")


def test_fail():
    assert 1 == 2


def test_error(broken):
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


def test_forge():
    print({FORGED!r})
"""


# Many quick tests: their events share lines.
MANY_TESTS = 200
MANY = f"""
import pytest


@pytest.mark.parametrize("i", range({MANY_TESTS}))
def test_quick(i):
    pass
"""


def upload(suite: str) -> bytes:
    """The reporter and ``suite``, as a tar for ``put_archive`` at ``/``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in (
            events.reporter_file(),
            ("lrun/work/test_inner.py", textwrap.dedent(suite).encode()),
        ):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def containers(api: Any) -> Iterator[list[str]]:
    """Ids of the containers a test creates (labelled), removed after it."""
    created: list[str] = []
    yield created
    for container_id in created:
        api.remove_container(container_id, force=True, v=True)


def run_in(
    api: Any, image: str, created: list[str], *args: str, suite: str = SUITE, status: int = 1
) -> tuple[Parsed, Parsed, bytes]:
    """Run ``suite`` in ``image``: the log parsed as it streamed, parsed again whole (a replay), and raw."""
    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the engine has no {image}: run scripts/provision.sh")
    wiring = events.reporter_wiring(TOKEN)
    container = api.create_container(
        image,
        command=["python3", "-m", "pytest", *wiring.args, "-p", "no:cacheprovider", *args, "/lrun/work"],
        environment=wiring.env,
        working_dir="/lrun/work",
        labels={TEST_LABEL: "1"},
        network_disabled=True,
    )
    container_id = str(container["Id"])
    created.append(container_id)
    api.put_archive(container_id, "/", upload(suite))
    api.start(container_id)
    parser = EventParser(TOKEN)
    pieces = [parser.feed(chunk) for chunk in api.logs(container_id, stream=True, follow=True)]
    pieces.append(parser.close())
    assert api.wait(container_id, timeout=120)["StatusCode"] == status
    live = Parsed(
        b"".join(p.output for p in pieces), tuple(e for p in pieces for e in p.events), parser.warnings
    )
    log = api.logs(container_id, stream=False)
    return live, parse_log(log, TOKEN), log


@pytest.mark.parametrize("capture", [[], ["-s"]], ids=["captured", "-s"])
@pytest.mark.parametrize(("image", "majors"), [(PYTHON_IMAGE, {7}), (PYTHON_CURRENT_IMAGE, {8, 9, 10})])
def test_the_reporter_reports_every_phase_from_the_images_pytest(
    api: Any, containers: list[str], image: str, majors: set[int], capture: list[str]
) -> None:
    live, replay, _ = run_in(api, image, containers, *capture)
    assert live == replay
    assert live.warnings == 0
    version = re.search(rb"platform linux -- Python 3\.\d+\.\d+, pytest-(\d+)\.", live.output)
    assert version, live.output.decode(errors="replace")
    assert int(version.group(1)) in majors

    collected, finish = live.events[0], live.events[-1]
    assert isinstance(collected, Collected) and isinstance(finish, Finished)
    names = ["test_pass", "test_fail", "test_error", "test_xfail", "test_forge"]
    assert collected.nodeids == tuple(f"test_inner.py::{name}" for name in names)
    by = {(e.nodeid.split("::")[1], e.when): e for e in live.events if isinstance(e, PhaseReport)}
    expected = {(name, when): "passed" for name in names for when in ("setup", "call", "teardown")}
    del expected["test_error", "call"]  # a failed setup: no call
    expected.update({("test_fail", "call"): "failed", ("test_error", "setup"): "failed"})
    expected["test_xfail", "call"] = "skipped"
    assert {key: report.outcome for key, report in by.items()} == expected
    assert "assert 1 == 2" in (by["test_fail", "call"].longrepr or "")
    assert "setup boom" in (by["test_error", "setup"].longrepr or "")
    assert by["test_xfail", "call"].wasxfail == "known bug"
    # The forged line is the test's output, captured or in the log, never a result.
    if capture:
        assert b"to stdout\n" in live.output and FORGED.encode() + b"\n" in live.output
    else:
        assert ("Captured stdout call", "to stdout\n") in by["test_pass", "call"].sections
        assert ("Captured stdout call", FORGED + "\n") in by["test_forge", "call"].sections
    assert finish.exitstatus == 1
    assert finish.counts == {"passed": 2, "failed": 1, "error": 1, "xfailed": 1}
    assert b"\x1elrun:" + TOKEN.encode() not in live.output
    assert b"1 failed, 2 passed, 1 xfailed, 1 error" in live.output


@pytest.mark.parametrize("image", [PYTHON_IMAGE, PYTHON_CURRENT_IMAGE])
def test_the_reporter_writes_many_events_to_a_line(api: Any, containers: list[str], image: str) -> None:
    live, replay, log = run_in(api, image, containers, suite=MANY, status=0)
    assert live == replay
    assert live.warnings == 0
    # The collection, a start and three reports a test, the finish: every one arrives...
    assert len(live.events) == 1 + 4 * MANY_TESTS + 1
    assert [e.n for e in live.events] == list(range(len(live.events)))
    assert isinstance(live.events[-1], Finished) and live.events[-1].counts == {"passed": MANY_TESTS}
    # ...in a few lines: the engine stores (and the host reads) one log line for many events. The
    # bound also needs the session's thread to write the long lines: the timer's (4 KiB) need ~60.
    lines = log.count(b"\x1elrun:" + TOKEN.encode())
    assert lines <= len(live.events) // 25, lines
