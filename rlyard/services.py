"""The service table (``configs/services.yaml``) as typed records.

The launcher, the Compose file and the Kubernetes manifests all come from this
table, so they start the same command with the same environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlyard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TABLE = ROOT / "configs" / "services.yaml"


@dataclass(frozen=True)
class Resources:
    """Kubernetes resource requests and the memory limit."""

    cpu: str = "250m"
    memory: str = "256Mi"
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the deployment."""

    name: str
    kind: str
    port: int
    metrics_port: int
    profiles: tuple[str, ...] = ("all",)
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()

    @property
    def command(self) -> list[str]:
        """The command every deployment runs."""
        return ["rlyard", "serve", self.kind]

    def runtime_env(self, host: str, port: int, metrics_port: int | None) -> dict[str, str]:
        """The complete environment of one instance."""
        env = {
            "RLYARD_HOST": host,
            "RLYARD_PORT": str(port),
            "RLYARD_METRICS_PORT": "" if metrics_port is None else str(metrics_port),
        }
        env.update(self.env)
        return env


@dataclass(frozen=True)
class ServiceTable:
    """Every service, and the image that runs them in containers."""

    image: str
    services: tuple[ServiceSpec, ...]

    def profile(self, name: str) -> list[ServiceSpec]:
        """The services of a profile; a ConfigError names the known profiles."""
        chosen = [s for s in self.services if name in s.profiles]
        if not chosen:
            known = sorted({p for s in self.services for p in s.profiles})
            raise ConfigError(f"no services in profile {name!r}; known profiles: {', '.join(known)}")
        return chosen

    def get(self, name: str) -> ServiceSpec:
        """A service by name."""
        for s in self.services:
            if s.name == name:
                return s
        raise ConfigError(f"no service {name!r}; known: {', '.join(s.name for s in self.services)}")


def _spec(raw: dict[str, Any]) -> ServiceSpec:
    try:
        return ServiceSpec(
            name=str(raw["name"]),
            kind=str(raw["kind"]),
            port=int(raw["port"]),
            metrics_port=int(raw["metrics_port"]),
            profiles=tuple(raw.get("profiles", ["all"])),
            replicas=int(raw.get("replicas", 1)),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            resources=Resources(**(raw.get("resources") or {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad service entry {raw!r} in the service table: {exc}") from None


def load_table(path: Path = DEFAULT_TABLE) -> ServiceTable:
    """Read and check the service table."""
    data = yaml.safe_load(path.read_text())
    services = tuple(_spec(s) for s in data.get("services", []))
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: service names must be unique, got {names}")
    ports = [p for s in services for p in (s.port, s.metrics_port)]
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{path}: every port and metrics_port must be unique, got {ports}")
    return ServiceTable(image=str(data["image"]), services=services)
