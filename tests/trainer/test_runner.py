"""run_experiment end to end on the tiny policy: outputs, resume after SIGKILL, stop, an RL stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from rlyard.errors import ConfigError
from trainer.checkpoint import latest_checkpoint
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import CheckpointEvent, MetricsEvent, StateEvent, StopRequest
from trainer.runner import ServicesFailed, run_experiment, writes_samples

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
    events: list[Any] = []
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
    assert isinstance(events[0], StateEvent) and events[0].state == "RUNNING"
    assert isinstance(events[-1], StateEvent) and events[-1].state == "SUCCEEDED"
    assert sum(isinstance(e, MetricsEvent) for e in events) == 6
    # warmup: lr ramps over two steps then stays
    assert [x["lr"] for x in lines[:3]] == pytest.approx([5e-4, 1e-3, 1e-3])


_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from trainer.config import parse_config
    from trainer.runner import run_experiment

    raw, run_dir, kill_at = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    def on_event(event):
        if type(event).__name__ == "CheckpointEvent" and event.step == kill_at:
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


def _stopped_at(config: ExperimentConfig, run_dir: Path, step: int,
                checkpoint: bool) -> tuple[dict[str, Any], list[Any]]:
    """Run ``config`` and ask it to stop (with or without a checkpoint) after global step ``step``."""
    stop = StopRequest()
    events: list[Any] = []

    def on_event(event: Any) -> None:
        events.append(event)
        if isinstance(event, MetricsEvent) and event.global_step == step:
            stop.set(checkpoint=checkpoint)

    return run_experiment(config, run_dir, on_event=on_event, stop=stop), events


def test_stop_request_checkpoints_and_resume_continues(
    tiny_model_dir: Path, sft_data: Path, uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    config = parse_config(_raw_config(tiny_model_dir, sft_data, every=100))
    report, events = _stopped_at(config, tmp_path / "run", 4, checkpoint=True)
    assert report["state"] == "STOPPED" and report["steps"] == 4 and report["last_checkpoint"] == 4
    assert isinstance(events[-1], StateEvent) and events[-1].state == "STOPPED"
    # every_steps 100: only the stage end (3) and the stop (4) wrote checkpoints
    assert [e.step for e in events if isinstance(e, CheckpointEvent)] == [3, 4]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["state"] == "STOPPED"
    report = run_experiment(config, tmp_path / "run")
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    _assert_same(_final_params(tmp_path / "run"), uninterrupted["params"])


def test_a_stop_without_a_checkpoint_writes_none_and_resumes_from_the_last_one(
    tiny_model_dir: Path, sft_data: Path, uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    config = parse_config(_raw_config(tiny_model_dir, sft_data, every=100))
    report, events = _stopped_at(config, tmp_path / "run", 5, checkpoint=False)
    assert report["state"] == "STOPPED" and report["steps"] == 5 and report["last_checkpoint"] == 3
    assert [e.step for e in events if isinstance(e, CheckpointEvent)] == [3]      # the first stage's end only
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt is not None and ckpt.step == 3
    report = run_experiment(config, tmp_path / "run")         # steps 4 and 5 again, then 6
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    _assert_same(_final_params(tmp_path / "run"), uninterrupted["params"])


# ------------------------------------------------------------------ RL
def _rl_config(model_dir: Path, tasks: Path, judge_url: str, steps: int = 2,
               services: dict[str, Any] | None = None) -> ExperimentConfig:
    """GRPO on the tiny policy through embedded services: exact match, plus a scripted judge so that
    the untrained policy's samples get different rewards and every step updates."""
    judge = {"weight": 0.1, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    return parse_config({
        "name": "rl-test", "seed": 3, "model": {"path": str(model_dir)}, "checkpoint": {"every_steps": 1},
        "services": services or {},
        "stages": [{"kind": "rl", "name": "grpo", "steps": steps, "tasks": {"path": str(tasks)},
                    "reward": {"qa_em": 1.0, "judge": judge},
                    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 12,
                                "max_total_tokens": 256},
                    "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    })



def test_rl_stage_through_the_composition_root(tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path,
                                               chat_server: Any) -> None:
    judge = chat_server(*(f"Score: {s}\nReason: scripted." for s in (0, 3, 6, 9) * 2))
    config = _rl_config(tiny_model_dir, rl_tasks, judge.url)
    events: list[Any] = []
    with open_stack(config) as stack:
        report = run_experiment(config, tmp_path / "rl", stack=stack, on_event=events.append)
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2
    values = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert len(values) == 2 and len(judge.requests) == 8
    for v in values:
        assert v["trajectories"] == 4 and v["kept"] == 4 and v["updated"] == 1.0
        assert v["reward/judge"] == pytest.approx(0.45) and v["infra_failed"] == 0.0
    # step 1 sampled with the initial weights, step 2 with step 1's update (synced to the sampler)
    assert [v["sampled_weight_version"] for v in values] == [0.0, 1.0]
    assert [e.step for e in events if isinstance(e, CheckpointEvent)] == [1, 2]
    samples = (tmp_path / "rl" / "samples.md").read_text()
    assert "## grpo · step 1" in samples and "## grpo · step 2" in samples and "**user**" in samples
    assert (tmp_path / "rl" / "curves" / "reward.png").exists()
    assert (tmp_path / "rl" / "models" / "grpo" / "config.json").is_file()


def test_a_run_fails_only_after_max_failed_steps_in_a_row_naming_the_service(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path
) -> None:
    """The reward service is down (a port that refuses connections): each step's ScoreBatch fails
    after the retry window, the step's trajectories are INFRA_FAILED and the run goes on; with
    ``max_failed_steps: 2`` the second such step in a row fails the run, naming the reward service.
    A step with no scored trajectory logs no reward_mean (it was 0.0)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))             # bound, never listening: connections are refused
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    config = _rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", steps=4,
                        services={"reward": address, "retry_window_s": 0.3, "max_failed_steps": 2})
    events: list[Any] = []
    try:
        with open_stack(config) as stack, pytest.raises(ServicesFailed) as err:
            run_experiment(config, tmp_path / "rl", stack=stack, on_event=events.append)
    finally:
        sock.close()
    message = str(err.value)
    assert "2 RL step(s) in a row" in message and "services.max_failed_steps = 2" in message
    assert f"reward service at {address}: UNAVAILABLE" in message and "(4 of 4 trajectories)" in message
    report = json.loads((tmp_path / "rl" / "report.json").read_text())
    assert report["state"] == "FAILED" and report["steps"] == 1 and f"reward service at {address}" in report["error"]
    (step1,) = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert step1["infra_failed"] == 4.0 and step1["reward_system_errors"] == 4.0 and step1["updated"] == 0.0
    assert "reward_mean" not in step1 and "reward_std" not in step1      # missing, not 0.0
    (metrics,) = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert "reward_mean" not in metrics


def test_samples_are_written_at_the_first_every_nth_and_last_step() -> None:
    assert [writes_samples(step, False, 3) for step in range(1, 8)] == [True, False, True, False, False, True, False]
    assert writes_samples(5, True, 100)        # the last step, ended by a time limit


def test_rl_stage_without_a_stack_is_a_config_error(tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"need the services: open them with trainer\.compose\.open_stack"):
        run_experiment(_rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1"), tmp_path / "rl")


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

    stop = StopRequest()

    def on_event(event: Any) -> None:
        if isinstance(event, MetricsEvent) and event.global_step == 1:
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
