"""Docker Engines of one's own: ``dockerd`` processes on separate sockets, data roots and exec roots.

Shared by ``bench/fleet.py`` (a fleet of engines to measure) and
``tests/integration/test_crash_points.py`` (an engine to restart mid-run,
where restarting a shared one would break other people's runs). Needs root and
the ``dockerd`` and ``docker`` commands (:func:`can_start_engines`). Everything
an engine writes lives under its ``root``, which :func:`stop_engine` deletes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

ENGINE_START_TIMEOUT_S = 60.0
ENGINE_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Engine:
    """One dockerd started here, and where its files are."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]


def can_start_engines() -> bool:
    """Whether this process may start engines: root, with ``dockerd`` and ``docker`` installed."""
    return os.geteuid() == 0 and shutil.which("dockerd") is not None and shutil.which("docker") is not None


def answers(url: str) -> bool:
    """The engine at ``url`` answers a version request within 10 s."""
    try:
        done = subprocess.run(
            ["docker", "-H", url, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def launch_engine(root: Path) -> Engine:
    """A dockerd with its socket, data root, exec root and pidfile under ``root`` (not yet answering).

    ``root`` may hold an engine stopped with :func:`halt_engine`: the new one starts on its data.
    """
    root.mkdir(exist_ok=True)
    url = f"unix://{root / 'docker.sock'}"
    with (root / "dockerd.log").open("ab") as log:
        # A session of its own: Ctrl-C on the caller must not reach dockerd before stop_engine does.
        process = subprocess.Popen(
            [
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--host",
                url,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "dockerd.pid"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Engine(url, root, process)


def wait_until_up(engine: Engine) -> None:
    """Return once the engine answers; raise SystemExit with its log if it dies or takes too long."""
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while not answers(engine.url):
        if engine.process.poll() is not None or time.monotonic() > deadline:
            tail = (engine.root / "dockerd.log").read_bytes()[-3000:].decode(errors="replace")
            raise SystemExit(f"dockerd on {engine.url} did not come up; its log ends with:\n{tail}")
        time.sleep(0.3)


def load_image(engines: Sequence[Engine], source: str, image: str, work: Path) -> None:
    """Copy ``image`` from the engine at ``source`` into each of ``engines`` (saved once, loaded at once)."""
    image_tar = work / "image.tar"
    subprocess.run(
        ["docker", "-H", source, "save", "-o", str(image_tar), image], capture_output=True, check=True
    )
    try:
        loads = [
            subprocess.Popen(
                ["docker", "-H", e.url, "load", "-q", "-i", str(image_tar)], stdout=subprocess.DEVNULL
            )
            for e in engines
        ]
        if any([load.wait() != 0 for load in loads]):  # a list: wait for every load, not the first failure
            raise SystemExit(f"docker load of {image} failed on one of the new engines")
    finally:
        image_tar.unlink()


def halt_engine(engine: Engine) -> None:
    """Stop a dockerd started here (and the containerd it runs), keeping its folder: it may start again."""
    engine.process.terminate()
    try:
        engine.process.wait(ENGINE_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"dockerd {engine.process.pid} did not stop within {ENGINE_STOP_TIMEOUT_S:g}s; killed")
        os.killpg(engine.process.pid, signal.SIGKILL)
        engine.process.wait()
        # dockerd runs containerd in a process group of its own; a killed dockerd leaves it behind.
        containerd = engine.root / "exec" / "containerd" / "containerd.pid"
        if containerd.exists():
            with suppress(ValueError, ProcessLookupError):
                os.kill(int(containerd.read_text().strip()), signal.SIGKILL)


def restart_engine(engine: Engine) -> Engine:
    """Stop the engine and start it again on the same folder; returns once it answers."""
    halt_engine(engine)
    restarted = launch_engine(engine.root)
    wait_until_up(restarted)
    return restarted


def stop_engine(engine: Engine) -> None:
    """Stop a dockerd started here, unmount and delete its folder."""
    halt_engine(engine)
    # A clean stop unmounts everything; after a kill, overlay mounts may remain and must go before rmtree.
    prefix = str(engine.root) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(engine.root, ignore_errors=True)
