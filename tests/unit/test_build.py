"""Builds declared in machine tables, plans and options: their checks, their digest, building once.

The engine is faked at the :class:`~pytest_lrun.engine.Engine` seam; building on real
engines is tests/integration/test_build.py.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest

from pytest_lrun.config.builds import LABEL_BUILD, Build, build_digest, image_tag, make_build
from pytest_lrun.config.machines import MachineResolver, load_machine_tables, resolve_image
from pytest_lrun.config.plan import load_plan
from pytest_lrun.config.settings import resolve
from pytest_lrun.core.errors import ConfigError, ImageBuildFailed, ImageMissing, PlanError
from pytest_lrun.engine import BuildChunk, ImageInfo
from pytest_lrun.run.images import Builder, built_images, gc_images
from pytest_lrun.store import Run, Status
from pytest_lrun.store.files import FileStore
from pytest_lrun.tree.hashing import hash_dir
from pytest_lrun.tree.snapshot import snapshot


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "pkg").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM lrun-python:bookworm\nCOPY pkg /pkg\n")
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    return root


def digest_of(build: Build) -> str:
    return build_digest(build)


# --- declaring a build ------------------------------------------------------------------


def test_make_build_resolves_the_context_against_the_naming_file(context: Path) -> None:
    build = make_build("ctx", base=context.parent, args={"B": "2", "A": "1"}, target="test")
    assert build.context == context
    assert build.dockerfile == "Dockerfile"
    assert build.args == (("A", "1"), ("B", "2"))  # sorted: the order written does not matter
    assert build.target == "test"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": "nowhere"}, "is not a folder"),
        ({"dockerfile": "../Dockerfile"}, "must be a path inside the build context"),
        ({"dockerfile": "/etc/passwd"}, "must be a path inside the build context"),
        ({"dockerfile": "Missing.dockerfile"}, "is not a file in the build context"),
        ({"args": {"A=B": "1"}}, "build arg 'A=B'"),
        ({"target": " "}, "target"),
    ],
)
def test_make_build_says_what_is_wrong(context: Path, kwargs: dict[str, Any], message: str) -> None:
    given = {"context": "ctx", **kwargs}
    with pytest.raises(ValueError, match=message):
        make_build(given.pop("context"), base=context.parent, **given)


def test_a_machine_table_takes_a_build_relative_to_pyproject(context: Path) -> None:
    pyproject = context.parent / "pyproject.toml"
    pyproject.write_text(
        '[tool.lrun.machines.m1]\nhost = "unix:///x.sock"\nbuild = "ctx"\n'
        'dockerfile = "Dockerfile"\nbuild_args = { PY = "3.11" }\ntarget = "t"\n'
    )
    machine = MachineResolver(load_machine_tables(pyproject), pyproject).resolve("m1")
    assert machine.build == Build(context, "Dockerfile", (("PY", "3.11"),), "t")
    assert machine.image is None
    assert resolve_image(machine, entry_image=None, option_image=None) == machine.build
    assert resolve_image(machine, entry_image="img:1", option_image=None) == "img:1"


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ('image = "x:1"\nbuild = "ctx"', "build", "give an image or a build, not both"),
        ('dockerfile = "Dockerfile"', "dockerfile", "belongs to a build"),
        ('build = "ctx"\nbuild_args = { A = 1 }', "build_args.A", "expected a string"),
        ('build = "nowhere"', "build", "is not a folder"),
    ],
)
def test_a_bad_build_in_a_machine_table_names_the_file_and_key(
    context: Path, lines: str, key: str, message: str
) -> None:
    pyproject = context.parent / "pyproject.toml"
    pyproject.write_text(f'[tool.lrun.machines.m1]\nhost = "unix:///x.sock"\n{lines}\n')
    with pytest.raises(ConfigError) as info:
        MachineResolver(load_machine_tables(pyproject), pyproject).resolve("m1")
    assert f"[tool.lrun.machines.m1] {key}" in str(info.value)
    assert message in str(info.value)
    assert str(pyproject) in str(info.value)


def test_a_plan_entry_and_the_matrix_take_a_build_relative_to_the_plan(context: Path) -> None:
    (context.parent / "tests").mkdir()
    plan = context.parent / "plan.toml"
    plan.write_text(
        '[[entry]]\nname = "e"\ndir = "tests"\nmachine = "m1"\nbuild = "ctx"\ntarget = "t"\n'
        '[matrix]\ndirs = ["tests"]\nmachines = ["m2"]\nbuild = "ctx"\n'
    )
    entry, expanded = load_plan(plan).entries
    assert entry.build == Build(context, target="t") and entry.image is None
    assert expanded.build == Build(context)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ('image = "x:1"\nbuild = "ctx"', "build", "give an image or a build, not both"),
        ('target = "t"', "target", "belongs to a build"),
        ('build = "ctx"\nbuild_args = { "" = "1" }', "build_args", "not a valid build arg name"),
        ('build = "ctx"\ndockerfile = "../x"', "build", "inside the build context"),
    ],
)
def test_a_bad_build_in_a_plan_names_the_entry_and_field(
    context: Path, fields: str, field: str, message: str
) -> None:
    (context.parent / "tests").mkdir()
    plan = context.parent / "plan.toml"
    plan.write_text(f'[[entry]]\nname = "e"\ndir = "tests"\nmachine = "m1"\n{fields}\n')
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert (info.value.entry, info.value.field) == ("e", field)
    assert message in str(info.value)


def test_the_build_option_and_the_image_option_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="give an image or a build, not both"):
        resolve({"image": "x:1", "build": Path("ctx")}, lambda _key: None, environ={})
    assert resolve({}, lambda _key: None, environ={"LRUN_BUILD": "docker/test"}).build == Path("docker/test")


# --- the digest ------------------------------------------------------------------------


def test_every_input_changes_the_digest_and_nothing_else_does(context: Path) -> None:
    build = make_build(context, base=context)
    first = digest_of(build)
    assert digest_of(make_build(context, base=context)) == first
    assert image_tag(first) == f"lrun-build:{first}"
    assert digest_of(dataclasses.replace(build, args=(("A", "1"),))) != first
    assert digest_of(dataclasses.replace(build, target="t")) != first
    (context / "pkg" / "mod.py").write_text("VALUE = 2\n")
    second = digest_of(build)
    assert second != first
    (context / "Dockerfile").write_text("FROM lrun-python:bookworm\nCOPY pkg /other\n")
    assert digest_of(build) != second


def test_dockerignore_leaves_paths_out_of_the_digest_and_the_context(context: Path) -> None:
    (context / ".dockerignore").write_text("# caches\nbuild\n*.log\n!keep.log\nDockerfile\n")
    build = make_build(context, base=context)
    before = digest_of(build)
    (context / "build").mkdir()
    (context / "build" / "big.bin").write_bytes(b"x" * 100)
    (context / "debug.log").write_text("noise\n")
    (context / "pkg" / "deep.log").write_text("a pattern is anchored at the root, as Docker reads it\n")
    after = digest_of(build)
    assert after != before  # pkg/deep.log is in: "*.log" means the root's only
    (context / "pkg" / "deep.log").unlink()
    assert digest_of(build) == before
    with snapshot(context, ignores=build.ignores) as shipped, tarfile.open(fileobj=shipped.archive) as tar:
        names = tar.getnames()
    # The Dockerfile is sent although ignored (the builder needs it), and so is .dockerignore.
    assert sorted(names) == [".dockerignore", "Dockerfile", "pkg", "pkg/mod.py"]
    (context / "keep.log").write_text("re-included\n")
    assert digest_of(build) != before


def test_a_test_directory_hash_is_not_changed_by_the_ignore_rules_refactor(context: Path) -> None:
    # .dockerignore means nothing in a test directory; .lrunignore's defaults still apply.
    (context / ".dockerignore").write_text("pkg\n")
    (context / "__pycache__").mkdir()
    (context / "__pycache__" / "x.pyc").write_bytes(b"\0")
    plain = hash_dir(context)
    (context / "__pycache__" / "x.pyc").write_bytes(b"\1")
    assert hash_dir(context) == plain
    (context / "pkg" / "mod.py").write_text("VALUE = 3\n")
    assert hash_dir(context) != plain


# --- building ----------------------------------------------------------------------------


class FakeEngine:
    """Images in a dict; a build takes ``build_s`` seconds and fails when the Dockerfile says FAIL."""

    def __init__(self, machine: str = "m1", build_s: float = 0.0) -> None:
        self.machine = machine
        self.url = f"tcp://{machine}.invalid:2375"
        self.images_by_tag: dict[str, ImageInfo] = {}
        self.builds: list[tuple[str, list[str]]] = []
        self.build_s = build_s
        self.removed: list[str] = []
        self.used: set[str] = set()

    def image_id(self, image: str, pull: str) -> str:
        assert pull == "never", "a built image is never pulled"
        if image not in self.images_by_tag:
            raise ImageMissing(self.machine, image, "not on the engine and pull = never")
        return self.images_by_tag[image].id

    def build_image(
        self,
        context: IO[bytes],
        *,
        tag: str,
        dockerfile: str,
        build_args: Mapping[str, str],
        target: str | None,
        labels: Mapping[str, str],
    ) -> Iterator[BuildChunk]:
        with tarfile.open(fileobj=io.BytesIO(context.read())) as members:
            self.builds.append((tag, sorted(members.getnames())))
            text = members.extractfile(dockerfile).read().decode()  # type: ignore[union-attr]
        steps = text.splitlines()
        for number, step in enumerate(steps, 1):
            yield BuildChunk(text=f"Step {number}/{len(steps)} : {step}\n")
            time.sleep(self.build_s / len(steps))
            if "FAIL" in step:
                yield BuildChunk(text=" ---> Running in 0123456789ab\nsomething broke\n")
                yield BuildChunk(error="The command '/bin/sh -c FAIL' returned a non-zero code: 1")
                return
        info = ImageInfo(f"sha256:{len(self.builds):064x}", (tag,), dict(labels), 1000, time.time())
        self.images_by_tag[tag] = info

    def images(self, label: str) -> list[ImageInfo]:
        return [info for info in self.images_by_tag.values() if label in info.labels]

    def remove_image(self, image: str) -> bool:
        if image in self.used:
            return False
        self.removed.append(image)
        self.images_by_tag = {t: i for t, i in self.images_by_tag.items() if i.id != image}
        return True


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "state", durable=False)


def machine_of(tmp_path: Path) -> Any:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.lrun.machines.m1]\nhost = "unix:///x.sock"\n')
    return MachineResolver(load_machine_tables(pyproject), pyproject).resolve("m1")


def test_a_missing_build_is_built_once_and_then_found(
    store: FileStore, context: Path, tmp_path: Path
) -> None:
    engine, lines = FakeEngine(), []
    builder = Builder(store, on_line=lambda machine, line: lines.append(f"{machine}: {line}"))
    build = make_build(context, base=context)
    tag = image_tag(digest_of(build))
    first = builder.image_id(engine, machine_of(tmp_path), tag, build)  # type: ignore[arg-type]
    second = builder.image_id(engine, machine_of(tmp_path), tag, build)  # type: ignore[arg-type]
    assert first == second == engine.images_by_tag[tag].id
    assert [t for t, _ in engine.builds] == [tag]  # the second run starts with no build at all
    assert engine.builds[0][1] == ["Dockerfile", "pkg", "pkg/mod.py"]
    assert engine.images_by_tag[tag].labels[LABEL_BUILD] == tag.rpartition(":")[2]
    assert lines[0].startswith(f"m1: building image {tag} from {context}")
    assert "m1: building image" in lines[1] and "Step 1/2 : FROM lrun-python:bookworm" in lines[1]
    assert lines[-1].startswith(f"m1: built image {tag} in ")
    log = builder.log_path("m1", tag).read_text()
    assert "Step 2/2 : COPY pkg /pkg" in log


def test_a_failed_build_names_the_step_and_quotes_the_log(
    store: FileStore, context: Path, tmp_path: Path
) -> None:
    (context / "Dockerfile").write_text("FROM lrun-python:bookworm\nRUN FAIL\nCOPY pkg /pkg\n")
    build = make_build(context, base=context)
    tag = image_tag(digest_of(build))
    with pytest.raises(ImageBuildFailed) as info:
        Builder(store).image_id(FakeEngine(), machine_of(tmp_path), tag, build)  # type: ignore[arg-type]
    err = info.value
    assert err.code == "image_build_failed"
    assert err.step == "Step 2/3 : RUN FAIL"
    assert "something broke" in err.tail
    assert "returned a non-zero code: 1" in str(err) and "Step 2/3 : RUN FAIL" in str(err)
    assert "ERROR: The command" in Path(err.log).read_text()


def test_a_context_that_changes_before_its_build_is_refused(
    store: FileStore, context: Path, tmp_path: Path
) -> None:
    build = make_build(context, base=context)
    tag = image_tag(digest_of(build))
    (context / "pkg" / "mod.py").write_text("VALUE = 99\n")
    engine = FakeEngine()
    with pytest.raises(Exception, match="changed while it was being dispatched"):
        Builder(store).image_id(engine, machine_of(tmp_path), tag, build)  # type: ignore[arg-type]
    assert engine.builds == []


def test_two_dispatchers_needing_one_build_build_it_once(
    store: FileStore, context: Path, tmp_path: Path
) -> None:
    engine = FakeEngine(build_s=0.5)
    build = make_build(context, base=context)
    tag = image_tag(digest_of(build))
    peer = FileStore(store.state_dir, durable=False)  # another dispatcher on the same state dir
    machine = machine_of(tmp_path)  # once: two threads rewriting one pyproject.toml read it half-written
    ids: list[str] = []
    errors: list[BaseException] = []

    def run(s: FileStore) -> None:
        try:
            ids.append(Builder(s).image_id(engine, machine, tag, build))  # type: ignore[arg-type]
        except BaseException as e:  # shown by the assertion below, not lost in a thread's warning
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in (store, peer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(engine.builds) == 1
    assert len(ids) == 2 and ids[0] == ids[1]


def test_an_image_is_looked_up_by_the_machines_pull_policy(store: FileStore, tmp_path: Path) -> None:
    class Pulls:
        def image_id(self, image: str, pull: str) -> str:
            return f"{image}@{pull}"

    machine = machine_of(tmp_path)
    assert Builder(store).image_id(Pulls(), machine, "busybox:1", None) == "busybox:1@missing"  # type: ignore[arg-type]


# --- lrun images, lrun gc --images --------------------------------------------------------------


def built(store: FileStore, engine: FakeEngine, context: Path, tmp_path: Path, marker: str) -> str:
    (context / "marker").write_text(marker)
    build = make_build(context, base=context)
    tag = image_tag(digest_of(build))
    Builder(store).image_id(engine, machine_of(tmp_path), tag, build)  # type: ignore[arg-type]
    return tag


def used_by_run(store: FileStore, tag: str, at: float) -> Run:
    return store.insert(Run(machine="m1", test_dir="/t", image=tag, created_at=at, status=Status.COMPLETED))


def test_built_images_lists_each_with_its_last_use(store: FileStore, context: Path, tmp_path: Path) -> None:
    engine = FakeEngine()
    old = built(store, engine, context, tmp_path, "old")
    new = built(store, engine, context, tmp_path, "new")
    used_by_run(store, new, 1000.0)
    used_by_run(store, new, 2000.0)
    found = {image.tag: image for image in built_images(store, engine, ["m1"])}  # type: ignore[arg-type]
    assert set(found) == {old, new}
    assert found[new].last_used == 2000.0 and found[old].last_used is None
    assert found[new].context == str(context)
    assert found[new].digest == new.rpartition(":")[2]


def test_gc_images_removes_only_what_no_run_used_lately(
    store: FileStore, context: Path, tmp_path: Path
) -> None:
    engine = FakeEngine()
    idle = built(store, engine, context, tmp_path, "idle")
    recent = built(store, engine, context, tmp_path, "recent")
    live = built(store, engine, context, tmp_path, "live")
    held = built(store, engine, context, tmp_path, "held")
    now = time.time() + 10 * 86400  # every image was built ten days "ago"
    used_by_run(store, recent, now - 3600)
    store.prepare("m1", "k", lambda: Run(test_dir="/t", image=live))  # a live run will start a container
    engine.used.add(engine.images_by_tag[held].id)  # a container the store does not know uses it
    swept = gc_images(store, engine, ["m1"], max_age=7 * 86400, now=now)  # type: ignore[arg-type]
    assert [image.tag for image in swept.removed] == [idle]
    assert {image.tag for image in swept.in_use} == {live, held}
    assert set(engine.images_by_tag) == {recent, live, held}
    assert not Builder(store).log_path("m1", idle).exists()
    assert Builder(store).log_path("m1", recent).exists()
