"""What the two ViPER rewards share: the answer tag and pixel tolerance parameters, and reading
the gold (the rules themselves are in ``reward_service.viper``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from reward_service.rewards._text import TAG_NAME_PATTERN
from reward_service.ssl.answers import GoldError
from reward_service.types import RewardInputError

T = TypeVar("T")


class ViperParams(BaseModel):
    """Parameters of both ``viper_*`` rewards."""

    answer_tag: str = Field("answer", pattern=TAG_NAME_PATTERN,
                            description="the tag the prompt asks the answer in; without one the whole text is read")
    pixel_tolerance: int = Field(1, ge=0, le=4, description="pixels a rendered pixel may be off before it counts "
                                                            "as different (2 decimals lose half a pixel on 128)")


def read_gold(reader: Callable[[Any], T], ground_truth: Any) -> T:
    """The gold, or RewardInputError saying what the ground truth lacks."""
    try:
        return reader(ground_truth)
    except GoldError as exc:
        raise RewardInputError(str(exc)) from None


def check_weights(weights: dict[str, float]) -> None:
    """Refuse (ValueError) weights that add up to 0: the total is their weighted mean."""
    if sum(weights.values()) <= 0:
        raise ValueError(f"{', '.join(weights)} add up to 0; give at least one a positive weight")
