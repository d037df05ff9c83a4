"""``ssl_position``: SSL4RL's relative-position task — where does the second patch lie relative to
the first?

The task cuts a scene into a 3×3 grid and shows the centre cell's patch and the patch of one of its
8 neighbours (each patch jittered inside its cell, with gaps, so that edges do not simply continue).
The answer (``reward_service.ssl.answers.parse_position``) names the neighbour: ``top-left``,
``top``, ``top-right``, ``left``, ``right``, ``bottom-left``, ``bottom``, ``bottom-right`` (case,
spaces, underscores and the synonyms upper/lower/above/below are accepted, e.g. ``Upper Left``).
Value 1 when it is the gold neighbour, else 0; malformed scores 0 with the reason. Chance level:
1/8. Ground truth: ``{"task": "position", "answer": "top-left"}``.
"""

from __future__ import annotations

from reward_service.registry import RewardContext, register
from reward_service.rewards._ssl import SslParams, read_gold, verdict
from reward_service.ssl.answers import gold_position, parse_position
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


@register
class SslPosition:
    """Which of the 8 neighbours of the centre patch the other patch is: 1 or 0."""

    name = "ssl_position"
    description = ("SSL4RL relative position: 1 when the answer names the neighbour cell (top-left … bottom-right) "
                   "the second patch comes from, relative to the centre patch, else 0 (chance 1/8).")
    kind = RewardKindName.RULE
    Params = SslParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: SslParams) -> RewardOutcome:
        """Compare the answer's neighbour with the gold one."""
        gold = read_gold(gold_position, item.ground_truth)
        text = item.text
        parsed = await self.ctx.run_cpu(len(text), parse_position, text, params.answer_tag)
        return verdict(parsed, gold)
