"""Which questions an RL step draws, and what the rollouts so far say about each question.

Every question (by ``task_id``) keeps a pass-rate estimate: an exponential moving average of its
groups' pass rates, a group's pass rate being the mean of the reward spec's first component over
its scored samples (for a 0/1 reward such as ``sql_execution``: the share of samples that pass).
Questions come from the task file's endless epoch shuffle (``TaskSampler``) at a cursor; with
``selection.mode: pass_rate`` a draw also revisits questions estimated in (0, 1) and passes over,
with a probability, questions estimated at 0 or 1 (``SelectionConfig``). Everything here is a
function of the seed and ``TaskDraws``, which a checkpoint saves: a resumed run draws the same.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlyard.domain import Task, TrajectoryStatus
from trainer.algorithms import FilterConfig, filter_trajectories
from trainer.config import SelectionConfig
from trainer.tasks import TaskSampler
from trainer.types import RolloutTrajectory

Band = Literal["unseen", "at_0", "between", "at_1"]
BANDS: tuple[Band, ...] = ("unseen", "at_0", "between", "at_1")


@dataclass(frozen=True)
class PassRate:
    """A question's pass-rate estimate, from how many groups, and the step that last rolled it out."""

    estimate: float
    groups: int
    last_step: int


@dataclass(frozen=True)
class Drawn:
    """A step's first draw, made before the step (pipelined workers, ``rollout.workers.prefetch_steps``):
    its questions as indices into the stage's task list (their ids too, checked when it is read back)
    and how each was chosen."""

    indices: tuple[int, ...]
    task_ids: tuple[str, ...]
    counts: dict[str, int]

    @classmethod
    def of(cls, draw: Draw, tasks: Sequence[Task]) -> Drawn:
        """``draw``'s questions by their index in ``tasks`` (the objects ``TaskSampler`` hands out)."""
        index = {id(t): i for i, t in enumerate(tasks)}
        return cls(tuple(index[id(t)] for t in draw.tasks), tuple(t.task_id for t in draw.tasks), dict(draw.counts))

    def tasks(self, tasks: Sequence[Task]) -> list[Task]:
        """The questions back from ``tasks``.

        Raises:
            ValueError: ``tasks`` is not the list they were drawn from (the task file changed
                since the checkpoint that saved them).
        """
        out = [tasks[i] if i < len(tasks) else None for i in self.indices]
        if [None if t is None else t.task_id for t in out] != list(self.task_ids):
            raise ValueError(f"questions {list(self.task_ids)[:4]} drawn ahead are not at their places in the stage's "
                             "task file any more: resume with the task file the run started with")
        return [t for t in out if t is not None]


@dataclass
class TaskDraws:
    """An RL stage's draws so far: the stream's cursor, the pass-rate estimates, the steps that
    ended short of their groups with signal (``dynamic/cap_hits``) and the first draws of the steps
    drawn ahead (by global step; pipelined workers). A checkpoint saves it."""

    cursor: int = 0
    rates: dict[str, PassRate] = field(default_factory=dict)
    cap_hits: int = 0
    ahead: dict[int, Drawn] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As JSON: an estimate is ``[estimate, groups, last_step]`` (floats round-trip exactly)."""
        return {"cursor": self.cursor, "cap_hits": self.cap_hits,
                "rates": {k: [r.estimate, r.groups, r.last_step] for k, r in self.rates.items()},
                "ahead": {str(step): {"indices": list(d.indices), "task_ids": list(d.task_ids), "counts": d.counts}
                          for step, d in self.ahead.items()}}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TaskDraws:
        """What ``to_json`` wrote."""
        rates = {str(k): PassRate(float(e), int(g), int(s)) for k, (e, g, s) in saved.get("rates", {}).items()}
        ahead = {int(step): Drawn(tuple(int(i) for i in d["indices"]), tuple(str(t) for t in d["task_ids"]),
                                  {str(k): int(v) for k, v in d["counts"].items()})
                 for step, d in saved.get("ahead", {}).items()}
        return cls(cursor=int(saved["cursor"]), rates=rates, cap_hits=int(saved.get("cap_hits", 0)), ahead=ahead)


def band(rate: PassRate | None, config: SelectionConfig) -> Band:
    """Where an estimate stands: unseen, at 0 (<= ``zero_at``), at 1 (>= ``one_at``) or between."""
    if rate is None:
        return "unseen"
    if rate.estimate <= config.zero_at:
        return "at_0"
    if rate.estimate >= config.one_at:
        return "at_1"
    return "between"


def update_rate(rate: PassRate | None, value: float, weight: float, step: int) -> PassRate:
    """The estimate after a group with pass rate ``value`` at ``step``: the group's own rate for a
    first group, else ``(1 − weight)·estimate + weight·value``."""
    if rate is None:
        return PassRate(value, 1, step)
    return PassRate((1.0 - weight) * rate.estimate + weight * value, rate.groups + 1, step)


def group_pass_rates(trajectories: Iterable[RolloutTrajectory], component: str) -> list[tuple[str, float]]:
    """``(task_id, pass rate)`` of each group with a scored sample, in order of first appearance: the
    mean of reward component ``component`` (the total where a sample lacks it), clipped to [0, 1],
    over the group's scored samples; infrastructure failures say nothing and do not count."""
    values: dict[int, list[float]] = defaultdict(list)
    task_of: dict[int, str] = {}
    for t in trajectories:
        task_of.setdefault(t.group_id, t.task.task_id)
        if t.status != TrajectoryStatus.INFRA_FAILED and t.reward is not None:
            value = t.reward_components.get(component, t.reward)
            values[t.group_id].append(min(max(float(value), 0.0), 1.0))
    return [(task_of[g], sum(v) / len(v)) for g, v in values.items()]


def record_groups(draws: TaskDraws, trajectories: Sequence[RolloutTrajectory], component: str,
                  config: SelectionConfig, step: int) -> None:
    """Fold the groups of ``trajectories`` into ``draws``' estimates (in group order)."""
    for task_id, value in group_pass_rates(trajectories, component):
        draws.rates[task_id] = update_rate(draws.rates.get(task_id), value, config.ema, step)


def groups_with_signal(trajectories: Sequence[RolloutTrajectory], filters: FilterConfig) -> list[int]:
    """The group ids whose trajectories the update's filter would keep any of (rewards not all equal
    after the per-trajectory filters), in order of first appearance. A group of only infrastructure
    failures, or with one scored sample, has no signal."""
    if not trajectories:
        return []
    result = filter_trajectories(
        torch.tensor([0.0 if t.reward is None else float(t.reward) for t in trajectories]),
        torch.tensor([t.group_id for t in trajectories]),
        filters,
        infra_failed=torch.tensor([t.status == TrajectoryStatus.INFRA_FAILED for t in trajectories]),
        truncated=torch.tensor([t.status == TrajectoryStatus.TRUNCATED for t in trajectories]),
        format_violation=torch.tensor([t.status == TrajectoryStatus.FORMAT_ERROR for t in trajectories]),
    )
    kept = {t.group_id for t, keep in zip(trajectories, result.keep.tolist(), strict=True) if keep}
    return list(dict.fromkeys(t.group_id for t in trajectories if t.group_id in kept))


@dataclass(frozen=True)
class Draw:
    """One draw of questions: the tasks, the stream's cursor after it, and how each was chosen."""

    tasks: list[Task]
    cursor: int
    counts: dict[str, int]        # revisited, unseen, between, settled (at 0 or 1, drawn anyway), skipped


def skip_coin(seed: int, pos: int) -> float:
    """The uniform [0, 1) number that decides whether stream position ``pos`` is passed over: a
    function of the seed and the position alone (string seeds hash with SHA-512: stable anywhere)."""
    return random.Random(f"selection-skip:{seed}:{pos}").random()


def select(stream: TaskSampler, draws: TaskDraws, n: int, config: SelectionConfig, *, seed: int,
           taken: Collection[str] = ()) -> Draw:
    """``n`` questions. ``uniform``: the stream from ``draws.cursor`` on. ``pass_rate``: first
    ``floor(revisit·n)`` questions estimated in (0, 1) and not in ``taken`` (drawn earlier in this
    step), least recently rolled out first (ties by task id); then the stream, where a question at
    0 or 1 is passed over when its position's ``skip_coin`` < ``skip``. Changes nothing in ``draws``.

    A question may come twice in a step (revisited and reached in the shuffle, or at an epoch's end
    in a small task file); its groups have different ids, so they sample with different seeds."""
    counts = dict.fromkeys(("revisited", "unseen", "between", "settled", "skipped"), 0)
    chosen: list[Task] = []
    if config.mode == "pass_rate":
        k = math.floor(config.revisit * n)
        pool = sorted((r.last_step, task_id) for task_id, r in draws.rates.items()
                      if task_id not in taken and band(r, config) == "between")
        by_id = {t.task_id: t for t in reversed(stream.tasks)}      # the first task of an id
        chosen = [by_id[task_id] for _, task_id in pool[:k] if task_id in by_id]
        counts["revisited"] = len(chosen)
    pos = draws.cursor
    while len(chosen) < n:
        task = stream.at(pos)
        where = band(draws.rates.get(task.task_id), config)
        settled = where in ("at_0", "at_1")
        if config.mode == "pass_rate" and settled and skip_coin(seed, pos) < config.skip:
            counts["skipped"] += 1
        else:
            chosen.append(task)
            counts["settled" if settled else where] += 1
        pos += 1
    return Draw(chosen, pos, counts)


def pass_rate_shares(tasks: Sequence[Task], draws: TaskDraws, config: SelectionConfig) -> dict[str, float]:
    """The share of the stage's questions (distinct ids) in each band: unseen, at 0, in (0, 1), at 1."""
    ids = {t.task_id for t in tasks}
    counts = dict.fromkeys(BANDS, 0)
    for task_id in ids:
        counts[band(draws.rates.get(task_id), config)] += 1
    return {name: counts[name] / max(len(ids), 1) for name in BANDS}
