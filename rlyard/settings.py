"""Typed settings read from environment variables.

Compose and Kubernetes configure services only through the environment; this
module is the one place that reads ``os.environ``. A ``Settings`` dataclass
lists its fields with defaults; ``from_env(prefix)`` reads ``PREFIX_FIELD``
for each and converts it to the field's type, with an error that names the
variable when a value does not parse.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from rlyard.errors import ConfigError


def _convert(name: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.strip() == "" or raw.strip().lower() == "none":
            return None
        return _convert(name, raw, args[0])
    if origin is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if annotation is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}={raw!r}: expected a boolean (true/false, 1/0)")
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected {annotation.__name__}") from None
    if annotation is Path:
        return Path(raw)
    return raw


class EnvSettings:
    """Mixin for frozen dataclasses that load themselves from the environment."""

    @classmethod
    def from_env(cls, prefix: str, environ: Mapping[str, str] | None = None) -> Self:
        """Build from ``{prefix}_{FIELD}`` variables; unset ones keep their default."""
        env = os.environ if environ is None else environ
        cls.check_environ(env)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            var = f"{prefix}_{field.name.upper()}"
            if var in env:
                values[field.name] = _convert(var, env[var], hints[field.name])
        return cls(**values)

    def replaced(self, values: Mapping[str, Any], where: str) -> Self:
        """A copy with the fields in ``values`` replaced (e.g. from a YAML config): an unknown name
        is a ConfigError listing the fields; strings convert as from the environment."""
        hints = typing.get_type_hints(type(self))
        known = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        converted = {key: _convert(f"{where}.{key}", value, hints[key]) if isinstance(value, str) else value
                     for key, value in values.items()}
        for key, value in converted.items():
            if isinstance(value, list):
                converted[key] = tuple(value)
        try:
            return dataclasses.replace(self, **converted)  # type: ignore[type-var]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def check_environ(cls, environ: Mapping[str, str]) -> None:
        """Refuse variables that mean something else now (a subclass names them); nothing here."""

    def to_env(self, prefix: str) -> dict[str, str]:
        """The inverse of ``from_env`` for every field (used by the launcher)."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is None:
                text = ""
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            out[f"{prefix}_{field.name.upper()}"] = text
        return out


@dataclasses.dataclass(frozen=True)
class ServerSettings(EnvSettings):
    """What every gRPC service shares (prefix ``RLYARD``)."""

    host: str = "127.0.0.1"
    port: int = 0                       # 0 = pick a free port (reported in the ready file)
    metrics_port: int | None = None     # Prometheus /metrics over HTTP; None = off, 0 = any
    max_concurrent_rpcs: int = 512      # in-flight calls before RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 5.0                # drain time on SIGTERM
    log_level: str = "INFO"
    ready_file: Path | None = None      # written with the bound ports once serving
    auth_token: str | None = None       # when set, calls must send "authorization: Bearer <token>"
    # TLS (rlyard/tls.py): a certificate and key make the port a TLS port; with require_client_cert
    # clients must show a certificate signed by tls_client_ca (mutual TLS)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.max_concurrent_rpcs < 1:
            raise ConfigError("RLYARD_MAX_CONCURRENT_RPCS must be >= 1")
        if self.max_message_bytes < 1024:
            raise ConfigError("RLYARD_MAX_MESSAGE_BYTES must be >= 1024 (bytes)")
        if self.grace_s < 0:
            raise ConfigError("RLYARD_GRACE_S must be >= 0 seconds")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("RLYARD_TLS_CERT and RLYARD_TLS_KEY: set both (a TLS port), or neither (plaintext)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("RLYARD_TLS_CLIENT_CA is set but RLYARD_TLS_CERT is not: mutual TLS needs the "
                              "server's own certificate and key too")
        if self.tls_require_client_cert and self.tls_client_ca is None:
            raise ConfigError("RLYARD_TLS_REQUIRE_CLIENT_CERT needs RLYARD_TLS_CLIENT_CA (the CA that signs "
                              "client certificates)")

    @property
    def tls(self) -> bool:
        """Whether the port speaks TLS."""
        return self.tls_cert is not None
