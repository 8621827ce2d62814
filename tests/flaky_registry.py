"""A real image registry that fails one pull, then serves (importable as ``flaky_registry``).

Debian's ``docker-registry`` (the CNCF distribution registry that ``scripts/provision.sh``
installs) serves on a loopback port, and a small proxy in front of it answers the manifest
request of the first pull with ``503 Service Unavailable`` and passes everything else
through. An engine treats registries on 127.0.0.0/8 as insecure, so it pulls over plain
HTTP without certificates.

A pull begins with the ``GET /v2/`` ping, so "the first pull" is the manifest requests
that follow the first ping: the second pull pings again and gets its manifest. That
holds however quickly the second pull follows the first, with no timing in the test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from lrun_support import free_port

REGISTRY_BINARY = "docker-registry"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FlakyProxy:
    """Forwards connections to ``upstream``, failing the manifest requests of the first pull."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.pings = 0
        self.refused: list[str] = []  # the request lines answered 503
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
            threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
            while data := _recv(client):
                line = data.split(b"\r\n", 1)[0].decode("latin-1")
                with self._lock:
                    if line.startswith("GET /v2/ "):
                        self.pings += 1
                    fail = "/manifests/" in line and self.pings <= 1
                    if fail:
                        self.refused.append(line)
                if fail:
                    client.sendall(UNAVAILABLE)
                    return
                server.sendall(data)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def flaky_registry(work: Path) -> Iterator[tuple[int, FlakyProxy]]:
    """A registry on a free loopback port (its port) and the proxy in front of it; stopped after."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise FileNotFoundError(f"{REGISTRY_BINARY} is not installed (scripts/provision.sh installs it)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(work / "registry.log", "wb") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    proxy = FlakyProxy(port)
    try:
        _wait_until_up(port, process, work / "registry.log")
        yield port, proxy
    finally:
        proxy.close()
        process.terminate()
        process.wait(10)


def _wait_until_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
