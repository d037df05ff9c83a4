"""The vision learning set-up (issue 21): does GRPO with the rotation reward alone teach the tiny
vision-language policy to tell how an unseen image was rotated?

One seed, one work directory (``prepare``):

- ``tasks/rotation_train.jsonl``: RL tasks, rotation on train scenes (``envs.vision.ssl_tasks``);
- ``tasks/<kind>_heldout.jsonl``: evaluation tasks of the four SSL4RL kinds on held-out scenes (the
  split fixed by the scene seed: no held-out scene is ever shown in training);
- ``format.jsonl``: the format demonstrations, the four kinds on train scenes of their own with a
  *random* well-formed answer each, so that the start knows how to answer and nothing else (its
  accuracy stays at chance: the answer it learns carries no information about the image);
- ``policy/``: a fresh tiny Qwen2-VL (``trainer.model.init_policy(vision=True)``), ``start/``: the
  same after the format SFT (``format_sft``), the checkpoint GRPO starts from.

Compact prompts: the system message asks for ``<answer>…</answer>`` and each question is one short
sentence naming the answers it takes (CPU generation is prefill-bound, as in
``experiments.sql_learning``); the images are the SSL tasks' own. Single turn, no tools.

``run_vision_learning`` then trains GRPO through the runner with ``ssl_rotation`` alone and
evaluates the start and the GRPO checkpoint greedily on the four held-out kinds through the
embedded reward service.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from envs.vision.ssl_tasks import SslConfig, SslExample, make_example, scene_seeds
from reward_service.ssl.answers import POSITIONS, ROTATIONS, TASKS, chance_level, format_answer
from rlyard.domain import Task
from trainer.compose import Stack, open_stack
from trainer.config import RolloutConfig, parse_config
from trainer.evaluate import EvalReport, evaluate
from trainer.events import EventFn
from trainer.outputs import write_report
from trainer.runner import run_experiment

logger = logging.getLogger(__name__)

SYSTEM = "Answer in <answer>...</answer>."
# One short question per kind (the tokenizer spells most of these words in several pieces, and the
# prompt's length is most of a step's cost); the format SFT shows the answers each takes.
QUESTIONS = {
    "rotation": "Clockwise rotation in degrees?",
    "jigsaw": "Order of the 4 tiles?",
    "position": "Where is the second patch?",
    "masked_patch": "Which candidate fills the hole?",
}
REWARD_SPECS: dict[str, dict[str, Any]] = {kind: {f"ssl_{kind}": 1.0} for kind in TASKS}
TRAIN_KIND = "rotation"
PREPARED_FILE = "prepared.json"
PREPARE_VERSION = 2
# Scene seeds of the format demonstrations start here, far from the RL tasks' (which start at 0),
# so no RL image was ever shown with a (random) label.
FORMAT_SCENE_START = 1_000_000


class StaleWorkError(RuntimeError):
    """A work directory prepared with other arguments: not reused, not overwritten."""


@dataclass(frozen=True)
class VisionLearningConfig:
    """The experiment's knobs (the bench's defaults)."""

    seed: int = 0
    image_size: int = 56           # scenes are image_size² px: 2×2 image tokens (28 px each)
    n_train: int = 2000            # RL rotation tasks (train scenes)
    n_heldout: int = 200           # evaluation tasks per kind (held-out scenes)
    n_format: int = 256            # format demonstrations per kind (random answers)
    size: str = "tiny"             # the decoder preset (trainer.model.build.SIZE_PRESETS)
    format_steps: int = 200
    format_batch_size: int = 16
    format_lr: float = 1e-3
    rl_steps: int = 5000           # a cap: rl_seconds ends the stage
    rl_seconds: float = 900.0      # the issue: at most 15 minutes a seed, one thread
    rl_lr: float = 3e-4
    rl_temperature: float = 1.0
    group_size: int = 8
    prompts_per_step: int = 8
    updates_per_batch: int = 1
    kl_coef: float = 0.1           # k3 KL to the format start (0: no reference model)
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        SslConfig(size=self.image_size)          # its ConfigError says which sizes work
        for name in ("n_train", "n_heldout", "n_format", "format_steps", "format_batch_size", "rl_steps",
                     "prompts_per_step", "updates_per_batch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (got {self.group_size}): GRPO compares samples of a group")
        if self.rl_seconds < 0:
            raise ValueError(f"rl_seconds must be >= 0 (0 = run rl_steps steps; got {self.rl_seconds})")
        if not self.rl_temperature > 0:
            raise ValueError(f"rl_temperature must be > 0 (got {self.rl_temperature}); evaluation is greedy anyway")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (0 = no reference model; got {self.kl_coef})")
        if self.rl_lr <= 0 or self.format_lr <= 0:
            raise ValueError(f"learning rates must be > 0 (rl_lr={self.rl_lr}, format_lr={self.format_lr})")

    def ssl(self) -> SslConfig:
        """The SSL tasks' shape: the image side, 2×2 jigsaw, 4 masked-patch candidates."""
        return SslConfig(size=self.image_size)

    def prepare_args(self) -> dict[str, Any]:
        """What ``prepare`` depends on (a work directory is reused only for the same)."""
        return {"version": PREPARE_VERSION, "seed": self.seed, "image_size": self.image_size,
                "n_train": self.n_train, "n_heldout": self.n_heldout, "n_format": self.n_format, "size": self.size,
                "format_steps": self.format_steps, "format_batch_size": self.format_batch_size,
                "format_lr": self.format_lr}


def quick(cfg: VisionLearningConfig) -> VisionLearningConfig:
    """A smoke-sized variant of ``cfg`` (about a minute; checks the set-up, learns nothing)."""
    return dataclasses.replace(cfg, image_size=56, n_train=16, n_heldout=4, n_format=4, format_steps=2,
                               format_batch_size=4, rl_steps=2, rl_seconds=0.0, group_size=2, prompts_per_step=2)


@dataclass(frozen=True)
class Prepared:
    """Paths and counts of a prepared work directory."""

    root: Path
    train_tasks: Path
    heldout_tasks: dict[str, Path]
    format_demos: Path
    policy: Path
    start: Path
    n_train: int
    n_heldout: dict[str, int]
    format_losses: list[float]
    format_seconds: float


@dataclass(frozen=True)
class PhaseEvent:
    """The experiment moved on: prepare, format, train, evaluate."""

    phase: str


@dataclass(frozen=True)
class FormatStepEvent:
    """One step of the format SFT."""

    step: int
    loss: float


@dataclass(frozen=True)
class EvalEvent:
    """One held-out evaluation (a checkpoint on a kind) ended."""

    model: str
    kind: str
    n: int
    accuracy: float


# ---------------------------------------------------------------------------- tasks
def task_line(example: SslExample, root: Path) -> dict[str, Any]:
    """A ``trainer.tasks`` line for ``example``: compact prompt, image parts naming the PNGs that it
    writes under ``root/images/<task_id>/``."""
    folder = root / "images" / example.task_id
    folder.mkdir(parents=True, exist_ok=True)
    attachments, parts = [], []
    for part in example.attachments():
        rel = f"images/{example.task_id}/{part.image_id}.png"
        (root / rel).write_bytes(part.data)
        attachments.append({"image_id": part.image_id, "path": rel, "mime_type": part.mime_type,
                            "width": part.width, "height": part.height})
        parts.append({"type": "image", "image_id": part.image_id})
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": [*parts, {"type": "text", "text": QUESTIONS[example.kind]}]}]
    return {"task_id": example.task_id, "messages": messages, "tools": [], "ground_truth": example.ground_truth,
            "attachments": attachments}


def random_answer(kind: str, rng: random.Random, ssl: SslConfig) -> str:
    """A uniformly random well-formed answer of ``kind`` in its tags (``format_answer``)."""
    if kind == "rotation":
        return format_answer(kind, rng.choice(ROTATIONS))
    if kind == "jigsaw":
        order = list(range(ssl.grid**2))
        rng.shuffle(order)
        return format_answer(kind, order)
    if kind == "position":
        return format_answer(kind, rng.choice(list(POSITIONS)))
    return format_answer(kind, rng.randrange(ssl.candidates))


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


# ---------------------------------------------------------------------------- the format start
def prompt_of(policy: Any, task: Task) -> list[int]:
    """``task``'s chat-template prompt with each image's pad expanded, as the rollout engine builds it."""
    rendered = policy.tokenizer.apply_chat_template(task.messages, add_generation_prompt=True, tokenize=True)
    ids = [int(t) for t in (rendered if isinstance(rendered, list) else rendered["input_ids"])]
    images = list(task.attachments)
    out: list[int] = []
    for token in ids:
        out.extend([token] * policy.image_tokens(images.pop(0)) if token == policy.image_pad_id else [token])
    if images:
        raise ValueError(f"task {task.task_id}: {len(images)} attachment(s) not shown by the prompt")
    return out


def format_sft(policy_dir: Path, demos: Path, out: Path, *, steps: int, batch_size: int, lr: float, seed: int,
               on_step: EventFn | None = None) -> list[float]:
    """SFT of the policy at ``policy_dir`` on the format demonstrations (prompt with its images, then
    the answer and the end of turn), saved to ``out``; the loss of every step."""
    from trainer.policy import load_policy
    from trainer.sft import SftData, SftExample, sft_step
    from trainer.tasks import load_tasks

    torch.manual_seed(seed)
    policy = load_policy(policy_dir)
    end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = {}
    for line in demos.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        answers[str(obj["task_id"])] = obj["answer"]
    examples = []
    for task in load_tasks(demos, []):
        answer = [*policy.tokenizer.encode(answers[task.task_id], add_special_tokens=False), end]
        examples.append(SftExample(prompt_of(policy, task), answer, [1] * len(answer), images=task.attachments))
    data = SftData(examples, seed=seed, pad_token_id=policy.pad_token_id)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(1, steps + 1):
        metrics = sft_step(policy, optimizer, data.next_batch(batch_size))
        losses.append(float(metrics["loss"]))
        if on_step is not None:
            on_step(FormatStepEvent(step, losses[-1]))
    policy.model.eval()
    policy.save_pretrained(out)
    return losses


def prepare(root: Path, cfg: VisionLearningConfig, on_event: EventFn | None = None) -> Prepared:
    """Write the tasks, the format demonstrations, the fresh policy and its format start under
    ``root`` (see the module docstring); reuse them when ``root`` was prepared with the same
    arguments.

    Raises:
        StaleWorkError: ``root`` holds a preparation made with other arguments.
    """
    from trainer.model import init_policy

    emit = on_event or (lambda _e: None)
    root = Path(root)
    args = cfg.prepare_args()
    earlier = load_prepared(root, args)
    if earlier is not None:
        return earlier
    emit(PhaseEvent("prepare"))
    root.mkdir(parents=True, exist_ok=True)
    ssl = cfg.ssl()
    tasks_dir = root / "tasks"
    train = [task_line(make_example(TRAIN_KIND, s, ssl), tasks_dir) for s in scene_seeds("train", cfg.n_train)]
    train_path = tasks_dir / f"{TRAIN_KIND}_train.jsonl"
    _write_jsonl(train_path, train)
    heldout: dict[str, Path] = {}
    for kind in TASKS:
        heldout[kind] = tasks_dir / f"{kind}_heldout.jsonl"
        _write_jsonl(heldout[kind], [task_line(make_example(kind, s, ssl), tasks_dir)
                                     for s in scene_seeds("heldout", cfg.n_heldout)])
    rng = random.Random(f"vision_learning/{cfg.seed}/format")
    demos = []
    for kind in TASKS:
        for s in scene_seeds("train", cfg.n_format, FORMAT_SCENE_START):
            line = task_line(make_example(kind, s, ssl), root / "format")
            demos.append({**line, "answer": random_answer(kind, rng, ssl)})
    rng.shuffle(demos)
    demos_path = root / "format" / "format.jsonl"
    _write_jsonl(demos_path, demos)
    init_policy(root / "policy", size=cfg.size, seed=cfg.seed, vision=True)
    emit(PhaseEvent("format"))
    tic = time.monotonic()
    losses = format_sft(root / "policy", demos_path, root / "start", steps=cfg.format_steps,
                        batch_size=cfg.format_batch_size, lr=cfg.format_lr, seed=cfg.seed, on_step=emit)
    prepared = Prepared(root=root, train_tasks=train_path, heldout_tasks=heldout, format_demos=demos_path,
                        policy=root / "policy", start=root / "start", n_train=len(train),
                        n_heldout={kind: cfg.n_heldout for kind in TASKS}, format_losses=losses,
                        format_seconds=round(time.monotonic() - tic, 1))
    record = json.loads(json.dumps(dataclasses.asdict(prepared), default=str))
    (root / PREPARED_FILE).write_text(json.dumps({"args": args, "prepared": record}, indent=1) + "\n",
                                      encoding="utf-8")
    return prepared


def load_prepared(root: Path, args: dict[str, Any]) -> Prepared | None:
    """The preparation in ``root`` if it was made with ``args``; None when there is none.

    Raises:
        StaleWorkError: ``root`` was prepared with other arguments.
    """
    path = Path(root) / PREPARED_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("args") != args:
        raise StaleWorkError(f"{root} was prepared with {saved.get('args')}, not {args}: remove it or use another "
                             "runs directory")
    p = saved["prepared"]
    return Prepared(root=Path(p["root"]), train_tasks=Path(p["train_tasks"]),
                    heldout_tasks={k: Path(v) for k, v in p["heldout_tasks"].items()},
                    format_demos=Path(p["format_demos"]), policy=Path(p["policy"]), start=Path(p["start"]),
                    n_train=int(p["n_train"]), n_heldout=dict(p["n_heldout"]),
                    format_losses=list(p["format_losses"]), format_seconds=float(p["format_seconds"]))


# ---------------------------------------------------------------------------- GRPO and evaluation
def rollout_settings(cfg: VisionLearningConfig) -> dict[str, Any]:
    """Single turn, short answers."""
    return {"group_size": cfg.group_size, "prompts_per_step": cfg.prompts_per_step,
            "temperature": cfg.rl_temperature, "max_turns": 1, "max_new_tokens_per_turn": cfg.max_new_tokens,
            "max_total_tokens": 512, "max_observation_tokens": 16}


def experiment(cfg: VisionLearningConfig, prep: Prepared) -> dict[str, Any]:
    """The runner's config: GRPO from the format start with the rotation reward alone."""
    rl = {"kind": "rl", "name": "grpo", "steps": cfg.rl_steps, "max_seconds": cfg.rl_seconds,
          "tasks": {"path": str(prep.train_tasks)}, "reward": dict(REWARD_SPECS[TRAIN_KIND]),
          "rollout": rollout_settings(cfg),
          "algorithm": {"kl_coef": cfg.kl_coef, "clip_low": 0.2, "clip_high": 0.2,
                        "updates_per_batch": cfg.updates_per_batch,
                        "micro_batch_size": cfg.group_size * cfg.prompts_per_step,
                        "loss_agg": "seq-mean-token-mean"},
          "optim": {"lr": cfg.rl_lr}}
    return {"name": "vision-learning", "seed": cfg.seed, "model": {"path": str(prep.start)},
            "checkpoint": {"every_steps": 50, "keep": 1}, "stages": [rl]}


def accuracy_entry(correct: int, n: int, malformed: int, chance: float) -> dict[str, Any]:
    """``{n, correct, accuracy, stderr, malformed, chance}`` (stderr of a proportion, sqrt(p (1 - p) / n))."""
    p = correct / n if n else 0.0
    return {"n": n, "correct": correct, "accuracy": round(p, 4), "stderr": round(math.sqrt(p * (1 - p) / n), 4)
            if n else None, "malformed": malformed, "chance": round(chance, 4)}


def well_formed(kind: str, answer: str, ssl: SslConfig) -> bool:
    """Whether ``answer`` parses as an answer of ``kind`` (``reward_service.ssl.answers``)."""
    from reward_service.ssl import answers

    if kind == "rotation":
        return answers.parse_rotation(answer).ok
    if kind == "jigsaw":
        return answers.parse_jigsaw(answer, ssl.grid**2).ok
    if kind == "position":
        return answers.parse_position(answer).ok
    return answers.parse_candidate(answer, ssl.candidates).ok


def evaluate_kinds(model: Path, prep: Prepared, cfg: VisionLearningConfig, stack: Stack, label: str,
                   emit: EventFn, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Greedy accuracy of ``model`` on each held-out kind (one answer per task, scored by the
    embedded reward service); every answer in ``out_dir/eval_<label>_<kind>.json``."""
    rollout = RolloutConfig(**{**rollout_settings(cfg), "group_size": 2, "prompts_per_step": 1})
    ssl = cfg.ssl()
    result = {}
    for kind, path in prep.heldout_tasks.items():
        report: EvalReport = evaluate(model, stack.tasks(path), stack, rollout_config=rollout, temperature=0.0,
                                      max_tool_calls=0, reward_spec=REWARD_SPECS[kind], seed=cfg.seed)
        correct = sum(r.correct for r in report.results)
        malformed = sum(not well_formed(kind, r.final_answer, ssl) for r in report.results)
        answers: dict[str, int] = {}
        for r in report.results:
            answers[r.final_answer.strip()] = answers.get(r.final_answer.strip(), 0) + 1
        entry = accuracy_entry(correct, report.n, malformed,
                               chance_level(kind, grid=ssl.grid, candidates=ssl.candidates))
        entry["top_answers"] = dict(sorted(answers.items(), key=lambda kv: -kv[1])[:5])
        result[kind] = entry
        (out_dir / f"eval_{label}_{kind}.json").write_text(json.dumps(report.to_json(), indent=1) + "\n",
                                                           encoding="utf-8")
        emit(EvalEvent(label, kind, report.n, entry["accuracy"]))
    return result


def train_rewards(run_dir: Path) -> list[float]:
    """The GRPO stage's mean train reward per step (``metrics.jsonl``)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [float(r["reward_mean"]) for r in rows if r.get("stage") == "grpo" and "reward_mean" in r]


def plot_rewards(curves: dict[str, list[float]], out: Path, window: int = 20) -> Path:
    """Train reward per step (faint) and its moving average over ``window`` steps, one colour per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    outside = len(curves) > 3          # many curves: the legend goes right of the axes
    fig, ax = plt.subplots(figsize=(9.5 if outside else 6.5, 3.4))
    for i, (label, values) in enumerate(curves.items()):
        if not values:
            continue
        color = f"C{i}"
        ax.plot(range(1, len(values) + 1), values, color=color, alpha=0.25, linewidth=0.8)
        w = max(1, min(window, len(values)))
        smooth = [sum(values[max(0, k - w + 1): k + 1]) / len(values[max(0, k - w + 1): k + 1])
                  for k in range(len(values))]
        ax.plot(range(1, len(values) + 1), smooth, color=color, label=f"{label} (mean of {w})")
    ax.axhline(chance_level("rotation"), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("train reward (rotation, T=1)")
    ax.set_ylim(0, 1)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_vision_learning(run_dir: Path, cfg: VisionLearningConfig = VisionLearningConfig(), *,
                        on_event: EventFn | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Prepare, evaluate the start, train GRPO, evaluate the end; the report (also
    ``run_dir/report.json``). An interrupted run resumes: the preparation, the start's evaluation
    and the runner's checkpoint are reused."""
    emit = on_event or (lambda _e: None)
    started = time.monotonic()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prep = prepared or prepare(run_dir / "work", cfg, emit)
    config = parse_config(experiment(cfg, prep))
    evals: dict[str, dict[str, dict[str, Any]]] = {}
    with open_stack(config, extra_specs=[REWARD_SPECS[k] for k in TASKS]) as stack:
        start_file = run_dir / "eval_start.json"
        if start_file.is_file():
            evals["start"] = json.loads(start_file.read_text(encoding="utf-8"))
        else:
            emit(PhaseEvent("evaluate start"))
            evals["start"] = evaluate_kinds(prep.start, prep, cfg, stack, "start", emit, run_dir)
            start_file.write_text(json.dumps(evals["start"], indent=1) + "\n", encoding="utf-8")
        emit(PhaseEvent("train"))
        report = run_experiment(config, run_dir, stack=stack, on_event=emit, resume=True)
        if report["state"] != "SUCCEEDED":
            return report
        emit(PhaseEvent("evaluate end"))
        evals["end"] = evaluate_kinds(run_dir / "models" / "grpo", prep, cfg, stack, "end", emit, run_dir)
    stage = next(s for s in report["stages"] if s["name"] == "grpo")
    rewards = train_rewards(run_dir)
    curve = plot_rewards({f"seed {cfg.seed}": rewards}, run_dir / "curves" / "train_reward.png")
    seconds = float(stage.get("seconds", 0.0))
    steps = int(stage.get("steps_done", len(rewards)))
    report.update({
        "seed": cfg.seed,
        "wall_seconds": round(time.monotonic() - started, 1),
        "rl_steps": steps,
        "rl_seconds": round(seconds, 3),
        "rl_steps_per_second": round(steps / seconds, 4) if seconds else None,
        "accuracy": evals,                       # start/end → kind → {n, correct, accuracy, stderr, malformed, chance}
        "train_rewards": [round(r, 4) for r in rewards],
        "format": {"steps": len(prep.format_losses), "seconds": prep.format_seconds,
                   "first_loss": round(prep.format_losses[0], 4) if prep.format_losses else None,
                   "last_loss": round(prep.format_losses[-1], 4) if prep.format_losses else None},
        "rl_tasks": prep.n_train,
        "heldout_tasks": prep.n_heldout,
        "learning_config": dataclasses.asdict(cfg),
    })
    report["curves"] = [*report.get("curves", []), str(curve)]
    write_report(run_dir, report)
    return report


# ---------------------------------------------------------------------------- the learning-rate sweep
PROBE_SCENE_START = 2_000_000     # train-split scenes that neither RL nor the format SFT shows


def probe_tasks(prep: Prepared, cfg: VisionLearningConfig, n: int) -> Path:
    """``n`` rotation tasks on train-split scenes of their own (the sweep's greedy probe: it never reads
    held-out scenes), written once under the work directory."""
    path = prep.root / "tasks" / f"{TRAIN_KIND}_probe_{n}.jsonl"
    if not path.is_file():
        ssl = cfg.ssl()
        _write_jsonl(path, [task_line(make_example(TRAIN_KIND, s, ssl), path.parent)
                            for s in scene_seeds("train", n, PROBE_SCENE_START)])
    return path


def lr_sweep(run_dir: Path, cfg: VisionLearningConfig, lrs: list[float], *, seconds: float, probe: int = 200,
             on_event: EventFn | None = None) -> dict[str, Any]:
    """GRPO from the same format start for ``seconds`` per learning rate; per rate the train reward of
    every step and greedy accuracy on ``probe`` unseen *train-split* rotation tasks (never held-out).
    ``best``: the rate with the highest probe accuracy (ties: the mean train reward of the last 20 steps)."""
    emit = on_event or (lambda _e: None)
    run_dir = Path(run_dir)
    prep = prepare(run_dir / "work", cfg, emit)
    path = probe_tasks(prep, cfg, probe)
    rollout = RolloutConfig(**{**rollout_settings(cfg), "group_size": 2, "prompts_per_step": 1})
    results: dict[str, Any] = {}
    for lr in lrs:
        arm = dataclasses.replace(cfg, rl_lr=lr, rl_seconds=seconds)
        arm_dir = run_dir / f"lr{lr:g}"
        config = parse_config(experiment(arm, prep))
        with open_stack(config) as stack:
            report = run_experiment(config, arm_dir, stack=stack, on_event=emit, resume=True)
            probe_report = evaluate(arm_dir / "models" / "grpo", stack.tasks(path), stack, rollout_config=rollout,
                                    temperature=0.0, max_tool_calls=0, reward_spec=REWARD_SPECS[TRAIN_KIND],
                                    seed=cfg.seed)
        rewards = train_rewards(arm_dir)
        stage = next(s for s in report["stages"] if s["name"] == "grpo")
        results[f"{lr:g}"] = {"lr": lr, "steps": int(stage.get("steps_done", len(rewards))),
                              "seconds": round(float(stage.get("seconds", 0.0)), 1),
                              "last20_train_reward": round(sum(rewards[-20:]) / max(1, len(rewards[-20:])), 4),
                              "probe_accuracy": round(probe_report.execution_accuracy, 4),
                              "train_rewards": [round(r, 4) for r in rewards]}
        emit(PhaseEvent(f"lr {lr:g}: probe accuracy {probe_report.execution_accuracy:.3f}"))
    best = max(results.values(), key=lambda r: (r["probe_accuracy"], r["last20_train_reward"]))
    curve = plot_rewards({f"lr {k}": v["train_rewards"] for k, v in results.items()}, run_dir / "lr_sweep.png")
    return {"seconds_per_lr": seconds, "probe_tasks": probe, "probe_split": "train (scenes unseen in training)",
            "arms": results, "best_lr": best["lr"], "curve": str(curve)}
