"""`docker compose up` for real (issue 23): the images built offline (scripts/docker/build.sh), the
`sql` profile (SQL tools, reward) plus the trainer started from the generated docker-compose.yml,
and a short SFT + GRPO run driven through the trainer service over its published port.

Mid-rollout the SQL tool server's process is SIGKILLed from the host (a crash, as an OOM kill
would be: `docker kill` counts as a manual stop, which restart policies ignore). The sessions it
held are gone, so the trajectories that were using it fail as INFRA_FAILED and are masked out of
the loss; Compose's restart policy brings the server back, later steps run, the run completes,
and its final checkpoint loads in full. Compose then stops every container cleanly.

Containers are reached only through ports published on 127.0.0.1 (a Compose override publishes
them on free host ports, so the test does not collide with a `rlyard up` on the table's ports).
`make compose-e2e` runs it; docs/deployment.md has its timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from compose_support import ROOT, Compose, require_docker
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlyard.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from rlyard_app.services import DEFAULT_TABLE, load_table

pytestmark = pytest.mark.slow  # minutes: image builds (cached: seconds), start-up, a 16-step run

SERVICES = ["sql-tools", "reward", "trainer"]
WORK = "/tmp/e2e"  # the trainer container's scratch (its /tmp is a tmpfs): policy and data


def _inspect(container: str, fmt: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", fmt, container], capture_output=True, text=True,
                          check=True).stdout.strip()


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _config() -> dict[str, Any]:
    """configs/smoke_sql.yaml, pointed at the compose services and the trainer's scratch, with more
    GRPO steps so that there are steps after the crash. The tiny policy makes no tool call after a
    short SFT, so the crash reaches the trajectories through their scoring (the reward service runs
    each query on the SQL tool server): a 10 s deadline on the services, and ``max_failed_steps``
    room for the steps that fail whole while the server hangs and restarts."""
    config = yaml.safe_load((ROOT / "configs" / "smoke_sql.yaml").read_text())
    config["name"] = "compose-e2e"
    config["model"] = {"path": f"{WORK}/policy"}
    config["services"] = {"tools": "sql-tools:50051", "reward": "reward:50052", "timeout_s": 10,
                          "max_failed_steps": 10}
    config["checkpoint"] = {"every_steps": 4, "keep": 2}
    sft, rl = config["stages"]
    sft["data"] = f"{WORK}/data/text_to_sql_demos.jsonl"
    sft["steps"] = 4
    rl["tasks"] = {"path": f"{WORK}/data/text_to_sql_tasks.jsonl"}
    rl["steps"] = 12
    return dict(config)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Compose, dict[str, float]]]:
    require_docker()
    table = load_table(DEFAULT_TABLE)
    compose = Compose.publishing(table, SERVICES, tmp_path_factory.mktemp("compose"), "rlyard-e2e", ["sql", "train"])
    timings: dict[str, float] = {}
    tic = time.monotonic()
    images = sorted({table.get(s).image for s in SERVICES})
    build = subprocess.run(["bash", "scripts/docker/build.sh", *images], cwd=ROOT, capture_output=True, text=True,
                           timeout=3600, env=dict(os.environ, PYTHON=sys.executable))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    timings["build_s"] = time.monotonic() - tic
    tic = time.monotonic()
    try:
        compose("up", "-d", "--wait", "--no-build", *SERVICES, timeout=600)
        timings["up_s"] = time.monotonic() - tic
        yield compose, timings
    finally:
        logs = compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose.log").write_text(logs)
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def test_compose_runs_sft_and_grpo_and_survives_a_crashed_tool_server(stack: tuple[Compose, dict[str, float]]) -> None:
    compose, timings = stack
    table = load_table(DEFAULT_TABLE)
    ports = {name: (compose.port(name, table.get(name).port), compose.port(name, table.get(name).metrics_port))
             for name in SERVICES}

    # health and metrics over the published ports
    for name, (grpc_port, metrics_port) in ports.items():
        assert _serving(grpc_port), f"{name} is not SERVING on 127.0.0.1:{grpc_port}"
        assert "rlyard_rpc_total" in _metrics(metrics_port) or "python_info" in _metrics(metrics_port), name

    # the policy and the data, made in the trainer container (the image ships data/spider, data/corpus)
    tic = time.monotonic()
    compose("exec", "-T", "trainer", "rlyard", "model", "init", "--out", f"{WORK}/policy")
    compose("exec", "-T", "trainer", "python", "-m", "envs.text_to_sql", "--no-schema", "--out", f"{WORK}/data")
    timings["prepare_s"] = time.monotonic() - tic

    channel = grpc.insecure_channel(f"127.0.0.1:{ports['trainer'][0]}")
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    config = _config()
    sft_steps, rl_steps = config["stages"][0]["steps"], config["stages"][1]["steps"]
    total = sft_steps + rl_steps
    tic = time.monotonic()
    started = stub.StartRun(trainer_pb2.StartRunRequest(config_yaml=yaml.safe_dump(config), run_id="e2e"), timeout=60)
    assert started.run.total_steps == total

    events: list[trainer_pb2.MetricEvent] = []
    first_rl = threading.Event()

    def stream() -> None:
        for event in stub.StreamMetrics(trainer_pb2.StreamMetricsRequest(run_id="e2e"), timeout=1200):
            events.append(event)
            if event.stage == "grpo" and event.values:
                first_rl.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()

    # mid-rollout: once GRPO's first step is in, the SQL tool server hangs (SIGSTOP) while the next
    # step rolls out, so that step's scoring (the reward service runs its queries there) hits its
    # deadline; once that step is reported, the server is SIGKILLed (a watchdog killing a hung
    # process) and Compose's restart policy brings it back
    sql_tools = compose.container("sql-tools")
    assert first_rl.wait(900), f"no GRPO step reported; events: {[(e.stage, e.step) for e in events]}"
    pid = int(_inspect(sql_tools, "{{.State.Pid}}"))
    subprocess.run(["kill", "-STOP", str(pid)], check=True)
    killed_at_step = max(e.step for e in events if e.stage == "grpo" and e.values)
    deadline = time.monotonic() + 300
    while max(e.step for e in events if e.stage == "grpo" and e.values) == killed_at_step:
        assert time.monotonic() < deadline and reader.is_alive(), "the run reported no step while the server hung"
        time.sleep(0.1)
    subprocess.run(["kill", "-9", str(pid)], check=True)

    reader.join(1200)
    assert not reader.is_alive(), "the run's metrics stream did not end"
    timings["run_s"] = time.monotonic() - tic

    # the run completed every step, and the crash cost only the affected trajectories
    assert events[-1].state == trainer_pb2.RUN_STATE_SUCCEEDED, [(e.stage, e.step, e.state) for e in events[-3:]]
    steps = [(e.stage, e.step) for e in events if e.values]  # steps count within their stage
    assert steps == [("warm", s) for s in range(1, sft_steps + 1)] + [("grpo", s) for s in range(1, rl_steps + 1)]
    grpo = {e.step: dict(e.values) for e in events if e.stage == "grpo" and e.values}
    print("grpo steps (trajectories, tool_calls, infra_failed, kept):",
          {s: (v["trajectories"], v.get("tool_calls"), v.get("infra_failed"), v.get("kept")) for s, v in grpo.items()})
    failed = {step: v["infra_failed"] for step, v in grpo.items() if v.get("infra_failed", 0) > 0}
    assert failed, f"no trajectory failed after the crash at step {killed_at_step}: {grpo}"
    assert min(failed) == killed_at_step + 1 and failed[min(failed)] == grpo[min(failed)]["trajectories"]
    for step, n in failed.items():  # failed trajectories are masked: dropped, never learned from
        assert grpo[step]["dropped/infra_failed"] == n
        assert grpo[step]["kept"] <= grpo[step]["trajectories"] - n
    assert any(v.get("infra_failed", 0) == 0 and v["trajectories"] > 0 for s, v in grpo.items() if s > max(failed))

    # Compose's restart policy brought the crashed server back, and it serves again
    assert int(_inspect(sql_tools, "{{.RestartCount}}")) >= 1
    assert _serving(compose.port("sql-tools", table.get("sql-tools").port))

    # the run's report and its last checkpoint, read in the trainer container
    run = stub.GetRun(trainer_pb2.GetRunRequest(run_id="e2e"), timeout=30).run
    assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED and run.stage == "grpo" and run.step == rl_steps
    assert run.last_checkpoint.endswith(f"step-{total:08d}")
    report = json.loads(compose("exec", "-T", "trainer", "cat", f"{run.output_dir}/report.json").stdout)
    assert report["state"] == "SUCCEEDED" and report["last_checkpoint"] == total
    check = (
        "import json, sys, torch; from pathlib import Path; p = Path(sys.argv[1]); "
        "state = json.loads((p / 'trainer_state.json').read_text()); "
        "model = torch.load(p / 'model.pt', weights_only=True); "
        "blob = torch.load(p / 'training.pt', weights_only=False); "
        "print(json.dumps({'step': state['step'], 'tensors': len(model), 'training': sorted(blob)}))"
    )
    loaded = json.loads(compose("exec", "-T", "trainer", "python", "-c", check, run.last_checkpoint).stdout)
    assert loaded["step"] == total and loaded["tensors"] > 0 and loaded["training"]
    channel.close()

    # Compose stops every container cleanly: each server drains on SIGTERM and exits 0
    tic = time.monotonic()
    compose("stop", "--timeout", "30")
    timings["stop_s"] = time.monotonic() - tic
    for name in SERVICES:
        container = compose.container(name) or compose("ps", "-a", "-q", name).stdout.strip()
        assert _inspect(container, "{{.State.ExitCode}}") == "0", name
    print("compose e2e timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
