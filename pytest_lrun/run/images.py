"""Images built where they run: a declared build (:mod:`pytest_lrun.config.builds`) made on its engine.

* :class:`Builder` gives a run its image id on an engine, found once per machine and
  image for the dispatcher's life (``pull = "always"`` asks each time). An image (not a
  build) is looked up (or pulled) as before. A build whose tag is on the engine costs one
  inspect. Otherwise it is built there, through the Docker SDK's build API, under the
  store's named lock ``build <machine> <tag>`` (:meth:`~pytest_lrun.store.RunStore.exclusive`):
  two dispatchers that need it at once (threads, processes, or runners of a shared
  store) build it once, and the second finds the tag when it gets the lock. The
  output goes to ``builds/<machine key>-<digest>.log`` in the state dir and each
  ``Step N/M`` line to the progress callback. A failed build raises
  :class:`~pytest_lrun.core.errors.ImageBuildFailed` with the step that failed and the
  log's tail; the run fails with ``image_build_failed`` before any container starts.
* :func:`built_images` lists the images pytest-lrun built on an engine (they carry
  the label ``lrun.build``) with their last use by a run of the store, and
  :func:`gc_images` removes those no run has used for a while (``lrun images``,
  ``lrun gc --images``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_lrun.config.builds import (
    BUILD_REPOSITORY,
    LABEL_BUILD,
    LABEL_BUILD_CONTEXT,
    Build,
    build_digest,
    image_tag,
)
from pytest_lrun.core.errors import HashError, ImageBuildFailed, ImageMissing
from pytest_lrun.core.layout import BUILDS_DIR, machine_key
from pytest_lrun.tree.snapshot import Snapshot, snapshot

if TYPE_CHECKING:
    from pytest_lrun.config.machines import Machine
    from pytest_lrun.engine import Engine
    from pytest_lrun.store import RunStore

__all__ = ["Builder", "BuiltImage", "ImageSweep", "built_images", "gc_images"]

#: Lines of the build log a failure quotes.
TAIL_LINES = 20


#: Where a build's output lines go as they come: (machine, line).
BuildSink = Callable[[str, str], None]


class Builder:
    """Image ids of a dispatcher's runs, building images where a run needs one (module docstring)."""

    def __init__(self, store: RunStore, *, on_line: BuildSink | None = None) -> None:
        self.store = store
        self.on_line = on_line
        self.logs_dir = store.state_dir / BUILDS_DIR
        # (machine, image) -> id, found once per dispatcher: a run of a fleet asks each of its
        # candidates, and an inspect per candidate per run was an engine round trip on every start.
        self._ids: dict[tuple[str, str], str] = {}
        self._ids_lock = threading.Lock()

    def log_path(self, machine: str, tag: str) -> Path:
        """The build log of ``tag`` on ``machine`` in this host's state dir."""
        return self.logs_dir / f"{machine_key(machine)}-{tag.rpartition(':')[2]}.log"

    def image_id(self, engine: Engine, machine: Machine, image: str, build: Build | None) -> str:
        """The id of ``image`` on ``engine``: pulled by the machine's policy, or built from ``build``.

        :raises ImageMissing: not there and not pullable
        :raises ImageBuildFailed: the build failed (its step and log tail say where)

        An id once found is kept for the dispatcher's life, unless the machine pulls ``always``.
        """
        if build is None and machine.pull == "always":
            return engine.image_id(image, machine.pull)
        with self._ids_lock:
            known = self._ids.get((machine.name, image))
        if known is not None:
            return known
        if build is None:
            found = engine.image_id(image, machine.pull)
        else:
            found = self._built(engine, machine.name, image, build)
        with self._ids_lock:
            self._ids[(machine.name, image)] = found
        return found

    def _built(self, engine: Engine, machine: str, tag: str, build: Build) -> str:
        try:
            return engine.image_id(tag, "never")
        except ImageMissing:
            pass
        with self.store.exclusive(f"build {machine} {tag}"):
            try:  # another dispatcher may have built it while this one waited
                return engine.image_id(tag, "never")
            except ImageMissing:
                pass
            self._build(engine, machine, tag, build)
            return engine.image_id(tag, "never")

    def _build(self, engine: Engine, machine: str, tag: str, build: Build) -> None:
        digest = tag.rpartition(":")[2]
        log_path = self.log_path(machine, tag)
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        step: str | None = None
        started = time.monotonic()
        self._say(machine, f"building image {tag} from {build.describe()} (log: {log_path})")
        with _context(build, digest) as context, open(log_path, "w", encoding="utf-8") as log:
            for chunk in engine.build_image(
                context.archive,
                tag=tag,
                dockerfile=build.dockerfile,
                build_args=dict(build.args),
                target=build.target,
                labels={LABEL_BUILD: digest, LABEL_BUILD_CONTEXT: str(build.context)},
            ):
                if chunk.error is not None:
                    log.write(f"ERROR: {chunk.error}\n")
                    log.flush()
                    raise ImageBuildFailed(machine, tag, step, chunk.error, "\n".join(tail), str(log_path))
                log.write(chunk.text)
                for line in chunk.text.splitlines():
                    if line.strip():
                        tail.append(line.rstrip())
                    if line.startswith("Step "):
                        step = line.strip()
                        self._say(machine, f"building image {tag}: {step}")
        self._say(machine, f"built image {tag} in {time.monotonic() - started:.1f}s")

    def _say(self, machine: str, line: str) -> None:
        if self.on_line is not None:
            self.on_line(machine, line)


def _context(build: Build, digest: str) -> Snapshot:
    """The build context as a tar, from one read; it must still be what ``digest`` describes."""
    shipped = snapshot(build.context, ignores=build.ignores)
    if build_digest(build, tree=shipped.digest) != digest:
        shipped.close()
        raise HashError(str(build.context), "the build context changed while it was being dispatched")
    return shipped


# --- what is built, and its clean-up -------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    """An image pytest-lrun built on a machine, and when a run of this store last used it."""

    machine: str
    tag: str
    image_id: str
    size: int  # bytes
    created: float  # seconds since the epoch
    context: str
    last_used: float | None  # the newest run's creation on this machine with this image, if any

    @property
    def digest(self) -> str:
        return self.tag.rpartition(":")[2]

    def idle_since(self) -> float:
        """When the image was last built or used, whichever is later."""
        return max(self.created, self.last_used or 0.0)


def built_images(store: RunStore, engine: Engine, names: Sequence[str]) -> list[BuiltImage]:
    """The images built by pytest-lrun on ``engine``, newest first, with their last use in ``store``
    by a run on any of the machine ``names`` the engine is known by."""
    last_used: dict[str, float] = {}
    for run in (run for name in names for run in store.list(machine=name)):
        if run.image and run.image.startswith(BUILD_REPOSITORY + ":") and run.created_at is not None:
            last_used[run.image] = max(last_used.get(run.image, 0.0), run.created_at)
    found = []
    for info in engine.images(LABEL_BUILD):
        tag = image_tag(info.labels.get(LABEL_BUILD, ""))
        found.append(
            BuiltImage(
                machine=names[0],
                tag=tag,
                image_id=info.id,
                size=info.size,
                created=info.created,
                context=info.labels.get(LABEL_BUILD_CONTEXT, ""),
                last_used=last_used.get(tag),
            )
        )
    return sorted(found, key=lambda image: (-image.created, image.tag))


@dataclass(frozen=True)
class ImageSweep:
    """What :func:`gc_images` did on one machine: removed, and kept because a container uses it."""

    removed: list[BuiltImage]
    in_use: list[BuiltImage]


def gc_images(
    store: RunStore, engine: Engine, names: Sequence[str], *, max_age: float, now: float | None = None
) -> ImageSweep:
    """Remove the built images of ``engine`` (known by machine ``names``) no run has used for ``max_age`` s.

    An image a live run of the store names, or that a container still uses (the
    engine refuses), stays. The build logs of removed images go with them.
    """
    now = time.time() if now is None else now
    live = {run.image for name in names for run in store.active(name)}
    builder = Builder(store)
    removed, in_use = [], []
    for image in built_images(store, engine, names):
        if now - image.idle_since() < max_age:
            continue
        if image.tag in live or not engine.remove_image(image.image_id):
            in_use.append(image)
            continue
        removed.append(image)
        for name in names:
            builder.log_path(name, image.tag).unlink(missing_ok=True)
    return ImageSweep(removed, in_use)
