"""Protobuf ↔ domain conversion for the reward service (used by the servicer and
by clients that build requests from plain records)."""

from __future__ import annotations

import json
from typing import Any

from reward_service.scorer import ItemScore
from reward_service.spec import Spec, Term
from reward_service.types import (
    ScoringItem,
    ToolCallRecord,
    ToolResultRecord,
    TrajectoryRecord,
    TurnRecord,
)
from rlyard.common.v1 import common_pb2
from rlyard.errors import InvalidArgument
from rlyard.reward.v1 import reward_pb2

_ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}
_ROLE_PB = {v: k for k, v in _ROLES.items()}
_STATUS_PB = {
    "OK": reward_pb2.SCORE_STATUS_OK,
    "SYSTEM_ERROR": reward_pb2.SCORE_STATUS_SYSTEM_ERROR,
    "INVALID_INPUT": reward_pb2.SCORE_STATUS_INVALID_INPUT,
}


def _text_of(contents: Any) -> str:
    parts = []
    for c in contents:
        kind = c.WhichOneof("kind")
        if kind == "text":
            parts.append(c.text)
        elif kind == "json":
            parts.append(c.json)
    return "\n".join(parts)


def _structured(raw: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def trajectory_from_pb(pb: common_pb2.Trajectory) -> TrajectoryRecord:
    """A ``TrajectoryRecord`` from ``common.v1.Trajectory``."""
    turns = tuple(
        TurnRecord(
            index=t.index,
            role=_ROLES.get(t.role, "unspecified"),
            text=t.text,
            tool_calls=tuple(ToolCallRecord(c.call_id, c.name, c.arguments_json) for c in t.tool_calls),
            tool_results=tuple(
                ToolResultRecord(
                    r.call_id, r.name, _text_of(r.content), r.is_error, _structured(r.structured_json),
                    r.system_error.code, r.system_error.message,
                )
                for r in t.tool_results
            ),
            metadata=dict(t.metadata),
        )
        for t in pb.turns
    )
    status = common_pb2.TrajectoryStatus.Name(pb.status).removeprefix("TRAJECTORY_STATUS_")
    return TrajectoryRecord(pb.trajectory_id, pb.task_id, turns, pb.final_answer, status, dict(pb.metadata))


def trajectory_to_pb(t: TrajectoryRecord) -> common_pb2.Trajectory:
    """The inverse of ``trajectory_from_pb`` (for clients and tests)."""
    return common_pb2.Trajectory(
        trajectory_id=t.trajectory_id,
        task_id=t.task_id,
        final_answer=t.final_answer,
        status=common_pb2.TrajectoryStatus.Value(f"TRAJECTORY_STATUS_{t.status}"),  # type: ignore[arg-type]
        metadata=t.metadata,
        turns=[
            common_pb2.Turn(
                index=turn.index,
                role=_ROLE_PB.get(turn.role, common_pb2.ROLE_UNSPECIFIED),
                text=turn.text,
                metadata=turn.metadata,
                tool_calls=[common_pb2.ToolCall(call_id=c.call_id, name=c.name, arguments_json=c.arguments_json)
                            for c in turn.tool_calls],
                tool_results=[
                    common_pb2.ToolResult(
                        call_id=r.call_id, name=r.name, content=[common_pb2.Content(text=r.text)],
                        is_error=r.is_error,
                        structured_json="" if r.structured is None else json.dumps(r.structured),
                        system_error=common_pb2.ErrorStatus(code=r.system_error_code,
                                                            message=r.system_error_message),
                    )
                    for r in turn.tool_results
                ],
            )
            for turn in t.turns
        ],
    )


def spec_from_pb(pb: reward_pb2.RewardSpec) -> Spec:
    """A ``Spec`` from ``RewardSpec``; params must be JSON objects."""
    terms = []
    for t in pb.terms:
        try:
            params = json.loads(t.params_json) if t.params_json else {}
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"reward {t.name!r}: params_json is not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise InvalidArgument(f"reward {t.name!r}: params_json must be a JSON object")
        terms.append(Term(t.name, t.weight, params))
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the reward spec names a reward twice: {names}")
    return Spec(tuple(terms))


def spec_to_pb(spec: Spec) -> reward_pb2.RewardSpec:
    """``RewardSpec`` from a ``Spec``."""
    return reward_pb2.RewardSpec(
        terms=[reward_pb2.RewardTerm(name=t.name, weight=t.weight, params_json=json.dumps(t.params))
               for t in spec.terms]
    )


def item_from_pb(pb: reward_pb2.ScoreRequest) -> ScoringItem:
    """A ``ScoringItem`` from ``ScoreRequest``; ground_truth_json must parse."""
    try:
        ground_truth = json.loads(pb.ground_truth_json) if pb.ground_truth_json else None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"item {pb.item_id!r}: ground_truth_json is not JSON: {exc}") from None
    trajectory = trajectory_from_pb(pb.trajectory) if pb.HasField("trajectory") else None
    return ScoringItem(pb.item_id, pb.prediction, trajectory, ground_truth, pb.training_step)


def item_to_pb(item: ScoringItem, spec: Spec | None = None) -> reward_pb2.ScoreRequest:
    """``ScoreRequest`` from a ``ScoringItem`` (and optionally its spec)."""
    req = reward_pb2.ScoreRequest(
        item_id=item.item_id,
        prediction=item.prediction,
        ground_truth_json="" if item.ground_truth is None else json.dumps(item.ground_truth),
        training_step=item.training_step,
    )
    if item.trajectory is not None:
        req.trajectory.CopyFrom(trajectory_to_pb(item.trajectory))
    if spec is not None:
        req.spec.CopyFrom(spec_to_pb(spec))
    return req


def score_to_pb(score: ItemScore) -> reward_pb2.ScoreResponse:
    """``ScoreResponse`` from an ``ItemScore``."""
    return reward_pb2.ScoreResponse(
        item_id=score.item_id,
        total=score.total,
        components=[
            reward_pb2.RewardComponent(name=c.name, value=c.value, weight=c.weight, explanation=c.explanation,
                                       status=_STATUS_PB[c.status])
            for c in score.components
        ],
        step_rewards=[reward_pb2.StepReward(turn_index=s.turn_index, value=s.value, component=s.component)
                      for s in score.step_rewards],
        explanation=score.explanation,
        status=_STATUS_PB[score.status],
        error=score.error,
    )


def _role(value: Any) -> str:
    text = str(value).lower().removeprefix("role_")
    if text not in _ROLE_PB:
        raise InvalidArgument(f"unknown role {value!r}; use system, user, assistant or tool")
    return text


def trajectory_from_json(obj: Any) -> TrajectoryRecord:
    """A trajectory from its JSON form (the CLI's input)::

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
            ToolCallRecord(
                str(c.get("call_id", f"c{i}_{j}")), str(c.get("name", "")),
                c["arguments"] if isinstance(c.get("arguments"), str) else json.dumps(c.get("arguments", {})),
            )
            for j, c in enumerate(t.get("tool_calls") or [])
        )
        results = tuple(
            ToolResultRecord(
                str(r.get("call_id", "")), str(r.get("name", "")), str(r.get("text", "")),
                bool(r.get("is_error", False)), r.get("structured"),
            )
            for r in t.get("tool_results") or []
        )
        turns.append(TurnRecord(int(t.get("index", i)), _role(t.get("role", "assistant")), str(t.get("text", "")),
                                calls, results, {str(k): str(v) for k, v in (t.get("metadata") or {}).items()}))
    status = str(obj.get("status", "COMPLETED")).upper().removeprefix("TRAJECTORY_STATUS_")
    if f"TRAJECTORY_STATUS_{status}" not in common_pb2.TrajectoryStatus.keys():
        raise InvalidArgument(f"unknown trajectory status {obj.get('status')!r}")
    return TrajectoryRecord(str(obj.get("trajectory_id", "")), str(obj.get("task_id", "")), tuple(turns),
                            str(obj.get("final_answer", "")), status,
                            {str(k): str(v) for k, v in (obj.get("metadata") or {}).items()})


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
