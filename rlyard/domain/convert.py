"""Protobuf ↔ domain: the one place where ``rlyard.common.v1``, ``rlyard.reward.v1`` and
``rlyard.memory.v1`` messages become plain records and back. Servicers and clients call these;
nothing else builds messages.

What a request carries is untrusted: a field that cannot become a record (an enum number the
contract does not define, JSON that does not parse, nests too deep or holds NaN) is an
``InvalidArgument`` that names the field, never a Python exception."""

from __future__ import annotations

import itertools
import json
import json.encoder
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rlyard.common.v1 import common_pb2
from rlyard.domain.content import ContentPart, ImagePart, JsonPart, TextPart, to_jsonable
from rlyard.domain.memory import DecisionPath, MemoryStats, MetaCognition, ScoredMetaCognition, UtilityUpdate
from rlyard.domain.reward import (
    ComponentScore,
    RewardSpec,
    RewardTerm,
    ScoreResult,
    ScoreStatus,
    ScoringItem,
    StepScore,
)
from rlyard.domain.safejson import MAX_JSON_DEPTH, depth_exceeds, loads_json
from rlyard.domain.trajectory import (
    SystemFailure,
    ToolCall,
    ToolResult,
    Trajectory,
    TrajectoryStatus,
    Turn,
)
from rlyard.errors import InvalidArgument
from rlyard.memory.v1 import memory_pb2
from rlyard.reward.v1 import reward_pb2

_ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}
_ROLE_PB = {v: k for k, v in _ROLES.items()}
_SCORE_STATUS_PB = {
    ScoreStatus.OK: reward_pb2.SCORE_STATUS_OK,
    ScoreStatus.SYSTEM_ERROR: reward_pb2.SCORE_STATUS_SYSTEM_ERROR,
    ScoreStatus.INVALID_INPUT: reward_pb2.SCORE_STATUS_INVALID_INPUT,
}
_SCORE_STATUS = {v: k for k, v in _SCORE_STATUS_PB.items()}


def _structured_encoder() -> Callable[[Any], str]:
    """``json.dumps(x, default=to_jsonable)``'s text from an encoder built once: ``dumps`` and
    ``JSONEncoder.encode`` build a C encoder (and a dict to catch cycles) per call. A cycle here
    ends in RecursionError instead of ValueError; tool results are trees."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:                    # a Python without the C accelerator
        return json.JSONEncoder(default=to_jsonable).encode
    encode = make(None, to_jsonable, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda obj: "".join(encode(obj, 0))


_STRUCTURED = _structured_encoder()


def _enum_name(enum: Any, number: int, field: str) -> str:
    """The name of enum value ``number``; InvalidArgument naming ``field`` when it is undefined."""
    try:
        return str(enum.Name(number))
    except ValueError:
        valid = ", ".join(f"{n} ({v})" for n, v in enum.items())
        raise InvalidArgument(f"{field}: {number} is not a defined value; valid: {valid}") from None


# --- content -------------------------------------------------------------------------------
def image_to_pb(image: ImagePart) -> common_pb2.Image:
    """``common.v1.Image`` from an ``ImagePart``."""
    return common_pb2.Image(data=image.data, mime_type=image.mime_type, width=image.width, height=image.height,
                            image_id=image.image_id)


def image_from_pb(pb: common_pb2.Image) -> ImagePart:
    """An ``ImagePart``; INVALID_ARGUMENT when it has no bytes, a bad size or an unknown type."""
    return ImagePart(bytes(pb.data), pb.mime_type, pb.width, pb.height, pb.image_id)


def content_to_pb(part: ContentPart) -> common_pb2.Content:
    """``common.v1.Content`` from a content part."""
    if isinstance(part, TextPart):
        return common_pb2.Content(text=part.text)
    if isinstance(part, JsonPart):
        return common_pb2.Content(json=part.dumps())
    return common_pb2.Content(image=image_to_pb(part))


def content_from_pb(pb: common_pb2.Content) -> ContentPart:
    """A content part from ``common.v1.Content`` (JSON that does not parse stays text)."""
    kind = pb.WhichOneof("kind")
    if kind == "image":
        return image_from_pb(pb.image)
    if kind == "json":
        try:
            return JsonPart(loads_json(pb.json, "content.json"))
        except InvalidArgument:
            return TextPart(pb.json)
    return TextPart(pb.text)


def contents_from_pb(pbs: Iterable[common_pb2.Content]) -> tuple[ContentPart, ...]:
    """Content parts in order."""
    return tuple(content_from_pb(c) for c in pbs)


# --- tool calls and results ----------------------------------------------------------------
def _structured(raw: str) -> Any:
    if not raw:
        return None
    try:
        return loads_json(raw, "structured_json")
    except InvalidArgument:
        return None


def tool_call_to_pb(call: ToolCall) -> common_pb2.ToolCall:
    """``common.v1.ToolCall``."""
    return common_pb2.ToolCall(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json)


def tool_result_to_pb(result: ToolResult) -> common_pb2.ToolResult:
    """``common.v1.ToolResult``."""
    pb = common_pb2.ToolResult()
    tool_result_into_pb(result, pb)
    return pb


def tool_result_into_pb(result: ToolResult, pb: common_pb2.ToolResult) -> None:
    """Write ``result`` into ``pb`` (an empty message, e.g. one just added to a response's results):
    field by field, which costs less than building the message from keyword arguments."""
    pb.call_id = result.call_id
    pb.name = result.name
    for part in result.content:
        if isinstance(part, TextPart):
            pb.content.add(text=part.text)
        else:
            pb.content.append(content_to_pb(part))
    pb.is_error = result.is_error
    pb.latency_ms = result.latency_ms
    if result.structured is not None:
        pb.structured_json = _STRUCTURED(result.structured)
    pb.truncated = result.truncated
    if result.system_error is not None:
        pb.system_error.SetInParent()
        pb.system_error.code = result.system_error.code
        pb.system_error.message = result.system_error.message


def tool_result_from_pb(pb: common_pb2.ToolResult) -> ToolResult:
    """A ``ToolResult`` from ``common.v1.ToolResult``."""
    failure = SystemFailure(pb.system_error.code, pb.system_error.message) if pb.system_error.code else None
    return ToolResult(
        content=contents_from_pb(pb.content), is_error=pb.is_error, structured=_structured(pb.structured_json),
        truncated=pb.truncated, call_id=pb.call_id, name=pb.name, latency_ms=pb.latency_ms, system_error=failure,
    )


def system_failure_pb(call_id: str, name: str, code: int, message: str) -> common_pb2.ToolResult:
    """A result that reports a failure of the system for one call (``code``: a gRPC status number)."""
    return common_pb2.ToolResult(call_id=call_id, name=name,
                                 system_error=common_pb2.ErrorStatus(code=code, message=message))


# --- trajectories --------------------------------------------------------------------------
def turn_to_pb(turn: Turn) -> common_pb2.Turn:
    """``common.v1.Turn``."""
    return common_pb2.Turn(
        index=turn.index,
        role=_ROLE_PB.get(turn.role, common_pb2.ROLE_UNSPECIFIED),
        text=turn.text,
        metadata=turn.metadata,
        tool_calls=[tool_call_to_pb(c) for c in turn.tool_calls],
        tool_results=[tool_result_to_pb(r) for r in turn.tool_results],
        content=[content_to_pb(c) for c in turn.content],
    )


def turn_from_pb(pb: common_pb2.Turn, field: str = "turn") -> Turn:
    """A ``Turn`` from ``common.v1.Turn``; InvalidArgument naming ``field`` for an undefined role."""
    if pb.role != common_pb2.ROLE_UNSPECIFIED and pb.role not in _ROLES:
        _enum_name(common_pb2.Role, pb.role, f"{field}.role")
    return Turn(
        index=pb.index,
        role=_ROLES.get(pb.role, "unspecified"),
        text=pb.text,
        tool_calls=tuple(ToolCall(c.call_id, c.name, c.arguments_json) for c in pb.tool_calls),
        tool_results=tuple(tool_result_from_pb(r) for r in pb.tool_results),
        metadata=dict(pb.metadata),
        content=contents_from_pb(pb.content),
    )


def trajectory_to_pb(t: Trajectory) -> common_pb2.Trajectory:
    """``common.v1.Trajectory``."""
    return common_pb2.Trajectory(
        trajectory_id=t.trajectory_id,
        task_id=t.task_id,
        session_id=t.session_id,
        final_answer=t.final_answer,
        status=common_pb2.TrajectoryStatus.Value(f"TRAJECTORY_STATUS_{t.status}"),  # type: ignore[arg-type]
        metadata=t.metadata,
        turns=[turn_to_pb(turn) for turn in t.turns],
        num_tool_calls=len(t.tool_calls),
        infra_error=t.infra_error,
    )


def trajectory_from_pb(pb: common_pb2.Trajectory, field: str = "trajectory") -> Trajectory:
    """A ``Trajectory`` from ``common.v1.Trajectory``; InvalidArgument names a field that is not valid."""
    status = _enum_name(common_pb2.TrajectoryStatus, pb.status, f"{field}.status").removeprefix("TRAJECTORY_STATUS_")
    turns = tuple(turn_from_pb(t, f"{field}.turns[{i}]") for i, t in enumerate(pb.turns))
    return Trajectory(pb.trajectory_id, pb.task_id, turns, pb.final_answer,
                      TrajectoryStatus(status), dict(pb.metadata), pb.session_id, pb.infra_error)


# --- rewards -------------------------------------------------------------------------------
def spec_from_pb(pb: reward_pb2.RewardSpec) -> RewardSpec:
    """A ``RewardSpec`` from ``reward.v1.RewardSpec``: params must be JSON objects, weights finite
    (``rlyard.domain.reward.check_terms``)."""
    terms = []
    for t in pb.terms:
        params = loads_json(t.params_json, f"reward {t.name!r}: params_json") if t.params_json else {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"reward {t.name!r}: params_json must be a JSON object")
        terms.append(RewardTerm(t.name, t.weight, params))
    return RewardSpec(tuple(terms))


def spec_to_pb(spec: RewardSpec) -> reward_pb2.RewardSpec:
    """``reward.v1.RewardSpec``."""
    return reward_pb2.RewardSpec(
        terms=[reward_pb2.RewardTerm(name=t.name, weight=t.weight, params_json=json.dumps(t.params))
               for t in spec.terms]
    )


def item_from_pb(pb: reward_pb2.ScoreRequest, where: str | int = "") -> ScoringItem:
    """A ``ScoringItem`` from ``ScoreRequest``; InvalidArgument names the item (``where``: e.g.
    ``items[3]``, or the index 3 in a batch) and the field when ground_truth_json does not parse or
    the trajectory holds an undefined enum value or a bad image."""
    try:
        ground_truth = loads_json(pb.ground_truth_json, "ground_truth_json") if pb.ground_truth_json else None
        trajectory = trajectory_from_pb(pb.trajectory) if pb.HasField("trajectory") else None
    except InvalidArgument as exc:
        where = f"items[{where}]" if isinstance(where, int) else where
        prefix = f"{where} (item {_short(pb.item_id)})" if where else f"item {_short(pb.item_id)}"
        raise InvalidArgument(f"{prefix}: {exc.message}") from None
    return ScoringItem(pb.item_id, pb.prediction, trajectory, ground_truth, pb.training_step)


def batch_from_pb(request: reward_pb2.ScoreBatchRequest) -> list[tuple[ScoringItem, RewardSpec]]:
    """The items of ``ScoreBatchRequest`` (``items`` or ``packed_items``) with their specs, in one
    pass: each distinct spec is parsed once (items that repeat it share one ``RewardSpec``, so the
    scorer binds it once). InvalidArgument names an item that does not convert or has no spec while
    the batch has no ``default_spec``."""
    default = spec_from_pb(request.default_spec) if request.default_spec.terms else None
    if request.HasField("packed_items"):
        if request.items:
            raise InvalidArgument("a ScoreBatchRequest sets items or packed_items, not both")
        return _packed_items_from_pb(request.packed_items, default)
    specs: dict[bytes, RewardSpec] = {}
    plan = []
    for i, pb in enumerate(request.items):
        spec = default
        if pb.spec.terms:
            key = pb.spec.SerializeToString(deterministic=True)
            spec = specs.get(key)
            if spec is None:
                spec = specs[key] = spec_from_pb(pb.spec)
        if spec is None:
            raise InvalidArgument(f"items[{i}] (item {pb.item_id[:80]!r}) has no spec and the batch has no "
                                  "default_spec")
        plan.append((item_from_pb(pb, i), spec))
    return plan


def _column(values: Any, n: int, name: str, unset: Any) -> Any:
    """A ``PackedItems`` list: one entry per item, or none (every item ``unset``)."""
    if not values:
        return itertools.repeat(unset, n)
    if len(values) != n:
        raise InvalidArgument(f"packed_items.{name} has {len(values)} entries for {n} items (item_ids): "
                              "give one per item, or none")
    return values


def _packed_items_from_pb(pb: reward_pb2.PackedItems, spec: RewardSpec | None) -> list[tuple[ScoringItem, RewardSpec]]:
    """The items of ``PackedItems``, each under ``spec``; errors name items as ``batch_from_pb`` does."""
    ids = list(pb.item_ids)
    n = len(ids)
    predictions = _column(pb.predictions, n, "predictions", "")
    steps = _column(pb.training_steps, n, "training_steps", 0)
    truths = _packed_truths(pb.ground_truths_json, ids)
    if spec is None:
        if n:
            raise InvalidArgument(f"items[0] (item {ids[0][:80]!r}) has no spec and the batch has no default_spec")
        return []
    # the columns are checked against ids above; an unset one repeats without end
    return [(ScoringItem(item_id, prediction, None, truth, step), spec)
            for item_id, prediction, truth, step in zip(ids, predictions, truths, steps, strict=False)]


def _packed_truths(text: str, ids: list[str]) -> Any:
    """The ground truths of ``PackedItems``: one JSON text for the batch (one parse instead of one per
    item); an item that nests deeper than ``MAX_JSON_DEPTH`` is named as in ``item_from_pb``."""
    if not text:
        return itertools.repeat(None, len(ids))
    field = "packed_items.ground_truths_json"
    values = loads_json(text, field, check_depth=False)
    if not isinstance(values, list) or len(values) != len(ids):
        what = f"{len(values)} entries" if isinstance(values, list) else f"a JSON {type(values).__name__}"
        raise InvalidArgument(f"{field} must be a JSON array with one entry per item ({len(ids)}), not {what}")
    # fewer opening brackets than the limit cannot nest past it; + 1: the array around the items
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH + 1 and depth_exceeds(values, MAX_JSON_DEPTH + 1):
        i = next(i for i, v in enumerate(values) if depth_exceeds(v, MAX_JSON_DEPTH))
        raise InvalidArgument(f"items[{i}] (item {_short(ids[i])}): ground_truth_json nests deeper than "
                              f"{MAX_JSON_DEPTH} levels")
    return values


def batch_request_to_pb(items: Sequence[ScoringItem], spec: RewardSpec, *,
                        packed: bool = True) -> reward_pb2.ScoreBatchRequest:
    """``ScoreBatchRequest`` of ``items`` under ``spec``, asking for packed results; with ``packed``,
    items without a trajectory go in ``packed_items`` (all of them, or the batch goes in ``items``)."""
    request = reward_pb2.ScoreBatchRequest(default_spec=spec_to_pb(spec), packed_results=True)
    if not (packed and items and all(i.trajectory is None for i in items)):
        request.items.extend([item_to_pb(i) for i in items])
        return request
    pb = request.packed_items
    pb.item_ids.extend([i.item_id for i in items])
    predictions = [i.prediction for i in items]
    if any(predictions):
        pb.predictions.extend(predictions)
    truths = [i.ground_truth for i in items]
    if any(t is not None for t in truths):
        pb.ground_truths_json = json.dumps(truths)   # one text: json.dumps costs ~1 µs a call beside the work
    steps = [i.training_step for i in items]
    if any(steps):
        pb.training_steps.extend(steps)
    return request


def _short(text: str, limit: int = 80) -> str:
    """``repr`` of an id for a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def item_to_pb(item: ScoringItem, spec: RewardSpec | None = None) -> reward_pb2.ScoreRequest:
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


def score_to_pb(score: ScoreResult) -> reward_pb2.ScoreResponse:
    """``ScoreResponse`` from a ``ScoreResult``."""
    pb = reward_pb2.ScoreResponse()
    _fill_score(pb, score)
    return pb


def batch_to_pb(scores: Sequence[ScoreResult], packed: bool = False) -> reward_pb2.ScoreBatchResponse:
    """``ScoreBatchResponse``: with ``packed``, in ``packed`` when the results fit it (the same
    components in every result, no step rewards), else each result written in place in ``results``
    (no sub-message built and then copied)."""
    response = reward_pb2.ScoreBatchResponse()
    if packed and scores and _fill_packed(response.packed, scores):
        return response
    add = response.results.add
    for score in scores:
        _fill_score(add(), score)
    return response


def _fill_packed(pb: reward_pb2.PackedScores, scores: Sequence[ScoreResult]) -> bool:
    """Write ``scores`` into ``pb`` field by field; False (nothing written) when they do not fit."""
    first = scores[0].components
    names = [c.name for c in first]
    weights = [c.weight for c in first]
    k = len(names)
    for score in scores:
        if score.step_rewards or len(score.components) != k:
            return False
        for c, name, weight in zip(score.components, names, weights, strict=True):
            if c.name != name or c.weight != weight:
                return False
    status = _SCORE_STATUS_PB
    pb.totals.extend([s.total for s in scores])
    pb.statuses.extend([status[s.status] for s in scores])
    pb.explanations.extend([s.explanation for s in scores])
    pb.errors.extend([s.error for s in scores])
    pb.component_names.extend(names)
    pb.component_weights.extend(weights)
    components = [c for s in scores for c in s.components] if k != 1 else [s.components[0] for s in scores]
    pb.component_values.extend([c.value for c in components])
    pb.component_explanations.extend([c.explanation for c in components])
    pb.component_statuses.extend([status[c.status] for c in components])
    return True


def _fill_score(pb: reward_pb2.ScoreResponse, score: ScoreResult) -> None:
    pb.item_id = score.item_id
    pb.total = score.total
    for c in score.components:
        pb.components.add(name=c.name, value=c.value, weight=c.weight, explanation=c.explanation,
                          status=_SCORE_STATUS_PB[c.status])
    for s in score.step_rewards:
        pb.step_rewards.add(turn_index=s.turn_index, value=s.value, component=s.component)
    pb.explanation = score.explanation
    pb.status = _SCORE_STATUS_PB[score.status]
    pb.error = score.error


def score_from_pb(pb: reward_pb2.ScoreResponse) -> ScoreResult:
    """A ``ScoreResult`` from ``ScoreResponse`` (an unset status reads as a system error)."""
    return ScoreResult(
        item_id=pb.item_id,
        total=pb.total,
        components=[ComponentScore(c.name, c.value, c.weight, c.explanation,
                                   _SCORE_STATUS.get(c.status, ScoreStatus.SYSTEM_ERROR)) for c in pb.components],
        step_rewards=[StepScore(s.turn_index, s.value, s.component) for s in pb.step_rewards],
        explanation=pb.explanation,
        status=_SCORE_STATUS.get(pb.status, ScoreStatus.SYSTEM_ERROR),
        error=pb.error,
    )


def batch_results_from_pb(response: reward_pb2.ScoreBatchResponse, item_ids: Sequence[str]) -> list[ScoreResult]:
    """The ``ScoreResult`` of each item of a batch, from ``results`` or ``packed`` (whose results take
    their ids from the request's ``item_ids``); ValueError when ``packed`` does not hold one result
    per item."""
    if not response.HasField("packed"):
        return [score_from_pb(r) for r in response.results]
    pb = response.packed
    n, names, weights = len(item_ids), list(pb.component_names), list(pb.component_weights)
    k = len(names)
    expected = {"totals": n, "statuses": n, "explanations": n, "errors": n, "component_weights": k,
                "component_values": n * k, "component_explanations": n * k, "component_statuses": n * k}
    wrong = {f: len(getattr(pb, f)) for f, size in expected.items() if len(getattr(pb, f)) != size}
    if wrong:
        raise ValueError(f"the reward service's packed answer does not fit {n} items of {k} components: {wrong}")
    unknown = ScoreStatus.SYSTEM_ERROR
    statuses = [_SCORE_STATUS.get(s, unknown) for s in pb.statuses]
    values, explanations = list(pb.component_values), list(pb.component_explanations)
    c_statuses = [_SCORE_STATUS.get(s, unknown) for s in pb.component_statuses]
    components: Iterable[list[ComponentScore]]
    if k == 1:
        name, weight = names[0], weights[0]
        components = ([ComponentScore(name, v, weight, e, s)]
                      for v, e, s in zip(values, explanations, c_statuses, strict=True))
    else:
        components = ([ComponentScore(names[j], values[b + j], weights[j], explanations[b + j], c_statuses[b + j])
                       for j in range(k)] for b in range(0, n * k, k))
    totals, item_explanations, errors = list(pb.totals), list(pb.explanations), list(pb.errors)
    return [ScoreResult(item_id, total, parts, [], explanation, status, error)
            for item_id, total, parts, explanation, status, error
            in zip(item_ids, totals, components, item_explanations, statuses, errors, strict=True)]


# --- graph memory --------------------------------------------------------------------------
def meta_cognition_to_pb(m: MetaCognition) -> memory_pb2.MetaCognition:
    """``memory.v1.MetaCognition``."""
    return memory_pb2.MetaCognition(id=m.id, text=m.text, utility=m.utility, task_type=m.task_type, uses=m.uses,
                                    source_path_ids=list(m.source_path_ids), created_at=m.created_at,
                                    updated_at=m.updated_at)


def meta_cognition_from_pb(pb: memory_pb2.MetaCognition) -> MetaCognition:
    """A ``MetaCognition`` from ``memory.v1.MetaCognition``."""
    return MetaCognition(pb.id, pb.text, pb.utility, pb.task_type, pb.uses, tuple(pb.source_path_ids),
                         pb.created_at, pb.updated_at)


def scored_to_pb(s: ScoredMetaCognition) -> memory_pb2.ScoredMetaCognition:
    """``memory.v1.ScoredMetaCognition``."""
    return memory_pb2.ScoredMetaCognition(meta_cognition=meta_cognition_to_pb(s.meta_cognition), score=s.score,
                                          relevance=s.relevance)


def scored_from_pb(pb: memory_pb2.ScoredMetaCognition) -> ScoredMetaCognition:
    """A ``ScoredMetaCognition``."""
    return ScoredMetaCognition(meta_cognition_from_pb(pb.meta_cognition), pb.score, pb.relevance)


def path_to_pb(p: DecisionPath) -> memory_pb2.DecisionPath:
    """``memory.v1.DecisionPath``."""
    return memory_pb2.DecisionPath(id=p.id, states=list(p.states), reward=p.reward, trajectory_id=p.trajectory_id)


def path_from_pb(pb: memory_pb2.DecisionPath) -> DecisionPath:
    """A ``DecisionPath``."""
    return DecisionPath(pb.id, tuple(pb.states), pb.reward, pb.trajectory_id)


def utility_update_to_pb(u: UtilityUpdate) -> memory_pb2.UtilityUpdate:
    """``memory.v1.UtilityUpdate``."""
    return memory_pb2.UtilityUpdate(meta_cognition_id=u.meta_cognition_id, reward_with=u.reward_with,
                                    reward_without=u.reward_without)


def utility_update_from_pb(pb: memory_pb2.UtilityUpdate, field: str = "update") -> UtilityUpdate:
    """A ``UtilityUpdate``; InvalidArgument naming ``field`` when it has no id or a reward is NaN or infinite
    (one such value would poison the utility for good)."""
    if not pb.meta_cognition_id:
        raise InvalidArgument(f"{field}.meta_cognition_id is empty")
    for name in ("reward_with", "reward_without"):
        if not math.isfinite(getattr(pb, name)):
            raise InvalidArgument(f"{field}.{name} is {getattr(pb, name)}, not a finite number")
    return UtilityUpdate(pb.meta_cognition_id, pb.reward_with, pb.reward_without)


def stats_to_pb(s: MemoryStats) -> memory_pb2.StatsResponse:
    """``memory.v1.StatsResponse``."""
    return memory_pb2.StatsResponse(num_trajectories=s.num_trajectories, num_states=s.num_states,
                                    num_paths=s.num_paths, num_meta_cognitions=s.num_meta_cognitions,
                                    mean_utility=s.mean_utility)


def stats_from_pb(pb: memory_pb2.StatsResponse) -> MemoryStats:
    """``MemoryStats``."""
    return MemoryStats(pb.num_trajectories, pb.num_states, pb.num_paths, pb.num_meta_cognitions, pb.mean_utility)
