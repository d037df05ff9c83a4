"""The JSON form of trajectories and scoring items (what ``rlyard reward score`` reads)."""

from __future__ import annotations

import json
from typing import Any

from rlyard.domain.content import TextPart
from rlyard.domain.reward import ScoringItem
from rlyard.domain.trajectory import ROLES, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from rlyard.errors import InvalidArgument


def _role(value: Any) -> str:
    text = str(value).lower().removeprefix("role_")
    if text not in ROLES:
        raise InvalidArgument(f"unknown role {value!r}; use system, user, assistant or tool")
    return text


def _metadata(obj: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (obj or {}).items()}


def trajectory_from_json(obj: Any) -> Trajectory:
    """A trajectory from its JSON form::

        {"final_answer": "...", "status": "COMPLETED",
         "turns": [{"role": "assistant", "text": "...",
                    "tool_calls": [{"call_id": "c0", "name": "sql_query", "arguments": {...}}],
                    "tool_results": [{"call_id": "c0", "name": "sql_query", "text": "...",
                                      "is_error": false, "structured": {...}}]}]}
    """
    if not isinstance(obj, dict):
        raise InvalidArgument("a trajectory is a JSON object with 'turns'")
    turns = []
    for i, t in enumerate(obj.get("turns") or []):
        if not isinstance(t, dict):
            raise InvalidArgument(f"turn {i} is not an object")
        calls = tuple(
            ToolCall(
                str(c.get("call_id", f"c{i}_{j}")), str(c.get("name", "")),
                c["arguments"] if isinstance(c.get("arguments"), str) else json.dumps(c.get("arguments", {})),
            )
            for j, c in enumerate(t.get("tool_calls") or [])
        )
        results = tuple(_result(r) for r in t.get("tool_results") or [])
        turns.append(Turn(int(t.get("index", i)), _role(t.get("role", "assistant")), str(t.get("text", "")),
                          calls, results, _metadata(t.get("metadata"))))
    status = str(obj.get("status", "COMPLETED")).upper().removeprefix("TRAJECTORY_STATUS_")
    if status not in TrajectoryStatus.__members__:
        raise InvalidArgument(f"unknown trajectory status {obj.get('status')!r}")
    return Trajectory(str(obj.get("trajectory_id", "")), str(obj.get("task_id", "")), tuple(turns),
                      str(obj.get("final_answer", "")), TrajectoryStatus(status), _metadata(obj.get("metadata")))


def _result(r: Any) -> ToolResult:
    if not isinstance(r, dict):
        raise InvalidArgument(f"a tool result is an object with 'text', not {r!r}")
    return ToolResult(content=(TextPart(str(r.get("text", ""))),), is_error=bool(r.get("is_error", False)),
                      structured=r.get("structured"), call_id=str(r.get("call_id", "")), name=str(r.get("name", "")))


def item_from_json(obj: Any, line_no: int = 0) -> ScoringItem:
    """A ``ScoringItem`` from one input line of ``rlyard reward score``."""
    if not isinstance(obj, dict):
        raise InvalidArgument("each line must be a JSON object")
    if "prediction" not in obj and "trajectory" not in obj:
        raise InvalidArgument("each line needs a 'prediction' or a 'trajectory'")
    trajectory = trajectory_from_json(obj["trajectory"]) if obj.get("trajectory") is not None else None
    prediction = obj.get("prediction") or ""
    if not isinstance(prediction, str):
        raise InvalidArgument("'prediction' must be a string")
    return ScoringItem(str(obj.get("id", line_no)), prediction, trajectory, obj.get("ground_truth"),
                       int(obj.get("training_step", 0)))
