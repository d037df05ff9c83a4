"""A shortened learning demo end to end: world, copy warm-up, SFT, GRPO over the embedded SQL tool
server and reward service, held-out evaluation before and after, the report; and the benchmark's
control arm. Slow (about a minute): ``bash scripts/test.sh -m slow``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from experiments.learning import CopyEvent, LearningConfig, PhaseEvent, prepare_for, run_learning
from experiments.sql_learning import Prepared

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SHORT = LearningConfig(seed=1, n_train=40, n_heldout_a=4, n_heldout_b=2, n_heldout_c=2, n_demos=12, copy_steps=3,
                       sft_steps=4, sft_batch_size=4, rl_steps=2, rl_seconds=0.0, group_size=2, prompts_per_step=2,
                       max_new_tokens_per_turn=48, max_total_tokens=512)


def _rl_on_demonstrated_questions(prep: Prepared) -> Prepared:
    """RL tasks = the demonstrated questions: after SFT memorises them, samples at temperature 1 are
    right or wrong, so GRPO groups carry signal and the update provably changes the policy."""
    lines = []
    for demo in map(json.loads, prep.demos.read_text().splitlines()):
        gold = demo["messages"][-1]["content"].removeprefix("<answer>").removesuffix("</answer>")
        lines.append({"task_id": demo["task_id"], "messages": demo["messages"][:2], "tools": [],
                      "context": {"db_id": "local_services"}, "ground_truth": {"db_id": "local_services",
                                                                               "query": gold}})
    prep.train_tasks.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return dataclasses.replace(prep, n_train=len(lines))


def test_shortened_demo_writes_a_complete_report_and_rl_changes_the_policy(tmp_path: Path) -> None:
    events: list[Any] = []
    cfg = dataclasses.replace(SHORT, n_demos=4, sft_steps=100, sft_lr=3e-3, rl_steps=4, max_new_tokens_per_turn=160,
                              max_total_tokens=768)
    prep = _rl_on_demonstrated_questions(prepare_for(cfg, tmp_path / "work", events.append))
    report = run_learning(tmp_path / "run", cfg, on_event=events.append, prepared=prep)
    assert report["state"] == "SUCCEEDED"
    for key in ("sft_accuracy", "rl_accuracy", "seed", "wall_seconds", "curves", "samples", "heldout_tasks",
                "by_template", "eval", "gain", "stage_seconds", "copy_warmup", "slices", "slice_gain",
                "heldout_slices"):
        assert key in report, key
    assert report["heldout_slices"] == report["split"]["slices"] == {"a": 4, "b": 2, "c": 2}
    for key in ("sft", "rl"):        # the slices add up to the overall numbers
        slices = report["slices"][key]
        assert list(slices) == ["a", "b", "c"] and {k: v["n"] for k, v in slices.items()} == report["heldout_slices"]
        assert sum(v["correct"] for v in slices.values()) == round(8 * report[f"{key}_accuracy"])
        assert all(v["stderr"] == pytest.approx((v["accuracy"] * (1 - v["accuracy"]) / v["n"]) ** 0.5, abs=1e-4)
                   for v in slices.values())
    assert report["slice_gain"] == {k: pytest.approx(report["slices"]["rl"][k]["accuracy"]
                                                     - report["slices"]["sft"][k]["accuracy"], abs=1e-4) for k in "abc"}
    assert report["seed"] == 1 and report["heldout_tasks"] == 8 and report["rl_tasks"] == 4
    assert report["rl_seconds_given"] is None      # no budget: GRPO's own limit
    assert 0.0 <= report["sft_accuracy"] <= 1.0 and 0.0 <= report["rl_accuracy"] <= 1.0
    assert report["gain"] == pytest.approx(report["rl_accuracy"] - report["sft_accuracy"], abs=1e-3)
    assert [s["steps_done"] for s in report["stages"]] == [100, 4]
    grpo = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][100:]
    assert sum(x["kept"] for x in grpo) > 0, "no GRPO group carried signal"
    assert report["eval"]["sft"]["n"] == report["eval"]["rl"]["n"] == 8
    for key in ("sft", "rl"):
        errors = report["errors"][key]
        assert sum(errors.values()) == 8 and errors["correct"] == round(8 * report[f"{key}_accuracy"])
    for path in report["curves"]:
        assert Path(path).read_bytes()[:4] == b"\x89PNG"
    assert any(p.endswith("heldout_accuracy.png") for p in report["curves"])
    samples = Path(report["samples"]).read_text()
    assert "## grpo · step 1" in samples and "### task `" in samples
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["rl_accuracy"] == report["rl_accuracy"]
    per_task = json.loads((tmp_path / "run" / "eval_rl.json").read_text())["results"]
    assert len(per_task) == 8
    # GRPO changed the parameters it started from (the SFT export)
    sft = load_file(tmp_path / "run" / "models" / "sft" / "model.safetensors")
    rl = load_file(tmp_path / "run" / "models" / "grpo" / "model.safetensors")
    assert any(not torch.equal(sft[k], rl[k]) for k in sft)
    phases = [e.phase for e in events if isinstance(e, PhaseEvent)]
    assert phases == ["prepare", "train", "evaluate"]
    assert sum(isinstance(e, CopyEvent) for e in events) == 3


def test_bench_quick_runs_grpo_and_control(tmp_path: Path) -> None:
    """The quick bench, with the RL questions in 2 renamed worlds (so that the tool server and the
    reward service resolve their db ids end to end)."""
    out = tmp_path / "sql_learning.json"
    result = subprocess.run([sys.executable, "-m", "bench.sql_learning", "--quick", "--seeds", "0",
                             "--renamed-worlds", "2",
                             "--output", str(out), "--runs-dir", str(tmp_path / "runs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    (seed,) = report["seeds"]
    for key in ("sft_accuracy", "rl_accuracy", "control_accuracy", "heldout_tasks", "rl_seconds", "wall_seconds",
                "control_seconds", "rl_steps", "rl_steps_per_second"):
        assert key in seed, key
    assert seed["heldout_slices"] == {"a": 4, "b": 3, "c": 3} and seed["heldout_tasks"] == 10
    for key in ("sft", "rl", "control"):         # each checkpoint's three slices, adding up to its accuracy
        slices = seed["slices"][key]
        assert {k: v["n"] for k, v in slices.items()} == seed["heldout_slices"]
        assert set(slices["a"]) == {"n", "correct", "accuracy", "stderr"}
        assert sum(v["correct"] for v in slices.values()) == round(10 * seed[f"{key}_accuracy"])
    assert set(seed["rl_gain_points_by_slice"]) == set(seed["control_gain_points_by_slice"]) == {"a", "b", "c"}
    assert set(seed["slices_held"]) == {"b", "c"}
    summary = report["summary"]
    assert summary["mean_rl_gain_points_by_slice"]["a"] == seed["rl_gain_points_by_slice"]["a"]
    assert set(summary["bar"]) == {"mean_gain_a", "every_seed_gains_a", "beats_control_a_every_seed"}
    assert summary["pass"] == all(summary["bar"].values()) and summary["slices_held"] == seed["slices_held"]
    assert "mean gain from GRPO on slice a" in result.stdout
    assert seed["control_steps"] >= 1 and report["quick"] is True and report["complete"] is True
    assert report["config"]["renamed_worlds"] == 2
    assert {k: sum(v.values()) for k, v in seed["errors"].items()} == dict.fromkeys(("sft", "rl", "control"),
                                                                                     seed["heldout_tasks"])
    rl_steps = [json.loads(x) for x in (tmp_path / "runs" / "seed0-grpo" / "metrics.jsonl").read_text().splitlines()
                if json.loads(x).get("stage") == "grpo"]
    assert rl_steps and all(x["infra_failed"] == 0 and x["trajectories"] > 0 for x in rl_steps)
    tasks = (tmp_path / "runs" / "seed0-work" / "train_tasks.jsonl").read_text()
    assert '"db_id": "local_services_r00"' in tasks and '"db_id": "local_services_r01"' in tasks


def test_grad_agreement_measures_grpo_gradients_where_groups_carry_signal(tmp_path: Path) -> None:
    """After SFT memorises 4 demonstrations, GRPO on those questions has signal: the bench measures
    GRPO's batch gradients at the SFT weights (real tool server and reward service) and leaves the
    weights as they were."""
    from rich.console import Console

    from bench.grad_agreement import measure
    from experiments.learning import experiment
    from trainer.config import parse_config
    from trainer.runner import run_experiment

    cfg = dataclasses.replace(SHORT, n_demos=4, sft_steps=100, sft_lr=3e-3, max_new_tokens_per_turn=160,
                              max_total_tokens=768, group_size=4, prompts_per_step=2)
    prep = _rl_on_demonstrated_questions(prepare_for(cfg, tmp_path / "work"))
    exp = experiment(cfg, prep)
    exp["stages"] = exp["stages"][:1]                                    # SFT only
    run_experiment(parse_config(exp), tmp_path / "sft")
    model = tmp_path / "sft" / "models" / "sft"
    result = measure(cfg, tmp_path / "work", model, None, 3, Console())
    grpo = result["grpo"]
    assert grpo["no_signal"] is False and grpo["batches"] == 3 and grpo["batch"] == 8
    assert 3 <= grpo["batches_sampled"] <= 6 and 0 < grpo["reward_mean"] < 1
    assert -1 <= grpo["mean_cosine"] <= 1 and grpo["mean_norm"] > 0
    assert result["sft"]["batches"] == 3 and result["sft"]["signal_share"] > 0
    assert result["ratio"] == pytest.approx(grpo["signal_share"] / result["sft"]["signal_share"], rel=0.05, abs=1e-3)
    assert result["weights_unchanged"] is True


def test_learning_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="n_demos"):
        dataclasses.replace(SHORT, n_demos=0)


def test_rlyard_demo_quick_through_the_cli(tmp_path: Path) -> None:
    # a budget of half a minute is spent before GRPO starts: GRPO gets one step's worth (1 s)
    result = subprocess.run([sys.executable, "-m", "rlyard_app.cli.main", "demo", "--quick", "--output-dir",
                             str(tmp_path), "--run-id", "q", "--budget-minutes", "0.5"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "held-out execution accuracy" in result.stdout and "gain from RL on slice a" in result.stdout
    for header in ("a (4)", "in-distribution", "b (3)", "unseen values", "c (3)", "unseen templates", "all (10)"):
        assert header in result.stdout, header
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["state"] == "SUCCEEDED" and report["learning_config"]["n_demos"] == 12
    assert {"sft_accuracy", "rl_accuracy", "seed", "wall_seconds"} <= report.keys()
    assert report["rl_seconds_given"] == 1.0 and report["learning_config"]["budget_seconds"] == 30.0
    assert [s["steps_done"] for s in report["stages"]] == [3, 1]
    bad = subprocess.run([sys.executable, "-m", "rlyard_app.cli.main", "demo", "--quick", "--budget-minutes", "-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--budget-minutes must be >= 0" in bad.stdout
