"""``lrun worker``: a Remote Workers API bot that runs a service's actions in Docker containers.

For a team with a Remote Execution API scheduler (BuildGrid's, say) and Docker hosts
but no executors, and for pytest-lrun's own tests: :class:`Worker` opens a bot session
on the service (``CreateBotSession``, its capacity the worker's ``slots``, its device
properties what actions it matches), and keeps it in step (``UpdateBotSession``):

* a new lease (``PENDING``) becomes ``ACTIVE`` and its action runs on a thread of its
  own (:func:`execute`): the input root from the CAS goes into a fresh container
  through the archive API (no bind mounts), with the Docker machine's container
  defaults (network, limits, the capabilities every run container gets), the
  command's arguments, environment and working directory; the container is stopped
  past the action's timeout; stdout and stderr (one stream, as the Docker path
  reads it) and the output paths go back to the CAS, under caps, as the
  ``ActionResult`` of the ``COMPLETED`` lease;
* where the service names a log stream for the action (BuildGrid's
  ``executeoperationmetadata-bin`` in the session update's metadata), the
  container's output is written to it as it comes (:func:`~pytest_lrun.reapi.logstreams.write`,
  on the worker's ``logstream`` channel), so clients see inner results live;
* a lease the service cancelled has its container stopped;
* when the service goes away (a restart), the worker waits and opens a new session,
  reporting what finished meanwhile; containers it left behind (its own label,
  ``lrun.worker=BOT_ID``) are removed when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import code_pb2, status_pb2

from pytest_lrun.config.machines import Machine
from pytest_lrun.core.errors import EngineError, LrunError
from pytest_lrun.engine import ContainerSpec, Engine, stop
from pytest_lrun.reapi import logstreams
from pytest_lrun.reapi.cas import Storage, digest_of, key_of
from pytest_lrun.reapi.channel import Channel
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from pytest_lrun.reapi.trees import collect_output, write_input_tar

__all__ = ["LABEL_WORKER", "Worker", "execute"]

logger = logging.getLogger("pytest_lrun")

LABEL_WORKER = "lrun.worker"
# What one action may bring in and leave behind; the run's own caps apply again on the client.
INPUT_MAX_BYTES = 2 * 1024 * 1024 * 1024
OUTPUT_MAX_BYTES = 512 * 1024 * 1024
STDOUT_MAX_BYTES = 256 * 1024 * 1024
STOP_GRACE_S = 10.0
DEFAULT_ACTION_TIMEOUT_S = 3600.0
_POLL_S = 5.0  # how long one UpdateBotSession may wait for news
_RETRY_S = 1.0  # the wait before dialling a service that went away again


def execute(
    storage: Storage,
    engine: Engine,
    machine: Machine,
    action: re_pb2.Action,
    *,
    labels: Mapping[str, str],
    started: Callable[[str], None] = lambda container_id: None,
) -> re_pb2.ActionResult:
    """Run ``action`` in a container on ``engine`` with ``machine``'s defaults; its result, uploaded.

    :raises LrunError: the action cannot run (no image, a bad input tree, the engine failed)
    """
    command = re_pb2.Command.FromString(storage.read(action.command_digest, max_bytes=16 * 1024 * 1024))
    image = next((p.value for p in command.platform.properties if p.name == "container-image"), None) or next(
        (p.value for p in action.platform.properties if p.name == "container-image"), None
    )
    if not image or not image.startswith("docker://"):
        raise EngineError(
            machine.name, "the action names no container-image = docker://IMAGE platform property"
        )
    workdir = posixpath.normpath("/" + command.working_directory)
    spec = ContainerSpec(
        image=engine.image_id(image[len("docker://") :], machine.pull),
        command=tuple(command.arguments),
        labels=dict(labels),
        workdir=workdir,
        network=machine.network,
        pids_limit=machine.pids_limit,
        env={v.name: v.value for v in command.environment_variables},
        cpus=machine.cpus,
        memory=machine.memory,
    )
    timeout = _timeout_of(action)
    inputs = write_input_tar(storage, action.input_root_digest, max_bytes=INPUT_MAX_BYTES)
    container_id = engine.create(spec)
    try:
        with inputs:
            engine.put_archive(container_id, "/", inputs)
        result = re_pb2.ActionResult()
        result.execution_metadata.worker_start_timestamp.GetCurrentTime()
        engine.start(container_id)
        started(container_id)
        exit_code = engine.wait(container_id, timeout)
        if exit_code is None:
            stop(engine, container_id, STOP_GRACE_S)
            exit_code = engine.wait(container_id, 30) or 137
        result.exit_code = exit_code
        blobs: dict[tuple[str, int], bytes] = {}
        stdout = _capped(engine, container_id)
        result.stdout_digest.CopyFrom(digest_of(stdout))
        blobs[key_of(result.stdout_digest)] = stdout
        for path in [*command.output_paths, *command.output_files, *command.output_directories]:
            chunks = engine.get_archive(container_id, posixpath.normpath(posixpath.join(workdir, path)))
            if chunks is None:
                continue
            collected = collect_output(chunks, path, max_bytes=OUTPUT_MAX_BYTES)
            blobs.update(collected.blobs)
            if collected.file is not None:
                result.output_files.append(collected.file)
            elif collected.directory is not None:
                result.output_directories.append(collected.directory)
        storage.upload(blobs)
        result.execution_metadata.worker_completed_timestamp.GetCurrentTime()
        return result
    finally:
        try:
            engine.remove(container_id)
        except EngineError:
            logger.warning(
                "container %s was not removed; the worker removes it when it starts again", container_id
            )


def _timeout_of(action: re_pb2.Action) -> float:
    return action.timeout.ToNanoseconds() / 1e9 if action.HasField("timeout") else DEFAULT_ACTION_TIMEOUT_S


def _stop_quietly(engine: Engine, container_id: str) -> None:
    with contextlib.suppress(EngineError):  # gone already: its lease's thread reports what it saw
        stop(engine, container_id, STOP_GRACE_S)


def _capped(engine: Engine, container_id: str) -> bytes:
    out = bytearray()
    for chunk in engine.logs(container_id, follow=False):
        out += chunk[: STDOUT_MAX_BYTES - len(out)]
        if len(out) >= STDOUT_MAX_BYTES:
            break
    return bytes(out)


@dataclass
class _Lease:
    """A lease the worker holds: its message, and the running action's container."""

    lease: bots_pb2.Lease
    thread: threading.Thread | None = None
    container_id: str | None = None
    cancelled: bool = False


@dataclass
class Worker:
    """A bot on ``channel``'s service running actions on ``engine`` (the Docker ``machine``)."""

    channel: Channel
    instance: str
    engine: Engine
    machine: Machine
    slots: int = 1
    properties: Mapping[str, str] = field(default_factory=dict)
    bot_id: str = field(default_factory=lambda: f"lrun-{uuid.uuid4().hex[:12]}")
    on_line: Callable[[str], None] = lambda line: None
    logstream: Channel | None = None  # where the actions' log streams are written; None: the service

    def __post_init__(self) -> None:
        self.storage = Storage(self.channel, self.instance)
        self._bots = self.channel.stub(bots_pb2_grpc.BotsStub)
        self._leases: dict[str, _Lease] = {}
        # The stdout stream to write of each action (HASH/SIZE) the session holds, as the last
        # update named them: replaced whole, so it never outgrows the session's leases.
        self._write_names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._news = threading.Event()  # an action ended: report it now

    def run(self, stopping: threading.Event) -> None:
        """Serve leases until ``stopping`` is set; a service that goes away is dialled again."""
        self._remove_leftovers()
        while not stopping.is_set():
            try:
                self._serve(stopping)
            except LrunError as e:
                self.on_line(f"the service went away ({e}); dialling again")
                stopping.wait(_RETRY_S)

    def _remove_leftovers(self) -> None:
        for state in self.engine.list_labelled(f"{LABEL_WORKER}={self.bot_id}"):
            self.engine.remove(state.id)

    def _session(self) -> bots_pb2.BotSession:
        return bots_pb2.BotSession(
            bot_id=self.bot_id,
            status=bots_pb2.OK,
            worker=worker_pb2.Worker(
                devices=[
                    worker_pb2.Device(
                        handle=self.bot_id,
                        properties=[
                            worker_pb2.Device.Property(key=k, value=v) for k, v in self.properties.items()
                        ],
                    )
                ],
                configs=[worker_pb2.Worker.Config(key="capacity", value=str(self.slots))],
            ),
        )

    def _serve(self, stopping: threading.Event) -> None:
        create = bots_pb2.CreateBotSessionRequest(parent=self.instance, bot_session=self._session())
        session: bots_pb2.BotSession = self.channel.call(
            "CreateBotSession", self._bots.CreateBotSession, create, timeout=_POLL_S
        )
        self.on_line(f"bot {self.bot_id}: session {session.name} on {self.channel.url}")
        while not stopping.is_set():
            self._take(session)
            self._news.clear()  # before the leases are read: an action ending after is news
            with self._lock:
                del session.leases[:]
                session.leases.extend(held.lease for held in self._leases.values())
                done = [lid for lid, held in self._leases.items() if held.lease.state == bots_pb2.COMPLETED]
            update = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
            session = self._poll(update, session, busy=bool(self._leases))
            with self._lock:
                for lease_id in done:
                    self._leases.pop(lease_id, None)
        # No healthy session may outlive the bot: the scheduler would assign it actions nobody runs.
        session.status = bots_pb2.BOT_TERMINATING
        update = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
        self.channel.call("UpdateBotSession", self._bots.UpdateBotSession, update, timeout=_POLL_S)

    def _poll(
        self, request: bots_pb2.UpdateBotSessionRequest, sent: bots_pb2.BotSession, *, busy: bool
    ) -> bots_pb2.BotSession:
        """One long poll, which ends early once an action ends (its lease is reported at once);
        a poll that ends without news gives back the session as ``sent``."""
        future = self._bots.UpdateBotSession.future(request, metadata=self.channel.metadata, timeout=_POLL_S)
        while not future.done():
            if self._news.wait(0.05) and busy:
                future.cancel()
        try:
            session: bots_pb2.BotSession = future.result()
            with self._lock:
                self._write_names = logstreams.stream_names(future.trailing_metadata())
        except grpc.FutureCancelledError:
            return sent
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ):
                return sent
            raise self.channel.error("UpdateBotSession", e) from e
        return session

    def _take(self, session: bots_pb2.BotSession) -> None:
        """Start the leases the service assigned; stop those it cancelled or took back."""
        offered = {lease.id for lease in session.leases}
        for lease in session.leases:
            with self._lock:
                held = self._leases.get(lease.id)
            # The API offers a lease PENDING for the bot to accept; BuildGrid offers it ACTIVE.
            if lease.state in (bots_pb2.PENDING, bots_pb2.ACTIVE) and held is None:
                lease.state = bots_pb2.ACTIVE
                held = _Lease(bots_pb2.Lease())
                held.lease.CopyFrom(lease)
                held.thread = threading.Thread(target=self._run_lease, args=(held,), daemon=True)
                with self._lock:
                    self._leases[lease.id] = held
                held.thread.start()
            elif lease.state == bots_pb2.CANCELLED and held is not None:
                self._cancel(held)
        # A lease the service no longer lists was cancelled too (BuildGrid drops it so).
        with self._lock:
            dropped = [
                held
                for lease_id, held in self._leases.items()
                if lease_id not in offered and held.lease.state != bots_pb2.COMPLETED
            ]
        for held in dropped:
            self._cancel(held)

    def _cancel(self, held: _Lease) -> None:
        """Stop a cancelled lease's container, on a thread: the session's polls go on meanwhile."""
        if held.cancelled:
            return
        held.cancelled = True
        self.on_line(f"lease {held.lease.id}: cancelled by the service")
        if held.container_id is not None:
            threading.Thread(target=_stop_quietly, args=(self.engine, held.container_id), daemon=True).start()

    def _run_lease(self, held: _Lease) -> None:
        lease = held.lease
        status = status_pb2.Status(code=code_pb2.OK)
        result: re_pb2.ActionResult | None = None
        started = time.monotonic()
        action_name = "?"
        try:
            action, action_name = self._action(lease)
            with self._lock:
                write_name = self._write_names.get(action_name)
            labels = {LABEL_WORKER: self.bot_id}

            def on_start(container_id: str) -> None:
                held.container_id = container_id
                if write_name is not None:
                    threading.Thread(
                        target=self._stream, args=(container_id, write_name, action), daemon=True
                    ).start()

            result = execute(self.storage, self.engine, self.machine, action, labels=labels, started=on_start)
        except LrunError as e:
            status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(e))
        except Exception as e:  # a bug must not leave the lease active for ever
            logger.exception("lease %s failed", lease.id)
            status = status_pb2.Status(code=code_pb2.INTERNAL, message=f"{type(e).__name__}: {e}")
        with self._lock:
            lease.state = bots_pb2.COMPLETED
            lease.status.CopyFrom(status)
            if result is not None:
                lease.result.Pack(result)
        ended = f"exit {result.exit_code}" if result is not None else status.message
        self.on_line(f"lease {lease.id} (action {action_name}): {ended} in {time.monotonic() - started:.2f}s")
        self._news.set()

    def _stream(self, container_id: str, write_name: str, action: re_pb2.Action) -> None:
        """Write the container's output to its log stream as it comes; a failure costs the
        clients only the live view (the result carries the whole output)."""
        try:
            logstreams.write(
                self.logstream or self.channel,
                write_name,
                self.engine.logs(container_id, follow=True),
                timeout=_timeout_of(action) + STOP_GRACE_S + 30,
            )
        except LrunError as e:
            self.on_line(f"container {container_id[:12]}: its output was not streamed live: {e}")

    def _action(self, lease: bots_pb2.Lease) -> tuple[re_pb2.Action, str]:
        """The lease's action and its digest as the client names it (``HASH/SIZE``)."""
        action = re_pb2.Action()
        if lease.payload.TypeName() == re_pb2.Action.DESCRIPTOR.full_name:
            lease.payload.Unpack(action)
            digest = digest_of(action.SerializeToString(deterministic=True))
            return action, f"{digest.hash}/{digest.size_bytes}"
        digest = re_pb2.Digest()
        if not lease.payload.Unpack(digest):
            raise EngineError(self.machine.name, f"lease {lease.id} carries neither an Action nor its digest")
        action = re_pb2.Action.FromString(self.storage.read(digest, max_bytes=16 * 1024 * 1024))
        return action, f"{digest.hash}/{digest.size_bytes}"
