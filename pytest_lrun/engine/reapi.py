"""A Remote Execution API service as an :class:`~pytest_lrun.engine.Engine`.

A machine table with ``remote = "grpc://..."`` (:mod:`pytest_lrun.config.remote`) is
run by :class:`RemoteEngine`: the dispatcher drives it as it drives a Docker Engine,
and each "container" is one action on the service:

* ``create`` keeps the spec under a local handle; ``put_archive`` turns the upload
  archive (the one snapshot of the test directory, with the inner reporter) into an
  input root (:func:`~pytest_lrun.reapi.trees.input_root`);
* ``start`` uploads what the service is missing (``FindMissingBlobs``), the
  ``Command`` and the ``Action``; when the run may be served again
  (``--lrun-reuse=completed``) it asks the action cache first and a hit needs no
  execution; otherwise it calls ``Execute`` and returns the operation's name,
  which the run records in place of a container id, so another process attaches
  to it by name (``WaitExecution``);
* ``wait``, ``logs``, ``get_archive`` and ``inspect`` read the operation and its
  ``ActionResult`` (stdout and stderr, output files and directories from the CAS,
  as the tar streams the Docker path reads, under the same caps); ``interrupt``
  and ``kill`` cancel the operation; ``remove`` forgets it.
* ``logs(follow=True)`` reads the execution's stdout as it runs when the service
  streams it (:mod:`pytest_lrun.reapi.logstreams`, from the table's ``logstream``
  endpoint or the service's own), so inner results are live; the rest, or all of it
  where nothing streams, comes from the ``ActionResult`` at the end.

What pytest-lrun does before any of this (the run key, the store's one atomic
prepare: created, reuse or busy) is unchanged, so N dispatchers of one key start one
execution, whatever the service's own de-duplication does.

The handle of a cache hit is ``ac:HASH/SIZE`` (the action's digest): any process
can read the result again by it. The paths of the container (the working
directory, ``/lrun/out/junit.xml``, artifacts) are sent relative to the input
root, which holds the upload archive as the container's ``/`` would.
"""

from __future__ import annotations

import posixpath
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.remote import image_property
from pytest_lrun.config.settings import DEFAULT_CONNECT_TIMEOUT
from pytest_lrun.core.errors import ContainerGone, EngineError, RemoteUnreachable
from pytest_lrun.engine import BuildChunk, ContainerSpec, ContainerState, ImageInfo, StartedAs
from pytest_lrun.reapi import logstreams
from pytest_lrun.reapi.cas import Storage, digest_of, key_of
from pytest_lrun.reapi.channel import Channel
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from pytest_lrun.reapi.trees import InputRoot, input_root, output_tar

__all__ = ["RemoteEngine", "connect"]

_PENDING = "reapi-"  # a handle before its action was executed
_CACHED = "ac:"  # the handle of an action cache hit
_CANCELLED_CODE = 1  # google.rpc.Code.CANCELLED: the operation was cancelled
_CANCEL_TRIES = 6
_KILLED = 137  # the exit code of a cancelled action, as a container's killed by SIGKILL
# Output bytes (stdout, stderr) read back at most; the log's own cap applies after.
_STREAM_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class _Action:
    """One action this engine knows, from ``create`` to ``remove``."""

    spec: ContainerSpec | None = None
    root: InputRoot | None = None
    result: re_pb2.ActionResult | None = None
    error: EngineError | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    stdout_stream: str | None = None  # the live stdout's stream, once the service names it
    named: threading.Event = field(default_factory=threading.Event)  # stdout_stream is known, or done


class RemoteEngine:
    """An :class:`~pytest_lrun.engine.Engine` over a Remote Execution API service."""

    def __init__(self, machine: Machine, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        assert machine.remote is not None
        self.machine = machine.name
        self.url = machine.host
        self.remote = machine.remote
        self.workdir = machine.workdir  # output paths are relative to it, in any process that reads them
        self.channel = Channel(machine, timeout=max(connect_timeout, 30.0))
        self._connect_timeout = connect_timeout
        self.storage = Storage(self.channel, machine.remote.instance_name)
        self._streams = (
            Channel(machine, timeout=self.channel.timeout, url=machine.remote.logstream)
            if machine.remote.logstream
            else self.channel
        )
        self._execution = self.channel.stub(re_grpc.ExecutionStub)
        self._capabilities = self.channel.stub(re_grpc.CapabilitiesStub)
        self._operations = self.channel.stub(operations_pb2_grpc.OperationsStub)
        self._actions: dict[str, _Action] = {}
        self._lock = threading.Lock()

    # -- the service --------------------------------------------------------------

    def ping(self) -> None:
        request = re_pb2.GetCapabilitiesRequest(instance_name=self.remote.instance_name)
        self.channel.call(
            "GetCapabilities", self._capabilities.GetCapabilities, request, timeout=self._connect_timeout
        )

    def image_id(self, image: str, pull: str) -> str:
        """The image as the platform names it: the service resolves it on its executors."""
        return "=".join(image_property(image))

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
        raise EngineError(self.machine, "a remote (Remote Execution API) machine builds no image: name one")

    def images(self, label: str) -> list[ImageInfo]:
        return []

    def remove_image(self, image: str) -> bool:
        return False

    def list_labelled(self, label: str) -> list[ContainerState]:
        return []  # actions carry no labels; the service ends and forgets them itself

    # -- one action ------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        handle = f"{_PENDING}{uuid.uuid4().hex}"
        with self._lock:
            self._actions[handle] = _Action(spec=spec)
        return handle

    def put_archive(self, container_id: str, path: str, data: IO[bytes]) -> None:
        if path != "/":
            raise EngineError(self.machine, f"a remote machine takes its input root at /, not {path}")
        self._known(container_id).root = input_root(data)

    def start(self, container_id: str) -> StartedAs:
        """Upload the action and execute it (or find it in the action cache); what it goes by then."""
        action = self._known(container_id)
        assert action.spec is not None and action.root is not None
        command, action_message = self._messages(action.spec, action.root)
        blobs = dict(action.root.blobs)
        for message in (command, action_message):
            data = message.SerializeToString(deterministic=True)
            blobs[key_of(digest_of(data))] = data
        self.storage.upload(blobs)
        action.root = None  # the archive's readers are not needed again
        digest = digest_of(action_message.SerializeToString(deterministic=True))
        shown = f"{digest.hash}/{digest.size_bytes}"
        if action.spec.cacheable:
            hit = self.storage.cached_result(digest)
            # As pytest-lrun's own store, only a run whose tests passed is served again.
            if hit is not None and hit.exit_code == 0:
                handle = self._adopt(f"{_CACHED}{shown}", action, hit)
                return StartedAs(handle, shown, cached=True)
        request = re_pb2.ExecuteRequest(
            instance_name=self.remote.instance_name,
            action_digest=digest,
            skip_cache_lookup=not action.spec.cacheable,
        )
        stream = self._execution.Execute(request, metadata=self.channel.metadata)
        try:
            first = next(stream)
        except grpc.RpcError as e:
            raise self.channel.error("Execute", e) from e
        with self._lock:
            self._actions.pop(container_id, None)
            self._actions[first.name] = action
        self._follow(first, stream, action)
        return StartedAs(first.name, shown)

    def _messages(self, spec: ContainerSpec, root: InputRoot) -> tuple[re_pb2.Command, re_pb2.Action]:
        workdir = self.workdir.strip("/")
        properties = {**self.remote.platform, **dict([image_property(spec.image)])}
        command = re_pb2.Command(
            arguments=list(spec.command),
            environment_variables=[
                re_pb2.Command.EnvironmentVariable(name=k, value=v) for k, v in sorted(spec.env.items())
            ],
            output_paths=sorted({posixpath.relpath(p, "/" + workdir) for p in spec.outputs}),
            working_directory=workdir,
            platform=re_pb2.Platform(
                properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(properties.items())]
            ),
        )
        action = re_pb2.Action(
            command_digest=digest_of(command.SerializeToString(deterministic=True)),
            input_root_digest=root.digest,
            do_not_cache=not spec.cacheable,
        )
        if spec.timeout is not None:
            action.timeout.FromNanoseconds(int(spec.timeout * 1e9))
        return command, action

    def _adopt(self, handle: str, action: _Action, result: re_pb2.ActionResult) -> str:
        action.result = result
        action.done.set()
        action.named.set()
        with self._lock:
            self._actions[handle] = action
        return handle

    def _follow(
        self, first: operations_pb2.Operation, stream: Iterator[operations_pb2.Operation], action: _Action
    ) -> None:
        """Read the operation's updates on a thread of its own until it is done."""

        def read() -> None:
            try:
                operation = first
                while not operation.done:
                    self._note_stream(action, operation)
                    operation = next(stream)
                self._settle(action, operation)
            except StopIteration:
                action.error = EngineError(
                    self.machine, "the service ended the execution's stream before it was done"
                )
            except grpc.RpcError as e:
                action.error = self.channel.error("Execute", e)
            finally:
                action.done.set()
                action.named.set()

        threading.Thread(target=read, name=f"lrun-reapi-{first.name[-12:]}", daemon=True).start()

    @staticmethod
    def _note_stream(action: _Action, operation: operations_pb2.Operation) -> None:
        if action.stdout_stream is None:
            action.stdout_stream = logstreams.stdout_stream(operation)
            if action.stdout_stream is not None:
                action.named.set()

    def _settle(self, action: _Action, operation: operations_pb2.Operation) -> None:
        if operation.HasField("error") and operation.error.code == _CANCELLED_CODE:
            action.cancelled = True  # stopped by us (timeout, Ctrl-C, lrun cancel): it ends, killed
            return
        if operation.HasField("error") and operation.error.code != 0:
            action.error = EngineError(self.machine, f"the execution failed: {operation.error.message}")
            return
        response = re_pb2.ExecuteResponse()
        operation.response.Unpack(response)
        if response.status.code == _CANCELLED_CODE and not response.HasField("result"):
            action.cancelled = True
            return
        if response.status.code != 0 and not response.HasField("result"):
            action.error = EngineError(
                self.machine, f"the execution failed: {response.status.message or response.status.code}"
            )
            return
        action.result = response.result

    def _known(self, handle: str) -> _Action:
        with self._lock:
            action = self._actions.get(handle)
        if action is not None:
            return action
        if handle.startswith(_CACHED):
            hash_, _, size = handle[len(_CACHED) :].partition("/")
            result = self.storage.cached_result(re_pb2.Digest(hash=hash_, size_bytes=int(size)))
            if result is None:
                raise ContainerGone(self.machine, f"the action cache no longer holds {hash_[:12]}")
            action = _Action()
            self._adopt(handle, action, result)
            return action
        if handle.startswith(_PENDING):
            raise ContainerGone(self.machine, f"action {handle} was never executed")
        return self._attach(handle)

    def _attach(self, name: str) -> _Action:
        """An execution another process started: follow it by its operation's name."""
        stream = self._execution.WaitExecution(
            re_pb2.WaitExecutionRequest(name=name), metadata=self.channel.metadata
        )
        try:
            first = next(stream)
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                raise ContainerGone(self.machine, f"the service knows no operation {name}") from e
            raise self.channel.error("WaitExecution", e) from e
        action = _Action()
        with self._lock:
            self._actions[name] = action
        self._follow(first, stream, action)
        return action

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        action = self._known(container_id)
        if not action.done.wait(timeout):
            return None
        if action.cancelled:
            return _KILLED
        if action.error is not None:
            raise action.error
        assert action.result is not None
        return action.result.exit_code

    def logs(self, container_id: str, *, follow: bool) -> Iterator[bytes]:
        action = self._known(container_id)
        streamed = 0  # stdout's bytes read live: the result's stdout starts with them
        if follow:
            action.named.wait()
            if action.stdout_stream is not None and not action.done.is_set():
                for chunk in logstreams.follow(self._streams, action.stdout_stream, ended=action.done):
                    streamed += len(chunk)
                    yield chunk
            action.done.wait()
        if action.result is None:
            return
        for raw, digest, skip in (
            (action.result.stdout_raw, action.result.stdout_digest, streamed),
            (action.result.stderr_raw, action.result.stderr_digest, 0),
        ):
            data = raw or (
                self.storage.read(digest, max_bytes=_STREAM_MAX_BYTES) if digest.size_bytes else b""
            )
            rest = data[skip:]
            if rest:
                yield rest

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes] | None:
        action = self._known(container_id)
        action.done.wait()
        if action.result is None:
            return None
        return output_tar(self.storage, action.result, posixpath.relpath(path, self.workdir))

    def untouched(self, container_id: str, path: str, mtime: int) -> bool:
        return False  # its outputs are in the action's result: reading one costs no container

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            action = self._known(container_id)
        except ContainerGone:
            return None
        if not action.done.is_set():
            return ContainerState(id=container_id, status="running", running=True, exit_code=None)
        code = action.result.exit_code if action.result is not None else -1
        return ContainerState(id=container_id, status="exited", running=False, exit_code=code)

    def interrupt(self, container_id: str) -> None:
        self.kill(container_id)

    def kill(self, container_id: str) -> None:
        if container_id.startswith((_PENDING, _CACHED)):
            return
        request = operations_pb2.CancelOperationRequest(name=container_id)
        # BuildGrid answers UNAVAILABLE while the bot's row is locked by its own poll: try again.
        for attempt in range(_CANCEL_TRIES):
            try:
                self.channel.call("CancelOperation", self._operations.CancelOperation, request)
                return
            except RemoteUnreachable:
                if attempt == _CANCEL_TRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def remove(self, container_id: str) -> None:
        with self._lock:
            self._actions.pop(container_id, None)

    def close(self) -> None:
        if self._streams is not self.channel:
            self._streams.close()
        self.channel.close()


def connect(machine: Machine, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> RemoteEngine:
    """A :class:`RemoteEngine` for ``machine``, checked to answer within ``connect_timeout``."""
    engine = RemoteEngine(machine, connect_timeout=connect_timeout)
    try:
        engine.ping()
    except BaseException:
        engine.close()
        raise
    return engine
