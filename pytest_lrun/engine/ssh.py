"""``ssh://user@host[:port]`` machines: docker-py's paramiko transport, with a bounded login.

It reads ``~/.ssh/config`` and ``~/.ssh/known_hosts`` from ``$HOME`` and runs
``docker system dial-stdio`` on the host. :class:`SSHAdapter` bounds every step of
its login by the connect timeout and says in words why a login failed (host key,
refused key, port). Only :mod:`.docker` imports this module, and only for an ssh
machine: paramiko is the ``ssh`` extra, and importing this module without it raises
``ImportError``, which :mod:`.docker` maps to :class:`~pytest_lrun.core.errors.ExtraMissing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import paramiko  # type: ignore[import-untyped, unused-ignore]
import requests.adapters
import requests.exceptions
from docker.transport.sshconn import SSHHTTPAdapter

from pytest_lrun.config.machines import Machine

# Any: the stubs know neither ssh_params nor a float timeout (docker-py takes one).
_Base: Any = SSHHTTPAdapter


def ssh_adapter(machine: Machine, timeout: float) -> requests.adapters.HTTPAdapter:
    """docker-py's paramiko transport to ``machine``, logged in within ``timeout`` seconds.

    :raises requests.exceptions.ConnectionError: the login failed
    """
    return SSHAdapter(machine.host, timeout)


class SSHAdapter(_Base):  # type: ignore[misc]
    """docker-py's paramiko adapter with every step of the login bounded and its failures in words.

    Every step of the login (TCP connect, the server's banner, the key exchange,
    authentication) is bounded by ``timeout``. A failed login, then or on a reconnect,
    and an ssh error during a request surface as ``requests.exceptions.ConnectionError``
    carrying a reason in words (:func:`_reason`), which
    :class:`~pytest_lrun.engine.docker.DockerEngine` maps to
    :class:`~pytest_lrun.core.errors.EngineUnreachable` like any engine that does not answer.
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        self._login_timeout = timeout  # before docker-py's constructor, which logs in
        super().__init__(base_url, timeout)

    def _connect(self) -> None:
        timeout = self._login_timeout
        try:
            self.ssh_client.connect(
                **self.ssh_params, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._disconnect()
            raise requests.exceptions.ConnectionError(_reason(e, self.ssh_params, timeout)) from e

    def _disconnect(self) -> None:
        transport = self.ssh_client.get_transport()
        self.ssh_client.close()
        if transport is not None:
            # close() skips a transport whose thread already ended (no banner, a dropped
            # session): its socket would stay open.
            transport.sock.close()

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        with self.pools.lock:  # reentrant: docker-py's get_connection takes it too
            transport = self.ssh_client.get_transport()
            if transport is not None and not transport.is_active():
                # docker-py reconnects only a client without a transport, and its pools
                # keep the dead one: a dropped session (sshd restarted, network gone) would
                # fail every later request.
                self.pools.clear()
                self._disconnect()
            # docker-py keeps a pool per request URL, each holding idle channels (an ssh
            # session and a dial-stdio process each), until sshd's MaxSessions refuses new
            # ones. One pool for every URL keeps the sessions to the requests at once.
            return super().get_connection("http+docker://ssh", proxies)

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        # paramiko's errors are none of those requests maps (a session refused, or asked of a
        # transport that dropped since get_connection looked).
        try:
            return super().send(request, *args, **kwargs)
        except (paramiko.SSHException, EOFError) as e:
            raise requests.exceptions.ConnectionError(_reason(e, self.ssh_params, self._login_timeout)) from e


def _reason(e: Exception, params: Mapping[str, Any], timeout: float) -> str:
    """Why an ssh login or request to the host of ``params`` failed, in words."""
    where = f"{params.get('hostname')}:{params.get('port') or 22}"
    if isinstance(e, paramiko.BadHostKeyException):
        return (
            f"ssh host key of {where} is {e.key.get_name()} {e.key.fingerprint}, not the "
            f"{e.expected_key.get_name()} {e.expected_key.fingerprint} that ~/.ssh/known_hosts has for it"
        )
    if isinstance(e, paramiko.AuthenticationException):
        return f"ssh server {where} refused the login of {params.get('username')!r}: {e}"
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return f"ssh host {where} is not in ~/.ssh/known_hosts (check its key, then add it: ssh-keyscan)"
    if isinstance(e, paramiko.ChannelException):
        return (
            f"ssh server {where} refused another session ({e}): its MaxSessions (sshd's default 10) "
            "caps the requests to one engine at once"
        )
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        errors = [err.strerror or str(err) for err in e.errors.values()]
        return f"nothing takes ssh connections at {where}: {errors[0]}"
    # "No existing session": paramiko's login after a key exchange that the timeout cut short.
    cut_short = isinstance(e, paramiko.SSHException) and str(e) == "No existing session"
    if isinstance(e, TimeoutError) or isinstance(e.__context__, TimeoutError) or cut_short:
        # The TCP connect, the banner or the key exchange took too long.
        return f"no ssh answer from {where} within {timeout:g} s"
    return f"ssh to {where}: {str(e) or type(e).__name__}"
