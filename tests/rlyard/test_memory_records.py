"""The graph memory's records round-trip through protobuf; a non-finite reward is refused."""

from __future__ import annotations

import math

import pytest

from rlyard.domain import DecisionPath, MemoryStats, MetaCognition, ScoredMetaCognition, UtilityUpdate, convert
from rlyard.errors import InvalidArgument
from rlyard.memory.v1 import memory_pb2

META = MetaCognition("m1", "inspect the schema first", 0.75, "sql", 3, ("p1", "p2"), 10.5, 12.25)


def test_records_round_trip_through_protobuf() -> None:
    assert convert.meta_cognition_from_pb(convert.meta_cognition_to_pb(META)) == META
    scored = ScoredMetaCognition(META, 0.6, 0.8)
    assert convert.scored_from_pb(convert.scored_to_pb(scored)) == scored
    path = DecisionPath("p1", ("START", "TOOL_CALL:sql_query", "TOOL_OK", "ANSWER"), 1.0, "t1")
    assert convert.path_from_pb(convert.path_to_pb(path)) == path
    update = UtilityUpdate("m1", 0.9, 0.4)
    assert convert.utility_update_from_pb(convert.utility_update_to_pb(update)) == update
    assert update.delta == pytest.approx(0.5)
    stats = MemoryStats(4, 7, 4, 2, 0.5)
    assert convert.stats_from_pb(convert.stats_to_pb(stats)) == stats


@pytest.mark.parametrize("field", ["reward_with", "reward_without"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_reward_is_invalid_argument_naming_the_field(field: str, value: float) -> None:
    pb = memory_pb2.UtilityUpdate(meta_cognition_id="m1", reward_with=1.0, reward_without=0.0)
    setattr(pb, field, value)
    with pytest.raises(InvalidArgument, match=f"updates\\[2\\].{field}"):
        convert.utility_update_from_pb(pb, "updates[2]")


def test_an_update_without_an_id_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="meta_cognition_id is empty"):
        convert.utility_update_from_pb(memory_pb2.UtilityUpdate(reward_with=1.0))
