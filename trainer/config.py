"""Typed experiment configs: one YAML per experiment → ``ExperimentConfig``.

Every dataclass checks its own fields in ``__post_init__`` and its cross-field
rules, and the message says how to fix a bad value (as TRL's configs do). A YAML
key that no field knows is an error naming the valid keys, so a typo never falls
back silently to a default.

    name: sql-grpo
    seed: 0
    model: {path: runs/policy, backend: hf}
    services: {tools: 127.0.0.1:50051, reward: 127.0.0.1:50052, retry_window_s: 30, max_failed_steps: 3}
    memory: {enabled: true, top_k: 3, token_budget: 256, ablation: true, task_type: label:template,
             distill: {every: 5}}         # target empty: the memory service starts embedded
    # or, empty addresses: started embedded, e.g.
    # services: {embedded: {tools: [search, nearby], families: {poi: {dir: data/generated/poi}}}}
    stages:
      - kind: sft
        data: data/sft/demos.jsonl
        steps: 200
      - kind: rl
        tasks: {path: data/generated/train_tasks.jsonl}
        reward: {sql_execution: 1.0}
        steps: 300
        rollout: {group_size: 8, prompts_per_step: 8, max_turns: 6,
                  dynamic_sampling: {enabled: true, max_rounds: 4}, selection: {mode: pass_rate}}
        algorithm: {kl_coef: 0.0, clip_low: 0.2, clip_high: 0.2}
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlyard.errors import ConfigError
from rlyard.routing import parse_routed_target
from trainer.algorithms import FilterConfig, LossAggMode
from trainer.sampler.registry import check_backend

TokenWeighting = Literal["none", "rest-schedule", "rest-entropy"]


def _fail(where: str, message: str) -> None:
    raise ConfigError(f"{where}: {message}")


def _check_deadline(where: str, timeout_s: float, retry_window_s: float) -> None:
    """A section's deadline of one call and its window of retries of UNAVAILABLE."""
    if timeout_s <= 0:
        _fail(f"{where}.timeout_s", "must be > 0 seconds")
    if retry_window_s < 0:
        _fail(f"{where}.retry_window_s", "must be >= 0 seconds (0: no retries)")


@dataclass(frozen=True)
class ModelConfig:
    """The policy: any local HF checkpoint (the tiny policy from ``rlyard model init``), and the
    sampler backend that generates its rollouts (``trainer.sampler.registry``: refused here when
    unknown or not installed, never replaced by another)."""

    path: str = "runs/policy"
    dtype: Literal["float32", "bfloat16"] = "float32"
    backend: str = "hf"
    sampler: str = ""        # backend remote: the sampler service's address (host:port)
    weights_dir: str = ""    # backend remote: the directory the trainer publishes to and the service reads

    def __post_init__(self) -> None:
        if not self.path:
            _fail("model.path", "name a local checkpoint directory (e.g. the output of `rlyard model init`)")
        check_backend(self.backend)
        if self.backend == "remote":
            if not self.sampler:
                _fail("model.sampler", "backend remote needs the sampler service's address (host:port)")
            if not self.weights_dir:
                _fail("model.weights_dir", "backend remote needs the directory the trainer publishes weights to "
                                           "(the service's RLYARD_SAMPLER_WEIGHTS_ROOT)")
        elif self.sampler or self.weights_dir:
            _fail("model.sampler" if self.sampler else "model.weights_dir",
                  f"only backend remote reads it (backend is {self.backend!r}); remove it or set backend: remote")


@dataclass(frozen=True)
class EmbeddedConfig:
    """The services a run starts itself when it is given no address.

    ``tools``: the tools of the embedded tool server (empty: its default, the SQL tools);
    ``families``: settings of tool families by family name (``{sql: {db_dir: ...}, poi: {dir: ...}}``,
    the fields of ``RLYARD_TOOLS_<FAMILY>_*``; what is not given comes from the environment);
    ``reward``: settings of the embedded reward service (the fields of ``RLYARD_REWARD_*``);
    ``ready_timeout_s``: how long a tool server may warm up (build an index) before the run fails.
    """

    tools: tuple[str, ...] = ()
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    ready_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if any(not name.strip() for name in self.tools):
            _fail("services.embedded.tools", f"{list(self.tools)} has an empty name; list tool names such as "
                                             "[search, poi_detail, nearby]")
        if len(set(self.tools)) != len(self.tools):
            _fail("services.embedded.tools", f"{list(self.tools)} names a tool twice")
        for name, values in self.families.items():
            if not isinstance(values, dict):
                _fail(f"services.embedded.families.{name}", "give the family's settings as a mapping, e.g. "
                                                            "{db_dir: data/spider/database}")
        if self.ready_timeout_s <= 0:
            _fail("services.embedded.ready_timeout_s", "must be > 0 seconds")

    @property
    def configured(self) -> bool:
        """Whether anything about the embedded tool server is set."""
        return bool(self.tools or self.families)


@dataclass(frozen=True)
class ServicesConfig:
    """Where the services are (``tools``, ``reward``: addresses; empty = start it embedded, as
    ``embedded`` says), the deadline of one call to them, how long a call retries a service that
    is UNAVAILABLE (``retry_window_s``: a restart is waited for; after it the step's trajectories
    are INFRA_FAILED and the run goes on), and how many steps in a row may fail that way before
    the run does (``max_failed_steps``). ``tools`` may name the replicas of a tool service —
    ``host1:50051,host2:50051`` or ``routed:///sql-tools-headless:50051`` (every address of the name) —
    whose sessions are then routed by id (``rlyard.routing``, docs/deployment.md)."""

    tools: str = ""
    reward: str = ""
    timeout_s: float = 30.0
    retry_window_s: float = 30.0
    max_failed_steps: int = 3
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)

    def __post_init__(self) -> None:
        _check_deadline("services", self.timeout_s, self.retry_window_s)
        try:
            parse_routed_target(self.tools)
        except ValueError as exc:
            _fail("services.tools", str(exc))
        if self.max_failed_steps < 1:
            _fail("services.max_failed_steps", "must be >= 1 (1: the first step whose every trajectory failed "
                                               "fails the run)")
        if self.tools and self.embedded.configured:
            _fail("services.embedded", f"configures the embedded tool server, but services.tools is {self.tools!r}; "
                                       "set those on that server (RLYARD_TOOLS_*) or leave services.tools empty")
        if self.reward and self.embedded.reward:
            _fail("services.embedded.reward", f"configures the embedded reward service, but services.reward is "
                                              f"{self.reward!r}; set it on that service (RLYARD_REWARD_*)")


TASK_TYPE_SOURCES = ("label", "context", "fixed")


@dataclass(frozen=True)
class MemoryDistillConfig:
    """When the run asks the memory service to distill new meta-cognitions from the decision
    paths recorded so far (``memory.distill``): every ``every`` RL steps (0 = never), with the
    service's ``min_paths`` and ``max_new`` (0 = the service's default)."""

    every: int = 0
    min_paths: int = 0
    max_new: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "min_paths", "max_new"):
            if getattr(self, name) < 0:
                zero = "never" if name == "every" else "the service's default"
                _fail(f"memory.distill.{name}", f"must be >= 0 (0 = {zero}; got {getattr(self, name)})")


@dataclass(frozen=True)
class MemoryConfig:
    """The graph memory during RL stages (issue 22; ``trainer/memory.py``).

    ``target``: the address of a memory service started separately; empty = started embedded for
    the run with ``embedded`` (the fields of ``RLYARD_MEMORY_*``). Each question's top ``top_k``
    meta-cognitions go into its system message, whole items within ``token_budget`` tokens of the
    policy's tokenizer, under ``header``. ``ablation``: half of each group is prompted with them and
    half without, and the difference of their mean rewards updates the utilities of the ones used
    (``learning_rate``; 0 = the service's default). ``record``: every scored trajectory is recorded
    with its reward. ``task_type``: where a task's type comes from — ``label:<field>`` (a field of the
    task line, e.g. ``label:template``), ``context:<key>`` (its tool session's context, e.g.
    ``context:db_id``), ``fixed:<name>``, or empty (no type). ``timeout_s`` and ``retry_window_s``
    bound each call: a memory service that fails costs a step its memories, never the run.
    ``explore``: during RL (not evaluation) the top_k shown are chosen among the service's top
    ``candidates`` (0 = 4 × top_k) by an upper confidence bound, relevance × (utility + explore /
    sqrt(1 + uses)), so meta-cognitions with little feedback get tried (``trainer.memory.explore_order``);
    0 = the service's ranking.
    """

    enabled: bool = False
    target: str = ""
    embedded: dict[str, Any] = field(default_factory=dict)
    top_k: int = 3
    token_budget: int = 256
    header: str = "Strategies learned from earlier attempts at similar tasks:"
    record: bool = True
    ablation: bool = True
    learning_rate: float = 0.0
    distill: MemoryDistillConfig = MemoryDistillConfig()
    task_type: str = ""
    timeout_s: float = 5.0
    retry_window_s: float = 1.0
    max_backlog: int = 4096
    explore: float = 0.0
    candidates: int = 0

    def __post_init__(self) -> None:
        if self.target and self.embedded:
            _fail("memory.embedded", f"configures the embedded memory service, but memory.target is {self.target!r}; "
                                     "set it on that service (RLYARD_MEMORY_*) or leave memory.target empty")
        if not 1 <= self.top_k <= 64:
            _fail("memory.top_k", f"must be in [1, 64] (meta-cognitions per question; got {self.top_k})")
        if self.token_budget < 1:
            _fail("memory.token_budget", f"must be >= 1 (tokens the memories may add to a system message; "
                                         f"got {self.token_budget})")
        if self.learning_rate < 0:
            _fail("memory.learning_rate", f"must be >= 0 (0 = the service's default; got {self.learning_rate})")
        if not (math.isfinite(self.explore) and self.explore >= 0):
            _fail("memory.explore", f"must be a finite number >= 0 (the exploration bonus; 0 = none; "
                                    f"got {self.explore})")
        if self.candidates and not self.top_k <= self.candidates <= 256:
            _fail("memory.candidates", f"must be 0 (4 x top_k) or in [top_k, 256] (meta-cognitions the exploration "
                                       f"chooses among; got {self.candidates} with top_k {self.top_k})")
        if self.candidates and not self.explore:
            _fail("memory.candidates", "sets how many meta-cognitions the exploration chooses among: set "
                                       "memory.explore > 0 too, or leave candidates at 0")
        if self.learning_rate and not self.ablation:
            _fail("memory.learning_rate", "sets the utility update, which needs the reward with and without "
                                          "memory: turn memory.ablation on or leave learning_rate at 0")
        if self.task_type:
            source, _, name = self.task_type.partition(":")
            if source not in TASK_TYPE_SOURCES or not name:
                _fail("memory.task_type", f"{self.task_type!r}: use label:<field> (e.g. label:template), "
                                          "context:<key> (e.g. context:db_id), fixed:<name>, or leave it empty")
        _check_deadline("memory", self.timeout_s, self.retry_window_s)
        if self.max_backlog < 0:
            _fail("memory.max_backlog", "must be >= 0 (trajectories kept for a later RecordTrajectory when the "
                                        "service is down; 0 = none)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not 0 < self.lr < 1:
            _fail("optim.lr", f"{self.lr} is outside (0, 1); typical values are 1e-5 to 3e-4")
        if self.warmup_steps < 0:
            _fail("optim.warmup_steps", "must be >= 0")
        if self.max_grad_norm <= 0:
            _fail("optim.max_grad_norm", "must be > 0 (use a large value to effectively disable clipping)")


SelectionMode = Literal["uniform", "pass_rate"]


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """DAPO's dynamic sampling (``rollout.dynamic_sampling``; ``trainer/dynamic.py``): a step rolls out
    questions in rounds until its batch holds ``prompts_per_step`` groups with signal (groups the
    trajectory filter keeps: rewards not all equal), in at most ``max_rounds`` rounds; a round draws
    ``ceil(oversample × groups still missing)`` questions. Groups with signal beyond the target are
    dropped; a step that ends its last round short of it trains on what it has (``dynamic/cap_hit``)."""

    enabled: bool = False
    max_rounds: int = 4
    oversample: float = 1.0

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            _fail("rollout.dynamic_sampling.max_rounds",
                  f"must be >= 1 (rounds of rollouts a step may take; got {self.max_rounds})")
        if not 1.0 <= self.oversample <= 64.0:
            _fail("rollout.dynamic_sampling.oversample",
                  f"must be in [1, 64] (a round draws this many questions per missing group; got {self.oversample})")


@dataclass(frozen=True)
class SelectionConfig:
    """Which questions a step draws (``rollout.selection``; ``trainer/selection.py``).

    Every question keeps a pass-rate estimate: an exponential moving average of its groups' pass
    rates (the mean of the reward spec's first component), weight ``ema`` for the newest group; an
    estimate <= ``zero_at`` counts as 0, >= ``one_at`` as 1. ``mode: uniform`` draws the task
    file's epoch shuffle in order; ``mode: pass_rate`` takes ``revisit`` of each draw from the
    questions estimated in (0, 1), least recently drawn first, and the rest from the shuffle,
    passing over a question estimated at 0 or 1 with probability ``skip`` (never always: it comes
    up again every epoch)."""

    mode: SelectionMode = "uniform"
    ema: float = 0.5
    zero_at: float = 0.05
    one_at: float = 0.95
    skip: float = 0.75
    revisit: float = 0.5

    def __post_init__(self) -> None:
        where = "rollout.selection"
        if not 0 < self.ema <= 1:
            _fail(f"{where}.ema", f"must be in (0, 1] (the newest group's weight; 1 = the last group alone; "
                                  f"got {self.ema})")
        if not 0 <= self.zero_at < self.one_at <= 1:
            _fail(where, f"zero_at {self.zero_at} and one_at {self.one_at} need 0 <= zero_at < one_at <= 1 "
                         "(e.g. 0.05 and 0.95)")
        if not 0 <= self.skip < 1:
            _fail(f"{where}.skip", f"must be in [0, 1) (1 would never draw a question at 0 or 1 again; "
                                   f"got {self.skip})")
        if not 0 <= self.revisit < 1:
            _fail(f"{where}.revisit", f"must be in [0, 1) (1 would draw no unseen question once some are in (0, 1); "
                                      f"got {self.revisit})")


@dataclass(frozen=True)
class WorkersConfig:
    """Rollouts on Celery workers (``rollout.workers``; ``trainer/workers``, docs/trainer.md): each
    round's groups go as group jobs to the workers on ``broker_url``, which sample through the
    sampler service (``model.backend: remote``) and call the run's tool server; the trainer scores
    what comes back. A group that fails on a worker or has no result within ``group_timeout_s`` is
    left out of the step, one sampled more than ``max_staleness`` weight versions behind is dropped;
    both are counted (``workers/*`` metrics). ``prefetch_steps`` > 0 pipelines the stage: the first
    round of the next ``prefetch_steps`` steps is drawn and submitted before the current step trains
    (``trainer.dynamic.prefetch``), so the workers roll out while the update runs; a group so prefetched is
    up to ``prefetch_steps`` versions behind when its step takes it, hence ``prefetch_steps <=
    max_staleness``. The rest of the workers' settings (result backend, queue) are the trainer's
    RLYARD_WORKERS_* variables, as the workers read them; without ``broker_url`` the broker is
    RLYARD_WORKERS_BROKER_URL too (with tls on, the secured Redis's URL with its password: a run
    config then carries no password), else ``redis://127.0.0.1:6379/0``."""

    enabled: bool = False
    broker_url: str = ""
    max_staleness: int = 0
    group_timeout_s: float = 600.0
    prefetch_steps: int = 0

    def __post_init__(self) -> None:
        if self.broker_url and not self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            _fail("rollout.workers.broker_url",
                  f"the workers use Redis (redis://host:port/db); got {self.broker_url!r}")
        if self.max_staleness < 0:
            _fail("rollout.workers.max_staleness", f"must be >= 0 (0: groups of the current weights only; "
                                                   f"got {self.max_staleness})")
        if self.group_timeout_s <= 0:
            _fail("rollout.workers.group_timeout_s", f"must be > 0 seconds (got {self.group_timeout_s})")
        if not 0 <= self.prefetch_steps <= self.max_staleness:
            _fail("rollout.workers.prefetch_steps",
                  f"must be in [0, max_staleness = {self.max_staleness}] (got {self.prefetch_steps}): a group "
                  "submitted n steps ahead is up to n weight versions behind when its step takes it, and one past "
                  "max_staleness would be rolled out only to be dropped; raise max_staleness or lower prefetch_steps")
        if self.prefetch_steps and not self.enabled:
            _fail("rollout.workers.prefetch_steps", "pipelines the Celery workers' rollouts: set enabled: true, "
                                                    "or leave prefetch_steps at 0")


@dataclass(frozen=True)
class RolloutConfig:
    """How trajectories are generated."""

    group_size: int = 8
    prompts_per_step: int = 8
    max_turns: int = 6
    max_new_tokens_per_turn: int = 256
    max_total_tokens: int = 2048
    max_observation_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    tool_concurrency: int = 64
    per_tool_concurrency: int = 32
    max_calls_per_tool_per_turn: int = 0  # > 0: later calls of a tool in one turn are refused, not run
    kv_cache: bool = True                  # a trajectory's turn prefills only its new tokens (same samples)
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    selection: SelectionConfig = SelectionConfig()
    workers: WorkersConfig = WorkersConfig()

    def __post_init__(self) -> None:
        if self.group_size < 2:
            _fail("rollout.group_size", f"GRPO compares samples within a group; use >= 2 (got {self.group_size})")
        if self.prompts_per_step < 1:
            _fail("rollout.prompts_per_step", "must be >= 1")
        if self.max_turns < 1:
            _fail("rollout.max_turns", "must be >= 1")
        if self.max_new_tokens_per_turn > self.max_total_tokens:
            _fail("rollout.max_new_tokens_per_turn",
                  f"{self.max_new_tokens_per_turn} exceeds max_total_tokens {self.max_total_tokens}; "
                  "lower it or raise max_total_tokens")
        if self.temperature <= 0:
            _fail("rollout.temperature", "must be > 0 for RL sampling (GRPO needs diverse samples)")
        if not 0 < self.top_p <= 1:
            _fail("rollout.top_p", "must be in (0, 1]")
        if self.max_calls_per_tool_per_turn < 0:
            _fail("rollout.max_calls_per_tool_per_turn",
                  f"must be >= 0 (0 = no limit; 1 = LocalSearchBench's one call per tool per round; "
                  f"got {self.max_calls_per_tool_per_turn})")

    @property
    def batch_size(self) -> int:
        """Trajectories per step."""
        return self.group_size * self.prompts_per_step


@dataclass(frozen=True)
class AlgorithmConfig:
    """The GRPO family. ``filters`` is ``trainer.algorithms.FilterConfig`` (the trajectory filter's
    own settings); ``loss_agg`` one of ``trainer.algorithms.LOSS_AGG_MODES``."""

    advantage_std: bool = True            # False = Dr.GRPO (no std normalisation)
    clip_low: float = 0.2
    clip_high: float = 0.2                # > clip_low = DAPO's clip-higher
    kl_coef: float = 0.0                  # 0 = no reference model at all (MTIR-SQL)
    loss_agg: LossAggMode = "seq-mean-token-mean"
    updates_per_batch: int = 2
    micro_batch_size: int = 8
    token_weighting: TokenWeighting = "none"
    filters: FilterConfig = field(default_factory=FilterConfig)
    shared_prefix: bool = True            # a group's prompt computed once per forward (trainer/policy/shared_prefix.py)

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < 1:
            _fail("algorithm.clip_low", "must be in [0, 1)")
        if self.clip_high < 0:
            _fail("algorithm.clip_high", "must be >= 0")
        if self.kl_coef < 0:
            _fail("algorithm.kl_coef", "must be >= 0 (0 removes the reference model)")
        if self.updates_per_batch < 1:
            _fail("algorithm.updates_per_batch", "must be >= 1")
        if self.micro_batch_size < 1:
            _fail("algorithm.micro_batch_size", "must be >= 1")
        if self.token_weighting != "none" and self.loss_agg != "weighted-token-mean":
            _fail("algorithm.loss_agg",
                  f"token_weighting {self.token_weighting!r} needs loss_agg 'weighted-token-mean' (ResT's L)")


@dataclass(frozen=True)
class TasksConfig:
    """The task file an RL stage draws its tasks from (an environment's ``prepare`` writes one)."""

    path: str = ""                        # a task JSONL (see trainer/tasks.py)
    limit: int = 0                        # 0 = all

    def __post_init__(self) -> None:
        if self.limit < 0:
            _fail("tasks.limit", "must be >= 0 (0 = all tasks)")


@dataclass(frozen=True)
class StageConfig:
    """One training stage: SFT on trajectories or an RL stage with its own tasks and reward."""

    kind: Literal["sft", "rl"]
    steps: int
    name: str = ""
    data: str = ""                        # sft: trajectory JSONL with loss masks
    tasks: TasksConfig = TasksConfig()
    reward: dict[str, Any] = field(default_factory=dict)   # rl: a reward spec
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    batch_size: int = 16                  # sft: sequences per step
    max_seconds: float = 0.0              # > 0: the stage ends after this much training time (steps = a cap)

    def __post_init__(self) -> None:
        where = f"stage {self.name or self.kind}"
        if self.steps < 1:
            _fail(where, f"steps must be >= 1 (got {self.steps})")
        if self.max_seconds < 0:
            _fail(where, f"max_seconds must be >= 0 (0 = no time limit; got {self.max_seconds})")
        if self.kind == "sft" and not self.data:
            _fail(where, "an sft stage needs `data:` (a JSONL of trajectories with loss masks)")
        if self.kind == "rl":
            if not self.reward:
                _fail(where, 'an rl stage needs `reward:`, a spec such as {sql_execution: 1.0}')

            if self.rollout.dynamic_sampling.enabled and not self.algorithm.filters.drop_equal_reward_groups:
                _fail(where, "rollout.dynamic_sampling fills the batch with groups the filter keeps, and with "
                             "algorithm.filters.drop_equal_reward_groups false it keeps every group: turn the "
                             "filter on or dynamic sampling off")
            if self.rollout.batch_size % self.algorithm.micro_batch_size:
                _fail(where, f"rollout batch {self.rollout.batch_size} (group_size × prompts_per_step) is not "
                             f"divisible by algorithm.micro_batch_size {self.algorithm.micro_batch_size}")


@dataclass(frozen=True)
class CheckpointConfig:
    """When to save and how many to keep."""

    every_steps: int = 50
    keep: int = 3

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            _fail("checkpoint.every_steps", "must be >= 1")
        if self.keep < 1:
            _fail("checkpoint.keep", "must be >= 1 (the last checkpoint is needed to resume)")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: model, services, stages, checkpoints."""

    name: str
    stages: tuple[StageConfig, ...]
    seed: int = 0
    model: ModelConfig = ModelConfig()
    services: ServicesConfig = field(default_factory=ServicesConfig)
    checkpoint: CheckpointConfig = CheckpointConfig()
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        if not self.name:
            _fail("name", "give the experiment a name (it names runs/<run_id>)")
        if not self.stages:
            _fail("stages", "list at least one stage (kind: sft or rl)")
        names = [s.name or f"{s.kind}{i}" for i, s in enumerate(self.stages)]
        if len(set(names)) != len(names):
            _fail("stages", f"stage names must be unique, got {names}")
        for stage in self.stages:
            if stage.kind == "rl" and not stage.tasks.path:
                _fail(f"stage {stage.name or stage.kind}", "an rl stage needs `tasks: {path: FILE}`, a task JSONL "
                                                           "(an environment's prepare writes one)")
        if self.memory.enabled and not any(stage.kind == "rl" for stage in self.stages):
            _fail("memory.enabled", "the memory serves RL stages and this config has none: add one or turn it off")
        for stage in self.stages:
            if stage.kind != "rl" or not stage.rollout.workers.enabled:
                continue
            where = f"stage {stage.name or stage.kind}: rollout.workers"
            if self.model.backend != "remote":
                _fail(where, "the workers sample through the sampler service: set model.backend: remote (with "
                             "model.sampler and model.weights_dir), or turn the workers off")
            if self.memory.enabled:
                _fail(where, "the graph memory prompts rollouts in the trainer's process: turn memory or the "
                             "workers off")


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    """Build a (nested) config dataclass from YAML data, refusing unknown keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _value(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:     # ValueError: a dataclass of a lower layer (trainer.algorithms)
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, list):
                raise ConfigError(f"{where}: expected a list")
            return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (types.UnionType, typing.Union):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_config(path: Path | str) -> ExperimentConfig:
    """Read and check an experiment YAML."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Check a config given as data (YAML already parsed)."""
    try:
        config: ExperimentConfig = _build(ExperimentConfig, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config
