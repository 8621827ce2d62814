"""Machine names to Docker Engine connection settings.

This module owns the meaning of a machine name: it reads the
``[tool.lrun.machines.NAME]`` tables of a project's ``pyproject.toml`` (with the
typed reader of :mod:`pytest_lrun.config.tables`), asks
:mod:`pytest_lrun.config.contexts` for the Docker CLI's contexts and the
``DOCKER_*`` environment, and turns a name into a frozen :class:`Machine` record
(engine URL, TLS material, container defaults). It never talks to an engine and
never imports ``docker``; :mod:`pytest_lrun.engine.docker` turns a
:class:`Machine` into a client.

A name resolves to the first of, in this order:

1. ``[tool.lrun.machines.NAME]`` in the project's ``pyproject.toml``
   (source ``"config"``); a table named ``local`` overrides the environment engine.
   The file is found by :func:`find_machine_file`, for the plugin and the ``lrun``
   command line alike: the one named (``--lrun-config``, ``LRUN_CONFIG``, ``lrun
   --project``), else the nearest ``pyproject.toml`` from the current directory
   upward (never pytest's rootdir, which a suite's own ``setup.cfg`` or ``tox.ini`` moves);
2. the Docker context ``NAME`` under ``$DOCKER_CONFIG/contexts`` (default
   ``~/.docker``), laid out as ``docker context create`` writes it
   (source ``"context"``); ``default`` is never looked up as a context;
3. for ``local`` and ``default`` only: the engine the environment names,
   ``DOCKER_HOST`` or ``unix:///var/run/docker.sock``, with TLS from
   ``DOCKER_TLS_VERIFY`` / ``DOCKER_TLS`` / ``DOCKER_CERT_PATH``
   (source ``"environment"``).

Any other name raises :class:`~pytest_lrun.core.errors.UnknownMachine` listing the
known names and naming the file the tables were read from (or where none was
found). ``tag:NAME`` (:meth:`MachineResolver.resolve_all`) names every machine
table whose ``tags`` carry NAME, in table order; a table's ``slots`` says how many
runs its engine takes at once (default 1), its ``pids_limit`` how many processes a
run's container may hold (default 4096). The image of a run is chosen by :func:`resolve_image`: plan entry,
then ``--lrun-image`` or ``--lrun-build``, then the machine table. Each of them names an image or a
build (a :class:`~pytest_lrun.config.builds.Build`: ``build = "CONTEXT"`` with optional ``dockerfile``,
``build_args`` and ``target``), never both.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

from pytest_lrun.config.builds import Build
from pytest_lrun.config.contexts import (
    TLSConfig,
    context_endpoint,
    context_names,
    docker_config_dir_of,
    environment_endpoint,
    host_problem,
)
from pytest_lrun.config.remote import (
    CONTAINER_IMAGE,
    NOT_REMOTE_KEYS,
    REMOTE_KEYS,
    Remote,
    image_of,
    logstream_problem,
    property_problem,
    remote_problem,
)
from pytest_lrun.config.tables import BUILD_KEYS, FrozenEnv, TableReader, parse_toml, toml_type
from pytest_lrun.core.errors import ConfigError, ImageNotSet, UnknownMachine
from pytest_lrun.core.text import printable, shown_value

__all__ = [
    "DEFAULT_PIDS_LIMIT",
    "ENVIRONMENT_NAMES",
    "PULL_POLICIES",
    "TAG_PREFIX",
    "ImageSource",
    "KnownNames",
    "Machine",
    "MachineResolver",
    "MachineSource",
    "PullPolicy",
    "find_machine_file",
    "load_machine_tables",
    "machine_resolver",
    "resolve_image",
]

MachineSource = Literal["config", "context", "environment"]
PullPolicy = Literal["never", "missing", "always"]

PULL_POLICIES: tuple[PullPolicy, ...] = ("never", "missing", "always")
_PULL_BY_NAME: dict[str, PullPolicy] = {policy: policy for policy in PULL_POLICIES}
# Names that fall back to the engine of the environment when nothing else defines them.
ENVIRONMENT_NAMES: tuple[str, ...] = ("local", "default")

_SOURCE_LABELS: dict[str, str] = {
    "config": "pyproject.toml",
    "context": "Docker context",
    "environment": "environment",
}
# The engine counts CPUs in int64 nano-CPUs.
_MAX_CPUS = (2**63 - 1) // 10**9
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TLS_KEYS = ("tls_verify", "tls_ca_cert", "tls_client_cert", "tls_client_key")
_TABLE_KEYS = (
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
    "pids_limit",
    *BUILD_KEYS,
    "secret_env",
    *_TLS_KEYS,
    *REMOTE_KEYS,
)
TAG_PREFIX = "tag:"
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# One engine running more runs at once than this is a typo, not a fleet.
_MAX_SLOTS = 1024
#: Processes (and threads) a run's container may hold at once unless its table says otherwise:
#: room for a parallel test run, and a fork bomb ends there instead of on the engine's host.
DEFAULT_PIDS_LIMIT = 4096
# Fewer than this and a Python interpreter with a few workers cannot start; above it is the
# kernel's own ceiling (pid_max at most 2**22).
_PIDS_LIMIT_RANGE = (16, 2**22)


# --- records ---------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """A named Docker Engine and the container defaults of runs on it.

    ``host`` is a Docker URL (``unix://``, ``tcp://``, ``ssh://``); ``source`` says
    where the definition came from. ``memory`` is a byte count. ``env`` is stored
    as a read-only mapping, so the record stays hashable.
    """

    name: str
    host: str
    source: MachineSource
    tls: TLSConfig | None = None
    image: str | None = None
    build: Build | None = None  # instead of an image: built on the engine before its first run
    cpus: float | None = None
    memory: int | None = None  # bytes, parsed from the table's size text
    network: str = "none"
    env: Mapping[str, str] = field(default_factory=FrozenEnv)
    secret_env: tuple[str, ...] = ()  # host env vars passed in as secrets (``--lrun-secret-env``)
    timeout: float | None = None
    pull: PullPolicy = "missing"
    workdir: str = "/lrun/work"
    tags: tuple[str, ...] = ()
    slots: int = 1
    pids_limit: int = DEFAULT_PIDS_LIMIT  # processes and threads in a run's container at once
    remote: Remote | None = None  # a Remote Execution API service (config.remote), ``host`` its URL

    def __post_init__(self) -> None:
        if not isinstance(self.env, FrozenEnv):
            object.__setattr__(self, "env", FrozenEnv(self.env))

    def describe(self) -> str:
        """A short human description, e.g. ``m1 (unix:///var/run/docker.sock, from pyproject.toml)``."""
        tls = ", TLS" if self.tls is not None else ""
        return f"{self.name} ({self.host}{tls}, from {_SOURCE_LABELS.get(self.source, self.source)})"


# --- pyproject.toml ----------------------------------------------------------


def _table_header(name: str) -> str:
    key = name if _BARE_KEY_RE.match(name) else json.dumps(name)
    return f"[tool.lrun.machines.{key}]"


def _found(value: object) -> str:
    """A bad value as a machine table's errors quote it: ``found string 'yes'``."""
    return f"found {toml_type(value)} {shown_value(value, limit=60)}"


PYPROJECT = "pyproject.toml"


def find_machine_file(named: Path | None, cwd: Path | None = None, *, source: str) -> Path | None:
    """The TOML file holding the ``[tool.lrun.machines.*]`` tables, absolute.

    ``named`` (the file, or a directory holding a ``pyproject.toml``; relative to ``cwd``)
    must exist; without it, the nearest ``pyproject.toml`` from ``cwd`` (default: the
    current directory) upward, or None. The plugin and the ``lrun`` command line both
    find it here.

    :param source: who named ``named`` (``--lrun-config``, ``--project``), for the error
    :raises ConfigError: ``named`` is neither such a file nor such a directory
    """
    start = (cwd or Path.cwd()).absolute()
    if named is not None:
        path = start / named.expanduser()
        if path.is_dir():
            path = path / PYPROJECT
        if not path.is_file():
            raise ConfigError(
                source, f"no {PYPROJECT} at {path}" if path.name == PYPROJECT else f"no file {path}"
            )
        return path
    for directory in (start, *start.parents):
        candidate = directory / PYPROJECT
        if candidate.is_file():
            return candidate
    return None


def machine_resolver(
    named: Path | None, cwd: Path | None = None, *, source: str = "--lrun-config"
) -> MachineResolver:
    """A resolver of the machine tables :func:`find_machine_file` finds (see its parameters)."""
    path = find_machine_file(named, cwd, source=source)
    return MachineResolver(load_machine_tables(path), path, searched_from=(cwd or Path.cwd()).absolute())


def load_machine_tables(pyproject: Path | None) -> dict[str, dict[str, Any]]:
    """The ``[tool.lrun.machines.NAME]`` tables of ``pyproject``, by name.

    A missing file (or ``None``) gives ``{}``. A file that is not valid TOML (nested too
    deeply included), or a ``machines`` entry that is not a table, raises
    :class:`ConfigError` naming the file.
    """
    if pyproject is None:
        return {}
    try:
        data = parse_toml(pyproject.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(str(pyproject), f"cannot read: {e.strerror or e}") from e
    except ValueError as e:  # not UTF-8 (a UnicodeDecodeError), or not TOML
        raise ConfigError(str(pyproject), f"not valid TOML: {e}") from e

    node: Any = data
    for depth, key in enumerate(("tool", "lrun", "machines")):
        node = node.get(key, {})
        if not isinstance(node, dict):
            where = ".".join(("tool", "lrun", "machines")[: depth + 1])
            raise ConfigError(f"{pyproject} [{where}]", f"expected a table, {_found(node)}")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in node.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{pyproject} [tool.lrun.machines] {name}",
                f"expected a machine table ({_table_header(name)} with at least `host`), {_found(table)}",
            )
        tables[name] = table
    return tables


class _MachineTable(TableReader):
    """Typed access to one machine table; every error names the file, the table and the key path."""

    def __init__(self, where: str, name: str, table: Mapping[str, Any], base_dir: Path) -> None:
        super().__init__(table, base_dir)
        self.where = where
        self.name = name

    def origin(self, key: str) -> str:
        return f"{self.where} {_table_header(self.name)} {key}"

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.origin(key), reason)

    def found(self, value: object, *, typed: bool = True) -> str:
        return _found(value) if typed else f"found {value!r}"

    def string(self, key: str) -> str | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, {_found(value)}")
        return value

    def string_table(self, key: str, what: str) -> dict[str, str] | None:
        """A table of ``NAME = "value"`` strings (``env``, ``build_args``); errors name ``key.NAME``."""
        if key not in self.table:
            return None
        raw = self.table[key]
        if not isinstance(raw, dict):
            raise self.error(key, f'expected a table of NAME = "value" strings, {_found(raw)}')
        for var, value in raw.items():
            if not var or "=" in var:
                raise self.error(f"{key}.{var}", f"expected a {what} name without '='")
            if not isinstance(value, str):
                raise self.error(f"{key}.{var}", f"expected a string (quote it), {_found(value)}")
        return dict(raw)


def _machine_from_table(name: str, table: Mapping[str, Any], where: str, base_dir: Path) -> Machine:
    reader = _MachineTable(where, name, table, base_dir)
    _check_keys(reader)
    if "remote" in table:
        return _remote_machine(reader)
    host = _host(reader)
    tls = _tls(reader, host)
    defaults = _container_defaults(reader)  # checked before the keys below, as they always were
    return Machine(
        name=name,
        host=host,
        source="config",
        tls=tls,
        image=reader.string("image"),
        build=reader.build(),
        cpus=reader.number("cpus", "a number of CPUs above zero", _MAX_CPUS),
        memory=reader.size("memory"),
        env=reader.string_table("env", "variable") or {},
        timeout=reader.seconds("timeout"),
        **defaults,
    )


def _remote_machine(reader: _MachineTable) -> Machine:
    """A machine table naming a Remote Execution API service (:mod:`pytest_lrun.config.remote`)."""
    for key in NOT_REMOTE_KEYS:
        if key in reader.table:
            raise reader.error(
                key, "does not apply to a remote (Remote Execution API) machine: its executors decide it"
            )
    url = reader.string("remote")
    assert url is not None
    problem = remote_problem(url)
    if problem is not None:
        raise reader.error("remote", problem)
    platform = reader.string_table("platform", "property") or {}
    for prop, value in platform.items():
        why = property_problem(prop, value)
        if why is not None:
            raise reader.error(f"platform.{prop}", why)
    image = reader.string("image")
    in_platform = image_of(platform)
    if image is not None and in_platform is not None:
        raise reader.error("image", "this table has image and platform.container-image: keep one")
    platform.pop(CONTAINER_IMAGE, None)  # the run's image: sent from image (or the plan, --lrun-image)
    token_env = reader.string("token_env")
    if token_env is not None and "=" in token_env:
        raise reader.error(
            "token_env", f"expected the name of a variable holding the token, found {token_env!r}"
        )
    instance = reader.table.get("instance_name", "")
    if not isinstance(instance, str):
        raise reader.error("instance_name", f"expected a string, {_found(instance)}")
    logstream = reader.string("logstream")
    if logstream is not None and (problem := logstream_problem(url, logstream)) is not None:
        raise reader.error("logstream", problem)
    defaults = _container_defaults(reader)
    return Machine(
        name=reader.name,
        host=url,
        source="config",
        tls=_tls(reader, url),
        image=image or in_platform,
        env=reader.string_table("env", "variable") or {},
        timeout=reader.seconds("timeout"),
        remote=Remote(url, instance, platform, token_env, logstream),
        **defaults,
    )


def _check_keys(reader: _MachineTable) -> None:
    for key in reader.table:
        if key not in _TABLE_KEYS:
            hint = difflib.get_close_matches(key, _TABLE_KEYS, n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise reader.error(key, f"unknown key; {did_you_mean}expected one of: {', '.join(_TABLE_KEYS)}")


def _host(reader: _MachineTable) -> str:
    host = reader.string("host")
    if host is None:
        raise reader.error(
            "host", "missing; expected a Docker URL such as tcp://host:2376 or ssh://user@host"
        )
    problem = host_problem(host)
    if problem is not None:
        raise reader.error("host", problem)
    return host


def _tls(reader: _MachineTable, host: str) -> TLSConfig | None:
    """The table's TLS settings: None unless it has a ``tls_*`` key, which only a tcp:// host takes."""
    given_tls = [key for key in _TLS_KEYS if key in reader.table]
    if not given_tls:
        return None
    scheme = urlsplit(host).scheme.lower()
    if "remote" in reader.table and scheme != "grpcs":
        raise reader.error(
            given_tls[0], f"TLS settings apply to grpcs:// remotes only, and remote is {host!r}"
        )
    if "remote" not in reader.table and scheme != "tcp":
        raise reader.error(given_tls[0], f"TLS settings apply to tcp:// hosts only, and host is {host!r}")
    verify = reader.boolean("tls_verify")
    ca_cert = reader.file("tls_ca_cert")
    client_cert = reader.file("tls_client_cert")
    client_key = reader.file("tls_client_key")
    if (client_cert is None) != (client_key is None):
        missing, present = (
            ("tls_client_key", "tls_client_cert")
            if client_key is None
            else ("tls_client_cert", "tls_client_key")
        )
        raise reader.error(missing, f"missing; {present} is set and needs it")
    return TLSConfig(
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        verify=True if verify is None else verify,
    )


def _container_defaults(reader: _MachineTable) -> dict[str, Any]:
    """The container defaults the table sets, as :class:`Machine` keyword arguments.

    Keys the table leaves out are not passed: their defaults are Machine's, declared once.
    """
    table = reader.table
    given: dict[str, Any] = {}
    pull = reader.string("pull")
    if pull is not None:
        if pull not in _PULL_BY_NAME:
            raise reader.error("pull", f"expected one of {', '.join(PULL_POLICIES)}, found {pull!r}")
        given["pull"] = _PULL_BY_NAME[pull]

    workdir = reader.string("workdir")
    if workdir is not None:
        if not workdir.startswith("/") or workdir.rstrip("/") == "":
            raise reader.error(
                "workdir", f"expected an absolute container path other than '/', found {workdir!r}"
            )
        given["workdir"] = workdir

    network = reader.string("network")
    if network is not None:
        given["network"] = network

    if "tags" in table:
        tags = table["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and _TAG_RE.match(t) for t in tags):
            raise reader.error("tags", f'expected a list of names such as ["linux", "big"], {_found(tags)}')
        given["tags"] = tuple(tags)
    secret_env = reader.env_names("secret_env")
    if secret_env is not None:
        given["secret_env"] = secret_env
    for key, (low, high) in (("slots", (1, _MAX_SLOTS)), ("pids_limit", _PIDS_LIMIT_RANGE)):
        whole = reader.whole_number(key, low, high)
        if whole is not None:
            given[key] = whole
    return given


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a name from the command line may carry raw bytes as surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the resolver ------------------------------------------------------------


class KnownNames(list[str]):
    """Machine names (or targets) a resolver knows, and where its tables came from, for errors."""

    def __init__(self, names: Iterable[str], tables_from: str) -> None:
        super().__init__(names)
        #: Which file the machine tables were read from, or where none was found (a phrase).
        self.tables_from = tables_from


class MachineResolver:
    """Resolves machine names; see the module docstring for the precedence.

    ``searched_from`` is where :func:`find_machine_file` looked upward from (errors say
    so when it found no file).
    """

    def __init__(
        self,
        tables: Mapping[str, Mapping[str, Any]],
        pyproject_path: Path | None,
        docker_config_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        searched_from: Path | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.tables: dict[str, Mapping[str, Any]] = dict(tables)
        self.pyproject_path = pyproject_path
        self.searched_from = searched_from
        self.docker_config_dir = docker_config_dir or docker_config_dir_of(self.environ)

    def resolve(self, name: str) -> Machine:
        """The machine called ``name``: config table, then Docker context, then environment."""
        if name in self.tables:
            where = str(self.pyproject_path) if self.pyproject_path is not None else "pyproject.toml"
            base_dir = self.pyproject_path.parent if self.pyproject_path is not None else Path.cwd()
            table = self.tables[name]
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"{where} [tool.lrun.machines] {name}", f"expected a table, {_found(table)}"
                )
            return _machine_from_table(name, table, where, base_dir.absolute())
        if not name.isprintable() or not _utf8(name):
            # No table can name it (TOML is UTF-8), and Docker context names are UTF-8 too.
            raise UnknownMachine(printable(name), self.known(), self.tables_from)
        if name != "default":
            endpoint = context_endpoint(self.docker_config_dir, name)
            if endpoint is not None:
                return Machine(name=name, host=endpoint.host, source="context", tls=endpoint.tls)
        if name in ENVIRONMENT_NAMES:
            endpoint = environment_endpoint(self.environ, self.docker_config_dir)
            return Machine(name=name, host=endpoint.host, source="environment", tls=endpoint.tls)
        raise UnknownMachine(name, self.known(), self.tables_from)

    def resolve_all(self, target: str) -> list[Machine]:
        """The machines ``target`` names: ``tag:NAME`` gives every table tagged NAME (in table
        order), any other name the one machine :meth:`resolve` gives.

        :raises UnknownMachine: no table carries the tag (the known tags are listed)
        """
        if not target.startswith(TAG_PREFIX):
            return [self.resolve(target)]
        tag = target[len(TAG_PREFIX) :]
        machines = [self.resolve(name) for name in self.tables]
        tagged = [machine for machine in machines if tag in machine.tags]
        if not tagged:
            raise UnknownMachine(
                printable(target),
                [t for t in self.targets() if t.startswith(TAG_PREFIX)],
                self.tables_from,
            )
        return tagged

    @property
    def tables_from(self) -> str:
        """Which file the machine tables came from, or where none was found: for every unknown-machine
        error, since a table missing from the file that was read is the usual cause."""
        if self.pyproject_path is not None:
            return f"machine tables read from {self.pyproject_path}"
        where = f" from {self.searched_from} upward" if self.searched_from is not None else ""
        return (
            f"no {PYPROJECT} with machine tables found{where}; "
            "name the file with --lrun-config or LRUN_CONFIG (lrun: --project)"
        )

    def known(self) -> KnownNames:
        """Every machine name :meth:`resolve` accepts: config tables, Docker contexts and ``local``.

        A context whose metadata cannot be read is left out here (resolving it reports why).
        """
        names = set(self.tables) | set(context_names(self.docker_config_dir)) | {"local"}
        return KnownNames(sorted(names), self.tables_from)

    def targets(self) -> KnownNames:
        """What a run may name (:meth:`resolve_all`): :meth:`known` and ``tag:NAME`` of the tables' tags."""
        names = set(self.known())
        for table in self.tables.values():  # unchecked here: resolving a table reports its problems
            tags = table.get("tags") if isinstance(table, Mapping) else None
            if isinstance(tags, list):
                names.update(f"{TAG_PREFIX}{tag}" for tag in tags if isinstance(tag, str))
        return KnownNames(sorted(names), self.tables_from)


#: Where a run's image comes from: an image reference, or a build of one.
ImageSource: TypeAlias = str | Build


def resolve_image(
    machine: Machine, *, entry_image: ImageSource | None, option_image: ImageSource | None
) -> ImageSource:
    """A run's image or build: the plan entry's, else the option's, else the machine table's."""
    image = entry_image or option_image or machine.image or machine.build
    if not image:
        raise ImageNotSet(machine.name)
    return image
