"""`docker compose --profile workers up` for real in secured mode (the table's `tls.enabled: true`):
the table rendered with tls on into a fresh folder, `rlyard certs --out <folder>/secrets` beside it,
the offline images (Redis: scripts/docker/Dockerfile.redis, `RLYARD_REDIS_IMAGE`).

Redis loads `requirepass` from the secret `redis.conf` (its command: `redis-server
/run/secrets/redis.conf ...`): a client without the password is refused (from the redis container
and from a worker on the Compose network), its probe passes with `REDISCLI_AUTH` of
`backing/redis.env`, and the worker connects with the password of its token file
(`RLYARD_WORKERS_BROKER_URL`) and turns healthy; no password is on a command line or in the
worker's log. The services serve mutual TLS on their published ports (plaintext is refused) and
want their token; a remote-sampler run through the trainer service (its broker URL from the
trainer's token file, none in the run config) goes through the worker as
tests/e2e/test_compose_workers.py checks in plaintext, and Compose stops every container cleanly.

The file secrets are bind mounts of the host files as `rlyard certs` wrote them (0600, owned by
whoever ran it): here they are given to the containers' users as `rlyard certs` says
(`deploy.secret_readers`: redis.conf to 999, the key files to 10001); as written, redis-server exits `can't open config
file '/run/secrets/redis.conf': Permission denied`. The last test brings up the profile `memory`
(postgres with `POSTGRES_PASSWORD_FILE`, the memory service) when a postgres image with the official
entrypoint is here (the table's postgres:15-alpine, or RLYARD_POSTGRES_IMAGE's); none can be
pulled on this machine, so it is skipped unless one is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import yaml
from compose_support import (
    DATA,
    MODELS,
    ROOT,
    Compose,
    build_images,
    exit_code,
    health,
    require_docker,
    workers_run_config,
)

from rlyard.tls import ClientTLS
from rlyard.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from rlyard_app import deploy
from rlyard_app.services import DEFAULT_TABLE, ServiceTable, load_table

pytestmark = pytest.mark.slow  # minutes: image builds (cached: seconds), start-up, a 7-step run

SERVICES = ["redis", "sql-tools", "reward", "sampler", "worker", "trainer"]
PUBLISHED = ["sql-tools", "reward", "sampler", "trainer"]


def _env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _give(path: Path, uid: int) -> None:
    """Let the container user ``uid`` read a secret file: chown as root (it stays 0600), else
    chmod 0644 (docs/deployment.md, "TLS and tokens")."""
    if os.geteuid() == 0:
        os.chown(path, uid, -1)
    else:
        path.chmod(0o644)


@dataclass
class Secured:
    compose: Compose
    table: ServiceTable
    secrets: Path
    timings: dict[str, float]

    def token(self, service: str) -> str:
        return _env_file(self.secrets / "tokens" / f"{service}.env")["RLYARD_AUTH_TOKEN"]

    def tls(self) -> ClientTLS:
        tls = self.secrets / "tls"
        return ClientTLS(tls / "ca.pem", tls / "client.pem", tls / "client-key.pem")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServiceTable, Path]:
    """The table with tls on rendered into a fresh folder, `rlyard certs` beside it, its private
    files given to their readers; (table, folder)."""
    require_docker(needs_base_image=True)
    plain = load_table(DEFAULT_TABLE)
    table = replace(plain, tls=replace(plain.tls, enabled=True))
    root = tmp_path_factory.mktemp("secured")
    deploy.write_all(table, root)
    secrets = root / table.tls.dir
    certs = subprocess.run([sys.executable, "-m", "rlyard_app.cli.main", "certs", "--out", str(secrets)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert certs.returncode == 0, certs.stdout + certs.stderr
    # bind-mounted file secrets keep the host's owner and mode (0600): give them to their readers
    for name, uid in deploy.secret_readers(table).items():
        _give(secrets / name, uid)
    return table, root


@pytest.fixture(scope="module")
def secured(tree: tuple[ServiceTable, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    table, root = tree
    secrets = root / table.tls.dir
    [redis] = [b for b in table.backing if b.name == "redis"]
    env = dict(os.environ, **{redis.image_variable: redis.offline_image})
    compose = Compose.publishing(table, PUBLISHED, tmp_path_factory.mktemp("compose"), "rlyard-secured", ["workers"],
                                 env, file=root / "docker-compose.yml")
    images = [*sorted({table.get(s).image for s in SERVICES if s not in ("redis", "worker")}), "redis"]
    timings = {"build_s": build_images(*images)}
    try:
        tic = time.monotonic()
        compose("run", "--rm", "--no-deps", "-T", "trainer", "rlyard", "model", "init", "--out", f"{MODELS}/policy")
        timings["policy_s"] = time.monotonic() - tic
        tic = time.monotonic()
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "500", "--scale", "worker=1", *SERVICES,
                timeout=600)
        timings["up_s"] = time.monotonic() - tic
        yield Secured(compose, table, secrets, timings)
    finally:
        logs = compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose-secured.log").write_text(logs)
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def test_redis_wants_the_password_of_rlyard_certs(secured: Secured) -> None:
    compose = secured.compose
    password = _env_file(secured.secrets / "backing" / "redis.env")["REDISCLI_AUTH"]
    assert (secured.secrets / "backing" / "redis.conf").read_text() == f"requirepass {password}\n"
    # in the redis container: without the password NOAUTH, with it (its probe's variable, or -a) PONG
    bare = compose("exec", "-T", "redis", "sh", "-c", "unset REDISCLI_AUTH; redis-cli ping").stdout
    assert "NOAUTH" in bare, bare
    assert compose("exec", "-T", "redis", "redis-cli", "ping").stdout.strip() == "PONG"
    explicit = compose("exec", "-T", "redis", "sh", "-c",
                       'unset REDISCLI_AUTH; redis-cli --no-auth-warning -a "$0" ping', password).stdout
    assert explicit.strip() == "PONG"
    wrong = compose("exec", "-T", "redis", "sh", "-c",
                    'unset REDISCLI_AUTH; redis-cli --no-auth-warning -a "$0" ping', "not-" + password)
    said = wrong.stdout + wrong.stderr      # AUTH failed: WRONGPASS ... (stderr), then NOAUTH for the ping
    assert "WRONGPASS" in said and "PONG" not in said, said
    # from a worker on the Compose network: refused without it, accepted with its token file's URL
    probe = ("import os, redis\n"
             "try:\n    redis.Redis(host='redis', port=6379).ping(); print('open')\n"
             "except redis.exceptions.RedisError as exc: print('refused', type(exc).__name__, exc)\n"
             "print('url', redis.Redis.from_url(os.environ['RLYARD_WORKERS_BROKER_URL']).ping())\n")
    out = compose("exec", "-T", "worker", "python", "-c", probe).stdout.splitlines()
    assert out[0].startswith("refused AuthenticationError"), out
    assert out[1] == "url True", out
    # the password is on no command line: redis-server reads it from the secret file
    container = compose.container("redis")
    args = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Args}}", container], capture_output=True,
                                     text=True, check=True).stdout)
    assert args[:1] == ["/run/secrets/redis.conf"] and password not in " ".join(args)


def test_secured_workers_profile_runs_through_the_worker(secured: Secured) -> None:
    from trainer.sampler.remote import SamplerClient

    compose, table, timings = secured.compose, secured.table, secured.timings
    ports = {name: compose.port(name, table.get(name).port) for name in PUBLISHED}
    tls = secured.tls()
    credentials = tls.credentials()
    for name, port in ports.items():
        assert health(port, credentials) == "SERVING", name
        assert health(port).startswith("UNREACHABLE"), name           # no plaintext

    # the worker connected to redis with the password of its token file, which its log masks
    password = _env_file(secured.secrets / "backing" / "redis.env")["REDISCLI_AUTH"]
    worker_log = compose("logs", "--no-color", "worker").stdout
    assert "Connected to redis://:**@redis:6379/0" in worker_log and " ready." in worker_log, worker_log[-2000:]
    assert password not in worker_log
    status = [json.loads(line) for line in compose("ps", "--format", "json", "worker").stdout.splitlines() if line]
    assert [s["Health"] for s in status] == ["healthy"]

    # a remote-sampler run on the worker; the config names no broker: the trainer's token file has it
    compose("exec", "-T", "trainer", "python", "-m", "envs.text_to_sql", "--no-schema", "--out", DATA)
    config = workers_run_config(table)
    rl = config["stages"][1]
    del rl["rollout"]["workers"]["broker_url"]
    config_yaml = yaml.safe_dump(config)
    assert password not in config_yaml
    groups = rl["steps"] * rl["rollout"]["prompts_per_step"]
    total = config["stages"][0]["steps"] + rl["steps"]
    channel = grpc.secure_channel(f"127.0.0.1:{ports['trainer']}", credentials)
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetRun(trainer_pb2.GetRunRequest(run_id="w"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    auth = (("authorization", f"Bearer {secured.token('trainer')}"),)
    tic = time.monotonic()
    started = stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=config_yaml, run_id="w"), timeout=60,
                            metadata=auth)
    assert started.run.total_steps == total
    events = list(stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id="w"), timeout=1200, metadata=auth))
    timings["run_s"] = time.monotonic() - tic
    run = stub.GetRun(trainer_pb2.GetRunRequest(run_id="w"), timeout=30, metadata=auth).run
    assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED, [(e.stage, e.step, e.state) for e in events[-3:]]
    metrics = dict(run.latest_metrics)
    assert metrics["workers/submitted"] == metrics["workers/ok"] == groups, metrics
    assert metrics["workers/failed"] == metrics["workers/timed_out"] == metrics["workers/stale"] == 0
    assert compose("logs", "--no-color", "worker").stdout.count("rlyard.rollout_group[") >= groups
    channel.close()

    latest = json.loads(compose("exec", "-T", "sampler", "cat", f"{MODELS}/weights/LATEST").stdout)

    async def info() -> object:
        async with SamplerClient(f"127.0.0.1:{ports['sampler']}", tls=tls,
                                 auth_token=secured.token("sampler")) as client:
            return await client.info(timeout=30)

    served = asyncio.run(info())
    assert latest["version"] >= 1 and served.weight_version == latest["version"]   # type: ignore[attr-defined]

    tic = time.monotonic()
    compose("stop", "--timeout", "70")
    timings["stop_s"] = time.monotonic() - tic
    for name in SERVICES:
        assert exit_code(compose("ps", "-a", "-q", name).stdout.strip()) == "0", name
    print("compose secured e2e timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def test_secured_memory_reads_the_postgres_password_from_its_secret(
        tree: tuple[ServiceTable, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """`--profile memory up` with tls on: postgres creates its database with the password of
    `POSTGRES_PASSWORD_FILE` (the secret of `rlyard certs`), the memory service reaches SERVING with
    the URL of its token file; the table's (tls off) password is refused. Needs a postgres image with
    the official entrypoint: the table's (postgres:15-alpine) or RLYARD_POSTGRES_IMAGE's."""
    table, root = tree
    [postgres] = [b for b in table.backing if b.name == "postgres"]
    image = os.environ.get(postgres.image_variable) or postgres.image
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.skip(f"no postgres image {image} here (no registry; set {postgres.image_variable} to one with the "
                    "official docker-entrypoint.sh)")
    spec = table.get("memory")
    compose = Compose.publishing(table, ["memory"], tmp_path_factory.mktemp("compose"), "rlyard-secured-memory",
                                 ["memory"], dict(os.environ, **{postgres.image_variable: image}),
                                 file=root / "docker-compose.yml")
    timings = {"build_s": build_images(spec.image)}
    secrets = root / table.tls.dir
    password = (secrets / "backing" / "postgres-password").read_text()
    try:
        tic = time.monotonic()
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", "postgres", "memory", timeout=400)
        timings["up_s"] = time.monotonic() - tic
        tls = Secured(compose, table, secrets, timings).tls()
        assert health(compose.port("memory", spec.port), tls.credentials()) == "SERVING"
        log = compose("logs", "--no-color", "memory").stdout
        assert "postgresql+psycopg://rlyard:***@postgres:5432/memory" in log and password not in log, log[-2000:]
        inspect = ["docker", "inspect", "-f", "{{json .Config.Env}}", compose.container("postgres")]
        env = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
        assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password" in env
        assert not [e for e in env if e.startswith("POSTGRES_PASSWORD=")]
        table_url = f"postgresql://rlyard:{postgres.env['POSTGRES_PASSWORD']}@postgres:5432/memory"
        probe = ("import os, psycopg\n"
                 "for url in (os.environ['RLYARD_MEMORY_DB_URL'].replace('+psycopg', ''), os.environ['TABLE_URL']):\n"
                 "    try:\n        psycopg.connect(url).close(); print('ok')\n"
                 "    except psycopg.OperationalError as exc: print('refused', str(exc).strip().splitlines()[-1])\n")
        out = compose("exec", "-T", "-e", f"TABLE_URL={table_url}", "memory", "python", "-c", probe).stdout.splitlines()
        assert out[0] == "ok" and out[1].startswith("refused") and "password authentication failed" in out[1], out
        tic = time.monotonic()
        compose("stop", "--timeout", "30")
        timings["stop_s"] = time.monotonic() - tic
        for name in ("postgres", "memory"):
            assert exit_code(compose("ps", "-a", "-q", name).stdout.strip()) == "0", name
        print("compose secured memory e2e timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    finally:
        logs = compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose-secured-memory.log").write_text(logs)
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
