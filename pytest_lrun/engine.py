"""The one boundary to the Docker SDK.

Only this module imports :mod:`docker`. Everything else talks to an
:class:`Engine` (a typed protocol), so the dispatch logic can be read without
knowing docker-py, and docker-py's exceptions never leak: each is mapped to
one of :mod:`pytest_lrun.errors` (``raise ... from e``).

:class:`DockerEngine` is the real implementation over the low-level
``docker.APIClient``; :func:`connect` builds one for a resolved
:class:`~pytest_lrun.machines.Machine` and checks within a bounded connect
timeout that the engine answers.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import docker
import docker.errors
import docker.tls
import requests.exceptions

from .errors import ContainerGone, EngineError, EngineUnreachable, ImageMissing
from .machines import Machine
from .settings import DEFAULT_CONNECT_TIMEOUT

# Labels every container pytest-lrun creates carries; clean-up filters on them, never on names.
LABEL_RUN = "lrun.run-id"
LABEL_MACHINE = "lrun.machine"
LABEL_HASH = "lrun.hash"
LABEL_BATCH = "lrun.batch"
LABEL_CREATED = "lrun.created"
LABEL_STORE = "lrun.store"  # which state dir owns the run: reaping spares other stores' runs


@dataclass(frozen=True)
class ContainerSpec:
    """What to create: image, command, limits and the lrun labels.

    ``workdir`` and ``network`` have no defaults here: they are the machine's
    (:class:`~pytest_lrun.machines.Machine` declares the defaults).
    """

    image: str
    command: Sequence[str]
    labels: Mapping[str, str]
    workdir: str
    network: str
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None  # bytes (Machine.memory)


@dataclass(frozen=True)
class ContainerState:
    """What the engine says about a container right now.

    ``oom_killed``: the kernel killed a process of the container for exceeding its
    memory limit (``State.OOMKilled``).
    """

    id: str
    status: str
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    finished_at: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


class Engine(Protocol):
    """The operations pytest-lrun needs from a Docker Engine."""

    machine: str
    url: str

    def ping(self) -> None: ...
    def image_id(self, image: str, pull: str) -> str: ...
    def create(self, spec: ContainerSpec) -> str: ...
    def put_archive(self, container_id: str, path: str, data: IO[bytes]) -> None: ...
    def start(self, container_id: str) -> None: ...
    def wait(self, container_id: str, timeout: float | None) -> int | None: ...
    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]: ...
    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None: ...
    def inspect(self, container_id: str) -> ContainerState | None: ...
    def kill(self, container_id: str) -> None: ...
    def interrupt(self, container_id: str) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def list_labelled(self, label: str) -> list[ContainerState]: ...
    def close(self) -> None: ...


class DockerEngine:
    """An :class:`Engine` over ``docker.APIClient``; one per machine, shared by threads."""

    def __init__(self, machine: Machine, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.machine = machine.name
        self.url = machine.host
        self._connect_timeout = connect_timeout
        kwargs: dict[str, Any] = {"base_url": machine.host, "timeout": connect_timeout, "version": "auto"}
        if machine.tls is not None:
            client_cert = None
            if machine.tls.client_cert and machine.tls.client_key:
                client_cert = (machine.tls.client_cert, machine.tls.client_key)
            kwargs["tls"] = docker.tls.TLSConfig(
                client_cert=client_cert,
                ca_cert=machine.tls.ca_cert,
                verify=machine.tls.ca_cert
                if machine.tls.verify and machine.tls.ca_cert
                else machine.tls.verify,
            )
        if machine.host.startswith("unix://"):
            _probe_unix_socket(machine, connect_timeout)
        if machine.host.startswith("ssh://"):
            # The ssh binary honours the user's ~/.ssh/config and agent, as the docker CLI does.
            kwargs["use_ssh_client"] = True
        self._pull_lock = threading.Lock()
        try:
            # Typed as Any: docker-py is only partly annotated, and this class is its typed face.
            self._api: Any = _Client(**kwargs)
        except docker.errors.DockerException as e:
            raise EngineUnreachable(self.machine, self.url, str(e)) from e
        except requests.exceptions.RequestException as e:
            # version="auto" asks the engine for its API version on construction.
            raise EngineUnreachable(self.machine, self.url, _reason(e)) from e

    # -- helpers -----------------------------------------------------------

    def _fail(self, what: str, e: Exception) -> EngineError:
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return EngineUnreachable(self.machine, self.url, f"{what}: {_reason(e)}")
        return EngineError(self.machine, f"{what}: {_reason(e)}")

    # -- Engine ------------------------------------------------------------

    def ping(self) -> None:
        try:
            self._api.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnreachable(self.machine, self.url, _reason(e)) from e

    def image_id(self, image: str, pull: str) -> str:
        """The image's id on this engine, pulling it as the policy says."""
        with self._pull_lock:
            if pull != "always":
                try:
                    return str(self._api.inspect_image(image)["Id"])
                except docker.errors.ImageNotFound as e:
                    if pull == "never":
                        raise ImageMissing(self.machine, image, "not on the engine and pull = never") from e
                except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                    raise self._fail(f"inspect image {image}", e) from e
            repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            try:
                self._api.pull(repo, tag=tag or "latest")
                return str(self._api.inspect_image(image)["Id"])
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                raise ImageMissing(self.machine, image, f"pull failed: {_reason(e)}") from e

    def create(self, spec: ContainerSpec) -> str:
        host_config = self._api.create_host_config(
            network_mode=spec.network,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            mem_limit=spec.memory,
        )
        try:
            created = self._api.create_container(
                spec.image,
                command=list(spec.command),
                environment=dict(spec.env),
                working_dir=spec.workdir,
                labels=dict(spec.labels),
                host_config=host_config,
                network_disabled=spec.network == "none",
            )
        except docker.errors.ImageNotFound as e:
            raise ImageMissing(self.machine, spec.image, _reason(e)) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("create container", e) from e
        return str(created["Id"])

    def put_archive(self, container_id: str, path: str, data: IO[bytes]) -> None:
        try:
            self._api.put_archive(container_id, path, data)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("upload the test directory", e) from e

    def start(self, container_id: str) -> None:
        try:
            self._api.start(container_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("start container", e) from e

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        """The exit code, or None when ``timeout`` seconds pass first."""
        try:
            result = self._api.wait(
                container_id, timeout=None if timeout is None else max(1, math.ceil(timeout))
            )
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
            # docker-py reports a wait that outlived its HTTP timeout as a read
            # timeout (tcp) or a ConnectionError wrapping one (unix socket).
            if "timed out" in str(e).lower() or isinstance(e, requests.exceptions.ReadTimeout):
                return None
            raise self._fail("wait for container", e) from e
        except docker.errors.NotFound as e:
            raise ContainerGone(self.machine, f"container {container_id[:12]} vanished") from e
        except docker.errors.DockerException as e:
            raise self._fail("wait for container", e) from e
        return int(result.get("StatusCode", -1))

    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]:
        try:
            stream = self._api.logs(container_id, stdout=True, stderr=True, stream=True, follow=follow)
        except docker.errors.NotFound as e:
            raise ContainerGone(self.machine, f"container {container_id[:12]} vanished") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("read logs", e) from e
        try:
            yield from stream
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("read logs", e) from e
        finally:
            stream.close()

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None:
        """The tar stream of ``path`` in the container, or None if it does not exist."""
        try:
            chunks, _stat = self._api.get_archive(container_id, path, chunk_size=1 << 20)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail(f"download {path}", e) from e
        stream: Iterator[bytes] = iter(chunks)
        return stream

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            info = self._api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("inspect container", e) from e
        return _state(info)

    def kill(self, container_id: str) -> None:
        self._signal(container_id, "SIGKILL")

    def interrupt(self, container_id: str) -> None:
        """Send SIGINT: an inner pytest then ends its session as after Ctrl-C, reports and all."""
        self._signal(container_id, "SIGINT")

    def _signal(self, container_id: str, signal: str) -> None:
        try:
            self._api.kill(container_id, signal=signal)
        except docker.errors.APIError as e:
            # Signalling a container that already stopped (or vanished) is what we wanted anyway.
            if e.status_code in (404, 409):
                return
            raise self._fail("signal container", e) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("signal container", e) from e

    def remove(self, container_id: str) -> None:
        try:
            self._api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("remove container", e) from e

    def list_labelled(self, label: str) -> list[ContainerState]:
        try:
            found = self._api.containers(all=True, filters={"label": label})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("list containers", e) from e
        states = []
        for summary in found:
            state = self.inspect(summary["Id"])
            if state is not None:
                states.append(state)
        return states

    def close(self) -> None:
        self._api.close()


class _Client(docker.APIClient):
    """docker's APIClient, trusting only the machine's CA when it names one.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA for
    every request that does not pass ``verify`` itself, which no docker-py call
    does: an engine's certificate, signed by the machine's own CA, then fails.
    """

    def merge_environment_settings(  # type: ignore[override, unused-ignore]
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str):  # the machine's CA file (docker.tls.TLSConfig put it there)
            settings["verify"] = self.verify
        return settings


def _state(info: Mapping[str, Any]) -> ContainerState:
    state = info.get("State") or {}
    status = str(state.get("Status", ""))
    config = info.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or () if "=" in item)
    return ContainerState(
        id=str(info["Id"]),
        status=status,
        running=bool(state.get("Running")),
        # Only an exited (or dead) container has an exit code worth reporting.
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        oom_killed=bool(state.get("OOMKilled")),
        labels=dict(config.get("Labels") or {}),
        created=str(info.get("Created", "")),
        finished_at=str(state.get("FinishedAt", "")),
        env=env,
    )


def _probe_unix_socket(machine: Machine, timeout: float) -> None:
    """Fail fast, and without leaking a socket, when nothing listens on a unix socket.

    docker-py leaves its socket open when connecting to a dead unix socket fails
    (a ResourceWarning, and one file descriptor, per attempt).
    """
    path = machine.host.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError as e:
            raise EngineUnreachable(machine.name, machine.host, e.strerror or str(e)) from e


def _reason(e: Exception) -> str:
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def connect(machine: Machine, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> DockerEngine:
    """An engine for ``machine`` that answered a ping within ``connect_timeout`` seconds."""
    engine = DockerEngine(machine, connect_timeout=connect_timeout)
    try:
        engine.ping()
    except EngineUnreachable:
        engine.close()
        raise
    return engine


def stop(engine: Engine, container_id: str, grace: float) -> None:
    """Stop a container gracefully: SIGINT, then SIGKILL if it still runs after ``grace`` seconds.

    An engine made by a user's ``pytest_lrun_make_engine`` hook before
    :meth:`Engine.interrupt` existed has none: its containers are killed at once.
    """
    interrupt = getattr(engine, "interrupt", None)
    if interrupt is not None and grace > 0:
        interrupt(container_id)
        if engine.wait(container_id, grace) is not None:
            return
    engine.kill(container_id)
