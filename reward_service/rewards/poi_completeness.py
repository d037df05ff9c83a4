"""``poi_completeness``: the LocalSearchBench completeness of a local-life answer, by rules.

Defined in ``reward_service.local_life.metrics``; records come from the POI tool server's ``poi_detail``
(``reward_service.rewards._local_life``). Ground truth: a local-life task's ``{"checklist",
"gold_answers", "anchor"}``. The value is the 0–10 score divided by 10.
"""

from __future__ import annotations

from reward_service.registry import register
from reward_service.rewards._local_life import LocalLifeMetric


@register
class PoiCompleteness(LocalLifeMetric):
    """LocalSearchBench completeness, verified against the corpus through the POI tool server."""

    name = "poi_completeness"
    metric = "completeness"
    description = (
        "0-10 (as 0-1): how much of the request the cited POIs fulfil, checklist items met per "
        "cited POI over min(count, gold answers)"
    )
