"""Remote (Remote Execution API) machine tables: what they declare, and bad ones refused where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun.config.machines import Machine, MachineResolver, load_machine_tables
from pytest_lrun.config.remote import Remote, target_of
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.reapi.channel import Channel


def resolve(tmp_path: Path, body: str, name: str = "grid") -> Machine:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[tool.lrun.machines.{name}]\n{body}\n", encoding="utf-8")
    return MachineResolver(load_machine_tables(pyproject), pyproject, environ={}).resolve(name)


def test_a_remote_table_names_the_service_its_instance_platform_and_image(tmp_path: Path) -> None:
    machine = resolve(
        tmp_path,
        'remote = "grpc://bg.example:8980"\ninstance_name = "ci"\nslots = 40\ntags = ["grid"]\n'
        'platform = { container-image = "docker://lrun-python:bookworm", OSFamily = "linux" }\n'
        'token_env = "GRID_TOKEN"\ntimeout = 900\n',
    )
    assert machine.host == "grpc://bg.example:8980"
    assert machine.image == "lrun-python:bookworm"
    assert (machine.slots, machine.tags, machine.timeout) == (40, ("grid",), 900.0)
    remote = machine.remote
    assert remote == Remote("grpc://bg.example:8980", "ci", {"OSFamily": "linux"}, "GRID_TOKEN")
    assert (target_of(remote.url), remote.secure) == ("bg.example:8980", False)


def test_the_live_output_streams_are_read_where_logstream_says_with_the_remotes_credentials(
    tmp_path: Path,
) -> None:
    machine = resolve(tmp_path, 'remote = "grpc://bg.example:8980"\nlogstream = "grpc://ls.example:8981"\n')
    assert machine.remote is not None and machine.remote.logstream == "grpc://ls.example:8981"
    channel = Channel(machine, timeout=1, url=machine.remote.logstream)
    try:
        assert channel.url == "grpc://ls.example:8981"
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ('remote = "http://bg:8980"', "remote", "expected a gRPC endpoint"),
        ('remote = "grpc://bg"', "remote", "(with its port)"),
        ('remote = "grpc://bg:8980/ci"', "remote", "the instance is instance_name"),
        ('remote = "grpc://bg:8980"\nhost = "tcp://h:2376"', "host", "does not apply to a remote"),
        ('remote = "grpc://bg:8980"\nbuild = "."', "build", "does not apply to a remote"),
        ('remote = "grpc://bg:8980"\nmemory = "1g"', "memory", "does not apply to a remote"),
        ('remote = "grpc://bg:8980"\ninstance_name = 3', "instance_name", "expected a string"),
        ('remote = "grpc://bg:8980"\nplatform = { "bad key" = "x" }', "platform.bad key", "property name"),
        (
            'remote = "grpc://bg:8980"\nplatform = { container-image = "lrun-python" }',
            "platform.container-image",
            "expected docker://IMAGE",
        ),
        (
            'remote = "grpc://bg:8980"\nimage = "a"\nplatform = { container-image = "docker://b" }',
            "image",
            "image and platform.container-image",
        ),
        ('remote = "grpc://bg:8980"\ntoken_env = "A=B"', "token_env", "name of a variable"),
        ('remote = "grpc://bg:8980"\ntls_verify = true', "tls_verify", "grpcs:// remotes only"),
        ('remote = "grpcs://bg:443"\ntls_ca_cert = "missing.pem"', "tls_ca_cert", "does not exist"),
        ('remote = "grpc://bg:8980"\nlogstream = "bg:8981"', "logstream", "expected a gRPC endpoint"),
        ('remote = "grpcs://bg:443"\nlogstream = "grpc://bg:8981"', "logstream", "expected grpcs://, found"),
    ],
)
def test_a_bad_remote_table_is_refused_naming_its_key(
    tmp_path: Path, body: str, key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, body)
    assert info.value.source.endswith(f"[tool.lrun.machines.grid] {key}")
    assert expected in info.value.reason


def test_the_bearer_token_comes_from_the_variable_the_table_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = resolve(tmp_path, 'remote = "grpc://127.0.0.1:1"\ntoken_env = "GRID_TOKEN"')
    monkeypatch.delenv("GRID_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="GRID_TOKEN is not set in this environment"):
        Channel(machine, timeout=1)
    monkeypatch.setenv("GRID_TOKEN", "t0ken")
    channel = Channel(machine, timeout=1)
    try:
        assert channel.metadata == (("authorization", "Bearer t0ken"),)
    finally:
        channel.close()
