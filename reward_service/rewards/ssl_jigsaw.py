"""``ssl_jigsaw``: SSL4RL's jigsaw task — how do the shuffled tiles go back together?

The task cuts a scene into k×k tiles (numbered 0 … k²−1 in reading order) and shows them shuffled.
The answer (``reward_service.ssl.answers.parse_jigsaw``) lists, for each position of the original
image in reading order, the number of the shuffled tile that belongs there — a permutation, e.g.
``<answer>2 0 3 1</answer>`` or ``[2, 0, 3, 1]``. Numbers that are missing, repeated or out of
range make it malformed (0, with the reason).

Value: 1 for the gold permutation, else 0 (chance 1/(k²)!: 1/24 for 2×2); with
``partial_credit`` the share of positions whose tile is right (DESIGN's "mean per-position match";
a random permutation keeps one tile in place on average: chance 1/k²). Ground truth:
``{"task": "jigsaw", "answer": [2, 0, 3, 1]}`` (k from its length).
"""

from __future__ import annotations

from pydantic import Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._ssl import SslParams, read_gold, verdict
from reward_service.ssl.answers import gold_jigsaw, parse_jigsaw
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


class SslJigsawParams(SslParams):
    """Parameters of ``ssl_jigsaw``."""

    partial_credit: bool = Field(False, description="score the share of tiles in place instead of 1/0")


def _show(perm: tuple[int, ...]) -> str:
    return " ".join(map(str, perm))


@register
class SslJigsaw:
    """The order that reassembles the shuffled tiles: 1 or 0, or the share of tiles in place."""

    name = "ssl_jigsaw"
    description = ("SSL4RL jigsaw: 1 when the answer is the permutation that puts the shuffled k×k tiles back "
                   "(chance 1/(k²)!), else 0; with partial_credit the share of tiles in place (chance 1/k²).")
    kind = RewardKindName.RULE
    Params = SslJigsawParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: SslJigsawParams) -> RewardOutcome:
        """Compare the answer's permutation with the gold one, as a whole or position by position."""
        gold = read_gold(gold_jigsaw, item.ground_truth)
        text = item.text
        parsed = await self.ctx.run_cpu(len(text), parse_jigsaw, text, len(gold), params.answer_tag)
        if not params.partial_credit or parsed.value is None:
            return verdict(parsed, gold, _show)
        in_place = sum(a == g for a, g in zip(parsed.value, gold, strict=True))
        return RewardOutcome(in_place / len(gold), f"{in_place}/{len(gold)} tiles in place: answered "
                                                   f"{_show(parsed.value)}, the answer is {_show(gold)}")
