"""``bench.vision_learning``: a --quick run writes a report whose structure and accounting hold (not
the bar: a quick run learns nothing); the summary and the bar on hand-computed seeds; --resume."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from bench.vision_learning import earlier_seeds, main, summarize
from experiments.vision_learning import VisionLearningConfig, quick
from reward_service.ssl.answers import TASKS, chance_level

ENTRY_KEYS = {"n", "correct", "accuracy", "stderr", "malformed", "chance", "top_answers"}


def test_quick_run_reports_every_kind_and_accounts_for_its_steps(tmp_path: Path) -> None:
    out = tmp_path / "vision_learning.json"
    assert main(["--quick", "--seeds", "0", "--output", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    report = json.loads(out.read_text())
    cfg = quick(VisionLearningConfig())
    assert report["benchmark"] == "vision_learning" and report["quick"] is True and report["complete"] is True
    assert report["config"] == dataclasses.asdict(cfg) and report["machine"]["torch_threads"] == 1
    [seed] = report["seeds"]
    assert seed["seed"] == 0
    for checkpoint in ("start", "end"):
        assert set(seed[checkpoint]) == set(TASKS)
        for kind, entry in seed[checkpoint].items():
            assert set(entry) == ENTRY_KEYS
            assert entry["n"] == cfg.n_heldout
            assert 0 <= entry["malformed"] <= entry["n"] and 0 <= entry["correct"] <= entry["n"]
            assert entry["accuracy"] == pytest.approx(entry["correct"] / entry["n"], abs=1e-4)
            assert entry["chance"] == pytest.approx(chance_level(kind), abs=1e-4)
            assert sum(entry["top_answers"].values()) <= entry["n"]
    # GRPO: rl_seconds 0 runs rl_steps steps; one train reward per step; steps/s from the two
    assert seed["rl_steps"] == cfg.rl_steps == len(seed["train_rewards"])
    assert all(0.0 <= r <= 1.0 for r in seed["train_rewards"])
    assert seed["rl_steps_per_second"] == pytest.approx(seed["rl_steps"] / seed["rl_seconds"], rel=0.1)
    assert seed["wall_seconds"] >= seed["prepare_seconds"] + seed["rl_seconds"] > 0
    assert seed["format"]["steps"] == cfg.format_steps and seed["rl_tasks"] == cfg.n_train
    summary = report["summary"]
    assert summary["seeds"] == 1 and summary["mean_rl_steps"] == cfg.rl_steps
    assert summary["mean_end_accuracy"] == {k: seed["end"][k]["accuracy"] for k in TASKS}
    assert summary["pass"] == (summary["bar"]["mean_rotation_met"] and summary["bar"]["every_seed_met"])
    assert Path(report["figure"]).is_file() and (Path(seed["run"]) / "curves" / "train_reward.png").is_file()
    assert (Path(seed["run"]) / "eval_end_rotation.json").is_file()


def _seed(seed: int, start: float, end: float) -> dict[str, Any]:
    def entries(rotation: float) -> dict[str, Any]:
        accuracy = {"rotation": rotation, "jigsaw": 0.05, "position": 0.125, "masked_patch": 0.25}
        return {k: {"n": 200, "correct": round(200 * a), "accuracy": a, "chance": round(chance_level(k), 4)}
                for k, a in accuracy.items()}

    return {"seed": seed, "start": entries(start), "end": entries(end), "rl_steps": 100 * (seed + 1),
            "rl_seconds": 100.0, "rl_steps_per_second": float(seed + 1), "wall_seconds": 150.0}


def test_the_bar_reads_the_mean_and_every_seed() -> None:
    passing = [_seed(0, 0.25, 0.70), _seed(1, 0.24, 0.60), _seed(2, 0.26, 0.50)]
    summary = summarize(passing)
    assert summary["mean_end_accuracy"]["rotation"] == pytest.approx(0.6, abs=1e-4)
    assert summary["mean_start_accuracy"]["rotation"] == pytest.approx(0.25, abs=1e-4)
    assert summary["mean_rl_steps"] == 200 and summary["mean_rl_steps_per_second"] == 2.0
    assert summary["chance"]["jigsaw"] == pytest.approx(1 / 24, abs=1e-4)
    assert summary["pass"] is True
    one_low = [_seed(0, 0.25, 0.90), _seed(1, 0.25, 0.90), _seed(2, 0.25, 0.45)]   # mean 75%, one seed at 45%
    assert summarize(one_low)["bar"]["every_seed_met"] is False and summarize(one_low)["pass"] is False
    low_mean = [_seed(s, 0.25, 0.55) for s in range(3)]
    assert statistics.mean(s["end"]["rotation"]["accuracy"] for s in low_mean) < 0.6
    assert summarize(low_mean)["bar"] == {"mean_rotation_at_least": 0.6, "every_seed_above": 0.45,
                                          "mean_rotation_met": False, "every_seed_met": True}


def test_earlier_seeds_kept_only_for_the_same_configuration(tmp_path: Path) -> None:
    out = tmp_path / "vision_learning.json"
    cfg = VisionLearningConfig()
    assert earlier_seeds(out, cfg, False, [0, 1]) == []
    out.write_text(json.dumps({"config": dataclasses.asdict(cfg), "quick": False,
                               "seeds": [_seed(1, 0.25, 0.6), _seed(0, 0.25, 0.6)]}))
    assert [s["seed"] for s in earlier_seeds(out, dataclasses.replace(cfg, seed=3), False, [0, 1, 2])] == [0, 1]
    assert earlier_seeds(out, dataclasses.replace(cfg, rl_lr=1e-3), False, [0, 1]) == []
    assert earlier_seeds(out, cfg, True, [0, 1]) == []
