"""Splitting one directory's inner tests into shards: which node ids each shard runs.

``--lrun-shards=N`` splits each dispatched directory into N runs. Each shard's
node ids are forwarded into its container (:class:`~pytest_lrun.config.select.Selection`)
and are part of its run key, so shards reuse and cache one by one.

* :func:`balance` uses the inner tests' durations recorded from earlier runs of
  the same directory (:meth:`~pytest_lrun.store.RunStore.durations`): longest
  first, each to the shard with the least work so far (a test without a record
  counts as the median of those with one). Durations count rounded to a power of
  two (at least :data:`GRAIN_S`): the jitter of a rerun must not move tests
  between shards, or the shards' keys would change and nothing would cache; tests
  of equal weight are dealt in collection order, so a suite of quick tests splits
  as round-robin does. With no history at all it deals the node ids round-robin in
  collection order.
* :func:`by_hash` is for ``--lrun-shard=K/N`` (CI matrix jobs): each job must compute
  the same split on its own, before any of them recorded a duration, so a test's
  shard depends on its node id alone.

Each shard keeps the collection order of its node ids.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import xxhash

from pytest_lrun.config.shards import ShardOf
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.wire.events import Event, PhaseReport

#: The smallest duration a test counts as when shards are balanced.
GRAIN_S = 0.1


def balance(nodeids: Sequence[str], count: int, durations: Mapping[str, float]) -> list[list[str]]:
    """``nodeids`` in at most ``count`` non-empty shards of about equal recorded duration."""
    if count < 1:
        raise ConfigError("--lrun-shards", f"a shard count is 1 or more, not {count}")
    known = [durations[nodeid] for nodeid in nodeids if nodeid in durations]
    shards: list[list[str]] = [[] for _ in range(min(count, len(nodeids)))]
    if not shards:
        return []
    if not known:
        for i, nodeid in enumerate(nodeids):
            shards[i % len(shards)].append(nodeid)
        return shards
    guess = statistics.median(known)
    weight = {nodeid: _coarse(durations.get(nodeid, guess)) for nodeid in nodeids}
    order = {nodeid: i for i, nodeid in enumerate(nodeids)}
    loads = [0.0] * len(shards)
    for nodeid in sorted(nodeids, key=lambda n: (-weight[n], order[n])):
        lightest = min(range(len(shards)), key=lambda i: (loads[i], i))
        shards[lightest].append(nodeid)
        loads[lightest] += weight[nodeid]
    return [sorted(shard, key=order.__getitem__) for shard in shards if shard]


def _coarse(seconds: float) -> float:
    """``seconds`` rounded to a power of two, at least :data:`GRAIN_S`."""
    return float(2 ** round(math.log2(max(seconds, GRAIN_S))))


def by_hash(nodeids: Sequence[str], shard: ShardOf) -> list[str]:
    """The node ids of ``shard``: those whose id hashes to it (the same on every CI job)."""
    return [
        n
        for n in nodeids
        if xxhash.xxh3_64_intdigest(n.encode("utf-8", "surrogateescape")) % shard.count == shard.index - 1
    ]


def durations_of(events: Sequence[Event]) -> dict[str, float]:
    """Each finished inner test's duration (its phases summed), from a run's events."""
    totals: dict[str, float] = {}
    finished: set[str] = set()
    for event in events:
        if isinstance(event, PhaseReport):
            totals[event.nodeid] = totals.get(event.nodeid, 0.0) + event.duration
            if event.when == "teardown":
                finished.add(event.nodeid)
    return {nodeid: seconds for nodeid, seconds in totals.items() if nodeid in finished}
