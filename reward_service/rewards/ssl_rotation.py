"""``ssl_rotation``: SSL4RL's rotation task — by how many degrees was the image rotated?

The task shows a scene (sky on top, ground below, upright text) rotated clockwise by 0, 90, 180 or
270 degrees. The answer (``reward_service.ssl.answers.parse_rotation``) is that angle, e.g.
``<answer>90</answer>``; ``270°``, ``-90`` and ``90 ccw`` all read as 270. Value 1 when it equals the
gold angle, else 0; a malformed answer scores 0 and the explanation says what was expected.
Chance level: 1/4. Ground truth: ``{"task": "rotation", "answer": 90}``.
"""

from __future__ import annotations

from reward_service.registry import RewardContext, register
from reward_service.rewards._ssl import SslParams, read_gold, verdict
from reward_service.ssl.answers import gold_rotation, parse_rotation
from reward_service.types import RewardKindName, RewardOutcome
from rlyard.domain import ScoringItem


@register
class SslRotation:
    """The clockwise rotation of the image: 1 or 0."""

    name = "ssl_rotation"
    description = ("SSL4RL rotation: 1 when the answer is the clockwise angle (0, 90, 180 or 270) the image was "
                   "rotated by, else 0 (chance 1/4).")
    kind = RewardKindName.RULE
    Params = SslParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    async def score(self, item: ScoringItem, params: SslParams) -> RewardOutcome:
        """Compare the answer's angle with the gold one."""
        gold = read_gold(gold_rotation, item.ground_truth)
        text = item.text
        parsed = await self.ctx.run_cpu(len(text), parse_rotation, text, params.answer_tag)
        return verdict(parsed, gold, lambda a: f"{a}°")
