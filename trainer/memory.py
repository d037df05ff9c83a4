"""Meta-cognitive prompting and the half-group ablation of the graph memory, as pure functions.

A question's retrieved meta-cognitions go into its system message (``memory_block``: whole items
in rank order within a token budget of the policy's tokenizer; ``with_memory``), before the prompt
is tokenized, so the rollout stays token in, token out. With the ablation, the first half of each
GRPO group reads them and the rest does not (``memory_samples``); the difference of the two halves'
mean rewards is the evidence the memory service's utility update (REINFORCE with a baseline, arXiv
2511.07800) takes for every meta-cognition the group used (``utility_updates``).
The calls to the service live in ``trainer/memory_stage.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlyard.domain import Task, TrajectoryStatus
from rlyard.domain.memory import ScoredMetaCognition, UtilityUpdate
from trainer.types import RolloutTrajectory

__all__ = ["GroupOutcome", "MemoryBlock", "explore_order", "group_outcomes", "memory_block", "memory_metrics",
           "memory_samples", "reward_gap", "task_text", "task_type", "utility_updates", "with_memory"]


def task_type(task: Task, source: str) -> str:
    """The task's type as ``memory.task_type`` says: ``label:<field>``, ``context:<key>``,
    ``fixed:<name>``, or empty (no type); a task without that label or key has none."""
    kind, _, name = source.partition(":")
    if kind == "label":
        return task.labels.get(name, "")
    if kind == "context":
        return task.context.get(name, "")
    if kind == "fixed":
        return name
    return ""


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def task_text(task: Task) -> str:
    """What the memory matches a task by: its last user message's text (the question)."""
    for message in reversed(task.messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


@dataclass(frozen=True)
class MemoryBlock:
    """The memories one prompt shows: the rendered ``text`` (empty: none), the ``items`` in it,
    its length in the policy's ``tokens``, and how many retrieved items did not fit (``dropped``)."""

    text: str = ""
    items: tuple[ScoredMetaCognition, ...] = ()
    tokens: int = 0
    dropped: int = 0


def _render(header: str, items: Sequence[ScoredMetaCognition]) -> str:
    lines = [header] if header else []
    lines += [f"- {' '.join(item.meta_cognition.text.split())}" for item in items]
    return "\n".join(lines)


def memory_block(items: Sequence[ScoredMetaCognition], tokenizer: Any, budget: int, header: str) -> MemoryBlock:
    """The block of ``items`` (best first) under ``header`` that fits ``budget`` tokens: each item
    is taken whole if the block with it still fits, else dropped (a later, shorter one may fit).
    Tokens are counted on the rendered block with the policy's tokenizer; an empty item is dropped."""
    chosen: list[ScoredMetaCognition] = []
    text, tokens, dropped = "", 0, 0
    for item in items:
        if not item.meta_cognition.text.strip():
            dropped += 1
            continue
        candidate = _render(header, [*chosen, item])
        n = len(tokenizer.encode(candidate, add_special_tokens=False))
        if n <= budget:
            chosen.append(item)
            text, tokens = candidate, n
        else:
            dropped += 1
    return MemoryBlock(text, tuple(chosen), tokens, dropped)


def with_memory(task: Task, block: MemoryBlock) -> Task:
    """A copy of ``task`` whose system message ends with the block (a system message is put first
    when the task has none); ``task`` itself when the block is empty."""
    if not block.items:
        return task
    messages = [dict(m) for m in task.messages]
    if messages and messages[0].get("role") == "system":
        content = messages[0].get("content")
        if isinstance(content, list):
            messages[0]["content"] = [*content, {"type": "text", "text": "\n\n" + block.text}]
        else:
            text = str(content or "")
            messages[0]["content"] = f"{text}\n\n{block.text}" if text else block.text
    else:
        messages.insert(0, {"role": "system", "content": block.text})
    return dataclasses.replace(task, messages=messages)


def explore_order(items: Sequence[ScoredMetaCognition], bonus: float) -> list[ScoredMetaCognition]:
    """``items`` by an upper confidence bound on their score, best first: score + relevance × bonus /
    sqrt(1 + uses), i.e. relevance × (utility + bonus / sqrt(1 + uses)). A meta-cognition with little
    feedback is tried before its learned utility is trusted (the ablation's ΔR is noisy); ties keep
    the service's order."""
    def ucb(item: ScoredMetaCognition) -> float:
        return item.score + item.relevance * bonus / math.sqrt(1 + max(item.meta_cognition.uses, 0))
    return sorted(items, key=ucb, reverse=True)


def memory_samples(group_size: int, ablation: bool) -> tuple[bool, ...]:
    """Which samples of a group read the memories: all of them, or with the ablation the first
    ceil(G/2) (the rest are the baseline the utility update compares against)."""
    if not ablation:
        return (True,) * group_size
    half = math.ceil(group_size / 2)
    return tuple(i < half for i in range(group_size))


@dataclass(frozen=True)
class GroupOutcome:
    """One group for the utility update: the meta-cognitions its samples with memory read, and per
    sample its reward (None: not scored, e.g. INFRA_FAILED) and whether it read them."""

    ids: tuple[str, ...]
    rewards: tuple[float | None, ...]
    with_memory: tuple[bool, ...]


def reward_gap(rewards: Sequence[float | None], with_memory: Sequence[bool]) -> tuple[float, float] | None:
    """(mean reward with memory, mean reward without) over the scored samples; None when either
    side has no scored sample (no evidence)."""
    with_ = [r for r, w in zip(rewards, with_memory, strict=True) if w and r is not None]
    without = [r for r, w in zip(rewards, with_memory, strict=True) if not w and r is not None]
    if not with_ or not without:
        return None
    return sum(with_) / len(with_), sum(without) / len(without)


def utility_updates(groups: Iterable[GroupOutcome]) -> list[UtilityUpdate]:
    """One ``UtilityUpdate`` per meta-cognition used in a group with evidence, in order of first
    use: its reward with and without memory are the means of the groups' halves over the groups
    that used it (so its ΔR is the mean of their ΔR)."""
    seen: dict[str, list[tuple[float, float]]] = {}
    for group in groups:
        gap = reward_gap(group.rewards, group.with_memory)
        if gap is None:
            continue
        for mid in dict.fromkeys(group.ids):
            seen.setdefault(mid, []).append(gap)
    return [UtilityUpdate(mid, sum(w for w, _ in gaps) / len(gaps), sum(wo for _, wo in gaps) / len(gaps))
            for mid, gaps in seen.items()]


def _reward(t: RolloutTrajectory) -> float | None:
    return None if t.status == TrajectoryStatus.INFRA_FAILED else t.reward


def group_outcomes(trajectories: Iterable[RolloutTrajectory]) -> list[GroupOutcome]:
    """The groups of a step's trajectories (by ``group_id``, samples in order) as ``GroupOutcome``s."""
    groups: dict[int, list[RolloutTrajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t)
    out = []
    for _, members in sorted(groups.items()):
        members.sort(key=lambda t: t.sample_index)
        ids = next((tuple(m.meta_cognition.id for m in t.memories) for t in members if t.memories), ())
        out.append(GroupOutcome(ids, tuple(_reward(t) for t in members), tuple(bool(t.memories) for t in members)))
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def memory_metrics(trajectories: Sequence[RolloutTrajectory]) -> dict[str, float]:
    """The step's prompting metrics: ``memory/hit_rate`` (share of groups whose prompts showed a
    memory), ``memory/reward_with`` and ``memory/reward_without`` (mean reward of the scored samples
    with and without memory in those groups; absent when there are none), ``memory/utility_mean``
    (mean utility, as retrieved, of the distinct meta-cognitions shown) and ``memory/shown`` (how
    many distinct ones)."""
    by_group: dict[int, list[RolloutTrajectory]] = {}
    for t in trajectories:
        by_group.setdefault(t.group_id, []).append(t)
    hits = [members for members in by_group.values() if any(t.memories for t in members)]
    out = {"memory/hit_rate": len(hits) / len(by_group) if by_group else 0.0}
    scored = [(t, r) for members in hits for t in members if (r := _reward(t)) is not None]
    with_ = [r for t, r in scored if t.memories]
    without = [r for t, r in scored if not t.memories]
    if with_:
        out["memory/reward_with"] = _mean(with_)
    if without:
        out["memory/reward_without"] = _mean(without)
    shown = {m.meta_cognition.id: m.meta_cognition.utility for t in trajectories for m in t.memories}
    out["memory/shown"] = float(len(shown))
    if shown:
        out["memory/utility_mean"] = _mean(list(shown.values()))
    return out
