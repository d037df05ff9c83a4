"""``ssl_masked_patch``: SSL4RL's masked-patch task — which candidate fills the hole?

The task shows a scene with a square hole (flat grey) and N candidate patches of the hole's size:
the hole's own pixels and N−1 patches cut from elsewhere in the same scene, each visibly different
from it. The answer (``reward_service.ssl.answers.parse_candidate``) is the candidate's number,
0 … N−1 (``2``, ``candidate 2``, ``#2``). Value 1 when it is the gold candidate, else 0; malformed
(not a number, a candidate that does not exist) scores 0 with the reason. Chance level: 1/N.
Ground truth: ``{"task": "masked_patch", "answer": 2, "candidates": 4}``.
"""

from __future__ import annotations

from reward_service.registry import RewardContext, register
from reward_service.rewards._ssl import SslParams, read_gold, verdict
from reward_service.ssl.answers import gold_candidate, parse_candidate
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


@register
class SslMaskedPatch:
    """The candidate patch that fills the hole: 1 or 0."""

    name = "ssl_masked_patch"
    description = ("SSL4RL masked patch: 1 when the answer is the number of the candidate patch that fills the "
                   "image's hole, else 0 (chance 1/N for N candidates).")
    kind = RewardKindName.RULE
    Params = SslParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: SslParams) -> RewardOutcome:
        """Compare the answer's candidate with the gold one."""
        gold, candidates = read_gold(gold_candidate, item.ground_truth)
        text = item.text
        parsed = await self.ctx.run_cpu(len(text), parse_candidate, text, candidates, params.answer_tag)
        return verdict(parsed, gold, lambda n: f"candidate {n}")
