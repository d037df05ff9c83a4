"""The ToolRL / ResT tool-call reward: hand-computed scores, the range and its
schedule over training steps, and where the predicted calls come from.

score = J(names) + Σ_gold best [J(keys) + #exact values]; S_max = 1 + Σ_gold (1 + |args|);
value = (r_max − r_min)·score/S_max + r_min, or r_max when the calls are identical."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reward_service.registry import RewardContext, load_reward
from reward_service.rewards.tool_call_match import (
    MalformedToolCall,
    ToolCall,
    ToolCallMatchParams,
    compute_tool_call_match,
    gold_tool_calls,
    match_score,
    parse_text_tool_calls,
    raw_tool_call_score,
    reward_range,
)
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardOutcome
from rlyard.domain import ScoringItem, Trajectory, Turn
from rlyard.domain import ToolCall as RecordedCall

GOLD = {
    "tool_calls": [
        {"name": "search", "arguments": {"query": "paris", "limit": 5}},
        {"name": "weather", "arguments": {"city": "Paris"}},
    ]
}
# search: same keys (J = 1), one value right (query) -> 2; calendar matches nothing;
# names [search, weather] vs [search, calendar]: 1 common of 3 -> 1/3.
# score = 1/3 + 2 = 7/3; S_max = 1 + (1 + 2) + (1 + 1) = 6.
PARTIAL = [ToolCall("search", {"query": "paris", "limit": 3}), ToolCall("calendar", {})]


def calls(gt: dict[str, list[dict[str, object]]]) -> list[ToolCall]:
    return gold_tool_calls(gt)


async def _score(item: ScoringItem, **params: object) -> RewardOutcome:
    cls = load_reward("tool_call_match")
    return await cls(RewardContext(RewardSettings())).score(item, cls.Params.model_validate(params))


def _text(*call_json: str) -> str:
    return "<think>x</think>\n" + "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in call_json)


def test_match_score_is_multiset_jaccard() -> None:
    # [a, a, b] vs [a, b, b]: common min(2,1) + min(1,2) = 2; union 3 + 3 − 2 = 4 -> 0.5.
    assert match_score(["a", "a", "b"], ["a", "b", "b"]) == 0.5
    assert match_score(["a", "b"], ["b", "a"]) == 1.0
    assert match_score([], []) == 1.0          # equal lists
    assert match_score(["a"], []) == 0.0


def test_exact_match_is_r_max() -> None:
    gold = calls(GOLD)
    m = compute_tool_call_match(gold, list(gold))
    assert m.value == 3.0 and m.exact
    # 1 == 1.0 after JSON parsing: still identical.
    assert compute_tool_call_match([ToolCall("f", {"n": 1})], [ToolCall("f", {"n": 1.0})]).value == 3.0


def test_no_overlap_is_r_min() -> None:
    # Names J = 0, no gold call finds a same-name prediction: score 0 -> r_min.
    m = compute_tool_call_match(calls(GOLD), [ToolCall("calendar", {"day": "monday"})])
    assert m.score == 0.0 and m.value == -3.0
    assert compute_tool_call_match(calls(GOLD), []).value == -3.0


def test_partial_match_hand_computed() -> None:
    score, max_score = raw_tool_call_score(calls(GOLD), PARTIAL)
    assert score == pytest.approx(7 / 3) and max_score == 6.0
    # 6 · (7/3) / 6 − 3 = −2/3.
    assert compute_tool_call_match(calls(GOLD), PARTIAL).value == pytest.approx(-2 / 3)
    # Keys half right: gold f{x: 1, y: 2}, pred f{x: 1, z: 2}: names 1; keys [x, y] vs [x, z]: 1/3;
    # values: x -> 1. score = 1 + 1/3 + 1 = 7/3, S_max = 1 + 3 = 4: 6 · (7/3) / 4 − 3 = 0.5.
    m = compute_tool_call_match([ToolCall("f", {"x": 1, "y": 2})], [ToolCall("f", {"x": 1, "z": 2})])
    assert m.value == pytest.approx(0.5)
    # A duplicate prediction: names [f] vs [f, f]: 1/2; best f: 1 + 1 = 2; score 2.5 of 3:
    # 6 · 2.5 / 3 − 3 = 2.
    dup = compute_tool_call_match([ToolCall("f", {"x": 1})], [ToolCall("f", {"x": 1})] * 2)
    assert dup.value == pytest.approx(2.0)
    # Same calls in another order are not identical but still score S_max: names 1, g: 1 + 1, h: 1 + 0.
    swapped = compute_tool_call_match(
        [ToolCall("g", {"x": 1}), ToolCall("h", {})], [ToolCall("h", {}), ToolCall("g", {"x": 1})]
    )
    assert not swapped.exact and swapped.score == swapped.max_score == 4.0 and swapped.value == 3.0


def test_each_prediction_is_used_once() -> None:
    # Two gold f calls, one predicted: the first gold takes it (1 + 1 = 2), the second finds none.
    # names [f, f] vs [f]: 1/2. score 2.5, S_max = 1 + 2 + 2 = 5: 6 · 2.5 / 5 − 3 = 0.
    gold = [ToolCall("f", {"x": 1}), ToolCall("f", {"x": 2})]
    assert compute_tool_call_match(gold, [ToolCall("f", {"x": 1})]).value == pytest.approx(0.0)


def test_schedule_moves_the_range() -> None:
    params = ToolCallMatchParams.model_validate({"schedule": {}})   # ToolRL: 2/−2 -> 3/−3 over 150 steps
    assert reward_range(params, 0) == (-2.0, 2.0)
    assert reward_range(params, 75) == (-2.5, 2.5)
    assert reward_range(params, 150) == (-3.0, 3.0)
    assert reward_range(params, 10_000) == (-3.0, 3.0)                # held at the end values
    assert reward_range(ToolCallMatchParams(), 75) == (-3.0, 3.0)    # no schedule
    custom = ToolCallMatchParams.model_validate(
        {"r_max": 1.0, "r_min": 0.0, "schedule": {"r_max_start": 3.0, "r_min_start": -1.0, "steps": 10}}
    )
    assert reward_range(custom, 5) == (-0.5, 2.0)


async def test_scheduled_reward_through_score() -> None:
    sched = {"schedule": {"r_max_start": 2.0, "r_min_start": -2.0, "steps": 150}}
    partial = ScoringItem(
        prediction=_text('{"name": "search", "arguments": {"query": "paris", "limit": 3}}', '{"name": "calendar"}'),
        ground_truth=GOLD,
    )
    # Step 0, range [−2, 2]: 4 · (7/3) / 6 − 2 = −4/9.
    step0 = await _score(partial, **sched)
    assert step0.value == pytest.approx(-4 / 9)
    assert "step 0" in step0.explanation
    # Step 75, range [−2.5, 2.5]: 5 · (7/3) / 6 − 2.5 = −5/9.
    mid = ScoringItem(prediction=partial.prediction, ground_truth=GOLD, training_step=75)
    assert (await _score(mid, **sched)).value == pytest.approx(-5 / 9)
    # Step 150 and later, range [−3, 3]: −2/3 as without a schedule.
    end = ScoringItem(prediction=partial.prediction, ground_truth=GOLD, training_step=150)
    assert (await _score(end, **sched)).value == pytest.approx(-2 / 3)
    exact_mid = ScoringItem(
        prediction=_text(
            '{"name": "search", "arguments": {"query": "paris", "limit": 5}}',
            '{"name": "weather", "arguments": {"city": "Paris"}}',
        ),
        ground_truth=GOLD,
        training_step=75,
    )
    assert (await _score(exact_mid, **sched)).value == pytest.approx(2.5)
    none_mid = ScoringItem(prediction=_text('{"name": "calendar"}'), ground_truth=GOLD, training_step=75)
    assert (await _score(none_mid, **sched)).value == pytest.approx(-2.5)


def test_parse_text_tool_calls() -> None:
    text = _text('{"name": "a", "arguments": {"x": 1}}', '{"name": "b", "arguments": "{\\"y\\": 2}"}')
    assert parse_text_tool_calls(text) == [ToolCall("a", {"x": 1}), ToolCall("b", {"y": 2})]
    # ToolRL's layout: several JSON lines in one block, "parameters" for the arguments.
    toolrl = '<tool_call>\n{"name": "a", "parameters": {"x": 1}}\n{"name": "b", "parameters": {}}\n</tool_call>'
    assert parse_text_tool_calls(toolrl) == [ToolCall("a", {"x": 1}), ToolCall("b", {})]
    for bad in ["no call here", "<tool_call>{not json}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                '<tool_call>{"name": "a", "arguments": [1]}</tool_call>', "<tool_call> </tool_call>"]:
        with pytest.raises(MalformedToolCall):
            parse_text_tool_calls(bad)


async def test_reward_sources_and_errors() -> None:
    # Unreadable calls in the text -> r_min.
    broken = await _score(ScoringItem(prediction="<tool_call>{oops</tool_call>", ground_truth=GOLD))
    assert broken.value == -3.0 and "unreadable" in broken.explanation
    # From a trajectory: its recorded calls, not the text.
    traj = Trajectory(
        turns=(
            Turn(0, "assistant", "calls", tool_calls=(
                RecordedCall("c1", "search", '{"query": "paris", "limit": 5}'),
                RecordedCall("c2", "weather", '{"city": "Paris"}'),
            )),
        )
    )
    assert (await _score(ScoringItem(trajectory=traj, ground_truth=GOLD["tool_calls"]))).value == 3.0
    bad_args = Trajectory(
        turns=(Turn(0, "assistant", "", tool_calls=(RecordedCall("c1", "search", "{bad"),)),)
    )
    assert (await _score(ScoringItem(trajectory=bad_args, ground_truth=GOLD))).value == -3.0
    # A trajectory with no call at all scores 0 of S_max: r_min.
    empty = Trajectory(turns=(Turn(0, "assistant", "<answer>x</answer>"),))
    assert (await _score(ScoringItem(trajectory=empty, ground_truth=GOLD))).value == -3.0
    # A gold without calls scores 0 (ToolRL).
    assert (await _score(ScoringItem(prediction=_text('{"name": "a"}'), ground_truth={"tool_calls": []}))).value == 0.0
    # r_max/r_min as params.
    item = ScoringItem(prediction=_text('{"name": "calendar"}'), ground_truth=GOLD)
    assert (await _score(item, r_max=1.0, r_min=0.0)).value == 0.0
    with pytest.raises(RewardInputError):
        await _score(ScoringItem(prediction="x", ground_truth={"answers": ["a"]}))
    with pytest.raises(RewardInputError):
        await _score(ScoringItem(prediction="x", ground_truth={"tool_calls": [{"arguments": {}}]}))
    with pytest.raises(RewardInputError):
        await _score(ScoringItem(prediction="x"))


def test_params_validation() -> None:
    with pytest.raises(ValidationError):
        ToolCallMatchParams(r_max=-1.0, r_min=1.0)
    with pytest.raises(ValidationError):
        ToolCallMatchParams.model_validate({"schedule": {"steps": 0}})
