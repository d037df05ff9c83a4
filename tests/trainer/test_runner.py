"""run_experiment end to end on the tiny policy: outputs, resume after SIGKILL, stop, an RL stage."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rlyard.errors import ConfigError
from trainer.checkpoint import latest_checkpoint
from trainer.config import (
    AlgorithmConfig,
    CheckpointConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    StageConfig,
    parse_config,
)
from trainer.policy.hf import HFPolicy
from trainer.runner import run_experiment
from trainer.types import RolloutStatus, RolloutTrajectory, Task

REPO = Path(__file__).resolve().parents[2]


def _write_sft_data(path: Path, tokenizer: Any) -> Path:
    """Eight examples: half in token form, half in message form."""
    lines = []
    for i in range(4):
        ids = tokenizer.encode(f"select name from singer where age {i}", add_special_tokens=False)
        lines.append({"prompt_ids": ids[:3], "token_ids": ids[3:], "loss_mask": [1] * (len(ids) - 3)})
        lines.append({"messages": [{"role": "user", "content": f"how many singer {i}"},
                                   {"role": "assistant", "content": f"<answer>{i}</answer>"}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _raw_config(model_dir: Path, data: Path, every: int) -> dict[str, Any]:
    """Two SFT stages (3 + 3 steps), as YAML data (so a subprocess can rebuild it)."""
    stage = {"kind": "sft", "data": str(data), "steps": 3, "batch_size": 3,
             "optim": {"lr": 1e-3, "warmup_steps": 2}}
    return {"name": "sft-test", "seed": 7, "model": {"path": str(model_dir)},
            "checkpoint": {"every_steps": every, "keep": 2},
            "stages": [dict(stage, name="first"), dict(stage, name="second")]}


@pytest.fixture(scope="module")
def sft_data(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return _write_sft_data(tmp_path_factory.mktemp("sft") / "demos.jsonl", tokenizer)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, sft_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its report, events and final parameters."""
    run_dir = tmp_path_factory.mktemp("runs") / "plain"
    events: list[dict[str, Any]] = []
    report = run_experiment(parse_config(_raw_config(tiny_model_dir, sft_data, every=2)), run_dir,
                            on_event=events.append)
    return {"report": report, "events": events, "run_dir": run_dir, "params": _final_params(run_dir)}


def _final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None
    params: dict[str, torch.Tensor] = torch.load(ckpt.path / "model.pt", weights_only=True)
    return params


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def test_sft_run_writes_outputs(uninterrupted: dict[str, Any]) -> None:
    run_dir, report = uninterrupted["run_dir"], uninterrupted["report"]
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["global_step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert [x["stage"] for x in lines] == ["first"] * 3 + ["second"] * 3
    assert all(x["loss"] > 0 and x["tokens"] > 0 for x in lines)
    assert (run_dir / "curves" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["run_id"] == "plain" and on_disk["seed"] == 7 and on_disk["steps"] == 6
    assert [s["steps_done"] for s in on_disk["stages"]] == [3, 3] and on_disk["final_metrics"]["loss"] > 0
    events = uninterrupted["events"]
    assert events[0]["state"] == "RUNNING" and events[-1]["state"] == "SUCCEEDED"
    assert sum(e["type"] == "metrics" for e in events) == 6
    # warmup: lr ramps over two steps then stays
    assert [x["lr"] for x in lines[:3]] == pytest.approx([5e-4, 1e-3, 1e-3])


_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from trainer.config import parse_config
    from trainer.runner import run_experiment

    raw, run_dir, kill_at = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    def on_event(event):
        if event["type"] == "checkpoint" and event["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    report = run_experiment(parse_config(raw), run_dir, on_event=on_event)
    print(json.dumps({"state": report["state"], "steps": report["steps"]}))
""")


def test_resume_after_sigkill_matches_uninterrupted(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    """Killed at step 2 and resumed, a run ends with the parameters and losses of an uninterrupted
    one. Bitwise only with MKL's strict reproducibility (MKL_CBWR): otherwise MKL's float results
    depend on how buffers happen to be aligned, so two fresh processes of the same run differed in
    the 6th digit of the first step's loss in 2 of 8 runs of this test (0 of 10 with it)."""
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    raw = json.dumps(_raw_config(tiny_model_dir, sft_data, every=2))
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MKL_CBWR": "AUTO,STRICT"}
    first = subprocess.run([sys.executable, str(script), raw, str(run_dir), "2"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None and ckpt.trainer_state["global_step"] == 2 and ckpt.trainer_state["stage_step"] == 2
    second = subprocess.run([sys.executable, str(script), raw, str(run_dir), "-1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"state": "SUCCEEDED", "steps": 6}
    reference = subprocess.run([sys.executable, str(script), raw, str(tmp_path / "plain"), "-1"], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr[-2000:]
    _assert_same(_final_params(run_dir), _final_params(tmp_path / "plain"))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["global_step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == [x["loss"] for x in plain]


def test_stop_event_checkpoints_and_resume_continues(
    tiny_model_dir: Path, sft_data: Path, uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    config = parse_config(_raw_config(tiny_model_dir, sft_data, every=100))
    stop = threading.Event()
    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if event["type"] == "metrics" and event["global_step"] == 4:
            stop.set()

    report = run_experiment(config, tmp_path / "run", on_event=on_event, stop=stop)
    assert report["state"] == "STOPPED" and report["steps"] == 4
    assert events[-1]["state"] == "STOPPED"
    # every_steps 100: only the stage end (3) and the stop (4) wrote checkpoints
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3, 4]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["state"] == "STOPPED"
    report = run_experiment(config, tmp_path / "run")
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    _assert_same(_final_params(tmp_path / "run"), uninterrupted["params"])


# ------------------------------------------------------------------ RL
def _rl_config(model_dir: Path) -> ExperimentConfig:
    stage = StageConfig(
        kind="rl", name="grpo", steps=2, reward={"exact_match": 1.0},
        rollout=RolloutConfig(group_size=3, prompts_per_step=2),
        algorithm=AlgorithmConfig(micro_batch_size=3, updates_per_batch=1),
        optim=OptimConfig(lr=1e-3),
    )
    return ExperimentConfig(name="rl-test", stages=(stage,), model=ModelConfig(path=str(model_dir)),
                            checkpoint=CheckpointConfig(every_steps=1))


def _injected(model_dir: Path, tok: Any, delay: float = 0.0) -> tuple[Any, Any, Any, list[int]]:
    """task_source, rollout_fn and score_fn over a frozen copy of the initial policy: 2 tasks x 3
    answers, one trajectory infra-failed; ``delay`` seconds of waiting in every rollout."""
    sampler = HFPolicy(model_dir)    # the rollout side's copy of the initial policy
    seen_steps: list[int] = []

    def task_source(stage: StageConfig, step: int) -> list[Task]:
        return [Task(f"q{step}-{i}", [{"role": "user", "content": f"how many singer {i}"}], ground_truth=str(i))
                for i in range(stage.rollout.prompts_per_step)]

    def rollout_fn(tasks: list[Task], step: int) -> list[RolloutTrajectory]:
        seen_steps.append(step)
        time.sleep(delay)
        out = []
        for g, task in enumerate(tasks):
            prompt = tok.encode(f"<|im_start|>user\n{task.messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n",
                                add_special_tokens=False)
            for s in range(3):
                tokens = tok.encode(f"<answer>{s}</answer><|im_end|>", add_special_tokens=False)
                logp, _ = sampler.forward_logprobs(torch.tensor([prompt + tokens]))
                old = logp[0, len(prompt) - 1:].tolist()
                out.append(RolloutTrajectory(task=task, group_id=g, sample_index=s, prompt_ids=prompt,
                                             token_ids=tokens, loss_mask=[1] * len(tokens), old_logprobs=old,
                                             regions=[6] * len(tokens), final_answer=str(s)))
        return out

    def score_fn(trajectories: list[RolloutTrajectory]) -> None:
        for t in trajectories:
            if t.group_id == 1 and t.sample_index == 2:
                t.status, t.infra_error = RolloutStatus.INFRA_FAILED, "reward service unavailable"
            else:
                t.reward = float(t.final_answer == t.task.ground_truth)
                t.reward_components = {"accuracy": t.reward}

    return task_source, rollout_fn, score_fn, seen_steps


def test_rl_stage_with_injected_rollouts(tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path) -> None:
    task_source, rollout_fn, score_fn, seen_steps = _injected(tiny_model_dir, tiny_tokenizer)
    events: list[dict[str, Any]] = []
    report = run_experiment(_rl_config(tiny_model_dir), tmp_path / "rl", rollout_fn=rollout_fn,
                            score_fn=score_fn, task_source=task_source, on_event=events.append)
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2 and seen_steps == [1, 2]
    values = [e["values"] for e in events if e["type"] == "metrics"]
    assert len(values) == 2
    for v in values:
        assert v["reward_mean"] == pytest.approx(2 / 5) and v["kept"] == 5
        assert v["dropped/infra_failed"] == 1 and v["updated"] == 1.0
    samples = (tmp_path / "rl" / "samples.md").read_text()
    assert "reward **1**" in samples and "**assistant**" in samples and "**user**" in samples
    assert (tmp_path / "rl" / "curves" / "reward.png").exists()
    assert (tmp_path / "rl" / "curves" / "accuracy.png").exists()


def test_time_limited_rl_stage_writes_samples_of_its_last_step(
    tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """A stage that its time limit ends (not its step count) still gets a samples.md section for the
    step it ended on: each rollout waits 0.5 s and the limit is 0.8 s, so it ends after step 2."""
    task_source, rollout_fn, score_fn, seen_steps = _injected(tiny_model_dir, tiny_tokenizer, delay=0.5)
    config = _rl_config(tiny_model_dir)
    stage = dataclasses.replace(config.stages[0], steps=1000, max_seconds=0.8)
    config = dataclasses.replace(config, stages=(stage,), checkpoint=CheckpointConfig(every_steps=100))
    report = run_experiment(config, tmp_path / "rl", rollout_fn=rollout_fn, score_fn=score_fn,
                            task_source=task_source)
    assert report["state"] == "SUCCEEDED" and seen_steps == [1, 2]
    samples = (tmp_path / "rl" / "samples.md").read_text()
    assert "## grpo · step 1" in samples and "## grpo · step 2" in samples


def test_rl_stage_without_rollouts_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rollout_fn, score_fn, task_source"):
        run_experiment(_rl_config(tiny_model_dir), tmp_path / "rl")


def test_time_limited_stage_ends_early_exports_and_resumes(
    tiny_model_dir: Path, sft_data: Path, tmp_path: Path
) -> None:
    """``max_seconds`` ends a stage after the step that crosses it (steps are then a cap); the stage's
    model is exported, the next stage runs, and a resumed run does not train the ended stage again."""
    raw = _raw_config(tiny_model_dir, sft_data, every=100)
    raw["stages"][0].update(steps=1000, max_seconds=1e-6)   # any step takes longer: the stage ends after one
    run_dir = tmp_path / "timed"
    report = run_experiment(parse_config(raw), run_dir)
    assert report["state"] == "SUCCEEDED" and report["steps"] == 4
    assert [s["steps_done"] for s in report["stages"]] == [1, 3]
    assert report["stages"][0]["seconds"] > 0
    assert (run_dir / "models" / "first" / "config.json").is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["first", "second", "second", "second"]
    again = run_experiment(parse_config(raw), run_dir, resume=True)   # resumes from the final checkpoint
    assert again["steps"] == 4 and [s["steps_done"] for s in again["stages"]] == [1, 3]


def test_stage_limit_replaces_a_stage_time_limit_and_a_resumed_run_keeps_it(
    tiny_model_dir: Path, sft_data: Path, tmp_path: Path
) -> None:
    """``stage_limit`` is asked once per fresh stage; its number replaces ``max_seconds`` (None keeps it),
    and a run resumed mid-stage keeps the replaced limit without asking again."""
    raw = _raw_config(tiny_model_dir, sft_data, every=100)
    for stage in raw["stages"]:
        stage["max_seconds"] = 1e-6      # as configured, each stage would end after one step
    asked: list[tuple[str, float]] = []

    def limit(name: str, configured: float) -> float | None:
        asked.append((name, configured))
        return 1000.0 if name == "first" else None

    stop = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "metrics" and event["global_step"] == 1:
            stop.set()

    run_dir = tmp_path / "limited"
    report = run_experiment(parse_config(raw), run_dir, on_event=on_event, stop=stop, stage_limit=limit)
    assert report["state"] == "STOPPED" and report["steps"] == 1 and asked == [("first", 1e-6)]
    asked.clear()
    # a checkpoint written before stage_limit existed resumes with the configured limit
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    ckpt = latest_checkpoint(older / "checkpoints")
    assert ckpt is not None
    state = json.loads((ckpt.path / "trainer_state.json").read_text())
    assert state.pop("stage_limit") == 1000.0
    (ckpt.path / "trainer_state.json").write_text(json.dumps(state))
    report = run_experiment(parse_config(raw), older)
    assert [s["steps_done"] for s in report["stages"]] == [2, 1]
    report = run_experiment(parse_config(raw), run_dir, stage_limit=limit)    # resumes inside "first"
    assert report["state"] == "SUCCEEDED"
    assert [s["steps_done"] for s in report["stages"]] == [3, 1]   # first: 1000 s kept; second: its own 1e-6
    assert asked == [("second", 1e-6)]
    with pytest.raises(ValueError, match="time limit is >= 0"):
        run_experiment(parse_config(raw), tmp_path / "bad", stage_limit=lambda _n, _c: -1.0)


def test_negative_max_seconds_is_a_config_error(tiny_model_dir: Path, sft_data: Path) -> None:
    raw = _raw_config(tiny_model_dir, sft_data, every=100)
    raw["stages"][0]["max_seconds"] = -1
    with pytest.raises(ConfigError, match="max_seconds"):
        parse_config(raw)
