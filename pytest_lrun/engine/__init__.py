"""The engine layer: what pytest-lrun asks of a machine's engine, and the records it gets back.

:class:`Engine` is a typed protocol, so dispatch can be read without knowing
docker-py, and docker-py's exceptions never leak past it: each is mapped to one of
:mod:`pytest_lrun.core.errors` (``raise ... from e``). This module owns the
protocol, its records (:class:`ContainerSpec`, :class:`ContainerState`,
:class:`StartedAs`, :class:`BuildChunk`, :class:`ImageInfo`), the labels every run container carries,
and :func:`stop`, which works over any engine.

* :mod:`.docker` is the real implementation over docker-py's ``APIClient``, and
  the only module that imports :mod:`docker` (:func:`~.docker.connect`);
* :mod:`.ssh` is its transport to ``ssh://`` machines, imported only for them;
* :mod:`.reapi` is the implementation over a Remote Execution API service (a machine
  table with ``remote =``), each "container" one action; imported only for such machines;
* :mod:`.pool` picks the implementation for a machine (:func:`~.pool.connect`) and keeps
  one connected engine per machine for an invocation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

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

    ``workdir``, ``network`` and ``pids_limit`` have no defaults here: they are the
    machine's (:class:`~pytest_lrun.config.machines.Machine` declares the defaults). What
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
    outputs: tuple[str, ...] = ()
    """Container paths read back after the run (the JUnit XML, the artifacts): an action names them."""
    timeout: float | None = None
    """Seconds the run may take; pytest-lrun stops it then, and a remote service may end it itself."""
    cacheable: bool = False
    """The run's result may be served again for the same inputs (``--lrun-reuse=completed``): a
    remote service's action cache."""


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
class StartedAs:
    """What a run goes by once a remote service started it (:meth:`Engine.start`).

    ``container_id`` is what to follow it by from then on (an execution's operation name),
    ``action_digest`` the service's digest of its action (``HASH/SIZE``), and ``cached``
    says the service's action cache answered: nothing ran.
    """

    container_id: str
    action_digest: str | None = None
    cached: bool = False


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
    def start(self, container_id: str) -> StartedAs | None:
        """Start the container; a remote service says what the run goes by from now on (it names
        its execution only then), a Docker Engine returns None."""
        ...

    def wait(self, container_id: str, timeout: float | None) -> int | None: ...
    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]: ...
    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None: ...
    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        """Whether ``path`` in the stopped container is a directory whose mtime is still ``mtime``
        (what the upload gave it): no entry was made or removed in it since, so an empty
        directory shipped there is empty still. False when the engine cannot tell without
        reading it (an archive read costs a Docker Engine a mount and a tar process, 50 ms of
        its CPU; a stat only the mount, about 1 ms)."""
        ...

    def inspect(self, container_id: str) -> ContainerState | None: ...
    def kill(self, container_id: str) -> None: ...
    def interrupt(self, container_id: str) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def list_labelled(self, label: str) -> list[ContainerState]: ...
    def close(self) -> None: ...


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
