"""Plan files: parsing, every validation error, matrix expansion and entry selection."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap
import time
from pathlib import Path

import pytest
import xxhash

from pytest_lrun.config.plan import Plan, PlanEntry, load_plan, select
from pytest_lrun.config.tables import FrozenEnv
from pytest_lrun.core.errors import BadInput, PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

REPO = Path(__file__).resolve().parents[2]

FULL_PLAN = """
[[entry]]
name = "passing-m1"
dir = "passing"
machine = "m1"
image = "lrun-python:bookworm"
command = "python3 -m pytest -q 'tests dir'"
env = { FOO = "bar", EMPTY = "" }
timeout = 60
artifacts = ["/lrun/artifacts", "/tmp/out"]

[[entry]]
name = "nested"
dir = "sub/deeper/"
machine = "m2"
command = ["python3", "-m", "pytest", "-x"]
timeout = 1.5

[matrix]
dirs = ["passing", "failing"]
machines = ["m1", "m2"]
image = "busybox"
env = { MODE = "matrix" }
timeout = 30
artifacts = []
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with the test directories the plans name."""
    for name in ("passing", "failing", "sub/deeper"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "a-file").write_text("not a directory\n")
    return tmp_path


def write_plan(project: Path, text: str, name: str = "plan.toml") -> Path:
    path = project / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def plan_error(path: Path | str, **kwargs: object) -> PlanError:
    with pytest.raises(PlanError) as info:
        load_plan(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def entry_toml(**fields: str) -> str:
    """One [[entry]] with valid defaults; a field given as None-string 'DROP' is left out."""
    values = {"name": '"e1"', "dir": '"passing"', "machine": '"m1"', **fields}
    lines = [f"{key} = {value}" for key, value in values.items() if value != "DROP"]
    return "[[entry]]\n" + "\n".join(lines) + "\n"


# --- valid plans -------------------------------------------------------------


def test_full_plan_parses_entries_then_matrix(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_plan(project, FULL_PLAN)
    monkeypatch.chdir(project / "sub")  # relative dirs follow the plan file, not the working directory
    plan = load_plan(path)

    assert plan.path == path.resolve() and plan.path.is_absolute()
    assert plan.digest == xxhash.xxh3_128_hexdigest(path.read_bytes())
    assert plan.names == (
        "passing-m1",
        "nested",
        "passing@m1",
        "passing@m2",
        "failing@m1",
        "failing@m2",
    )
    first, nested = plan.entries[:2]
    assert first == PlanEntry(
        name="passing-m1",
        dir=(project / "passing").resolve(),
        machine="m1",
        image="lrun-python:bookworm",
        command=("python3", "-m", "pytest", "-q", "tests dir"),
        env={"FOO": "bar", "EMPTY": ""},
        timeout=60.0,
        artifacts=("/lrun/artifacts", "/tmp/out"),
    )
    assert isinstance(first.timeout, float)
    assert nested.dir == (project / "sub" / "deeper").resolve()
    assert nested.command == ("python3", "-m", "pytest", "-x")
    assert (nested.image, nested.artifacts, dict(nested.env), nested.timeout) == (None, None, {}, 1.5)
    for entry in plan.entries[2:]:
        dir_name, machine = entry.name.split("@")
        assert entry.dir == (project / dir_name).resolve() and entry.dir.is_absolute()
        assert entry.machine == machine
        assert (entry.image, entry.command, entry.timeout, entry.artifacts) == ("busybox", None, 30.0, ())
        assert entry.env == {"MODE": "matrix"}


def test_entries_are_hashable_immutable_and_picklable(project: Path) -> None:
    plan = load_plan(write_plan(project, FULL_PLAN))
    assert len(set(plan.entries)) == len(plan.entries)
    assert hash(plan) == hash(load_plan(project / "plan.toml"))
    assert isinstance(plan.entries[0].env, FrozenEnv)
    with pytest.raises(TypeError):
        plan.entries[0].env["FOO"] = "changed"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(plan)) == plan


def test_minimal_entry_and_absolute_dir(project: Path) -> None:
    absolute = (project / "failing").resolve()
    plan = load_plan(write_plan(project, entry_toml(dir=f'"{absolute}"')))
    (entry,) = plan.entries
    assert entry == PlanEntry(name="e1", dir=absolute, machine="m1")
    assert entry.env == {} and entry.command is None and entry.timeout is None


def test_matrix_only_plan(project: Path) -> None:
    plan = load_plan(write_plan(project, '[matrix]\ndirs = ["failing"]\nmachines = ["local", "m2"]\n'))
    assert plan.names == ("failing@local", "failing@m2")
    assert all(entry.image is None and entry.env == {} for entry in plan.entries)


def test_known_machines_accepts_the_plans_machines(project: Path) -> None:
    plan = load_plan(write_plan(project, FULL_PLAN), known_machines={"m1", "m2", "other"})
    assert len(plan.entries) == 6


def test_digest_follows_the_bytes(project: Path) -> None:
    one = load_plan(write_plan(project, FULL_PLAN))
    two = load_plan(write_plan(project, FULL_PLAN + "\n# a comment\n"))
    assert one.entries == two.entries
    assert one.digest != two.digest


def test_example_plan_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    plan = load_plan("examples/plan.toml")
    assert plan.path == REPO / "examples" / "plan.toml"
    assert set(plan.names) >= {"passing@local", "failing@local"}
    assert {entry.dir for entry in plan.entries} == {
        REPO / "examples" / "passing",
        REPO / "examples" / "failing",
    }
    assert all(entry.image == "lrun-python:bookworm" for entry in plan.entries)
    explicit = [entry for entry in plan.entries if "@" not in entry.name]
    assert explicit and all(entry.env and entry.timeout for entry in explicit)


# --- validation errors ---------------------------------------------------------

# (plan text, entry named in the error, field named in the error, a fragment of the reason)
ENTRY_ERRORS = [
    pytest.param(entry_toml(name="DROP"), "#1", "name", "required field is missing", id="name-missing"),
    pytest.param(entry_toml(dir="DROP"), "e1", "dir", "required field is missing", id="dir-missing"),
    pytest.param(
        entry_toml(machine="DROP"), "e1", "machine", "required field is missing", id="machine-missing"
    ),
    pytest.param(entry_toml(name="3"), "#1", "name", "expected a non-empty string, got 3", id="name-int"),
    pytest.param(entry_toml(name='""'), "#1", "name", "expected a non-empty string", id="name-empty"),
    pytest.param(entry_toml(name='"a,b"'), "#1", "name", "commas", id="name-comma"),
    pytest.param(entry_toml(name='" a"'), "#1", "name", "whitespace", id="name-space"),
    pytest.param(entry_toml(dir="1"), "e1", "dir", "expected a non-empty string, got 1", id="dir-int"),
    pytest.param(entry_toml(dir='"nope"'), "e1", "dir", "'nope' does not exist", id="dir-missing-on-disk"),
    pytest.param(entry_toml(dir='"a-file"'), "e1", "dir", "'a-file' is not a directory", id="dir-is-file"),
    pytest.param(
        entry_toml(dir=f'"{"d" * 300}"'), "e1", "dir", ": File name too long", id="dir-name-too-long"
    ),
    pytest.param(entry_toml(machine='["m1"]'), "e1", "machine", 'got ["m1"]', id="machine-list"),
    pytest.param(entry_toml(machine='""'), "e1", "machine", "non-empty string", id="machine-empty"),
    pytest.param(entry_toml(image="7"), "e1", "image", "expected a non-empty string, got 7", id="image-int"),
    pytest.param(entry_toml(image='"a b"'), "e1", "image", "whitespace", id="image-space"),
    pytest.param(
        entry_toml(command="5"), "e1", "command", "a command string or a non-empty array", id="cmd-int"
    ),
    pytest.param(
        entry_toml(command="[]"), "e1", "command", "non-empty array of strings, got []", id="cmd-empty"
    ),
    pytest.param(entry_toml(command='["a", 1]'), "e1", "command", 'got ["a", 1]', id="cmd-not-strings"),
    pytest.param(entry_toml(command='"   "'), "e1", "command", "the command is empty", id="cmd-blank"),
    pytest.param(entry_toml(command='"echo \'x"'), "e1", "command", "No closing quotation", id="cmd-quote"),
    pytest.param(
        entry_toml(env='"A=b"'), "e1", "env", 'expected a table of strings, got "A=b"', id="env-str"
    ),
    pytest.param(
        entry_toml(env="{ A = 1 }"), "e1", "env", "variable 'A': expected a string, got 1", id="env-int"
    ),
    pytest.param(
        entry_toml(env='{ "A=B" = "c" }'), "e1", "env", "not a valid environment variable", id="env-key"
    ),
    pytest.param(
        entry_toml(timeout='"x"'), "e1", "timeout", 'positive number of seconds, got "x"', id="to-str"
    ),
    pytest.param(entry_toml(timeout="0"), "e1", "timeout", "positive number of seconds, got 0", id="to-zero"),
    pytest.param(entry_toml(timeout="-5.5"), "e1", "timeout", "got -5.5", id="to-negative"),
    pytest.param(entry_toml(timeout="true"), "e1", "timeout", "got true", id="to-bool"),
    pytest.param(entry_toml(timeout="inf"), "e1", "timeout", "positive number of seconds", id="to-inf"),
    pytest.param(
        entry_toml(timeout="nan"), "e1", "timeout", "positive number of seconds, got NaN", id="to-nan"
    ),
    pytest.param(
        entry_toml(timeout="1e12"),
        "e1",
        "timeout",
        "at most 1e+09 seconds, got 1000000000000.0",
        id="to-huge",
    ),
    pytest.param(entry_toml(artifacts='"/x"'), "e1", "artifacts", "an array of absolute", id="art-str"),
    pytest.param(entry_toml(artifacts='["rel/x"]'), "e1", "artifacts", 'got "rel/x"', id="art-relative"),
    pytest.param(
        entry_toml(artifacts="[1]"), "e1", "artifacts", "absolute container path, got 1", id="art-int"
    ),
    pytest.param(
        entry_toml(colour='"red"'), "e1", "colour", "unknown field; expected one of: name", id="unknown"
    ),
]


@pytest.mark.parametrize(("text", "entry", "field", "fragment"), ENTRY_ERRORS)
def test_entry_errors_name_file_entry_and_field(
    project: Path, text: str, entry: str, field: str, fragment: str
) -> None:
    path = write_plan(project, text)
    err = plan_error(path)
    assert (err.path, err.entry, err.field) == (str(path), entry, field)
    assert str(err).startswith(f"{path}: entry {entry!r}: field {field!r}: "), str(err)
    assert fragment in err.reason, str(err)
    assert err.code == "plan_invalid" and isinstance(err, BadInput)


def test_timeout_message_matches_the_documented_example(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    write_plan(project, entry_toml(name='"passing-m1"', timeout='"x"'))
    err = plan_error("plan.toml")
    assert str(err) == (
        "plan.toml: entry 'passing-m1': field 'timeout': expected a positive number of seconds, got \"x\""
    )


MATRIX_ERRORS = [
    pytest.param('[matrix]\nmachines = ["m1"]\n', "matrix.dirs", "required field is missing", id="no-dirs"),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\n', "matrix.machines", "required field is missing", id="no-machines"
    ),
    pytest.param(
        '[matrix]\ndirs = []\nmachines = ["m1"]\n', "matrix.dirs", "non-empty array", id="dirs-empty"
    ),
    pytest.param(
        '[matrix]\ndirs = "passing"\nmachines = ["m1"]\n', "matrix.dirs", 'got "passing"', id="dirs-str"
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = [1]\n', "matrix.machines", "got 1", id="machine-int"
    ),
    pytest.param(
        '[matrix]\ndirs = ["nope"]\nmachines = ["m1"]\n', "matrix.dirs", "does not exist", id="dir-gone"
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing", "passing"]\nmachines = ["m1"]\n',
        "matrix.dirs",
        "lists 'passing' more than once",
        id="dirs-repeated",
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = ["m1", "m1"]\n',
        "matrix.machines",
        "more than once",
        id="m-rep",
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = ["a,b"]\n', "matrix.machines", "commas", id="m-comma"
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = ["m1"]\ntimeout = "x"\n',
        "matrix.timeout",
        'positive number of seconds, got "x"',
        id="timeout",
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = ["m1"]\nimage = "a b"\n',
        "matrix.image",
        "whitespace",
        id="img",
    ),
    pytest.param(
        '[matrix]\ndirs = ["passing"]\nmachines = ["m1"]\nname = "x"\n',
        "matrix.name",
        "unknown field; expected one of: dirs, machines",
        id="unknown-field",
    ),
]


@pytest.mark.parametrize(("text", "field", "fragment"), MATRIX_ERRORS)
def test_matrix_errors_name_file_and_field(project: Path, text: str, field: str, fragment: str) -> None:
    path = write_plan(project, text)
    err = plan_error(path)
    assert (err.path, err.entry, err.field) == (str(path), None, field)
    assert str(err).startswith(f"{path}: field {field!r}: "), str(err)
    assert fragment in err.reason, str(err)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "the plan has no entries", id="empty-file"),
        pytest.param("entry = []\n", "the plan has no entries", id="empty-entry-array"),
        pytest.param("# only a comment\n", "the plan has no entries", id="comment-only"),
        pytest.param(
            '[entry]\nname = "x"\n', "'entry' must be an array of tables ([[entry]])", id="entry-table"
        ),
        pytest.param('matrix = ["a"]\n', "'matrix' must be a table", id="matrix-array"),
        pytest.param(
            entry_toml() + "[machines]\nx = 1\n", "unknown top-level key 'machines'", id="unknown-top"
        ),
        pytest.param(
            'version = 1\n[matrix]\ndirs = ["passing"]\n', "unknown top-level key 'version'", id="top"
        ),
    ],
)
def test_plan_level_errors(project: Path, text: str, fragment: str) -> None:
    path = write_plan(project, text)
    err = plan_error(path)
    assert (err.path, err.entry, err.field) == (str(path), None, None)
    assert str(err) == f"{path}: {err.reason}"
    assert fragment in err.reason


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    err = plan_error(path)
    assert str(err) == f"{path}: no such file"


def test_a_directory_is_not_a_plan(tmp_path: Path) -> None:
    err = plan_error(tmp_path)
    assert str(err) == f"{tmp_path}: is a directory, not a plan file"


@pytest.mark.timeout(10)
def test_a_fifo_is_not_a_plan_and_never_blocks(tmp_path: Path) -> None:
    """A fifo nobody writes to would block an open (and a read) for ever: it is refused at once."""
    path = tmp_path / "plan.toml"
    os.mkfifo(path)
    started = time.monotonic()
    err = plan_error(path)
    assert str(err) == f"{path}: is a fifo, not a plan file"
    assert time.monotonic() - started < 2


def test_a_symlink_is_not_followed_to_a_plan(project: Path) -> None:
    real = write_plan(project, entry_toml())
    link = project / "link.toml"
    link.symlink_to(real)
    err = plan_error(link)
    assert str(err) == f"{link}: is a symbolic link, not a plan file"


def test_malformed_toml_carries_tomls_message(project: Path) -> None:
    text = '[[entry]]\nname = "x\ndir = "passing"\n'
    with pytest.raises(tomllib.TOMLDecodeError) as toml_error:
        tomllib.loads(text)
    path = write_plan(project, text)
    err = plan_error(path)
    assert str(err) == f"{path}: invalid TOML: {toml_error.value}"
    assert err.__cause__ is None and err.__suppress_context__


def test_non_utf8_file(project: Path) -> None:
    path = project / "plan.toml"
    path.write_bytes(b'[[entry]]\nname = "\xff"\n')
    assert "not UTF-8 text" in plan_error(path).reason


def test_nested_too_deeply_is_a_plan_error(project: Path) -> None:
    # tomllib recurses per nesting level: this raised RecursionError, an INTERNALERROR in pytest.
    depth = 5000
    path = write_plan(project, entry_toml(env="[" * depth + "]" * depth))
    err = plan_error(path)
    assert str(err) == f"{path}: invalid TOML: nested too deeply"


def test_matrix_dir_name_too_long(project: Path) -> None:
    path = write_plan(project, f'[matrix]\ndirs = ["{"d" * 300}"]\nmachines = ["m1"]\n')
    err = plan_error(path)
    assert (err.entry, err.field) == (None, "matrix.dirs")
    assert err.reason == f"cannot use directory {'d' * 300!r}: File name too long"


def non_utf8_dir(parent: Path) -> Path:
    """A directory named with the byte 0xff (Python decodes it to a surrogate), or skip."""
    path = parent / "bad-\udcff"
    try:
        path.mkdir()
    except (OSError, UnicodeEncodeError) as e:  # a file system or locale that refuses such names
        pytest.skip(f"cannot make a non-UTF-8 directory name here: {e}")
    return path


def test_a_dir_whose_path_is_not_utf8_is_refused(project: Path) -> None:
    bad = non_utf8_dir(project)
    (project / "link").symlink_to(bad)
    path = write_plan(project, entry_toml(dir='"link"'))
    err = plan_error(path)
    assert (err.entry, err.field) == ("e1", "dir")
    assert err.reason == f"directory 'link' resolves to {project}/bad-\\udcff, which is not valid UTF-8"


def test_a_plan_whose_path_is_not_utf8_is_refused(project: Path) -> None:
    bad = non_utf8_dir(project)
    (bad / "passing").mkdir()
    path = write_plan(bad, entry_toml())
    err = plan_error(path)
    assert str(err) == (
        f"{project}/bad-\\udcff/plan.toml: the plan's path {project}/bad-\\udcff/plan.toml is not valid UTF-8"
    )


def test_duplicate_explicit_names_name_both(project: Path) -> None:
    path = write_plan(project, entry_toml() + entry_toml(dir='"failing"'))
    err = plan_error(path)
    assert (err.entry, err.field) == ("e1", "name")
    assert "duplicate entry name: defined by entry #1 and by entry #2" in str(err)


def test_matrix_colliding_with_an_explicit_entry_names_both(project: Path) -> None:
    text = entry_toml() + entry_toml(name='"failing@m2"', dir='"failing"', machine='"m2"')
    text += '[matrix]\ndirs = ["passing", "failing"]\nmachines = ["m1", "m2"]\n'
    err = plan_error(write_plan(project, text))
    assert (err.entry, err.field) == ("failing@m2", "name")
    assert "defined by entry #2 and by the [matrix] (dir 'failing' on machine 'm2')" in str(err)


def test_unknown_machine_of_an_entry_lists_the_known_ones(project: Path) -> None:
    path = write_plan(project, entry_toml(machine='"m9"'))
    err = plan_error(path, known_machines=["m2", "local", "m1"])
    assert (err.entry, err.field) == ("e1", "machine")
    assert (
        str(err)
        == f"{path}: entry 'e1': field 'machine': unknown machine 'm9'; known machines: local, m1, m2"
    )


def test_unknown_machine_of_the_matrix(project: Path) -> None:
    path = write_plan(project, '[matrix]\ndirs = ["passing"]\nmachines = ["local", "gpu"]\n')
    err = plan_error(path, known_machines=("local",))
    assert (err.entry, err.field) == ("passing@gpu", "matrix.machines")
    assert "unknown machine 'gpu'; known machines: local" in str(err)
    assert "known machines: (none)" in str(plan_error(path, known_machines=()))


def test_plan_error_pickles(project: Path) -> None:
    err = plan_error(write_plan(project, entry_toml(timeout="0")))
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is PlanError
    assert (str(copy), copy.path, copy.entry, copy.field, copy.reason) == (
        str(err),
        err.path,
        err.entry,
        err.field,
        err.reason,
    )


# --- selection -----------------------------------------------------------------


@pytest.fixture
def full_plan(project: Path) -> Plan:
    return load_plan(write_plan(project, FULL_PLAN))


def test_select_nothing_means_everything(full_plan: Plan) -> None:
    assert select(full_plan, []) == list(full_plan.entries)
    assert select(full_plan, ()) == list(full_plan.entries)


def test_select_keeps_plan_order_and_ignores_repeats(full_plan: Plan) -> None:
    chosen = select(full_plan, ["failing@m2", "passing-m1", "failing@m2", "passing@m1"])
    assert [entry.name for entry in chosen] == ["passing-m1", "passing@m1", "failing@m2"]


def test_select_unknown_names_lists_the_plans_entries(full_plan: Plan) -> None:
    with pytest.raises(PlanError) as info:
        select(full_plan, ["passing-m1", "nope", "passing@m3"])
    message = str(info.value)
    assert message.startswith(
        f"{full_plan.path}: no entry named 'nope', 'passing@m3'; the plan's entries are: "
    )
    for name in full_plan.names:
        assert repr(name) in message


def test_frozen_env_behaves_like_a_read_only_dict() -> None:
    env = FrozenEnv({"A": "1", "B": "2"})
    assert env == {"A": "1", "B": "2"} and dict(env) == {"A": "1", "B": "2"}
    assert hash(env) == hash(FrozenEnv([("B", "2"), ("A", "1")]))
    assert pickle.loads(pickle.dumps(env)) == env
    assert repr(FrozenEnv()) == "FrozenEnv({})"
