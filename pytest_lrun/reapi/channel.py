"""One gRPC channel to a Remote Execution API service, and its errors as pytest-lrun's.

:class:`Channel` dials the machine's ``remote`` (TLS for ``grpcs://`` with the table's
``tls_*`` files), sends the bearer token of ``token_env`` with every call, and turns a
failed call into :class:`~pytest_lrun.core.errors.RemoteUnreachable` (the service does
not answer) or :class:`~pytest_lrun.core.errors.EngineError` (it refused), each
naming the call and the service's own status and details.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.remote import target_of
from pytest_lrun.core.errors import ConfigError, EngineError, RemoteUnreachable

__all__ = ["MAX_MESSAGE_BYTES", "Channel"]

# A batch of blobs, a Tree of outputs or a Directory fits in this; larger blobs go over ByteStream.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
R = TypeVar("R")


class Channel:
    """A channel to ``machine``'s service, or to ``url`` with its credentials (its log
    streams' endpoint); calls go through :meth:`call`."""

    def __init__(self, machine: Machine, *, timeout: float, url: str | None = None) -> None:
        assert machine.remote is not None
        self.machine = machine.name
        self.url = url or machine.host
        self.remote = machine.remote
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = ()
        token_env = machine.remote.token_env
        if token_env is not None:
            token = os.environ.get(token_env)
            if not token:
                raise ConfigError(
                    f"machine {machine.name!r} token_env", f"{token_env} is not set in this environment"
                )
            self.metadata = (("authorization", f"Bearer {token}"),)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if machine.remote.secure:
            tls = machine.tls
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca_cert if tls else None),
                private_key=_read(tls.client_key if tls else None),
                certificate_chain=_read(tls.client_cert if tls else None),
            )
            self.grpc: grpc.Channel = grpc.secure_channel(target_of(self.url), credentials, options)
        else:
            self.grpc = grpc.insecure_channel(target_of(self.url), options)

    def stub(self, factory: Callable[[grpc.Channel], object]) -> Any:
        """A generated service stub on this channel (typed Any: the generated stubs carry no annotations)."""
        return factory(self.grpc)

    def call(self, what: str, method: Callable[..., R], request: Any, *, timeout: float | None = None) -> R:
        """``method(request)`` with the token and a deadline; a failure raised as :meth:`error`."""
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise self.error(what, e) from e

    def error(self, what: str, e: grpc.RpcError) -> EngineError:
        """``e`` as pytest-lrun's error: the service is gone, or it refused ``what``."""
        code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        reason = f"{what}: {code.name}: {details}"
        if code in _GONE:
            return RemoteUnreachable(self.machine, self.url, reason)
        return EngineError(self.machine, reason)

    def close(self) -> None:
        self.grpc.close()


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
