"""The state machine abstraction on hand-written trajectories."""

from __future__ import annotations

from memory_service import fsm
from rlyard.domain import SystemFailure, TextPart, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn


def _result(call_id: str, text: str = "rows", **kw: object) -> ToolResult:
    return ToolResult((TextPart(text),), call_id=call_id, **kw)  # type: ignore[arg-type]


def test_a_trajectory_becomes_its_path_with_each_call_followed_by_its_result() -> None:
    turns = (
        Turn(0, "system", "you are an agent"),
        Turn(1, "user", "How many singers?"),
        Turn(2, "assistant", "let me think"),
        Turn(3, "assistant", "still thinking"),   # consecutive THINKs collapse
        Turn(4, "assistant", "", (ToolCall("a", "describe_table", "{}"), ToolCall("b", "sql_query", "{}"))),
        # results answer by call_id, in another order than the calls
        Turn(5, "tool", "", (), (_result("b", is_error=True), _result("a"))),
        Turn(6, "assistant", "", (ToolCall("c", "sql_query", "{}"),)),
        Turn(7, "tool", "", (), (ToolResult((TextPart("(no rows)"),), structured={"rows": []}, call_id="c"),)),
        Turn(8, "assistant", "", (ToolCall("d", "", "{"),)),   # the parser could not read a name; no result
        Turn(9, "assistant", "the answer is 6"),
    )
    path = fsm.abstract(Trajectory("t1", "q1", turns, "6", TrajectoryStatus.COMPLETED))
    assert path == ("START", "THINK", "TOOL_CALL:describe_table", "TOOL_OK", "TOOL_CALL:sql_query", "TOOL_ERROR",
                    "TOOL_CALL:sql_query", "TOOL_EMPTY", "TOOL_CALL:?", "THINK", "ANSWER")
    assert fsm.tools_called(path) == ["describe_table", "sql_query", "sql_query", "?"]
    assert fsm.transitions(path)[:2] == [("START", "THINK"), ("THINK", "TOOL_CALL:describe_table")]


def test_results_without_ids_pair_with_calls_in_order_and_system_failures_are_their_own_state() -> None:
    turns = (
        Turn(0, "assistant", "", (ToolCall("", "crop", "{}"), ToolCall("", "zoom", "{}"))),
        Turn(1, "tool", "", (), (ToolResult((), system_error=SystemFailure(14, "down")), _result(""))),
    )
    path = fsm.abstract(Trajectory("t2", "", turns, "", TrajectoryStatus.COMPLETED))
    assert path == ("START", "TOOL_CALL:crop", "TOOL_FAILED", "TOOL_CALL:zoom", "TOOL_OK", "NO_ANSWER")


def test_the_terminal_state_follows_the_status_before_the_answer() -> None:
    turns = (Turn(0, "assistant", "x"),)
    ends = {status: fsm.abstract(Trajectory("t", "", turns, "an answer", status))[-1] for status in TrajectoryStatus}
    assert ends == {
        TrajectoryStatus.UNSPECIFIED: "ANSWER", TrajectoryStatus.COMPLETED: "ANSWER",
        TrajectoryStatus.TRUNCATED: "TRUNCATED", TrajectoryStatus.INFRA_FAILED: "INFRA_FAILED",
        TrajectoryStatus.FORMAT_ERROR: "FORMAT_ERROR",
    }
    assert fsm.abstract(Trajectory("t", "", turns, "  ", TrajectoryStatus.COMPLETED))[-1] == "NO_ANSWER"


def test_empty_results_are_told_from_ok_ones() -> None:
    assert fsm.result_state(ToolResult((TextPart(""),))) == "TOOL_EMPTY"
    assert fsm.result_state(ToolResult((TextPart("t: a"),), structured={"tables": []})) == "TOOL_EMPTY"
    assert fsm.result_state(ToolResult((TextPart("1 row"),), structured={"rows": [[1]]})) == "TOOL_OK"
    assert fsm.result_state(ToolResult((TextPart("bad column"),), is_error=True)) == "TOOL_ERROR"
