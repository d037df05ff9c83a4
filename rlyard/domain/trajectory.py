"""Tasks, tool calls and results, turns and trajectories: what the trainer produces and the
reward and memory services consume, as plain records (protobuf forms in ``rlyard.domain.convert``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rlyard.domain.content import ContentPart, ImagePart, JsonPart, TextPart, text_of
from rlyard.domain.safejson import loads_json
from rlyard.errors import InvalidArgument


class TrajectoryStatus(StrEnum):
    """How a trajectory ended (``common.v1.TrajectoryStatus`` without its prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    COMPLETED = "COMPLETED"          # the policy gave an answer
    TRUNCATED = "TRUNCATED"          # max turns or max tokens reached
    INFRA_FAILED = "INFRA_FAILED"    # a service failed: dropped from the loss
    FORMAT_ERROR = "FORMAT_ERROR"    # the output broke the required format


ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool by name, as parsed from the policy's output."""

    call_id: str
    name: str
    arguments_json: str

    @property
    def arguments(self) -> Any:
        """The parsed arguments, or None if they are not valid JSON (or nest too deep, hold NaN or
        an integer past Python's digit limit: ``rlyard.domain.safejson``)."""
        try:
            return loads_json(self.arguments_json, "arguments_json") if self.arguments_json else {}
        except InvalidArgument:
            return None


@dataclass(frozen=True)
class SystemFailure:
    """A failure of the system for one call (a gRPC status code and what happened)."""

    code: int
    message: str


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered: typed content the model reads, ``structured`` data for rewards.

    ``is_error`` marks the model's mistakes (bad arguments, an SQL error); its message says what to
    change. ``system_error`` marks a failure of the system for this call (the trajectory is then
    INFRA_FAILED). A tool returns a result without ``call_id``/``name``/``latency_ms``; the
    executor fills them in.
    """

    content: tuple[ContentPart, ...] = ()
    is_error: bool = False
    structured: Any = None
    truncated: bool = False
    call_id: str = ""
    name: str = ""
    latency_ms: float = 0.0
    system_error: SystemFailure | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.content, tuple):
            object.__setattr__(self, "content", tuple(self.content))

    @classmethod
    def error(cls, message: str) -> ToolResult:
        """A model-facing error with a message the model can act on."""
        return cls(content=(TextPart(message),), is_error=True)

    @classmethod
    def of_text(cls, text: str, structured: Any = None, truncated: bool = False) -> ToolResult:
        """A text result, optionally with structured data for rewards."""
        return cls(content=(TextPart(text),), structured=structured, truncated=truncated)

    @classmethod
    def of_json(cls, value: Any, structured: Any = None) -> ToolResult:
        """A JSON result."""
        return cls(content=(JsonPart(value),), structured=structured)

    def answering(self, call_id: str, name: str, latency_ms: float = 0.0) -> ToolResult:
        """This result as the answer to call ``call_id`` of tool ``name``."""
        return dataclasses.replace(self, call_id=call_id, name=name, latency_ms=latency_ms)

    @property
    def text(self) -> str:
        """The text and JSON content (what rewards read); images left out."""
        return text_of(self.content)

    @property
    def observation(self) -> str:
        """The content as a text-only policy sees it: images as placeholders."""
        return text_of(self.content, images=True)

    @property
    def first_text(self) -> str:
        """The first text content, or ''."""
        return next((p.text for p in self.content if isinstance(p, TextPart)), "")

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The image parts, in order."""
        return tuple(p for p in self.content if isinstance(p, ImagePart))

    @property
    def system_error_code(self) -> int:
        """The gRPC code of a system failure, 0 when there was none."""
        return 0 if self.system_error is None else self.system_error.code


@dataclass(frozen=True)
class Turn:
    """One turn: role is "system", "user", "assistant" or "tool". ``content`` holds a turn's
    non-text content (the images of a multi-image prompt)."""

    index: int
    role: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    content: tuple[ContentPart, ...] = ()


@dataclass(frozen=True)
class Trajectory:
    """A whole episode of an agent on one task."""

    trajectory_id: str = ""
    task_id: str = ""
    turns: tuple[Turn, ...] = ()
    final_answer: str = ""
    status: TrajectoryStatus = TrajectoryStatus.UNSPECIFIED
    metadata: dict[str, str] = field(default_factory=dict)
    session_id: str = ""
    infra_error: str = ""

    @property
    def assistant_turns(self) -> list[Turn]:
        """The turns the policy generated."""
        return [t for t in self.turns if t.role == "assistant"]

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every tool call, in order."""
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def tool_results(self) -> list[ToolResult]:
        """Every tool result, in order."""
        return [r for t in self.turns for r in t.tool_results]

    @property
    def response_text(self) -> str:
        """The policy's generated text, turn after turn (observations left out)."""
        return "".join(t.text for t in self.assistant_turns)

    @property
    def images(self) -> list[ImagePart]:
        """Every image of the episode: the turns' own, then those tools returned, in order."""
        out: list[ImagePart] = []
        for turn in self.turns:
            out.extend(p for p in turn.content if isinstance(p, ImagePart))
            for result in turn.tool_results:
                out.extend(result.images)
        return out


@dataclass
class Task:
    """One prompt for the agent.

    ``messages`` are chat messages before the first generation (system/user); ``tools`` the
    OpenAI-style schemas to render (from ``ListTools``); ``context`` the tool session's context
    (e.g. ``{"db_id": ...}``); ``attachments`` images put into the tool session by id when it
    opens; ``ground_truth`` what the reward spec needs; ``labels`` what else the task's source says
    of it (e.g. ``{"template": "count_by_city"}``: the graph memory's task type).
    """

    task_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    ground_truth: Any = None
    attachments: tuple[ImagePart, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
