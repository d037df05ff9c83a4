"""``rlyard serve KIND``: run one service in the foreground, configured from the
environment. The launcher, Compose and Kubernetes all start services this way."""

from __future__ import annotations

from collections.abc import Callable

from rlyard.errors import ConfigError
from rlyard.server import ServiceDefinition, main


def _tools() -> ServiceDefinition:
    from tool_servers.app import from_env

    return from_env()


def _reward() -> ServiceDefinition:
    from reward_service.app import from_env

    return from_env()


def _memory() -> ServiceDefinition:
    from memory_service.app import from_env

    return from_env()


def _trainer() -> ServiceDefinition:
    from trainer.service import from_env

    return from_env()


def _sampler() -> ServiceDefinition:
    from trainer.sampler.service import from_env

    return from_env()


# kind -> factory of its ServiceDefinition
FACTORIES: dict[str, Callable[[], ServiceDefinition]] = {"tools": _tools, "reward": _reward, "memory": _memory,
                                                         "trainer": _trainer, "sampler": _sampler}


def run_service(kind: str) -> None:
    """Build the service ``kind`` from the environment and serve until SIGTERM."""
    if kind not in FACTORIES:
        raise ConfigError(f"unknown service kind {kind!r}; known: {', '.join(sorted(FACTORIES))}")
    main(FACTORIES[kind])
