"""Typed async client of ``rlyard.reward.v1.RewardService`` (deadlines and UNAVAILABLE
retries as every rlyard client, see ``rlyard.client``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlyard.client import _BaseClient
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc


class RewardClient(_BaseClient):
    """Client of the reward service."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)

    async def __aenter__(self) -> RewardClient:
        return self

    async def list_rewards(self, timeout: float | None = None) -> list[reward_pb2.RewardInfo]:
        """The rewards the service offers, with their parameter schemas."""
        resp = await self._unary(self.stub.ListRewards, reward_pb2.ListRewardsRequest(), timeout)
        return list(resp.rewards)

    async def score(self, request: reward_pb2.ScoreRequest, timeout: float | None = None) -> reward_pb2.ScoreResponse:
        """Score one item (its request carries the spec)."""
        return await self._unary(self.stub.Score, request, timeout)

    async def score_batch(
        self,
        items: Sequence[reward_pb2.ScoreRequest],
        default_spec: reward_pb2.RewardSpec | None = None,
        timeout: float | None = None,
    ) -> list[reward_pb2.ScoreResponse]:
        """Score many items; answers come in request order."""
        request = reward_pb2.ScoreBatchRequest(items=list(items))
        if default_spec is not None:
            request.default_spec.CopyFrom(default_spec)
        resp = await self._unary(self.stub.ScoreBatch, request, timeout)
        return list(resp.results)
