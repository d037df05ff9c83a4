"""``qa_f1``: token F1 of the prediction against the gold answers, SQuAD-normalised.

Follows the official SQuAD v2.0 evaluator (rajpurkar, ``evaluate-v2.0.py``:
``get_tokens``, ``compute_f1``, the max over golds in ``get_raw_scores``). Tokens are
``normalize_answer(s).split()``; the overlap counts tokens as a multiset
(``Counter(pred) & Counter(gold)``):

    precision = same / |pred|,  recall = same / |gold|,  F1 = 2·P·R / (P + R)
    value = max over golds of F1

Empty strings (``squad_version``, default ``"v2.0"``): when either token list is empty
F1 is 1 if both are, else 0 (``compute_f1``); golds that normalise to "" are dropped
and an empty gold list means unanswerable, scored against ``[""]``. ``"v1.1"``
(``evaluate-v1.1.py`` ``f1_score``): no overlap, including two empty answers, is 0.

``hotpot_yes_no`` (default off) adds HotpotQA's rule (hotpotqa/hotpot,
``hotpot_evaluate_v1.py`` ``f1_score``): when the normalised prediction or gold is
"yes", "no" or "noanswer" and the two differ, F1 is 0 (so "no" earns nothing against
"no way"). With ``squad_version="v1.1"`` this is HotpotQA's answer F1 exactly.

Ground truth: ``{"answers": [...]}`` (or a string, or a list). Prediction: ``item.text``.
Value in [0, 1]; no step rewards.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._text import gold_answers, normalize_answer, squad_golds
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem

_HOTPOT_SPECIAL = ("yes", "no", "noanswer")


def f1_score(prediction: str, gold: str, squad_version: str = "v2.0", hotpot_yes_no: bool = False) -> float:
    """Token F1 of one prediction against one gold answer."""
    return f1_scores(prediction, [gold], squad_version, hotpot_yes_no)[0]


def f1_scores(prediction: str, golds: list[str], squad_version: str = "v2.0",
              hotpot_yes_no: bool = False) -> list[float]:
    """Token F1 of the prediction against each gold. The prediction is normalised and counted
    once, and each overlap walks the gold's tokens: linear in the prediction plus the golds."""
    norm_pred = normalize_answer(prediction)
    pred_toks = norm_pred.split()
    pred_count = Counter(pred_toks)
    scores = []
    for gold in golds:
        norm_gold = normalize_answer(gold)
        if hotpot_yes_no and norm_pred != norm_gold and (norm_pred in _HOTPOT_SPECIAL or norm_gold in _HOTPOT_SPECIAL):
            scores.append(0.0)
            continue
        gold_toks = norm_gold.split()
        if squad_version == "v2.0" and (not pred_toks or not gold_toks):
            # Either side is "no answer": right only when both are.
            scores.append(float(pred_toks == gold_toks))
            continue
        num_same = sum(min(n, pred_count[t]) for t, n in Counter(gold_toks).items())
        if num_same == 0:
            scores.append(0.0)
            continue
        precision = num_same / len(pred_toks)
        recall = num_same / len(gold_toks)
        scores.append((2 * precision * recall) / (precision + recall))
    return scores


def max_f1(prediction: str, golds: list[str], squad_version: str = "v2.0", hotpot_yes_no: bool = False) -> float:
    """F1 of the prediction against its best gold, as the official SQuAD script computes it.

    Raises:
        RewardInputError: ``squad_version="v1.1"`` and no gold answer.
    """
    return max(f1_scores(prediction, squad_golds(golds, squad_version), squad_version, hotpot_yes_no))


class QaF1Params(BaseModel):
    """Parameters of ``qa_f1``."""

    squad_version: Literal["v2.0", "v1.1"] = Field(
        "v2.0",
        description='"v2.0": an empty answer on either side scores 1 only if both are empty, and an '
        'empty gold list means unanswerable; "v1.1": no token overlap (also two empty answers) is 0',
    )
    hotpot_yes_no: bool = Field(
        False,
        description='HotpotQA rule: if the prediction or the gold is "yes", "no" or "noanswer" '
        "and they differ, F1 is 0",
    )


@register
class QaF1:
    """Token-level F1 with SQuAD normalisation, max over the gold answers."""

    name = "qa_f1"
    description = (
        "Token F1 between the answer and the best gold answer after SQuAD normalisation; "
        "in [0, 1]. Optionally with HotpotQA's yes/no rule."
    )
    kind = RewardKindName.RULE
    Params = QaF1Params

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: QaF1Params) -> RewardOutcome:
        """Score ``item.text`` against ``item.ground_truth``'s answers."""
        golds = squad_golds(gold_answers(item.ground_truth), params.squad_version)
        prediction = item.text
        size = len(prediction) + sum(len(g) for g in golds)
        scores = await self.ctx.run_cpu(size, f1_scores, prediction, golds, params.squad_version,
                                        params.hotpot_yes_no)
        best = max(range(len(golds)), key=scores.__getitem__)
        shown = normalize_answer(prediction[:2000])  # for the explanation only
        return RewardOutcome(
            value=scores[best],
            explanation=f"F1 {scores[best]:.3f} of {shown[:200]!r} against gold {golds[best][:200]!r}",
        )
