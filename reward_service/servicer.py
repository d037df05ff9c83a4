"""``RewardServicer``: translates ``rlyard.reward.v1`` protobuf to the scorer and back."""

from __future__ import annotations

import json

from reward_service.scorer import Scorer
from reward_service.types import RewardKindName
from rlyard.domain.convert import batch_from_pb, batch_to_pb, item_from_pb, score_to_pb, spec_from_pb
from rlyard.errors import InvalidArgument
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc

_KIND_PB = {
    RewardKindName.RULE: reward_pb2.REWARD_KIND_RULE,
    RewardKindName.TOOL_VERIFICATION: reward_pb2.REWARD_KIND_TOOL_VERIFICATION,
    RewardKindName.MODEL_JUDGE: reward_pb2.REWARD_KIND_MODEL_JUDGE,
    RewardKindName.COMPOSITE: reward_pb2.REWARD_KIND_COMPOSITE,
}


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """The gRPC face of a ``Scorer``."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def ListRewards(
        self, request: reward_pb2.ListRewardsRequest, context: object
    ) -> reward_pb2.ListRewardsResponse:
        return reward_pb2.ListRewardsResponse(
            rewards=[
                reward_pb2.RewardInfo(
                    name=r.name,
                    description=r.description,
                    kind=_KIND_PB[r.kind],
                    params_json_schema=json.dumps(r.Params.model_json_schema()),
                )
                for r in self.scorer.rewards.values()
            ]
        )

    async def Score(self, request: reward_pb2.ScoreRequest, context: object) -> reward_pb2.ScoreResponse:
        if not request.spec.terms:
            raise InvalidArgument("the request's spec names no reward")
        result = await self.scorer.score(item_from_pb(request), spec_from_pb(request.spec))
        return score_to_pb(result)

    async def ScoreBatch(
        self, request: reward_pb2.ScoreBatchRequest, context: object
    ) -> reward_pb2.ScoreBatchResponse:
        return batch_to_pb(await self.scorer.score_batch(batch_from_pb(request)), request.packed_results)
