"""A GRPO run with ``rollout.workers``: each step's groups go to a real ``rlyard worker`` over a real
redis-server, the worker samples through the sampler service (``rlyard serve sampler``, its own
process, fed the weights the runner publishes) and calls the run's embedded tool server; the
trainer scores and trains on what comes back. And the configs that cannot work are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rlyard.errors import ConfigError
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import MetricsEvent
from trainer.runner import run_experiment

ROOT = Path(__file__).resolve().parents[3]


def rl_config(model_dir: Path, tasks: Path, judge_url: str, model: dict[str, Any], workers: dict[str, Any],
              memory: bool = False) -> ExperimentConfig:
    """Two GRPO steps of 2 groups of 2 on the tiny policy (exact match plus a scripted judge)."""
    judge = {"weight": 0.1, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    return parse_config({
        "name": "rl-workers", "seed": 3, "model": {"path": str(model_dir), **model},
        "checkpoint": {"every_steps": 2}, **({"memory": {"enabled": True}} if memory else {}),
        "stages": [{"kind": "rl", "name": "grpo", "steps": 2, "tasks": {"path": str(tasks)},
                    "reward": {"qa_em": 1.0, "judge": judge},
                    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 12,
                                "max_total_tokens": 256, "workers": workers},
                    "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    })



def test_grpo_rolls_out_on_the_workers(tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any,
                                       redis_url: str, start_worker: Any) -> None:
    start_worker("w1", concurrency=2)
    root = tmp_path / "weights"
    ready = tmp_path / "sampler-ready.json"
    env = {**os.environ, "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RLYARD_SAMPLER_POLICY_DIR": str(tiny_model_dir),
           "RLYARD_SAMPLER_WEIGHTS_ROOT": str(root), "RLYARD_SAMPLER_POLL_S": "0.1"}
    server = subprocess.Popen([sys.executable, "-c", "from rlyard_app.cli.serve import run_service; "
                               "run_service('sampler')"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the sampler service did not start listening"
            time.sleep(0.05)
        address = f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        replies = [f"Score: {s}\nReason: scripted." for s in (0, 3, 6, 9) * 2]
        config = rl_config(tiny_model_dir, rl_tasks, chat_server(*replies).url,
                           {"backend": "remote", "sampler": address, "weights_dir": str(root)},
                           {"enabled": True, "broker_url": redis_url, "max_staleness": 0})
        events: list[Any] = []
        with open_stack(config) as stack:
            report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    steps = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2
    # step 2 was sampled on the workers with the weights of update 1, published by the runner
    assert [s["sampled_weight_version"] for s in steps] == [0.0, 1.0]
    assert [s["trajectories"] for s in steps] == [4.0, 4.0]
    assert all(s["infra_failed"] == 0.0 and s["updated"] == 1.0 for s in steps)
    assert [(s["workers/submitted"], s["workers/ok"]) for s in steps] == [(2.0, 2.0), (4.0, 4.0)]
    assert all(s["workers/stale"] == s["workers/failed"] == s["workers/timed_out"] == 0.0 for s in steps)


def test_configs_the_workers_cannot_serve_are_refused(tiny_model_dir: Path, rl_tasks: Path) -> None:
    workers = {"enabled": True, "broker_url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match=r"rollout\.workers: the workers sample through the sampler service"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", {}, workers)
    remote = {"backend": "remote", "sampler": "127.0.0.1:1", "weights_dir": "/tmp/w"}
    with pytest.raises(ConfigError, match=r"rollout\.workers: the graph memory prompts rollouts"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, workers, memory=True)
    with pytest.raises(ConfigError, match=r"rollout\.workers\.max_staleness: must be >= 0"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, {**workers, "max_staleness": -1})
    with pytest.raises(ConfigError, match=r"rollout\.workers\.broker_url: the workers use Redis"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, {**workers, "broker_url": "amqp://x"})
