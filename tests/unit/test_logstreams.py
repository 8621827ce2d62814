"""Where an execution's live output is named: an operation's metadata, a bot session update's."""

from __future__ import annotations

from google.longrunning import operations_pb2

from pytest_lrun.reapi.logstreams import stdout_stream, stream_names
from pytest_lrun.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2


def _metadata(stream: str, hash_: str = "ab" * 32, size: int = 140) -> re_pb2.ExecuteOperationMetadata:
    return re_pb2.ExecuteOperationMetadata(
        stage=re_pb2.ExecutionStage.EXECUTING,
        action_digest=re_pb2.Digest(hash=hash_, size_bytes=size),
        stdout_stream_name=stream,
    )


def test_an_executing_operation_names_its_stdout_stream_and_a_queued_one_none() -> None:
    executing = operations_pb2.Operation(name="lrun/op-1")
    executing.metadata.Pack(_metadata("lrun/x_stdout/logStreams/1"))
    queued = operations_pb2.Operation(name="lrun/op-2")
    queued.metadata.Pack(_metadata(""))
    assert stdout_stream(executing) == "lrun/x_stdout/logStreams/1"
    assert stdout_stream(queued) is None
    assert stdout_stream(operations_pb2.Operation(name="lrun/op-3")) is None


def test_a_session_updates_metadata_gives_each_actions_write_name_by_digest() -> None:
    trailing = (
        (
            "executeoperationmetadata-bin",
            _metadata("lrun/a/logStreams/1/secret", "aa" * 32, 10).SerializeToString(),
        ),
        ("executeoperationmetadata-bin", _metadata("", "bb" * 32, 20).SerializeToString()),
        ("x-other", "ignored"),
    )
    assert stream_names(trailing) == {f"{'aa' * 32}/10": "lrun/a/logStreams/1/secret"}
    assert stream_names(None) == {}
