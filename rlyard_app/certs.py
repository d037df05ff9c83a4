"""``rlyard certs``: a local CA, the services' TLS certificates and their tokens.

Writes, under one directory (``secrets/`` by default, which git ignores):

    tls/ca.pem, tls/ca-key.pem          the CA (keep its key off the cluster)
    tls/server.pem, tls/server-key.pem  one server certificate for every service: its SANs are the
                                        service names of the table, localhost and 127.0.0.1
    tls/client.pem, tls/client-key.pem  the client certificate services and the CLI show (mutual TLS)
    tokens/<service>.env                RLYARD_AUTH_TOKEN (the service's own token) and
                                        RLYARD_CLIENT_AUTH_TOKENS (the tokens of what it calls)
    tokens/<worker>.env                 the workers' RLYARD_CLIENT_AUTH_TOKENS (every service's: a job
                                        may name any; they serve nothing, so no token of their own)
    client.env                          what a process on the host needs to call the services
                                        (``set -a; . secrets/client.env; set +a``)
    backing/<store>-password            a random password per backing store with ``password_env``
                                        (PostgreSQL reads it through POSTGRES_PASSWORD_FILE)
    backing/<store>.conf, <store>.env   Redis (``requirepass``): ``requirepass <password>``, which
                                        redis-server loads, and REDISCLI_AUTH for its probe
    k8s-secrets.yaml                    the same as Kubernetes Secrets (``kubectl apply -f``)

The stores' users get their URLs with the password in their token files (``secret_urls``: the
memory's RLYARD_MEMORY_DB_URL, the workers' and the trainer's RLYARD_WORKERS_BROKER_URL).
Keys, tokens and passwords are written mode 0600. Nothing is overwritten without ``force``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlyard.errors import ConfigError
from rlyard.tls import ClientTLS
from rlyard_app.deploy import (
    BACKING_DIR,
    NAMESPACE,
    PROBE_AUTH,
    PROJECT,
    TLS_FILES,
    TLS_SECRET,
    credentials_secret,
    headless_name,
    password_store,
    routes_sessions,
    secret_urls,
    store_secret_file,
    tokens_secret,
    with_password,
)
from rlyard_app.services import BackingService, ServiceSpec, ServiceTable, WorkerSpec

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - the extra is missing
    x509 = None  # type: ignore[assignment]

# Service kinds that call every other service (the trainer drives tools, rewards and memory).
CALLS_EVERYTHING = ("trainer", "worker")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Written:
    """A file ``rlyard certs`` wrote, and what it is."""

    path: Path
    what: str


def _require_cryptography() -> None:
    if x509 is None:
        raise ConfigError("rlyard certs needs the cryptography package: pip install 'rlyard[tls]'")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rlyard"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, days: int, *, ca: bool = False,
                 names: Sequence[str] = (), usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
            content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def server_names(table: ServiceTable) -> list[str]:
    """The server certificate's SANs: every service name of the table, the headless Service names
    of the tool services (clients routing sessions dial pod IPs and check that name), then the
    loopback names."""
    return [*(s.name for s in table.services), *(headless_name(s) for s in table.services if routes_sessions(s)),
            *LOOPBACK]


def _token_names(spec: ServiceSpec) -> list[str]:
    """The names a client finds ``spec``'s token by: its service name, and for a tool service the
    headless name of its routed target (``routed:///<name>-headless:<port>`` in Kubernetes)."""
    return [spec.name, headless_name(spec)] if routes_sessions(spec) else [spec.name]


def make_tls(names: Sequence[str], days: int = 365) -> dict[str, bytes]:
    """A fresh CA, a server certificate for ``names`` and a client certificate, as PEM by file name
    (the keys of ``TLS_FILES`` and ``ca-key.pem``)."""
    _require_cryptography()
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca_name = _name("rlyard local CA")
    ca = _certificate("rlyard local CA", ca_key, ca_name, ca_key, days, ca=True)
    server = _certificate(names[0] if names else "rlyard", server_key, ca_name, ca_key, days,
                          names=names, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _certificate("rlyard-client", client_key, ca_name, ca_key, days,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return {"ca.pem": _cert_pem(ca), "ca-key.pem": _key_pem(ca_key),
            "server.pem": _cert_pem(server), "server-key.pem": _key_pem(server_key),
            "client.pem": _cert_pem(client), "client-key.pem": _key_pem(client_key)}


def callees(table: ServiceTable, spec: ServiceSpec) -> list[ServiceSpec]:
    """The services ``spec`` calls: every other one for a trainer or worker, else what it depends
    on or wants."""
    if spec.kind in CALLS_EVERYTHING:
        return [s for s in table.services if s.name != spec.name]
    wanted = {*spec.depends_on, *spec.wants}
    return [s for s in table.services if s.name in wanted]


def make_tokens(table: ServiceTable) -> dict[str, str]:
    """A random token per service of the table."""
    return {s.name: secrets.token_urlsafe(32) for s in table.services}


def make_passwords(table: ServiceTable) -> dict[str, str]:
    """A random password per backing store that takes one (URL-safe: it goes into URLs as it is)."""
    return {b.name: secrets.token_urlsafe(32) for b in table.backing if b.has_password}


def url_env(table: ServiceTable, spec: ServiceSpec | WorkerSpec, passwords: dict[str, str]) -> dict[str, str]:
    """A container's store URLs (``secret_urls``) with the stores' passwords in them."""
    env = {}
    for key, url in secret_urls(table, spec).items():
        store = password_store(table, url)
        if store is not None:     # always: secret_urls holds only such URLs
            env[key] = with_password(url, passwords[store.name])
    return env


def store_files(store: BackingService, password: str) -> dict[str, str]:
    """A store's secret files by name: its password file or Redis config, and for Redis the env
    file of its probe."""
    if store.requirepass:
        return {store_secret_file(store): f"requirepass {password}\n",
                f"{store.name}.env": _env_text(f"the password of {store.name}'s probe (rlyard certs)",
                                               {PROBE_AUTH: password})}
    return {store_secret_file(store): password}


def service_token_env(table: ServiceTable, spec: ServiceSpec, tokens: dict[str, str]) -> dict[str, str]:
    """A service's token variables: its own token, and one per service it calls (by service name)."""
    return {"RLYARD_AUTH_TOKEN": tokens[spec.name],
            "RLYARD_CLIENT_AUTH_TOKENS": ",".join(f"{n}={tokens[s.name]}" for s in callees(table, spec)
                                                  for n in _token_names(s))}


def worker_token_env(table: ServiceTable, tokens: dict[str, str]) -> dict[str, str]:
    """A worker's token variable: every service's token (by name), as the trainer has them: the jobs
    it takes may name any service. A worker serves nothing, so it has no token of its own."""
    return {"RLYARD_CLIENT_AUTH_TOKENS": ",".join(f"{n}={tokens[s.name]}" for s in table.services
                                                  for n in _token_names(s))}


def client_env(table: ServiceTable, tokens: dict[str, str], tls_dir: Path) -> dict[str, str]:
    """What a process on the host needs to call every service: TLS from ``tls_dir``, and each
    service's token by name and by its published loopback address."""
    entries = [f"{n}={tokens[s.name]}" for s in table.services for n in _token_names(s)]
    entries += [f"127.0.0.1:{s.port}={tokens[s.name]}" for s in table.services]
    return {"RLYARD_CLIENT_TLS_CA": str(tls_dir / "ca.pem"),
            "RLYARD_CLIENT_TLS_CERT": str(tls_dir / "client.pem"),
            "RLYARD_CLIENT_TLS_KEY": str(tls_dir / "client-key.pem"),
            "RLYARD_CLIENT_AUTH_TOKENS": ",".join(entries)}


def launcher_tls(out: Path) -> tuple[dict[str, str], ClientTLS]:
    """``rlyard up --tls DIR``: the environment that makes every service serve mutual TLS with the
    certificates under ``DIR/tls`` and dial its peers with them, and how the launcher dials health."""
    tls_dir = out.resolve() / "tls"
    missing = [n for n in TLS_FILES if not (tls_dir / n).is_file()]
    if missing:
        raise ConfigError(f"{tls_dir} lacks {', '.join(missing)}: make them with `rlyard certs --out {out}`")
    ca, cert, key = tls_dir / "ca.pem", tls_dir / "client.pem", tls_dir / "client-key.pem"
    env = {"RLYARD_TLS_CERT": str(tls_dir / "server.pem"), "RLYARD_TLS_KEY": str(tls_dir / "server-key.pem"),
           "RLYARD_TLS_CLIENT_CA": str(ca), "RLYARD_TLS_REQUIRE_CLIENT_CERT": "true",
           "RLYARD_CLIENT_TLS_CA": str(ca), "RLYARD_CLIENT_TLS_CERT": str(cert), "RLYARD_CLIENT_TLS_KEY": str(key)}
    return env, ClientTLS(ca, cert, key)


def _env_text(header: str, env: dict[str, str]) -> str:
    return f"# {header}\n" + "".join(f"{k}={v}\n" for k, v in env.items())


def k8s_secrets(table: ServiceTable, pems: dict[str, bytes], tokens: dict[str, str],
                namespace: str, passwords: dict[str, str]) -> list[dict[str, object]]:
    """The TLS Secret (without the CA's key), each service's and each worker's token Secret (with
    its store URLs, ``url_env``), and each store's credentials Secret."""
    labels = {"app.kubernetes.io/part-of": PROJECT}
    docs: list[dict[str, object]] = [{
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": TLS_SECRET, "namespace": namespace, "labels": labels},
        "data": {key: base64.b64encode(pems[name]).decode() for name, key in TLS_FILES.items()},
    }]
    for spec in table.services:
        docs.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": tokens_secret(spec), "namespace": namespace, "labels": labels},
            "stringData": service_token_env(table, spec, tokens) | url_env(table, spec, passwords),
        })
    for worker in table.workers:
        docs.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": tokens_secret(worker), "namespace": namespace, "labels": labels},
            "stringData": worker_token_env(table, tokens) | url_env(table, worker, passwords),
        })
    for store in (b for b in table.backing if b.has_password):
        data = {store_secret_file(store): store_files(store, passwords[store.name])[store_secret_file(store)]}
        if store.requirepass:
            data[PROBE_AUTH] = passwords[store.name]
        docs.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": credentials_secret(store), "namespace": namespace, "labels": labels},
            "stringData": data,
        })
    return docs


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)   # an existing file keeps its mode through os.open


def write_certs(table: ServiceTable, out: Path, *, days: int = 365, force: bool = False,
                namespace: str = NAMESPACE) -> list[Written]:
    """Make the CA, certificates and tokens of ``table`` under ``out`` (see the module docstring).

    Raises:
        ConfigError: a file it would write exists and ``force`` is false (nothing is written), or
            the cryptography package is missing.
    """
    _require_cryptography()
    pems = make_tls(server_names(table), days)
    tokens = make_tokens(table)
    passwords = make_passwords(table)
    tls_dir = out / "tls"
    files: list[tuple[Written, bytes, bool]] = []
    what = {"ca.pem": "CA certificate", "ca-key.pem": "CA key (keep it off the cluster)",
            "server.pem": f"server certificate ({', '.join(server_names(table))})",
            "server-key.pem": "server key", "client.pem": "client certificate (mutual TLS)",
            "client-key.pem": "client key"}
    for name, pem in pems.items():
        files.append((Written(tls_dir / name, what[name]), pem, name.endswith("-key.pem")))
    for spec in table.services:
        env = service_token_env(table, spec, tokens) | url_env(table, spec, passwords)
        callee_names = ", ".join(s.name for s in callees(table, spec)) or "none"
        text = _env_text(f"tokens of {spec.name} (rlyard certs): its own, and those of what it calls", env)
        files.append((Written(out / "tokens" / f"{spec.name}.env",
                              f"{spec.name}'s token and its callees' ({callee_names})"), text.encode(), True))
    for worker in table.workers:
        text = _env_text(f"tokens of the {worker.name}s (rlyard certs): those of every service",
                         worker_token_env(table, tokens) | url_env(table, worker, passwords))
        files.append((Written(out / "tokens" / f"{worker.name}.env", f"the {worker.name}s' tokens of every service"),
                      text.encode(), True))
    for store in (b for b in table.backing if b.has_password):
        for name, text in store_files(store, passwords[store.name]).items():
            label = (f"{store.name}'s password for its probe" if name.endswith(".env") else
                     f"{store.name}'s config (requirepass)" if store.requirepass else f"{store.name}'s password")
            files.append((Written(out / BACKING_DIR / name, label), text.encode(), True))
    host_env = client_env(table, tokens, tls_dir.resolve())
    files.append((Written(out / "client.env", "TLS and tokens for clients on this host"),
                  _env_text("set -a; . client.env; set +a  (rlyard certs)", host_env).encode(), True))
    manifest = yaml.safe_dump_all(k8s_secrets(table, pems, tokens, namespace, passwords), sort_keys=False)
    files.append((Written(out / "k8s-secrets.yaml", f"the same as Kubernetes Secrets (namespace {namespace})"),
                  manifest.encode(), True))
    existing = [w.path for w, _, _ in files if w.path.exists()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:4]) + (" …" if len(existing) > 4 else "")
        raise ConfigError(f"{len(existing)} file(s) exist already ({shown}); nothing was written. Pass --force "
                          "to replace them (every service then needs the new certificates and tokens)")
    for written, data, private in files:
        _write(written.path, data, private)
    return [w for w, _, _ in files]
