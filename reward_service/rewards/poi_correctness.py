"""``poi_correctness``: the LocalSearchBench correctness of a local-life answer, by rules.

Defined in ``reward_service.local_life.metrics``; records come from the POI tool server's ``poi_detail``
(``reward_service.rewards._local_life``). Ground truth: a local-life task's ``{"checklist",
"gold_answers", "anchor"}``. The value is 0 or 1.
"""

from __future__ import annotations

from reward_service.registry import register
from reward_service.rewards._local_life import LocalLifeMetric


@register
class PoiCorrectness(LocalLifeMetric):
    """LocalSearchBench correctness, verified against the corpus through the POI tool server."""

    name = "poi_correctness"
    metric = "correctness"
    description = (
        "1 when the answer cites 1..count POIs, all retrieved in this trajectory and all meeting "
        "the task's checklist (verified through poi_detail), else 0"
    )
