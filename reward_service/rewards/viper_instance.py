"""``viper_instance``: ViPER's instance-level reconstruction — describe one object from its crop.

The task shows a crop around one thing of a scene; the answer
(``reward_service.viper.description.parse_instance``) is one line of the image-level grammar with
the position optional and the size as a share of the crop's width: ``circle red size 0.55`` or
``sign yellow "STOP" at (0.5,0.5)``. Scored by ``reward_service.viper.scoring.score_instance``:

- **attributes**: the mean of class (1/0), colour (1/0) and, for a shape, size (1 − its relative
  error, at least 0) or, for a sign, text (1/0, case and spacing ignored);
- **pixels**: the item drawn in place of the target (at its stated position, else at the target's:
  the question asks what, not where; the rest of the scene drawn from the gold) against the
  scene's crop, as ``viper_image`` compares.

Value: (attribute_weight·attributes + pixel_weight·pixels) / (sum of the weights). A malformed
answer (not one line of the grammar) scores 0 and says why. Ground truth: ``{"task":
"viper_instance", "scene", "target": {"kind": "object"|"text", "index"}, "crop"}``.
"""

from __future__ import annotations

from pydantic import Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._viper import ViperParams, check_weights, read_gold
from reward_service.types import RewardKindName, RewardOutcome
from reward_service.viper.description import MAX_OUTPUT_CHARS, describe_gold, format_item, gold_instance, parse_instance
from reward_service.viper.scoring import score_instance
from rlyard.domain import ScoringItem


class ViperInstanceParams(ViperParams):
    """Parameters of ``viper_instance``."""

    attribute_weight: float = Field(0.7, ge=0, le=1000, description="weight of the attributes' accuracy")
    pixel_weight: float = Field(0.3, ge=0, le=1000, description="weight of the crop's pixel similarity")


@register
class ViperInstance:
    """One object's attributes from its crop, checked and rendered in place."""

    name = "viper_instance"
    description = ("ViPER instance level: one object's class, colour and size (or a sign's text) from a crop, "
                   "scored by attribute accuracy and the pixel similarity of the object rendered in place, "
                   "in [0, 1].")
    kind = RewardKindName.RULE
    Params = ViperInstanceParams
    max_text_chars = MAX_OUTPUT_CHARS

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def check_params(self, params: ViperInstanceParams) -> None:
        """Refuse weights that add up to 0."""
        check_weights({"attribute_weight": params.attribute_weight, "pixel_weight": params.pixel_weight})

    async def score(self, item: ScoringItem, params: ViperInstanceParams) -> RewardOutcome:
        """Parse, compare the attributes, render and compare the crop."""
        scene, target, crop = read_gold(gold_instance, item.ground_truth)
        parsed = parse_instance(item.text, params.answer_tag)
        if parsed.value is None:
            return RewardOutcome(0.0, parsed.error)
        answer = parsed.value
        result = await self.ctx.run_blocking(
            lambda: score_instance(answer, scene, target, crop, weights=(params.attribute_weight, params.pixel_weight),
                                   pixel_tolerance=params.pixel_tolerance))
        gold = format_item(describe_gold(scene.items[target], crop, position=False))
        return RewardOutcome(result.total, result.explain(gold))
