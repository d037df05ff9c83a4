"""Assembles the reward service: settings → rewards → scorer → servicer → runtime."""

from __future__ import annotations

import grpc

from reward_service.registry import RewardContext, build_rewards
from reward_service.scorer import Scorer
from reward_service.servicer import RewardServicer
from reward_service.settings import RewardSettings
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc
from rlyard.server import Runtime, ServiceDefinition

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


def build_scorer(settings: RewardSettings) -> tuple[Scorer, RewardContext]:
    """The rewards named in ``settings`` (empty: all) behind a scorer, sharing one context."""
    ctx = RewardContext(settings)
    scorer = Scorer(build_rewards(ctx, settings.rewards or None), settings.batch_concurrency, settings)
    ctx.shared["scorer"] = scorer
    return scorer, ctx


def reward_service(settings: RewardSettings) -> ServiceDefinition:
    """The reward service as a ``ServiceDefinition`` for ``rlyard.server``."""
    scorer, ctx = build_scorer(settings)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(scorer), server)

    async def stop() -> None:
        ctx.shared.pop("scorer", None)
        await ctx.close()

    return ServiceDefinition(name="reward", full_names=[SERVICE_NAME], register=register, on_stop=[stop])


def from_env() -> ServiceDefinition:
    """The reward service configured by ``RLYARD_REWARD_*`` (what ``rlyard serve reward`` runs)."""
    return reward_service(RewardSettings.from_env("RLYARD_REWARD"))
