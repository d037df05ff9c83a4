"""Typed async client of ``rlyard.reward.v1.RewardService``: domain records in and out
(deadlines and UNAVAILABLE retries as every rlyard client, see ``rlyard.client``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlyard.client import _BaseClient
from rlyard.domain import RewardSpec, ScoreResult, ScoringItem
from rlyard.domain.convert import batch_request_to_pb, batch_results_from_pb, item_to_pb, score_from_pb
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc


@dataclass(frozen=True)
class RewardInfo:
    """A reward the service offers: its kind (rule, tool_verification, model_judge, composite)
    and the JSON Schema of its parameters."""

    name: str
    description: str
    kind: str
    params_schema: dict[str, Any]


class RewardClient(_BaseClient):
    """Client of the reward service."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self._packed_items = True   # False once the server showed it predates PackedItems

    async def __aenter__(self) -> RewardClient:
        return self

    async def list_rewards(self, timeout: float | None = None) -> list[RewardInfo]:
        """The rewards the service offers, with their parameter schemas."""
        resp = await self._unary(self.stub.ListRewards, reward_pb2.ListRewardsRequest(), timeout)
        return [
            RewardInfo(r.name, r.description, reward_pb2.RewardKind.Name(r.kind).removeprefix("REWARD_KIND_").lower(),
                       json.loads(r.params_json_schema or "{}"))
            for r in resp.rewards
        ]

    async def score(self, item: ScoringItem, spec: RewardSpec, timeout: float | None = None) -> ScoreResult:
        """Score one item under ``spec``."""
        return score_from_pb(await self._unary(self.stub.Score, item_to_pb(item, spec), timeout))

    async def score_batch(
        self,
        items: Sequence[ScoringItem],
        spec: RewardSpec,
        timeout: float | None = None,
    ) -> list[ScoreResult]:
        """Score many items under one spec; answers come in request order. Items without a
        trajectory travel in the packed form, and results come packed when they fit (the same
        results either way); a server older than the packed form answers a packed batch with no
        results, and then gets the batch again, and every later one, as ``items``."""
        request = batch_request_to_pb(items, spec, packed=self._packed_items)
        resp = await self._unary(self.stub.ScoreBatch, request, timeout)
        if request.HasField("packed_items") and not resp.results and not resp.HasField("packed"):
            self._packed_items = False
            request = batch_request_to_pb(items, spec, packed=False)
            resp = await self._unary(self.stub.ScoreBatch, request, timeout)
        return batch_results_from_pb(resp, [i.item_id for i in items])
