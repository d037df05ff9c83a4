"""The Search-R1 / RL-Factory rule: the table of the module docstring, case by case,
as the pure ``compute_search_r1`` and through the ``search_r1`` reward.

f = 0.1. A = +f when the answer tags alternate, else −f; N = −f for more than
``max_tool_calls`` (2) alternating tool-call blocks; T = A + N;
correct: 1 + T/2, wrong: T, no answer: −f + T/2."""

from __future__ import annotations

import pytest

from reward_service.registry import RewardContext, load_reward
from reward_service.rewards._text import tags_alternate
from reward_service.rewards.search_r1 import compute_search_r1, extract_answer
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardOutcome
from rlyard.domain import ScoringItem, Trajectory, Turn

GOLDS = ["Paris"]
CALL = '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>'


def value(response: str, f: float = 0.1, max_tool_calls: int = 2) -> float:
    return compute_search_r1(response, GOLDS, f, max_tool_calls).value


async def _score(item: ScoringItem, **params: object) -> RewardOutcome:
    cls = load_reward("search_r1")
    return await cls(RewardContext(RewardSettings())).score(item, cls.Params.model_validate(params))


def test_tags_alternate() -> None:
    assert tags_alternate("<answer>a</answer>", "answer")
    assert tags_alternate("<answer>a</answer> <answer>b</answer>", "answer")
    assert not tags_alternate("no tags", "answer")                       # absent counts as broken
    assert not tags_alternate("<answer>a</answer></answer>", "answer")   # stray close
    assert not tags_alternate("<answer><answer>a</answer>", "answer")    # nested open
    assert not tags_alternate("<answer>a", "answer")                     # unclosed


def test_correct_answer_good_format() -> None:
    # A = +0.1, 1 call -> N = 0, T = 0.1: 1 + 0.05.
    assert value(f"<think>look it up</think>{CALL}<think>found it</think><answer>Paris</answer>") == pytest.approx(1.05)


def test_wrong_answer_good_format() -> None:
    # T = 0.1 -> 0.1.
    assert value(f"<think>x</think>{CALL}<think>y</think><answer>Lyon</answer>") == pytest.approx(0.1)


def test_bad_answer_tags() -> None:
    # Correct but a stray </answer>: A = −0.1, T = −0.1 -> 1 − 0.05 = 0.95.
    assert value("<think>x</think><answer>Paris</answer></answer>") == pytest.approx(0.95)
    # A nested open tag: the block is "<answer>Paris" -> normalised "answerparis", wrong; T = −0.1.
    assert extract_answer("<answer><answer>Paris</answer>") == "<answer>Paris"
    assert value("<answer><answer>Paris</answer>") == pytest.approx(-0.1)


def test_no_answer() -> None:
    # No answer tag at all: A = −0.1, T = −0.1 -> −0.1 − 0.05 = −0.15.
    assert value("<think>I do not know</think>I give up") == pytest.approx(-0.15)
    # An unclosed answer is no answer either.
    assert value("<think>x</think><answer>Paris") == pytest.approx(-0.15)


def test_think_blocks_are_stripped_before_extracting() -> None:
    # The last answer outside <think> is Paris (correct), though Lyon comes last in the text.
    # All four answer markers alternate: A = +0.1 -> 1.05.
    text = "<answer>Paris</answer><think>or maybe <answer>Lyon</answer></think>"
    assert extract_answer(text) == "Paris"
    assert value(text) == pytest.approx(1.05)
    # An answer only inside <think> is no answer, but its tags alternate: −0.1 + 0.05 = −0.05.
    assert value("<think><answer>Paris</answer></think>") == pytest.approx(-0.05)
    # The last of several answers counts, stripped and normalised.
    assert value("<answer>Lyon</answer><answer>  the PARIS. </answer>") == pytest.approx(1.05)


def test_too_many_tool_calls() -> None:
    three = CALL * 3
    # Correct: A = +0.1, N = −0.1, T = 0 -> 1.0.
    assert value(f"<think>x</think>{three}<answer>Paris</answer>") == pytest.approx(1.0)
    # Wrong: T = 0 -> 0.0.
    assert value(f"<think>x</think>{three}<answer>Lyon</answer>") == pytest.approx(0.0)
    # No answer: A = −0.1, N = −0.1 -> −0.1 + 0.5·(−0.2) = −0.2.
    assert value(f"<think>x</think>{three}") == pytest.approx(-0.2)
    # Correct with broken answer tags and too many calls: T = −0.2 -> 0.9.
    assert value(f"{three}<answer>Paris</answer></answer>") == pytest.approx(0.9)
    # Two calls are allowed; max_tool_calls moves the limit.
    assert value(f"{CALL * 2}<answer>Paris</answer>") == pytest.approx(1.05)
    assert value(f"{three}<answer>Paris</answer>", max_tool_calls=3) == pytest.approx(1.05)
    # RL-Factory counts calls only when the tool-call tags alternate: an unclosed fourth
    # block breaks them, so no penalty (N = 0) -> 1.05.
    assert value(f"{three}<tool_call><answer>Paris</answer>") == pytest.approx(1.05)


@pytest.mark.parametrize(
    ("response", "em"),
    [
        (f"<think>x</think>{CALL}<answer>Paris</answer>", 1.0),
        (f"<think>x</think>{CALL * 3}<answer>paris</answer></answer>", 1.0),
        ("<answer>Lyon</answer>", 0.0),
        ("no answer", 0.0),
    ],
)
def test_evaluation_mode_is_plain_em(response: str, em: float) -> None:
    v = value(response, f=0.0)
    assert v == em
    assert str(v) != "-0.0"


async def test_reward_reads_the_assistant_turns_only() -> None:
    # The observation holds an unmatched <answer>; were it read, the answer tags would be
    # broken (0.95). The assistant text alone alternates: 1.05.
    traj = Trajectory(
        turns=(
            Turn(0, "user", "What is the capital of France?"),
            Turn(1, "assistant", f"<think>search</think>{CALL}"),
            Turn(2, "tool", "<tool_response>France's capital... <answer></tool_response>"),
            Turn(3, "assistant", "<think>found</think><answer>Paris</answer>"),
        ),
        final_answer="Paris",
    )
    out = await _score(ScoringItem(trajectory=traj, ground_truth={"answers": ["Paris", "City of Light"]}))
    assert out.value == pytest.approx(1.05)
    assert "correct" in out.explanation
    assert out.step_rewards == []


async def test_reward_params_and_errors() -> None:
    item = ScoringItem(prediction=f"{CALL * 3}<answer>Paris</answer>", ground_truth={"target": ["Paris"]})
    assert (await _score(item)).value == pytest.approx(1.0)
    assert (await _score(item, format_score=0.0)).value == 1.0
    assert (await _score(item, format_score=0.2)).value == pytest.approx(1.0)   # T = 0.2 − 0.2
    assert (await _score(item, max_tool_calls=5)).value == pytest.approx(1.05)
    # The original Search-R1 prompt's <search> tag.
    search = ScoringItem(prediction="<search>a</search>" * 3 + "<answer>Paris</answer>", ground_truth="Paris")
    assert (await _score(search, tool_call_tag="search")).value == pytest.approx(1.0)
    with pytest.raises(RewardInputError):
        await _score(ScoringItem(prediction="<answer>Paris</answer>"))
    with pytest.raises(RewardInputError):
        await _score(ScoringItem(prediction="<answer>Paris</answer>", ground_truth={"answers": []}))
