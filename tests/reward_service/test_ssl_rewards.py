"""The SSL4RL rewards on hand-checked answers: correct, wrong, the accepted spellings, malformed
answers with their reasons, jigsaw's partial credit, ground truths they refuse, and the parsers'
chance levels. (Through a real reward service: test_ssl_reward_service.py.)"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_service.registry import RewardContext, build_rewards, load_reward
from reward_service.scorer import Scorer
from reward_service.settings import RewardSettings
from reward_service.ssl.answers import (
    answer_text,
    chance_level,
    format_answer,
    parse_candidate,
    parse_jigsaw,
    parse_position,
    parse_rotation,
)
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome
from rlyard.domain import ScoreStatus, ScoringItem, Trajectory, TrajectoryStatus, Turn, parse_spec

SSL_REWARDS = ["ssl_rotation", "ssl_jigsaw", "ssl_position", "ssl_masked_patch"]
ROTATION = {"task": "rotation", "answer": 90}
JIGSAW = {"task": "jigsaw", "answer": [2, 0, 3, 1]}
POSITION = {"task": "position", "answer": "top-left"}
MASKED = {"task": "masked_patch", "answer": 2, "candidates": 4}


async def score(name: str, prediction: str, ground_truth: Any, **params: Any) -> RewardOutcome:
    reward = build_rewards(RewardContext(RewardSettings()), [name])[name]
    return await reward.score(ScoringItem("x", prediction, ground_truth=ground_truth),
                              reward.Params.model_validate(params))


def test_registered_as_rule_rewards_with_schemas() -> None:
    for name in SSL_REWARDS:
        cls = load_reward(name)
        assert cls.name == name and cls.kind is RewardKindName.RULE and cls.description
        assert "answer_tag" in cls.Params.model_json_schema()["properties"]
    assert "partial_credit" in load_reward("ssl_jigsaw").Params.model_json_schema()["properties"]


@pytest.mark.parametrize(("prediction", "value"), [
    ("<think>the sky is on the right</think><answer>90</answer>", 1.0),
    ("<answer> 90° </answer>", 1.0),
    ("<answer>90 degrees clockwise</answer>", 1.0),
    ("<answer>-270</answer>", 1.0),          # −270 ≡ 90 (mod 360)
    ("<answer>270 ccw</answer>", 1.0),       # 270 counter-clockwise is 90 clockwise
    ("<answer>450</answer>", 1.0),
    ("90", 1.0),                             # the engine's final answer: tags already removed
    ("<answer>180</answer>", 0.0),
    ("<answer>90 ccw</answer>", 0.0),        # = 270
    ("<answer>0</answer>", 0.0),
])
async def test_rotation(prediction: str, value: float) -> None:
    out = await score("ssl_rotation", prediction, ROTATION)
    assert out.value == value
    assert out.explanation.startswith("correct: 90°" if value else "wrong: answered ")


@pytest.mark.parametrize(("prediction", "reason"), [
    ("<answer>45</answer>", "45° is not a multiple of 90"),
    ("<answer>ninety</answer>", "'ninety' is not an angle"),
    ("I think it is 90 degrees", "is not an angle"),      # prose is not an answer
    ("<answer>90", "<answer> is never closed"),
    ("90</answer>", "</answer> without <answer>"),
    ("<answer>  </answer>", "the answer is empty"),
    ("", "the answer is empty"),
])
async def test_rotation_malformed(prediction: str, reason: str) -> None:
    out = await score("ssl_rotation", prediction, ROTATION)
    assert out.value == 0.0
    assert out.explanation.startswith("malformed: ") and reason in out.explanation
    assert "0, 90, 180, 270" in out.explanation                    # says what was expected


def test_long_answers_are_malformed_without_being_read_slowly() -> None:
    # A regex over a whitespace run this long would backtrack for hours; the parsers bound it first.
    long = "9" + " " * 300_000 + "x"
    assert "is not an angle" in parse_rotation(long).error
    assert "is not a position" in parse_position("top" + " " * 300_000 + "x").error
    assert "is not a candidate number" in parse_candidate(long, 4).error
    assert "characters long" in parse_jigsaw(long, 4).error


async def test_the_last_answer_block_counts_and_the_tag_is_a_parameter() -> None:
    assert (await score("ssl_rotation", "<answer>180</answer> no: <answer>90</answer>", ROTATION)).value == 1.0
    assert (await score("ssl_rotation", "<final>90</final>", ROTATION, answer_tag="final")).value == 1.0
    assert answer_text("<answer>a<answer>b</answer>") == ("b", "")
    assert answer_text("<answer>'top'.</answer>") == ("top", "")


@pytest.mark.parametrize(("prediction", "value"), [
    ("<answer>2 0 3 1</answer>", 1.0),
    ("<answer>[2, 0, 3, 1]</answer>", 1.0),
    ("<answer>2,0,3,1</answer>", 1.0),
    ("<answer>0 1 2 3</answer>", 0.0),
    ("<answer>2 0 1 3</answer>", 0.0),
])
async def test_jigsaw_all_or_nothing(prediction: str, value: float) -> None:
    assert (await score("ssl_jigsaw", prediction, JIGSAW)).value == value


@pytest.mark.parametrize(("prediction", "value", "why"), [
    ("<answer>2 0 3 1</answer>", 1.0, "4/4 tiles in place"),
    ("<answer>2 0 1 3</answer>", 0.5, "2/4 tiles in place"),   # positions 0 and 1 right
    ("<answer>0 1 2 3</answer>", 0.0, "0/4 tiles in place"),
    ("<answer>3 0 2 1</answer>", 0.5, "2/4 tiles in place"),
    ("<answer>2 0 3</answer>", 0.0, "malformed: 3 numbers given"),
])
async def test_jigsaw_partial_credit(prediction: str, value: float, why: str) -> None:
    out = await score("ssl_jigsaw", prediction, JIGSAW, partial_credit=True)
    assert out.value == value and why in out.explanation


@pytest.mark.parametrize(("prediction", "reason"), [
    ("<answer>2 0 3</answer>", "3 numbers given"),
    ("<answer>2 0 3 1 4</answer>", "5 numbers given"),
    ("<answer>2 2 3 1</answer>", "tile number(s) [2] given twice (not a permutation)"),
    ("<answer>2 0 3 4</answer>", "tile number(s) [4] out of range"),
    ("<answer>2 0 three 1</answer>", "'three' is not a tile number"),
    ("<answer>" + "1 " * 500 + "</answer>", "characters long"),
])
async def test_jigsaw_malformed(prediction: str, reason: str) -> None:
    out = await score("ssl_jigsaw", prediction, JIGSAW, partial_credit=True)
    assert out.value == 0.0 and out.explanation.startswith("malformed: ") and reason in out.explanation
    assert "4 distinct tile numbers 0–3" in out.explanation


async def test_jigsaw_3x3_reads_its_grid_from_the_gold() -> None:
    gold = {"task": "jigsaw", "answer": [8, 7, 6, 5, 4, 3, 2, 1, 0]}
    assert (await score("ssl_jigsaw", "<answer>8 7 6 5 4 3 2 1 0</answer>", gold)).value == 1.0
    out = await score("ssl_jigsaw", "<answer>8 7 6 5 4 3 2 0 1</answer>", gold, partial_credit=True)
    assert out.value == pytest.approx(7 / 9)
    assert "9 distinct tile numbers 0–8" in (await score("ssl_jigsaw", "<answer>1 0 2 3</answer>", gold)).explanation


@pytest.mark.parametrize(("prediction", "value"), [
    ("<answer>top-left</answer>", 1.0),
    ("<answer>Top Left</answer>", 1.0),
    ("<answer>upper_left</answer>", 1.0),
    ("<answer>left-top</answer>", 1.0),
    ("<answer>the top left.</answer>", 1.0),
    ("<answer>top</answer>", 0.0),
    ("<answer>bottom-right</answer>", 0.0),
    ("<answer>left</answer>", 0.0),
])
async def test_position(prediction: str, value: float) -> None:
    out = await score("ssl_position", prediction, POSITION)
    assert out.value == value
    if not value:
        assert "the answer is top-left" in out.explanation


@pytest.mark.parametrize(("prediction", "reason"), [
    ("<answer>center</answer>", "is not one position"),
    ("<answer>top bottom</answer>", "is not one position"),
    ("<answer>northwest</answer>", "is not a position"),
    ("<answer>1</answer>", "is not a position"),
])
async def test_position_malformed(prediction: str, reason: str) -> None:
    out = await score("ssl_position", prediction, POSITION)
    assert out.value == 0.0 and out.explanation.startswith("malformed: ") and reason in out.explanation
    assert "top-left, top, top-right, left, right, bottom-left, bottom, bottom-right" in out.explanation


@pytest.mark.parametrize(("prediction", "value"), [
    ("<answer>2</answer>", 1.0),
    ("<answer>candidate 2</answer>", 1.0),
    ("<answer>Candidate_2</answer>", 1.0),
    ("<answer>#2</answer>", 1.0),
    ("<answer>0</answer>", 0.0),
    ("<answer>3</answer>", 0.0),
])
async def test_masked_patch(prediction: str, value: float) -> None:
    out = await score("ssl_masked_patch", prediction, MASKED)
    assert out.value == value
    assert out.explanation == "correct: candidate 2" if value else "the answer is candidate 2" in out.explanation


@pytest.mark.parametrize(("prediction", "reason"), [
    ("<answer>4</answer>", "candidate 4 does not exist"),
    ("<answer>C</answer>", "'C' is not a candidate number"),
    ("<answer>2 or 3</answer>", "is not a candidate number"),
])
async def test_masked_patch_malformed(prediction: str, reason: str) -> None:
    out = await score("ssl_masked_patch", prediction, MASKED)
    assert out.value == 0.0 and out.explanation.startswith("malformed: ") and reason in out.explanation
    assert "one candidate number 0–3" in out.explanation


@pytest.mark.parametrize(("name", "ground_truth", "reason"), [
    ("ssl_rotation", None, "must be an object"),
    ("ssl_rotation", {"task": "rotation"}, 'has no "answer"'),
    ("ssl_rotation", {"task": "rotation", "answer": 45}, "is not one of (0, 90, 180, 270)"),
    ("ssl_rotation", {"task": "jigsaw", "answer": 90}, "of task 'jigsaw', not 'rotation'"),
    ("ssl_jigsaw", {"answer": [0, 1, 2]}, "not k²"),
    ("ssl_jigsaw", {"answer": [0, 0, 1, 2]}, "is not a permutation"),
    ("ssl_position", {"answer": "north"}, "is not one of"),
    ("ssl_masked_patch", {"answer": 2}, '"candidates"'),
    ("ssl_masked_patch", {"answer": 4, "candidates": 4}, "is not one of 0–3"),
])
async def test_bad_ground_truth_is_the_callers_input_not_the_models_zero(name: str, ground_truth: Any,
                                                                         reason: str) -> None:
    scorer = Scorer(build_rewards(RewardContext(RewardSettings()), [name]))
    result = await scorer.score(ScoringItem("g", "<answer>0</answer>", ground_truth=ground_truth),
                                parse_spec({name: 1.0}))
    assert result.status is ScoreStatus.INVALID_INPUT and reason in result.error


async def test_a_trajectory_s_final_answer_is_read() -> None:
    turns = (Turn(0, "user", "which way?"), Turn(1, "assistant", "<think>…</think><answer>180</answer>"))
    traj = Trajectory(turns=turns, final_answer="180", status=TrajectoryStatus.COMPLETED)
    reward = build_rewards(RewardContext(RewardSettings()), ["ssl_rotation"])["ssl_rotation"]
    out = await reward.score(ScoringItem("t", trajectory=traj, ground_truth={"task": "rotation", "answer": 180}),
                             reward.Params())
    assert out.value == 1.0


def test_parsers_and_format_answer_agree() -> None:
    assert parse_rotation(format_answer("rotation", 270)).value == 270
    assert parse_jigsaw(format_answer("jigsaw", (1, 0, 3, 2)), 4).value == (1, 0, 3, 2)
    assert parse_position(format_answer("position", "bottom-right")).value == "bottom-right"
    assert parse_candidate(format_answer("masked_patch", 3), 5).value == 3


@pytest.mark.parametrize(("name", "answers", "ground_truth", "params", "chance"), [
    ("ssl_rotation", [0, 90, 180, 270], ROTATION, {}, chance_level("rotation")),
    ("ssl_position", ["top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right"],
     POSITION, {}, chance_level("position")),
    ("ssl_masked_patch", [0, 1, 2, 3], MASKED, {}, chance_level("masked_patch", candidates=4)),
    ("ssl_jigsaw", list(itertools.permutations(range(4))), JIGSAW, {}, chance_level("jigsaw", grid=2)),
    ("ssl_jigsaw", list(itertools.permutations(range(4))), JIGSAW, {"partial_credit": True},
     chance_level("jigsaw", grid=2, partial_credit=True)),
])
async def test_the_mean_over_every_well_formed_answer_is_the_chance_level(
        name: str, answers: list[Any], ground_truth: Any, params: dict[str, Any], chance: float) -> None:
    task = ground_truth["task"]
    values = [(await score(name, format_answer(task, a), ground_truth, **params)).value for a in answers]
    assert sum(values) / len(values) == pytest.approx(chance)


def test_chance_levels() -> None:
    assert chance_level("rotation") == 0.25
    assert chance_level("position") == 0.125
    assert chance_level("masked_patch", candidates=5) == 0.2
    assert chance_level("jigsaw", grid=2) == 1 / 24
    assert chance_level("jigsaw", grid=3) == 1 / math.factorial(9)
    assert chance_level("jigsaw", grid=2, partial_credit=True) == 0.25
    with pytest.raises(ValueError, match="unknown SSL task"):
        chance_level("colourise")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
ground_truths = st.fixed_dictionaries(
    {}, optional={"task": st.sampled_from(["rotation", "jigsaw", "position", "masked_patch", "x"]) | json_values,
                  "answer": json_values, "candidates": json_values}) | json_values
texts = st.text(alphabet=st.sampled_from(list("<>/answerAN 0123456789-_,[]°#.topleftrighbcd")), max_size=80)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SSL_REWARDS), ground_truth=ground_truths, text=texts, partial=st.booleans())
def test_any_input_gives_a_value_in_0_1_or_an_input_error(name: str, ground_truth: Any, text: str,
                                                          partial: bool) -> None:
    reward = build_rewards(RewardContext(RewardSettings()), [name])[name]
    params = reward.Params.model_validate({"partial_credit": partial} if name == "ssl_jigsaw" else {})
    try:
        out = asyncio.run(reward.score(ScoringItem("f", text, ground_truth=ground_truth), params))
    except RewardInputError as exc:
        assert str(exc)
        return
    assert 0.0 <= out.value <= 1.0 and out.explanation
