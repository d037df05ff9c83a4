"""``composite``: a weighted sum of other rewards by name, as one component.

The spec of a request is itself a weighted sum; ``composite`` names such a sum
inside a spec (e.g. a preset ``{"composite": {"weight": 1, "terms": {"qa_f1": 0.5,
"format": 0.5}}}``) so that it is reported as a single component whose
explanation lists its parts. Composites nest at most ``scorer.MAX_SPEC_DEPTH`` levels.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from reward_service.registry import RewardContext, register
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome, RewardSystemError, StepReward
from rlyard.domain import RewardSpec, ScoreStatus, ScoringItem, parse_spec
from rlyard.errors import InvalidArgument


class CompositeParams(BaseModel):
    """Parameters of ``composite``."""

    terms: dict[str, Any] = Field(
        description='the rewards to sum: {"name": weight} or {"name": {"weight": w, ...params}}',
        min_length=1,
    )

    @field_validator("terms")
    @classmethod
    def _a_spec(cls, terms: dict[str, Any]) -> dict[str, Any]:
        try:
            parse_spec(terms)          # weights that are numbers, finite, and sum to a finite number
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return terms


@register
class Composite:
    """Weighted sum of named rewards."""

    name = "composite"
    description = "Weighted sum of other rewards by name, reported as one component."
    kind = RewardKindName.COMPOSITE
    Params = CompositeParams
    max_text_chars = None    # no limit of its own: each inner reward applies its own

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def inner_spec(self, params: CompositeParams) -> RewardSpec:
        """The spec it sums (the scorer binds it with the outer spec: unknown names and bad
        params are refused before anything is scored)."""
        return parse_spec(params.terms)

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
