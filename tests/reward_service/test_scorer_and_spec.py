"""The scorer's composition rules and the spec forms, with small rewards defined here
(plain classes implementing the plug-in interface; the real rewards have their own tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from reward_service.registry import RewardContext
from reward_service.rewards.composite import Composite
from reward_service.scorer import Scorer
from reward_service.settings import RewardSettings
from reward_service.types import (
    RewardInputError,
    RewardKindName,
    RewardOutcome,
    RewardSystemError,
    StepReward,
)
from rlyard.domain import RewardTerm, ScoreStatus, ScoringItem, load_spec, parse_spec
from rlyard.errors import InvalidArgument

OK, SYSTEM_ERROR, INVALID_INPUT = ScoreStatus.OK, ScoreStatus.SYSTEM_ERROR, ScoreStatus.INVALID_INPUT


class LengthParams(BaseModel):
    scale: float = 1.0


class Length:
    """value = scale * len(text); one step per character position 0 and 1."""

    name = "length"
    description = "test reward"
    kind = RewardKindName.RULE
    Params = LengthParams

    def __init__(self, ctx: RewardContext) -> None:
        self.calls = 0

    async def score(self, item: ScoringItem, params: LengthParams) -> RewardOutcome:
        self.calls += 1
        return RewardOutcome(params.scale * len(item.text), "len", [StepReward(0, 1.0), StepReward(1, 0.5)])


class Empty(BaseModel):
    pass


class Failing:
    """Fails as the ground truth says: 'system', 'input', or not at all (value 0.25)."""

    name = "failing"
    description = "test reward"
    kind = RewardKindName.TOOL_VERIFICATION
    Params = Empty

    def __init__(self, ctx: RewardContext) -> None:
        pass

    async def score(self, item: ScoringItem, params: Empty) -> RewardOutcome:
        if item.ground_truth == "system":
            raise RewardSystemError("tool server down")
        if item.ground_truth == "input":
            raise RewardInputError("ground truth lacks 'query'")
        return RewardOutcome(0.25)


class Slow:
    """Sleeps, to show that a batch's items run concurrently."""

    name = "slow"
    description = "test reward"
    kind = RewardKindName.RULE
    Params = Empty
    running = 0
    peak = 0

    def __init__(self, ctx: RewardContext) -> None:
        pass

    async def score(self, item: ScoringItem, params: Empty) -> RewardOutcome:
        Slow.running += 1
        Slow.peak = max(Slow.peak, Slow.running)
        await asyncio.sleep(0.05)
        Slow.running -= 1
        return RewardOutcome(1.0)


@pytest.fixture
def scorer() -> Scorer:
    ctx = RewardContext(RewardSettings())
    rewards: dict[str, Any] = {"length": Length(ctx), "failing": Failing(ctx), "slow": Slow(ctx),
                               "composite": Composite(ctx)}
    s = Scorer(rewards, batch_concurrency=4)
    ctx.shared["scorer"] = s
    return s


def test_spec_forms_parse_to_the_same_terms() -> None:
    a = parse_spec({"length": 2.0, "failing": {"weight": 0.5}})
    b = parse_spec([{"name": "length", "weight": 2}, {"name": "failing", "weight": 0.5, "params": {}}])
    c = load_spec("length: 2.0\nfailing: {weight: 0.5}\n")
    assert a == b == c
    assert a.terms == (RewardTerm("length", 2.0), RewardTerm("failing", 0.5))
    assert parse_spec({"length": {"weight": 1, "scale": 3}}).terms[0].params == {"scale": 3}


@pytest.mark.parametrize(
    "bad, message",
    [({}, "names no reward"), ({"length": "heavy"}, "weight"), ({"length": True}, "weight"),
     ([{"weight": 1}], "needs a 'name'"), ("length", "mapping"),
     ([{"name": "length"}, {"name": "length"}], "twice"),
     # a spec from YAML or a config can hold what JSON cannot: refused all the same
     ({"length": float("nan")}, "'length': weight nan is not a finite number"),
     ({"length": 10**400}, "'length': weight is not a finite number"),
     ({"length": {"weight": 1, "scale": float("-inf")}}, r"'length': params\.scale is not a finite number"),
     ({"length": 1e308, "failing": -1e308}, "add up past the largest float")],
)
def test_bad_specs_say_what_is_wrong(bad: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_spec(bad)


async def test_total_is_the_weighted_sum_with_named_components_and_weighted_steps(scorer: Scorer) -> None:
    spec = parse_spec({"length": {"weight": 2.0, "scale": 0.1}, "failing": 4.0})
    result = await scorer.score(ScoringItem("i1", "abcde"), spec)
    # length: 0.1 * 5 = 0.5, weight 2 -> 1.0; failing: 0.25, weight 4 -> 1.0; total 2.0
    assert result.status == OK
    assert result.total == pytest.approx(2.0)
    assert {(c.name, c.value, c.weight) for c in result.components} == {("length", 0.5, 2.0), ("failing", 0.25, 4.0)}
    # steps are weighted by their component's weight: 2 * 1.0 and 2 * 0.5
    assert [(s.turn_index, s.value, s.component) for s in result.step_rewards] == [(0, 2.0, "length"),
                                                                                  (1, 1.0, "length")]
    assert "length=0.5" in result.explanation and "failing=0.25" in result.explanation


@pytest.mark.parametrize("truth, status", [("system", SYSTEM_ERROR), ("input", INVALID_INPUT)])
async def test_a_failed_component_marks_the_item_not_a_zero_score(scorer: Scorer, truth: str, status: str) -> None:
    result = await scorer.score(ScoringItem("i", "abc", ground_truth=truth), parse_spec({"length": 1, "failing": 1}))
    assert result.status == status
    assert result.total == 0.0 and not result.step_rewards
    failing = next(c for c in result.components if c.name == "failing")
    assert failing.status == status
    assert "failing:" in result.error


async def test_system_error_wins_over_invalid_input_and_batch_keeps_order(scorer: Scorer) -> None:
    spec = parse_spec({"failing": 1.0})
    items = [(ScoringItem(str(i), ground_truth=t), spec) for i, t in enumerate(["ok", "system", "input", "ok"])]
    results = await scorer.score_batch(items)
    assert [r.item_id for r in results] == ["0", "1", "2", "3"]
    assert [r.status for r in results] == [OK, SYSTEM_ERROR, INVALID_INPUT, OK]
    assert [r.total for r in results] == [0.25, 0.0, 0.0, 0.25]


async def test_batch_items_run_concurrently_under_the_bound(scorer: Scorer) -> None:
    Slow.peak = 0
    spec = parse_spec({"slow": 1.0})
    results = await asyncio.wait_for(scorer.score_batch([(ScoringItem(str(i)), spec) for i in range(12)]), 5)
    assert all(r.total == 1.0 for r in results)
    assert Slow.peak == 4  # batch_concurrency


async def test_unknown_reward_or_bad_params_fail_the_request(scorer: Scorer) -> None:
    with pytest.raises(InvalidArgument, match="unknown reward 'nope'; available: composite, failing, length, slow"):
        await scorer.score(ScoringItem("i", "x"), parse_spec({"nope": 1}))
    with pytest.raises(InvalidArgument, match="bad params for reward 'length': scale"):
        await scorer.score(ScoringItem("i", "x"), parse_spec({"length": {"scale": "big"}}))


async def test_composite_reports_one_component_made_of_its_parts(scorer: Scorer) -> None:
    spec = parse_spec({"composite": {"weight": 0.5, "terms": {"length": 1.0, "failing": 2.0}}})
    result = await scorer.score(ScoringItem("i", "abcd"), spec)
    # inner: 4 * 1 + 0.25 * 2 = 4.5; outer weight 0.5 -> 2.25
    assert result.total == pytest.approx(2.25)
    assert [(c.name, c.value) for c in result.components] == [("composite", 4.5)]
    # the inner step rewards (weighted by 1.0 inside) are weighted again by 0.5
    assert [(s.turn_index, s.value) for s in result.step_rewards] == [(0, 0.5), (1, 0.25)]
    failed = await scorer.score(ScoringItem("i", "abcd", ground_truth="system"), spec)
    assert failed.status == SYSTEM_ERROR and "tool server down" in failed.error
