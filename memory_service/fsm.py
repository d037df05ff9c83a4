"""The fixed finite state machine that abstracts a trajectory into its decision path (the
"transition path layer" of arXiv 2511.07800): raw turns and tool calls become a short sequence of
canonical states, so that paths of different tasks can be counted and compared.

States::

    START → THINK | TOOL_CALL:<tool> → TOOL_OK | TOOL_ERROR | TOOL_EMPTY | TOOL_FAILED → …
          → ANSWER | NO_ANSWER | TRUNCATED | FORMAT_ERROR | INFRA_FAILED   (exactly one, last)

THINK is an assistant turn without a tool call (consecutive ones collapse into one); each call is
followed by the state of its result (TOOL_FAILED: the system failed, not the model; no state when
the call got no result). Pure functions: nothing here touches a store."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from rlyard.domain import ToolCall, ToolResult, Trajectory, TrajectoryStatus

START = "START"
THINK = "THINK"
TOOL_CALL = "TOOL_CALL:"
TOOL_OK = "TOOL_OK"
TOOL_ERROR = "TOOL_ERROR"
TOOL_EMPTY = "TOOL_EMPTY"
TOOL_FAILED = "TOOL_FAILED"
ANSWER = "ANSWER"
NO_ANSWER = "NO_ANSWER"
TRUNCATED = "TRUNCATED"
FORMAT_ERROR = "FORMAT_ERROR"
INFRA_FAILED = "INFRA_FAILED"
TERMINALS = frozenset({ANSWER, NO_ANSWER, TRUNCATED, FORMAT_ERROR, INFRA_FAILED})
RESULTS = frozenset({TOOL_OK, TOOL_ERROR, TOOL_EMPTY, TOOL_FAILED})
UNNAMED_TOOL = "?"   # a call whose name the parser could not read
MAX_TOOL_NAME = 100  # a tool name is the policy's output: longer ones are cut (states are stored)


def tool_state(name: str) -> str:
    """The state of calling tool ``name`` (cut to ``MAX_TOOL_NAME`` characters)."""
    return f"{TOOL_CALL}{name.strip()[:MAX_TOOL_NAME] or UNNAMED_TOOL}"


def tool_of(state: str) -> str | None:
    """The tool a TOOL_CALL state names, else None."""
    return state[len(TOOL_CALL):] if state.startswith(TOOL_CALL) else None


def _is_empty(value: Any) -> bool:
    """Structured data that holds nothing: no rows, an empty list or object, an object whose lists
    are all empty (``{"tables": []}``)."""
    if isinstance(value, dict):
        if "rows" in value and isinstance(value["rows"], list):
            return not value["rows"]
        lists = [v for v in value.values() if isinstance(v, list)]
        return not value or (bool(lists) and not any(lists))
    return isinstance(value, list) and not value


def result_state(result: ToolResult) -> str:
    """TOOL_FAILED, TOOL_ERROR, TOOL_EMPTY (no text, or structured data without rows) or TOOL_OK."""
    if result.system_error is not None:
        return TOOL_FAILED
    if result.is_error:
        return TOOL_ERROR
    if (result.structured is not None and _is_empty(result.structured)) or not (result.text.strip() or result.images):
        return TOOL_EMPTY
    return TOOL_OK


def _pair(calls: Sequence[ToolCall], results: Sequence[ToolResult]) -> list[ToolResult | None]:
    """Each call's result: by ``call_id``, else the next unclaimed result without an id."""
    by_id = {r.call_id: r for r in results if r.call_id}
    anonymous = iter([r for r in results if not r.call_id])
    return [by_id.get(c.call_id) if c.call_id in by_id else next(anonymous, None) for c in calls]


def terminal_state(trajectory: Trajectory) -> str:
    """How the path ends, from the trajectory's status and whether it holds an answer."""
    if trajectory.status == TrajectoryStatus.TRUNCATED:
        return TRUNCATED
    if trajectory.status == TrajectoryStatus.INFRA_FAILED:
        return INFRA_FAILED
    if trajectory.status == TrajectoryStatus.FORMAT_ERROR:
        return FORMAT_ERROR
    return ANSWER if trajectory.final_answer.strip() else NO_ANSWER


def abstract(trajectory: Trajectory) -> tuple[str, ...]:
    """The decision path of ``trajectory`` through the state machine (see the module docstring)."""
    calls = trajectory.tool_calls
    results = _pair(calls, trajectory.tool_results)
    result_of = {id(c): r for c, r in zip(calls, results, strict=True)}
    states = [START]
    for turn in trajectory.turns:
        if turn.role != "assistant":
            continue
        if not turn.tool_calls:
            if states[-1] != THINK:
                states.append(THINK)
            continue
        for call in turn.tool_calls:
            states.append(tool_state(call.name))
            result = result_of.get(id(call))
            if result is not None:
                states.append(result_state(result))
    states.append(terminal_state(trajectory))
    return tuple(states)


def transitions(path: Sequence[str]) -> list[tuple[str, str]]:
    """The consecutive (from, to) pairs of a path, in order."""
    return list(itertools.pairwise(path))


def tools_called(path: Sequence[str]) -> list[str]:
    """The tools a path calls, in order (repeats kept)."""
    return [t for t in (tool_of(s) for s in path) if t is not None]
