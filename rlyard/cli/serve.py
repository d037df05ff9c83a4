"""``rlyard serve KIND``: run one service in the foreground, configured from the
environment. The launcher, Compose and Kubernetes all start services this way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from rlyard.errors import ConfigError
from rlyard.server import ServiceDefinition, serve
from rlyard.settings import ServerSettings


def _tools() -> ServiceDefinition:
    from tool_servers.app import tool_service
    from tool_servers.settings import ToolServerSettings

    return tool_service(ToolServerSettings.from_env("RLYARD_TOOLS"))


def _reward() -> ServiceDefinition:
    from reward_service.app import reward_service
    from reward_service.settings import RewardSettings

    return reward_service(RewardSettings.from_env("RLYARD_REWARD"))


def _trainer() -> ServiceDefinition:
    from trainer.service import trainer_service
    from trainer.settings import TrainerSettings

    return trainer_service(TrainerSettings.from_env("RLYARD_TRAINER").runs_dir)


# kind -> factory of its ServiceDefinition (a later issue adds memory)
FACTORIES: dict[str, Callable[[], ServiceDefinition]] = {"tools": _tools, "reward": _reward, "trainer": _trainer}


def configure_logging(level: str) -> None:
    """Log lines with time, level and logger name, once per process."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run_service(kind: str) -> None:
    """Build the service ``kind`` from the environment and serve until SIGTERM."""
    settings = ServerSettings.from_env("RLYARD")
    configure_logging(settings.log_level)
    if kind not in FACTORIES:
        raise ConfigError(f"unknown service kind {kind!r}; known: {', '.join(sorted(FACTORIES))}")
    definition = FACTORIES[kind]()
    asyncio.run(serve(definition, settings))
