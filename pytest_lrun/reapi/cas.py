"""The content-addressable storage and the action cache of a Remote Execution API service.

A blob is named by its :class:`Digest` (SHA-256, as the API requires, and its size).
:class:`Storage` uploads only what ``FindMissingBlobs`` says is missing, in batches
(``BatchUpdateBlobs``) up to :data:`BATCH_BYTES`, and a larger blob over ByteStream in
chunks; it reads blobs back the same two ways, never more than the caller's cap. It
also looks up and stores action results (the action cache).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeAlias

import grpc

from pytest_lrun.core.errors import EngineError
from pytest_lrun.reapi.channel import Channel
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from pytest_lrun.reapi.protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

__all__ = ["BATCH_BYTES", "BlobKey", "Digest", "Storage", "digest_of", "key_of"]

Digest = re_pb2.Digest
BlobKey: TypeAlias = tuple[str, int]  # (hash, size): a digest as a dict key
# Batches stay well under the 4 MiB a gRPC message may carry by default on most services.
BATCH_BYTES = 2 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
_FIND_AT_ONCE = 1000


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key_of(digest: re_pb2.Digest) -> BlobKey:
    return digest.hash, digest.size_bytes


# What uploads read a blob's bytes from: the bytes, or a callable that reads them when needed.
BlobSource: TypeAlias = bytes | Callable[[], bytes]


class Storage:
    """The CAS and action cache of one instance of a service."""

    def __init__(self, channel: Channel, instance: str) -> None:
        self.channel = channel
        self.instance = instance
        self._cas = channel.stub(re_grpc.ContentAddressableStorageStub)
        self._ac = channel.stub(re_grpc.ActionCacheStub)
        self._bytes = channel.stub(bytestream_pb2_grpc.ByteStreamStub)

    # -- writing ---------------------------------------------------------------

    def missing(self, keys: Iterable[BlobKey]) -> set[BlobKey]:
        """Which of ``keys`` the service does not hold."""
        wanted = list(dict.fromkeys(keys))
        absent: set[BlobKey] = set()
        for at in range(0, len(wanted), _FIND_AT_ONCE):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance,
                blob_digests=[
                    re_pb2.Digest(hash=h, size_bytes=n) for h, n in wanted[at : at + _FIND_AT_ONCE]
                ],
            )
            reply = self.channel.call("FindMissingBlobs", self._cas.FindMissingBlobs, request)
            absent.update(key_of(d) for d in reply.missing_blob_digests)
        return absent

    def upload(self, blobs: Mapping[BlobKey, BlobSource]) -> int:
        """Upload the blobs the service is missing; returns how many bytes went up."""
        absent = self.missing(blobs)
        batch: list[re_pb2.BatchUpdateBlobsRequest.Request] = []
        batch_bytes = sent = 0
        for key in sorted(absent, key=lambda k: k[1]):
            source = blobs[key]
            data = source if isinstance(source, bytes) else source()
            sent += len(data)
            if len(data) > BATCH_BYTES:
                self._write(key, data)
                continue
            if batch_bytes + len(data) > BATCH_BYTES:
                self._update(batch)
                batch, batch_bytes = [], 0
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=_digest(key), data=data))
            batch_bytes += len(data)
        if batch:
            self._update(batch)
        return sent

    def _update(self, batch: list[re_pb2.BatchUpdateBlobsRequest.Request]) -> None:
        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=batch)
        reply = self.channel.call("BatchUpdateBlobs", self._cas.BatchUpdateBlobs, request)
        for response in reply.responses:
            if response.status.code != 0:
                raise EngineError(
                    self.channel.machine,
                    f"BatchUpdateBlobs: blob {response.digest.hash[:12]} refused: {response.status.message}",
                )

    def _write(self, key: BlobKey, data: bytes) -> None:
        name = f"{self._prefix}uploads/{uuid.uuid4()}/blobs/{key[0]}/{key[1]}"

        def chunks() -> Iterator[bytestream_pb2.WriteRequest]:
            for at in range(0, max(len(data), 1), CHUNK_BYTES):
                piece = data[at : at + CHUNK_BYTES]
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if at == 0 else "",
                    write_offset=at,
                    data=piece,
                    finish_write=at + CHUNK_BYTES >= len(data),
                )

        self.channel.call("ByteStream.Write", self._bytes.Write, chunks())

    # -- reading ---------------------------------------------------------------

    def read(self, digest: re_pb2.Digest, *, max_bytes: int) -> bytes:
        """One blob's bytes; a blob past ``max_bytes`` is refused before any of it is read."""
        if digest.size_bytes > max_bytes:
            raise EngineError(
                self.channel.machine,
                f"blob {digest.hash[:12]} is {digest.size_bytes} bytes, past {max_bytes}",
            )
        if digest.size_bytes == 0:
            return b""
        if digest.size_bytes <= BATCH_BYTES:
            return self.read_many([digest])[key_of(digest)]
        return b"".join(self.stream(f"{self._prefix}blobs/{digest.hash}/{digest.size_bytes}"))

    def chunks(self, digest: re_pb2.Digest) -> Iterator[bytes]:
        """One blob's bytes as they come: a small blob at once (checked against its digest), a larger
        one over ByteStream, so that a reader who stops early fetches no more."""
        if digest.size_bytes <= BATCH_BYTES:
            yield self.read(digest, max_bytes=digest.size_bytes)
            return
        yield from self.stream(f"{self._prefix}blobs/{digest.hash}/{digest.size_bytes}")

    def read_many(self, digests: Iterable[re_pb2.Digest]) -> dict[BlobKey, bytes]:
        """Small blobs in batches (each under :data:`BATCH_BYTES`); checked against their digests."""
        found: dict[BlobKey, bytes] = {}
        batch: list[re_pb2.Digest] = []
        size = 0
        wanted = [d for d in {key_of(d): d for d in digests}.values()]
        for digest in wanted:
            if digest.size_bytes == 0:
                found[key_of(digest)] = b""
                continue
            if digest.size_bytes > BATCH_BYTES:
                found[key_of(digest)] = self.read(digest, max_bytes=digest.size_bytes)
                continue
            if size + digest.size_bytes > BATCH_BYTES:
                found.update(self._read_batch(batch))
                batch, size = [], 0
            batch.append(digest)
            size += digest.size_bytes
        if batch:
            found.update(self._read_batch(batch))
        return found

    def _read_batch(self, batch: list[re_pb2.Digest]) -> dict[BlobKey, bytes]:
        request = re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=batch)
        reply = self.channel.call("BatchReadBlobs", self._cas.BatchReadBlobs, request)
        found: dict[BlobKey, bytes] = {}
        for response in reply.responses:
            if response.status.code != 0:
                raise EngineError(
                    self.channel.machine,
                    f"BatchReadBlobs: blob {response.digest.hash[:12]}: {response.status.message}",
                )
            if key_of(digest_of(response.data)) != key_of(response.digest):
                raise EngineError(
                    self.channel.machine, f"blob {response.digest.hash[:12]}: its bytes do not match it"
                )
            found[key_of(response.digest)] = response.data
        missing = {key_of(d) for d in batch} - set(found)
        if missing:
            raise EngineError(self.channel.machine, f"BatchReadBlobs: {len(missing)} blob(s) not returned")
        return found

    def stream(self, resource: str, *, offset: int = 0, timeout: float | None = None) -> Iterator[bytes]:
        """A ByteStream resource's bytes from ``offset``, as the service sends them."""
        request = bytestream_pb2.ReadRequest(resource_name=resource, read_offset=offset)
        try:
            for reply in self._bytes.Read(request, metadata=self.channel.metadata, timeout=timeout):
                yield reply.data
        except grpc.RpcError as e:
            raise self.channel.error(f"ByteStream.Read {resource}", e) from e

    # -- the action cache --------------------------------------------------------

    def cached_result(self, action: re_pb2.Digest) -> re_pb2.ActionResult | None:
        """The action cache's result for ``action``, or None (a miss)."""
        request = re_pb2.GetActionResultRequest(
            instance_name=self.instance, action_digest=action, inline_stdout=True, inline_stderr=True
        )
        try:
            result: re_pb2.ActionResult = self._ac.GetActionResult(
                request, metadata=self.channel.metadata, timeout=self.channel.timeout
            )
            return result
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self.channel.error("GetActionResult", e) from e

    @property
    def _prefix(self) -> str:
        return f"{self.instance}/" if self.instance else ""


def _digest(key: BlobKey) -> re_pb2.Digest:
    return re_pb2.Digest(hash=key[0], size_bytes=key[1])
