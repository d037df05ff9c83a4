"""The graph memory's records: meta-cognitions (strategies with a learned utility), the decision
paths they are distilled from, utility updates and the store's counts (protobuf forms in
``rlyard.domain.convert``). The trainer and the memory service both speak these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetaCognition:
    """A human-readable strategy with its learned utility weight (arXiv 2511.07800).

    ``uses`` counts the utility updates it took part in; ``source_path_ids`` are the decision
    paths it was distilled from; times are unix seconds."""

    id: str
    text: str
    utility: float
    task_type: str = ""
    uses: int = 0
    source_path_ids: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ScoredMetaCognition:
    """A retrieved meta-cognition: ``score`` = ``relevance`` (in [0, 1]) × utility, the ranking key."""

    meta_cognition: MetaCognition
    score: float
    relevance: float


@dataclass(frozen=True)
class DecisionPath:
    """A trajectory abstracted into the states of the memory's state machine, with its reward."""

    id: str
    states: tuple[str, ...]
    reward: float
    trajectory_id: str


@dataclass(frozen=True)
class UtilityUpdate:
    """Feedback on one meta-cognition: the mean reward of a task's rollouts prompted with it and
    of those prompted without it (ΔR = reward_with − reward_without)."""

    meta_cognition_id: str
    reward_with: float
    reward_without: float

    @property
    def delta(self) -> float:
        """ΔR = R(with) − R(without)."""
        return self.reward_with - self.reward_without


@dataclass(frozen=True)
class MemoryStats:
    """How much the memory holds, layer by layer, and the mean utility of its meta-cognitions."""

    num_trajectories: int
    num_states: int
    num_paths: int
    num_meta_cognitions: int
    mean_utility: float
