"""The service table (``configs/services.yaml``) as typed records.

The launcher, the Compose file and the Kubernetes manifests all come from this
table, so they start the same command with the same environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import yaml

from rlyard.errors import ConfigError
from rlyard.paths import ROOT

DEFAULT_TABLE = ROOT / "configs" / "services.yaml"
ACCESS_MODES = ("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
_PLACEHOLDER = re.compile(r"\{([a-z0-9][a-z0-9-]*)\}")


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
    # > replicas: Kubernetes scales the Deployment from replicas up to this on CPU (an HPA);
    # 0: a fixed number of replicas
    max_replicas: int = 0
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    depends_on: tuple[str, ...] = ()
    # services this one calls when they are deployed too, but can start without (the reward
    # service reads the POI tools of the local-life profile only when that profile runs): they
    # start first when deployed together, and ``{name}`` refers to them as to a dependency
    wants: tuple[str, ...] = ()
    # seconds a new instance may take to turn SERVING (a service that loads or builds an index
    # on start needs more than the default): the launcher's wait, Compose's start_period and
    # the Kubernetes startupProbe all follow it
    startup_s: int = 60
    # name -> port of each service this one depends on or wants (filled from the table)
    peer_ports: dict[str, int] = field(default_factory=dict)
    # backing stores (``ServiceTable.backing``) it needs under Compose and Kubernetes
    backing: tuple[str, ...] = ()
    # settings only containers get, over ``env`` (the memory store: PostgreSQL in containers, a
    # SQLite file under ``rlyard up``)
    container_env: dict[str, str] = field(default_factory=dict)
    # the entry of ``ServiceTable.images`` its containers run (the extras its kind imports); empty
    # in a table without images: then every service runs ``ServiceTable.image``
    image: str = ""
    # container volumes: name (``ServiceTable.volumes``) -> mount path (relative: under /app, the
    # image's working directory), e.g. the POI corpus and the indexes the service builds into it;
    # ``path:ro`` mounts it read-only (``split_mount``)
    volumes: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        """The command every deployment runs."""
        return ["rlyard", "serve", self.kind]

    def runtime_env(
        self, host: str, port: int, metrics_port: int | None, peers: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The complete environment of one instance.

        ``{name}`` in an env value becomes the address of the service ``name`` (one of
        ``depends_on`` or ``wants``): ``peers[name]`` when given (the launcher passes the real
        loopback addresses), else ``name:port`` — the DNS name Compose and Kubernetes give it.
        """
        env = {
            "RLYARD_HOST": host,
            "RLYARD_PORT": str(port),
            "RLYARD_METRICS_PORT": "" if metrics_port is None else str(metrics_port),
        }
        addresses = {n: f"{n}:{p}" for n, p in self.peer_ports.items()}
        addresses.update(peers or {})
        for key, value in self.env.items():
            env[key] = _PLACEHOLDER.sub(lambda m: addresses[m.group(1)], value)
        return env


def split_mount(mount: str) -> tuple[str, bool]:
    """A mount of a table's ``volumes`` as (path, read-only): ``runs/models:ro`` -> ``("runs/models", True)``."""
    path, sep, mode = mount.rpartition(":")
    if sep and mode == "ro":
        return path, True
    if sep and mode == "rw":
        return path, False
    return mount, False


@dataclass(frozen=True)
class WorkerSpec:
    """Celery rollout workers (``rlyard worker``, trainer/workers): no gRPC port, no Service. They take
    group jobs from the Redis of ``backing`` (``RLYARD_WORKERS_BROKER_URL`` in ``env``) and dial the
    sampler, tool and reward services each job names (jobs carry the targets; the worker's
    ``RLYARD_CLIENT_*`` says how to dial them). ``wants``: services they call, started first when
    deployed together. Compose scales them with ``--scale``; Kubernetes runs ``replicas`` pods.
    ``rlyard up`` does not start them."""

    name: str
    image: str = ""
    profiles: tuple[str, ...] = ("workers",)
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    backing: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    volumes: dict[str, str] = field(default_factory=dict)
    # seconds between SIGTERM (Celery's warm shutdown: running groups finish) and SIGKILL; a group
    # cut short is delivered again after the visibility timeout
    stop_grace_s: int = 60

    kind: ClassVar[str] = "worker"
    # written by the worker once it consumes its queue: the containers' readiness
    READY_FILE: ClassVar[str] = "/tmp/rlyard-worker.ready"

    @property
    def command(self) -> list[str]:
        """The command every deployment runs."""
        return ["rlyard", "worker", "--ready-file", self.READY_FILE]


@dataclass(frozen=True)
class BackingService:
    """A store the services use that is not an rlyard service (PostgreSQL for the memory): Compose and
    Kubernetes run it from its own image with a persistent volume at ``data_dir``; ``rlyard up``
    does not start it (the services fall back to embedded stores there)."""

    name: str
    image: str
    port: int
    probe: tuple[str, ...]                # a command that exits 0 when it accepts connections
    data_dir: str
    run_as: int                           # the image's own non-root user id
    profiles: tuple[str, ...] = ("all",)
    env: dict[str, str] = field(default_factory=dict)
    writable: tuple[str, ...] = ("/tmp",)  # paths it writes besides data_dir (root is read-only)
    storage: str = "1Gi"
    resources: Resources = Resources()
    # arguments of the image's entrypoint (Compose ``command``, Kubernetes ``args``); empty: its CMD
    command: tuple[str, ...] = ()
    # false: data_dir is scratch (Compose tmpfs, Kubernetes emptyDir), lost with the container
    persistent: bool = True
    # true: every rlyard client pod (``rlyard.dev/role: client``: the trainer, the workers) may reach
    # it in Kubernetes, not only the services that list it in ``backing``
    clients: bool = False
    # a Dockerfile that builds the image from the offline base (scripts/docker/build.sh <name>), and
    # the reference it is tagged with; Compose runs it when RLYARD_<NAME>_IMAGE names it
    offline_dockerfile: str = ""
    offline_image: str = ""
    # With the table's tls on, the random password ``rlyard certs`` makes for the store replaces the
    # table's (docs/deployment.md, "TLS and tokens"). ``password_env``: the variable of ``env`` that
    # holds the table's password; it gives way to ``<password_env>_FILE``, a secret file (the official
    # images' convention: POSTGRES_PASSWORD_FILE). ``requirepass``: Redis; the command loads a secret
    # config file (``requirepass <password>``) first and the probe's redis-cli reads REDISCLI_AUTH.
    password_env: str = ""
    requirepass: bool = False

    @property
    def has_password(self) -> bool:
        """Whether the store takes the password of ``rlyard certs`` when the table's tls is on."""
        return bool(self.password_env) or self.requirepass

    @property
    def image_variable(self) -> str:
        """The variable that replaces ``image`` under Compose (``RLYARD_REDIS_IMAGE``)."""
        return "RLYARD_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper()) + "_IMAGE"


@dataclass(frozen=True)
class TlsDeployment:
    """TLS and tokens under Compose and Kubernetes (docs/deployment.md, "TLS and tokens"): off, the
    services talk plaintext without tokens; on, they mount what ``rlyard certs --out <dir>`` made
    (Compose reads the files from ``dir``; Kubernetes from the Secrets of ``<dir>/k8s-secrets.yaml``)."""

    enabled: bool = False
    dir: str = "secrets"
    require_client_cert: bool = True     # mutual TLS: every caller shows the client certificate


@dataclass(frozen=True)
class VolumeSpec:
    """A container volume services share (Compose: a named volume; Kubernetes: an emptyDir per pod),
    filled at first start by ``init`` run once in ``image`` before its services start (Compose: a
    one-shot service; Kubernetes: an initContainer). Large data and indexes live here, never in an
    image. ``init`` must skip what is already there: it runs at every start."""

    name: str
    image: str = ""
    init: tuple[str, ...] = ()
    # one volume every pod mounts (Kubernetes: a ReadWriteMany PersistentVolumeClaim of ``storage``,
    # ``storage_class`` if given) instead of an emptyDir per pod; for data one service writes and
    # others read, e.g. the weights the trainer publishes for the samplers
    shared: bool = False
    storage: str = "1Gi"
    storage_class: str = ""
    access_mode: str = "ReadWriteMany"   # pods on several nodes; ReadWriteOnce serves pods of one node


@dataclass(frozen=True)
class ServiceTable:
    """Every service, the backing stores they use, the image that runs them in containers, and
    whether containers talk TLS with tokens."""

    image: str
    services: tuple[ServiceSpec, ...]
    backing: tuple[BackingService, ...] = ()
    tls: TlsDeployment = TlsDeployment()
    # image name -> the pyproject extras it installs (the Dockerfile's EXTRAS); each is tagged
    # ``image_ref(name)``, so the SQL tool server's image carries no torch
    images: dict[str, tuple[str, ...]] = field(default_factory=dict)
    volumes: tuple[VolumeSpec, ...] = ()
    workers: tuple[WorkerSpec, ...] = ()

    def image_ref(self, name: str) -> str:
        """The reference of image ``name``: ``rlyard:0.1.0`` and ``sql`` -> ``rlyard-sql:0.1.0``."""
        repo, sep, tag = self.image.rpartition(":")
        if not sep or "/" in tag:
            repo, tag = self.image, "latest"
        return f"{repo}-{name}:{tag}"

    def image_of(self, spec: ServiceSpec | WorkerSpec) -> str:
        """The image reference a service's containers run (``image`` itself in a table without images)."""
        return self.image_ref(spec.image) if spec.image else self.image

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
            max_replicas=int(raw.get("max_replicas", 0)),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            resources=Resources(**(raw.get("resources") or {})),
            depends_on=tuple(str(d) for d in raw.get("depends_on", [])),
            wants=tuple(str(w) for w in raw.get("wants", [])),
            startup_s=int(raw.get("startup_s", 60)),
            backing=tuple(str(b) for b in raw.get("backing", [])),
            container_env={str(k): str(v) for k, v in (raw.get("container_env") or {}).items()},
            image=str(raw.get("image", "")),
            volumes={str(k): str(v) for k, v in (raw.get("volumes") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad service entry {raw!r} in the service table: {exc}") from None


def _backing(raw: dict[str, Any]) -> BackingService:
    try:
        return BackingService(
            name=str(raw["name"]),
            image=str(raw["image"]),
            port=int(raw["port"]),
            probe=tuple(str(a) for a in raw["probe"]),
            data_dir=str(raw["data_dir"]),
            run_as=int(raw["run_as"]),
            profiles=tuple(raw.get("profiles", ["all"])),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            writable=tuple(str(w) for w in raw.get("writable", ["/tmp"])),
            storage=str(raw.get("storage", "1Gi")),
            resources=Resources(**(raw.get("resources") or {})),
            command=tuple(str(a) for a in raw.get("command", [])),
            persistent=bool(raw.get("persistent", True)),
            clients=bool(raw.get("clients", False)),
            offline_dockerfile=str(raw.get("offline_dockerfile", "")),
            offline_image=str(raw.get("offline_image", "")),
            password_env=str(raw.get("password_env", "")),
            requirepass=bool(raw.get("requirepass", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad backing entry {raw!r} in the service table: {exc}") from None


def _worker(raw: dict[str, Any]) -> WorkerSpec:
    try:
        return WorkerSpec(
            name=str(raw["name"]),
            image=str(raw.get("image", "")),
            profiles=tuple(raw.get("profiles", ["workers"])),
            replicas=int(raw.get("replicas", 1)),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            resources=Resources(**(raw.get("resources") or {})),
            backing=tuple(str(b) for b in raw.get("backing", [])),
            wants=tuple(str(w) for w in raw.get("wants", [])),
            volumes={str(k): str(v) for k, v in (raw.get("volumes") or {}).items()},
            stop_grace_s=int(raw.get("stop_grace_s", 60)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad workers entry {raw!r} in the service table: {exc}") from None


def _volume(raw: dict[str, Any]) -> VolumeSpec:
    try:
        return VolumeSpec(name=str(raw["name"]), image=str(raw.get("image", "")),
                          init=tuple(str(a) for a in raw.get("init", [])), shared=bool(raw.get("shared", False)),
                          storage=str(raw.get("storage", "1Gi")), storage_class=str(raw.get("storage_class", "")),
                          access_mode=str(raw.get("access_mode", "ReadWriteMany")))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"bad volumes entry {raw!r} in the service table: {exc}") from None


def load_table(path: Path = DEFAULT_TABLE) -> ServiceTable:
    """Read and check the service table."""
    data = yaml.safe_load(path.read_text())
    services = tuple(_spec(s) for s in data.get("services", []))
    backing = tuple(_backing(b) for b in data.get("backing") or [])
    workers = tuple(_worker(w) for w in data.get("workers") or [])
    names = [s.name for s in services] + [b.name for b in backing] + [w.name for w in workers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: service, backing and worker names must be unique, got {names}")
    images = {str(k): tuple(str(e) for e in (v or [])) for k, v in (data.get("images") or {}).items()}
    users: tuple[ServiceSpec | WorkerSpec, ...] = (*services, *workers)
    for u in users:
        if (u.image or images) and u.image not in images:
            raise ConfigError(f"{path}: {u.name} runs image {u.image!r}, which the table's images do not define "
                              f"(known: {', '.join(sorted(images)) or 'none'})")
    volumes = tuple(_volume(v) for v in data.get("volumes") or [])
    for v in volumes:
        if v.init and v.image not in images:
            raise ConfigError(f"{path}: volume {v.name} runs its init in image {v.image!r}, which images do not define")
        if v.access_mode not in ACCESS_MODES:
            raise ConfigError(f"{path}: volume {v.name} has access_mode {v.access_mode!r}; use one of "
                              f"{', '.join(ACCESS_MODES)}")
        if v.init and v.shared:
            # every pod of every user would run it at once on the one shared volume
            raise ConfigError(f"{path}: volume {v.name} is shared and has an init; fill a shared volume from "
                              "the service that writes it")
    for u in users:
        unknown = sorted(set(u.volumes) - {v.name for v in volumes})
        if unknown:
            raise ConfigError(f"{path}: {u.name} mounts {', '.join(unknown)}, which the table's volumes do not define")
        for name, mount in u.volumes.items():
            mount_path, _ = split_mount(mount)
            if not mount_path or ":" in mount_path:
                raise ConfigError(f"{path}: {u.name} mounts {name} at {mount!r}; give a path, or path:ro for "
                                  "read-only")
    for b in backing:
        if b.password_env and b.password_env not in b.env:
            raise ConfigError(f"{path}: backing {b.name} has password_env {b.password_env}, which its env does not set")
        if b.password_env and b.requirepass:
            raise ConfigError(f"{path}: backing {b.name} sets both password_env and requirepass; keep the one its "
                              "image takes")
        if b.requirepass and b.command[:1] != ("redis-server",):
            raise ConfigError(f"{path}: backing {b.name} has requirepass, so its command must start with redis-server "
                              "(the secret config file goes after it)")
    stores = {b.name for b in backing}
    for u in users:
        unknown = sorted(set(u.backing) - stores)
        if unknown:
            raise ConfigError(f"{path}: {u.name} uses backing {', '.join(unknown)}, which the table's "
                              "backing list does not define")
    known = {s.name for s in services}
    for w in workers:
        unknown = sorted(set(w.wants) - known)
        if unknown:
            raise ConfigError(f"{path}: worker {w.name} wants {', '.join(unknown)}, which the table's services "
                              "do not define")
        if w.replicas < 1:
            raise ConfigError(f"{path}: worker {w.name} has replicas {w.replicas}; run at least 1")
        filled = sorted(v.name for v in volumes if v.name in w.volumes and v.init)
        if filled:
            raise ConfigError(f"{path}: worker {w.name} mounts {', '.join(filled)}, which an init fills; workers "
                              "mount volumes without one (a shared volume, or one a service fills)")
    for s in services:
        if s.replicas < 1 or (s.max_replicas and s.max_replicas <= s.replicas):
            raise ConfigError(f"{path}: {s.name} has replicas {s.replicas} and max_replicas {s.max_replicas}; "
                              "replicas must be >= 1, and max_replicas 0 (no autoscaling) or above replicas")
    ports = [p for s in services for p in (s.port, s.metrics_port)]
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{path}: every port and metrics_port must be unique, got {ports}")
    seen: dict[str, int] = {}
    resolved = []
    for s in services:
        for verb, peers in (("depends on", s.depends_on), ("wants", s.wants)):
            for dep in peers:
                if dep not in seen:
                    raise ConfigError(
                        f"{path}: {s.name} {verb} {dep!r}, which must be a service listed before it"
                    )
        both = sorted(set(s.depends_on) & set(s.wants))
        if both:
            raise ConfigError(f"{path}: {s.name} lists {', '.join(both)} in both depends_on and wants; keep one")
        for key, value in s.env.items():
            for ref in _PLACEHOLDER.findall(value):
                if ref not in s.depends_on and ref not in s.wants:
                    raise ConfigError(
                        f"{path}: {s.name}.env.{key} refers to {{{ref}}}; add {ref} to depends_on "
                        "(or to wants, if it may run without it)"
                    )
        resolved.append(replace(s, peer_ports={d: seen[d] for d in (*s.depends_on, *s.wants)}))
        seen[s.name] = s.port
    raw_tls = data.get("tls") or {}
    try:
        tls = TlsDeployment(enabled=bool(raw_tls.get("enabled", False)), dir=str(raw_tls.get("dir", "secrets")),
                            require_client_cert=bool(raw_tls.get("require_client_cert", True)))
        unknown = sorted(set(raw_tls) - {"enabled", "dir", "require_client_cert"})
    except AttributeError:
        raise ConfigError(f"{path}: tls must be a mapping (enabled, dir, require_client_cert)") from None
    if unknown:
        raise ConfigError(f"{path}: unknown tls setting(s) {', '.join(unknown)}; valid: enabled, dir, "
                          "require_client_cert")
    return ServiceTable(image=str(data["image"]), services=tuple(resolved), backing=backing, tls=tls,
                        images=images, volumes=volumes, workers=workers)
