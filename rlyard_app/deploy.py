"""docker-compose.yml and k8s/ rendered from the service table.

``rlyard up``, Compose and Kubernetes start every service the same way: the
command ``ServiceSpec.command`` (``rlyard serve <kind>``) with the environment
``ServiceSpec.runtime_env(...)``. Here both deployment formats are rendered from
``configs/services.yaml``, so they cannot drift from the launcher or from each
other; ``tests/deploy`` fails when the committed files differ from what
``render_all`` returns (fix: ``rlyard deploy render``).

Every function is pure except ``write_all`` and ``check_all``; the output is
deterministic (table order, fixed key order, no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from rlyard.errors import ConfigError
from rlyard.settings import ServerSettings
from rlyard_app.services import (
    BackingService,
    Resources,
    ServiceSpec,
    ServiceTable,
    VolumeSpec,
    WorkerSpec,
    split_mount,
)

logger = logging.getLogger(__name__)

HEADER = "# generated from configs/services.yaml by `rlyard deploy render`; do not edit\n"
COMPOSE_FILE = "docker-compose.yml"
K8S_DIR = "k8s"
# the shared volumes' PersistentVolumeClaims: sorts after the namespace, and no service can be named so
VOLUMES_FILE = "00-volumes.yaml"
NAMESPACE = "rlyard"
PROJECT = "rlyard"
# Containers listen on every interface; Compose publishes the ports on loopback only.
CONTAINER_HOST = "0.0.0.0"
PUBLISH_HOST = "127.0.0.1"
# The non-root user of the Dockerfile (``USER 10001:10001``).
RUN_AS = 10001
# The image's working directory: relative volume mount paths of the table resolve under it.
APP_DIR = "/app"
# Seconds past RLYARD_GRACE_S before SIGKILL: the drain itself, on_stop hooks, closing /metrics.
KILL_MARGIN_S = 5
# TLS and tokens (``table.tls``): what ``rlyard certs`` makes, as Compose secrets and a Kubernetes Secret
# mounted where containers read them. File under ``<dir>/tls/`` -> name in the container (and Secret key).
TLS_SECRET = "rlyard-tls"
TLS_FILES = {"ca.pem": "ca.crt", "server.pem": "tls.crt", "server-key.pem": "tls.key",
             "client.pem": "client.crt", "client-key.pem": "client.key"}
SECRETS_MOUNT = "/run/secrets"
# The backing stores' passwords (``BackingService.has_password``) that ``rlyard certs`` writes under
# ``<dir>/backing/``; with tls on, Compose mounts them as secrets and Kubernetes as ``<store>-credentials``.
BACKING_DIR = "backing"
PROBE_AUTH = "REDISCLI_AUTH"    # the variable redis-cli (the Redis probe) takes the password from
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class _Quoted(str):
    """A string always written double-quoted (env values, ports, annotations):
    YAML 1.1 and 1.2 readers (PyYAML, Compose, kubectl) then agree it is a string."""


class _Dumper(yaml.SafeDumper):
    """Block style with sequences indented under their key (kubectl style), no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_quoted(dumper: yaml.SafeDumper, data: _Quoted) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_Dumper.add_representer(_Quoted, _represent_quoted)


def _dump(*docs: Any) -> str:
    """YAML documents with the generated-file header; several become a multi-doc file."""
    text = yaml.dump_all(
        docs,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
        explicit_start=len(docs) > 1,
    )
    return HEADER + text


def _quoted(mapping: dict[str, str]) -> dict[str, _Quoted]:
    return {k: _Quoted(v) for k, v in mapping.items()}


# --- what every deployment shares ---------------------------------------------------------


def container_env(spec: ServiceSpec) -> dict[str, str]:
    """The complete environment of the service in a container (Compose and Kubernetes): what
    ``rlyard up`` gives it, with the table's ``container_env`` over it."""
    return spec.runtime_env(CONTAINER_HOST, spec.port, spec.metrics_port) | spec.container_env


def tokens_secret(spec: ServiceSpec | WorkerSpec) -> str:
    """The Kubernetes Secret with a service's tokens (``<dir>/tokens/<name>.env`` under Compose)."""
    return f"{spec.name}-tokens"


def client_tls_env(table: ServiceTable) -> dict[str, str]:
    """What makes a container dial its peers with TLS and the client certificate (empty when the
    table's tls is off): all a worker needs, which serves nothing."""
    if not table.tls.enabled:
        return {}
    return {
        "RLYARD_CLIENT_TLS_CA": f"{SECRETS_MOUNT}/ca.crt",
        "RLYARD_CLIENT_TLS_CERT": f"{SECRETS_MOUNT}/client.crt",
        "RLYARD_CLIENT_TLS_KEY": f"{SECRETS_MOUNT}/client.key",
    }


def tls_env(table: ServiceTable) -> dict[str, str]:
    """What makes a container serve TLS and dial its peers with TLS (empty when the table's tls is off);
    the tokens come from each service's own Secret or env file."""
    if not table.tls.enabled:
        return {}
    path = {key: f"{SECRETS_MOUNT}/{key}" for key in TLS_FILES.values()}
    return {
        "RLYARD_TLS_CERT": path["tls.crt"],
        "RLYARD_TLS_KEY": path["tls.key"],
        "RLYARD_TLS_CLIENT_CA": path["ca.crt"],
        "RLYARD_TLS_REQUIRE_CLIENT_CERT": "true" if table.tls.require_client_cert else "false",
    } | client_tls_env(table)


def worker_env(table: ServiceTable, worker: WorkerSpec) -> dict[str, str]:
    """A worker container's environment besides its tokens: the table's ``env`` and the client TLS
    (with tls on, without its broker URL: ``secret_urls``)."""
    return _public(table, worker, worker.env | client_tls_env(table))


def service_env(table: ServiceTable, spec: ServiceSpec) -> dict[str, str]:
    """``container_env`` with the table's TLS settings over it: what a container's environment holds
    besides its tokens (and, with tls on, the store URLs of ``secret_urls``)."""
    return _public(table, spec, container_env(spec) | tls_env(table))


# --- the backing stores' passwords (tls on) ------------------------------------------------


def password_store(table: ServiceTable, value: str) -> BackingService | None:
    """The backing store with a password whose host and port the URL ``value`` names, if any."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return next((b for b in table.backing if b.has_password and parts.hostname == b.name and port == b.port), None)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its user information (the user kept: ``redis://:PW@redis:6379/0``)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:{password}@{host}"))


def secret_urls(table: ServiceTable, spec: ServiceSpec | WorkerSpec) -> dict[str, str]:
    """The variables of a container's environment that are URLs of a backing store with a password,
    as the table writes them (the memory's RLYARD_MEMORY_DB_URL, the workers' broker URL). With tls
    on they leave the rendered environment: the container reads them, with the password of ``rlyard
    certs``, from its env file / token Secret. A client kind (the trainer, which submits to the
    workers' broker) also gets the workers' URLs of the stores client pods reach (``clients``)."""
    env = spec.env | spec.container_env if isinstance(spec, ServiceSpec) else spec.env
    found = {k: v for k, v in env.items() if password_store(table, v)}
    if isinstance(spec, ServiceSpec) and spec.kind in CLIENT_KINDS:
        for worker in table.workers:
            for key, value in worker.env.items():
                store = password_store(table, value)
                if store is not None and store.clients:
                    found.setdefault(key, value)
    return found


def _public(table: ServiceTable, spec: ServiceSpec | WorkerSpec, env: dict[str, str]) -> dict[str, str]:
    """``env`` without the ``secret_urls`` of ``spec`` when the table's tls is on."""
    if not table.tls.enabled:
        return env
    hidden = secret_urls(table, spec)
    return {k: v for k, v in env.items() if k not in hidden}


def store_secret_file(store: BackingService) -> str:
    """The secret file of a store with a password: a file of the password (read through
    ``<password_env>_FILE``) or Redis's config file; under ``/run/secrets`` in the container."""
    return f"{store.name}.conf" if store.requirepass else f"{store.name}-password"


def credentials_secret(store: BackingService) -> str:
    """The Kubernetes Secret with a store's password (``<dir>/backing/`` under Compose)."""
    return f"{store.name}-credentials"


def backing_env(table: ServiceTable, store: BackingService) -> dict[str, str]:
    """A store's environment: the table's, with tls on ``<password_env>_FILE`` (the secret file) in
    place of ``<password_env>`` (the table's password)."""
    if not (table.tls.enabled and store.password_env):
        return store.env
    return {(f"{k}_FILE" if k == store.password_env else k):
            (f"{SECRETS_MOUNT}/{store_secret_file(store)}" if k == store.password_env else v)
            for k, v in store.env.items()}


def backing_command(table: ServiceTable, store: BackingService) -> list[str]:
    """A store's command: the table's; with tls on, Redis loads the secret config file (its
    ``requirepass``) first, so the password is on no command line (options after it add to it)."""
    if not (table.tls.enabled and store.requirepass):
        return list(store.command)
    return [store.command[0], f"{SECRETS_MOUNT}/{store_secret_file(store)}", *store.command[1:]]


def server_settings(spec: ServiceSpec) -> ServerSettings:
    """The runtime settings the container will load (a bad value fails the render)."""
    return ServerSettings.from_env("RLYARD", container_env(spec))


def stop_grace_s(spec: ServiceSpec) -> int:
    """Seconds between SIGTERM and SIGKILL: RLYARD_GRACE_S plus a margin."""
    return math.ceil(server_settings(spec).grace_s) + KILL_MARGIN_S


def health_probe_command(port: int, tls_name: str | None = None) -> list[str]:
    """A Docker healthcheck: exit 0 when grpc.health.v1 on ``port`` answers SERVING.

    Uses only the image's Python and grpcio-health-checking (a dependency of rlyard);
    an unreachable server raises, which also exits non-zero. With ``tls_name`` it dials TLS with
    the container's RLYARD_CLIENT_TLS_* files and checks the server's certificate against that
    name (the service's name, which the certificate holds; Kubernetes' own gRPC probe has no TLS).
    """
    if tls_name is None:
        channel = f"grpc.insecure_channel('127.0.0.1:{port}')"
        setup = ""
    else:
        setup = ("f = lambda k: open(os.environ[k], 'rb').read() if os.environ.get(k) else None; "
                 "c = grpc.ssl_channel_credentials(f('RLYARD_CLIENT_TLS_CA'), f('RLYARD_CLIENT_TLS_KEY'), "
                 "f('RLYARD_CLIENT_TLS_CERT')); ")
        channel = (f"grpc.secure_channel('127.0.0.1:{port}', c, "
                   f"options=[('grpc.ssl_target_name_override', {tls_name!r})])")
    script = (
        f"import {'os, ' if tls_name else ''}sys, grpc; "
        "from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
        f"{setup}"
        f"r = g.HealthStub({channel})"
        ".Check(h.HealthCheckRequest(), timeout=2); "
        "sys.exit(r.status != h.HealthCheckResponse.SERVING)"
    )
    return ["CMD", "python", "-c", script]


def _probe(table: ServiceTable, spec: ServiceSpec) -> list[str]:
    return health_probe_command(spec.port, spec.name if table.tls.enabled else None)


def _check_names(table: ServiceTable) -> None:
    names = [s.name for s in table.services] + [b.name for b in table.backing] + [w.name for w in table.workers]
    for name in names + [v.name for v in table.volumes]:
        if not _DNS_LABEL.match(name):
            raise ConfigError(
                f"service name {name!r} cannot name a Kubernetes Service: use lower-case "
                "letters, digits and '-', starting with a letter (at most 63 characters)"
            )


def mount_path(path: str) -> str:
    """A volume's mount path in the container: relative paths resolve under the image's /app
    (a table mount's ``:ro`` is dropped: ``mounts`` keeps it)."""
    path, _ = split_mount(path)
    return path if path.startswith("/") else f"{APP_DIR}/{path}"


def mounts(spec: ServiceSpec | WorkerSpec) -> list[tuple[str, str, bool]]:
    """(volume, path in the container, read-only) of each volume ``spec`` mounts, in table order."""
    return [(name, mount_path(mount), split_mount(mount)[1]) for name, mount in spec.volumes.items()]


def _volume(table: ServiceTable, name: str) -> VolumeSpec:
    [volume] = [v for v in table.volumes if v.name == name]
    return volume


def init_name(volume: VolumeSpec) -> str:
    """The one-shot init that fills a volume (a Compose service, a Kubernetes initContainer)."""
    return f"{volume.name}-init"


# --- Compose ------------------------------------------------------------------------------


def compose_build(table: ServiceTable, image: str) -> dict[str, Any] | str:
    """How Compose builds image ``image`` of the table: the Dockerfile with its extras (the public
    base image and index by default; scripts/docker/build.sh builds the same images offline)."""
    if not image:
        return "."
    return {"context": ".", "args": {"EXTRAS": _Quoted(",".join(table.images[image]))}}


def _volume_users(table: ServiceTable, volume: VolumeSpec) -> list[ServiceSpec]:
    return [s for s in table.services if volume.name in s.volumes]


def _compose_mounts(spec: ServiceSpec | WorkerSpec) -> dict[str, list[str]]:
    return {"volumes": [f"{name}:{path}" + (":ro" if ro else "") for name, path, ro in mounts(spec)]} \
        if spec.volumes else {}


def compose_volume_init(table: ServiceTable, volume: VolumeSpec) -> dict[str, Any]:
    """A volume's init under Compose: a one-shot service the volume's users wait for (it exits 0);
    in every profile of those users."""
    service: dict[str, Any] = {"image": table.image_ref(volume.image), "build": compose_build(table, volume.image)}
    profiles = list(dict.fromkeys(p for s in _volume_users(table, volume) for p in s.profiles))
    if "all" not in profiles:
        service["profiles"] = profiles
    paths = sorted({mount_path(s.volumes[volume.name]) for s in _volume_users(table, volume)})
    return service | {
        "command": list(volume.init),
        "volumes": [f"{volume.name}:{path}" for path in paths],
        "read_only": True,
        "tmpfs": ["/tmp"],
        "restart": "no",
    }


def compose_service(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """One Compose service: one replica, ports published on loopback."""
    grace = stop_grace_s(spec)
    service: dict[str, Any] = {"image": table.image_of(spec), "build": compose_build(table, spec.image)}
    inits = [v for v in table.volumes if v.name in spec.volumes and v.init]
    if spec.depends_on or spec.wants or spec.backing or inits:
        # start after the services it calls are healthy, as `rlyard up` does; a wanted service
        # only when its profile is enabled (required: false, Compose >= 2.20); after its
        # volumes' inits have filled them
        needed = (*spec.backing, *spec.depends_on)
        service["depends_on"] = (
            {init_name(v): {"condition": "service_completed_successfully"} for v in inits}
            | {dep: {"condition": "service_healthy"} for dep in needed}
            | {peer: {"condition": "service_healthy", "required": False} for peer in spec.wants}
        )
    if "all" not in spec.profiles:
        # a service of the default profile starts with a plain `docker compose up`,
        # as it does with a plain `rlyard up`; others wait for `--profile NAME`
        service["profiles"] = list(spec.profiles)
    if table.tls.enabled:
        # the certificates as Compose secrets, the service's own tokens from its env file (rlyard certs)
        service["secrets"] = [{"source": _compose_secret(key), "target": key} for key in TLS_FILES.values()]
        service["env_file"] = [{"path": f"{table.tls.dir}/tokens/{spec.name}.env", "required": True}]
    return service | {
        "command": list(spec.command),
        "environment": _quoted(service_env(table, spec)),
        "ports": [_Quoted(f"{PUBLISH_HOST}:{p}:{p}") for p in (spec.port, spec.metrics_port)],
        "read_only": True,
        "tmpfs": ["/tmp"],
        **_compose_mounts(spec),
        "healthcheck": {
            "test": _probe(table, spec),
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": f"{spec.startup_s}s",
        },
        "restart": "unless-stopped",
        "stop_grace_period": f"{grace}s",
    }


def _compose_secret(key: str) -> str:
    return "rlyard-" + key.replace(".", "-")


def compose_secrets(table: ServiceTable) -> dict[str, Any]:
    """The top-level secrets: the files ``rlyard certs --out <dir>`` wrote (the CA's key stays out),
    and the stores' password files."""
    stores = [store_secret_file(b) for b in table.backing if b.has_password]
    return ({_compose_secret(key): {"file": f"./{table.tls.dir}/tls/{name}"} for name, key in TLS_FILES.items()}
            | {_compose_secret(name): {"file": f"./{table.tls.dir}/{BACKING_DIR}/{name}"} for name in stores})


def secret_readers(table: ServiceTable) -> dict[str, int]:
    """The private files of ``rlyard certs --out <dir>`` that the containers read (relative to
    ``<dir>``), with the user id that reads each: Compose bind-mounts file secrets with their host
    owner and mode (0600), so each must be given to that user (``chown``) before ``up``. The rlyard
    images read the server's and the client's keys; each store with a password its secret file."""
    readers = {f"tls/{name}": RUN_AS for name in TLS_FILES if name.endswith("-key.pem")}
    return readers | {f"{BACKING_DIR}/{store_secret_file(b)}": b.run_as for b in table.backing if b.has_password}


def volume_name(store: BackingService) -> str:
    """The persistent volume of a backing store."""
    return f"{store.name}-data"


def compose_image(store: BackingService) -> str:
    """A backing store's image under Compose: the table's, unless ``RLYARD_<NAME>_IMAGE`` names
    another (the offline build's, e.g. ``RLYARD_REDIS_IMAGE=rlyard-redis:bookworm``)."""
    return f"${{{store.image_variable}:-{store.image}}}"


def compose_backing(table: ServiceTable, store: BackingService) -> dict[str, Any]:
    """A backing store under Compose: its own image, a named volume (a tmpfs when it is not
    persistent), healthy when its probe passes; not published on the host (only the services reach it).
    With tls on, a store with a password reads it from its secret file (Redis's probe from its env file)."""
    service: dict[str, Any] = {"image": _Quoted(compose_image(store))}
    if "all" not in store.profiles:
        service["profiles"] = list(store.profiles)
    if store.command:
        service["command"] = backing_command(table, store)
    if table.tls.enabled and store.has_password:
        name = store_secret_file(store)
        service["secrets"] = [{"source": _compose_secret(name), "target": name}]
        if store.requirepass:
            service["env_file"] = [{"path": f"{table.tls.dir}/{BACKING_DIR}/{store.name}.env", "required": True}]
    data = {"volumes": [f"{volume_name(store)}:{store.data_dir}"]} if store.persistent else {}
    return service | {
        "user": _Quoted(f"{store.run_as}:{store.run_as}"),
        "environment": _quoted(backing_env(table, store)),
        **data,
        "read_only": True,
        "tmpfs": list(store.writable) + ([] if store.persistent else [store.data_dir]),
        "healthcheck": {
            "test": ["CMD", *store.probe],
            "interval": "5s",
            "timeout": "5s",
            "retries": 10,
            "start_period": "30s",
        },
        "restart": "unless-stopped",
    }


# How often Compose checks that a worker consumes its queue (the file ``rlyard worker --ready-file``
# writes), and how long its start (Celery, torch) may take.
WORKER_HEALTH_INTERVAL_S = 10
WORKER_START_S = 120


def worker_probe(worker: WorkerSpec) -> list[str]:
    """A worker's readiness: the file it writes once it consumes its queue exists."""
    return ["test", "-f", worker.READY_FILE]


def compose_worker(table: ServiceTable, worker: WorkerSpec) -> dict[str, Any]:
    """Rollout workers under Compose: ``replicas`` containers (``--scale worker=N`` changes it; no
    ports, so they do not collide), started after their broker is healthy and after the services
    they call have started, restarted when they exit."""
    service: dict[str, Any] = {"image": table.image_of(worker), "build": compose_build(table, worker.image)}
    service["depends_on"] = ({store: {"condition": "service_healthy"} for store in worker.backing}
                             | {peer: {"condition": "service_started", "required": False} for peer in worker.wants})
    if "all" not in worker.profiles:
        service["profiles"] = list(worker.profiles)
    if table.tls.enabled:
        # the CA and the client certificate; its tokens (one per service it calls) from its env file
        service["secrets"] = [{"source": _compose_secret(key), "target": key}
                              for key in ("ca.crt", "client.crt", "client.key")]
        service["env_file"] = [{"path": f"{table.tls.dir}/tokens/{worker.name}.env", "required": True}]
    return service | {
        "command": worker.command,
        "environment": _quoted(worker_env(table, worker)),
        "read_only": True,
        "tmpfs": ["/tmp"],
        **_compose_mounts(worker),
        "healthcheck": {
            "test": ["CMD", *worker_probe(worker)],
            "interval": f"{WORKER_HEALTH_INTERVAL_S}s",
            "timeout": "5s",
            "retries": 3,
            "start_period": f"{WORKER_START_S}s",
        },
        "deploy": {"replicas": worker.replicas},
        "restart": "unless-stopped",
        "stop_grace_period": f"{worker.stop_grace_s}s",
    }


def render_compose(table: ServiceTable) -> str:
    """docker-compose.yml for every service, backing store and worker of the table."""
    _check_names(table)
    doc: dict[str, Any] = {
        "name": PROJECT,
        "services": {store.name: compose_backing(table, store) for store in table.backing}
        | {init_name(v): compose_volume_init(table, v) for v in table.volumes if v.init}
        | {spec.name: compose_service(table, spec) for spec in table.services}
        | {worker.name: compose_worker(table, worker) for worker in table.workers},
    }
    stores = [store for store in table.backing if store.persistent]
    if stores or table.volumes:
        doc["volumes"] = {volume_name(store): {} for store in stores} | {v.name: {} for v in table.volumes}
    if table.tls.enabled:
        doc["secrets"] = compose_secrets(table)
    return _dump(doc)


# --- Kubernetes ---------------------------------------------------------------------------


def _image_version(image: str) -> str | None:
    """The tag of ``image`` when it is a valid label value (``rlyard:0.1.0`` -> ``0.1.0``)."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    return tag if _LABEL_VALUE.match(tag) else None


def selector_labels(spec: ServiceSpec | WorkerSpec) -> dict[str, str]:
    """The labels that select the service's pods (immutable in a Deployment)."""
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": PROJECT}


def _labels(table: ServiceTable, spec: ServiceSpec | WorkerSpec) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": spec.name,
        "app.kubernetes.io/component": spec.kind,
        "app.kubernetes.io/part-of": PROJECT,
    }
    version = _image_version(table.image)
    if version is not None:
        labels["app.kubernetes.io/version"] = version
    labels["app.kubernetes.io/managed-by"] = "rlyard-deploy"
    return labels


def configmap_name(spec: ServiceSpec | WorkerSpec) -> str:
    """The ConfigMap holding the service's environment."""
    return f"{spec.name}-env"


def _config_hash(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


def _grpc_probe(port: int, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "grpc": {"port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# Every container: no privilege escalation, a read-only root, a non-root user, no capabilities.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def _k8s_resources(resources: Resources) -> dict[str, Any]:
    return {
        "requests": {"cpu": resources.cpu, "memory": resources.memory},
        "limits": {"memory": resources.memory_limit},
    }


def k8s_configmap(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """The service's whole environment, loaded with envFrom."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(spec),
            "namespace": NAMESPACE,
            "labels": _labels(table, spec),
        },
        "data": _quoted(k8s_env(table, spec) | tls_env(table)),
    }


def k8s_volume_mounts(spec: ServiceSpec | WorkerSpec) -> list[dict[str, Any]]:
    """The container's mounts of the table's volumes (``readOnly`` for a ``path:ro`` mount)."""
    return [{"name": name, "mountPath": path, **({"readOnly": True} if ro else {})} for name, path, ro in mounts(spec)]


def k8s_pod_volumes(table: ServiceTable, spec: ServiceSpec | WorkerSpec) -> list[dict[str, Any]]:
    """A pod's volumes: a small ``/tmp``, then each table volume it mounts: a shared one is its
    PersistentVolumeClaim (read-only where every mount of this pod is), any other an emptyDir of
    this pod, filled by its init before the server starts (which then builds its indexes into it,
    NOT_SERVING until they are loaded)."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    for name, _, ro in mounts(spec):
        if _volume(table, name).shared:
            claim: dict[str, Any] = {"claimName": name, **({"readOnly": True} if ro else {})}
            volumes.append({"name": name, "persistentVolumeClaim": claim})
        else:
            volumes.append({"name": name, "emptyDir": {}})
    return volumes


def k8s_volume_claim(volume: VolumeSpec) -> dict[str, Any]:
    """The PersistentVolumeClaim of a shared volume: every pod that mounts it mounts this claim."""
    spec: dict[str, Any] = {"accessModes": [volume.access_mode],
                            "resources": {"requests": {"storage": volume.storage}}}
    if volume.storage_class:
        spec["storageClassName"] = volume.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": volume.name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/name": volume.name, "app.kubernetes.io/part-of": PROJECT,
                                "app.kubernetes.io/managed-by": "rlyard-deploy"}},
        "spec": spec,
    }


def k8s_deployment(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """The service's pods: same command and environment as ``rlyard up``."""
    labels = _labels(table, spec)
    env = k8s_env(table, spec) | tls_env(table)
    image = table.image_of(spec)
    container = {
        "name": spec.name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(spec.command),
        "envFrom": [{"configMapRef": {"name": configmap_name(spec)}}],
        "ports": [
            {"name": "grpc", "containerPort": spec.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"},
        ],
        # startup allows the table's startup_s (the launcher waits as long); readiness goes
        # false as soon as the server drains (health NOT_SERVING), liveness restarts a hung server.
        "startupProbe": _grpc_probe(spec.port, period_s=2, failures=max(1, math.ceil(spec.startup_s / 2))),
        "readinessProbe": _grpc_probe(spec.port, period_s=5, failures=2),
        "livenessProbe": _grpc_probe(spec.port, period_s=10, failures=3),
        "resources": _k8s_resources(spec.resources),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *k8s_volume_mounts(spec)],
    }
    pod_volumes = k8s_pod_volumes(table, spec)
    inits = [
        {
            "name": init_name(v),
            "image": table.image_ref(v.image),
            "imagePullPolicy": "IfNotPresent",
            "command": list(v.init),
            "resources": _k8s_resources(spec.resources),
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": v.name, "mountPath": mount_path(spec.volumes[v.name])}],
        }
        for v in table.volumes
        if v.name in spec.volumes and v.init
    ]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # no FOO_SERVICE_HOST/FOO_PORT variables: the environment is exactly the table's
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": stop_grace_s(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            # the volumes' files belong to the containers' group
            **({"fsGroup": RUN_AS} if spec.volumes else {}),
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **({"initContainers": inits} if inits else {}),
        "containers": [container],
        "volumes": pod_volumes,
    }
    if table.tls.enabled:
        _add_tls(table, spec, container, pod_volumes)
        pod_spec["securityContext"]["fsGroup"] = RUN_AS   # the Secret's files are group-readable (0440)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(spec)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels(table, spec),
                    "annotations": _quoted(
                        {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(spec.metrics_port),
                            "prometheus.io/path": "/metrics",
                            # a changed environment rolls the pods
                            "rlyard.dev/env-sha256": _config_hash(env),
                        }
                    ),
                },
                "spec": pod_spec,
            },
        },
    }


def _add_tls(table: ServiceTable, spec: ServiceSpec, container: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
    """TLS and tokens in a service's pod: the TLS Secret as files, the service's token Secret as
    environment, and exec probes (the kubelet's gRPC probe cannot speak TLS)."""
    container["envFrom"] = [*container["envFrom"], {"secretRef": {"name": tokens_secret(spec)}}]
    container["volumeMounts"] = [*container["volumeMounts"],
                                 {"name": "tls", "mountPath": SECRETS_MOUNT, "readOnly": True}]
    volumes.append({"name": "tls", "secret": {"secretName": TLS_SECRET, "defaultMode": 0o440}})
    command = _probe(table, spec)[1:]    # without Docker's "CMD"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]
        container[probe] = {"exec": {"command": command}, "periodSeconds": grpc_probe["periodSeconds"],
                            "timeoutSeconds": 5, "failureThreshold": grpc_probe["failureThreshold"]}


def k8s_service(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """A ClusterIP Service: a gRPC channel keeps one connection, so it stays on one pod
    (tool sessions live in that pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": _labels(table, spec)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [
                {
                    "name": "grpc",
                    "port": spec.port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "metrics",
                    "port": spec.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],
        },
    }


def k8s_namespace() -> dict[str, Any]:
    """The namespace, with the "restricted" Pod Security Standard enforced."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": PROJECT,
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }


def _backing_labels(table: ServiceTable, store: BackingService) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": store.name,
        "app.kubernetes.io/component": "backing",
        "app.kubernetes.io/part-of": PROJECT,
        "app.kubernetes.io/managed-by": "rlyard-deploy",
    }


def k8s_backing(table: ServiceTable, store: BackingService) -> list[dict[str, Any]]:
    """A backing store on Kubernetes: its environment (ConfigMap), one pod with a persistent volume
    (StatefulSet) and a ClusterIP Service named as the services' URLs expect."""
    labels = _backing_labels(table, store)
    selector = {"app.kubernetes.io/name": store.name, "app.kubernetes.io/part-of": PROJECT}
    meta = {"name": store.name, "namespace": NAMESPACE, "labels": labels}
    probe = {"exec": {"command": list(store.probe)}, "timeoutSeconds": 5}
    scratch = [(f"scratch-{i}", path) for i, path in enumerate(store.writable)]
    container: dict[str, Any] = {
        "name": store.name,
        "image": store.image,
        "imagePullPolicy": "IfNotPresent",
        # the image's entrypoint stays, as under Compose
        **({"args": backing_command(table, store)} if store.command else {}),
        "envFrom": [{"configMapRef": {"name": f"{store.name}-env"}}],
        "ports": [{"name": "db", "containerPort": store.port, "protocol": "TCP"}],
        "startupProbe": probe | {"periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": probe | {"periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": probe | {"periodSeconds": 10, "failureThreshold": 6},
        "resources": _k8s_resources(store.resources),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "data", "mountPath": store.data_dir}]
        + [{"name": name, "mountPath": path} for name, path in scratch],
    }
    env = backing_env(table, store)
    volumes: list[dict[str, Any]] = [{"name": name, "emptyDir": {"sizeLimit": "64Mi"}} for name, _ in scratch]
    if table.tls.enabled and store.has_password:
        # the password file or config file from the store's Secret (``rlyard certs``), group-readable
        name = store_secret_file(store)
        container["volumeMounts"].append({"name": "credentials", "mountPath": SECRETS_MOUNT, "readOnly": True})
        volumes.append({"name": "credentials", "secret": {"secretName": credentials_secret(store), "defaultMode": 0o440,
                                                          "items": [{"key": name, "path": name}]}})
        if store.requirepass:
            container["env"] = [{"name": PROBE_AUTH, "valueFrom": {"secretKeyRef": {
                "name": credentials_secret(store), "key": PROBE_AUTH}}}]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{store.name}-env", "namespace": NAMESPACE, "labels": labels},
                 "data": _quoted(env)}
    statefulset: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "serviceName": store.name,
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": _quoted({"rlyard.dev/env-sha256": _config_hash(env)})},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": store.run_as,
                        "runAsGroup": store.run_as,
                        "fsGroup": store.run_as,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes + ([] if store.persistent else [{"name": "data", "emptyDir": {}}]),
                },
            },
        },
    }
    if store.persistent:
        statefulset["spec"]["volumeClaimTemplates"] = [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": store.storage}}},
        }]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "db", "port": store.port, "targetPort": "db", "protocol": "TCP"}]},
    }
    return [configmap, statefulset, service]


# --- Kubernetes: session routing, disruption budgets, network policy, autoscaling ----------
#
# Tool sessions live on one replica, and a gRPC channel to a ClusterIP Service stays on one pod.
# So each tool service also gets a headless Service (one DNS A record per ready pod), and the
# services that call it in Kubernetes are given ``routed:///<name>-headless:<port>``: the client
# routes each session to its replica by consistent hashing (rlyard.routing, docs/deployment.md).

# Pods with this label may call the tool, reward and memory services: the trainer's pods (and a
# rollout worker's, kind "worker") carry it; give it to any pod of yours that drives rollouts.
CLIENT_LABEL = ("rlyard.dev/role", "client")
CLIENT_KINDS = ("trainer", "worker")
# Namespaces with this label (where Prometheus runs) may scrape the metrics ports.
MONITORING_LABEL = ("rlyard.dev/monitoring", "true")
# The HPA's target: mean CPU use over the pods, as a percentage of their CPU request.
HPA_CPU_PERCENT = 70
# Scale-down removes at most one pod per this many seconds, after this long below target: each
# pod removed fails the sessions it holds.
HPA_SCALE_DOWN_PERIOD_S = 120
HPA_SCALE_DOWN_WINDOW_S = 300


def routes_sessions(spec: ServiceSpec) -> bool:
    """Whether clients route to the service's pods by session (a tool server) through its headless Service."""
    return spec.kind == "tools"


def headless_name(spec: ServiceSpec) -> str:
    """The headless Service of a tool service: its DNS name resolves to every ready pod."""
    return f"{spec.name}-headless"


def routed_target(spec: ServiceSpec) -> str:
    """What clients in Kubernetes dial for ``spec``: every pod of its headless Service, by session."""
    return f"routed:///{headless_name(spec)}:{spec.port}"


def k8s_env(table: ServiceTable, spec: ServiceSpec) -> dict[str, str]:
    """``container_env`` with each tool service that ``spec`` calls addressed through its headless
    Service (``routed_target``) instead of its ClusterIP Service."""
    peers = {name: routed_target(table.get(name)) for name in spec.peer_ports if routes_sessions(table.get(name))}
    return _public(table, spec, spec.runtime_env(CONTAINER_HOST, spec.port, spec.metrics_port, peers)
                   | spec.container_env)


def pod_labels(table: ServiceTable, spec: ServiceSpec | WorkerSpec) -> dict[str, str]:
    """The labels of the service's pods: the object labels, and ``CLIENT_LABEL`` on client kinds."""
    labels = _labels(table, spec)
    if spec.kind in CLIENT_KINDS:
        labels[CLIENT_LABEL[0]] = CLIENT_LABEL[1]
    return labels


def k8s_scaled_deployment(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """``k8s_deployment``, without ``replicas`` when an HPA owns the count (``kubectl apply``
    would otherwise set it back on every apply)."""
    deployment = k8s_deployment(table, spec)
    if spec.max_replicas:
        del deployment["spec"]["replicas"]
    return deployment


def k8s_headless_service(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """One DNS A record per ready pod (gRPC port only): what ``routed_target`` resolves."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": headless_name(spec), "namespace": NAMESPACE, "labels": _labels(table, spec)},
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(spec),
            # a pod that drains (NOT_SERVING, not ready) leaves the answer: new sessions go elsewhere
            "publishNotReadyAddresses": False,
            "ports": [{"name": "grpc", "port": spec.port, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "grpc"}],
        },
    }


def k8s_pdb(table: ServiceTable, spec: ServiceSpec | WorkerSpec) -> dict[str, Any]:
    """Voluntary disruptions (node drains, upgrades) take one pod of the service at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": _labels(table, spec)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def k8s_hpa(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """Scale the Deployment between ``replicas`` and ``max_replicas`` on CPU; down slowly, one pod
    at a time (each removed pod fails its sessions)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": _labels(table, spec)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": HPA_CPU_PERCENT}}}],
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": HPA_SCALE_DOWN_WINDOW_S,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": HPA_SCALE_DOWN_PERIOD_S}],
            }},
        },
    }


def _metrics_sources() -> list[dict[str, Any]]:
    key, value = MONITORING_LABEL
    return [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {key: _Quoted(value)}}}]


def k8s_network_policy(table: ServiceTable, spec: ServiceSpec) -> dict[str, Any]:
    """Who may reach the service's pods (the namespace denies every other ingress): its gRPC port
    from client pods (``CLIENT_LABEL``) and from the services that call it (``depends_on``/``wants``:
    the reward service calls the tools); the trainer's from any pod of the namespace; the metrics
    port from the namespace and from monitoring namespaces. Kubelet probes are always allowed."""
    if spec.kind == "trainer":
        callers: list[dict[str, Any]] = [{"podSelector": {}}]
    else:
        callers = [{"podSelector": {"matchLabels": dict([CLIENT_LABEL])}}] + [
            {"podSelector": {"matchLabels": selector_labels(s)}}
            for s in table.services if spec.name in (*s.depends_on, *s.wants)
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": _labels(table, spec)},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": callers, "ports": [{"protocol": "TCP", "port": spec.port}]},
                {"from": _metrics_sources(), "ports": [{"protocol": "TCP", "port": spec.metrics_port}]},
            ],
        },
    }


def k8s_serving_extras(table: ServiceTable, spec: ServiceSpec) -> list[dict[str, Any]]:
    """What a service gets besides its ConfigMap, Deployment and Service: a headless Service (tool
    services), a PodDisruptionBudget (more than one replica), an HPA (``max_replicas``), and its
    NetworkPolicy."""
    docs = [k8s_headless_service(table, spec)] if routes_sessions(spec) else []
    if max(spec.replicas, spec.max_replicas) > 1:
        docs.append(k8s_pdb(table, spec))
    if spec.max_replicas:
        docs.append(k8s_hpa(table, spec))
    return [*docs, k8s_network_policy(table, spec)]


def k8s_backing_network_policy(table: ServiceTable, store: BackingService) -> dict[str, Any]:
    """A backing store is reached only by the services and workers that list it in ``backing``, and,
    for a store of the ``clients`` (the workers' Redis, to which the trainer submits), by client pods."""
    users: list[dict[str, Any]] = [{"podSelector": {"matchLabels": dict([CLIENT_LABEL])}}] if store.clients else []
    specs: tuple[ServiceSpec | WorkerSpec, ...] = (*table.services, *table.workers)
    users += [{"podSelector": {"matchLabels": selector_labels(s)}} for s in specs if store.name in s.backing]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": store.name, "namespace": NAMESPACE, "labels": _backing_labels(table, store)},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": store.name,
                                            "app.kubernetes.io/part-of": PROJECT}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": users, "ports": [{"protocol": "TCP", "port": store.port}]}],
        },
    }


def k8s_worker(table: ServiceTable, worker: WorkerSpec) -> list[dict[str, Any]]:
    """Rollout workers on Kubernetes: their environment (ConfigMap), ``replicas`` pods labelled as
    clients (so the tools', rewards' and the sampler's NetworkPolicies admit them), and a
    PodDisruptionBudget when there are several. No Service: nothing calls a worker, and the
    namespace's default deny keeps all ingress out."""
    labels = _labels(table, worker)
    env = worker_env(table, worker)
    ready = {"exec": {"command": worker_probe(worker)}, "timeoutSeconds": 5}
    container: dict[str, Any] = {
        "name": worker.name,
        "image": table.image_of(worker),
        "imagePullPolicy": "IfNotPresent",
        "command": worker.command,
        "envFrom": [{"configMapRef": {"name": configmap_name(worker)}}],
        # ready once it consumes its queue; no liveness probe: a group that hangs is the visibility
        # timeout's to redeliver, and a worker that exits is restarted
        "startupProbe": ready | {"periodSeconds": 5, "failureThreshold": math.ceil(WORKER_START_S / 5)},
        "readinessProbe": ready | {"periodSeconds": 10, "failureThreshold": 3},
        "resources": _k8s_resources(worker.resources),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *k8s_volume_mounts(worker)],
    }
    volumes = k8s_pod_volumes(table, worker)
    security: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                "seccompProfile": {"type": "RuntimeDefault"}}
    if worker.volumes or table.tls.enabled:
        security["fsGroup"] = RUN_AS     # the volumes' and the TLS Secret's files are group-readable
    if table.tls.enabled:
        container["envFrom"].append({"secretRef": {"name": tokens_secret(worker)}})
        container["volumeMounts"].append({"name": "tls", "mountPath": SECRETS_MOUNT, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": TLS_SECRET, "defaultMode": 0o440}})
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": configmap_name(worker), "namespace": NAMESPACE, "labels": labels},
                 "data": _quoted(env)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": worker.name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": worker.replicas,
            "selector": {"matchLabels": selector_labels(worker)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels(table, worker),
                             "annotations": _quoted({"rlyard.dev/env-sha256": _config_hash(env)})},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # Celery's warm shutdown lets running groups finish; one cut short is redelivered
                    "terminationGracePeriodSeconds": worker.stop_grace_s,
                    "securityContext": security,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    return [configmap, deployment] + ([k8s_pdb(table, worker)] if worker.replicas > 1 else [])


def k8s_default_deny() -> dict[str, Any]:
    """No pod of the namespace takes ingress that a NetworkPolicy of its own does not allow."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny-ingress", "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": PROJECT}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def render_k8s(table: ServiceTable) -> dict[str, str]:
    """Manifests by path relative to the repository root (``k8s/...``).

    ``k8s/00-namespace.yaml`` sorts first, so ``kubectl apply -f k8s/`` creates the
    namespace (and its default-deny ingress policy) before anything in it;
    ``k8s/<service>.yaml`` holds the service's ConfigMap, Deployment and Service, then
    (``k8s_serving_extras``) a tool service's headless Service, a PodDisruptionBudget when
    it runs several replicas, an HPA when it autoscales, and its NetworkPolicy;
    ``k8s/<store>.yaml`` a backing store's ConfigMap, StatefulSet, Service and NetworkPolicy;
    ``k8s/00-volumes.yaml`` the shared volumes' PersistentVolumeClaims (before the pods that mount
    them); ``k8s/<worker>.yaml`` the workers' ConfigMap, Deployment and PodDisruptionBudget.
    """
    _check_names(table)
    files = {f"{K8S_DIR}/00-namespace.yaml": _dump(k8s_namespace(), k8s_default_deny())}
    claims = [k8s_volume_claim(v) for v in table.volumes if v.shared]
    if claims:
        files[f"{K8S_DIR}/{VOLUMES_FILE}"] = _dump(*claims)
    for store in table.backing:
        files[f"{K8S_DIR}/{store.name}.yaml"] = _dump(*k8s_backing(table, store),
                                                      k8s_backing_network_policy(table, store))
    for spec in table.services:
        files[f"{K8S_DIR}/{spec.name}.yaml"] = _dump(
            k8s_configmap(table, spec), k8s_scaled_deployment(table, spec), k8s_service(table, spec),
            *k8s_serving_extras(table, spec),
        )
    for worker in table.workers:
        files[f"{K8S_DIR}/{worker.name}.yaml"] = _dump(*k8s_worker(table, worker))
    return files


# --- files --------------------------------------------------------------------------------


def render_all(table: ServiceTable, root: Path) -> dict[Path, str]:
    """Every generated file under ``root`` (the repository root) with its text."""
    files = {root / COMPOSE_FILE: render_compose(table)}
    files.update({root / rel: text for rel, text in render_k8s(table).items()})
    return files


def _manifests(root: Path) -> list[Path]:
    k8s = root / K8S_DIR
    if not k8s.is_dir():
        return []
    return sorted(p for p in k8s.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def write_all(table: ServiceTable, root: Path) -> list[Path]:
    """Write every generated file; returns their paths.

    Generated manifests under k8s/ that the table no longer produces (a removed
    service) are deleted, since ``kubectl apply -f k8s/`` would still apply them.
    """
    files = render_all(table, root)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in _manifests(root):
        if path not in files and path.read_text().startswith(HEADER):
            logger.warning("removing %s: no longer in the service table", path)
            path.unlink()
    return list(files)


def check_all(table: ServiceTable, root: Path) -> list[str]:
    """Paths (relative to ``root``) of generated files that are missing, differ from
    the render, or sit in k8s/ without being rendered; empty when all is current."""
    files = render_all(table, root)
    stale = []
    for path, text in files.items():
        if not path.is_file() or path.read_text() != text:
            stale.append(path.relative_to(root).as_posix())
    for path in _manifests(root):
        if path not in files:
            stale.append(path.relative_to(root).as_posix())
    return stale
