"""``viper_image``: ViPER's image-level reconstruction — describe the whole scene.

The answer (``reward_service.viper.description.parse_description``) lists the scene's things one
per line, positions and sizes as shares of the image: ``circle red at (0.31,0.62) size 0.12``,
``sign yellow "STOP" at (0.40,0.52)``. The description is drawn with the scene generator's own
primitives onto the background of the scene's seed and scored against the scene
(``reward_service.viper.scoring.score_image``):

- **F1** of the items matched to the gold (same class, box IoU ≥ ``iou_threshold``, greedy by IoU);
- **attributes**: over the matched pairs, the mean share right of colour and size (within
  ``size_tolerance``) for a shape, colour and text for a sign;
- **pixels**: max(0, 1 − D(rendering, scene) / D(background, scene)), D a mean absolute pixel
  difference that forgives ``pixel_tolerance`` pixels of shift.

Value: (match_weight·F1 + attribute_weight·attributes + pixel_weight·pixels) / (sum of the
weights). A malformed description (a line that does not read, more than ``max_items`` lines,
more than 4,000 characters) scores 0 and says why. Ground truth: ``{"task": "viper_image",
"scene": Scene.describe()}`` (``envs.vision.viper_tasks``).
"""

from __future__ import annotations

from pydantic import Field

from reward_service.registry import RewardContext, register
from reward_service.rewards._viper import ViperParams, check_weights, read_gold
from reward_service.types import RewardKindName, RewardOutcome
from reward_service.viper.description import MAX_ITEMS, MAX_OUTPUT_CHARS, gold_scene, parse_description
from reward_service.viper.scoring import score_image
from rlyard.domain import ScoringItem


class ViperImageParams(ViperParams):
    """Parameters of ``viper_image``."""

    match_weight: float = Field(0.5, ge=0, le=1000, description="weight of the F1 of matched items")
    attribute_weight: float = Field(0.2, ge=0, le=1000, description="weight of the matched items' attributes")
    pixel_weight: float = Field(0.3, ge=0, le=1000, description="weight of the rendering's pixel similarity")
    iou_threshold: float = Field(0.3, gt=0, le=1, description="the least box IoU of a match")
    size_tolerance: float = Field(0.25, ge=0, le=1, description="a size within this share of the gold's is right")
    max_items: int = Field(MAX_ITEMS, ge=1, le=MAX_ITEMS, description="the most lines a description may have")


@register
class ViperImage:
    """A scene described item by item, rendered and compared: F1, attributes, pixels."""

    name = "viper_image"
    description = ("ViPER image level: the scene's description (one item per line: class, colour, position, size) "
                   "rendered and compared with the scene: weighted F1 of matched items, their attributes, and "
                   "the rendering's pixel similarity, in [0, 1].")
    kind = RewardKindName.RULE
    Params = ViperImageParams
    max_text_chars = MAX_OUTPUT_CHARS

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def check_params(self, params: ViperImageParams) -> None:
        """Refuse weights that add up to 0."""
        check_weights({"match_weight": params.match_weight, "attribute_weight": params.attribute_weight,
                       "pixel_weight": params.pixel_weight})

    async def score(self, item: ScoringItem, params: ViperImageParams) -> RewardOutcome:
        """Parse, render and compare (OpenCV work, in the worker threads)."""
        scene = read_gold(gold_scene, item.ground_truth)
        parsed = parse_description(item.text, params.answer_tag, max_items=params.max_items)
        if parsed.value is None:
            return RewardOutcome(0.0, parsed.error)
        weights = (params.match_weight, params.attribute_weight, params.pixel_weight)
        result = await self.ctx.run_blocking(
            lambda: score_image(parsed.value or (), scene, iou_threshold=params.iou_threshold,
                                size_tolerance=params.size_tolerance, weights=weights,
                                pixel_tolerance=params.pixel_tolerance))
        return RewardOutcome(result.total, result.explain())
