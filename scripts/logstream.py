"""A LogStream service for the test BuildGrid: logstream.py HOST:PORT (run on BuildGrid's venv).

BuildGrid 0.9 creates a stdout and a stderr stream per job on a LogStream service
(its scheduler's ``logstream: url:``) but serves none itself; real deployments run
one beside it. This is that service for pytest-lrun's tests, in memory:

* ``LogStreamService.CreateLogStream(parent)`` makes ``PARENT/logStreams/ID`` and its
  secret write name ``PARENT/logStreams/ID/TOKEN``;
* ``ByteStream.Write`` on the write name appends (offsets must follow on), and
  ``finish_write`` ends the stream;
* ``ByteStream.Read`` on the name sends what is there from ``read_offset``, then each
  new write as it comes, and ends once the stream is finished. A stream nobody wrote
  to for ``IDLE_S`` is ended too, so no reader waits for a writer that died.

Streams live for ``KEEP_S`` after their last write; nothing is kept past a restart.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from buildgrid._protos.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from buildgrid._protos.build.bazel.remote.logstream.v1 import remote_logstream_pb2_grpc as ls_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2 as bs_pb2
from buildgrid._protos.google.bytestream import bytestream_pb2_grpc as bs_grpc

IDLE_S = 600.0
KEEP_S = 3600.0
CHUNK = 64 * 1024


@dataclass
class Stream:
    data: bytearray = field(default_factory=bytearray)
    finished: bool = False
    touched: float = field(default_factory=time.monotonic)


class Streams(ls_grpc.LogStreamServiceServicer, bs_grpc.ByteStreamServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.writers: dict[str, str] = {}  # write name -> name
        self.changed = threading.Condition()

    def CreateLogStream(
        self, request: ls_pb2.CreateLogStreamRequest, context: grpc.ServicerContext
    ) -> ls_pb2.LogStream:
        name = f"{request.parent}/logStreams/{uuid.uuid4().hex}"
        write_name = f"{name}/{uuid.uuid4().hex}"
        with self.changed:
            self._forget_old()
            self.streams[name] = Stream()
            self.writers[write_name] = name
        return ls_pb2.LogStream(name=name, write_resource_name=write_name)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for name, stream in list(self.streams.items()):
            if now - stream.touched > KEEP_S:
                del self.streams[name]
        self.writers = {w: n for w, n in self.writers.items() if n in self.streams}

    def Write(self, requests, context: grpc.ServicerContext) -> bs_pb2.WriteResponse:  # type: ignore[no-untyped-def]
        stream: Stream | None = None
        for request in requests:
            with self.changed:
                if stream is None:
                    name = self.writers.get(request.resource_name)
                    if name is None:
                        context.abort(
                            grpc.StatusCode.NOT_FOUND, f"no log stream to write at {request.resource_name!r}"
                        )
                    stream = self.streams[name]
                if stream.finished:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the stream is finished")
                if request.write_offset != len(stream.data):
                    context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"write at {request.write_offset}, the stream holds {len(stream.data)}",
                    )
                stream.data += request.data
                stream.finished = request.finish_write
                stream.touched = time.monotonic()
                self.changed.notify_all()
        return bs_pb2.WriteResponse(committed_size=len(stream.data) if stream else 0)

    def Read(self, request: bs_pb2.ReadRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        with self.changed:
            stream = self.streams.get(request.resource_name)
        if stream is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no log stream {request.resource_name!r}")
        offset = request.read_offset
        while context.is_active():
            with self.changed:
                while len(stream.data) <= offset and not stream.finished:
                    if time.monotonic() - stream.touched > IDLE_S or not context.is_active():
                        return
                    self.changed.wait(1.0)
                chunk = bytes(stream.data[offset : offset + CHUNK])
                finished = stream.finished and offset + len(chunk) >= len(stream.data)
            if chunk:
                offset += len(chunk)
                yield bs_pb2.ReadResponse(data=chunk)
            if finished:
                return


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    streams = Streams()
    ls_grpc.add_LogStreamServiceServicer_to_server(streams, server)
    bs_grpc.add_ByteStreamServicer_to_server(streams, server)
    server.add_insecure_port(sys.argv[1])
    server.start()
    print(f"logstream.py: serving on {sys.argv[1]}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
