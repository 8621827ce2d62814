"""The inner reporter in a real pytest process (this machine's pytest), read back by the host's parser.

Each case runs ``python -m pytest -p lrun_reporter`` in a pytester directory, as a
container would (the reporter found through ``PYTHONPATH``, no plugin
auto-loading, the token in the environment), and parses its standard output.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_lrun.wire import events
from pytest_lrun.wire.events import Collected, EventParser, Finished, Parsed, PhaseReport, Start, parse_log

INNER_DIR = Path(events.__file__).parents[1] / "inner"
TOKEN = events.new_token()
OTHER_TOKEN = events.new_token()
FORGED = "\x1elrun:%s " + '{"e":"finish","n":99,"exitstatus":0,"counts":{"passed":9},"interrupt":null}'

SUITE = f"""
import os
import sys

import pytest


@pytest.fixture
def broken():
    raise RuntimeError("setup boom")


def test_pass(record_property):
    record_property("ticket", 42)
    print("to stdout")
    print("to stderr", file=sys.stderr)


def test_fail():
    assert 1 == 2


def test_error(broken):
    pass


def test_skip():
    pytest.skip("not today")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


@pytest.mark.xfail
def test_xpass():
    pass


def test_forge():
    print({FORGED % OTHER_TOKEN!r})
    print({FORGED.replace("%s", "")!r})
    print("no newline", end="")


def test_token_is_hidden():
    assert "LRUN_EVENT_TOKEN" not in os.environ
"""

PHASES = {
    "test_suite.py::test_pass": [("setup", "passed"), ("call", "passed"), ("teardown", "passed")],
    "test_suite.py::test_fail": [("setup", "passed"), ("call", "failed"), ("teardown", "passed")],
    "test_suite.py::test_error": [("setup", "failed"), ("teardown", "passed")],
    "test_suite.py::test_skip": [("setup", "passed"), ("call", "skipped"), ("teardown", "passed")],
    "test_suite.py::test_xfail": [("setup", "passed"), ("call", "skipped"), ("teardown", "passed")],
    "test_suite.py::test_xpass": [("setup", "passed"), ("call", "passed"), ("teardown", "passed")],
    "test_suite.py::test_forge": [("setup", "passed"), ("call", "passed"), ("teardown", "passed")],
    "test_suite.py::test_token_is_hidden": [("setup", "passed"), ("call", "passed"), ("teardown", "passed")],
}


def inner_command(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *events.reporter_wiring(TOKEN).args,
        "-p",
        "no:cacheprovider",
        *args,
    ]


def inner_env(token: str | None) -> dict[str, str]:
    """This environment without pytest's and lrun's variables, plus the reporter's (PYTHONPATH here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LRUN_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # a user's image has no pytest-lrun to auto-load
    if token is not None:
        env.update(events.reporter_wiring(token).env)
    env["PYTHONPATH"] = str(INNER_DIR)
    return env


def run_inner(
    path: Path, *args: str, token: str | None = TOKEN
) -> tuple[Parsed, subprocess.CompletedProcess[bytes]]:
    done = subprocess.run(
        inner_command(*args), cwd=path, env=inner_env(token), capture_output=True, timeout=300, check=False
    )
    return parse_log(done.stdout, TOKEN), done


def reports(parsed: Parsed) -> dict[tuple[str, str], PhaseReport]:
    return {(e.nodeid, e.when): e for e in parsed.events if isinstance(e, PhaseReport)}


def phases(parsed: Parsed) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for e in parsed.events:
        if isinstance(e, PhaseReport):
            found.setdefault(e.nodeid, []).append((e.when, e.outcome))
    return found


@pytest.fixture
def suite(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(test_suite=SUITE)
    return pytester.path


@pytest.mark.parametrize("capture", [[], ["-s"], ["--capture=no"], ["--capture=sys"]], ids=str)
def test_every_phase_of_every_test_is_reported(suite: Path, capture: list[str]) -> None:
    parsed, done = run_inner(suite, *capture)
    assert parsed.warnings == 0
    assert done.returncode == 1, done.stdout.decode(errors="replace")
    kinds = [type(e) for e in parsed.events]
    assert kinds[0] is Collected and kinds[-1] is Finished
    assert [e.n for e in parsed.events] == sorted(e.n for e in parsed.events)

    (collected,) = [e for e in parsed.events if isinstance(e, Collected)]
    assert list(collected.nodeids) == list(PHASES)
    assert [e.nodeid for e in parsed.events if isinstance(e, Start)] == list(PHASES)
    assert phases(parsed) == PHASES

    by = reports(parsed)
    starts = {e.nodeid: e for e in parsed.events if isinstance(e, Start)}
    assert "assert 1 == 2" in (by["test_suite.py::test_fail", "call"].longrepr or "")
    assert "setup boom" in (by["test_suite.py::test_error", "setup"].longrepr or "")
    skip = by["test_suite.py::test_skip", "call"].skip
    assert skip is not None and skip.path.endswith("test_suite.py") and "not today" in skip.reason
    assert by["test_suite.py::test_xfail", "call"].wasxfail == "known bug"
    assert by["test_suite.py::test_xpass", "call"].wasxfail == ""
    assert by["test_suite.py::test_pass", "call"].wasxfail is None
    assert by["test_suite.py::test_pass", "call"].user_properties == (("ticket", "42"),)
    assert "xfail" in by["test_suite.py::test_xfail", "setup"].keywords  # sent once, with the first report
    assert by["test_suite.py::test_xfail", "call"].keywords == ()  # the host reuses them
    lineno = (suite / "test_suite.py").read_text().splitlines().index("def test_fail():")
    assert starts["test_suite.py::test_fail"].location == ("test_suite.py", lineno, "test_fail")
    assert by["test_suite.py::test_fail", "call"].location is None  # equal to the start's: left out
    assert all(r.duration >= 0 for r in by.values())

    # The forged lines are output (captured, or in the log with -s), never events.
    forged = [(FORGED % OTHER_TOKEN).encode(), FORGED.replace("%s", "").encode()]
    pass_call = by["test_suite.py::test_pass", "call"]
    forge_call = by["test_suite.py::test_forge", "call"]
    if capture in (["-s"], ["--capture=no"]):
        assert pass_call.sections == ()
        assert b"to stdout\n" in parsed.output
        assert all(f + b"\n" in parsed.output for f in forged)
        assert b"no newline" in parsed.output  # an event right after it took nothing away
    else:
        assert ("Captured stdout call", "to stdout\n") in pass_call.sections
        assert ("Captured stderr call", "to stderr\n") in pass_call.sections
        captured = dict(forge_call.sections)["Captured stdout call"]
        assert captured == "".join(f.decode() + "\n" for f in forged) + "no newline"
    (finish,) = [e for e in parsed.events if isinstance(e, Finished)]
    assert finish.exitstatus == 1
    assert finish.counts == {"passed": 3, "failed": 1, "error": 1, "skipped": 1, "xfailed": 1, "xpassed": 1}
    assert finish.interrupt is None
    assert b"\x1elrun:" + TOKEN.encode() not in parsed.output
    assert b"\x1e" not in done.stderr


def test_without_a_token_the_reporter_is_silent(suite: Path) -> None:
    parsed, done = run_inner(suite, token=None)
    assert b"\x1e" not in done.stdout.replace(b"\\x1e", b"")
    assert parsed.events == ()
    assert done.returncode == 1
    assert b"1 failed, 3 passed, 1 skipped, 1 xfailed, 1 xpassed, 1 error" in done.stdout


def test_collection_errors_module_skips_and_deselection_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_broken="def test_x(:\n",
        test_away="import pytest\npytest.skip('module away', allow_module_level=True)\n",
        test_ok="def test_one():\n    pass\n\ndef test_two():\n    pass\n",
    )
    parsed, _ = run_inner(pytester.path, "-k", "one")
    assert parsed.warnings == 0
    collected, finish = parsed.events
    assert isinstance(collected, Collected) and isinstance(finish, Finished)
    assert collected.nodeids == ("test_ok.py::test_one",)
    (error,) = collected.errors
    assert error.nodeid == "test_broken.py" and "SyntaxError" in error.longrepr
    (skipped,) = collected.skipped
    assert skipped.nodeid == "test_away.py" and "module away" in skipped.skip.reason
    # pytest stops after a collection error; the finish says so and counts what its summary counts.
    assert finish.exitstatus == int(pytest.ExitCode.INTERRUPTED)
    assert finish.counts == {"error": 1, "skipped": 1, "deselected": 1}


def test_long_captured_output_is_cut_so_each_event_stays_under_the_cap(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_loud="""
        def test_loud():
            print("first")
            print("x" * (3 * 1024 * 1024))
            print("last")
            assert False, "y" * (2 * 1024 * 1024)
        """
    )
    parsed, done = run_inner(pytester.path)
    assert parsed.warnings == 0
    for raw in done.stdout.split(b"\n"):
        if raw.startswith(b"\x1elrun:"):
            assert len(raw) <= events.MAX_EVENT_BYTES + 100
    call = reports(parsed)["test_loud.py::test_loud", "call"]
    stdout = dict(call.sections)["Captured stdout call"]
    assert stdout.startswith("first\n") and stdout.endswith("last\n") and "characters cut]" in stdout
    assert call.outcome == "failed" and call.longrepr is not None and "characters cut]" in call.longrepr


def test_a_long_collection_arrives_in_parts_and_parses_as_one_event(pytester: pytest.Pytester) -> None:
    count = 6000  # ids of ~250 characters: about 1.5 MiB of node ids, more than one event holds
    pytester.makepyfile(
        test_many=f"""
        import pytest

        @pytest.mark.parametrize("i", range({count}), ids=lambda i: f"{{i:05d}}" + "-" * 200)
        def test_many(i):
            pass
        """
    )
    parsed, done = run_inner(pytester.path, "--collect-only", "-q")
    assert done.stdout.count(b'{"e":"collected"') >= 2
    assert parsed.warnings == 0
    (collected,) = [e for e in parsed.events if isinstance(e, Collected)]
    assert len(collected.nodeids) == count
    assert collected.nodeids[-1] == f"test_many.py::test_many[{count - 1:05d}{'-' * 200}]"


def test_sigint_keeps_the_finished_reports_and_names_where_the_session_stopped(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_hang="""
        import time

        def test_before():
            pass

        def test_hang():
            time.sleep(300)

        def test_after():
            pass
        """
    )
    proc = subprocess.Popen(
        inner_command(),
        cwd=pytester.path,
        env=inner_env(TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    parser = EventParser(TOKEN)
    seen: list[events.Event] = []
    deadline = time.monotonic() + 60
    try:
        # Read the live stream as the host does, and interrupt once test_hang has started.
        while not any(isinstance(e, Start) and e.nodeid == "test_hang.py::test_hang" for e in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "test_hang never started"
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            assert chunk or not ready, "the inner pytest ended before test_hang started"
            seen += parser.feed(chunk).events
        time.sleep(0.2)  # let it reach the sleep
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen += parser.feed(rest).events + parser.close().events
    done = {(e.nodeid, e.when): e.outcome for e in seen if isinstance(e, PhaseReport)}
    assert done == {
        ("test_hang.py::test_before", "setup"): "passed",
        ("test_hang.py::test_before", "call"): "passed",
        ("test_hang.py::test_before", "teardown"): "passed",
        ("test_hang.py::test_hang", "setup"): "passed",
    }
    finish = seen[-1]
    assert isinstance(finish, Finished)
    assert finish.exitstatus == int(pytest.ExitCode.INTERRUPTED)
    assert finish.interrupt is not None
    assert "KeyboardInterrupt" in finish.interrupt and "time.sleep(300)" in finish.interrupt
    assert "test_hang.py" in finish.interrupt
