"""The one boundary to the Docker SDK.

Only this module imports :mod:`docker`. Everything else talks to an
:class:`Engine` (a typed protocol), so the dispatch logic can be read without
knowing docker-py, and docker-py's exceptions never leak: each is mapped to
one of :mod:`pytest_lrun.errors` (``raise ... from e``).

:class:`DockerEngine` is the real implementation over the low-level
``docker.APIClient``; :func:`connect` builds one for a resolved
:class:`~pytest_lrun.machines.Machine` and checks within a bounded connect
timeout that the engine answers.

An ``ssh://user@host[:port]`` machine goes through docker-py's paramiko
transport (the ``ssh`` extra): it reads ``~/.ssh/config`` and
``~/.ssh/known_hosts`` from ``$HOME`` and runs ``docker system dial-stdio`` on
the host. :func:`_ssh_adapter` bounds every step of its login by the connect
timeout and says in words why a login failed (host key, refused key, port).
"""

from __future__ import annotations

import math
import re
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import docker
import docker.errors
import docker.tls
import requests.adapters
import requests.exceptions

from .errors import ContainerGone, EngineError, EngineUnreachable, ExtraMissing, ImageMissing, ImagePullFailed
from .machines import Machine
from .settings import DEFAULT_CONNECT_TIMEOUT

# Labels every container pytest-lrun creates carries; clean-up filters on them, never on names.
LABEL_RUN = "lrun.run-id"
LABEL_MACHINE = "lrun.machine"
LABEL_HASH = "lrun.hash"
LABEL_BATCH = "lrun.batch"
LABEL_CREATED = "lrun.created"
LABEL_STORE = "lrun.store"  # which state dir owns the run: reaping spares other stores' runs
# A build's output may be silent this long (one long RUN step) before the engine counts as gone.
BUILD_SILENCE_S = 1800.0

# Every run container drops all capabilities and gets back only these, which a test suite run as
# root in its image may need; Docker's default set also has MKNOD, NET_RAW, NET_BIND_SERVICE,
# SETPCAP, SETFCAP, FSETID, SYS_CHROOT and AUDIT_WRITE, none of which a test run needs.
RUN_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",  # chown a file: tarfile and shutil.chown as root, pip and tests that set owners
    "DAC_OVERRIDE",  # root reads and writes files whatever their owner and mode (an image's user files)
    "FOWNER",  # chmod and utime on files root does not own (another uid's files, kept mtimes)
    "SETUID",  # drop to another user (su, os.setuid): tests of permissions run as an unprivileged uid
    "SETGID",  # the same for groups (setgid, setgroups), which dropping to a user needs first
    "KILL",  # signal the processes of another uid, e.g. a child that dropped to that user
)
# A setuid binary or file capability never raises a process's privileges in a run container.
NO_NEW_PRIVILEGES = "no-new-privileges"


@dataclass(frozen=True)
class ContainerSpec:
    """What to create: image, command, limits and the lrun labels.

    ``workdir``, ``network`` and ``pids_limit`` have no defaults here: they are the
    machine's (:class:`~pytest_lrun.machines.Machine` declares the defaults). What
    no machine changes (:data:`RUN_CAPABILITIES`, :data:`NO_NEW_PRIVILEGES`, never
    privileged, no host mounts) is :meth:`DockerEngine.create`'s.
    """

    image: str
    command: Sequence[str]
    labels: Mapping[str, str]
    workdir: str
    network: str
    pids_limit: int  # processes and threads at once (Machine.pids_limit)
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


@dataclass(frozen=True)
class BuildChunk:
    """One piece of a build's output stream: text, or the error that ended the build."""

    text: str = ""
    error: str | None = None


@dataclass(frozen=True)
class ImageInfo:
    """An image on an engine, as ``lrun images`` shows it."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    size: int  # bytes
    created: float  # seconds since the epoch


class Engine(Protocol):
    """The operations pytest-lrun needs from a Docker Engine."""

    machine: str
    url: str

    def ping(self) -> None: ...
    def image_id(self, image: str, pull: str) -> str: ...
    def build_image(
        self,
        context: IO[bytes],
        *,
        tag: str,
        dockerfile: str,
        build_args: Mapping[str, str],
        target: str | None,
        labels: Mapping[str, str],
    ) -> Iterator[BuildChunk]: ...
    def images(self, label: str) -> list[ImageInfo]: ...
    def remove_image(self, image: str) -> bool: ...
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
        self._pull_lock = threading.Lock()
        try:
            if machine.host.startswith("ssh://"):
                kwargs["ssh_adapter"] = _ssh_adapter(machine, connect_timeout)
            # Typed as Any: docker-py is only partly annotated, and this class is its typed face.
            self._api: Any = _Client(**kwargs)
        except docker.errors.DockerException as e:
            raise EngineUnreachable(self.machine, self.url, _reason(e)) from e
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
                        why = "not on the engine and pull = never"
                        raise ImageMissing(self.machine, image, why, self.url) from e
                except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                    raise self._fail(f"inspect image {image}", e) from e
            repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            try:
                self._api.pull(repo, tag=tag or "latest")
                return str(self._api.inspect_image(image)["Id"])
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                reason = _reason(e)
                if _pull_is_final(reason):  # no such image, or no registry to ask: a retry changes nothing
                    why = f"not on the engine, and the pull failed: {reason}"
                    raise ImageMissing(self.machine, image, why, self.url) from e
                raise ImagePullFailed(self.machine, image, f"pull failed: {reason}") from e

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
        """Build ``tag`` from the tar ``context`` on this engine, streaming its output.

        Never pulls (``FROM`` names an image on the engine, or a registry it reaches
        itself); intermediate containers are removed even when a step fails.
        """
        try:
            stream = self._api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=dict(build_args),
                target=target,
                labels=dict(labels),
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                timeout=BUILD_SILENCE_S,
            )
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    yield BuildChunk(error=str(chunk.get("error") or detail.get("message") or detail))
                    return
                if "stream" in chunk:
                    yield BuildChunk(text=str(chunk["stream"]))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail(f"build image {tag}", e) from e

    def images(self, label: str) -> list[ImageInfo]:
        """The images on this engine that carry ``label``."""
        try:
            found = self._api.images(filters={"label": label})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("list images", e) from e
        return [
            ImageInfo(
                id=str(image["Id"]),
                tags=tuple(t for t in image.get("RepoTags") or () if t != "<none>:<none>"),
                labels=dict(image.get("Labels") or {}),
                size=int(image.get("Size") or 0),
                created=float(image.get("Created") or 0),
            )
            for image in found
        ]

    def remove_image(self, image: str) -> bool:
        """Remove ``image``; False when a container still uses it (the engine refuses, rightly)."""
        try:
            self._api.remove_image(image, force=False, noprune=False)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            if e.status_code == 409:
                return False
            raise self._fail(f"remove image {image}", e) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail(f"remove image {image}", e) from e
        return True

    def create(self, spec: ContainerSpec) -> str:
        host_config = self._api.create_host_config(
            network_mode=spec.network,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            mem_limit=spec.memory,
            pids_limit=spec.pids_limit,
            cap_drop=["ALL"],
            cap_add=list(RUN_CAPABILITIES),
            security_opt=[NO_NEW_PRIVILEGES],
            privileged=False,  # the default, said here: nothing of the host's reaches a run (no binds)
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
            raise ImageMissing(self.machine, spec.image, _reason(e), self.url) from e
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
    """docker's APIClient, trusting only the machine's CA when it names one, and over our ssh adapter.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA for
    every request that does not pass ``verify`` itself, which no docker-py call
    does: an engine's certificate, signed by the machine's own CA, then fails.

    With ``ssh_adapter`` (from :func:`_ssh_adapter`) every request goes through
    it. docker-py's own paramiko adapter connects in its constructor with no
    timeout, so it is never made: docker-py is asked for its ssh-binary adapter,
    which connects only when used, and is never used.
    """

    def __init__(self, *, ssh_adapter: requests.adapters.HTTPAdapter | None = None, **kwargs: Any) -> None:
        # Set first: APIClient's constructor already sends a request (the API version).
        self._ssh_adapter = ssh_adapter
        try:
            super().__init__(**kwargs, use_ssh_client=ssh_adapter is not None)
        except BaseException:
            if ssh_adapter is not None:
                ssh_adapter.close()
            raise

    def get_adapter(self, url: str) -> Any:
        return self._ssh_adapter or super().get_adapter(url)

    def close(self) -> None:
        super().close()
        if self._ssh_adapter is not None:
            self._ssh_adapter.close()

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


def _ssh_adapter(machine: Machine, timeout: float) -> requests.adapters.HTTPAdapter:
    """docker-py's paramiko transport to ``machine``, logged in within ``timeout`` seconds.

    Every step of the login (TCP connect, the server's banner, the key
    exchange, authentication) is bounded by ``timeout``. A failed login, then
    or on a reconnect, and an ssh error during a request surface as
    ``requests.exceptions.ConnectionError`` carrying a reason in words, which
    :class:`DockerEngine` maps to :class:`EngineUnreachable` like any engine
    that does not answer.

    :raises ExtraMissing: paramiko (the ``ssh`` extra) is not installed
    :raises requests.exceptions.ConnectionError: the login failed
    """
    try:
        import paramiko  # type: ignore[import-untyped, unused-ignore]
        from docker.transport.sshconn import SSHHTTPAdapter
    except ImportError:
        raise ExtraMissing(f"machine {machine.name!r} at {machine.host}", "ssh", "paramiko") from None

    def reason(e: Exception, params: Mapping[str, Any]) -> str:
        where = f"{params.get('hostname')}:{params.get('port') or 22}"
        if isinstance(e, paramiko.BadHostKeyException):
            return (
                f"ssh host key of {where} is {e.key.get_name()} {e.key.fingerprint}, not the "
                f"{e.expected_key.get_name()} {e.expected_key.fingerprint} that ~/.ssh/known_hosts has for it"
            )
        if isinstance(e, paramiko.AuthenticationException):
            return f"ssh server {where} refused the login of {params.get('username')!r}: {e}"
        if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
            return f"ssh host {where} is not in ~/.ssh/known_hosts (check its key, then add it: ssh-keyscan)"
        if isinstance(e, paramiko.ChannelException):
            return (
                f"ssh server {where} refused another session ({e}): its MaxSessions (sshd's default 10) "
                "caps the requests to one engine at once"
            )
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
            errors = [err.strerror or str(err) for err in e.errors.values()]
            return f"nothing takes ssh connections at {where}: {errors[0]}"
        # "No existing session": paramiko's login after a key exchange that the timeout cut short.
        cut_short = isinstance(e, paramiko.SSHException) and str(e) == "No existing session"
        if isinstance(e, TimeoutError) or isinstance(e.__context__, TimeoutError) or cut_short:
            # The TCP connect, the banner or the key exchange took too long.
            return f"no ssh answer from {where} within {timeout:g} s"
        return f"ssh to {where}: {str(e) or type(e).__name__}"

    # Any: the stubs know neither ssh_params nor a float timeout (docker-py takes one).
    base: Any = SSHHTTPAdapter

    class Adapter(base):  # type: ignore[misc]
        def _connect(self) -> None:
            try:
                self.ssh_client.connect(
                    **self.ssh_params, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout
                )
            except (paramiko.SSHException, OSError, EOFError) as e:
                self._disconnect()
                raise requests.exceptions.ConnectionError(reason(e, self.ssh_params)) from e

        def _disconnect(self) -> None:
            transport = self.ssh_client.get_transport()
            self.ssh_client.close()
            if transport is not None:
                # close() skips a transport whose thread already ended (no banner, a dropped
                # session): its socket would stay open.
                transport.sock.close()

        def get_connection(self, url: str, proxies: Any = None) -> Any:
            with self.pools.lock:  # reentrant: docker-py's get_connection takes it too
                transport = self.ssh_client.get_transport()
                if transport is not None and not transport.is_active():
                    # docker-py reconnects only a client without a transport, and its pools
                    # keep the dead one: a dropped session (sshd restarted, network gone) would
                    # fail every later request.
                    self.pools.clear()
                    self._disconnect()
                # docker-py keeps a pool per request URL, each holding idle channels (an ssh
                # session and a dial-stdio process each), until sshd's MaxSessions refuses new
                # ones. One pool for every URL keeps the sessions to the requests at once.
                return super().get_connection("http+docker://ssh", proxies)

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            # paramiko's errors are none of those requests maps (a session refused, or asked of a
            # transport that dropped since get_connection looked).
            try:
                return super().send(request, *args, **kwargs)
            except (paramiko.SSHException, EOFError) as e:
                raise requests.exceptions.ConnectionError(reason(e, self.ssh_params)) from e

    return Adapter(machine.host, timeout)


# What an engine's pull error says when no retry can help: the image does not exist (or may not be
# read), or the registry's name does not exist. A registry that answers 5xx or times out, or a DNS
# server that fails for now ("temporary failure", "server misbehaving"), may do better on a retry
# (image_pull_failed).
_FINAL_PULL_ERRORS = re.compile(
    r"not found|manifest unknown|pull access denied|repository does not exist|unauthorized|"
    r"invalid reference format|no such host|name or service not known",
    re.IGNORECASE,
)
# The root causes a connection error (requests wrapping urllib3 wrapping an OSError) buries.
_CONNECTION_CAUSES = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (
        re.compile(
            r"name or service not known|nodename nor servname|temporary failure in name resolution", re.I
        ),
        "its host name does not resolve",
    ),
    (re.compile(r"timed out|timeout", re.I), "no answer in time"),
    (re.compile(r"no such file or directory", re.I), "no socket at that path"),
    (re.compile(r"permission denied", re.I), "permission denied (is this user allowed to use the socket?)"),
    (re.compile(r"network is unreachable|no route to host", re.I), "no route to that host"),
)


_URLLIB3_TEXT = re.compile(r"HTTPS?ConnectionPool|Max retries exceeded|Connection aborted|NewConnectionError")


def _pull_is_final(reason: str) -> bool:
    return _FINAL_PULL_ERRORS.search(reason) is not None


def _reason(e: Exception) -> str:
    """What went wrong, in a line a user can act on (not urllib3's pool and adapter text)."""
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    text = str(e)
    # requests' own text (urllib3's pool and adapter), which docker-py wraps in a DockerException
    # for its first request: its root cause in a line. A transport's own message (ssh) is kept.
    if _URLLIB3_TEXT.search(text):
        for pattern, said in _CONNECTION_CAUSES:
            if pattern.search(text):
                return said
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:300] + "..."


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
