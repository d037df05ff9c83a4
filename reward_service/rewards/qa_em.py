"""``qa_em``: exact match of the prediction against the gold answers, SQuAD-normalised.

Follows the official SQuAD v2.0 evaluator (rajpurkar, ``evaluate-v2.0.py``:
``normalize_answer``, ``compute_exact``, the max over golds in ``get_raw_scores``):

    EM = max over golds g of int(normalize_answer(g) == normalize_answer(prediction))

``normalize_answer`` lower-cases, strips ``string.punctuation``, drops the words
a/an/the and collapses whitespace, in that order (see ``_text.normalize_answer``).

Empty strings (``squad_version``, default ``"v2.0"``, the current official script):
golds that normalise to "" are dropped; when no gold is left (``{"answers": []}``, an
unanswerable question) the only gold is "", so an empty prediction scores 1 and any
other 0. ``"v1.1"`` (``evaluate-v1.1.py``) takes the max over the golds as given
(an empty gold matches an empty prediction) and needs at least one gold.

Ground truth: ``{"answers": [...]}`` (or a string, or a list). Prediction: ``item.text``
(the prediction, else the trajectory's final answer). Value in {0, 1}; no step rewards.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._text import gold_answers, normalize_answer, squad_golds
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the two answers are equal after SQuAD normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def max_exact_match(prediction: str, golds: list[str], squad_version: str = "v2.0") -> float:
    """EM of the prediction against its best gold, as the official SQuAD script computes it.

    Raises:
        RewardInputError: ``squad_version="v1.1"`` and no gold answer.
    """
    return float(bool(matching_golds(prediction, squad_golds(golds, squad_version))))


def matching_golds(prediction: str, golds: list[str]) -> list[str]:
    """The golds equal to the prediction after normalisation (the prediction normalised once:
    linear in the prediction plus the golds)."""
    norm = normalize_answer(prediction)
    return [g for g in golds if normalize_answer(g) == norm]


class QaEmParams(BaseModel):
    """Parameters of ``qa_em``."""

    squad_version: Literal["v2.0", "v1.1"] = Field(
        "v2.0",
        description='"v2.0": golds normalising to "" are dropped and an empty gold list means '
        'unanswerable (only "" is right); "v1.1": max over the golds as given',
    )


@register
class QaEm:
    """Exact match with SQuAD normalisation, max over the gold answers."""

    name = "qa_em"
    description = (
        "Exact match of the answer against the gold answers after SQuAD normalisation "
        "(lower-case, no punctuation, no a/an/the, single spaces); 1 or 0."
    )
    kind = RewardKindName.RULE
    Params = QaEmParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: QaEmParams) -> RewardOutcome:
        """Score ``item.text`` against ``item.ground_truth``'s answers."""
        golds = squad_golds(gold_answers(item.ground_truth), params.squad_version)
        prediction = item.text
        size = len(prediction) + sum(len(g) for g in golds)
        matches = await self.ctx.run_cpu(size, matching_golds, prediction, golds)
        shown = normalize_answer(prediction[:2000])  # for the explanation only
        if matches:
            explanation = f"exact match: {shown[:200]!r} equals gold {matches[0][:200]!r} after normalisation"
        else:
            explanation = f"no exact match: {shown[:200]!r} (normalised) is none of {len(golds)} gold answer(s)"
        return RewardOutcome(value=float(bool(matches)), explanation=explanation)
