"""Groups on real Celery workers (``rlyard worker`` processes) over a real redis-server: a group end
to end with the local sampler (the tiny policy) and the reward service, a group against services
that serve mutual TLS with a token each, the staleness bound and GRPO's ratio on a group one weight
version behind (from the recorded behaviour log-probs), two
workers sharing groups, a worker SIGKILLed mid-group (the other redoes it: nothing lost), and a
broker that is not there."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from bench.latency_tool import latency_s
from bench.rollout import make_tasks
from bench.workers import _free_port
from rlyard.domain import Task, TrajectoryStatus
from trainer.config import AlgorithmConfig, RolloutConfig, StageConfig
from trainer.grpo import grpo_update
from trainer.policy.hf import HFPolicy
from trainer.types import RolloutTrajectory
from trainer.workers.settings import WorkerSettings
from trainer.workers.source import WorkerRollouts, WorkersUnavailable
from trainer.workers.wire import GroupJob

ROOT = Path(__file__).resolve().parents[3]
CFG = RolloutConfig(group_size=3, prompts_per_step=1, max_turns=4, max_new_tokens_per_turn=96, max_total_tokens=768,
                    max_observation_tokens=64)


def _source(redis_url: str, **kwargs: Any) -> WorkerRollouts:
    return WorkerRollouts(WorkerSettings(broker_url=redis_url), **kwargs)


def _forced(policy_dir: Path) -> dict[str, Any]:
    return {"kind": "forced-tool", "path": str(policy_dir), "turns": 3, "think_tokens": 4}


def _job(key: str, task: Task, sampler: dict[str, Any], tools: str, **kwargs: Any) -> GroupJob:
    return GroupJob(key=key, task=task, group_size=kwargs.pop("group_size", 3), rollout=CFG, sampler=sampler,
                    tools=tools, **kwargs)


def test_a_group_runs_on_a_worker_and_stale_groups_are_dropped(
    redis_url: str, wait_tools: str, reward_target: str, start_worker: Any, tiny_model_dir: Path
) -> None:
    start_worker("w1", concurrency=2)
    source = _source(redis_url, max_staleness=1)
    try:
        task = make_tasks(1, seed=0, scale=0.0)[0]
        task.ground_truth = {"answers": ["done"]}
        for key, version, group_id in (("e2e/v3", 3, 5), ("e2e/v1", 1, 5), ("e2e/v3-g6", 3, 6)):
            source.submit(_job(key, task, {"kind": "local", "path": str(tiny_model_dir), "version": version},
                               wait_tools, group_id=group_id, step=4, seed=7, reward=reward_target,
                               reward_spec={"qa_em": 1.0}))
        groups = {g.key: g for g in source.wait(current_version=3, timeout=120)}
    finally:
        source.close()

    assert set(groups) == {"e2e/v3", "e2e/v1", "e2e/v3-g6"}
    stale = groups["e2e/v1"]
    assert (stale.outcome, stale.versions_behind, stale.trajectories) == ("stale", 2, [])
    group = groups["e2e/v3"]
    assert (group.outcome, group.versions_behind, group.attempt, group.worker) == ("ok", 0, 1, "celery@w1")
    assert source.counts["ok"] == 2 and source.counts["stale"] == 1 and source.counts["submitted"] == 3
    # another group of the same task samples with seeds of its own (its group id is in them)
    other = groups["e2e/v3-g6"].trajectories
    assert [t.group_id for t in other] == [6, 6, 6]
    assert [t.token_ids for t in other] != [t.token_ids for t in group.trajectories]
    trajs = group.trajectories
    assert [t.sample_index for t in trajs] == [0, 1, 2]
    assert all(t.group_id == 5 and t.weight_versions == {3} for t in trajs)
    assert all(t.record.metadata["group_key"] == "e2e/v3" and t.record.metadata["step"] == "4" for t in trajs)
    assert all(t.status is not TrajectoryStatus.INFRA_FAILED for t in trajs)
    assert all(t.reward in (0.0, 1.0) and set(t.reward_components) == {"qa_em"} for t in trajs)
    # the behaviour log-probs came through exactly: the same weights score the sampled tokens alike,
    # so the off-policy ratio exp(logπ − logπ_behaviour) of an on-policy group is 1
    policy = HFPolicy(tiny_model_dir)
    for t in trajs:
        assert sum(t.loss_mask) > 0
        ids = torch.tensor([t.prompt_ids + t.token_ids])
        logp, _ = policy.forward_logprobs(ids, torch.ones_like(ids), temperature=CFG.temperature,
                                          compute_entropy=False)
        scored = logp[0, len(t.prompt_ids) - 1:]
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        old = torch.tensor(t.old_logprobs)
        assert torch.allclose(scored[mask], old[mask], atol=1e-4), (scored[mask] - old[mask]).abs().max()
    _stale_group_ratio(policy, trajs)


def _ratio_by_hand(policy: HFPolicy, trajs: list[RolloutTrajectory]) -> float:
    """Token mean of exp(logπ_θ − recorded log-prob) over the trained tokens."""
    ratios = []
    with torch.no_grad():
        for t in trajs:
            ids = torch.tensor([t.prompt_ids + t.token_ids])
            logp, _ = policy.forward_logprobs(ids, torch.ones_like(ids), temperature=CFG.temperature,
                                              compute_entropy=False)
            mask = torch.tensor(t.loss_mask, dtype=torch.bool)
            old = torch.tensor(t.old_logprobs, dtype=logp.dtype)
            ratios.append(torch.exp(logp[0, len(t.prompt_ids) - 1:][mask] - old[mask]))
    return float(torch.cat(ratios).mean())


def _stale_group_ratio(policy: HFPolicy, trajs: list[RolloutTrajectory]) -> None:
    """GRPO on a worker's group, on-policy and then one weight version behind: the ratio comes from
    the log-probs the worker recorded, so it is 1 on the weights that sampled and not 1 after an update."""
    for t, reward in zip(trajs, (1.0, 0.0, 0.0), strict=True):
        t.reward = reward
    stage = StageConfig(kind="rl", steps=2, reward={"qa_em": 1.0}, rollout=CFG,
                        algorithm=AlgorithmConfig(updates_per_batch=1, micro_batch_size=3))
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    on_policy = grpo_update(policy, optimizer, trajs, stage, step=0)           # weights v3 -> v4
    assert on_policy["updated"] == 1.0 and abs(on_policy["ratio_mean"] - 1.0) < 1e-4
    expected = _ratio_by_hand(policy, trajs)
    assert abs(expected - 1.0) > 1e-3, expected
    frozen = torch.optim.SGD(policy.model.parameters(), lr=0.0)       # measures, leaves the weights as they are
    stale = grpo_update(policy, frozen, trajs, stage, step=1)          # the group is now one version behind
    assert stale["ratio_mean"] == pytest.approx(expected, rel=1e-5)
    # recorded log-probs 0.1 lower: every token's ratio exp(0.1) times higher
    shifted = [dataclasses.replace(t, old_logprobs=[x - 0.1 for x in t.old_logprobs]) for t in trajs]
    assert grpo_update(policy, frozen, shifted, stage, step=1)["ratio_mean"] == pytest.approx(expected * math.exp(0.1),
                                                                                             rel=1e-5)


def test_a_worker_samples_through_the_sampler_service(
    redis_url: str, wait_tools: str, sampler_target: str, start_worker: Any, tiny_model_dir: Path
) -> None:
    start_worker("w1")
    source = _source(redis_url, max_staleness=1)
    try:
        task = make_tasks(1, seed=0, scale=0.0)[0]
        source.submit(_job("remote/g0", task, {"kind": "remote", "target": sampler_target,
                                               "tokenizer": str(tiny_model_dir)}, wait_tools, group_size=2))
        (group,) = source.wait(current_version=3, timeout=120)
    finally:
        source.close()
    # the service sampled with the version published to it, one behind the trainer: kept
    assert (group.outcome, group.versions_behind) == ("ok", 1)
    assert all(t.weight_versions == {2} and sum(t.loss_mask) > 0 for t in group.trajectories)
    policy = HFPolicy(tiny_model_dir)
    for t in group.trajectories:
        ids = torch.tensor([t.prompt_ids + t.token_ids])
        logp, _ = policy.forward_logprobs(ids, torch.ones_like(ids), temperature=CFG.temperature,
                                          compute_entropy=False)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        assert torch.allclose(logp[0, len(t.prompt_ids) - 1:][mask], torch.tensor(t.old_logprobs)[mask], atol=1e-4)


def test_a_worker_dials_tls_services_with_the_token_of_each(
    redis_url: str, secure_services: Any, start_worker: Any, tiny_model_dir: Path, pki: Any
) -> None:
    """A worker with the environment of ``rlyard certs``' ``client.env`` (mutual TLS, the token of
    each service) plus the test servers' addresses: groups through the sampler service and the
    reward service, and through the tool server (the forced-tool sampler calls ``wait``), each over
    TLS with its own token; a tool target it holds no token for is refused (UNAUTHENTICATED), which
    fails that group's trajectories, never the worker."""
    services = secure_services
    env = dict(line.split("=", 1) for line in (pki.out / "client.env").read_text().splitlines()
               if line and not line.startswith("#"))
    env["RLYARD_CLIENT_AUTH_TOKENS"] += "".join(f",{address}={token}" for address, token in services.tokens.items())
    start_worker("w1", env=env)
    source = _source(redis_url, max_staleness=1)
    task = make_tasks(1, seed=0, scale=0.0)[0]
    task.ground_truth = {"answers": ["done"]}
    remote = {"kind": "remote", "target": services.sampler, "tokenizer": str(tiny_model_dir)}
    forced = {**_forced(tiny_model_dir), "version": 2}
    unknown = services.tools.replace("127.0.0.1", "localhost")      # a name without a token entry
    try:
        for key, sampler, tools in (("tls/sampler", remote, services.tools), ("tls/tools", forced, services.tools),
                                    ("tls/no-token", forced, unknown)):
            source.submit(_job(key, task, sampler, tools, group_size=2, reward=services.reward,
                               reward_spec={"qa_em": 1.0}))
        groups = {g.key: g for g in source.wait(current_version=2, timeout=180)}
    finally:
        source.close()
    for key in ("tls/sampler", "tls/tools"):
        trajs = groups[key].trajectories
        assert groups[key].outcome == "ok" and len(trajs) == 2, key
        assert all(t.status is not TrajectoryStatus.INFRA_FAILED for t in trajs), [t.infra_error for t in trajs]
        assert all(t.weight_versions == {2} and set(t.reward_components) == {"qa_em"} for t in trajs), key
    assert all(t.num_tool_calls > 0 for t in groups["tls/tools"].trajectories)   # the calls went through
    refused = groups["tls/no-token"].trajectories
    assert refused and all(t.status is TrajectoryStatus.INFRA_FAILED and "UNAUTHENTICATED" in (t.infra_error or "")
                           for t in refused), [t.infra_error for t in refused]


def test_two_workers_share_the_groups(
    redis_url: str, wait_tools: str, start_worker: Any, tiny_model_dir: Path
) -> None:
    w1 = start_worker("w1", wait=False)
    start_worker("w2")
    w1.wait_ready()
    source = _source(redis_url)
    try:
        tasks = make_tasks(6, seed=0, scale=0.3)
        for i, task in enumerate(tasks):
            source.submit(_job(f"share/g{i}", task, _forced(tiny_model_dir), wait_tools, group_size=2, group_id=i))
        groups = source.wait(0, timeout=120)
    finally:
        source.close()
    assert sorted(g.key for g in groups) == [f"share/g{i}" for i in range(6)]
    assert all(g.outcome == "ok" and g.attempt == 1 for g in groups)
    assert {g.worker for g in groups} == {"celery@w1", "celery@w2"}
    for g in groups:
        assert [t.num_tool_calls for t in g.trajectories] == [3, 3]
        assert all(t.status is TrajectoryStatus.COMPLETED and t.final_answer == "done" for t in g.trajectories)
    assert source.counts["redone"] == 0


def test_a_worker_killed_mid_group_loses_nothing(
    redis_url: str, wait_tools: str, start_worker: Any, tiny_model_dir: Path
) -> None:
    workers = {"w1": start_worker("w1", wait=False), "w2": start_worker("w2")}
    workers["w1"].wait_ready()
    # one group whose three tool calls take about 3 s in all
    scale = 3.0 / sum(latency_s(f"0-{turn}", 0) for turn in range(3))
    task = make_tasks(1, seed=0, scale=scale)[0]
    source = _source(redis_url)
    try:
        source.submit(_job("kill/g0", task, _forced(tiny_model_dir), wait_tools, group_size=2))
        deadline = time.monotonic() + 60
        running = None
        while running is None:
            assert time.monotonic() < deadline, "no worker received the group"
            running = next((n for n, w in workers.items() if "kill/g0] received" in w.log()), None)
            time.sleep(0.05)
        time.sleep(0.5)
        assert source.poll(0) == []          # mid-group: not finished yet
        workers[running].kill()
        groups = source.wait(0, timeout=60)
    finally:
        source.close()
    survivor = workers[({"w1", "w2"} - {running}).pop()].node
    assert len(groups) == 1
    group = groups[0]
    assert (group.outcome, group.attempt, group.worker) == ("ok", 2, survivor)
    assert [t.num_tool_calls for t in group.trajectories] == [3, 3]
    assert source.counts["redone"] == 1 and source.counts["ok"] == 1 and source.pending == 0


def test_failed_and_late_groups_are_counted_never_lost(
    redis_url: str, wait_tools: str, start_worker: Any, tiny_model_dir: Path
) -> None:
    start_worker("w1", concurrency=2)
    scale = 4.0 / sum(latency_s(f"0-{turn}", 0) for turn in range(3))    # a group of about 4 s
    slow = make_tasks(1, seed=0, scale=scale)[0]
    source, hurried = _source(redis_url), _source(redis_url, group_timeout_s=1.5)
    try:
        source.submit(_job("bad/g0", slow, {"kind": "nope"}, wait_tools))
        hurried.submit(_job("late/g0", slow, _forced(tiny_model_dir), wait_tools, group_size=2))
        (bad,) = source.wait(0, timeout=60)
        (late,) = hurried.wait(0, timeout=60)
    finally:
        source.close()
        hurried.close()
    assert bad.outcome == "failed" and "unknown sampler kind 'nope'" in bad.error
    assert (late.outcome, late.trajectories) == ("timed_out", [])
    zero = {"workers/ok": 0.0, "workers/stale": 0.0, "workers/redone": 0.0, "workers/pending": 0.0}
    assert source.metrics() == {**zero, "workers/submitted": 1.0, "workers/failed": 1.0, "workers/timed_out": 0.0}
    assert hurried.metrics() == {**zero, "workers/submitted": 1.0, "workers/failed": 0.0, "workers/timed_out": 1.0}


def test_a_broker_that_is_not_there_is_a_clear_error(tmp_path: Path, redis_url: str) -> None:
    source = _source(redis_url)
    redis.Redis.from_url(redis_url).shutdown(nosave=True)      # the broker goes away after the start
    task = make_tasks(1, seed=0, scale=0.0)[0]
    with pytest.raises(WorkersUnavailable, match="could not queue group gone/g0 on the broker"):
        source.submit(_job("gone/g0", task, {"kind": "local", "path": "/m"}, "127.0.0.1:1"))
    assert source.pending == 0 and source.counts["submitted"] == 0
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    with pytest.raises(WorkersUnavailable, match=r"broker at redis://127\.0\.0\.1:\d+/0 does not answer"):
        WorkerRollouts(WorkerSettings(broker_url=dead))
    out = subprocess.run([sys.executable, "-m", "rlyard_app.cli.main", "worker", "--broker", dead], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert out.returncode == 2
    assert "does not answer" in out.stderr and "redis-server" in out.stderr
