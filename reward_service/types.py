"""What a reward plug-in returns and raises (what it reads, ``ScoringItem``, is in the core's
``rlyard.domain``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RewardKindName(StrEnum):
    """The three kinds of RL-Factory's reward layer, plus composites."""

    RULE = "rule"
    TOOL_VERIFICATION = "tool_verification"
    MODEL_JUDGE = "model_judge"
    COMPOSITE = "composite"


@dataclass(frozen=True)
class StepReward:
    """A reward attached to one turn (unweighted; the scorer weights it)."""

    turn_index: int
    value: float


@dataclass
class RewardOutcome:
    """What one reward returns for one item."""

    value: float
    explanation: str = ""
    step_rewards: list[StepReward] = field(default_factory=list)


class RewardSystemError(Exception):
    """The reward could not be computed for a reason of the system (a tool server
    down, the judge unreachable): the trajectory is dropped, never scored 0."""


class RewardInputError(Exception):
    """The item cannot be scored as given (e.g. its ground truth lacks what the
    reward needs); the message says what is missing."""
