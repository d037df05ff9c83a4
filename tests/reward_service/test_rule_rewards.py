"""The rule rewards as plug-ins: registered under their names, their Params publish a
JSON Schema and validate a spec's params, and each scores through ``score()``.
(Hand-computed cases of each reward live in test_qa_em_f1.py, test_search_r1.py,
test_format.py and test_tool_call_match.py.)"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from reward_service.registry import RewardContext, build_rewards, load_reward
from reward_service.settings import RewardSettings
from reward_service.types import RewardKindName, StepReward
from rlyard.domain import ScoringItem

RULE_REWARDS = ["qa_em", "qa_f1", "search_r1", "format", "tool_call_match"]


def test_rule_rewards_are_registered_with_schemas() -> None:
    for name in RULE_REWARDS:
        cls = load_reward(name)
        assert cls.name == name
        assert cls.kind is RewardKindName.RULE
        assert cls.description
        schema = cls.Params.model_json_schema()
        json.dumps(schema)                      # what ListRewards publishes
        assert schema["type"] == "object"
        cls.Params()                            # every param has a default


def test_params_reject_unknown_values() -> None:
    with pytest.raises(ValidationError):
        load_reward("qa_em").Params.model_validate({"squad_version": "v3"})
    with pytest.raises(ValidationError):
        load_reward("search_r1").Params.model_validate({"format_score": -0.1})
    with pytest.raises(ValidationError):
        load_reward("format").Params.model_validate({"aggregate": "max"})


async def test_each_rule_reward_scores_one_item() -> None:
    rewards = build_rewards(RewardContext(RewardSettings()), RULE_REWARDS)
    response = (
        "<think>look it up</think>\n"
        '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>'
    )
    item = ScoringItem(
        prediction=response + "<think>found</think><answer>Paris</answer>",
        ground_truth={"answers": ["Paris"], "tool_calls": [{"name": "search", "arguments": {"query": "x"}}]},
    )
    got = {}
    for name, reward in rewards.items():
        params = type(reward).Params()
        got[name] = await reward.score(item, params)
    # qa_em / qa_f1 read the whole prediction here (it is not only the answer): no match.
    assert got["qa_em"].value == 0.0
    # search_r1: correct, answer tags alternate, 1 call: 1 + 0.05.
    assert got["search_r1"].value == pytest.approx(1.05)
    # format: a plain prediction is one turn; two think blocks in one turn are malformed.
    assert got["format"].value == 0.0 and got["format"].step_rewards == [StepReward(0, 0.0)]
    # tool_call_match: names 1; search: keys 1, value 0 -> 1; score 2 of 1 + 2 = 3: 6 · 2/3 − 3 = 1.
    assert got["tool_call_match"].value == pytest.approx(1.0)
    for outcome in got.values():
        assert outcome.explanation
