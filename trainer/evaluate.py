"""Evaluation: run a policy on a task set with the rollout engine, score it with the reward
service, and aggregate what matters for a tool-using agent (text-to-SQL or local-life).

    with open_stack(config) as stack:
        report = evaluate("runs/policy", stack.tasks(path), stack, reward_spec={...}, max_tool_calls=6)
    report.execution_accuracy, report.mean_tool_calls, report.format_errors, ...

One trajectory per task (group size 1). Decoding is greedy by default: the engine builds its
``SamplingParams`` from ``RolloutConfig.temperature``, which must be > 0 for RL, so the sampler is
wrapped in one that substitutes the evaluation's ``temperature`` (0 = greedy, which the backends
support) — the rollout config is used as it is otherwise.

The tool-call budget: ``max_turns`` is set to ``max_tool_calls + 1`` (one turn per call, as the
environment's prompt shows, then the answer turn). A turn holding several calls runs them all,
so the budget bounds tool *turns*; the report counts actual calls.

The reward spec is the caller's (the environment's); its first reward is the one whose 1.0 counts
as correct. For every environment the report counts the tasks answered after a look at a region
(``answered_after_zoom``: a ``zoom``, ``crop``, ``revisit`` or ``confirm`` call that returned
without error came before the final answer; IMAgent's measure of visual reflection).
Local-life tasks (their ground truth holds a ``checklist``) are reported as such:
``accuracy`` is then correctness and ``metrics`` holds the mean of each component.
``judge={metric: spec}`` also asks a judge model for each metric; a judge failure leaves that
task's judge score out of the mean and is counted. ``memory=True`` prompts every task with the
graph memory's top-k as training does (``trainer.memory``), for a comparison with and without.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlyard.domain import ImagePart, Task, TrajectoryStatus, parse_spec
from rlyard.errors import ConfigError
from trainer.compose import Stack
from trainer.config import RolloutConfig
from trainer.memory_stage import StageMemory
from trainer.policy.base import Generation, ImageTokenizer
from trainer.rollout import RolloutEngine
from trainer.sampler import PrefixCaching, Sampler, SampleRequest
from trainer.scoring import judge_scores, score_trajectories
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

# The text-to-SQL environment's spec (envs.text_to_sql.REWARD_SPEC): execution match and format.
DEFAULT_SPEC: dict[str, Any] = {"sql_execution": 1.0, "format": 0.1}
# The image tools that show the model a region again (tool_servers/image): a call of one of them
# before the answer makes the answer one given "after a zoom".
ZOOM_TOOLS = frozenset({"zoom", "crop", "revisit", "confirm"})
EVAL_ROLLOUT = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=7, max_new_tokens_per_turn=256,
                             max_total_tokens=4096, max_observation_tokens=256)


class FixedTemperature:
    """A ``Sampler`` that samples with ``sampler`` at ``temperature`` whatever the caller asks (0 = greedy)."""

    def __init__(self, sampler: Sampler, temperature: float) -> None:
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: use 0 for greedy decoding or a positive value")
        self.sampler = sampler
        self.temperature = temperature

    @property
    def weight_version(self) -> int:
        """The wrapped sampler's."""
        return self.sampler.weight_version

    @property
    def supports_images(self) -> bool:
        """The wrapped sampler's."""
        return self.sampler.supports_images

    def _images(self) -> ImageTokenizer:
        if not isinstance(self.sampler, ImageTokenizer):
            raise TypeError(f"{type(self.sampler).__name__} takes no images")
        return self.sampler

    @property
    def image_placeholder(self) -> str:
        """The wrapped sampler's (``ImageTokenizer``)."""
        return self._images().image_placeholder

    @property
    def image_pad_id(self) -> int:
        """The wrapped sampler's."""
        return self._images().image_pad_id

    def image_tokens(self, image: ImagePart) -> int:
        """The wrapped sampler's."""
        return self._images().image_tokens(image)

    async def sample(self, request: SampleRequest) -> Generation:
        """Delegate with the temperature replaced."""
        params = dataclasses.replace(request.params, temperature=self.temperature)
        return await self.sampler.sample(dataclasses.replace(request, params=params))

    async def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        """Delegate."""
        await self.sampler.sync_weights(model, version)

    def release(self, cache_key: str) -> None:
        """Delegate, to a sampler that keeps anything by key."""
        if isinstance(self.sampler, PrefixCaching):
            self.sampler.release(cache_key)

    async def aclose(self) -> None:
        """Nothing of its own to close (the stack closes the wrapped sampler)."""


@dataclass
class TaskResult:
    """One task's trajectory, as the report keeps it."""

    task_id: str
    db_id: str
    status: str
    correct: bool
    reward: float | None
    components: dict[str, float]
    num_tool_calls: int
    turns: int
    format_error: bool
    final_answer: str
    infra_error: str = ""
    judge: dict[str, float | None] = field(default_factory=dict)
    answered_after_zoom: bool = False
    memory_ids: list[str] = field(default_factory=list)   # the graph memory's meta-cognitions its prompt showed


@dataclass
class EvalReport:
    """Aggregates over ``results`` (``execution_accuracy`` counts infra failures as wrong;
    ``scored_accuracy`` leaves them out)."""

    n: int
    execution_accuracy: float     # the share of tasks whose primary reward is 1 (local-life: correctness)
    scored_accuracy: float
    mean_tool_calls: float
    mean_turns: float
    format_errors: int
    infra_failures: int
    truncated: int
    seconds: float
    results: list[TaskResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    env: str = "text_to_sql"
    metrics: dict[str, float] = field(default_factory=dict)          # mean of each reward component
    judge: dict[str, float] = field(default_factory=dict)            # mean judge score per metric (0–1)
    judge_failures: dict[str, int] = field(default_factory=dict)
    answered_after_zoom: float = 0.0      # the share of tasks answered after a zoom/crop/revisit/confirm
    memory_hit_rate: float | None = None  # with memory prompting: the share of tasks shown a memory

    def summary(self) -> dict[str, Any]:
        """The aggregates (no per-task results)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "results"}

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return dataclasses.asdict(self)


def is_local_life(tasks: Sequence[Task]) -> bool:
    """Whether the tasks are local-life tasks (their ground truth holds a checklist)."""
    return any(isinstance(t.ground_truth, dict) and "checklist" in t.ground_truth for t in tasks)


def answered_after_zoom(t: RolloutTrajectory) -> bool:
    """Whether the trajectory ended with an answer (COMPLETED) after a call of ``ZOOM_TOOLS`` that
    returned without error."""
    if t.status != TrajectoryStatus.COMPLETED:
        return False
    return any(r.name in ZOOM_TOOLS and not r.is_error and r.system_error is None
               for turn in t.record.turns if turn.role == "tool" for r in turn.tool_results)


def is_imagent(tasks: Sequence[Task]) -> bool:
    """Whether the tasks are IMAgent multi-image tasks (``envs.vision.imagent``: ground truth
    ``{"task": "imagent", ...}``)."""
    return any(isinstance(t.ground_truth, dict) and t.ground_truth.get("task") == "imagent" for t in tasks)


def _result(t: RolloutTrajectory, check_format: bool, primary: str = "sql_execution") -> TaskResult:
    components = dict(t.reward_components)
    format_error = t.status == TrajectoryStatus.FORMAT_ERROR or (check_format and components.get("format", 1.0) == 0.0)
    return TaskResult(
        task_id=t.task.task_id,
        db_id=str(t.task.context.get("db_id", "")),
        status=t.status.value,
        correct=components.get(primary, 0.0) >= 1.0,
        reward=t.reward,
        components=components,
        num_tool_calls=t.num_tool_calls,
        turns=sum(1 for turn in t.record.turns if turn.role == "assistant"),
        format_error=format_error,
        final_answer=t.final_answer,
        infra_error=t.infra_error,
        answered_after_zoom=answered_after_zoom(t),
        memory_ids=[m.meta_cognition.id for m in t.memories],
    )


def aggregate(trajectories: Sequence[RolloutTrajectory], *, check_format: bool = True, seconds: float = 0.0,
              settings: dict[str, Any] | None = None, primary: str = "sql_execution",
              env: str = "text_to_sql") -> EvalReport:
    """The report of scored trajectories (``check_format``: the spec had a ``format`` term;
    ``primary``: the reward whose 1.0 counts as correct)."""
    results = [_result(t, check_format, primary) for t in trajectories]
    n = len(results)
    infra = sum(r.status == TrajectoryStatus.INFRA_FAILED.value for r in results)
    correct = sum(r.correct for r in results)
    return EvalReport(
        n=n,
        execution_accuracy=correct / n if n else 0.0,
        scored_accuracy=correct / (n - infra) if n > infra else 0.0,
        mean_tool_calls=sum(r.num_tool_calls for r in results) / n if n else 0.0,
        mean_turns=sum(r.turns for r in results) / n if n else 0.0,
        format_errors=sum(r.format_error for r in results),
        infra_failures=infra,
        truncated=sum(r.status == TrajectoryStatus.TRUNCATED.value for r in results),
        seconds=seconds,
        results=results,
        settings=settings or {},
        env=env,
        metrics={name: sum(r.components.get(name, 0.0) for r in results) / n
                 for name in sorted({c for r in results for c in r.components})} if n else {},
        answered_after_zoom=sum(r.answered_after_zoom for r in results) / n if n else 0.0,
    )


def evaluate(
    policy: str | Path | Any,
    tasks: Sequence[Task],
    stack: Stack,
    *,
    reward_spec: Any = None,
    rollout_config: RolloutConfig = EVAL_ROLLOUT,
    temperature: float = 0.0,
    max_tool_calls: int = 6,
    seed: int = 0,
    device: str = "cpu",
    max_batch_size: int | None = None,
    judge: Mapping[str, Any] | None = None,
    memory: bool = False,
) -> EvalReport:
    """Roll out every task once with ``policy`` (a checkpoint directory or a loaded ``HFPolicy``)
    through the ``stack``'s services and sampler backend, score with ``reward_spec`` (default
    ``DEFAULT_SPEC``; its first reward counts as correct), ask the judge specs in ``judge``
    (metric → ``judge`` spec), and aggregate. With ``memory`` every task's prompt shows the graph
    memory's top-k as in training (the config's ``memory`` section, which must be enabled); nothing
    is recorded or updated. See the module docstring for temperature and the tool-call budget."""
    import time

    if max_tool_calls < 0:
        raise ValueError(f"max_tool_calls={max_tool_calls}: must be >= 0")
    if memory and stack.memory_client is None:
        raise ConfigError("evaluating with the memory needs `memory: {enabled: true}` in the config")
    if isinstance(policy, str | Path):
        from trainer.policy.loading import load_policy

        loaded: Any = load_policy(policy, device=device)
    else:
        loaded = policy
    if getattr(loaded, "model", None) is not None:
        loaded.model.eval()
    spec = reward_spec if reward_spec is not None else DEFAULT_SPEC
    terms = parse_spec(spec).terms
    config = dataclasses.replace(rollout_config, max_turns=max_tool_calls + 1)
    settings = {"temperature": temperature, "max_tool_calls": max_tool_calls, "max_turns": config.max_turns,
                "max_new_tokens_per_turn": config.max_new_tokens_per_turn,
                "max_total_tokens": config.max_total_tokens, "reward_spec": spec, "seed": seed,
                "policy": str(policy) if isinstance(policy, str | Path) else type(policy).__name__,
                "backend": "hf"}
    # the checkpoint under evaluation samples here: a remote sampler serves the training run's weights
    sampler = FixedTemperature(stack.sampler(loaded, max_batch_size=max_batch_size, in_process=True), temperature)
    engine = RolloutEngine(sampler, loaded.tokenizer, stack.tool_client, config, seed=seed,
                           tool_timeout_s=stack.timeout_s)

    prompting = None
    if memory and stack.memory_client is not None:    # every task prompted; nothing recorded or updated
        prompting = StageMemory(stack.memory_client, dataclasses.replace(stack.config.memory, ablation=False,
                                                                         record=False, learning_rate=0.0,
                                                                         explore=0.0, candidates=0),
                                loaded.tokenizer, group_size=1)
        settings["memory"] = {"top_k": stack.config.memory.top_k, "token_budget": stack.config.memory.token_budget}

    async def run() -> tuple[list[RolloutTrajectory], dict[str, list[float | None]]]:
        try:
            if prompting is not None:
                trajectories = await prompting.rollout(engine, list(tasks), step=0)
            else:
                trajectories = await engine.run(list(tasks), group_size=1)
            await score_trajectories(stack.reward_client, trajectories, spec, 0)
            judged = {name: await judge_scores(stack.reward_client, trajectories, judge_spec)
                      for name, judge_spec in (judge or {}).items()}
            return trajectories, judged
        finally:
            await engine.aclose()

    start = time.perf_counter()
    trajectories, judged = stack.run(run())
    seconds = time.perf_counter() - start
    local_life = is_local_life(tasks)
    report = aggregate(trajectories, check_format=any(t.name == "format" for t in terms), seconds=seconds,
                       settings=settings, primary=terms[0].name,
                       env="local_life" if local_life else "imagent" if is_imagent(tasks) else "text_to_sql")
    if prompting is not None:
        report.memory_hit_rate = sum(bool(t.memories) for t in trajectories) / max(len(trajectories), 1)
    for name, values in judged.items():
        for result, value in zip(report.results, values, strict=True):
            result.judge[name] = value
        got = [v for v in values if v is not None]
        report.judge[name] = sum(got) / len(got) if got else 0.0
        report.judge_failures[name] = len(values) - len(got)
    logger.info("eval: n=%d accuracy=%.3f tool_calls=%.2f after_zoom=%.2f in %.1fs", report.n,
                report.execution_accuracy, report.mean_tool_calls, report.answered_after_zoom, seconds)
    return report
