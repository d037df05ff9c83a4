"""What the four SSL4RL rewards share: the answer-tag parameter, reading the gold answer, and the
verdict on a parsed answer (the rules themselves are in ``reward_service.ssl.answers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from reward_service.rewards._text import TAG_NAME_PATTERN
from reward_service.ssl.answers import GoldError, Parsed
from reward_service.types import RewardInputError, RewardOutcome

T = TypeVar("T")


class SslParams(BaseModel):
    """Parameters of every ``ssl_*`` reward."""

    answer_tag: str = Field("answer", pattern=TAG_NAME_PATTERN,
                            description="the tag the prompt asks the answer in; without one the whole text is read")


def read_gold(reader: Callable[[Any], T], ground_truth: Any) -> T:
    """The gold answer, or RewardInputError saying what the ground truth lacks."""
    try:
        return reader(ground_truth)
    except GoldError as exc:
        raise RewardInputError(str(exc)) from None


def verdict(parsed: Parsed[T], gold: T, show: Callable[[T], str] = str) -> RewardOutcome:
    """1 for the gold answer, 0 for another one or a malformed one, with the reason."""
    if parsed.value is None:
        return RewardOutcome(0.0, parsed.error)
    if parsed.value == gold:
        return RewardOutcome(1.0, f"correct: {show(parsed.value)}")
    return RewardOutcome(0.0, f"wrong: answered {show(parsed.value)}, the answer is {show(gold)}")
