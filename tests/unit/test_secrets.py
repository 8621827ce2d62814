"""Named secrets: where they are declared, what is hidden, what enters the run key.

The real path (a container that prints its secret, both stores) is
tests/integration/test_secrets.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from xml.dom import minidom as xml_dom

import pytest
import xxhash

from pytest_lrun.config.machines import Machine, MachineResolver, load_machine_tables
from pytest_lrun.config.plan import load_plan
from pytest_lrun.config.settings import DEFAULT_ARTIFACTS, resolve
from pytest_lrun.core.errors import ConfigError, PlanError
from pytest_lrun.run.logs import LogSpool, hidden_values, redact_xml
from pytest_lrun.run.placement import run_key
from pytest_lrun.run.spec import RunSpec


def machine(**fields: object) -> Machine:
    return Machine(name="m1", host="unix:///x.sock", source="config", **fields)  # type: ignore[arg-type]


def spec(tmp_path: Path, **fields: object) -> RunSpec:
    return RunSpec(test_dir=tmp_path, machine=machine(), image="img", command=("true",), **fields)  # type: ignore[arg-type]


def test_the_option_takes_names_from_flags_ini_and_env() -> None:
    got = resolve({"secret_env": [("A",), ("B_2",)]}, lambda _key: None, environ={})
    assert got.secret_env == ("A", "B_2")
    assert resolve({}, lambda key: "X, Y" if key == "lrun_secret_env" else None, environ={}).secret_env == (
        "X",
        "Y",
    )
    assert resolve({}, lambda _key: None, environ={"LRUN_SECRET_ENV": "T"}).secret_env == ("T",)
    with pytest.raises(ConfigError, match=r"LRUN_SECRET_ENV.*'A-B' is not an environment variable name"):
        resolve({}, lambda _key: None, environ={"LRUN_SECRET_ENV": "A-B"})


def test_a_machine_table_and_a_plan_entry_name_secrets(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.lrun.machines.m1]\nhost = "unix:///x.sock"\nsecret_env = ["TOKEN"]\n')
    assert MachineResolver(load_machine_tables(pyproject), pyproject).resolve("m1").secret_env == ("TOKEN",)
    pyproject.write_text('[tool.lrun.machines.m1]\nhost = "unix:///x.sock"\nsecret_env = "TOKEN"\n')
    with pytest.raises(ConfigError, match=r"\[tool.lrun.machines.m1\] secret_env: expected a list"):
        MachineResolver(load_machine_tables(pyproject), pyproject).resolve("m1")
    (tmp_path / "t").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text('[[entry]]\nname = "e"\ndir = "t"\nmachine = "m1"\nsecret_env = ["A", "B"]\n')
    assert load_plan(plan).entries[0].secret_env == ("A", "B")
    plan.write_text('[[entry]]\nname = "e"\ndir = "t"\nmachine = "m1"\nsecret_env = ["no way"]\n')
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert info.value.field == "secret_env"


def test_the_container_gets_the_secret_from_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN", "t0k")
    monkeypatch.setenv("MACHINE_TOKEN", "m4c")
    placed = dataclasses.replace(
        spec(tmp_path, env={"PLAIN": "1"}, secret_env=("TOKEN",)),
        machine=machine(secret_env=("MACHINE_TOKEN",)),
    )
    assert placed.secret_names == ("MACHINE_TOKEN", "TOKEN")
    assert placed.environment() == {"PLAIN": "1", "TOKEN": "t0k", "MACHINE_TOKEN": "m4c"}
    monkeypatch.delenv("TOKEN")
    with pytest.raises(ConfigError, match="TOKEN: a secret of m1 is not set in this environment"):
        placed.environment()


def test_named_secrets_are_hidden_however_short_plain_values_from_four_characters() -> None:
    env = {"TOKEN": "ab", "DEBUG": "1", "URL": "https://x"}
    assert sorted(hidden_values(env, ["TOKEN"])) == ["ab", "https://x"]
    assert hidden_values(env, []) == ["https://x"]


def test_the_log_masks_a_short_secret(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "logs.txt", max_bytes=1 << 20, secrets=hidden_values({"T": "ab"}, ["T"]))
    assert spool.write(b"token ab here\n") == b"token *** here\n"
    spool.close()
    assert (tmp_path / "logs.txt").read_bytes() == b"token *** here\n"


def test_junit_xml_is_masked_in_text_and_values_as_escaped_and_stays_well_formed() -> None:
    xml = (
        b'<?xml version="1.0" encoding="utf-8"?><testsuites><testcase name="t" message="x&#10;x">'
        b'<property name="token" value="a&amp;b"/><failure>a&amp;b &lt; x</failure>'
        b"<system-out><![CDATA[a&b x]]></system-out></testcase></testsuites>"
    )
    masked = redact_xml(xml, ["a&b", "x"])
    assert masked == (
        b'<?xml version="1.0" encoding="utf-8"?><testsuites><testcase name="t" message="***&#10;***">'
        b'<property name="token" value="***"/><failure>*** &lt; ***</failure>'
        b"<system-out><![CDATA[*** ***]]></system-out></testcase></testsuites>"
    )
    xml_dom.parseString(masked)  # a one-letter secret ("x" is in "<?xml") breaks no markup


def test_a_secret_enters_the_key_by_its_name_never_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = spec(tmp_path)
    with_secret = spec(tmp_path, secret_env=("TOKEN",))
    monkeypatch.setenv("TOKEN", "one")
    key = run_key("dirhash", "imageid", with_secret)
    monkeypatch.setenv("TOKEN", "two")
    assert run_key("dirhash", "imageid", with_secret) == key  # a rotated token is the same run
    assert run_key("dirhash", "imageid", plain) != key
    assert run_key("dirhash", "imageid", spec(tmp_path, secret_env=("OTHER",))) != key
    # A spec without secrets keeps the key it had before secrets existed (stored runs stay reusable).
    before = {
        "dir": "dirhash",
        "image": "imageid",
        "command": ["true"],
        "env": [],
        "workdir": "/lrun/work",
        "artifacts": list(DEFAULT_ARTIFACTS),
    }
    assert run_key("dirhash", "imageid", plain) == xxhash.xxh3_128_hexdigest(
        json.dumps(before, sort_keys=True).encode()
    )
