"""A GRPO run with ``rollout.workers``: each step's groups go to a real ``rlyard worker`` over a real
redis-server, the worker samples through the sampler service (``rlyard serve sampler``, its own
process, fed the weights the runner publishes) and calls the run's embedded tool server; the
trainer scores and trains on what comes back. And the configs that cannot work are refused."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.sampler import sampler_service
from rlyard.errors import ConfigError
from trainer.checkpoint import latest_checkpoint
from trainer.compose import open_stack
from trainer.config import ExperimentConfig, parse_config
from trainer.events import MetricsEvent, StopRequest
from trainer.runner import run_experiment

ROOT = Path(__file__).resolve().parents[3]


def rl_raw(model_dir: Path, tasks: Path, judge_url: str, model: dict[str, Any], workers: dict[str, Any],
           memory: bool = False, steps: int = 2) -> dict[str, Any]:
    """The YAML form of ``steps`` GRPO steps of 2 groups of 2 on the tiny policy (exact match plus a
    scripted judge)."""
    judge = {"weight": 0.1, "backend": "openai", "endpoint": judge_url, "model": "grader", "require_reference": False}
    return {
        "name": "rl-workers", "seed": 3, "model": {"path": str(model_dir), **model},
        "checkpoint": {"every_steps": 2}, **({"memory": {"enabled": True}} if memory else {}),
        "stages": [{"kind": "rl", "name": "grpo", "steps": steps, "tasks": {"path": str(tasks)},
                    "reward": {"qa_em": 1.0, "judge": judge},
                    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 1, "max_new_tokens_per_turn": 12,
                                "max_total_tokens": 256, "workers": workers},
                    "algorithm": {"micro_batch_size": 2, "updates_per_batch": 1}, "optim": {"lr": 1e-3}}],
    }


def rl_config(*args: Any, **kwargs: Any) -> ExperimentConfig:
    """``rl_raw``'s config, parsed."""
    return parse_config(rl_raw(*args, **kwargs))


def test_grpo_rolls_out_on_the_workers(tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any,
                                       redis_url: str, start_worker: Any) -> None:
    """Without prefetch (and with max_staleness 0) each step submits its own groups and waits for
    them: every group is on-policy and nothing is in flight while the update trains."""
    start_worker("w1", concurrency=2)
    root = tmp_path / "weights"
    with sampler_service(tiny_model_dir, tmp_path / "sampler", weights_root=root) as address:
        replies = [f"Score: {s}\nReason: scripted." for s in (0, 3, 6, 9) * 2]
        config = rl_config(tiny_model_dir, rl_tasks, chat_server(*replies).url,
                           {"backend": "remote", "sampler": address, "weights_dir": str(root)},
                           {"enabled": True, "broker_url": redis_url, "max_staleness": 0})
        events: list[Any] = []
        with open_stack(config) as stack:
            report = run_experiment(config, tmp_path / "run", stack=stack, on_event=events.append)

    steps = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert report["state"] == "SUCCEEDED" and report["steps"] == 2
    # step 2 was sampled on the workers with the weights of update 1, published by the runner
    assert [s["sampled_weight_version"] for s in steps] == [0.0, 1.0]
    assert [s["trajectories"] for s in steps] == [4.0, 4.0]
    assert all(s["infra_failed"] == 0.0 and s["updated"] == 1.0 for s in steps)
    assert [(s["workers/submitted"], s["workers/ok"]) for s in steps] == [(2.0, 2.0), (4.0, 4.0)]
    assert all(s["workers/stale"] == s["workers/failed"] == s["workers/timed_out"] == 0.0 for s in steps)
    assert all(s["workers/staleness_max"] == s["workers/stale_dropped"] == s["workers/pending"] == 0.0
               for s in steps)


def test_pipelined_grpo_trains_on_groups_a_version_behind_and_resumes(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any, redis_url: str, start_worker: Any
) -> None:
    """``prefetch_steps: 1``: step t+1's groups go to the workers before step t trains, so they are
    sampled by the weights before update t and taken one version behind, within the bound; none is
    dropped. A run stopped without a checkpoint after step 3 (step 4's groups in flight) resumes from
    the checkpoint of step 2: steps 3 and 4 are drawn as that checkpoint says and rolled out again."""
    start_worker("w1", concurrency=4)
    root = tmp_path / "weights"
    scores = itertools.cycle((0, 3, 6, 9, 9, 6, 3))   # the samples of a group score apart: every step updates
    judge = chat_server(respond=lambda request: f"Score: {next(scores)}\nReason: scripted.").url
    run_dir = tmp_path / "run"
    with sampler_service(tiny_model_dir, tmp_path / "sampler", weights_root=root) as address:
        config = rl_config(tiny_model_dir, rl_tasks, judge, {"backend": "remote", "sampler": address,
                                                             "weights_dir": str(root)},
                           {"enabled": True, "broker_url": redis_url, "max_staleness": 1, "prefetch_steps": 1},
                           steps=4)
        events: list[Any] = []
        stop = StopRequest()

        def on_event(event: Any) -> None:
            events.append(event)
            if isinstance(event, MetricsEvent) and event.global_step == 3:
                stop.set(checkpoint=False)      # as if killed after step 3: the last checkpoint is step 2's

        with open_stack(config) as stack:
            first = run_experiment(config, run_dir, stack=stack, on_event=on_event, stop=stop)
            saved = json.loads((run_dir / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
            resumed: list[Any] = []
            second = run_experiment(config, run_dir, stack=stack, on_event=resumed.append)

    steps = [e.values for e in events if isinstance(e, MetricsEvent)]
    assert first["state"] == "STOPPED" and len(steps) == 3
    assert all(s["trajectories"] == 4.0 and s["infra_failed"] == 0.0 and s["updated"] == 1.0 for s in steps)
    # step 1 took its groups at version 0, sampled by version 0; later steps' groups were submitted a
    # step early and at least one of them was sampled before the update between: one version behind
    assert steps[0]["workers/staleness_max"] == 0.0
    assert max(s["workers/staleness_max"] for s in steps) == 1.0
    assert all(s["workers/stale_dropped"] == 0.0 and s["workers/stale"] == 0.0 for s in steps)
    # the runner publishes each update: step 3's groups, submitted after update 1, sample version >= 1
    assert steps[2]["sampled_weight_version"] >= 1.0
    # the ratio is exp(logπ_θ − logπ_behaviour) over the recorded log-probs: 1 on-policy, not 1 a version behind
    assert abs(steps[0]["ratio_mean"] - 1.0) < 1e-4
    assert all(abs(s["ratio_mean"] - 1.0) > 1e-3 for s in steps if s["workers/staleness_mean"] == 1.0)
    # while a step trains, the next step's 2 groups are in flight
    assert [s["workers/pending"] for s in steps] == [2.0, 2.0, 2.0]
    assert [s["workers/submitted"] for s in steps] == [4.0, 6.0, 8.0]
    # the checkpoint of step 2 holds step 3's questions, drawn ahead
    assert list(saved["draws"]["ahead"]) == ["3"] and len(saved["draws"]["ahead"]["3"]["task_ids"]) == 2

    again = [e for e in resumed if isinstance(e, MetricsEvent)]
    assert second["state"] == "SUCCEEDED" and second["steps"] == 4
    assert [e.global_step for e in again] == [3, 4]
    # the groups in flight at the stop are not read: steps 3 and 4 are submitted once more, 2 groups each
    assert [(e.values["workers/submitted"], e.values["workers/ok"]) for e in again] == [(4.0, 2.0), (4.0, 4.0)]
    assert [e.values["workers/pending"] for e in again] == [2.0, 0.0]
    assert all(e.values["trajectories"] == 4.0 and e.values["workers/staleness_max"] <= 1.0 for e in again)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["global_step"] for line in lines] == [1, 2, 3, 4]


def test_configs_the_workers_cannot_serve_are_refused(tiny_model_dir: Path, rl_tasks: Path) -> None:
    workers = {"enabled": True, "broker_url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match=r"rollout\.workers: the workers sample through the sampler service"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", {}, workers)
    remote = {"backend": "remote", "sampler": "127.0.0.1:1", "weights_dir": "/tmp/w"}
    with pytest.raises(ConfigError, match=r"rollout\.workers: the graph memory prompts rollouts"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, workers, memory=True)
    with pytest.raises(ConfigError, match=r"rollout\.workers\.max_staleness: must be >= 0"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, {**workers, "max_staleness": -1})
    with pytest.raises(ConfigError, match=r"rollout\.workers\.prefetch_steps: must be in \[0, max_staleness = 1\]"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote,
                  {**workers, "max_staleness": 1, "prefetch_steps": 2})
    with pytest.raises(ConfigError, match=r"rollout\.workers\.prefetch_steps: pipelines the Celery workers"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote,
                  {**workers, "enabled": False, "max_staleness": 1, "prefetch_steps": 1})
    with pytest.raises(ConfigError, match=r"rollout\.workers\.broker_url: the workers use Redis"):
        rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, {**workers, "broker_url": "amqp://x"})


def test_a_config_without_broker_url_takes_the_deployments_secured_broker(
        tiny_model_dir: Path, rl_tasks: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run config naming no broker_url (it then carries no password) reaches the trainer's
    RLYARD_WORKERS_BROKER_URL (and the rest of RLYARD_WORKERS_*, as the workers read them): with tls
    on, the secured Redis's URL with the password of `rlyard certs` from its token file
    (docs/deployment.md); here a real redis-server that requires one."""
    from trainer.compose import _worker_rollouts
    from trainer.workers.source import WorkersUnavailable

    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-cli", "-p", port, "config", "set", "requirepass", "s3cret"], check=True,
                   capture_output=True, timeout=30)
    remote = {"backend": "remote", "sampler": "127.0.0.1:1", "weights_dir": "/tmp/w"}
    cfg = rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote, {"enabled": True})
    [stage] = cfg.stages
    assert stage.rollout.workers.broker_url == ""
    monkeypatch.setenv("RLYARD_WORKERS_BROKER_URL", redis_url)            # without the password: refused
    with pytest.raises(WorkersUnavailable, match="authenticated"):
        _worker_rollouts(stage)
    monkeypatch.setenv("RLYARD_WORKERS_BROKER_URL", redis_url.replace("redis://", "redis://:s3cret@"))
    monkeypatch.setenv("RLYARD_WORKERS_QUEUE", "rlyard.secured")           # the workers' other settings too
    rollouts = _worker_rollouts(stage)
    assert rollouts.settings.broker_url == f"redis://:s3cret@127.0.0.1:{port}/0"
    assert rollouts.settings.queue == "rlyard.secured"
    rollouts.close()
    # a run config's broker_url wins over the environment's (here: the URL without the password)
    cfg = rl_config(tiny_model_dir, rl_tasks, "http://127.0.0.1:1/v1", remote,
                    {"enabled": True, "broker_url": redis_url})
    with pytest.raises(WorkersUnavailable, match="authenticated"):
        _worker_rollouts(cfg.stages[0])

@pytest.mark.slow   # a trainer process started, SIGKILLed and resumed: about a minute
def test_a_sigkilled_pipelined_trainer_resumes_and_redoes_the_groups_in_flight(
    tiny_model_dir: Path, rl_tasks: Path, tmp_path: Path, chat_server: Any, redis_url: str, start_worker: Any
) -> None:
    """``rlyard train`` with ``prefetch_steps: 1`` SIGKILLed once it has finished step 3 (no clean
    stop: nothing revokes its groups in flight). The run resumes from its last checkpoint; every step
    after it submits its groups again under the new process's keys and takes exactly those, so each
    step is counted once and the killed trainer's groups are never taken."""
    start_worker("w1", concurrency=4)
    root = tmp_path / "weights"
    scores = itertools.cycle((0, 3, 6, 9, 9, 6, 3))
    judge = chat_server(respond=lambda request: f"Score: {next(scores)}\nReason: scripted.").url
    with sampler_service(tiny_model_dir, tmp_path / "sampler", weights_root=root) as address:
        raw = {**rl_raw(tiny_model_dir, rl_tasks, judge, {"backend": "remote", "sampler": address,
                                                          "weights_dir": str(root)},
                        {"enabled": True, "broker_url": redis_url, "max_staleness": 1, "prefetch_steps": 1}, steps=6),
               "output_dir": str(tmp_path / "runs")}
        path = tmp_path / "pipelined.yaml"
        path.write_text(yaml.safe_dump(raw))
        run_dir = tmp_path / "runs" / "killed"
        metrics = run_dir / "metrics.jsonl"
        trainer = subprocess.Popen([sys.executable, "-m", "rlyard_app.cli.main", "train", "-c", str(path),
                                    "--run-id", "killed"], cwd=ROOT, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
                assert trainer.poll() is None, trainer.stderr.read().decode()[-3000:] if trainer.stderr else ""
                assert time.monotonic() < deadline, "the trainer did not finish 3 steps"
                time.sleep(0.05)
        finally:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait(timeout=30)
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        assert ckpt is not None
        saved = ckpt.trainer_state["global_step"]
        assert saved in (2, 4) and list(ckpt.trainer_state["draws"]["ahead"]) == [str(saved + 1)]
        config = parse_config(raw)
        events: list[Any] = []
        with open_stack(config) as stack:
            report = run_experiment(config, run_dir, stack=stack, on_event=events.append)

    again = [e for e in events if isinstance(e, MetricsEvent)]
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    assert [e.global_step for e in again] == list(range(saved + 1, 7))
    # this process submitted each step from the checkpoint on once (2 groups) and took only those
    assert again[0].values["workers/submitted"] == 4.0
    assert [e.values["workers/ok"] for e in again] == [2.0 * (i + 1) for i in range(len(again))]
    assert again[-1].values["workers/submitted"] == 2.0 * len(again) and again[-1].values["workers/pending"] == 0.0
    assert all(e.values["trajectories"] == 4.0 and e.values["workers/staleness_max"] <= 1.0 for e in again)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["global_step"] for line in lines] == [1, 2, 3, 4, 5, 6]
