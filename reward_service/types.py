"""Domain types of the reward layer: what a reward reads and what it returns.

The servicer converts ``rlyard.reward.v1`` / ``rlyard.common.v1`` protobuf into
these plain records, so rewards are pure Python that tests call directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RewardKindName(StrEnum):
    """The three kinds of RL-Factory's reward layer, plus composites."""

    RULE = "rule"
    TOOL_VERIFICATION = "tool_verification"
    MODEL_JUDGE = "model_judge"
    COMPOSITE = "composite"


@dataclass(frozen=True)
class ToolCallRecord:
    """A tool call the policy made."""

    call_id: str
    name: str
    arguments_json: str

    @property
    def arguments(self) -> Any:
        """The parsed arguments, or None if they are not valid JSON."""
        try:
            return json.loads(self.arguments_json) if self.arguments_json else {}
        except json.JSONDecodeError:
            return None


@dataclass(frozen=True)
class ToolResultRecord:
    """What a tool answered."""

    call_id: str
    name: str
    text: str
    is_error: bool = False
    structured: Any = None
    system_error_code: int = 0
    system_error_message: str = ""


@dataclass(frozen=True)
class TurnRecord:
    """One turn: role is "system", "user", "assistant" or "tool"."""

    index: int
    role: str
    text: str
    tool_calls: tuple[ToolCallRecord, ...] = ()
    tool_results: tuple[ToolResultRecord, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrajectoryRecord:
    """A whole episode; ``status`` is the TrajectoryStatus name without its prefix."""

    trajectory_id: str = ""
    task_id: str = ""
    turns: tuple[TurnRecord, ...] = ()
    final_answer: str = ""
    status: str = "UNSPECIFIED"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def assistant_turns(self) -> list[TurnRecord]:
        """The turns the policy generated."""
        return [t for t in self.turns if t.role == "assistant"]

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        """Every tool call, in order."""
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def response_text(self) -> str:
        """The policy's generated text, turn after turn (observations left out)."""
        return "".join(t.text for t in self.assistant_turns)


@dataclass(frozen=True)
class ScoringItem:
    """One thing to score: a prediction and/or a trajectory, with its ground truth."""

    item_id: str = ""
    prediction: str = ""
    trajectory: TrajectoryRecord | None = None
    ground_truth: Any = None
    training_step: int = 0

    @property
    def text(self) -> str:
        """What text rewards read: the prediction, else the trajectory's final answer,
        else everything the policy generated."""
        if self.prediction:
            return self.prediction
        if self.trajectory is not None:
            return self.trajectory.final_answer or self.trajectory.response_text
        return ""

    @property
    def response_text(self) -> str:
        """The whole generated response (for format rewards): the trajectory's assistant
        text when there is one, else the prediction."""
        if self.trajectory is not None and self.trajectory.assistant_turns:
            return self.trajectory.response_text
        return self.prediction


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
