"""``bench.memory``: the AUC and the bar on hand-computed values, and the ``--quick`` run end to end
(world, seeded memory service, SFT and one GRPO step with memory, evaluation with and without): the
JSON it writes has its fields, its AUC is what the service's own ranking gives when asked again,
its accuracies are the evaluations' own counts, and ``--resume`` keeps the finished seed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bench.memory import (
    BAR_AUC,
    BAR_POINTS,
    MemoryBenchConfig,
    demo_templates,
    existing_world,
    main,
    memory_types,
    quick_config,
    roc_auc,
    sft_start,
    shown_kind,
    summarize,
    task_auc,
    top1_kinds,
)
from rlyard.domain import MetaCognition, ScoredMetaCognition


def test_roc_auc_counts_ties_half() -> None:
    # pairs: 0.9>0.5, 0.9>0.1, 0.5=0.5 (half), 0.5>0.1 -> 3.5 of 4
    assert roc_auc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)
    assert roc_auc([0.1], [0.2, 0.3]) == 0.0
    assert roc_auc([], [0.3]) is None and roc_auc([0.3], []) is None
    source = {"m1": "t1", "m2": "t1", "m3": "t2", "m4": "t3"}
    # m2 was not retrieved: it counts 0, below m3 (0.2) and tied with m4 (0.0)
    assert task_auc({"m1": 0.8, "m3": 0.2, "m4": 0.0}, source, "t1") == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert task_auc({"m1": 0.8}, source, "t9") is None          # no helpful candidate


def test_every_template_gets_its_own_memory_type_and_decoys_of_other_content() -> None:
    types = memory_types(["t1", "t2", "t3"], 2, seed=0)
    assert [(m.name, m.wording) for m in types] == [(n, w) for w in ("t1", "t2", "t3")
                                                    for n in (w, f"{w}~0", f"{w}~1")]
    for m in types:
        assert (m.content == m.wording) == (m.name == m.wording)
    assert {m.content for m in types if m.wording == "t1"} == {"t1", "t2", "t3"}   # two decoys: both others
    assert memory_types(["t1", "t2", "t3"], 2, seed=0) == types                     # drawn from the seed
    assert len(memory_types(["t1", "t2"], 5, seed=0)) == 4                         # at most the other templates


def test_a_demonstration_is_known_by_its_query_shape() -> None:
    train = [{"template": "phone", "ground_truth": {"query": "SELECT phone FROM merchant WHERE name = 'A'"}},
             {"template": "price", "ground_truth": {"query": "SELECT avg_price FROM merchant WHERE name = 'B'"}},
             {"template": "x", "ground_truth": {"query": "SELECT 1"}},
             {"template": "y", "ground_truth": {"query": "SELECT 2"}}]

    def demo(answer: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "?"},
                             {"role": "assistant", "content": f"<answer>{answer}</answer>"}]}

    demos = [demo("SELECT phone FROM merchant WHERE name = 'Z'"),
             demo("SELECT avg_price  FROM merchant WHERE name = 'Q'"), demo("SELECT 3"), demo("SELECT name FROM city")]
    # the last two: a shape two templates share, a shape no template has
    assert demo_templates(demos, train) == ["phone", "price", "", ""]


def test_sft_starts_from_the_world_policy_or_an_sft_checkpoint_of_the_same_world(tmp_path: Path) -> None:
    from experiments.sql_learning import Prepared

    world = tmp_path / "seed3-work"
    prep = Prepared(root=world, db_dir=world / "db", train_tasks=world / "t", heldout_tasks=world / "h",
                    demos=world / "d", policy=world / "policy", n_train=1, n_heldout=1, n_demos=1, split_info={})
    assert sft_start(MemoryBenchConfig(), 3, prep) == world / "policy"
    cfg = MemoryBenchConfig(sft_from=str(tmp_path))
    with pytest.raises(RuntimeError, match="no SFT checkpoint"):
        sft_start(cfg, 3, prep)
    model = tmp_path / "seed3-grpo" / "models" / "sft"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert sft_start(cfg, 3, prep) == model
    other = dataclasses.replace(prep, root=tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="not to the world"):
        sft_start(cfg, 3, other)


def _seed(seed: int, auc: float, gain: float) -> dict[str, Any]:
    return {"seed": seed, "auc_before": 0.5, "auc_after": auc, "gain_points": gain,
            "accuracy": {"with_memory": 0.5 + gain / 100, "without_memory": 0.5},
            "gain_points_by_slice": {"a": gain, "b": gain, "c": None}}


def test_the_first_meta_cognition_is_counted_by_kind_by_score_and_by_relevance() -> None:
    source = {"own": {"wording": "t1", "content": "t1"}, "dec": {"wording": "t1", "content": "t2"},
              "oth": {"wording": "t2", "content": "t2"}}

    def scored(mid: str, relevance: float, utility: float) -> ScoredMetaCognition:
        return ScoredMetaCognition(MetaCognition(mid, mid, utility), score=relevance * utility, relevance=relevance)

    # task 1 (t1): "oth" first by score (0.5 · 1.0 > 0.8 · 0.5), "own" by relevance
    # task 2 (t1): "dec" first both ways; task 3 (t2): "oth" is its own memory; an empty ranking counts nowhere
    rankings = [[scored("oth", 0.5, 1.0), scored("own", 0.8, 0.5), scored("dec", 0.7, 0.1)],
                [scored("dec", 0.9, 0.9), scored("own", 0.6, 0.9)],
                [scored("oth", 0.9, 0.5), scored("unseeded", 0.95, 0.1)], []]
    tasks = [{"template": "t1"}, {"template": "t1"}, {"template": "t2"}, {"template": "t2"}]
    assert top1_kinds(rankings, tasks, source) == {"by_score": {"own": 1, "decoy": 1, "other": 1},
                                                    "by_relevance": {"own": 1, "decoy": 1, "other": 1}}
    assert [shown_kind(m, source, "t1") for m in ("own", "dec", "oth", "unseeded")] == ["own", "decoy", "other",
                                                                                        "other"]


def test_the_bar_needs_both_means_over_three_seeds() -> None:
    passing = [_seed(0, 0.95, 12.0), _seed(1, 0.9, 10.0), _seed(2, 0.92, 8.0)]
    summary = summarize(passing)
    assert summary["mean_gain_points"] == 10.0 and summary["mean_auc_after"] == pytest.approx(0.9233, abs=1e-4)
    assert summary["bar"] == {"auc": True, "gain": True} and summary["pass"]
    assert summary["mean_gain_points_by_slice"] == {"a": 10.0, "b": 10.0, "c": None}
    assert not summarize(passing[:2])["pass"]                                       # fewer than 3 seeds
    low_auc = summarize([_seed(0, 0.95, 12.0), _seed(1, 0.8, 12.0), _seed(2, 0.9, 12.0)])
    assert low_auc["bar"] == {"auc": False, "gain": True} and not low_auc["pass"]
    assert not summarize([_seed(s, 1.0, 9.0) for s in range(3)])["pass"]
    assert BAR_AUC == 0.9 and BAR_POINTS == 10.0


def _retrieve_again(db: Path, tasks: list[dict[str, Any]], n: int) -> dict[str, dict[str, float]]:
    """Each task's Retrieve scores from a fresh service over the run's store."""
    from bench.memory import _rank_all, _user_text, _with_service

    async def work(client: Any) -> dict[str, dict[str, float]]:
        ranked = await _rank_all(client, tasks, n)
        return {t["task_id"]: {s.meta_cognition.id: s.score for s in r} for t, r in zip(tasks, ranked, strict=True)}

    assert all(_user_text(t) for t in tasks)
    return asyncio.run(_with_service(f"sqlite:///{db}", work))


def test_quick_run_writes_figures_from_real_runs(tmp_path: Path) -> None:
    out, runs = tmp_path / "memory.json", tmp_path / "runs"
    levers = ["--explore", "0.5", "--memory-lr", "0.25"]        # the GRPO stage explores (trainer.memory)
    assert main(["--quick", "--seeds", "0", "--output", str(out), "--runs-dir", str(runs), *levers]) == 0
    report = json.loads(out.read_text())
    assert (report["config"]["explore"], report["config"]["memory_lr"]) == (0.5, 0.25)
    assert report["benchmark"] == "memory" and report["quick"] and report["complete"]
    assert {"learning", "gold_per_template", "fail_per_template", "top_k", "token_budget", "sft_memory"} <= set(
        report["config"])
    (seed,) = report["seeds"]
    for key in ("auc_before", "auc_after", "auc_after_by_task", "memory_source", "utility_after", "accuracy",
                "slices", "gain_points", "gain_points_by_slice", "rl_steps", "rl_memory", "memory_texts",
                "rl_reward_by_shown", "eval_by_shown", "top1_before", "top1_after"):
        assert key in seed, key
    for key in ("top1_before", "top1_after"):        # both rankings count the same tasks, at least the AUC's
        counts = {sum(v.values()) for v in seed[key].values()}
        assert len(counts) == 1 and counts.pop() >= seed["auc_tasks"], seed[key]
    summary = report["summary"]
    assert {"mean_auc_before", "mean_auc_after", "mean_gain_points", "bar", "pass"} <= set(summary)
    assert summary["pass"] is False                                     # one seed never passes

    run = Path(seed["run"])
    # every meta-cognition the bench scored is one the store holds, each with its source template
    source = seed["memory_source"]
    assert source and seed["meta_cognitions"] == len(source)
    with sqlite3.connect(run / "memory.sqlite") as conn:
        stored = {row[0]: row[1] for row in conn.execute("SELECT id, task_type FROM meta_cognitions")}
    assert stored == {mid: s["type"] for mid, s in source.items()}
    # every train template has its own memory and its decoys: its wording, another template's content
    own = {s["wording"] for s in source.values() if s["wording"] == s["content"]}
    assert own == {s["wording"] for s in source.values()}
    assert all(s["type"] == s["wording"] if s["wording"] == s["content"] else s["type"].startswith(s["wording"] + "~")
               for s in source.values())
    assert seed["auc_utility_before"] == 0.5                            # every utility at the prior
    # the training run's steps sent utility updates through the service
    assert seed["rl_steps"] >= 1 and seed["rl_memory"]["steps_with_updates"] >= 1
    assert 0 < seed["sft_demos_with_memory"] and seed["sft_demos"] == 12 + seed["sft_demos_with_memory"]

    # the AUC is what the service's ranking gives: ask a fresh service over the same store
    heldout = [json.loads(line) for line in (runs / "seed0-work" / "heldout_tasks.jsonl").read_text().splitlines()]
    tasks = [t for t in heldout if t["task_id"] in seed["auc_after_by_task"]]
    assert tasks and len(tasks) == seed["auc_tasks"]
    scores = _retrieve_again(run / "memory.sqlite", tasks, len(source))
    by_task = {}
    for t in tasks:     # the task's own memory against its decoys (same wording), by Retrieve's score
        own = {mid: s["content"] for mid, s in source.items() if s["wording"] == t["template"]}
        by_task[t["task_id"]] = task_auc({m: scores[t["task_id"]].get(m, 0.0) for m in own}, own, t["template"])
    assert by_task == pytest.approx(seed["auc_after_by_task"])
    got = [a for a in by_task.values() if a is not None]
    assert seed["auc_after"] == pytest.approx(sum(got) / len(got), abs=1e-4)

    # the accuracies are the evaluations' own counts, with and without memory
    for key in ("with_memory", "without_memory"):
        evaluated = json.loads((run / f"eval_{key}.json").read_text())
        results = evaluated["results"]
        assert len(results) == sum(s["n"] for s in seed["slices"][key].values())
        assert seed["accuracy"][key] == pytest.approx(sum(r["correct"] for r in results) / len(results), abs=1e-4)
    # what each prompt showed: every evaluated question once, every recorded GRPO trajectory once
    by_slice = {name: sum(c["n"] for c in kinds.values()) for name, kinds in seed["eval_by_shown"].items()}
    assert by_slice == {name: s["n"] for name, s in seed["slices"]["with_memory"].items()}
    with sqlite3.connect(run / "memory.sqlite") as conn:
        (recorded,) = conn.execute("SELECT COUNT(*) FROM trajectories WHERE task_type = ''").fetchone()
    assert sum(c["n"] for c in seed["rl_reward_by_shown"].values()) == recorded > 0
    assert seed["rl_reward_by_shown"]["none"]["n"] > 0              # the ablation's half without memory
    with_ids = json.loads((run / "eval_with_memory.json").read_text())["results"]
    assert any(r["memory_ids"] for r in with_ids)                        # prompts showed memories
    without_ids = json.loads((run / "eval_without_memory.json").read_text())["results"]
    assert not any(r["memory_ids"] for r in without_ids)
    assert seed["gain_points"] == pytest.approx(
        100 * (seed["accuracy"]["with_memory"] - seed["accuracy"]["without_memory"]), abs=0.01)

    # --worlds-dir finds this world again for seed 0 with the same arguments, and none for another seed
    learning = quick_config(MemoryBenchConfig()).learning
    world = existing_world(runs, learning)
    assert world is not None and world.root == runs / "seed0-work" and seed["world"] == str(world.root)
    assert existing_world(runs, dataclasses.replace(learning, seed=1)) is None
    assert existing_world(None, learning) is None

    # --resume keeps the finished seed (same configuration): nothing runs again
    written = out.read_text()
    assert main(["--quick", "--seeds", "0", "--output", str(out), "--runs-dir", str(runs), "--resume", *levers]) == 0
    again = json.loads(out.read_text())
    assert again["seeds"] == json.loads(written)["seeds"]
