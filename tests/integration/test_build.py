"""Images built where they run, on the two real engines, with no registry.

The build context holds a Debian package the test makes with ``dpkg-deb`` (the
image has no pip) and a Dockerfile ``FROM lrun-python:bookworm`` that installs it
with ``dpkg -i``; the test directory imports the package. Each test's context
carries a fresh token, so its image is new on the engines; the images are
removed at the end.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from lrun_support import PYTHON_IMAGE, write_tests

DOCKERFILE = f"""\
FROM {PYTHON_IMAGE}
COPY fixture.deb /tmp/fixture.deb
RUN dpkg -i /tmp/fixture.deb && rm /tmp/fixture.deb
"""


def make_deb(context: Path, token: str) -> None:
    """``fixture.deb``: the package ``lrun_fixture_pkg`` whose VALUE is ``token``."""
    root = context.parent / "deb-root"
    module = root / "usr/lib/python3/dist-packages/lrun_fixture_pkg"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text(f"VALUE = {token!r}\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: lrun-fixture\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: pytest-lrun tests <tests@lrun.invalid>\nDescription: a package the tests install\n"
    )
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(context / "fixture.deb")],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def built_project(pytester: pytest.Pytester, project: Path, engines: list[str]) -> Iterator[Path]:
    """Machines m1 and m2 that build ``docker/test``, and a suite ``suite`` that needs the build."""
    token = secrets.token_hex(6)
    context = project / "docker" / "test"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    make_deb(context, token)
    pytester.makepyprojecttoml(
        textwrap.dedent(
            f"""
            [tool.lrun.machines.m1]
            host = "{engines[0]}"
            build = "docker/test"

            [tool.lrun.machines.m2]
            host = "{engines[1]}"
            build = "docker/test"
            """
        )
    )
    write_tests(
        project,
        "suite",
        f"""
        import lrun_fixture_pkg


        def test_the_package_from_the_build_is_installed():
            assert lrun_fixture_pkg.VALUE == {token!r}
        """,
    )
    (project / "plan.toml").write_text(
        '[[entry]]\nname = "on-m1"\ndir = "suite"\nmachine = "m1"\n\n'
        '[[entry]]\nname = "on-m2"\ndir = "suite"\nmachine = "m2"\n'
    )
    yield project
    for url in engines:  # every image this test built: its tags are the digests of its contexts
        client = docker.APIClient(base_url=url, timeout=30, version="auto")
        try:
            for image in client.images(filters={"label": "lrun.build"}):
                if (image.get("Labels") or {}).get("lrun.build-context", "").startswith(str(project)):
                    client.remove_image(image["Id"], force=True)
        finally:
            client.close()


def run_records(state_dir: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(state_dir.glob("runs/*/run.json"))]


def lrun(project: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_lrun", *args, "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_both_machines_build_and_pass_and_a_second_invocation_builds_nothing(
    pytester: pytest.Pytester, built_project: Path, state_dir: Path
) -> None:
    first = pytester.runpytest_subprocess("--lrun-plan=plan.toml")
    first.assert_outcomes(passed=2)
    for machine in ("m1", "m2"):
        first.stdout.fnmatch_lines([f"lrun: {machine}: building image lrun-build:* from */docker/test*"])
        first.stdout.fnmatch_lines([f"lrun: {machine}: building image lrun-build:*: Step 3/* : RUN dpkg -i*"])
        first.stdout.fnmatch_lines([f"lrun: {machine}: built image lrun-build:* in *s"])
    images = {record["image"] for record in run_records(state_dir)}
    assert len(images) == 1 and str(next(iter(images))).startswith("lrun-build:")
    assert len(list((state_dir / "builds").glob("*.log"))) == 2

    second = pytester.runpytest_subprocess("--lrun-plan=plan.toml")
    second.assert_outcomes(passed=2)
    assert "building image" not in second.stdout.str()

    listed = lrun(built_project, "images")["images"]
    assert isinstance(listed, list)
    mine = [row for row in listed if row["tag"] in images]
    assert sorted(row["machine"] for row in mine) == ["m1", "m2"]
    assert all(row["last_used"] is not None and row["size"] > 0 for row in mine)


def test_a_changed_context_rebuilds_and_is_a_new_run(
    pytester: pytest.Pytester, built_project: Path, state_dir: Path
) -> None:
    first = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-reuse=completed", "suite")
    first.assert_outcomes(passed=1)
    cached = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-reuse=completed", "suite")
    cached.assert_outcomes(passed=1)
    assert "building image" not in cached.stdout.str()
    assert len(run_records(state_dir)) == 1  # the same key: the completed run is the result

    (built_project / "docker" / "test" / "README").write_text("a change to the context\n")
    changed = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-reuse=completed", "suite")
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines(["lrun: m1: building image lrun-build:*"])
    records = run_records(state_dir)
    assert len(records) == 2 and records[0]["image"] != records[1]["image"]


def test_the_build_option_builds_for_a_machine_with_a_plain_image(
    pytester: pytest.Pytester, built_project: Path, engines: list[str]
) -> None:
    pytester.makepyprojecttoml(f'[tool.lrun.machines.m1]\nhost = "{engines[0]}"\nimage = "{PYTHON_IMAGE}"\n')
    plain = pytester.runpytest_subprocess("--lrun-machine=m1", "suite")
    plain.assert_outcomes(errors=1)  # the plain image lacks the package: the module does not import
    built = pytester.runpytest_subprocess("--lrun-machine=m1", "--lrun-build=docker/test", "suite")
    built.assert_outcomes(passed=1)


def test_a_broken_step_fails_the_runs_with_image_build_failed_before_any_container(
    pytester: pytest.Pytester, built_project: Path, state_dir: Path
) -> None:
    dockerfile = built_project / "docker" / "test" / "Dockerfile"
    dockerfile.write_text(DOCKERFILE + "RUN echo about to break && false\n")
    result = pytester.runpytest_subprocess("--lrun-machine=m1", "suite")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "image_build_failed" in out
    assert re.search(r"Step 4/\d+ : RUN echo about to break && false", out)
    assert "about to break" in out  # the log's tail
    (record,) = run_records(state_dir)
    assert record["status"] == "failed" and record["error_code"] == "image_build_failed"
    assert record["container_id"] is None


def test_two_dispatchers_that_need_one_build_build_it_once(built_project: Path, state_dir: Path) -> None:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lrun-machine=m1", "suite"]
    procs = [
        subprocess.Popen(
            command, cwd=built_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sum("building image" in out for out in outputs) == 1, outputs


def test_gc_images_removes_built_images_no_run_used_lately(
    pytester: pytest.Pytester, built_project: Path
) -> None:
    pytester.runpytest_subprocess("--lrun-plan=plan.toml").assert_outcomes(passed=2)
    kept = lrun(built_project, "gc", "--images")["images"]
    assert isinstance(kept, dict) and kept["removed"] == []  # used a moment ago
    swept = lrun(built_project, "gc", "--images", "--image-max-age=0")["images"]
    assert isinstance(swept, dict)
    removed = swept["removed"]
    assert isinstance(removed, list)
    assert sorted(row["machine"] for row in removed if row["context"].startswith(str(built_project))) == [
        "m1",
        "m2",
    ]
    after = lrun(built_project, "images")["images"]
    assert isinstance(after, list)
    assert not [row for row in after if row["context"].startswith(str(built_project))]
