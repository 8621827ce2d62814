"""The test Remote Execution API service (BuildGrid, from scripts/buildgrid.sh) and ``lrun worker``s on it.

:class:`ReapiService` is where the service answers; :class:`Workers` runs one ``lrun
worker`` per test engine against it, as separate processes writing their logs to
files, and reads back from those logs which worker executed which action.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"
_DONE = re.compile(r"^lease \S+ \(action (?P<action>[0-9a-f]+/\d+)\): ")


@dataclass(frozen=True)
class ReapiService:
    url: str
    instance: str
    logstream: str = ""  # the LogStream service beside BuildGrid (scripts/logstream.py)

    def problem(self) -> str | None:
        """None when the service answers GetCapabilities for the instance, else why not."""
        from pytest_lrun.config.machines import Machine
        from pytest_lrun.config.remote import Remote
        from pytest_lrun.core.errors import LrunError
        from pytest_lrun.engine.reapi import connect

        machine = Machine(
            name="probe", host=self.url, source="config", remote=Remote(self.url, self.instance)
        )
        # BuildGrid answers UNAVAILABLE for a while after its database restarted (a test does that).
        deadline = time.monotonic() + 60
        while True:
            try:
                connect(machine, connect_timeout=10).close()
                return None
            except LrunError as e:
                if time.monotonic() > deadline:
                    return str(e)
            time.sleep(1)

    def restart(self) -> None:
        """Stop and start the server again (what a deploy or a crash does to a fleet's service)."""
        subprocess.run([str(SCRIPTS / "buildgrid.sh"), "restart"], check=True, stdout=subprocess.DEVNULL)

    def table(self, name: str = "grid", extra: str = "") -> str:
        """A machine table naming the service."""
        logstream = f'logstream = "{self.logstream}"\n' if self.logstream else ""
        return (
            textwrap.dedent(
                f"""
                [tool.lrun.machines.{name}]
                remote = "{self.url}"
                instance_name = "{self.instance}"
                """
            )
            + logstream
            + textwrap.dedent(extra)
        )


@dataclass
class Workers:
    """One ``lrun worker`` per engine, serving ``service``; their logs under ``folder``."""

    service: ReapiService
    engines: list[str]
    folder: Path
    image: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"w{i + 1}" for i in range(len(self.engines))]

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tables = "".join(
            f'[tool.lrun.machines.{name}]\nhost = "{url}"\nimage = "{self.image}"\n\n'
            for name, url in zip(self.names, self.engines, strict=True)
        )
        (self.folder / "pyproject.toml").write_text(tables)
        for name in self.names:
            log = (self.folder / f"{name}.log").open("ab")
            command = [sys.executable, "-m", "pytest_lrun", "worker", "--project", str(self.folder)]
            command += ["--remote", self.service.url, "--instance", self.service.instance, "--machine", name]
            command += ["--slots", "1", "--bot-id", f"lrun-test-{name}-{os.getpid()}"]
            if self.service.logstream:
                command += ["--logstream", self.service.logstream]
            env = {**os.environ, "LRUN_STATE_DIR": str(self.folder / "state")}
            self.procs.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
            log.close()
        deadline = time.monotonic() + 60
        while not all("session" in self.log(name) for name in self.names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers opened no bot session: {[self.log(n) for n in self.names]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def executions(self, action: str) -> Counter[str]:
        """How many times each worker ran ``action`` (``HASH/SIZE``), from their logs."""
        found: Counter[str] = Counter()
        for name in self.names:
            for line in self.log(name).splitlines():
                match = _DONE.match(line)
                if match and match["action"] == action:
                    found[name] += 1
        return found
