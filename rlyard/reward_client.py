"""Typed async client of ``rlyard.reward.v1.RewardService``: domain records in and out
(deadlines and UNAVAILABLE retries as every rlyard client, see ``rlyard.client``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlyard.client import _BaseClient
from rlyard.domain import RewardSpec, ScoreResult, ScoringItem
from rlyard.domain.convert import item_to_pb, score_from_pb, spec_to_pb
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
        """Score many items under one spec; answers come in request order."""
        request = reward_pb2.ScoreBatchRequest(items=[item_to_pb(i) for i in items], default_spec=spec_to_pb(spec))
        resp = await self._unary(self.stub.ScoreBatch, request, timeout)
        return [score_from_pb(r) for r in resp.results]
