"""An execution's live output: its log streams, read by a client and written by a worker.

A service that streams an action's output names a stream per execution in the
operation's ``ExecuteOperationMetadata`` (``stdout_stream_name``): a client reads it
with ``ByteStream.Read`` from the endpoint hosting the streams, as it is written, long
before the ``ActionResult`` is in. The executor writes it with ``ByteStream.Write`` on
its secret write name, which the Remote Workers API hands a bot in the metadata of
its session update (``executeoperationmetadata-bin``), as BuildGrid does.

This module owns both ends: :func:`stream_names` (the names an operation or a session
update carries), :func:`follow` (read one, ending when the execution is over even if
its writer died) and :func:`write` (write one from a container's output).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import grpc
from google.longrunning import operations_pb2

from pytest_lrun.reapi.channel import Channel
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

__all__ = ["follow", "stdout_stream", "stream_names", "write"]

_METADATA_KEY = "executeoperationmetadata-bin"
# How long a stream may go on after its execution ended: the writer's last bytes and
# its finish are in flight; past this the writer is taken to have died.
_DRAIN_S = 5.0


def stdout_stream(operation: operations_pb2.Operation) -> str | None:
    """The stdout stream an operation's metadata names, or None."""
    metadata = re_pb2.ExecuteOperationMetadata()
    if not operation.HasField("metadata") or not operation.metadata.Unpack(metadata):
        return None
    return metadata.stdout_stream_name or None


def stream_names(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The stdout write names a session update's trailing metadata carries, by action
    digest (``HASH/SIZE``)."""
    names: dict[str, str] = {}
    for key, value in metadata or ():
        if key != _METADATA_KEY or not isinstance(value, bytes):
            continue
        meta = re_pb2.ExecuteOperationMetadata.FromString(value)
        if meta.stdout_stream_name:
            names[f"{meta.action_digest.hash}/{meta.action_digest.size_bytes}"] = meta.stdout_stream_name
    return names


def follow(channel: Channel, name: str, *, ended: threading.Event) -> Iterator[bytes]:
    """The stream ``name``'s bytes as they are written, until it is finished, or until
    :data:`_DRAIN_S` after ``ended`` is set (its writer died), or a failed read: the
    caller reads the rest from the action's result."""
    stub = channel.stub(bytestream_pb2_grpc.ByteStreamStub)
    call = stub.Read(bytestream_pb2.ReadRequest(resource_name=name), metadata=channel.metadata)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            if ended.is_set():
                if not done.wait(_DRAIN_S):
                    call.cancel()
                return

    threading.Thread(target=watch, name="lrun-logstream-watch", daemon=True).start()
    try:
        for response in call:
            yield response.data
    except grpc.RpcError:
        return  # cancelled, or the stream is gone: the result holds the whole output
    finally:
        done.set()
        call.cancel()


def write(channel: Channel, write_name: str, chunks: Iterable[bytes], *, timeout: float) -> None:
    """Write ``chunks`` to the stream ``write_name`` and finish it.

    :raises EngineError: the service refused a write, or is gone
    """
    stub = channel.stub(bytestream_pb2_grpc.ByteStreamStub)

    def requests() -> Iterator[bytestream_pb2.WriteRequest]:
        offset = 0
        for chunk in chunks:
            if chunk:
                yield bytestream_pb2.WriteRequest(resource_name=write_name, write_offset=offset, data=chunk)
                offset += len(chunk)
        yield bytestream_pb2.WriteRequest(resource_name=write_name, write_offset=offset, finish_write=True)

    channel.call("ByteStream.Write", stub.Write, requests(), timeout=timeout)
