"""Fleets on real engines: machines chosen by tag, several runs at once on an engine with slots.

The project's machines m1 (two slots) and m2 (one slot) both carry the tag
``pool``; a plan of five two-second entries on ``tag:pool`` must use both
engines, never run more at once on one than its slots, and finish in far less
than the sum of its entries.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from lrun_support import PYTHON_IMAGE, container_spans, lrun_containers, most_at_once, wait_for, write_tests

from pytest_lrun.core.times import parse_time

SLEEPS = """
    import time


    def test_sleeps():
        time.sleep(2)
"""


@pytest.fixture
def pool(pytester: pytest.Pytester, project: Path, engines: list[str]) -> Path:
    pytester.makepyprojecttoml(
        textwrap.dedent(
            f"""
            [tool.lrun.machines.m1]
            host = "{engines[0]}"
            image = "{PYTHON_IMAGE}"
            tags = ["pool"]
            slots = 2

            [tool.lrun.machines.m2]
            host = "{engines[1]}"
            image = "{PYTHON_IMAGE}"
            tags = ["pool"]
            """
        )
    )
    write_tests(project, "sleeps", SLEEPS)
    # Five entries with five keys (the env is part of the key): five runs, not one reused.
    entries = "".join(
        f'[[entry]]\nname = "e{i}"\ndir = "sleeps"\nmachine = "tag:pool"\nenv = {{ N = "{i}" }}\n\n'
        for i in range(5)
    )
    (project / "plan.toml").write_text(entries)
    return project


def test_a_tag_spreads_runs_over_its_machines_within_their_slots(
    pytester: pytest.Pytester, pool: Path, state_dir: Path, engines: list[str]
) -> None:
    began = time.time()
    result = pytester.runpytest_subprocess("--lrun-plan=plan.toml", "-rA")
    result.assert_outcomes(passed=5)
    records = [json.loads((d / "run.json").read_text()) for d in (state_dir / "runs").iterdir()]
    assert len(records) == 5 and all(r["status"] == "completed" for r in records)
    assert {r["machine"] for r in records} == {"m1", "m2"}, records  # both machines of the tag were used
    # The containers' own lives, from each engine: a slot is held from start to exit (this
    # session's runs only: an earlier test's container may still be going away meanwhile).
    ids = {r["id"] for r in records}
    lives = {
        m: container_spans(url, began, time.time()) for m, url in (("m1", engines[0]), ("m2", engines[1]))
    }
    spans = {m: {run: span for run, span in found.items() if run in ids} for m, found in lives.items()}
    assert sum(len(s) for s in spans.values()) == 5, (spans, records)
    assert most_at_once(list(spans["m1"].values())) <= 2, spans
    assert most_at_once(list(spans["m2"].values())) <= 1, spans
    assert most_at_once([span for machine in spans.values() for span in machine.values()]) >= 2, spans
    result.stdout.fnmatch_lines(["lrun: tag:pool: dispatching sleeps (e0)*"])
    # Far less than five entries one after another, with start-up.
    assert result.duration < 5 * 2 + 8, result.duration
    # Removed off the runs' path while the next ones started, and all gone once pytest returned.
    assert lrun_containers(engines, {r["id"] for r in records}) == []


def test_lrun_machines_shows_tags_and_slots_in_use(pool: Path, state_dir: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", "machines", "--json"],
        cwd=pool,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = {row["name"]: row for row in json.loads(out)["machines"]}
    assert (rows["m1"]["tags"], rows["m1"]["slots"], rows["m1"]["free"]) == (["pool"], 2, 2)
    assert rows["m2"]["reachable"] is True and rows["m2"]["slots"] == 1


MANY = "\n".join(f"def test_{i}():\n    assert {i} != 7\n" for i in range(12))


def _shard_rows(result: pytest.RunResult) -> dict[str, str]:
    """Shard -> origin, from the summary table."""
    rows = [line.split() for line in result.outlines if line.startswith("many [")]
    return {row[1]: row[5] for row in rows}


def test_shards_split_a_suite_report_each_test_once_and_rerun_only_the_failed_shard(
    pytester: pytest.Pytester, pool: Path, state_dir: Path
) -> None:
    write_tests(pool, "many", MANY)
    first = pytester.runpytest_subprocess("--lrun-machine=tag:pool", "many", "--lrun-shards=3", "-rA")
    first.assert_outcomes(passed=11, failed=1)
    reported = [line.split()[1] for line in first.outlines if line.startswith(("PASSED ", "FAILED "))]
    # Each inner test once, with the node id it has without sharding.
    assert sorted(reported) == sorted(f"many/test_many.py::test_{i}" for i in range(12))
    assert set(_shard_rows(first)) == {"[1/3]", "[2/3]", "[3/3]"}
    runs = [json.loads((d / "run.json").read_text()) for d in (state_dir / "runs").iterdir()]
    shards = [r for r in runs if "--collect-only" not in r["command"]]
    assert len(shards) == 3 and {r["machine"] for r in shards} == {"m1", "m2"}
    # Each shard's container ran only its own tests: their node ids are in its command.
    ran = sorted(arg for r in shards for arg in r["command"] if arg.startswith("test_many.py::"))
    assert ran == sorted(f"test_many.py::test_{i}" for i in range(12))

    again = pytester.runpytest_subprocess(
        "--lrun-machine=tag:pool", "many", "--lrun-shards=3", "--lrun-reuse=completed", "-rA"
    )
    again.assert_outcomes(passed=11, failed=1)
    # Quick tests split the same with their recorded durations: the same keys. The two shards that
    # completed are cached; only the one holding the failure runs again.
    assert sorted(_shard_rows(again).values()) == ["cached", "cached", "created"]
    # The inner collection ran once, even for an invocation that reuses nothing else: the same
    # directory and command collect the same tests.
    third = pytester.runpytest_subprocess("--lrun-machine=tag:pool", "many", "--lrun-shards=3")
    third.assert_outcomes(passed=11, failed=1)
    records = [json.loads((d / "run.json").read_text()) for d in (state_dir / "runs").iterdir()]
    assert sum("--collect-only" in r["command"] for r in records) == 1


def test_waiting_invocations_get_the_machine_in_the_order_they_came(
    pytester: pytest.Pytester, project: Path, state_dir: Path
) -> None:
    import subprocess
    import sys
    import time

    for name, seconds in (("holder", 4), ("early", 1), ("late", 1)):
        write_tests(project, name, f"import time\n\ndef test_it():\n    time.sleep({seconds})\n")

    def start(name: str) -> subprocess.Popen[str]:
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lrun-machine=m1", name]
        return subprocess.Popen(
            [*args, "--lrun-busy-wait=120"],
            cwd=project,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    procs = [start("holder")]
    wait_for(lambda: any(state_dir.glob("runs/*/run.json")), "the holder's run to be recorded")
    time.sleep(1)
    procs.append(start("early"))
    time.sleep(2)  # early is in line before late comes
    procs.append(start("late"))
    outs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outs
    records = {
        Path(r["test_dir"]).name: r
        for r in (json.loads((d / "run.json").read_text()) for d in (state_dir / "runs").iterdir())
    }
    order = sorted(records, key=lambda name: parse_time(records[name]["started_at"]))
    assert order == ["holder", "early", "late"], order


def test_a_run_staged_while_the_slot_is_busy_starts_only_when_it_frees(
    pytester: pytest.Pytester, project: Path, state_dir: Path, engines: list[str]
) -> None:
    """m1 has one slot: the next directory's run is placed one past it, its labelled container made
    and filled while the slot is busy, and started only once the run before it ended."""
    import docker

    for name in ("a", "b", "c"):
        write_tests(project, name, SLEEPS.replace("time.sleep(2)", "time.sleep(1)"))
    began = time.time()
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-keep=always", "a", "b", "c")
    result.assert_outcomes(passed=3)
    records = sorted(
        (json.loads((d / "run.json").read_text()) for d in (state_dir / "runs").iterdir()),
        key=lambda r: parse_time(r["started_at"]),
    )
    ids = {r["id"] for r in records}
    spans = {run: span for run, span in container_spans(engines[0], began, time.time()).items() if run in ids}
    assert sorted(spans) == sorted(ids), spans
    assert most_at_once(list(spans.values())) == 1, spans  # never past the machine's slot
    # Staged: recorded (and its container made) before the run ahead of it ended.
    staged = [
        r
        for r, before in zip(records[1:], records, strict=False)
        if parse_time(r["created_at"]) < parse_time(before["ended_at"])
    ]
    assert staged, records
    client = docker.APIClient(base_url=engines[0], version="auto")
    try:
        for run in records:  # each container labelled with the run that owns it, as any other
            labels = client.inspect_container(run["container_id"])["Config"]["Labels"]
            assert labels["lrun.run-id"] == run["id"] and labels["lrun.machine"] == "m1"
    finally:
        client.close()
