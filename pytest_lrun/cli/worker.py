"""``lrun worker``: serve a Remote Execution API service's actions on a Docker machine.

Parses what the bot needs (the service, by remote machine name or ``grpc://`` URL; the
Docker machine whose engine and container defaults run the actions; slots, device
properties, bot id) and runs :class:`~pytest_lrun.run.worker.Worker` until SIGINT or
SIGTERM, one line per session and per action on stderr.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pytest_lrun.cli.context import Context
from pytest_lrun.cli.output import say
from pytest_lrun.config.machines import Machine
from pytest_lrun.config.remote import Remote, logstream_problem, remote_problem
from pytest_lrun.core.errors import ConfigError

__all__ = ["cmd_worker"]


def cmd_worker(ctx: Context) -> int:
    from pytest_lrun.reapi.channel import Channel
    from pytest_lrun.run.worker import Worker

    args = ctx.args
    service = _service(ctx, args.remote, args.instance, args.logstream)
    assert service.remote is not None
    machine = ctx.resolver.resolve(args.machine)
    if machine.remote is not None:
        raise ConfigError("--machine", f"{args.machine!r} is a remote machine; name a Docker Engine's")
    properties = dict(_property(text) for text in args.property or ())
    engine = ctx.connect(machine)
    channel = Channel(service, timeout=ctx.settings.connect_timeout)
    logstream = service.remote.logstream
    streams = Channel(service, timeout=ctx.settings.connect_timeout, url=logstream) if logstream else None
    options = {"bot_id": args.bot_id} if args.bot_id else {}
    worker = Worker(
        channel,
        service.remote.instance_name,
        engine,
        machine,
        slots=args.slots or machine.slots,
        properties=properties,
        on_line=lambda line: say(line, err=True),
        logstream=streams,
        **options,
    )
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    say(f"lrun worker {worker.bot_id}: {machine.describe()} serving {service.host}", err=True)
    try:
        worker.run(stopping)
    finally:
        channel.close()
        if streams is not None:
            streams.close()
        engine.close()
    return 0


def _service(ctx: Context, name: str, instance: str | None, logstream: str | None) -> Machine:
    """The service ``--remote`` names: a remote machine table, or a ``grpc://`` URL."""
    if "://" in name:
        problem = remote_problem(name)
        if problem is not None:
            raise ConfigError("--remote", problem)
        if logstream is not None and (problem := logstream_problem(name, logstream)) is not None:
            raise ConfigError("--logstream", problem)
        remote = Remote(name, instance or "", logstream=logstream)
        return Machine(name=name, host=name, source="config", remote=remote)
    machine = ctx.resolver.resolve(name)
    if machine.remote is None:
        raise ConfigError(
            "--remote", f"machine {name!r} is no remote machine (its table has no remote = URL)"
        )
    if instance is not None:
        raise ConfigError(
            "--instance", "applies to a --remote URL; a remote machine's table has instance_name"
        )
    if logstream is not None:
        raise ConfigError("--logstream", "applies to a --remote URL; a remote machine's table has logstream")
    return machine


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError("--property", f"expected KEY=VALUE, found {text!r}")
    return key, value
