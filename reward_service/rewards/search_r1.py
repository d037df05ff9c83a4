"""``search_r1``: the Search-R1 outcome reward with RL-Factory's format bonus/penalty.

Follows RL-Factory's search environment (Simple-Efficient/RL-Factory,
``envs/search.py``, ``SearchEnv._compute_score_with_rules``, the current version in
which ``check_alternate_tags`` works for any tag and the total format score is
``answer_format_score + num_score``), which builds on Search-R1
(PeterGriffinJin/Search-R1, ``verl/utils/reward_score/qa_em.py``: ``em_check`` with
SQuAD normalisation, the last ``<answer>`` block).

The rule, on the whole generated response ``R`` (``item.response_text``: the assistant
turns, observations left out; else the prediction), with ``f = format_score``:

1. answer: delete every ``<think>…</think>`` block from R, take the last
   ``<answer>…</answer>`` block and strip it; none → no answer.
2. correct: the answer equals some gold after SQuAD normalisation (no max over
   filtered golds: Search-R1's ``em_check``).
3. A = +f if the ``<answer>``/``</answer>`` markers in R (think blocks included)
   occur and strictly alternate open/close, else −f (no answer tag at all → −f).
4. N = −f if the ``<tool_call>`` markers occur and strictly alternate and there are
   more than ``max_tool_calls`` (default 2) ``<tool_call>…</tool_call>`` blocks, else 0.
5. T = A + N;  value = 1 + T/2 if correct,  T if wrong,  −f + T/2 if no answer.

Cases → scores (f = 0.1, max_tool_calls = 2):

=======================================  ====  =====  ======  =======
case                                      A     N      T      value
=======================================  ====  =====  ======  =======
correct, tags alternate, ≤ 2 calls       +f    0      +0.1    1.05
correct, tags alternate, > 2 calls       +f    −f     0       1.0
correct, answer tags broken, ≤ 2 calls   −f    0      −0.1    0.95
correct, answer tags broken, > 2 calls   −f    −f     −0.2    0.9
wrong, tags alternate, ≤ 2 calls         +f    0      +0.1    0.1
wrong, tags alternate, > 2 calls         +f    −f     0       0.0
wrong, answer tags broken, ≤ 2 calls     −f    0      −0.1    −0.1
wrong, answer tags broken, > 2 calls     −f    −f     −0.2    −0.2
no answer tag at all, ≤ 2 calls          −f    0      −0.1    −0.15
no answer tag at all, > 2 calls          −f    −f     −0.2    −0.2
answer only inside <think>, ≤ 2 calls    +f    0      +0.1    −0.05
any case with f = 0 (evaluation)         0     0      0       EM: 1 or 0
=======================================  ====  =====  ======  =======

RL-Factory uses f = 0.1 in training and f = 0 in validation (``if_val``). Its
JSON-validity score of the tool calls is computed but no longer added to the total
in the current version, so it is left out here. No step rewards (RL-Factory's
per-step tool rewards belong to its environment's ``step``, not to this score).
A response over the reward's text limit (``RLYARD_REWARD_MAX_TEXT_CHARS``) is not read and scores
the lowest value, −2f. The tags are found in one linear pass (``_text``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydantic import BaseModel, Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._text import (
    TAG_NAME_PATTERN,
    gold_answers,
    last_block,
    normalize_answer,
    strip_blocks,
    tag_blocks,
    tags_alternate,
)
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


@dataclass(frozen=True)
class SearchR1Score:
    """The parts of one Search-R1 score."""

    value: float
    answer: str | None          # the extracted answer, None when there is no <answer> block
    correct: bool
    answer_tags_alternate: bool  # A = +f when True, −f when False
    too_many_tool_calls: bool    # N = −f when True, 0 when False
    num_tool_calls: int


def em_check(prediction: str, golds: list[str]) -> bool:
    """Search-R1's ``em_check``: some gold equals the prediction after normalisation."""
    norm = normalize_answer(prediction)
    return any(normalize_answer(g) == norm for g in golds)


def extract_answer(response: str, answer_tag: str = "answer", think_tag: str = "think") -> str | None:
    """The last answer block after removing think blocks, stripped; None if there is none."""
    return last_block(strip_blocks(response, think_tag), answer_tag)


def compute_search_r1(
    response: str,
    golds: list[str],
    format_score: float = 0.1,
    max_tool_calls: int = 2,
    *,
    answer_tag: str = "answer",
    tool_call_tag: str = "tool_call",
    think_tag: str = "think",
) -> SearchR1Score:
    """The Search-R1 / RL-Factory score of one response (see the module docstring)."""
    f = format_score
    answer = extract_answer(response, answer_tag, think_tag)
    answer_ok = tags_alternate(response, answer_tag)
    num_calls = len(tag_blocks(response, tool_call_tag))
    too_many = tags_alternate(response, tool_call_tag) and num_calls > max_tool_calls
    total = (f if answer_ok else -f) + (-f if too_many else 0.0)
    correct = answer is not None and em_check(answer, golds)
    if answer is None:
        value = -f + 0.5 * total
    elif correct:
        value = 1.0 + 0.5 * total
    else:
        value = total
    # + 0.0 turns the -0.0 that f = 0 can leave into 0.0.
    return SearchR1Score(value + 0.0, answer, correct, answer_ok, too_many, num_calls)


class SearchR1Params(BaseModel):
    """Parameters of ``search_r1``."""

    format_score: float = Field(
        0.1, ge=0.0, description="f: the format bonus/penalty; 0 gives plain EM (evaluation)"
    )
    max_tool_calls: int = Field(
        2, ge=0, description="more tool-call blocks than this cost −f (RL-Factory: 2)"
    )
    answer_tag: str = Field("answer", min_length=1, pattern=TAG_NAME_PATTERN)
    tool_call_tag: str = Field(
        "tool_call", min_length=1, pattern=TAG_NAME_PATTERN, description='"search" for the original Search-R1 prompt'
    )
    think_tag: str = Field("think", min_length=1, pattern=TAG_NAME_PATTERN)


@register
class SearchR1:
    """Exact match of the last answer block, plus RL-Factory's format bonus/penalty."""

    name = "search_r1"
    description = (
        "Search-R1/RL-Factory reward: exact match of the last <answer> (think blocks removed) "
        "against the gold answers, ± a format score f for answer-tag alternation and a −f "
        "penalty for too many tool calls; f = 0 gives plain EM."
    )
    kind = RewardKindName.RULE
    Params = SearchR1Params

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def floor(self, params: SearchR1Params, item: ScoringItem) -> float:
        """The lowest value (no answer, or a wrong one with broken tags, and too many calls): −2f."""
        return -2.0 * params.format_score

    async def score(self, item: ScoringItem, params: SearchR1Params) -> RewardOutcome:
        """Score the item's whole generated response."""
        golds = gold_answers(item.ground_truth)
        if not golds:
            raise RewardInputError('the ground truth lists no gold answer; give {"answers": ["..."]}')
        response = item.response_text
        compute = functools.partial(compute_search_r1, answer_tag=params.answer_tag,
                                    tool_call_tag=params.tool_call_tag, think_tag=params.think_tag)
        s = await self.ctx.run_cpu(len(response), compute, response, golds, params.format_score,
                                   params.max_tool_calls)
        if s.answer is None:
            verdict = f"no <{params.answer_tag}> block"
        else:
            verdict = f"answer {s.answer!r} is {'correct' if s.correct else 'wrong'}"
        f = params.format_score
        tags = "alternate" if s.answer_tags_alternate else "are broken or missing"
        calls = f"{s.num_tool_calls} tool call(s)"
        if s.too_many_tool_calls:
            calls += f" > {params.max_tool_calls}: {-f:+g}"
        explanation = (
            f"{verdict}; answer tags {tags}: {f if s.answer_tags_alternate else -f:+g}; {calls}"
        )
        return RewardOutcome(value=s.value, explanation=explanation)
