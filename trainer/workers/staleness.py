"""Bounded staleness of finished groups: how many weight versions behind the trainer a group was
sampled, and whether the update may still use it.

A group sampled by weights of version v, consumed by a trainer at version c, is ``c - v`` versions
stale (the oldest version among its tokens counts: a sampler that loaded new weights between two
turns leaves a group as stale as its first turn). The GRPO loss corrects the rest: its ratio is
``exp(logπ_θ − logπ_behaviour)`` over the log-probs the sampler recorded with each token
(``RolloutTrajectory.old_logprobs``), clipped like any PPO ratio; past ``max_staleness`` versions
that correction is no longer trusted and the group is dropped (counted, never silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Staleness:
    """The verdict on one group: its staleness in versions and whether it is kept."""

    versions_behind: int
    keep: bool


def group_staleness(behaviour_versions: Iterable[int], current_version: int) -> int:
    """``current_version`` minus the oldest version that sampled a token of the group; 0 for a
    group with no sampled token (nothing to correct).

    Raises:
        ValueError: a behaviour version newer than the trainer's (versions come from the trainer).
    """
    versions = list(behaviour_versions)
    if not versions:
        return 0
    newest = max(versions)
    if newest > current_version:
        raise ValueError(f"a group was sampled by weight version {newest}, newer than the trainer's "
                         f"{current_version}: samplers must load versions the trainer published")
    return current_version - min(versions)


def judge_staleness(behaviour_versions: Iterable[int], current_version: int, max_staleness: int) -> Staleness:
    """Keep the group when it is at most ``max_staleness`` versions behind (0: on-policy only)."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness={max_staleness}: use >= 0 (0 keeps only groups of the current weights)")
    behind = group_staleness(behaviour_versions, current_version)
    return Staleness(versions_behind=behind, keep=behind <= max_staleness)
