"""configs/imagent.yaml end to end with tiny step counts: IMAgent tasks and demos generated, a tiny
Qwen2-VL, the image tools and the reward service embedded (real services on 127.0.0.1, port 0),
SFT on the oracle's zoom paths (showing the previews and the zooms the real tool returned) then GRPO
with the two-level mask (observations masked, failed and truncated trajectories dropped)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from envs.vision.imagent import main as write_imagent_tasks
from trainer.config import parse_config
from trainer.model import init_policy

ROOT = Path(__file__).resolve().parents[2]


def test_the_imagent_config_runs_sft_then_grpo(tmp_path: Path) -> None:
    import torch

    from trainer.compose import open_stack
    from trainer.events import MetricsEvent
    from trainer.policy import VLMPolicy, load_policy
    from trainer.runner import run_experiment
    from trainer.sft import load_sft_examples

    torch.set_num_threads(1)
    data = tmp_path / "imagent"
    write_imagent_tasks(["--out", str(data), "--n-train", "4", "--n-heldout", "1", "--seed", "0"])
    init_policy(data / "policy", vision=True)
    raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "imagent.yaml").read_text())
    raw = json.loads(json.dumps(raw).replace("data/generated/imagent", str(data)))
    assert [s["name"] for s in raw["stages"]] == ["format", "grpo"]
    sft, rl = raw["stages"]
    sft.update(steps=1, batch_size=2)
    rl["steps"] = 1
    rl["rollout"].update(group_size=2, prompts_per_step=1, max_new_tokens_per_turn=16)
    rl["algorithm"]["micro_batch_size"] = 2
    config = parse_config(raw, "configs/imagent.yaml")
    filters = config.stages[1].algorithm.filters
    assert filters.drop_infra_failed and filters.drop_truncated      # the trajectory-level mask

    # the action-level mask in the demos: only the assistant's calls and answer are trained, never
    # the zoom results (their text and their images) nor the previews
    policy = load_policy(data / "policy")
    assert isinstance(policy, VLMPolicy)
    tokenizer = policy.tokenizer
    for example in load_sft_examples(data / "train_demos.jsonl", tokenizer, vision=policy):
        trained = tokenizer.decode([t for t, m in zip(example.token_ids, example.loss_mask, strict=True) if m])
        assert "<tool_call>" in trained and "<answer>" in trained
        assert "zoom into image" not in trained and "tool_response" not in trained
        assert "<|image_pad|>" not in trained and any(i.image_id.startswith("zoom-") for i in example.images)

    events: list[Any] = []
    with open_stack(config) as stack:
        assert stack.services.tools.startswith("127.0.0.1:")
        report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)
    assert report["state"] == "SUCCEEDED"
    metrics = [e for e in events if isinstance(e, MetricsEvent)]
    assert [m.stage for m in metrics] == ["format", "grpo"]
    assert math.isfinite(metrics[0].values["loss"]) and metrics[0].values["loss"] > 0
    assert metrics[1].values["trajectories"] == 2 and 0.0 <= metrics[1].values["reward_mean"] <= 1.0
    samples = (tmp_path / "run" / "samples.md").read_text()
    assert "imagent-train-" in samples and "qa_em=" in samples
