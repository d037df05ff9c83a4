"""The local-life environment: multi-hop questions about merchants, answered with the POI tools."""

from envs.local_life.checklist import check_poi
from envs.local_life.tasks import (
    DETAIL_KINDS,
    HELDOUT_ONLY,
    TEMPLATES,
    CorpusTooSmallError,
    TaskSplit,
    Template,
    generate_split,
)

__all__ = ["DETAIL_KINDS", "HELDOUT_ONLY", "TEMPLATES", "CorpusTooSmallError", "TaskSplit", "Template", "check_poi",
           "generate_split"]
