"""The learning demo: a tiny policy learns to use the SQL tool, SFT warm start then GRPO.

    report = run_learning(Path("runs/learn-0"), LearningConfig(seed=0))
    report["sft_accuracy"], report["rl_accuracy"]

One call does everything on one machine: ``experiments.sql_learning.prepare`` writes the local-services
database, train and held-out tasks, demonstrations with real tool calls and a fresh tiny policy;
the SQL tool server and the reward service start embedded (real gRPC on loopback ports); the
runner trains an SFT stage on the demonstrations and a GRPO stage on the train questions with the
execution reward (multi-turn: the policy runs queries, reads rows or errors, answers); the SFT
and the GRPO checkpoints are evaluated on the held-out questions (greedy, one trajectory each),
reported overall and per slice (a in-distribution, b unseen values, c unseen templates).

``control=True`` replaces GRPO with more SFT on the same demonstrations for the same wall time
(the benchmark's control arm: it says whether a gain comes from RL or just from training longer).

Everything lands in the run directory: ``report.json`` (``sft_accuracy``, ``rl_accuracy``,
``slices``, ``slice_gain``, ``seed``, ``wall_seconds``, per-template accuracy, the eval tables, the
config), ``curves/*.png``
(loss, reward, accuracy; ``curves/heldout_accuracy.png``), ``samples.md`` (RL trajectories),
``eval_<stage>.json`` (every held-out trajectory's answer and reward), ``models/<stage>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.local_services.questions import SLICES, sql_literals
from experiments.sql_learning import REWARD_SPEC, Prepared, load_prepared, prepare
from trainer.compose import Stack, open_stack
from trainer.config import RolloutConfig, parse_config
from trainer.evaluate import EvalReport, evaluate
from trainer.events import EventFn
from trainer.outputs import write_report
from trainer.runner import run_experiment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhaseEvent:
    """The demo moved on: prepare, train, evaluate."""

    phase: str


@dataclass(frozen=True)
class CopyEvent:
    """One step of the copying warm-up."""

    step: int
    loss: float


@dataclass(frozen=True)
class BudgetEvent:
    """A stage got its time limit out of the run's budget."""

    stage: str
    seconds: float
    configured: float


@dataclass(frozen=True)
class EvalEvent:
    """A held-out evaluation started or ended."""

    model: str
    state: str                  # start or done
    n: int = 0
    accuracy: float = 0.0

# What a budgeted run keeps back from GRPO for what follows it: the last step past the limit (the
# limit is checked after a step; ~20 s here), exporting the model, two greedy held-out evaluations
# (~0.2 s a question on 2 cores: ~32 s each for the 160 of the three slices) and the report.
EVAL_RESERVE_SECONDS = 90.0


@dataclass(frozen=True)
class LearningConfig:
    """The demo's knobs. Defaults: the README's main command, except ``budget_seconds`` (``rlyard demo``
    sets 14 minutes; the bench and the library default to a fixed GRPO budget)."""

    seed: int = 0
    n_train: int = 1000           # train questions (train templates and cities); RL gets those not demonstrated
    n_heldout_a: int = 100        # held-out slice a: train templates and values, new questions (the bar's slice)
    n_heldout_b: int = 40         # held-out slice b: train templates, a city or district never in training
    n_heldout_c: int = 20         # held-out slice c: templates never in training
    n_demos: int = 300            # SFT demonstrations, drawn from the train questions
    demo_city_share: float = 1.0  # demonstrations name only this share of the train cities (RL sees the rest)
    renamed_worlds: int = 0       # > 0: RL questions move into this many copies of the database with invented places
    error_every: int = 4          # every 4th demonstration fixes a failing query first
    size: str = "tiny"            # policy preset (envs: trainer.model.build.SIZE_PRESETS)
    copy_steps: int = 600         # cap on the copying warm-up of the fresh policy (ends early once it copies)
    max_tool_calls: int = 3
    sft_steps: int = 200
    sft_batch_size: int = 16
    sft_lr: float = 1e-3
    rl_steps: int = 1000          # a cap: rl_seconds ends the stage
    rl_seconds: float = 240.0
    budget_seconds: float = 0.0   # > 0: the whole run's budget; GRPO gets at most what is left (rl_seconds a cap)
    rl_lr: float = 1e-4
    rl_temperature: float = 1.0   # the GRPO rollouts' sampling temperature (evaluation is greedy)
    rl_warmup_steps: int = 0      # GRPO's learning rate rises linearly over these steps (fresh Adam moments)
    rl_dynamic_rounds: int = 0    # > 0: dynamic sampling, at most this many rounds of rollouts a GRPO step
    rl_oversample: float = 1.0    # with rl_dynamic_rounds: questions a round draws per group still missing
    rl_selection: str = "uniform"  # or "pass_rate": revisit questions in (0, 1), pass over most at 0 or 1
    group_size: int = 8
    prompts_per_step: int = 8
    updates_per_batch: int = 2
    max_new_tokens_per_turn: int = 200
    max_total_tokens: int = 1024
    max_observation_tokens: int = 96

    def __post_init__(self) -> None:
        for name in ("n_train", "n_demos", "sft_steps", "rl_steps", "group_size", "prompts_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("n_heldout_a", "n_heldout_b", "n_heldout_c"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)}): every report gives all three "
                                 "held-out slices")
        if not self.rl_temperature > 0:
            raise ValueError(f"rl_temperature must be > 0 (got {self.rl_temperature}); evaluation is greedy anyway")
        if self.renamed_worlds < 0:
            raise ValueError(f"renamed_worlds must be >= 0 (0: RL questions stay in the database; "
                             f"got {self.renamed_worlds})")
        if self.budget_seconds < 0:
            raise ValueError(f"budget_seconds must be >= 0 (0 = none: GRPO gets rl_seconds; got {self.budget_seconds})")
        if self.rl_seconds < 0:
            raise ValueError(f"rl_seconds must be >= 0 (0 = run rl_steps steps; got {self.rl_seconds})")
        if self.rl_dynamic_rounds < 0:
            raise ValueError(f"rl_dynamic_rounds must be >= 0 (0 = one round a step, no dynamic sampling; "
                             f"got {self.rl_dynamic_rounds})")
        if self.rl_selection not in ("uniform", "pass_rate"):
            raise ValueError(f"rl_selection must be 'uniform' or 'pass_rate' (got {self.rl_selection!r})")

    def rollout(self) -> dict[str, Any]:
        """The RL stage's rollout settings (max_turns: the tool calls, then the answer turn)."""
        return {"group_size": self.group_size, "prompts_per_step": self.prompts_per_step,
                "temperature": self.rl_temperature, "max_turns": self.max_tool_calls + 1,
                "max_new_tokens_per_turn": self.max_new_tokens_per_turn, "max_total_tokens": self.max_total_tokens,
                "max_observation_tokens": self.max_observation_tokens}


    def sampling(self) -> dict[str, Any]:
        """The RL stage's dynamic sampling and question selection (``rollout.dynamic_sampling``,
        ``rollout.selection``; off and uniform by default)."""
        dynamic = {"enabled": self.rl_dynamic_rounds > 0, "oversample": self.rl_oversample,
                   "max_rounds": max(self.rl_dynamic_rounds, 1)}
        return {"dynamic_sampling": dynamic, "selection": {"mode": self.rl_selection}}


def quick(cfg: LearningConfig) -> LearningConfig:
    """A smoke-sized variant of ``cfg`` (a minute; checks the set-up, learns nothing)."""
    return dataclasses.replace(cfg, n_train=40, n_heldout_a=4, n_heldout_b=3, n_heldout_c=3, n_demos=12, copy_steps=2,
                               sft_steps=3, rl_steps=1, rl_seconds=0.0, group_size=2, prompts_per_step=2,
                               max_new_tokens_per_turn=48, max_total_tokens=512)


def experiment(cfg: LearningConfig, prep: Prepared, *, control_seconds: float | None = None,
               model: Path | None = None) -> dict[str, Any]:
    """The experiment config: SFT then GRPO; with ``model`` (an SFT checkpoint), only GRPO from it; or,
    with ``control_seconds``, only more SFT for that long starting from ``model`` (the SFT checkpoint
    of the matching GRPO run)."""
    sft = {"kind": "sft", "name": "sft", "data": str(prep.demos), "steps": cfg.sft_steps,
           "batch_size": cfg.sft_batch_size, "optim": {"lr": cfg.sft_lr, "warmup_steps": 10}}
    if control_seconds is not None:
        more = {**sft, "name": "more_sft", "steps": 100_000, "max_seconds": control_seconds,
                "optim": {"lr": cfg.sft_lr}}
        return {"name": "sql-learning-control", "seed": cfg.seed, "model": {"path": str(model or prep.policy)},
                "services": services(prep), "checkpoint": {"every_steps": 100, "keep": 1}, "stages": [more]}
    rl = {"kind": "rl", "name": "grpo", "steps": cfg.rl_steps, "max_seconds": cfg.rl_seconds,
          "tasks": {"path": str(prep.train_tasks)}, "reward": dict(REWARD_SPEC),
          "rollout": {**cfg.rollout(), **cfg.sampling()},
          "algorithm": {"kl_coef": 0.0, "clip_low": 0.2, "clip_high": 0.2, "updates_per_batch": cfg.updates_per_batch,
                        "micro_batch_size": cfg.group_size, "loss_agg": "seq-mean-token-mean"},
          "optim": {"lr": cfg.rl_lr, "warmup_steps": cfg.rl_warmup_steps}}
    return {"name": "sql-learning", "seed": cfg.seed, "model": {"path": str(model or prep.policy)},
            "services": services(prep), "checkpoint": {"every_steps": 25, "keep": 2},
            "stages": [rl] if model is not None else [sft, rl]}


def services(prep: Prepared) -> dict[str, Any]:
    """The embedded SQL tool server over the world's database."""
    return {"embedded": {"families": {"sql": {"db_dir": str(prep.db_dir)}}}}


def evaluate_heldout(model: Path, prep: Prepared, cfg: LearningConfig, stack: Stack) -> EvalReport:
    """Greedy execution accuracy of ``model`` on the held-out questions (one trajectory each)."""
    rollout = RolloutConfig(**{**cfg.rollout(), "group_size": 2, "prompts_per_step": 1})
    return evaluate(model, stack.tasks(prep.heldout_tasks), stack, rollout_config=rollout, temperature=0.0,
                    max_tool_calls=cfg.max_tool_calls, reward_spec=REWARD_SPEC, seed=cfg.seed)


def by_template(report: EvalReport, prep: Prepared) -> dict[str, dict[str, Any]]:
    """Accuracy per question template (held-out-only templates marked)."""
    template = {}
    for line in prep.heldout_tasks.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        template[obj["task_id"]] = obj.get("template", "")
    heldout_only = set(prep.split_info.get("heldout_only_templates", []))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for result in report.results:
        counts[template.get(result.task_id, "")][0] += int(result.correct)
        counts[template.get(result.task_id, "")][1] += 1
    return {name: {"correct": c, "n": n, "accuracy": round(c / n, 4), "heldout_only": name in heldout_only}
            for name, (c, n) in sorted(counts.items())}


def heldout_slices(prep: Prepared) -> dict[str, str]:
    """Each held-out task's slice (``a``, ``b`` or ``c``), as its task line records it."""
    lines = prep.heldout_tasks.read_text(encoding="utf-8").splitlines()
    return {obj["task_id"]: obj["slice"] for obj in map(json.loads, lines)}


def slice_accuracy(correct: int, n: int) -> dict[str, Any]:
    """``{n, correct, accuracy, stderr}``, the standard error of a proportion: sqrt(p (1 - p) / n)
    (accuracy and stderr None when the slice is empty)."""
    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": None, "stderr": None}
    p = correct / n
    return {"n": n, "correct": correct, "accuracy": round(p, 4), "stderr": round(math.sqrt(p * (1 - p) / n), 4)}


def by_slice(report: EvalReport, slices: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Accuracy per held-out slice (``slice_accuracy``), every slice listed.

    Raises:
        ValueError: a result's task has no slice (the report is not of this world's held-out set).
    """
    counts = {name: [0, 0] for name in SLICES}
    for result in report.results:
        if result.task_id not in slices:
            raise ValueError(f"task {result.task_id} is not a held-out task of this world")
        counts[slices[result.task_id]][0] += int(result.correct)
        counts[slices[result.task_id]][1] += 1
    return {name: slice_accuracy(c, n) for name, (c, n) in counts.items()}


def slice_gain(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Per slice, ``after``'s accuracy minus ``before``'s (a fraction, as ``gain``; None for an empty slice)."""
    return {name: None if before[name]["accuracy"] is None or after[name]["accuracy"] is None
            else round(after[name]["accuracy"] - before[name]["accuracy"], 4) for name in SLICES}


ERROR_KINDS = ("correct", "unseen_template", "infra_failure", "no_answer", "value_miscopied", "other")


def error_kind(answer: str, gold: str, *, correct: bool, unseen_template: bool, infra_error: str = "") -> str:
    """What went wrong with one held-out answer (``ERROR_KINDS``): ``value_miscopied`` when a string
    literal of the gold SQL is missing from the answer (a name cut off, misspelt, or left out: the
    copying failure), ``other`` when every literal is there and the query is still wrong (a wrong
    table, column, condition or role for a name)."""
    if correct:
        return "correct"
    if unseen_template:
        return "unseen_template"
    if infra_error:
        return "infra_failure"
    if not answer.strip():
        return "no_answer"
    if any(f"'{value}'" not in answer for value in sql_literals(gold)):
        return "value_miscopied"
    return "other"


def error_kinds(report: EvalReport, prep: Prepared) -> dict[str, int]:
    """How many held-out answers of each ``ERROR_KINDS`` kind (every kind listed, zeros included)."""
    gold, slices = {}, {}
    for line in prep.heldout_tasks.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        gold[obj["task_id"]], slices[obj["task_id"]] = obj["ground_truth"]["query"], obj["slice"]
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for r in report.results:
        counts[error_kind(r.final_answer, gold.get(r.task_id, ""), correct=r.correct,
                          unseen_template=slices.get(r.task_id) == "c", infra_error=r.infra_error)] += 1
    return counts


def _plot_accuracy(run_dir: Path, values: dict[str, float], slices: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """Bars per slice (with its count) and overall, one colour per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "curves" / "heldout_accuracy.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    first = next(iter(slices.values()))
    groups = [f"{name} ({first[name]['n']})" for name in SLICES] + ["all"]
    width = 0.8 / len(values)
    for i, (key, color) in enumerate(zip(values, ("#8c8c8c", "#2f6db5", "#b5652f"), strict=False)):
        heights = [100 * (slices[key][name]["accuracy"] or 0.0) for name in SLICES] + [100 * values[key]]
        bars = ax.bar([g + i * width for g in range(len(groups))], heights, width, label=key, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([g + width * (len(values) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("held-out execution accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def prepare_for(cfg: LearningConfig, root: Path, on_event: EventFn | None = None) -> Prepared:
    """``experiments.sql_learning.prepare`` with the config's sizes; copy warm-up steps go to ``on_event``."""
    emit = on_event or (lambda _e: None)
    emit(PhaseEvent("prepare"))
    args: dict[str, Any] = {
        "seed": cfg.seed, "n_train": cfg.n_train, "n_heldout_a": cfg.n_heldout_a, "n_heldout_b": cfg.n_heldout_b,
        "n_heldout_c": cfg.n_heldout_c, "n_demos": cfg.n_demos,
        "max_tool_calls": cfg.max_tool_calls, "error_every": cfg.error_every, "size": cfg.size,
        "copy_steps": cfg.copy_steps, "demo_city_share": cfg.demo_city_share, "renamed_worlds": cfg.renamed_worlds,
    }
    earlier = load_prepared(root, **args)    # a resumed run keeps its world and its warmed-up policy
    if earlier is not None:
        return earlier
    return prepare(root, **args,
                   on_copy_step=lambda step, loss: emit(CopyEvent(step, loss)))


def grpo_time_limit(budget_seconds: float, elapsed: float, configured: float) -> float:
    """GRPO's time limit in a run with a budget: what is left of ``budget_seconds`` after ``elapsed``
    and ``EVAL_RESERVE_SECONDS``, at most ``configured`` (0: no cap), at least 1 s (one step)."""
    left = budget_seconds - elapsed - EVAL_RESERVE_SECONDS
    return round(max(1.0, min(configured or float("inf"), left)), 1)


def run_learning(run_dir: Path, cfg: LearningConfig = LearningConfig(), *, on_event: EventFn | None = None,
                 control_seconds: float | None = None, sft_model: Path | None = None,
                 prepared: Prepared | None = None) -> dict[str, Any]:
    """Prepare, train, evaluate; returns the report (also ``run_dir/report.json``).

    With ``control_seconds`` (and the GRPO run's ``prepared`` and ``sft_model``) the run trains
    more SFT for that many seconds instead, and reports ``sft_accuracy`` of ``sft_model`` and
    ``control_accuracy``. With ``sft_model`` alone the run skips SFT and trains GRPO from that
    checkpoint (GRPO variants compared from one SFT start); ``sft_accuracy`` is then that model's.
    """
    emit = on_event or (lambda _e: None)
    started = time.monotonic()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prep = prepared or prepare_for(cfg, run_dir / "work", emit)
    config = parse_config(experiment(cfg, prep, control_seconds=control_seconds, model=sft_model))
    given: dict[str, float] = {}

    def stage_limit(name: str, configured: float) -> float | None:
        """With a budget, GRPO's time limit is what is left of it (at least one step's worth)."""
        if not cfg.budget_seconds or name != "grpo":
            return None
        limit = grpo_time_limit(cfg.budget_seconds, time.monotonic() - started, configured)
        given[name] = limit
        if limit < configured:
            logger.warning("GRPO gets %.0f s of its %.0f s: the run's budget of %.0f s is mostly spent", limit,
                           configured, cfg.budget_seconds)
        emit(BudgetEvent(name, limit, configured))
        return limit

    with open_stack(config) as stack:
        emit(PhaseEvent("train"))
        report = run_experiment(config, run_dir, stack=stack, on_event=emit, resume=True, stage_limit=stage_limit)
        if report["state"] != "SUCCEEDED":
            return report
        emit(PhaseEvent("evaluate"))
        evals: dict[str, EvalReport] = {}
        if control_seconds is None:
            models = {"sft": Path(sft_model) if sft_model else run_dir / "models" / "sft",
                      "rl": run_dir / "models" / "grpo"}
        else:
            models = {"sft": Path(sft_model or prep.policy), "control": run_dir / "models" / "more_sft"}
        for key, path in models.items():
            emit(EvalEvent(key, "start", prep.n_heldout))
            evals[key] = evaluate_heldout(path, prep, cfg, stack)
            emit(EvalEvent(key, "done", prep.n_heldout, evals[key].execution_accuracy))
            (run_dir / f"eval_{key}.json").write_text(json.dumps(evals[key].to_json(), indent=1) + "\n",
                                                      encoding="utf-8")
    accuracy = {key: round(r.execution_accuracy, 4) for key, r in evals.items()}
    slice_of = heldout_slices(prep)
    slices = {key: by_slice(r, slice_of) for key, r in evals.items()}
    after = "rl" if "rl" in evals else "control"
    stage_seconds = {s["name"]: s.get("seconds", 0.0) for s in report["stages"]}
    report.update({
        "seed": cfg.seed,
        "wall_seconds": round(time.monotonic() - started, 1),
        "heldout_tasks": prep.n_heldout,
        "heldout_slices": prep.slices,
        "rl_tasks": prep.n_train,
        "demonstrations": prep.n_demos,
        **{f"{key}_accuracy": value for key, value in accuracy.items()},
        "gain": round(accuracy[after] - accuracy["sft"], 4),
        "slices": slices,                                  # per checkpoint: {a, b, c: {n, correct, accuracy, stderr}}
        "slice_gain": slice_gain(slices["sft"], slices[after]),
        "stage_seconds": stage_seconds,
        "rl_seconds_given": given.get("grpo"),     # with budget_seconds: GRPO's limit out of what was left
        "eval": {key: r.summary() for key, r in evals.items()},
        "by_template": {key: by_template(r, prep) for key, r in evals.items()},
        "errors": {key: error_kinds(r, prep) for key, r in evals.items()},
        "learning_config": dataclasses.asdict(cfg),
        "split": prep.split_info,
        "copy_warmup": {"steps": len(prep.copy_losses),
                        "first_loss": round(prep.copy_losses[0], 4) if prep.copy_losses else None,
                        "last_loss": round(prep.copy_losses[-1], 4) if prep.copy_losses else None},
        "samples": str(run_dir / "samples.md") if (run_dir / "samples.md").exists() else "",
    })
    report["curves"] = [*report.get("curves", []), str(_plot_accuracy(run_dir, accuracy, slices))]
    write_report(run_dir, report)
    return report
