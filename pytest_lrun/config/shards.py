"""Shard specs: ``--lrun-shards=N|auto`` and ``--lrun-shard=K/N`` as the settings read them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SHARD_RE = re.compile(r"^([1-9][0-9]*)/([1-9][0-9]*)$")


@dataclass(frozen=True)
class ShardOf:
    """``--lrun-shard=K/N``: run only shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard_of(text: str) -> ShardOf:
    """``K/N`` with 1 <= K <= N."""
    match = _SHARD_RE.match(text.strip())
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"expected K/N with 1 <= K <= N, such as 2/4; found {text!r}")
    return ShardOf(int(match[1]), int(match[2]))


def parse_shards(text: str) -> int | None:
    """A shard count above zero, or ``auto`` (None: the free slots of the candidate machines)."""
    if text.strip().lower() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"expected a whole number of shards above zero, or auto; found {text!r}")
    return count
