"""Assembles the reward service: settings → rewards → scorer → servicer → runtime."""

from __future__ import annotations

import grpc

from reward_service.registry import RewardContext, build_rewards
from reward_service.scorer import Scorer
from reward_service.servicer import RewardServicer
from reward_service.settings import RewardSettings
from rlyard.reward.v1 import reward_pb2, reward_pb2_grpc
from rlyard.server import Runtime, ServiceDefinition
from rlyard.tls import PLAINTEXT, ClientSettings

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


def build_scorer(settings: RewardSettings, client: ClientSettings = PLAINTEXT) -> tuple[Scorer, RewardContext]:
    """The rewards named in ``settings`` (empty: all) behind a scorer, sharing one context; they
    call tool servers with ``client``'s TLS and tokens."""
    ctx = RewardContext(settings, client)
    scorer = Scorer(build_rewards(ctx, settings.rewards or None), settings.batch_concurrency, settings)
    ctx.shared["scorer"] = scorer
    return scorer, ctx


def reward_service(settings: RewardSettings, client: ClientSettings = PLAINTEXT) -> ServiceDefinition:
    """The reward service as a ``ServiceDefinition`` for ``rlyard.server``; it calls tool servers
    with ``client``'s TLS and tokens."""
    scorer, ctx = build_scorer(settings, client)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(scorer), server)

    async def stop() -> None:
        ctx.shared.pop("scorer", None)
        await ctx.close()

    return ServiceDefinition(name="reward", full_names=[SERVICE_NAME], register=register, on_stop=[stop])


def from_env() -> ServiceDefinition:
    """The reward service configured by ``RLYARD_REWARD_*`` and, for its calls to tool servers,
    ``RLYARD_CLIENT_*`` (what ``rlyard serve reward`` runs)."""
    return reward_service(RewardSettings.from_env("RLYARD_REWARD"), ClientSettings.from_env("RLYARD_CLIENT"))
