"""Group jobs and results survive JSON (what Celery sends) exactly; other payloads are refused."""

from __future__ import annotations

import json

import pytest

from rlyard.domain import ImagePart, Task, ToolCall, Trajectory, TrajectoryStatus, Turn
from trainer.config import RolloutConfig
from trainer.types import RolloutTrajectory
from trainer.workers.wire import GroupJob, GroupResult, WireError


def _task(png: bytes) -> Task:
    return Task(task_id="t1", messages=[{"role": "user", "content": "how many singers?"}],
                tools=[{"type": "function", "function": {"name": "sql_query", "parameters": {}}}],
                context={"db_id": "concert_singer"}, ground_truth={"answers": ["6"]},
                attachments=(ImagePart(png, "image/png", 4, 3, "img-1"),), labels={"template": "count"})


def test_a_job_round_trips_through_json(make_png: object) -> None:
    png = make_png(4, 3)  # type: ignore[operator]
    job = GroupJob(key="run/s3/g2", task=_task(png), group_size=4,
                   rollout=RolloutConfig(group_size=4, max_turns=3, temperature=0.7), sampler={"kind": "local",
                                                                                               "path": "/m"},
                   tools="127.0.0.1:1", weight_version=3, step=3, group_id=2, seed=11, reward="127.0.0.1:2",
                   reward_spec={"qa_em": 1.0})
    payload = job.to_json()
    back = GroupJob.from_json(json.loads(json.dumps(payload)))
    assert back == job
    assert back.task.attachments[0].data == png


def test_a_result_round_trips_exactly(make_png: object) -> None:
    png = make_png(4, 3)  # type: ignore[operator]
    task = _task(png)
    record = Trajectory(trajectory_id="t1/step3/g0/s1", task_id="t1", status=TrajectoryStatus.COMPLETED,
                        turns=(Turn(0, "user", "q"), Turn(1, "assistant", "a",
                                                         tool_calls=(ToolCall("c0", "sql_query", "{}"),))),
                        final_answer="6", metadata={"group_key": "run/s3/g2"})
    traj = RolloutTrajectory(task=task, group_id=2, sample_index=1, prompt_ids=[1, 2, 3], token_ids=[4, 5, 6],
                             loss_mask=[1, 0, 1], old_logprobs=[-0.1234567890123, 0.0, -2.5e-7], regions=[5, 7, 5],
                             record=record, status=TrajectoryStatus.COMPLETED, final_answer="6", num_tool_calls=1,
                             tool_latency_ms=[3.25], reward=1.0, reward_components={"qa_em": 1.0},
                             images=[ImagePart(png, "image/png", 4, 3, "img-1")], weight_versions={3, 4})
    result = GroupResult(key="run/s3/g2", trajectories=[traj], attempt=2, worker="celery@w1", rollout_seconds=1.5)
    back = GroupResult.from_json(json.loads(json.dumps(result.to_json())), task)
    assert back.attempt == 2 and back.worker == "celery@w1" and back.weight_versions == {3, 4}
    (t,) = back.trajectories
    assert t.old_logprobs == traj.old_logprobs          # bit for bit: the off-policy ratio reads them
    assert (t.token_ids, t.loss_mask, t.regions) == (traj.token_ids, traj.loss_mask, traj.regions)
    assert t.record == record and t.images == traj.images and t.task is task
    assert (t.reward, t.reward_components, t.status) == (1.0, {"qa_em": 1.0}, TrajectoryStatus.COMPLETED)


def test_other_payloads_are_refused() -> None:
    with pytest.raises(WireError, match="wire version 99"):
        GroupJob.from_json({"wire": 99})
    with pytest.raises(WireError, match="group job: KeyError"):
        GroupJob.from_json({"wire": 1, "key": "k"})
    with pytest.raises(WireError, match="expected a JSON object"):
        GroupResult.from_json([1, 2], _task(b"x"))
    with pytest.raises(ValueError, match="names no kind"):
        GroupJob(key="k", task=_task(b"x"), group_size=2, rollout=RolloutConfig(), sampler={}, tools="t")
