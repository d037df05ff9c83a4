"""The ``format`` reward: the per-turn grammar (think, then tool calls or one answer,
nothing outside the tags), the final-answer rule, and one step reward per assistant
turn at the turn's index in the trajectory."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reward_service.registry import RewardContext, load_reward
from reward_service.rewards.format import FormatParams, check_turn, check_turns
from reward_service.settings import RewardSettings
from reward_service.types import RewardOutcome, StepReward
from rlyard.domain import ScoringItem, Trajectory, Turn

CALL = '<tool_call>{"name": "sql_query", "arguments": {"query": "SELECT 1"}}</tool_call>'


async def _score(item: ScoringItem, **params: object) -> RewardOutcome:
    cls = load_reward("format")
    return await cls(RewardContext(RewardSettings())).score(item, cls.Params.model_validate(params))


@pytest.mark.parametrize(
    ("text", "action"),
    [
        (f"<think>I need the data</think>\n{CALL}", "tool_call"),
        (f"  <think>two calls</think>\n{CALL}\n{CALL}\n", "tool_call"),
        ("<think>done</think>\n<answer>42</answer>", "answer"),
        ("<think></think><answer></answer>", "answer"),   # empty blocks are still blocks
    ],
)
def test_well_formed_turns(text: str, action: str) -> None:
    verdict = check_turn(text)
    assert verdict.ok, verdict.reason
    assert verdict.action == action


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<answer>42</answer>", "no <think>"),
        ("Sure! <think>x</think><answer>42</answer>", "text outside the tags"),
        ("<think>x</think> so: <answer>42</answer>", "text outside the tags"),
        ("<think>x</think><answer>42</answer> Hope this helps.", "text outside the tags"),
        ("<think>x <answer>42</answer></think><answer>42</answer>", "unexpected <answer>"),
        ("<think>x</think>", "no <tool_call> or <answer>"),
        ("<think>x", "unclosed tag"),
        ("<think>x</think><answer>42", "unclosed tag"),
        (f"<think>x</think><answer>42</answer>{CALL}", "unexpected <tool_call>"),
        ("<think>x</think><answer>1</answer><answer>2</answer>", "unexpected <answer>"),
        (f"<think>x</think>{CALL}<answer>42</answer>", "unexpected <answer>"),
        ("<think>a</think><think>b</think><answer>42</answer>", "unexpected <think>"),
        ("</think><answer>42</answer>", "unexpected </think>"),
        ("", "no <think>"),
    ],
)
def test_malformed_turns(text: str, reason: str) -> None:
    verdict = check_turn(text)
    assert not verdict.ok
    assert reason in verdict.reason


def test_turn_options() -> None:
    assert check_turn("<answer>42</answer>", require_think=False).ok
    assert check_turn(CALL, require_think=False).action == "tool_call"
    assert not check_turn("plain text", require_think=False).ok
    assert not check_turn(f"<think>x</think>{CALL}{CALL}", allow_multiple_tool_calls=False).ok
    # Configurable tags: the default tags are then ordinary text, outside or inside blocks.
    tags = {"think_tag": "reasoning", "tool_call_tag": "search", "answer_tag": "final"}
    assert check_turn("<reasoning>r</reasoning><search>q</search>", **tags).action == "tool_call"
    assert check_turn("<reasoning>r <think></reasoning><final>x</final>", **tags).ok
    assert not check_turn("<think>r</think><answer>x</answer>", **tags).ok


def test_final_answer_rule() -> None:
    tool_turn, answer_turn = f"<think>a</think>{CALL}", "<think>b</think><answer>42</answer>"
    checks = check_turns([tool_turn, answer_turn], FormatParams())
    assert [c.ok for c in checks] == [True, True]
    # The last turn calls a tool instead of answering.
    checks = check_turns([tool_turn, tool_turn], FormatParams())
    assert [c.ok for c in checks] == [True, False]
    assert "last turn" in checks[1].reason
    assert [c.ok for c in check_turns([tool_turn], FormatParams(require_final_answer=False))] == [True]


def _trajectory() -> Trajectory:
    return Trajectory(
        turns=(
            Turn(0, "system", "You are a SQL agent."),
            Turn(1, "user", "How many singers?"),
            Turn(2, "assistant", f"<think>count them</think>\n{CALL}"),
            Turn(3, "tool", "<tool_response>6</tool_response>"),
            Turn(4, "assistant", f"Let me check again. {CALL}"),          # no think, text outside
            Turn(5, "tool", "<tool_response>6</tool_response>"),
            Turn(6, "assistant", "<think>six</think>\n<answer>6</answer>"),
        ),
        final_answer="6",
    )


async def test_multi_turn_step_rewards() -> None:
    out = await _score(ScoringItem(trajectory=_trajectory()))
    # One step per assistant turn at its index: turns 2 and 6 well-formed, 4 not.
    assert out.step_rewards == [StepReward(2, 1.0), StepReward(4, 0.0), StepReward(6, 1.0)]
    assert out.value == 0.0                       # "all": one bad turn -> 0
    assert "2/3" in out.explanation and "turn 4" in out.explanation
    mean = await _score(ScoringItem(trajectory=_trajectory()), aggregate="mean")
    assert mean.value == pytest.approx(2 / 3)     # 2 of 3 turns
    assert mean.step_rewards == out.step_rewards


async def test_all_turns_well_formed() -> None:
    traj = Trajectory(
        turns=(
            Turn(0, "user", "q"),
            Turn(1, "assistant", f"<think>a</think>{CALL}"),
            Turn(2, "tool", "r"),
            Turn(3, "assistant", "<think>b</think><answer>6</answer>"),
        )
    )
    out = await _score(ScoringItem(trajectory=traj))
    assert out.value == 1.0
    assert out.step_rewards == [StepReward(1, 1.0), StepReward(3, 1.0)]


async def test_plain_prediction_is_one_step_at_index_0() -> None:
    good = await _score(ScoringItem(prediction="<think>x</think><answer>Paris</answer>"))
    assert good.value == 1.0 and good.step_rewards == [StepReward(0, 1.0)]
    bad = await _score(ScoringItem(prediction="Paris"))
    assert bad.value == 0.0 and bad.step_rewards == [StepReward(0, 0.0)]
    # A single-turn tool call (ToolRL style) passes once a final answer is not required.
    call = ScoringItem(prediction=f"<think>x</think>\n{CALL}")
    assert (await _score(call)).value == 0.0
    assert (await _score(call, require_final_answer=False)).value == 1.0


def test_params_reject_clashing_or_bad_tags() -> None:
    with pytest.raises(ValidationError):
        FormatParams(think_tag="answer")
    with pytest.raises(ValidationError):
        FormatParams(answer_tag="a>b")
