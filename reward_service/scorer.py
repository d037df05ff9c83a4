"""Scoring: a spec's rewards run concurrently on an item, weighted and summed; a batch runs its
items concurrently under a bound.

A component that fails for a reason of the system (``RewardSystemError``) or of the item
(``RewardInputError``) is reported with that status; then the item as a whole carries the status
(system errors first) and its total is 0 — a status the trainer uses to drop the trajectory, never
a score of 0 that blames the model. Limits (docs/rewards.md): a model output longer than a
reward's text limit scores that reward's lowest value, with the reason; an item past its time
budget is a SYSTEM_ERROR; a total that is not a finite number is refused (INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from reward_service.registry import Reward
from reward_service.settings import RewardSettings
from reward_service.types import RewardInputError, RewardOutcome, RewardSystemError
from rlyard.domain import ComponentScore, RewardSpec, RewardTerm, ScoreResult, ScoreStatus, ScoringItem, StepScore
from rlyard.errors import InvalidArgument, ServiceError

logger = logging.getLogger(__name__)

# Composites may nest, but not without end: each level is a bind and a gather.
MAX_SPEC_DEPTH = 4
# An explanation is for a person reading a sample; a reward that quotes a huge output is cut.
MAX_EXPLANATION_CHARS = 1000


@dataclass(frozen=True)
class BoundTerm:
    """A spec term with its reward, validated parameters and text limit (None: none)."""

    term: RewardTerm
    reward: Reward
    params: BaseModel
    max_text_chars: int | None = None


def model_text_chars(item: ScoringItem) -> int:
    """How long the model's output in ``item`` is: the longest text a reward reads of it."""
    return max(len(item.text), len(item.response_text))


def _clip(text: str, limit: int = MAX_EXPLANATION_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


class Scorer:
    """Scores items against specs with a set of rewards."""

    def __init__(self, rewards: dict[str, Reward], batch_concurrency: int = 32,
                 settings: RewardSettings | None = None) -> None:
        self.rewards = rewards
        self.batch_concurrency = batch_concurrency
        self.settings = settings or RewardSettings(batch_concurrency=batch_concurrency)
        self._text_limits = self.settings.text_limit_overrides()

    def text_limit(self, name: str, reward: Reward) -> int | None:
        """The longest model output ``reward`` reads: the setting for its name, else the smaller of
        its own limit and the service's (a reward whose own limit is None, a composite, has none)."""
        if name in self._text_limits:
            return self._text_limits[name]
        own = getattr(reward, "max_text_chars", self.settings.max_text_chars)
        return None if own is None else min(own, self.settings.max_text_chars)

    def bind(self, spec: RewardSpec, depth: int = 1) -> list[BoundTerm]:
        """Check every term against the registry, its parameter schema and what the service allows
        (nested composites included, at most ``MAX_SPEC_DEPTH`` deep)."""
        if depth > MAX_SPEC_DEPTH:
            raise InvalidArgument(f"composite rewards nest deeper than {MAX_SPEC_DEPTH} levels")
        bound = []
        for term in spec.terms:
            reward = self.rewards.get(term.name)
            if reward is None:
                raise InvalidArgument(
                    f"unknown reward {term.name[:100]!r}; available: {', '.join(sorted(self.rewards))}"
                )
            try:
                params = reward.Params.model_validate(term.params)
                check = getattr(reward, "check_params", None)
                if check is not None:
                    check(params)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
                )
                raise InvalidArgument(f"bad params for reward {term.name!r}: {_clip(problems, 500)}") from None
            except ValueError as exc:
                raise InvalidArgument(f"bad params for reward {term.name!r}: {_clip(str(exc), 500)}") from None
            inner = getattr(reward, "inner_spec", None)
            if inner is not None:
                self.bind(inner(params), depth + 1)
            bound.append(BoundTerm(term, reward, params, self.text_limit(term.name, reward)))
        return bound

    async def _component(self, item: ScoringItem, b: BoundTerm, size: int) -> tuple[ComponentScore, list[StepScore]]:
        name, weight = b.term.name, b.term.weight
        if b.max_text_chars is not None and size > b.max_text_chars:
            floor = getattr(b.reward, "floor", None)
            value = float(floor(b.params, item)) if floor is not None else 0.0
            why = (f"the model's output is {size} characters, over {name}'s limit of {b.max_text_chars} "
                   f"(RLYARD_REWARD_MAX_TEXT_CHARS, RLYARD_REWARD_TEXT_LIMITS): not read, scored {value:g}, "
                   "the reward's lowest value")
            return ComponentScore(name, value, weight, why), []
        try:
            outcome: RewardOutcome = await b.reward.score(item, b.params)
        except RewardSystemError as exc:
            return ComponentScore(name, 0.0, weight, _clip(str(exc)), ScoreStatus.SYSTEM_ERROR), []
        except RewardInputError as exc:
            return ComponentScore(name, 0.0, weight, _clip(str(exc)), ScoreStatus.INVALID_INPUT), []
        except ServiceError:
            raise  # the request's fault (e.g. a composite's inner spec): its status for the whole call
        except Exception:
            # A bug of ours, not of the item: logged with its traceback; the item is dropped (a
            # SYSTEM_ERROR), and the rest of the batch is scored.
            logger.exception("reward %s failed on item %r", name, item.item_id[:80])
            why = f"internal error of reward {name} (the reward service logged it); the item is not scored"
            return ComponentScore(name, 0.0, weight, why, ScoreStatus.SYSTEM_ERROR), []
        value = float(outcome.value)
        steps = [StepScore(s.turn_index, weight * s.value, name) for s in outcome.step_rewards]
        if not math.isfinite(value) or not all(math.isfinite(s.value) for s in steps):
            raise InvalidArgument(f"reward {name!r} with params {_clip(str(b.term.params), 300)} and weight {weight:g} "
                                  f"gives a value that is not a finite number ({value}) on item "
                                  f"{item.item_id[:80]!r}; use parameters of a sensible size")
        return ComponentScore(name, value, weight, _clip(outcome.explanation)), steps

    async def score_bound(self, item: ScoringItem, bound: Sequence[BoundTerm]) -> ScoreResult:
        """Score one item with already-bound terms (all rewards concurrently), within the item's
        time budget (``RLYARD_REWARD_ITEM_TIMEOUT_S``)."""
        budget = self.settings.item_timeout_s
        size = model_text_chars(item)
        try:
            async with asyncio.timeout(budget):
                results = await asyncio.gather(*(self._component(item, b, size) for b in bound))
        except TimeoutError:
            error = (f"scoring took longer than the item's budget of {budget:g} s (RLYARD_REWARD_ITEM_TIMEOUT_S); "
                     f"rewards: {', '.join(b.term.name for b in bound)}")
            components = [ComponentScore(b.term.name, 0.0, b.term.weight, error, ScoreStatus.SYSTEM_ERROR)
                          for b in bound]
            return ScoreResult(item.item_id, 0.0, components, [], "not scored (SYSTEM_ERROR)",
                               ScoreStatus.SYSTEM_ERROR, error)
        components = [c for c, _ in results]
        steps = sorted((s for _, ss in results for s in ss), key=lambda s: (s.turn_index, s.component))
        failed = [c for c in components if c.status != ScoreStatus.OK]
        if failed:
            status = (ScoreStatus.SYSTEM_ERROR if any(c.status == ScoreStatus.SYSTEM_ERROR for c in failed)
                      else ScoreStatus.INVALID_INPUT)
            error = "; ".join(f"{c.name}: {c.explanation}" for c in failed)
            return ScoreResult(item.item_id, 0.0, components, [], f"not scored ({status})", status, error)
        total = sum(c.weight * c.value for c in components)
        if not math.isfinite(total):
            raise InvalidArgument(f"the weighted sum of {', '.join(c.name for c in components)} is not a finite number "
                                  f"on item {item.item_id[:80]!r} (weights × values overflow); use weights of a "
                                  "sensible size")
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
