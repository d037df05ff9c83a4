"""TLS and bearer tokens of the connections between services.

A server speaks TLS when ``RLYARD_TLS_CERT`` and ``RLYARD_TLS_KEY`` are set (``ServerSettings``),
and asks clients for a certificate signed by ``RLYARD_TLS_CLIENT_CA`` (mutual TLS) when
``RLYARD_TLS_REQUIRE_CLIENT_CERT`` is true. A process that calls services reads
``ClientSettings`` (prefix ``RLYARD_CLIENT``): the CA it trusts, its own certificate for mutual
TLS, and the token it sends to each target — its own token per target service, else the shared one.
``rlyard certs`` makes a local CA, certificates and tokens (docs/deployment.md, "TLS and tokens").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings


def read_pem(path: Path, what: str) -> bytes:
    """The bytes of a PEM file; a ConfigError naming the setting when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ClientTLS:
    """How a client dials TLS: the CA that signed the servers' certificates (None: the system's
    roots), its own certificate and key for mutual TLS, and the name to check the server's
    certificate against when it is not the target's host (e.g. a pod IP behind a headless Service)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("client TLS: set both the certificate and its key (RLYARD_CLIENT_TLS_CERT and "
                              "RLYARD_CLIENT_TLS_KEY), or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files (read now, so a missing file fails at once)."""
        ca = read_pem(self.ca_file, "RLYARD_CLIENT_TLS_CA") if self.ca_file else None
        key = read_pem(self.key_file, "RLYARD_CLIENT_TLS_KEY") if self.key_file else None
        cert = read_pem(self.cert_file, "RLYARD_CLIENT_TLS_CERT") if self.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        """The server-name override, when one is set."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def server_credentials(cert_file: Path, key_file: Path, client_ca: Path | None,
                       require_client_cert: bool) -> grpc.ServerCredentials:
    """Server credentials: the certificate and key, and (mutual TLS) the CA of client certificates."""
    cert = read_pem(cert_file, "RLYARD_TLS_CERT")
    key = read_pem(key_file, "RLYARD_TLS_KEY")
    ca = read_pem(client_ca, "RLYARD_TLS_CLIENT_CA") if client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_cert)


def target_host(target: str) -> str:
    """The host of ``host:port`` (``[v6]:port`` too; a target without a port is all host; a scheme
    such as ``routed:///`` or ``dns:///`` before it is dropped)."""
    target = target.split(":///", 1)[-1]
    if target.startswith("["):
        return target[1:].split("]", 1)[0]
    host, sep, port = target.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else target


@dataclass(frozen=True)
class ClientSettings(EnvSettings):
    """How this process calls other services (prefix ``RLYARD_CLIENT``).

    TLS is on when ``tls`` is true or ``tls_ca`` is set (without a CA file the system's roots are
    trusted). ``auth_tokens``: ``name=token`` entries, ``name`` being a target's host (a service
    name such as ``sql-tools``) or the whole ``host:port``; a target with no entry gets
    ``auth_token`` (none: no token is sent).
    """

    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None          # this process's certificate, for servers that require one
    tls_key: Path | None = None
    tls_server_name: str = ""             # check servers' certificates against this name instead
    auth_token: str | None = None
    auth_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.tokens()        # a malformed entry fails now, not at the first call
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("RLYARD_CLIENT_TLS_CERT and RLYARD_CLIENT_TLS_KEY: set both, or neither")
        if self.tls_cert is not None and not self.tls_enabled:
            raise ConfigError("RLYARD_CLIENT_TLS_CERT is set but TLS is off: set RLYARD_CLIENT_TLS_CA (or "
                              "RLYARD_CLIENT_TLS=true)")

    @property
    def tls_enabled(self) -> bool:
        """Whether channels are TLS."""
        return self.tls or self.tls_ca is not None

    def channel_tls(self) -> ClientTLS | None:
        """The TLS of this process's channels (None: plaintext)."""
        if not self.tls_enabled:
            return None
        return ClientTLS(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name)

    def tokens(self) -> dict[str, str]:
        """``auth_tokens`` as {name: token}."""
        out: dict[str, str] = {}
        for entry in self.auth_tokens:
            name, sep, token = entry.partition("=")
            if not sep or not name.strip() or not token.strip():
                raise ConfigError(f"RLYARD_CLIENT_AUTH_TOKENS: an entry is not name=token (e.g. "
                                  f"sql-tools=s3cret): {name.strip()[:64]!r}{'=…' if sep else ''}")
            out[name.strip()] = token.strip()
        return out

    def token_for(self, target: str) -> str | None:
        """The token to send to ``target``: its own (by ``host:port``, then host), else the shared one."""
        tokens = self.tokens()
        return tokens.get(target) or tokens.get(target_host(target)) or self.auth_token


PLAINTEXT = ClientSettings()
