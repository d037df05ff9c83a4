"""Faults injected into GRPO on the tiny policy (issue 19), with the services as separate processes
(``python -m reward_service``, ``python -m tool_servers``, port 0 + ready file):

- the reward service SIGKILLed after a step and serving again on the same port a second later:
  the next step's ScoreBatch is retried over ``services.retry_window_s`` and goes through (the
  run exited FAILED on this before);
- the reward service killed and not back within the window: that step's trajectories are
  INFRA_FAILED, it logs no reward, and the run goes on once the service is back;
- the tool server stopped (SIGSTOP) past the call deadline and resumed (SIGCONT): that step's
  trajectories are INFRA_FAILED, and the next steps run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainer.compose import open_stack
from trainer.config import parse_config
from trainer.events import MetricsEvent
from trainer.runner import run_experiment

pytestmark = pytest.mark.slow      # about a minute: two service start-ups, a retry window, six steps

ROOT = Path(__file__).resolve().parents[2]
CALL = '<tool_call>{"name": "sql_query", "arguments": {"query": "SELECT count(*) FROM singer"}}</tool_call>'
MESSAGES = [{"role": "user", "content": "how many singers are there"}]


class ServiceProcess:
    """``python -m <module>`` on 127.0.0.1: port 0 (the ready file says which) or a given port."""

    def __init__(self, module: str, workdir: Path, env: dict[str, str]) -> None:
        self.module, self.workdir = module, workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RLYARD")}
        self.env.update(PYTHONPATH=str(ROOT), RLYARD_LOG_LEVEL="WARNING", RLYARD_GRACE_S="1", **env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (on the port it had, if any) and wait until it has written its ready file."""
        self.starts += 1
        ready = self.workdir / f"{self.module}-{self.starts}.json"
        log = (self.workdir / f"{self.module}-{self.starts}.log").open("wb")
        env = dict(self.env, RLYARD_PORT=str(self.port), RLYARD_READY_FILE=str(ready))
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=self.workdir, env=env,
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert self.proc.poll() is None, (self.workdir / f"{self.module}-{self.starts}.log").read_text()
            assert time.monotonic() < deadline, f"{self.module} wrote no ready file in 60 s"
            time.sleep(0.02)
        self.port = int(json.loads(ready.read_text())["port"])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def services(tmp_path: Path, repo: Any) -> Iterator[Callable[[str, dict[str, str]], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(module: str, env: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(module, tmp_path, env)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.close()


@pytest.fixture
def calling_policy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny policy taught to answer the task's prompt with one ``sql_query`` call (until greedy
    decoding gives it), so that every trajectory calls the tool server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if not isinstance(prompt, list) else prompt)
    target = tokenizer(CALL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[-100] * len(prompt) + target])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(400):
        out = model(input_ids=ids, labels=labels)
        if bool((out.logits[0, len(prompt) - 1:-1].argmax(-1) == torch.tensor(target)).all()) and out.loss < 0.05:
            break
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    else:
        raise AssertionError(f"the tiny policy did not learn the call (loss {out.loss:.3f})")
    out_dir = tmp_path / "calling-policy"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_grpo_outlives_a_reward_service_restart_and_a_stalled_tool_server(
    services: Callable[[str, dict[str, str]], ServiceProcess], calling_policy: Path, repo: Any, tmp_path: Path
) -> None:
    tools = services("tool_servers", {"RLYARD_TOOLS_SQL_DB_DIR": str(repo.spider_db_dir.resolve())})
    reward = services("reward_service", {"RLYARD_REWARD_REWARDS": "qa_em"})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task_id": f"q{i}", "messages": MESSAGES, "tools": [],
                                         "context": {"db_id": "concert_singer"},
                                         "ground_truth": {"answers": ["6"]}}) + "\n" for i in range(4)))
    config = parse_config({
        "name": "faults", "seed": 1, "model": {"path": str(calling_policy)}, "checkpoint": {"every_steps": 1},
        "services": {"tools": tools.address, "reward": reward.address, "timeout_s": 2.0, "retry_window_s": 10.0,
                     "max_failed_steps": 2},
        "stages": [{"kind": "rl", "name": "grpo", "steps": 6, "tasks": {"path": str(tasks)}, "reward": {"qa_em": 1.0},
                    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_turns": 2, "temperature": 0.2,
                                "max_new_tokens_per_turn": 48, "max_total_tokens": 320},
                    "algorithm": {"micro_batch_size": 2}, "optim": {"lr": 1e-4}}],
    })
    restarts: list[threading.Thread] = []

    def restart_later(delay_s: float) -> None:
        timer = threading.Timer(delay_s, reward.start)     # the outage: killed, back on its port
        timer.start()
        restarts.append(timer)

    def inject(event: Any) -> None:
        """Runs in the trainer's thread between steps."""
        if not isinstance(event, MetricsEvent):
            return
        step = event.global_step
        if step == 1:                  # killed, serving again ~1 s later (plus its start-up)
            reward.signal(signal.SIGKILL)
            restart_later(1.1)
        elif step == 2:                # killed, and back only after the next step gave up on it
            restarts[0].join()
            reward.signal(signal.SIGKILL)
        elif step == 3:
            reward.start()
        elif step == 4:                # stopped past the 2 s call deadline of the next step
            tools.signal(signal.SIGSTOP)
        elif step == 5:
            tools.signal(signal.SIGCONT)

    events: list[Any] = []
    with open_stack(config) as stack:
        report = run_experiment(config, tmp_path / "run", stack=stack,
                                on_event=lambda e: (events.append(e), inject(e)))
    assert report["state"] == "SUCCEEDED" and report["steps"] == 6
    steps = {e.global_step: e.values for e in events if isinstance(e, MetricsEvent)}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    calls = {s: v["tool_calls"] for s, v in steps.items()}
    assert all(calls[s] == 1.0 for s in (1, 2, 3, 4, 6)), calls       # every trajectory called the tool
    # step 2: the restart is bridged by the retries, nothing failed
    assert steps[2]["infra_failed"] == 0.0 and steps[2]["reward_system_errors"] == 0.0 and "reward_mean" in steps[2]
    # step 3: the reward service stayed down past the window: the step's trajectories failed, no reward logged
    assert steps[3]["infra_failed"] == 4.0 and steps[3]["reward_system_errors"] == 4.0
    assert "reward_mean" not in steps[3]
    # step 5: the tool server did not answer within the deadline: the step's trajectories failed
    assert steps[5]["infra_failed"] == 4.0 and steps[5]["tool_calls"] == 0.0 and "reward_mean" not in steps[5]
    # steps 4 and 6 ran normally after each fault
    for s in (1, 4, 6):
        assert steps[s]["infra_failed"] == 0.0 and "reward_mean" in steps[s], (s, steps[s])
    samples = (tmp_path / "run" / "samples.md").read_text()
    assert f"infra error: reward service at {reward.address}: UNAVAILABLE" in samples
    assert "infra error: open_session: DEADLINE_EXCEEDED" in samples
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert ["reward_mean" in x for x in lines] == [True, True, False, True, False, True]
