"""Bad plan files, machine tables, settings and run records, fuzzed: a clear error, never a traceback.

Each input a user (or a crash) can hand pytest-lrun is generated with hypothesis in
wrong types and shapes, field by field, plus unknown keys. Whatever comes in, the
loader either accepts it or raises the package's error for that input
(:class:`PlanError`, :class:`ConfigError`, :class:`CorruptRecord`; ``ValueError`` from
``Run.from_dict``, which the stores turn into ``CorruptRecord``), and the message
names the file (or setting) and the field. A ``TypeError``, ``KeyError``,
``AttributeError``, ``OverflowError`` or ``RecursionError`` escaping is a failure.

The runs are derandomized (the same examples each time, so CI is stable) and kept
to a couple of hundred examples each.
"""

from __future__ import annotations

import datetime
import json
import string
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings

from pytest_lrun.config.machines import MachineResolver, load_machine_tables
from pytest_lrun.config.plan import ENTRY_FIELDS, MATRIX_FIELDS, load_plan
from pytest_lrun.config.settings import OPTIONS, Option, resolve
from pytest_lrun.config.tables import BUILD_KEYS
from pytest_lrun.core.errors import ConfigError, CorruptRecord, PlanError
from pytest_lrun.store import Batch, Run
from pytest_lrun.store.files import FileStore

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies ----------------------------------------------------------------

# Keys as users mistype them: short, printable, sometimes a known one.
KEYS = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=12)

TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),  # nan and inf included: TOML has them
    st.text(max_size=30),
    st.sampled_from(["", " ", "0", "-1", "1e999", "nan", "/", "tcp://", "unix://x", "a\x00b", ".."]),
    # What fuzzing once found as tracebacks: a name too long for the file system, a home of no user,
    # a URL that does not split.
    st.sampled_from(["x" * 5000, "~no-such-user-lrun/x", "http://[", "postgresql://u:pw@[::1"]),
    st.dates(),
    st.times(),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: JSON numbers have no range
    | st.floats()
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def write_toml(path: Path, document: dict[str, Any]) -> None:
    path.write_text(tomli_w.dumps(document), encoding="utf-8")


# --- plan files ------------------------------------------------------------------


def plan_project(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir(exist_ok=True)
    return tmp_path / "plan.toml"


@FUZZ
@given(document=st.dictionaries(st.sampled_from(["entry", "matrix"]) | KEYS, TOML_VALUES, max_size=3))
def test_any_plan_document_loads_or_names_the_file(tmp_path: Path, document: dict[str, Any]) -> None:
    path = plan_project(tmp_path)
    write_toml(path, document)
    try:
        load_plan(path)
    except PlanError as e:
        assert str(e).startswith(str(path))


@FUZZ
@given(field=st.sampled_from(ENTRY_FIELDS) | KEYS, value=TOML_VALUES)
def test_a_bad_entry_field_is_named(tmp_path: Path, field: str, value: Any) -> None:
    path = plan_project(tmp_path)
    entry = {"name": "e", "dir": "tests", "machine": "m", field: value}
    write_toml(path, {"entry": [entry]})
    try:
        load_plan(path)
    except PlanError as e:
        assert str(e).startswith(str(path))
        assert e.field == field, str(e)


@FUZZ
@given(field=st.sampled_from(MATRIX_FIELDS) | KEYS, value=TOML_VALUES)
def test_a_bad_matrix_field_is_named(tmp_path: Path, field: str, value: Any) -> None:
    path = plan_project(tmp_path)
    write_toml(path, {"matrix": {"dirs": ["tests"], "machines": ["m"], field: value}})
    try:
        load_plan(path)
    except PlanError as e:
        assert str(e).startswith(str(path))
        assert e.field == f"matrix.{field}", str(e)


# --- machine tables ----------------------------------------------------------------

MACHINE_KEYS = (
    "host",
    "image",
    "cpus",
    "memory",
    "network",
    "env",
    "timeout",
    "pull",
    "workdir",
    "tags",
    "slots",
    "tls_verify",
    "tls_ca_cert",
    "tls_client_cert",
    "tls_client_key",
    *BUILD_KEYS,
)


def resolve_machine(tmp_path: Path, table: Any) -> None:
    pyproject = tmp_path / "pyproject.toml"
    write_toml(pyproject, {"tool": {"lrun": {"machines": {"m": table}}}})
    tables = load_machine_tables(pyproject)
    MachineResolver(tables, pyproject, docker_config_dir=tmp_path / "docker", environ={}).resolve("m")


@FUZZ
@given(key=st.sampled_from(MACHINE_KEYS) | KEYS, value=TOML_VALUES)
def test_a_bad_machine_key_is_named(tmp_path: Path, key: str, value: Any) -> None:
    host = {"host": "tcp://engine.example:2376"}
    try:
        resolve_machine(tmp_path, {**host, key: value})
    except ConfigError as e:
        assert str(tmp_path / "pyproject.toml") in str(e)
        assert f"] {key}" in e.source or f"] {key}." in e.source, str(e)


@FUZZ
@given(table=TOML_VALUES)
def test_any_machine_table_resolves_or_names_the_file(tmp_path: Path, table: Any) -> None:
    try:
        resolve_machine(tmp_path, table)
    except ConfigError as e:
        assert str(tmp_path / "pyproject.toml") in str(e)


@FUZZ
@given(tool=st.dictionaries(st.just("lrun") | KEYS, TOML_VALUES, max_size=2))
def test_any_tool_table_gives_tables_or_names_the_file(tmp_path: Path, tool: dict[str, Any]) -> None:
    pyproject = tmp_path / "pyproject.toml"
    write_toml(pyproject, {"tool": tool})
    try:
        load_machine_tables(pyproject)
    except ConfigError as e:
        assert str(pyproject) in str(e)


# --- settings -------------------------------------------------------------------------

# Text shaped like each kind of value (numbers, sizes, lists, words), and anything at all.
SETTING_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?[0-9]{0,400}(\.[0-9]{0,5})?(e[0-9]{1,4})?[kmgKMG]?i?[bB]?", fullmatch=True),
    st.from_regex(r"[0-9]{1,3}/[0-9]{1,3}|[a-z,]{0,20}|'[^']*", fullmatch=True),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "true", "yes", "0", "tcp://", "postgresql://u:p@"]),
)


def where(option: Option, source: str) -> str:
    return f"ini option {option.ini}" if source == "ini" else f"environment variable {option.env}"


@FUZZ
@given(option=st.sampled_from(OPTIONS), source=st.sampled_from(["ini", "env"]), text=SETTING_TEXT)
def test_a_bad_setting_names_its_source(option: Option, source: str, text: str) -> None:
    ini = {option.ini: text} if source == "ini" else {}
    environ = {option.env: text} if source == "env" else {}
    try:
        resolve({}, ini.get, environ)
    except ConfigError as e:
        # The value's own source, or (for a combination that cannot work) the flag.
        assert e.source == where(option, source) or option.flag in e.source, str(e)


# --- run records -------------------------------------------------------------------------

VALID_RUN: dict[str, Any] = Run(
    id="r-1", machine="m", test_dir="/t", test_dir_hash="h", key="k", created_at=1.5
).to_dict()


@FUZZ
@given(record=JSON_VALUES)
@example(record={**VALID_RUN, "timeout": 10**400})
def test_any_json_is_a_run_or_a_value_error(record: Any) -> None:
    try:
        Run.from_dict(record)
    except ValueError as e:
        assert str(e)


@FUZZ
@given(field=st.sampled_from(sorted(VALID_RUN)) | st.text(max_size=10), value=JSON_VALUES)
@example(field="timeout", value=10**400)
@example(field="exit_code", value=10**400)
def test_a_bad_run_field_is_named(field: str, value: Any) -> None:
    try:
        run = Run.from_dict({**VALID_RUN, field: value})
    except ValueError as e:
        assert repr(field) in str(e) or (field == "status" and "status" in str(e)), str(e)
    else:
        assert Run.from_dict(run.to_dict()) == run


@FUZZ
@given(raw=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_a_corrupt_run_json_is_named_and_moved_aside(tmp_path: Path, raw: bytes) -> None:
    store = FileStore(tmp_path / "state", durable=False)
    record = store.files("r-1").record
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(raw)
    try:
        store.get("r-1")
    except CorruptRecord as e:
        assert str(record) in str(e)
        assert not record.exists()


@pytest.mark.parametrize("field", ["timeout", "created_at"])
def test_a_number_too_large_for_a_float_is_a_named_error(field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        Run.from_dict({**VALID_RUN, field: 10**400})


@FUZZ
@given(
    field=st.sampled_from(["id", "plan", "plan_digest", "created_at", "entries", "status", "planned"])
    | st.text(max_size=10),
    value=JSON_VALUES,
)
def test_a_bad_batch_field_is_named(field: str, value: Any) -> None:
    valid = Batch(id="b-1", plan="/p.toml", plan_digest="d", created_at=1.5).to_dict()
    try:
        Batch.from_dict({**valid, field: value})
    except ValueError as e:
        assert repr(field) in str(e) or field in ("status", "entries", "planned"), str(e)


# --- found by fuzzing: each once escaped as a traceback ------------------------------------------


def test_a_store_url_urlsplit_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ini option lrun_store"):
        resolve({}, {"lrun_store": "http://["}.get, {})


def test_a_postgresql_url_urlsplit_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="environment variable LRUN_STORE"):
        resolve({}, {}.get, {"LRUN_STORE": "postgresql://u:pw@[::1"})


@pytest.mark.parametrize("key", ["tls_ca_cert", "tls_client_cert", "tls_client_key"])
def test_a_tls_file_name_too_long_is_a_config_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve_machine(tmp_path, {"host": "tcp://engine.example:2376", key: "x" * 5000})


def test_a_tls_file_under_an_unknown_home_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_ca_cert"):
        resolve_machine(
            tmp_path, {"host": "tcp://engine.example:2376", "tls_ca_cert": "~no-such-user-lrun/ca.pem"}
        )


def test_a_machine_build_context_name_too_long_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="build"):
        resolve_machine(tmp_path, {"host": "tcp://engine.example:2376", "build": "x" * 5000})


@pytest.mark.parametrize("where", ["entry", "matrix"])
def test_a_plan_build_context_name_too_long_is_a_plan_error(tmp_path: Path, where: str) -> None:
    path = plan_project(tmp_path)
    if where == "entry":
        write_toml(path, {"entry": [{"name": "e", "dir": "tests", "machine": "m", "build": "x" * 5000}]})
    else:
        write_toml(path, {"matrix": {"dirs": ["tests"], "machines": ["m"], "build": "x" * 5000}})
    with pytest.raises(PlanError) as excinfo:
        load_plan(path)
    assert excinfo.value.field == ("build" if where == "entry" else "matrix.build")
