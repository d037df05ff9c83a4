"""The domain: tasks, trajectories, tool calls and results with typed content, reward specs
and scores, the graph memory's records. Every layer above the core speaks these; ``convert``
turns them into protobuf."""

from rlyard.domain.content import IMAGE_MIME_TYPES, ContentPart, ImagePart, JsonPart, TextPart, text_of
from rlyard.domain.memory import DecisionPath, MemoryStats, MetaCognition, ScoredMetaCognition, UtilityUpdate
from rlyard.domain.reward import (
    ComponentScore,
    RewardSpec,
    RewardTerm,
    ScoreResult,
    ScoreStatus,
    ScoringItem,
    StepScore,
    load_spec,
    parse_spec,
)
from rlyard.domain.trajectory import (
    SystemFailure,
    Task,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryStatus,
    Turn,
)

__all__ = [
    "IMAGE_MIME_TYPES",
    "ComponentScore",
    "ContentPart",
    "DecisionPath",
    "ImagePart",
    "JsonPart",
    "MemoryStats",
    "MetaCognition",
    "RewardSpec",
    "RewardTerm",
    "ScoreResult",
    "ScoreStatus",
    "ScoredMetaCognition",
    "ScoringItem",
    "StepScore",
    "SystemFailure",
    "Task",
    "TextPart",
    "ToolCall",
    "ToolResult",
    "Trajectory",
    "TrajectoryStatus",
    "Turn",
    "UtilityUpdate",
    "load_spec",
    "parse_spec",
    "text_of",
]
