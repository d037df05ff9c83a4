"""``poi_faithfulness``: the LocalSearchBench faithfulness of a local-life answer, by rules.

Defined in ``reward_service.local_life.metrics``; records come from the POI tool server's ``poi_detail``
(``reward_service.rewards._local_life``). Ground truth: a local-life task's ``{"checklist",
"gold_answers", "anchor"}``. The value is the 0–10 score divided by 10.
"""

from __future__ import annotations

from reward_service.registry import register
from reward_service.rewards._local_life import LocalLifeMetric


@register
class PoiFaithfulness(LocalLifeMetric):
    """LocalSearchBench faithfulness, verified against the corpus through the POI tool server."""

    name = "poi_faithfulness"
    metric = "faithfulness"
    description = (
        "0-10 (as 0-1): the share of the answer's claims (cited POIs, ratings, prices) that the "
        "retrieved context and the corpus support"
    )
