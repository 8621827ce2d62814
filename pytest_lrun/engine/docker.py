"""The Docker implementation of :class:`~pytest_lrun.engine.Engine`, over docker-py's ``APIClient``.

Only this package imports :mod:`docker`. :class:`DockerEngine` maps every docker-py
and requests error to :mod:`pytest_lrun.core.errors`, in a line a user can act on
(:func:`_reason`); :func:`connect` builds one for a resolved
:class:`~pytest_lrun.config.machines.Machine` and checks within a bounded connect
timeout that the engine answers (its API version, asked once).
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import re
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Any

import requests.adapters
import requests.exceptions

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.settings import DEFAULT_CONNECT_TIMEOUT
from pytest_lrun.core.errors import (
    ContainerGone,
    EngineError,
    EngineUnreachable,
    ExtraMissing,
    ImageMissing,
    ImagePullFailed,
)
from pytest_lrun.core.times import parse_time
from pytest_lrun.engine import BuildChunk, ContainerSpec, ContainerState, ImageInfo, StartedAs

# docker-py imports paramiko for its ssh transport whenever paramiko is installed (the ssh extra):
# a third of pytest-lrun's own import time, in every start-up, for ssh:// machines alone. docker-py
# is imported without it (an import of a None module raises ImportError, which docker-py expects);
# the first ssh machine loads it (_ssh_adapter).
_PARAMIKO_HIDDEN = "paramiko" not in sys.modules and "docker" not in sys.modules
if _PARAMIKO_HIDDEN:
    sys.modules["paramiko"] = None  # type: ignore[assignment]
try:
    import docker
    import docker.api.client
    import docker.errors
    import docker.tls
finally:
    if _PARAMIKO_HIDDEN:
        del sys.modules["paramiko"]

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
_GO_MODE_DIR = 1 << 31  # Go's os.ModeDir, as the archive API's path stat gives a mode


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

    def start(self, container_id: str) -> StartedAs | None:
        try:
            self._api.start(container_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail("start container", e) from e
        return None  # a container keeps its id

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

    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        # The archive API's HEAD: the path's stat in a header, with no tar made (docker-py has no
        # call for it). Anything unexpected in the answer counts as touched: the caller reads it.
        try:
            answer = self._api.head(
                self._api._url("/containers/{0}/archive", container_id),
                params={"path": path},
                timeout=self._api.timeout,
            )
            if answer.status_code != 200:
                return False
            stat = json.loads(base64.b64decode(answer.headers["X-Docker-Container-Path-Stat"]))
            return bool(stat["mode"] & _GO_MODE_DIR) and parse_time(stat["mtime"]) == mtime
        except (requests.exceptions.RequestException, KeyError, TypeError, ValueError):
            return False

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
        # No proxy stands between a local socket (or an ssh channel) and its engine, and requests
        # would read the proxy variables of the environment again for every call.
        self.trust_env = self.base_url.startswith(("http://", "https://"))

    def _check_is_tty(self, container: Any) -> bool:
        # docker-py inspects the container before each logs call to learn whether it has a TTY:
        # a round trip to the engine per call. pytest-lrun never creates one with a TTY.
        return False

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


def _ssh_adapter(machine: Machine, timeout: float) -> requests.adapters.HTTPAdapter:
    """The bounded ssh transport to ``machine`` (:func:`.ssh.ssh_adapter`), imported for ssh machines only.

    :raises ExtraMissing: paramiko (the ``ssh`` extra) is not installed
    :raises requests.exceptions.ConnectionError: the login failed
    """
    try:
        # The ssh extra, for ssh:// only, looked for at each connect: .ssh, once imported, would
        # not look again.
        importlib.import_module("paramiko")
        from pytest_lrun.engine.ssh import ssh_adapter
    except ImportError:
        raise ExtraMissing(f"machine {machine.name!r} at {machine.host}", "ssh", "paramiko") from None
    # docker-py's client makes its own ssh adapter (never used: see _Client) from the name its
    # module imported, which it left out when docker-py was imported without paramiko.
    if not hasattr(docker.api.client, "SSHHTTPAdapter"):
        from docker.transport.sshconn import SSHHTTPAdapter

        docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined, unused-ignore]
    return ssh_adapter(machine, timeout)


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
    """An engine for ``machine`` that answered within ``connect_timeout`` seconds: the client asks
    the engine for its API version as it is made (``version="auto"``), so a ping after it would be
    a second round trip that says nothing new."""
    return DockerEngine(machine, connect_timeout=connect_timeout)
