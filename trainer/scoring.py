"""Scoring rollouts through the reward service: one ``ScoreBatch`` per step.

A reward service that fails the call itself (down past the client's retry window, past the
deadline, an internal error) fails the step's trajectories (INFRA_FAILED, dropped from the loss),
not the run: the runner decides when too many steps in a row failed. A call the service refuses
(INVALID_ARGUMENT: a bad spec) is an error of the run's config and raises.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from rlyard.domain import ScoreResult, ScoreStatus, ScoringItem, TrajectoryStatus, parse_spec
from rlyard.reward_client import RewardClient
from trainer.types import RolloutTrajectory

logger = logging.getLogger(__name__)

# Failures of the service, not of the request: the step's trajectories fail, the run goes on.
SERVICE_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
})


class RewardRequestError(RuntimeError):
    """The reward service refused the step's request (a bad spec, a missing reward, auth)."""


async def _score(client: RewardClient, trajectories: list[RolloutTrajectory], spec_obj: Any,
                 step: int) -> list[ScoreResult]:
    """One ``ScoreBatch`` of the trajectories under ``spec_obj``; answers in order."""
    items = [
        ScoringItem(f"{t.group_id}-{t.sample_index}", trajectory=t.record, ground_truth=t.task.ground_truth,
                    training_step=step)
        for t in trajectories
    ]
    return await client.score_batch(items, parse_spec(spec_obj))


async def score_trajectories(
    client: RewardClient, trajectories: list[RolloutTrajectory], spec_obj: Any, step: int
) -> dict[str, int]:
    """Fill ``reward`` and ``reward_components``; a system failure of the reward, or a failed call
    (``SERVICE_FAILURES``, after the client's retries), marks the trajectory INFRA_FAILED (dropped
    from the loss); an INVALID_INPUT raises (bad task data), as does a refused call
    (``RewardRequestError``)."""
    to_score = [t for t in trajectories if t.status != TrajectoryStatus.INFRA_FAILED]
    if not to_score:
        return {"scored": 0, "reward_system_errors": 0}
    where = f"reward service at {client.target}"
    try:
        results = await _score(client, to_score, spec_obj, step)
    except grpc.aio.AioRpcError as exc:
        error = f"{where}: {exc.code().name}: {exc.details()}"
        if exc.code() not in SERVICE_FAILURES:
            raise RewardRequestError(f"the {error}") from None
        logger.warning("step %d: %s; its %d trajectories are INFRA_FAILED", step, error, len(to_score))
        for t in to_score:
            t.status = TrajectoryStatus.INFRA_FAILED
            t.infra_error = error
        return {"scored": 0, "reward_system_errors": len(to_score)}
    errors = 0
    for t, r in zip(to_score, results, strict=True):
        if r.status == ScoreStatus.SYSTEM_ERROR:
            t.status = TrajectoryStatus.INFRA_FAILED
            t.infra_error = f"{where}: {r.error}"
            errors += 1
        elif r.status == ScoreStatus.INVALID_INPUT:
            raise ValueError(f"task {t.task.task_id}: the reward service cannot score it: {r.error}")
        else:
            t.reward = r.total
            t.reward_components = r.values
    return {"scored": len(to_score) - errors, "reward_system_errors": errors}


async def judge_scores(
    client: RewardClient, trajectories: list[RolloutTrajectory], spec_obj: Any
) -> list[float | None]:
    """The total of ``spec_obj`` for each trajectory without touching its reward (evaluation's
    judge scores); None where the trajectory failed or the reward could not score it."""
    to_score = [i for i, t in enumerate(trajectories) if t.status != TrajectoryStatus.INFRA_FAILED]
    out: list[float | None] = [None] * len(trajectories)
    if not to_score:
        return out
    results = await _score(client, [trajectories[i] for i in to_score], spec_obj, 0)
    for i, r in zip(to_score, results, strict=True):
        if r.status == ScoreStatus.OK:
            out[i] = r.total
    return out
