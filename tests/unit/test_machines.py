"""Machine names resolve to the engine a user means, and bad settings say where they are."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.config.contexts import TLSConfig
from pytest_lrun.config.machines import (
    Machine,
    MachineResolver,
    load_machine_tables,
    machine_resolver,
    resolve_image,
)
from pytest_lrun.config.plan import load_plan
from pytest_lrun.core.errors import ConfigError, ImageNotSet, PlanError, UnknownMachine


def write_pyproject(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "demo"\n\n' + body, encoding="utf-8")
    return path


def make_resolver(
    tmp_path: Path, body: str = "", *, environ: dict[str, str] | None = None, config_dir: Path | None = None
) -> MachineResolver:
    pyproject = write_pyproject(tmp_path, body)
    return MachineResolver(
        load_machine_tables(pyproject),
        pyproject,
        docker_config_dir=config_dir if config_dir is not None else tmp_path / "docker-config",
        environ=environ if environ is not None else {},
    )


def make_context(
    config_dir: Path, name: str, host: str, *, skip_tls_verify: bool = False, tls_files: tuple[str, ...] = ()
) -> Path:
    """Write a context exactly as `docker context create` lays it out."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_dir = config_dir / "contexts" / "meta" / digest
    meta_dir.mkdir(parents=True)
    meta = {
        "Name": name,
        "Metadata": {},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_tls_verify}},
    }
    (meta_dir / "meta.json").write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
    if tls_files:
        tls_dir = config_dir / "contexts" / "tls" / digest / "docker"
        tls_dir.mkdir(parents=True)
        for file_name in tls_files:
            (tls_dir / file_name).write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    return meta_dir / "meta.json"


# --- pyproject tables ------------------------------------------------------


def test_table_resolves_with_all_fields_and_relative_tls_paths(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for file_name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / file_name).write_text("pem", encoding="utf-8")
    resolver = make_resolver(
        tmp_path,
        """
[tool.lrun.machines.m1]
host = "tcp://build-1.example:2376"
tls_verify = true
tls_ca_cert = "certs/ca.pem"
tls_client_cert = "certs/cert.pem"
tls_client_key = "certs/key.pem"
image = "python:3.12-slim"
cpus = 2
memory = "2g"
network = "bridge"
env = { PIP_INDEX_URL = "https://mirror.example/simple", CI = "1" }
timeout = 900
pull = "always"
workdir = "/srv/work"
""",
    )
    machine = resolver.resolve("m1")
    assert machine == Machine(
        name="m1",
        host="tcp://build-1.example:2376",
        source="config",
        tls=TLSConfig(
            ca_cert=str(certs / "ca.pem"),
            client_cert=str(certs / "cert.pem"),
            client_key=str(certs / "key.pem"),
            verify=True,
        ),
        image="python:3.12-slim",
        cpus=2.0,
        memory=2 * 1024**3,
        network="bridge",
        env={"PIP_INDEX_URL": "https://mirror.example/simple", "CI": "1"},
        timeout=900.0,
        pull="always",
        workdir="/srv/work",
    )
    assert machine.describe() == "m1 (tcp://build-1.example:2376, TLS, from pyproject.toml)"


def test_minimal_table_gets_defaults(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, '[tool.lrun.machines.box]\nhost = "ssh://ci@box.example"\n')
    machine = resolver.resolve("box")
    assert (machine.host, machine.source, machine.tls, machine.image) == (
        "ssh://ci@box.example",
        "config",
        None,
        None,
    )
    assert (machine.network, machine.pull, machine.workdir, dict(machine.env)) == (
        "none",
        "missing",
        "/lrun/work",
        {},
    )
    assert machine.describe() == "box (ssh://ci@box.example, from pyproject.toml)"
    assert machine.pids_limit == 4096


def test_pids_limit_is_read_from_the_table(tmp_path: Path) -> None:
    body = '[tool.lrun.machines.m1]\nhost = "unix:///var/run/docker.sock"\npids_limit = 64\n'
    assert make_resolver(tmp_path, body).resolve("m1").pids_limit == 64


def test_machines_not_from_a_table_get_the_default_pids_limit(tmp_path: Path) -> None:
    assert make_resolver(tmp_path).resolve("local").pids_limit == 4096


def test_machine_record_is_frozen_hashable_and_picklable(tmp_path: Path) -> None:
    resolver = make_resolver(
        tmp_path, '[tool.lrun.machines.m1]\nhost = "unix:///var/run/docker.sock"\nenv = { A = "1" }\n'
    )
    machine = resolver.resolve("m1")
    assert pickle.loads(pickle.dumps(machine)) == machine
    assert hash(machine) == hash(resolver.resolve("m1"))
    with pytest.raises(TypeError):
        machine.env["A"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('cpus = "2"', "cpus", "expected a number of CPUs above zero, found string '2'"),
        ("cpus = -1", "cpus", "expected a number of CPUs above zero, found -1"),
        ("timeout = true", "timeout", "expected a number of seconds above zero, found boolean True"),
        ("timeout = nan", "timeout", "expected a positive number of seconds, found nan"),
        ("timeout = inf", "timeout", "expected a positive number of seconds, found inf"),
        ("timeout = -5", "timeout", "expected a positive number of seconds, found -5"),
        # Past this, waits and socket timeouts overflow at run time.
        ("timeout = 1e12", "timeout", "expected at most 1e+09 seconds, found 1000000000000.0"),
        ("cpus = nan", "cpus", "expected a number of CPUs above zero, found nan"),
        # int(cpus * 1e9) nano-CPUs would be inf, or overflow the engine's int64, at container create.
        ("cpus = 1e300", "cpus", "expected at most 9.22337e+09, found 1e+300"),
        ("image = 3", "image", "expected a non-empty string, found integer 3"),
        ('network = ""', "network", "expected a non-empty string, found string ''"),
        ('tls_verify = "yes"', "tls_verify", "expected true or false, found string 'yes'"),
        ("env = { N = 1 }", "env.N", "expected a string (quote it), found integer 1"),
        ('env = ["A=1"]', "env", "found array ['A=1']"),
        ('workdir = "work"', "workdir", "expected an absolute container path other than '/', found 'work'"),
        ("cpu = 2", "cpu", "unknown key; did you mean 'cpus'?"),
        ('pull = "sometimes"', "pull", "expected one of never, missing, always, found 'sometimes'"),
        ('tags = "linux"', "tags", "expected a list of names"),
        ('tags = ["a b"]', "tags", "expected a list of names"),
        ("slots = 0", "slots", "expected a whole number from 1 to 1024, found integer 0"),
        ("slots = 2.5", "slots", "expected a whole number from 1 to 1024"),
        ("slots = true", "slots", "expected a whole number from 1 to 1024"),
        ("pids_limit = 0", "pids_limit", "expected a whole number from 16 to 4194304, found integer 0"),
        ("pids_limit = -1", "pids_limit", "expected a whole number from 16 to 4194304, found integer -1"),
        ("pids_limit = 8", "pids_limit", "expected a whole number from 16 to 4194304, found integer 8"),
        ("pids_limit = 4194305", "pids_limit", "from 16 to 4194304, found integer 4194305"),
        ("pids_limit = 100.0", "pids_limit", "from 16 to 4194304, found float 100.0"),
        ('pids_limit = "4096"', "pids_limit", "from 16 to 4194304, found string '4096'"),
        ("pids_limit = true", "pids_limit", "from 16 to 4194304, found boolean True"),
        ("pid_limit = 64", "pid_limit", "unknown key; did you mean 'pids_limit'?"),
    ],
)
def test_bad_value_names_the_key_path(tmp_path: Path, line: str, key: str, expected: str) -> None:
    host = "tcp://h:2376" if key == "tls_verify" else "unix:///var/run/docker.sock"
    resolver = make_resolver(tmp_path, f'[tool.lrun.machines.m1]\nhost = "{host}"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        resolver.resolve("m1")
    assert info.value.source == f"{tmp_path / 'pyproject.toml'} [tool.lrun.machines.m1] {key}"
    assert expected in info.value.reason
    assert str(info.value).startswith(info.value.source + ": ")


@pytest.mark.parametrize(
    ("memory", "size"),
    [
        ("512m", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1.5G", 1536 * 1024**2),
        ("1.5g", 1536 * 1024**2),
        ("512mb", 512 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("64k", 64 * 1024),
        ("1024", 1024),
        ("1024b", 1024),
    ],
)
def test_memory_is_parsed_to_bytes_when_the_table_is_read(tmp_path: Path, memory: str, size: int) -> None:
    resolver = make_resolver(
        tmp_path, f'[tool.lrun.machines.m1]\nhost = "tcp://h:2375"\nmemory = "{memory}"\n'
    )
    assert resolver.resolve("m1").memory == size


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ('"2 GB"', "expected a size: a byte count (1048576) or a number with a unit k, m or g"),
        ('"lots"', "expected a size: a byte count"),
        ('"-1g"', "expected a size: a byte count"),
        ('"nan"', "expected a size: a byte count"),
        ('"1e400"', "expected a size: a byte count"),
        ('"0m"', "expected a size of at least one byte"),
        ('"99999999999g"', "expected at most 9223372036854775807 bytes"),
        ("512", "expected a size string: a byte count"),
    ],
)
def test_bad_memory_names_the_key_and_what_is_wrong(tmp_path: Path, memory: str, expected: str) -> None:
    resolver = make_resolver(tmp_path, f'[tool.lrun.machines.m1]\nhost = "tcp://h:2375"\nmemory = {memory}\n')
    with pytest.raises(ConfigError) as info:
        resolver.resolve("m1")
    assert info.value.source.endswith("[tool.lrun.machines.m1] memory")
    assert expected in info.value.reason


@pytest.mark.parametrize(
    ("host_line", "expected"),
    [
        ("", "missing; expected a Docker URL"),
        ('host = "http://h:2375"', "found 'http://h:2375'"),
        ('host = "h:2375"', "expected a Docker URL"),
        ('host = "unix://docker.sock"', "absolute socket path"),
        ('host = "tcp://:2375"', "expected a host name after tcp://"),
        ('host = "tcp://h:port"', "found 'tcp://h:port'"),
    ],
)
def test_bad_host(tmp_path: Path, host_line: str, expected: str) -> None:
    resolver = make_resolver(tmp_path, f"[tool.lrun.machines.m1]\n{host_line}\nimage = 'x'\n")
    with pytest.raises(ConfigError) as info:
        resolver.resolve("m1")
    assert info.value.source.endswith("[tool.lrun.machines.m1] host")
    assert expected in info.value.reason


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("pem", encoding="utf-8")
    cases = {
        'host = "ssh://u@h"\ntls_verify = true': ("tls_verify", "tcp:// hosts only"),
        'host = "tcp://h:2376"\ntls_ca_cert = "nope/ca.pem"': ("tls_ca_cert", "does not exist"),
        'host = "tcp://h:2376"\ntls_client_cert = "cert.pem"': ("tls_client_key", "tls_client_cert is set"),
    }
    for body, (key, expected) in cases.items():
        resolver = make_resolver(tmp_path, f"[tool.lrun.machines.m1]\n{body}\n")
        with pytest.raises(ConfigError) as info:
            resolver.resolve("m1")
        assert info.value.source.endswith(f"[tool.lrun.machines.m1] {key}"), body
        assert expected in info.value.reason, body


def test_tls_verify_false_alone_means_tls_without_verification(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, '[tool.lrun.machines.m1]\nhost = "tcp://h:2376"\ntls_verify = false\n')
    assert resolver.resolve("m1").tls == TLSConfig(None, None, None, verify=False)


def test_quoted_machine_name_in_error_source(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, '[tool.lrun.machines."gpu.box"]\nhost = "tcp://h:2375"\ncpus = "x"\n')
    with pytest.raises(ConfigError, match=r'\[tool\.lrun\.machines\."gpu\.box"\] cpus: expected'):
        resolver.resolve("gpu.box")


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, "[tool.lrun.machines.m1\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_machine_tables(pyproject)
    assert info.value.source == str(pyproject)
    assert "not valid TOML" in info.value.reason


def test_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    # tomllib recurses per nesting level: this raised RecursionError, a traceback at start-up.
    depth = 5000
    pyproject = write_pyproject(tmp_path, f"[tool.lrun.machines.m1]\nx = {'[' * depth}{']' * depth}\n")
    with pytest.raises(ConfigError) as info:
        load_machine_tables(pyproject)
    assert info.value.source == str(pyproject)
    assert info.value.reason == "not valid TOML: nested too deeply"


def test_missing_pyproject_and_no_tables_give_nothing(tmp_path: Path) -> None:
    assert load_machine_tables(tmp_path / "absent.toml") == {}
    assert load_machine_tables(None) == {}
    assert load_machine_tables(write_pyproject(tmp_path, "[tool.other]\nx = 1\n")) == {}


def test_machine_that_is_not_a_table(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, '[tool.lrun.machines]\nm1 = "tcp://h:2375"\n')
    with pytest.raises(ConfigError) as info:
        load_machine_tables(pyproject)
    assert info.value.source == f"{pyproject} [tool.lrun.machines] m1"
    assert "found string 'tcp://h:2375'" in info.value.reason


# --- Docker contexts -------------------------------------------------------


def test_context_resolves_with_tls_files(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    make_context(
        config_dir, "remote", "tcp://remote.example.com:2376", tls_files=("ca.pem", "cert.pem", "key.pem")
    )
    machine = make_resolver(tmp_path, config_dir=config_dir).resolve("remote")
    tls_dir = config_dir / "contexts" / "tls" / hashlib.sha256(b"remote").hexdigest() / "docker"
    assert machine == Machine(
        name="remote",
        host="tcp://remote.example.com:2376",
        source="context",
        tls=TLSConfig(
            str(tls_dir / "ca.pem"), str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"), verify=True
        ),
    )
    assert machine.describe() == "remote (tcp://remote.example.com:2376, TLS, from Docker context)"


def test_context_skip_tls_verify_and_plain_contexts(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    make_context(config_dir, "insecure", "tcp://h:2376", skip_tls_verify=True, tls_files=("ca.pem",))
    make_context(config_dir, "plain", "tcp://h:2375")
    make_context(config_dir, "over-ssh", "ssh://me@h")
    resolver = make_resolver(tmp_path, config_dir=config_dir)
    insecure = resolver.resolve("insecure").tls
    assert insecure is not None
    assert (insecure.verify, insecure.client_cert) == (False, None)
    assert resolver.resolve("plain").tls is None
    assert resolver.resolve("over-ssh").host == "ssh://me@h"


def test_config_table_wins_over_context_of_same_name(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    make_context(config_dir, "m1", "tcp://from-context:2375")
    resolver = make_resolver(
        tmp_path, '[tool.lrun.machines.m1]\nhost = "tcp://from-config:2375"\n', config_dir=config_dir
    )
    machine = resolver.resolve("m1")
    assert (machine.host, machine.source) == ("tcp://from-config:2375", "config")


def test_broken_context_fails_only_its_own_resolve(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    make_context(config_dir, "good", "tcp://h:2375")
    broken = make_context(config_dir, "broken", "tcp://h:2375")
    broken.write_text("{not json", encoding="utf-8")
    resolver = make_resolver(tmp_path, config_dir=config_dir)
    assert resolver.known() == ["good", "local"]
    with pytest.raises(ConfigError) as info:
        resolver.resolve("broken")
    assert info.value.source == str(broken)
    assert "not valid JSON" in info.value.reason
    assert resolver.resolve("good").host == "tcp://h:2375"


def test_context_without_docker_endpoint(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    meta = make_context(config_dir, "k8s", "tcp://h:2375")
    meta.write_text(json.dumps({"Name": "k8s", "Metadata": {}, "Endpoints": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="has no docker endpoint"):
        make_resolver(tmp_path, config_dir=config_dir).resolve("k8s")


def test_docker_config_dir_defaults_to_docker_config_env(tmp_path: Path) -> None:
    config_dir = tmp_path / "elsewhere"
    make_context(config_dir, "remote", "tcp://h:2375")
    resolver = MachineResolver({}, None, environ={"DOCKER_CONFIG": str(config_dir)})
    assert resolver.docker_config_dir == config_dir
    assert resolver.resolve("remote").source == "context"


# --- the environment engine --------------------------------------------------


def test_local_uses_docker_host_from_environ(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, environ={"DOCKER_HOST": "tcp://engine.example:2375"})
    machine = resolver.resolve("local")
    assert machine == Machine(name="local", host="tcp://engine.example:2375", source="environment")
    assert machine.describe() == "local (tcp://engine.example:2375, from environment)"
    assert resolver.resolve("default").host == "tcp://engine.example:2375"


def test_local_defaults_to_the_unix_socket(tmp_path: Path) -> None:
    for environ in ({}, {"DOCKER_HOST": ""}):
        machine = make_resolver(tmp_path, environ=environ).resolve("local")
        assert (machine.host, machine.tls) == ("unix:///var/run/docker.sock", None)


def test_local_tls_from_docker_tls_verify_and_cert_path(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for file_name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / file_name).write_text("pem", encoding="utf-8")
    environ = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    machine = make_resolver(tmp_path, environ=environ).resolve("local")
    assert machine.tls == TLSConfig(
        str(certs / "ca.pem"), str(certs / "cert.pem"), str(certs / "key.pem"), True
    )


def test_bad_docker_host_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_resolver(tmp_path, environ={"DOCKER_HOST": "engine:2375"}).resolve("local")
    assert info.value.source == "environment DOCKER_HOST"


def test_local_table_overrides_the_environment(tmp_path: Path) -> None:
    resolver = make_resolver(
        tmp_path,
        '[tool.lrun.machines.local]\nhost = "unix:///run/user/1000/docker.sock"\nimage = "alpine"\n',
        environ={"DOCKER_HOST": "tcp://ignored:2375"},
    )
    machine = resolver.resolve("local")
    assert (machine.host, machine.source, machine.image) == (
        "unix:///run/user/1000/docker.sock",
        "config",
        "alpine",
    )


# --- names -----------------------------------------------------------------


def test_unknown_name_lists_known_machines(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    make_context(config_dir, "remote", "tcp://h:2375")
    resolver = make_resolver(
        tmp_path, '[tool.lrun.machines.m1]\nhost = "tcp://h:2375"\n', config_dir=config_dir
    )
    assert resolver.known() == ["local", "m1", "remote"]
    with pytest.raises(UnknownMachine) as info:
        resolver.resolve("m2")
    pyproject = tmp_path / "pyproject.toml"
    assert str(info.value) == (
        f"unknown machine 'm2'; known machines: local, m1, remote (machine tables read from {pyproject})"
    )
    assert info.value.known == ["local", "m1", "remote"]
    assert info.value.tables_from == f"machine tables read from {pyproject}"


def test_machine_tables_are_found_upward_from_the_invocation_directory(tmp_path: Path) -> None:
    # A suite with its own setup.cfg is pytest's rootdir; the tables are in the project above it.
    write_pyproject(tmp_path, '[tool.lrun.machines.e1]\nhost = "tcp://h:2375"\ntags = ["fleet"]\n')
    suite = tmp_path / "toolz"
    suite.mkdir()
    (suite / "setup.cfg").write_text("[tool:pytest]\n")
    for cwd in (tmp_path, suite):
        resolver = machine_resolver(None, cwd)
        assert [m.name for m in resolver.resolve_all("tag:fleet")] == ["e1"]
        assert resolver.pyproject_path == tmp_path / "pyproject.toml"


def test_a_named_machine_file_wins_and_every_unknown_machine_error_names_the_file(tmp_path: Path) -> None:
    write_pyproject(tmp_path, '[tool.lrun.machines.e1]\nhost = "tcp://h:2375"\n')
    fleet = tmp_path / "ci" / "fleet.toml"
    fleet.parent.mkdir()
    fleet.write_text('[tool.lrun.machines.ci1]\nhost = "tcp://ci:2375"\ntags = ["ci"]\n')
    resolver = machine_resolver(Path("ci/fleet.toml"), tmp_path)
    assert resolver.resolve("ci1").host == "tcp://ci:2375"
    for target in ("e1", "tag:fleet"):
        with pytest.raises(UnknownMachine) as info:
            resolver.resolve_all(target)
        assert str(info.value).endswith(f"(machine tables read from {fleet})")
    with pytest.raises(PlanError, match=rf"known machines: .*ci1.*\(machine tables read from {fleet}\)$"):
        plan = tmp_path / "plan.toml"
        plan.write_text('[[entry]]\nname = "a"\ndir = "."\nmachine = "e1"\n')
        load_plan(plan, known_machines=resolver.targets())


def test_no_machine_file_found_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-contexts"))
    resolver = machine_resolver(None, tmp_path)  # no pyproject.toml here or above (tmp dirs have none)
    with pytest.raises(UnknownMachine) as info:
        resolver.resolve("e1")
    assert str(info.value) == (
        f"unknown machine 'e1'; known machines: local (no pyproject.toml with machine tables found from "
        f"{tmp_path} upward; name the file with --lrun-config or LRUN_CONFIG (lrun: --project))"
    )


# --- images ----------------------------------------------------------------


def test_resolve_image_precedence_and_missing_image() -> None:
    with_image = Machine(name="m1", host="tcp://h:2375", source="config", image="from-table")
    assert resolve_image(with_image, entry_image="from-entry", option_image="from-option") == "from-entry"
    assert resolve_image(with_image, entry_image=None, option_image="from-option") == "from-option"
    assert resolve_image(with_image, entry_image=None, option_image=None) == "from-table"

    bare = Machine(name="m1", host="tcp://h:2375", source="config")
    with pytest.raises(ImageNotSet) as info:
        resolve_image(bare, entry_image=None, option_image="")
    assert info.value.machine == "m1"
    assert "--lrun-image" in str(info.value)
    assert "[tool.lrun.machines.m1]" in str(info.value)


# --- the real docker CLI ---------------------------------------------------


def _docker(config_dir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_CONFIG"] = str(config_dir)
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI (no daemon)")
def test_context_created_by_the_real_docker_cli_resolves(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker-config"
    _docker(config_dir, "context", "create", "lrun-ci", "--docker", "host=tcp://127.0.0.1:2375")

    resolver = MachineResolver({}, None, environ={"DOCKER_CONFIG": str(config_dir)})
    assert "lrun-ci" in resolver.known()
    machine = resolver.resolve("lrun-ci")
    assert (machine.host, machine.source, machine.tls) == ("tcp://127.0.0.1:2375", "context", None)


@pytest.mark.skipif(
    shutil.which("docker") is None or shutil.which("openssl") is None,
    reason="needs the docker CLI and openssl",
)
def test_tls_context_created_by_the_real_docker_cli_resolves(tmp_path: Path) -> None:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=lrun-test", "-days", "1"),
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=True,
    )
    config_dir = tmp_path / "docker-config"
    endpoint = (
        f"host=tcp://127.0.0.1:2376,ca={tmp_path / 'cert.pem'},cert={tmp_path / 'cert.pem'},"
        f"key={tmp_path / 'key.pem'},skip-tls-verify=true"
    )
    _docker(config_dir, "context", "create", "lrun-tls", "--docker", endpoint)
    tls_path = Path(
        json.loads(_docker(config_dir, "context", "inspect", "lrun-tls"))[0]["Storage"]["TLSPath"]
    )

    machine = MachineResolver({}, None, docker_config_dir=config_dir, environ={}).resolve("lrun-tls")
    assert machine.tls == TLSConfig(
        str(tls_path / "docker" / "ca.pem"),
        str(tls_path / "docker" / "cert.pem"),
        str(tls_path / "docker" / "key.pem"),
        verify=False,
    )


# --- what reaches the engine ----------------------------------------------------


@pytest.mark.parametrize(("state", "oom_killed"), [({"OOMKilled": True}, True), ({}, False)])
def test_container_state_says_whether_the_kernel_killed_it_for_memory(
    state: dict[str, Any], oom_killed: bool
) -> None:
    from pytest_lrun.engine.docker import _state

    info = {"Id": "c1", "State": {"Status": "exited", "ExitCode": 137, **state}, "Config": {}}
    assert _state(info).oom_killed is oom_killed


def _created_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str) -> dict[str, Any]:
    """The HostConfig a DockerEngine sends to create a container of machine m1 (``table``'s keys)."""
    import docker

    from pytest_lrun.engine import docker as engine

    machine = make_resolver(
        tmp_path, f'[tool.lrun.machines.m1]\nhost = "tcp://127.0.0.1:1"\n{table}'
    ).resolve("m1")
    # A client with a fixed API version does not dial the engine; create_container is faked below.
    monkeypatch.setattr(
        engine, "_Client", lambda **kw: docker.APIClient(base_url=kw["base_url"], version="1.41")
    )
    created: dict[str, Any] = {}

    def create_container(image: str, **kwargs: Any) -> dict[str, str]:
        created.update(kwargs)
        return {"Id": "c1"}

    docker_engine = engine.DockerEngine(machine)
    monkeypatch.setattr(docker_engine._api, "create_container", create_container)
    spec = engine.ContainerSpec(
        image="img",
        command=["true"],
        labels={},
        workdir=machine.workdir,
        network=machine.network,
        memory=machine.memory,
        pids_limit=machine.pids_limit,
    )
    try:
        assert docker_engine.create(spec) == "c1"
    finally:
        docker_engine.close()
    host_config: dict[str, Any] = created["host_config"]
    return host_config


def test_memory_reaches_the_engine_as_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "1.5g" passed machine validation, then a second parser refused it at container create.
    assert _created_host_config(tmp_path, monkeypatch, 'memory = "1.5g"\n')["Memory"] == 1536 * 1024**2


def test_container_defaults_reach_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host_config = _created_host_config(tmp_path, monkeypatch, "")
    assert host_config["PidsLimit"] == 4096
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["CapAdd"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["NetworkMode"] == "none"
    assert not any(host_config.get(key) for key in ("Privileged", "Binds", "Mounts"))
    assert "Memory" not in host_config  # no cap unless the machine sets one
    assert _created_host_config(tmp_path, monkeypatch, "pids_limit = 64\n")["PidsLimit"] == 64


FLEET = """
[tool.lrun.machines.a]
host = "tcp://a:2375"
tags = ["fleet", "big"]
slots = 2

[tool.lrun.machines.b]
host = "tcp://b:2375"

[tool.lrun.machines.c]
host = "tcp://c:2375"
tags = ["fleet"]
"""


def test_a_tag_names_every_machine_that_carries_it_in_table_order(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, FLEET)
    assert [m.name for m in resolver.resolve_all("tag:fleet")] == ["a", "c"]
    (big,) = resolver.resolve_all("tag:big")
    assert (big.name, big.slots, big.tags) == ("a", 2, ("fleet", "big"))
    assert [m.name for m in resolver.resolve_all("b")] == ["b"]
    assert resolver.resolve("b").slots == 1 and resolver.resolve("b").tags == ()
    assert {"tag:fleet", "tag:big", "a", "b", "c"} <= set(resolver.targets())
    assert "tag:fleet" not in resolver.known()  # machines only: what lrun machines and reap go over


def test_an_unknown_tag_lists_the_known_ones(tmp_path: Path) -> None:
    resolver = make_resolver(tmp_path, FLEET)
    with pytest.raises(UnknownMachine, match=r"machine 'tag:gpu'; known machines: tag:big, tag:fleet \("):
        resolver.resolve_all("tag:gpu")
