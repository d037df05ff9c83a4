"""Scoring: a spec's rewards run concurrently on an item, weighted and summed; a
batch runs its items concurrently under a bound.

A component that fails for a reason of the system (``RewardSystemError``) or
of the item (``RewardInputError``) is reported with that status; then the item
as a whole carries the status (system errors first) and its total is 0 — a
status the trainer uses to drop the trajectory, never a score of 0 that blames
the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from reward_service.registry import Reward
from reward_service.types import RewardInputError, RewardSystemError
from rlyard.domain import ComponentScore, RewardSpec, RewardTerm, ScoreResult, ScoreStatus, ScoringItem, StepScore
from rlyard.errors import InvalidArgument

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BoundTerm:
    """A spec term with its reward and validated parameters."""

    term: RewardTerm
    reward: Reward
    params: BaseModel


class Scorer:
    """Scores items against specs with a set of rewards."""

    def __init__(self, rewards: dict[str, Reward], batch_concurrency: int = 32) -> None:
        self.rewards = rewards
        self.batch_concurrency = batch_concurrency

    def bind(self, spec: RewardSpec) -> list[BoundTerm]:
        """Check every term against the registry and its parameter schema."""
        bound = []
        for term in spec.terms:
            reward = self.rewards.get(term.name)
            if reward is None:
                raise InvalidArgument(
                    f"unknown reward {term.name!r}; available: {', '.join(sorted(self.rewards))}"
                )
            try:
                params = reward.Params.model_validate(term.params)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
                )
                raise InvalidArgument(f"bad params for reward {term.name!r}: {problems}") from None
            bound.append(BoundTerm(term, reward, params))
        return bound

    async def _component(self, item: ScoringItem, b: BoundTerm) -> tuple[ComponentScore, list[StepScore]]:
        name, weight = b.term.name, b.term.weight
        try:
            outcome = await b.reward.score(item, b.params)
        except RewardSystemError as exc:
            return ComponentScore(name, 0.0, weight, str(exc), ScoreStatus.SYSTEM_ERROR), []
        except RewardInputError as exc:
            return ComponentScore(name, 0.0, weight, str(exc), ScoreStatus.INVALID_INPUT), []
        steps = [StepScore(s.turn_index, weight * s.value, name) for s in outcome.step_rewards]
        return ComponentScore(name, float(outcome.value), weight, outcome.explanation), steps

    async def score_bound(self, item: ScoringItem, bound: Sequence[BoundTerm]) -> ScoreResult:
        """Score one item with already-bound terms (all rewards concurrently)."""
        results = await asyncio.gather(*(self._component(item, b) for b in bound))
        components = [c for c, _ in results]
        steps = sorted((s for _, ss in results for s in ss), key=lambda s: (s.turn_index, s.component))
        failed = [c for c in components if c.status != ScoreStatus.OK]
        if failed:
            status = (ScoreStatus.SYSTEM_ERROR if any(c.status == ScoreStatus.SYSTEM_ERROR for c in failed)
                      else ScoreStatus.INVALID_INPUT)
            error = "; ".join(f"{c.name}: {c.explanation}" for c in failed)
            return ScoreResult(item.item_id, 0.0, components, [], f"not scored ({status})", status, error)
        total = sum(c.weight * c.value for c in components)
        explanation = "; ".join(
            f"{c.name}={c.value:.4g}" + (f" ({c.explanation})" if c.explanation else "") for c in components
        )
        return ScoreResult(item.item_id, total, components, steps, explanation)

    async def score(self, item: ScoringItem, spec: RewardSpec) -> ScoreResult:
        """Score one item."""
        return await self.score_bound(item, self.bind(spec))

    async def score_batch(self, items: Sequence[tuple[ScoringItem, RewardSpec]]) -> list[ScoreResult]:
        """Score many items concurrently (at most ``batch_concurrency`` at once), in order.

        Every spec is checked before anything runs, so a bad spec fails the whole batch.
        """
        bound_by_spec: dict[int, list[BoundTerm]] = {}
        plan = []
        for item, spec in items:
            key = id(spec)
            if key not in bound_by_spec:
                bound_by_spec[key] = self.bind(spec)
            plan.append((item, bound_by_spec[key]))
        gate = asyncio.Semaphore(self.batch_concurrency)

        async def one(item: ScoringItem, bound: list[BoundTerm]) -> ScoreResult:
            async with gate:
                return await self.score_bound(item, bound)

        return list(await asyncio.gather(*(one(i, b) for i, b in plan)))
