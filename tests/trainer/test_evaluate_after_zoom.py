"""``answered_after_zoom``: an answer after a zoom/crop/revisit/confirm result that was no error."""

from __future__ import annotations

from rlyard.domain import Task, ToolCall, ToolResult, Trajectory, TrajectoryStatus, Turn
from trainer.evaluate import aggregate, answered_after_zoom
from trainer.types import RolloutTrajectory


def _trajectory(results: list[ToolResult], status: TrajectoryStatus = TrajectoryStatus.COMPLETED) -> RolloutTrajectory:
    turns = [Turn(0, "user", "q")]
    for r in results:
        turns += [Turn(len(turns), "assistant", "", tool_calls=(ToolCall(r.call_id, r.name, "{}"),)),
                  Turn(len(turns) + 1, "tool", "obs", tool_results=(r,))]
    turns.append(Turn(len(turns), "assistant", "<answer>red</answer>"))
    record = Trajectory("t", "t", tuple(turns), "red", status)
    return RolloutTrajectory(Task("t", [], [], {}, {}), 0, 0, [1], record=record, status=status, final_answer="red",
                             num_tool_calls=len(results), reward_components={"qa_em": 1.0})


def test_answered_after_a_zoom_counts_only_regions_shown_before_an_answer() -> None:
    zoom, crop = ToolResult(name="zoom", call_id="a"), ToolResult(name="crop", call_id="b")
    failed = ToolResult(name="zoom", call_id="c", is_error=True)
    rotate = ToolResult(name="rotate", call_id="d")
    cases = [([zoom], True), ([crop], True), ([ToolResult(name="revisit")], True),
             ([ToolResult(name="confirm")], True), ([failed], False), ([rotate], False), ([], False),
             ([failed, crop], True)]
    for results, expected in cases:
        assert answered_after_zoom(_trajectory(results)) is expected, results
    assert not answered_after_zoom(_trajectory([zoom], TrajectoryStatus.TRUNCATED))
    report = aggregate([_trajectory([zoom]), _trajectory([rotate]), _trajectory([]), _trajectory([zoom, crop])],
                       primary="qa_em", check_format=False)
    assert report.answered_after_zoom == 0.5 and report.mean_tool_calls == 1.0
    assert [r.answered_after_zoom for r in report.results] == [True, False, False, True]
