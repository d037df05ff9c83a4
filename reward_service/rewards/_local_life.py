"""What the three local-life metric rewards share: reading the ground truth, the retrieved
context of a trajectory, and POI records through the POI tool server's ``poi_detail``.

The rewards see the corpus exactly as the agent's tools do: records come from ``poi_detail`` on
``RLYARD_REWARD_POI_TOOLS_TARGET`` (or a spec's ``tool_server``, one the service is configured
with or allowed: ``RLYARD_REWARD_ALLOWED_TOOL_TARGETS``), never from a file of the reward
service's own. Records are cached per (server, poi_id) in an LRU (the corpus of a running server
does not change); an id the server does not know is cached as absent.

Failures that are not the model's: the POI tool server unreachable, past its deadline, or a
result carrying ``system_error`` → ``RewardSystemError`` (the trajectory is dropped, never scored
0); a ground truth without a checklist or gold answers → ``RewardInputError``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from pydantic import BaseModel, ConfigDict, Field

from reward_service.local_life.metrics import Scores, ids_in, parse_answer, score_answer
from reward_service.registry import RewardContext, check_tool_server
from reward_service.rewards._lru import AsyncLru
from reward_service.types import RewardInputError, RewardKindName, RewardOutcome, RewardSystemError
from rlyard.domain import ScoringItem, Trajectory

CACHE_KEY = "local_life.records"
CACHE_SIZE = 20_000
DETAIL_TOOL = "poi_detail"


class LocalLifeParams(BaseModel):
    """Parameters of the local-life metric rewards."""

    model_config = ConfigDict(extra="forbid")

    tool_server: str | None = Field(default=None, description="the POI tool server (default: the service's "
                                                                "RLYARD_REWARD_POI_TOOLS_TARGET)")


@dataclass(frozen=True)
class GroundTruth:
    """What the metrics need of a local-life task."""

    checklist: list[dict[str, Any]]
    gold_answers: list[str]
    anchor_id: str | None


def parse_ground_truth(gt: Any) -> GroundTruth:
    """The checklist, gold answers and anchor id; RewardInputError says what is missing."""
    if not isinstance(gt, Mapping):
        raise RewardInputError('local-life metrics need ground_truth {"checklist": [...], "gold_answers": [...], '
                               '"anchor": {"poi_id": ...} | null}')
    checklist, gold = gt.get("checklist"), gt.get("gold_answers")
    if not isinstance(checklist, list) or not all(isinstance(i, dict) and "kind" in i for i in checklist):
        raise RewardInputError("ground_truth.checklist must be a list of items {\"kind\": ..., ...}")
    if not isinstance(gold, list) or not gold:
        raise RewardInputError("ground_truth.gold_answers must be a non-empty list of poi_ids")
    anchor = gt.get("anchor")
    anchor_id = str(anchor["poi_id"]) if isinstance(anchor, Mapping) and anchor.get("poi_id") else None
    needs_anchor = any("anchor" in i or "above_anchor" in i or "below_anchor" in i for i in checklist)
    if needs_anchor and anchor_id is None:
        raise RewardInputError("the checklist compares with an anchor POI, but ground_truth.anchor.poi_id is missing")
    return GroundTruth([dict(i) for i in checklist], [str(g) for g in gold], anchor_id)


def retrieved_ids(trajectory: Trajectory | None) -> set[str]:
    """The poi_ids the tools showed the agent: ids in the results of calls that did not fail, and,
    when the tool turn keeps the observation as the agent saw it, only those still in it (a cap
    may have cut the rest)."""
    if trajectory is None:
        return set()
    seen: set[str] = set()
    for turn in trajectory.turns:
        if turn.role != "tool":
            continue
        shown = ids_in(r.text for r in turn.tool_results if not r.is_error and not r.system_error_code)
        if turn.text:
            shown &= ids_in([turn.text])
        seen |= shown
    return seen


async def _fetch(ctx: RewardContext, target: str, poi_id: str) -> dict[str, Any] | None:
    client = ctx.tool_client(target)
    try:
        result = await client.call_tool(DETAIL_TOOL, {"poi_id": poi_id})
    except grpc.aio.AioRpcError as exc:
        raise RewardSystemError(f"POI tool server {client.target} failed on {DETAIL_TOOL}({poi_id}): "
                                f"{exc.code().name}: {exc.details()}") from None
    if result.system_error is not None:
        raise RewardSystemError(f"POI tool server {client.target}: {DETAIL_TOOL}({poi_id}): "
                                f"{result.system_error.message}")
    if result.is_error:
        return None
    record = result.structured
    if not isinstance(record, dict) or record.get("poi_id") != poi_id:
        raise RewardSystemError(f"POI tool server {client.target}: {DETAIL_TOOL}({poi_id}) returned no record; "
                                "is it a local-life tool server (RLYARD_TOOLS_TOOLS with poi_detail)?")
    return record


RecordCache = AsyncLru[tuple[str, str], dict[str, Any] | None]     # (server, poi_id) -> record or None


def record_cache(ctx: RewardContext) -> RecordCache:
    """The service-wide record cache in ``ctx.shared``."""
    cache = ctx.shared.get(CACHE_KEY)
    if not isinstance(cache, AsyncLru):
        cache = ctx.shared[CACHE_KEY] = AsyncLru(CACHE_SIZE)
    return cache


async def score_item(ctx: RewardContext, item: ScoringItem, params: LocalLifeParams) -> Scores:
    """The three metrics of one item (records read through ``poi_detail``)."""
    gt = parse_ground_truth(item.ground_truth)
    target = params.tool_server or ctx.settings.poi_tools_target
    # The final answer only: a trajectory that never answered cites nothing, whatever ids its tool
    # calls carried (item.text would fall back to everything the policy generated).
    answer = item.prediction or (item.trajectory.final_answer if item.trajectory is not None else "")
    ids = [r.poi_id for r in parse_answer(answer)]
    wanted = ids + ([gt.anchor_id] if gt.anchor_id and gt.anchor_id not in ids else [])
    cache = record_cache(ctx)
    got = await asyncio.gather(*(cache.get((target, i), functools.partial(_fetch, ctx, target, i)) for i in wanted))
    records = dict(zip(wanted, got, strict=True))
    anchor = records.get(gt.anchor_id) if gt.anchor_id else None
    if gt.anchor_id and anchor is None:
        raise RewardInputError(f"the task's anchor {gt.anchor_id} is not in the corpus of {target}: "
                               "the task was generated from another corpus")
    try:
        return score_answer(answer, retrieved_ids(item.trajectory), records, gt.checklist,
                            n_gold=len(gt.gold_answers), anchor_record=anchor)
    except (ValueError, KeyError) as exc:
        raise RewardInputError(f"the checklist cannot be checked: {exc}") from None


class LocalLifeMetric:
    """The shared body of ``poi_correctness``, ``poi_completeness`` and ``poi_faithfulness``: each
    plug-in names its ``metric``; the value is 0/1 for correctness and the 0–10 score / 10 otherwise,
    and the explanation gives all three metrics and what lowered them."""

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str]
    kind = RewardKindName.TOOL_VERIFICATION
    Params = LocalLifeParams

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def check_params(self, params: LocalLifeParams) -> None:
        """A spec may name only a configured or allowed tool server (the service dials it)."""
        check_tool_server(params.tool_server, self.ctx.settings)

    async def score(self, item: ScoringItem, params: LocalLifeParams) -> RewardOutcome:
        """Score the final answer against the checklist and the trajectory's retrieved context."""
        scores = await score_item(self.ctx, item, params)
        value = float(scores.correctness) if self.metric == "correctness" else getattr(scores, self.metric) / 10.0
        return RewardOutcome(value=value, explanation=scores.explain())
