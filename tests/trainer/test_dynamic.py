"""Dynamic sampling through the composition root (trainer/dynamic.py): GRPO on the tiny policy with
embedded services and a scripted judge whose scores decide which groups have signal. The reward
service scores one item at a time (``batch_concurrency: 1``), so the judge's replies go to the
trajectories in order: group by group, samples in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.checkpoint import latest_checkpoint
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import MetricsEvent, StopRequest
from trainer.runner import run_experiment
from trainer.tasks import TaskSampler, load_tasks

SEED = 3
# what differs between two runs of the same steps: times
TIMES = ("step_seconds", "tokens_per_s", "rollout_seconds", "wall_seconds")


def _config(model_dir: Path, tasks: Path, judge_url: str, *, steps: int, dynamic: dict[str, Any],
            selection: dict[str, Any] | None = None, prompts_per_step: int = 2) -> ExperimentConfig:
    judge = {"weight": 1.0, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    return parse_config({
        "name": "dynamic-test", "seed": SEED, "model": {"path": str(model_dir)}, "checkpoint": {"every_steps": 1},
        "services": {"embedded": {"reward": {"batch_concurrency": 1}}},
        "stages": [{"kind": "rl", "name": "grpo", "steps": steps, "tasks": {"path": str(tasks)},
                    "reward": {"judge": judge},
                    "rollout": {"group_size": 2, "prompts_per_step": prompts_per_step, "max_turns": 1,
                                "max_new_tokens_per_turn": 12, "max_total_tokens": 256,
                                "dynamic_sampling": {"enabled": True, **dynamic},
                                "selection": selection or {}},
                    "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    })



def _scores(*groups: tuple[int, int]) -> list[str]:
    """The judge's replies for groups of two samples (scores 0–10, normalised to [0, 1])."""
    return [f"Score: {s}\nReason: scripted." for group in groups for s in group]


def _questions(judge: Any) -> list[str]:
    """The question of each judge request, in order (one request per trajectory)."""
    out = []
    for request in judge.requests:
        text = request["json"]["messages"][-1]["content"]
        out.append(text.split("Question:\n", 1)[1].split("\n", 1)[0])
    return out


def _run(config: ExperimentConfig, run_dir: Path, stop_after: int = 0) -> tuple[dict[str, Any], list[dict[str, float]]]:
    stop = StopRequest()
    values: list[dict[str, float]] = []

    def on_event(event: Any) -> None:
        if isinstance(event, MetricsEvent):
            values.append(event.values)
            if event.global_step == stop_after:
                stop.set(checkpoint=True)

    with open_stack(config) as stack:
        report = run_experiment(config, run_dir, stack=stack, on_event=on_event, stop=stop)
    return report, values


def _stream(tasks: Path, n: int) -> list[str]:
    """The first ``n`` questions of the task file's epoch shuffle under the test's seed."""
    return [f"how many singer {t.task_id[1:]}" for t in TaskSampler(load_tasks(tasks, []), SEED).take(0, n)]


def test_a_step_draws_rounds_until_it_holds_the_target_groups_with_signal(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    # round 1 (2 questions): uniform, signal; round 2 (1 missing): uniform; round 3: signal
    judge = chat_server(*_scores((0, 0), (0, 9), (10, 10), (3, 6)))
    config = _config(tiny_model_dir, rl_tasks, judge.url, steps=1, dynamic={"max_rounds": 3})
    report, (values,) = _run(config, tmp_path / "rl")
    assert report["state"] == "SUCCEEDED"
    # the questions of the epoch shuffle in order, one group (two samples) each
    assert _questions(judge) == [q for q in _stream(rl_tasks, 4) for _ in range(2)]
    assert values["dynamic/rounds"] == 3 and values["dynamic/questions"] == 4
    assert values["dynamic/groups_with_signal"] == 2 and values["dynamic/surplus_groups"] == 0
    assert values["dynamic/cap_hit"] == 0 and values["dynamic/cap_hits"] == 0
    assert values["trajectories"] == 8 and values["kept"] == 4 and values["dropped/uniform_group"] == 4
    assert values["updated"] == 1.0
    assert values["reward_mean"] == pytest.approx((0.9 + 1 + 1 + 0.3 + 0.6) / 8)
    assert values["selection/unseen"] == 4 and values["selection/skipped"] == 0
    # estimates: 0, 0.45, 1, 0.45 → a quarter at 0, half between, a quarter at 1
    assert (values["pass_rate/at_0"], values["pass_rate/between"], values["pass_rate/at_1"],
            values["pass_rate/unseen"]) == (0.25, 0.5, 0.25, 0.0)
    draws = latest_checkpoint(tmp_path / "rl" / "checkpoints").trainer_state["draws"]  # type: ignore[union-attr]
    assert draws["cursor"] == 4 and draws["cap_hits"] == 0
    estimates = {task: rate[0] for task, rate in draws["rates"].items()}
    order = [t.task_id for t in TaskSampler(load_tasks(rl_tasks, []), SEED).take(0, 4)]
    assert [estimates[t] for t in order] == pytest.approx([0.0, 0.45, 1.0, 0.45])


def test_groups_with_signal_beyond_the_target_are_left_out(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    # oversample 2: one round of 4 questions, three with signal; the third drawn is left out
    judge = chat_server(*_scores((0, 9), (9, 0), (1, 2), (0, 0)))
    config = _config(tiny_model_dir, rl_tasks, judge.url, steps=1, dynamic={"max_rounds": 3, "oversample": 2})
    _, (values,) = _run(config, tmp_path / "rl")
    assert len(judge.requests) == 8 and values["dynamic/rounds"] == 1 and values["dynamic/questions"] == 4
    assert values["dynamic/groups_with_signal"] == 2 and values["dynamic/surplus_groups"] == 1
    assert values["trajectories"] == 6 and values["kept"] == 4        # the surplus group is not in the batch
    assert values["reward_mean"] == pytest.approx((0.9 + 0.9) / 6)


def test_the_cap_ends_a_step_short_and_counts_it(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    # step 1: two rounds without signal (2 + 2 questions); step 2: one group with signal, then a
    # round of the one missing question without
    judge = chat_server(*_scores((0, 0), (5, 5), (10, 10), (0, 0), (0, 9), (0, 0), (2, 2)))
    config = _config(tiny_model_dir, rl_tasks, judge.url, steps=2, dynamic={"max_rounds": 2})
    report, values = _run(config, tmp_path / "rl")
    assert report["state"] == "SUCCEEDED" and len(judge.requests) == 14      # no rollout past the cap
    first, second = values
    assert first["dynamic/rounds"] == 2 and first["dynamic/questions"] == 4
    assert first["dynamic/groups_with_signal"] == 0 and first["dynamic/cap_hit"] == 1
    assert first["dynamic/cap_hits"] == 1 and first["updated"] == 0.0
    assert second["dynamic/rounds"] == 2 and second["dynamic/questions"] == 3
    assert second["dynamic/groups_with_signal"] == 1 and second["dynamic/cap_hit"] == 1
    assert second["dynamic/cap_hits"] == 2 and second["updated"] == 1.0 and second["kept"] == 2


def _final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None
    params: dict[str, torch.Tensor] = torch.load(ckpt.path / "model.pt", weights_only=True)
    return params


def test_a_stopped_and_resumed_run_draws_and_trains_as_an_uninterrupted_one(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    """Step 2 depends on step 1's draws: its cursor (4 questions drawn, not 2), its estimates
    (``pass_rate`` revisits a question in (0, 1)) and its cap hit (step 1 ends one group short).
    All come back from the checkpoint."""
    script = _scores((0, 0), (0, 9), (10, 10), (3, 3), (0, 9), (9, 0))
    dynamic, selection = {"max_rounds": 3}, {"mode": "pass_rate", "revisit": 0.5}
    plain_judge, resumed_judge = chat_server(*script), chat_server(*script)
    plain_cfg = _config(tiny_model_dir, rl_tasks, plain_judge.url, steps=2, dynamic=dynamic, selection=selection)
    _, plain = _run(plain_cfg, tmp_path / "plain")
    resumed_cfg = _config(tiny_model_dir, rl_tasks, resumed_judge.url, steps=2, dynamic=dynamic, selection=selection)
    report, first = _run(resumed_cfg, tmp_path / "resumed", stop_after=1)
    assert report["state"] == "STOPPED" and report["steps"] == 1
    report, rest = _run(resumed_cfg, tmp_path / "resumed")
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2
    assert _questions(resumed_judge) == _questions(plain_judge) and len(plain_judge.requests) == 12
    assert plain[0]["dynamic/cap_hit"] == 1 and plain[1]["dynamic/cap_hits"] == 1
    assert plain[1]["selection/revisited"] == 1 and plain[1]["dynamic/groups_with_signal"] == 2
    for a, b in zip(plain, first + rest, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}
    a, b = _final_params(tmp_path / "plain"), _final_params(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_without_draws_resumes_the_stream_where_n_a_step_left_it(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    """A checkpoint written before draws were saved: its RL stage drew ``prompts_per_step`` questions
    a step from the start of the stream, so step 2 goes on at position 2."""
    judge = chat_server(*_scores((0, 9), (9, 0), (0, 9), (9, 0)))
    config = _config(tiny_model_dir, rl_tasks, judge.url, steps=2, dynamic={"enabled": False})
    report, _ = _run(config, tmp_path / "rl", stop_after=1)
    assert report["state"] == "STOPPED"
    ckpt = latest_checkpoint(tmp_path / "rl" / "checkpoints")
    assert ckpt is not None
    state = json.loads((ckpt.path / "trainer_state.json").read_text())
    assert state.pop("draws")["cursor"] == 2
    (ckpt.path / "trainer_state.json").write_text(json.dumps(state))
    report, (values,) = _run(config, tmp_path / "rl")
    assert report["state"] == "SUCCEEDED" and values["dynamic/rounds"] == 1 and "dynamic/cap_hit" not in values
    assert _questions(judge) == [q for q in _stream(rl_tasks, 4) for _ in range(2)]


def test_a_pipelined_checkpoint_resumed_without_prefetch_passes_over_the_questions_drawn_ahead(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any
) -> None:
    """A checkpoint of a pipelined run holds step 2's questions drawn ahead (stream positions 2 and 3,
    the cursor past them). Resumed without prefetch, step 2 draws from the cursor and the draws
    ahead are dropped, not carried from checkpoint to checkpoint."""
    judge = chat_server(*_scores((0, 9), (9, 0), (0, 9), (9, 0)))
    config = _config(tiny_model_dir, rl_tasks, judge.url, steps=2, dynamic={"enabled": False})
    report, _ = _run(config, tmp_path / "rl", stop_after=1)
    ckpt = latest_checkpoint(tmp_path / "rl" / "checkpoints")
    assert report["state"] == "STOPPED" and ckpt is not None
    state = json.loads((ckpt.path / "trainer_state.json").read_text())
    ahead = [t.task_id for t in TaskSampler(load_tasks(rl_tasks, []), SEED).take(2, 2)]
    state["draws"]["ahead"] = {"2": {"indices": [int(t[1:]) for t in ahead], "task_ids": ahead,
                                     "counts": {"unseen": 2}}}
    state["draws"]["cursor"] = 4
    (ckpt.path / "trainer_state.json").write_text(json.dumps(state))
    report, _ = _run(config, tmp_path / "rl")
    assert report["state"] == "SUCCEEDED"
    assert _questions(judge) == [q for q in _stream(rl_tasks, 6)[:2] + _stream(rl_tasks, 6)[4:] for _ in range(2)]
    final = latest_checkpoint(tmp_path / "rl" / "checkpoints")
    assert final is not None and final.trainer_state["draws"]["ahead"] == {}


def _responses(judge: Any) -> list[str]:
    """The graded response of each judge request, in order."""
    out = []
    for request in judge.requests:
        text = request["json"]["messages"][-1]["content"]
        out.append(text.split("Response to grade:\n", 1)[1].rsplit("\n\nGive a score", 1)[0])
    return out


def test_a_later_round_samples_with_seeds_of_its_own(
    tiny_model_dir: Path, tmp_path: Path, chat_server: Any
) -> None:
    """One question in the file: both rounds of the step roll it out as the call's first group,
    with the same weights. The engine's seeds depend on that index: without a seed of its own,
    round 2 would repeat round 1's samples token for token."""
    tasks = tmp_path / "one.jsonl"
    tasks.write_text(json.dumps({"task_id": "q0", "question": "how many singer 0", "tools": [],
                                 "ground_truth": {"answers": ["0"]}}) + "\n")
    judge = chat_server(*_scores((0, 0), (0, 9)))
    config = _config(tiny_model_dir, tasks, judge.url, steps=1, dynamic={"max_rounds": 2}, prompts_per_step=1)
    _, (values,) = _run(config, tmp_path / "rl")
    assert values["dynamic/rounds"] == 2 and values["dynamic/groups_with_signal"] == 1
    first, second = _responses(judge)[:2], _responses(judge)[2:]
    assert first != second
