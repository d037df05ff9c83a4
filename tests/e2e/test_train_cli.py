"""`rlyard model init` + `rlyard train`: SFT then GRPO with the embedded SQL tool server and
reward service, through the real CLI, writing every run output and updating the policy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

RLYARD = [sys.executable, "-m", "rlyard_app.cli.main"]


def test_train_sft_then_rl_writes_outputs(tmp_path: Path, chat_server: Callable[..., Any]) -> None:
    policy = tmp_path / "policy"
    assert subprocess.run([*RLYARD, "model", "init", "--out", str(policy)], capture_output=True,
                          timeout=120).returncode == 0
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "envs.text_to_sql", "--out", str(data), "--tasks", "4",
                           "--demos", "8", "--no-schema"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    # A few SFT steps teach the tiny policy too little for SQL or format rewards to tell its samples
    # apart, and groups of equal rewards are filtered out, so the GRPO step would update nothing. A
    # scripted judge grades the step's four samples 0, 3, 6 and 9 of 10, in whatever order they are
    # scored; at weight 0.1 (0 to 0.09) no total can tie another (the other terms differ by >= 0.1).
    judge = chat_server(*(f"Score: {score}\nReason: scripted." for score in (0, 3, 6, 9)))
    judge_term = {"weight": 0.1, "backend": "openai", "endpoint": judge.url, "model": "grader",
                  "require_reference": False}
    config: dict[str, Any] = {
        "name": "e2e", "seed": 0, "model": {"path": str(policy)}, "output_dir": str(tmp_path / "runs"),
        "checkpoint": {"every_steps": 2, "keep": 2},
        "stages": [
            {"kind": "sft", "name": "warm", "data": str(data / "text_to_sql_demos.jsonl"), "steps": 3, "batch_size": 4},
            {"kind": "rl", "name": "grpo", "steps": 1, "tasks": {"path": str(data / "text_to_sql_tasks.jsonl")},
             "reward": {"sql_execution": 1.0, "format": 0.1, "judge": judge_term},
             "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 2, "max_new_tokens_per_turn": 32,
                         "max_total_tokens": 1024},
             "algorithm": {"micro_batch_size": 2}},
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([*RLYARD, "train", "-c", str(path), "--run-id", "r"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["state"] == "SUCCEEDED" and report["steps"] == 4
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["warm"] * 3 + ["grpo"]
    rl = lines[-1]
    assert rl["trajectories"] == 4 and "reward_mean" in rl and "reward/format" in rl
    assert 0.0 <= rl["accuracy"] <= 1.0 and rl["infra_failed"] == 0.0
    # the GRPO step updated the policy: both groups carried signal and the export moved from SFT's
    assert len(judge.requests) == 4 and rl["reward/judge"] == pytest.approx(0.45)
    assert rl["kept"] == 4 and rl["updated"] == 1.0 and rl["tokens"] > 0
    warm = load_file(Path(report["models"]["warm"]) / "model.safetensors")
    grpo = load_file(Path(report["models"]["grpo"]) / "model.safetensors")
    assert warm.keys() == grpo.keys() and any(not torch.equal(warm[k], grpo[k]) for k in warm)
    assert (run_dir / "curves" / "loss.png").stat().st_size > 1000
    assert "## grpo · step 1" in (run_dir / "samples.md").read_text()
    assert any(p.name.startswith("step-") for p in (run_dir / "checkpoints").iterdir())
    # every finished stage is exported as a loadable HF checkpoint (rlyard eval --checkpoint takes it)
    assert set(report["models"]) == {"warm", "grpo"}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(report["models"]["warm"])
    assert len(AutoTokenizer.from_pretrained(report["models"]["warm"])) == model.config.vocab_size
    # a bad config gets a clear error, not a traceback
    path.write_text(yaml.safe_dump({**config, "stages": [{**config["stages"][1], "rollout": {"group_size": 1}}]}))
    bad = subprocess.run([*RLYARD, "train", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "group_size" in bad.stderr
