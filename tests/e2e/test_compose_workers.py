"""`docker compose --profile workers up` for real (issue 23): Redis (the offline image,
scripts/docker/Dockerfile.redis), one Celery rollout worker, the sampler service, the SQL tools,
the reward service and the trainer, all from the generated docker-compose.yml.

The base checkpoint is written into the shared `models` volume by a trainer container (the only
read-write mount); the sampler, which mounts it read-only, loads it and turns SERVING; the worker
connects to Redis and consumes its queue. Then a `model.backend: remote` run with
`rollout.workers` goes through the trainer service: its GRPO groups are rolled out on the worker
(through the sampler, the tools and the reward service, by their Compose names), the trainer
publishes each update into the volume, and the sampler serves the latest version from there.
Compose then stops every container cleanly.

Containers are reached only through ports published on 127.0.0.1 (free loopback ports, through an
override). `make compose-e2e` runs it with tests/e2e/test_docker_compose.py; docs/deployment.md
("The sampler and the workers") has a run's numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from compose_support import (
    DATA,
    MODELS,
    Compose,
    build_images,
    exit_code,
    health,
    require_docker,
    workers_run_config,
)

from rlyard.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from rlyard_app.services import DEFAULT_TABLE, load_table

pytestmark = pytest.mark.slow  # minutes: image builds (cached: seconds), start-up, a 7-step run

SERVICES = ["redis", "sql-tools", "reward", "sampler", "worker", "trainer"]
PUBLISHED = ["sql-tools", "reward", "sampler", "trainer"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Compose, dict[str, float]]]:
    require_docker(needs_base_image=True)
    table = load_table(DEFAULT_TABLE)
    [redis] = [b for b in table.backing if b.name == "redis"]
    env = dict(os.environ, **{redis.image_variable: redis.offline_image})
    compose = Compose.publishing(table, PUBLISHED, tmp_path_factory.mktemp("compose"), "rlyard-workers", ["workers"],
                                 env)
    timings: dict[str, float] = {}
    images = [*sorted({table.get(s).image for s in SERVICES if s not in ("redis", "worker")}), "redis"]
    timings["build_s"] = build_images(*images)
    try:
        # the base checkpoint into the models volume, from the trainer: the only read-write mount
        tic = time.monotonic()
        compose("run", "--rm", "--no-deps", "-T", "trainer", "rlyard", "model", "init", "--out", f"{MODELS}/policy")
        timings["policy_s"] = time.monotonic() - tic
        tic = time.monotonic()
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "500", "--scale", "worker=1", *SERVICES,
                timeout=600)
        timings["up_s"] = time.monotonic() - tic
        yield compose, timings
    finally:
        logs = compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose-workers.log").write_text(logs)
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def test_workers_profile_runs_a_remote_sampler_run_on_the_workers(stack: tuple[Compose, dict[str, float]]) -> None:
    from trainer.sampler.remote import SamplerClient

    compose, timings = stack
    table = load_table(DEFAULT_TABLE)
    ports = {name: compose.port(name, table.get(name).port) for name in PUBLISHED}
    for name, port in ports.items():
        assert health(port) == "SERVING", name

    # the worker consumes its queue on the redis store (healthy: its ready file exists)
    worker_log = compose("logs", "--no-color", "worker").stdout
    assert "Connected to redis://" in worker_log and "@redis:6379/0" in worker_log, worker_log[-2000:]
    assert " ready." in worker_log
    status = [json.loads(line) for line in compose("ps", "--format", "json", "worker").stdout.splitlines() if line]
    assert [s["Health"] for s in status] == ["healthy"]
    # the sampler reads the models volume and cannot write it
    touch = compose("exec", "-T", "sampler", "touch", f"{MODELS}/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr

    # a remote-sampler run whose GRPO groups go to the worker
    compose("exec", "-T", "trainer", "python", "-m", "envs.text_to_sql", "--no-schema", "--out", DATA)
    config = workers_run_config(table)
    rl = config["stages"][1]
    groups = rl["steps"] * rl["rollout"]["prompts_per_step"]
    total = config["stages"][0]["steps"] + rl["steps"]
    channel = grpc.insecure_channel(f"127.0.0.1:{ports['trainer']}")
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    tic = time.monotonic()
    started = stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump(config), run_id="w"), timeout=60)
    assert started.run.total_steps == total
    events = list(stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id="w"), timeout=1200))
    timings["run_s"] = time.monotonic() - tic
    run = stub.GetRun(trainer_pb2.GetRunRequest(run_id="w"), timeout=30).run
    assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED, [(e.stage, e.step, e.state) for e in events[-3:]]
    metrics = dict(run.latest_metrics)
    assert metrics["workers/submitted"] == metrics["workers/ok"] == groups, metrics
    assert metrics["workers/failed"] == metrics["workers/timed_out"] == metrics["workers/stale"] == 0
    worker_log = compose("logs", "--no-color", "worker").stdout
    assert worker_log.count("rlyard.rollout_group[") >= groups   # received by the worker, by key
    channel.close()

    # the trainer published into the volume, and the sampler serves the latest version from there
    latest = json.loads(compose("exec", "-T", "sampler", "cat", f"{MODELS}/weights/LATEST").stdout)

    async def info() -> Any:
        async with SamplerClient(f"127.0.0.1:{ports['sampler']}") as client:
            return await client.info(timeout=30)

    served = asyncio.run(info())
    assert served.weights_root == f"{MODELS}/weights"
    assert latest["version"] >= 1 and served.weight_version == served.latest_published == latest["version"]
    assert served.weight_publication == latest["publication"]

    # Compose stops every container cleanly
    tic = time.monotonic()
    compose("stop", "--timeout", "70")
    timings["stop_s"] = time.monotonic() - tic
    for name in SERVICES:
        assert exit_code(compose("ps", "-a", "-q", name).stdout.strip()) == "0", name
    print("compose workers e2e timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
