"""A GRPO run with ``model.backend: remote``: the runner publishes each update to the weights
directory, the sampler service (``rlyard serve sampler``, its own process) samples the next step
with it, and the run trains the same weights as one with the in-process sampler.

The weights are compared to 1e-5, which holds with ``MKL_CBWR=AUTO,STRICT`` (the test command sets
it; docs/trainer.md, "Exact resume") or one torch thread: without it, with 2 threads, one parameter
of 77,824 came out 1.2e-5 off."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.sampler import sampler_service
from trainer.checkpoint import latest_checkpoint
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import MetricsEvent
from trainer.runner import run_experiment
from trainer.sampler.weights import latest_version

ROOT = Path(__file__).resolve().parents[2]


def rl_config(model_dir: Path, tasks: Path, judge_url: str, model: dict[str, Any]) -> ExperimentConfig:
    """Two GRPO steps on the tiny policy (exact match plus a scripted judge, so every step updates)."""
    judge = {"weight": 0.1, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    return parse_config({
        "name": "rl-remote", "seed": 3, "model": {"path": str(model_dir), **model}, "checkpoint": {"every_steps": 2},
        "stages": [{"kind": "rl", "name": "grpo", "steps": 2, "tasks": {"path": str(tasks)},
                    "reward": {"qa_em": 1.0, "judge": judge},
                    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 12,
                                "max_total_tokens": 256},
                    "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    })



def scripted_judge(request: Any) -> str:
    """The judge's answer as a function of what it is asked (the trajectory in its messages).

    The reward service scores a step's trajectories concurrently, so their judge requests arrive
    in any order: replies scripted in order of arrival would give a trajectory another's score
    depending on timing (the flakiness this test once had). A reply that depends on the content
    gives the same trajectory the same score in both runs, and a different one if the remote run
    sampled different text."""
    text = json.dumps(request["messages"], sort_keys=True)
    score = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=2).digest(), "big") % 10
    return f"Score: {score}\nReason: scripted."


def run(config: ExperimentConfig, out: Path) -> tuple[dict[str, Any], list[dict[str, float]], dict[str, torch.Tensor]]:
    events: list[Any] = []
    with open_stack(config) as stack:
        report = run_experiment(config, out, stack=stack, on_event=events.append)
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None
    params = torch.load(ckpt.path / "model.pt", weights_only=True)
    return report, [e.values for e in events if isinstance(e, MetricsEvent)], params


def test_grpo_with_the_remote_sampler_trains_what_the_local_one_trains(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    local_report, local_steps, local_params = run(
        rl_config(tiny_model_dir, rl_tasks, chat_server(respond=scripted_judge).url, {}), tmp_path / "local")

    root = tmp_path / "weights"
    # the service's own process; leaving the block stops it and fails unless it exits 0
    with sampler_service(tiny_model_dir, tmp_path / "sampler", weights_root=root) as address:
        config = rl_config(tiny_model_dir, rl_tasks, chat_server(respond=scripted_judge).url,
                           {"backend": "remote", "sampler": address, "weights_dir": str(root)})
        report, steps, params = run(config, tmp_path / "remote")

    assert report["state"] == local_report["state"] == "SUCCEEDED" and report["steps"] == 2
    # the stage's start (version 0) and each update (1, 2) were published; step 2 sampled with update 1
    assert latest_version(root) == 2 and sorted(p.name for p in root.glob("v*")) == [f"v{v:08d}" for v in range(3)]
    assert [s["sampled_weight_version"] for s in steps] == [0.0, 1.0]
    for remote_step, local_step in zip(steps, local_steps, strict=True):
        assert remote_step["infra_failed"] == 0.0 and remote_step["updated"] == 1.0
        for key in ("reward/judge", "reward/qa_em", "loss", "kept", "trajectories"):
            assert remote_step[key] == pytest.approx(local_step[key], rel=1e-4, abs=1e-5), key   # loss ~0: float noise
    for name, tensor in params.items():
        torch.testing.assert_close(tensor, local_params[name], atol=1e-5, rtol=1e-4)
