"""Build declarations: a Dockerfile build in place of an image, and the digest of its inputs.

A machine table, a plan entry or ``--lrun-build`` may name a build instead of an image:

* :class:`Build` is the declaration: a context folder, the Dockerfile in it, build
  args and a target (:func:`make_build` checks one, wherever it was written).
* :func:`build_digest` is the digest of the build's inputs: the context's tree digest
  (the same walk as a test directory, with the context's ``.dockerignore`` instead of
  ``.lrunignore``), the Dockerfile's path and content, the build args and the target.
  The image is tagged :func:`image_tag` (``lrun-build:<digest>``) on every engine, so
  the same inputs are one tag everywhere, and a change to any input is a new tag, a
  new image id and therefore a new run key.

Building it on an engine, and cleaning up what was built, is :mod:`pytest_lrun.run.images`'.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import xxhash

from pytest_lrun.core.errors import HashError
from pytest_lrun.core.text import shown_value
from pytest_lrun.tree.hashing import hash_dir
from pytest_lrun.tree.ignores import DOCKER_IGNORES, IgnoreRules

__all__ = [
    "BUILD_REPOSITORY",
    "LABEL_BUILD",
    "LABEL_BUILD_CONTEXT",
    "Build",
    "build_digest",
    "image_tag",
    "make_build",
]

#: The repository of every image pytest-lrun builds; the tag is the digest of the inputs.
BUILD_REPOSITORY = "lrun-build"


DEFAULT_DOCKERFILE = "Dockerfile"


# Labels of the images pytest-lrun builds: ``lrun images`` and ``lrun gc --images`` filter on them.
LABEL_BUILD = "lrun.build"  # the digest of the build's inputs


LABEL_BUILD_CONTEXT = "lrun.build-context"  # the context folder, as the building host named it


@dataclass(frozen=True)
class Build:
    """A Dockerfile build: ``context`` (absolute), the Dockerfile's path in it, args and target.

    ``origin`` says who named it (a file and field, or an option), for messages only.
    """

    context: Path
    dockerfile: str = DEFAULT_DOCKERFILE
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    origin: str = field(default="", compare=False)

    @property
    def ignores(self) -> IgnoreRules:
        """The context's ignore rules: its ``.dockerignore``, which never leaves out the Dockerfile."""
        return dataclasses.replace(DOCKER_IGNORES, keep=(self.dockerfile,))

    def describe(self) -> str:
        return f"{self.context}" + (f" ({self.dockerfile})" if self.dockerfile != DEFAULT_DOCKERFILE else "")


def make_build(
    context: str | os.PathLike[str],
    *,
    base: Path,
    dockerfile: str | None = None,
    args: Mapping[str, str] | None = None,
    target: str | None = None,
    origin: str = "",
) -> Build:
    """A checked :class:`Build`; ``context`` is relative to ``base`` (the folder of the file naming it).

    :raises ValueError: saying what is wrong (the caller names the file and field): the
        context is not a folder, the Dockerfile is not a file inside it, a build arg's
        name is empty or holds ``=``, the target is empty
    """
    name = dockerfile if dockerfile is not None else DEFAULT_DOCKERFILE
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"dockerfile {name!r} must be a path inside the build context")
    try:
        root = (base / context).resolve()
        if not root.is_dir():
            raise ValueError(f"the build context {str(root)!r} is not a folder")
        if not (root / relative).is_file():
            raise ValueError(f"dockerfile {name!r} is not a file in the build context {str(root)!r}")
    except OSError as e:  # a name too long, a loop of links
        raise ValueError(
            f"cannot use the build context {shown_value(str(context), limit=200)}: {e.strerror or e}"
        ) from None
    for arg in args or {}:
        if not arg or "=" in arg:
            raise ValueError(f"build arg {arg!r}: expected a name without '='")
    if target is not None and not target.strip():
        raise ValueError("target: expected the name of a build stage")
    return Build(root, str(relative), tuple(sorted((args or {}).items())), target, origin)


def image_tag(digest: str) -> str:
    """The tag of a build with inputs ``digest`` on every engine."""
    return f"{BUILD_REPOSITORY}:{digest}"


def build_digest(build: Build, *, tree: str | None = None, cache_dir: Path | None = None) -> str:
    """The digest of the build's inputs (``tree``: the context's digest when already known).

    :raises HashError: the context or its Dockerfile cannot be read
    """
    if tree is None:
        tree = hash_dir(build.context, cache_dir=cache_dir, ignores=build.ignores)
    dockerfile = build.context / build.dockerfile
    try:
        content = dockerfile.read_bytes()
    except OSError as e:
        raise HashError(str(dockerfile), e.strerror or str(e)) from e
    inputs = {
        "version": 1,
        "context": tree,
        "dockerfile": [build.dockerfile, xxhash.xxh3_128_hexdigest(content)],
        "args": [list(pair) for pair in build.args],
        "target": build.target,
    }
    return xxhash.xxh3_128_hexdigest(json.dumps(inputs, sort_keys=True).encode())
