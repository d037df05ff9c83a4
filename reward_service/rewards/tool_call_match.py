"""``tool_call_match``: the ToolRL / ResT tool-call correctness reward.

Follows ToolRL (qiancheng0/ToolRL, ``verl/utils/reward_score/rlla.py``:
``match_score``, ``compute_tool_call_reward``, ``customize_correctness_reward_tool``),
which ResT (1229095296/ResT_Tool_use_LLM, same file) reuses unchanged.

With gold calls G and predicted calls P, each a name and a dict of arguments:

    J(a, b)  = 1 if the lists a == b; 0 if either is empty; else the multiset Jaccard
               |a ∩ b| / (|a| + |b| − |a ∩ b|)  (``match_score``)
    score    = J(names(G), names(P))
               + Σ over g in G (in order) of the best unused p in P with name(p) = name(g):
                   J(keys(g), keys(p)) + #{k in g : k in p and p[k] == g[k]}
               (greedy: the first p with the strictly highest total, which must be > 0,
               is used up)
    S_max    = 1 + Σ over g in G of (1 + |args(g)|)
    value    = r_max                                    if G == P (same calls, same order)
             = (r_max − r_min) · score / S_max + r_min  otherwise

A gold with no call scores 0 (ToolRL gives 0 when the answer holds no ``<tool_call>``).
A predicted call that cannot be read (no ``<tool_call>`` block in the text, invalid
JSON, arguments that are not an object) scores r_min, as ToolRL's parse failure does.
Values compare with Python ``==`` on the parsed JSON (so 1 == 1.0).

Range: ``r_max``/``r_min`` default to ToolRL's [−3, 3]. With ``schedule`` they move
linearly with ``item.training_step`` t from (``r_max_start``, ``r_min_start``) at t = 0
to (``r_max``, ``r_min``) at t = ``steps`` and stay there; the defaults 2/−2 over 150
steps are ToolRL's ``SCHEDULEREWARD`` (r_max(t) = 2 + (3 − 2)·t/150, capped at 3).

Gold: ``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` or the list itself
(``parameters`` is accepted for ``arguments``, as is a JSON string of the object).
Predicted: ``item.trajectory.tool_calls`` when there is a trajectory, else the JSON of
every ``<tool_call>…</tool_call>`` block of ``item.text`` (one object or a list per
block, or one object per line as in ToolRL). No step rewards.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel, Field, model_validator

from reward_service.registry import RewardContext, register
from reward_service.rewards._text import TAG_NAME_PATTERN, tag_blocks
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem
from rlyard.domain import ToolCall as RecordedCall
from rlyard.domain.safejson import loads_json
from rlyard.errors import InvalidArgument


@dataclass(frozen=True)
class ToolCall:
    """A tool call reduced to what the score compares."""

    name: str
    arguments: dict[str, Any]


class MalformedToolCall(ValueError):
    """A predicted tool call could not be read (scored r_min, as in ToolRL)."""


@dataclass(frozen=True)
class MatchResult:
    """The parts of one score."""

    value: float
    score: float        # the raw score, in [0, max_score]
    max_score: float    # S_max
    exact: bool         # G == P: value is r_max without the sum


def match_score(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """ToolRL's ``match_score``: multiset Jaccard, 1 for equal lists, 0 if either is empty."""
    if list(a) == list(b):
        return 1.0
    if not a or not b:
        return 0.0
    count_a, count_b = Counter(a), Counter(b)
    inter = sum((count_a & count_b).values())
    union = len(a) + len(b) - inter
    return inter / union if union > 0 else 0.0


def raw_tool_call_score(gold: Sequence[ToolCall], pred: Sequence[ToolCall]) -> tuple[float, float]:
    """``(score, S_max)`` of the module docstring."""
    score = match_score([g.name for g in gold], [p.name for p in pred])
    max_score = 1.0
    used: set[int] = set()
    for g in gold:
        max_score += 1.0 + len(g.arguments)
        best_score, best_index = 0.0, -1
        for i, p in enumerate(pred):
            if i in used or p.name != g.name:
                continue
            keys = match_score(list(g.arguments), list(p.arguments))
            values = sum(1.0 for k, v in g.arguments.items() if k in p.arguments and p.arguments[k] == v)
            if keys + values > best_score:
                best_score, best_index = keys + values, i
        if best_index >= 0:
            used.add(best_index)
            score += best_score
    return score, max_score


def compute_tool_call_match(
    gold: Sequence[ToolCall], pred: Sequence[ToolCall], r_max: float = 3.0, r_min: float = -3.0
) -> MatchResult:
    """The ToolRL reward of predicted calls against gold calls, in [r_min, r_max]."""
    if list(gold) == list(pred):
        max_score = 1.0 + sum(1.0 + len(g.arguments) for g in gold)
        return MatchResult(r_max, max_score, max_score, True)
    score, max_score = raw_tool_call_score(gold, pred)
    return MatchResult((r_max - r_min) * score / max_score + r_min, score, max_score, False)


def _short(obj: Any) -> str:
    text = json.dumps(obj, default=str) if not isinstance(obj, str) else obj
    return text if len(text) <= 60 else text[:59] + "…"


def _arguments(call: Mapping[str, Any], error: type[Exception]) -> dict[str, Any]:
    args: Any = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):
        args = _loads(args, error, f"the arguments of {_short(call.get('name'))}") if args.strip() else {}
    if not isinstance(args, dict):
        raise error(f"the arguments of {call.get('name')!r} are not a JSON object")
    return args


def _call_from_json(obj: Any, error: type[Exception]) -> ToolCall:
    if isinstance(obj, Mapping) and isinstance(obj.get("function"), Mapping):  # OpenAI style
        obj = obj["function"]
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str):
        raise error(f'a tool call must be an object with a string "name", got {_short(obj)}')
    return ToolCall(obj["name"], _arguments(obj, error))


def gold_tool_calls(ground_truth: Any) -> list[ToolCall]:
    """The gold calls of ``{"tool_calls": [...]}`` or of a list of calls.

    Raises:
        RewardInputError: the ground truth is missing or not of that shape.
    """
    calls = ground_truth
    if isinstance(ground_truth, Mapping):
        if "tool_calls" not in ground_truth:
            raise RewardInputError(
                'the ground truth has no "tool_calls"; give {"tool_calls": [{"name": ..., "arguments": {...}}]}, '
                f"got keys {sorted(map(str, ground_truth))}"
            )
        calls = ground_truth["tool_calls"]
    if not isinstance(calls, list | tuple):
        raise RewardInputError(
            f'the gold tool calls must be a list of {{"name": ..., "arguments": {{...}}}}, got {_short(calls)}'
        )
    return [_call_from_json(c, RewardInputError) for c in calls]


def _loads(text: str, error: type[Exception], what: str) -> Any:
    """JSON of a tool call; ``error`` (never RecursionError/ValueError) when it cannot be read."""
    try:
        return loads_json(text, what)
    except InvalidArgument as e:
        raise error(e.message) from None


def _block_calls(content: str) -> list[ToolCall]:
    content = content.strip()
    try:
        parsed: Any = _loads(content, MalformedToolCall, "a tool-call block")
    except MalformedToolCall:
        # ToolRL's layout: one JSON object per line inside one block.
        parsed = [_loads(line, MalformedToolCall, "a tool-call block") for line in content.split("\n")
                  if line.strip()]
        if not parsed:
            raise MalformedToolCall("a tool-call block is empty") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    return [_call_from_json(obj, MalformedToolCall) for obj in items]


def parse_text_tool_calls(text: str, tag: str = "tool_call") -> list[ToolCall]:
    """The calls of every ``<tag>…</tag>`` block of a text.

    Raises:
        MalformedToolCall: there is no block, or a block is not valid JSON of calls.
    """
    blocks = tag_blocks(text, tag)
    if not blocks:
        raise MalformedToolCall(f"no <{tag}> block in the text")
    return [call for block in blocks for call in _block_calls(block)]


def record_tool_calls(records: Sequence[RecordedCall]) -> list[ToolCall]:
    """The calls of a trajectory.

    Raises:
        MalformedToolCall: a call's arguments are not a JSON object.
    """
    calls = []
    for r in records:
        args = r.arguments
        if not isinstance(args, dict):
            raise MalformedToolCall(f"the arguments of call {r.call_id or r.name!r} are not a JSON object")
        calls.append(ToolCall(r.name, args))
    return calls


class RangeSchedule(BaseModel):
    """A linear schedule of the reward range over training steps."""

    r_max_start: float = Field(2.0, description="r_max at step 0 (ToolRL: 2)")
    r_min_start: float = Field(-2.0, description="r_min at step 0 (ToolRL: -2)")
    steps: int = Field(150, ge=1, description="the step at which r_max/r_min reach their end values (ToolRL: 150)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.r_max_start <= self.r_min_start:
            raise ValueError(f"r_max_start ({self.r_max_start}) must exceed r_min_start ({self.r_min_start})")
        return self


class ToolCallMatchParams(BaseModel):
    """Parameters of ``tool_call_match``."""

    r_max: float = Field(3.0, description="the value of a perfect match (the end value when scheduled)")
    r_min: float = Field(-3.0, description="the value of no match or an unreadable call (end value when scheduled)")
    schedule: RangeSchedule | None = Field(
        None, description="move [r_min, r_max] linearly from the start values over training steps"
    )
    tool_call_tag: str = Field("tool_call", pattern=TAG_NAME_PATTERN, description="the tag read from item.text")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.r_max <= self.r_min:
            raise ValueError(f"r_max ({self.r_max}) must exceed r_min ({self.r_min})")
        if not math.isfinite(self.r_max - self.r_min):
            raise ValueError(f"r_max - r_min ({self.r_max:g} - {self.r_min:g}) is not a finite number")
        return self


def reward_range(params: ToolCallMatchParams, step: int) -> tuple[float, float]:
    """``(r_min, r_max)`` at a training step."""
    s = params.schedule
    if s is None:
        return params.r_min, params.r_max
    frac = min(max(step, 0), s.steps) / s.steps
    r_max = s.r_max_start + (params.r_max - s.r_max_start) * frac
    r_min = s.r_min_start + (params.r_min - s.r_min_start) * frac
    return r_min, r_max


@register
class ToolCallMatch:
    """ToolRL's tool-call correctness: names, parameter keys and exact values."""

    name = "tool_call_match"
    description = (
        "ToolRL/ResT tool-call match: Jaccard of tool names + per gold call the best predicted "
        "call's Jaccard of argument keys + count of exact values, scaled to [r_min, r_max] "
        "(default [-3, 3], optionally scheduled over training steps)."
    )
    kind = RewardKindName.RULE
    Params = ToolCallMatchParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def floor(self, params: ToolCallMatchParams, item: ScoringItem) -> float:
        """The lowest value at the item's step: r_min (what an unreadable call scores)."""
        return reward_range(params, item.training_step)[0]

    async def score(self, item: ScoringItem, params: ToolCallMatchParams) -> RewardOutcome:
        """Score the predicted calls against ``item.ground_truth``'s calls."""
        gold = gold_tool_calls(item.ground_truth)
        r_min, r_max = reward_range(params, item.training_step)
        where = f"range [{r_min:g}, {r_max:g}] at step {item.training_step}"
        if not gold:
            return RewardOutcome(value=0.0, explanation=f"the gold makes no tool call: 0 (ToolRL); {where}")
        try:
            if item.trajectory is not None:
                pred = record_tool_calls(item.trajectory.tool_calls)
            else:
                pred = await self.ctx.run_cpu(len(item.text), parse_text_tool_calls, item.text, params.tool_call_tag)
        except MalformedToolCall as e:
            return RewardOutcome(value=r_min, explanation=f"unreadable tool call ({e}): r_min; {where}")
        m = await self.ctx.run_cpu(len(gold) * len(pred), compute_tool_call_match, gold, pred, r_max, r_min)
        if m.exact:
            explanation = f"exact match of {len(gold)} call(s): r_max; {where}"
        else:
            explanation = f"score {m.score:.3f} of {m.max_score:g} ({len(pred)} predicted, {len(gold)} gold); {where}"
        return RewardOutcome(value=m.value, explanation=explanation)
