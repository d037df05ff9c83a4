"""The image tools as a deployed service: `rlyard up --profile vision` starts the table's
`image-tools` entry on 127.0.0.1 (as Compose and Kubernetes run it, from configs/services.yaml),
a session opened over gRPC with an image is cropped there, and an IMAgent run whose config names
that service (`services: {tools: <address>}`, nothing embedded) sends each task's images in
OpenSession and reads the answers from the zooms that service returns."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from image_support import IMAGE_TOOLS, crop_and_revisit, pattern, pixels, png, tool_calls
from launcher_support import ROOT, alive, rlyard_up, wait_for
from prometheus_client.parser import text_string_to_metric_families

from rlyard_app.launcher import check_health
from rlyard_app.services import load_table


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    """`rlyard up --profile vision` (free ports), shared by the tests of this module."""
    with rlyard_up(tmp_path_factory.mktemp("up"), "vision") as launched:
        yield launched


def test_the_vision_profile_is_the_image_tools_of_the_table() -> None:
    table = load_table()
    [spec] = table.profile("vision")
    assert spec.name == "image-tools" and spec.kind == "tools"
    assert set(spec.env["RLYARD_TOOLS_TOOLS"].split(",")) == IMAGE_TOOLS
    assert table.images[spec.image] == ("image",)


def test_up_vision_serves_the_image_tools_over_grpc(vision: tuple[Any, dict[str, Any]]) -> None:
    _, state = vision
    assert set(state["services"]) == {"image-tools"}
    service = state["services"]["image-tools"]
    target = str(service["target"])
    assert target.startswith("127.0.0.1:") and alive(int(service["pid"]))
    assert check_health(target, service="rlyard.tools.v1.ToolService") == "SERVING"
    asyncio.run(crop_and_revisit(target))
    calls = tool_calls(int(service["metrics_port"]))
    assert calls[("crop", "ok")] >= 1 and calls[("revisit", "ok")] >= 1


def test_sessions_with_images_stay_on_their_replica(vision: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    """Two replicas of the table's image-tools (the launched one and one more), dialled as a
    replica list (`host:port,host:port`, as `routed:///image-tools-headless:50058` resolves in
    Kubernetes): each session's calls find the images it was opened with, and the sessions spread."""
    from rlyard.routing import tool_client_for
    from rlyard_app.launcher import Launcher

    _, state = vision
    first = state["services"]["image-tools"]
    photo = pattern(64, 48)
    with Launcher([load_table().get("image-tools")], tmp_path / "logs", ephemeral_ports=True) as launcher:
        second = launcher.start()["image-tools"]
        replicas = {str(first["target"]): int(first["metrics_port"]), second.target: int(second.metrics_port or 0)}
        before = {t: _open_sessions(m) for t, m in replicas.items()}

        async def sessions() -> None:
            async with tool_client_for(",".join(replicas)) as client:
                for n in range(20):   # uuid4 ids: all 20 on one replica has odds of 2e-6
                    sid = await client.open_session({}, attachments=[png(photo, f"photo{n}")], timeout=10)
                    crop = await client.call_tool("crop", {"image_id": f"photo{n}", "box": [n, 0, n + 8, 8]},
                                                  session_id=sid, timeout=10)
                    assert not crop.is_error, crop.content
                    assert np.array_equal(pixels(crop.content[1]), photo[0:8, n:n + 8])   # type: ignore[arg-type]
                    assert await client.close_session(sid, timeout=10)

        asyncio.run(sessions())
        opened = [_open_sessions(m) - before[t] for t, m in replicas.items()]
    assert sum(opened) == 20 and min(opened) >= 1, opened


def test_an_imagent_run_uses_the_launched_image_tools(vision: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    """configs/imagent.yaml with `services: {tools: <the launched image-tools>}`: the tasks'
    images reach the service in OpenSession, and a policy that zooms where the answer is reads it
    from the zooms the service returns."""
    import torch
    from transformers import AutoTokenizer

    from envs.vision.imagent import REWARD_SPEC
    from envs.vision.imagent_scripted import ScriptedImagentPolicy
    from trainer.compose import open_stack
    from trainer.config import parse_config
    from trainer.evaluate import evaluate

    torch.set_num_threads(1)
    _, state = vision
    service = state["services"]["image-tools"]
    target = str(service["target"])
    before = tool_calls(int(service["metrics_port"]))
    data, raw = _imagent(tmp_path, n_train=2, n_heldout=8)
    raw["services"] = {"tools": target}          # the deployed service instead of the embedded one
    config = parse_config(raw, "imagent.yaml")

    with open_stack(config) as stack:
        assert stack.services.tools == target
        tasks = stack.tasks(data / "heldout.jsonl")
        assert all(len(t.attachments) >= 2 for t in tasks)       # 2-4 full-resolution images a task
        policy = ScriptedImagentPolicy(AutoTokenizer.from_pretrained(data / "policy"), tasks, use_tools=True)
        report = evaluate(policy, tasks, stack, reward_spec=REWARD_SPEC, rollout_config=config.stages[1].rollout,
                          max_tool_calls=2)
    assert report.n == 8 and report.infra_failures == 0
    assert report.execution_accuracy >= 0.9 and report.answered_after_zoom == 1.0
    zooms = tool_calls(int(service["metrics_port"]))[("zoom", "ok")] - before.get(("zoom", "ok"), 0.0)
    assert zooms == pytest.approx(report.mean_tool_calls * report.n)   # every call was served there


def _imagent(tmp_path: Path, *, n_train: int, n_heldout: int) -> tuple[Path, dict[str, Any]]:
    """IMAgent tasks and a tiny vision policy under ``tmp_path``, and configs/imagent.yaml pointed at them."""
    from envs.vision.imagent import main as write_tasks
    from trainer.model import init_policy

    data = tmp_path / "imagent"
    write_tasks(["--out", str(data), "--n-train", str(n_train), "--n-heldout", str(n_heldout), "--seed", "0"])
    init_policy(data / "policy", vision=True)
    raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "imagent.yaml").read_text())
    return data, json.loads(json.dumps(raw).replace("data/generated/imagent", str(data)))


def _open_sessions(metrics_port: int) -> float:
    """OpenSession calls the launched server answered OK."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) if family.name == "rlyard_rpc"
               for s in family.samples if s.name == "rlyard_rpc_total"
               and s.labels["method"].endswith("OpenSession") and s.labels["code"] == "OK")


def test_imagent_trains_on_the_trainer_images_packages_with_the_deployed_services(
        vision: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    """`rlyard train -c` of configs/imagent.yaml (tiny steps) where only the packages of the
    trainer's image (`train,workers`: no OpenCV) can be imported, as in its container: it runs
    with `services: {tools: <image-tools>, reward: <reward service>}`, and every rollout's session,
    with the task's images, is opened on the launched image tool server."""
    from rlyard_app.launcher import Launcher

    sys.path.insert(0, str(ROOT / "scripts" / "docker"))
    try:
        from image_env import image_distributions, write_env
    finally:
        sys.path.pop(0)
    table = load_table()
    trainer_env = write_env(image_distributions(list(table.images["trainer"])), tmp_path / "trainer-env")
    assert not (trainer_env / "cv2").exists()
    _, state = vision
    service = state["services"]["image-tools"]
    opened = _open_sessions(int(service["metrics_port"]))

    _, raw = _imagent(tmp_path, n_train=4, n_heldout=1)
    sft, rl = raw["stages"]
    sft.update(steps=1, batch_size=2)
    rl["steps"] = 1
    rl["rollout"].update(group_size=2, prompts_per_step=1, max_new_tokens_per_turn=16)
    rl["algorithm"]["micro_batch_size"] = 2
    raw["output_dir"] = str(tmp_path / "runs")
    with Launcher([table.get("sql-tools"), table.get("reward")], tmp_path / "logs", ephemeral_ports=True) as launcher:
        reward = launcher.start()["reward"]
        raw["services"] = {"tools": str(service["target"]), "reward": reward.target}
        config = tmp_path / "imagent.yaml"
        config.write_text(yaml.safe_dump(raw))
        env = {**os.environ, "PYTHONPATH": f"{trainer_env}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-S", "-m", "rlyard_app.cli.main", "train", "-c", str(config),
                                 "--run-id", "remote"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "remote" / "report.json").read_text())
    assert report["state"] == "SUCCEEDED"
    assert _open_sessions(int(service["metrics_port"])) - opened == 2      # group_size × prompts_per_step


def test_the_launcher_stops_the_image_tools_cleanly(vision: tuple[Any, dict[str, Any]]) -> None:
    launched, state = vision
    child = int(state["services"]["image-tools"]["pid"])
    launched.proc.send_signal(signal.SIGINT)
    assert launched.exit_code(timeout=20) == 0, launched.output()
    wait_for(lambda: not alive(child), 10, "the image tool server to exit")
