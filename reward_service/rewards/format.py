"""``format``: is every assistant turn ``<think>…</think>`` followed by tool calls or an answer?

The grammar of one assistant turn (tag names are parameters; whitespace is allowed
between blocks, any other text outside a block is not):

    turn   := think? action            (think required when ``require_think``)
    think  := <think> text </think>
    action := call+ | answer           (one call only when not ``allow_multiple_tool_calls``)
    call   := <tool_call> text </tool_call>
    answer := <answer> text </answer>

Text inside a block may not contain another of the three tags (no nesting, no stray
closing tag). With ``require_final_answer`` (default) the last assistant turn must
be an answer turn. This is the tag-order check of Search-R1's ``is_valid_sequence``
(PeterGriffinJin/Search-R1, ``verl/utils/reward_score/qa_em_format.py``: a state
machine over the tags, only whitespace between them, balanced tags) applied per
turn, with the Hermes/Qwen ``<tool_call>`` of this project's rollout loop in place of
``<search>``, and the observations (tool turns) outside the policy's text.

Value: with ``aggregate="all"`` (default, binary like ``is_valid_sequence``) 1.0 if
every assistant turn is well-formed, else 0.0; with ``aggregate="mean"`` the fraction
of well-formed turns. Step rewards: one per assistant turn, 1.0 (well-formed) or 0.0,
at the turn's index in the trajectory; a plain prediction (no trajectory turns) is one
turn at index 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from reward_service.registry import RewardContext, register
from reward_service.rewards._text import TAG_NAME_PATTERN
from reward_service.types import RewardKindName, RewardOutcome, StepReward
from rlyard.domain import ScoringItem


@dataclass(frozen=True)
class TurnFormat:
    """The verdict on one turn: its action when well-formed, else why not."""

    ok: bool
    action: Literal["tool_call", "answer"] | None = None
    reason: str = ""


def _snippet(text: str, limit: int = 30) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_turn(
    text: str,
    *,
    think_tag: str = "think",
    tool_call_tag: str = "tool_call",
    answer_tag: str = "answer",
    require_think: bool = True,
    allow_multiple_tool_calls: bool = True,
) -> TurnFormat:
    """Check one assistant turn against the grammar of the module docstring."""
    names = "|".join(re.escape(t) for t in (think_tag, tool_call_tag, answer_tag))
    parts = re.split(rf"(</?(?:{names})>)", text)
    think_open, think_close = f"<{think_tag}>", f"</{think_tag}>"
    call_open, call_close = f"<{tool_call_tag}>", f"</{tool_call_tag}>"
    answer_open, answer_close = f"<{answer_tag}>", f"</{answer_tag}>"
    # state -> {tag: next state}; "in_*" states accept any text, the others only whitespace.
    start = {think_open: "in_think"}
    if not require_think:
        start |= {call_open: "in_call", answer_open: "in_answer"}
    moves: dict[str, dict[str, str]] = {
        "start": start,
        "in_think": {think_close: "after_think"},
        "after_think": {call_open: "in_call", answer_open: "in_answer"},
        "in_call": {call_close: "after_call"},
        "after_call": {call_open: "in_call"} if allow_multiple_tool_calls else {},
        "in_answer": {answer_close: "end"},
        "end": {},
    }
    state = "start"
    for i, part in enumerate(parts):
        if i % 2 == 1:  # a tag (re.split puts the captured tags at odd positions)
            nxt = moves[state].get(part)
            if nxt is None:
                if state == "start" and require_think and part in (call_open, answer_open):
                    return TurnFormat(False, reason=f"no {think_open} before {part}")
                return TurnFormat(False, reason=f"unexpected {part} ({state.replace('_', ' ')})")
            state = nxt
        elif part.strip() and not state.startswith("in_"):
            return TurnFormat(False, reason=f"text outside the tags: {_snippet(part)!r}")
    if state == "after_call":
        return TurnFormat(True, "tool_call")
    if state == "end":
        return TurnFormat(True, "answer")
    if state == "start":
        reason = f"no {think_open}" if require_think else "no tags"
    elif state == "after_think":
        reason = f"no {call_open} or {answer_open} after {think_close}"
    else:
        reason = f"unclosed tag ({state.replace('_', ' ')})"
    return TurnFormat(False, reason=reason)


class FormatParams(BaseModel):
    """Parameters of ``format``."""

    think_tag: str = Field("think", pattern=TAG_NAME_PATTERN, description="the reasoning block's tag")
    tool_call_tag: str = Field("tool_call", pattern=TAG_NAME_PATTERN, description="the tool-call block's tag")
    answer_tag: str = Field("answer", pattern=TAG_NAME_PATTERN, description="the final answer's tag")
    require_think: bool = Field(True, description="every turn must open with a think block")
    require_final_answer: bool = Field(True, description="the last assistant turn must be an answer turn")
    allow_multiple_tool_calls: bool = Field(True, description="a turn may hold several tool-call blocks")
    aggregate: Literal["all", "mean"] = Field(
        "all", description='"all": 1 if every turn is well-formed, else 0; "mean": the fraction well-formed'
    )

    @model_validator(mode="after")
    def _distinct_tags(self) -> Self:
        tags = (self.think_tag, self.tool_call_tag, self.answer_tag)
        if len(set(tags)) != 3:
            raise ValueError(f"think_tag, tool_call_tag and answer_tag must differ, got {tags}")
        return self


def check_turns(texts: list[str], params: FormatParams) -> list[TurnFormat]:
    """Check each assistant turn; the last must answer when ``require_final_answer``."""
    checks = [
        check_turn(
            t,
            think_tag=params.think_tag,
            tool_call_tag=params.tool_call_tag,
            answer_tag=params.answer_tag,
            require_think=params.require_think,
            allow_multiple_tool_calls=params.allow_multiple_tool_calls,
        )
        for t in texts
    ]
    if params.require_final_answer and checks and checks[-1].ok and checks[-1].action != "answer":
        checks[-1] = TurnFormat(False, checks[-1].action, f"the last turn gives no <{params.answer_tag}>")
    return checks


@register
class Format:
    """Tag structure and order of every assistant turn."""

    name = "format"
    description = (
        "Format of each assistant turn: <think>…</think> then <tool_call> blocks or one <answer>, "
        "nothing outside the tags; 1 when all turns are well-formed (or the fraction), with one "
        "step reward per turn."
    )
    kind = RewardKindName.RULE
    Params = FormatParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: FormatParams) -> RewardOutcome:
        """Check the trajectory's assistant turns, or the prediction as a single turn."""
        turns = item.trajectory.assistant_turns if item.trajectory is not None else []
        if turns:
            indexed = [(t.index, t.text) for t in turns]
        else:
            indexed = [(0, item.response_text)]
        texts = [text for _, text in indexed]
        checks = await self.ctx.run_cpu(sum(map(len, texts)), check_turns, texts, params)
        steps = [StepReward(idx, 1.0 if c.ok else 0.0) for (idx, _), c in zip(indexed, checks, strict=True)]
        good = sum(1 for c in checks if c.ok)
        if params.aggregate == "all":
            value = 1.0 if good == len(checks) else 0.0
        else:
            value = good / len(checks)
        problems = [f"turn {idx}: {c.reason}" for (idx, _), c in zip(indexed, checks, strict=True) if not c.ok]
        explanation = f"{good}/{len(checks)} assistant turn(s) well-formed"
        if problems:
            explanation += "; " + "; ".join(problems[:3]) + ("; …" if len(problems) > 3 else "")
        return RewardOutcome(value=value, explanation=explanation, step_rewards=steps)
