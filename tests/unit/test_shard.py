"""Splitting a directory's inner tests into shards."""

from __future__ import annotations

import pytest

from pytest_lrun.config.settings import OPTIONS, resolve
from pytest_lrun.config.shards import ShardOf, parse_shard_of, parse_shards
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.run.balance import balance, by_hash, durations_of
from pytest_lrun.wire.events import PhaseReport, Start

IDS = [f"t.py::test_{i}" for i in range(7)]


def test_without_history_the_ids_are_dealt_round_robin_in_collection_order() -> None:
    assert balance(IDS, 3, {}) == [IDS[0::3], IDS[1::3], IDS[2::3]]
    assert balance(IDS[:2], 5, {}) == [IDS[:1], IDS[1:2]]  # never an empty shard
    assert balance([], 3, {}) == []


def test_recorded_durations_balance_the_shards_and_unknown_tests_count_as_the_median() -> None:
    durations = {IDS[0]: 10.0, IDS[1]: 1.0, IDS[2]: 1.0, IDS[3]: 4.0, IDS[4]: 4.0, IDS[5]: 2.0}
    shards = balance(IDS, 2, durations)  # IDS[6] is new: it counts as the median, 3 s
    assert sorted(n for shard in shards for n in shard) == sorted(IDS)  # each test once
    # Counted as powers of two (8, 1, 1, 4, 4, 2, 4): 12 against 12, where round-robin gives 16 against 8.
    assert shards == [[IDS[0], IDS[6]], [IDS[1], IDS[2], IDS[3], IDS[4], IDS[5]]]
    # A rerun's jitter moves nothing: the keys of the shards stay, so they cache.
    jittered = {nodeid: seconds * 1.1 for nodeid, seconds in durations.items()}
    assert balance(IDS, 2, jittered) == shards


def test_quick_tests_with_history_split_as_without() -> None:
    assert balance(IDS, 3, dict.fromkeys(IDS, 0.003)) == balance(IDS, 3, {})


def test_a_matrix_job_s_shard_depends_on_the_node_id_alone() -> None:
    parts = [by_hash(IDS, ShardOf(k, 3)) for k in (1, 2, 3)]
    assert sorted(n for part in parts for n in part) == sorted(IDS)
    assert by_hash([*IDS, "t.py::new"], ShardOf(1, 3))[: len(parts[0])] == parts[0]  # a new test moves none


def test_durations_come_from_finished_tests_summed_over_their_phases() -> None:
    def report(nodeid: str, when: str, seconds: float) -> PhaseReport:
        return PhaseReport(0, nodeid, when, "passed", seconds, None, None, None, (), None, (), (), None, None)  # type: ignore[arg-type]

    events = [
        Start(0, "a", None),
        report("a", "setup", 0.5),
        report("a", "call", 1.0),
        report("a", "teardown", 0.25),
        report("b", "setup", 9.0),  # still running when the run stopped: no duration kept
    ]
    assert durations_of(events) == {"a": 1.75}


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5"])
def test_a_bad_shard_count_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of shards above zero, or auto"):
        parse_shards(text)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="K/N with 1 <= K <= N"):
        parse_shard_of(text)


def test_shards_and_a_single_shard_are_options_with_auto_and_exclusive() -> None:
    assert parse_shards("auto") is None and parse_shards("4") == 4
    settings = resolve({o.name: None for o in OPTIONS}, lambda key: None, {"LRUN_SHARDS": "auto"})
    assert settings.shards == 0  # auto
    settings = resolve({o.name: None for o in OPTIONS}, lambda key: None, {"LRUN_SHARD": "2/4"})
    assert settings.shard == ShardOf(2, 4)
    with pytest.raises(ConfigError, match="a matrix job runs one shard K/N"):
        resolve({o.name: None for o in OPTIONS}, lambda key: None, {"LRUN_SHARD": "2/4", "LRUN_SHARDS": "3"})


@pytest.mark.parametrize("shards", [{"LRUN_SHARDS": "auto"}, {"LRUN_SHARDS": "3"}, {"LRUN_SHARD": "1/2"}])
def test_a_plan_with_shards_is_refused_not_run_whole_in_silence(shards: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="plan entries run whole"):
        resolve({o.name: None for o in OPTIONS}, lambda key: None, {"LRUN_PLAN": "plan.toml", **shards})
