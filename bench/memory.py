"""Does the graph memory learn which meta-cognitions help, and do they help the tiny policy?
(issue 22's learning bar, on the text-to-SQL world of ``experiments.sql_learning``)

For each seed:

1. **World.** ``experiments.learning.prepare_for``: database, train and held-out tasks (slices a, b,
   c), demonstrations and a fresh tiny policy with its copying warm-up, all from the seed.
2. **Seeded memory.** The memory service runs embedded (``memory_service.app`` on 127.0.0.1 through
   the real client; a SQLite file in the seed's run directory). Memory types: every train template
   T (its *own* type) and ``decoys_per_template`` decoys ``T~i``. A type's trajectories are
   questions of its *wording* template answered with the paths of its *content* template: gold ones
   (the content's gold query through the real ``sql_query`` tool, its rows, the answer; every
   ``error_every``-th first runs a query with a misnamed table and fixes it) and failing ones (the
   misnamed query answered as it is, after its error or without running it: execution reward 0).
   The own type has wording = content = T; a decoy has T's wording and another template's content.
   ``Distill(type, max_new=1)`` gives each type its strongest advice, the shape rule
   (``memory_service.distill``: the successful answer with its values blanked, i.e. the query
   skeleton). A meta-cognition is **helpful** for a task when its content is the task's template.
   A decoy is as relevant to T's questions as T's own memory (its embedding holds the centroid of
   the same questions), so only the learned utility can tell them apart.
3. **Training.** SFT on the demonstrations, each one plain and, when its template is known (by its
   gold query's shape), once more with its template's memory in its system message (Retrieve typed
   by the template: the policy learns to read a skeleton and fill in the question's values; it also
   learns the plain prompt). Then GRPO with ``memory.enabled``: every question's top-1 over *all*
   types (``task_type: ""``, so decoys compete), half of each group prompted with it and half
   without, one ``UpdateUtility`` per step from the halves' reward gap (top-1: the memory shown gets
   its own credit), every trajectory recorded; for ``--rl-seconds``.
4. **AUC.** Over the held-out questions of the train templates (slices a and b), each question's
   own memory against its decoys (the candidates of the same wording), ranked by the service's
   Retrieve score (relevance × learned utility): ROC AUC per question (ties count half), then the
   mean — before the training (every utility at the prior: relevance alone) and after it (the bar's
   figure). Also reported: the same candidates by utility alone (0.5 before by construction) and
   every meta-cognition by score (``auc_all``: the other wordings are far away, so relevance
   does most of it).
5. **Accuracy.** The trained policy, greedy, on every held-out question with the retrieved
   memory in its prompt (``evaluate(memory=True)``) and without; the gain in points per slice
   and overall.

The bar (issue 22): mean over seeds of the AUC after training >= 0.9, and mean overall held-out gain
with memories >= 10 points (``pass`` needs both, over at least 3 seeds).

``python -m bench.memory [--seeds 0 1 2] [--rl-seconds S] [--output F] [--runs-dir D] [--resume] [--quick]``
writes ``bench/results/memory.json`` after every seed (``complete: false`` until the last);
``--resume`` keeps the seeds the output already holds for the same configuration; a seed that did
not finish starts over (its run directory, store included, is removed first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.seeds import earlier_seeds, write_report
from envs.local_services.questions import SLICES
from envs.text_to_sql import SqlToolbox, _broken
from experiments.learning import (
    EvalEvent,
    LearningConfig,
    PhaseEvent,
    by_slice,
    experiment,
    heldout_slices,
    prepare_for,
    quick,
    slice_accuracy,
)
from experiments.sql_learning import REWARD_SPEC, Prepared, StaleWorldError, load_prepared
from rlyard.domain import ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.domain.memory import ScoredMetaCognition

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "bench" / "results" / "memory.json"
RETRIEVAL = REPO / "bench" / "results" / "memory_retrieval.json"   # bench/memory_retrieval.py's runs
BAR_RETRIEVAL_MS = 20.0
BAR_AUC = 0.9
BAR_POINTS = 10.0
# GRPO seconds and SFT steps per seed. A new world with its copy warm-up takes ~18 min more (skipped
# with --worlds-dir over an existing world).
# Sized for one loaded core (about an hour for three seeds): 120 SFT steps of 16 over the plain and
# the memory-augmented demonstrations (~3 passes) from an SFT checkpoint (--sft-from: the policy
# must already answer, or GRPO's rewards are all 0 and no utility moves; 150 steps from the copy
# warm-up were not enough), 300 s of GRPO in groups of 2 (one sample prompted with the memory, one
# without) over 16 questions a step: half the rollouts of a learning-demo step, twice its utility
# updates.
BENCH_RL_SECONDS = 300.0
BENCH_SFT_STEPS = 120
BENCH_SFT_LR = 5e-4
BENCH_GROUP_SIZE = 2
BENCH_PROMPTS_PER_STEP = 16
RANK_ALL = 512                     # Retrieve's top_k when the bench ranks every meta-cognition
SHAPE_ADVICE = "an answer of this shape"   # what Distill's shape rule says (memory_service.distill)
HEADER = "Strategies learned from earlier attempts at similar tasks:"


@dataclasses.dataclass(frozen=True)
class MemoryBenchConfig:
    """The bench's knobs: the learning world and training (``learning``; its seed is set per seed)
    and the memory's."""

    learning: LearningConfig = dataclasses.field(default_factory=lambda: LearningConfig(
        rl_seconds=BENCH_RL_SECONDS, sft_steps=BENCH_SFT_STEPS, sft_lr=BENCH_SFT_LR, group_size=BENCH_GROUP_SIZE,
        prompts_per_step=BENCH_PROMPTS_PER_STEP))
    gold_per_template: int = 8      # successful trajectories recorded per memory type
    fail_per_template: int = 4      # failing ones (half answer after the error, half without a call)
    decoys_per_template: int = 3    # decoy memory types per train template (its wording, another's content)
    top_k: int = 1                  # one memory a prompt: the utility update credits exactly the one shown
    token_budget: int = 256         # the trainer's default
    memory_lr: float = 0.0          # the utility update's learning rate; 0 = the service's default
    explore: float = 0.0            # the trainer's memory.explore (UCB bonus during GRPO; 0 = greedy)
    candidates: int = 0             # memory.candidates: the exploration chooses among the service's top N
    sft_memory: bool = True         # SFT demonstrations carry their retrieved memories
    sft_from: str = ""              # start SFT from <sft_from>/seed<N>-grpo/models/sft (an SFT checkpoint
                                    # of the same world), not from the world's copy-warmed policy


def quick_config(cfg: MemoryBenchConfig) -> MemoryBenchConfig:
    """The smoke configuration: every phase runs for real, at a size that learns nothing (no copying
    warm-up, two SFT steps of two demonstrations, one GRPO step of two groups of two)."""
    learning = dataclasses.replace(quick(cfg.learning), n_train=80, copy_steps=0, sft_steps=2, sft_batch_size=2,
                                   rl_steps=1)
    return dataclasses.replace(cfg, learning=learning, gold_per_template=4, fail_per_template=4, decoys_per_template=1)


# ---------------------------------------------------------------------------------------- pure figures
def roc_auc(helpful: list[float], unhelpful: list[float]) -> float | None:
    """P(score of a helpful > score of an unhelpful), ties counted half (Mann-Whitney); None when
    either side is empty."""
    if not helpful or not unhelpful:
        return None
    wins = sum(1.0 if h > u else 0.5 if h == u else 0.0 for h in helpful for u in unhelpful)
    return wins / (len(helpful) * len(unhelpful))


def task_auc(scores: dict[str, float], source: dict[str, str], template: str) -> float | None:
    """One task's AUC: ``scores`` (meta-cognition id → score; missing ones count 0) of every
    meta-cognition in ``source`` (id → source template), helpful = those of ``template``."""
    helpful = [scores.get(mid, 0.0) for mid, t in source.items() if t == template]
    unhelpful = [scores.get(mid, 0.0) for mid, t in source.items() if t != template]
    return roc_auc(helpful, unhelpful)


def mean_or_none(values: list[float | None], digits: int = 4) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.mean(got), digits) if got else None


# ---------------------------------------------------------------------------------------- the memory
def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _user_text(line: dict[str, Any]) -> str:
    return next(str(m["content"]) for m in reversed(line["messages"]) if m["role"] == "user")


def _trajectory(tid: str, line: dict[str, Any], steps: list[tuple[str, str, bool]], answer: str) -> Trajectory:
    """A trajectory of task ``line``: its prompt, one turn per ``(query, observation, is_error)``
    call of ``sql_query``, then the answer turn."""
    turns = [Turn(i, m["role"], str(m["content"])) for i, m in enumerate(line["messages"])]
    for query, text, is_error in steps:
        call = ToolCall(f"{tid}-{len(turns)}", "sql_query", json.dumps({"query": query}))
        turns.append(Turn(len(turns), "assistant", "", (call,)))
        result = ToolResult.error(text) if is_error else ToolResult.of_text(text)
        turns.append(Turn(len(turns), "tool", "", (), (result.answering(call.call_id, "sql_query"),)))
    turns.append(Turn(len(turns), "assistant", f"<answer>{answer}</answer>"))
    return Trajectory(trajectory_id=tid, task_id=line["task_id"], turns=tuple(turns), final_answer=answer,
                      status=TrajectoryStatus.COMPLETED)


@dataclasses.dataclass(frozen=True)
class MemoryType:
    """One task type the bench records and distills: the questions of template ``wording`` (their
    texts, so their relevance) with the gold and failing paths of template ``content`` (their SQL).
    ``wording == content``: the template's own memory; otherwise a decoy, as relevant to
    ``wording``'s questions as its own memory but carrying another template's query shape."""

    name: str
    wording: str
    content: str

    @property
    def helpful_for(self) -> str:
        return self.content


def memory_types(templates: list[str], decoys: int, seed: int) -> list[MemoryType]:
    """Every template's own type and ``decoys`` decoy types per template (``<T>~<i>``, the content
    of distinct other templates, drawn from ``seed``)."""
    rng = random.Random(seed)
    out = []
    for t in sorted(templates):
        out.append(MemoryType(t, t, t))
        others = [u for u in sorted(templates) if u != t]
        out += [MemoryType(f"{t}~{i}", t, u) for i, u in enumerate(rng.sample(others, min(decoys, len(others))))]
    return out


async def _examples(prep: Prepared, cfg: MemoryBenchConfig,
                    types: list[MemoryType]) -> dict[str, list[tuple[Trajectory, float, str]]]:
    """Per memory type: gold trajectories (the content template's gold query through the real
    ``sql_query`` tool, its rows, the answer; every ``error_every``-th first runs a query with a
    misnamed table and fixes it) and failing ones (the misnamed query answered as it is, after its
    error or without running it: execution reward 0), each prompted with a question of the wording
    template, with their rewards and question texts."""
    by_template: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in _lines(prep.train_tasks):
        by_template[line["template"]].append(line)
    every = cfg.learning.error_every
    out: dict[str, list[tuple[Trajectory, float, str]]] = {}
    with SqlToolbox(prep.db_dir) as toolbox:
        for mt in types:
            asked, answered = by_template[mt.wording], by_template[mt.content]
            items: list[tuple[Trajectory, float, str]] = []
            for i in range(cfg.gold_per_template + cfg.fail_per_template):
                line, source = asked[i % len(asked)], answered[i % len(answered)]
                db_id, gold = source["ground_truth"]["db_id"], source["ground_truth"]["query"]
                broken = _broken(gold)
                tid = f"seed/{mt.name}/{i}"
                if i < cfg.gold_per_template:
                    steps = []
                    if broken is not None and every and i % every == every - 1:
                        text, is_error, _ = await toolbox.call(db_id, "sql_query", {"query": broken})
                        steps.append((broken, text, is_error))
                    text, is_error, _ = await toolbox.call(db_id, "sql_query", {"query": gold})
                    if is_error:
                        raise RuntimeError(f"gold query of {source['task_id']} fails: {text}")
                    items.append((_trajectory(tid, line, [*steps, (gold, text, False)], gold), 1.0, _user_text(line)))
                elif broken is not None:
                    # the misnamed table's query cannot run, so its execution reward is 0
                    text, is_error, _ = await toolbox.call(db_id, "sql_query", {"query": broken})
                    if not is_error:
                        continue
                    called = (i - cfg.gold_per_template) % 2 == 0
                    steps = [(broken, text, True)] if called else []
                    items.append((_trajectory(tid, line, steps, broken), 0.0, _user_text(line)))
            out[mt.name] = items
    return out


async def _with_service(db_url: str, work: Any) -> Any:
    from memory_service.app import memory_service
    from memory_service.settings import MemorySettings
    from rlyard.client import RetryPolicy
    from rlyard.memory_client import MemoryClient
    from rlyard.server import start_server
    from rlyard.settings import ServerSettings

    running = await start_server(memory_service(MemorySettings(db_url=db_url, max_top_k=RANK_ALL)),
                                 ServerSettings(host="127.0.0.1", port=0))
    try:
        await running.wait_ready(timeout=600)
        async with MemoryClient(running.address, timeout=120, retry=RetryPolicy(max_attempts=3)) as client:
            return await work(client)
    finally:
        await running.stop(0)


async def _rank_all(client: Any, tasks: list[dict[str, Any]], n: int) -> list[list[ScoredMetaCognition]]:
    """Every task's Retrieve over all types, with all ``n`` meta-cognitions (at most ``RANK_ALL``) ranked."""
    return [await client.retrieve(_user_text(t), "", top_k=max(1, min(n, RANK_ALL))) for t in tasks]


def shown_kind(mid: str, source: dict[str, dict[str, str]], template: str) -> str:
    """What meta-cognition ``mid`` is to a question of ``template``: ``own`` (its content is the
    template), ``decoy`` (its wording is), or ``other`` (another template's, or not seeded)."""
    found = source.get(mid)
    if found is None:
        return "other"
    return "own" if found["content"] == template else "decoy" if found["wording"] == template else "other"


def top1_kinds(rankings: list[list[ScoredMetaCognition]], tasks: list[dict[str, Any]],
               source: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    """How many tasks get which kind first, ranked by Retrieve's score (relevance × utility: what a
    prompt shows) and by relevance alone (ties: the service's order)."""
    out = {key: {"own": 0, "decoy": 0, "other": 0} for key in ("by_score", "by_relevance")}
    for ranked, task in zip(rankings, tasks, strict=True):
        if ranked:
            out["by_score"][shown_kind(ranked[0].meta_cognition.id, source, task["template"])] += 1
            first = max(ranked, key=lambda s: s.relevance)
            out["by_relevance"][shown_kind(first.meta_cognition.id, source, task["template"])] += 1
    return out


def auc_figures(rankings: list[list[ScoredMetaCognition]], tasks: list[dict[str, Any]],
                source: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per task, the AUC of its helpful meta-cognitions (content: its own template) against the
    unhelpful ones, over the candidates of its own wording (its own memory and its decoys, equally
    relevant: ``auc``) by Retrieve's score, and by the learned utility alone (``auc_utility``), and
    over every meta-cognition by score (``auc_all``: relevance does most of it); their means over
    the tasks, the minimum of ``auc`` and the utilities as read."""
    helpful = {mid: s["content"] for mid, s in source.items()}
    by_score, by_utility, everything = [], [], []
    for ranked, task in zip(rankings, tasks, strict=True):
        own = {mid: s for mid, s in source.items() if s["wording"] == task["template"]}
        score = {s.meta_cognition.id: s.score for s in ranked}
        utility = {s.meta_cognition.id: s.meta_cognition.utility for s in ranked}
        by_score.append(task_auc({m: score.get(m, 0.0) for m in own}, {m: helpful[m] for m in own}, task["template"]))
        by_utility.append(task_auc({m: utility.get(m, 0.0) for m in own}, {m: helpful[m] for m in own},
                                   task["template"]))
        everything.append(task_auc(score, helpful, task["template"]))
    utility = {s.meta_cognition.id: s.meta_cognition.utility for ranked in rankings for s in ranked}
    return {"top1": top1_kinds(rankings, tasks, source),
            "auc": mean_or_none(by_score), "auc_utility": mean_or_none(by_utility), "auc_all": mean_or_none(everything),
            "by_task": {t["task_id"]: a for t, a in zip(tasks, by_score, strict=True)},
            "auc_min": min((a for a in by_score if a is not None), default=None),
            "tasks": sum(a is not None for a in by_score),
            "utility": {mid: round(u, 4) for mid, u in sorted(utility.items())}}


def _answer(demo: dict[str, Any]) -> str:
    """The final answer of a demonstration (its last ``<answer>``)."""
    found = re.findall(r"<answer>(.*?)</answer>", str(demo["messages"][-1].get("content", "")), flags=re.DOTALL)
    return found[-1].strip() if found else ""


def demo_templates(demos: list[dict[str, Any]], train: list[dict[str, Any]]) -> list[str]:
    """Each demonstration's template, known by the shape of its gold query (``answer_shape``: its
    values blanked) among the train questions' shapes; "" when the shape is none of theirs or
    several templates share it."""
    from memory_service.distill import answer_shape

    owners: dict[str, set[str]] = defaultdict(set)
    for line in train:
        owners[answer_shape(line["ground_truth"]["query"])].add(line["template"])
    out = []
    for demo in demos:
        found = owners.get(answer_shape(_answer(demo)), set())
        out.append(next(iter(found)) if len(found) == 1 else "")
    return out


def seed_memory(prep: Prepared, cfg: MemoryBenchConfig, db_url: str, auc_tasks: list[dict[str, Any]],
                sft_out: Path | None, seed: int) -> dict[str, Any]:
    """Record, distill each memory type (its strongest advice: the shape rule), take the
    before-training AUC and (with ``sft_out``) write the SFT demonstrations: each one plain and,
    when its template has a memory, once more with that memory in its system message (Retrieve
    typed by the template). Returns the meta-cognitions' sources and figures."""
    train = _lines(prep.train_tasks)
    types = memory_types(sorted({line["template"] for line in train}), cfg.decoys_per_template, seed)
    examples = asyncio.run(_examples(prep, cfg, types))

    async def work(client: Any) -> dict[str, Any]:
        source: dict[str, dict[str, str]] = {}
        texts: dict[str, str] = {}
        for mt in types:
            for trajectory, reward, text in examples[mt.name]:
                await client.record_trajectory(trajectory, reward, mt.name, text)
            made = await client.distill(mt.name, max_new=1, timeout=300)
            if len(made) != 1 or SHAPE_ADVICE not in made[0].text:
                raise RuntimeError(f"Distill({mt.name}) gave {[m.text for m in made]}, not one shape advice")
            (m,) = made
            source[m.id] = {"type": mt.name, "wording": mt.wording, "content": mt.content}
            texts[m.id] = m.text
        before = auc_figures(await _rank_all(client, auc_tasks, len(source)), auc_tasks, source)
        shown, demos = 0, []
        if sft_out is not None:
            plain = _lines(prep.demos)
            for demo, template in zip(plain, demo_templates(plain, train), strict=True):
                demos.append(demo)
                if not template:
                    continue
                block = _block(await client.retrieve(_user_text(demo), template, top_k=cfg.top_k), prep, cfg)
                if block:
                    shown += 1
                    copy = json.loads(json.dumps(demo))
                    copy["task_id"] = f"{demo['task_id']}+memory"
                    copy["messages"][0]["content"] = f"{copy['messages'][0]['content']}\n\n{block}"
                    demos.append(copy)
        return {"source": source, "texts": texts, "before": before, "sft_demos_with_memory": shown, "demos": demos}

    found: dict[str, Any] = asyncio.run(_with_service(db_url, work))
    demos = found.pop("demos")
    if sft_out is not None:
        rng = random.Random(seed)
        rng.shuffle(demos)
        sft_out.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in demos), encoding="utf-8")
    found["recorded"] = {t: len(items) for t, items in examples.items()}
    found["sft_demos"] = len(demos)
    return found


def rank_again(db_url: str, tasks: list[dict[str, Any]], n: int) -> list[list[ScoredMetaCognition]]:
    """Every task's ranking from a fresh service over the store (after training)."""
    async def work(client: Any) -> list[list[ScoredMetaCognition]]:
        return await _rank_all(client, tasks, n)

    rankings: list[list[ScoredMetaCognition]] = asyncio.run(_with_service(db_url, work))
    return rankings


_TOKENIZERS: dict[str, Any] = {}


def _block(items: list[ScoredMetaCognition], prep: Prepared, cfg: MemoryBenchConfig) -> str:
    """The memory block as the trainer renders it (``trainer.memory.memory_block``), policy tokenizer."""
    from transformers import AutoTokenizer

    from trainer.memory import memory_block

    key = str(prep.policy)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key)
    return memory_block(items, _TOKENIZERS[key], cfg.token_budget, HEADER).text


# ---------------------------------------------------------------------------------------- one seed
def world_args(lcfg: LearningConfig) -> dict[str, Any]:
    """What ``prepare_for`` prepares a world with (``load_prepared`` reuses one made with exactly these)."""
    return {"seed": lcfg.seed, "n_train": lcfg.n_train, "n_heldout_a": lcfg.n_heldout_a,
            "n_heldout_b": lcfg.n_heldout_b, "n_heldout_c": lcfg.n_heldout_c, "n_demos": lcfg.n_demos,
            "max_tool_calls": lcfg.max_tool_calls, "error_every": lcfg.error_every, "size": lcfg.size,
            "copy_steps": lcfg.copy_steps, "demo_city_share": lcfg.demo_city_share,
            "renamed_worlds": lcfg.renamed_worlds}


def existing_world(worlds_dir: Path | None, lcfg: LearningConfig) -> Prepared | None:
    """The world another learning bench prepared for this seed with the same arguments
    (``<worlds_dir>/seed<N>-work``, e.g. ``runs/bench-sql-learning``), read only; None otherwise."""
    if worlds_dir is None:
        return None
    try:
        return load_prepared(worlds_dir / f"seed{lcfg.seed}-work", **world_args(lcfg))
    except StaleWorldError:
        return None


def sft_start(cfg: MemoryBenchConfig, seed: int, prep: Prepared) -> Path:
    """The model SFT starts from: the world's policy, or with ``sft_from`` that directory's SFT
    checkpoint of this seed, which must sit beside the world used (``<sft_from>/seed<N>-work``)."""
    if not cfg.sft_from:
        return Path(prep.policy)
    root = Path(cfg.sft_from)
    model = root / f"seed{seed}-grpo" / "models" / "sft"
    if not (model / "config.json").is_file():
        raise RuntimeError(f"--sft-from {root}: no SFT checkpoint {model}")
    if Path(prep.root).resolve() != (root / f"seed{seed}-work").resolve():
        raise RuntimeError(f"--sft-from {root}: its checkpoint belongs to {root / f'seed{seed}-work'}, not to the "
                           f"world {prep.root} (pass the same directory as --worlds-dir)")
    return model


def run_seed(seed: int, cfg: MemoryBenchConfig, runs_dir: Path, console: Console,
             worlds_dir: Path | None = None) -> dict[str, Any]:
    """World, seeded memory, training with memory, AUC before and after, accuracy with and without."""
    from trainer.compose import open_stack
    from trainer.config import RolloutConfig, parse_config
    from trainer.evaluate import evaluate
    from trainer.runner import run_experiment

    tic = time.monotonic()
    lcfg = dataclasses.replace(cfg.learning, seed=seed)
    run_dir = runs_dir / f"seed{seed}"
    if run_dir.exists():          # an unfinished seed starts over (its store and checkpoints with it)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)

    def log(event: Any) -> None:
        if isinstance(event, EvalEvent) and event.state == "done":
            console.print(f"  seed {seed} · {event.model}: held-out accuracy {100 * event.accuracy:.1f}%")
        elif isinstance(event, PhaseEvent):
            console.print(f"  seed {seed} · {event.phase} ({time.monotonic() - tic:.0f} s)")

    prep = existing_world(worlds_dir, lcfg)
    if prep is not None:
        console.print(f"  seed {seed} · the world and policy of {prep.root} (read only)")
    else:
        prep = prepare_for(lcfg, runs_dir / f"seed{seed}-work", log)
    heldout = _lines(prep.heldout_tasks)
    train_templates = {line["template"] for line in _lines(prep.train_tasks)}
    auc_tasks = [t for t in heldout if t["template"] in train_templates]
    db_url = f"sqlite:///{(run_dir / 'memory.sqlite').resolve()}"
    log(PhaseEvent("memory"))
    sft_data = run_dir / "demos_with_memory.jsonl" if cfg.sft_memory else None
    seeded = seed_memory(prep, cfg, db_url, auc_tasks, sft_data, seed)
    source = seeded["source"]
    if not source:
        raise RuntimeError(f"seed {seed}: Distill made no meta-cognition from the gold and failing paths")
    console.print(f"  seed {seed} · {len(source)} meta-cognitions of {len(train_templates)} templates (with decoys); "
                  f"AUC before training {seeded['before']['auc']} (utility alone {seeded['before']['auc_utility']}, "
                  f"all candidates {seeded['before']['auc_all']})")

    config_dict = experiment(lcfg, prep)
    start = sft_start(cfg, seed, prep)
    config_dict["model"]["path"] = str(start)
    if sft_data is not None:
        config_dict["stages"][0]["data"] = str(sft_data)
    config_dict["name"] = "memory-bench"
    config_dict["memory"] = {"enabled": True, "embedded": {"db_url": db_url}, "top_k": cfg.top_k,
                             "token_budget": cfg.token_budget, "header": HEADER, "record": True, "ablation": True,
                             "learning_rate": cfg.memory_lr, "task_type": "", "timeout_s": 30.0,
                             "explore": cfg.explore, "candidates": cfg.candidates}
    config = parse_config(config_dict)
    with open_stack(config) as stack:
        log(PhaseEvent("train"))
        report = run_experiment(config, run_dir, stack=stack, on_event=log, resume=True)
        if report["state"] != "SUCCEEDED":
            raise RuntimeError(f"seed {seed}: the training run ended {report['state']}: {report.get('error', '')}")
        log(PhaseEvent("evaluate"))
        assert stack.memory_client is not None
        stats = stack.run(stack.memory_client.stats())
        rollout = RolloutConfig(**{**lcfg.rollout(), "group_size": 2, "prompts_per_step": 1})
        tasks = stack.tasks(prep.heldout_tasks)
        evals = {}
        for key, memory in (("with_memory", True), ("without_memory", False)):
            log(EvalEvent(key, "start", len(tasks)))
            evals[key] = evaluate(run_dir / "models" / "grpo", tasks, stack, rollout_config=rollout, temperature=0.0,
                                  max_tool_calls=lcfg.max_tool_calls, reward_spec=REWARD_SPEC, seed=seed, memory=memory)
            log(EvalEvent(key, "done", len(tasks), evals[key].execution_accuracy))
            (run_dir / f"eval_{key}.json").write_text(json.dumps(evals[key].to_json(), indent=1) + "\n",
                                                      encoding="utf-8")
    after = auc_figures(rank_again(db_url, auc_tasks, len(source)), auc_tasks, source)
    console.print(f"  seed {seed} · AUC after training {after['auc']} (utility alone {after['auc_utility']}, "
                  f"all candidates {after['auc_all']})")
    slice_of = heldout_slices(prep)
    slices = {key: by_slice(r, slice_of) for key, r in evals.items()}
    overall = {key: slice_accuracy(sum(r.correct for r in e.results), len(e.results)) for key, e in evals.items()}
    grpo = next(s for s in report["stages"] if s["name"] == "grpo")
    metrics = _memory_metrics(run_dir)
    by_shown = rl_reward_by_shown(run_dir, source, seeded["texts"], prep.train_tasks)
    eval_shown = eval_by_shown(run_dir, source, prep.heldout_tasks)
    return {
        "seed": seed,
        "meta_cognitions": len(source),
        "templates_with_memory": len({s["content"] for s in source.values()}),
        "train_templates": len(train_templates),
        "recorded_per_template": seeded["recorded"],
        "sft_demos_with_memory": seeded["sft_demos_with_memory"],
        "sft_demos": seeded["sft_demos"],
        "sft_start": str(start),
        "auc_tasks": after["tasks"],
        "auc_before": seeded["before"]["auc"],
        "auc_after": after["auc"],
        "auc_utility_before": seeded["before"]["auc_utility"],
        "auc_utility_after": after["auc_utility"],
        "auc_all_before": seeded["before"]["auc_all"],
        "auc_all_after": after["auc_all"],
        "auc_after_min": after["auc_min"],
        "auc_after_by_task": after["by_task"],
        "top1_before": seeded["before"]["top1"],    # the kind each AUC task gets first (docs: top1_kinds)
        "top1_after": after["top1"],
        "memory_source": source,           # meta-cognition id -> its type, wording and content templates
        "utility_after": {mid: {"utility": u, **source.get(mid, {})} for mid, u in after["utility"].items()},
        "memory_texts": seeded["texts"],
        "memory_stats": {"trajectories": stats.num_trajectories, "meta_cognitions": stats.num_meta_cognitions},
        "accuracy": {key: value["accuracy"] for key, value in overall.items()},
        "slices": slices,
        "gain_points": round(100 * (overall["with_memory"]["accuracy"] - overall["without_memory"]["accuracy"]), 2),
        "gain_points_by_slice": {
            name: None if slices["with_memory"][name]["accuracy"] is None else
            round(100 * (slices["with_memory"][name]["accuracy"] - slices["without_memory"][name]["accuracy"]), 2)
            for name in SLICES},
        "memory_hit_rate": evals["with_memory"].memory_hit_rate,
        "rl_seconds": round(float(grpo.get("seconds", 0.0)), 1),
        "rl_steps": grpo["steps_done"],
        "rl_memory": metrics,
        "rl_reward_by_shown": by_shown,
        "eval_by_shown": eval_shown,
        "wall_seconds": round(time.monotonic() - tic, 1),
        "world": str(prep.root),
        "run": str(run_dir),
    }


def rl_reward_by_shown(run_dir: Path, source: dict[str, dict[str, str]], texts: dict[str, str],
                       train_tasks: Path) -> dict[str, dict[str, Any]]:
    """GRPO's rewards on the train questions by what the prompt showed, read from the trajectories the
    run recorded in the store (each with its system message): ``own`` (the question's template's
    memory), ``decoy`` (a decoy of its wording), ``other`` (another wording's), ``none`` (the ablation's
    half without memory); ``{n, mean_reward}`` each."""
    import sqlite3

    kinds: dict[str, dict[str, str]] = {" ".join(texts[mid].split()): s for mid, s in source.items()}
    template = {line["task_id"]: line["template"] for line in _lines(train_tasks)}
    rewards: dict[str, list[float]] = {k: [] for k in ("own", "decoy", "other", "none")}
    with contextlib.closing(sqlite3.connect(f"file:{run_dir / 'memory.sqlite'}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT task_id, turns_json, reward FROM trajectories WHERE task_type = ''").fetchall()
    for task_id, turns_json, reward in rows:
        system = json.loads(turns_json)["turns"][0]
        text = str(system.get("text", "")) if system.get("role") == "system" else ""
        shown = text.split(f"{HEADER}\n- ", 1)[1] if HEADER in text else ""
        kind = "none"
        if shown:
            found = kinds.get(" ".join(shown.split()))
            own = template.get(task_id, "")
            kind = "other" if found is None else ("own" if found["content"] == own else
                                                  "decoy" if found["wording"] == own else "other")
        rewards[kind].append(float(reward))
    return {k: {"n": len(v), "mean_reward": round(statistics.mean(v), 4) if v else None} for k, v in rewards.items()}


def eval_by_shown(run_dir: Path, source: dict[str, dict[str, str]], heldout_tasks: Path) -> dict[str, dict[str, Any]]:
    """The evaluation with memory by what each held-out prompt showed (``own``, ``decoy``, ``other``,
    ``none``, as ``rl_reward_by_shown``), per slice: ``{slice: {kind: {n, correct}}}``."""
    tasks = {line["task_id"]: line for line in _lines(heldout_tasks)}
    out: dict[str, dict[str, Any]] = {name: {k: {"n": 0, "correct": 0} for k in ("own", "decoy", "other", "none")}
                                      for name in SLICES}
    for r in json.loads((run_dir / "eval_with_memory.json").read_text(encoding="utf-8"))["results"]:
        task = tasks[r["task_id"]]
        kind = shown_kind(r["memory_ids"][0], source, task["template"]) if r["memory_ids"] else "none"
        cell = out[task["slice"]][kind]
        cell["n"] += 1
        cell["correct"] += int(r["correct"])
    return out


def _memory_metrics(run_dir: Path) -> dict[str, Any]:
    """From the run's metrics.jsonl: utility updates sent, and the mean reward with and without memory."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    got: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        values = row.get("metrics", row)
        for key in ("memory/utility_updates", "memory/reward_with", "memory/reward_without", "memory/failures"):
            if isinstance(values.get(key), int | float):
                got[key].append(float(values[key]))
    return {"steps_with_updates": len(got["memory/utility_updates"]),
            "utility_updates": sum(got["memory/utility_updates"]),
            "failures": sum(got["memory/failures"]),
            "mean_reward_with": mean_or_none(list(got["memory/reward_with"])),
            "mean_reward_without": mean_or_none(list(got["memory/reward_without"]))}


# ---------------------------------------------------------------------------------------- summary
def retrieval_figures(path: Path = RETRIEVAL) -> dict[str, Any]:
    """The bar's latency half, as ``bench/memory_retrieval.py`` measured it (not measured here): per
    backend, its latest run's Retrieve p50 at its size, with a task type and over every type."""
    if not path.is_file():
        return {"source": str(path), "measured": False}
    latest: dict[str, dict[str, Any]] = {}
    for run in json.loads(path.read_text(encoding="utf-8")):
        latest[run["backend"]] = run
    backends = {name: {"when": r["when"], "meta_cognitions": r["meta_cognitions"],
                       "typed_p50_ms": r["typed"]["p50_ms"], "all_types_p50_ms": r["all_types"]["p50_ms"],
                       "typed_after_update_p50_ms": r["typed_after_update"]["p50_ms"]}
                for name, r in sorted(latest.items())}
    return {"source": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path), "measured": True,
            "bar_ms": BAR_RETRIEVAL_MS, "backends": backends,
            "typed_under_bar": {n: b["typed_p50_ms"] < BAR_RETRIEVAL_MS for n, b in backends.items()},
            "all_types_under_bar": {n: b["all_types_p50_ms"] < BAR_RETRIEVAL_MS for n, b in backends.items()}}


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds and the bar: AUC after training >= 0.9, gain >= 10 points (both means)."""
    if not seeds:
        return {"pass": False}
    auc = mean_or_none([s["auc_after"] for s in seeds])
    gain = round(statistics.mean(s["gain_points"] for s in seeds), 2)
    bar = {"auc": auc is not None and auc >= BAR_AUC, "gain": gain >= BAR_POINTS}
    return {
        "mean_auc_before": mean_or_none([s["auc_before"] for s in seeds]),
        "mean_auc_after": auc,
        **{f"mean_{key}": mean_or_none([s.get(key) for s in seeds])
           for key in ("auc_utility_before", "auc_utility_after", "auc_all_before", "auc_all_after")},
        "mean_accuracy_with_memory": mean_or_none([s["accuracy"]["with_memory"] for s in seeds]),
        "mean_accuracy_without_memory": mean_or_none([s["accuracy"]["without_memory"] for s in seeds]),
        "mean_gain_points": gain,
        "mean_gain_points_by_slice": {name: mean_or_none([s["gain_points_by_slice"][name] for s in seeds], 2)
                                      for name in SLICES},
        "mean_accuracy_by_slice": {key: {name: mean_or_none([s["slices"][key][name]["accuracy"] for s in seeds
                                                             if "slices" in s])
                                         for name in SLICES} for key in ("with_memory", "without_memory")},
        "bar_auc": BAR_AUC,
        "bar_points": BAR_POINTS,
        "bar": bar,
        "seeds": len(seeds),
        "pass": all(bar.values()) and len(seeds) >= 3,
    }


def results_table(seeds: list[dict[str, Any]]) -> Table:
    table = Table("seed", "memories", "AUC before → after", "with · without memory",
                  "gain a · b · c (points)", "RL s / steps")
    for s in seeds:
        by = s["gain_points_by_slice"]
        table.add_row(str(s["seed"]), str(s["meta_cognitions"]), f"{s['auc_before']} → {s['auc_after']}",
                      f"{100 * s['accuracy']['with_memory']:.0f}% · {100 * s['accuracy']['without_memory']:.0f}%",
                      " · ".join("-" if by[n] is None else f"{by[n]:+.0f}" for n in SLICES),
                      f"{s['rl_seconds']:.0f} / {s['rl_steps']}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rl-seconds", type=float, default=BENCH_RL_SECONDS,
                        help=f"GRPO seconds per seed (default {BENCH_RL_SECONDS:.0f})")
    parser.add_argument("--sft-steps", type=int, default=BENCH_SFT_STEPS,
                        help=f"SFT steps on the demonstrations, plain and with memory (default {BENCH_SFT_STEPS})")
    parser.add_argument("--sft-from", type=Path, default=None,
                        help="start SFT from DIR/seed<N>-grpo/models/sft (an SFT checkpoint of the world in "
                             "DIR/seed<N>-work, e.g. bench/sql_learning.py's runs; pass DIR as --worlds-dir too)")
    parser.add_argument("--sft-lr", type=float, default=BENCH_SFT_LR)
    parser.add_argument("--decoys", type=int, default=MemoryBenchConfig.decoys_per_template,
                        help="decoy memory types per train template")
    parser.add_argument("--gold-per-template", type=int, default=MemoryBenchConfig.gold_per_template)
    parser.add_argument("--fail-per-template", type=int, default=MemoryBenchConfig.fail_per_template)
    parser.add_argument("--top-k", type=int, default=MemoryBenchConfig.top_k)
    parser.add_argument("--rl-steps", type=int, default=MemoryBenchConfig().learning.rl_steps,
                        help="GRPO steps at most (the stage also stops at --rl-seconds)")
    parser.add_argument("--memory-lr", type=float, default=MemoryBenchConfig.memory_lr,
                        help="the utility update's learning rate (0 = the service's default)")
    parser.add_argument("--explore", type=float, default=MemoryBenchConfig.explore,
                        help="UCB bonus for meta-cognitions with little feedback during GRPO (0 = greedy)")
    parser.add_argument("--candidates", type=int, default=MemoryBenchConfig.candidates,
                        help="the exploration chooses among the service's top N (0 = 4 x top-k)")
    parser.add_argument("--no-sft-memory", action="store_true", help="SFT demonstrations without memories")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-memory")
    parser.add_argument("--worlds-dir", type=Path, default=None,
                        help="reuse the prepared world of each seed under this directory when it was made with "
                             "the same arguments (e.g. runs/bench-sql-learning: saves the ~18 min copy warm-up)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke configuration (~25 s, not a result)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds that --output already holds for this configuration; run the rest")
    ns = parser.parse_args(argv)
    console = Console()
    learning = dataclasses.replace(MemoryBenchConfig().learning, rl_seconds=ns.rl_seconds, sft_steps=ns.sft_steps,
                                   sft_lr=ns.sft_lr, rl_steps=ns.rl_steps)
    cfg = MemoryBenchConfig(learning=learning, gold_per_template=ns.gold_per_template, decoys_per_template=ns.decoys,
                            sft_from=str(ns.sft_from or ""),
                            fail_per_template=ns.fail_per_template, top_k=ns.top_k, sft_memory=not ns.no_sft_memory,
                            memory_lr=ns.memory_lr, explore=ns.explore, candidates=ns.candidates)
    if ns.quick:
        cfg = quick_config(cfg)
    seeds: list[dict[str, Any]] = earlier_seeds(ns.output, cfg, ns.quick, ns.seeds) if ns.resume else []
    for s in seeds:
        console.print(f"seed {s['seed']}: kept from {ns.output} (AUC {s['auc_after']}, gain {s['gain_points']:+.1f})")
        if "rl_reward_by_shown" not in s and (Path(s["run"]) / "memory.sqlite").is_file():   # a seed of an older run
            s["rl_reward_by_shown"] = rl_reward_by_shown(Path(s["run"]), s["memory_source"], s["memory_texts"],
                                                         Path(s["world"]) / "train_tasks.jsonl")
        if "eval_by_shown" not in s and (Path(s["run"]) / "eval_with_memory.json").is_file():
            s["eval_by_shown"] = eval_by_shown(Path(s["run"]), s["memory_source"],
                                               Path(s["world"]) / "heldout_tasks.jsonl")

    def write(complete: bool) -> None:
        write_report(ns.output, "memory", cfg, quick=ns.quick, complete=complete, seeds=seeds,
                     summary=summarize(seeds), extra={"retrieval": retrieval_figures()})

    for seed in ns.seeds:
        if any(s["seed"] == seed for s in seeds):
            continue
        console.print(f"[bold]seed {seed}[/]")
        seeds.append(run_seed(seed, cfg, ns.runs_dir, console, ns.worlds_dir))
        write(complete=False)
    write(complete=True)
    summary = summarize(seeds)
    console.print(results_table(seeds))
    verdict = "[green]pass[/]" if summary["pass"] else "[red]FAIL[/]"
    console.print(f"mean AUC after training {summary['mean_auc_after']} (bar {BAR_AUC}), mean gain with memory "
                  f"{summary['mean_gain_points']:+.1f} points (bar {BAR_POINTS:.0f}): {verdict}")
    console.print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
