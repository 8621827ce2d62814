"""What a Remote Execution API machine table declares: the service, its instance and platform.

A machine table with ``remote = "grpc://host:port"`` (or ``grpcs://``) in place of
``host`` names a Remote Execution API (REAPI) service, such as BuildGrid, Buildbarn,
BuildBuddy or EngFlow, as a machine. This module owns that table's own keys and
the :class:`Remote` record :class:`~pytest_lrun.config.machines.Machine` carries for it:

* ``remote``: the service's gRPC endpoint, ``grpc://`` (plain) or ``grpcs://`` (TLS,
  with the table's ``tls_*`` files as for a ``tcp://`` engine);
* ``instance_name``: the service's instance (default ``""``);
* ``platform``: the action's platform properties, as strings; ``container-image``
  is the run's image (``docker://IMAGE``), so it comes from ``image`` (or the
  plan, ``--lrun-image``) and a table gives one of the two;
* ``token_env``: the name of a host variable holding a bearer token, sent as the
  ``authorization`` header of every call (what hosted services ask for);
* ``logstream``: the endpoint that serves the executions' live stdout streams
  (``stdout_stream_name``, read over ByteStream), when it is not the service's own
  (BuildGrid's, for one, is a LogStream service beside it); same scheme, TLS and token.

Keys that shape a Docker container on an engine pytest-lrun drives itself (``build``,
``pull``, ``cpus``, ``memory``, ``network``, ``pids_limit``) do not apply: the
service's executors decide those, and a table that sets one is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pytest_lrun.config.tables import FrozenEnv

__all__ = [
    "NOT_REMOTE_KEYS",
    "REMOTE_KEYS",
    "REMOTE_SCHEMES",
    "Remote",
    "image_property",
    "logstream_problem",
    "remote_problem",
    "target_of",
]

REMOTE_SCHEMES = ("grpc", "grpcs")
REMOTE_KEYS = ("remote", "instance_name", "platform", "token_env", "logstream")
# Table keys of a Docker engine's containers that an REAPI service's executors decide.
NOT_REMOTE_KEYS = (
    "host",
    "build",
    "dockerfile",
    "build_args",
    "target",
    "pull",
    "cpus",
    "memory",
    "network",
    "pids_limit",
)
CONTAINER_IMAGE = "container-image"
_DOCKER_PREFIX = "docker://"
_PROPERTY_RE = re.compile(r"^[A-Za-z0-9_.:/-]+$")


@dataclass(frozen=True)
class Remote:
    """A Remote Execution API service: endpoint, instance, platform properties, bearer token."""

    url: str
    instance_name: str = ""
    platform: Mapping[str, str] = field(default_factory=FrozenEnv)
    token_env: str | None = None
    logstream: str | None = None  # the live output streams' endpoint, when not ``url``

    def __post_init__(self) -> None:
        if not isinstance(self.platform, FrozenEnv):
            object.__setattr__(self, "platform", FrozenEnv(self.platform))

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme.lower() == "grpcs"


def target_of(url: str) -> str:
    """``host:port`` of a ``grpc://`` or ``grpcs://`` URL, as gRPC dials it."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def remote_problem(url: str) -> str | None:
    """Why ``url`` is not an endpoint pytest-lrun can dial, or None."""
    expected = "expected a gRPC endpoint such as grpc://host:8980 or grpcs://host:443"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"{expected}, found {url!r} ({e})"
    if parts.scheme.lower() not in REMOTE_SCHEMES or not parts.hostname:
        return f"{expected}, found {url!r}"
    if port is None or port == 0:
        return f"{expected} (with its port), found {url!r}"
    if parts.path not in ("", "/") or parts.query:
        return f"{expected} (no path: the instance is instance_name), found {url!r}"
    return None


def logstream_problem(remote: str, logstream: str) -> str | None:
    """Why ``logstream`` cannot serve ``remote``'s log streams, or None: it is dialled with the
    remote's TLS settings and token, so it takes the remote's scheme."""
    problem = remote_problem(logstream)
    if problem is not None:
        return problem
    scheme = urlsplit(remote).scheme.lower()
    if urlsplit(logstream).scheme.lower() != scheme:
        return f"is dialled with the remote's TLS settings: expected {scheme}://, found {logstream!r}"
    return None


def property_problem(name: str, value: str) -> str | None:
    """Why a platform property cannot be sent, or None."""
    if not _PROPERTY_RE.match(name):
        return "expected a property name of letters, digits and _.:/-"
    if name == CONTAINER_IMAGE and not value.startswith(_DOCKER_PREFIX):
        return f"expected docker://IMAGE, found {value!r}"
    return None


def image_of(platform: Mapping[str, str]) -> str | None:
    """The image a ``container-image`` property names, without its ``docker://``."""
    value = platform.get(CONTAINER_IMAGE)
    return value[len(_DOCKER_PREFIX) :] if value else None


def image_property(image: str) -> tuple[str, str]:
    """The platform property that runs an action in ``image``."""
    return CONTAINER_IMAGE, _DOCKER_PREFIX + image
