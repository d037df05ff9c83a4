"""``composite``: a weighted sum of other rewards by name, as one component.

The spec of a request is itself a weighted sum; ``composite`` names such a sum
inside a spec (e.g. a preset ``{"composite": {"weight": 1, "terms": {"qa_f1": 0.5,
"format": 0.5}}}``) so that it is reported as a single component whose
explanation lists its parts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from reward_service.registry import RewardContext, register
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome, RewardSystemError, StepReward
from rlyard.domain import ScoreStatus, ScoringItem, parse_spec


class CompositeParams(BaseModel):
    """Parameters of ``composite``."""

    terms: dict[str, Any] = Field(
        description='the rewards to sum: {"name": weight} or {"name": {"weight": w, ...params}}',
        min_length=1,
    )


@register
class Composite:
    """Weighted sum of named rewards."""

    name = "composite"
    description = "Weighted sum of other rewards by name, reported as one component."
    kind = RewardKindName.COMPOSITE
    Params = CompositeParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: CompositeParams) -> RewardOutcome:
        """Score the inner spec with the service's scorer."""
        from reward_service.scorer import Scorer

        scorer = self.ctx.shared.get("scorer")
        if not isinstance(scorer, Scorer):
            raise RewardSystemError("composite needs the service's scorer, which is not set up")
        result = await scorer.score(item, parse_spec(params.terms))
        if result.status == ScoreStatus.SYSTEM_ERROR:
            raise RewardSystemError(result.error)
        if result.status == ScoreStatus.INVALID_INPUT:
            raise RewardInputError(result.error)
        steps = [StepReward(s.turn_index, s.value) for s in result.step_rewards]
        return RewardOutcome(result.total, result.explanation, steps)
