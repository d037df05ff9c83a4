"""configs/viper.yaml end to end with tiny step counts: ViPER's tasks generated, a tiny Qwen2-VL,
the reward service and tool server embedded (real services on 127.0.0.1, port 0), and the four
stages run coarse to fine — SFT and GRPO on the image level, then on the instance level — each
writing its metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from envs.vision.viper_tasks import main as write_viper_tasks
from trainer.config import parse_config
from trainer.model import init_policy

ROOT = Path(__file__).resolve().parents[2]


def test_the_viper_config_runs_both_levels_coarse_to_fine(tmp_path: Path) -> None:
    from trainer.compose import open_stack
    from trainer.events import MetricsEvent
    from trainer.runner import run_experiment

    data = tmp_path / "viper"
    write_viper_tasks(["--task", "all", "--n", "4", "--out", str(data)])
    init_policy(data / "policy", vision=True)
    raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "viper.yaml").read_text())
    text = json.dumps(raw).replace("data/generated/viper", str(data))
    raw = json.loads(text)
    assert [s["name"] for s in raw["stages"]] == ["image-format", "image", "instance-format", "instance"]
    for stage in raw["stages"]:           # the committed config, cut to one small step per stage
        stage["steps"] = 1
        if stage["kind"] == "sft":
            stage["batch_size"] = 2
        else:
            stage["rollout"].update(group_size=2, prompts_per_step=1, max_new_tokens_per_turn=12)
            stage["algorithm"]["micro_batch_size"] = 2
    config = parse_config(raw, "configs/viper.yaml")
    events: list[Any] = []
    with open_stack(config) as stack:
        assert stack.services.reward.startswith("127.0.0.1:")
        report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)
    assert report["state"] == "SUCCEEDED"
    metrics = [e for e in events if isinstance(e, MetricsEvent)]
    assert [m.stage for m in metrics] == ["image-format", "image", "instance-format", "instance"]
    for m in metrics:
        if m.stage.endswith("format"):
            assert math.isfinite(m.values["loss"]) and m.values["loss"] > 0
        else:
            # the untrained policy's text is scored (malformed, so 0) by the embedded reward service
            assert m.values["trajectories"] == 2 and 0.0 <= m.values["reward_mean"] <= 1.0
            assert m.values["response_tokens"] > 0          # the prompt (~330 tokens + the image) fits
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["image-format", "image", "instance-format", "instance"]
    samples = (tmp_path / "run" / "samples.md").read_text()
    assert "viper-image-" in samples and "viper-instance-" in samples
    assert "components: viper_image=" in samples and "components: viper_instance=" in samples
