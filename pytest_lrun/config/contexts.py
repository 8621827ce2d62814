"""The engines Docker's own configuration names: the Docker CLI's contexts and the ``DOCKER_*`` environment.

This module owns reading them as the Docker CLI does, into an :class:`Endpoint` (a
checked Docker URL and its :class:`TLSConfig`); :mod:`pytest_lrun.config.machines`
makes a named :class:`~pytest_lrun.config.machines.Machine` of it and decides which
name comes from where.

* A context ``NAME`` is laid out under ``$DOCKER_CONFIG/contexts`` (default
  ``~/.docker``) as ``docker context create`` writes it: its metadata at
  :func:`context_meta_path`, its TLS files (``ca.pem``, ``cert.pem``, ``key.pem``)
  in :func:`context_tls_dir`; :func:`context_names` lists them, :func:`context_endpoint`
  reads one.
* The environment's engine (:func:`environment_endpoint`) is ``DOCKER_HOST`` or
  :data:`DEFAULT_DOCKER_HOST`, with TLS from ``DOCKER_TLS_VERIFY`` / ``DOCKER_TLS`` /
  ``DOCKER_CERT_PATH``.
* :func:`host_problem` says why a URL is not a Docker URL pytest-lrun can use (machine
  tables check their ``host`` with it too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pytest_lrun.core.errors import ConfigError

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "Endpoint",
    "TLSConfig",
    "context_endpoint",
    "context_meta_path",
    "context_names",
    "context_tls_dir",
    "docker_config_dir_of",
    "environment_endpoint",
    "host_problem",
]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
HOST_SCHEMES = ("unix", "tcp", "ssh")


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for a ``tcp://`` engine; paths are absolute strings, ``None`` when absent."""

    ca_cert: str | None
    client_cert: str | None
    client_key: str | None
    verify: bool


@dataclass(frozen=True)
class Endpoint:
    """An engine as Docker's own configuration names it: a checked Docker URL and its TLS settings."""

    host: str
    tls: TLSConfig | None = None


def host_problem(url: str) -> str | None:
    """Why ``url`` is not a Docker URL pytest-lrun can use, or ``None`` when it is."""
    expected = "expected a Docker URL (unix:///path/docker.sock, tcp://host:port or ssh://user@host)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError as e:
        return f"{expected}, found {url!r} ({e})"
    scheme = parts.scheme.lower()
    if scheme not in HOST_SCHEMES:
        return f"{expected}, found {url!r}"
    if scheme == "unix" and (parts.netloc or not parts.path.startswith("/")):
        return f"expected unix:// followed by an absolute socket path, found {url!r}"
    if scheme in ("tcp", "ssh") and not parts.hostname:
        return f"expected a host name after {scheme}://, found {url!r}"
    if scheme == "tcp" and port == 0:
        return f"expected a port between 1 and 65535, found {url!r}"
    return None


def docker_config_dir_of(environ: Mapping[str, str]) -> Path:
    """The Docker CLI's configuration folder: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    return Path(environ.get("DOCKER_CONFIG", "") or "~/.docker").expanduser()


# --- contexts -----------------------------------------------------------------


def context_meta_path(config_dir: Path, name: str) -> Path:
    """Where the Docker CLI keeps the metadata of context ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return config_dir / "contexts" / "meta" / digest / "meta.json"


def context_tls_dir(config_dir: Path, name: str) -> Path:
    """Where the Docker CLI keeps the TLS files (ca.pem, cert.pem, key.pem) of context ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return config_dir / "contexts" / "tls" / digest / "docker"


def context_names(config_dir: Path) -> list[str]:
    """The names of the contexts under ``config_dir``; one whose metadata cannot be read is left out
    (reading it with :func:`context_endpoint` says why)."""
    meta_root = config_dir / "contexts" / "meta"
    try:
        entries = sorted(meta_root.iterdir())
    except OSError:
        return []
    names: list[str] = []
    for entry in entries:
        try:
            data = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("Name"), str) and data["Name"]:
            names.append(data["Name"])
    return names


def context_endpoint(config_dir: Path, name: str) -> Endpoint | None:
    """The engine of context ``name`` under ``config_dir``, or None when there is no such context.

    :raises ConfigError: the context's metadata cannot be read, is not JSON, or names no usable
        docker endpoint (the error names the metadata file)
    """
    meta_path = context_meta_path(config_dir, name)
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(str(meta_path), f"cannot read Docker context {name!r}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(str(meta_path), f"Docker context {name!r} metadata is not valid JSON: {e}") from e
    endpoints = data.get("Endpoints") if isinstance(data, dict) else None
    endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = endpoint.get("Host") if isinstance(endpoint, dict) else None
    if not isinstance(host, str) or not host:
        raise ConfigError(
            str(meta_path), f"Docker context {name!r} has no docker endpoint (Endpoints.docker.Host)"
        )
    problem = host_problem(host)
    if problem is not None:
        raise ConfigError(str(meta_path), f"Docker context {name!r}: {problem}")
    skip_verify = isinstance(endpoint, dict) and endpoint.get("SkipTLSVerify") is True

    tls: TLSConfig | None = None
    if urlsplit(host).scheme.lower() == "tcp":
        tls_dir = context_tls_dir(config_dir, name)
        ca_cert = _existing(tls_dir / "ca.pem")
        client_cert = _existing(tls_dir / "cert.pem")
        client_key = _existing(tls_dir / "key.pem")
        # As the Docker CLI does: TLS when the context has TLS files or skips verification.
        if ca_cert or client_cert or client_key or skip_verify:
            tls = TLSConfig(ca_cert, client_cert, client_key, verify=not skip_verify)
    return Endpoint(host, tls)


# --- the environment ------------------------------------------------------------


def environment_endpoint(environ: Mapping[str, str], config_dir: Path) -> Endpoint:
    """The engine ``environ`` names, as the Docker CLI reads it (TLS files default to ``config_dir``'s).

    :raises ConfigError: ``DOCKER_HOST`` is not a usable Docker URL, or ``DOCKER_CERT_PATH`` is not
        a folder
    """
    host = environ.get("DOCKER_HOST", "") or DEFAULT_DOCKER_HOST
    problem = host_problem(host)
    if problem is not None:
        raise ConfigError("environment DOCKER_HOST", problem)
    verify = environ.get("DOCKER_TLS_VERIFY", "") != ""
    enable = environ.get("DOCKER_TLS", "") != ""
    cert_path = environ.get("DOCKER_CERT_PATH", "")
    tls: TLSConfig | None = None
    if urlsplit(host).scheme.lower() == "tcp" and (verify or enable or cert_path):
        if cert_path:
            cert_dir = Path(cert_path).expanduser().absolute()
            if not cert_dir.is_dir():
                raise ConfigError(
                    "environment DOCKER_CERT_PATH",
                    f"expected a directory holding ca.pem, cert.pem and key.pem, found {cert_path!r}",
                )
        else:
            cert_dir = config_dir
        tls = TLSConfig(
            ca_cert=_existing(cert_dir / "ca.pem"),
            client_cert=_existing(cert_dir / "cert.pem"),
            client_key=_existing(cert_dir / "key.pem"),
            verify=verify,
        )
    return Endpoint(host, tls)


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None
