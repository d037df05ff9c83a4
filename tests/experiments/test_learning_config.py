"""The learning demo's experiment configs (``experiments.learning.experiment``): what each arm trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from experiments.learning import EVAL_RESERVE_SECONDS, LearningConfig, experiment, grpo_time_limit
from experiments.sql_learning import Prepared
from trainer.config import parse_config


def _prep(tmp_path: Path) -> Prepared:
    return Prepared(root=tmp_path, db_dir=tmp_path / "db", train_tasks=tmp_path / "train.jsonl",
                    heldout_tasks=tmp_path / "heldout.jsonl", demos=tmp_path / "demos.jsonl",
                    policy=tmp_path / "policy", n_train=700, n_heldout=100, n_demos=300, split_info={})


def test_sft_then_grpo_at_the_rollout_temperature(tmp_path: Path) -> None:
    cfg = LearningConfig(rl_temperature=0.7, rl_seconds=600.0, rl_warmup_steps=10)
    config = parse_config(experiment(cfg, _prep(tmp_path)))
    assert [s.kind for s in config.stages] == ["sft", "rl"]
    assert config.model.path == str(tmp_path / "policy")
    sft, rl = config.stages
    assert sft.steps == cfg.sft_steps and rl.max_seconds == 600.0
    assert rl.rollout.temperature == 0.7 and rl.rollout.group_size == 8 and rl.rollout.max_turns == 4
    assert rl.algorithm.kl_coef == 0.0 and rl.optim.lr == cfg.rl_lr and rl.optim.warmup_steps == 10


def test_dynamic_sampling_and_selection_are_off_unless_asked_for(tmp_path: Path) -> None:
    rollout = parse_config(experiment(LearningConfig(), _prep(tmp_path))).stages[1].rollout
    assert not rollout.dynamic_sampling.enabled and rollout.selection.mode == "uniform"
    cfg = LearningConfig(rl_dynamic_rounds=3, rl_oversample=2.0, rl_selection="pass_rate")
    rollout = parse_config(experiment(cfg, _prep(tmp_path))).stages[1].rollout
    assert rollout.dynamic_sampling.enabled and rollout.dynamic_sampling.max_rounds == 3
    assert rollout.dynamic_sampling.oversample == 2.0 and rollout.selection.mode == "pass_rate"
    with pytest.raises(ValueError, match="rl_selection must be 'uniform' or 'pass_rate'"):
        LearningConfig(rl_selection="greedy")
    with pytest.raises(ValueError, match="rl_dynamic_rounds must be >= 0"):
        LearningConfig(rl_dynamic_rounds=-1)


def test_grpo_only_from_a_given_sft_checkpoint(tmp_path: Path) -> None:
    config = parse_config(experiment(LearningConfig(), _prep(tmp_path), model=tmp_path / "sft"))
    assert [(s.kind, s.name) for s in config.stages] == [("rl", "grpo")]
    assert config.model.path == str(tmp_path / "sft")
    assert config.stages[0].rollout.temperature == LearningConfig.rl_temperature


def test_control_is_more_sft_for_the_given_seconds(tmp_path: Path) -> None:
    config = parse_config(experiment(LearningConfig(), _prep(tmp_path), control_seconds=123.0, model=tmp_path / "sft"))
    (stage,) = config.stages
    assert (stage.kind, stage.name, stage.max_seconds) == ("sft", "more_sft", 123.0)
    assert config.model.path == str(tmp_path / "sft")


def test_rollout_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rl_temperature"):
        dataclasses.replace(LearningConfig(), rl_temperature=0.0)


def test_grpo_time_limit_is_what_is_left_of_the_budget() -> None:
    """A 840 s budget, 600 s spent on preparation and SFT: GRPO gets 840 - 600 - the reserve, capped
    by its own limit, never less than one step's worth (1 s); 0 configured means no cap."""
    assert EVAL_RESERVE_SECONDS == 90.0
    assert grpo_time_limit(840.0, 600.0, 240.0) == 150.0
    assert grpo_time_limit(840.0, 300.0, 240.0) == 240.0
    assert grpo_time_limit(840.0, 300.0, 0.0) == 450.0
    assert grpo_time_limit(840.0, 900.0, 240.0) == 1.0


def test_budget_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="budget_seconds"):
        LearningConfig(budget_seconds=-1.0)


def test_every_heldout_slice_needs_questions() -> None:
    for name in ("n_heldout_a", "n_heldout_b", "n_heldout_c"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1.*all three"):
            LearningConfig(**{name: 0})
