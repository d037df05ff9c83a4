"""Evaluation end to end: the tiny policy (and a scripted one) on Spider dev tasks over embedded
tool and reward services; the ``rlyard eval`` command in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from envs.text_to_sql import REWARD_SPEC, demonstrations, load_spider, make_tasks
from trainer.compose import Stack, open_stack
from trainer.config import RolloutConfig, parse_config
from trainer.evaluate import FixedTemperature, evaluate
from trainer.model import init_policy
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy
from trainer.sft import load_sft_examples

ROLLOUT = RolloutConfig(group_size=2, prompts_per_step=1, max_turns=3, max_new_tokens_per_turn=24,
                        max_total_tokens=4096, max_observation_tokens=64)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    init_policy(out)
    return out


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Embedded SQL tools and reward service over the Spider databases."""
    with open_stack(parse_config({"name": "eval", "stages": [{"kind": "sft", "data": "unused", "steps": 1}]})) as s:
        yield s


class ScriptedPolicy:
    """Plays fixed turns per task (chosen by the question in the prompt): turn k of the script is
    emitted when the prompt holds k more assistant headers than the task's first prompt.
    Records the temperatures it was asked for."""

    def __init__(self, tokenizer: object, scripts: dict[str, list[str]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.temperatures: list[float] = []
        self.first: dict[str, int] = {}      # assistant headers in each task's prompt

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.temperatures.append(params.temperature)
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)  # type: ignore[attr-defined]
            question = next(q for q in self.scripts if q in text)
            headers = text.count("<|im_start|>assistant")
            turn = headers - self.first.setdefault(question, headers)
            script = self.scripts[question]
            ids = self.tokenizer.encode(script[turn], add_special_tokens=False)  # type: ignore[attr-defined]
            ids.append(self.tokenizer.eos_token_id)  # type: ignore[attr-defined]
            out.append(Generation(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop"))
        return out


def test_evaluate_tiny_policy_on_spider_dev(policy_dir: Path, stack: Stack) -> None:
    items = load_spider()[:3]
    tasks = make_tasks(items, stack.tools, max_tool_calls=2)
    report = evaluate(policy_dir, tasks, stack, reward_spec=REWARD_SPEC, rollout_config=ROLLOUT, max_tool_calls=2)
    assert report.n == 3 and len(report.results) == 3
    assert 0.0 <= report.execution_accuracy <= 1.0
    assert report.infra_failures == 0
    assert report.settings["max_turns"] == 3 and report.settings["temperature"] == 0.0
    assert report.settings["backend"] == "hf"
    for r in report.results:
        assert 1 <= r.turns <= 3
        assert r.num_tool_calls <= 2 * 3
        assert "sql_execution" in r.components and "format" in r.components
    summary = report.summary()
    for key in ("n", "execution_accuracy", "mean_tool_calls", "mean_turns", "format_errors", "infra_failures"):
        assert key in summary
    json.dumps(report.to_json())


def test_evaluate_counts_accuracy_tool_calls_and_format(policy_dir: Path, stack: Stack) -> None:
    """Hand-computed: one right answer after a query, one wrong answer, one unformatted answer."""
    items = load_spider()[:3]
    policy = HFPolicy(policy_dir)
    q = [it.question for it in items]
    call = '<think>check</think><tool_call>{{"name": "sql_query", "arguments": {{"query": "{}"}}}}</tool_call>'
    scripted = ScriptedPolicy(policy.tokenizer, {
        q[0]: [call.format(items[0].query), f"<think>ok</think><answer>{items[0].query}</answer>"],
        q[1]: [call.format("SELECT nope FROM singer"), call.format("SELECT 1"),
               "<think>ok</think><answer>SELECT 1</answer>"],
        q[2]: [f"<answer>{items[2].query}</answer>"],          # right, but no <think>: a format error
    })
    tasks = make_tasks(items, stack.tools, max_tool_calls=6, include_schema=False)
    config = dataclasses.replace(ROLLOUT, max_new_tokens_per_turn=256)
    report = evaluate(scripted, tasks, stack, rollout_config=config, max_tool_calls=6)
    by_id = {r.task_id: r for r in report.results}
    assert [by_id[f"spider-{i}"].correct for i in range(3)] == [True, False, True]
    assert report.execution_accuracy == pytest.approx(2 / 3)
    assert [by_id[f"spider-{i}"].num_tool_calls for i in range(3)] == [1, 2, 0]
    assert report.mean_tool_calls == pytest.approx(1.0)
    assert [by_id[f"spider-{i}"].turns for i in range(3)] == [2, 3, 1]
    assert report.mean_turns == pytest.approx(2.0)
    assert report.format_errors == 1 and by_id["spider-2"].format_error
    assert set(scripted.temperatures) == {0.0}            # greedy although RolloutConfig says 1.0
    assert config.temperature == 1.0


def test_fixed_temperature_rejects_negative(policy_dir: Path) -> None:
    from trainer.sampler import LocalSampler

    with pytest.raises(ValueError, match="temperature"):
        FixedTemperature(LocalSampler(HFPolicy(policy_dir)), -1.0)


def test_demonstrations_load_as_sft(policy_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in demonstrations(load_spider()[:2], error_every=1)))
    examples = load_sft_examples(path, HFPolicy(policy_dir).tokenizer)
    assert len(examples) == 2 and all(sum(e.loss_mask) > 0 for e in examples)


def test_rlyard_eval_cli_on_spider_dev(policy_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "name": "eval", "model": {"path": "does/not/exist"},
        "stages": [{"kind": "rl", "steps": 1, "tasks": {"path": "unused.jsonl"}, "reward": {"sql_execution": 1.0},
                    "rollout": {"group_size": 2, "prompts_per_step": 1, "max_new_tokens_per_turn": 16,
                                "max_total_tokens": 4096},
                    "algorithm": {"micro_batch_size": 2}}],
    }))
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "rlyard_app.cli.main", "eval", "-c", str(config), "--checkpoint", str(policy_dir),
         "--spider-dev", "2", "--max-tool-calls", "1", "--output", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stderr
    assert "execution accuracy" in result.stdout and "tool calls / task" in result.stdout
    assert "infra failures" in result.stdout
    report = json.loads(out.read_text())
    assert report["n"] == 2 and len(report["results"]) == 2
    assert report["settings"]["tasks"] == "spider dev[:2]" and report["settings"]["max_turns"] == 2
    assert 0.0 <= report["execution_accuracy"] <= 1.0


def test_rlyard_eval_cli_missing_checkpoint(tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"name": "eval", "stages": [{"kind": "sft", "steps": 1, "data": "x.jsonl"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "rlyard_app.cli.main", "eval", "-c", str(config), "--checkpoint", str(tmp_path / "nope"),
         "--spider-dev", "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in " ".join(result.stderr.split())
