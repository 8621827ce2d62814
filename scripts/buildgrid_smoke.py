"""End-to-end smoke test of the test BuildGrid (scripts/buildgrid.sh): CAS, Execution, Bots, ActionCache.

Run it with the BuildGrid venv's Python (its generated protos, buildgrid._protos, are the only
dependency besides grpcio), against a started server:

    eval "$(scripts/buildgrid.sh start)"
    /var/cache/lrun/buildgrid-venv/bin/python scripts/buildgrid_smoke.py

It uploads a Command and an Action (unique each run, so never an action-cache hit at first) to
the CAS, one by BatchUpdateBlobs and one by ByteStream Write; starts a minimal Remote Workers API
bot in a thread (CreateBotSession, then UpdateBotSession long polls); calls Execute; the bot
leases the action, checks the payload, writes a stdout blob and completes the lease with a fake
ActionResult; the client checks the finished operation, reads stdout back over ByteStream, finds
the result with GetActionResult, gets it again from WaitExecution, and a second Execute is
answered from the action cache. Each step's time is printed; exit status 0 means all held.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.longrunning import operations_pb2
from buildgrid._protos.google.rpc import code_pb2
from google.protobuf.message import Message

TIMEOUT = 30.0
STDOUT = b"hello from the smoke bot\n"


class Clock:
    """Prints each step with the time since the previous one and since the start."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def step(self, what: str) -> None:
        now = time.monotonic()
        print(f"{now - self.start:7.3f}s  (+{now - self.last:.3f}s)  {what}", flush=True)
        self.last = now


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def blob(message: Message) -> tuple[re_pb2.Digest, bytes]:
    data = message.SerializeToString(deterministic=True)
    return digest_of(data), data


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: FAILED: {what}")


def instance_prefix(instance: str) -> str:
    return f"{instance}/" if instance else ""


def bytestream_write(channel: grpc.Channel, instance: str, digest: re_pb2.Digest, data: bytes) -> None:
    name = f"{instance_prefix(instance)}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"
    half = len(data) // 2
    chunks = [
        bytestream_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:half]),
        bytestream_pb2.WriteRequest(write_offset=half, data=data[half:], finish_write=True),
    ]
    response = bytestream_pb2_grpc.ByteStreamStub(channel).Write(iter(chunks), timeout=TIMEOUT)
    check(response.committed_size == len(data), f"ByteStream Write committed {response.committed_size} bytes")


def bytestream_read(channel: grpc.Channel, instance: str, digest: re_pb2.Digest) -> bytes:
    name = f"{instance_prefix(instance)}blobs/{digest.hash}/{digest.size_bytes}"
    request = bytestream_pb2.ReadRequest(resource_name=name)
    return b"".join(
        r.data for r in bytestream_pb2_grpc.ByteStreamStub(channel).Read(request, timeout=TIMEOUT)
    )


class Bot(threading.Thread):
    """A Remote Workers API bot that completes the one lease it expects with a fake ActionResult."""

    def __init__(self, channel: grpc.Channel, instance: str, expected: re_pb2.Digest, clock: Clock) -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.instance = instance
        self.expected = expected
        self.clock = clock
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.leases_done = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def _session(self) -> bots_pb2.BotSession:
        device = worker_pb2.Device(
            handle="smoke-device",
            properties=[worker_pb2.Device.Property(key="OSFamily", value="linux")],
        )
        return bots_pb2.BotSession(
            bot_id=f"lrun-smoke-{uuid.uuid4()}",
            status=bots_pb2.OK,
            worker=worker_pb2.Worker(devices=[device]),
        )

    def _run(self) -> None:
        stub = bots_pb2_grpc.BotsStub(self.channel)
        # A short deadline: CreateBotSession long polls for work up to 80 % of it.
        session = stub.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=self.instance, bot_session=self._session()), timeout=2
        )
        self.clock.step(f"bot: CreateBotSession -> {session.name}")
        self.ready.set()
        while not self.stop.is_set():
            for lease in session.leases:
                if lease.state == bots_pb2.LeaseState.ACTIVE:
                    self._complete(lease)
            session = stub.UpdateBotSession(
                bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=5
            )
            # The server has taken the completion: drop the lease from the session.
            kept = [lease for lease in session.leases if lease.state != bots_pb2.LeaseState.COMPLETED]
            del session.leases[:]
            session.leases.extend(kept)
        # Leave no healthy session behind: the scheduler would assign later actions to it.
        session.status = bots_pb2.BOT_TERMINATING
        stub.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=5
        )
        self.clock.step("bot: session ended (BOT_TERMINATING)")

    def _complete(self, lease: bots_pb2.Lease) -> None:
        action = re_pb2.Action()
        check(lease.payload.Unpack(action), f"lease payload is an Action, not {lease.payload.type_url}")
        check(blob(action)[0] == self.expected, "the leased Action is the one executed")
        self.clock.step(f"bot: leased {lease.id}")
        cas = re_grpc.ContentAddressableStorageStub(self.channel)
        read = cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=[action.command_digest]),
            timeout=TIMEOUT,
        )
        command = re_pb2.Command()
        command.ParseFromString(read.responses[0].data)
        check(list(command.arguments) == ["/bin/echo", "smoke"], f"command from the CAS: {command.arguments}")
        stdout = digest_of(STDOUT)
        cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.instance,
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=stdout, data=STDOUT)],
            ),
            timeout=TIMEOUT,
        )
        result = re_pb2.ActionResult(exit_code=0, stdout_digest=stdout)
        result.execution_metadata.worker = "lrun-smoke-bot"
        lease.result.Pack(result)
        lease.status.code = code_pb2.OK
        lease.state = bots_pb2.LeaseState.COMPLETED
        self.leases_done += 1


def operation_updates(
    stream: Iterator[operations_pb2.Operation], clock: Clock, what: str
) -> operations_pb2.Operation:
    last = None
    for operation in stream:
        metadata = re_pb2.ExecuteOperationMetadata()
        operation.metadata.Unpack(metadata)
        stage = re_pb2.ExecutionStage.Value.Name(metadata.stage)
        clock.step(f"{what}: {operation.name} {stage} done={operation.done}")
        last = operation
    check(last is not None and last.done, f"{what} ended with a finished operation")
    assert last is not None
    return last


def execute_response(operation: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    check(operation.HasField("response"), f"operation has a response, not an error: {operation.error}")
    response = re_pb2.ExecuteResponse()
    check(operation.response.Unpack(response), "the response is an ExecuteResponse")
    return response


def main() -> int:
    target = os.environ.get("LRUN_TEST_REAPI", "grpc://127.0.0.1:50051").removeprefix("grpc://")
    instance = os.environ.get("LRUN_TEST_REAPI_INSTANCE", "lrun")
    clock = Clock()
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    caps = re_grpc.CapabilitiesStub(channel).GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=instance), timeout=TIMEOUT
    )
    check(caps.execution_capabilities.exec_enabled, "execution is enabled")
    check(re_pb2.DigestFunction.SHA256 in caps.cache_capabilities.digest_functions, "SHA-256 digests")
    clock.step(f"GetCapabilities on {target} instance {instance!r}: exec_enabled, SHA256")

    command = re_pb2.Command(
        arguments=["/bin/echo", "smoke"],
        output_paths=["out/junit.xml"],
        environment_variables=[
            re_pb2.Command.EnvironmentVariable(name="LRUN_SMOKE", value=str(uuid.uuid4()))
        ],
    )
    command_digest, command_data = blob(command)
    root_digest, root_data = blob(re_pb2.Directory())
    action = re_pb2.Action(command_digest=command_digest, input_root_digest=root_digest)
    action.platform.properties.add(name="OSFamily", value="linux")
    action.platform.properties.add(name="container-image", value="docker://lrun-busybox:latest")
    action_digest, action_data = blob(action)

    cas = re_grpc.ContentAddressableStorageStub(channel)
    digests = [command_digest, root_digest, action_digest]
    missing = cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=digests), timeout=TIMEOUT
    ).missing_blob_digests
    check(command_digest in missing and action_digest in missing, "a new command and action are missing")
    cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            instance_name=instance,
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=command_digest, data=command_data),
                re_pb2.BatchUpdateBlobsRequest.Request(digest=root_digest, data=root_data),
            ],
        ),
        timeout=TIMEOUT,
    )
    bytestream_write(channel, instance, action_digest, action_data)
    missing = cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=digests), timeout=TIMEOUT
    ).missing_blob_digests
    check(not missing, f"nothing missing after the uploads: {missing}")
    clock.step(f"uploaded (BatchUpdateBlobs + ByteStream Write), action {action_digest.hash[:12]}")

    bot = Bot(channel, instance, action_digest, clock)
    bot.start()
    check(bot.ready.wait(TIMEOUT) and bot.error is None, f"the bot has a session: {bot.error}")

    execution = re_grpc.ExecutionStub(channel)
    try:
        operation = operation_updates(
            execution.Execute(
                re_pb2.ExecuteRequest(instance_name=instance, action_digest=action_digest), timeout=TIMEOUT
            ),
            clock,
            "Execute",
        )
    finally:
        bot.stop.set()
    response = execute_response(operation)
    check(
        response.status.code == code_pb2.OK and not response.cached_result,
        f"executed, not cached: {response}",
    )
    check(response.result.stdout_digest == digest_of(STDOUT), "the bot's stdout digest came through")
    check(bot.leases_done == 1, f"the bot completed one lease, not {bot.leases_done}")
    check(bytestream_read(channel, instance, response.result.stdout_digest) == STDOUT, "stdout read back")
    clock.step("ExecuteResponse: exit 0, stdout read back over ByteStream")

    cached = re_grpc.ActionCacheStub(channel).GetActionResult(
        re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action_digest), timeout=TIMEOUT
    )
    check(cached.stdout_digest == digest_of(STDOUT), "GetActionResult returns the bot's result")
    clock.step("GetActionResult: hit")

    waited = operation_updates(
        execution.WaitExecution(re_pb2.WaitExecutionRequest(name=operation.name), timeout=TIMEOUT),
        clock,
        "WaitExecution",
    )
    check(
        execute_response(waited).result.stdout_digest == digest_of(STDOUT),
        "WaitExecution gives the same result",
    )

    again = operation_updates(
        execution.Execute(
            re_pb2.ExecuteRequest(instance_name=instance, action_digest=action_digest), timeout=TIMEOUT
        ),
        clock,
        "Execute again",
    )
    check(execute_response(again).cached_result, "a second Execute is served from the action cache")

    bot.join(TIMEOUT)
    check(not bot.is_alive() and bot.error is None, f"the bot ended cleanly: {bot.error}")
    channel.close()
    clock.step("smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
